//! `cluster` part: berth as a Kubernetes cluster network (issue 29,
//! section 6): nodes running `berth node` (the overlay agent, the
//! reconciler, the probes) with their leases in etcd, on the conflist of
//! deploy/kubernetes/berth.yaml's ConfigMap.
//!
//! Everything runs in namespaces of the bench's own:
//! * a "switch" namespace holding a bridge, the underlay every node
//!   namespace is plugged into by a veth (`ovu` in the node,
//!   192.168.77.0/24, MTU 1500, a default route through it so that
//!   berth-overlay finds its underlay link as on a host);
//! * etcd (Debian's 3.4) in a namespace of its own on the switch at
//!   192.168.77.250, TLS with client-cert-auth on `https://…:2379` (a CA,
//!   server and client certificates made with openssl, as etcd.rs makes
//!   them), and a plain listener on its own loopback for the bench's
//!   writes (simulated leases, releases);
//! * nodes: a namespace on the switch with a private run dir
//!   (`BERTH_RUN_DIR`, shared by the plugins and the agent) and IPAM
//!   dataDir, the ConfigMap's `10-berth.conflist` (berth-overlay with an
//!   etcd store, berth-portmap, berth-bandwidth) with only what ties it to
//!   this bench patched in: the endpoint, the TLS files, the node's name
//!   (each host's hostname, on a real cluster) and its dataDir; and
//!   `berth node --conf … --address 127.0.0.1:9624` in the namespace.
//!   Pods are namespaces attached by the conflist's plugins run one after
//!   the other inside the node's namespace (CNI env, config on stdin,
//!   prevResult chained, one hostPort each), as a runtime there would run
//!   them, or by a containerd running in the node's namespace.
//!
//! Nodes n1 (192.168.77.1) and n2 (.2) are up for the whole part. Then:
//!
//! 1. Throughput: iperf3 TCP, a pod on n1 to a pod on n2 (berth-overlay,
//!    VXLAN berth.1), against (a) the same pod to a second pod on n1 (the
//!    node's bridge only), (b) overlay.rs's hand-built VXLAN container
//!    path between the same two node namespaces (bridge, veth, VXLAN with
//!    `ip`/`bridge`, no berth code), (c) the raw underlay, iperf3 from n1
//!    to n2 itself (veth, switch, veth). A 1 s warm-up of each, then R
//!    runs of S seconds alternating path by path (overlay.rs's loop, with
//!    its fragmentation counters): medians. Target: across nodes ≥ 0.90
//!    of the hand-built path.
//! 2. CRI: a third node `hc` whose containerd (the tests' harness, with
//!    `nsenter --net` as its launcher, so it and the plugins it runs live
//!    in the node's namespace with the node's run dir) has the cluster
//!    conflist, `berth node` running on it; against a fourth node `hs`
//!    whose containerd has cri.rs's single-node conflist (berth-bridge +
//!    berth-ipam + berth-portmap, dual stack), no agent. A resident pod
//!    and a warm-up pod on each, then P rounds, each one pod (one
//!    hostPort) on each in turn (which first alternating round by round):
//!    RunPodSandbox, StopPodSandbox,
//!    RemovePodSandbox, and the CNI ADD and DEL containerd reports
//!    (cri.rs's `CriNode`). Then, to see where an ADD goes, P pods on
//!    each node by the same conflists' plugins run straight, alternating,
//!    each exec timed. Target: the cluster's CNI ADD at most 1.05 of the
//!    single-node one's in the same run; docs/results/bench-cri.md's
//!    figures are shown beside them.
//! 3. Join: J times, a new node (a fresh namespace, node name, run and
//!    IPAM dirs, nothing leased): from its `berth node` starting, a pod is
//!    ADDed on it at once (as kubelet would run a pod there), and a pod on
//!    n2 pings the new pod's address every 10 ms (ICMP echo from a raw
//!    socket in that pod, 10 ms for each answer) until one answers: the
//!    time from the agent's start to that answer, with the ADD's return
//!    and the agent's /readyz turning 200 beside it. After each, the pod
//!    is DELeted, the agent stopped and its lease deleted from etcd, so
//!    the next join is a new node again. Target: < 1 s each.
//! 4. Footprint: a node `hf` on a network of its own in the same etcd
//!    (another prefix) holding N simulated nodes' leases (10.244.k.0/24,
//!    underlays that need not exist, put straight into etcd as overlay.rs
//!    does), `berth node` ready with N peers, and M pods on it (the
//!    conflist's ADDs straight, one hostPort each). Then `berth node`'s
//!    resident set (VmRSS of /proc/PID/status, every second, and VmHWM at
//!    the end) and CPU (utime + stime of /proc/PID/stat, all threads, and
//!    its waited-for children's, as a share of one core) idle for I
//!    seconds, and during a flush storm:
//!    `nft flush ruleset` in the node's namespace 10 times a second for T
//!    seconds, counted until berth's tables are back after the last.
//!    Targets: < 30 MiB resident, < 1% of a core idle.
//!
//! Cleanup, on failure as well: pods of the first three measurements are
//! DELeted through the plugins (the footprint's go with their node's
//! namespace), containerd removes its pods, the agents, iperf3 servers
//! and etcd are stopped by PID, then the namespaces (with every link in
//! them) and the temp dirs are removed.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::args::Args;
use crate::cri::{self, CriNode, CriSetup, Sample};
use crate::etcd::{etcd_version, start_member, Member, Pki};
use crate::exec::exec_plugin_env;
use crate::overlay::{
    alternate, etcd_del, etcd_put, hand_container, hand_subnet, iperf_server, lease_key,
    lease_record, mtu_of, run, wait_etcd, Flow, HAND_BRIDGE, HAND_VNI, HAND_VXLAN,
};
use crate::reconcile::{flush_storm, percent_of_a_core, Daemon};
use crate::report::{
    self, ChainTimes, Cluster, ClusterCri, ClusterThroughput, CriTimes, Footprint, Join,
};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, TempDir};

/// Across nodes over the hand-built VXLAN path's throughput, at least.
pub(crate) const THROUGHPUT_TARGET: f64 = 0.90;
/// The cluster conflist's CNI ADD over the single-node one's, at most.
pub(crate) const ADD_TARGET: f64 = 1.05;
/// A join, under.
pub(crate) const JOIN_TARGET_MS: f64 = 1000.0;
/// `berth node`'s resident set, under.
pub(crate) const RSS_TARGET_MIB: f64 = 30.0;
/// `berth node`'s CPU when idle, under (percent of one core).
pub(crate) const IDLE_CPU_TARGET: f64 = 1.0;
/// berth's figures in docs/results/bench-cri.md (measured 2026-12-03).
pub(crate) const CRI_DOC_ADD_MS: f64 = 14.79;
pub(crate) const CRI_DOC_RUN_MS: f64 = 66.05;
/// Simulated nodes hold 10.244.1.0/24 .. 10.244.N.0/24 (the footprint
/// node takes the first free one, 10.244.0.0/24).
pub(crate) const MAX_NODES: usize = 250;
/// Pods on the footprint node: its /24 holds the gateway and 253 more.
pub(crate) const MAX_POD_COUNT: usize = 250;
/// Pods per conflist under the CRI: their host ports are 1000 apart.
pub(crate) const MAX_CRI_PODS: usize = 999;
/// New nodes are 192.168.77.11 .. 192.168.77.(10 + J), below etcd's .250.
pub(crate) const MAX_JOINS: usize = 200;

/// The ConfigMap the conflist comes from.
const MANIFEST: &str = include_str!("../../deploy/kubernetes/berth.yaml");
const CONFLIST_KEY: &str = "10-berth.conflist";
const UNDERLAY: &str = "ovu";
const ETCD_ADDR: &str = "192.168.77.250";
/// The footprint node's network lives under this prefix (the cluster's
/// under the ConfigMap's own).
const FOOTPRINT_PREFIX: &str = "/bench-footprint";
/// Where each node's agent serves its probes, inside the node.
const PROBES: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9624));
/// How often readiness, pings and the rules are polled.
const POLL: Duration = Duration::from_millis(10);
/// A node's agent ready, at most.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// A join that has not answered by then failed.
const JOIN_LIMIT: Duration = Duration::from_secs(10);
/// Before each join: the other nodes have forgotten the last joiner.
const JOIN_PAUSE: Duration = Duration::from_millis(500);
/// The footprint node settles this long before the idle window.
const SETTLE: Duration = Duration::from_secs(2);
const STORM_PER_SEC: u32 = 10;
/// After the storm, berth's tables must be back within this.
const STORM_REPAIR_LIMIT: Duration = Duration::from_secs(10);

pub(crate) fn cluster(args: &Args) -> Result<Cluster> {
    let berth_dir = args.berth_dir.as_path();
    for b in [
        "berth",
        "berth-overlay",
        "berth-portmap",
        "berth-bandwidth",
        "berth-bridge",
        "berth-ipam",
        "loopback",
    ] {
        if !berth_dir.join(b).is_file() {
            bail!(
                "{} not found (build with `cargo build --release --workspace --bins` or pass --cni-path-berth)",
                berth_dir.join(b).display()
            );
        }
    }
    let load_start = load_average();
    eprintln!("cluster: PKI, switch, etcd (TLS), nodes n1 and n2 with `berth node`");
    let cl = Infra::new(berth_dir)?;
    let mut n1 = Node::new(&cl, "n1", 1, None)?;
    let mut n2 = Node::new(&cl, "n2", 2, None)?;
    n1.start_agent(None)?;
    n2.start_agent(None)?;
    for n in [&mut n1, &mut n2] {
        n.wait_ready(READY_LIMIT, "its peer", |b| b.contains(" 1 peers"))?;
    }

    eprintln!(
        "cluster: throughput, pod to pod across nodes, on one node, the hand-built VXLAN path and the underlay, {} x {} s each",
        args.cluster_iperf_reps, args.cluster_iperf_secs
    );
    let (throughput, throughput_error) = report::split(throughput(
        &cl,
        &n1,
        &n2,
        args.cluster_iperf_secs,
        args.cluster_iperf_reps,
    ));
    eprintln!(
        "cluster: CRI, {} pods each on the cluster conflist with `berth node` and on the single-node one",
        args.cluster_pods
    );
    let (cri, cri_error) = report::split(cri(&cl, args.cluster_pods));
    eprintln!("cluster: {} joins", args.cluster_joins);
    let (join, join_error) = report::split(join(&cl, &n2, args.cluster_joins));
    eprintln!(
        "cluster: `berth node`'s footprint with {} nodes' leases and {} pods",
        args.cluster_nodes, args.cluster_node_pods
    );
    let (footprint, footprint_error) = report::split(footprint(
        &cl,
        args.cluster_nodes,
        args.cluster_node_pods,
        Duration::from_secs(args.cluster_idle_secs),
        Duration::from_secs(args.cluster_storm_secs),
    ));
    Ok(Cluster {
        load_average: [load_start, load_average()],
        etcd: etcd_version(),
        conflist: cl.base.clone(),
        throughput,
        throughput_error,
        cri,
        cri_error,
        join,
        join_error,
        footprint,
        footprint_error,
    })
}

/// The machine's 1-minute load average (/proc/loadavg): how busy it was
/// besides the bench.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// the conflist

/// The ConfigMap's conflist: the block scalar under [`CONFLIST_KEY`] of
/// the manifest.
fn configmap_conflist(manifest: &str) -> Result<Value> {
    let mut lines = manifest.lines();
    let head = lines
        .by_ref()
        .find(|l| l.trim() == format!("{CONFLIST_KEY}: |"))
        .with_context(|| format!("no `{CONFLIST_KEY}: |` in deploy/kubernetes/berth.yaml"))?;
    let indent = head.len() - head.trim_start().len();
    let mut text = String::new();
    for l in lines {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
            break;
        }
        text.push_str(l);
        text.push('\n');
    }
    serde_json::from_str(&text)
        .with_context(|| format!("berth.yaml's {CONFLIST_KEY} is not JSON: {text:?}"))
}

/// The ConfigMap's conflist for node `node`: the store's endpoint, TLS
/// files and prefix, the node's name and IPAM dataDir; nothing else
/// changed.
fn node_conflist(base: &Value, node: &str, data: &Path, pki: &Pki, prefix: &str) -> Result<Value> {
    let mut c = base.clone();
    let overlay = c["plugins"]
        .as_array_mut()
        .and_then(|p| p.iter_mut().find(|p| p["type"] == "berth-overlay"))
        .context("berth.yaml's conflist has no berth-overlay")?;
    overlay["node"] = json!(node);
    overlay["dataDir"] = json!(data);
    let etcd = overlay["store"]["etcd"]
        .as_object_mut()
        .context("berth.yaml's berth-overlay has no store.etcd")?;
    etcd.insert(
        "endpoints".into(),
        json!([format!("https://{ETCD_ADDR}:2379")]),
    );
    etcd.insert("caFile".into(), json!(pki.ca));
    etcd.insert("certFile".into(), json!(pki.client_cert));
    etcd.insert("keyFile".into(), json!(pki.client_key));
    etcd.insert("prefix".into(), json!(prefix));
    Ok(c)
}

/// The conflist's network name, prefix and node subnet length.
fn network_of(conflist: &Value) -> Result<(String, String, u8)> {
    let overlay = conflist["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "berth-overlay"))
        .context("no berth-overlay in the conflist")?;
    Ok((
        conflist["name"].as_str().context("no name")?.to_string(),
        overlay["store"]["etcd"]["prefix"]
            .as_str()
            .context("no store.etcd.prefix")?
            .to_string(),
        overlay["subnetLen"]
            .as_u64()
            .and_then(|l| u8::try_from(l).ok())
            .context("no subnetLen")?,
    ))
}

/// The plugin binaries a conflist runs, and `loopback` (containerd runs it
/// for every pod's `lo`).
fn binaries(conflist: &Value) -> Vec<String> {
    let mut b: Vec<String> = conflist["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(String::from))
        .collect();
    b.push("loopback".into());
    b
}

// ---------------------------------------------------------------------------
// the infrastructure: switch, etcd

fn ns_name(tag: &str) -> String {
    format!("bcl-{}-{}-{tag}", std::process::id(), sys::next_id())
}

/// What every node shares. Fields drop in order: etcd first, its
/// namespace, the switch, the PKI's dir.
struct Infra {
    _etcd: Member,
    etcd_ns: Netns,
    switch: Netns,
    pki: Pki,
    berth_dir: PathBuf,
    base: Value,
    _dir: TempDir,
}

const SWITCH: &str = "sw0";

impl Infra {
    fn new(berth_dir: &Path) -> Result<Infra> {
        let base = configmap_conflist(MANIFEST)?;
        let dir = TempDir::new("cluster")?;
        let pki = Pki::new(&dir.path().join("pki"), ETCD_ADDR).context("the PKI")?;
        let switch = Netns::new(ns_name("sw"))?;
        let s = switch.name();
        run("ip", &["-n", s, "link", "set", "lo", "up"])?;
        run("ip", &["-n", s, "link", "add", SWITCH, "type", "bridge"])?;
        run("ip", &["-n", s, "link", "set", SWITCH, "up"])?;
        let etcd_ns = Netns::new(ns_name("etcd"))?;
        plug(&switch, &etcd_ns, "petcd", ETCD_ADDR, false)?;
        let urls = [
            format!("https://{ETCD_ADDR}:2379"),
            "http://127.0.0.1:2379".to_string(),
        ];
        let mut etcd = start_member(&etcd_ns, dir.path(), &pki, "cluster", &urls, 2380)?;
        wait_etcd(&etcd_ns, &mut etcd.proc)?;
        Ok(Infra {
            _etcd: etcd,
            etcd_ns,
            switch,
            pki,
            berth_dir: berth_dir.to_path_buf(),
            base,
            _dir: dir,
        })
    }
}

/// Plugs `host` into the switch: `ovu` there (address `addr`/24, and a
/// default route through it if `default`), `port` on the switch's bridge.
fn plug(switch: &Netns, host: &Netns, port: &str, addr: &str, default: bool) -> Result<()> {
    let (s, h) = (switch.name(), host.name());
    run("ip", &["-n", h, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "-n", h, "link", "add", UNDERLAY, "mtu", "1500", "type", "veth", "peer", "name", port,
            "mtu", "1500", "netns", s,
        ],
    )?;
    run(
        "ip",
        &["-n", s, "link", "set", port, "master", SWITCH, "up"],
    )?;
    run(
        "ip",
        &[
            "-n",
            h,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            UNDERLAY,
        ],
    )?;
    run("ip", &["-n", h, "link", "set", UNDERLAY, "up"])?;
    if default {
        run("ip", &["-n", h, "route", "add", "default", "dev", UNDERLAY])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// nodes

/// A node: its namespace on the switch, run dir, IPAM dataDir, conflist
/// (in its own conf dir) and, once started, its agent. The agent is
/// stopped first when it drops.
struct Node<'a> {
    agent: Option<Daemon>,
    cl: &'a Infra,
    /// Its name in the conflist (its hostname on a real cluster).
    name: String,
    ns: Netns,
    run: TempDir,
    data: TempDir,
    conflist: Value,
    net_d: PathBuf,
}

impl<'a> Node<'a> {
    /// Node `tag` at 192.168.77.`host`, on the cluster's network (or, with
    /// `prefix`, on one under that prefix instead).
    fn new(cl: &'a Infra, tag: &str, host: u8, prefix: Option<&str>) -> Result<Node<'a>> {
        let ns = Netns::new(ns_name(tag))?;
        plug(
            &cl.switch,
            &ns,
            &format!("p{tag}"),
            &format!("192.168.77.{host}"),
            true,
        )?;
        let run = TempDir::new(&format!("cl-run-{tag}"))?;
        let data = TempDir::new(&format!("cl-data-{tag}"))?;
        let name = format!("bench-{tag}");
        let (_, base_prefix, _) = network_of(&cl.base)?;
        let conflist = node_conflist(
            &cl.base,
            &name,
            data.path(),
            &cl.pki,
            prefix.unwrap_or(&base_prefix),
        )?;
        let net_d = run.path().join("net.d");
        std::fs::create_dir_all(&net_d)?;
        std::fs::write(
            net_d.join(CONFLIST_KEY),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(Node {
            agent: None,
            cl,
            name,
            ns,
            run,
            data,
            conflist,
            net_d,
        })
    }

    /// Starts `berth node` on the conf dir `conf` (default: the node's
    /// own), as the DaemonSet runs it, with the node's run and data dirs.
    fn start_agent(&mut self, conf: Option<&Path>) -> Result<()> {
        let conf = conf.unwrap_or(&self.net_d).display().to_string();
        let data = self.data.path().display().to_string();
        let engine = self.run.path().join("engine").display().to_string();
        let address = PROBES.to_string();
        let args = [
            "node",
            "--conf",
            &conf,
            "--address",
            &address,
            "--data-dir",
            &data,
            "--engine-state",
            &engine,
            "--volumes-root",
            "/nonexistent",
        ];
        self.agent = Some(Daemon::start(
            &self.cl.berth_dir,
            &self.ns,
            self.run.path(),
            &args,
        )?);
        Ok(())
    }

    fn agent(&mut self) -> Result<&mut Daemon> {
        self.agent
            .as_mut()
            .with_context(|| format!("{}: no agent", self.name))
    }

    /// GET `path` from the node's agent: (status code, body).
    fn probe(&self, path: &str) -> Option<(u16, String)> {
        self.ns.run(|| Ok(http_get(PROBES, path))).ok().flatten()
    }

    /// Waits until /readyz answers 200 with a body `want` holds of; how
    /// long that took. Fails after `limit` or if the agent exits.
    fn wait_ready(
        &mut self,
        limit: Duration,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let last = self.probe("/readyz");
            if matches!(&last, Some((200, body)) if want(body)) {
                return Ok(start.elapsed());
            }
            let name = self.name.clone();
            let agent = self.agent()?;
            agent.still_running()?;
            if start.elapsed() > limit {
                bail!(
                    "{name}: not ready with {what} within {limit:?}: /readyz said {last:?}; {}",
                    agent.tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The conflist's ADDs for container `cid` in `container`, inside the
    /// node's namespace with its run dir; the last result, and each
    /// plugin's exec in ms.
    fn add(&self, cid: &str, container: &Netns, host_port: u16) -> Result<(Value, Vec<f64>)> {
        let mut prev: Option<Value> = None;
        let mut took = Vec::new();
        for (conf, plugin) in self.chain(host_port)? {
            let conf = match &prev {
                Some(p) => crate::exec::with_prev_result(&conf, p),
                None => conf,
            };
            let t = Instant::now();
            let stdout = self.exec(&plugin, "ADD", cid, container, &conf)?;
            took.push(ms(t.elapsed()));
            prev = Some(
                serde_json::from_str(&stdout)
                    .with_context(|| format!("{plugin} ADD {cid} printed {stdout:?}"))?,
            );
        }
        Ok((prev.context("the conflist has no plugins")?, took))
    }

    /// The conflist's DELs for `cid` (last plugin first, each with the ADD's
    /// result).
    fn del(&self, cid: &str, container: &Netns, result: &Value, host_port: u16) -> Result<()> {
        for (conf, plugin) in self.chain(host_port)?.into_iter().rev() {
            let conf = crate::exec::with_prev_result(&conf, result);
            self.exec(&plugin, "DEL", cid, container, &conf)?;
        }
        Ok(())
    }

    /// Each plugin's config as a runtime hands it over (name, cniVersion,
    /// the hostPort in runtimeConfig for the plugins that ask for
    /// portMappings), with its type.
    fn chain(&self, host_port: u16) -> Result<Vec<(Value, String)>> {
        let list = &self.conflist;
        list["plugins"]
            .as_array()
            .context("no plugins in the conflist")?
            .iter()
            .map(|p| {
                let mut conf = p.clone();
                conf["name"] = list["name"].clone();
                conf["cniVersion"] = list["cniVersion"].clone();
                if p["capabilities"]["portMappings"] == true {
                    conf["runtimeConfig"] = json!({"portMappings": [
                        {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}
                    ]});
                }
                let plugin = p["type"].as_str().context("a plugin without a type")?;
                Ok((conf, plugin.to_string()))
            })
            .collect()
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        cid: &str,
        container: &Netns,
        conf: &Value,
    ) -> Result<String> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        let out = self.ns.run(|| {
            exec_plugin_env(
                &self.cl.berth_dir,
                plugin,
                command,
                cid,
                &container.path,
                conf,
                &env,
            )
        })?;
        if !out.ok {
            bail!(
                "{plugin} {command} {cid} on {}: {}",
                self.name,
                out.describe()
            );
        }
        Ok(out.stdout)
    }
}

/// A pod attached by the node's conflist, DELeted through the plugins
/// when it drops (before its namespace goes).
struct Pod<'a> {
    node: &'a Node<'a>,
    cid: String,
    result: Value,
    host_port: u16,
    ip: Ipv4Addr,
    ns: Netns,
}

impl<'a> Pod<'a> {
    fn add(node: &'a Node<'a>, tag: &str, host_port: u16) -> Result<Pod<'a>> {
        Ok(Pod::add_timed(node, tag, host_port)?.0)
    }

    /// [`Pod::add`], with each plugin's ADD in ms.
    fn add_timed(node: &'a Node<'a>, tag: &str, host_port: u16) -> Result<(Pod<'a>, Vec<f64>)> {
        let ns = Netns::new(ns_name(tag))?;
        let cid = format!("bench-cl-{tag}");
        let (result, took) = match node.add(&cid, &ns, host_port) {
            Ok(r) => r,
            Err(e) => {
                // As a runtime does after a failed ADD.
                let _ = node.del(&cid, &ns, &Value::Null, host_port);
                return Err(e);
            }
        };
        let ip = match first_ipv4(&result) {
            Some(ip) => ip,
            None => {
                let _ = node.del(&cid, &ns, &result, host_port);
                bail!("{cid}: no IPv4 address in {result}");
            }
        };
        let pod = Pod {
            node,
            cid,
            result,
            host_port,
            ip,
            ns,
        };
        Ok((pod, took))
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .node
            .del(&self.cid, &self.ns, &self.result, self.host_port)
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The first IPv4 address of a CNI result.
fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}

/// One GET on a fresh connection: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

// ---------------------------------------------------------------------------
// 1. throughput

fn throughput(
    cl: &Infra,
    n1: &Node<'_>,
    n2: &Node<'_>,
    secs: u64,
    reps: usize,
) -> Result<ClusterThroughput> {
    // berth's pods, and the hand-built path's containers (overlay.rs's).
    let p1 = Pod::add(n1, "p1", 30001)?;
    let p1b = Pod::add(n1, "p1b", 30002)?;
    let p2 = Pod::add(n2, "p2", 30003)?;
    let d1 = Netns::new(ns_name("d1"))?;
    let d2 = Netns::new(ns_name("d2"))?;
    hand_container(&n1.ns, &d1, 1, 2)?;
    hand_container(&n2.ns, &d2, 2, 1)?;
    let (hand_from, hand_to) = (hand_subnet(1, 2), hand_subnet(2, 2));
    let (ip1, ip1b, ip2) = (p1.ip.to_string(), p1b.ip.to_string(), p2.ip.to_string());
    let n2_addr = "192.168.77.2";
    // Dropped (stopped) before the pods are DELeted.
    let _servers = [
        iperf_server(&p2.ns, &ip2)?,
        iperf_server(&p1b.ns, &ip1b)?,
        iperf_server(&d2, &hand_to)?,
        iperf_server(&n2.ns, n2_addr)?,
    ];
    let vxlan = vxlan_of(&cl.base)?;
    let mut paths = [
        Flow::new(
            "cross_node",
            format!("pod {ip1} on n1 -> pod {ip2} on n2 over berth-overlay ({vxlan})"),
            &p1.ns,
            &ip2,
            vec![&n1.ns, &n2.ns, &p1.ns, &p2.ns],
        ),
        Flow::new(
            "same_node",
            format!("pod {ip1} -> pod {ip1b}, both on n1 (the node's bridge)"),
            &p1.ns,
            &ip1b,
            vec![&n1.ns, &p1.ns, &p1b.ns],
        ),
        Flow::new(
            "hand_vxlan",
            format!(
                "container {hand_from} on n1 -> container {hand_to} on n2 over a hand-built copy (eth0, bridge {HAND_BRIDGE}, {HAND_VXLAN} VNI {HAND_VNI})"
            ),
            &d1,
            &hand_to,
            vec![&n1.ns, &n2.ns, &d1, &d2],
        ),
        Flow::new(
            "underlay",
            format!("node n1 192.168.77.1 -> node n2 {n2_addr} on the underlay (veth, switch, veth)"),
            &n1.ns,
            n2_addr,
            vec![&n1.ns, &n2.ns],
        ),
    ];
    alternate("cluster", &mut paths, secs, reps)?;
    let [cross, same, hand, under] = &paths;
    let over = |other: &Flow| ratio(median(&cross.gbps()), median(&other.gbps()));
    let r = over(hand);
    Ok(ClusterThroughput {
        iperf_secs: secs,
        runs_per_path: reps,
        underlay_mtu: mtu_of(&n1.ns, UNDERLAY)?,
        pod_mtu: mtu_of(&p1.ns, "eth0")?,
        vxlan_mtu: mtu_of(&n1.ns, &vxlan)?,
        target_ratio: THROUGHPUT_TARGET,
        cross_over_hand: r,
        ratio_pass: r.is_some_and(|r| r >= THROUGHPUT_TARGET),
        cross_over_same_node: over(same),
        cross_over_underlay: over(under),
        no_fragmentation: paths.iter().all(|p| p.frag == [0, 0]),
        cross_node: cross.report(),
        same_node: same.report(),
        hand_vxlan: hand.report(),
        underlay: under.report(),
    })
}

/// The overlay's VXLAN device, `berth.<vni>`.
fn vxlan_of(conflist: &Value) -> Result<String> {
    let vni = conflist["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "berth-overlay"))
        .and_then(|o| o["vni"].as_u64())
        .context("no berth-overlay vni in the conflist")?;
    Ok(format!("berth.{vni}"))
}

// ---------------------------------------------------------------------------
// 2. CRI

/// hostPorts of the measured pods: the cluster's from here, the single
/// node's from here + 1000.
const CRI_PORT_BASE: u16 = 32000;

/// The order of two things in round `round`: 0 first in even rounds, 1
/// in odd ones (so neither is always the one that follows the other).
fn first_of_two(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Each plugin's median over `samples` (one row of per-plugin ms per
/// container), and the median of their sums.
fn chain_times(conflist: &Value, samples: &[Vec<f64>]) -> ChainTimes {
    let plugins: Vec<String> = conflist["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(String::from))
        .collect();
    let median_ms = (0..plugins.len())
        .map(|i| {
            median(
                &samples
                    .iter()
                    .filter_map(|s| s.get(i).copied())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let sums: Vec<f64> = samples.iter().map(|s| s.iter().sum()).collect();
    ChainTimes {
        plugins,
        median_ms,
        total_median_ms: median(&sums),
    }
}

fn cri(cl: &Infra, pods: usize) -> Result<ClusterCri> {
    // Declared before the containerds: their namespaces outlive them. The
    // single-node one is a node too (its plugins and containerd run in its
    // namespace with its run dir), on the other conflist, with no agent.
    let mut hc = Node::new(cl, "hc", 3, None)?;
    let mut hs = Node::new(cl, "hs", 5, None)?;
    let (single_bins, single_list) =
        cri::berth_single_node("bench-single", "bsingle0", hs.data.path());
    hs.conflist = single_list.clone();

    let launcher = |ns: &Netns, run: &Path| -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net={}", ns.path),
            "env".into(),
            format!("BERTH_RUN_DIR={}", run.display()),
        ]
    };
    let cluster_bins = binaries(&hc.conflist);
    let cluster_bins: Vec<&str> = cluster_bins.iter().map(String::as_str).collect();
    let cluster = CriNode::start(
        "cluster",
        CriSetup {
            dir: &cl.berth_dir,
            binaries: &cluster_bins,
            conflist: hc.conflist.clone(),
            launcher: launcher(&hc.ns, hc.run.path()),
            netns: Some(PathBuf::from(&hc.ns.path)),
            keep: Vec::new(),
        },
    )?;
    let single = CriNode::start(
        "single",
        CriSetup {
            dir: &cl.berth_dir,
            binaries: &single_bins,
            conflist: single_list,
            launcher: launcher(&hs.ns, hs.run.path()),
            netns: Some(PathBuf::from(&hs.ns.path)),
            keep: Vec::new(),
        },
    )?;
    // The agent on the conflist containerd uses, as the DaemonSet's
    // reads /etc/cni/net.d.
    hc.start_agent(Some(cluster.conf_dir()))?;
    hc.wait_ready(READY_LIMIT, "n1 and n2 as peers", |b| {
        b.contains(" 2 peers")
    })?;

    let mut nodes = [cluster, single];
    for node in nodes.iter_mut() {
        node.resident()?;
    }
    // Round by round, the two in turn, which one first alternating.
    let mut samples: [Vec<(String, Sample)>; 2] = Default::default();
    for round in 0..=pods {
        for k in first_of_two(round) {
            let port = CRI_PORT_BASE + 1000 * k as u16 + round as u16;
            let (id, s) = nodes[k].pod(&format!("bench-{round}"), port)?;
            if round > 0 {
                samples[k].push((id, s));
            }
        }
        if round % 10 == 0 {
            eprintln!("cluster: {round} of {pods} CRI rounds");
        }
    }
    hc.agent()?.still_running()?;
    // The same conflists' plugins run straight in the same namespaces, one
    // exec each, timed: where a pod's CNI ADD goes (no containerd, no
    // loopback). DELeted (dropped) before the containerds stop.
    eprintln!("cluster: {pods} straight ADDs of each conflist's plugins");
    let mut steps: [Vec<Vec<f64>>; 2] = Default::default();
    let mut straight = Vec::new();
    for i in 0..pods {
        for k in first_of_two(i) {
            let node = [&hc, &hs][k];
            let port = CRI_PORT_BASE + 3000 + 1000 * k as u16 + i as u16;
            let (pod, took) = Pod::add_timed(node, &format!("s{k}-{i}"), port)?;
            steps[k].push(took);
            straight.push(pod);
        }
    }
    let [cluster, single] = &nodes;
    let c = cluster.summary(&samples[0]);
    let s = single.summary(&samples[1]);
    let r = CriTimes::ratio(&c.times, &s.times);
    Ok(ClusterCri {
        pods,
        containerd: cri::containerd_version(),
        add_pass: r.cni_add_ms.is_some_and(|x| x <= ADD_TARGET),
        target_add_ratio: ADD_TARGET,
        cluster: c,
        single: s,
        ratio: r,
        doc_cni_add_ms: CRI_DOC_ADD_MS,
        doc_run_ms: CRI_DOC_RUN_MS,
        straight_adds: pods,
        cluster_chain: chain_times(&hc.conflist, &steps[0]),
        single_chain: chain_times(&hs.conflist, &steps[1]),
    })
}

// ---------------------------------------------------------------------------
// 3. join

/// ICMP echo from a raw socket opened in a pod's namespace (the socket
/// stays there; the bench's thread need not).
struct Pinger {
    fd: OwnedFd,
    id: u16,
    seq: u16,
    /// Answers to requests before this one are old: not counted.
    floor: u16,
}

impl Pinger {
    fn new(ns: &Netns) -> Result<Pinger> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = ns.run(|| {
            socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Icmp,
            )
            .context("raw ICMP socket")
        })?;
        Ok(Pinger {
            fd,
            id: (std::process::id() & 0xffff) as u16 ^ 0xbe27,
            seq: 0,
            floor: 1,
        })
    }

    /// From now on only answers to requests sent from now on count.
    fn fresh(&mut self) {
        self.floor = self.seq.wrapping_add(1);
    }

    /// One echo request to `to`; whether an answer to any of ours came
    /// from it within `wait`.
    fn echo(&mut self, to: Ipv4Addr, wait: Duration) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recvfrom, sendto, MsgFlags, SockaddrIn};
        self.seq = self.seq.wrapping_add(1);
        let dest = SockaddrIn::from(SocketAddrV4::new(to, 0));
        sendto(
            self.fd.as_raw_fd(),
            &echo_request(self.id, self.seq),
            &dest,
            MsgFlags::empty(),
        )
        .with_context(|| format!("send an ICMP echo to {to}"))?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => bail!("poll the ICMP socket: {e}"),
            }
            let mut buf = [0u8; 2048];
            let (len, from) = recvfrom::<SockaddrIn>(self.fd.as_raw_fd(), &mut buf)
                .context("receive from the ICMP socket")?;
            let ours = is_echo_reply(&buf[..len], self.id).is_some_and(|seq| {
                seq.wrapping_sub(self.floor) <= self.seq.wrapping_sub(self.floor)
            });
            if ours && from.is_some_and(|f| f.ip() == to) {
                return Ok(true);
            }
        }
    }
}

/// An ICMP echo request (type 8) with `id`, `seq` and 8 bytes of payload.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"berth-cl");
    let sum = internet_checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// RFC 1071's checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of an IPv4 packet (as a raw socket hands it over)
/// that is an echo reply (type 0) with `id`.
fn is_echo_reply(packet: &[u8], id: u16) -> Option<u16> {
    let icmp = packet.get(usize::from(packet.first()? & 0x0f) * 4..)?;
    (icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes())
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn join(cl: &Infra, n2: &Node<'_>, joins: usize) -> Result<Join> {
    let (network, prefix, subnet_len) = network_of(&n2.conflist)?;
    let pinger_pod = Pod::add(n2, "ping", 30010)?;
    let mut pinger = Pinger::new(&pinger_pod.ns)?;
    let (mut answer_ms, mut add_ms, mut ready_ms) = (Vec::new(), Vec::new(), Vec::new());
    for k in 1..=joins {
        std::thread::sleep(JOIN_PAUSE);
        let mut node = Node::new(cl, &format!("j{k}"), 10 + k as u8, None)?;
        pinger.fresh();
        let start = Instant::now();
        node.start_agent(None)?;
        // As kubelet runs a pod that was waiting for the node.
        let pod = Pod::add(&node, &format!("j{k}pod"), 31000 + k as u16)?;
        let added = start.elapsed();
        let lease = lease_key(&prefix, &network, Ipv4Net::new(pod.ip, subnet_len)?.trunc());
        let mut answered = None;
        let mut ready = None;
        while answered.is_none() || ready.is_none() {
            if answered.is_none() && pinger.echo(pod.ip, POLL)? {
                answered = Some(start.elapsed());
            }
            if ready.is_none() && matches!(node.probe("/readyz"), Some((200, _))) {
                ready = Some(start.elapsed());
            }
            if answered.is_some() && ready.is_none() {
                std::thread::sleep(POLL);
            }
            if start.elapsed() > JOIN_LIMIT {
                bail!(
                    "join {k}: {} from n2's pod, /readyz {:?} within {JOIN_LIMIT:?}; {}",
                    if answered.is_some() {
                        "answered"
                    } else {
                        "no answer"
                    },
                    node.probe("/readyz"),
                    node.agent.as_ref().map(Daemon::tail).unwrap_or_default()
                );
            }
        }
        let (answered, ready) = (answered.unwrap_or_default(), ready.unwrap_or_default());
        eprintln!(
            "cluster: join {k}: ADD returned after {:.0} ms, ping answered after {:.0} ms, ready after {:.0} ms",
            ms(added),
            ms(answered),
            ms(ready)
        );
        answer_ms.push(ms(answered));
        add_ms.push(ms(added));
        ready_ms.push(ms(ready));
        // The pod DELeted, the agent stopped (it leaves the lease, for its
        // successor), the lease given back: the next one is a new node.
        drop(pod);
        node.agent = None;
        etcd_del(&cl.etcd_ns, &lease)?;
    }
    let max = answer_ms.iter().copied().reduce(f64::max);
    Ok(Join {
        joins,
        answer_median_ms: median(&answer_ms),
        answer_max_ms: max,
        answer_ms,
        add_median_ms: median(&add_ms),
        add_ms,
        ready_median_ms: median(&ready_ms),
        ready_ms,
        target_ms: JOIN_TARGET_MS,
        pass: max.is_some_and(|m| m < JOIN_TARGET_MS),
    })
}

// ---------------------------------------------------------------------------
// 4. footprint

/// Simulated node `k` (1-based) of the footprint network holds
/// 10.244.k.0/24 (of the ConfigMap's 10.244.0.0/16) from underlay
/// 192.168.78.k, which need not exist.
fn simulated(k: usize) -> Result<(Ipv4Net, Ipv4Addr)> {
    let k = u8::try_from(k)
        .ok()
        .filter(|k| *k > 0)
        .with_context(|| format!("simulated node {k}: only 1..=255 fit 10.244.k.0/24"))?;
    Ok((
        Ipv4Net::new(Ipv4Addr::new(10, 244, k, 0), 24)?,
        Ipv4Addr::new(192, 168, 78, k),
    ))
}

/// berth's nftables tables in `ns` (`family name` each).
fn berth_tables(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.run(|| {
        Command::new("nft")
            .args(["list", "tables"])
            .stdin(Stdio::null())
            .output()
            .context("run nft")
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .filter(|t| t.contains("berth"))
        .map(String::from)
        .collect())
}

/// `berth_reconciler_repairs_total` of the node's /metrics.
fn repairs(node: &Node<'_>) -> Option<u64> {
    let (_, text) = node.probe("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("berth_reconciler_repairs_total "))?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn footprint(
    cl: &Infra,
    nodes: usize,
    pods: usize,
    idle: Duration,
    storm: Duration,
) -> Result<Footprint> {
    let mut hf = Node::new(cl, "hf", 4, Some(FOOTPRINT_PREFIX))?;
    let (network, prefix, _) = network_of(&hf.conflist)?;
    let t = Instant::now();
    for k in 1..=nodes {
        let (subnet, underlay) = simulated(k)?;
        etcd_put(
            &cl.etcd_ns,
            &lease_key(&prefix, &network, subnet),
            &lease_record(&format!("sim-{k}"), underlay, subnet),
        )?;
    }
    hf.start_agent(None)?;
    let peers = format!(" {nodes} peers");
    hf.wait_ready(READY_LIMIT, &format!("{nodes} peers"), |b| {
        b.contains(&peers)
    })?;
    // Pods: dropped (their namespaces deleted) before the node.
    let mut pod_ns = Vec::with_capacity(pods);
    let mut chain = Vec::with_capacity(pods);
    for i in 0..pods {
        let ns = Netns::new(ns_name(&format!("f{i}")))?;
        let (_, took) = hf.add(&format!("bench-fp-{i}"), &ns, 20000 + i as u16)?;
        chain.push(took);
        pod_ns.push(ns);
        if (i + 1) % 50 == 0 || i + 1 == pods {
            eprint!("\r  cluster: {} of {pods} pods on hf", i + 1);
        }
    }
    eprintln!();
    hf.wait_ready(READY_LIMIT, "its pods' rules", |b| b.contains(&peers))?;
    let setup_secs = t.elapsed().as_secs_f64();
    let tables = berth_tables(&hf.ns)?;
    if tables.is_empty() {
        bail!("no berth table in hf's ruleset after {pods} pods");
    }
    std::thread::sleep(SETTLE);

    eprintln!("cluster: `berth node` idle for {idle:?}");
    hf.agent()?.still_running()?;
    let agent = hf.agent.as_ref().context("hf: no agent")?;
    let mut rss = vec![agent.status_kib("VmRSS")?];
    let (ticks, start) = (agent.cpu_ticks()?, Instant::now());
    while start.elapsed() < idle {
        std::thread::sleep(Duration::from_secs(1).min(idle.saturating_sub(start.elapsed())));
        rss.push(agent.status_kib("VmRSS")?);
    }
    let idle_took = start.elapsed();
    let idle_cpu = percent_of_a_core(agent.cpu_ticks()? - ticks, idle_took);
    let idle_rss = rss.iter().copied().max().unwrap_or_default();

    let repairs_before = repairs(&hf);
    eprintln!("cluster: a flush storm, {STORM_PER_SEC} a second for {storm:?}");
    let mut storm_rss = Vec::new();
    let ticks = agent.cpu_ticks()?;
    let (flushes, start) = flush_storm(&hf.ns, STORM_PER_SEC, storm, || {
        storm_rss.push(agent.status_kib("VmRSS")?);
        Ok(())
    })?;
    let last = Instant::now();
    let storm_took = last - start;
    // Back: every table berth had before the storm.
    let back = loop {
        let now = berth_tables(&hf.ns)?;
        if tables.iter().all(|t| now.contains(t)) {
            break Some(last.elapsed());
        }
        if last.elapsed() > STORM_REPAIR_LIMIT {
            break None;
        }
        std::thread::sleep(POLL);
    };
    let storm_cpu = percent_of_a_core(agent.cpu_ticks()? - ticks, start.elapsed());
    storm_rss.push(agent.status_kib("VmRSS")?);
    let hwm = agent.status_kib("VmHWM")?;
    let Some(back) = back else {
        bail!(
            "berth's tables ({}) not back within {STORM_REPAIR_LIMIT:?} of the storm's last flush; {}",
            tables.join(", "),
            agent.tail()
        );
    };
    let storm_rss = storm_rss.into_iter().max().unwrap_or_default();
    hf.agent()?.still_running()?;
    std::thread::sleep(Duration::from_secs(1));
    let repairs = repairs(&hf)
        .zip(repairs_before)
        .map(|(a, b)| a.saturating_sub(b));
    let max_rss = mib(idle_rss.max(storm_rss));
    // VmHWM and VmRSS are read at different moments from counters the
    // kernel keeps per thread: the peak is the larger of them.
    let peak = mib(hwm.max(idle_rss).max(storm_rss));
    drop(pod_ns);
    Ok(Footprint {
        nodes,
        pods,
        setup_secs,
        chain: chain_times(&hf.conflist, &chain),
        tables,
        idle_secs: idle_took.as_secs_f64(),
        idle_cpu_percent: idle_cpu,
        idle_rss_mib: mib(idle_rss),
        storm_flushes: flushes as usize,
        storm_secs: storm_took.as_secs_f64(),
        storm_cpu_percent: storm_cpu,
        storm_rss_mib: mib(storm_rss),
        rules_back_ms: ms(back),
        storm_repairs: repairs,
        peak_rss_mib: peak,
        rss_target_mib: RSS_TARGET_MIB,
        idle_cpu_target_percent: IDLE_CPU_TARGET,
        rss_pass: max_rss < RSS_TARGET_MIB,
        idle_cpu_pass: idle_cpu < IDLE_CPU_TARGET,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_is_the_configmaps() {
        let base = configmap_conflist(MANIFEST).unwrap();
        let types: Vec<&str> = base["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["berth-overlay", "berth-portmap", "berth-bandwidth"]);
        let pki = Pki::for_tests();
        let c = node_conflist(&base, "bench-n1", Path::new("/d"), &pki, "/p").unwrap();
        let o = &c["plugins"][0];
        assert_eq!(o["node"], "bench-n1");
        assert_eq!(o["dataDir"], "/d");
        assert_eq!(
            o["store"]["etcd"]["endpoints"],
            json!(["https://192.168.77.250:2379"])
        );
        assert_eq!(o["store"]["etcd"]["certFile"], json!(pki.client_cert));
        // Nothing else changed.
        let strip = |mut v: Value| {
            let o = &mut v["plugins"][0];
            for k in ["node", "dataDir"] {
                o.as_object_mut().unwrap().remove(k);
            }
            for k in ["endpoints", "caFile", "certFile", "keyFile", "prefix"] {
                o["store"]["etcd"].as_object_mut().unwrap().remove(k);
            }
            v
        };
        assert_eq!(strip(c.clone()), strip(base.clone()));
        let (name, prefix, len) = network_of(&c).unwrap();
        assert_eq!((name.as_str(), prefix.as_str(), len), ("berth", "/p", 24));
        assert_eq!(
            binaries(&c),
            [
                "berth-overlay",
                "berth-portmap",
                "berth-bandwidth",
                "loopback"
            ]
        );
        assert_eq!(vxlan_of(&c).unwrap(), "berth.1");
    }

    #[test]
    fn a_block_scalar_ends_at_the_next_key() {
        let yaml = "data:\n  10-berth.conflist: |\n    {\"name\": \"x\",\n\n     \"plugins\": []}\n  # more\n  other: |\n    {}\n";
        assert_eq!(
            configmap_conflist(yaml).unwrap(),
            json!({"name": "x", "plugins": []})
        );
        assert!(configmap_conflist("data:\n").is_err());
    }

    #[test]
    fn icmp() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p[0], 8);
        // A packet with its checksum sums to 0xffff (the checksum is 0).
        assert_eq!(internet_checksum(&p), 0);
        let mut reply = vec![0x45u8];
        reply.extend_from_slice(&[0; 19]);
        reply.extend_from_slice(&p);
        reply[20] = 0;
        assert_eq!(is_echo_reply(&reply, 0x1234), Some(7));
        assert_eq!(is_echo_reply(&reply, 0x1235), None);
        reply[20] = 8;
        assert_eq!(is_echo_reply(&reply, 0x1234), None, "a request");
        assert_eq!(is_echo_reply(&[], 1), None);
        assert_eq!(is_echo_reply(&[0x4f, 0], 1), None, "cut short");
        assert_eq!(internet_checksum(&[0xff]), 0x00ff);
    }

    #[test]
    fn results_and_simulated_nodes() {
        let r = json!({"ips": [{"address": "fd44::2/64"}, {"address": "10.244.3.2/24"}]});
        assert_eq!(first_ipv4(&r), Some(Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(first_ipv4(&json!({})), None);
        assert_eq!((first_of_two(4), first_of_two(7)), ([0, 1], [1, 0]));
        assert_eq!(
            simulated(250).unwrap(),
            (
                "10.244.250.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 78, 250)
            )
        );
        assert_eq!(
            lease_key("/p", "berth", simulated(5).unwrap().0),
            "/p/berth/subnets/10.244.5.0-24"
        );
        assert!(simulated(0).is_err() && simulated(256).is_err());
    }
}
