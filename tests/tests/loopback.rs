//! berth's `loopback` (berth-host's none mode under the reference's name,
//! the plugin containerd and CRI-O run for every pod's `lo`) against the
//! reference `loopback`, side by side.

use berth_tests::{bin_dir, require_root, Cni, TestNetns, REFERENCE_CNI_DIR};
use serde_json::{json, Value};

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "cni-loopback", "type": "loopback"})
}

fn lo_is_up(ns: &TestNetns) -> bool {
    let links = ns.ip_json(&["link", "show", "lo"]);
    links[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// The addresses of a result, whatever its version's shape.
fn addresses(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["address"].as_str().unwrap_or("").to_string())
        .collect();
    for k in ["ip4", "ip6"] {
        if let Some(a) = r[k]["ip"].as_str() {
            out.push(a.to_string());
        }
    }
    out
}

#[test]
fn loopback_brings_lo_up_like_the_reference_at_every_version() {
    require_root();
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let ours_ns = TestNetns::new("lo-b");
        let ref_ns = TestNetns::new("lo-r");
        let ours = Cni::new("loopback").ifname("lo").netns(&ours_ns);
        let theirs = Cni::in_dir(REFERENCE_CNI_DIR, "loopback")
            .ifname("lo")
            .netns(&ref_ns);
        assert!(!lo_is_up(&ours_ns));
        let r = ours.add(&conf(v));
        let got = r.expect_ok().clone();
        assert!(lo_is_up(&ours_ns), "{v}: lo is not up");
        assert_eq!(got["cniVersion"], v);
        assert_eq!(
            addresses(&got),
            vec!["127.0.0.1/8", "::1/128"],
            "{v}: {got}"
        );
        // The reference (1.1.1) serves up to 1.0.0, and prints 1.0.0-shaped
        // results for every version; the addresses are what runtimes read.
        if v != "1.1.0" {
            let want = theirs.add(&conf(v)).expect_ok().clone();
            assert_eq!(addresses(&got), addresses(&want), "{v}: {got} vs {want}");
            assert!(lo_is_up(&ref_ns));
        }
        if v >= "0.4.0" {
            let mut c = conf(v);
            c["prevResult"] = got.clone();
            ours.check(&c).assert_ok();
        }
        ours.del(&conf(v)).assert_ok();
        assert!(
            !lo_is_up(&ours_ns),
            "{v}: DEL leaves lo down, as the reference"
        );
    }
}

#[test]
fn loopback_passes_a_prev_result_through_and_refuses_bad_input() {
    require_root();
    let ns = TestNetns::new("lo-p");
    let lo = Cni::new("loopback").ifname("lo").netns(&ns);
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns.path_str()}],
        "ips": [{"address": "10.1.2.3/24", "interface": 0}]});
    let mut c = conf("1.0.0");
    c["prevResult"] = prev.clone();
    let r = lo.add(&c).expect_ok().clone();
    assert_eq!(r["ips"], prev["ips"]);
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    // A berth-host config with another mode, sent to loopback: 7, nothing done.
    let other = TestNetns::new("lo-m");
    let mut c = conf("1.0.0");
    c["mode"] = json!("host");
    Cni::new("loopback")
        .ifname("lo")
        .netns(&other)
        .add(&c)
        .expect_error(7);
    assert!(!lo_is_up(&other));
    // The host's own namespace is refused (4), a missing one too.
    Cni::new("loopback")
        .ifname("lo")
        .netns_path("/proc/self/ns/net")
        .add(&conf("1.0.0"))
        .expect_error(4);
    Cni::new("loopback")
        .ifname("lo")
        .add(&conf("1.0.0"))
        .expect_error(4);
    // DEL of a namespace already gone succeeds, as runtimes need.
    Cni::new("loopback")
        .ifname("lo")
        .netns_path("/run/netns/berth-gone-xyz")
        .del(&conf("1.0.0"))
        .assert_ok();
    assert!(bin_dir().join("loopback").is_file());
}
