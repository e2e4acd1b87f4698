//! Kernel parameters through /proc/sys (no sysctl(8) subprocess).
//!
//! Files under /proc/sys/net show the network namespace of the thread that
//! opens them, so to read or change a container's settings call these
//! inside [`crate::Netns::run`].

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::{Error, Result};

/// Maps "net.ipv4.ip_forward" or "net/ipv4/ip_forward" to its file.
///
/// A key containing '/' is taken as a path as is, which is the only way to
/// name an interface with a dot in its name ("net/ipv4/conf/eth0.100/...");
/// otherwise dots separate the components, as in sysctl(8).
fn path_of(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.trim_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::invalid(
            "sysctl key",
            key,
            "empty or relative component",
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Reads a parameter, without the trailing newline.
pub fn read(key: &str) -> Result<String> {
    let path = path_of(key)?;
    let text = fs::read_to_string(&path).map_err(|e| Error::io(format!("read sysctl {key}"), e))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// Sets a parameter, writing only if the value differs: a read is cheaper
/// than a write, and some writes have side effects even when the value is
/// unchanged (e.g. forwarding resets per-interface settings).
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = path_of(key)?;
    let op = || format!("write sysctl {key}={value}");
    match fs::read_to_string(&path) {
        Ok(cur) if cur.trim() == value.trim() => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(Error::io(format!("read sysctl {key}"), e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(op(), e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| Error::io(op(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert!(path_of("net/../../etc/passwd").is_err());
        assert!(path_of("").is_err());
        assert!(path_of("net..ipv4").is_err());
    }

    #[test]
    fn read_existing_key() {
        // present in every namespace
        let v = read("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1");
    }
}
