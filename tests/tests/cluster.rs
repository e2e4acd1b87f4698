//! berth on a Kubernetes-like cluster (root): nodes that are each a
//! network, mount and UTS namespace of their own on one underlay, with
//! their own containerd driven over the CRI as kubelet drives it, a
//! 3-member TLS etcd laid out as kubeadm lays it out, and the DaemonSet of
//! `deploy/kubernetes/berth.yaml` run on every node from the parsed
//! manifest (image built by build-image.sh and imported into each node's
//! containerd). See `berth_tests::cluster`.
//!
//! One cluster per scenario group (one `#[test]`): etcd, the containerds
//! and the image are started once, and the cases run in order on it. A
//! case that fails is reported and the next one runs; the test fails at
//! the end naming every failed case, and the nodes' logs (node pods,
//! containerd's CNI lines) are printed then. The two groups take turns
//! (one cluster at a time): their timings (a join within a second, rules
//! back within a second of a flush, no ping lost) are measured on a
//! machine that is not running the other cluster too.
//!
//! - `a_cluster_of_nodes_runs_the_daemonset`: three nodes, dual stack,
//!   a lease TTL of [`LEASE_TTL`] seconds: the DaemonSet on every node,
//!   pods reaching each other; `berth status` through `kubectl exec`
//!   (CRI ExecSync); a hostPort from another node and the bandwidth
//!   annotations; kube-proxy's Services; `nft flush ruleset`; the node
//!   pod restarted and upgraded under traffic; a fourth node joining, with
//!   wrong etcd certificates and an unreachable etcd, then uninstalled;
//!   a node that dies.
//! - `pod_cidrs_from_containerds_template_and_bad_conflists`: the
//!   podCIDR source (containerd's `conf_template`), a podCIDR another node
//!   holds, and a ConfigMap naming a missing plugin.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_tests::bandwidth::{redirect_targets, tbf_rate};
use berth_tests::cluster::{ApiObjects, Cluster, ClusterNode, ClusterOptions, ETCD_SECRET};
use berth_tests::cri::{ping_in, CriClient, PodSpec, PodStatus};
use berth_tests::etcd_tls::unb64;
use berth_tests::image::{output_text, release_dir, NodeImage};
use berth_tests::kube_proxy::kube_proxy_table;
use berth_tests::manifest::{
    DaemonSet, HostPathSource, IntOrString, Manifest, Volume, VolumeMount,
};
use berth_tests::metrics::{key, promtool_finds_nothing, samples};
use berth_tests::overlay_hosts::within;
use berth_tests::{
    bridge_host_veth, poll_until, status_network, tcp_probe, workspace_root, NetnsPath, PeerEcho,
    TempDir, TestNetns,
};
use ipnet::IpNet;
use serde_json::{json, Value};

/// The dual-stack cluster network's IPv6 CIDR (the manifest's comment's).
const NETWORK6: &str = "fd44::/48";

/// The main cluster's etcd lease TTL (the manifest says 60 s): short, so
/// that a node that dies is forgotten within the test.
const LEASE_TTL: u64 = 6;

/// How long a node pod may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The host port of the published pod (its container port is 80).
const HOST_PORT: u16 = 8080;

/// Where the podCIDR template lands on a node (README.md: containerd's
/// `conf_template`).
const TEMPLATE_ON_NODE: &str = "/etc/cni/net.d/berth/10-berth.conflist.template";

/// One cluster at a time (see the module doc).
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// cases

/// A cluster's cases, run in order: a failing case is reported, the next
/// runs, and [`finish`](Self::finish) fails the test naming them all.
#[derive(Default)]
struct Cases {
    failed: Vec<String>,
    ran: Vec<(String, Duration, bool)>,
}

impl Cases {
    fn run(&mut self, name: &str, case: impl FnOnce()) {
        eprintln!("=== case: {name}");
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(case));
        let took = t.elapsed();
        match outcome {
            Ok(()) => {
                eprintln!("=== case {name}: ok ({:.1} s)", took.as_secs_f64());
                self.ran.push((name.to_string(), took, true));
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(a panic without a message)".into());
                eprintln!("=== case {name}: FAILED ({:.1} s)", took.as_secs_f64());
                self.failed.push(format!("{name}: {msg}"));
                self.ran.push((name.to_string(), took, false));
            }
        }
    }

    /// Panics naming the failed cases (the cluster, dropped while
    /// unwinding, prints the nodes' logs).
    fn finish(self) {
        for (name, took, ok) in &self.ran {
            eprintln!(
                "  {:<6} {:>5.1} s  {name}",
                if *ok { "ok" } else { "FAILED" },
                took.as_secs_f64()
            );
        }
        assert!(
            self.failed.is_empty(),
            "{} case(s) failed:\n\n{}",
            self.failed.len(),
            self.failed.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------
// helpers

/// A node's lease as `berth status -o json` shows it on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    subnet: IpNet,
    subnet6: Option<IpNet>,
}

fn net(s: &str) -> IpNet {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a CIDR: {e}"))
}

/// Whether two networks share an address.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn lease_of(cluster: &Cluster, node: &ClusterNode) -> Lease {
    let network = cluster.network();
    let st = node.status();
    let ov = &status_network(&st, &network)["overlay"];
    assert!(
        ov.is_object(),
        "node {}: berth status shows no overlay agent for {network}: {st:#}",
        node.name
    );
    assert_eq!(ov["node"], node.name.as_str(), "{ov:#}");
    assert_eq!(ov["store"], "etcd", "{ov:#}");
    assert_eq!(ov["agentRunning"], true, "{ov:#}");
    let subnet = ov["subnet"].as_str().expect("overlay.subnet").to_string();
    // The agent's record, read from the node's own /run/berth.
    let rec_path = node.host_path(&format!("/run/berth/overlay/{network}.node.json"));
    let rec: Value = serde_json::from_slice(
        &std::fs::read(&rec_path).unwrap_or_else(|e| panic!("{}: {e}", rec_path.display())),
    )
    .expect("node record is JSON");
    assert_eq!(rec["subnet"], subnet.as_str(), "{rec:#}");
    assert_eq!(rec["node"], node.name.as_str(), "{rec:#}");
    Lease {
        subnet: net(&subnet),
        subnet6: ov["subnet6"].as_str().map(net),
    }
}

/// A lease in etcd under `/berth/<network>/subnets/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EtcdLease {
    node: String,
    underlay: String,
    subnet: String,
    /// etcd's lease ID.
    lease: i64,
}

fn etcd_leases(cluster: &Cluster) -> Vec<EtcdLease> {
    let prefix = format!("/berth/{}/subnets/", cluster.network());
    let out = cluster
        .etcd
        .etcdctl_ok(&["get", "--prefix", &prefix, "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("etcdctl -w json");
    let mut leases: Vec<EtcdLease> = v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let val = unb64(kv["value"].as_str().unwrap_or_default()).expect("base64");
            let l: Value = serde_json::from_slice(&val).expect("lease JSON");
            EtcdLease {
                node: l["node"].as_str().unwrap_or_default().to_string(),
                underlay: l["underlay"].as_str().unwrap_or_default().to_string(),
                subnet: l["subnet"].as_str().unwrap_or_default().to_string(),
                lease: kv["lease"].as_i64().unwrap_or(0),
            }
        })
        .collect();
    leases.sort();
    leases
}

/// (node, underlay, subnet) of each lease in etcd.
fn etcd_holders(cluster: &Cluster) -> Vec<(String, String, String)> {
    etcd_leases(cluster)
        .into_iter()
        .map(|l| (l.node, l.underlay, l.subnet))
        .collect()
}

/// What etcd says an etcd lease has left, in seconds (`etcdctl lease
/// timetolive`).
fn etcd_ttl_left(cluster: &Cluster, lease: i64) -> i64 {
    let out =
        cluster
            .etcd
            .etcdctl_ok(&["lease", "timetolive", &format!("{lease:x}"), "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("etcdctl -w json");
    v["ttl"].as_i64().unwrap_or_else(|| panic!("no ttl in {v}"))
}

/// A pod: its node's name, its status and `/proc/<pause>/ns/net`.
#[derive(Debug, Clone)]
struct Pod {
    node: String,
    st: PodStatus,
    netns: PathBuf,
}

impl Pod {
    fn v4(&self) -> IpAddr {
        self.st
            .ipv4()
            .unwrap_or_else(|| panic!("pod {}: no IPv4: {:?}", self.st.id, self.st))
    }

    fn v6(&self) -> IpAddr {
        self.st
            .ipv6()
            .unwrap_or_else(|| panic!("pod {}: no IPv6: {:?}", self.st.id, self.st))
    }

    fn ns(&self) -> NetnsPath {
        NetnsPath(self.netns.clone())
    }

    fn short(&self) -> &str {
        &self.st.id[..12]
    }
}

/// RunPodSandbox of a pod named `name` on `node`; panics with the error.
fn run_pod(node: &ClusterNode, spec: &PodSpec) -> Pod {
    let st = node.run_pod(spec);
    let netns = st
        .proc_netns()
        .unwrap_or_else(|| panic!("pod {}: no pid in its status", st.id));
    Pod {
        node: node.name.clone(),
        st,
        netns,
    }
}

/// StopPodSandbox and RemovePodSandbox of `pod` on its node.
fn remove_pod(cluster: &Cluster, pod: &Pod) {
    cluster
        .node(&pod.node)
        .cri()
        .stop_and_remove_pod(&pod.st.id)
        .unwrap_or_else(|e| panic!("stop and remove pod {}: {}", pod.short(), e.message()));
}

/// Every pod pings every other over IPv4 and IPv6; Err: every failure.
fn all_ping(pods: &[Pod]) -> Result<(), String> {
    let mut failed = Vec::new();
    for a in pods {
        for b in pods {
            if a.st.id == b.st.id {
                continue;
            }
            for ip in [b.v4(), b.v6()] {
                if let Err(e) = ping_in(&a.netns, ip) {
                    failed.push(format!(
                        "pod {} ({}) -> {ip} ({}): {}",
                        a.short(),
                        a.node,
                        b.node,
                        e.trim()
                    ));
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// `busybox ping` from a pod's netns in the background, killed (by PID)
/// if not waited for.
struct Ping {
    child: Option<Child>,
    what: String,
}

impl Ping {
    /// `count` pings at `interval` to `addr` from `netns`, each reply
    /// awaited up to 1 s after the last one is sent.
    fn start(netns: &Path, addr: IpAddr, count: u32, interval: &str) -> Ping {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["busybox", "ping", "-i", interval, "-W", "1", "-c"])
            .arg(count.to_string())
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("busybox ping");
        Ping {
            child: Some(child),
            what: format!("ping {addr} from {}", netns.display()),
        }
    }

    /// Waits for it: (sent, received, its output).
    fn finish(mut self) -> (u32, u32, String) {
        let child = self.child.take().expect("ping runs");
        let out = child.wait_with_output().expect("wait for ping");
        let text = output_text(&out);
        let (sent, got) = ping_counts(&text)
            .unwrap_or_else(|| panic!("{}: no summary in its output: {text}", self.what));
        (sent, got, text)
    }
}

impl Drop for Ping {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (sent, received) from busybox ping's summary.
fn ping_counts(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let n: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    (n.len() == 2).then(|| (n[0], n[1]))
}

/// The first reply's `seq` and `time` (ms) in busybox ping's output.
fn first_reply(text: &str) -> Option<(u32, f64)> {
    let line = text.lines().find(|l| l.contains("bytes from"))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    Some((
        field("seq=")?.parse().ok()?,
        field("time=")?.trim_end_matches("ms").parse().ok()?,
    ))
}

/// A loop of RunPodSandbox, PodSandboxStatus (an IPv4 address),
/// StopPodSandbox and RemovePodSandbox on one node until stopped, each
/// round recorded.
struct SandboxChurn {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Round>>>,
}

/// One round of [`SandboxChurn`]: when it ran (ns since the epoch) and
/// what failed.
#[derive(Debug, Clone)]
struct Round {
    start: i64,
    end: i64,
    error: Option<String>,
}

fn epoch_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl SandboxChurn {
    /// `loops` loops on the node whose CRI socket is `socket`.
    fn start(socket: &Path, tag: &str, loops: usize) -> SandboxChurn {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..loops)
            .map(|l| {
                let (socket, stop, tag) = (socket.to_path_buf(), stop.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let mut c = CriClient::connect(&socket).expect("connect to CRI");
                    let mut rounds = Vec::new();
                    let mut k = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let start = epoch_ns(SystemTime::now());
                        let spec = PodSpec::new(format!("{tag}-{l}-{k}"));
                        let r = (|| -> Result<(), String> {
                            let st = c
                                .run_pod_and_status(&spec)
                                .map_err(|e| format!("RunPodSandbox: {}", e.message()))?;
                            let ip = st.ipv4();
                            c.stop_and_remove_pod(&st.id).map_err(|e| {
                                format!("Stop/RemovePodSandbox {}: {}", st.id, e.message())
                            })?;
                            ip.map(|_| ())
                                .ok_or_else(|| format!("pod {} got no IPv4: {st:?}", st.id))
                        })();
                        rounds.push(Round {
                            start,
                            end: epoch_ns(SystemTime::now()),
                            error: r.err(),
                        });
                        k += 1;
                    }
                    rounds
                })
            })
            .collect();
        SandboxChurn { stop, threads }
    }

    fn finish(self) -> Vec<Round> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("sandbox loop panicked"))
            .collect()
    }
}

/// The conflist (the first `.conflist` key of a ConfigMap) in `objects`,
/// edited by `edit`.
fn with_conflist(objects: &ApiObjects, edit: impl FnOnce(&mut Value)) -> ApiObjects {
    let mut objects = objects.clone();
    let (cm, k) = objects
        .config_maps
        .iter()
        .find_map(|(cm, d)| {
            d.keys()
                .find(|k| k.ends_with(".conflist"))
                .map(|k| (cm.clone(), k.clone()))
        })
        .expect("a ConfigMap with a .conflist");
    let data = objects.config_maps.get_mut(&cm).expect("ConfigMap");
    let mut v: Value = serde_json::from_slice(&data[&k]).expect("the conflist is JSON");
    edit(&mut v);
    data.insert(
        k,
        (serde_json::to_string_pretty(&v).expect("JSON") + "\n").into_bytes(),
    );
    objects
}

/// Waits up to `limit` for the node pod's readiness probe to fail with a
/// body `want` accepts; the body. Err: the last answer.
fn wait_not_ready(
    node: &ClusterNode,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let mut last = String::new();
    let ok = within(limit, || match node.readiness() {
        Ok(a) if !a.success() && want(&a.body) => {
            last = a.body;
            true
        }
        Ok(a) => {
            last = format!("HTTP {}: {}", a.status, a.body);
            false
        }
        Err(e) => {
            last = e;
            false
        }
    });
    if ok {
        Ok(last)
    } else {
        Err(format!(
            "node {}: readiness not as expected within {limit:?}; last: {last}\n{}",
            node.name,
            node.node_pod_logs()
        ))
    }
}

/// Waits (up to 5 s: the log is written by the runtime after the
/// container) for a line of the node pod's container `container`'s log
/// saying it is not ready and holding `needle`; that line. Err: the lines
/// saying it is not ready.
fn logged_not_ready(node: &ClusterNode, container: &str, needle: &str) -> Result<String, String> {
    let lines = || -> Vec<String> {
        node.container_log(container)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("not ready"))
            .map(str::to_string)
            .collect()
    };
    let mut found = None;
    within(Duration::from_secs(5), || {
        found = lines().into_iter().find(|l| l.contains(needle));
        found.is_some()
    });
    found.ok_or_else(|| {
        format!(
            "the node pod's log does not say why (naming {needle:?}): {:?}",
            lines()
        )
    })
}

/// Whether `node` routes `subnet` or has an FDB entry towards `underlay`
/// on the VXLAN device `vxlan` (none without the device).
fn knows_peer(node: &ClusterNode, vxlan: &str, subnet: &IpNet, underlay: IpAddr) -> bool {
    let routed = !node
        .ns
        .exec_ok(&["ip", "route", "show", &subnet.to_string()])
        .trim()
        .is_empty();
    let fdb = node.ns.exec(&["bridge", "fdb", "show", "dev", vxlan]);
    routed
        || String::from_utf8_lossy(&fdb.stdout)
            .lines()
            .any(|l| l.contains(&format!("dst {underlay} ")))
}

/// A file tree under `dir`: relative path -> (mode, content) (None for a
/// directory, the target for a symlink).
fn tree(dir: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let content = if m.is_dir() {
                stack.push(p.clone());
                None
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned().into_bytes())
            } else {
                std::fs::read(&p).ok()
            };
            out.insert(rel, (m.permissions().mode(), content));
        }
    }
    out
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What `berth install` printed: (outcome, path) per line.
fn install_report(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The DaemonSet with its install container switched from the ConfigMap's
/// conflist to its podCIDR template, the one edit README.md ("Where a
/// node's subnet comes from") tells the operator to make:
/// `--conf-template /etc/berth/10-berth.conflist.template` in place of
/// `--conflist /etc/berth/10-berth.conflist`.
fn daemon_set_with_template(ds: &DaemonSet) -> DaemonSet {
    let mut ds = ds.clone();
    let mut edited = 0;
    for c in &mut ds.spec.template.spec.init_containers {
        let mut args = c.args.clone();
        for i in 0..args.len().saturating_sub(1) {
            if args[i] == "--conflist" && args[i + 1] == "/etc/berth/10-berth.conflist" {
                args[i] = "--conf-template".into();
                args[i + 1] = "/etc/berth/10-berth.conflist.template".into();
                edited += 1;
            }
        }
        c.args = args;
    }
    assert_eq!(
        edited, 1,
        "the manifest's init containers have no `--conflist /etc/berth/10-berth.conflist` \
         to replace: {:?}",
        ds.spec.template.spec.init_containers
    );
    ds
}

/// The DaemonSet reaching etcd with kubeadm's own files mounted read-only
/// from the node instead of the Secret, the edits README.md ("A cluster
/// from a fresh kubeadm install") tells the operator to make for it: no
/// `--etcd-tls-dir` and no `berth-etcd` volume; the node container mounts
/// the node's `/etc/kubernetes/pki` read-only at the same path (the
/// conflist names the files there: `ClusterOptions::kubeadm_files`).
fn daemon_set_with_kubeadm_files(ds: &DaemonSet) -> DaemonSet {
    let mut ds = ds.clone();
    let pod = &mut ds.spec.template.spec;
    let mut dropped = 0;
    for c in &mut pod.init_containers {
        if let Some(i) = c.args.iter().position(|a| a == "--etcd-tls-dir") {
            c.args.drain(i..i + 2);
            dropped += 1;
        }
        c.volume_mounts.retain(|m| m.name != "berth-etcd");
    }
    assert_eq!(
        dropped, 1,
        "no --etcd-tls-dir to drop: {:?}",
        pod.init_containers
    );
    let before = pod.volumes.len();
    pod.volumes.retain(|v| v.name != "berth-etcd");
    assert_eq!(pod.volumes.len(), before - 1, "no berth-etcd volume");
    pod.volumes.push(Volume {
        name: "kubeadm-pki".into(),
        host_path: Some(HostPathSource {
            path: "/etc/kubernetes/pki".into(),
            kind: Some("Directory".into()),
        }),
        config_map: None,
        secret: None,
    });
    pod.containers[0].volume_mounts.push(VolumeMount {
        name: "kubeadm-pki".into(),
        mount_path: "/etc/kubernetes/pki".into(),
        read_only: true,
        sub_path: None,
        mount_propagation: None,
    });
    ds
}

/// The node pod's first container (what `kubectl exec ds/berth` runs in).
fn node_container(cluster: &Cluster) -> String {
    cluster.manifest.pod().containers[0].name.clone()
}

/// The DaemonSet's install (init) container.
fn install_container(cluster: &Cluster) -> String {
    cluster.manifest.pod().init_containers[0].name.clone()
}

/// The overlay's VNI in the ConfigMap's conflist: its devices are
/// `berth.<vni>` and `bov<vni>`.
fn vni(cluster: &Cluster) -> u64 {
    cluster.conflist().1["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["type"] == "berth-overlay")
        .and_then(|p| p["vni"].as_u64())
        .expect("the conflist's berth-overlay vni")
}

/// The running node pod's container `name`'s status.
fn container_status(node: &ClusterNode, name: &str) -> k8s_cri::v1::ContainerStatus {
    let id = node.container_id(name).unwrap_or_else(|e| panic!("{e}"));
    node.cri()
        .container_status(&id)
        .unwrap_or_else(|e| panic!("ContainerStatus {name}: {}", e.message()))
}

// ---------------------------------------------------------------------------
// the main cluster

/// What the main cluster's cases share.
struct Main {
    cluster: Cluster,
    ds: DaemonSet,
    objects: ApiObjects,
    network: String,
    vni: u64,
    /// Application pods, two per node to begin with.
    pods: Vec<Pod>,
    /// The hostPort and egress-shaped pods on node-1 (the hostPort and
    /// flush cases), removed by the teardown case.
    published: Option<(Pod, Pod)>,
}

impl Main {
    fn node(&self, name: &str) -> &ClusterNode {
        self.cluster.node(name)
    }

    fn pods_on(&self, node: &str) -> Vec<Pod> {
        self.pods
            .iter()
            .filter(|p| p.node == node)
            .cloned()
            .collect()
    }

    /// Stops the node pod on `node` and starts it again with `objects`
    /// (the DaemonSet's); Err: the start's error.
    fn replace_node_pod(&mut self, node: &str, objects: &ApiObjects) -> Result<(), String> {
        let ds = self.ds.clone();
        let n = self
            .cluster
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .expect("node");
        if n.node_pod().is_some() {
            n.stop_node_pod()?;
        }
        n.start_node_pod(&ds, objects)
    }
}

#[test]
fn a_cluster_of_nodes_runs_the_daemonset() {
    // Held before waiting for the other cluster: one build of the image.
    let _image = NodeImage::shared();
    let _one = ONE_CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    let t0 = Instant::now();
    let mut cluster = Cluster::start(
        ClusterOptions::new(3)
            .network6(NETWORK6)
            .lease_ttl(LEASE_TTL),
    );
    eprintln!(
        "cluster: image built in {:.1} s, nodes, etcd and images up after {:.1} s",
        cluster.image.build_time.as_secs_f64(),
        cluster.started_in.as_secs_f64()
    );
    let t = Instant::now();
    cluster.start_node_pods(READY_TIMEOUT);
    eprintln!(
        "cluster: node pods ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let ds = cluster.manifest.daemon_set().clone();
    let objects = cluster.objects.clone();
    let network = cluster.network();
    let vni = vni(&cluster);
    let mut m = Main {
        cluster,
        ds,
        objects,
        network,
        vni,
        pods: Vec::new(),
        published: None,
    };
    let mut cases = Cases::default();
    // The first case sets up what the others use: it fails the test at once.
    setup(&mut m);

    cases.run("berth status through kubectl exec (CRI ExecSync)", || {
        exec_berth_status(&m)
    });
    cases.run(
        "a hostPort reached from another node; egress shaped",
        || host_port_from_another_node(&mut m),
    );
    cases.run("Services through kube-proxy's nftables rules", || {
        services(&m)
    });
    cases.run("nft flush ruleset: masquerade and hostPort back", || {
        flush_ruleset(&m)
    });
    cases.run("published pods removed: nothing left", || {
        published_pods_leave_nothing(&mut m)
    });
    cases.run("node pod restarted under a 10/s ping", || {
        restart_under_ping(&mut m)
    });
    cases.run(
        "upgrade: the plugins and conflist swapped under churn",
        || upgrade_under_churn(&mut m),
    );
    cases.run("a fourth node joins", || join_fourth_node(&mut m));
    cases.run("wrong etcd certificates in the Secret", || {
        wrong_etcd_certificates(&mut m)
    });
    cases.run("an unreachable etcd", || unreachable_etcd(&mut m));
    cases.run("uninstall.yaml on a drained node", || {
        uninstall_node(&mut m)
    });
    cases.run("a node dies", || node_dies(&mut m));
    eprintln!("cluster test: {:.1} s in all", t0.elapsed().as_secs_f64());
    cases.finish();
}

/// The DaemonSet's pod ran on every node (init container, node container
/// ready, the conflist installed as the ConfigMap has it); two pods per
/// node, dual stack, in their node's subnets, which do not overlap and
/// are exactly the leases in etcd; the agents count the pods live; every
/// pod reaches every other over IPv4 and IPv6.
fn setup(m: &mut Main) {
    let cluster = &m.cluster;
    let (conflist_name, conflist) = cluster.conflist();
    assert_eq!(
        conflist["plugins"][0]["store"]["etcd"]["leaseTTL"], LEASE_TTL,
        "{conflist:#}"
    );
    for n in &cluster.nodes {
        let pod = n.node_pod().expect("node pod");
        assert!(
            pod.containers.iter().any(|c| c.init),
            "no init container ran"
        );
        let installed = n.host_path(&format!("/etc/cni/net.d/{conflist_name}"));
        let on_node: Value =
            serde_json::from_slice(&std::fs::read(&installed).unwrap()).expect("installed JSON");
        assert_eq!(on_node, conflist, "node {}: the installed conflist", n.name);
        let ready = n.readiness().expect("readiness probe");
        assert!(ready.success(), "node {}: {ready:?}", n.name);
        let live = n.liveness().expect("liveness probe");
        assert!(live.success(), "node {}: {live:?}", n.name);
    }

    for (i, n) in cluster.nodes.iter().enumerate() {
        n.wait_network_ready(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        for k in 0..2 {
            m.pods
                .push(run_pod(n, &PodSpec::new(format!("app-{}-{k}", i + 1))));
        }
    }

    let leases: Vec<Lease> = cluster.nodes.iter().map(|n| lease_of(cluster, n)).collect();
    let net4 = net(conflist["plugins"][0]["network"].as_str().expect("network"));
    let net6 = net(NETWORK6);
    for (i, l) in leases.iter().enumerate() {
        assert!(
            net4.contains(&l.subnet) && l.subnet.prefix_len() > net4.prefix_len(),
            "{l:?}"
        );
        let s6 = l.subnet6.expect("subnet6 (dual stack)");
        assert!(
            net6.contains(&s6) && s6.prefix_len() > net6.prefix_len(),
            "{l:?}"
        );
        for (j, o) in leases.iter().enumerate().skip(i + 1) {
            assert!(
                !overlaps(&l.subnet, &o.subnet),
                "nodes {} and {} overlap: {l:?} {o:?}",
                i + 1,
                j + 1
            );
            assert!(
                !o.subnet6.is_some_and(|o6| overlaps(&s6, &o6)),
                "nodes {} and {} overlap: {l:?} {o:?}",
                i + 1,
                j + 1
            );
        }
    }
    let mut want: Vec<(String, String, String)> = cluster
        .nodes
        .iter()
        .zip(&leases)
        .map(|(n, l)| (n.name.clone(), n.address.to_string(), l.subnet.to_string()))
        .collect();
    want.sort();
    assert_eq!(etcd_holders(cluster), want, "the leases in etcd");

    for p in &m.pods {
        let n = cluster.node(&p.node);
        let l = &leases[cluster.nodes.iter().position(|x| x.name == n.name).unwrap()];
        assert!(
            l.subnet.contains(&p.v4()),
            "pod {} on {}: {} outside {}",
            p.short(),
            p.node,
            p.v4(),
            l.subnet
        );
        let s6 = l.subnet6.expect("subnet6");
        assert!(
            s6.contains(&p.v6()),
            "pod {} on {}: {} outside {s6}",
            p.short(),
            p.node,
            p.v6(),
        );
    }

    // The node agent sees the pods as live: `berth status` on the node,
    // and the agent's own metrics from inside its container (the pods'
    // netns reach it through the HostToContainer mount of /var/run/netns,
    // mounted after it started).
    let network = &m.network;
    let metrics_port = cluster
        .manifest
        .pod()
        .containers
        .iter()
        .find(|c| c.ports.iter().any(|p| p.name.as_deref() == Some("metrics")))
        .expect("a container with a port named metrics")
        .port(&IntOrString::Str("metrics".into()))
        .expect("metrics port");
    for n in &cluster.nodes {
        let st = n.status();
        let states: Vec<&str> = status_network(&st, network)["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["state"].as_str())
            .collect();
        assert_eq!(states, ["live", "live"], "node {}: {st:#}", n.name);
        let live = key(
            "berth_attachments",
            &[("network", network.as_str()), ("state", "live")],
        );
        let mut last = String::new();
        let seen = within(Duration::from_secs(10), || {
            match n.http_get(metrics_port, "/metrics") {
                Ok(a) if a.status == 200 => {
                    let v = samples(&a.body).get(&live).copied();
                    last = format!("{v:?}");
                    v == Some(2.0)
                }
                Ok(a) => {
                    last = format!("HTTP {}: {}", a.status, a.body);
                    false
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(
            seen,
            "node {}: the agent's metrics do not count 2 live attachments: {last}",
            n.name
        );
    }
    let scrape = cluster.nodes[0]
        .http_get(metrics_port, "/metrics")
        .expect("scrape");
    promtool_finds_nothing(&scrape.body);

    let t = Instant::now();
    all_ping(&m.pods).unwrap_or_else(|e| panic!("pings failed:\n{e}"));
    eprintln!(
        "cluster: {} pods pinged each other over IPv4 and IPv6 in {:.1} s",
        m.pods.len(),
        t.elapsed().as_secs_f64()
    );
}

/// `kubectl -n kube-system exec ds/berth -- berth status -o json` (CRI
/// ExecSync of exactly that command in the node pod's first container,
/// as README.md tells the operator): exit 0, and it shows the node's
/// network with its lease and its two pods live.
fn exec_berth_status(m: &Main) {
    let n = &m.cluster.nodes[0];
    let c = node_container(&m.cluster);
    let out = n
        .exec_in_pod(
            &c,
            &["berth", "status", "-o", "json"],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.exit_code, 0,
        "`kubectl exec ds/berth -- berth status -o json` on {}: exit {}\nstdout: {stdout}\nstderr: {stderr}",
        n.name, out.exit_code
    );
    let st: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("berth status -o json: {e}: {stdout}"));
    let netw = status_network(&st, &m.network);
    let lease = lease_of(&m.cluster, n);
    let ov = &netw["overlay"];
    assert_eq!(ov["node"], n.name.as_str(), "{ov:#}");
    assert_eq!(ov["subnet"], lease.subnet.to_string(), "{ov:#}");
    assert_eq!(ov["store"], "etcd", "{ov:#}");
    assert_eq!(ov["leaseTTL"], LEASE_TTL, "{ov:#}");
    assert_eq!(ov["agentRunning"], true, "{ov:#}");
    assert!(ov["ttlLeft"].as_u64().is_some_and(|t| t > 0), "{ov:#}");
    assert_eq!(
        ov["peers"].as_array().map(Vec::len),
        Some(m.cluster.nodes.len() - 1),
        "{ov:#}"
    );
    let mut seen: Vec<(String, String)> = netw["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["containerID"].as_str().unwrap_or_default().to_string(),
                a["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = m
        .pods_on(&n.name)
        .iter()
        .map(|p| (p.st.id.clone(), "live".to_string()))
        .collect();
    want.sort();
    assert_eq!(seen, want, "{netw:#}");
}

/// A pod publishing port 80 on hostPort [`HOST_PORT`] on node-1 answers a
/// connection from node-2's namespace to node-1's underlay address, and
/// sees node-2's address as the client's (no source NAT from another
/// machine). A pod with `kubernetes.io/egress-bandwidth: 20M` has its
/// egress redirected to one ifb with a 20 Mbit/s tbf; the other pod is
/// not shaped.
fn host_port_from_another_node(m: &mut Main) {
    let (n1, n2) = (&m.cluster.nodes[0], &m.cluster.nodes[1]);
    let web = run_pod(n1, &PodSpec::new("web-1").tcp_port(HOST_PORT, 80));
    let shaped = run_pod(
        n1,
        &PodSpec::new("shaped-1").annotation("kubernetes.io/egress-bandwidth", "20M"),
    );
    m.published = Some((web.clone(), shaped.clone()));
    let _echo = PeerEcho::start(&web.ns(), 80, 80);
    let at = SocketAddr::new(n1.address, HOST_PORT);
    let mut got = Err(String::new());
    let ok = within(Duration::from_secs(5), || {
        got = tcp_probe(&n2.ns, at, Duration::from_secs(1));
        got.is_ok()
    });
    assert!(ok, "hostPort {at} from {}: {got:?}", n2.name);
    assert_eq!(got, Ok(format!("peer={}", n2.address)), "hostPort {at}");

    let veth = bridge_host_veth(&shaped.st.id, "eth0");
    let ifbs = redirect_targets(&n1.ns, &veth);
    assert_eq!(ifbs.len(), 1, "{veth} redirects to one ifb: {ifbs:?}");
    assert_eq!(
        tbf_rate(&n1.ns, &ifbs[0]),
        Some(20_000_000),
        "{}'s tbf",
        ifbs[0]
    );
    assert_eq!(
        redirect_targets(&n1.ns, &bridge_host_veth(&web.st.id, "eth0")),
        Vec::<String>::new(),
        "the unshaped pod's egress"
    );
}

/// kube-proxy's nftables rules for ClusterIPs (written as kubernetes'
/// pkg/proxy/nftables/proxier.go writes them: `berth_tests::kube_proxy`)
/// on node-1, for a client pod there: a Service whose endpoint is another
/// pod on the same bridge (the endpoint sees the client's own address),
/// one whose endpoint is the client itself (hairpin: kube-proxy
/// masquerades it to the bridge's address), and one whose endpoint is a
/// pod on node-2.
fn services(m: &Main) {
    let n1 = &m.cluster.nodes[0];
    let on1 = m.pods_on(&n1.name);
    let on2 = m.pods_on(&m.cluster.nodes[1].name);
    let (client, same_bridge, other_node) = (&on1[0], &on1[1], &on2[0]);
    let _echo: Vec<PeerEcho> = [client, same_bridge, other_node]
        .iter()
        .map(|p| PeerEcho::start(&p.ns(), 8080, 8081))
        .collect();
    let cluster_cidr = m.cluster.conflist().1["plugins"][0]["network"]
        .as_str()
        .expect("network")
        .to_string();
    let (c, s, o) = (
        client.v4().to_string(),
        same_bridge.v4().to_string(),
        other_node.v4().to_string(),
    );
    let rules = kube_proxy_table(
        &cluster_cidr,
        &[
            ("10.96.0.10", &[s.as_str()]),
            ("10.96.0.11", &[c.as_str()]),
            ("10.96.0.12", &[o.as_str()]),
        ],
    );
    let dir = TempDir::new("kube-proxy");
    let file = dir.path().join("kube-proxy.nft");
    std::fs::write(&file, &rules).unwrap();
    n1.ns
        .exec_ok(&["nft", "-f", file.to_str().expect("UTF-8 path")]);
    let gateway = {
        let l = lease_of(&m.cluster, n1);
        match l.subnet.network() {
            IpAddr::V4(a) => IpAddr::from((u32::from(a) + 1).to_be_bytes()),
            IpAddr::V6(_) => unreachable!(),
        }
    };
    let ask = |vip: &str| {
        tcp_probe(
            &client.ns(),
            format!("{vip}:80").parse().unwrap(),
            Duration::from_secs(2),
        )
    };
    let results = [
        ("same bridge", ask("10.96.0.10"), format!("peer={c}")),
        (
            "itself (hairpin)",
            ask("10.96.0.11"),
            format!("peer={gateway}"),
        ),
        ("another node", ask("10.96.0.12"), format!("peer={c}")),
    ];
    let _ = n1.ns.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
    for (what, got, want) in &results {
        assert_eq!(got, &Ok(want.clone()), "Service to {what}\n{rules}");
    }
}

/// An "outside" host hung off node-1 on a second link (172.31.250.0/24,
/// with no route back to the pods: reachable from pods only through
/// node-1's masquerade, the manifest's `ipMasq`), and the hostPort pod
/// reached from node-2: both work, then `nft flush ruleset` in node-1,
/// then both work again within a second (the node agent's reconciler).
fn flush_ruleset(m: &Main) {
    let (n1, n2) = (&m.cluster.nodes[0], &m.cluster.nodes[1]);
    let (web, _) = m.published.clone().expect("the hostPort case's pods");
    let _echo_web = PeerEcho::start(&web.ns(), 80, 80);
    let client = m.pods_on(&n1.name)[0].clone();
    let outside = TestNetns::new("outside");
    n1.ns.sh(&format!(
        "ip link add ext0 type veth peer name eth0 netns {} && \
         ip addr add 172.31.250.1/24 dev ext0 && ip link set ext0 up",
        outside.name()
    ));
    outside.sh("ip link set lo up && ip addr add 172.31.250.2/24 dev eth0 && ip link set eth0 up");
    let _echo_out = PeerEcho::start(&outside, 18080, 18081);
    let out_addr: SocketAddr = "172.31.250.2:18080".parse().unwrap();
    let port_addr = SocketAddr::new(n1.address, HOST_PORT);
    let probe = Duration::from_millis(200);
    let masq = || tcp_probe(&client.ns(), out_addr, probe);
    let dnat = || tcp_probe(&n2.ns, port_addr, probe);
    // Only through node-1's masquerade: the outside host has no route to
    // the pods.
    let no_route = outside.exec(&["ip", "route", "get", &client.v4().to_string()]);
    assert!(
        !no_route.status.success(),
        "the outside host routes to the pods: {}",
        output_text(&no_route)
    );
    let masq_ok = Ok("peer=172.31.250.1".to_string());
    let dnat_ok = Ok(format!("peer={}", n2.address));
    assert_eq!(
        masq(),
        masq_ok,
        "a pod to the outside host, before the flush"
    );
    assert_eq!(
        dnat(),
        dnat_ok,
        "the hostPort from node-2, before the flush"
    );

    let flushed = Instant::now();
    n1.ns.exec_ok(&["nft", "flush", "ruleset"]);
    let (mut m_back, mut d_back) = (None, None);
    let mut failed = (0, 0);
    let back = poll_until(flushed, Duration::from_secs(5), || {
        if m_back.is_none() {
            if masq() == masq_ok {
                m_back = Some(flushed.elapsed());
            } else {
                failed.0 += 1;
            }
        }
        if d_back.is_none() {
            if dnat() == dnat_ok {
                d_back = Some(flushed.elapsed());
            } else {
                failed.1 += 1;
            }
        }
        m_back.is_some() && d_back.is_some()
    });
    eprintln!(
        "cluster: after nft flush ruleset on {}: masquerade back after {m_back:?} \
         ({} connections failed before), hostPort after {d_back:?} ({} failed before)",
        n1.name, failed.0, failed.1
    );
    let back = back.unwrap_or_else(|| {
        panic!(
            "not back within 5 s of the flush: masquerade {m_back:?} ({:?}), hostPort {d_back:?} ({:?})",
            masq(),
            dnat()
        )
    });
    assert!(
        back <= Duration::from_secs(1),
        "pods' traffic back {back:?} after the flush (masquerade {m_back:?}, hostPort {d_back:?})"
    );
    n1.wait_node_pod_ready(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The hostPort and shaped pods stopped and removed through CRI: their
/// host veths and the ifb are gone, the bridge holds only the other pods'
/// ports, the hostPort answers no more, `berth ports` lists nothing and
/// `berth status` only the two pods left.
fn published_pods_leave_nothing(m: &mut Main) {
    let (web, shaped) = m.published.take().expect("the hostPort case's pods");
    let n1 = m.node(&web.node);
    let bridge = format!("bov{}", m.vni);
    let ifbs = redirect_targets(&n1.ns, &bridge_host_veth(&shaped.st.id, "eth0"));
    remove_pod(&m.cluster, &web);
    remove_pod(&m.cluster, &shaped);
    let mut ports: Vec<String> = n1
        .ns
        .ip_json(&["link", "show", "master", &bridge])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    ports.sort();
    let mut want: Vec<String> = m
        .pods_on(&n1.name)
        .iter()
        .map(|p| bridge_host_veth(&p.st.id, "eth0"))
        .collect();
    want.sort();
    assert_eq!(ports, want, "ports left on {bridge}");
    let links = n1.ns.exec_ok(&["ip", "-o", "link"]);
    for gone in ifbs
        .iter()
        .cloned()
        .chain([web.st.id.clone(), shaped.st.id.clone()].map(|id| bridge_host_veth(&id, "eth0")))
    {
        assert!(
            !links.contains(&format!(": {gone}")),
            "{gone} left on {}: {links}",
            n1.name
        );
    }
    let n2 = &m.cluster.nodes[1];
    assert!(
        tcp_probe(
            &n2.ns,
            SocketAddr::new(n1.address, HOST_PORT),
            Duration::from_secs(1)
        )
        .is_err(),
        "hostPort {HOST_PORT} still answers"
    );
    let out = n1.berth(&["ports", "-o", "json"]);
    let ports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("berth ports -o json: {e}: {}", output_text(&out)));
    assert_eq!(ports["ports"], json!([]), "{ports:#}");
    let st = n1.status();
    let attached = status_network(&st, &m.network)["attachments"]
        .as_array()
        .map(Vec::len);
    assert_eq!(attached, Some(2), "{st:#}");
}

/// node-1's pod replaced as a rolling update replaces it, while pods ping
/// across nodes at 10 a second (node-2's pod to node-1's over IPv4,
/// node-1's to node-3's over IPv6): the node container exits 0 on SIGTERM
/// within the grace period, the leases stay, no ping is lost, and the new
/// pod is ready with the same subnet.
fn restart_under_ping(m: &mut Main) {
    let (n1, n2, n3) = (
        m.cluster.nodes[0].name.clone(),
        m.cluster.nodes[1].name.clone(),
        m.cluster.nodes[2].name.clone(),
    );
    let (p1, p2, p3) = (
        m.pods_on(&n1)[0].clone(),
        m.pods_on(&n2)[0].clone(),
        m.pods_on(&n3)[0].clone(),
    );
    let before = lease_of(&m.cluster, m.node(&n1));
    let leases = etcd_holders(&m.cluster);
    let pings = [
        Ping::start(&p2.netns, p1.v4(), 60, "0.1"),
        Ping::start(&p1.netns, p3.v6(), 60, "0.1"),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let grace = m.cluster.manifest.pod().grace_period();
    let node_containers: Vec<String> = m
        .cluster
        .manifest
        .pod()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let stopped = m.cluster.nodes[0]
        .stop_node_pod()
        .unwrap_or_else(|e| panic!("stop node pod: {e}"));
    for (name, code) in stopped
        .exit_codes
        .iter()
        .filter(|(n, _)| node_containers.contains(n))
    {
        assert_eq!(*code, 0, "container {name} exited {code} on SIGTERM");
    }
    assert!(
        stopped.took < Duration::from_secs(grace as u64),
        "the node pod took {:?} to stop (grace period {grace} s)",
        stopped.took
    );
    assert_eq!(
        etcd_holders(&m.cluster),
        leases,
        "the leases while {n1}'s pod is gone"
    );
    let (ds, objects) = (m.ds.clone(), m.objects.clone());
    m.cluster.nodes[0]
        .start_node_pod(&ds, &objects)
        .unwrap_or_else(|e| panic!("node pod on {n1} again: {e}"));
    m.cluster.nodes[0]
        .wait_node_pod_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lease_of(&m.cluster, m.node(&n1)), before);
    for p in pings {
        let (sent, got, text) = p.finish();
        assert_eq!(
            (sent, got),
            (60, 60),
            "pings lost across the restart:\n{text}"
        );
    }
    eprintln!(
        "cluster: {n1}'s node pod stopped in {:.2} s; 2 x 60 pings at 10/s, none lost",
        stopped.took.as_secs_f64()
    );
}

/// An upgrade on node-2: the installed plugins and conflist made to differ
/// from the image's (a byte appended to each plugin, which an ELF runs
/// the same with; the conflist re-serialized), then the node pod replaced
/// while two loops run RunPodSandbox/PodSandboxStatus/StopPodSandbox/
/// RemovePodSandbox on node-2 and node-1's pod pings node-2's at 10/s:
/// the init container reports every plugin and the conflist `upgraded`,
/// every sandbox call succeeds, no ping is lost, and the node's files are
/// the image's again.
fn upgrade_under_churn(m: &mut Main) {
    let n2 = m.cluster.nodes[1].name.clone();
    let node = m.node(&n2);
    let bin = node.host_path("/opt/cni/bin");
    let (conflist_name, _) = m.cluster.conflist();
    let conflist_file = node.host_path(&format!("/etc/cni/net.d/{conflist_name}"));
    let plugins = names(&bin);
    assert!(plugins.len() >= 7, "plugins on {n2}: {plugins:?}");
    for p in &plugins {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(bin.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        f.write_all(&[0]).unwrap();
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&conflist_file).unwrap()).unwrap();
    let tmp = conflist_file.with_file_name(".berth-test-conflist.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::rename(&tmp, &conflist_file).unwrap();
    let image_conflist = m
        .objects
        .config_maps
        .values()
        .find_map(|d| d.get(&conflist_name))
        .cloned()
        .expect("the ConfigMap's conflist");
    assert_ne!(std::fs::read(&conflist_file).unwrap(), image_conflist);

    let p1 = m.pods_on(&m.cluster.nodes[0].name)[0].clone();
    let p2 = m.pods_on(&n2)[0].clone();
    let ping = Ping::start(&p1.netns, p2.v4(), 80, "0.1");
    let churn = SandboxChurn::start(&node.containerd().socket(), "churn", 2);
    std::thread::sleep(Duration::from_secs(1));
    let replaced = Instant::now();
    let objects = m.objects.clone();
    let started = m.replace_node_pod(&n2, &objects);
    let ready = m.node(&n2).wait_node_pod_ready(READY_TIMEOUT);
    let replaced_in = replaced.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rounds = churn.finish();
    let (sent, got, text) = ping.finish();
    started.unwrap_or_else(|e| panic!("the new node pod on {n2}: {e}"));
    ready.unwrap_or_else(|e| panic!("{e}"));

    let node = m.node(&n2);
    let init = container_status(node, &install_container(&m.cluster));
    let overlapping = rounds
        .iter()
        .filter(|r| r.start < init.finished_at && r.end > init.started_at)
        .count();
    let failed: Vec<&Round> = rounds.iter().filter(|r| r.error.is_some()).collect();
    eprintln!(
        "cluster: upgrade on {n2}: node pod replaced and ready in {:.2} s, install ran {:.0} ms; \
         {} sandbox rounds ({} overlapping the install), {} failed; {got}/{sent} pings",
        replaced_in.as_secs_f64(),
        (init.finished_at - init.started_at) as f64 / 1e6,
        rounds.len(),
        overlapping,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "sandbox calls failed during the upgrade:\n{}",
        failed
            .iter()
            .map(|r| r.error.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(rounds.len() >= 4, "only {} sandbox rounds", rounds.len());
    assert_eq!(
        (sent, got),
        (80, 80),
        "pings lost across the upgrade:\n{text}"
    );

    let log = node
        .container_log(&install_container(&m.cluster))
        .expect("install log");
    let report = install_report(&log);
    let outcome = |path: &str| {
        report
            .iter()
            .find(|(_, p)| p == path)
            .map(|(o, _)| o.clone())
    };
    for p in &plugins {
        assert_eq!(
            outcome(&format!("/host/opt/cni/bin/{p}")).as_deref(),
            Some("upgraded"),
            "{p}:\n{log}"
        );
    }
    assert_eq!(
        outcome(&format!("/host/etc/cni/net.d/{conflist_name}")).as_deref(),
        Some("upgraded"),
        "the conflist:\n{log}"
    );
    let release = release_dir();
    for p in &plugins {
        assert!(
            std::fs::read(bin.join(p)).unwrap() == std::fs::read(release.join(p)).unwrap(),
            "{n2}'s {p} is not the image's after the upgrade"
        );
    }
    assert_eq!(std::fs::read(&conflist_file).unwrap(), image_conflist);
    assert_eq!(names(&bin), plugins, "{n2}'s bin dir");
}

/// A fourth node joins: its node pod runs, a pod on it is reached from a
/// pod on node-1 within a second of the node container's start (measured
/// from StartContainer to the first ping answered; printed), it holds a
/// lease of its own in etcd, and every pod reaches every other.
fn join_fourth_node(m: &mut Main) {
    let i = m.cluster.add_node();
    let (ds, objects) = (m.ds.clone(), m.objects.clone());
    let name = m.cluster.nodes[i].name.clone();
    // When node-1 routes one more node's subnet over VXLAN.
    let routed = {
        let (ns, vx) = (
            m.cluster.nodes[0].ns.name().to_string(),
            format!("berth.{}", m.vni),
        );
        let onlink = move || {
            let out = berth_tests::run("ip", &["-n", &ns, "route", "show", "dev", &vx]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("onlink"))
                .count()
        };
        let before = onlink();
        std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if onlink() > before {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    m.cluster.nodes[i]
        .start_node_pod(&ds, &objects)
        .unwrap_or_else(|e| panic!("node pod on {name}: {e}"));
    let node = &m.cluster.nodes[i];
    let container = node_container(&m.cluster);
    let started = node
        .node_pod()
        .and_then(|p| p.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.started)
        .expect("the node container's start");
    let pod = run_pod(node, &PodSpec::new("app-4-0"));
    let pod_up = started.elapsed();
    let p1 = m.pods_on(&m.cluster.nodes[0].name)[0].clone();
    // 20 ms apart: the first answered ping's seq tells when, whatever
    // ping's output buffering.
    let spawned = started.elapsed();
    let (_, _, text) = Ping::start(&p1.netns, pod.v4(), 150, "0.02").finish();
    let (seq, rtt) = first_reply(&text)
        .unwrap_or_else(|| panic!("{name}'s pod never answered node-1's pod:\n{text}"));
    let join =
        spawned + Duration::from_millis(20 * u64::from(seq)) + Duration::from_secs_f64(rtt / 1e3);
    let routed = routed
        .join()
        .expect("route watcher")
        .map(|at| at.saturating_duration_since(started));
    eprintln!(
        "cluster: {name} joined: routed by node-1 after {:.0} ms, its first pod up after {:.0} ms \
         and answering a pod on node-1 after {:.0} ms (from its node container's start)",
        routed.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        pod_up.as_secs_f64() * 1e3,
        join.as_secs_f64() * 1e3
    );
    assert!(
        join <= Duration::from_secs(1),
        "{name}'s pod answered {join:?} after its node container started"
    );
    node.wait_node_pod_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let lease = lease_of(&m.cluster, node);
    assert!(lease.subnet.contains(&pod.v4()), "{lease:?} {pod:?}");
    assert!(
        etcd_holders(&m.cluster).iter().any(|(n, u, s)| n == &name
            && u == &node.address.to_string()
            && s == &lease.subnet.to_string()),
        "{:?}",
        etcd_holders(&m.cluster)
    );
    m.pods.push(pod);
    all_ping(&m.pods).unwrap_or_else(|e| panic!("pings failed with {name}:\n{e}"));
}

/// The dial timeout a RunPodSandbox on a node whose etcd is unusable must
/// fail within (berth's 2 s), plus CRI's own work.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// RunPodSandbox on `node`: it must fail within [`FAIL_FAST`]; the error
/// and how long it took.
fn run_pod_fails(node: &ClusterNode, name: &str) -> (String, Duration) {
    let mut c = node.cri();
    let t = Instant::now();
    let r = c.run_pod(&PodSpec::new(name));
    let took = t.elapsed();
    match r {
        Ok(id) => {
            let _ = c.stop_and_remove_pod(&id);
            panic!("RunPodSandbox on {} succeeded ({took:?})", node.name)
        }
        Err(e) => (e.message().to_string(), took),
    }
}

/// The node pod on node-4 run again with a Secret whose client
/// certificate is another CA's: the init container installs it, the node
/// pod is not ready and says why in one line naming etcd (its log too),
/// a RunPodSandbox there fails within the dial timeout naming etcd, and
/// the other nodes' pods keep their network.
fn wrong_etcd_certificates(m: &mut Main) {
    let name = m.cluster.nodes.last().expect("node").name.clone();
    let foreign = m
        .cluster
        .pki
        .ca
        .foreign_client("kube-apiserver-etcd-client");
    let mut bad = m.objects.clone();
    let secret = bad.secrets.get_mut(ETCD_SECRET).expect("the Secret");
    secret.insert("tls.crt".into(), std::fs::read(&foreign.cert).unwrap());
    secret.insert("tls.key".into(), std::fs::read(&foreign.key).unwrap());
    m.replace_node_pod(&name, &bad)
        .unwrap_or_else(|e| panic!("node pod with the wrong certificate: {e}"));
    let node = m.node(&name);
    let member = m.cluster.etcd.ip(0).to_string();
    let body = wait_not_ready(node, Duration::from_secs(20), |b| b.contains(&member))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "cluster: {name} with another CA's client certificate: not ready: {}",
        body.trim()
    );
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    logged_not_ready(node, &node_container(&m.cluster), &member).unwrap_or_else(|e| panic!("{e}"));
    let (err, took) = run_pod_fails(node, "bad-cert");
    eprintln!("cluster: RunPodSandbox on {name} failed after {took:?}: {err}");
    assert!(
        took <= FAIL_FAST,
        "RunPodSandbox failed only after {took:?}: {err}"
    );
    assert!(err.contains("etcd") || err.contains(&member), "{err}");
    let others: Vec<Pod> = m.pods.iter().filter(|p| p.node != name).cloned().collect();
    all_ping(&others).unwrap_or_else(|e| panic!("pods on other nodes lost their network:\n{e}"));
}

/// The node pod on node-4 run again with the ConfigMap's etcd endpoints
/// at an address nothing answers on: not ready in one line naming it, a
/// RunPodSandbox fails within the dial timeout naming it; then the
/// ConfigMap as it was: ready again with the subnet it had, its pod
/// reached by the others.
fn unreachable_etcd(m: &mut Main) {
    let name = m.cluster.nodes.last().expect("node").name.clone();
    let nowhere = "192.168.77.199:2379";
    let bad = with_conflist(&m.objects, |c| {
        for p in c["plugins"].as_array_mut().into_iter().flatten() {
            if p["type"] == "berth-overlay" {
                p["store"]["etcd"]["endpoints"] = json!([format!("https://{nowhere}")]);
            }
        }
    });
    let lease_before = etcd_holders(&m.cluster)
        .into_iter()
        .find(|(n, _, _)| n == &name)
        .map(|(_, _, s)| s);
    m.replace_node_pod(&name, &bad)
        .unwrap_or_else(|e| panic!("node pod with an unreachable etcd: {e}"));
    let node = m.node(&name);
    let body = wait_not_ready(node, Duration::from_secs(20), |b| b.contains(nowhere))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "cluster: {name} with an unreachable etcd: not ready: {}",
        body.trim()
    );
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    logged_not_ready(node, &node_container(&m.cluster), nowhere).unwrap_or_else(|e| panic!("{e}"));
    let (err, took) = run_pod_fails(node, "no-etcd");
    eprintln!("cluster: RunPodSandbox on {name} failed after {took:?}: {err}");
    assert!(
        took <= FAIL_FAST,
        "RunPodSandbox failed only after {took:?}: {err}"
    );
    assert!(err.contains(nowhere), "{err}");
    let others: Vec<Pod> = m.pods.iter().filter(|p| p.node != name).cloned().collect();
    all_ping(&others).unwrap_or_else(|e| panic!("pods on other nodes lost their network:\n{e}"));

    // Fixed: ready again, on the subnet it had.
    let objects = m.objects.clone();
    m.replace_node_pod(&name, &objects)
        .unwrap_or_else(|e| panic!("node pod fixed: {e}"));
    let node = m.node(&name);
    node.wait_node_pod_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let lease = lease_of(&m.cluster, node);
    eprintln!("cluster: {name} fixed: {lease:?} (before: {lease_before:?})");
    for p in m.pods_on(&name) {
        assert!(lease.subnet.contains(&p.v4()), "{lease:?} {p:?}");
    }
    let within_ttl = within(Duration::from_secs(10), || all_ping(&m.pods).is_ok());
    assert!(
        within_ttl,
        "pings failed once {name} was fixed:\n{}",
        all_ping(&m.pods).unwrap_err()
    );
}

/// deploy/kubernetes/uninstall.yaml's DaemonSet pod on node-4 (parsed
/// with the manifest module and run as the harness runs DaemonSet pods),
/// once berth's node pod is stopped: first with a pod still attached (the
/// init container fails saying to drain, and nothing changed), then
/// drained: `berth uninstall` exits 0, and the node has no berth conflist,
/// etcd files or plugins (loopback stays), no `bov<vni>`/`berth.<vni>`
/// links, no `inet berth` table, no lease in etcd; the other nodes forget
/// its subnet at once.
fn uninstall_node(m: &mut Main) {
    let name = m.cluster.nodes.last().expect("node").name.clone();
    let uninstall = Manifest::read_path(&workspace_root().join("deploy/kubernetes/uninstall.yaml"));
    let uds = uninstall.daemon_set().clone();
    let init = uds.spec.template.spec.init_containers[0].name.clone();
    let lease = lease_of(&m.cluster, m.node(&name));
    let idx = m.cluster.nodes.iter().position(|n| n.name == name).unwrap();
    m.cluster.nodes[idx]
        .stop_node_pod()
        .unwrap_or_else(|e| panic!("stop berth's node pod: {e}"));
    let (vx, br) = (format!("berth.{}", m.vni), format!("bov{}", m.vni));
    let state = |node: &ClusterNode| {
        let links = node.ns.exec_ok(&["ip", "-o", "link"]);
        (
            tree(&node.host_path("/opt/cni/bin")),
            tree(&node.host_path("/etc/cni/net.d")),
            links.contains(&format!(": {vx}:")),
            links.contains(&format!(": {br}:")),
            node.ns
                .exec(&["nft", "list", "table", "inet", "berth"])
                .status
                .success(),
        )
    };
    let before = state(&m.cluster.nodes[idx]);
    assert!(
        before.2 && before.3 && before.4,
        "{name} is not on berth before"
    );
    let holders = etcd_holders(&m.cluster);

    // A pod still attached: refused, nothing changed.
    assert!(!m.pods_on(&name).is_empty(), "no pod left on {name}");
    let r = m.cluster.nodes[idx].start_node_pod(&uds, &ApiObjects::default());
    let err = r.expect_err("berth uninstall with a pod attached succeeded");
    eprintln!("cluster: uninstall.yaml on {name} with a pod attached: {err}");
    assert!(err.contains("Init:Error") && err.contains("drain"), "{err}");
    m.cluster.nodes[idx]
        .stop_node_pod()
        .unwrap_or_else(|e| panic!("remove the failed uninstall pod: {e}"));
    assert!(
        state(&m.cluster.nodes[idx]) == before,
        "a refused uninstall changed {name}"
    );
    assert_eq!(etcd_holders(&m.cluster), holders);

    // Drained.
    for p in m.pods_on(&name) {
        remove_pod(&m.cluster, &p);
    }
    m.pods.retain(|p| p.node != name);
    let t = Instant::now();
    m.cluster.nodes[idx]
        .start_node_pod(&uds, &ApiObjects::default())
        .unwrap_or_else(|e| panic!("uninstall.yaml on {name}: {e}"));
    let node = &m.cluster.nodes[idx];
    let log = node.container_log(&init).unwrap_or_default();
    eprintln!("cluster: berth uninstall on {name}:\n{log}");
    let others: Vec<&ClusterNode> = m.cluster.nodes.iter().filter(|n| n.name != name).collect();
    let forgot = poll_until(t, Duration::from_secs(LEASE_TTL), || {
        others
            .iter()
            .all(|o| !knows_peer(o, &vx, &lease.subnet, node.address))
    });
    let bin = names(&node.host_path("/opt/cni/bin"));
    assert_eq!(
        bin,
        ["loopback"],
        "{name}'s bin dir after uninstall:\n{log}"
    );
    let conf = names(&node.host_path("/etc/cni/net.d"));
    assert_eq!(
        conf,
        Vec::<String>::new(),
        "{name}'s conf dir after uninstall:\n{log}"
    );
    let after = state(node);
    assert!(!after.2 && !after.3, "{vx} or {br} left on {name}");
    assert!(!after.4, "inet berth left on {name}");
    assert!(
        !etcd_holders(&m.cluster).iter().any(|(n, _, _)| n == &name),
        "{name}'s lease is still in etcd: {:?}",
        etcd_holders(&m.cluster)
    );
    let forgot = forgot.unwrap_or_else(|| {
        panic!(
            "the other nodes still route {} {LEASE_TTL} s after uninstall",
            lease.subnet
        )
    });
    eprintln!(
        "cluster: the other nodes forgot {name}'s {} {:.0} ms after uninstall.yaml's pod started \
         (lease TTL {LEASE_TTL} s)",
        lease.subnet,
        forgot.as_secs_f64() * 1e3
    );
    assert!(
        forgot <= Duration::from_secs(LEASE_TTL) / 3,
        "the other nodes forgot {name} only after {forgot:?}"
    );
    m.cluster.nodes[idx]
        .stop_node_pod()
        .unwrap_or_else(|e| panic!("kubectl delete -f uninstall.yaml: {e}"));
    // Off berth: the node leaves the cluster.
    drop(m.cluster.nodes.remove(idx));
}

/// node-3 dies (containerd, its shims, the node pod and the pods killed
/// with SIGKILL, its underlay link down): the other nodes forget its
/// subnet (route and FDB entry gone) once its lease expires — not before
/// (what etcd said the lease had left at the kill, less a second), and
/// within the TTL plus two seconds.
fn node_dies(m: &mut Main) {
    let name = m.cluster.nodes[2].name.clone();
    let node = &m.cluster.nodes[2];
    let vx = format!("berth.{}", m.vni);
    let lease = lease_of(&m.cluster, node);
    let id = etcd_leases(&m.cluster)
        .into_iter()
        .find(|l| l.node == name)
        .map(|l| l.lease)
        .expect("its lease in etcd");
    let address = node.address;
    for o in m
        .cluster
        .nodes
        .iter()
        .filter(|n| n.name != name && n.node_pod().is_some())
    {
        assert!(
            knows_peer(o, &vx, &lease.subnet, address),
            "{} does not route {name}'s {} before",
            o.name,
            lease.subnet
        );
    }
    let killed_at = Instant::now();
    let killed = m.cluster.nodes[2].kill();
    let left = etcd_ttl_left(&m.cluster, id);
    let others: Vec<&ClusterNode> = m
        .cluster
        .nodes
        .iter()
        .filter(|n| n.name != name && n.node_pod().is_some())
        .collect();
    let forgot = poll_until(killed_at, Duration::from_secs(LEASE_TTL * 3), || {
        others
            .iter()
            .all(|o| !knows_peer(o, &vx, &lease.subnet, address))
    });
    eprintln!(
        "cluster: {name} died ({killed} processes killed) with {left} s left on its lease \
         (TTL {LEASE_TTL} s): forgotten after {forgot:?}"
    );
    let forgot = forgot.unwrap_or_else(|| panic!("{name}'s {} still routed", lease.subnet));
    assert!(
        forgot + Duration::from_secs(1) >= Duration::from_secs(left.max(0) as u64),
        "{name} forgotten after {forgot:?}, before its lease ({left} s left) expired"
    );
    assert!(
        forgot >= Duration::from_secs(LEASE_TTL) / 2,
        "{name} forgotten after {forgot:?}, before half its lease TTL ({LEASE_TTL} s)"
    );
    assert!(
        forgot <= Duration::from_secs(LEASE_TTL + 2),
        "{name} forgotten only after {forgot:?} (TTL {LEASE_TTL} s)"
    );
    assert!(
        !etcd_holders(&m.cluster).iter().any(|(n, _, _)| n == &name),
        "{:?}",
        etcd_holders(&m.cluster)
    );
    drop(m.cluster.nodes.remove(2));
    m.pods.retain(|p| p.node != name);
    all_ping(&m.pods).unwrap_or_else(|e| panic!("pings failed without {name}:\n{e}"));
}

// ---------------------------------------------------------------------------
// the podCIDR source, and bad ConfigMaps

/// A second, smaller cluster whose containerds render the ConfigMap's
/// podCIDR template (`conf_template`, as README.md says), and whose nodes
/// reach etcd with kubeadm's own files mounted from the node (README.md's
/// other variant, [`daemon_set_with_kubeadm_files`]):
/// - the DaemonSet installs the template (its args switched from
///   `--conflist` to `--conf-template` on the parsed manifest, exactly as
///   README.md tells the operator), the node pods wait for the conflist;
///   kubelet's `UpdateRuntimeConfig` with each node's podCIDRs (the IPv6
///   one not at the IPv4 one's index) makes containerd render
///   `10-containerd-net.conflist`, the node pods become ready holding
///   exactly those subnets, pods get addresses in them and reach each
///   other over IPv4 and IPv6;
/// - a third node: the manifest's DaemonSet with a ConfigMap whose
///   conflist names a missing plugin fails its init container, naming the
///   plugin, and writes nothing to the node's bin and conf dirs; then the
///   template DaemonSet with a podCIDR node-1 holds: the node pod is not
///   ready, naming the holder, and a RunPodSandbox there fails naming
///   `podCIDRs`.
#[test]
fn pod_cidrs_from_containerds_template_and_bad_conflists() {
    let _image = NodeImage::shared();
    let _one = ONE_CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    let t0 = Instant::now();
    let mut cluster = Cluster::start(
        ClusterOptions::new(2)
            .network6(NETWORK6)
            .conf_template(TEMPLATE_ON_NODE)
            .kubeadm_files(),
    );
    let plain_ds = cluster.manifest.daemon_set().clone();
    let ds = daemon_set_with_kubeadm_files(&daemon_set_with_template(&plain_ds));
    let objects = cluster.objects.clone();
    let mut cases = Cases::default();
    let cidrs = [
        ("10.244.5.0/24", "fd44:0:0:9::/64"),
        ("10.244.6.0/24", "fd44:0:0:3::/64"),
    ];
    let mut pods: Vec<Pod> = Vec::new();

    cases.run(
        "nodes take their podCIDRs from containerd's template",
        || {
            let init = install_container(&cluster);
            let container = node_container(&cluster);
            for n in &mut cluster.nodes {
                n.start_node_pod(&ds, &objects)
                    .unwrap_or_else(|e| panic!("node pod on {}: {e}", n.name));
                let log = n.container_log(&init).unwrap_or_default();
                assert!(
                    install_report(&log)
                        .iter()
                        .any(|(o, p)| o == "installed" && p == &format!("/host{TEMPLATE_ON_NODE}")),
                    "{log}"
                );
                let conf = names(&n.host_path("/etc/cni/net.d"));
                // kubeadm's files are used where they are: no copies.
                assert_eq!(conf, ["berth"], "{}'s conf dir", n.name);
                let body = wait_not_ready(n, Duration::from_secs(10), |b| {
                    b.contains("no network configuration in /etc/cni/net.d")
                })
                .unwrap_or_else(|e| panic!("{e}"));
                eprintln!("podcidr: {} before its podCIDR: {}", n.name, body.trim());
                logged_not_ready(n, &container, "no network configuration")
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            for (n, (v4, v6)) in cluster.nodes.iter().zip(cidrs) {
                n.set_pod_cidr(&format!("{v4},{v6}"))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            for (n, (v4, v6)) in cluster.nodes.iter().zip(cidrs) {
                let rendered = n.host_path("/etc/cni/net.d/10-containerd-net.conflist");
                let text = std::fs::read(&rendered)
                    .unwrap_or_else(|e| panic!("{}: {e}", rendered.display()));
                let c: Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}: {}",
                        rendered.display(),
                        String::from_utf8_lossy(&text)
                    )
                });
                assert_eq!(c["plugins"][0]["podCIDRs"], json!([v4, v6]), "{c:#}");
                let ready = n
                    .wait_node_pod_ready(READY_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    ready.body.contains(&format!("subnet {v4}")),
                    "{}: {}",
                    n.name,
                    ready.body
                );
                let lease = lease_of(&cluster, n);
                assert_eq!(
                    lease,
                    Lease {
                        subnet: net(v4),
                        subnet6: Some(net(v6))
                    },
                    "{}",
                    n.name
                );
                n.wait_network_ready(Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{e}"));
                let p = run_pod(n, &PodSpec::new(format!("cidr-{}", n.name)));
                assert!(net(v4).contains(&p.v4()), "{p:?} outside {v4}");
                assert!(net(v6).contains(&p.v6()), "{p:?} outside {v6}");
                pods.push(p);
            }
            let mut want: Vec<(String, String, String)> = cluster
                .nodes
                .iter()
                .zip(cidrs)
                .map(|(n, (v4, _))| (n.name.clone(), n.address.to_string(), v4.to_string()))
                .collect();
            want.sort();
            assert_eq!(etcd_holders(&cluster), want);
            all_ping(&pods).unwrap_or_else(|e| panic!("pings failed:\n{e}"));
        },
    );

    let third = cluster.add_node();
    cases.run("a ConfigMap naming a missing plugin", || {
        let (bin, conf) = (
            cluster.nodes[third].host_path("/opt/cni/bin"),
            cluster.nodes[third].host_path("/etc/cni/net.d"),
        );
        let dirs = || (tree(&bin), tree(&conf));
        let before = dirs();
        let bad = with_conflist(&objects, |c| {
            for p in c["plugins"].as_array_mut().into_iter().flatten() {
                if p["type"] == "berth-portmap" {
                    p["type"] = json!("no-such-plugin");
                }
            }
        });
        let r = cluster.nodes[third].start_node_pod(&plain_ds, &bad);
        let err = r.expect_err("a conflist naming a missing plugin was installed");
        eprintln!("podcidr: the bad ConfigMap: {err}");
        assert!(err.contains("Init:Error"), "{err}");
        assert!(err.contains("no-such-plugin"), "{err}");
        assert!(
            dirs() == before,
            "a refused install wrote to {}",
            cluster.nodes[third].name
        );
        cluster.nodes[third]
            .stop_node_pod()
            .unwrap_or_else(|e| panic!("{e}"));
    });

    cases.run("a podCIDR another node holds", || {
        let (v4, _) = cidrs[0];
        let holder = cluster.nodes[0].name.clone();
        let container = node_container(&cluster);
        cluster.nodes[third]
            .start_node_pod(&ds, &objects)
            .unwrap_or_else(|e| panic!("{e}"));
        let node = &cluster.nodes[third];
        node.set_pod_cidr(&format!("{v4},fd44:0:0:20::/64"))
            .unwrap_or_else(|e| panic!("{e}"));
        let body = wait_not_ready(node, Duration::from_secs(20), |b| {
            b.contains(&holder) && b.contains(v4)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "podcidr: {} given {v4}: not ready: {}",
            node.name,
            body.trim()
        );
        assert_eq!(body.trim_end().lines().count(), 1, "{body}");
        logged_not_ready(node, &container, &holder).unwrap_or_else(|e| panic!("{e}"));
        node.wait_network_ready(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        let (err, took) = run_pod_fails(node, "taken-cidr");
        eprintln!(
            "podcidr: RunPodSandbox on {} failed after {took:?}: {err}",
            node.name
        );
        assert!(err.contains("podCIDRs"), "{err}");
        assert!(err.contains(&holder), "{err}");
        assert_eq!(lease_of(&cluster, &cluster.nodes[0]).subnet, net(v4));
    });

    eprintln!("podcidr test: {:.1} s in all", t0.elapsed().as_secs_f64());
    cases.finish();
}
