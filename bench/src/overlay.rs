//! `overlay` part: issue 6's performance targets for berth-overlay.
//!
//! * Throughput. Two "hosts" (namespaces H1, H2) joined by a veth underlay
//!   `ovu` (192.168.77.1 and .2, MTU 1500). Three paths over it, in the
//!   same two hosts:
//!   - berth: berth-overlay ADDs container C1 on H1 and C2 on H2 (static
//!     store, VNI 42; the plugin runs inside the host's namespace, as a
//!     runtime there would run it), then iperf3 TCP from C1 to C2: eth0
//!     (MTU 1450), the veth's host end on bridge bov42, routed by H1 onto
//!     berth.42, the underlay, and the same back down in H2.
//!   - hand_container (the baseline the target is judged against): the
//!     same container-to-container path built by hand with `ip`/`bridge`
//!     only (no berth code) for containers D1 on H1 and D2 on H2, the L3
//!     design berth-overlay uses: on host n a bridge hbr with the gateway
//!     172.31.n.1/24, a veth with eth0 in Dn (172.31.n.2/24, default route
//!     via the gateway), a VXLAN device vxh (VNI 98, port 4790, local
//!     underlay address, dev ovu, nolearning, MAC 02:ee:+underlay address
//!     so as not to take berth.42's) holding the VTEP address
//!     172.31.n.0/32, and for the peer a static FDB entry (its VTEP MAC at
//!     its underlay address), a permanent neighbour (its VTEP address at
//!     that MAC) and the route `172.31.<peer>.0/24 via 172.31.<peer>.0 dev
//!     vxh onlink`. MTU 1450 on eth0, both veth ends, the bridge and vxh;
//!     IP forwarding on in the hosts. iperf3 from D1 to D2.
//!   - raw_vxlan (informational): a VXLAN device between the hosts
//!     themselves (`vxb`, VNI 99, port 4790, MTU 1450, nolearning, one
//!     all-zeros FDB entry to the peer), iperf3 host to host: no veth,
//!     bridge or forwarding, so a ceiling rather than a like-for-like
//!     baseline; its ratio is shown but not judged.
//!
//!   After a 1 s warm-up of each path (not counted), R runs of S seconds
//!   alternate (berth, hand_container, raw_vxlan, berth, ...): medians,
//!   the ratio berth/hand_container (target ≥ 0.90) and berth/raw_vxlan,
//!   TCP retransmits. Fragmentation: IP FragCreates and ReasmReqds of every
//!   namespace on a path, read before and after each of its runs (target:
//!   no change on any of the three).
//! * Convergence. One host namespace HN (`ovu` 192.168.78.1/24 on a veth)
//!   with etcd listening on 127.0.0.1 there only, and berth-overlay's
//!   agent (VNI 77, etcd store). The subnet records of N simulated nodes
//!   (10.200.1.0/24 ...; underlay addresses that need not exist) are put
//!   first; then the agent starts, claims the first free subnet
//!   (10.200.0.0/24) and programs the nodes. The routes in HN are read
//!   over netlink every 10 ms. Timed:
//!   - initial: agent start → all N onlink routes on berth.77 (process
//!     start, store read and claim included);
//!   - join: from sending a new record's put (etcd's commit included) to
//!     its route; leave: from sending a record's delete to its route gone;
//!     5 each, median and max.
//!
//!   Target: < 1 s each (for join and leave, every one of them). Last, the
//!   FDB of berth.77 must name exactly the live nodes' underlay addresses.
//!
//! Everything runs in namespaces the bench creates, so no traffic leaves
//! them. The daemons (iperf3 servers, etcd, the agent) are stopped by PID,
//! berth's containers DELeted through the plugin, and the namespaces (with
//! all links in them, the hand-built ones included) and temp dirs removed,
//! on failure as well.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Value};

use crate::exec::exec_plugin_env;
use crate::report::{self, Convergence, FlowReport, Mtu, Overlay, Throughput};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, Proc, TempDir};

/// berth's throughput over the hand-built container path's, at least.
pub const TARGET_RATIO: f64 = 0.90;
/// Convergence (initial, each join, each leave), under.
pub const TARGET_MS: f64 = 1000.0;
/// Joins and leaves timed.
const CHURN: usize = 5;
/// Simulated nodes are 10.200.1.0/24 .. 10.200.N.0/24 and the joiners the
/// next CHURN /24s, all in the agent's 10.200.0.0/16.
pub const MAX_NODES: usize = 255 - CHURN;
const IPERF_PORT: &str = "5201";
/// How often the convergence part reads the routes.
const POLL: Duration = Duration::from_millis(10);

/// Both halves; an error in one is reported next to the other's figures.
pub fn overlay(
    berth_dir: &Path,
    nodes: usize,
    iperf_secs: u64,
    iperf_reps: usize,
) -> Result<Overlay> {
    let plugin = berth_dir.join("berth-overlay");
    if !plugin.is_file() {
        bail!(
            "{} not found (build with `cargo build --release -p berth-overlay` or pass --cni-path-berth)",
            plugin.display()
        );
    }
    eprintln!(
        "overlay: throughput, berth, hand-built container path and raw VXLAN alternating, {iperf_reps} x {iperf_secs} s each"
    );
    let (throughput, throughput_error) =
        report::split(throughput(berth_dir, iperf_secs, iperf_reps));
    eprintln!("overlay: convergence, the agent with etcd and {nodes} nodes");
    let (convergence, convergence_error) = report::split(convergence(berth_dir, nodes));
    Ok(Overlay {
        throughput,
        throughput_error,
        convergence,
        convergence_error,
    })
}

// ---------------------------------------------------------------------------
// processes and tools

/// `program args` in the bench's own namespace (iproute2 with `-n NS`
/// reaches the others); its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `cmd` inside `ns`; stopped by its PID when the guard drops.
fn spawn_in(ns: &Netns, mut cmd: Command, what: &str) -> Result<Proc> {
    let child = ns.run(move || cmd.spawn().with_context(|| format!("start {what}")))?;
    Ok(Proc(child))
}

/// Fails if the daemon has exited (it should run until we stop it).
fn still_running(p: &mut Proc, what: &str) -> Result<()> {
    match p.0.try_wait()? {
        Some(status) => bail!("{what} exited: {status}"),
        None => Ok(()),
    }
}

fn ns_name(tag: &str) -> String {
    format!("bov-{}-{}-{tag}", std::process::id(), sys::next_id())
}

// ---------------------------------------------------------------------------
// throughput

/// A simulated host of the throughput half: its namespace, the plugin's
/// run dir (BERTH_RUN_DIR) and IPAM dataDir, and its network config.
struct OvHost {
    ns: Netns,
    run: TempDir,
    _data: TempDir,
    conf: Value,
}

impl OvHost {
    /// `subnet`: this host's; the peer (the other host) at `peer_underlay`
    /// holds `peer_subnet`.
    fn new(tag: &str, subnet: &str, peer_underlay: &str, peer_subnet: &str) -> Result<OvHost> {
        let ns = Netns::new(ns_name(tag))?;
        let run = TempDir::new(&format!("ov-run-{tag}"))?;
        let data = TempDir::new(&format!("ov-data-{tag}"))?;
        let conf = json!({
            "cniVersion": "1.1.0", "name": "bench-ov", "type": "berth-overlay",
            "network": "10.244.0.0/16", "subnetLen": 24, "vni": 42, "iface": "ovu",
            "dataDir": data.path(),
            "store": {"static": {"subnet": subnet, "peers": [
                {"node": format!("peer-of-{tag}"), "underlay": peer_underlay, "subnet": peer_subnet}
            ]}}
        });
        Ok(OvHost {
            ns,
            run,
            _data: data,
            conf,
        })
    }

    /// One plugin run inside this host's namespace; its stdout.
    fn exec(
        &self,
        berth_dir: &Path,
        command: &str,
        cid: &str,
        container: &Netns,
    ) -> Result<String> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        let out = self.ns.run(|| {
            exec_plugin_env(
                berth_dir,
                "berth-overlay",
                command,
                cid,
                &container.path,
                &self.conf,
                &env,
            )
        })?;
        if !out.ok {
            bail!(
                "berth-overlay {command} {cid} on {}: {}",
                self.ns.name(),
                out.describe()
            );
        }
        Ok(out.stdout)
    }
}

/// A container attached through the plugin, DELeted (same config) on
/// drop.
struct Attached<'a> {
    host: &'a OvHost,
    container: &'a Netns,
    cid: &'static str,
    berth_dir: &'a Path,
    /// Its address (ips[0] of the ADD result).
    ip: String,
}

impl<'a> Attached<'a> {
    fn add(
        host: &'a OvHost,
        container: &'a Netns,
        cid: &'static str,
        berth_dir: &'a Path,
    ) -> Result<Attached<'a>> {
        let stdout = match host.exec(berth_dir, "ADD", cid, container) {
            Ok(s) => s,
            Err(e) => {
                // As a runtime does after a failed ADD.
                let _ = host.exec(berth_dir, "DEL", cid, container);
                return Err(e);
            }
        };
        // Attached from here on: the guard DELs even if the result is bad.
        let mut a = Attached {
            host,
            container,
            cid,
            berth_dir,
            ip: String::new(),
        };
        let result: Value = serde_json::from_str(&stdout)
            .with_context(|| format!("ADD {cid} result {stdout:?}"))?;
        a.ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|s| s.split('/').next())
            .with_context(|| format!("ADD {cid}: no ips[0].address in {stdout}"))?
            .to_string();
        Ok(a)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .host
            .exec(self.berth_dir, "DEL", self.cid, self.container)
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The underlay: one veth, `ovu` in each host, 192.168.77.1/24 and .2/24.
fn underlay(h1: &Netns, h2: &Netns) -> Result<()> {
    for h in [h1, h2] {
        run("ip", &["-n", h.name(), "link", "set", "lo", "up"])?;
    }
    run(
        "ip",
        &[
            "-n",
            h1.name(),
            "link",
            "add",
            "ovu",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "ovu",
            "mtu",
            "1500",
            "netns",
            h2.name(),
        ],
    )?;
    for (h, addr) in [(h1, "192.168.77.1/24"), (h2, "192.168.77.2/24")] {
        run("ip", &["-n", h.name(), "addr", "add", addr, "dev", "ovu"])?;
        run("ip", &["-n", h.name(), "link", "set", "ovu", "up"])?;
    }
    Ok(())
}

/// The raw baseline's VXLAN link in host `h`, with iproute2 only (nothing
/// of berth's code): another VNI and UDP port than berth.42, the same MTU,
/// and everything sent to the peer's VTEP by one all-zeros FDB entry.
fn raw_vxlan(h: &Netns, local: &str, peer: &str, addr: &str) -> Result<()> {
    let n = h.name();
    run(
        "ip",
        &[
            "-n",
            n,
            "link",
            "add",
            "vxb",
            "type",
            "vxlan",
            "id",
            "99",
            "dstport",
            "4790",
            "local",
            local,
            "dev",
            "ovu",
            "nolearning",
        ],
    )?;
    run("ip", &["-n", n, "link", "set", "vxb", "mtu", "1450", "up"])?;
    run("ip", &["-n", n, "addr", "add", addr, "dev", "vxb"])?;
    run(
        "bridge",
        &[
            "-n",
            n,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vxb",
            "dst",
            peer,
        ],
    )?;
    Ok(())
}

/// The hand-built container path's links in each host: bridge, VXLAN
/// device, host end of the container's veth.
pub(crate) const HAND_BRIDGE: &str = "hbr";
pub(crate) const HAND_VXLAN: &str = "vxh";
const HAND_VETH: &str = "hvd";
/// Its VNI (berth.42 has 42 on port 4789, the raw vxb 99 on port 4790).
pub(crate) const HAND_VNI: &str = "98";
const HAND_PORT: &str = "4790";

/// Host `n`'s underlay address (n = 1, 2).
fn underlay_addr(n: u8) -> String {
    format!("192.168.77.{n}")
}

/// Host `n`'s vxh MAC: 02:ee + its underlay address (berth's VTEP MACs are
/// 02:bf + the underlay address; both devices live in the same host).
fn hand_vtep_mac(n: u8) -> String {
    format!("02:ee:c0:a8:4d:{n:02x}")
}

/// Host `n`'s container subnet on the hand-built path: 172.31.n.0/24,
/// VTEP 172.31.n.0, gateway (bridge) 172.31.n.1, container 172.31.n.2.
pub(crate) fn hand_subnet(n: u8, host: u8) -> String {
    format!("172.31.{n}.{host}")
}

/// Host `n` of the hand-built container path (peer host `p`), with
/// iproute2 only and no berth code, the L3 design berth-overlay builds:
/// container `d`'s eth0 on a veth whose host end is a port of bridge hbr
/// (the gateway, 172.31.n.1/24); VXLAN vxh (local underlay address, dev
/// ovu, nolearning) with the VTEP address 172.31.n.0/32; for the peer a
/// static FDB entry (its VTEP MAC at its underlay address), a permanent
/// neighbour (its VTEP address at that MAC) and an onlink route to its
/// subnet via its VTEP address. MTU 1450 on every link of it, as on
/// berth's path; IP forwarding on in the host.
pub(crate) fn hand_container(h: &Netns, d: &Netns, n: u8, p: u8) -> Result<()> {
    let (hn, dn) = (h.name(), d.name());
    run(
        "ip",
        &[
            "netns",
            "exec",
            hn,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    // Bridge with the gateway address.
    run(
        "ip",
        &[
            "-n",
            hn,
            "link",
            "add",
            HAND_BRIDGE,
            "mtu",
            "1450",
            "type",
            "bridge",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            hn,
            "addr",
            "add",
            &format!("{}/24", hand_subnet(n, 1)),
            "dev",
            HAND_BRIDGE,
        ],
    )?;
    run("ip", &["-n", hn, "link", "set", HAND_BRIDGE, "up"])?;
    // The container's veth, eth0 in d.
    run(
        "ip",
        &[
            "-n", hn, "link", "add", HAND_VETH, "mtu", "1450", "type", "veth", "peer", "name",
            "eth0", "mtu", "1450", "netns", dn,
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            hn,
            "link",
            "set",
            HAND_VETH,
            "master",
            HAND_BRIDGE,
            "up",
        ],
    )?;
    run("ip", &["-n", dn, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "-n",
            dn,
            "addr",
            "add",
            &format!("{}/24", hand_subnet(n, 2)),
            "dev",
            "eth0",
        ],
    )?;
    run("ip", &["-n", dn, "link", "set", "eth0", "up"])?;
    run(
        "ip",
        &[
            "-n",
            dn,
            "route",
            "add",
            "default",
            "via",
            &hand_subnet(n, 1),
        ],
    )?;
    // VXLAN with this host's VTEP address.
    let local = underlay_addr(n);
    let mac = hand_vtep_mac(n);
    run(
        "ip",
        &[
            "-n",
            hn,
            "link",
            "add",
            HAND_VXLAN,
            "mtu",
            "1450",
            "address",
            &mac,
            "type",
            "vxlan",
            "id",
            HAND_VNI,
            "dstport",
            HAND_PORT,
            "local",
            &local,
            "dev",
            "ovu",
            "nolearning",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            hn,
            "addr",
            "add",
            &format!("{}/32", hand_subnet(n, 0)),
            "dev",
            HAND_VXLAN,
        ],
    )?;
    run("ip", &["-n", hn, "link", "set", HAND_VXLAN, "up"])?;
    // The peer.
    let (peer_mac, peer_vtep) = (hand_vtep_mac(p), hand_subnet(p, 0));
    run(
        "bridge",
        &[
            "-n",
            hn,
            "fdb",
            "replace",
            &peer_mac,
            "dev",
            HAND_VXLAN,
            "dst",
            &underlay_addr(p),
            "self",
            "permanent",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            hn,
            "neigh",
            "replace",
            &peer_vtep,
            "lladdr",
            &peer_mac,
            "dev",
            HAND_VXLAN,
            "nud",
            "permanent",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            hn,
            "route",
            "replace",
            &format!("{peer_vtep}/24"),
            "via",
            &peer_vtep,
            "dev",
            HAND_VXLAN,
            "onlink",
        ],
    )?;
    Ok(())
}

/// An iperf3 server in `ns` on `bind`, ready to take clients one after the
/// other.
pub(crate) fn iperf_server(ns: &Netns, bind: &str) -> Result<Proc> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-B", bind, "-p", IPERF_PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = spawn_in(ns, cmd, "iperf3 (Debian package iperf3)")?;
    let pid = p.0.id();
    let port: u16 = IPERF_PORT.parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Its own view of its namespace's sockets: no client connection is
    // spent on finding out (a connection is a test to iperf3).
    while !listening(pid, port) {
        still_running(&mut p, &format!("iperf3 -s -B {bind} in {}", ns.name()))?;
        if Instant::now() > deadline {
            bail!(
                "iperf3 -s -B {bind} in {} not listening after 10 s",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

/// Whether process `pid`'s network namespace has a TCP socket listening
/// on `port` (also bandwidth.rs's iperf3 servers).
pub(crate) fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .is_ok_and(|t| tcp_table_listens(&t, port))
    })
}

/// /proc/net/tcp: `sl local_address rem_address st ...`, the port in hex
/// after the address, state 0A = LISTEN.
fn tcp_table_listens(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3
            && f[3] == "0A"
            && f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    gbps: f64,
    retransmits: u64,
}

/// One iperf3 TCP run of `secs` seconds from `ns` to `server`.
fn iperf_client(ns: &Netns, server: &str, secs: u64) -> Result<Run> {
    let secs = secs.to_string();
    let out = ns.run(|| {
        Command::new("iperf3")
            .args([
                "-c",
                server,
                "-p",
                IPERF_PORT,
                "-t",
                &secs,
                "-J",
                "--connect-timeout",
                "5000",
            ])
            .stdin(Stdio::null())
            .output()
            .context("run iperf3 -c")
    })?;
    let what = || format!("iperf3 -c {server} from {}", ns.name());
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    parse_iperf(&v).with_context(what)
}

/// The receiver's rate and the sender's retransmits of an `iperf3 -J`
/// report.
fn parse_iperf(v: &Value) -> Result<Run> {
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in the report")?;
    Ok(Run {
        gbps: bps / 1e9,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// IP FragCreates and ReasmReqds (`Ip:` lines of /proc/net/snmp).
fn snmp_frag(text: &str) -> Result<[u64; 2]> {
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        bail!("no Ip: lines in /proc/net/snmp");
    };
    let row: HashMap<&str, &str> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    let get = |k: &str| -> Result<u64> {
        row.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no Ip: {k}"))
    };
    Ok([get("FragCreates")?, get("ReasmReqds")?])
}

/// The fragmentation counters summed over the namespaces of a path, each
/// read from inside it (/proc/thread-self: the reading thread's netns).
fn frag_counters(nss: &[&Netns]) -> Result<[u64; 2]> {
    let mut sum = [0; 2];
    for ns in nss {
        let text = ns.run(|| Ok(std::fs::read_to_string("/proc/thread-self/net/snmp")?))?;
        let c = snmp_frag(&text)?;
        sum[0] += c[0];
        sum[1] += c[1];
    }
    Ok(sum)
}

pub(crate) fn mtu_of(ns: &Netns, link: &str) -> Result<u32> {
    let mut h = sys::handle_in(ns)?;
    Ok(h.link_by_name(link)?
        .with_context(|| format!("no {link} in {}", ns.name()))?
        .mtu)
}

/// One path iperf3 measures: its key in the report, client namespace,
/// server address, the namespaces its packets cross (for the
/// fragmentation counters), and its runs.
pub(crate) struct Flow<'a> {
    key: &'static str,
    what: String,
    client: &'a Netns,
    server: String,
    crossed: Vec<&'a Netns>,
    runs: Vec<Run>,
    /// FragCreates, ReasmReqds added during its runs.
    pub(crate) frag: [u64; 2],
}

impl<'a> Flow<'a> {
    /// A path with no runs yet.
    pub(crate) fn new(
        key: &'static str,
        what: String,
        client: &'a Netns,
        server: &str,
        crossed: Vec<&'a Netns>,
    ) -> Flow<'a> {
        Flow {
            key,
            what,
            client,
            server: server.to_string(),
            crossed,
            runs: Vec::new(),
            frag: [0; 2],
        }
    }

    pub(crate) fn gbps(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.gbps).collect()
    }

    pub(crate) fn report(&self) -> FlowReport {
        FlowReport {
            path: self.what.clone(),
            gbps: self.gbps(),
            median_gbps: median(&self.gbps()),
            retransmits: self.runs.iter().map(|r| r.retransmits).collect(),
            frag_creates: self.frag[0],
            reasm_reqds: self.frag[1],
        }
    }
}

/// Runs the paths' iperf3 clients: a 1 s warm-up of each (not counted),
/// then `reps` runs of `secs` seconds alternating path by path (each
/// path's fragmentation counters read around its runs). Progress on
/// stderr under `part`.
pub(crate) fn alternate(part: &str, paths: &mut [Flow<'_>], secs: u64, reps: usize) -> Result<()> {
    // Warm-up, not counted: neighbour resolution, first-use allocations.
    for p in paths.iter() {
        iperf_client(p.client, &p.server, 1).with_context(|| format!("{} warm-up", p.key))?;
    }
    for rep in 0..reps {
        for p in paths.iter_mut() {
            let before = frag_counters(&p.crossed)?;
            let r = iperf_client(p.client, &p.server, secs)
                .with_context(|| format!("{} run {}", p.key, rep + 1))?;
            let after = frag_counters(&p.crossed)?;
            for k in 0..2 {
                p.frag[k] += after[k].saturating_sub(before[k]);
            }
            eprintln!(
                "{part}: run {}/{reps} {:<14} {:6.2} Gbit/s, {} retransmits",
                rep + 1,
                p.key,
                r.gbps,
                r.retransmits
            );
            p.runs.push(r);
        }
    }
    Ok(())
}

fn throughput(berth_dir: &Path, secs: u64, reps: usize) -> Result<Throughput> {
    let h1 = OvHost::new("h1", "10.244.1.0/24", "192.168.77.2", "10.244.2.0/24")?;
    let h2 = OvHost::new("h2", "10.244.2.0/24", "192.168.77.1", "10.244.1.0/24")?;
    // berth's containers, and the hand-built path's.
    let c1 = Netns::new(ns_name("c1"))?;
    let c2 = Netns::new(ns_name("c2"))?;
    let d1 = Netns::new(ns_name("d1"))?;
    let d2 = Netns::new(ns_name("d2"))?;
    underlay(&h1.ns, &h2.ns)?;
    raw_vxlan(&h1.ns, "192.168.77.1", "192.168.77.2", "172.31.99.1/24")?;
    raw_vxlan(&h2.ns, "192.168.77.2", "192.168.77.1", "172.31.99.2/24")?;
    hand_container(&h1.ns, &d1, 1, 2)?;
    hand_container(&h2.ns, &d2, 2, 1)?;
    let a1 = Attached::add(&h1, &c1, "bench-ov-c1", berth_dir)?;
    let a2 = Attached::add(&h2, &c2, "bench-ov-c2", berth_dir)?;
    let mtu = Mtu {
        underlay: mtu_of(&h1.ns, "ovu")?,
        berth_eth0: mtu_of(&c1, "eth0")?,
        berth_bridge: mtu_of(&h1.ns, "bov42")?,
        berth_vxlan: mtu_of(&h1.ns, "berth.42")?,
        hand_eth0: mtu_of(&d1, "eth0")?,
        hand_bridge: mtu_of(&h1.ns, HAND_BRIDGE)?,
        hand_vxlan: mtu_of(&h1.ns, HAND_VXLAN)?,
        raw_vxlan: mtu_of(&h1.ns, "vxb")?,
    };
    let hand_server = hand_subnet(2, 2);
    // Dropped (stopped) before the containers are DELeted.
    let _servers = [
        iperf_server(&c2, &a2.ip)?,
        iperf_server(&d2, &hand_server)?,
        iperf_server(&h2.ns, "172.31.99.2")?,
    ];
    let flow = Flow::new;
    let mut paths = [
        flow(
            "berth",
            format!("container {} -> container {} over berth-overlay (eth0, bridge bov42, berth.42 VNI 42 port 4789)", a1.ip, a2.ip),
            &c1,
            &a2.ip,
            vec![&h1.ns, &h2.ns, &c1, &c2],
        ),
        flow(
            "hand_container",
            format!(
                "container {} -> container {hand_server} over a hand-built copy (eth0, bridge {HAND_BRIDGE}, {HAND_VXLAN} VNI {HAND_VNI} port {HAND_PORT})",
                hand_subnet(1, 2)
            ),
            &d1,
            &hand_server,
            vec![&h1.ns, &h2.ns, &d1, &d2],
        ),
        flow(
            "raw_vxlan",
            "host 172.31.99.1 -> host 172.31.99.2 over a hand-built VXLAN (vxb VNI 99 port 4790; no veth, bridge or forwarding)".into(),
            &h1.ns,
            "172.31.99.2",
            vec![&h1.ns, &h2.ns],
        ),
    ];
    alternate("overlay", &mut paths, secs, reps)?;
    let [berth, hand, raw] = &paths;
    let over = |other: &Flow| ratio(median(&berth.gbps()), median(&other.gbps()));
    let r = over(hand);
    Ok(Throughput {
        iperf_secs: secs,
        runs_per_path: reps,
        mtu,
        target_ratio: TARGET_RATIO,
        berth_over_hand_container: r,
        ratio_pass: r.is_some_and(|r| r >= TARGET_RATIO),
        berth_over_raw_vxlan: over(raw),
        no_fragmentation: paths.iter().all(|p| p.frag == [0, 0]),
        berth: berth.report(),
        hand_container: hand.report(),
        raw_vxlan: raw.report(),
    })
}

// ---------------------------------------------------------------------------
// convergence

const CONV_NETWORK: &str = "bench-conv";
const CONV_PREFIX: &str = "/bench";
const CONV_VXLAN: &str = "berth.77";

/// Simulated node `k` (1-based) holds 10.200.k.0/24.
fn node_subnet(k: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 200, k as u8, 0), 24).expect("a /24")
}

/// Node `k`'s underlay address: unique per node, never the agent's
/// 192.168.78.1; it need not exist (nothing is sent to it).
fn node_underlay(k: usize) -> Ipv4Addr {
    let h = k + 1;
    if h <= 254 {
        Ipv4Addr::new(192, 168, 78, h as u8)
    } else {
        Ipv4Addr::new(192, 168, 79, (h - 254) as u8)
    }
}

/// The key of the lease of `subnet` on network `network` under `prefix`,
/// as the agent reads it.
pub(crate) fn lease_key(prefix: &str, network: &str, subnet: Ipv4Net) -> String {
    format!(
        "{prefix}/{network}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// A lease record as a node writes it (its VTEP MAC is derived from the
/// underlay address, so the record need not hold it).
pub(crate) fn lease_record(node: &str, underlay: Ipv4Addr, subnet: Ipv4Net) -> String {
    json!({"node": node, "underlay": underlay.to_string(), "subnet": subnet.to_string()})
        .to_string()
}

fn node_key(k: usize) -> String {
    lease_key(CONV_PREFIX, CONV_NETWORK, node_subnet(k))
}

fn node_record(k: usize) -> String {
    lease_record(&format!("n{k}"), node_underlay(k), node_subnet(k))
}

fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// One request to etcd's JSON gateway in `ns` (it listens on 127.0.0.1
/// there only), on a fresh connection closed after the answer.
fn etcd(ns: &Netns, path: &str, body: &Value) -> Result<Value> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 2379));
    let mut s = ns.run(|| Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1))?))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, payload) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("etcd {path}: not HTTP: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("etcd {path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(payload).with_context(|| format!("etcd {path}: {payload:?}"))
}

/// Waits (up to 30 s) until etcd `proc`, listening on 127.0.0.1:2379 in
/// `ns`, answers a range request; fails at once if it exits.
pub(crate) fn wait_etcd(ns: &Netns, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = etcd(ns, "/v3/kv/range", &json!({"key": b64(b"/")})) {
        still_running(proc, "etcd")?;
        if Instant::now() > deadline {
            bail!("etcd not answering after 30 s: {e:#}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn etcd_put(ns: &Netns, key: &str, value: &str) -> Result<()> {
    etcd(
        ns,
        "/v3/kv/put",
        &json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}),
    )
    .map(|_| ())
}

pub(crate) fn etcd_del(ns: &Netns, key: &str) -> Result<()> {
    let v = etcd(
        ns,
        "/v3/kv/deleterange",
        &json!({"key": b64(key.as_bytes())}),
    )?;
    if v["deleted"] != "1" {
        bail!("etcd: {key} was not there to delete: {v}");
    }
    Ok(())
}

/// The agent's peer routes: IPv4 onlink routes on berth.77 (none before
/// the device exists).
fn onlink_routes(h: &mut berth_kernel::Handle) -> Result<BTreeSet<Ipv4Net>> {
    let Some(vx) = h.link_by_name(CONV_VXLAN)? else {
        return Ok(BTreeSet::new());
    };
    Ok(h.routes()?
        .into_iter()
        .filter(|r| r.oif == Some(vx.index) && r.onlink)
        .filter_map(|r| match r.dst {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect())
}

/// The last lines of the agent's stderr, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The agent with its HN-side plumbing, for the polls.
struct Watch<'a> {
    h: berth_kernel::Handle,
    agent: &'a mut Proc,
    log: &'a Path,
}

impl Watch<'_> {
    /// Polls the routes every POLL until `done` holds of them. Fails
    /// after `limit`, or at once if the agent exited.
    fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&BTreeSet<Ipv4Net>) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let routes = onlink_routes(&mut self.h)?;
            if done(&routes) {
                return Ok(());
            }
            if let Err(e) = still_running(self.agent, "the agent") {
                bail!("{e:#} (its log: {})", log_tail(self.log));
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {limit:?} ({} onlink routes on {CONV_VXLAN}; agent log: {})",
                    routes.len(),
                    log_tail(self.log)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The pause before join/leave `j`. An agent that reads the store on a
/// fixed period (its static-store loop and its fallback poll: 250 ms) saw
/// the previous change just after one of its reads, so a fixed pause
/// would meet its loop at the same phase every time; steps of 50 ms sweep
/// one period over the 5 changes. (A watching agent is indifferent.)
fn pause(j: usize) -> Duration {
    Duration::from_millis(300 + 50 * j as u64)
}

fn convergence(berth_dir: &Path, nodes: usize) -> Result<Convergence> {
    let hn = Netns::new(ns_name("hn"))?;
    let dir = TempDir::new("ov-conv")?;
    let n = hn.name();
    run("ip", &["-n", n, "link", "set", "lo", "up"])?;
    // The underlay: any up link with an IPv4 address (a veth; no dummy
    // driver needed). Peers' underlay addresses are never sent to.
    run(
        "ip",
        &[
            "-n", n, "link", "add", "ovu", "type", "veth", "peer", "name", "ovp",
        ],
    )?;
    run(
        "ip",
        &["-n", n, "addr", "add", "192.168.78.1/24", "dev", "ovu"],
    )?;
    run("ip", &["-n", n, "link", "set", "ovp", "up"])?;
    run("ip", &["-n", n, "link", "set", "ovu", "up"])?;

    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "b", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "b=http://127.0.0.1:2380",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut etcd_proc = spawn_in(&hn, cmd, "etcd (Debian package etcd-server)")?;
    wait_etcd(&hn, &mut etcd_proc)?;

    let t = Instant::now();
    for k in 1..=nodes {
        etcd_put(&hn, &node_key(k), &node_record(k))?;
    }
    let put_ms = ms(t.elapsed());

    let conf_path = dir.path().join("agent.conf");
    let conf = json!({
        "cniVersion": "1.1.0", "name": CONV_NETWORK, "type": "berth-overlay",
        "network": "10.200.0.0/16", "subnetLen": 24, "vni": 77, "iface": "ovu", "node": "self",
        "store": {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "prefix": CONV_PREFIX}}
    });
    std::fs::write(&conf_path, serde_json::to_vec_pretty(&conf)?)?;
    let log = dir.path().join("agent.log");
    let mut cmd = Command::new(berth_dir.join("berth-overlay"));
    cmd.args(["agent", "--conf"])
        .arg(&conf_path)
        .env("BERTH_RUN_DIR", dir.path().join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let h = sys::handle_in(&hn)?;
    let want: BTreeSet<Ipv4Net> = (1..=nodes).map(node_subnet).collect();
    let start = Instant::now();
    // Declared after etcd: stopped first.
    let mut agent = spawn_in(&hn, cmd, "berth-overlay agent")?;
    let mut watch = Watch {
        h,
        agent: &mut agent,
        log: &log,
    };
    watch.until(
        Duration::from_secs(30),
        &format!("all {nodes} nodes' routes"),
        |r| want.is_subset(r),
    )?;
    let initial_ms = ms(start.elapsed());
    eprintln!("overlay: {nodes} nodes programmed {initial_ms:.0} ms after the agent started");

    let mut join_ms = Vec::new();
    for j in 0..CHURN {
        let k = nodes + 1 + j;
        std::thread::sleep(pause(j));
        let t = Instant::now();
        etcd_put(&hn, &node_key(k), &node_record(k))?;
        watch.until(
            Duration::from_secs(10),
            &format!("join of {}", node_subnet(k)),
            |r| r.contains(&node_subnet(k)),
        )?;
        join_ms.push(ms(t.elapsed()));
    }
    let mut leave_ms = Vec::new();
    for j in 0..CHURN {
        let k = 1 + j;
        std::thread::sleep(pause(j));
        let t = Instant::now();
        etcd_del(&hn, &node_key(k))?;
        watch.until(
            Duration::from_secs(10),
            &format!("leave of {}", node_subnet(k)),
            |r| !r.contains(&node_subnet(k)),
        )?;
        leave_ms.push(ms(t.elapsed()));
    }
    eprintln!("overlay: joins {join_ms:.0?} ms, leaves {leave_ms:.0?} ms");

    // Nodes 1..CHURN left, N+1..N+CHURN joined. The agent has had a
    // period since the last change: the datapath should be settled.
    std::thread::sleep(Duration::from_millis(500));
    let live: BTreeSet<String> = (1 + CHURN..=nodes + CHURN)
        .map(|k| node_underlay(k).to_string())
        .collect();
    let fdb: Value = serde_json::from_str(&run(
        "bridge",
        &["-n", n, "-j", "fdb", "show", "dev", CONV_VXLAN],
    )?)?;
    let dsts: Vec<String> = fdb
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["dst"].as_str().map(String::from))
        .collect();
    let dst_set: BTreeSet<String> = dsts.iter().cloned().collect();
    let routes = onlink_routes(&mut watch.h)?;
    let vtep = {
        let vx = watch
            .h
            .link_by_name(CONV_VXLAN)?
            .context("berth.77 vanished")?;
        watch
            .h
            .addresses(Some(vx.index))?
            .iter()
            .find(|a| a.addr.addr().is_ipv4())
            .map(|a| a.addr.addr().to_string())
    };
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let under = |v: Option<f64>| v.is_some_and(|x| x < TARGET_MS);
    Ok(Convergence {
        nodes,
        records_put_ms: put_ms,
        agent_vtep_address: vtep,
        initial_ms,
        join_median_ms: median(&join_ms),
        join_max_ms: max(&join_ms),
        join_pass: under(max(&join_ms)),
        join_ms,
        leave_median_ms: median(&leave_ms),
        leave_max_ms: max(&leave_ms),
        leave_pass: under(max(&leave_ms)),
        leave_ms,
        target_ms: TARGET_MS,
        initial_pass: initial_ms < TARGET_MS,
        live_nodes: live.len(),
        fdb_entries_with_dst: dsts.len(),
        onlink_routes: routes.len(),
        fdb_matches_live_nodes: dsts.len() == live.len() && dst_set == live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_agents_format() {
        assert_eq!(node_key(5), "/bench/bench-conv/subnets/10.200.5.0-24");
        let v: Value = serde_json::from_str(&node_record(5)).unwrap();
        assert_eq!(
            v,
            json!({"node": "n5", "underlay": "192.168.78.6", "subnet": "10.200.5.0/24"})
        );
        let all: BTreeSet<Ipv4Addr> = (1..=MAX_NODES + CHURN).map(node_underlay).collect();
        assert_eq!(
            all.len(),
            MAX_NODES + CHURN,
            "underlay addresses are unique"
        );
        assert!(
            !all.contains(&Ipv4Addr::new(192, 168, 78, 1)),
            "the agent's own"
        );
        assert!(all
            .iter()
            .all(|a| a.octets()[3] != 0 && a.octets()[3] != 255));
        assert_eq!(
            node_subnet(MAX_NODES + CHURN).to_string(),
            "10.200.255.0/24"
        );
    }

    #[test]
    fn hand_built_path_names() {
        assert_eq!(underlay_addr(2), "192.168.77.2");
        assert_eq!(hand_vtep_mac(1), "02:ee:c0:a8:4d:01");
        assert_ne!(hand_vtep_mac(1), hand_vtep_mac(2));
        // Not berth.42's (02:bf + the underlay address).
        assert!(!hand_vtep_mac(2).starts_with("02:bf"));
        assert_eq!(hand_subnet(2, 0), "172.31.2.0");
        assert_eq!(hand_subnet(1, 2), "172.31.1.2");
    }

    #[test]
    fn base64() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"/bench/x"), "L2JlbmNoL3g=");
    }

    #[test]
    fn iperf_report() {
        let v = json!({"end": {"sum_sent": {"retransmits": 7}, "sum_received": {"bits_per_second": 12.5e9}}});
        assert_eq!(
            parse_iperf(&v).unwrap(),
            Run {
                gbps: 12.5,
                retransmits: 7
            }
        );
        assert!(parse_iperf(&json!({"error": "unable to connect"})).is_err());
        assert!(parse_iperf(&json!({})).is_err());
    }

    #[test]
    fn snmp_and_tcp_tables() {
        let snmp = "Ip: Forwarding DefaultTTL ReasmReqds FragCreates\nIp: 1 64 3 9\nIcmp: InMsgs\nIcmp: 0\n";
        assert_eq!(snmp_frag(snmp).unwrap(), [9, 3]);
        assert!(snmp_frag("Icmp: InMsgs\nIcmp: 0\n").is_err());
        let tcp = "  sl  local_address rem_address   st tx_queue\n   0: 0202F40A:1451 00000000:0000 0A 00000000:00000000\n   1: 0100007F:0050 0100007F:9C40 01 0\n";
        assert!(tcp_table_listens(tcp, 5201));
        assert!(!tcp_table_listens(tcp, 80), "established, not listening");
    }
}
