//! `bandwidth` part: berth-bridge (berth-ipam) + berth-bandwidth against
//! the reference `bridge` (host-local) + `bandwidth`, chained as a runtime
//! chains them, in the same run; and the rates each holds.
//!
//! * Each implementation gets a private "host" namespace, where its plugins
//!   run (so the bridge, veths, ifbs and qdiscs they make are the bench's
//!   own and the two never meet), joined by a veth to an "outside"
//!   namespace standing for another machine: host `bwout` 10.201.200.1/24,
//!   outside `eth0` 10.201.200.2/24 with a route to the containers'
//!   10.201.0.0/17 through the host. No masquerade: containers reach the
//!   outside through their gateway, the outside reaches them routed.
//!   Nothing else in the bench uses 10.201.0.0/16 (and these namespaces
//!   are the bench's own anyway).
//! * The chain, as libcni runs a conflist: ADD of the bridge plugin (it
//!   execs its IPAM plugin), then ADD of the shaper with the bridge's
//!   result as `prevResult`; DEL in reverse order, each plugin with the
//!   chain's cached result (the shaper's ADD result) as `prevResult`.
//!   Limits are the reference's keys: `ingressRate`/`egressRate` in bit/s,
//!   `ingressBurst`/`egressBurst` in bits ([`BURST`] each).
//! * One resident container on each host, attached by the bridge plugin
//!   alone, for the whole run (see [`Host::resident`]): the measured ADDs
//!   find the bridge there, as on any host already running something.
//! * Levels (`--bandwidth-levels`, default 0 and 1000): that many shaped
//!   containers already on each host namespace, installed through the
//!   chain itself (each in its own netns, 10 Mbit/s both ways). At each
//!   level, R rounds (`--bandwidth-reps`) after one warm-up round: one more
//!   container per implementation, in a fresh netns made outside the
//!   timing, ADDed through the chain (berth, then the reference), then
//!   both DELeted, in the same order; the order rotates round by round
//!   (the first DEL after the ADDs is the slower, whoever's it is). Each step is one exec of the plugin, timed around the
//!   exec; the chain's time is the sum of its two steps. Medians and p90s,
//!   ref/berth ratios, and each median over the first level's (growth):
//!   whether a shaper's cost grows with the shaped containers beside it.
//! * Rates, at the first level: per implementation two containers, one
//!   limited to 10 Mbit/s ingress and 50 egress, the other the other way
//!   round (a shaper that swapped the directions would show). iperf3
//!   (Debian's) between a container (always the client) and the outside
//!   (the server): egress is container → outside, ingress outside →
//!   container (`-R`); TCP as fast as it goes, UDP sent at twice the
//!   limit. `-O 1` leaves the first second out (the bucket's burst),
//!   `-t` is `--bandwidth-secs`. What counts is the rate the *receiver*
//!   saw (`end.sum_received`): a UDP sender is not slowed by a limit
//!   applied after its packets left it (containernetworking/plugins#922).
//!   One run at a time, implementations alternating.
//!
//! * With `--cni-path-before`, berth's previous build is a third host
//!   (same levels, its ADDs and DELs between berth's and the reference's
//!   in every round); the rates are measured for berth and the reference
//!   only.
//!
//! Cleanup, on failure as well: the measured containers are DELeted
//! through the chain; the rest goes with the namespaces: dropping a host
//! namespace deletes its bridge, veths (and so their container ends) and
//! ifbs, and with them every qdisc and filter. iperf3 processes are
//! stopped by PID, temp dirs (IPAM data, run dirs) removed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::etcd::{quantile, rotated};
use crate::exec::{exec_plugin_env, with_prev_result};
use crate::report::{Bandwidth, BandwidthLevel, ChainStep, Rate, RateRow, Spread};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, Proc, TempDir};

/// `--bandwidth-levels`' default.
pub(crate) const DEFAULT_LEVELS: &str = "0,1000";
/// The most shaped containers a level may have: each is a netns, a veth
/// and an ifb per implementation, and installing them takes time (about
/// 20 ms each for berth and 50 ms for the reference on 2 cores, more as
/// they accumulate).
pub(crate) const MAX_LEVEL: usize = 5000;

const MBIT: u64 = 1_000_000;
/// The limits whose rates are measured.
pub(crate) const LIMITS: [u64; 2] = [10 * MBIT, 50 * MBIT];
/// The burst of every limit: 512 kbit (64 KiB), enough for TCP to keep
/// its pace at 10 and 50 Mbit/s.
pub(crate) const BURST: u64 = 512 * 1024;
/// Seconds iperf3 leaves out at the start (`-O`): the burst passes then.
pub(crate) const OMIT_SECS: u64 = 1;

const NETWORK: &str = "bench-bw";
const BRIDGE: &str = "bwbench0";
const SUBNET: &str = "10.201.0.0/17";
/// The host's end of the link to the outside, and the addresses on it.
const UPLINK: &str = "bwout";
const LINK_HOST: &str = "10.201.200.1";
const LINK_OUTSIDE: &str = "10.201.200.2";
const IPERF_PORT: u16 = 5202;

/// One implementation's chain: the bridge plugin, its IPAM, the shaper.
#[derive(Debug, Clone)]
struct Chain {
    dir: PathBuf,
    bridge: &'static str,
    ipam: &'static str,
    shaper: &'static str,
}

impl Chain {
    fn berth(dir: &Path) -> Chain {
        Chain {
            dir: dir.to_path_buf(),
            bridge: "berth-bridge",
            ipam: "berth-ipam",
            shaper: "berth-bandwidth",
        }
    }

    fn reference(dir: &Path) -> Chain {
        Chain {
            dir: dir.to_path_buf(),
            bridge: "bridge",
            ipam: "host-local",
            shaper: "bandwidth",
        }
    }

    fn check(&self) -> Result<()> {
        for b in [self.bridge, self.ipam, self.shaper] {
            let p = self.dir.join(b);
            if !p.is_file() {
                bail!("plugin {} not found", p.display());
            }
        }
        Ok(())
    }
}

fn ns_name(tag: &str) -> String {
    format!("bbw-{}-{}-{tag}", std::process::id(), sys::next_id())
}

/// A container attached through a chain.
struct Attachment {
    cid: String,
    shaper_conf: Value,
    /// The chain's result (the shaper's ADD result), which a runtime
    /// caches and hands every plugin's DEL.
    result: Value,
}

/// One implementation's host namespace and its outside.
struct Host {
    chain: Chain,
    cni_version: String,
    ns: Netns,
    outside: Netns,
    run: TempDir,
    data: TempDir,
    /// The netns of the shaped containers installed for the levels, kept
    /// until the end (the host namespace's deletion detaches them).
    fillers: Vec<Netns>,
    /// The resident container's (see [`Host::resident`]).
    resident: Option<Netns>,
}

impl Host {
    fn new(chain: Chain, cni_version: &str) -> Result<Host> {
        chain.check()?;
        let host = Host {
            ns: Netns::new(ns_name("h"))?,
            outside: Netns::new(ns_name("o"))?,
            run: TempDir::new("bw-run")?,
            data: TempDir::new("bw-data")?,
            chain,
            cni_version: cni_version.to_string(),
            fillers: Vec::new(),
            resident: None,
        };
        sys::join(
            &host.ns,
            UPLINK,
            &format!("{LINK_HOST}/24"),
            &host.outside,
            "eth0",
            &format!("{LINK_OUTSIDE}/24"),
        )?;
        // The outside reaches the containers through the host.
        sys::handle_in(&host.outside)?
            .add_route(&berth_kernel::Route::new(SUBNET.parse()?).via(LINK_HOST.parse()?))?;
        // Forwarding in the host namespace is the bridge plugins' to turn
        // on (isGateway), as on a real host.
        Ok(host)
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": self.cni_version, "name": NETWORK, "type": self.chain.bridge,
            "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
            "ipam": {"type": self.chain.ipam, "dataDir": self.data.path(),
                     "ranges": [[{"subnet": SUBNET}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        })
    }

    fn shaper_conf(&self, ingress: u64, egress: u64) -> Value {
        json!({
            "cniVersion": self.cni_version, "name": NETWORK, "type": self.chain.shaper,
            "ingressRate": ingress, "ingressBurst": BURST,
            "egressRate": egress, "egressBurst": BURST
        })
    }

    /// One exec of `plugin` inside the host namespace: its time in ms and
    /// (for ADD) its result.
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        cid: &str,
        netns: &Netns,
        conf: &Value,
    ) -> Result<(f64, Value)> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        let out = self.ns.run(|| {
            exec_plugin_env(
                &self.chain.dir,
                plugin,
                command,
                cid,
                &netns.path,
                conf,
                &env,
            )
        })?;
        if !out.ok {
            bail!("{plugin} {command} {cid}: {}", out.describe());
        }
        let result = if command == "ADD" {
            serde_json::from_str(&out.stdout)
                .with_context(|| format!("{plugin} ADD {cid}: result {:?}", out.stdout))?
        } else {
            Value::Null
        };
        Ok((ms(out.elapsed), result))
    }

    /// The chain's ADD for container `cid` in `netns`: the attachment and
    /// the two steps' times (bridge, shaper). A failed ADD leaves what it
    /// made to the namespaces' deletion.
    fn add(
        &self,
        cid: &str,
        netns: &Netns,
        ingress: u64,
        egress: u64,
    ) -> Result<(Attachment, [f64; 2])> {
        let (t_bridge, prev) =
            self.exec(self.chain.bridge, "ADD", cid, netns, &self.bridge_conf())?;
        let shaper_conf = self.shaper_conf(ingress, egress);
        let (t_shaper, result) = self.exec(
            self.chain.shaper,
            "ADD",
            cid,
            netns,
            &with_prev_result(&shaper_conf, &prev),
        )?;
        let a = Attachment {
            cid: cid.to_string(),
            shaper_conf,
            result,
        };
        Ok((a, [t_bridge, t_shaper]))
    }

    /// The chain's DEL, in reverse order: the two steps' times (shaper,
    /// bridge).
    fn del(&self, a: &Attachment, netns: &Netns) -> Result<[f64; 2]> {
        let (t_shaper, _) = self.exec(
            self.chain.shaper,
            "DEL",
            &a.cid,
            netns,
            &with_prev_result(&a.shaper_conf, &a.result),
        )?;
        let (t_bridge, _) = self.exec(
            self.chain.bridge,
            "DEL",
            &a.cid,
            netns,
            &with_prev_result(&self.bridge_conf(), &a.result),
        )?;
        Ok([t_shaper, t_bridge])
    }

    /// One container attached by the bridge plugin alone (not shaped), for
    /// the whole run, as on a host that runs anything: the bridge (and
    /// berth's one firewall chain for all its bridges) exists before each
    /// measured ADD and stays after its DEL. Without it every measured
    /// berth-bridge ADD would make them and every DEL remove them again
    /// (the reference leaves its bridge), which is the cost of a host's
    /// first container, not the one measured here.
    fn resident(&mut self) -> Result<()> {
        let ns = Netns::new(ns_name("res"))?;
        self.exec(
            self.chain.bridge,
            "ADD",
            "resident",
            &ns,
            &self.bridge_conf(),
        )?;
        self.resident = Some(ns);
        Ok(())
    }

    /// Shaped containers up to `level`; the seconds it took.
    fn fill(&mut self, level: usize) -> Result<f64> {
        let start = Instant::now();
        while self.fillers.len() < level {
            let i = self.fillers.len();
            let ns = Netns::new(ns_name("f"))?;
            self.add(&format!("fill{i}"), &ns, LIMITS[0], LIMITS[0])?;
            self.fillers.push(ns);
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

/// The samples of one level, per implementation (berth, [before,]
/// reference): bridge ADD, shaper ADD, shaper DEL, bridge DEL.
type Samples = Vec<[Vec<f64>; 4]>;

/// R rounds (after one warm-up) of one more container per implementation.
fn rounds(hosts: &[Host], level: usize, reps: usize) -> Result<Samples> {
    let mut samples: Samples = vec![Default::default(); hosts.len()];
    for round in 0..=reps {
        let nss = hosts
            .iter()
            .map(|_| Netns::new(ns_name("c")))
            .collect::<Result<Vec<_>>>()?;
        let cid = format!("probe{level}-{round}");
        let mut attached: Vec<Option<Attachment>> = hosts.iter().map(|_| None).collect();
        let mut times = vec![[0.0; 4]; hosts.len()];
        // The order rotates round by round: the first DEL after the ADDs
        // is the slower (the kernel's deferred work of the ADDs before),
        // whoever's it is.
        let order = rotated(&(0..hosts.len()).collect::<Vec<usize>>(), round);
        for &k in &order {
            let (a, [b, s]) = hosts[k].add(&cid, &nss[k], LIMITS[0], LIMITS[1])?;
            times[k][0] = b;
            times[k][1] = s;
            attached[k] = Some(a);
        }
        for &k in &order {
            let a = attached[k].as_ref().context("no attachment")?;
            let [s, b] = hosts[k].del(a, &nss[k])?;
            times[k][2] = s;
            times[k][3] = b;
        }
        if round > 0 {
            for (k, t) in times.iter().enumerate() {
                for (j, x) in t.iter().enumerate() {
                    samples[k][j].push(*x);
                }
            }
        }
    }
    Ok(samples)
}

fn spread(v: &[f64]) -> Spread {
    Spread {
        median_ms: median(v),
        p90_ms: quantile(v, 0.9),
        growth: None,
    }
}

/// The steps of a level's table from its samples: each step and the
/// chain's sums, with ref/berth (and before/berth) ratios of the medians.
/// The first samples are berth's, the last the reference's, any between
/// berth's previous build's.
fn steps(samples: &Samples) -> Vec<ChainStep> {
    let sum = |s: &[Vec<f64>; 4], a: usize, b: usize| -> Vec<f64> {
        s[a].iter().zip(&s[b]).map(|(x, y)| x + y).collect()
    };
    let figures = |s: &[Vec<f64>; 4]| -> [Vec<f64>; 6] {
        [
            s[0].clone(),
            s[1].clone(),
            sum(s, 0, 1),
            s[2].clone(),
            s[3].clone(),
            sum(s, 2, 3),
        ]
    };
    let b = figures(&samples[0]);
    let r = figures(&samples[samples.len() - 1]);
    let old = (samples.len() > 2).then(|| figures(&samples[1]));
    ChainStep::NAMES
        .iter()
        .enumerate()
        .map(|(i, &step)| {
            let (berth, reference) = (spread(&b[i]), spread(&r[i]));
            let before = old.as_ref().map(|o| spread(&o[i]));
            ChainStep {
                step,
                ratio: ratio(reference.median_ms, berth.median_ms),
                ratio_before: before
                    .as_ref()
                    .and_then(|o| ratio(o.median_ms, berth.median_ms)),
                berth,
                before,
                reference,
            }
        })
        .collect()
}

/// Each step's growth: its median over the same step's at the first level.
fn add_growth(levels: &mut [BandwidthLevel]) {
    let Some(first) = levels.first() else {
        return;
    };
    let base: Vec<[Option<f64>; 3]> = first
        .steps
        .iter()
        .map(|s| {
            [
                s.berth.median_ms,
                s.reference.median_ms,
                s.before.as_ref().and_then(|o| o.median_ms),
            ]
        })
        .collect();
    for l in levels.iter_mut() {
        for (s, b) in l.steps.iter_mut().zip(&base) {
            s.berth.growth = ratio(s.berth.median_ms, b[0]);
            s.reference.growth = ratio(s.reference.median_ms, b[1]);
            if let Some(o) = &mut s.before {
                o.growth = ratio(o.median_ms, b[2]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// rates

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Outside → container: the server sends (`-R`).
    Ingress,
    /// Container → outside: the client sends.
    Egress,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The iperf3 client's arguments for one run (after `iperf3`).
pub(crate) fn iperf_args(
    proto: Proto,
    dir: Direction,
    send: Option<u64>,
    secs: u64,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-c",
        LINK_OUTSIDE,
        "-p",
        &IPERF_PORT.to_string(),
        "-J",
        "-t",
        &secs.to_string(),
        "-O",
        &OMIT_SECS.to_string(),
        "--connect-timeout",
        "3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if proto == Proto::Udp {
        a.push("-u".into());
    }
    if dir == Direction::Ingress {
        a.push("-R".into());
    }
    if let Some(b) = send {
        a.extend(["-b".into(), b.to_string()]);
    }
    a
}

/// What the receiving end counted (bit/s) in an `iperf3 -J` report.
pub(crate) fn received_bps(v: &Value) -> Result<f64> {
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("{e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in the report")
}

/// A one-test iperf3 server (`-1`) in `ns`, listening when this returns.
fn iperf_server(ns: &Netns) -> Result<Proc> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-s",
        "-1",
        "-B",
        LINK_OUTSIDE,
        "-p",
        &IPERF_PORT.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut p = Proc(ns.run(move || cmd.spawn().context("start iperf3 (Debian package iperf3)"))?);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Its own view of its namespace's sockets: a connection to find out
    // would be a test to iperf3.
    while !crate::overlay::listening(p.0.id(), IPERF_PORT) {
        if let Some(st) = p.0.try_wait()? {
            bail!("iperf3 -s in {} exited: {st}", ns.name());
        }
        if Instant::now() > deadline {
            bail!("iperf3 -s in {} not listening after 10 s", ns.name());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

/// One iperf3 run between container `c` (the client) and `outside`; the
/// receiver's rate in bit/s.
fn iperf(
    c: &Netns,
    outside: &Netns,
    proto: Proto,
    dir: Direction,
    send: Option<u64>,
    secs: u64,
) -> Result<f64> {
    let _server = iperf_server(outside)?;
    let args = iperf_args(proto, dir, send, secs);
    let what = format!("iperf3 {} in {}", args.join(" "), c.name());
    let mut client = Proc(c.run(|| {
        Command::new("iperf3")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start iperf3 -c")
    })?);
    let mut pipe = client.0.stdout.take().context("iperf3's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    // iperf3 has no timeout of its own once connected: a run that hangs
    // is stopped (by the guard, by PID) after its time and a margin.
    let deadline = Instant::now() + Duration::from_secs(secs + OMIT_SECS + 20);
    let status = loop {
        if let Some(st) = client.0.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            bail!("{what}: still running after {} s", secs + OMIT_SECS + 20);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let mut stderr = String::new();
    if let Some(mut e) = client.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let v: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("{what}: exit {status}, no JSON: {}", stderr.trim()))?;
    let bps = received_bps(&v).with_context(|| what.clone())?;
    if !status.success() {
        bail!("{what}: exit {status}");
    }
    Ok(bps)
}

/// The rate probes' (ingress, egress) limits: the second swaps the
/// first's, so each limit is measured in each direction and a shaper that
/// swapped the directions would show.
const PROBE_LIMITS: [(u64, u64); 2] = [(LIMITS[0], LIMITS[1]), (LIMITS[1], LIMITS[0])];

/// The probe whose limit in direction `dir` is `limit`.
fn probe_for(limit: u64, dir: Direction) -> Option<usize> {
    PROBE_LIMITS.iter().position(|&(ingress, egress)| {
        limit
            == match dir {
                Direction::Ingress => ingress,
                Direction::Egress => egress,
            }
    })
}

/// A container of the rate measurements.
struct Probe {
    ns: Netns,
    attachment: Attachment,
}

/// Each limit, protocol and direction, for both implementations (berth's
/// and the reference's).
fn rates(hosts: [&Host; 2], secs: u64) -> Result<Vec<RateRow>> {
    // probes[host][i] is limited as PROBE_LIMITS[i].
    let mut probes: Vec<Vec<Probe>> = Vec::new();
    for h in hosts {
        let mut pair = Vec::new();
        for (i, (ingress, egress)) in PROBE_LIMITS.into_iter().enumerate() {
            let ns = Netns::new(ns_name("r"))?;
            sys::lo_up(&ns)?;
            let (attachment, _) = h.add(&format!("rate{i}"), &ns, ingress, egress)?;
            pair.push(Probe { ns, attachment });
        }
        probes.push(pair);
    }
    let mut rows = Vec::new();
    for limit in LIMITS {
        for proto in [Proto::Tcp, Proto::Udp] {
            for dir in [Direction::Ingress, Direction::Egress] {
                let which = probe_for(limit, dir).context("no probe for a limit")?;
                let send = (proto == Proto::Udp).then_some(2 * limit);
                let mut sides = Vec::new();
                for (k, h) in hosts.iter().enumerate() {
                    let p = &probes[k][which];
                    let r = iperf(&p.ns, &h.outside, proto, dir, send, secs);
                    sides.push(match r {
                        Ok(bps) => Rate {
                            received_bps: Some(bps),
                            percent_of_limit: Some(bps / limit as f64 * 100.0),
                            error: None,
                        },
                        Err(e) => Rate {
                            received_bps: None,
                            percent_of_limit: None,
                            error: Some(format!("{e:#}")),
                        },
                    });
                }
                let reference = sides.pop().context("no reference rate")?;
                let berth = sides.pop().context("no berth rate")?;
                let row = RateRow {
                    limit_bps: limit,
                    proto: proto.name(),
                    direction: dir.name(),
                    send_bps: send,
                    berth,
                    reference,
                };
                eprintln!(
                    "bandwidth: {} {} at {} Mbit/s: berth {}, reference {}",
                    row.proto,
                    row.direction,
                    limit / MBIT,
                    row.berth.describe(),
                    row.reference.describe()
                );
                rows.push(row);
            }
        }
    }
    for (k, h) in hosts.iter().enumerate() {
        for p in &probes[k] {
            h.del(&p.attachment, &p.ns)?;
        }
    }
    Ok(rows)
}

pub(crate) fn bandwidth(
    berth_dir: &Path,
    before_dir: Option<&Path>,
    ref_dir: &Path,
    cni_version: &str,
    levels: &[usize],
    reps: usize,
    secs: u64,
) -> Result<Bandwidth> {
    let start = Instant::now();
    // berth, [before,] reference.
    let mut hosts = vec![Host::new(Chain::berth(berth_dir), cni_version)?];
    if let Some(dir) = before_dir {
        hosts.push(Host::new(Chain::berth(dir), cni_version)?);
    }
    hosts.push(Host::new(Chain::reference(ref_dir), cni_version)?);
    for h in &mut hosts {
        h.resident()?;
    }
    let mut out = Vec::new();
    let mut rate_rows = None;
    for &level in levels {
        eprintln!("bandwidth: installing {level} shaped containers per implementation");
        let fills = hosts
            .iter_mut()
            .map(|h| h.fill(level))
            .collect::<Result<Vec<f64>>>()?;
        eprintln!("bandwidth: {reps} rounds with {level} shaped containers");
        let samples = rounds(&hosts, level, reps)?;
        out.push(BandwidthLevel {
            shaped: level,
            berth_fill_secs: fills[0],
            ref_fill_secs: fills[fills.len() - 1],
            before_fill_secs: (fills.len() > 2).then(|| fills[1]),
            steps: steps(&samples),
        });
        if rate_rows.is_none() {
            eprintln!(
                "bandwidth: rates, iperf3 -t {secs} -O {OMIT_SECS} (berth and the reference)"
            );
            rate_rows = Some(rates([&hosts[0], &hosts[hosts.len() - 1]], secs)?);
        }
    }
    add_growth(&mut out);
    let rates = rate_rows.unwrap_or_default();
    // The namespaces go now, with every link in them; timed as part of
    // the part.
    drop(hosts);
    Ok(Bandwidth {
        reps,
        cni_version: cni_version.to_string(),
        burst_bits: BURST,
        iperf_secs: secs,
        omit_secs: OMIT_SECS,
        rates_at_shaped: levels.first().copied().unwrap_or(0),
        levels: out,
        rates,
        secs: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_arguments() {
        let a = iperf_args(Proto::Udp, Direction::Ingress, Some(20_000_000), 2).join(" ");
        assert_eq!(
            a,
            "-c 10.201.200.2 -p 5202 -J -t 2 -O 1 --connect-timeout 3000 -u -R -b 20000000"
        );
        let a = iperf_args(Proto::Tcp, Direction::Egress, None, 3).join(" ");
        assert_eq!(
            a,
            "-c 10.201.200.2 -p 5202 -J -t 3 -O 1 --connect-timeout 3000"
        );
    }

    #[test]
    fn receiver_rate() {
        let v = json!({"end": {"sum_sent": {"bits_per_second": 2.0e7},
                               "sum_received": {"bits_per_second": 9.6e6}}});
        assert_eq!(received_bps(&v).unwrap(), 9.6e6);
        let e = received_bps(&json!({"error": "unable to connect"})).unwrap_err();
        assert_eq!(e.to_string(), "unable to connect");
        assert!(received_bps(&json!({"end": {}})).is_err());
    }

    #[test]
    fn chain_steps_and_growth() {
        let s = |v: &[f64]| v.to_vec();
        let samples: Samples = vec![
            [s(&[2.0, 4.0]), s(&[1.0, 3.0]), s(&[5.0]), s(&[6.0])],
            [s(&[20.0, 40.0]), s(&[10.0, 30.0]), s(&[50.0]), s(&[60.0])],
        ];
        let steps0 = steps(&samples);
        let names: Vec<&str> = steps0.iter().map(|s| s.step).collect();
        assert_eq!(names, ChainStep::NAMES);
        // chain ADD: per round, bridge + shaper: 3 and 7.
        assert_eq!(steps0[2].berth.median_ms, Some(5.0));
        assert_eq!(steps0[2].berth.p90_ms, Some(7.0));
        assert_eq!(steps0[2].reference.median_ms, Some(50.0));
        assert_eq!(steps0[2].ratio, Some(10.0));
        assert_eq!(steps0[5].berth.median_ms, Some(11.0));
        let mut levels = vec![
            BandwidthLevel {
                shaped: 0,
                berth_fill_secs: 0.0,
                ref_fill_secs: 0.0,
                before_fill_secs: None,
                steps: steps0,
            },
            BandwidthLevel {
                shaped: 10,
                berth_fill_secs: 1.0,
                ref_fill_secs: 2.0,
                before_fill_secs: None,
                steps: steps(&vec![
                    [s(&[4.0]), s(&[2.0]), s(&[5.0]), s(&[6.0])],
                    [s(&[30.0]), s(&[20.0]), s(&[50.0]), s(&[60.0])],
                ]),
            },
        ];
        add_growth(&mut levels);
        assert_eq!(levels[0].steps[0].berth.growth, Some(1.0));
        assert_eq!(levels[1].steps[0].berth.growth, Some(4.0 / 3.0));
        assert_eq!(levels[1].steps[1].reference.growth, Some(1.0));
    }

    #[test]
    fn chain_steps_with_the_previous_build() {
        let s = |v: &[f64]| v.to_vec();
        let two: Samples = vec![
            [s(&[2.0]), s(&[1.0]), s(&[5.0]), s(&[6.0])],
            [s(&[20.0]), s(&[10.0]), s(&[50.0]), s(&[60.0])],
        ];
        assert!(steps(&two)
            .iter()
            .all(|c| c.before.is_none() && c.ratio_before.is_none()));
        // berth, before, reference: the reference is the last.
        let three: Samples = vec![
            [s(&[2.0]), s(&[1.0]), s(&[5.0]), s(&[6.0])],
            [s(&[4.0]), s(&[3.0]), s(&[10.0]), s(&[12.0])],
            [s(&[20.0]), s(&[10.0]), s(&[50.0]), s(&[60.0])],
        ];
        let st = steps(&three);
        assert_eq!(st[0].reference.median_ms, Some(20.0));
        assert_eq!(st[0].ratio, Some(10.0));
        assert_eq!(st[2].before.as_ref().unwrap().median_ms, Some(7.0));
        assert_eq!(st[2].ratio_before, Some(7.0 / 3.0));
        assert_eq!(st[5].ratio_before, Some(2.0));
        let level = |shaped, samples: &Samples| BandwidthLevel {
            shaped,
            berth_fill_secs: 0.0,
            ref_fill_secs: 0.0,
            before_fill_secs: Some(0.0),
            steps: steps(samples),
        };
        let mut doubled = three.clone();
        for x in doubled[1].iter_mut().flatten() {
            *x *= 2.0;
        }
        let mut levels = vec![level(0, &three), level(1000, &doubled)];
        add_growth(&mut levels);
        assert_eq!(
            levels[1].steps[0].before.as_ref().unwrap().growth,
            Some(2.0)
        );
        assert_eq!(levels[1].steps[0].berth.growth, Some(1.0));
    }

    #[test]
    fn probes_cover_each_limit_and_direction() {
        assert_eq!(probe_for(10 * MBIT, Direction::Ingress), Some(0));
        assert_eq!(probe_for(50 * MBIT, Direction::Egress), Some(0));
        assert_eq!(probe_for(50 * MBIT, Direction::Ingress), Some(1));
        assert_eq!(probe_for(10 * MBIT, Direction::Egress), Some(1));
        assert_eq!(probe_for(MBIT, Direction::Egress), None);
    }
}
