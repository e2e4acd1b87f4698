//! berth-host in each mode, in real namespaces (root).
//!
//! Every test runs the plugin inside a private "host" namespace
//! ([`run_plugin_in`]): the devices it moves, the macvlan parents it uses
//! and the default routes it must respect are links and routes the test
//! made there, so nothing on the real host is touched, and deleting that
//! namespace removes whatever a failed test left.

use berth_tests::*;
use serde_json::{json, Value};

const PLUGIN: &str = "berth-host";

struct Fx {
    host: TestNetns,
    name: String,
    run: TempDir,
    data: TempDir,
}

impl Fx {
    fn new(tag: &str) -> Fx {
        require_root();
        let host = TestNetns::new(&format!("{tag}h"));
        host.sh("ip link set lo up");
        Fx {
            host,
            name: format!("bh-{}-{}", std::process::id(), next_id()),
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
        }
    }

    fn exec(
        &self,
        command: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> PluginOutput {
        let bin = bin(PLUGIN);
        let path = bin_dir();
        let env = [
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", path.to_str().unwrap()),
            ("BERTH_RUN_DIR", self.run.path().to_str().unwrap()),
        ];
        run_plugin_in(&self.host, &bin, command, &env, conf)
    }

    fn add(&self, cid: &str, ns: &TestNetns, conf: &Value) -> PluginOutput {
        self.exec("ADD", cid, ns.path_str(), "eth0", conf)
    }

    fn del(&self, cid: &str, ns: &TestNetns, conf: &Value) -> PluginOutput {
        self.exec("DEL", cid, ns.path_str(), "eth0", conf)
    }

    fn check(&self, cid: &str, ns: &TestNetns, conf: &Value, prev: &Value) -> PluginOutput {
        self.exec(
            "CHECK",
            cid,
            ns.path_str(),
            "eth0",
            &with_prev_result(conf, prev),
        )
    }

    /// The base config with `extra`'s keys added.
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({"cniVersion": "1.1.0", "name": self.name, "type": PLUGIN});
        for (k, v) in extra.as_object().expect("extra keys are an object") {
            c[k] = v.clone();
        }
        c
    }

    fn ipam(&self, subnet: &str) -> Value {
        json!({"type": "berth-ipam", "dataDir": self.data.path().to_str().unwrap(), "ranges": [[{"subnet": subnet}]]})
    }

    /// Attachment records of the network.
    fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.run.path().join(&self.name))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Addresses berth-ipam still holds for the network.
    fn allocations(&self) -> usize {
        use store::AllocationStore;
        match store::SqliteStore::open_existing(self.data.path(), &self.name)
            .expect("open ipam store")
        {
            None => 0,
            Some(mut st) => st.list().expect("list ipam store").len(),
        }
    }
}

/// `ip -d addr show` of one link in `ns`, if it exists.
fn link(ns: &TestNetns, name: &str) -> Option<Value> {
    ns.ip_json(&["-d", "addr", "show"])
        .as_array()?
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

fn is_up(l: &Value) -> bool {
    l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// "addr/prefix" of a link's addresses other than IPv6 link-local.
fn addrs(l: &Value) -> Vec<String> {
    l["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] != "link")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// A link's flags without the carrier state, which follows the other end
/// of the wire a moment after a link comes up.
fn config_flags(l: &Value) -> Vec<Value> {
    let carrier = ["NO-CARRIER", "LOWER_UP", "M-DOWN"];
    l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !carrier.iter().any(|c| *f == c))
        .cloned()
        .collect()
}

/// Waits up to 5 s for `cond` (namespace teardown happens in a kernel
/// worker, a moment after `ip netns del` returns).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn link_names(ns: &TestNetns) -> Vec<String> {
    let mut v: Vec<String> = ns
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Everything a rejected request could have changed in `ns`: links with
/// their state, MTU and alias, addresses, routes.
fn snapshot(ns: &TestNetns) -> String {
    let links: Vec<Value> = ns
        .ip_json(&["-d", "addr", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            json!([
                l["ifname"],
                config_flags(l),
                l["mtu"],
                l["ifalias"],
                addrs(l)
            ])
        })
        .collect();
    format!(
        "{links:?} {:?} {:?}",
        ns.ip_json(&["route", "show"]),
        ns.ip_json(&["-6", "route", "show"])
    )
}

/// A veth pair: `name` in `host` (up, with `addr`, MTU 1400) and its peer in
/// `outside` (up, with `peer_addr`): a stand-in for a NIC and its wire.
fn uplink(host: &TestNetns, outside: &TestNetns, name: &str, addr: &str, peer_addr: &str) {
    host.sh(&format!(
        "ip link add {name} mtu 1400 type veth peer name {name}p netns {o} && ip addr add {addr} dev {name} && ip link set {name} up",
        o = outside.name()
    ));
    outside.sh(&format!(
        "ip link set lo up && ip addr add {peer_addr} dev {name}p && ip link set {name}p up"
    ));
}

// ---------------------------------------------------------------------------
// none

#[test]
fn none_brings_up_loopback_and_del_takes_it_down() {
    let fx = Fx::new("hn");
    let c = TestNetns::new("hnc");
    let conf = fx.conf(json!({"mode": "none"}));
    let out = fx.add("c1", &c, &conf);
    let r = out.expect_ok().clone();
    assert_eq!(
        r["interfaces"],
        json!([{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": c.path_str()}])
    );
    assert_eq!(
        r["ips"],
        json!([{"address": "127.0.0.1/8", "interface": 0}, {"address": "::1/128", "interface": 0}])
    );
    let lo = link(&c, "lo").unwrap();
    assert!(is_up(&lo));
    assert_eq!(addrs(&lo), ["127.0.0.1/8", "::1/128"]);
    fx.check("c1", &c, &conf, &r).assert_ok();

    c.sh("ip link set lo down");
    assert_eq!(fx.check("c1", &c, &conf, &r).error_code(), Some(107));
    c.sh("ip link set lo up");

    fx.del("c1", &c, &conf).assert_ok();
    assert!(!is_up(&link(&c, "lo").unwrap()));
    // Repeated, and with the namespace gone: still fine.
    fx.del("c1", &c, &conf).assert_ok();
    let gone = c.path_str().to_string();
    drop(c);
    fx.exec("DEL", "c1", &gone, "eth0", &conf).assert_ok();
    fx.exec("DEL", "c1", "", "eth0", &conf).assert_ok();
}

#[test]
fn none_chained_passes_the_previous_result_through() {
    let fx = Fx::new("hp");
    let c = TestNetns::new("hpc");
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": c.path_str()}],
        "ips": [{"address": "10.9.9.2/24", "gateway": "10.9.9.1", "interface": 0}]
    });
    let conf = with_prev_result(&fx.conf(json!({"mode": "none"})), &prev);
    let r = fx.add("c1", &c, &conf).expect_ok().clone();
    assert_eq!(r, prev);
    assert!(is_up(&link(&c, "lo").unwrap()));
}

#[test]
fn none_refuses_the_host_namespace_and_changes_nothing() {
    let fx = Fx::new("hr");
    let conf = fx.conf(json!({"mode": "none"}));
    let before = snapshot(&fx.host);
    for cmd in ["ADD", "DEL", "CHECK"] {
        let out = fx.exec(cmd, "c1", fx.host.path_str(), "eth0", &conf);
        out.expect_error(4);
        assert!(
            out.error_msg().unwrap().contains("CNI_NETNS"),
            "{cmd}: {:?}",
            out.error_msg()
        );
    }
    assert_eq!(snapshot(&fx.host), before);
    assert!(is_up(&link(&fx.host, "lo").unwrap()));
}

// ---------------------------------------------------------------------------
// host

#[test]
fn host_mode_reports_the_host_and_refuses_other_namespaces() {
    let fx = Fx::new("hh");
    let outside = TestNetns::new("hho");
    uplink(&fx.host, &outside, "hhu0", "10.77.1.1/24", "10.77.1.2/24");
    let conf = fx.conf(json!({"mode": "host"}));
    let host_before = snapshot(&fx.host);

    let r = fx.add("c1", &fx.host, &conf).expect_ok().clone();
    let ifaces = r["interfaces"].as_array().unwrap();
    let names: Vec<&str> = ifaces.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hhu0", "lo"], "loopback last");
    assert!(ifaces.iter().all(|i| i["sandbox"] == fx.host.path_str()));
    assert_eq!(
        r["ips"][0],
        json!({"address": "10.77.1.1/24", "interface": 0})
    );
    assert_eq!(
        r["ips"][1],
        json!({"address": "127.0.0.1/8", "interface": 1})
    );
    fx.check("c1", &fx.host, &conf, &r).assert_ok();
    fx.del("c1", &fx.host, &conf).assert_ok();
    assert_eq!(snapshot(&fx.host), host_before);

    let c = TestNetns::new("hhc");
    let c_before = snapshot(&c);
    let out = fx.add("c2", &c, &conf);
    out.expect_error(4);
    assert!(out.error_msg().unwrap().contains("CNI_NETNS"));
    assert!(out
        .error_msg()
        .unwrap()
        .contains("not the host's network namespace"));
    assert_eq!(snapshot(&c), c_before);
    assert_eq!(snapshot(&fx.host), host_before);
}

// ---------------------------------------------------------------------------
// device

#[test]
fn device_moves_in_and_back_twice_with_name_mtu_and_addresses_restored() {
    let fx = Fx::new("hd");
    let outside = TestNetns::new("hdo");
    uplink(&fx.host, &outside, "hdu0", "10.77.2.1/24", "10.77.3.1/24");
    fx.host
        .sh("ip route add 10.77.9.0/24 via 10.77.2.200 dev hdu0");
    let conf =
        fx.conf(json!({"mode": "device", "device": "hdu0", "ipam": fx.ipam("10.77.3.0/24")}));
    let host_before = snapshot(&fx.host);
    for round in 0..2 {
        let c = TestNetns::new("hdc");
        let r = fx.add("c1", &c, &conf).expect_ok().clone();
        assert_eq!(r["interfaces"][0]["name"], "eth0");
        assert_eq!(r["interfaces"][0]["mtu"], 1400);
        assert_eq!(r["interfaces"][0]["sandbox"], c.path_str());
        let ip = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.77.3."), "{ip}");
        assert!(
            link(&fx.host, "hdu0").is_none(),
            "round {round}: still on the host"
        );
        let eth0 = link(&c, "eth0").expect("eth0 in the container");
        assert_eq!(eth0["ifalias"], "hdu0");
        assert_eq!(eth0["mtu"], 1400);
        assert!(is_up(&eth0));
        assert_eq!(addrs(&eth0), std::slice::from_ref(&ip));
        // The device really carries the container's traffic.
        ping_from(&c, "10.77.3.1").unwrap_or_else(|e| panic!("round {round}: {e}"));
        fx.check("c1", &c, &conf, &r).assert_ok();
        assert_eq!(fx.records().len(), 1);

        fx.del("c1", &c, &with_prev_result(&conf, &r)).assert_ok();
        assert!(link(&c, "eth0").is_none());
        assert_eq!(
            snapshot(&fx.host),
            host_before,
            "round {round}: host not restored"
        );
        assert!(fx.records().is_empty());
        assert_eq!(fx.allocations(), 0);
        fx.del("c1", &c, &conf).assert_ok();
        assert_eq!(snapshot(&fx.host), host_before);
    }
}

#[test]
fn device_check_fails_once_the_device_left_the_container() {
    let fx = Fx::new("hk");
    let outside = TestNetns::new("hko");
    uplink(&fx.host, &outside, "hku0", "10.77.4.1/24", "10.77.4.2/24");
    let conf = fx.conf(json!({"mode": "device", "device": "hku0"}));
    let c = TestNetns::new("hkc");
    let r = fx.add("c1", &c, &conf).expect_ok().clone();
    fx.check("c1", &c, &conf, &r).assert_ok();
    c.sh(&format!("ip link set eth0 netns {}", fx.host.name()));
    assert_eq!(fx.check("c1", &c, &conf, &r).error_code(), Some(107));
    // DEL finds it on the host by its alias and restores it.
    fx.del("c1", &c, &conf).assert_ok();
    let l = link(&fx.host, "hku0").expect("hku0 restored");
    assert_eq!(addrs(&l), ["10.77.4.1/24"]);
    assert!(
        matches!(l.get("ifalias"), None | Some(Value::Null)) || l["ifalias"] == "",
        "{l}"
    );
}

/// The kernel deletes virtual links with their namespace, and returns
/// physical ones to the initial namespace (under their container name, or
/// dev<ifindex>). A veth is virtual; the return of a physical link is
/// reproduced by moving the link to the host namespace under its container
/// name, as the kernel does, before the namespace goes.
#[test]
fn device_del_after_the_container_namespace_is_gone() {
    let fx = Fx::new("hg");
    let outside = TestNetns::new("hgo");
    uplink(&fx.host, &outside, "hgu0", "10.77.5.1/24", "10.77.5.2/24");
    uplink(&fx.host, &outside, "hgu1", "10.77.6.1/24", "10.77.6.2/24");

    // Virtual: gone with the namespace; DEL succeeds and forgets it.
    let conf0 = fx.conf(json!({"mode": "device", "device": "hgu0"}));
    let c0 = TestNetns::new("hgc");
    fx.add("c0", &c0, &conf0).expect_ok();
    let path0 = c0.path_str().to_string();
    drop(c0);
    fx.exec("DEL", "c0", &path0, "eth0", &conf0).assert_ok();
    assert!(link(&fx.host, "hgu0").is_none());
    eventually("the veth's peer died with it", || {
        link(&outside, "hgu0p").is_none()
    });
    assert!(fx.records().is_empty());

    // Returned: found by its alias, renamed and readdressed.
    let conf1 = fx.conf(json!({"mode": "device", "device": "hgu1"}));
    let c1 = TestNetns::new("hgc");
    fx.add("c1", &c1, &conf1).expect_ok();
    c1.sh(&format!("ip link set eth0 netns {}", fx.host.name()));
    let path1 = c1.path_str().to_string();
    drop(c1);
    assert!(link(&fx.host, "eth0").is_some());
    fx.exec("DEL", "c1", &path1, "eth0", &conf1).assert_ok();
    assert!(link(&fx.host, "eth0").is_none());
    let l = link(&fx.host, "hgu1").expect("hgu1 back under its own name");
    assert_eq!(addrs(&l), ["10.77.6.1/24"]);
    assert_eq!(l["mtu"], 1400);
    assert!(is_up(&l));
    assert!(fx.records().is_empty());
}

#[test]
fn device_refusals_change_nothing() {
    let fx = Fx::new("hx");
    let outside = TestNetns::new("hxo");
    uplink(&fx.host, &outside, "hxu0", "10.77.7.1/24", "10.77.7.2/24");
    uplink(&fx.host, &outside, "hxu1", "10.77.8.1/24", "10.77.8.2/24");
    fx.host.sh("ip route add default via 10.77.8.2 dev hxu1");
    let c = TestNetns::new("hxc");
    let host_before = snapshot(&fx.host);
    let c_before = snapshot(&c);

    let cases: Vec<(Value, u64, &str)> = vec![
        (
            json!({"mode": "device", "device": "nosuchdev"}),
            7,
            "device",
        ),
        (
            json!({"mode": "device", "device": "a-name-of-16byte"}),
            7,
            "longer than 15 bytes",
        ),
        (
            json!({"mode": "device", "device": "hxu0", "hwaddr": "02:00:00:00:00:01"}),
            7,
            "only one of",
        ),
        (json!({"mode": "device"}), 7, "device"),
        (
            json!({"mode": "device", "device": "hxu1"}),
            7,
            "allowDefaultRoute",
        ),
        (json!({"mode": "device", "device": "lo"}), 7, "loopback"),
        (json!({"mode": "teleport"}), 7, "mode"),
        (json!({}), 7, "mode"),
        (json!({"mode": "none", "device": "hxu0"}), 7, "device"),
        (
            json!({"mode": "macvlan", "master": "nosuchdev"}),
            7,
            "master",
        ),
        (
            json!({"mode": "macvlan", "master": "hxu0", "mtu": 9000}),
            7,
            "mtu",
        ),
        (
            json!({"mode": "device", "kernelpath": "/etc/passwd"}),
            7,
            "kernelpath",
        ),
    ];
    for (extra, code, needle) in cases {
        let conf = fx.conf(extra.clone());
        let out = fx.add("c1", &c, &conf);
        out.expect_error(code);
        let msg = out.error_msg().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg:?} lacks {needle:?}");
        assert_eq!(snapshot(&fx.host), host_before, "{extra}");
        assert_eq!(snapshot(&c), c_before, "{extra}");
        assert!(fx.records().is_empty(), "{extra}");
    }

    // Allowed explicitly, the default-route device moves, and comes back
    // with its default route.
    let conf = fx.conf(json!({"mode": "device", "device": "hxu1", "allowDefaultRoute": true}));
    fx.add("c1", &c, &conf).expect_ok();
    assert!(link(&c, "eth0").is_some());
    fx.del("c1", &c, &conf).assert_ok();
    assert_eq!(snapshot(&fx.host), host_before);
}

#[test]
fn device_already_in_a_container_names_its_holder() {
    let fx = Fx::new("ha");
    let outside = TestNetns::new("hao");
    uplink(&fx.host, &outside, "hau0", "10.77.10.1/24", "10.77.10.2/24");
    let conf = fx.conf(json!({"mode": "device", "device": "hau0"}));
    let c1 = TestNetns::new("hac");
    let c2 = TestNetns::new("hac");
    fx.add("holder-1", &c1, &conf).expect_ok();
    let c2_before = snapshot(&c2);
    let out = fx.add("second", &c2, &conf);
    out.expect_error(7);
    assert!(
        out.error_msg().unwrap().contains("holder-1"),
        "{:?}",
        out.error_msg()
    );
    assert_eq!(snapshot(&c2), c2_before);
    // The duplicate ADD of the holder fails too, and leaves it in place.
    fx.add("holder-1", &c1, &conf).expect_error(101);
    assert_eq!(link(&c1, "eth0").unwrap()["ifalias"], "hau0");
    fx.del("holder-1", &c1, &conf).assert_ok();
    assert!(link(&fx.host, "hau0").is_some());
}

#[test]
fn device_gc_returns_the_devices_of_dead_attachments() {
    let fx = Fx::new("hc");
    let outside = TestNetns::new("hco");
    uplink(&fx.host, &outside, "hcu0", "10.77.11.1/24", "10.77.11.2/24");
    uplink(&fx.host, &outside, "hcu1", "10.77.12.1/24", "10.77.12.2/24");
    let (ca, cb) = (TestNetns::new("hcc"), TestNetns::new("hcc"));
    let conf_a = fx.conf(json!({"mode": "device", "device": "hcu0"}));
    let conf_b = fx.conf(json!({"mode": "device", "device": "hcu1"}));
    fx.add("keep", &ca, &conf_a).expect_ok();
    fx.add("dead", &cb, &conf_b).expect_ok();
    let mut gc = fx.conf(json!({"mode": "device", "device": "hcu0"}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    fx.exec("GC", "", "", "", &gc).assert_ok();
    let back = link(&fx.host, "hcu1").expect("hcu1 returned by GC");
    assert_eq!(addrs(&back), ["10.77.12.1/24"]);
    assert!(link(&cb, "eth0").is_none());
    assert_eq!(
        link(&ca, "eth0").unwrap()["ifalias"],
        "hcu0",
        "a valid attachment is kept"
    );
    assert_eq!(fx.records().len(), 1);
    fx.del("keep", &ca, &conf_a).assert_ok();
    assert!(fx.records().is_empty());
}

// ---------------------------------------------------------------------------
// macvlan

/// Two containers with macvlan children of one uplink: they reach each
/// other in bridge mode, not in private mode.
#[test]
fn macvlan_siblings_talk_in_bridge_mode_only() {
    for (mode, reach) in [("bridge", true), ("private", false)] {
        let fx = Fx::new("hm");
        let outside = TestNetns::new("hmo");
        uplink(&fx.host, &outside, "hmu0", "10.77.13.1/24", "10.77.13.2/24");
        let conf = fx.conf(json!({"mode": "macvlan", "master": "hmu0", "macvlanMode": mode, "ipam": fx.ipam("10.77.14.0/24")}));
        let (c1, c2) = (TestNetns::new("hmc"), TestNetns::new("hmc"));
        let r1 = fx.add("m1", &c1, &conf).expect_ok().clone();
        let r2 = fx.add("m2", &c2, &conf).expect_ok().clone();
        for (cid, c, r) in [("m1", &c1, &r1), ("m2", &c2, &r2)] {
            let l = link(c, "eth0").unwrap();
            assert_eq!(l["linkinfo"]["info_kind"], "macvlan");
            assert_eq!(l["linkinfo"]["info_data"]["mode"], mode);
            assert_eq!(r["interfaces"][0]["mac"], l["address"]);
            fx.check(cid, c, &conf, r).assert_ok();
        }
        let ip2 = r2["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let reached = ping_from(&c1, &ip2).is_ok();
        assert_eq!(reached, reach, "macvlan mode {mode}");
        assert_eq!(fx.records().len(), 2);

        fx.del("m1", &c1, &conf).assert_ok();
        fx.del("m2", &c2, &conf).assert_ok();
        assert!(link(&c1, "eth0").is_none() && link(&c2, "eth0").is_none());
        assert!(fx.records().is_empty());
        assert_eq!(fx.allocations(), 0);
    }
}

#[test]
fn macvlan_defaults_to_the_default_route_link_and_mode_names_the_macvlan_mode() {
    let fx = Fx::new("hv");
    let outside = TestNetns::new("hvo");
    uplink(&fx.host, &outside, "hvu0", "10.77.15.1/24", "10.77.15.2/24");
    fx.host.sh("ip route add default via 10.77.15.2 dev hvu0");
    let conf = fx.conf(json!({"mode": "vepa", "mtu": 1300, "mac": "02:42:00:00:00:07"}));
    let c = TestNetns::new("hvc");
    let r = fx.add("v1", &c, &conf).expect_ok().clone();
    let l = link(&c, "eth0").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "vepa");
    assert_eq!(l["mtu"], 1300);
    assert_eq!(l["address"], "02:42:00:00:00:07");
    assert_eq!(r["interfaces"][0]["mtu"], 1300);
    // runtimeConfig.mac wins over the config's mac, as in the reference.
    let c2 = TestNetns::new("hvc");
    let mut conf2 = conf.clone();
    conf2["runtimeConfig"] = json!({"mac": "02:42:00:00:00:08"});
    fx.add("v2", &c2, &conf2).expect_ok();
    assert_eq!(link(&c2, "eth0").unwrap()["address"], "02:42:00:00:00:08");

    // The child dies with its namespace; DEL then only forgets it, and GC
    // deletes a child whose attachment is no longer valid.
    let p = c.path_str().to_string();
    drop(c);
    fx.exec("DEL", "v1", &p, "eth0", &conf).assert_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    fx.exec("GC", "", "", "", &gc).assert_ok();
    assert!(link(&c2, "eth0").is_none());
    assert!(fx.records().is_empty());
    assert_eq!(link_names(&fx.host), ["hvu0", "lo"]);
}

/// The device found by its MAC (`hwaddr`) and by a kernel device path
/// whose `net/` directory names it (`kernelpath`). This machine has no
/// NIC to spare, so the path is sysfs's directory of virtual devices: the
/// plugin runs in the test's host namespace (`ip netns exec` mounts its
/// sysfs), where `net/` holds `hsu0` and `lo`, and the first name is taken.
#[test]
fn device_selected_by_hwaddr_and_by_kernelpath() {
    let fx = Fx::new("hs");
    let outside = TestNetns::new("hso");
    uplink(&fx.host, &outside, "hsu0", "10.77.12.1/24", "10.77.12.2/24");
    fx.host.sh("ip link set hsu0 address 02:00:00:77:12:01");
    let host_before = snapshot(&fx.host);
    for selector in [
        json!({"hwaddr": "02:00:00:77:12:01"}),
        json!({"kernelpath": "/sys/devices/virtual"}),
    ] {
        let mut extra = json!({"mode": "device"});
        extra
            .as_object_mut()
            .unwrap()
            .extend(selector.as_object().unwrap().clone());
        let conf = fx.conf(extra);
        let c = TestNetns::new("hsc");
        let r = fx.add("c1", &c, &conf).expect_ok().clone();
        let eth0 =
            link(&c, "eth0").unwrap_or_else(|| panic!("{selector}: no eth0 in the container"));
        assert_eq!(eth0["ifalias"], "hsu0", "{selector}");
        assert_eq!(eth0["address"], "02:00:00:77:12:01", "{selector}");
        fx.del("c1", &c, &with_prev_result(&conf, &r)).assert_ok();
        assert_eq!(
            snapshot(&fx.host),
            host_before,
            "{selector}: host not restored"
        );
    }
}
