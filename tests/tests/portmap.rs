//! berth-portmap chained after berth-bridge, in real namespaces (root).
//!
//! Each test builds a private "host" namespace (the plugins run there, so
//! its bridge and `inet berth` table are the test's own) joined by a veth
//! to an "outside" namespace standing for another machine. Services run
//! in container namespaces; every connection goes between namespaces the
//! test made. Deleting the namespaces removes whatever a failed test left.

use std::net::{IpAddr, SocketAddr};

use berth_tests::*;
use serde_json::{json, Value};

struct Fx {
    host: TestNetns,
    outside: TestNetns,
    name: String,
    run: TempDir,
    data: TempDir,
    /// The host's and the outside's addresses on the link between them.
    host_v4: IpAddr,
    host_v6: IpAddr,
    out_v4: IpAddr,
    out_v6: IpAddr,
    subnet_v4: String,
    subnet_v6: String,
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

impl Fx {
    fn new(tag: &str) -> Fx {
        require_root();
        let host = TestNetns::new(&format!("{tag}h"));
        let outside = TestNetns::new(&format!("{tag}o"));
        let OutsideLink {
            host_v4,
            host_v6,
            out_v4,
            out_v6,
        } = link_outside(&host, &outside);
        let (subnet_v4, subnet_v6) = unique_subnets();
        Fx {
            host,
            outside,
            name: format!("pmt{}-{}", std::process::id(), next_id()),
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
            host_v4,
            host_v6,
            out_v4,
            out_v6,
            subnet_v4,
            subnet_v6,
        }
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        cid: &str,
        ns: &TestNetns,
        conf: &Value,
    ) -> PluginOutput {
        run_cni_in(&self.host, plugin, command, cid, ns, self.run.path(), conf)
    }

    fn bridge_conf(&self) -> Value {
        self.network_conf(&self.name, "pmbr0", &self.subnet_v4, &self.subnet_v6)
    }

    /// A berth-bridge network in the host namespace.
    fn network_conf(&self, name: &str, bridge: &str, v4: &str, v6: &str) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": name, "type": "berth-bridge", "bridge": bridge,
            "isGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "berth-ipam", "dataDir": self.data.path(),
                     "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
        })
    }

    fn portmap_conf(&self, mappings: Value, extra: Value, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": self.name, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings}
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// A container on the bridge: its namespace and berth-bridge's result.
    fn container(&self, cid: &str) -> (TestNetns, Value) {
        self.container_on(cid, &self.bridge_conf())
    }

    /// A container on the berth-bridge network `conf`.
    fn container_on(&self, cid: &str, conf: &Value) -> (TestNetns, Value) {
        let ns = TestNetns::new(cid);
        ns.sh("ip link set lo up");
        let out = self.exec("berth-bridge", "ADD", cid, &ns, conf);
        let result = out.expect_ok().clone();
        (ns, result)
    }

    fn publish(&self, cid: &str, ns: &TestNetns, prev: &Value, mappings: Value) -> PluginOutput {
        self.exec(
            "berth-portmap",
            "ADD",
            cid,
            ns,
            &self.portmap_conf(mappings, json!({}), Some(prev)),
        )
    }

    fn portmap(&self, command: &str, cid: &str, ns: &TestNetns, conf: &Value) -> PluginOutput {
        self.exec("berth-portmap", command, cid, ns, conf)
    }

    /// The host's `inet berth` table as text ("" when there is none).
    fn table(&self) -> String {
        self.host
            .sh("nft list table inet berth 2>/dev/null || true")
    }

    fn gateway_v4(&self) -> IpAddr {
        subnet_host(&self.subnet_v4, 1)
    }

    fn gateway_v6(&self) -> IpAddr {
        subnet_host(&self.subnet_v6, 1)
    }
}

/// The portmap objects (chains, sets, maps named pm...) in a listing.
fn portmap_objects(table: &str) -> Vec<String> {
    table
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["chain pm", "set pm", "map pm"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(String::from)
        .collect()
}

/// A TCP and a UDP service in a container answer on the published ports
/// from another machine (both families), from the host via 127.0.0.1, ::1
/// and its own address, and from a sibling on the bridge and the container
/// itself via the host's address. The source address the service sees is
/// the one plugins/portmap/README.md documents. After DEL nothing answers and no portmap
/// object is left.
#[test]
fn published_ports_answer_from_everywhere_until_del() {
    let fx = Fx::new("pmall");
    let (c1, r1) = fx.container("pmc1");
    let (c2, _r2) = fx.container("pmc2");
    let _svc = PeerEcho::start(&c1, 80, 53);
    let maps = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                      {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]);
    let conf = fx.portmap_conf(maps.clone(), json!({}), Some(&r1));
    let out = fx.portmap("ADD", "pmc1", &c1, &conf);
    // The result is the previous plugin's, passed through.
    assert_eq!(out.expect_ok()["ips"], r1["ips"]);

    // Another machine: no source NAT, over IPv4 and IPv6, TCP and UDP.
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8080)),
        echo_peer(fx.out_v4)
    );
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v6, 8080)),
        echo_peer(fx.out_v6)
    );
    let (reply, from) = udp_ask(&fx.outside, at(fx.host_v4, 5353)).expect("udp over ipv4");
    assert_eq!(
        (reply, from),
        (format!("peer={}", fx.out_v4), at(fx.host_v4, 5353))
    );
    let (reply, _) = udp_ask(&fx.outside, at(fx.host_v6, 5353)).expect("udp over ipv6");
    assert_eq!(reply, format!("peer={}", fx.out_v6));

    // The host: via loopback the source is masqueraded to the bridge's
    // address; via its own address it is that address.
    assert_eq!(
        tcp_ask(&fx.host, at("127.0.0.1".parse().unwrap(), 8080)),
        echo_peer(fx.gateway_v4())
    );
    assert_eq!(
        tcp_ask(&fx.host, at(fx.host_v4, 8080)),
        echo_peer(fx.host_v4)
    );
    // Via ::1 a proxy relays (IPv6 has no route_localnet): the service
    // sees the bridge's IPv6 address.
    let lo6: IpAddr = "::1".parse().unwrap();
    assert_eq!(tcp_ask(&fx.host, at(lo6, 8080)), echo_peer(fx.gateway_v6()));
    assert_eq!(
        udp_ask(&fx.host, at(lo6, 5353)).map(|r| r.0),
        Ok(format!("peer={}", fx.gateway_v6()))
    );

    // Hairpin: a sibling, and the container itself, via the host address;
    // masqueraded to the bridge's address so replies come back through
    // the NAT.
    assert_eq!(
        tcp_ask(&c2, at(fx.host_v4, 8080)),
        echo_peer(fx.gateway_v4())
    );
    assert_eq!(
        udp_ask(&c2, at(fx.host_v4, 5353)).map(|r| r.0),
        Ok(format!("peer={}", fx.gateway_v4()))
    );
    assert_eq!(
        tcp_ask(&c1, at(fx.host_v4, 8080)),
        echo_peer(fx.gateway_v4())
    );

    let check = fx.portmap("CHECK", "pmc1", &c1, &conf);
    check.assert_ok();

    // DEL needs no netns and no mappings: the record says what to remove.
    let del_conf = fx.portmap_conf(json!([]), json!({}), None);
    fx.portmap("DEL", "pmc1", &c1, &del_conf).assert_ok();
    assert!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8080)).is_err(),
        "still answering after DEL"
    );
    assert!(
        udp_ask(&fx.outside, at(fx.host_v4, 5353)).is_err(),
        "udp still answering after DEL"
    );
    assert!(tcp_ask(&fx.host, at("127.0.0.1".parse().unwrap(), 8080)).is_err());
    assert!(
        tcp_ask(&fx.host, at(lo6, 8080)).is_err(),
        "the ::1 proxy outlived DEL"
    );
    assert!(
        udp_ask(&fx.host, at(lo6, 5353)).is_err(),
        "the ::1 udp proxy outlived DEL"
    );
    let table = fx.table();
    assert_eq!(
        portmap_objects(&table),
        Vec::<String>::new(),
        "portmap objects left after the last DEL:\n{table}"
    );
    // Idempotent.
    fx.portmap("DEL", "pmc1", &c1, &del_conf).assert_ok();
    // The bridge's own rules are untouched.
    assert!(table.contains("masq4-"), "{table}");
}

/// DEL works after the container's namespace is gone.
#[test]
fn del_without_netns() {
    let fx = Fx::new("pmdelns");
    let (c1, r1) = fx.container("pmd1");
    fx.publish(
        "pmd1",
        &c1,
        &r1,
        json!([{"hostPort": 8081, "containerPort": 80}]),
    )
    .assert_ok();
    assert!(fx.table().contains("tcp . 8081"));
    let path = c1.path_str().to_string();
    let cni_path = bin_dir().to_str().unwrap().to_string();
    drop(c1);
    let env = [
        ("CNI_CONTAINERID", "pmd1"),
        ("CNI_NETNS", path.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path.as_str()),
        ("BERTH_RUN_DIR", fx.run.path().to_str().unwrap()),
    ];
    let conf = fx.portmap_conf(json!([]), json!({}), None);
    run_plugin_in(&fx.host, &bin("berth-portmap"), "DEL", &env, &conf).assert_ok();
    let env_no_netns = [env[0], env[2], env[3], env[4]];
    run_plugin_in(&fx.host, &bin("berth-portmap"), "DEL", &env_no_netns, &conf).assert_ok();
    assert_eq!(portmap_objects(&fx.table()), Vec::<String>::new());
}

/// A host port another container publishes is refused, naming it, and
/// nothing of the refused request is installed; other ports, protocols
/// and a freed port are fine.
#[test]
fn conflicts_name_the_holder() {
    let fx = Fx::new("pmconf");
    let (c1, r1) = fx.container("pmk1");
    let (c2, r2) = fx.container("pmk2");
    fx.publish(
        "pmk1",
        &c1,
        &r1,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    )
    .assert_ok();
    let before = fx.table();
    for maps in [
        json!([{"hostPort": 9090, "containerPort": 80}, {"hostPort": 8080, "containerPort": 80}]),
        json!([{"hostPort": 8080, "containerPort": 80, "hostIP": fx.host_v4.to_string()}]),
    ] {
        let out = fx.publish("pmk2", &c2, &r2, maps.clone());
        let err = out.expect_error(103);
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("pmk1") && msg.contains("8080"),
            "{maps}: {msg}"
        );
        assert_eq!(
            fx.table(),
            before,
            "{maps}: the refused request changed the ruleset"
        );
    }
    fx.publish(
        "pmk2",
        &c2,
        &r2,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]),
    )
    .assert_ok();
    fx.portmap(
        "DEL",
        "pmk1",
        &c1,
        &fx.portmap_conf(json!([]), json!({}), None),
    )
    .assert_ok();
    fx.publish(
        "pmk2",
        &c2,
        &r2,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    )
    .assert_ok();
    let _svc = PeerEcho::start(&c2, 80, 53);
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8080)),
        echo_peer(fx.out_v4)
    );
}

/// hostIP restricts a mapping to one of the host's addresses.
#[test]
fn host_ip_restricts_the_mapping() {
    let fx = Fx::new("pmhip");
    let second = match fx.host_v4 {
        IpAddr::V4(a) => IpAddr::from([a.octets()[0], a.octets()[1], a.octets()[2], 3]),
        _ => unreachable!(),
    };
    fx.host.sh(&format!("ip addr add {second}/24 dev up0"));
    let (c1, r1) = fx.container("pmh1");
    let _svc = PeerEcho::start(&c1, 80, 53);
    fx.publish(
        "pmh1",
        &c1,
        &r1,
        json!([{"hostPort": 8082, "containerPort": 80, "hostIP": second.to_string()}]),
    )
    .assert_ok();
    assert_eq!(tcp_ask(&fx.outside, at(second, 8082)), echo_peer(fx.out_v4));
    assert!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8082)).is_err(),
        "answered on another host address"
    );
    // An IPv4 hostIP does not publish over IPv6.
    assert!(
        tcp_ask(&fx.outside, at(fx.host_v6, 8082)).is_err(),
        "answered over IPv6"
    );
}

/// Bad input: a clear error with code 7 naming the field, and nothing
/// changed (no rule, element or record).
#[test]
fn bad_input_changes_nothing() {
    let fx = Fx::new("pmbad");
    let (c1, r1) = fx.container("pmb1");
    let before = fx.table();
    let m = |v: Value| json!([v]);
    let cases: Vec<(Value, Value, Option<&Value>, &str)> = vec![
        (
            m(json!({"hostPort": 0, "containerPort": 80})),
            json!({}),
            Some(&r1),
            "hostPort",
        ),
        (
            m(json!({"hostPort": 65536, "containerPort": 80})),
            json!({}),
            Some(&r1),
            "hostPort",
        ),
        (
            m(json!({"hostPort": 8080})),
            json!({}),
            Some(&r1),
            "containerPort",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"})),
            json!({}),
            Some(&r1),
            "protocol",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.77"})),
            json!({}),
            Some(&r1),
            "hostIP",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80})),
            json!({}),
            None,
            "prevResult",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80})),
            json!({"markMasqBit": 32}),
            Some(&r1),
            "markMasqBit",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80})),
            json!({"externalSetMarkChain": "KUBE-MARK-MASQ"}),
            Some(&r1),
            "externalSetMarkChain",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80})),
            json!({"conditionsV4": ["-s", "192.0.2.0/24"]}),
            Some(&r1),
            "conditionsV4",
        ),
        (
            m(json!({"hostPort": 8080, "containerPort": 80})),
            json!({"conditionsV4": ["ip saddr 1.2.3.4; flush ruleset"]}),
            Some(&r1),
            "conditionsV4",
        ),
    ];
    for (maps, extra, prev, field) in cases {
        let conf = fx.portmap_conf(maps.clone(), extra.clone(), prev);
        let out = fx.portmap("ADD", "pmb1", &c1, &conf);
        let err = out.expect_error(7);
        assert!(
            err["msg"].as_str().unwrap().contains(field),
            "{maps} {extra}: {err}"
        );
        assert_eq!(fx.table(), before, "{maps} {extra}: changed the ruleset");
        // No record either: CHECK finds nothing published.
        let check = fx.portmap(
            "CHECK",
            "pmb1",
            &c1,
            &fx.portmap_conf(
                json!([{"hostPort": 8080, "containerPort": 80}]),
                json!({}),
                Some(&r1),
            ),
        );
        check.expect_error(107);
    }
}

/// CHECK notices an element removed behind berth's back; GC removes the
/// mappings of attachments that are no longer valid and keeps the others.
#[test]
fn check_and_gc() {
    let fx = Fx::new("pmgc");
    let (c1, r1) = fx.container("pmg1");
    let (c2, r2) = fx.container("pmg2");
    let maps1 = json!([{"hostPort": 8083, "containerPort": 80}]);
    fx.publish("pmg1", &c1, &r1, maps1.clone()).assert_ok();
    fx.publish(
        "pmg2",
        &c2,
        &r2,
        json!([{"hostPort": 8084, "containerPort": 80}]),
    )
    .assert_ok();
    let conf1 = fx.portmap_conf(maps1.clone(), json!({}), Some(&r1));
    fx.portmap("CHECK", "pmg1", &c1, &conf1).assert_ok();
    // Other mappings than the recorded ones: CHECK says so.
    let other = fx.portmap_conf(
        json!([{"hostPort": 8085, "containerPort": 80}]),
        json!({}),
        Some(&r1),
    );
    fx.portmap("CHECK", "pmg1", &c1, &other).expect_error(107);

    fx.host
        .sh("nft delete element inet berth pm4-d '{ tcp . 8083 }'");
    let err = fx
        .portmap("CHECK", "pmg1", &c1, &conf1)
        .expect_error(107)
        .clone();
    assert!(err["msg"].as_str().unwrap().contains("tcp . 8083"), "{err}");

    let mut gc = fx.portmap_conf(json!([]), json!({}), None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "pmg2", "ifname": "eth0"}]);
    fx.portmap("GC", "pmg1", &c1, &gc).assert_ok();
    let table = fx.table();
    assert!(
        !table.contains("8083") && table.contains("tcp . 8084"),
        "{table}"
    );
    let c1_v6 = result_address(&r1, false).to_string();
    assert!(!table.contains(&c1_v6), "{table}");
    // The ::1 relays: GC stopped pmg1's; CHECK notices pmg2's is gone.
    let relay = |port: u16| format!("berth-portmap proxy --owner .* tcp:\\[::1\\]:{port}=");
    assert!(
        !run("pgrep", &["-f", &relay(8083)]).status.success(),
        "pmg1's ::1 relay outlived GC"
    );
    let conf2 = fx.portmap_conf(
        json!([{"hostPort": 8084, "containerPort": 80}]),
        json!({}),
        Some(&r2),
    );
    fx.portmap("CHECK", "pmg2", &c2, &conf2).assert_ok();
    assert!(
        run("pkill", &["-KILL", "-f", &relay(8084)])
            .status
            .success(),
        "no ::1 relay for pmg2"
    );
    let err = fx
        .portmap("CHECK", "pmg2", &c2, &conf2)
        .expect_error(107)
        .clone();
    assert!(err["msg"].as_str().unwrap().contains("::1 relay"), "{err}");
    gc["cni.dev/valid-attachments"] = json!([]);
    fx.portmap("GC", "pmg1", &c1, &gc).assert_ok();
    assert_eq!(portmap_objects(&fx.table()), Vec::<String>::new());
}

/// conditionsV4 apply to the mappings of the config they came with only,
/// and the mappings of another config on the same host are unaffected.
#[test]
fn conditions_apply_to_their_own_mappings() {
    let fx = Fx::new("pmcond");
    let (c1, r1) = fx.container("pmq1");
    let (c2, r2) = fx.container("pmq2");
    let _s1 = PeerEcho::start(&c1, 80, 53);
    let _s2 = PeerEcho::start(&c2, 80, 53);
    let cond = json!({"conditionsV4": [format!("ip saddr != {}", fx.out_v4)]});
    let conf = fx.portmap_conf(
        json!([{"hostPort": 8086, "containerPort": 80}]),
        cond,
        Some(&r1),
    );
    fx.portmap("ADD", "pmq1", &c1, &conf).assert_ok();
    fx.publish(
        "pmq2",
        &c2,
        &r2,
        json!([{"hostPort": 8087, "containerPort": 80}]),
    )
    .assert_ok();
    assert!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8086)).is_err(),
        "condition ignored"
    );
    assert_eq!(
        tcp_ask(&fx.host, at("127.0.0.1".parse().unwrap(), 8086)),
        echo_peer(fx.gateway_v4())
    );
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8087)),
        echo_peer(fx.out_v4)
    );
    // No conditionsV6: IPv6 still answers.
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v6, 8086)),
        echo_peer(fx.out_v6)
    );
    fx.portmap("CHECK", "pmq1", &c1, &conf).assert_ok();
}

/// With a user's own forward chain dropping by default, the one exception
/// plugins/portmap/README.md documents (accept berth's mark) is enough.
#[test]
fn coexists_with_a_policy_drop_forward_chain() {
    let fx = Fx::new("pmdrop");
    fx.host.sh(&format!(
        "nft add table inet usr && \
         nft add chain inet usr forward_usr '{{ type filter hook forward priority 0; policy drop; }}' && \
         nft add rule inet usr forward_usr meta mark and {mark:#x} == {mark:#x} accept",
        mark = 0x4000_0000u32
    ));
    let (c1, r1) = fx.container("pmp1");
    let _svc = PeerEcho::start(&c1, 80, 53);
    fx.publish("pmp1", &c1, &r1, json!([{"hostPort": 8088, "containerPort": 80}, {"hostPort": 5354, "containerPort": 53, "protocol": "udp"}]))
        .assert_ok();
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8088)),
        echo_peer(fx.out_v4)
    );
    assert_eq!(
        udp_ask(&fx.outside, at(fx.host_v4, 5354)).map(|r| r.0),
        Ok(format!("peer={}", fx.out_v4))
    );
    // The user's table is left as it was.
    assert!(fx
        .host
        .sh("nft list table inet usr")
        .contains("policy drop"));
}

/// The `inet berth` table removed behind berth's back (a firewall reload
/// flushing the ruleset): the next ADD rebuilds it with every recorded
/// container's ports, and DELs still succeed.
#[test]
fn next_add_restores_a_flushed_ruleset() {
    let fx = Fx::new("pmflush");
    let (c1, r1) = fx.container("pmf1");
    let (c2, r2) = fx.container("pmf2");
    let _svc = PeerEcho::start(&c1, 80, 53);
    fx.publish(
        "pmf1",
        &c1,
        &r1,
        json!([{"hostPort": 8089, "containerPort": 80}]),
    )
    .assert_ok();
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8089)),
        echo_peer(fx.out_v4)
    );
    fx.host.sh("nft delete table inet berth");
    assert!(tcp_ask(&fx.outside, at(fx.host_v4, 8089)).is_err());
    let conf1 = fx.portmap_conf(
        json!([{"hostPort": 8089, "containerPort": 80}]),
        json!({}),
        Some(&r1),
    );
    fx.portmap("CHECK", "pmf1", &c1, &conf1).expect_error(107);

    fx.publish(
        "pmf2",
        &c2,
        &r2,
        json!([{"hostPort": 8090, "containerPort": 80}]),
    )
    .assert_ok();
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8089)),
        echo_peer(fx.out_v4)
    );
    fx.portmap("CHECK", "pmf1", &c1, &conf1).assert_ok();

    let del = fx.portmap_conf(json!([]), json!({}), None);
    fx.host.sh("nft delete table inet berth");
    fx.portmap("DEL", "pmf1", &c1, &del).assert_ok();
    fx.portmap("DEL", "pmf2", &c2, &del).assert_ok();
    assert_eq!(portmap_objects(&fx.table()), Vec::<String>::new());
}

/// Containers on two berth bridge networks cannot reach each other (in
/// either direction) unless both networks say `isolation: false`; the same
/// network is unaffected, and a published port stays reachable from the
/// other network through the host's address.
#[test]
fn bridge_networks_are_isolated_unless_configured_otherwise() {
    let fx = Fx::new("pmiso");
    for (isolated, suffix) in [(true, "i"), (false, "o")] {
        let (v4b, v6b) = unique_subnets();
        let mut other = fx.network_conf(
            &format!("{}{suffix}", fx.name),
            &format!("pmbr{suffix}"),
            &v4b,
            &v6b,
        );
        let mut own = fx.bridge_conf();
        if !isolated {
            let (v4a, v6a) = unique_subnets();
            own = fx.network_conf(&format!("{}n", fx.name), "pmbrn", &v4a, &v6a);
            other["isolation"] = json!(false);
            own["isolation"] = json!(false);
        }
        let (a1, ra1) = fx.container_on(&format!("pmia1{suffix}"), &own);
        let (a2, _) = fx.container_on(&format!("pmia2{suffix}"), &own);
        let (b1, rb1) = fx.container_on(&format!("pmib1{suffix}"), &other);
        let _sa = PeerEcho::start(&a1, 80, 53);
        let _sb = PeerEcho::start(&b1, 80, 53);
        let (a1_ip, b1_ip) = (result_address(&ra1, true), result_address(&rb1, true));
        // The same network: unaffected.
        assert!(
            tcp_ask(&a2, at(a1_ip, 80)).is_ok(),
            "isolation {isolated}: same network blocked"
        );
        let across = [tcp_ask(&b1, at(a1_ip, 80)), tcp_ask(&a1, at(b1_ip, 80))];
        for r in &across {
            assert_eq!(
                r.is_err(),
                isolated,
                "isolation {isolated}: across networks {r:?}"
            );
        }
        if isolated {
            let cid = format!("pmia1{suffix}");
            fx.publish(
                &cid,
                &a1,
                &ra1,
                json!([{"hostPort": 8091, "containerPort": 80}]),
            )
            .assert_ok();
            // The client's network masquerades what leaves its subnet
            // (ipMasq), so the service sees the gateway of its own side.
            assert_eq!(
                tcp_ask(&b1, at(fx.host_v4, 8091)),
                echo_peer(fx.gateway_v4()),
                "published port across networks"
            );
        }
    }
}

/// A port range given as consecutive mappings becomes map elements, not
/// rules: the rule set is the same size with 1 and with 101 mappings. With
/// masqAll even another machine's connections are masqueraded.
#[test]
fn port_ranges_are_elements_and_masq_all_masquerades() {
    let fx = Fx::new("pmrange");
    let (c1, r1) = fx.container("pmr1");
    let (c2, r2) = fx.container("pmr2");
    let _s1 = PeerEcho::start(&c1, 80, 53);
    let _s2 = PeerEcho::start(&c2, 80, 53);
    fx.publish(
        "pmr1",
        &c1,
        &r1,
        json!([{"hostPort": 8093, "containerPort": 80}]),
    )
    .assert_ok();
    let rules = |t: &str| {
        t.lines()
            .filter(|l| l.contains("dnat") || l.contains("masquerade") || l.contains("accept"))
            .count()
    };
    let before = fx.table();
    let range: Vec<Value> = (0..100)
        .map(|i| json!({"hostPort": 30000 + i, "containerPort": 80}))
        .collect();
    let conf = fx.portmap_conf(Value::Array(range), json!({"masqAll": true}), Some(&r2));
    fx.portmap("ADD", "pmr2", &c2, &conf).assert_ok();
    let after = fx.table();
    assert_eq!(
        rules(&after),
        rules(&before),
        "mappings added rules:\n{after}"
    );
    assert!(after.contains("tcp . 30099"), "{after}");
    // Both families: 200 elements.
    assert_eq!(after.matches("tcp . 300").count(), 200, "{after}");
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 30042)),
        echo_peer(fx.gateway_v4()),
        "masqAll"
    );
    // Without masqAll, the client's own address.
    assert_eq!(
        tcp_ask(&fx.outside, at(fx.host_v4, 8093)),
        echo_peer(fx.out_v4)
    );
    fx.portmap("CHECK", "pmr2", &c2, &conf).assert_ok();
}

/// A UDP flow that reached the host port before it was published (and so
/// got a conntrack entry without NAT) reaches the container once the port
/// is published: ADD deletes such stale entries.
#[test]
fn udp_flow_started_before_publishing_reaches_the_container() {
    let fx = Fx::new("pmudp");
    let (c1, r1) = fx.container("pmu1");
    let _svc = PeerEcho::start(&c1, 80, 53);
    let target = at(fx.host_v4, 5355);
    // Nothing listens on the host: no answer, but a conntrack entry.
    assert!(udp_ask_from(&fx.outside, 40404, target).is_err());
    fx.publish(
        "pmu1",
        &c1,
        &r1,
        json!([{"hostPort": 5355, "containerPort": 53, "protocol": "udp"}]),
    )
    .assert_ok();
    let (reply, from) =
        udp_ask_from(&fx.outside, 40404, target).expect("the same flow after publishing");
    assert_eq!((reply, from), (format!("peer={}", fx.out_v4), target));
}

/// A port something else already holds on ::1: ADD fails with code 103
/// naming it, and nothing of the ADD stays (no element, no claim: the same
/// port can then be published once it is free).
#[test]
fn a_taken_loopback6_port_is_refused() {
    let fx = Fx::new("pmlo6");
    let (c1, r1) = fx.container("pmlc1");
    let holder = fx
        .host
        .run(|| std::net::TcpListener::bind("[::1]:8095"))
        .expect("listen on [::1]:8095");
    let maps = json!([{"hostPort": 8095, "containerPort": 80, "protocol": "tcp"}]);
    let err = fx
        .publish("pmlc1", &c1, &r1, maps.clone())
        .expect_error(103)
        .clone();
    assert!(err["msg"].as_str().unwrap().contains("::1"), "{err}");
    let table = fx.table();
    assert!(
        !table.contains("8095"),
        "an element of the refused ADD stayed:\n{table}"
    );
    drop(holder);
    let _svc = PeerEcho::start(&c1, 80, 53);
    fx.publish("pmlc1", &c1, &r1, maps).assert_ok();
    assert_eq!(
        tcp_ask(&fx.host, at("::1".parse().unwrap(), 8095)),
        echo_peer(fx.gateway_v6())
    );
    fx.portmap(
        "DEL",
        "pmlc1",
        &c1,
        &fx.portmap_conf(json!([]), json!({}), None),
    )
    .assert_ok();
}
