//! berth-overlay with static peers: two "hosts" (namespaces) joined by an
//! underlay veth, each running the plugin in its own namespace for a
//! container of its own (root). Traffic stays between these namespaces.

use berth_tests::*;
use serde_json::{json, Value};

struct Node {
    host: TestNetns,
    run: TempDir,
    data: TempDir,
    subnet: &'static str,
    peer: (&'static str, &'static str),
}

impl Node {
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "ovt", "type": "berth-overlay",
            "network": "10.244.0.0/16", "subnetLen": 24, "vni": 42, "iface": "ovu",
            "dataDir": self.data.path(),
            "store": {"static": {"subnet": self.subnet, "peers": [{"node": "peer", "underlay": self.peer.0, "subnet": self.peer.1}]}}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn exec(&self, command: &str, cid: &str, ns: &TestNetns, conf: &Value) -> PluginOutput {
        run_cni_in(
            &self.host,
            "berth-overlay",
            command,
            cid,
            ns,
            self.run.path(),
            conf,
        )
    }
}

fn two_nodes(tag: &str) -> (Node, Node) {
    require_root();
    let (h1, h2) = (
        TestNetns::new(&format!("{tag}1")),
        TestNetns::new(&format!("{tag}2")),
    );
    h1.sh(&format!("ip link set lo up && ip link add ovu type veth peer name ovu netns {} && ip addr add 192.168.77.1/24 dev ovu && ip link set ovu up", h2.name()));
    h2.sh("ip link set lo up && ip addr add 192.168.77.2/24 dev ovu && ip link set ovu up");
    let n1 = Node {
        host: h1,
        run: TempDir::new(&format!("{tag}-run1")),
        data: TempDir::new(&format!("{tag}-data1")),
        subnet: "10.244.1.0/24",
        peer: ("192.168.77.2", "10.244.2.0/24"),
    };
    let n2 = Node {
        host: h2,
        run: TempDir::new(&format!("{tag}-run2")),
        data: TempDir::new(&format!("{tag}-data2")),
        subnet: "10.244.2.0/24",
        peer: ("192.168.77.1", "10.244.1.0/24"),
    };
    (n1, n2)
}

/// Two hosts whose underlay is IPv6 only (fd77::1 and fd77::2).
fn two_nodes_v6(tag: &str) -> (Node, Node) {
    require_root();
    let (h1, h2) = (
        TestNetns::new(&format!("{tag}1")),
        TestNetns::new(&format!("{tag}2")),
    );
    h1.sh(&format!("ip link set lo up && ip link add ovu type veth peer name ovu netns {} && ip addr add fd77::1/64 dev ovu nodad && ip link set ovu up", h2.name()));
    h2.sh("ip link set lo up && ip addr add fd77::2/64 dev ovu nodad && ip link set ovu up");
    let node = |host, n: u8, subnet, peer| Node {
        host,
        run: TempDir::new(&format!("{tag}-run{n}")),
        data: TempDir::new(&format!("{tag}-data{n}")),
        subnet,
        peer,
    };
    (
        node(h1, 1, "10.244.1.0/24", ("fd77::2", "10.244.2.0/24")),
        node(h2, 2, "10.244.2.0/24", ("fd77::1", "10.244.1.0/24")),
    )
}

/// The result's address of the given family, without its prefix length.
fn ip_of(r: &Value, v6: bool) -> String {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {r}", if v6 { "IPv6" } else { "IPv4" }))
}

fn first_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Containers on two hosts reach each other by address over VXLAN, also
/// where forwarding has a drop policy; the MTU leaves room for the
/// encapsulation; the datapath has one FDB entry,
/// one neighbour and one route per peer; DEL releases the addresses.
#[test]
fn containers_on_two_hosts_talk_over_vxlan() {
    let (n1, n2) = two_nodes("ovs");
    // Both hosts forward under a drop policy that lets berth's mark
    // through, as a host running Docker does (FORWARD policy DROP, the
    // DOCKER-USER exception): connections from the other node's containers
    // come in through the VXLAN device and must be accepted too.
    for n in [&n1, &n2] {
        n.host.sh("nft add table inet usr && nft add chain inet usr guard '{ type filter hook forward priority 10; policy drop; }' && nft add rule inet usr guard meta mark and 0x40000000 == 0x40000000 accept");
    }
    let (c1, c2) = (TestNetns::new("ovc1"), TestNetns::new("ovc2"));
    let r1 = n1
        .exec("ADD", "c1", &c1, &n1.conf(json!({})))
        .expect_ok()
        .clone();
    let r2 = n2
        .exec("ADD", "c2", &c2, &n2.conf(json!({})))
        .expect_ok()
        .clone();
    let (ip1, ip2) = (first_ip(&r1), first_ip(&r2));
    assert!(
        ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.2."),
        "{ip1} {ip2}"
    );
    assert_ping(&c1, &ip2);
    assert_ping(&c2, &ip1);
    let eth0 = c1.ip_json(&["link", "show", "eth0"]);
    assert_eq!(eth0[0]["mtu"], 1450, "underlay 1500 minus 50");
    let fdb = n1
        .host
        .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
    assert!(fdb.contains("02:bf:c0:a8:4d:02 dst 192.168.77.2"), "{fdb}");
    let routes = n1.host.exec_ok(&["ip", "route", "show", "10.244.2.0/24"]);
    assert!(
        routes.contains("via 10.244.2.0 dev berth.42") && routes.contains("onlink"),
        "{routes}"
    );
    n1.exec(
        "CHECK",
        "c1",
        &c1,
        &with_prev_result(&n1.conf(json!({})), &r1),
    )
    .assert_ok();

    for (n, c, cid, r) in [(&n1, &c1, "c1", &r1), (&n2, &c2, "c2", &r2)] {
        n.exec("DEL", cid, c, &with_prev_result(&n.conf(json!({})), r))
            .assert_ok();
        n.exec("DEL", cid, c, &n.conf(json!({}))).assert_ok();
    }
    assert!(c1
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "eth0"));
    // Nothing of the containers is left on the hosts; the datapath stays
    // for the next container.
    for n in [&n1, &n2] {
        let links = n.host.exec_ok(&["ip", "-br", "link"]);
        assert!(!links.contains("bv"), "host veth left: {links}");
        assert!(links.contains("berth.42"), "{links}");
    }
    let again = n1
        .exec("ADD", "c3", &c1, &n1.conf(json!({})))
        .expect_ok()
        .clone();
    assert_ping(&c1, "10.244.2.1"); // the other node's bridge, across the overlay
    n1.exec(
        "DEL",
        "c3",
        &c1,
        &with_prev_result(&n1.conf(json!({})), &again),
    )
    .assert_ok();
}

/// berth-bandwidth chained after berth-overlay: the overlay's result names
/// the container's host veth, which gets the limits; TCP between containers
/// on the two hosts, over VXLAN, is within 10% of them both ways (10 Mbit/s
/// towards the container, 50 from it); CHECK passes; DEL of the chain in
/// reverse order leaves no ifb, qdisc or veth.
#[test]
fn berth_bandwidth_shapes_an_overlay_container() {
    use berth_tests::bandwidth::{
        assert_near, ifbs, measure, redirect_targets, require_tools, tbf_rate, Flow, Proto,
    };
    const MBIT: u64 = 1_000_000;
    require_tools();
    let (n1, n2) = two_nodes("ovbw");
    let (c1, c2) = (TestNetns::new("ovbwc1"), TestNetns::new("ovbwc2"));
    let r1 = n1
        .exec("ADD", "c1", &c1, &n1.conf(json!({})))
        .expect_ok()
        .clone();
    let r2 = n2
        .exec("ADD", "c2", &c2, &n2.conf(json!({})))
        .expect_ok()
        .clone();
    // Bursts of 2 Mbit: the tbf's queue (25 ms at the rate plus the burst)
    // then holds what a TCP window over VXLAN puts in flight, so the
    // measurement shows the rate, not TCP backing off from tail drops.
    let limits = json!({"cniVersion": "1.1.0", "name": "ovt", "type": "berth-bandwidth",
                        "ingressRate": 10 * MBIT, "ingressBurst": 2 * MBIT,
                        "egressRate": 50 * MBIT, "egressBurst": 2 * MBIT});
    let bw = |command: &str, conf: &Value| {
        run_cni_in(
            &n1.host,
            "berth-bandwidth",
            command,
            "c1",
            &c1,
            n1.run.path(),
            conf,
        )
    };
    let shaped = bw("ADD", &with_prev_result(&limits, &r1))
        .expect_ok()
        .clone();
    let veth = r1["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none_or(|s| s == ""))
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("bv"))
        .unwrap_or_else(|| panic!("no host veth in {r1}"))
        .to_string();
    let ifb = redirect_targets(&n1.host, &veth);
    assert_eq!(ifb.len(), 1, "{veth} redirects to one ifb: {ifb:?}");
    let ifb = ifb[0].clone();
    assert_eq!(ifbs(&n1.host), vec![ifb.clone()]);
    assert_eq!(tbf_rate(&n1.host, &veth), Some(10 * MBIT));
    assert_eq!(tbf_rate(&n1.host, &ifb), Some(50 * MBIT));
    bw("CHECK", &with_prev_result(&limits, &shaped)).assert_ok();

    let to = first_ip(&r2).parse().unwrap();
    let r = measure(
        &c1,
        &c2,
        to,
        &Flow::limited(Proto::Tcp, 10 * MBIT).reversed(),
    );
    assert_near(r, 10 * MBIT, "overlay: tcp ingress");
    let r = measure(&c1, &c2, to, &Flow::limited(Proto::Tcp, 50 * MBIT));
    assert_near(r, 50 * MBIT, "overlay: tcp egress");

    bw("DEL", &with_prev_result(&limits, &shaped)).assert_ok();
    assert!(ifbs(&n1.host).is_empty(), "DEL left {ifb}");
    for (n, c, cid, r) in [(&n1, &c1, "c1", &r1), (&n2, &c2, "c2", &r2)] {
        n.exec("DEL", cid, c, &with_prev_result(&n.conf(json!({})), r))
            .assert_ok();
    }
    let links = n1.host.exec_ok(&["ip", "-br", "link"]);
    assert!(!links.contains("bv") && !links.contains(&ifb), "{links}");
}

/// Dual stack over an IPv6 underlay: each node's IPv6 subnet is the one
/// with its IPv4 subnet's index; containers reach each other over both
/// families; the MTU leaves room for IPv6 encapsulation (70 bytes).
#[test]
fn dual_stack_over_an_ipv6_underlay() {
    let (n1, n2) = two_nodes_v6("ov6");
    let (c1, c2) = (TestNetns::new("ov6c1"), TestNetns::new("ov6c2"));
    let dual = json!({"network6": "fd44::/48"});
    let r1 = n1
        .exec("ADD", "c1", &c1, &n1.conf(dual.clone()))
        .expect_ok()
        .clone();
    let r2 = n2
        .exec("ADD", "c2", &c2, &n2.conf(dual.clone()))
        .expect_ok()
        .clone();
    let (a4, b4, a6, b6) = (
        ip_of(&r1, false),
        ip_of(&r2, false),
        ip_of(&r1, true),
        ip_of(&r2, true),
    );
    assert!(
        a6.starts_with("fd44:0:0:1:") && b6.starts_with("fd44:0:0:2:"),
        "{a6} {b6}"
    );
    assert_ping(&c1, &b4);
    assert_ping(&c1, &b6);
    assert_ping(&c2, &a6);
    assert_eq!(
        c1.ip_json(&["link", "show", "eth0"])[0]["mtu"],
        1430,
        "underlay 1500 minus 70"
    );
    let fdb = n1
        .host
        .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
    assert!(fdb.contains("02:bf:00:00:00:02 dst fd77::2"), "{fdb}");
    let routes = n1
        .host
        .exec_ok(&["ip", "-6", "route", "show", "fd44:0:0:2::/64"]);
    assert!(
        routes.contains("via fd44:0:0:2:: dev berth.42") && routes.contains("onlink"),
        "{routes}"
    );
    n1.exec(
        "CHECK",
        "c1",
        &c1,
        &with_prev_result(&n1.conf(dual.clone()), &r1),
    )
    .assert_ok();
    for (n, c, cid, r) in [(&n1, &c1, "c1", &r1), (&n2, &c2, "c2", &r2)] {
        n.exec("DEL", cid, c, &with_prev_result(&n.conf(dual.clone()), r))
            .assert_ok();
    }
    // Both addresses went back to IPAM: a new container can ask for them.
    let mut wants = n1.conf(dual.clone());
    wants["args"] = json!({"cni": {"ips": [a4, a6]}});
    let again = n1.exec("ADD", "c3", &c1, &wants).expect_ok().clone();
    assert_eq!((ip_of(&again, false), ip_of(&again, true)), (a4, a6));
    n1.exec("DEL", "c3", &c1, &n1.conf(dual)).assert_ok();
}

/// Bad input: code 7 naming the key, and no VXLAN device made.
#[test]
fn bad_input_makes_nothing() {
    let (n1, _n2) = two_nodes("ovb");
    let c = TestNetns::new("ovbc");
    for (extra, field) in [
        (json!({"vni": 0}), "vni"),
        (json!({"vni": 16777216}), "vni"),
        (json!({"subnetLen": 8}), "subnetLen"),
        (json!({"network": "nonsense"}), "network"),
        (json!({"iface": "nosuchlink"}), "iface"),
        (
            json!({"store": {"static": {"subnet": "10.99.1.0/24"}}}),
            "store.static.subnet",
        ),
        (
            json!({"store": {"static": {"subnet": "10.244.1.0/24", "peers": [{"node": "x", "underlay": "192.168.77.2", "subnet": "10.244.1.0/24"}]}}}),
            "peers[0].subnet",
        ),
        (
            json!({"store": {"etcd": {"endpoints": ["https://192.168.77.1:2379", "http://192.168.77.2:2379"]}}}),
            "store.etcd.endpoints",
        ),
        (
            json!({"store": {"etcd": {"endpoints": []}}}),
            "store.etcd.endpoints",
        ),
        (
            json!({"store": {"etcd": {"endpoints": ["http://192.168.77.1:2379"], "leaseTTL": 1}}}),
            "store.etcd.leaseTTL",
        ),
        (
            json!({"store": {"etcd": {"endpoints": ["http://192.168.77.1:2379"], "subnet": "10.245.0.0/24"}}}),
            "store.etcd.subnet",
        ),
        (json!({"network6": "10.0.0.0/8"}), "network6"),
        (json!({"network6": "fd44::/60"}), "subnetLen6"),
        (json!({"subnetLen6": 64}), "subnetLen6"),
        (
            json!({"store": {"static": {"subnet": "10.244.1.0/24", "peers": [
            {"node": "x", "underlay": "fd77::1:c0a8:4d02", "subnet": "10.244.2.0/24"},
            {"node": "y", "underlay": "fd78::c0a8:4d02", "subnet": "10.244.3.0/24"}]}}}),
            "peers[1].underlay",
        ),
    ] {
        let out = n1.exec("ADD", "c1", &c, &n1.conf(extra.clone()));
        let err = out.expect_error(7);
        assert!(
            err["msg"].as_str().unwrap().contains(field),
            "{extra}: {err}"
        );
        let links = n1.host.exec_ok(&["ip", "-br", "link"]);
        assert!(
            !links.contains("berth.42") && !links.contains("bov42"),
            "{extra}: {links}"
        );
    }

    // A second overlay network on the host may not overlap the first's
    // cluster CIDR nor reuse its VNI.
    let first = n1
        .exec("ADD", "c1", &c, &n1.conf(json!({})))
        .expect_ok()
        .clone();
    for (extra, field) in [
        (
            json!({"name": "ovt2", "vni": 43, "network": "10.244.128.0/17", "store": {"static": {"subnet": "10.244.129.0/24"}}}),
            "network",
        ),
        (
            json!({"name": "ovt3", "network": "10.250.0.0/16", "store": {"static": {"subnet": "10.250.1.0/24"}}}),
            "vni",
        ),
    ] {
        let c2 = TestNetns::new("ovbd");
        let err = n1
            .exec("ADD", "c2", &c2, &n1.conf(extra.clone()))
            .expect_error(7)
            .clone();
        assert!(
            err["msg"].as_str().unwrap().contains(field)
                && err["msg"].as_str().unwrap().contains("ovt"),
            "{extra}: {err}"
        );
        let links = n1.host.exec_ok(&["ip", "-br", "link"]);
        assert!(
            !links.contains("berth.43") && !links.contains("bov43"),
            "{extra}: {links}"
        );
        assert!(c2
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "eth0"));
    }
    n1.exec(
        "DEL",
        "c1",
        &c,
        &with_prev_result(&n1.conf(json!({})), &first),
    )
    .assert_ok();
}

/// Kills the agent (by PID) when dropped.
struct Agent(std::process::Child);

impl Agent {
    /// A clean stop: SIGTERM, then waits (up to 5 s) for it to exit.
    fn terminate(&mut self) {
        // SAFETY: signals our own child by PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let stopped = within(std::time::Duration::from_secs(5), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        assert!(stopped, "the agent did not exit on SIGTERM");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has_route(host: &TestNetns, subnet: &str) -> bool {
    !host
        .exec_ok(&["ip", "route", "show", subnet])
        .trim()
        .is_empty()
}

/// Waits up to `limit` for `cond`; true if it held in time.
fn within(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The agent keeps the node's peers equal to its config file: a peer
/// added or removed there is programmed or forgotten within a second,
/// without restarting anything.
#[test]
fn agent_follows_peers_joining_and_leaving() {
    let (n1, _n2) = two_nodes("ova");
    let file = n1.run.path().join("overlay.conf");
    let write = |peers: Value| {
        let mut c = n1.conf(json!({}));
        c["store"]["static"]["peers"] = peers;
        std::fs::write(&file, serde_json::to_vec(&c).unwrap()).unwrap();
    };
    let b = json!({"node": "b", "underlay": "192.168.77.2", "subnet": "10.244.2.0/24"});
    let c = json!({"node": "c", "underlay": "192.168.77.3", "subnet": "10.244.3.0/24"});
    write(json!([b]));
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", n1.host.name()])
        .arg(bin("berth-overlay"))
        .args(["agent", "--conf"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the agent");
    let _agent = Agent(child);
    let second = std::time::Duration::from_secs(1);
    assert!(
        within(std::time::Duration::from_secs(5), || has_route(
            &n1.host,
            "10.244.2.0/24"
        )),
        "peer b never programmed"
    );

    write(json!([b, c]));
    assert!(
        within(second, || has_route(&n1.host, "10.244.3.0/24")),
        "peer c not programmed within a second"
    );
    let fdb = n1
        .host
        .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
    assert!(fdb.contains("dst 192.168.77.3"), "{fdb}");

    write(json!([c]));
    assert!(
        within(second, || !has_route(&n1.host, "10.244.2.0/24")),
        "peer b not forgotten within a second"
    );
    let fdb = n1
        .host
        .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
    assert!(!fdb.contains("dst 192.168.77.2"), "{fdb}");
    let neigh = n1.host.exec_ok(&["ip", "neigh", "show", "dev", "berth.42"]);
    assert!(!neigh.contains("10.244.2.0"), "{neigh}");
    assert!(has_route(&n1.host, "10.244.3.0/24"));
}

/// `berth ARGS` in node `n`'s namespace, on its run and data dirs (no
/// berthd's); its stdout, after it succeeded.
fn berth_on(n: &Node, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", n.host.name(), "env"])
        .arg(format!("BERTH_RUN_DIR={}", n.run.path().display()))
        .arg(bin("berth"))
        .args(args)
        .arg("--data-dir")
        .arg(n.data.path())
        .arg("--engine-state")
        .arg(n.run.path().join("engine"))
        .output()
        .expect("run berth");
    assert!(
        out.status.success(),
        "berth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn berth_status(n: &Node) -> Value {
    let st: Value = serde_json::from_str(&berth_on(n, &["status", "-o", "json"])).unwrap();
    assert_eq!(st["problems"], json!([]), "{st:#}");
    st
}

fn etcd_conf(n: &Node, node: &str, name: &str) -> Value {
    etcd_conf_with(n, node, name, json!({}))
}

/// `etcd_conf` with more `store.etcd` keys.
fn etcd_conf_with(n: &Node, node: &str, name: &str, etcd_extra: Value) -> Value {
    let mut etcd = json!({"endpoints": ["http://192.168.77.1:2379"], "prefix": "/berth-test"});
    for (k, v) in etcd_extra.as_object().unwrap() {
        etcd[k] = v.clone();
    }
    n.conf(json!({"name": name, "node": node, "store": {"etcd": etcd}}))
}

fn start_agent(n: &Node, conf: &Value) -> Agent {
    let file = n.run.path().join("overlay-etcd.conf");
    std::fs::write(&file, serde_json::to_vec(conf).unwrap()).unwrap();
    let env_run = format!("BERTH_RUN_DIR={}", n.run.path().display());
    Agent(
        std::process::Command::new("ip")
            .args(["netns", "exec", n.host.name(), "env", &env_run])
            .arg(bin("berth-overlay"))
            .args(["agent", "--conf"])
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the agent"),
    )
}

/// With etcd: each node's agent leases a subnet and programs the other
/// node; containers on the two hosts talk; with etcd gone their traffic
/// keeps flowing, an ADD on the node whose agent just renewed its lease
/// works, one that needs a lease fails with code 11 within seconds, and
/// STATUS is fine for a node holding a lease and 50 for one without; etcd
/// back, that ADD works.
#[test]
fn etcd_store_leases_subnets_and_survives_an_outage() {
    let (n1, n2) = two_nodes("ove");
    let mut etcd = Etcd::start(&n1.host, "192.168.77.1");
    let (conf1, conf2) = (etcd_conf(&n1, "h1", "ovet"), etcd_conf(&n2, "h2", "ovet"));
    let _a1 = start_agent(&n1, &conf1);
    let _a2 = start_agent(&n2, &conf2);
    let five = std::time::Duration::from_secs(10);
    let routes_to_peer = |n: &Node| {
        let out = n.host.exec(&["ip", "route", "show", "dev", "berth.42"]);
        out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(
        within(five, || routes_to_peer(&n1) && routes_to_peer(&n2)),
        "agents did not program each other"
    );

    let (c1, c2) = (TestNetns::new("ovec1"), TestNetns::new("ovec2"));
    let r1 = n1.exec("ADD", "c1", &c1, &conf1).expect_ok().clone();
    let r2 = n2.exec("ADD", "c2", &c2, &conf2).expect_ok().clone();
    let (ip1, ip2) = (first_ip(&r1), first_ip(&r2));
    assert_ne!(
        ip1.rsplit_once('.').unwrap().0,
        ip2.rsplit_once('.').unwrap().0,
        "both nodes got the same subnet"
    );
    assert_ping(&c1, &ip2);
    assert_ping(&c2, &ip1);

    // `berth status` on host 1: its lease (subnet, TTL left) and its peer,
    // as its agent recorded them; the metrics say the same.
    let slash24 = |ip: &str| format!("{}.0/24", ip.rsplit_once('.').unwrap().0);
    let st = berth_status(&n1);
    let net = status_network(&st, "ovet");
    let o = &net["overlay"];
    assert_eq!(o["node"], "h1", "{o:#}");
    assert_eq!(o["subnet"], slash24(&ip1), "{o:#}");
    assert_eq!(o["store"], "etcd", "{o:#}");
    assert_eq!(o["agentRunning"], true, "{o:#}");
    let ttl = o["leaseTTL"].as_u64().unwrap();
    let left = o["ttlLeft"].as_u64().unwrap();
    assert!(left > 0 && left <= ttl, "{o:#}");
    let peers = o["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{o:#}");
    assert_eq!(peers[0]["node"], "h2");
    assert_eq!(peers[0]["subnet"], slash24(&ip2));
    let c1_attachment = &net["attachments"][0];
    assert_eq!(c1_attachment["containerID"], "c1", "{net:#}");
    assert_eq!(c1_attachment["state"], "live", "{net:#}");
    let metrics = berth_on(&n1, &["metrics", "--volumes-root", "/nonexistent"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"berth_overlay_peers{network="ovet"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"berth_overlay_lease_ttl_left_seconds{network="ovet"} "#)),
        "{metrics}"
    );

    etcd.stop();
    assert_ping(&c1, &ip2);
    // The agent renewed the node's lease moments ago (its record says so):
    // an ADD goes on without etcd.
    let c3 = TestNetns::new("ovec3");
    n1.exec("ADD", "c3", &c3, &conf1).expect_ok();
    assert_ping(&c3, &ip2);
    // A network this node holds no lease of cannot get one: code 11
    // within seconds, nothing made.
    let mut nolease = etcd_conf(&n1, "h1", "ovenolease");
    nolease["vni"] = json!(43);
    nolease["network"] = json!("10.245.0.0/16");
    let c4 = TestNetns::new("ovec4");
    let started = std::time::Instant::now();
    n1.exec("ADD", "c4", &c4, &nolease).expect_error(11);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "ADD hung {:?}",
        started.elapsed()
    );
    n1.exec("STATUS", "", &c3, &conf1).assert_ok();
    n1.exec("STATUS", "", &c4, &nolease).expect_error(50);

    etcd.spawn();
    assert!(
        within(five, || n1.exec("ADD", "c4", &c4, &nolease).success()),
        "ADD does not work again after etcd came back"
    );
    for (n, c, cid, conf) in [
        (&n1, &c1, "c1", &conf1),
        (&n2, &c2, "c2", &conf2),
        (&n1, &c3, "c3", &conf1),
        (&n1, &c4, "c4", &nolease),
    ] {
        n.exec("DEL", cid, c, conf).assert_ok();
    }
}

/// A host of the multi-host test: its namespace (underlay address
/// 192.168.77.<n> on a port of a switch namespace), run and IPAM dirs.
fn switched_node(tag: &str, switch: &TestNetns, n: u8) -> Node {
    let host = TestNetns::new(&format!("{tag}{n}"));
    switch.sh(&format!(
        "ip link add p{n} type veth peer name ovu netns {} && ip link set p{n} master sw0 up",
        host.name()
    ));
    host.sh(&format!(
        "ip link set lo up && ip addr add 192.168.77.{n}/24 dev ovu && ip link set ovu up"
    ));
    Node {
        host,
        run: TempDir::new(&format!("{tag}-run{n}")),
        data: TempDir::new(&format!("{tag}-data{n}")),
        subnet: "10.244.9.0/24", // unused with etcd
        peer: ("192.168.77.254", "10.244.9.0/24"),
    }
}

/// Three hosts on one underlay switch with etcd: containers on A reach
/// containers on B and C; a fourth host joins and becomes reachable
/// without restarting anything; a host leaves (its agent stopped and its
/// lease deleted) and its peer entries disappear from the others within a
/// second.
#[test]
fn hosts_join_and_leave_through_etcd() {
    require_root();
    let switch = TestNetns::new("ovxs");
    switch.sh("ip link add sw0 type bridge && ip link set sw0 up");
    let nodes: Vec<Node> = (1..=4).map(|n| switched_node("ovx", &switch, n)).collect();
    let mut etcd = Etcd::start(&nodes[0].host, "192.168.77.1");
    let confs: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| etcd_conf(n, &format!("x{}", i + 1), "ovx"))
        .collect();
    let mut agents: Vec<Option<Agent>> = nodes[..3]
        .iter()
        .zip(&confs)
        .map(|(n, c)| Some(start_agent(n, c)))
        .collect();
    let ten = std::time::Duration::from_secs(10);
    let routes = |n: &Node| {
        let out = n.host.exec(&["ip", "route", "show", "dev", "berth.42"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("onlink"))
            .count()
    };
    assert!(
        within(ten, || nodes[..3].iter().all(|n| routes(n) == 2)),
        "the three agents did not program each other"
    );

    let cs: Vec<TestNetns> = (1..=4)
        .map(|i| TestNetns::new(&format!("ovxc{i}")))
        .collect();
    let mut ips = Vec::new();
    for i in 0..3 {
        let r = nodes[i]
            .exec("ADD", &format!("x{i}"), &cs[i], &confs[i])
            .expect_ok()
            .clone();
        ips.push(first_ip(&r));
    }
    assert_ping(&cs[0], &ips[1]);
    assert_ping(&cs[0], &ips[2]);

    // A fourth host joins: nothing else restarts.
    agents.push(Some(start_agent(&nodes[3], &confs[3])));
    assert!(
        within(ten, || routes(&nodes[3]) == 3),
        "the new host did not learn the others"
    );
    let r = nodes[3]
        .exec("ADD", "x3", &cs[3], &confs[3])
        .expect_ok()
        .clone();
    ips.push(first_ip(&r));
    assert!(
        within(std::time::Duration::from_secs(2), || routes(&nodes[0]) == 3),
        "host A did not learn the new host within 2 s"
    );
    assert_ping(&cs[0], &ips[3]);

    // Host C leaves: its agent stops and its lease goes.
    agents[2] = None;
    let subnet_c = format!(
        "{}-24",
        ips[2].rsplit_once('.').unwrap().0.to_string() + ".0"
    );
    let deleted = nodes[0].host.exec(&[
        "env",
        "ETCDCTL_API=3",
        "etcdctl",
        "--endpoints",
        "http://192.168.77.1:2379",
        "del",
        &format!("/berth-test/ovx/subnets/{subnet_c}"),
    ]);
    assert!(
        deleted.status.success(),
        "etcdctl del: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let second = std::time::Duration::from_secs(1);
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != 2) {
        assert!(
            within(second, || routes(n) == 2),
            "host {i} still has host C's entries after a second"
        );
        let fdb = n
            .host
            .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
        assert!(!fdb.contains("dst 192.168.77.3"), "host {i}: {fdb}");
    }
    drop(agents);
    etcd.stop();
}

/// Leases end three ways: a host stopped cleanly gives its subnet back at
/// once and gets the same one when it returns; a host that dies keeps its
/// peers' entries until its lease's TTL runs out, then loses them. And a
/// lease is never taken from another node: not by a second host under the
/// same node name, not by asking for a subnet another node holds.
#[test]
fn leases_are_released_on_stop_and_expire_after_death() {
    let (n1, n2) = two_nodes("ovl");
    let _etcd = Etcd::start(&n1.host, "192.168.77.1");
    let ttl = json!({"leaseTTL": 3});
    let (conf1, conf2) = (
        etcd_conf_with(&n1, "l1", "ovl", ttl.clone()),
        etcd_conf_with(&n2, "l2", "ovl", ttl.clone()),
    );
    let _a1 = start_agent(&n1, &conf1);
    let mut a2 = start_agent(&n2, &conf2);
    let ten = std::time::Duration::from_secs(10);
    let cached =
        |n: &Node| std::fs::read_to_string(n.run.path().join("ovl.subnet")).unwrap_or_default();
    assert!(
        within(ten, || !cached(&n1).is_empty() && !cached(&n2).is_empty()),
        "the agents took no subnets"
    );
    let (s1, s2) = (cached(&n1), cached(&n2));
    assert!(
        within(ten, || has_route(&n1.host, &s2) && has_route(&n2.host, &s1)),
        "the agents did not program each other"
    );

    // Not from another node: the same name from another underlay address,
    // or a subnet another node holds.
    let c = TestNetns::new("ovlc");
    let err = n2
        .exec(
            "ADD",
            "c1",
            &c,
            &etcd_conf_with(&n2, "l1", "ovl", ttl.clone()),
        )
        .expect_error(7)
        .clone();
    assert!(
        err["msg"].as_str().unwrap().contains("node")
            && err["msg"].as_str().unwrap().contains("192.168.77.1"),
        "{err}"
    );
    let err = n2
        .exec(
            "ADD",
            "c1",
            &c,
            &etcd_conf_with(&n2, "l3", "ovl", json!({"leaseTTL": 3, "subnet": s1})),
        )
        .expect_error(7)
        .clone();
    assert!(
        err["msg"].as_str().unwrap().contains("store.etcd.subnet")
            && err["msg"].as_str().unwrap().contains("l1"),
        "{err}"
    );
    // A second node name on one host would share its VTEP.
    let err = n2
        .exec(
            "ADD",
            "c1",
            &c,
            &etcd_conf_with(&n2, "l3", "ovl", ttl.clone()),
        )
        .expect_error(7)
        .clone();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("one node name per host"),
        "{err}"
    );
    assert!(c
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "eth0"));

    // Renewals keep each node's one lease alive; they make no new ones.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let leases = n1.host.exec_ok(&[
        "env",
        "ETCDCTL_API=3",
        "etcdctl",
        "--endpoints",
        "http://192.168.77.1:2379",
        "lease",
        "list",
    ]);
    assert!(leases.starts_with("found 2 leases"), "{leases}");

    // A clean stop gives the lease back: host 1 forgets host 2 at once.
    a2.terminate();
    let second = std::time::Duration::from_secs(1);
    assert!(
        within(second, || !has_route(&n1.host, &s2)),
        "host 2's lease outlived its clean stop by a second"
    );
    // Back again: the same subnet as before.
    let mut a2 = start_agent(&n2, &conf2);
    assert!(
        within(std::time::Duration::from_secs(3), || has_route(
            &n1.host, &s2
        )),
        "host 2 did not come back with {s2}"
    );

    // Death (SIGKILL): the entries stay while the lease lives, then go.
    let _ = a2.0.kill();
    let _ = a2.0.wait();
    let killed = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        has_route(&n1.host, &s2),
        "host 2 forgotten before its lease could expire"
    );
    assert!(
        within(std::time::Duration::from_secs(6), || !has_route(
            &n1.host, &s2
        )),
        "host 2's lease did not expire"
    );
    let gone = killed.elapsed();
    assert!(
        gone >= std::time::Duration::from_secs(1),
        "forgotten after {gone:?}, before any lease of 3 s could end"
    );
    let fdb = n1
        .host
        .exec_ok(&["bridge", "fdb", "show", "dev", "berth.42"]);
    assert!(!fdb.contains("dst 192.168.77.2"), "{fdb}");
}

/// ADDs racing on a node that holds no lease yet (the agent and the first
/// containers start together) take one subnet between them, not one each.
#[test]
fn racing_claims_on_one_node_take_one_subnet() {
    let (n1, _n2) = two_nodes("ovr");
    let _etcd = Etcd::start(&n1.host, "192.168.77.1");
    let conf = etcd_conf(&n1, "r1", "ovr");
    let cs: Vec<TestNetns> = (0..4)
        .map(|i| TestNetns::new(&format!("ovrc{i}")))
        .collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (n, conf) = (&n1, &conf);
                s.spawn(move || {
                    let cid = format!("r{i}");
                    // etcd may still be starting: ADD answers 11 until then.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    loop {
                        let out = n.exec("ADD", &cid, c, conf);
                        if out.success() || std::time::Instant::now() > deadline {
                            return first_ip(out.expect_ok());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let nets: std::collections::BTreeSet<&str> = ips
        .iter()
        .map(|ip| ip.rsplit_once('.').unwrap().0)
        .collect();
    assert_eq!(
        nets.len(),
        1,
        "the node's containers got addresses of {nets:?}"
    );
    let keys = n1.host.exec_ok(&[
        "env",
        "ETCDCTL_API=3",
        "etcdctl",
        "--endpoints",
        "http://192.168.77.1:2379",
        "get",
        "--prefix",
        "--keys-only",
        "/berth-test/ovr/subnets/",
    ]);
    assert_eq!(
        keys.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "leases: {keys}"
    );
    for (i, c) in cs.iter().enumerate() {
        n1.exec("DEL", &format!("r{i}"), c, &conf).assert_ok();
    }
}
