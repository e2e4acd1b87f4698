//! berth on a Kubernetes-like cluster (root): three nodes, each a network,
//! mount and UTS namespace of its own on one underlay with its own
//! containerd driven over the CRI as kubelet drives it, a 3-member TLS etcd
//! laid out as kubeadm lays it out, and the DaemonSet of
//! `deploy/kubernetes/berth.yaml` run on every node from the parsed
//! manifest (image built by build-image.sh and imported into each node's
//! containerd). See `berth_tests::cluster`.
//!
//! One cluster per scenario group (one `#[test]`): etcd, the containerds
//! and the image are started once, and the cases run in order on it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_tests::cluster::{Cluster, ClusterOptions};
use berth_tests::cri::{ping_in, PodSpec, PodStatus};
use berth_tests::etcd_tls::unb64;
use berth_tests::manifest::IntOrString;
use berth_tests::metrics::{key, promtool_finds_nothing, samples};
use berth_tests::overlay_hosts::within;
use berth_tests::status_network;
use serde_json::Value;

/// The dual-stack cluster network's IPv6 CIDR (the manifest's comment's).
const NETWORK6: &str = "fd44::/48";

/// How long a node pod may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// An IPv4 or IPv6 CIDR: (network address as bits, prefix length, bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: u128,
    len: u32,
    bits: u32,
}

impl Cidr {
    fn parse(s: &str) -> Cidr {
        let (a, l) = s
            .split_once('/')
            .unwrap_or_else(|| panic!("{s:?} is not a CIDR"));
        let a: IpAddr = a.parse().unwrap_or_else(|_| panic!("{s:?} is not a CIDR"));
        let len: u32 = l.parse().unwrap_or_else(|_| panic!("{s:?} is not a CIDR"));
        let (addr, bits) = match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        };
        Cidr { addr, len, bits }
    }

    fn mask(&self) -> u128 {
        if self.len == 0 {
            0
        } else {
            (u128::MAX << (128 - self.len)) >> (128 - self.bits)
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (a, bits) = match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        };
        bits == self.bits && a & self.mask() == self.addr & self.mask()
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        let m = if self.len < other.len {
            self.mask()
        } else {
            other.mask()
        };
        self.bits == other.bits && self.addr & m == other.addr & m
    }
}

/// A node's lease as `berth status -o json` shows it on the node.
#[derive(Debug, Clone)]
struct Lease {
    subnet: String,
    subnet6: Option<String>,
}

fn lease_of(cluster: &Cluster, i: usize) -> Lease {
    let node = &cluster.nodes[i];
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
        subnet,
        subnet6: ov["subnet6"].as_str().map(String::from),
    }
}

/// The leases in etcd: (node, underlay, subnet) per key under
/// `/berth/<network>/subnets/`.
fn etcd_leases(cluster: &Cluster) -> Vec<(String, String, String)> {
    let prefix = format!("/berth/{}/subnets/", cluster.network());
    let out = cluster
        .etcd
        .etcdctl_ok(&["get", "--prefix", &prefix, "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("etcdctl -w json");
    let mut leases: Vec<(String, String, String)> = v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let val = unb64(kv["value"].as_str().unwrap_or_default()).expect("base64");
            let l: Value = serde_json::from_slice(&val).expect("lease JSON");
            (
                l["node"].as_str().unwrap_or_default().to_string(),
                l["underlay"].as_str().unwrap_or_default().to_string(),
                l["subnet"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    leases.sort();
    leases
}

/// A pod: its node, status and `/proc/<pause>/ns/net`.
struct Pod {
    node: usize,
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
                        "pod {} (node {}) -> {ip} (node {}): {}",
                        &a.st.id[..12],
                        a.node + 1,
                        b.node + 1,
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

#[test]
fn three_nodes_run_the_daemonset_and_their_pods_reach_each_other() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::new(3).network6(NETWORK6));
    eprintln!(
        "cluster: image built in {:.1} s, nodes, etcd and images up after {:.1} s",
        cluster.image.build_time.as_secs_f64(),
        cluster.started_in.as_secs_f64()
    );

    // The DaemonSet's pod on every node: init container succeeded, node
    // container ready by its readiness probe.
    let t = Instant::now();
    cluster.start_node_pods(READY_TIMEOUT);
    eprintln!(
        "cluster: node pods ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (conflist_name, conflist) = cluster.conflist();
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

    // Two pods per node, dual stack.
    let mut pods = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        n.wait_network_ready(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        for k in 0..2 {
            let st = n.run_pod(&PodSpec::new(format!("app-{}-{k}", i + 1)));
            let netns = st
                .proc_netns()
                .unwrap_or_else(|| panic!("pod {}: no pid in its status", st.id));
            pods.push(Pod { node: i, st, netns });
        }
    }

    // Each node's subnet, as the node agent holds it; no two overlap, and
    // etcd holds exactly these leases.
    let leases: Vec<Lease> = (0..cluster.nodes.len())
        .map(|i| lease_of(&cluster, i))
        .collect();
    let net4 = Cidr::parse(conflist["plugins"][0]["network"].as_str().expect("network"));
    let net6 = Cidr::parse(NETWORK6);
    for (i, l) in leases.iter().enumerate() {
        let s4 = Cidr::parse(&l.subnet);
        assert!(net4.overlaps(&s4) && s4.len > net4.len, "{l:?}");
        let s6 = Cidr::parse(l.subnet6.as_deref().expect("subnet6 (dual stack)"));
        assert!(net6.overlaps(&s6) && s6.len > net6.len, "{l:?}");
        for (j, m) in leases.iter().enumerate().skip(i + 1) {
            assert!(
                !s4.overlaps(&Cidr::parse(&m.subnet)),
                "nodes {} and {} overlap: {l:?} {m:?}",
                i + 1,
                j + 1
            );
            assert!(
                !s6.overlaps(&Cidr::parse(m.subnet6.as_deref().unwrap_or("::/128"))),
                "nodes {} and {} overlap: {l:?} {m:?}",
                i + 1,
                j + 1
            );
        }
    }
    let mut want: Vec<(String, String, String)> = cluster
        .nodes
        .iter()
        .zip(&leases)
        .map(|(n, l)| (n.name.clone(), n.address.to_string(), l.subnet.clone()))
        .collect();
    want.sort();
    assert_eq!(etcd_leases(&cluster), want, "the leases in etcd");

    // Every pod's addresses are in its node's subnets.
    for p in &pods {
        let l = &leases[p.node];
        assert!(
            Cidr::parse(&l.subnet).contains(p.v4()),
            "pod {} on node {}: {} outside {}",
            p.st.id,
            p.node + 1,
            p.v4(),
            l.subnet
        );
        let s6 = l.subnet6.as_deref().unwrap_or_default();
        assert!(
            Cidr::parse(s6).contains(p.v6()),
            "pod {} on node {}: {} outside {s6}",
            p.st.id,
            p.node + 1,
            p.v6(),
        );
    }

    // The node agent sees the pods as live: `berth status` on the node,
    // and the agent's own metrics from inside its container (the pods'
    // netns reach it through the HostToContainer mount of /var/run/netns,
    // mounted after it started).
    let network = cluster.network();
    let metrics_port = {
        let node_c = cluster
            .manifest
            .pod()
            .containers
            .iter()
            .find(|c| c.ports.iter().any(|p| p.name.as_deref() == Some("metrics")))
            .expect("a container with a port named metrics");
        node_c
            .port(&IntOrString::Str("metrics".into()))
            .expect("metrics port")
    };
    for n in &cluster.nodes {
        let st = n.status();
        let states: Vec<&str> = status_network(&st, &network)["attachments"]
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

    // Every pod reaches every other, on its node and across nodes, over
    // IPv4 and IPv6.
    let t = Instant::now();
    all_ping(&pods).unwrap_or_else(|e| panic!("pings failed:\n{e}"));
    eprintln!(
        "cluster: {} pods pinged each other over IPv4 and IPv6 in {:.1} s",
        pods.len(),
        t.elapsed().as_secs_f64()
    );

    // A rolling update of node 1's pod: the node container stops on
    // SIGTERM within the grace period with exit code 0, the pods keep
    // talking and the lease stays; a new pod (init container again) is
    // ready with the same subnet.
    let grace = cluster.manifest.pod().grace_period();
    let stopped = cluster.nodes[0]
        .stop_node_pod()
        .unwrap_or_else(|e| panic!("stop node pod: {e}"));
    let node_containers: Vec<&(String, i32)> = stopped
        .exit_codes
        .iter()
        .filter(|(name, _)| {
            cluster
                .manifest
                .pod()
                .containers
                .iter()
                .any(|c| &c.name == name)
        })
        .collect();
    for (name, code) in &node_containers {
        assert_eq!(*code, 0, "container {name} exited {code} on SIGTERM");
    }
    assert!(
        stopped.took < Duration::from_secs(grace as u64),
        "the node pod took {:?} to stop (grace period {grace} s)",
        stopped.took
    );
    assert_eq!(
        etcd_leases(&cluster),
        want,
        "the leases while node 1's pod is gone"
    );
    all_ping(&pods).unwrap_or_else(|e| panic!("pings failed while node 1's pod was gone:\n{e}"));
    let ds = cluster.manifest.daemon_set().clone();
    let objects = cluster.objects.clone();
    cluster.nodes[0]
        .start_node_pod(&ds, &objects)
        .unwrap_or_else(|e| panic!("node pod on node-1 again: {e}"));
    cluster.nodes[0]
        .wait_node_pod_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lease_of(&cluster, 0).subnet, leases[0].subnet);
    all_ping(&pods).unwrap_or_else(|e| panic!("pings failed after node 1's new pod:\n{e}"));

    eprintln!(
        "cluster test: {:.1} s in all (stop of the node pod {:.2} s)",
        t0.elapsed().as_secs_f64(),
        stopped.took.as_secs_f64()
    );
}
