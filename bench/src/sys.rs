//! Host plumbing for the bench: namespaces, links, temp dirs, free subnets,
//! through berth-kernel (netlink) and plain system calls.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
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

/// A netlink handle in the bench's own netns.
pub fn host() -> Result<berth_kernel::Handle> {
    berth_kernel::Handle::new().context("open a netlink socket")
}

/// A netlink handle inside a named netns.
pub fn handle_in(ns: &Netns) -> Result<berth_kernel::Handle> {
    let fd = berth_kernel::Netns::open(Path::new(&ns.path))
        .with_context(|| format!("open {}", ns.path))?;
    berth_kernel::Handle::in_netns(&fd).with_context(|| format!("netlink socket in {}", ns.path))
}

/// A named network namespace (`/run/netns/<name>`, as `ip netns add` makes
/// it), deleted on drop. Plays the runtime's part: it creates the netns
/// the plugins are handed.
#[derive(Debug)]
pub struct Netns {
    pub path: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        let dir = Path::new("/run/netns");
        std::fs::create_dir_all(dir).context("mkdir /run/netns")?;
        let path = dir.join(&name);
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let target = path.clone();
        // A fresh netns on a throwaway thread, kept alive by a bind mount of
        // the thread's namespace file onto the name.
        let made = std::thread::spawn(move || -> nix::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            bail!("create netns {name}: {e}");
        }
        Ok(Self {
            path: path.display().to_string(),
        })
    }
}

impl Netns {
    /// The name under /run/netns (what `ip -n` takes).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens and
    /// processes it spawns live there (and stay there afterwards).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = berth_kernel::Netns::open(Path::new(&self.path))
            .with_context(|| format!("open {}", self.path))?;
        fd.run(f).with_context(|| format!("enter {}", self.path))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.path.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: umount {}: {e}", self.path);
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("warning: remove {}: {e}", self.path);
        }
    }
}

/// Brings up `lo` inside `ns` (a fresh netns has it down).
pub fn lo_up(ns: &Netns) -> Result<()> {
    let mut h = handle_in(ns)?;
    let lo = h.link_by_name("lo")?.context("no lo")?;
    h.set_up(lo.index)?;
    Ok(())
}

/// Joins two namespaces by a veth (`a_if` in `a`, `b_if` in `b`) with an
/// address on each end, both ends and both `lo`s up: the bench's
/// underlays and "outside" links.
pub fn join(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    lo_up(a)?;
    lo_up(b)?;
    let mut ha = handle_in(a)?;
    let mut hb = handle_in(b)?;
    let b_fd = berth_kernel::Netns::open(Path::new(&b.path))
        .with_context(|| format!("open {}", b.path))?;
    ha.add_veth(a_if, b_if, &b_fd, &berth_kernel::VethOptions::default())
        .with_context(|| format!("veth {a_if} in {} to {b_if} in {}", a.name(), b.name()))?;
    for (h, name, addr) in [(&mut ha, a_if, a_addr), (&mut hb, b_if, b_addr)] {
        let l = h.link_by_name(name)?.context("veth vanished")?;
        h.add_address(
            l.index,
            addr.parse().with_context(|| format!("address {addr}"))?,
            &berth_kernel::AddressOptions::default(),
        )?;
        h.set_up(l.index)?;
    }
    Ok(())
}

/// Deletes a host link by name on drop (bridges the plugins created).
#[derive(Debug)]
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Err(e) = host().and_then(|mut h| Ok(h.delete_link_by_name(&self.0)?)) {
            eprintln!("warning: delete link {}: {e:#}", self.0);
        }
    }
}

/// A child process (a daemon the bench started) stopped by its PID on
/// drop: SIGTERM, then SIGKILL if it is still there after 30 s; reaped.
#[derive(Debug)]
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let mut h = host()?;
    let mut out = Vec::new();
    for r in h.routes().context("list routes")? {
        if let ipnet::IpNet::V4(n) = r.dst {
            if n.prefix_len() > 0 {
                out.push((u32::from(n.network()), n.prefix_len()));
            }
        }
    }
    for a in h.addresses(None).context("list addresses")? {
        if let IpAddr::V4(ip) = a.addr.addr() {
            out.push((u32::from(ip), a.addr.prefix_len()));
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
        let p = |s: &str| {
            let n: ipnet::Ipv4Net = s.parse().unwrap();
            (u32::from(n.addr()), n.prefix_len())
        };
        assert!(v4_overlap(p("10.200.0.0/16"), p("10.200.3.0/24")));
        assert!(v4_overlap(p("10.0.0.0/8"), p("10.200.0.0/16")));
        assert!(!v4_overlap(p("10.201.0.0/16"), p("10.200.0.0/16")));
        assert!(v4_overlap(p("10.200.1.1/32"), p("10.200.0.0/16")));
        assert!(v4_overlap(p("0.0.0.0/0"), p("10.200.0.0/16")));
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
