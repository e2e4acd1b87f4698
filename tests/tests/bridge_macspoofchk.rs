//! berth-bridge's `macspoofchk`: frames entering the bridge from a
//! container's port with another source MAC than the container's are
//! dropped (table `bridge berth`).
//!
//! The whole scenario runs in a "host" network namespace of the test's own
//! (berth-bridge is exec'd inside it), so the real host's nftables ruleset
//! and links are never touched, and dropping that namespace removes
//! everything the plugin made there, also when a test fails.

use berth_tests::{bin, require_root, run_plugin_in, PluginOutput, TempDir, TestNetns};
use serde_json::{json, Value};

const SPOOFED: &str = "02:00:00:00:00:99";

fn ping(from: &TestNetns, addr: &str) -> bool {
    from.exec(&["busybox", "ping", "-c", "1", "-W", "2", addr])
        .status
        .success()
}

/// Runs berth-bridge inside `host` (so that namespace is its "host") as a
/// runtime would: cleared environment, CNI_* variables, config on stdin.
/// (As in docker_host.rs.)
fn plugin_in(
    host: &TestNetns,
    command: &str,
    container: &TestNetns,
    d: &Dirs,
    conf: &Value,
) -> PluginOutput {
    let env = [
        ("CNI_CONTAINERID", container.name()),
        ("CNI_NETNS", container.path_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", d.cni_path.as_str()),
        ("BERTH_RUN_DIR", &d.run.path().display().to_string()),
    ];
    run_plugin_in(host, &bin("berth-bridge"), command, &env, conf)
}

struct Dirs {
    cni_path: String,
    run: TempDir,
    _ipam: TempDir,
    conf: Value,
}

fn dirs(macspoofchk: bool) -> Dirs {
    let run = TempDir::new("spoof-run");
    let ipam = TempDir::new("spoof-ipam");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "spoofnet", "type": "berth-bridge",
        "bridge": "berthsp0", "macspoofchk": macspoofchk,
        "ipam": {"type": "berth-ipam", "dataDir": ipam.path(),
                 "ranges": [[{"subnet": "10.79.0.0/24"}]]}
    });
    let cni_path = bin("berth-bridge").parent().unwrap().display().to_string();
    Dirs {
        cni_path,
        run,
        _ipam: ipam,
        conf,
    }
}

fn new_host() -> TestNetns {
    let host = TestNetns::new("spoofhost");
    host.sh("ip link set lo up");
    host
}

/// The container's address (without prefix) and host veth, from an ADD result.
fn addr_and_port(result: &Value) -> (String, String) {
    let ip = result["ips"][0]["address"]
        .as_str()
        .expect("ADD result has an IP");
    let ip = ip.split('/').next().unwrap_or_default().to_string();
    let port = result["interfaces"][1]["name"]
        .as_str()
        .expect("host veth in ADD result");
    (ip, port.to_string())
}

/// Sets `ns`'s eth0 MAC and flushes the neighbour caches of `ns` and
/// `peer`, so the next ping starts with an ARP request carrying the new MAC
/// (and a stale cache on either side cannot explain the outcome).
fn set_mac(ns: &TestNetns, peer: &TestNetns, mac: &str) {
    ns.sh(&format!("ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up && ip neigh flush all"));
    peer.sh("ip neigh flush all");
}

fn tables(host: &TestNetns) -> String {
    host.sh("nft list tables")
}

/// `nft -j list table bridge berth` parsed: (map keys, chain names).
fn spoof_objects(host: &TestNetns) -> (Vec<String>, Vec<String>) {
    let v: Value = serde_json::from_str(&host.sh("nft -j list table bridge berth")).unwrap();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let mut keys = Vec::new();
    let mut chains = Vec::new();
    for o in &items {
        if let Some(m) = o.get("map") {
            for e in m["elem"].as_array().into_iter().flatten() {
                if let Some(k) = e[0].as_str() {
                    keys.push(k.to_string());
                }
            }
        }
        if let Some(c) = o["chain"]["name"].as_str() {
            chains.push(c.to_string());
        }
    }
    (keys, chains)
}

fn check(host: &TestNetns, ns: &TestNetns, d: &Dirs, result: &Value) -> PluginOutput {
    let mut conf = d.conf.clone();
    conf["prevResult"] = result.clone();
    plugin_in(host, "CHECK", ns, d, &conf)
}

#[test]
fn spoofed_source_mac_is_dropped() {
    require_root();
    let host = new_host();
    let (a, b, c) = (
        TestNetns::new("sp-a"),
        TestNetns::new("sp-b"),
        TestNetns::new("sp-c"),
    );
    let d = dirs(true);

    let res_a = plugin_in(&host, "ADD", &a, &d, &d.conf).expect_ok().clone();
    let res_b = plugin_in(&host, "ADD", &b, &d, &d.conf).expect_ok().clone();
    let (ip_a, port_a) = addr_and_port(&res_a);
    let (ip_b, port_b) = addr_and_port(&res_b);
    let mac_a = res_a["interfaces"][2]["mac"].as_str().unwrap().to_string();

    let ruleset = host.sh("nft list table bridge berth");
    assert!(
        ruleset.contains("iifname vmap @spoofchk-ports"),
        "{ruleset}"
    );
    assert!(
        ruleset.contains(&format!("ether saddr != {mac_a} drop")),
        "{ruleset}"
    );
    let (keys, chains) = spoof_objects(&host);
    for p in [&port_a, &port_b] {
        assert!(keys.contains(p), "map element for {p}: {ruleset}");
        assert!(
            chains.contains(&format!("spoof-{p}")),
            "chain for {p}: {ruleset}"
        );
    }
    check(&host, &a, &d, &res_a).assert_ok();
    check(&host, &b, &d, &res_b).assert_ok();

    assert!(ping(&a, &ip_b), "A to B with the real MAC");
    set_mac(&a, &b, SPOOFED);
    assert!(
        !ping(&a, &ip_b),
        "A's frames with a spoofed MAC must be dropped"
    );
    assert!(
        !ping(&b, &ip_a),
        "A's replies with a spoofed MAC must be dropped"
    );
    set_mac(&a, &b, &mac_a);
    assert!(ping(&a, &ip_b), "A to B with the MAC restored");

    // GC drops the check of an attachment that is no longer valid.
    let res_c = plugin_in(&host, "ADD", &c, &d, &d.conf).expect_ok().clone();
    let (_, port_c) = addr_and_port(&res_c);
    assert!(spoof_objects(&host).0.contains(&port_c));
    let mut gc = d.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": a.name(), "ifname": "eth0"},
        {"containerID": b.name(), "ifname": "eth0"}
    ]);
    plugin_in(&host, "GC", &c, &d, &gc).assert_ok();
    let (keys, chains) = spoof_objects(&host);
    assert!(
        !keys.contains(&port_c) && !chains.contains(&format!("spoof-{port_c}")),
        "GC: {keys:?} {chains:?}"
    );
    assert!(
        keys.contains(&port_a) && keys.contains(&port_b),
        "GC kept the valid ones: {keys:?}"
    );

    // CHECK notices a missing per-port chain (the element refers to it, so
    // it goes first).
    host.sh(&format!(
        "nft delete element bridge berth spoofchk-ports '{{ \"{port_a}\" }}' && nft delete chain bridge berth spoof-{port_a}"
    ));
    let chk = check(&host, &a, &d, &res_a);
    chk.expect_error(107);
    assert!(
        chk.error_msg()
            .unwrap_or_default()
            .contains(&format!("spoof-{port_a}")),
        "{chk}"
    );

    // DEL removes B's element and chain; the table stays for A.
    plugin_in(&host, "DEL", &b, &d, &d.conf).assert_ok();
    let (keys, chains) = spoof_objects(&host);
    assert!(
        !keys.contains(&port_b) && !chains.contains(&format!("spoof-{port_b}")),
        "DEL: {keys:?} {chains:?}"
    );
    // DEL of A succeeds although its chain is already gone, and being the
    // network's last it takes the table with it.
    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    let t = tables(&host);
    assert!(
        !t.contains("bridge berth") && !t.contains("inet berth"),
        "{t}"
    );
    // DEL again is a no-op.
    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    assert!(!tables(&host).contains("bridge berth"));
}

#[test]
fn without_macspoofchk_there_is_no_check() {
    require_root();
    let host = new_host();
    let (a, b) = (TestNetns::new("sp-d"), TestNetns::new("sp-e"));
    let d = dirs(false);

    let res_a = plugin_in(&host, "ADD", &a, &d, &d.conf).expect_ok().clone();
    let res_b = plugin_in(&host, "ADD", &b, &d, &d.conf).expect_ok().clone();
    let (ip_b, _) = addr_and_port(&res_b);
    // No spoof check: `bridge berth` holds only the quiet chain every
    // berth network has (see berth-bridge's quiet bridges).
    let t = tables(&host);
    assert!(t.contains("inet berth"), "{t}");
    let (keys, chains) = spoof_objects(&host);
    assert!(
        keys.is_empty() && chains == ["quiet_ingress"],
        "{keys:?} {chains:?}"
    );
    check(&host, &a, &d, &res_a).assert_ok();

    // The control for the test above: the same MAC change goes through.
    set_mac(&a, &b, SPOOFED);
    assert!(
        ping(&a, &ip_b),
        "without macspoofchk a changed MAC is not dropped"
    );

    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    plugin_in(&host, "DEL", &b, &d, &d.conf).assert_ok();
    assert!(!tables(&host).contains("berth"));
}
