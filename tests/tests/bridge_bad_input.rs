//! berth-bridge refuses bad input with the right CNI error code, a message
//! naming the culprit, and leaves the host as it was (root).
//!
//! Every case snapshots what the plugin could touch before and after the
//! run and compares:
//! - host links that are the network's bridge, the container's host veth, a
//!   port of the bridge, or a link the case made (with kind, master, flags,
//!   MTU, MAC), their addresses, and every host address inside the test's
//!   subnets;
//! - the test netns: links, addresses, routes;
//! - nftables: the objects of table `inet berth` named after the network;
//! - the network's directory in the run dir (every file, byte for byte);
//! - the IPAM dataDir: every file except the network's SQLite store files,
//!   and the allocations the store holds. (A failed ADD that got as far as
//!   IPAM may leave an empty store behind; what it must not leave is an
//!   allocation.)
//!
//! Host-wide listings are filtered to those objects because tests of this
//! and other processes create links and rules at the same time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

struct Fx {
    name: String,
    bridge: String,
    v4: String,
    v6: String,
    run: Arc<TempDir>,
    data: TempDir,
    ns: TestNetns,
    _nft: NftNetworkGuard,
    _bridge_guard: LinkGuard,
}

impl Fx {
    fn new(tag: &str) -> Fx {
        require_root();
        let name = format!("bb-{}-{}", std::process::id(), next_id());
        let bridge = unique_name("bb", IFNAMSIZ_MAX);
        let (v4, v6) = unique_subnets();
        Fx {
            ns: TestNetns::new(tag),
            _nft: NftNetworkGuard::new(name.clone()),
            _bridge_guard: LinkGuard::new(bridge.clone()),
            name,
            bridge,
            v4,
            v6,
            run: shared_run_dir(),
            data: TempDir::new(&format!("{tag}-data")),
        }
    }

    fn v4_host(&self, host: u8) -> String {
        format!("{}.{host}", self.v4.trim_end_matches(".0/24"))
    }

    /// A valid dual-stack config with masquerading (so a leaked firewall
    /// object would show).
    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": self.name,
            "type": "berth-bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "berth-ipam",
                "dataDir": self.data.path().to_str().unwrap(),
                "ranges": [[{"subnet": self.v4}], [{"subnet": self.v6}]],
            },
        })
    }

    fn cni(&self) -> Cni {
        Cni::new(BRIDGE_BIN)
            .netns(&self.ns)
            .env("BERTH_RUN_DIR", self.run.path().to_str().unwrap())
    }

    /// The environment a runtime would pass for ADD, as pairs.
    fn env(&self, c: &Cni) -> Vec<(String, String)> {
        let mut v = vec![
            ("CNI_CONTAINERID".to_string(), c.containerid.clone()),
            ("CNI_NETNS".to_string(), c.netns.clone()),
            ("CNI_IFNAME".to_string(), c.ifname.clone()),
            ("CNI_PATH".to_string(), c.path.clone()),
        ];
        v.extend(c.extra_env.iter().cloned());
        v
    }

    fn in_subnets(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2]) == self.v4
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                let base: std::net::Ipv6Addr = self.v6.trim_end_matches("/64").parse().unwrap();
                s[..4] == base.segments()[..4]
            }
        }
    }

    fn snapshot(&self, c: &Cni, extra_links: &[&str]) -> Snapshot {
        // Host links.
        let mut names: Vec<String> = vec![
            self.bridge.clone(),
            bridge_host_veth(&c.containerid, &c.ifname),
            bridge_host_veth(&c.containerid, "eth0"),
        ];
        names.extend(extra_links.iter().map(|s| s.to_string()));
        if link_exists(&self.bridge) {
            for l in ip_json(&["link", "show", "master", &self.bridge])
                .as_array()
                .unwrap()
            {
                names.push(l["ifname"].as_str().unwrap().to_string());
            }
        }
        names.sort();
        names.dedup();
        let mut host_links = Vec::new();
        let mut host_addrs = Vec::new();
        for n in &names {
            let out = run("ip", &["-j", "-d", "addr", "show", "dev", n]);
            if !out.status.success() {
                continue; // does not exist
            }
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            for l in v.as_array().unwrap() {
                host_links.push(describe_link(l));
                host_addrs.extend(describe_addrs(l));
            }
        }
        // Any host address inside our subnets, wherever it is.
        for l in ip_json(&["addr", "show"]).as_array().unwrap() {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                if self.in_subnets(a["local"].as_str().unwrap_or("")) {
                    host_addrs.push(format!(
                        "{} {}/{}",
                        l["ifname"].as_str().unwrap(),
                        a["local"].as_str().unwrap(),
                        a["prefixlen"]
                    ));
                }
            }
        }
        host_addrs.sort();
        host_addrs.dedup();

        // The test netns.
        let mut netns: Vec<String> = Vec::new();
        for l in self.ns.ip_json(&["-d", "addr", "show"]).as_array().unwrap() {
            netns.push(describe_link(l));
            netns.extend(describe_addrs(l));
        }
        for fam in ["-4", "-6"] {
            for r in self
                .ns
                .ip_json(&[fam, "route", "show", "table", "all"])
                .as_array()
                .unwrap()
            {
                netns.push(format!("route {r}"));
            }
        }

        // Data dir: files other than the network's store, and allocations.
        let store_dir = format!("{}/", self.name);
        let data_files: Vec<String> = dir_tree(self.data.path())
            .into_keys()
            .filter(|k| {
                k != &self.name
                    && !(k.starts_with(&store_dir)
                        && [
                            "ipam.db",
                            "ipam.db-wal",
                            "ipam.db-shm",
                            "ipam.db-journal",
                            "ipam.lock",
                        ]
                        .contains(&&k[store_dir.len()..]))
            })
            .collect();
        let allocations = match SqliteStore::open_existing(self.data.path(), &self.name)
            .unwrap_or_else(|e| panic!("open ipam store: {e}"))
        {
            None => Vec::new(),
            Some(mut st) => {
                let mut v: Vec<String> = st
                    .list()
                    .unwrap_or_else(|e| panic!("list ipam store: {e}"))
                    .into_iter()
                    .map(|a| format!("{} {} {}", a.ip, a.owner.container_id, a.owner.ifname))
                    .collect();
                v.sort();
                v
            }
        };

        Snapshot {
            host_links,
            host_addrs,
            netns,
            nft: berth_nft_objects(&self.name),
            run: dir_tree(&self.run.path().join(&self.name)),
            data_files,
            allocations,
        }
    }

    /// Runs `f` between two snapshots; asserts the error code, that the
    /// message (or details) contains every needle, and that nothing changed.
    fn expect_rejected(
        &self,
        c: &Cni,
        extra_links: &[&str],
        code: u64,
        needles: &[&str],
        f: impl FnOnce() -> PluginOutput,
    ) -> PluginOutput {
        let before = self.snapshot(c, extra_links);
        let out = f();
        out.expect_error(code);
        let j = out.json.as_ref().unwrap();
        let msg = j["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("error without msg: {out}"));
        assert!(!msg.is_empty(), "empty msg: {out}");
        let text = format!("{msg} {}", j["details"].as_str().unwrap_or(""));
        for n in needles {
            assert!(text.contains(n), "error message should name {n:?}: {out}");
        }
        let after = self.snapshot(c, extra_links);
        before.assert_same(&after, &out);
        out
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    host_links: Vec<String>,
    host_addrs: Vec<String>,
    netns: Vec<String>,
    nft: Vec<String>,
    run: BTreeMap<String, Option<Vec<u8>>>,
    data_files: Vec<String>,
    allocations: Vec<String>,
}

impl Snapshot {
    fn assert_same(&self, after: &Snapshot, out: &PluginOutput) {
        let mut diffs = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{what}:\n  before: {a}\n  after:  {b}"));
            }
        };
        cmp(
            "host links",
            format!("{:?}", self.host_links),
            format!("{:?}", after.host_links),
        );
        cmp(
            "host addresses",
            format!("{:?}", self.host_addrs),
            format!("{:?}", after.host_addrs),
        );
        cmp(
            "netns",
            format!("{:?}", self.netns),
            format!("{:?}", after.netns),
        );
        cmp(
            "nftables",
            format!("{:?}", self.nft),
            format!("{:?}", after.nft),
        );
        let run = |m: &BTreeMap<String, Option<Vec<u8>>>| {
            format!(
                "{:?}",
                m.iter()
                    .map(|(k, v)| (
                        k.clone(),
                        v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
                    ))
                    .collect::<Vec<_>>()
            )
        };
        cmp("run dir", run(&self.run), run(&after.run));
        cmp(
            "data dir files",
            format!("{:?}", self.data_files),
            format!("{:?}", after.data_files),
        );
        cmp(
            "ipam allocations",
            format!("{:?}", self.allocations),
            format!("{:?}", after.allocations),
        );
        assert!(
            diffs.is_empty(),
            "the host changed:\n{}\nplugin run: {out}",
            diffs.join("\n")
        );
    }
}

/// The stable description of a link from `ip -j -d addr/link show`.
fn describe_link(l: &Value) -> String {
    format!(
        "link {} kind={} master={} flags={} mtu={} mac={}",
        l["ifname"].as_str().unwrap_or(""),
        l["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
        l["master"].as_str().unwrap_or("-"),
        l["flags"],
        l["mtu"],
        l["address"].as_str().unwrap_or("-"),
    )
}

fn describe_addrs(l: &Value) -> Vec<String> {
    l["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} {}/{}",
                l["ifname"].as_str().unwrap_or(""),
                a["local"].as_str().unwrap_or(""),
                a["prefixlen"]
            )
        })
        .collect()
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

// ---------------------------------------------------------------------------
// stdin and version

#[test]
fn malformed_json_is_a_decode_error() {
    let fx = Fx::new("bad-json");
    let c = fx.cni();
    let env = fx.env(&c);
    fx.expect_rejected(&c, &[], 6, &[], || {
        run_plugin_raw(&bin(BRIDGE_BIN), "ADD", &env_refs(&env), b"{bad")
    });
    let out = run_plugin_raw(&bin(BRIDGE_BIN), "ADD", &env_refs(&env), b"{bad");
    let msg = out.error_msg().unwrap().to_ascii_lowercase();
    assert!(
        msg.contains("json") || msg.contains("config") || msg.contains("stdin"),
        "{out}"
    );
}

#[test]
fn unknown_cni_version_lists_the_supported_ones() {
    let fx = Fx::new("bad-version");
    let c = fx.cni();
    let mut conf = fx.conf();
    conf["cniVersion"] = json!("9.9.9");
    let out = fx.expect_rejected(&c, &[], 1, &["9.9.9"], || c.add(&conf));
    let details = out.json.as_ref().unwrap()["details"]
        .as_str()
        .unwrap_or_else(|| panic!("no details: {out}"));
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        assert!(details.contains(v), "details should list {v}: {out}");
    }
}

// ---------------------------------------------------------------------------
// environment

#[test]
fn missing_environment_variables_are_named() {
    let fx = Fx::new("bad-env");
    let c = fx.cni();
    let conf = fx.conf();
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let env: Vec<(String, String)> = fx.env(&c).into_iter().filter(|(k, _)| k != var).collect();
        fx.expect_rejected(&c, &[], 4, &[var], || {
            run_plugin(&bin(BRIDGE_BIN), "ADD", &env_refs(&env), &conf)
        });
    }
}

#[test]
fn bad_container_id() {
    let fx = Fx::new("bad-cid");
    let c = fx.cni().containerid("-bad id");
    let conf = fx.conf();
    fx.expect_rejected(&c, &[], 4, &["CNI_CONTAINERID"], || c.add(&conf));
}

#[test]
fn bad_ifnames() {
    let fx = Fx::new("bad-ifname");
    let conf = fx.conf();
    for bad in ["abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b"] {
        let c = fx.cni().ifname(bad);
        fx.expect_rejected(&c, &[], 4, &["CNI_IFNAME"], || c.add(&conf));
    }
}

#[test]
fn netns_that_does_not_exist() {
    let fx = Fx::new("bad-netns");
    let c = fx.cni().netns_path(format!(
        "/run/netns/berth-t-{}-{}-nonexistent",
        std::process::id(),
        next_id()
    ));
    let conf = fx.conf();
    fx.expect_rejected(&c, &[], 4, &["CNI_NETNS"], || c.add(&conf));
}

#[test]
fn unknown_cni_args_key() {
    let fx = Fx::new("bad-args");
    let conf = fx.conf();
    let c = fx.cni().cni_args("FOO=bar");
    fx.expect_rejected(&c, &[], 4, &["CNI_ARGS", "FOO"], || c.add(&conf));

    // With IgnoreUnknown the same key is fine; ADD + DEL leave the host as
    // it was, except for the bridge and its gateway addresses, which stay
    // (as with the reference plugin): a first cycle creates them.
    let warm = fx.cni();
    let r = warm.add(&conf).expect_ok().clone();
    warm.del(&with_prev_result(&conf, &r)).assert_ok();
    assert!(link_exists(&fx.bridge));
    let c = fx.cni().cni_args("IgnoreUnknown=1;FOO=bar");
    let before = fx.snapshot(&c, &[]);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(r["ips"].as_array().unwrap().len(), 2, "{r}");
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    let after = fx.snapshot(&c, &[]);
    let del = c.del(&conf);
    before.assert_same(&after, &del);
}

// ---------------------------------------------------------------------------
// IPAM config

#[test]
fn subnets_too_small() {
    let fx = Fx::new("bad-small");
    let c = fx.cni();
    let base = fx.v4.trim_end_matches(".0/24");
    let v6 = fx.v6.trim_end_matches("/64");
    for subnet in [
        format!("{base}.0/31"),
        format!("{base}.0/32"),
        format!("{v6}/127"),
        format!("{v6}/128"),
    ] {
        let mut conf = fx.conf();
        conf["ipam"]["ranges"] = json!([[{"subnet": subnet}]]);
        fx.expect_rejected(&c, &[], 7, &["subnet", &subnet], || c.add(&conf));
    }
}

#[test]
fn overlapping_ranges() {
    let fx = Fx::new("bad-overlap");
    let c = fx.cni();
    // Two range sets over the same subnet.
    let mut conf = fx.conf();
    conf["ipam"]["ranges"] = json!([[{"subnet": fx.v4}], [{"subnet": fx.v4}]]);
    fx.expect_rejected(&c, &[], 7, &["ipam.ranges", "overlaps"], || c.add(&conf));
    // Two overlapping ranges in one set.
    let mut conf = fx.conf();
    conf["ipam"]["ranges"] = json!([[
        {"subnet": fx.v4},
        {"subnet": fx.v4, "rangeStart": fx.v4_host(10), "rangeEnd": fx.v4_host(20)},
    ]]);
    fx.expect_rejected(&c, &[], 7, &["ipam.ranges", "overlaps"], || c.add(&conf));
}

#[test]
fn requested_ip_outside_the_range_or_the_gateway() {
    let fx = Fx::new("bad-ip");
    let conf = fx.conf();
    let outside = "192.0.2.77";
    let c = fx.cni().cni_args(format!("IP={outside}"));
    fx.expect_rejected(&c, &[], 7, &["IP", outside], || c.add(&conf));
    let gw = fx.v4_host(1);
    let c = fx.cni().cni_args(format!("IP={gw}"));
    fx.expect_rejected(&c, &[], 7, &[&gw, "gateway"], || c.add(&conf));
    // Same through args.cni.ips.
    let mut conf2 = fx.conf();
    conf2["args"] = json!({"cni": {"ips": [outside]}});
    let c = fx.cni();
    fx.expect_rejected(&c, &[], 7, &["args.cni.ips", outside], || c.add(&conf2));
}

// ---------------------------------------------------------------------------
// bridge config

#[test]
fn hairpin_and_promisc_together() {
    let fx = Fx::new("bad-hairpin");
    let c = fx.cni();
    let mut conf = fx.conf();
    conf["hairpinMode"] = json!(true);
    conf["promiscMode"] = json!(true);
    fx.expect_rejected(&c, &[], 7, &["hairpinMode", "promiscMode"], || c.add(&conf));
}

#[test]
fn vlan_out_of_range() {
    let fx = Fx::new("bad-vlan");
    let c = fx.cni();
    let mut conf = fx.conf();
    conf["vlan"] = json!(5000);
    fx.expect_rejected(&c, &[], 7, &["vlan", "5000"], || c.add(&conf));
}

#[test]
fn disable_container_interface_with_ipam() {
    let fx = Fx::new("bad-dci");
    let c = fx.cni();
    let mut conf = fx.conf();
    conf["disableContainerInterface"] = json!(true);
    fx.expect_rejected(&c, &[], 7, &["disableContainerInterface", "ipam"], || {
        c.add(&conf)
    });
}

// ---------------------------------------------------------------------------
// conflicts with what exists

#[test]
fn ifname_already_in_the_netns() {
    let fx = Fx::new("bad-exists");
    let peer = unique_name("bx", IFNAMSIZ_MAX);
    run_ok(
        "ip",
        &[
            "-n",
            fx.ns.name(),
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ],
    );
    let c = fx.cni();
    let conf = fx.conf();
    fx.expect_rejected(&c, &[], 101, &["eth0"], || c.add(&conf));
    // The squatter is untouched (also covered by the netns snapshot).
    assert!(
        fx.ns
            .ip_json(&["link", "show", "dev", "eth0"])
            .as_array()
            .unwrap()
            .len()
            == 1
    );
}

#[test]
fn bridge_name_taken_by_another_kind_of_link() {
    let fx = Fx::new("bad-bridge");
    let peer = unique_name("bq", IFNAMSIZ_MAX);
    let _peer_guard = LinkGuard::new(peer.clone());
    // The fixture's bridge guard removes the squatter (and with it the peer).
    run_ok(
        "ip",
        &[
            "link", "add", &fx.bridge, "type", "veth", "peer", "name", &peer,
        ],
    );
    let c = fx.cni();
    let conf = fx.conf();
    fx.expect_rejected(&c, &[&peer], 7, &["bridge", &fx.bridge], || c.add(&conf));
    assert_eq!(
        ip_json(&["-d", "link", "show", "dev", &fx.bridge])[0]["linkinfo"]["info_kind"],
        "veth"
    );
}
