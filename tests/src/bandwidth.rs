//! Tools for the rate-limit tests (tests/tests/bandwidth.rs): iperf3
//! throughput between test namespaces, and a namespace's traffic-control
//! state (qdiscs, ingress filters, ifb links) as `tc -j` and `ip -j` print
//! it.
//!
//! Measurements run iperf3 (Debian's `iperf3`) with `-J`, server in one
//! namespace bound to one of its addresses, client in another, and read
//! what the *receiver* counted: a UDP sender is not slowed by a limit
//! applied after its packets left it (containernetworking/plugins#922),
//! only what arrives is limited.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{next_id, PluginOutput, TestNetns};

/// Seconds iperf3 measures, after [`OMIT`] seconds of warm-up it leaves
/// out (a token bucket lets its burst through at the start).
pub const SECONDS: u32 = 3;
/// Seconds of warm-up iperf3 leaves out (`-O`).
pub const OMIT: u32 = 1;

/// The pace of a flow that should show nothing limits it: far above the
/// limits tests set, far below what a veth carries here (about 15 Gbit/s),
/// so it takes little CPU from measurements running next to it.
pub const UNLIMITED_SEND: u64 = 400_000_000;

/// How far a measured rate may be from its limit (a fraction of it).
pub const TOLERANCE: f64 = 0.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One iperf3 run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: Proto,
    /// Data from the server to the client (`-R`).
    pub reverse: bool,
    /// `-b`: the sender's pace (None: TCP as fast as it goes).
    pub send_rate: Option<u64>,
    /// Runs with no other measurement at the same time: a flow nothing
    /// limits takes CPU time the others would need.
    pub alone: bool,
    /// Seconds of warm-up left out (`-O`): long enough for the sender to
    /// use up the bucket's burst.
    pub omit: u32,
}

impl Flow {
    /// A flow that a limit of `limit` bit/s should hold: TCP as fast as
    /// it goes, UDP sent at twice the limit.
    pub fn limited(proto: Proto, limit: u64) -> Flow {
        Flow {
            proto,
            reverse: false,
            send_rate: match proto {
                Proto::Tcp => None,
                Proto::Udp => Some(2 * limit),
            },
            alone: false,
            omit: OMIT,
        }
    }

    /// A flow sent at [`UNLIMITED_SEND`], to show that nothing holds it.
    pub fn unlimited(proto: Proto) -> Flow {
        Flow {
            proto,
            reverse: false,
            send_rate: Some(UNLIMITED_SEND),
            alone: true,
            omit: OMIT,
        }
    }

    /// The same flow with `secs` seconds of warm-up left out.
    pub fn omitting(mut self, secs: u32) -> Flow {
        self.omit = secs;
        self
    }

    /// The same flow with data from the server to the client.
    pub fn reversed(mut self) -> Flow {
        self.reverse = true;
        self
    }
}

/// Measurements of flows held at a limit share it (they take little CPU);
/// one that nothing limits holds it alone.
static GATE: RwLock<()> = RwLock::new(());

/// An iperf3 server, killed (by PID) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace a program can run in: a test's own, or one a
/// runtime made (a pod's), known by its path.
pub trait Place {
    /// `prog` to run in the namespace (arguments still to add).
    fn command(&self, prog: &str) -> Command;
    /// What messages call it.
    fn label(&self) -> String;

    /// Runs `prog args...` there; it must succeed. Returns its stdout.
    fn run_ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self
            .command(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog} in {}: {e}", self.label()));
        assert!(
            out.status.success(),
            "in {}: `{prog} {}` failed ({}): {}{}",
            self.label(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The host's own namespace (where containerd runs the plugins).
pub struct Root;

impl Place for Root {
    fn command(&self, prog: &str) -> Command {
        Command::new(prog)
    }

    fn label(&self) -> String {
        "the root namespace".into()
    }
}

impl Place for TestNetns {
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), prog]);
        c
    }

    fn label(&self) -> String {
        self.name().to_string()
    }
}

/// A namespace by its path (`nsenter --net=`), such as a pod's.
pub struct NetnsPath<'a>(pub &'a Path);

impl Place for NetnsPath<'_> {
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.0.display())).arg(prog);
        c
    }

    fn label(&self) -> String {
        self.0.display().to_string()
    }
}

/// Whether a TCP socket listens on `port` in `ns`.
fn listening(ns: &dyn Place, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    let out = ns
        .command("ss")
        .args(["-Hltn", &filter])
        .stdin(Stdio::null())
        .output()
        .expect("run ss");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Runs `flow` with the iperf3 server in `server` on `addr` and the client
/// in `client`; returns the rate the receiving end counted (bit/s).
/// Panics (with iperf3's words) if the run fails.
pub fn measure(client: &dyn Place, server: &dyn Place, addr: IpAddr, flow: &Flow) -> f64 {
    let _alone = flow
        .alone
        .then(|| GATE.write().unwrap_or_else(|e| e.into_inner()));
    let _shared = (!flow.alone).then(|| GATE.read().unwrap_or_else(|e| e.into_inner()));
    let port = 20000 + (next_id() % 20000) as u16;
    let port_s = port.to_string();
    let addr_s = addr.to_string();
    let mut srv = Server(
        server
            .command("iperf3")
            .args(["-s", "-1", "-B", &addr_s, "-p", &port_s])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start iperf3 (Debian package iperf3)"),
    );
    let since = Instant::now();
    while !listening(server, port) {
        if let Some(st) = srv.0.try_wait().expect("wait for iperf3 server") {
            let mut err = String::new();
            if let Some(mut e) = srv.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "iperf3 server on {addr}:{port} in {} exited ({st}): {err}",
                server.label()
            );
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "iperf3 server on {addr}:{port} in {} does not listen",
            server.label()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (secs, omit) = (SECONDS.to_string(), flow.omit.to_string());
    let mut args = vec![
        "-c",
        &addr_s,
        "-p",
        &port_s,
        "-J",
        "-t",
        &secs,
        "-O",
        &omit,
        "--connect-timeout",
        "3000",
    ];
    if flow.proto == Proto::Udp {
        args.push("-u");
    }
    if flow.reverse {
        args.push("-R");
    }
    let rate_s = flow.send_rate.map(|r| r.to_string());
    if let Some(r) = &rate_s {
        args.extend(["-b", r.as_str()]);
    }
    let mut child = client
        .command("iperf3")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iperf3 client");
    let mut out_pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = out_pipe.read_to_string(&mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(u64::from(SECONDS + flow.omit) + 20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for iperf3 client") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let what = format!(
        "iperf3 {} {}{} to {addr} ({} -> {})",
        flow.proto,
        if flow.reverse { "-R " } else { "" },
        rate_s
            .as_deref()
            .map(|r| format!("-b {r}"))
            .unwrap_or_default(),
        client.label(),
        server.label()
    );
    let Some(status) = status else {
        panic!("{what}: killed after its time was up; it printed: {stdout}");
    };
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what}: exit {status}, not JSON ({e}): {stdout}"));
    if let Some(err) = json.get("error") {
        panic!("{what}: {err}");
    }
    assert!(status.success(), "{what}: exit {status}: {stdout}");
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no end.sum_received.bits_per_second: {stdout}"))
}

/// Panics unless `rate` is within [`TOLERANCE`] of `limit` (bit/s).
pub fn assert_near(rate: f64, limit: u64, what: &str) {
    let l = limit as f64;
    eprintln!(
        "bandwidth: {what}: {:.2} Mbit/s (limit {:.0} Mbit/s, {:+.1}%)",
        rate / 1e6,
        l / 1e6,
        (rate / l - 1.0) * 100.0
    );
    assert!(
        (rate - l).abs() <= TOLERANCE * l,
        "{what}: measured {:.2} Mbit/s, limit {:.2} Mbit/s: more than {:.0}% off",
        rate / 1e6,
        l / 1e6,
        TOLERANCE * 100.0
    );
}

/// Panics unless `rate` is at least `floor` (bit/s): nothing held it.
pub fn assert_above(rate: f64, floor: u64, what: &str) {
    eprintln!(
        "bandwidth: {what}: {:.2} Mbit/s (unlimited, must be > {:.0} Mbit/s)",
        rate / 1e6,
        floor as f64 / 1e6
    );
    assert!(
        rate >= floor as f64,
        "{what}: measured {:.2} Mbit/s, expected no limit (at least {:.0} Mbit/s)",
        rate / 1e6,
        floor as f64 / 1e6
    );
}

// ---------------------------------------------------------------------------
// traffic-control state

/// Runs `tc -j <args>` in `ns`, parsed (an empty output is `[]`).
pub fn tc_json(ns: &dyn Place, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ns.run_ok("tc", &full);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc -j printed invalid JSON ({e}): {out}"))
}

/// The qdiscs of `dev` in `ns`.
pub fn qdiscs(ns: &dyn Place, dev: &str) -> Vec<Value> {
    tc_json(ns, &["qdisc", "show", "dev", dev])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The root qdisc of `dev`, unless it is the kernel's default (`noqueue`,
/// `noop`, `pfifo_fast`, `fq_codel`, `mq`): what someone put there.
pub fn root_qdisc(ns: &dyn Place, dev: &str) -> Option<Value> {
    qdiscs(ns, dev).into_iter().find(|q| {
        q["root"] == true
            && !matches!(
                q["kind"].as_str(),
                Some("noqueue" | "noop" | "pfifo_fast" | "fq_codel" | "mq")
            )
    })
}

/// Whether `dev` has an ingress (or clsact) qdisc.
pub fn has_ingress_qdisc(ns: &dyn Place, dev: &str) -> bool {
    qdiscs(ns, dev)
        .iter()
        .any(|q| matches!(q["kind"].as_str(), Some("ingress" | "clsact")))
}

/// The rate (bit/s) of the `tbf` at the root of `dev`, if it has one
/// (`tc -j` prints tbf's rate in bytes per second).
pub fn tbf_rate(ns: &dyn Place, dev: &str) -> Option<u64> {
    let q = root_qdisc(ns, dev)?;
    if q["kind"] != "tbf" {
        return None;
    }
    q["options"]["rate"].as_u64().map(|b| b * 8)
}

/// The rates (bit/s) of the htb classes of `dev`, sorted. Read from
/// `tc class show`'s text: iproute2 prints htb classes as text even with
/// `-j` ("class htb 1:1e root prio 0 rate 10Mbit ceil 10Mbit ...").
pub fn htb_class_rates(ns: &dyn Place, dev: &str) -> Vec<u64> {
    let out = ns.run_ok("tc", &["class", "show", "dev", dev]);
    let mut v: Vec<u64> = out
        .lines()
        .filter(|l| l.starts_with("class htb "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "rate")?;
            parse_tc_rate(words.next()?)
        })
        .collect();
    v.sort_unstable();
    v
}

/// A rate as tc prints it ("100Gbit", "10Mbit", "512Kbit", "800bit"), in
/// bit/s.
fn parse_tc_rate(word: &str) -> Option<u64> {
    let digits = word.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = word.split_at(digits);
    let scale = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * scale).round() as u64)
}

/// The devices `dev`'s ingress filters redirect (mirred) to.
pub fn redirect_targets(ns: &dyn Place, dev: &str) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(d)) = o.get("to_dev") {
                    if !out.contains(d) {
                        out.push(d.clone());
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    if !has_ingress_qdisc(ns, dev) {
        return Vec::new();
    }
    let mut out = Vec::new();
    walk(
        &tc_json(ns, &["filter", "show", "dev", dev, "ingress"]),
        &mut out,
    );
    out
}

/// The names of the ifb links in `ns`, sorted.
pub fn ifbs(ns: &TestNetns) -> Vec<String> {
    let mut v: Vec<String> = ns
        .ip_json(&["link", "show", "type", "ifb"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// The alias of link `dev` in `ns` ("" when it has none).
pub fn link_alias(ns: &TestNetns, dev: &str) -> String {
    ns.ip_json(&["link", "show", "dev", dev])[0]["ifalias"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Everything about links and qdiscs of `ns` that a rate-limit plugin
/// could change: `ip link show` (without `operstate`, which a new veth
/// may still be settling) and `tc qdisc show` (no counters), and every
/// link's ingress filters.
pub fn tc_snapshot(ns: &TestNetns) -> Value {
    let mut links = ns.ip_json(&["link", "show"]);
    for l in links.as_array_mut().into_iter().flatten() {
        if let Some(o) = l.as_object_mut() {
            o.remove("operstate");
        }
    }
    let mut filters = serde_json::Map::new();
    for l in links.as_array().into_iter().flatten() {
        let Some(name) = l["ifname"].as_str() else {
            continue;
        };
        if has_ingress_qdisc(ns, name) {
            filters.insert(
                name.to_string(),
                tc_json(ns, &["filter", "show", "dev", name, "ingress"]),
            );
        }
    }
    serde_json::json!({
        "links": links,
        "qdiscs": tc_json(ns, &["qdisc", "show"]),
        "ingress filters": filters,
    })
}

/// Runs a CNI plugin inside `host` as [`crate::run_plugin_in`] does, with
/// raw bytes on stdin (for JSON serde_json cannot write, such as an
/// integer above u64).
pub fn run_plugin_in_raw(
    host: &TestNetns,
    bin: &std::path::Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> PluginOutput {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.name(), "env", "-i"])
        .arg(format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        ))
        .arg(format!("CNI_COMMAND={command}"));
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {}: {e}", host.name()));
    // Configs are far below a pipe's capacity: writing first cannot block.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("wait for plugin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    PluginOutput {
        status: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether `ip`/`tc` and iperf3 are there (a clear failure otherwise).
pub fn require_tools() {
    for (prog, arg) in [("iperf3", "--version"), ("tc", "-V"), ("ss", "-V")] {
        let ok = Command::new(prog)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{prog} not found: install iperf3 and iproute2 (./scripts/test does)"
        );
    }
}
