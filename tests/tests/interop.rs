//! berth's plugins paired with the reference plugins (Debian's
//! containernetworking-plugins 1.1.1 in /usr/lib/cni, whose highest
//! cniVersion is 1.0.0), run for real (root):
//! - the reference `bridge` delegating to `berth-ipam`;
//! - `berth-bridge` delegating to the reference `host-local`.
//!
//! The reference bridge is used without ipMasq, so nothing touches
//! iptables; it never deletes its bridge, so the test's guard does.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

fn reference(name: &str) -> std::path::PathBuf {
    let p = Path::new(REFERENCE_CNI_DIR).join(name);
    assert!(
        p.is_file(),
        "{} not found: install the reference plugins (apt-get install containernetworking-plugins)",
        p.display()
    );
    p
}

fn result_ip(r: &Value, v4: bool) -> String {
    r["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {r}"))
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .find(|a| a.contains('.') == v4)
        .unwrap_or_else(|| panic!("result has no IPv{} address: {r}", if v4 { 4 } else { 6 }))
}

fn allocations(data: &Path, network: &str) -> Vec<(IpAddr, String, String)> {
    let st = SqliteStore::open_existing(data, network)
        .unwrap_or_else(|e| panic!("open ipam store: {e}"));
    let Some(mut st) = st else { return Vec::new() };
    let mut v: Vec<_> = st
        .list()
        .unwrap_or_else(|e| panic!("list ipam store: {e}"))
        .into_iter()
        .map(|a| (a.ip, a.owner.container_id, a.owner.ifname))
        .collect();
    v.sort();
    v
}

fn eth0_addrs(ns: &TestNetns) -> Vec<String> {
    let mut out = Vec::new();
    for l in ns
        .ip_json(&["addr", "show", "dev", "eth0"])
        .as_array()
        .unwrap()
    {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(a["local"].as_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reference_bridge_with_berth_ipam() {
    require_root();
    let ref_bridge = reference("bridge");
    let ipam_bin = bin(IPAM_BIN);
    // CNI_PATH: berth-ipam next to the reference plugins.
    let path = TempDir::new("interop-path");
    std::os::unix::fs::symlink(&ipam_bin, path.path().join(IPAM_BIN)).unwrap();
    for e in std::fs::read_dir(REFERENCE_CNI_DIR).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), path.path().join(e.file_name())).unwrap();
    }
    assert!(path.path().join("bridge").is_file());

    let name = format!("bi-{}-{}", std::process::id(), next_id());
    let bridge = unique_name("bi", IFNAMSIZ_MAX);
    let _bridge_guard = LinkGuard::new(bridge.clone());
    let data = TempDir::new("interop-data");
    let (v4, v6) = unique_subnets();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipam": {
            "type": IPAM_BIN,
            "dataDir": data.path().to_str().unwrap(),
            "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
        },
    });
    let ns_a = TestNetns::new("ref-a");
    let ns_b = TestNetns::new("ref-b");
    let dir = ref_bridge.parent().unwrap().to_path_buf();
    let cni = |ns: &TestNetns| {
        Cni::in_dir(dir.clone(), "bridge")
            .netns(ns)
            .cni_path(path.path().to_str().unwrap())
    };
    let a = cni(&ns_a);
    let b = cni(&ns_b);
    let ra = a.add(&conf).expect_ok().clone();
    let rb = b.add(&conf).expect_ok().clone();
    for (r, ns, c) in [(&ra, &ns_a, &a), (&rb, &ns_b, &b)] {
        assert_eq!(r["cniVersion"], "1.0.0", "{r}");
        assert_eq!(r["ips"].as_array().unwrap().len(), 2, "{r}");
        let mut want = vec![result_ip(r, true), result_ip(r, false)];
        want.sort();
        assert_eq!(eth0_addrs(ns), want);
        // CHECK goes through berth-ipam's CHECK too.
        let o = c.check(&with_prev_result(&conf, r));
        o.assert_ok();
    }
    let held = allocations(data.path(), &name);
    assert_eq!(held.len(), 4, "{held:?}");
    let owners: BTreeSet<&str> = held.iter().map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(
        owners,
        BTreeSet::from([a.containerid.as_str(), b.containerid.as_str()])
    );

    assert_ping(&ns_a, &result_ip(&rb, true));
    assert_ping(&ns_a, &result_ip(&rb, false));
    assert_ping(&ns_b, &result_ip(&ra, true));
    assert_ping(&ns_b, &result_ip(&ra, false));

    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    b.del(&with_prev_result(&conf, &rb)).assert_ok();
    assert_eq!(
        allocations(data.path(), &name),
        vec![],
        "berth-ipam still holds addresses"
    );
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());

    // The addresses can be handed out again.
    let again = a.add(&conf).expect_ok().clone();
    assert_eq!(again["ips"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(allocations(data.path(), &name).len(), 2);
    assert_ping(&ns_a, &v4.replace(".0/24", ".1"));
    a.del(&with_prev_result(&conf, &again)).assert_ok();
    assert_eq!(allocations(data.path(), &name), vec![]);
}

#[test]
fn berth_bridge_with_host_local() {
    require_root();
    reference("host-local");
    let name = format!("bh-{}-{}", std::process::id(), next_id());
    let bridge = unique_name("bh", IFNAMSIZ_MAX);
    let _nft = NftNetworkGuard::new(name.clone());
    let _bridge_guard = LinkGuard::new(bridge.clone());
    let run = shared_run_dir();
    let data = TempDir::new("interop-hl");
    let (v4, v6) = unique_subnets();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "berth-bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data.path().to_str().unwrap(),
            "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
        },
    });
    let ns_a = TestNetns::new("hl-a");
    let ns_b = TestNetns::new("hl-b");
    let cni = |ns: &TestNetns| {
        Cni::new(BRIDGE_BIN)
            .netns(ns)
            .cni_path(REFERENCE_CNI_DIR)
            .env("BERTH_RUN_DIR", run.path().to_str().unwrap())
    };
    let a = cni(&ns_a);
    let b = cni(&ns_b);
    let ra = a.add(&conf).expect_ok().clone();
    let rb = b.add(&conf).expect_ok().clone();
    let net_dir = data.path().join(&name);
    for (r, ns, c) in [(&ra, &ns_a, &a), (&rb, &ns_b, &b)] {
        assert_eq!(r["cniVersion"], "1.0.0", "{r}");
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{r}");
        assert_eq!(
            ifs[1]["name"],
            bridge_host_veth(&c.containerid, "eth0").as_str(),
            "{r}"
        );
        assert_eq!(ifs[2]["sandbox"], ns.path_str(), "{r}");
        let mut want = vec![result_ip(r, true), result_ip(r, false)];
        want.sort();
        assert_eq!(eth0_addrs(ns), want);
        // host-local's reservation files name the container.
        for ip in &want {
            let f = std::fs::read_to_string(net_dir.join(ip))
                .unwrap_or_else(|e| panic!("host-local has no reservation file for {ip}: {e}"));
            assert!(f.starts_with(&c.containerid), "{ip}: {f:?}");
        }
        c.check(&with_prev_result(&conf, r)).assert_ok();
    }
    assert_ping(&ns_a, &result_ip(&rb, true));
    assert_ping(&ns_a, &result_ip(&rb, false));
    assert_ping(&ns_b, &result_ip(&ra, true));
    assert_ping(&ns_b, &result_ip(&ra, false));
    assert_ping(&ns_a, &v4.replace(".0/24", ".1"));

    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    b.del(&with_prev_result(&conf, &rb)).assert_ok();
    let left: BTreeSet<String> = dir_tree(&net_dir).into_keys().collect();
    assert!(
        left.iter()
            .all(|f| f == "lock" || f.starts_with("last_reserved_ip.")),
        "host-local dataDir after DEL: {left:?}"
    );
    assert!(left.contains("lock"), "{left:?}");
    assert!(!link_exists(&bridge_host_veth(&a.containerid, "eth0")));
    assert!(!link_exists(&bridge_host_veth(&b.containerid, "eth0")));
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());
    assert!(
        !run.path().join(&name).exists(),
        "berth-bridge run dir of {name} left"
    );
    assert_eq!(berth_nft_objects(&name), Vec::<String>::new());
}
