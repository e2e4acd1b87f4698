//! The crate's single error type.
//!
//! Every variant names the operation and the object it was applied to, so
//! a plugin can hand the message to the user as is; kernel failures keep
//! their errno so callers can branch on it (EEXIST on create, ENODEV/ESRCH
//! on delete...) without parsing text.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel answered a netlink request with an error.
    #[error("{op}: {}{}", errno_text(*errno), ext_suffix(ext.as_deref()))]
    Netlink {
        op: String,
        errno: i32,
        /// The kernel's extended ack message, when it gave one.
        ext: Option<String>,
    },
    /// A system call or file operation failed.
    #[error("{op}: {}", io_text(source))]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel sent something this crate could not decode.
    #[error("{op}: bad netlink reply: {msg}")]
    Protocol { op: String, msg: String },
    /// A path that was expected to be a network namespace is something else.
    #[error("open netns {}: not a network namespace", path.display())]
    NotNetns { path: PathBuf },
    /// An argument was rejected before anything was sent to the kernel.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// The kernel lacks a feature the request needs: not built in, and its
    /// module not loaded and not loadable.
    #[error("{op}: the kernel has no {feature} (not built in, and its module is not loaded and could not be loaded)")]
    Unsupported { op: String, feature: String },
    /// The kernel refused an nf_tables batch (and applied none of it);
    /// `object` is the command it refused.
    #[error("{op}: {object}: {}{}", errno_text(*errno), ext_suffix(ext.as_deref()))]
    NfTables {
        op: String,
        object: String,
        errno: i32,
        ext: Option<String>,
    },
}

impl Error {
    /// The errno behind this error, if it came from the kernel or a system
    /// call (e.g. `Some(libc::EEXIST)` when creating a link that exists).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } | Error::NfTables { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the failure means "the object already exists".
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the failure means "there is no such object" (missing link,
    /// address, route, or file).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// strerror() text without Rust's " (os error N)" suffix, so messages read
/// like the ones ip(8) prints ("File exists").
fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

fn io_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => errno_text(errno),
        None => e.to_string(),
    }
}

fn ext_suffix(ext: Option<&str>) -> String {
    match ext {
        Some(m) if !m.is_empty() => format!(" ({m})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_message_names_op_and_errno() {
        let e = Error::Netlink {
            op: "create veth bv1a2b3c4d".into(),
            errno: libc::EEXIST,
            ext: None,
        };
        assert_eq!(e.to_string(), "create veth bv1a2b3c4d: File exists");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.is_exists());
    }

    #[test]
    fn extack_is_appended() {
        let e = Error::Netlink {
            op: "add route 10.0.0.0/8".into(),
            errno: libc::EINVAL,
            ext: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "add route 10.0.0.0/8: Invalid argument (Nexthop has invalid gateway)"
        );
    }

    #[test]
    fn io_errno_is_exposed() {
        let e = Error::io("open netns /x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(e.to_string(), "open netns /x: No such file or directory");
        assert!(e.is_not_found());
    }
}
