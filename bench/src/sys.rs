//! Host plumbing for the bench: namespaces, links, temp dirs, free subnets.
//! The bench is not product code, so it drives `ip` as a subprocess.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number unique within this process.
pub fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `ip <args>`; fails with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub path: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let path = format!("/run/netns/{name}");
        Ok(Self { name, path })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Deletes a host link by name on drop (bridges the plugins created).
#[derive(Debug)]
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            if let Err(e) = ip(&["link", "del", "dev", &self.0]) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "berth-bench-{}-{}-{tag}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An interface name (≤ 15 bytes) unique among live processes:
/// `prefix` + pid in base 36 (5 chars) + counter in base 36.
pub fn unique_ifname(prefix: &str) -> String {
    fn b36(mut n: u64, min: usize) -> String {
        const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut v = Vec::new();
        while n > 0 || v.len() < min {
            v.push(D[(n % 36) as usize]);
            n /= 36;
        }
        v.reverse();
        String::from_utf8(v).unwrap()
    }
    let name = format!(
        "{prefix}{}{}",
        b36(u64::from(std::process::id()), 5),
        b36(next_id(), 1)
    );
    assert!(name.len() <= 15, "interface name too long: {name}");
    name
}

/// Parses "a.b.c.d/len", "a.b.c.d" (a /32) or "default" (0/0).
fn parse_v4_prefix(s: &str) -> Option<(u32, u8)> {
    if s == "default" {
        return Some((0, 0));
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let a: Ipv4Addr = addr.parse().ok()?;
    Some((u32::from(a), len))
}

/// Two IPv4 prefixes overlap iff they agree on the shorter one's bits.
pub fn v4_overlap(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(len));
    (a.0 & mask) == (b.0 & mask)
}

/// IPv4 prefixes in use on the host: routes of all tables (except default
/// routes, which cover everything) and interface addresses.
fn host_v4_prefixes() -> Result<Vec<(u32, u8)>> {
    let mut out = Vec::new();
    let routes: serde_json::Value =
        serde_json::from_str(&ip(&["-j", "-4", "route", "show", "table", "all"])?)
            .context("parse ip -j route")?;
    for r in routes.as_array().into_iter().flatten() {
        if let Some(p) = r["dst"].as_str().and_then(parse_v4_prefix) {
            if p.1 > 0 {
                out.push(p);
            }
        }
    }
    let addrs: serde_json::Value =
        serde_json::from_str(&ip(&["-j", "-4", "addr", "show"])?).context("parse ip -j addr")?;
    for link in addrs.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(l), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                if let Ok(ip) = l.parse::<Ipv4Addr>() {
                    out.push((u32::from(ip), p as u8));
                }
            }
        }
    }
    Ok(out)
}

/// A free 10.X.0.0/16 (X in 200..=254) overlapping nothing on the host nor
/// anything in `taken`; the matching IPv6 /64 is fd00:be:X::/64.
pub fn free_subnets(taken: &mut Vec<u8>) -> Result<(String, String)> {
    let used = host_v4_prefixes()?;
    for x in 200u8..=254 {
        if taken.contains(&x) {
            continue;
        }
        let cand = (u32::from(Ipv4Addr::new(10, x, 0, 0)), 16u8);
        if used.iter().any(|p| v4_overlap(*p, cand)) {
            continue;
        }
        taken.push(x);
        return Ok((format!("10.{x}.0.0/16"), format!("fd00:be:{x:x}::/64")));
    }
    bail!("no free 10.X.0.0/16 (X in 200..=254) on this host")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap() {
        let p = |s| parse_v4_prefix(s).unwrap();
        assert!(v4_overlap(p("10.200.0.0/16"), p("10.200.3.0/24")));
        assert!(v4_overlap(p("10.0.0.0/8"), p("10.200.0.0/16")));
        assert!(!v4_overlap(p("10.201.0.0/16"), p("10.200.0.0/16")));
        assert!(v4_overlap(p("10.200.1.1"), p("10.200.0.0/16")));
        assert!(v4_overlap(p("default"), p("10.200.0.0/16")));
        assert!(!v4_overlap(p("192.168.0.0/16"), p("10.200.0.0/16")));
    }

    #[test]
    fn ifnames_fit() {
        for _ in 0..100 {
            let n = unique_ifname("bbn");
            assert!(n.len() <= 15 && n.starts_with("bbn"), "{n}");
        }
    }
}
