//! `berth node`, the node agent of the Kubernetes DaemonSet, on hosts that
//! are namespaces of the test's (root): two hosts on one underlay veth,
//! etcd in the first, each host running `berth node` on its conflist and
//! the plugins for containers of its own. Traffic stays between these
//! namespaces.
//!
//! The DaemonSet itself (the image, the manifest's mounts and args, nodes
//! with their own containerd) is tests/cluster.rs; this file checks what
//! the agent does, case by case, without the image.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use berth_tests::overlay_hosts::LoggedChild;
use berth_tests::*;
use serde_json::{json, Value};

/// Where each host's agent serves its probes (inside the host's namespace).
const PROBES: &str = "127.0.0.1:9624";

struct Host {
    /// Shared by two nodes in one case (a second node name on one host).
    ns: Rc<TestNetns>,
    run: TempDir,
    data: TempDir,
    name: &'static str,
}

impl Host {
    fn conflist_path(&self) -> std::path::PathBuf {
        self.run.path().join("10-berth.conflist")
    }

    /// The conflist: berth-overlay with leases in the test's etcd, then
    /// berth-portmap. `overlay` keys are added to the overlay's.
    fn conflist(&self, net: &str, prefix: &str, overlay: Value) -> Value {
        let mut o = json!({
            "type": "berth-overlay",
            "network": "10.244.0.0/16", "subnetLen": 24, "vni": 42, "iface": "ovu",
            "network6": "fd44::/48",
            "node": self.name,
            "dataDir": self.data.path(),
            "store": {"etcd": {"endpoints": ["http://192.168.77.1:2379"], "prefix": prefix,
                               "leaseTTL": 30, "dialTimeout": "1s"}}
        });
        for (k, v) in overlay.as_object().unwrap() {
            o[k] = v.clone();
        }
        json!({"cniVersion": "1.1.0", "name": net, "plugins": [
            o, {"type": "berth-portmap", "capabilities": {"portMappings": true}}
        ]})
    }

    fn write_conflist(&self, conflist: &Value) {
        std::fs::write(self.conflist_path(), serde_json::to_vec(conflist).unwrap()).unwrap();
    }

    /// The overlay plugin's own config out of `conflist`, as a runtime
    /// hands it over.
    fn plugin_conf(conflist: &Value) -> Value {
        let mut c = conflist["plugins"][0].clone();
        c["name"] = conflist["name"].clone();
        c["cniVersion"] = conflist["cniVersion"].clone();
        c
    }

    fn exec(&self, command: &str, cid: &str, c: &TestNetns, conflist: &Value) -> PluginOutput {
        run_cni_in(
            &self.ns,
            "berth-overlay",
            command,
            cid,
            c,
            self.run.path(),
            &Host::plugin_conf(conflist),
        )
    }

    /// `berth node` on this host's conflist, with the host's run dir.
    fn agent(&self) -> NodeAgent {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name(), "env"])
            .arg(format!("BERTH_RUN_DIR={}", self.run.path().display()))
            .arg("BERTH_LOG=info")
            .arg(bin("berth"))
            .args(["node", "--conf"])
            .arg(self.conflist_path())
            .args(["--address", PROBES, "--data-dir"])
            .arg(self.data.path())
            .arg("--engine-state")
            .arg(self.run.path().join("engine"));
        LoggedChild::spawn(cmd, "berth node")
    }

    /// GET `path` from the host's agent: (status code, body).
    fn probe(&self, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        self.ns.run(move || http_get(PROBES, &path))
    }

    fn wait_ready(&self, agent: &NodeAgent, limit: Duration) -> String {
        let mut last = None;
        let ok = overlay_hosts::within(limit, || {
            last = self.probe("/readyz");
            matches!(&last, Some((200, _)))
        });
        assert!(
            ok,
            "{}: not ready within {limit:?}: {last:?}\n{}",
            self.name,
            agent.log()
        );
        last.unwrap().1
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// A `berth node` process.
type NodeAgent = LoggedChild;

fn two_hosts(tag: &str) -> (Host, Host) {
    require_root();
    let (h1, h2) = (
        TestNetns::new(&format!("{tag}1")),
        TestNetns::new(&format!("{tag}2")),
    );
    h1.sh(&format!("ip link set lo up && ip link add ovu type veth peer name ovu netns {} && ip addr add 192.168.77.1/24 dev ovu && ip link set ovu up", h2.name()));
    h2.sh("ip link set lo up && ip addr add 192.168.77.2/24 dev ovu && ip link set ovu up");
    let host = |ns, n: u8, name| Host {
        ns: Rc::new(ns),
        run: TempDir::new(&format!("{tag}-run{n}")),
        data: TempDir::new(&format!("{tag}-data{n}")),
        name,
    };
    (host(h1, 1, "h1"), host(h2, 2, "h2"))
}

/// Two hosts with etcd in the first, each with its conflist (the overlay
/// keys `keys1`, `keys2` added) and its agent running and ready. Fields
/// drop in order: the agents first, then etcd, then the hosts.
struct Pair {
    a1: NodeAgent,
    a2: NodeAgent,
    _etcd: Etcd,
    l1: Value,
    l2: Value,
    h1: Host,
    h2: Host,
}

fn ready_pair(tag: &str, keys1: Value, keys2: Value) -> Pair {
    let (h1, h2) = two_hosts(tag);
    let etcd = Etcd::start(&h1.ns, "192.168.77.1");
    let prefix = format!("/berth-{tag}-{}", std::process::id());
    let (l1, l2) = (
        h1.conflist(tag, &prefix, keys1),
        h2.conflist(tag, &prefix, keys2),
    );
    h1.write_conflist(&l1);
    h2.write_conflist(&l2);
    let (a1, a2) = (h1.agent(), h2.agent());
    h1.wait_ready(&a1, Duration::from_secs(10));
    h2.wait_ready(&a2, Duration::from_secs(10));
    // Ready is about the node itself: the first to be ready may not have
    // seen the other's lease yet, and a pod's first packet to the other
    // node would find no route.
    for h in [&h1, &h2] {
        assert!(
            overlay_hosts::within(Duration::from_secs(5), || h
                .probe("/readyz")
                .is_some_and(|(_, b)| b.contains("1 peers"))),
            "{} never saw the other node: {:?}",
            h.name,
            h.probe("/readyz")
        );
    }
    Pair {
        a1,
        a2,
        _etcd: etcd,
        l1,
        l2,
        h1,
        h2,
    }
}

/// The addresses of a plugin result: (IPv4, IPv6).
fn addresses(r: &Value) -> (String, String) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in r["ips"].as_array().unwrap() {
        let a = ip["address"].as_str().unwrap().split('/').next().unwrap();
        if a.contains(':') {
            v6 = Some(a.to_string());
        } else {
            v4 = Some(a.to_string());
        }
    }
    (v4.expect("an IPv4 address"), v6.expect("an IPv6 address"))
}

/// Pings `addr` from `c` at 10 per second for `secs` seconds (busybox ping
/// in the background); the child's output says how many came back.
fn ping_flood(c: &TestNetns, addr: &str, secs: u32) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            c.name(),
            "busybox",
            "ping",
            "-i",
            "0.1",
            "-W",
            "1",
            "-c",
        ])
        .arg((secs * 10).to_string())
        .arg(addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("busybox ping")
}

/// (sent, received) from busybox ping's summary.
fn ping_counts(out: &std::process::Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let n: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (n[0], n[1])
}

/// The agent waits for its conflist (not ready, saying which file), is
/// ready once the lease and the datapath are in place; containers on the
/// two hosts talk over IPv4 and IPv6. SIGTERM stops it at once and leaves
/// the lease and the datapath: a ping at 10/s across the restart loses
/// nothing, and the other host keeps its route meanwhile. After `nft flush
/// ruleset` the agent's reconciler puts the rules back and the host is
/// ready again; /metrics counts the repair.
#[test]
fn the_node_agent_is_ready_restarts_without_loss_and_repairs_rules() {
    let (h1, h2) = two_hosts("nda");
    let _etcd = Etcd::start(&h1.ns, "192.168.77.1");
    let prefix = format!("/berth-nda-{}", std::process::id());
    let (l1, l2) = (
        h1.conflist("nda", &prefix, json!({})),
        h2.conflist("nda", &prefix, json!({})),
    );

    let mut a1 = h1.agent();
    // No conflist yet: not ready, and the reason names the file.
    let mut early = None;
    assert!(
        overlay_hosts::within(Duration::from_secs(10), || {
            early = h1.probe("/readyz");
            early.is_some()
        }),
        "no answer on {PROBES}\n{}",
        a1.log()
    );
    let (code, why) = early.unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(
        why.contains(&h1.conflist_path().display().to_string()),
        "{why}"
    );
    assert_eq!(h1.probe("/healthz").unwrap().0, 200);
    assert!(a1.log().contains("not ready"), "{}", a1.log());

    h1.write_conflist(&l1);
    h2.write_conflist(&l2);
    let said = h1.wait_ready(&a1, Duration::from_secs(10));
    assert!(
        said.contains("subnet 10.244.") && said.contains("rules in place"),
        "{said}"
    );
    let a2 = h2.agent();
    h2.wait_ready(&a2, Duration::from_secs(10));
    assert!(
        overlay_hosts::within(Duration::from_secs(5), || h1
            .probe("/readyz")
            .is_some_and(|(_, b)| b.contains("1 peers"))),
        "h1 never saw h2: {:?}",
        h1.probe("/readyz")
    );

    let (c1, c2) = (TestNetns::new("ndac1"), TestNetns::new("ndac2"));
    let r1 = h1.exec("ADD", "c1", &c1, &l1).expect_ok().clone();
    let r2 = h2.exec("ADD", "c2", &c2, &l2).expect_ok().clone();
    let ((v4a, v6a), (v4b, v6b)) = (addresses(&r1), addresses(&r2));
    for (c, a) in [(&c1, &v4b), (&c1, &v6b), (&c2, &v4a), (&c2, &v6a)] {
        assert_ping(c, a);
    }

    // A restart, as a rolling update does it, while c1 pings c2 at 10/s.
    let flood = ping_flood(&c1, &v4b, 6);
    std::thread::sleep(Duration::from_millis(1000));
    let mut a2 = a2;
    let stopped = Instant::now();
    let st = a2.terminate();
    assert!(st.success(), "berth node exited {st}\n{}", a2.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?}",
        stopped.elapsed()
    );
    assert!(a2.log().contains("stays leased"), "{}", a2.log());
    // The lease stays: h1 keeps routing to h2's pods.
    let h2_subnet = format!("{}.0/24", v4b.rsplit_once('.').unwrap().0);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !h1.ns
            .exec_ok(&["ip", "route", "show", &h2_subnet])
            .trim()
            .is_empty(),
        "h1 forgot h2's subnet while h2's agent was away"
    );
    let a2 = h2.agent();
    h2.wait_ready(&a2, Duration::from_secs(10));
    let out = flood.wait_with_output().unwrap();
    let (sent, got) = ping_counts(&out);
    assert_eq!(
        (sent, got),
        (60, 60),
        "packets lost across the agent's restart: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Its subnet is the one it had.
    let r2b = h2.exec("ADD", "c2b", &TestNetns::new("ndac2b"), &l2);
    assert!(
        addresses(r2b.expect_ok())
            .0
            .starts_with(v4b.rsplit_once('.').unwrap().0),
        "{r2b}"
    );

    // A firewall reload on h1: the reconciler in the agent puts berth's
    // rules back within a second, and the node is ready again.
    let flush = Instant::now();
    h1.ns.exec_ok(&["nft", "flush", "ruleset"]);
    assert!(
        overlay_hosts::within(Duration::from_secs(1), || h1
            .ns
            .exec(&["nft", "list", "table", "inet", "berth"])
            .status
            .success()),
        "rules not back within 1 s of the flush\n{}",
        a1.log()
    );
    let back = flush.elapsed();
    h1.wait_ready(&a1, Duration::from_secs(5));
    assert_ping(&c2, &v4a);
    let (code, metrics) = h1.probe("/metrics").unwrap();
    assert_eq!(code, 200);
    let repairs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_reconciler_repairs_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(repairs >= 1.0, "rules back after {back:?}, yet {metrics}");
    assert!(a1.log().contains("ready"), "{}", a1.log());

    for (h, c, cid, l) in [(&h1, &c1, "c1", &l1), (&h2, &c2, "c2", &l2)] {
        h.exec("DEL", cid, c, l).assert_ok();
    }
    h2.exec("DEL", "c2b", &TestNetns::new("ndac2c"), &l2)
        .assert_ok();
    drop(a2);
    a1.terminate();
}

/// The podCIDR source: a node given its podCIDRs (as containerd renders
/// kubelet's into the conflist) holds exactly those, the IPv6 one too
/// even where it is not the IPv4 one's pair, and the other node routes to
/// both. A podCIDR another node holds is refused, code 7 naming the
/// holder, and that node's agent is not ready, saying why.
#[test]
fn pod_cidrs_are_held_as_given_and_refused_when_taken() {
    let Pair {
        a1,
        mut a2,
        _etcd,
        l1,
        l2,
        h1,
        h2,
    } = ready_pair(
        "ndp",
        json!({"podCIDRs": ["10.244.7.0/24", "fd44:0:0:30::/64"]}),
        json!({}),
    );
    let said = h1.wait_ready(&a1, Duration::from_secs(1));
    assert!(said.contains("subnet 10.244.7.0/24"), "{said}");

    let (c1, c2) = (TestNetns::new("ndpc1"), TestNetns::new("ndpc2"));
    let (v4, v6) = addresses(h1.exec("ADD", "c1", &c1, &l1).expect_ok());
    assert!(v4.starts_with("10.244.7."), "{v4}");
    assert!(v6.starts_with("fd44:0:0:30:"), "{v6}");
    let (w4, w6) = addresses(h2.exec("ADD", "c2", &c2, &l2).expect_ok());
    assert!(
        overlay_hosts::within(Duration::from_secs(2), || {
            !h2.ns
                .exec_ok(&["ip", "-6", "route", "show", "fd44:0:0:30::/64"])
                .trim()
                .is_empty()
        }),
        "h2 does not route to h1's IPv6 podCIDR"
    );
    for (c, a) in [(&c2, &v4), (&c2, &v6), (&c1, &w4), (&c1, &w6)] {
        assert_ping(c, a);
    }

    // A third node name in h2's namespace, with run and IPAM dirs of its
    // own, given h1's podCIDR: refused, naming h1, before anything is
    // leased or made. (h2's agent makes room for h3's on the probe port;
    // h2's lease stays.)
    a2.terminate();
    let h3 = Host {
        ns: h2.ns.clone(),
        run: TempDir::new("ndp-run3"),
        data: TempDir::new("ndp-data3"),
        name: "h3",
    };
    let mut l3 = h3.conflist("ndp", "", json!({"podCIDRs": ["10.244.7.0/24"]}));
    l3["plugins"][0]["store"] = l1["plugins"][0]["store"].clone();
    h3.write_conflist(&l3);
    let c3 = TestNetns::new("ndpc3");
    let refused = h3.exec("ADD", "c3", &c3, &l3);
    refused.expect_error(7);
    let said = refused.error_msg().unwrap_or_default();
    assert!(
        said.contains("podCIDRs") && said.contains("\"h1\""),
        "{refused}"
    );
    assert!(
        c3.exec_ok(&["ip", "-o", "link"]).lines().count() == 1,
        "a refused ADD made links"
    );
    let a3 = h3.agent();
    let mut last = None;
    assert!(
        overlay_hosts::within(Duration::from_secs(10), || {
            last = h3.probe("/readyz");
            matches!(&last, Some((503, b)) if b.contains("podCIDRs") && b.contains("h1"))
        }),
        "{last:?}\n{}",
        a3.log()
    );
    // Nothing of h3's was leased: h1 and h2 see one peer each.
    assert!(h1.probe("/readyz").unwrap().1.contains("1 peers"));

    h1.exec("DEL", "c1", &c1, &l1).assert_ok();
    h2.exec("DEL", "c2", &c2, &l2).assert_ok();
    drop((a1, a3));
}

/// An etcd that cannot be reached: the agent is not ready and says why in
/// one line naming the store; an ADD fails with code 11 within the dial
/// timeout instead of hanging.
#[test]
fn an_unreachable_etcd_is_not_ready_and_add_fails_fast() {
    let (h1, _h2) = two_hosts("ndu");
    // Nothing listens on 192.168.77.1:2379.
    let l1 = h1.conflist("ndu", "/berth-ndu", json!({}));
    h1.write_conflist(&l1);
    let a1 = h1.agent();
    let mut last = None;
    assert!(
        overlay_hosts::within(Duration::from_secs(10), || {
            last = h1.probe("/readyz");
            matches!(&last, Some((503, b)) if b.contains("192.168.77.1:2379"))
        }),
        "{last:?}\n{}",
        a1.log()
    );
    let body = last.unwrap().1;
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    let c = TestNetns::new("nduc");
    let started = Instant::now();
    let out = h1.exec("ADD", "c1", &c, &l1);
    out.expect_error(11);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "ADD took {:?}",
        started.elapsed()
    );
    assert!(
        out.error_msg()
            .unwrap_or_default()
            .contains("192.168.77.1:2379"),
        "{out}"
    );
    drop(a1);
}

/// `ipMasq` (flannel's `--ip-masq`) with `isDefaultGateway`: a pod's traffic to a host outside
/// the cluster networks leaves with its node's address; to a pod on the
/// other node it keeps its own. The rule survives a flush (the agent's
/// reconciler puts it back). `hairpinMode` is on the pod's bridge port.
#[test]
fn ip_masq_hides_pods_only_beyond_the_cluster() {
    let keys = json!({"ipMasq": true, "hairpinMode": true, "isDefaultGateway": true});
    let Pair {
        a1,
        a2: _a2,
        _etcd,
        l1,
        l2,
        h1,
        h2,
    } = ready_pair("ndm", keys.clone(), keys);

    // An outside host on a second link of h1 (172.31.250.0/24), with
    // h1 as its router.
    let outside = TestNetns::new("ndmo");
    h1.ns.sh(&format!(
        "ip link add ndmo type veth peer name eth0 netns {} && ip addr add 172.31.250.1/24 dev ndmo && ip link set ndmo up && sysctl -qw net.ipv4.ip_forward=1",
        outside.name()
    ));
    outside.sh("ip link set lo up && ip addr add 172.31.250.2/24 dev eth0 && ip link set eth0 up");
    let echo_out = PeerEcho::start(&outside, 18080, 18081);

    let (c1, c2) = (TestNetns::new("ndmc1"), TestNetns::new("ndmc2"));
    let (v4a, _) = addresses(h1.exec("ADD", "c1", &c1, &l1).expect_ok());
    let (v4b, _) = addresses(h2.exec("ADD", "c2", &c2, &l2).expect_ok());
    let echo_pod = PeerEcho::start(&c2, 18080, 18081);

    let seen_outside = |_: ()| tcp_ask(&c1, "172.31.250.2:18080".parse().unwrap());
    assert_eq!(seen_outside(()).unwrap(), "peer=172.31.250.1");
    let to_pod = format!("{v4b}:18080").parse().unwrap();
    assert_eq!(tcp_ask(&c1, to_pod).unwrap(), format!("peer={v4a}"));

    h1.ns.exec_ok(&["nft", "flush", "ruleset"]);
    assert!(
        overlay_hosts::within(Duration::from_secs(1), || seen_outside(()).as_deref()
            == Ok("peer=172.31.250.1")),
        "masquerade not back within 1 s of the flush\n{}",
        a1.log()
    );

    // Hairpin on the pod's port of the node's bridge.
    let port = h1
        .ns
        .exec_ok(&["bridge", "-d", "-j", "link", "show", "master", "bov42"]);
    let ports: Value = serde_json::from_str(&port).unwrap();
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["hairpin"] == true),
        "no hairpin port on bov42: {ports:#}"
    );

    drop((echo_out, echo_pod));
    h1.exec("DEL", "c1", &c1, &l1).assert_ok();
    h2.exec("DEL", "c2", &c2, &l2).assert_ok();
    drop(a1);
}

/// `berth uninstall` on a host whose pods are gone and whose agent has
/// stopped: the lease goes back (the other host forgets the subnet), the
/// VXLAN device, the bridge and berth's rules go, and so do the conflist,
/// the etcd files and the plugins (`loopback` stays). While a container
/// is attached, or the agent runs, it refuses and changes nothing.
#[test]
fn uninstall_takes_the_node_off_berth() {
    let Pair {
        mut a1,
        a2,
        _etcd,
        l1,
        l2: _,
        h1,
        h2,
    } = ready_pair("ndx", json!({"ipMasq": true}), json!({}));
    let c1 = TestNetns::new("ndxc1");
    let (v4, _) = addresses(h1.exec("ADD", "c1", &c1, &l1).expect_ok());
    let subnet = format!("{}.0/24", v4.rsplit_once('.').unwrap().0);
    let routed_by_h2 = || {
        !h2.ns
            .exec_ok(&["ip", "route", "show", &subnet])
            .trim()
            .is_empty()
    };
    assert!(overlay_hosts::within(Duration::from_secs(2), routed_by_h2));

    // A node laid out as berth install leaves it.
    let conf_dir = TempDir::new("ndx-net.d");
    let bin_dir = TempDir::new("ndx-bin");
    std::fs::copy(
        h1.conflist_path(),
        conf_dir.path().join("10-berth.conflist"),
    )
    .unwrap();
    std::fs::write(
        conf_dir.path().join("20-other.conflist"),
        r#"{"plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(conf_dir.path().join("berth-etcd")).unwrap();
    std::fs::write(conf_dir.path().join("berth-etcd/ca.crt"), "CA").unwrap();
    for p in [
        "berth-bridge",
        "berth-overlay",
        "berth-portmap",
        "loopback",
        "host-local",
    ] {
        std::fs::write(bin_dir.path().join(p), "#!/bin/sh\n").unwrap();
    }
    let uninstall = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", h1.ns.name(), "env"])
            .arg(format!("BERTH_RUN_DIR={}", h1.run.path().display()))
            .arg(bin("berth"))
            .args(["uninstall", "--cni-bin-dir"])
            .arg(bin_dir.path())
            .arg("--cni-conf-dir")
            .arg(conf_dir.path())
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let files = || {
        let mut f: Vec<String> = [conf_dir.path(), bin_dir.path()]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    let before = files();
    let links = || h1.ns.exec_ok(&["ip", "-o", "link"]);

    // The agent still runs: refused.
    let (ok, said) = uninstall(&[]);
    assert!(!ok && said.contains("DaemonSet"), "{said}");
    a1.terminate();
    // A container is still attached: refused, naming it.
    let (ok, said) = uninstall(&[]);
    assert!(!ok && said.contains("drain"), "{said}");
    assert_eq!(files(), before);
    assert!(links().contains("berth.42") && links().contains("bov42"));

    h1.exec("DEL", "c1", &c1, &l1).assert_ok();
    let (ok, said) = uninstall(&[]);
    assert!(ok, "{said}");
    assert_eq!(
        files(),
        ["20-other.conflist", "host-local", "loopback"],
        "{said}"
    );
    let left = links();
    assert!(
        !left.contains("berth.42") && !left.contains("bov42"),
        "{left}"
    );
    assert!(
        !h1.ns
            .exec(&["nft", "list", "table", "inet", "berth"])
            .status
            .success(),
        "berth's table is still there"
    );
    // The lease is gone: h2 forgets h1's subnet at once, not after the TTL.
    assert!(
        overlay_hosts::within(Duration::from_secs(2), || !routed_by_h2()),
        "h2 still routes {subnet}"
    );
    // Again: nothing left to do, and nothing fails.
    let (ok, said) = uninstall(&[]);
    assert!(ok, "{said}");
    drop(a2);
}

/// Kubernetes Services through kube-proxy's own nftables rules (written
/// as its pkg/proxy/nftables/proxier.go writes them:
/// `berth_tests::kube_proxy`), on a node whose global bridge-nf-call-iptables is off (berth turns it on for its
/// bridge alone): a pod reaches a ClusterIP whose endpoint is a pod on the
/// same bridge (the reply is bridged, and conntrack must see it) keeping
/// its own address; itself through the ClusterIP (hairpin, masqueraded by
/// kube-proxy's mark); a pod on the other node; and a Service with both,
/// each answering.
#[test]
fn kube_proxy_services_reach_pods_on_this_bridge_itself_and_other_nodes() {
    let keys = json!({"ipMasq": true, "hairpinMode": true, "isDefaultGateway": true});
    let Pair {
        a1,
        a2,
        _etcd,
        l1,
        l2,
        h1,
        h2,
    } = ready_pair("nds", keys.clone(), keys);
    h1.ns.sh(
        "sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0",
    );

    let (p1, p2, q1) = (
        TestNetns::new("ndsp1"),
        TestNetns::new("ndsp2"),
        TestNetns::new("ndsq1"),
    );
    let (ip_p1, _) = addresses(h1.exec("ADD", "p1", &p1, &l1).expect_ok());
    let (ip_p2, _) = addresses(h1.exec("ADD", "p2", &p2, &l1).expect_ok());
    let (ip_q1, _) = addresses(h2.exec("ADD", "q1", &q1, &l2).expect_ok());
    let gateway = format!("{}.1", ip_p1.rsplit_once('.').unwrap().0);
    let _echo = [
        PeerEcho::start(&p1, 8080, 8081),
        PeerEcho::start(&p2, 8080, 8081),
        PeerEcho::start(&q1, 8080, 8081),
    ];
    let rules = kube_proxy::kube_proxy_table(
        "10.244.0.0/16",
        &[
            ("10.96.0.10", &[ip_p2.as_str()]),
            ("10.96.0.11", &[ip_p1.as_str()]),
            ("10.96.0.12", &[ip_q1.as_str()]),
            ("10.96.0.13", &[ip_p2.as_str(), ip_q1.as_str()]),
        ],
    );
    let file = h1.run.path().join("kube-proxy.nft");
    std::fs::write(&file, &rules).unwrap();
    h1.ns.exec_ok(&["nft", "-f", file.to_str().unwrap()]);

    let ask = |vip: &str| tcp_ask(&p1, format!("{vip}:80").parse().unwrap());
    // Same bridge: the endpoint sees the client's own address.
    assert_eq!(ask("10.96.0.10"), Ok(format!("peer={ip_p1}")), "{rules}");
    // Itself: kube-proxy masquerades hairpin traffic, to the bridge's address.
    assert_eq!(ask("10.96.0.11"), Ok(format!("peer={gateway}")), "{rules}");
    // Another node's pod, across the VXLAN.
    assert_eq!(ask("10.96.0.12"), Ok(format!("peer={ip_p1}")), "{rules}");
    // Both: numgen spreads connections; each endpoint answers some, as a
    // counter of the test's own (after kube-proxy's DNAT) shows.
    h1.ns.sh(&format!(
        "nft add table ip ndsprobe && nft add chain ip ndsprobe post '{{ type filter hook postrouting priority 0; }}' && nft add rule ip ndsprobe post ip daddr {ip_p2} tcp dport 8080 tcp flags syn counter && nft add rule ip ndsprobe post ip daddr {ip_q1} tcp dport 8080 tcp flags syn counter"
    ));
    for _ in 0..40 {
        assert_eq!(ask("10.96.0.13"), Ok(format!("peer={ip_p1}")));
    }
    let probe = h1.ns.exec_ok(&["nft", "list", "table", "ip", "ndsprobe"]);
    let counts: Vec<u64> = probe
        .lines()
        .filter_map(|l| l.split("packets ").nth(1))
        .map(|n| n.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{probe}");
    assert!(
        counts.iter().all(|c| *c > 0) && counts.iter().sum::<u64>() == 40,
        "connections per endpoint: {counts:?}\n{probe}"
    );

    for (h, c, cid, l) in [
        (&h1, &p1, "p1", &l1),
        (&h1, &p2, "p2", &l1),
        (&h2, &q1, "q1", &l2),
    ] {
        h.exec("DEL", cid, c, l).assert_ok();
    }
    drop((a1, a2));
}
