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
//! each one exec of the plugin as a runtime does it, medians reported.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::exec::exec_plugin_env;
use crate::report::{PortmapRefSide, PortmapRow, PortmapSide};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, TempDir};

pub const LEVELS: [usize; 3] = [0, 1000, 5000];
/// Host ports of the measured containers (above the installed ones).
const PROBE_PORT_BASE: u16 = 60000;
const NETWORK: &str = "bench-pm";

/// The containers' addresses: 10.200.0.0/16, container `i` at
/// 10.200.<i/250>.<i%250 + 2> (.1 of the first /24 is the bridge's).
fn container_ip(i: usize) -> String {
    format!("10.200.{}.{}", i / 250, i % 250 + 2)
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
        h.add_bridge("pmbench0", &berth_kernel::BridgeOptions::default())
            .context("bridge in the bench host")?;
        let br = h.link_by_name("pmbench0")?.context("bridge vanished")?;
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

pub fn portmap_levels(
    berth_dir: &std::path::Path,
    ref_dir: &std::path::Path,
    reps: usize,
) -> Result<Vec<PortmapRow>> {
    let container = Netns::new(format!("bpmc-{}-{}", std::process::id(), sys::next_id()))?;
    let cns = container.path.clone();
    let mut rows = Vec::new();
    let mut base: Option<[Option<f64>; 4]> = None;
    for level in LEVELS {
        eprintln!("portmap: installing {level} mappings per implementation");
        let hosts = [
            prepare("berth-portmap", berth_dir, level, &cns)?,
            prepare("portmap", ref_dir, level, &cns)?,
        ];
        eprintln!("portmap: {reps} rounds at {level} mappings");
        for h in &hosts {
            h.track_a_flow()?;
        }
        let mut samples: [Vec<f64>; 4] = Default::default();
        // One warm-up round, not counted.
        for round in 0..=reps {
            let i = level / 2 + 1 + round;
            let port = PROBE_PORT_BASE + 2 * round as u16;
            let cid = format!("probe{round}");
            let confs: Vec<Value> = hosts.iter().map(|h| h.conf(i, port, &cns)).collect();
            let mut times = [0.0; 4];
            for (s, h) in hosts.iter().enumerate() {
                times[2 * s] = h.exec("ADD", &cid, &cns, &confs[s])?;
            }
            for (s, h) in hosts.iter().enumerate() {
                times[2 * s + 1] = h.exec("DEL", &cid, &cns, &confs[s])?;
            }
            if round > 0 {
                for (k, t) in times.into_iter().enumerate() {
                    samples[k].push(t);
                }
            }
        }
        let m = samples.map(|v| median(&v));
        let base = *base.get_or_insert(m);
        rows.push(PortmapRow {
            installed_mappings: level,
            berth: PortmapSide {
                add_ms: m[0],
                del_ms: m[1],
                add_growth: ratio(m[0], base[0]),
                del_growth: ratio(m[1], base[1]),
            },
            reference: PortmapRefSide {
                plugin: "portmap (iptables)",
                add_ms: m[2],
                del_ms: m[3],
                add_growth: ratio(m[2], base[2]),
                del_growth: ratio(m[3], base[3]),
            },
            add_ratio: ratio(m[2], m[0]),
            del_ratio: ratio(m[3], m[1]),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

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
