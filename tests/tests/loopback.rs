//! berth's `loopback` (berth-host's none mode under the reference's name,
//! the plugin containerd and CRI-O run for every pod's `lo`) against the
//! reference `loopback` (Debian's containernetworking-plugins 1.1.1), side
//! by side: the same request to both, each in a namespace of its own, the
//! exact JSON compared.
//!
//! Where they differ, the reference is wrong and berth follows the spec;
//! the tests spell each difference out:
//! - the reference prints its 1.0.0-shaped result under every requested
//!   cniVersion (no `ips[].version` at 0.3.x/0.4.0, `ips` instead of
//!   `ip4`/`ip6` at 0.1.0/0.2.0): berth prints the shape of the version
//!   asked for, which is the reference's result converted;
//! - the reference always prints `"dns": {}`; berth leaves an empty `dns`
//!   out (Go reads both the same);
//! - 1.1.1 stops at cniVersion 1.0.0 and knows no STATUS or GC; berth
//!   serves 1.1.0 too (as later reference releases do);
//! - the reference configures whatever namespace CNI_NETNS names, the
//!   host's own too (its DEL then sets the host's `lo` down), and ignores
//!   `mode`; berth refuses both. Those cases run only against berth, inside
//!   a namespace standing in for the host.

use berth_tests::{
    bin, require_root, run_plugin_in, run_plugin_raw, Cni, PluginOutput, TestNetns,
    REFERENCE_CNI_DIR,
};
use serde_json::{json, Value};

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version the reference (1.1.1) serves.
const REFERENCE_MAX: &str = "1.0.0";

fn reference_serves(v: &str) -> bool {
    v != "1.1.0"
}

/// What a runtime sends for `lo` (containerd's CRI: 0.3.1 here), `None`:
/// no cniVersion at all (which means 0.1.0).
fn conf(version: Option<&str>) -> Value {
    let mut c = json!({"name": "cni-loopback", "type": "loopback"});
    if let Some(v) = version {
        c["cniVersion"] = json!(v);
    }
    c
}

fn with_prev(mut c: Value, prev: &Value) -> Value {
    c["prevResult"] = prev.clone();
    c
}

fn lo_is_up(ns: &TestNetns) -> bool {
    let links = ns.ip_json(&["link", "show", "lo"]);
    links[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn lo_addrs(ns: &TestNetns) -> Value {
    ns.ip_json(&["addr", "show", "dev", "lo"])[0]["addr_info"].clone()
}

/// berth's and the reference's loopback for one container each, each in
/// its own namespace.
struct Pair {
    ours_ns: TestNetns,
    ref_ns: TestNetns,
    ours: Cni,
    theirs: Cni,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let ours_ns = TestNetns::new(&format!("{tag}-b"));
        let ref_ns = TestNetns::new(&format!("{tag}-r"));
        let ours = Cni::new("loopback").ifname("lo").netns(&ours_ns);
        let theirs = Cni::in_dir(REFERENCE_CNI_DIR, "loopback")
            .ifname("lo")
            .netns(&ref_ns);
        Pair {
            ours_ns,
            ref_ns,
            ours,
            theirs,
        }
    }

    /// The reference's output as berth's namespace would have it.
    fn as_ours(&self, theirs: &Value) -> Value {
        let s = theirs
            .to_string()
            .replace(self.ref_ns.path_str(), self.ours_ns.path_str());
        serde_json::from_str(&s).unwrap()
    }
}

/// The reference's result without its always-present empty `dns`.
fn without_empty_dns(mut r: Value) -> Value {
    if r.get("dns").is_some_and(|d| d == &json!({})) {
        r.as_object_mut().unwrap().remove("dns");
    }
    r
}

/// A 1.0.0-shaped result (what the reference prints under every version)
/// in the shape of version `v`: `ips[].version` for 0.3.x/0.4.0, the first
/// address of each family as `ip4`/`ip6` for 0.1.0/0.2.0. A result already
/// in its 0.1.0/0.2.0 shape (no `ips`) stays as it is.
fn in_version(r: &Value, v: &str) -> Value {
    let mut r = without_empty_dns(r.clone());
    let Some(ips) = r.get("ips").and_then(Value::as_array).cloned() else {
        return r;
    };
    let is_v6 = |ip: &Value| ip["address"].as_str().unwrap_or("").contains(':');
    match v {
        "1.0.0" | "1.1.0" => {}
        "0.3.0" | "0.3.1" | "0.4.0" => {
            for ip in r["ips"].as_array_mut().unwrap() {
                let fam = if is_v6(ip) { "6" } else { "4" };
                ip["version"] = json!(fam);
            }
        }
        "0.1.0" | "0.2.0" => {
            let mut old = json!({"cniVersion": v});
            for (key, v6) in [("ip4", false), ("ip6", true)] {
                if let Some(ip) = ips.iter().find(|ip| is_v6(ip) == v6) {
                    old[key] = json!({"ip": ip["address"]});
                }
            }
            return old;
        }
        other => panic!("no such version {other}"),
    }
    r
}

fn assert_same_failure(ours: &PluginOutput, theirs: &PluginOutput, what: &str) {
    assert!(!ours.success(), "{what}: berth succeeded: {ours}");
    assert!(
        !theirs.success(),
        "{what}: the reference succeeded: {theirs}"
    );
    assert!(ours.error_code().is_some(), "{what}: no CNI error: {ours}");
}

#[test]
fn results_equal_the_reference_at_every_version() {
    require_root();
    let versions = VERSIONS.iter().map(|v| Some(*v)).chain([None]);
    for v in versions {
        let label = v.unwrap_or("none");
        let p = Pair::new("lo-v");
        let c = conf(v);
        assert!(!lo_is_up(&p.ours_ns) && !lo_is_up(&p.ref_ns));

        let ours = p.ours.add(&c).expect_ok().clone();
        assert!(lo_is_up(&p.ours_ns), "{label}: lo is not up");
        let want = if reference_serves(label) {
            let theirs = p.theirs.add(&c).expect_ok().clone();
            assert!(lo_is_up(&p.ref_ns), "{label}: the reference left lo down");
            assert_eq!(lo_addrs(&p.ours_ns), lo_addrs(&p.ref_ns), "{label}");
            in_version(&p.as_ours(&theirs), v.unwrap_or("0.1.0"))
        } else {
            // 1.1.1 refuses 1.1.0; its 1.0.0 result, relabelled, is what
            // 1.1.0 prints.
            p.theirs.add(&c).expect_error(1);
            let theirs = p.theirs.add(&conf(Some(REFERENCE_MAX))).expect_ok().clone();
            let mut w = without_empty_dns(p.as_ours(&theirs));
            w["cniVersion"] = json!(label);
            w
        };
        assert_eq!(ours, want, "{label}: berth vs the reference");
        // Nothing is remembered: a second ADD (a runtime's retry) gives the
        // same result.
        assert_eq!(p.ours.add(&c).expect_ok(), &ours, "{label}: second ADD");

        let check_ok = v.is_some_and(|v| v >= "0.4.0");
        let theirs_serves = reference_serves(label);
        let cases = [
            ("CHECK with the ADD result", with_prev(c.clone(), &ours)),
            ("CHECK without prevResult", c.clone()),
        ];
        for (what, cc) in &cases {
            let o = p.ours.check(cc);
            if !check_ok {
                // No CHECK before 0.4.0: error 1, as the reference.
                o.expect_error(1);
                p.theirs.check(cc).expect_error(1);
                continue;
            }
            o.assert_ok();
            assert_eq!(o.stdout.trim(), "", "{label}: {what} printed {o}");
            if theirs_serves {
                let t = p.theirs.check(&p.as_ours_to_theirs(cc));
                t.assert_ok();
                assert_eq!(t.stdout.trim(), "", "{label}: {what}: {t}");
            }
        }

        // DEL sets lo down, twice in a row too.
        for n in ["first", "second"] {
            let o = p.ours.del(&c);
            o.assert_ok();
            assert_eq!(o.stdout.trim(), "", "{label}: {n} DEL printed {o}");
            assert!(!lo_is_up(&p.ours_ns), "{label}: lo up after the {n} DEL");
            if theirs_serves {
                p.theirs.del(&c).assert_ok();
                assert!(!lo_is_up(&p.ref_ns));
            }
        }
        if check_ok {
            // lo down: CHECK fails, with or without prevResult.
            for (what, cc) in &cases {
                let o = p.ours.check(cc);
                if theirs_serves {
                    let t = p.theirs.check(&p.as_ours_to_theirs(cc));
                    assert_same_failure(&o, &t, &format!("{label}: {what} after DEL"));
                } else {
                    assert!(o.error_code().is_some(), "{label}: {what} after DEL: {o}");
                }
            }
        }
    }
}

impl Pair {
    /// A request made for berth's namespace, for the reference's.
    fn as_ours_to_theirs(&self, c: &Value) -> Value {
        let s = c
            .to_string()
            .replace(self.ours_ns.path_str(), self.ref_ns.path_str());
        serde_json::from_str(&s).unwrap()
    }
}

/// A prevResult in the shape of version `v`, of an interface plugin that
/// ran before loopback.
fn prev_result(v: &str, sandbox: &str) -> Value {
    if v < "0.3.0" {
        return json!({
            "cniVersion": v,
            "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "ip6": {"ip": "fd00:1::3/64", "gateway": "fd00:1::1"},
            "dns": {"nameservers": ["10.1.2.1"], "search": ["example.org"]}
        });
    }
    let mut r = json!({
        "cniVersion": v,
        "interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": sandbox}
        ],
        "ips": [
            {"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1},
            {"address": "fd00:1::3/64", "gateway": "fd00:1::1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.1.2.1"], "domain": "example.org", "options": ["ndots:5"]}
    });
    if v < "1.0.0" {
        r["ips"][0]["version"] = json!("4");
        r["ips"][1]["version"] = json!("6");
    }
    r
}

#[test]
fn chained_prev_result_passes_through_like_the_reference() {
    require_root();
    for v in VERSIONS {
        let p = Pair::new("lo-c");
        let prev = prev_result(v, p.ours_ns.path_str());
        let c = with_prev(conf(Some(v)), &prev);
        let ours = p.ours.add(&c).expect_ok().clone();
        assert!(lo_is_up(&p.ours_ns), "{v}: lo is not up");
        assert_eq!(ours, prev, "{v}: the prevResult did not pass through");
        if reference_serves(v) {
            let theirs = p.theirs.add(&p.as_ours_to_theirs(&c)).expect_ok().clone();
            assert_eq!(ours, p.as_ours(&theirs), "{v}: berth vs the reference");
            assert!(lo_is_up(&p.ref_ns));
        }
        // A prevResult without cniVersion takes the config's.
        let mut bare = prev.clone();
        bare.as_object_mut().unwrap().remove("cniVersion");
        let bare_conf = with_prev(conf(Some(v)), &bare);
        assert_eq!(p.ours.add(&bare_conf).expect_ok(), &prev, "{v}");
        if reference_serves(v) {
            let theirs = p
                .theirs
                .add(&p.as_ours_to_theirs(&bare_conf))
                .expect_ok()
                .clone();
            assert_eq!(p.as_ours(&theirs), prev, "{v}: the reference");
        }
        // CHECK with the chain's result (lo not in it): lo is all it checks.
        if v >= "0.4.0" {
            p.ours.check(&c).assert_ok();
            if reference_serves(v) {
                p.theirs.check(&p.as_ours_to_theirs(&c)).assert_ok();
            }
        }
        p.ours.del(&c).assert_ok();
        assert!(!lo_is_up(&p.ours_ns));
    }
    // The prevResult must be of the config's result family; both refuse
    // a 0.3.1 one under config 1.0.0 (berth: 1, the reference: 999).
    let p = Pair::new("lo-f");
    let c = with_prev(conf(Some("1.0.0")), &prev_result("0.3.1", "/x"));
    let ours = p.ours.add(&c);
    ours.expect_error(1);
    assert_same_failure(&ours, &p.theirs.add(&c), "foreign prevResult");
    assert!(!lo_is_up(&p.ours_ns), "a refused ADD set lo up");
}

/// CNI_IFNAME is ignored: the interface is always `lo`, in both.
#[test]
fn ifname_is_ignored_like_the_reference() {
    require_root();
    let p = Pair::new("lo-i");
    let ours = Cni::new("loopback").ifname("eth0").netns(&p.ours_ns);
    let theirs = Cni::in_dir(REFERENCE_CNI_DIR, "loopback")
        .ifname("eth0")
        .netns(&p.ref_ns);
    let c = conf(Some("0.3.1"));
    let r = ours.add(&c).expect_ok().clone();
    let t = theirs.add(&c).expect_ok().clone();
    assert_eq!(r, in_version(&p.as_ours(&t), "0.3.1"));
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert!(lo_is_up(&p.ours_ns) && lo_is_up(&p.ref_ns));
    ours.del(&c).assert_ok();
    theirs.del(&c).assert_ok();
    assert!(!lo_is_up(&p.ours_ns) && !lo_is_up(&p.ref_ns));
}

#[test]
fn version_status_and_gc() {
    require_root();
    let ours = Cni::new("loopback");
    let theirs = Cni::in_dir(REFERENCE_CNI_DIR, "loopback");
    // VERSION, with or without garbage on stdin: the reference's versions
    // and 1.1.0.
    for stdin in [&b"{}"[..], b"{bad"] {
        let o = run_plugin_raw(&ours.bin(), "VERSION", &[], stdin);
        let t = run_plugin_raw(&theirs.bin(), "VERSION", &[], stdin);
        let (o, t) = (o.expect_ok().clone(), t.expect_ok().clone());
        assert_eq!(t["cniVersion"], REFERENCE_MAX);
        let mut want = t["supportedVersions"].as_array().unwrap().clone();
        want.push(json!("1.1.0"));
        assert_eq!(o, json!({"cniVersion": "1.1.0", "supportedVersions": want}));
        assert_eq!(o["supportedVersions"], json!(VERSIONS));
    }
    // STATUS and GC (1.1.0): nothing to report, nothing to collect. 1.1.1
    // doesn't know the verbs (4).
    let gc = |c: Value| {
        let mut c = c;
        c["cni.dev/valid-attachments"] = json!([{"containerID": "x", "ifname": "lo"}]);
        c
    };
    for (verb, c) in [
        ("STATUS", conf(Some("1.1.0"))),
        ("GC", gc(conf(Some("1.1.0")))),
    ] {
        let o = ours.run(verb, &c);
        o.assert_ok();
        assert_eq!(o.stdout.trim(), "", "{verb} printed {o}");
        theirs.run(verb, &c).expect_error(4);
        // Before 1.1.0 neither verb exists: 1.
        let mut old = c.clone();
        old["cniVersion"] = json!("1.0.0");
        ours.run(verb, &old).expect_error(1);
    }
}

/// A request refused by berth's loopback run inside `host` (a namespace
/// standing in for the host, so a wrong answer could only touch its `lo`).
fn refused(host: &TestNetns, command: &str, netns: &str, c: &Value, code: u64) -> Value {
    let env = [
        ("CNI_CONTAINERID", "lo-bad"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "lo"),
        ("CNI_PATH", "/nonexistent"),
    ];
    let o = run_plugin_in(host, &bin("loopback"), command, &env, c);
    o.expect_error(code).clone()
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    require_root();
    let host = TestNetns::new("lo-h");
    host.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let host_lo = (lo_is_up(&host), lo_addrs(&host));
    let cont = TestNetns::new("lo-x");
    let c = conf(Some("1.1.0"));
    let unchanged = |what: &str| {
        assert_eq!(
            (lo_is_up(&host), lo_addrs(&host)),
            host_lo,
            "{what} changed the host's lo"
        );
        assert!(!lo_is_up(&cont), "{what} set the container's lo up");
    };

    // The host's own namespace (the plugin's, here `host`): 4 naming
    // CNI_NETNS, for every verb: a DEL must never take the host's lo down.
    for verb in ["ADD", "CHECK", "DEL"] {
        let e = refused(&host, verb, "/proc/self/ns/net", &c, 4);
        assert!(e["msg"].as_str().unwrap().starts_with("CNI_NETNS"), "{e}");
        unchanged(&format!("{verb} with the host's netns"));
    }
    // Missing, or naming no namespace.
    for (verb, ns) in [
        ("ADD", ""),
        ("CHECK", ""),
        ("ADD", "/run/netns/berth-none-xyz"),
    ] {
        let e = refused(&host, verb, ns, &c, 4);
        assert!(e.to_string().contains("CNI_NETNS"), "{verb} {ns:?}: {e}");
        unchanged(&format!("{verb} with CNI_NETNS {ns:?}"));
    }
    // A berth-host config of another mode sent to loopback: 7 naming mode.
    for mode in [json!("host"), json!("macvlan"), json!(""), json!(5)] {
        let mut bad = c.clone();
        bad["mode"] = mode.clone();
        for verb in ["ADD", "CHECK", "DEL", "STATUS", "GC"] {
            let e = refused(&host, verb, cont.path_str(), &bad, 7);
            assert!(
                e["msg"].as_str().unwrap().starts_with("mode:"),
                "{mode}: {e}"
            );
            unchanged(&format!("{verb} with mode {mode}"));
        }
    }
    // Mode none is the same plugin.
    let mut none = c.clone();
    none["mode"] = json!("none");
    let lo = Cni::new("loopback").ifname("lo").netns(&cont);
    let with_mode = lo.add(&none).expect_ok().clone();
    assert_eq!(with_mode, lo.add(&c).expect_ok().clone());
    lo.del(&none).assert_ok();
    assert!(!lo_is_up(&cont));

    // DEL when the namespace is already gone, or without one: done.
    for ns in ["/run/netns/berth-gone-xyz", ""] {
        let env = [
            ("CNI_CONTAINERID", "lo-gone"),
            ("CNI_NETNS", ns),
            ("CNI_IFNAME", "lo"),
            ("CNI_PATH", "/nonexistent"),
        ];
        let o = run_plugin_in(&host, &bin("loopback"), "DEL", &env, &c);
        o.assert_ok();
        assert_eq!(o.stdout.trim(), "", "{o}");
    }
    unchanged("DEL of a gone namespace");
}
