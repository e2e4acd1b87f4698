//! `portmap` part: the cost of one more container's published ports (ADD
//! and DEL, 2 mappings: one TCP, one UDP) with 0, 1000 and 5000 mappings
//! already installed, berth-portmap against the reference portmap (its
//! iptables backend, the only one in Debian's 1.1.1).
//!
//! Each (implementation, level) gets its own private "host" namespace,
//! which the plugins run in: their rules never meet, and nothing lands in
//! the real host's ruleset. A bridge there with an address in the
//! containers' subnet gives both plugins the host-side link they look up
//! for the container address (hairpin, route_localnet), and, as on any
//! real host, conntrack is on and tracks a flow (so the UDP mapping's
//! stale-flow cleanup does its real work at every level).
//!
//! Installing the levels: berth's mappings through berth-portmap itself
//! (one ADD per container, 2 mappings each); the reference's by one
//! `iptables-restore --noflush` of the rules the reference writes per
//! container (copied from its own output: a CNI-DN-<hash> chain with the
//! hairpin and localhost SETMARK jumps and the DNAT per port, and one
//! multiport entry rule per protocol in CNI-HOSTPORT-DNAT), because
//! creating 2500 containers through it takes longer than the bench should
//! (its ADD execs iptables about a dozen times and each call reads the
//! whole table). Its base chains come from a real ADD first.
//!
//! Then R rounds of: berth ADD, reference ADD, berth DEL, reference DEL,
//! each one exec of the plugin as a runtime does it, the order of the
//! implementations rotating round by round, medians reported.
//! With `--cni-path-before`, berth's previous build is a third host at
//! each level (its mappings installed through its own berth-portmap), its
//! ADD and DEL between berth's and the reference's in every round.
//!
//! In the same rounds, the firewall part of berth's ADD and DEL alone, for
//! the current code ([`Firewall`]): berth-network's one nf_tables batch of
//! the common ADD and of the common DEL, timed in process in a namespace
//! holding the level's mappings; and with nothing published, the first
//! ADD's and the last DEL's (what berth-portmap does at level 0, where
//! each measured container is the only one).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use berth_network::firewall::{
    add_elements_in, rebuild_in, remove_elements_in, remove_table_if_empty_in, unpublish_in,
    Conditions, PortMapping, Protocol, PublishedPorts,
};

use crate::etcd::{quantile, rotated};
use crate::exec::exec_plugin_env;
use crate::report::{FirewallPart, PortmapRefSide, PortmapRow, PortmapSide, Spread};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, TempDir};

pub const LEVELS: [usize; 3] = [0, 1000, 5000];
/// Host ports of the measured containers (above the installed ones).
const PROBE_PORT_BASE: u16 = 60000;
const NETWORK: &str = "bench-pm";
/// The bench host's bridge: the containers' host-side link.
const BRIDGE: &str = "pmbench0";

/// The containers' addresses: 10.200.0.0/16, container `i` at
/// 10.200.<i/250>.<i%250 + 2> (.1 of the first /24 is the bridge's).
fn container_ip(i: usize) -> String {
    container_addr(i).to_string()
}

/// [`container_ip`] as an address: 10.200.0.0/16 counted in 250s.
fn container_addr(i: usize) -> std::net::Ipv4Addr {
    let (hi, lo) = ((i / 250) as u32, (i % 250 + 2) as u32);
    std::net::Ipv4Addr::from(u32::from_be_bytes([10, 200, 0, 0]) + (hi << 8) + lo)
}

/// One implementation at one level.
struct Host {
    ns: Netns,
    run: TempDir,
    plugin: &'static str,
    dir: std::path::PathBuf,
}

impl Host {
    fn new(plugin: &'static str, dir: &std::path::Path) -> Result<Host> {
        let ns = Netns::new(format!("bpm-{}-{}", std::process::id(), sys::next_id()))?;
        let mut h = sys::handle_in(&ns)?;
        let lo = h.link_by_name("lo")?.context("no lo")?;
        h.set_up(lo.index)?;
        h.add_bridge(BRIDGE, &berth_kernel::BridgeOptions::default())
            .context("bridge in the bench host")?;
        let br = h.link_by_name(BRIDGE)?.context("bridge vanished")?;
        h.add_address(
            br.index,
            "10.200.0.1/16".parse()?,
            &berth_kernel::AddressOptions::default(),
        )?;
        h.set_up(br.index)?;
        let host = Host {
            ns,
            run: TempDir::new("pm-run")?,
            plugin,
            dir: dir.to_path_buf(),
        };
        // Like any real host, track connections (a ct rule registers
        // conntrack in this namespace) and have one tracked: a plugin
        // with UDP mappings then does the work it does on a real host.
        host.run_tool(
            "nft",
            &["-f", "-"],
            "add table inet bench\nadd chain inet bench out { type filter hook output priority 0; }\nadd rule inet bench out ct state new counter\n",
        )?;
        host.track_a_flow()?;
        Ok(host)
    }

    /// Sends one UDP datagram to 127.0.0.1 inside the namespace, so
    /// conntrack holds an entry (for 30 s).
    fn track_a_flow(&self) -> Result<()> {
        let ns = berth_kernel::Netns::open(std::path::Path::new(&self.ns.path))?;
        ns.run(|| -> std::io::Result<()> {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.send_to(b"x", "127.0.0.1:9")?;
            Ok(())
        })??;
        Ok(())
    }

    fn conf(&self, i: usize, first_port: u16, container_ns: &str) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": NETWORK, "type": self.plugin,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": first_port, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": first_port + 1, "containerPort": 53, "protocol": "udp"}
            ]},
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": container_ns}],
                "ips": [{"address": format!("{}/16", container_ip(i)), "gateway": "10.200.0.1", "interface": 0}]
            }
        })
    }

    /// Runs the plugin inside this host namespace; returns milliseconds.
    fn exec(&self, command: &str, cid: &str, container_ns: &str, conf: &Value) -> Result<f64> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        let ns = berth_kernel::Netns::open(std::path::Path::new(&self.ns.path))?;
        let out = ns
            .run(|| {
                exec_plugin_env(
                    &self.dir,
                    self.plugin,
                    command,
                    cid,
                    container_ns,
                    conf,
                    &env,
                )
            })
            .context("enter the bench host namespace")??;
        if !out.ok {
            bail!("{} {command} {cid}: {}", self.plugin, out.describe());
        }
        Ok(ms(out.elapsed))
    }

    /// Runs `program args` inside this host namespace, feeding `input`.
    fn run_tool(&self, program: &str, args: &[&str], input: &str) -> Result<()> {
        let ns = berth_kernel::Netns::open(std::path::Path::new(&self.ns.path))?;
        let out = ns.run(|| -> Result<std::process::Output> {
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("run {program}"))?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
            Ok(child.wait_with_output()?)
        })??;
        if !out.status.success() {
            bail!(
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The reference's rules for `containers` containers of 2 mappings, in
/// iptables-restore form (see the module docs).
fn reference_rules(containers: usize) -> String {
    let mut s = String::from("*nat\n");
    for i in 0..containers {
        let _ = writeln!(s, ":CNI-DN-{i:021x} - [0:0]");
    }
    for i in 0..containers {
        let chain = format!("CNI-DN-{i:021x}");
        let ip = container_ip(i);
        for (proto, port, cport) in [("tcp", 10000 + 2 * i, 80), ("udp", 10001 + 2 * i, 53)] {
            let _ = writeln!(
                s,
                "-A CNI-HOSTPORT-DNAT -p {proto} -m comment --comment \"dnat name: \\\"{NETWORK}\\\" id: \\\"pre{i}\\\"\" \
                 -m multiport --dports {port} -j {chain}"
            );
            for src in ["10.200.0.0/16", "127.0.0.1/32"] {
                let _ = writeln!(s, "-A {chain} -s {src} -p {proto} -m {proto} --dport {port} -j CNI-HOSTPORT-SETMARK");
            }
            let _ = writeln!(s, "-A {chain} -p {proto} -m {proto} --dport {port} -j DNAT --to-destination {ip}:{cport}");
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Times one implementation at one level: installs the level, then
/// returns the host for the rounds.
fn prepare(
    plugin: &'static str,
    dir: &std::path::Path,
    level: usize,
    container_ns: &str,
) -> Result<Host> {
    let host = Host::new(plugin, dir)?;
    let containers = level / 2;
    if plugin == "portmap" {
        // A real ADD and DEL first: the reference's base chains.
        let conf = host.conf(containers, PROBE_PORT_BASE - 2, container_ns);
        host.exec("ADD", "warm", container_ns, &conf)?;
        host.exec("DEL", "warm", container_ns, &conf)?;
        if containers > 0 {
            host.run_tool(
                "iptables-restore",
                &["--noflush"],
                &reference_rules(containers),
            )?;
        }
    } else {
        for i in 0..containers {
            let conf = host.conf(i, (10000 + 2 * i) as u16, container_ns);
            host.exec("ADD", &format!("pre{i}"), container_ns, &conf)?;
        }
    }
    Ok(host)
}

/// The firewall part of berth-portmap's ADD and DEL, for the current
/// code, timed in process: the one nf_tables batch the common ADD commits
/// (`add_elements_in`) and the one the common DEL commits
/// (`remove_elements_in`), in a namespace of its own holding the level's
/// mappings (the structure and their elements made by one `rebuild_in`),
/// with the very elements berth-portmap's plan makes for the measured
/// container (see [`published`]).
struct Firewall {
    _ns: Netns,
    ns: berth_kernel::Netns,
}

/// The conditions-less profile every mapping of this part uses.
fn no_conditions() -> Conditions {
    Conditions::default()
}

/// What berth-portmap publishes for container `i` with [`Host::conf`]'s
/// two mappings, snat on (its default): one TCP and one UDP mapping on any
/// address, the container address for forwarding, its host-side link (the
/// bench host's bridge) for hairpin and its address for 127.0.0.1.
fn published(i: usize, first_port: u16) -> PublishedPorts {
    let c = std::net::IpAddr::V4(container_addr(i));
    let mapping = |protocol, host_port, container_port| PortMapping {
        protocol,
        host_ip: None,
        host_port,
        container_ip: c,
        container_port,
    };
    PublishedPorts {
        conditions: no_conditions(),
        mappings: vec![
            mapping(Protocol::Tcp, first_port, 80),
            mapping(Protocol::Udp, first_port + 1, 53),
        ],
        container_ips: vec![c],
        hairpin: vec![(c, BRIDGE.to_string())],
        localhost: vec![c],
        masq_all: Vec::new(),
    }
}

impl Firewall {
    /// A namespace with nothing in its ruleset.
    fn empty() -> Result<Firewall> {
        let ns = Netns::new(format!("bpmf-{}-{}", std::process::id(), sys::next_id()))?;
        let kns = berth_kernel::Netns::open(std::path::Path::new(&ns.path))?;
        Ok(Firewall { _ns: ns, ns: kns })
    }

    /// A namespace with the structure and `level` mappings (level / 2
    /// containers, numbered and with host ports as [`prepare`] installs
    /// them) in place.
    fn new(level: usize) -> Result<Firewall> {
        let fw = Firewall::empty()?;
        let installed: Vec<PublishedPorts> = (0..level / 2)
            .map(|i| published(i, (10000 + 2 * i) as u16))
            .collect();
        let refs: Vec<&PublishedPorts> = installed.iter().collect();
        let profile = no_conditions();
        rebuild_in(Some(&fw.ns), &[&profile], None, &refs)
            .context("install the level's mappings in process")?;
        Ok(fw)
    }

    /// The common ADD's batch, then the common DEL's: their times in ms.
    fn add_del(&self, ports: &PublishedPorts) -> Result<[f64; 2]> {
        let t = Instant::now();
        let added = add_elements_in(Some(&self.ns), None, ports)?;
        let add = ms(t.elapsed());
        let t = Instant::now();
        let removed = remove_elements_in(Some(&self.ns), ports)?;
        let del = ms(t.elapsed());
        if !added || !removed {
            bail!(
                "the firewall part found the structure missing (added {added}, removed {removed})"
            );
        }
        Ok([add, del])
    }

    /// With nothing else published, as a first ADD and a last DEL do it
    /// (see berth-network's ports::install and release): the structure
    /// and the elements in one `rebuild_in`; `unpublish_in` with no other
    /// profile, then the table removed if nothing else is in it. Their
    /// times in ms.
    fn first_last(&self, ports: &PublishedPorts) -> Result<[f64; 2]> {
        let profile = no_conditions();
        let t = Instant::now();
        rebuild_in(Some(&self.ns), &[&profile], None, &[ports])?;
        let first = ms(t.elapsed());
        let t = Instant::now();
        unpublish_in(Some(&self.ns), &[], ports)?;
        remove_table_if_empty_in(Some(&self.ns))?;
        let last = ms(t.elapsed());
        Ok([first, last])
    }
}

/// The median and p90 of `v`.
fn spread(v: &[f64]) -> Spread {
    Spread {
        median_ms: median(v),
        p90_ms: quantile(v, 0.9),
        growth: None,
    }
}

/// One implementation's medians at a level, with their growth over `base`
/// (the first level's).
fn side(m: [Option<f64>; 2], base: [Option<f64>; 2]) -> PortmapSide {
    PortmapSide {
        add_ms: m[0],
        del_ms: m[1],
        add_growth: ratio(m[0], base[0]),
        del_growth: ratio(m[1], base[1]),
    }
}

pub fn portmap_levels(
    berth_dir: &std::path::Path,
    before_dir: Option<&std::path::Path>,
    ref_dir: &std::path::Path,
    reps: usize,
) -> Result<Vec<PortmapRow>> {
    let container = Netns::new(format!("bpmc-{}-{}", std::process::id(), sys::next_id()))?;
    let cns = container.path.clone();
    let mut rows = Vec::new();
    // Per implementation (berth, [before,] reference): ADD, DEL medians
    // at the first level.
    let mut base: Option<Vec<[Option<f64>; 2]>> = None;
    // With nothing published at all (first ADD, last DEL), in process.
    let empty = Firewall::empty()?;
    for level in LEVELS {
        eprintln!("portmap: installing {level} mappings per implementation");
        let mut hosts = vec![prepare("berth-portmap", berth_dir, level, &cns)?];
        if let Some(dir) = before_dir {
            hosts.push(prepare("berth-portmap", dir, level, &cns)?);
        }
        hosts.push(prepare("portmap", ref_dir, level, &cns)?);
        let firewall = Firewall::new(level)?;
        eprintln!("portmap: {reps} rounds at {level} mappings");
        for h in &hosts {
            h.track_a_flow()?;
        }
        // Per host: ADD, DEL.
        let mut samples: Vec<[Vec<f64>; 2]> = vec![Default::default(); hosts.len()];
        // The firewall part: ADD, DEL; with nothing published: first, last.
        let mut fw: [Vec<f64>; 4] = Default::default();
        // One warm-up round, not counted.
        for round in 0..=reps {
            let i = level / 2 + 1 + round;
            let port = PROBE_PORT_BASE + 2 * round as u16;
            let cid = format!("probe{round}");
            let confs: Vec<Value> = hosts.iter().map(|h| h.conf(i, port, &cns)).collect();
            let mut times = vec![[0.0; 2]; hosts.len()];
            // The order rotates round by round, so that no implementation
            // always follows the same one.
            let order = rotated(&(0..hosts.len()).collect::<Vec<usize>>(), round);
            for &s in &order {
                times[s][0] = hosts[s].exec("ADD", &cid, &cns, &confs[s])?;
            }
            for &s in &order {
                times[s][1] = hosts[s].exec("DEL", &cid, &cns, &confs[s])?;
            }
            let ports = published(i, port);
            let [add, del] = firewall.add_del(&ports)?;
            let first_last = if level == 0 {
                Some(empty.first_last(&ports)?)
            } else {
                None
            };
            if round > 0 {
                for (s, t) in times.iter().enumerate() {
                    samples[s][0].push(t[0]);
                    samples[s][1].push(t[1]);
                }
                fw[0].push(add);
                fw[1].push(del);
                if let Some([first, last]) = first_last {
                    fw[2].push(first);
                    fw[3].push(last);
                }
            }
        }
        let m: Vec<[Option<f64>; 2]> = samples
            .iter()
            .map(|[a, d]| [median(a), median(d)])
            .collect();
        let base = base.get_or_insert_with(|| m.clone());
        let sides: Vec<PortmapSide> = m
            .iter()
            .zip(base.iter())
            .map(|(m, b)| side(*m, *b))
            .collect();
        let mut sides = sides.into_iter();
        let berth = sides.next().context("no berth figures")?;
        let before = if before_dir.is_some() {
            sides.next()
        } else {
            None
        };
        let r = sides.next().context("no reference figures")?;
        let reference = PortmapRefSide {
            plugin: "portmap (iptables)",
            add_ms: r.add_ms,
            del_ms: r.del_ms,
            add_growth: r.add_growth,
            del_growth: r.del_growth,
        };
        rows.push(PortmapRow {
            installed_mappings: level,
            add_ratio: ratio(reference.add_ms, berth.add_ms),
            del_ratio: ratio(reference.del_ms, berth.del_ms),
            add_ratio_before: before.as_ref().and_then(|b| ratio(b.add_ms, berth.add_ms)),
            del_ratio_before: before.as_ref().and_then(|b| ratio(b.del_ms, berth.del_ms)),
            firewall: FirewallPart {
                add: spread(&fw[0]),
                del: spread(&fw[1]),
                first_add: (level == 0).then(|| spread(&fw[2])),
                last_del: (level == 0).then(|| spread(&fw[3])),
                target_ms: FIREWALL_TARGET_MS,
            },
            berth,
            before,
            reference,
        });
    }
    Ok(rows)
}

/// Issue 30's target for the firewall part of an ADD and of a DEL.
pub(crate) const FIREWALL_TARGET_MS: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_addresses_count_in_250s() {
        assert_eq!(container_ip(0), "10.200.0.2");
        assert_eq!(container_ip(249), "10.200.0.251");
        assert_eq!(container_ip(250), "10.200.1.2");
        assert_eq!(container_ip(4999), "10.200.19.251");
    }

    #[test]
    fn reference_rules_have_the_reference_layout() {
        let r = reference_rules(2);
        assert_eq!(r.matches(":CNI-DN-").count(), 2);
        assert_eq!(r.matches("-A CNI-HOSTPORT-DNAT").count(), 4);
        assert_eq!(r.matches("-j CNI-HOSTPORT-SETMARK").count(), 8);
        assert_eq!(
            r.matches("-j DNAT --to-destination 10.200.0.3:53").count(),
            1
        );
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }
}
