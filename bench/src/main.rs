//! berth-bench: side-by-side timings of berth's plugins and the reference
//! CNI plugins, driven exactly as a runtime drives them.
//!
//! Parts (all by default; choose with `--only`):
//!
//! * `compare` — for each N: one network per implementation (its own bridge,
//!   subnet and IPAM dataDir), N containers each in a fresh netns (created
//!   up front, not timed). Each ADD and each DEL is one exec of the bridge
//!   plugin with CNI env + config on stdin (it execs its IPAM plugin itself),
//!   timed with `Instant` around the exec. Reports per-container medians and
//!   the ref/berth ratio, and (N ≥ 200) the ADD median of the last 100
//!   containers against the first 100 (does cost grow with the network?).
//! * `floor` — the kernel's veth deletion cost, the floor under any DEL:
//!   times `ip link del` of a veth pair (both ends in one throwaway netns,
//!   and with the peer in a second netns as for a container), next to the
//!   cost of running `ip` itself (`ip link show lo`).
//! * `concurrent` — K (64) ADDs at once on one berth network: all must
//!   succeed with no address handed out twice; then K DELs at once.
//! * `host` — berth-host's none, macvlan and device modes against
//!   `loopback`, `macvlan` and `host-device` (see host.rs).
//! * `portmap` — one more container's published ports with 0, 1000 and
//!   5000 mappings installed, berth-portmap against `portmap` (see
//!   portmap.rs).
//! * `engine` — berthd under the Docker engine: volume protocol round
//!   trips, `docker volume create` + `docker run -v` against the `local`
//!   driver, `docker run` on a berth network against the `bridge` driver
//!   (see engine.rs).
//! * `overlay` — berth-overlay against issue 6's targets: iperf3 between
//!   containers on two namespace "hosts" against the same container path
//!   built by hand (bridge, veth, VXLAN with `ip`/`bridge`) between the
//!   same hosts, a raw host-to-host VXLAN for reference, and the agent's
//!   convergence with etcd and N simulated nodes (initial, join, leave)
//!   (see overlay.rs).
//! * `cri` — a Kubernetes node's pod lifecycle under containerd's CRI:
//!   RunPodSandbox + StopPodSandbox + RemovePodSandbox per pod, berth
//!   against the reference plugins, with the CNI ADD and DEL times
//!   containerd itself reports (see cri.rs).
//!
//! Everything is cleaned up at the end: DELs (which remove the plugins'
//! firewall rules), namespaces, the bridges (`ip link del`), temp dirs.
//! nftables is left to the plugins.

mod cri;
mod engine;
mod host;
mod overlay;
mod portmap;
mod sys;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use sys::{Netns, TempDir};

/// The parts `--only` chooses from.
const PARTS: [&str; 8] = [
    "compare",
    "floor",
    "concurrent",
    "host",
    "portmap",
    "engine",
    "overlay",
    "cri",
];

/// berth-bench's command line, as clap reads it; [`Args`] is what the
/// parts use.
#[derive(Debug, Parser)]
#[command(
    name = "berth-bench",
    bin_name = "berth-bench",
    about = "berth-bench: berth's CNI plugins vs the reference plugins, as a runtime runs them",
    override_usage = "berth-bench [options]        (as root)",
    // As before clap: the last of a repeated flag wins.
    args_override_self = true
)]
struct Cli {
    /// berth-bridge + berth-ipam [default: this binary's dir if it has
    /// berth-bridge, else <workspace>/target/release]
    #[arg(long = "cni-path-berth", value_name = "DIR")]
    berth_dir: Option<PathBuf>,
    /// reference bridge + host-local
    #[arg(
        long = "cni-path-ref",
        value_name = "DIR",
        default_value = "/usr/lib/cni"
    )]
    ref_dir: PathBuf,
    /// container counts for compare
    // `std::vec::Vec`: one value (a comma-separated list), not a repeated flag.
    #[arg(long = "n", value_name = "LIST", default_value = "1,100,1000", value_parser = counts)]
    ns: std::vec::Vec<usize>,
    /// parts to run: compare,floor,concurrent,host,portmap,engine,overlay,cri
    /// [default: all]
    #[arg(long, value_name = "LIST", value_parser = parts)]
    only: Option<std::vec::Vec<String>>,
    /// compare: run berth only
    #[arg(long)]
    no_ref: bool,
    /// concurrent ADDs for `concurrent`
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// repetitions for `floor`
    #[arg(long, value_name = "R", default_value_t = 30, value_parser = at_least_one::<usize>)]
    floor_reps: usize,
    /// containers per mode for `host`
    #[arg(long, value_name = "R", default_value_t = 30, value_parser = at_least_one::<usize>)]
    host_reps: usize,
    /// containers per level for `portmap`
    #[arg(long, value_name = "R", default_value_t = 20, value_parser = at_least_one::<usize>)]
    portmap_reps: usize,
    /// volume round trips for `engine`
    #[arg(long, value_name = "V", default_value_t = 1000, value_parser = at_least_one::<usize>)]
    volume_reps: usize,
    /// docker runs per driver for `engine`
    #[arg(long, value_name = "D", default_value_t = 20, value_parser = at_least_one::<usize>)]
    docker_reps: usize,
    /// simulated nodes for `overlay` convergence (at most 250)
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = overlay_nodes)]
    overlay_nodes: usize,
    /// length of each iperf3 run for `overlay`, in seconds
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = at_least_one::<u64>)]
    iperf_secs: u64,
    /// iperf3 runs per path for `overlay`
    #[arg(long, value_name = "R", default_value_t = 3, value_parser = at_least_one::<usize>)]
    iperf_reps: usize,
    /// pods per implementation for `cri`
    #[arg(long, value_name = "P", default_value_t = 20, value_parser = at_least_one::<usize>)]
    cri_pods: usize,
    /// cniVersion of the configs (1.0.0 is the newest the reference plugins
    /// 1.1.1 accept)
    #[arg(long, value_name = "V", default_value = "1.0.0")]
    cni_version: String,
    /// print the report as JSON on stdout (progress on stderr)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct Args {
    berth_dir: PathBuf,
    ref_dir: PathBuf,
    ns: Vec<usize>,
    compare: bool,
    floor: bool,
    concurrent: bool,
    host: bool,
    no_ref: bool,
    concurrency: usize,
    floor_reps: usize,
    host_reps: usize,
    portmap: bool,
    portmap_reps: usize,
    volumes: bool,
    volume_reps: usize,
    docker_reps: usize,
    overlay: bool,
    overlay_nodes: usize,
    iperf_secs: u64,
    iperf_reps: usize,
    cri: bool,
    cri_pods: usize,
    cni_version: String,
    json: bool,
}

fn default_berth_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if dir.join("berth-bridge").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// A comma-separated list; blank items are skipped.
fn parse_list<T: std::str::FromStr>(v: &str) -> std::result::Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| format!("bad value {s:?}")))
        .collect()
}

/// `--n`: container counts, each at least 1.
fn counts(v: &str) -> std::result::Result<Vec<usize>, String> {
    let ns: Vec<usize> = parse_list(v)?;
    if ns.contains(&0) {
        return Err("counts must be at least 1".into());
    }
    Ok(ns)
}

/// `--only`: parts of [`PARTS`].
fn parts(v: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<String> = parse_list(v)?;
    if let Some(p) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!("unknown part {p:?} ({})", PARTS.join(", ")));
    }
    Ok(parts)
}

/// A count or repetition that must be at least 1.
fn at_least_one<T>(v: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = v.parse().map_err(|e| format!("{e}"))?;
    if n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn overlay_nodes(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=overlay::MAX_NODES).contains(&n) {
        return Err(format!(
            "1 to {} (the nodes and 5 joiners take /24s of 10.200.0.0/16)",
            overlay::MAX_NODES
        ));
    }
    Ok(n)
}

/// Parses the arguments after the program name. `--help` is an error of
/// kind `DisplayHelp` (`exit()` prints the help and exits 0); a usage
/// error names the flag at fault (`exit()`: status 2).
fn parse_args(argv: &[String]) -> std::result::Result<Args, clap::Error> {
    let cli =
        Cli::try_parse_from(std::iter::once("berth-bench").chain(argv.iter().map(String::as_str)))?;
    // Without --only every part runs.
    let only = |part: &str| match &cli.only {
        None => true,
        Some(parts) => parts.iter().any(|p| p == part),
    };
    Ok(Args {
        berth_dir: cli.berth_dir.unwrap_or_else(default_berth_dir),
        compare: only("compare"),
        floor: only("floor"),
        concurrent: only("concurrent"),
        host: only("host"),
        portmap: only("portmap"),
        volumes: only("engine"),
        overlay: only("overlay"),
        cri: only("cri"),
        ref_dir: cli.ref_dir,
        ns: cli.ns,
        no_ref: cli.no_ref,
        concurrency: cli.concurrency,
        floor_reps: cli.floor_reps,
        host_reps: cli.host_reps,
        portmap_reps: cli.portmap_reps,
        volume_reps: cli.volume_reps,
        docker_reps: cli.docker_reps,
        overlay_nodes: cli.overlay_nodes,
        iperf_secs: cli.iperf_secs,
        iperf_reps: cli.iperf_reps,
        cri_pods: cli.cri_pods,
        cni_version: cli.cni_version,
        json: cli.json,
    })
}

// ---------------------------------------------------------------------------
// implementations and plugin execution

#[derive(Debug, Clone)]
struct Impl {
    label: &'static str,
    dir: PathBuf,
    bridge: &'static str,
    ipam: &'static str,
}

impl Impl {
    fn berth(dir: &Path) -> Self {
        Self {
            label: "berth",
            dir: dir.into(),
            bridge: "berth-bridge",
            ipam: "berth-ipam",
        }
    }

    fn reference(dir: &Path) -> Self {
        Self {
            label: "ref",
            dir: dir.into(),
            bridge: "bridge",
            ipam: "host-local",
        }
    }

    fn check(&self) -> Result<()> {
        for b in [self.bridge, self.ipam] {
            let p = self.dir.join(b);
            if !p.is_file() {
                bail!(
                    "{} plugin {} not found{}",
                    self.label,
                    p.display(),
                    if self.label == "berth" {
                        " (build with `cargo build --workspace --bins --release` or pass --cni-path-berth)"
                    } else {
                        " (apt-get install containernetworking-plugins, or pass --cni-path-ref / --no-ref)"
                    }
                );
            }
        }
        Ok(())
    }
}

/// The same network shape for both implementations: bridge + IPAM,
/// dual-stack, gateway, masquerade, default routes.
fn plugin_conf(
    imp: &Impl,
    cni_version: &str,
    name: &str,
    bridge: &str,
    s4: &str,
    s6: &str,
    data_dir: &Path,
) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": name,
        "type": imp.bridge,
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": imp.ipam,
            "dataDir": data_dir.to_string_lossy(),
            "ranges": [[{"subnet": s4}], [{"subnet": s6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        }
    })
}

fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

struct Exec {
    elapsed: Duration,
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Exec {
    fn describe(&self) -> String {
        format!(
            "stdout: {} stderr: {}",
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// One exec of `imp`'s bridge plugin (see [`exec_plugin`]).
fn exec_cni(imp: &Impl, command: &str, cid: &str, netns: &str, conf: &Value) -> Result<Exec> {
    exec_plugin(&imp.dir, imp.bridge, command, cid, netns, conf)
}

/// One exec of plugin `plugin` from `dir` (also its CNI_PATH), as a runtime
/// does it: environment cleared but PATH, CNI_* set, config on stdin.
/// Timed from spawn to exit.
fn exec_plugin(
    dir: &Path,
    plugin: &str,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
) -> Result<Exec> {
    exec_plugin_env(dir, plugin, command, cid, netns, conf, &[])
}

/// [`exec_plugin`] with `extra` variables added to the environment.
fn exec_plugin_env(
    dir: &Path,
    plugin: &str,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> Result<Exec> {
    let input = serde_json::to_vec(conf)?;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let bin = dir.join(plugin);
    let start = Instant::now();
    let mut child = Command::new(&bin)
        .env_clear()
        .env("PATH", path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", dir)
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("exec {}", bin.display()))?;
    {
        let mut stdin = child.stdin.take().unwrap();
        // A plugin that exits without reading stdin is its own error.
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    Ok(Exec {
        elapsed,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

// ---------------------------------------------------------------------------
// statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// one network per (implementation, N) in which to run N containers

/// A network under test: its bridge is deleted and its dataDir removed on
/// drop (after the namespaces, which are dropped first).
struct Network {
    imp: Impl,
    conf: Value,
    _data: TempDir,
    _bridge: sys::LinkGuard,
    name: String,
}

impl Network {
    fn new(imp: &Impl, cni_version: &str, taken: &mut Vec<u8>) -> Result<Self> {
        let data = TempDir::new(&format!("{}-ipam", imp.label))?;
        let (s4, s6) = sys::free_subnets(taken)?;
        let bridge = sys::unique_ifname("bbr");
        let name = format!("bench-{}-{}", imp.label, bridge);
        let conf = plugin_conf(imp, cni_version, &name, &bridge, &s4, &s6, data.path());
        Ok(Self {
            imp: imp.clone(),
            conf,
            _data: data,
            _bridge: sys::LinkGuard(bridge),
            name,
        })
    }

    fn make_netns(&self, n: usize) -> Result<Vec<Netns>> {
        (0..n)
            .map(|i| {
                Netns::new(format!(
                    "bb-{}-{}-{}",
                    std::process::id(),
                    self._bridge.0,
                    i
                ))
            })
            .collect()
    }

    fn cid(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }
}

#[derive(Debug, Default)]
struct Series {
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    error: Option<String>,
}

impl Series {
    fn to_json(&self, n: usize) -> Value {
        let (first, last) = if n >= 200 && self.add_ms.len() >= 200 {
            (
                median(&self.add_ms[..100]),
                median(&self.add_ms[self.add_ms.len() - 100..]),
            )
        } else {
            (None, None)
        };
        json!({
            "adds": self.add_ms.len(),
            "dels": self.del_ms.len(),
            "add_median_ms": median(&self.add_ms),
            "del_median_ms": median(&self.del_ms),
            "add_first100_median_ms": first,
            "add_last100_median_ms": last,
            "error": self.error,
        })
    }
}

/// N containers on a fresh network: N timed ADDs, then N timed DELs.
fn run_series(imp: &Impl, n: usize, args: &Args, taken: &mut Vec<u8>) -> Series {
    let mut s = Series::default();
    let net = match Network::new(imp, &args.cni_version, taken) {
        Ok(net) => net,
        Err(e) => {
            s.error = Some(format!("{e:#}"));
            return s;
        }
    };
    let nss = match net.make_netns(n) {
        Ok(v) => v,
        Err(e) => {
            s.error = Some(format!("creating namespaces: {e:#}"));
            return s;
        }
    };
    let mut results: Vec<Value> = Vec::with_capacity(n);
    for (i, ns) in nss.iter().enumerate() {
        match exec_cni(&net.imp, "ADD", &net.cid(i), &ns.path, &net.conf) {
            Ok(x) if x.ok => {
                s.add_ms.push(ms(x.elapsed));
                results.push(serde_json::from_str(&x.stdout).unwrap_or(Value::Null));
            }
            Ok(x) => {
                s.error = Some(format!("ADD #{i} failed: {}", x.describe()));
                // a runtime DELs a container whose ADD failed
                let _ = exec_cni(&net.imp, "DEL", &net.cid(i), &ns.path, &net.conf);
                break;
            }
            Err(e) => {
                s.error = Some(format!("ADD #{i}: {e:#}"));
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            eprint!("\r  {} N={n}: {} ADDs", imp.label, i + 1);
        }
    }
    for (i, prev) in results.iter().enumerate() {
        let conf = with_prev_result(&net.conf, prev);
        match exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf) {
            Ok(x) if x.ok => s.del_ms.push(ms(x.elapsed)),
            Ok(x) => {
                s.error
                    .get_or_insert_with(|| format!("DEL #{i} failed: {}", x.describe()));
            }
            Err(e) => {
                s.error.get_or_insert_with(|| format!("DEL #{i}: {e:#}"));
            }
        }
    }
    if n >= 100 {
        eprintln!();
    }
    drop(nss); // namespaces first, then the bridge and dataDir with berth-kernel
    drop(net);
    s
}

fn compare(args: &Args, taken: &mut Vec<u8>) -> Vec<Value> {
    let berth = Impl::berth(&args.berth_dir);
    let reference = Impl::reference(&args.ref_dir);
    // Warm-up, not counted: the first network a process sets up pays
    // one-time costs (page cache, firewall tables, sysctls) that would
    // otherwise land on whichever implementation runs first.
    eprintln!("compare: warm-up (1 container per implementation, not counted)");
    let _ = run_series(&berth, 1, args, taken);
    if !args.no_ref {
        let _ = run_series(&reference, 1, args, taken);
    }
    let mut rows = Vec::new();
    for &n in &args.ns {
        eprintln!("compare: N={n} berth");
        let b = run_series(&berth, n, args, taken);
        let r = if args.no_ref {
            None
        } else {
            eprintln!("compare: N={n} ref");
            Some(run_series(&reference, n, args, taken))
        };
        let bj = b.to_json(n);
        let rj = r.as_ref().map(|r| r.to_json(n));
        let add_ratio = r
            .as_ref()
            .and_then(|r| ratio(median(&r.add_ms), median(&b.add_ms)));
        let del_ratio = r
            .as_ref()
            .and_then(|r| ratio(median(&r.del_ms), median(&b.del_ms)));
        rows.push(json!({
            "n": n,
            "berth": bj,
            "ref": rj,
            "add_ratio_ref_over_berth": add_ratio,
            "del_ratio_ref_over_berth": del_ratio,
        }));
    }
    rows
}

// ---------------------------------------------------------------------------
// the veth deletion floor

/// Wall time of deleting `name` through `h`: one RTM_DELLINK and its ack,
/// i.e. the kernel's cost plus one netlink round trip.
fn time_del(h: &mut berth_kernel::Handle, name: &str) -> Result<f64> {
    let start = Instant::now();
    let existed = h
        .delete_link_by_name(name)
        .with_context(|| format!("delete {name}"))?;
    let t = ms(start.elapsed());
    if !existed {
        bail!("{name} did not exist");
    }
    Ok(t)
}

/// Other ports on the bridge for the "bridge port" floor: the scale at
/// which the DEL target is judged (N=100).
const FLOOR_BRIDGE_PORTS: usize = 100;

fn floor(reps: usize) -> Result<Value> {
    let pid = std::process::id();
    let h = Netns::new(format!("bb-{pid}-floor-h"))?;
    let c = Netns::new(format!("bb-{pid}-floor-c"))?;
    let (hn, cn) = (
        berth_kernel::Netns::open(std::path::Path::new(&h.path))?,
        berth_kernel::Netns::open(std::path::Path::new(&c.path))?,
    );
    let mut hh = sys::handle_in(&h)?;
    let mut ch = sys::handle_in(&c)?;
    let veth =
        |hh: &mut berth_kernel::Handle, peer: &str, peer_ns: &berth_kernel::Netns| -> Result<u32> {
            hh.add_veth("vfa", peer, peer_ns, &berth_kernel::VethOptions::default())?;
            Ok(hh.link_by_name("vfa")?.context("vfa vanished")?.index)
        };
    // What a bridge plugin's DEL really deletes: a veth that is a port of a
    // bridge with other ports, its peer up in another netns.
    hh.add_bridge("bfl0", &berth_kernel::BridgeOptions::default())?;
    let br = hh.link_by_name("bfl0")?.context("bfl0 vanished")?.index;
    hh.set_up(br)?;
    for i in 0..FLOOR_BRIDGE_PORTS {
        let (a, b) = (format!("vp{i}a"), format!("vp{i}b"));
        hh.add_veth(&a, &b, &hn, &berth_kernel::VethOptions::default())?;
        for (name, master) in [(&a, Some(br)), (&b, None)] {
            let idx = hh.link_by_name(name)?.context("port vanished")?.index;
            if let Some(m) = master {
                hh.set_master(idx, m)?;
            }
            hh.set_up(idx)?;
        }
    }
    let (mut same, mut cross, mut port) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        veth(&mut hh, "vfb", &hn)?;
        same.push(time_del(&mut hh, "vfa")?);

        veth(&mut hh, "eth0", &cn)?;
        cross.push(time_del(&mut hh, "vfa")?);

        let idx = veth(&mut hh, "eth0", &cn)?;
        hh.set_master(idx, br)?;
        hh.set_up(idx)?;
        let peer = ch.link_by_name("eth0")?.context("eth0 vanished")?.index;
        ch.set_up(peer)?;
        port.push(time_del(&mut hh, "vfa")?);
    }
    Ok(json!({
        "reps": reps,
        "what": "median time of one RTM_DELLINK of a veth (netlink round trip included)",
        "bridge_ports": FLOOR_BRIDGE_PORTS,
        "veth_del_same_netns_ms": median(&same),
        "veth_del_peer_in_other_netns_ms": median(&cross),
        "veth_del_bridge_port_ms": median(&port),
    }))
}

/// berth's DEL against the kernel's cost of deleting the very veth it
/// deletes, in the same state: FLOOR_BRIDGE_PORTS berth containers on one
/// network; for every other container one RTM_DELLINK of its host veth is
/// timed and an untimed DEL then releases its address;
/// for the rest berth's whole DEL (process start included) is timed. Both
/// halves see the bridge shrink alike.
fn del_in_place(args: &Args, taken: &mut Vec<u8>) -> Result<Value> {
    let imp = Impl::berth(&args.berth_dir);
    let net = Network::new(&imp, &args.cni_version, taken)?;
    let n = FLOOR_BRIDGE_PORTS;
    let nss = net.make_netns(n)?;
    let mut results = Vec::with_capacity(n);
    for (i, ns) in nss.iter().enumerate() {
        let x = exec_cni(&net.imp, "ADD", &net.cid(i), &ns.path, &net.conf)?;
        if !x.ok {
            bail!("ADD #{i} failed: {}", x.describe());
        }
        results.push(serde_json::from_str::<Value>(&x.stdout)?);
    }
    let mut host = sys::host()?;
    let (mut kernel, mut berth) = (Vec::new(), Vec::new());
    for (i, r) in results.iter().enumerate() {
        let conf = with_prev_result(&net.conf, r);
        if i % 2 == 0 {
            let hv = r["interfaces"][1]["name"]
                .as_str()
                .context("ADD result without a host interface")?;
            kernel.push(time_del(&mut host, hv)?);
            let x = exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf)?;
            if !x.ok {
                bail!("DEL #{i} failed: {}", x.describe());
            }
        } else {
            let x = exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf)?;
            if !x.ok {
                bail!("DEL #{i} failed: {}", x.describe());
            }
            berth.push(ms(x.elapsed));
        }
    }
    let (k, b) = (median(&kernel), median(&berth));
    Ok(json!({
        "containers": n,
        "kernel_veth_del_ms": k,
        "berth_del_ms": b,
        "berth_over_kernel": ratio(b, k),
    }))
}

// ---------------------------------------------------------------------------
// concurrent ADDs on one network

fn concurrent(args: &Args, taken: &mut Vec<u8>) -> Result<Value> {
    let k = args.concurrency;
    let imp = Impl::berth(&args.berth_dir);
    let net = Network::new(&imp, &args.cni_version, taken)?;
    let nss = net.make_netns(k)?;

    // Run the bridge plugin once per container, all released at once.
    let run_all = |command: &str, confs: &[Value]| -> (Duration, Vec<Result<Exec>>) {
        let barrier = Barrier::new(k);
        let start = Instant::now();
        let out = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let (barrier, net, nss) = (&barrier, &net, &nss);
                    let conf = &confs[i];
                    scope.spawn(move || {
                        barrier.wait();
                        exec_cni(&net.imp, command, &net.cid(i), &nss[i].path, conf)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        (start.elapsed(), out)
    };

    eprintln!("concurrent: {k} ADDs at once on one berth network");
    let add_confs = vec![net.conf.clone(); k];
    let (add_wall, adds) = run_all("ADD", &add_confs);
    let mut failures = Vec::new();
    let mut add_ms = Vec::new();
    let mut results = Vec::new();
    let mut owners: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in adds.iter().enumerate() {
        match r {
            Ok(x) if x.ok => {
                add_ms.push(ms(x.elapsed));
                let v: Value = serde_json::from_str(&x.stdout).unwrap_or(Value::Null);
                for ip in v["ips"].as_array().into_iter().flatten() {
                    if let Some(a) = ip["address"].as_str() {
                        let addr = a.split('/').next().unwrap_or(a).to_string();
                        owners.entry(addr).or_default().push(i);
                    }
                }
                results.push(v);
            }
            Ok(x) => {
                failures.push(format!("ADD #{i}: {}", x.describe()));
                results.push(Value::Null);
            }
            Err(e) => {
                failures.push(format!("ADD #{i}: {e:#}"));
                results.push(Value::Null);
            }
        }
    }
    let mut duplicates: Vec<String> = owners
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(a, v)| format!("{a} given to containers {v:?}"))
        .collect();
    duplicates.sort();
    let addresses = owners.len();

    eprintln!("concurrent: {k} DELs at once");
    let del_confs: Vec<Value> = results
        .iter()
        .map(|r| {
            if r.is_null() {
                net.conf.clone()
            } else {
                with_prev_result(&net.conf, r)
            }
        })
        .collect();
    let (del_wall, dels) = run_all("DEL", &del_confs);
    let mut del_ms = Vec::new();
    let mut del_failures = Vec::new();
    for (i, r) in dels.iter().enumerate() {
        match r {
            Ok(x) if x.ok => del_ms.push(ms(x.elapsed)),
            Ok(x) => del_failures.push(format!("DEL #{i}: {}", x.describe())),
            Err(e) => del_failures.push(format!("DEL #{i}: {e:#}")),
        }
    }
    drop(nss);
    drop(net);

    let max = |v: &[f64]| {
        v.iter()
            .cloned()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let ok = failures.is_empty() && duplicates.is_empty() && del_failures.is_empty();
    Ok(json!({
        "containers": k,
        "ok": ok,
        "add_succeeded": add_ms.len(),
        "add_failures": failures,
        "distinct_addresses": addresses,
        "duplicate_addresses": duplicates,
        "add_wall_ms": ms(add_wall),
        "add_median_ms": median(&add_ms),
        "add_max_ms": max(&add_ms),
        "del_succeeded": del_ms.len(),
        "del_failures": del_failures,
        "del_wall_ms": ms(del_wall),
        "del_median_ms": median(&del_ms),
        "del_max_ms": max(&del_ms),
    }))
}

// ---------------------------------------------------------------------------
// output

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn fx(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.1}x"),
        None => "-".into(),
    }
}

fn pass(v: &Value) -> &'static str {
    if *v == true {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Numbers of a JSON array, each formatted with `digits` decimals.
fn list(v: &Value, digits: usize) -> String {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| format!("{:.*}", digits, x.as_f64().unwrap_or(f64::NAN)))
        .collect();
    items.join(" ")
}

fn print_overlay(o: &Value) {
    let t = &o["throughput"];
    if t.is_object() {
        println!(
            "== berth-overlay throughput: iperf3 TCP, {} runs x {} s per path, alternating ==",
            t["runs_per_path"], t["iperf_secs"]
        );
        let m = &t["mtu"];
        println!(
            "   (MTU: underlay {}; berth eth0 {}, bov42 {}, berth.42 {}; hand-built eth0 {}, hbr {}, vxh {}; raw vxb {})",
            m["underlay"],
            m["berth_eth0"],
            m["berth_bridge"],
            m["berth_vxlan"],
            m["hand_eth0"],
            m["hand_bridge"],
            m["hand_vxlan"],
            m["raw_vxlan"]
        );
        let paths = [
            (
                "berth",
                "berth",
                "container -> container over berth-overlay",
            ),
            (
                "hand",
                "hand_container",
                "container -> container, built by hand",
            ),
            ("raw", "raw_vxlan", "host -> host over a raw VXLAN"),
        ];
        for (label, key, what) in paths {
            let p = &t[key];
            println!(
                "  {label:<6} {what:<42} median {:>6} Gbit/s   runs [{}]   retransmits [{}]",
                f(&p["median_gbps"]),
                list(&p["gbps"], 2),
                list(&p["retransmits"], 0),
            );
        }
        println!(
            "  berth/hand {} (target >= {:.2}): {}",
            f(&t["berth_over_hand_container"]),
            t["target_ratio"].as_f64().unwrap_or(f64::NAN),
            pass(&t["ratio_pass"])
        );
        println!(
            "  berth/raw  {} (raw VXLAN host to host, no veth/bridge/forwarding: for reference, not judged)",
            f(&t["berth_over_raw_vxlan"])
        );
        let frag: Vec<String> = paths
            .iter()
            .map(|(label, key, _)| {
                format!(
                    "{label} +{} / +{}",
                    t[key]["frag_creates"], t[key]["reasm_reqds"]
                )
            })
            .collect();
        println!(
            "  fragmentation, FragCreates / ReasmReqds over each path's namespaces: {}: {}",
            frag.join(", "),
            pass(&t["no_fragmentation"])
        );
        println!();
    }
    if let Some(e) = o["throughput_error"].as_str() {
        println!("FAILED overlay throughput: {e}\n");
    }
    let c = &o["convergence"];
    if c.is_object() {
        println!(
            "== berth-overlay agent convergence: etcd, {} simulated nodes (target < {:.0} ms) ==",
            c["nodes"],
            c["target_ms"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "  initial: agent start -> {} onlink routes   {:>8} ms             {}   (records put beforehand in {} ms; agent VTEP {})",
            c["nodes"], f(&c["initial_ms"]), pass(&c["initial_pass"]), f(&c["records_put_ms"]), c["agent_vtep_address"].as_str().unwrap_or("-")
        );
        for (label, key) in [
            ("join:  record put -> its route     ", "join"),
            ("leave: record deleted -> route gone", "leave"),
        ] {
            println!(
                "  {label}  median {:>8} ms, max {:>8} ms   {}   [{}]",
                f(&c[format!("{key}_median_ms")]),
                f(&c[format!("{key}_max_ms")]),
                pass(&c[format!("{key}_pass")]),
                list(&c[format!("{key}_ms")], 1),
            );
        }
        println!(
            "  FDB entries with a dst on berth.77: {}, onlink routes: {}, live nodes: {}: {}",
            c["fdb_entries_with_dst"],
            c["onlink_routes"],
            c["live_nodes"],
            if c["fdb_matches_live_nodes"] == true {
                "OK"
            } else {
                "MISMATCH"
            }
        );
        println!();
    }
    if let Some(e) = o["convergence_error"].as_str() {
        println!("FAILED overlay convergence: {e}\n");
    }
}

fn print_cri(c: &Value) {
    println!(
        "== cri: pods under containerd {}'s CRI, median ms over {} pods (one hostPort each, beside a resident pod) ==",
        c["containerd"].as_str().unwrap_or("?"),
        c["pods"]
    );
    println!(
        "{:<44} {:>10} {:>10} {:>9}",
        "", "berth", "ref", "ref/berth"
    );
    let rows = [
        ("RunPodSandbox", "run_ms"),
        ("  CNI ADD (containerd's log)", "cni_add_ms"),
        ("StopPodSandbox", "stop_ms"),
        ("  CNI DEL (containerd's metrics)", "cni_del_stop_ms"),
        ("RemovePodSandbox", "remove_ms"),
        ("  CNI DEL again, no netns (metrics)", "cni_del_remove_ms"),
        ("Run + Stop + Remove", "total_ms"),
    ];
    for (name, key) in rows {
        println!(
            "{:<44} {:>10} {:>10} {:>9}",
            name,
            f(&c["berth"][key]),
            f(&c["ref"][key]),
            fx(&c["ratio"][key])
        );
    }
    println!();
}

fn print_tables(report: &Value) {
    if let Some(rows) = report["host"].as_array() {
        println!("== berth-host vs the reference plugin of each mode: ADD / DEL, median ms ==");
        println!(
            "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
            "mode", "berth ADD", "berth DEL", "ref", "ref ADD", "ref DEL", "ADD x", "DEL x"
        );
        for r in rows {
            println!(
                "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
                r["mode"].as_str().unwrap_or("-"),
                f(&r["berth"]["add_ms"]),
                f(&r["berth"]["del_ms"]),
                r["ref"]["plugin"].as_str().unwrap_or("-"),
                f(&r["ref"]["add_ms"]),
                f(&r["ref"]["del_ms"]),
                fx(&r["add_ratio"]),
                fx(&r["del_ratio"]),
            );
        }
        println!();
    }
    if let Some(e) = report["host_error"].as_str() {
        println!("FAILED host: {e}\n");
    }
    if let Some(rows) = report["portmap"].as_array() {
        println!(
            "== portmap: one more container (2 mappings) with M mappings installed, median ms =="
        );
        println!("   (growth = cost at M / cost at 0; berth's target at 5000: ADD and DEL growth <= 1.25x)");
        println!(
            "{:>6}  {:>10} {:>7} {:>10} {:>7}  {:>10} {:>7} {:>10} {:>7}",
            "M",
            "berth ADD",
            "growth",
            "berth DEL",
            "growth",
            "ref ADD",
            "growth",
            "ref DEL",
            "growth"
        );
        for r in rows {
            let (b, rf) = (&r["berth"], &r["ref"]);
            println!(
                "{:>6}  {:>10} {:>7} {:>10} {:>7}  {:>10} {:>7} {:>10} {:>7}",
                r["installed_mappings"].as_u64().unwrap_or(0),
                f(&b["add_ms"]),
                fx(&b["add_growth"]),
                f(&b["del_ms"]),
                fx(&b["del_growth"]),
                f(&rf["add_ms"]),
                fx(&rf["add_growth"]),
                f(&rf["del_ms"]),
                fx(&rf["del_growth"]),
            );
        }
        println!();
    }
    if let Some(e) = report["portmap_error"].as_str() {
        println!("FAILED portmap: {e}\n");
    }
    if report["volumes"].is_object() {
        let (r, d) = (
            &report["volumes"]["round_trip"],
            &report["volumes"]["docker"],
        );
        println!("== berthd under the Docker engine ==");
        println!(
            "Create+Mount+Unmount+Remove over the socket, {} volumes: managed median {} ms, p99 {} ms; size-limited (8M) median {} ms, p99 {} ms",
            r["volumes"], f(&r["managed_median_ms"]), f(&r["managed_p99_ms"]), f(&r["sized_median_ms"]), f(&r["sized_p99_ms"])
        );
        println!(
            "docker volume create + docker run -v, {} volumes each: -d berth {} ms, -d local {} ms, berth/local {} (target <= 1.3x)",
            d["volumes"], f(&d["berth_ms"]), f(&d["local_ms"]), fx(&d["berth_over_local"])
        );
        let n = &report["volumes"]["network"];
        println!(
            "docker run --rm on a network, {} runs each: berth {} ms, bridge driver {} ms, berth/bridge {} (target <= 1.2x)",
            n["runs"], f(&n["berth_ms"]), f(&n["bridge_driver_ms"]), fx(&n["berth_over_bridge"])
        );
        println!();
    }
    if let Some(e) = report["volumes_error"].as_str() {
        println!("FAILED volumes: {e}\n");
    }
    if report["overlay"].is_object() {
        print_overlay(&report["overlay"]);
    }
    if let Some(e) = report["overlay_error"].as_str() {
        println!("FAILED overlay: {e}\n");
    }
    if report["cri"].is_object() {
        print_cri(&report["cri"]);
    }
    if let Some(e) = report["cri_error"].as_str() {
        println!("FAILED cri: {e}\n");
    }
    if let Some(rows) = report["compare"].as_array() {
        println!("== per-container ADD / DEL, median ms (one exec of the bridge plugin each) ==");
        println!(
            "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
            "N", "berth ADD", "ref ADD", "ref/berth", "berth DEL", "ref DEL", "ref/berth"
        );
        for r in rows {
            println!(
                "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
                r["n"].as_u64().unwrap_or(0),
                f(&r["berth"]["add_median_ms"]),
                f(&r["ref"]["add_median_ms"]),
                fx(&r["add_ratio_ref_over_berth"]),
                f(&r["berth"]["del_median_ms"]),
                f(&r["ref"]["del_median_ms"]),
                fx(&r["del_ratio_ref_over_berth"]),
            );
        }
        let growth: Vec<&Value> = rows
            .iter()
            .filter(|r| r["n"].as_u64().unwrap_or(0) >= 200)
            .collect();
        if !growth.is_empty() {
            println!();
            println!("== ADD median ms: first 100 vs last 100 containers ==");
            println!(
                "{:>6}  {:<6} {:>10} {:>10} {:>10}",
                "N", "impl", "first100", "last100", "last/first"
            );
            for r in growth {
                for imp in ["berth", "ref"] {
                    let s = &r[imp];
                    if s.is_null() {
                        continue;
                    }
                    let (a, b) = (&s["add_first100_median_ms"], &s["add_last100_median_ms"]);
                    let g = ratio(b.as_f64(), a.as_f64())
                        .map(Value::from)
                        .unwrap_or(Value::Null);
                    println!(
                        "{:>6}  {:<6} {:>10} {:>10} {:>10}",
                        r["n"].as_u64().unwrap_or(0),
                        imp,
                        f(a),
                        f(b),
                        // two decimals: the target (1.25x) needs them
                        g.as_f64().map_or("-".into(), |x| format!("{x:.2}x"))
                    );
                }
            }
        }
        for r in rows {
            for imp in ["berth", "ref"] {
                if let Some(e) = r[imp]["error"].as_str() {
                    println!("FAILED {imp} N={}: {e}", r["n"]);
                }
            }
        }
        println!();
    }
    if !report["floor"].is_null() {
        let fl = &report["floor"];
        println!(
            "== veth deletion floor (median of {} RTM_DELLINKs, netlink round trip included) ==",
            fl["reps"]
        );
        println!(
            "  veth, both ends in one netns:   {:>8} ms",
            f(&fl["veth_del_same_netns_ms"])
        );
        println!(
            "  veth, peer in another netns:    {:>8} ms",
            f(&fl["veth_del_peer_in_other_netns_ms"])
        );
        println!(
            "  bridge port ({} other ports), peer up in another netns: {:>8} ms",
            fl["bridge_ports"],
            f(&fl["veth_del_bridge_port_ms"])
        );
        println!();
    }
    if !report["del_in_place"].is_null() {
        let d = &report["del_in_place"];
        println!();
        println!("== berth DEL vs the kernel deleting the same veth ({} containers on one network, alternating) ==", d["containers"]);
        println!(
            "  kernel (one RTM_DELLINK of the host veth):          {:>8} ms",
            f(&d["kernel_veth_del_ms"])
        );
        println!(
            "  berth DEL (whole plugin run):                       {:>8} ms  ({} the kernel's)",
            f(&d["berth_del_ms"]),
            fx(&d["berth_over_kernel"])
        );
        println!();
    }
    if let Some(e) = report["del_in_place_error"].as_str() {
        println!("FAILED del_in_place: {e}\n");
    }
    if let Some(e) = report["floor_error"].as_str() {
        println!("FAILED floor: {e}\n");
    }
    if !report["concurrent"].is_null() {
        let c = &report["concurrent"];
        println!(
            "== {} concurrent ADDs on one berth network ==",
            c["containers"]
        );
        println!(
            "  {}: {} of {} ADDs succeeded, {} distinct addresses, {} duplicates",
            if c["ok"] == true { "OK" } else { "FAILED" },
            c["add_succeeded"],
            c["containers"],
            c["distinct_addresses"],
            c["duplicate_addresses"].as_array().map_or(0, |v| v.len()),
        );
        println!(
            "  ADD: wall {} ms, median {} ms, max {} ms;  DEL: {} ok, wall {} ms, median {} ms, max {} ms",
            f(&c["add_wall_ms"]), f(&c["add_median_ms"]), f(&c["add_max_ms"]),
            c["del_succeeded"], f(&c["del_wall_ms"]), f(&c["del_median_ms"]), f(&c["del_max_ms"]),
        );
        for key in ["add_failures", "duplicate_addresses", "del_failures"] {
            for e in c[key].as_array().into_iter().flatten().take(10) {
                println!("  {key}: {}", e.as_str().unwrap_or_default());
            }
        }
        println!();
    }
    if let Some(e) = report["concurrent_error"].as_str() {
        println!("FAILED concurrent: {e}\n");
    }
}

fn main() {
    match real_main() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Ok(false) when a part failed (the report says which).
fn real_main() -> Result<bool> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // --help: the help on stdout, status 0; a usage error: status 2.
    let args = parse_args(&argv).unwrap_or_else(|e| e.exit());
    if !sys::is_root() {
        bail!("must run as root (creates namespaces, bridges and firewall rules)");
    }
    if args.compare || args.concurrent {
        Impl::berth(&args.berth_dir).check()?;
    }
    if args.compare && !args.no_ref {
        Impl::reference(&args.ref_dir).check()?;
    }

    let mut taken = Vec::new();
    let mut report = json!({
        "config": {
            "cni_path_berth": args.berth_dir,
            "cni_path_ref": if args.no_ref { Value::Null } else { json!(args.ref_dir) },
            "n": args.ns,
            "cni_version": args.cni_version,
            "network": "bridge + IPAM, isGateway, ipMasq, IPv4 /16 + IPv6 /64, default routes",
            "warmup": "compare: 1 container per implementation on its own network first, not counted",
        }
    });
    let mut ok = true;
    if args.compare {
        let rows = compare(&args, &mut taken);
        ok &= rows
            .iter()
            .all(|r| r["berth"]["error"].is_null() && r["ref"]["error"].is_null());
        report["compare"] = Value::Array(rows);
    }
    if args.floor {
        eprintln!("floor: {} veth deletions", args.floor_reps);
        match floor(args.floor_reps) {
            Ok(v) => report["floor"] = v,
            Err(e) => {
                ok = false;
                report["floor_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.floor {
        eprintln!("floor: berth DEL vs deleting the same veth, {FLOOR_BRIDGE_PORTS} containers");
        match del_in_place(&args, &mut taken) {
            Ok(v) => report["del_in_place"] = v,
            Err(e) => {
                ok = false;
                report["del_in_place_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.concurrent {
        match concurrent(&args, &mut taken) {
            Ok(v) => {
                ok &= v["ok"] == true;
                report["concurrent"] = v;
            }
            Err(e) => {
                ok = false;
                report["concurrent_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.host {
        match host::host_modes(&args.berth_dir, &args.ref_dir, args.host_reps) {
            Ok(v) => report["host"] = v,
            Err(e) => {
                ok = false;
                report["host_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.portmap {
        match portmap::portmap_levels(&args.berth_dir, &args.ref_dir, args.portmap_reps) {
            Ok(v) => report["portmap"] = v,
            Err(e) => {
                ok = false;
                report["portmap_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.volumes {
        match engine::engine(&args.berth_dir, args.volume_reps, args.docker_reps) {
            Ok(v) => report["volumes"] = v,
            Err(e) => {
                ok = false;
                report["volumes_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.overlay {
        match overlay::overlay(
            &args.berth_dir,
            args.overlay_nodes,
            args.iperf_secs,
            args.iperf_reps,
        ) {
            Ok(v) => {
                ok &= overlay::ok(&v);
                report["overlay"] = v;
            }
            Err(e) => {
                ok = false;
                report["overlay_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.cri {
        match cri::cri(&args.berth_dir, &args.ref_dir, args.cri_pods) {
            Ok(v) => report["cri"] = v,
            Err(e) => {
                ok = false;
                report["cri_error"] = json!(format!("{e:#}"));
            }
        }
    }
    report["ok"] = json!(ok);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults() {
        let a = parse_args(&[]).unwrap();
        assert_eq!(a.ns, vec![1, 100, 1000]);
        assert_eq!(a.ref_dir, PathBuf::from("/usr/lib/cni"));
        assert!(a.compare && a.floor && a.concurrent && !a.json);
        assert_eq!(a.concurrency, 64);
    }

    #[test]
    fn flags() {
        let a = parse_args(&argv(
            "--n 5,200 --only compare,concurrent --json --cni-path-berth /x --cni-path-ref=/y --no-ref",
        ))
        .unwrap();
        assert_eq!(a.ns, vec![5, 200]);
        assert!(a.compare && a.concurrent && !a.floor);
        assert!(a.json && a.no_ref);
        assert_eq!(a.berth_dir, PathBuf::from("/x"));
        assert_eq!(a.ref_dir, PathBuf::from("/y"));
        assert_eq!(
            parse_args(&argv("--help")).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert!(parse_args(&argv("--bogus")).is_err());
        assert!(parse_args(&argv("--n 0")).is_err());
        assert!(parse_args(&argv("--only nope")).is_err());
        assert!(parse_args(&argv("--n")).is_err());
    }

    #[test]
    fn cri_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.cri && a.cri_pods == 20);
        let a = parse_args(&argv("--only cri --cri-pods 3")).unwrap();
        assert!(a.cri && !a.compare && !a.overlay && a.cri_pods == 3);
        assert!(parse_args(&argv("--cri-pods 0")).is_err());
    }

    #[test]
    fn overlay_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.overlay);
        assert_eq!((a.overlay_nodes, a.iperf_secs, a.iperf_reps), (200, 5, 3));
        let a = parse_args(&argv(
            "--only overlay --overlay-nodes 50 --iperf-secs=2 --iperf-reps 1",
        ))
        .unwrap();
        assert!(
            a.overlay
                && !a.compare
                && !a.floor
                && !a.concurrent
                && !a.host
                && !a.portmap
                && !a.volumes
        );
        assert_eq!((a.overlay_nodes, a.iperf_secs, a.iperf_reps), (50, 2, 1));
        assert!(!parse_args(&argv("--only compare")).unwrap().overlay);
        assert!(parse_args(&argv("--overlay-nodes 0")).is_err());
        assert!(parse_args(&argv("--overlay-nodes 251")).is_err());
        assert!(parse_args(&argv("--overlay-nodes 250")).is_ok());
        assert!(parse_args(&argv("--iperf-secs 0")).is_err());
        assert!(parse_args(&argv("--iperf-reps 0")).is_err());
    }

    /// Every check names the flag at fault; the last of a repeated flag
    /// wins, as before clap.
    #[test]
    fn errors_name_the_flag() {
        Cli::command().debug_assert();
        for (args, flag) in [
            ("--n 0", "--n"),
            ("--n 1,x", "--n"),
            ("--only nope", "--only"),
            ("--concurrency 0", "--concurrency"),
            ("--floor-reps 0", "--floor-reps"),
            ("--host-reps 0", "--host-reps"),
            ("--portmap-reps 0", "--portmap-reps"),
            ("--volume-reps 0", "--volume-reps"),
            ("--docker-reps 0", "--docker-reps"),
            ("--cri-pods 0", "--cri-pods"),
            ("--iperf-secs 0", "--iperf-secs"),
            ("--iperf-reps 0", "--iperf-reps"),
            ("--overlay-nodes 251", "--overlay-nodes"),
            ("--concurrency x", "--concurrency"),
            ("--cni-version", "--cni-version"),
        ] {
            let e = parse_args(&argv(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args}");
            let msg = e.to_string();
            assert!(msg.contains(flag), "{args}: {msg}");
            for other in ["--concurrency", "--floor-reps", "--cri-pods"] {
                assert!(other == flag || !msg.contains(other), "{args}: {msg}");
            }
        }
        let a = parse_args(&argv(
            "--n 1,,2 --n 3 --only host --only floor --json --json",
        ))
        .unwrap();
        assert_eq!(a.ns, vec![3]);
        assert!(a.floor && !a.host && a.json);
        let a = parse_args(&argv("--n=4, 5")).unwrap_err();
        assert_eq!(a.exit_code(), 2);
        let a = parse_args(&["--n=4, 5".to_string()]).unwrap();
        assert_eq!(a.ns, vec![4, 5]);
        let a = parse_args(&argv("--volume-reps 7 --docker-reps 8 --cni-version 1.1.0")).unwrap();
        assert_eq!((a.volume_reps, a.docker_reps), (7, 8));
        assert_eq!(a.cni_version, "1.1.0");
        assert!(a.volumes && a.portmap && a.host);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(ratio(Some(10.0), Some(2.0)), Some(5.0));
        assert_eq!(ratio(Some(10.0), Some(0.0)), None);
    }

    #[test]
    fn same_shape_for_both() {
        let d = Path::new("/tmp/d");
        let b = plugin_conf(
            &Impl::berth(d),
            "1.0.0",
            "n",
            "br",
            "10.200.0.0/16",
            "fd00:be:c8::/64",
            d,
        );
        let r = plugin_conf(
            &Impl::reference(d),
            "1.0.0",
            "n",
            "br",
            "10.200.0.0/16",
            "fd00:be:c8::/64",
            d,
        );
        assert_eq!(b["type"], "berth-bridge");
        assert_eq!(b["ipam"]["type"], "berth-ipam");
        assert_eq!(r["type"], "bridge");
        assert_eq!(r["ipam"]["type"], "host-local");
        let strip = |mut v: Value| {
            v["type"] = Value::Null;
            v["ipam"]["type"] = Value::Null;
            v
        };
        assert_eq!(strip(b), strip(r));
    }

    #[test]
    fn series_growth_only_from_200() {
        let s = Series {
            add_ms: (0..300).map(f64::from).collect(),
            del_ms: vec![1.0],
            error: None,
        };
        let j = s.to_json(300);
        assert_eq!(j["add_first100_median_ms"], json!(49.5));
        assert_eq!(j["add_last100_median_ms"], json!(249.5));
        let j = Series {
            add_ms: vec![1.0; 100],
            ..Default::default()
        }
        .to_json(100);
        assert!(j["add_first100_median_ms"].is_null());
    }
}
