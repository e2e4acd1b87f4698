//! [`Handle`]: an rtnetlink socket bound to one network namespace.
//!
//! The operations themselves live next to the types they deal with
//! (link.rs, bridge.rs, addr.rs, route.rs), each as an `impl Handle` block.

use crate::nl::Socket;
use crate::{Error, Netns, Result};

/// A synchronous rtnetlink connection to one network namespace.
///
/// Not shareable between threads at the same time (`&mut self` everywhere:
/// requests and replies on one socket must not interleave), but it can be
/// moved to another thread.
pub struct Handle {
    pub(crate) sock: Socket,
}

impl Handle {
    /// A handle on the calling thread's network namespace.
    pub fn new() -> Result<Handle> {
        let sock = Socket::open().map_err(|e| Error::io("open netlink socket", e))?;
        Ok(Handle { sock })
    }

    /// A handle on `ns`. The socket is created by a short-lived thread that
    /// entered `ns`; a netlink socket belongs to the namespace it was
    /// created in, so the handle can then be driven from any thread.
    pub fn in_netns(ns: &Netns) -> Result<Handle> {
        let sock = ns.run(Socket::open)?.map_err(|e| {
            Error::io(
                format!("open netlink socket in netns {}", ns.path().display()),
                e,
            )
        })?;
        Ok(Handle { sock })
    }
}

/// Interface names: the kernel's dev_valid_name() rule, berth's only one
/// (every front end checks names with it, so an error names the
/// offending value instead of a bare EINVAL): not empty, at most 15
/// bytes, not "." or "..", and no byte the kernel refuses: '/', ':', NUL
/// or one its isspace() matches (space, \t, \n, \v, \f, \r and 0xA0,
/// which a UTF-8 U+00A0 contains).
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid("interface name", name, reason));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name.bytes().any(|b| {
        matches!(
            b,
            b'/' | b':' | 0 | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0
        )
    }) {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_cross_threads() {
        // Plugins hand handles and errors across threads (and into anyhow).
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync + 'static>() {}
        send::<Handle>();
        send_sync::<Netns>();
        send_sync::<Error>();
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("bv1a2b3c4d").is_ok());
        assert!(check_ifname("exactly15bytes_").is_ok());
        assert!(check_ifname("sixteen_bytes_xx").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("a:b").is_err());
        assert!(check_ifname("..").is_err());
        // The kernel's isspace(): \v and NBSP too; other Unicode spaces
        // are bytes it accepts.
        assert!(check_ifname("a\x0bb").is_err());
        assert!(check_ifname("a\u{a0}b").is_err());
        assert!(check_ifname("a\u{2003}b").is_ok());
    }
}
