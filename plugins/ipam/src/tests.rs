//! Tests of berth-ipam through the CNI dispatcher (codes and output exactly as
//! a runtime sees them) and through the library functions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use store::AllocationStore;

use super::*;

/// A directory under /tmp removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = PathBuf::from(format!(
            "/tmp/berth-ipam-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Out {
    status: i32,
    json: Value,
}

impl Out {
    fn code(&self) -> u64 {
        assert_eq!(self.status, 1, "expected failure, got {}", self.json);
        self.json["code"].as_u64().unwrap()
    }
    fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
    fn ok(&self) -> &Value {
        assert_eq!(self.status, 0, "expected success, got {}", self.json);
        &self.json
    }
    fn ips(&self) -> Vec<String> {
        self.ok()["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect()
    }
}

fn run(cmd: &str, cid: &str, ifname: &str, conf: &Value, cni_args: &str) -> Out {
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", "/run/netns/berth-ipam-test-does-not-exist"),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", cni_args),
    ] {
        if !v.is_empty() {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let getenv = move |k: &str| env.get(k).cloned();
    let stdin = conf.to_string();
    let o = cni::skel::dispatch(&IpamPlugin, &getenv, &mut stdin.as_bytes());
    let json = if o.stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&o.stdout).unwrap()
    };
    Out {
        status: o.status,
        json,
    }
}

fn add(cid: &str, conf: &Value) -> Out {
    run("ADD", cid, "eth0", conf, "")
}

fn del(cid: &str, conf: &Value) -> Out {
    run("DEL", cid, "eth0", conf, "")
}

fn conf_with(dir: &Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("berth-ipam");
    ipam["dataDir"] = json!(dir.to_str().unwrap());
    json!({"cniVersion": "1.1.0", "name": "testnet", "type": "berth-ipam", "ipam": ipam})
}

fn v4_conf(dir: &Path, subnet: &str) -> Value {
    conf_with(dir, json!({"ranges": [[{"subnet": subnet}]]}))
}

fn parse(ipam: Value) -> Result<IpamConfig, Error> {
    let raw = json!({"cniVersion": "1.1.0", "name": "n", "ipam": ipam});
    IpamConfig::parse(&raw, "n", "1.1.0", None, &[])
}

fn parse_err(ipam: Value) -> Error {
    parse(ipam.clone()).expect_err(&format!("accepted {ipam}"))
}

// ---------------------------------------------------------------- config

#[test]
fn defaults_v4_and_v6() {
    let c = parse(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:1::/64"}]]}))
        .unwrap();
    let r4 = &c.range_sets[0].ranges[0];
    assert_eq!(r4.gateway, ip("10.1.2.1"));
    assert_eq!(r4.range_start, ip("10.1.2.1"));
    assert_eq!(r4.range_end, ip("10.1.2.254"));
    let r6 = &c.range_sets[1].ranges[0];
    assert_eq!(r6.gateway, ip("fd00:1::1"));
    assert_eq!(r6.range_start, ip("fd00:1::1"));
    assert_eq!(r6.range_end, ip("fd00:1::ffff:ffff:ffff:ffff"));
    assert_eq!(c.data_dir, PathBuf::from(store::DEFAULT_DATA_DIR));
    assert_eq!(c.requested, vec![None, None]);
    assert!(c.routes.is_empty());
    assert!(c.resolv_conf.is_none());
}

#[test]
fn legacy_top_level_and_all_keys() {
    let c = parse(json!({
        "type": "berth-ipam",
        "subnet": "10.9.0.0/16", "rangeStart": "10.9.1.10", "rangeEnd": "10.9.1.20", "gateway": "10.9.0.254",
        "ranges": [[{"subnet": "fd00::/120", "gateway": "fd00::fe"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.9.0.254"}],
        "dataDir": "/tmp/x", "resolvConf": "/etc/resolv.conf",
        "unknownKey": true
    }))
    .unwrap();
    assert_eq!(c.range_sets.len(), 2);
    let r = &c.range_sets[0].ranges[0];
    assert_eq!(
        (r.range_start, r.range_end, r.gateway),
        (ip("10.9.1.10"), ip("10.9.1.20"), ip("10.9.0.254"))
    );
    assert_eq!(c.range_sets[0].label(), "10.9.0.0/16 (10.9.1.10-10.9.1.20)");
    assert_eq!(c.range_sets[1].label(), "fd00::/120");
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].gw, Some(ip("10.9.0.254")));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
}

#[test]
fn bad_config_is_code_7_naming_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/31"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.1/32"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/32"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "fd00::/127"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "fd00::/128"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (json!({"subnet": "10.0.0.0/31"}), "ipam.subnet"),
        (
            json!({"ranges": [[{"subnet": "10.0.0.5/24"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "banana"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": 5}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"gateway": "10.0.0.1"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "::ffff:0:0/112"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}),
            "ipam.ranges[0][0].rangeStart",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}]]}),
            "ipam.ranges[0][0].rangeEnd",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::5"}]]}),
            "ipam.ranges[0][0].rangeEnd",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}),
            "ipam.ranges[0][0].gateway",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}]]}),
            "ipam.ranges[0][0].gateway",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "nope"}]]}),
            "ipam.ranges[0][0].gateway",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]]}),
            "ipam.ranges[0][0].rangeStart",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}),
            "ipam.ranges[0][1]",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]}),
            "ipam.ranges[1]",
        ),
        (
            json!({"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/24"}]]}),
            "ipam.ranges[0]",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            "ipam.ranges[0][1]",
        ),
        (json!({"ranges": [[]]}), "ipam.ranges[0]"),
        (json!({"ranges": []}), "ipam.ranges"),
        (json!({}), "ipam.ranges"),
        (json!({"ranges": "10.0.0.0/24"}), "ipam.ranges"),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "nope"}]}),
            "ipam.routes[0].dst",
        ),
        (
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": 3}),
            "ipam.dataDir",
        ),
    ];
    for (ipam, field) in cases {
        let e = parse_err(ipam.clone());
        assert_eq!(e.code, codes::INVALID_CONFIG, "{ipam}: {e}");
        assert!(
            e.msg.contains(field),
            "{ipam}: message {:?} should name {field}",
            e.msg
        );
    }
    // Disjoint ranges of one subnet are fine.
    assert!(parse(json!({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.30", "rangeEnd": "10.0.0.40"}]]}))
    .is_ok());
    // /30 and /126 are the smallest usable.
    assert!(
        parse(json!({"ranges": [[{"subnet": "10.0.0.0/30"}], [{"subnet": "fd00::/126"}]]})).is_ok()
    );
    let raw = json!({"name": "n"});
    assert_eq!(
        IpamConfig::parse(&raw, "n", "1.1.0", None, &[])
            .unwrap_err()
            .msg,
        "ipam: missing"
    );
}

#[test]
fn old_versions_allow_one_address_per_family() {
    let raw = json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}});
    let e = IpamConfig::parse(&raw, "n", "0.2.0", None, &[]).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(IpamConfig::parse(&raw, "n", "0.3.0", None, &[]).is_ok());
    let raw = json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}});
    assert!(IpamConfig::parse(&raw, "n", "0.2.0", None, &[]).is_ok());
}

#[test]
fn requested_ips_are_assigned_and_validated() {
    let raw = json!({"name": "n", "ipam": {"ranges": [
        [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"}],
        [{"subnet": "fd00::/64"}]]}});
    let r = |s: &str| RequestedIp::new(ip(s), "test");
    let c = IpamConfig::parse(
        &raw,
        "n",
        "1.1.0",
        None,
        &[r("fd00::9"), r("10.0.0.11"), r("10.0.0.11")],
    )
    .unwrap();
    assert_eq!(
        c.requested,
        vec![Some(ip("10.0.0.11")), Some(ip("fd00::9"))]
    );
    for (bad, what) in [
        ("10.0.0.5", "not in any range set"), // in the subnet, outside the range
        ("10.0.1.11", "not in any range set"), // outside the subnet
        ("fd00::1", "gateway"),
    ] {
        let e = IpamConfig::parse(&raw, "n", "1.1.0", None, &[r(bad)]).unwrap_err();
        assert_eq!(e.code, 7, "{bad}");
        assert!(
            e.msg.contains(bad) && e.msg.contains(what),
            "{bad}: {}",
            e.msg
        );
    }
    let e =
        IpamConfig::parse(&raw, "n", "1.1.0", None, &[r("10.0.0.11"), r("10.0.0.12")]).unwrap_err();
    assert_eq!(e.code, 7);
    // Network and broadcast addresses can't be requested even when the range covers them.
    let raw = json!({"name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.255"}]]}});
    for bad in ["10.0.0.0", "10.0.0.255"] {
        let e = IpamConfig::parse(&raw, "n", "1.1.0", None, &[r(bad)]).unwrap_err();
        assert_eq!(e.code, 7, "{bad}");
        assert!(e.msg.contains(bad));
    }
}

#[test]
fn range_math() {
    let r = Range::new("10.0.0.0/30".parse().unwrap(), None, None, None, "r").unwrap();
    assert_eq!(
        (r.range_start, r.range_end, r.gateway),
        (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.1"))
    );
    assert!(
        r.contains(ip("10.0.0.2")) && !r.contains(ip("10.0.0.3")) && !r.contains(ip("fd00::2"))
    );
    assert_eq!(
        r.reserved(),
        vec![ip("10.0.0.1"), ip("10.0.0.0"), ip("10.0.0.3")]
    );
    let r = Range::new("fd00::/126".parse().unwrap(), None, None, None, "r").unwrap();
    assert_eq!((r.range_start, r.range_end), (ip("fd00::1"), ip("fd00::3")));
    assert_eq!(r.reserved(), vec![ip("fd00::1"), ip("fd00::")]);
    let set = RangeSet { ranges: vec![r] };
    assert!(!set.has_no_addresses());
    let only_gw = Range::new(
        "10.0.0.0/24".parse().unwrap(),
        Some(ip("10.0.0.1")),
        Some(ip("10.0.0.1")),
        None,
        "r",
    )
    .unwrap();
    assert!(RangeSet {
        ranges: vec![only_gw]
    }
    .has_no_addresses());
    // The whole IPv6 space minus the mapped block edge: no overflow.
    let big = Range::new("8000::/1".parse().unwrap(), None, None, None, "r").unwrap();
    assert_eq!(big.range_end, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert!(!RangeSet { ranges: vec![big] }.has_no_addresses());
}

// ---------------------------------------------------------------- verbs

#[test]
fn slash30_gives_only_dot2_then_102_and_status_50() {
    let t = TempDir::new("s30");
    let conf = v4_conf(t.path(), "10.0.0.0/30");
    let st = run("STATUS", "", "", &conf, "");
    assert_eq!(st.status, 0, "{}", st.json);
    let a = add("c1", &conf);
    assert_eq!(a.ips(), vec!["10.0.0.2/30"]);
    assert_eq!(a.ok()["ips"][0]["gateway"], "10.0.0.1");
    assert!(a.ok()["ips"][0].get("interface").is_none());
    assert!(a.ok().get("interfaces").is_none());
    let b = add("c2", &conf);
    assert_eq!(b.code(), 102);
    assert_eq!(
        b.msg(),
        "no IP addresses available in range set 10.0.0.0/30"
    );
    let st = run("STATUS", "", "", &conf, "");
    assert_eq!(st.code(), 50);
    assert!(st.msg().contains("10.0.0.0/30"));
    del("c1", &conf).ok();
    assert_eq!(run("STATUS", "", "", &conf, "").status, 0);
    // Round robin comes back to .2 after wrapping.
    assert_eq!(add("c2", &conf).ips(), vec!["10.0.0.2/30"]);
}

#[test]
fn round_robin_and_result_shape() {
    let t = TempDir::new("rr");
    let resolv = t.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.1.0.53\ndomain cluster.local\nsearch a b\noptions ndots:5\n",
    )
    .unwrap();
    let conf = conf_with(
        t.path(),
        json!({"ranges": [[{"subnet": "10.1.0.0/24"}]],
               "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"}],
               "resolvConf": resolv.to_str().unwrap()}),
    );
    let a = add("c1", &conf);
    let j = a.ok();
    assert_eq!(j["cniVersion"], "1.1.0");
    assert_eq!(
        j["ips"],
        json!([{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}])
    );
    assert_eq!(
        j["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"}])
    );
    assert_eq!(
        j["dns"],
        json!({"nameservers": ["10.1.0.53"], "domain": "cluster.local", "search": ["a", "b"], "options": ["ndots:5"]})
    );
    assert_eq!(add("c2", &conf).ips(), vec!["10.1.0.3/24"]);
    del("c1", &conf).ok();
    // .2 is free again but round robin continues after .3.
    assert_eq!(add("c3", &conf).ips(), vec!["10.1.0.4/24"]);
    // Old result versions still work.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    let o = add("c4", &old);
    assert_eq!(o.ok()["ips"][0]["version"], "4");
    // A missing resolvConf file fails the ADD with 5 and allocates nothing.
    let mut bad = conf.clone();
    bad["ipam"]["resolvConf"] = json!("/nonexistent/resolv.conf");
    assert_eq!(add("c5", &bad).code(), 5);
    assert_eq!(
        run("CHECK", "c5", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
}

#[test]
fn duplicate_add_is_101_without_second_allocation() {
    let t = TempDir::new("dup");
    let conf = v4_conf(t.path(), "10.2.0.0/24");
    add("c1", &conf).ok();
    let d = add("c1", &conf);
    assert_eq!(d.code(), 101);
    assert!(
        d.msg().contains("10.2.0.2") && d.msg().contains("c1"),
        "{}",
        d.msg()
    );
    let mut st = store::SqliteStore::open(t.path(), "testnet").unwrap();
    assert_eq!(st.list().unwrap().len(), 1);
    // Another ifname of the same container is a separate attachment.
    assert_eq!(
        run("ADD", "c1", "eth1", &conf, "").ips(),
        vec!["10.2.0.3/24"]
    );
}

#[test]
fn del_is_idempotent_and_check_follows_state() {
    let t = TempDir::new("del");
    let conf = v4_conf(t.path(), "10.3.0.0/24");
    // Nothing ever allocated: DEL and CHECK don't create state.
    assert_eq!(del("ghost", &conf).status, 0);
    assert!(!t.path().join("testnet").exists());
    assert_eq!(
        run("CHECK", "ghost", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    add("c1", &conf).ok();
    assert_eq!(run("CHECK", "c1", "eth0", &conf, "").status, 0);
    assert_eq!(
        run("CHECK", "c1", "eth1", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    assert_eq!(del("c1", &conf).status, 0);
    assert_eq!(del("c1", &conf).status, 0);
    assert_eq!(del("never", &conf).status, 0);
    assert_eq!(
        run("CHECK", "c1", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    // DEL doesn't need a valid range config.
    let broken = conf_with(t.path(), json!({"ranges": [[{"subnet": "10.0.0.0/32"}]]}));
    assert_eq!(del("c1", &broken).status, 0);
    // The released address can be allocated again (round robin wraps to it).
    let small = v4_conf(t.path(), "10.3.0.0/30");
    assert_eq!(add("x", &small).ips(), vec!["10.3.0.2/30"]);
}

#[test]
fn requested_ips_via_cni_args_args_and_runtime_config() {
    let t = TempDir::new("req");
    let conf = conf_with(
        t.path(),
        json!({"ranges": [[{"subnet": "10.4.0.0/24"}], [{"subnet": "fd04::/64"}]]}),
    );
    // Unknown CNI_ARGS key: 4; with IgnoreUnknown: accepted.
    let o = run("ADD", "c0", "eth0", &conf, "FOO=bar");
    assert_eq!(o.code(), 4);
    assert!(o.msg().contains("FOO"));
    let o = run(
        "ADD",
        "c1",
        "eth0",
        &conf,
        "IgnoreUnknown=1;FOO=bar;IP=10.4.0.77",
    );
    assert_eq!(o.ips(), vec!["10.4.0.77/24", "fd04::2/64"]);
    let mut c = conf.clone();
    c["args"] = json!({"cni": {"ips": ["10.4.0.78", "fd04::78/64"]}});
    assert_eq!(add("c2", &c).ips(), vec!["10.4.0.78/24", "fd04::78/64"]);
    let mut c = conf.clone();
    c["runtimeConfig"] = json!({"ips": ["fd04::79"]});
    // Round robin on v4 continues after the last reserved (.78).
    assert_eq!(add("c3", &c).ips(), vec!["10.4.0.79/24", "fd04::79/64"]);

    // Taken: 103 naming the address and its holder; nothing allocated.
    let o = run("ADD", "c4", "eth0", &conf, "IP=10.4.0.77");
    assert_eq!(o.code(), 103);
    assert!(
        o.msg().contains("10.4.0.77") && o.msg().contains("c1"),
        "{}",
        o.msg()
    );
    assert_eq!(
        run("CHECK", "c4", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    // Outside the ranges, or the gateway: 7 naming it.
    for bad in ["10.5.0.1", "10.4.0.1", "fd04::1"] {
        let o = run("ADD", "c4", "eth0", &conf, &format!("IP={bad}"));
        assert_eq!(o.code(), 7, "{bad}");
        assert!(
            o.msg().contains(bad) && o.msg().starts_with("CNI_ARGS IP: "),
            "{}",
            o.msg()
        );
    }
    let o = run("ADD", "c4", "eth0", &conf, "IP=nonsense");
    assert_eq!(o.code(), 7);
    assert!(o.msg().contains("CNI_ARGS IP"));
    let mut c = conf.clone();
    c["runtimeConfig"] = json!({"ips": ["10.4.0.300"]});
    let o = add("c4", &c);
    assert_eq!(o.code(), 7);
    assert!(o.msg().contains("runtimeConfig.ips[0]"));
    assert_eq!(
        run("CHECK", "c4", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
}

#[test]
fn runtime_ip_ranges_replace_configured_ranges() {
    let t = TempDir::new("iprng");
    let mut c = conf_with(t.path(), json!({"ranges": [[{"subnet": "10.6.0.0/24"}]]}));
    c["runtimeConfig"] =
        json!({"ipRanges": [[{"subnet": "10.7.0.0/24", "rangeStart": "10.7.0.100"}]]});
    assert_eq!(add("c1", &c).ips(), vec!["10.7.0.100/24"]);
    c["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.7.0.0/31"}]]});
    let o = add("c2", &c);
    assert_eq!(o.code(), 7);
    assert!(
        o.msg().contains("runtimeConfig.ipRanges[0][0].subnet"),
        "{}",
        o.msg()
    );
    // An empty ipRanges leaves the configured ranges.
    c["runtimeConfig"] = json!({"ipRanges": []});
    assert_eq!(add("c3", &c).ips(), vec!["10.6.0.2/24"]);
}

#[test]
fn dual_stack_rolls_back_when_one_family_is_full() {
    let t = TempDir::new("dual");
    let conf = conf_with(
        t.path(),
        json!({"ranges": [[{"subnet": "fd08::/64"}], [{"subnet": "10.8.0.0/30"}]]}),
    );
    assert_eq!(add("c1", &conf).ips(), vec!["fd08::2/64", "10.8.0.2/30"]);
    let o = add("c2", &conf);
    assert_eq!(o.code(), 102);
    assert!(o.msg().contains("10.8.0.0/30"));
    let mut st = store::SqliteStore::open(t.path(), "testnet").unwrap();
    let all = st.list().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|a| a.owner.container_id == "c1"));
    let o = run("STATUS", "", "", &conf, "");
    assert_eq!(o.code(), 50);
}

#[test]
fn gc_releases_everything_not_listed() {
    let t = TempDir::new("gc");
    let conf = v4_conf(t.path(), "10.10.0.0/24");
    for c in ["c1", "c2", "c3"] {
        add(c, &conf).ok();
    }
    run("ADD", "c1", "eth1", &conf, "").ok();
    let mut g = conf.clone();
    g["cni.dev/valid-attachments"] =
        json!([{"containerID": "c2", "ifname": "eth0"}, {"containerID": "c1", "ifname": "eth1"}]);
    let o = run("GC", "", "", &g, "");
    assert_eq!(o.status, 0, "{}", o.json);
    assert!(o.json.is_null());
    assert_eq!(
        run("CHECK", "c1", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    assert_eq!(
        run("CHECK", "c3", "eth0", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    assert_eq!(run("CHECK", "c2", "eth0", &conf, "").status, 0);
    assert_eq!(run("CHECK", "c1", "eth1", &conf, "").status, 0);
    // Legacy key.
    let mut g = conf.clone();
    g["cni.dev/attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    assert_eq!(run("GC", "", "", &g, "").status, 0);
    assert_eq!(
        run("CHECK", "c1", "eth1", &conf, "").code(),
        codes::CHECK_FAILED as u64
    );
    assert_eq!(run("CHECK", "c2", "eth0", &conf, "").status, 0);
    // No list at all: nothing released.
    assert_eq!(run("GC", "", "", &conf, "").status, 0);
    assert_eq!(run("CHECK", "c2", "eth0", &conf, "").status, 0);
    // GC on a network without state.
    let other = conf_with(
        &t.path().join("elsewhere"),
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}]]}),
    );
    assert_eq!(run("GC", "", "", &other, "").status, 0);
    assert!(!t.path().join("elsewhere").exists());
}

#[test]
fn import_host_local_directory() {
    let t = TempDir::new("import");
    let hl = t.path().join("hl/testnet");
    std::fs::create_dir_all(&hl).unwrap();
    std::fs::write(hl.join("10.11.0.5"), "ctr-a\r\neth0").unwrap();
    std::fs::write(hl.join("10.11.0.6"), "ctr-legacy").unwrap();
    std::fs::write(hl.join("10.11.0.7"), "ctr-b\r\nnet1").unwrap();
    std::fs::write(hl.join("fd11::5"), "ctr-a\r\neth0").unwrap();
    std::fs::write(hl.join("last_reserved_ip.0"), "10.11.0.7").unwrap();
    std::fs::write(hl.join("last_reserved_ip.1"), "fd11::5").unwrap();
    std::fs::write(hl.join("lock"), "").unwrap();
    std::fs::write(hl.join("README"), "junk").unwrap();

    let state = read_host_local_dir(&hl).unwrap();
    assert_eq!(state.allocations.len(), 4);
    assert_eq!(
        state.cursors,
        vec![(0, ip("10.11.0.7")), (1, ip("fd11::5"))]
    );
    assert_eq!(state.skipped.len(), 1, "{:?}", state.skipped);

    let data = t.path().join("berth");
    let rep = import_host_local(&hl, "testnet", &data).unwrap();
    assert_eq!(rep.summary.imported, 4);
    assert_eq!(rep.summary.cursors, 2);
    assert_eq!(rep.db, data.join("testnet/ipam.db"));
    // Idempotent.
    let rep = import_host_local(&hl, "testnet", &data).unwrap();
    assert_eq!((rep.summary.imported, rep.summary.already_present), (0, 4));
    // The host-local directory is untouched.
    assert!(hl.join("10.11.0.5").exists());

    let conf = conf_with(
        &data,
        json!({"ranges": [[{"subnet": "10.11.0.0/24"}], [{"subnet": "fd11::/64"}]]}),
    );
    // Live attachments are known; round robin continues after the imported cursors.
    assert_eq!(run("CHECK", "ctr-a", "eth0", &conf, "").status, 0);
    assert_eq!(run("CHECK", "ctr-legacy", "eth0", &conf, "").status, 0);
    assert_eq!(add("ctr-a", &conf).code(), 101);
    assert_eq!(add("new", &conf).ips(), vec!["10.11.0.8/24", "fd11::6/64"]);
    assert_eq!(run("ADD", "x", "eth0", &conf, "IP=10.11.0.6").code(), 103);
    // DEL of the legacy entry (recorded without ifname) releases it.
    del("ctr-legacy", &conf).ok();
    assert_eq!(
        run("ADD", "x", "eth0", &conf, "IP=10.11.0.6").ips()[0],
        "10.11.0.6/24"
    );

    // The CLI front end.
    assert_eq!(
        cli::run_import(&[
            "--from".into(),
            hl.to_str().unwrap().into(),
            "--network".into(),
            "other".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into()
        ]),
        0
    );
    assert!(data.join("other/ipam.db").exists());
    assert_eq!(
        cli::run_import(&[
            "--from".into(),
            "/nonexistent/berth".into(),
            "--network".into(),
            "n".into(),
            "--data-dir".into(),
            data.to_str().unwrap().into()
        ]),
        1
    );
    assert_eq!(
        cli::run_import(&[
            "--network".into(),
            "bad name".into(),
            "--from".into(),
            "/x".into()
        ]),
        2
    );
}

#[test]
fn concurrent_adds_from_64_threads() {
    let t = TempDir::new("threads");
    let conf = v4_conf(t.path(), "10.12.0.0/24");
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let conf = conf.clone();
            std::thread::spawn(move || add(&format!("c{i}"), &conf).ips())
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 64);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 64);
}

#[test]
fn go_runtime_shapes_are_read_with_go_key_matching() {
    let t = TempDir::new("goshapes");
    // Keys of the host-local structs in any case, as Go's encoding/json
    // reads them; runtimeConfig.ipRanges with go-cni's untagged IPRanges.
    let mut c = json!({"cniVersion": "1.0.0", "name": "net", "type": "berth-ipam",
        "IPAM": {"Type": "berth-ipam", "DataDir": t.path(), "Routes": [{"Dst": "0.0.0.0/0"}],
                 "Ranges": [[{"Subnet": "10.5.0.0/24"}]]}});
    c["runtimeConfig"] = json!({"ipRanges": [[{"Subnet": "10.6.0.0/24", "RangeStart": "10.6.0.10",
        "RangeEnd": "10.6.0.20", "Gateway": "10.6.0.1"}]], "IPs": null});
    c["args"] = json!({"CNI": {"IPs": ["10.6.0.15"]}});
    let out = run(
        "ADD",
        "go1",
        "eth0",
        &c,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    );
    assert_eq!(out.ips(), vec!["10.6.0.15/24"]);
    assert_eq!(del("go1", &c).status, 0);
}
