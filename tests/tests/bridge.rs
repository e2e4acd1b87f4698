//! berth-bridge (with berth-ipam) run for real, as a runtime runs it,
//! against real network namespaces, bridges and veths (root).
//!
//! Every test makes its own network: a unique network name ("bt-<pid>-<n>"),
//! a unique bridge (guarded: the plugin never deletes a bridge it did not
//! just create), private BERTH_RUN_DIR and IPAM dataDir, unique subnets, its
//! own namespaces. Everything is removed on drop, also when a test fails, so
//! the tests run in parallel.
//!
//! berth-bridge gives every network nftables rules in the host's table
//! `inet berth`; tests only look at (and, in their guards, only delete) the
//! objects named after their own network. The networks of concurrently
//! running tests share one BERTH_RUN_DIR ([`shared_run_dir`]), as all
//! networks of a host share /run/berth/bridge, except in
//! `networks_under_other_run_dirs_keep_their_firewall`, which runs alone.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

// ---------------------------------------------------------------------------
// fixture

/// Held (shared) by every test network; taken exclusively by the one test
/// that gives networks separate run dirs (see the module docs).
static RUN_DIR_MODE: RwLock<()> = RwLock::new(());

/// One test network: names, bridge, private state directories.
struct Net {
    name: String,
    bridge: String,
    v4: String,
    v6: String,
    run: Arc<TempDir>,
    data: TempDir,
    // Dropped after everything above: deletes leftovers of a failed test.
    _nft: NftNetworkGuard,
    _bridge_guard: LinkGuard,
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

impl Net {
    /// A network in the process-wide shared run dir.
    fn new(tag: &str) -> Net {
        let shared = RUN_DIR_MODE.read().unwrap_or_else(|e| e.into_inner());
        Net::with_run_dir(tag, shared_run_dir(), Some(shared))
    }

    fn with_run_dir(
        tag: &str,
        run: Arc<TempDir>,
        shared: Option<RwLockReadGuard<'static, ()>>,
    ) -> Net {
        require_root();
        let name = format!("bt-{}-{}", std::process::id(), next_id());
        let bridge = unique_name("bt", IFNAMSIZ_MAX);
        let (v4, v6) = unique_subnets();
        Net {
            _nft: NftNetworkGuard::new(name.clone()),
            _bridge_guard: LinkGuard::new(bridge.clone()),
            _shared: shared,
            name,
            bridge,
            v4,
            v6,
            run,
            data: TempDir::new(&format!("{tag}-data")),
        }
    }

    /// "10.a.b.<host>" in this network's IPv4 /24.
    fn v4_host(&self, host: u8) -> String {
        let base = self.v4.trim_end_matches(".0/24");
        format!("{base}.{host}")
    }

    /// "<prefix>::<host>" in this network's IPv6 /64.
    fn v6_host(&self, host: u16) -> String {
        let base = self.v6.trim_end_matches("::/64");
        format!("{base}::{host:x}")
    }

    fn v4_gateway(&self) -> String {
        self.v4_host(1)
    }

    fn v6_gateway(&self) -> String {
        self.v6_host(1)
    }

    /// A berth-ipam section with the given range sets.
    fn ipam(&self, ranges: Value) -> Value {
        json!({
            "type": "berth-ipam",
            "dataDir": self.data.path().to_str().unwrap(),
            "ranges": ranges,
        })
    }

    /// Dual-stack berth-bridge config, isGateway, no routes.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "berth-bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": self.ipam(json!([[{"subnet": self.v4}], [{"subnet": self.v6}]])),
        })
    }

    /// IPv4-only config whose range holds exactly one address (a /30:
    /// .1 is the gateway, .2 the only address).
    fn tiny_conf(&self, version: &str) -> Value {
        let base = self.v4.trim_end_matches(".0/24");
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "berth-bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": self.ipam(json!([[{"subnet": format!("{base}.0/30")}]])),
        })
    }

    /// berth-bridge for one container (fresh container id) in `ns`.
    fn cni(&self, ns: &TestNetns) -> Cni {
        self.cni_path(ns.path_str())
    }

    fn cni_path(&self, netns: &str) -> Cni {
        Cni::new(BRIDGE_BIN)
            .netns_path(netns)
            .env("BERTH_RUN_DIR", self.run.path().to_str().unwrap())
    }

    /// berth-ipam run directly for the same container (to ask it about
    /// allocations: CHECK is 107 when the container holds none).
    fn ipam_cni(&self, c: &Cni) -> Cni {
        Cni::new(IPAM_BIN)
            .containerid(c.containerid.clone())
            .netns_path(c.netns.clone())
            .ifname(c.ifname.clone())
    }

    /// Runs STATUS or GC (no container env).
    fn run_verb(&self, verb: &str, conf: &Value) -> PluginOutput {
        let path = bin_dir();
        let env = [
            ("CNI_PATH", path.to_str().unwrap()),
            ("BERTH_RUN_DIR", self.run.path().to_str().unwrap()),
        ];
        run_plugin(&bin(BRIDGE_BIN), verb, &env, conf)
    }

    /// `<run dir>/<network>`.
    fn net_dir(&self) -> PathBuf {
        self.run.path().join(&self.name)
    }

    /// Attachment records of the network (host veth names), sorted.
    fn records(&self) -> Vec<String> {
        bridge_records(&self.net_dir())
    }

    /// What berth-ipam's store holds for this network: (ip, container, ifname).
    fn allocations(&self) -> Vec<(IpAddr, String, String)> {
        let st = SqliteStore::open_existing(self.data.path(), &self.name)
            .unwrap_or_else(|e| panic!("open ipam store of {}: {e}", self.name));
        let Some(mut st) = st else { return Vec::new() };
        let mut v: Vec<_> = st
            .list()
            .unwrap_or_else(|e| panic!("list ipam store of {}: {e}", self.name))
            .into_iter()
            .map(|a| (a.ip, a.owner.container_id, a.owner.ifname))
            .collect();
        v.sort();
        v
    }

    /// Names of the host links enslaved to the bridge, sorted.
    fn bridge_ports(&self) -> Vec<String> {
        if !link_exists(&self.bridge) {
            return Vec::new();
        }
        let mut v = berth_tests::bridge_ports(&self.bridge);
        v.sort();
        v
    }

    /// The state a network has when nothing is attached: no ports, no run
    /// dir records, no allocations.
    fn assert_empty(&self) {
        assert_eq!(
            self.bridge_ports(),
            Vec::<String>::new(),
            "bridge {} still has ports",
            self.bridge
        );
        assert!(
            !self.net_dir().exists(),
            "run dir of network {} still exists: {:?}",
            self.name,
            dir_tree(&self.net_dir())
        );
        assert_eq!(
            self.allocations(),
            vec![],
            "ipam allocations left on {}",
            self.name
        );
    }
}

// ---------------------------------------------------------------------------
// observation helpers

fn host_veth(c: &Cni) -> String {
    bridge_host_veth(&c.containerid, &c.ifname)
}

/// The single link of `ip -j [-d] link show dev <name>` on the host.
fn host_link(name: &str, details: bool) -> Value {
    let args: &[&str] = if details {
        &["-d", "link", "show", "dev", name]
    } else {
        &["link", "show", "dev", name]
    };
    ip_json(args)[0].clone()
}

fn ns_link(ns: &TestNetns, ifname: &str) -> Option<Value> {
    ns.ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == ifname)
        .cloned()
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .map(|a| a.iter().map(|f| f.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Global addresses ("addr/prefix") of a link in a namespace (None = host).
fn addrs(ns: Option<&TestNetns>, ifname: &str) -> Vec<String> {
    let args = ["addr", "show", "dev", ifname];
    let v = match ns {
        Some(ns) => ns.ip_json(&args),
        None => ip_json(&args),
    };
    let mut out = Vec::new();
    for l in v.as_array().unwrap() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap(),
                    a["prefixlen"]
                ));
            }
        }
    }
    out.sort();
    out
}

/// Routes of a family ("-4"/"-6") in a namespace as (dst, gateway, dev).
fn routes(ns: &TestNetns, family: &str) -> Vec<(String, String, String)> {
    ns.ip_json(&[family, "route", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["gateway"].as_str().unwrap_or_default().to_string(),
                r["dev"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The addresses of a 1.x/0.3.x/0.4.0 result, without prefix, in order.
fn result_ips(r: &Value) -> Vec<String> {
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
        .collect()
}

fn result_ip(r: &Value, v4: bool) -> String {
    result_ips(r)
        .into_iter()
        .find(|a| a.contains('.') == v4)
        .unwrap_or_else(|| panic!("result has no IPv{} address: {r}", if v4 { 4 } else { 6 }))
}

fn ipam_check_fails(net: &Net, c: &Cni, conf: &Value) {
    let o = net.ipam_cni(c).check(conf);
    assert_eq!(
        o.error_code(),
        Some(107),
        "berth-ipam CHECK should say {} holds no address: {o}",
        c.containerid
    );
}

// ---------------------------------------------------------------------------
// 1. the full life cycle

#[test]
fn dual_stack_add_ping_del() {
    let net = Net::new("life");
    let mut conf = net.conf("1.1.0");
    conf["ipMasq"] = json!(true);
    let ns_a = TestNetns::new("life-a");
    let ns_b = TestNetns::new("life-b");
    let a = net.cni(&ns_a);
    let b = net.cni(&ns_b);

    let ra = a.add(&conf).expect_ok().clone();
    let rb = b.add(&conf).expect_ok().clone();

    for (r, c, ns) in [(&ra, &a, &ns_a), (&rb, &b, &ns_b)] {
        // Result shape.
        assert_eq!(r["cniVersion"], "1.1.0", "{r}");
        let ifs = r["interfaces"]
            .as_array()
            .unwrap_or_else(|| panic!("no interfaces: {r}"));
        assert_eq!(ifs.len(), 3, "bridge, host veth, container: {r}");
        assert_eq!(ifs[0]["name"], net.bridge.as_str(), "{r}");
        assert_eq!(ifs[1]["name"], host_veth(c).as_str(), "{r}");
        assert!(ifs[0]["sandbox"].as_str().unwrap_or("").is_empty(), "{r}");
        assert!(ifs[1]["sandbox"].as_str().unwrap_or("").is_empty(), "{r}");
        assert_eq!(ifs[2]["name"], "eth0", "{r}");
        assert_eq!(ifs[2]["sandbox"], ns.path_str(), "{r}");
        for i in ifs {
            let mac = i["mac"]
                .as_str()
                .unwrap_or_else(|| panic!("interface without mac: {r}"));
            assert_eq!(mac.len(), 17, "{r}");
            assert_ne!(mac, "00:00:00:00:00:00", "{r}");
        }
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{r}");
        for ip in ips {
            assert_eq!(ip["interface"], 2, "{r}");
            assert!(
                ip.get("version").is_none(),
                "1.x results have no ips[].version: {r}"
            );
        }
        let v4 = result_ip(r, true);
        let v6 = result_ip(r, false);
        assert!(
            v4.starts_with(net.v4.trim_end_matches("0/24")),
            "{v4} not in {}",
            net.v4
        );
        assert!(
            v6.starts_with(net.v6.trim_end_matches(":/64")),
            "{v6} not in {}",
            net.v6
        );
        let gw: Vec<&str> = ips.iter().map(|i| i["gateway"].as_str().unwrap()).collect();
        assert!(gw.contains(&net.v4_gateway().as_str()), "{r}");
        assert!(gw.contains(&net.v6_gateway().as_str()), "{r}");

        // The addresses really are in the netns, on eth0, which is up.
        let link = ns_link(ns, "eth0").expect("eth0 in the netns");
        assert!(flags(&link).contains(&"UP".to_string()), "{link}");
        assert_eq!(link["address"], ifs[2]["mac"], "{link}");
        assert_eq!(addrs(Some(ns), "eth0"), {
            let mut v = vec![format!("{v4}/24"), format!("{v6}/64")];
            v.sort();
            v
        });
        // Subnet routes via eth0 (kernel prefix routes).
        assert!(routes(ns, "-4")
            .iter()
            .any(|(d, _, dev)| d == &net.v4 && dev == "eth0"));
        assert!(routes(ns, "-6")
            .iter()
            .any(|(d, _, dev)| d == &net.v6 && dev == "eth0"));

        // The host end is enslaved to the bridge and up.
        let hv = host_link(&host_veth(c), false);
        assert_eq!(hv["master"], net.bridge.as_str(), "{hv}");
        assert!(flags(&hv).contains(&"UP".to_string()), "{hv}");
        assert_eq!(hv["address"], ifs[1]["mac"], "{hv}");
    }
    assert_ne!(result_ip(&ra, true), result_ip(&rb, true));
    assert_ne!(result_ip(&ra, false), result_ip(&rb, false));

    // Gateway addresses on the bridge.
    let br = addrs(None, &net.bridge);
    assert!(br.contains(&format!("{}/24", net.v4_gateway())), "{br:?}");
    assert!(br.contains(&format!("{}/64", net.v6_gateway())), "{br:?}");
    assert_eq!(
        host_link(&net.bridge, false)["address"],
        ra["interfaces"][0]["mac"]
    );

    // Reachability: container to container and to the gateway, both families.
    assert_ping(&ns_a, &result_ip(&rb, true));
    assert_ping(&ns_a, &result_ip(&rb, false));
    assert_ping(&ns_b, &result_ip(&ra, true));
    assert_ping(&ns_b, &result_ip(&ra, false));
    assert_ping(&ns_a, &net.v4_gateway());
    assert_ping(&ns_a, &net.v6_gateway());

    // State: two records, the firewall, two allocations each.
    let mut want = vec![host_veth(&a), host_veth(&b)];
    want.sort();
    assert_eq!(net.records(), want);
    assert!(net.net_dir().join("rules.json").is_file());
    let nft = berth_nft_objects(&net.name);
    for kind in ["chain nat-", "chain fwd-", "set masq4-", "set masq6-"] {
        assert!(
            nft.iter().any(|o| o.starts_with(kind)),
            "no {kind}* for {}: {nft:?}",
            net.name
        );
    }
    assert_eq!(net.allocations().len(), 4, "{:?}", net.allocations());

    // DEL both: the first leaves the firewall (B still attached).
    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    assert!(!link_exists(&host_veth(&a)));
    assert!(ns_link(&ns_a, "eth0").is_none());
    assert!(
        !berth_nft_objects(&net.name).is_empty(),
        "firewall removed while B is attached"
    );
    assert_ping(&ns_b, &net.v4_gateway());
    b.del(&with_prev_result(&conf, &rb)).assert_ok();
    assert!(!link_exists(&host_veth(&b)));
    assert!(ns_link(&ns_b, "eth0").is_none());
    assert_eq!(berth_nft_objects(&net.name), Vec::<String>::new());
    net.assert_empty();
    ipam_check_fails(&net, &a, &conf);
    ipam_check_fails(&net, &b, &conf);

    // The addresses can be allocated again.
    let again = a.add(&conf).expect_ok().clone();
    assert_eq!(result_ips(&again).len(), 2);
    assert_ping(&ns_a, &net.v4_gateway());
    a.del(&with_prev_result(&conf, &again)).assert_ok();
    assert_eq!(berth_nft_objects(&net.name), Vec::<String>::new());
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 2. every cniVersion

#[test]
fn every_cni_version_gets_its_result_shape() {
    let net = Net::new("versions");
    for version in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "",
    ] {
        let ns = TestNetns::new("ver");
        let mut conf = net.conf(version);
        if version.is_empty() {
            conf.as_object_mut().unwrap().remove("cniVersion");
        }
        let c = net.cni(&ns);
        let r = c.add(&conf).expect_ok().clone();
        let want_version = if version.is_empty() { "0.1.0" } else { version };
        assert_eq!(r["cniVersion"], want_version, "{r}");
        match want_version {
            "0.1.0" | "0.2.0" => {
                assert!(
                    r.get("ips").is_none() && r.get("interfaces").is_none(),
                    "{version}: {r}"
                );
                let ip4 = r["ip4"]["ip"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{version}: no ip4.ip: {r}"));
                let ip6 = r["ip6"]["ip"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{version}: no ip6.ip: {r}"));
                assert!(
                    ip4.ends_with("/24") && ip4.starts_with(net.v4.trim_end_matches("0/24")),
                    "{r}"
                );
                assert!(ip6.ends_with("/64"), "{r}");
                assert_eq!(r["ip4"]["gateway"], net.v4_gateway().as_str(), "{r}");
                assert_eq!(r["ip6"]["gateway"], net.v6_gateway().as_str(), "{r}");
                assert_eq!(
                    addrs(Some(&ns), "eth0"),
                    {
                        let mut v = vec![ip4.to_string(), ip6.to_string()];
                        v.sort();
                        v
                    },
                    "{version}"
                );
            }
            _ => {
                assert!(
                    r.get("ip4").is_none() && r.get("ip6").is_none(),
                    "{version}: {r}"
                );
                let ips = r["ips"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{version}: no ips: {r}"));
                assert_eq!(ips.len(), 2, "{r}");
                let ifs = r["interfaces"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no interfaces: {r}"));
                assert_eq!(ifs.len(), 3, "{r}");
                assert_eq!(ifs[2]["sandbox"], ns.path_str(), "{r}");
                let old = want_version.starts_with("0.");
                for ip in ips {
                    assert_eq!(ip["interface"], 2, "{r}");
                    if old {
                        let fam = if ip["address"].as_str().unwrap().contains(':') {
                            "6"
                        } else {
                            "4"
                        };
                        assert_eq!(ip["version"], fam, "{version} needs ips[].version: {r}");
                    } else {
                        assert!(ip.get("version").is_none(), "{version}: {r}");
                    }
                }
                if old {
                    // 1.1.0-only interface fields are dropped.
                    assert!(ifs.iter().all(|i| i.get("mtu").is_none()), "{version}: {r}");
                }
            }
        }
        c.del(&conf).assert_ok();
        assert!(!link_exists(&host_veth(&c)), "{version}");
    }
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 3. DEL is idempotent and works without the netns

#[test]
fn del_twice_and_del_of_unknown_container() {
    let net = Net::new("del");
    let conf = net.conf("1.1.0");
    let ns = TestNetns::new("del");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let d1 = c.del(&with_prev_result(&conf, &r));
    d1.assert_ok();
    assert!(d1.stdout.trim().is_empty(), "DEL prints nothing: {d1}");
    assert!(ns_link(&ns, "eth0").is_none());
    assert!(!link_exists(&host_veth(&c)));
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    c.del(&conf).assert_ok();
    net.assert_empty();

    // Never added (also without prevResult).
    let ns2 = TestNetns::new("del-never");
    net.cni(&ns2).del(&conf).assert_ok();
    net.cni_path("").del(&conf).assert_ok();
    // After the ADD of another container: DEL of a stranger leaves it alone.
    let other = c.add(&conf).expect_ok().clone();
    net.cni(&ns2).del(&conf).assert_ok();
    assert!(link_exists(&host_veth(&c)));
    assert_eq!(net.allocations().len(), 2);
    c.del(&with_prev_result(&conf, &other)).assert_ok();
    net.assert_empty();
}

#[test]
fn del_with_empty_netns_removes_everything() {
    let net = Net::new("delnons");
    let conf = net.conf("1.1.0");
    let ns = TestNetns::new("delnons");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(net.allocations().len(), 2);
    let no_ns = c.clone().netns_path("");
    no_ns.del(&with_prev_result(&conf, &r)).assert_ok();
    assert!(
        !link_exists(&host_veth(&c)),
        "host veth left after DEL without CNI_NETNS"
    );
    assert!(
        ns_link(&ns, "eth0").is_none(),
        "container end left after DEL without CNI_NETNS"
    );
    net.assert_empty();
    no_ns.del(&conf).assert_ok();
}

#[test]
fn del_after_netns_is_gone_releases_the_address() {
    let net = Net::new("delgone");
    let conf = net.tiny_conf("1.1.0");
    let ns1 = TestNetns::new("delgone-1");
    let ns1_path = ns1.path_str().to_string();
    let c1 = net.cni(&ns1);
    let r = c1.add(&conf).expect_ok().clone();
    let only = net.v4_host(2);
    assert_eq!(result_ips(&r), vec![only.clone()]);

    // The range is full now.
    let ns2 = TestNetns::new("delgone-2");
    let c2 = net.cni(&ns2);
    let full = c2.add(&conf);
    full.expect_error(102);
    assert!(
        ns_link(&ns2, "eth0").is_none(),
        "failed ADD left eth0: {full}"
    );
    assert!(!link_exists(&host_veth(&c2)), "failed ADD left a host veth");

    drop(ns1); // ip netns del: the runtime lost the namespace
    assert!(!std::path::Path::new(&ns1_path).exists());
    c1.del(&with_prev_result(&conf, &r)).assert_ok();
    assert!(!link_exists(&host_veth(&c1)));
    assert_eq!(net.allocations(), vec![]);

    // The single address is free again.
    let r2 = c2.add(&conf).expect_ok().clone();
    assert_eq!(result_ips(&r2), vec![only]);
    c2.del(&with_prev_result(&conf, &r2)).assert_ok();
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 4. CHECK

fn check_conf(net: &Net) -> Value {
    let mut conf = net.conf("1.1.0");
    conf["ipam"]["routes"] = json!([{"dst": "192.0.2.0/24"}, {"dst": "2001:db8:1::/64"}]);
    conf
}

#[test]
fn check_after_add_succeeds_silently() {
    let net = Net::new("check-ok");
    let conf = check_conf(&net);
    let ns = TestNetns::new("check-ok");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert!(routes(&ns, "-4")
        .iter()
        .any(|(d, gw, _)| d == "192.0.2.0/24" && gw == &net.v4_gateway()));
    assert!(routes(&ns, "-6")
        .iter()
        .any(|(d, gw, _)| d == "2001:db8:1::/64" && gw == &net.v6_gateway()));
    let o = c.check(&with_prev_result(&conf, &r));
    o.assert_ok();
    assert_eq!(o.stdout.trim(), "", "CHECK prints nothing: {o}");

    // Without prevResult: a config error.
    let o = c.check(&conf);
    o.expect_error(7);
    assert!(o.error_msg().unwrap().contains("prevResult"), "{o}");
    // CHECK before 0.4.0: incompatible version.
    let mut old = with_prev_result(&net.conf("0.3.1"), &r);
    old["prevResult"]["cniVersion"] = json!("0.3.1");
    c.check(&old).expect_error(1);

    c.del(&with_prev_result(&conf, &r)).assert_ok();
    // After DEL: CHECK fails.
    let o = c.check(&with_prev_result(&conf, &r));
    assert!(!o.success(), "CHECK after DEL succeeded: {o}");
    net.assert_empty();
}

#[test]
fn check_notices_a_missing_address() {
    let net = Net::new("check-addr");
    let conf = check_conf(&net);
    let ns = TestNetns::new("check-addr");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let v6 = result_ip(&r, false);
    run_ok(
        "ip",
        &[
            "-n",
            ns.name(),
            "addr",
            "del",
            &format!("{v6}/64"),
            "dev",
            "eth0",
        ],
    );
    let o = c.check(&with_prev_result(&conf, &r));
    o.expect_error(107);
    assert!(
        o.error_msg().unwrap().contains(&v6),
        "CHECK error should name {v6}: {o}"
    );
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

#[test]
fn check_notices_a_missing_route() {
    let net = Net::new("check-route");
    let conf = check_conf(&net);
    let ns = TestNetns::new("check-route");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    run_ok("ip", &["-n", ns.name(), "route", "del", "192.0.2.0/24"]);
    let o = c.check(&with_prev_result(&conf, &r));
    o.expect_error(107);
    assert!(
        o.error_msg().unwrap().contains("192.0.2.0/24"),
        "CHECK error should name the route: {o}"
    );
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

#[test]
fn check_notices_a_missing_interface() {
    let net = Net::new("check-if");
    let conf = check_conf(&net);
    let ns = TestNetns::new("check-if");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    run_ok("ip", &["-n", ns.name(), "link", "del", "eth0"]);
    let o = c.check(&with_prev_result(&conf, &r));
    o.expect_error(107);
    assert!(
        o.error_msg().unwrap().contains("eth0"),
        "CHECK error should name eth0: {o}"
    );
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 5. duplicate ADD

#[test]
fn duplicate_add_is_refused_without_side_effects() {
    let net = Net::new("dup");
    // Two addresses: .2 and .3.
    let base = net.v4.trim_end_matches(".0/24").to_string();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": net.name,
        "type": "berth-bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipam": net.ipam(json!([[{"subnet": net.v4, "rangeStart": format!("{base}.2"), "rangeEnd": format!("{base}.3")}]])),
    });
    let ns = TestNetns::new("dup");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let first = net.allocations();
    assert_eq!(first.len(), 1);
    let ports = net.bridge_ports();
    assert_eq!(ports, vec![host_veth(&c)]);

    // Same container, same ifname, same netns.
    let o = c.add(&conf);
    o.expect_error(101);
    assert!(o.error_msg().unwrap().contains("eth0"), "{o}");
    assert_eq!(
        net.allocations(),
        first,
        "a duplicate ADD allocated an address"
    );
    assert_eq!(net.bridge_ports(), ports, "a duplicate ADD added a port");
    assert_eq!(
        ns.ip_json(&["link", "show"]).as_array().unwrap().len(),
        2,
        "lo + eth0 only"
    );

    // Same container and ifname in another netns.
    let ns2 = TestNetns::new("dup-2");
    let o = c.clone().netns(&ns2).add(&conf);
    o.expect_error(101);
    assert!(ns_link(&ns2, "eth0").is_none(), "{o}");
    assert_eq!(net.allocations(), first);
    assert_eq!(net.bridge_ports(), ports);

    // The original attachment is untouched...
    c.check(&with_prev_result(&conf, &r)).assert_ok();
    assert_ping(&ns, &net.v4_gateway());
    // ...and the second address is still free.
    let other = net.cni(&ns2);
    let r2 = other.add(&conf).expect_ok().clone();
    assert_ne!(result_ips(&r2), result_ips(&r));
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    other.del(&with_prev_result(&conf, &r2)).assert_ok();
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 6. GC

fn gc_round(key: &str) {
    let net = Net::new("gc");
    let conf = net.conf("1.1.0");
    let ns_a = TestNetns::new("gc-a");
    let ns_b = TestNetns::new("gc-b");
    let a = net.cni(&ns_a);
    let b = net.cni(&ns_b);
    let ra = a.add(&conf).expect_ok().clone();
    let rb = b.add(&conf).expect_ok().clone();
    assert_eq!(net.allocations().len(), 4);

    let mut gc = conf.clone();
    gc[key] = json!([{"containerID": a.containerid, "ifname": "eth0"}]);
    let o = net.run_verb("GC", &gc);
    o.assert_ok();
    assert_eq!(o.stdout.trim(), "", "GC prints nothing: {o}");

    // B is gone: host veth, container end, record, addresses.
    assert!(
        !link_exists(&host_veth(&b)),
        "{key}: B's host veth survived GC"
    );
    assert!(ns_link(&ns_b, "eth0").is_none());
    ipam_check_fails(&net, &b, &conf);
    let left: HashSet<String> = net
        .allocations()
        .into_iter()
        .map(|(_, cid, _)| cid)
        .collect();
    assert_eq!(left, HashSet::from([a.containerid.clone()]), "{key}");
    assert_eq!(net.allocations().len(), 2);
    assert_eq!(net.records(), vec![host_veth(&a)]);
    // A is untouched.
    assert_eq!(net.bridge_ports(), vec![host_veth(&a)]);
    a.check(&with_prev_result(&conf, &ra)).assert_ok();
    assert_ping(&ns_a, &net.v4_gateway());
    assert_ping(&ns_a, &net.v6_gateway());
    // B's addresses can be handed out again.
    let rb2 = b.add(&conf).expect_ok().clone();
    assert_eq!(result_ips(&rb2).len(), 2);
    let _ = rb;
    b.del(&with_prev_result(&conf, &rb2)).assert_ok();
    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    net.assert_empty();
}

#[test]
fn gc_releases_unlisted_attachments() {
    gc_round("cni.dev/valid-attachments");
}

#[test]
fn gc_accepts_the_legacy_attachments_key() {
    gc_round("cni.dev/attachments");
}

// ---------------------------------------------------------------------------
// 7. STATUS

#[test]
fn status_ready_then_exhausted() {
    let net = Net::new("status");
    let conf = net.tiny_conf("1.1.0");
    let o = net.run_verb("STATUS", &conf);
    o.assert_ok();
    assert_eq!(o.stdout.trim(), "", "STATUS prints nothing: {o}");
    net.run_verb("STATUS", &net.tiny_conf("1.0.0"))
        .expect_error(1);

    let ns = TestNetns::new("status");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let o = net.run_verb("STATUS", &conf);
    o.expect_error(50);

    c.del(&with_prev_result(&conf, &r)).assert_ok();
    let o = net.run_verb("STATUS", &conf);
    o.assert_ok();
    assert_eq!(o.stdout.trim(), "");
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 8. concurrency

#[test]
fn sixty_four_concurrent_adds_and_dels() {
    const N: usize = 64;
    let net = Net::new("par");
    let conf = net.conf("1.1.0");
    let nss: Vec<TestNetns> = (0..N).map(|_| TestNetns::new("par")).collect();
    let cnis: Vec<Cni> = nss.iter().map(|ns| net.cni(ns)).collect();

    let adds: Vec<PluginOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = cnis.iter().map(|c| s.spawn(|| c.add(&conf))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let results: Vec<Value> = adds.iter().map(|o| o.expect_ok().clone()).collect();
    let v4: HashSet<String> = results.iter().map(|r| result_ip(r, true)).collect();
    let v6: HashSet<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert_eq!(v4.len(), N, "IPv4 addresses are not distinct");
    assert_eq!(v6.len(), N, "IPv6 addresses are not distinct");
    assert_eq!(net.allocations().len(), 2 * N);
    assert_eq!(net.bridge_ports().len(), N);
    assert_eq!(net.records().len(), N);
    for (ns, r) in nss.iter().zip(&results) {
        assert_eq!(addrs(Some(ns), "eth0").len(), 2, "{}: {r}", ns.name());
    }
    assert_ping(&nss[0], &result_ip(&results[N - 1], true));

    let dels: Vec<PluginOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = cnis
            .iter()
            .zip(&results)
            .map(|(c, r)| {
                let conf = with_prev_result(&conf, r);
                s.spawn(move || c.del(&conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &dels {
        o.assert_ok();
    }
    for c in &cnis {
        assert!(
            !link_exists(&host_veth(c)),
            "{} left after DEL",
            host_veth(c)
        );
    }
    for ns in &nss {
        assert!(
            ns_link(ns, "eth0").is_none(),
            "{} still has eth0",
            ns.name()
        );
    }
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 9. options

#[test]
fn hairpin_and_port_isolation_are_set_on_the_port() {
    let net = Net::new("hairpin");
    let plain = net.conf("1.1.0");
    let mut conf = plain.clone();
    conf["hairpinMode"] = json!(true);
    conf["portIsolation"] = json!(true);
    let ns = TestNetns::new("hairpin");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let ns2 = TestNetns::new("hairpin-plain");
    let c2 = net.cni(&ns2);
    let r2 = c2.add(&plain).expect_ok().clone();

    let port = |c: &Cni| host_link(&host_veth(c), true)["linkinfo"]["info_slave_data"].clone();
    let p = port(&c);
    assert_eq!(p["hairpin"], true, "hairpinMode not applied: {p}");
    assert_eq!(p["isolated"], true, "portIsolation not applied: {p}");
    let p2 = port(&c2);
    assert_eq!(p2["hairpin"], false, "{p2}");
    assert_eq!(p2["isolated"], false, "{p2}");

    c.del(&with_prev_result(&conf, &r)).assert_ok();
    c2.del(&with_prev_result(&plain, &r2)).assert_ok();
    net.assert_empty();
}

#[test]
fn promisc_mode_sets_the_bridge_promiscuous() {
    let net = Net::new("promisc");
    let mut conf = net.conf("1.1.0");
    conf["promiscMode"] = json!(true);
    let ns = TestNetns::new("promisc");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let br = host_link(&net.bridge, false);
    assert!(
        flags(&br).contains(&"PROMISC".to_string()),
        "bridge not promiscuous: {br}"
    );
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

#[test]
fn mtu_applies_to_both_veth_ends() {
    let net = Net::new("mtu");
    let mut conf = net.conf("1.1.0");
    conf["mtu"] = json!(1400);
    let ns = TestNetns::new("mtu");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(host_link(&host_veth(&c), false)["mtu"], 1400);
    assert_eq!(ns_link(&ns, "eth0").unwrap()["mtu"], 1400);
    assert_eq!(r["interfaces"][2]["mtu"], 1400, "{r}");
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

#[test]
fn container_mac_priority() {
    let net = Net::new("mac");
    let p = std::process::id();
    let mac = |n: u8| {
        format!(
            "02:b7:{:02x}:{:02x}:{:02x}:{n:02x}",
            (p >> 16) & 0xff,
            (p >> 8) & 0xff,
            p & 0xff
        )
    };
    let base = net.conf("1.1.0");

    // CNI_ARGS MAC only.
    let mut cases = Vec::new();
    cases.push((base.clone(), mac(1)));
    // CNI_ARGS MAC and args.cni.mac: args wins.
    let mut with_args = base.clone();
    with_args["args"] = json!({"cni": {"mac": mac(2)}});
    cases.push((with_args.clone(), mac(2)));
    // All three: runtimeConfig wins.
    let mut with_rt = with_args.clone();
    with_rt["runtimeConfig"] = json!({"mac": mac(3)});
    cases.push((with_rt, mac(3)));

    for (conf, want) in cases {
        let ns = TestNetns::new("mac");
        // berth-ipam sees the same CNI_ARGS and, like host-local, refuses
        // keys it doesn't know without IgnoreUnknown.
        let c = net
            .cni(&ns)
            .cni_args(format!("IgnoreUnknown=1;MAC={}", mac(1)));
        let r = c.add(&conf).expect_ok().clone();
        assert_eq!(
            ns_link(&ns, "eth0").unwrap()["address"],
            want.as_str(),
            "{conf}"
        );
        assert_eq!(r["interfaces"][2]["mac"], want.as_str(), "{r}");
        c.del(&with_prev_result(&conf, &r)).assert_ok();
    }
    net.assert_empty();
}

#[test]
fn is_default_gateway_adds_default_routes() {
    let net = Net::new("defgw");
    let mut conf = net.conf("1.1.0");
    conf["isGateway"] = json!(false);
    conf["isDefaultGateway"] = json!(true);
    let ns = TestNetns::new("defgw");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let d4: Vec<_> = routes(&ns, "-4")
        .into_iter()
        .filter(|(d, _, _)| d == "default")
        .collect();
    assert_eq!(
        d4,
        vec![("default".into(), net.v4_gateway(), "eth0".into())]
    );
    let d6: Vec<_> = routes(&ns, "-6")
        .into_iter()
        .filter(|(d, _, _)| d == "default")
        .collect();
    assert_eq!(
        d6,
        vec![("default".into(), net.v6_gateway(), "eth0".into())]
    );
    // The gateway is on the bridge (isDefaultGateway implies isGateway).
    let br = addrs(None, &net.bridge);
    assert!(br.contains(&format!("{}/24", net.v4_gateway())), "{br:?}");
    assert_ping(&ns, &net.v4_gateway());
    // The result lists the routes, and CHECK agrees.
    let dsts: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["dst"].as_str().unwrap())
        .collect();
    assert!(dsts.contains(&"0.0.0.0/0") && dsts.contains(&"::/0"), "{r}");
    c.check(&with_prev_result(&conf, &r)).assert_ok();
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();
}

#[test]
fn disable_container_interface_leaves_it_down() {
    let net = Net::new("l2");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": net.name,
        "type": "berth-bridge",
        "bridge": net.bridge,
        "disableContainerInterface": true,
    });
    let ns = TestNetns::new("l2-down");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["ips"].as_array().is_none_or(|a| a.is_empty()), "{r}");
    let l = ns_link(&ns, "eth0").expect("eth0");
    assert!(!flags(&l).contains(&"UP".to_string()), "eth0 is up: {l}");
    assert_eq!(
        host_link(&host_veth(&c), false)["master"],
        net.bridge.as_str()
    );

    // Plain L2 mode (no ipam, interface enabled): up, no addresses.
    let mut up = conf.clone();
    up.as_object_mut()
        .unwrap()
        .remove("disableContainerInterface");
    let ns2 = TestNetns::new("l2-up");
    let c2 = net.cni(&ns2);
    let r2 = c2.add(&up).expect_ok().clone();
    let l2 = ns_link(&ns2, "eth0").expect("eth0");
    assert!(flags(&l2).contains(&"UP".to_string()), "{l2}");
    assert_eq!(addrs(Some(&ns2), "eth0"), Vec::<String>::new());

    c.del(&with_prev_result(&conf, &r)).assert_ok();
    c2.del(&with_prev_result(&up, &r2)).assert_ok();
    net.assert_empty();
}

#[test]
fn bridge_mac_is_set_and_stable() {
    let net = Net::new("brmac");
    let conf = net.conf("1.1.0");
    let ns_a = TestNetns::new("brmac-a");
    let ns_b = TestNetns::new("brmac-b");
    let a = net.cni(&ns_a);
    let b = net.cni(&ns_b);
    let bridge_mac = || {
        host_link(&net.bridge, false)["address"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let ra = a.add(&conf).expect_ok().clone();
    let mac = bridge_mac();
    assert_ne!(mac, "00:00:00:00:00:00");
    assert_eq!(ra["interfaces"][0]["mac"], mac.as_str(), "{ra}");
    // Ports joining or leaving don't change it (a bridge without a set
    // MAC would take the lowest port MAC).
    let rb = b.add(&conf).expect_ok().clone();
    assert_eq!(bridge_mac(), mac);
    assert_eq!(rb["interfaces"][0]["mac"], mac.as_str(), "{rb}");
    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    assert_eq!(bridge_mac(), mac);
    b.del(&with_prev_result(&conf, &rb)).assert_ok();
    assert_eq!(bridge_mac(), mac);
    // A re-created bridge of the same name gets the same MAC.
    run_ok("ip", &["link", "del", "dev", &net.bridge]);
    let ra = a.add(&conf).expect_ok().clone();
    assert_eq!(bridge_mac(), mac);
    a.del(&with_prev_result(&conf, &ra)).assert_ok();
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// 10. IPAM plugin missing

#[test]
fn missing_ipam_plugin_leaves_nothing_behind() {
    let net = Net::new("noipam");
    let conf = net.conf("1.1.0");
    let empty = TempDir::new("noipam-path");
    let ns = TestNetns::new("noipam");
    let c = net.cni(&ns).cni_path(empty.path().to_str().unwrap());
    let o = c.add(&conf);
    o.expect_error(7);
    assert!(o.error_msg().unwrap().contains("ipam.type"), "{o}");
    assert!(o.error_msg().unwrap().contains("berth-ipam"), "{o}");
    assert!(!link_exists(&host_veth(&c)), "failed ADD left a host veth");
    assert!(
        !link_exists(&net.bridge),
        "failed ADD left the bridge it created"
    );
    assert_eq!(
        ns.ip_json(&["link", "show"]).as_array().unwrap().len(),
        1,
        "only lo"
    );
    assert!(
        !net.net_dir().exists(),
        "run-dir records left: {:?}",
        dir_tree(net.run.path())
    );
    assert_eq!(dir_tree(net.data.path()), Default::default());
    // The DEL a runtime sends after a failed ADD succeeds.
    net.cni(&ns)
        .containerid(c.containerid.clone())
        .del(&conf)
        .assert_ok();
    net.assert_empty();
}

// ---------------------------------------------------------------------------
// firewall ownership across run dirs

/// Two berth installations (different run dirs) whose networks share the
/// host's `inet berth` table: removing the last container of one network
/// must remove that network's rules only, not the other network's.
#[test]
fn networks_under_other_run_dirs_keep_their_firewall() {
    let _alone = RUN_DIR_MODE.write().unwrap_or_else(|e| e.into_inner());
    let one = Net::with_run_dir("own-1", Arc::new(TempDir::new("own-1-run")), None);
    let two = Net::with_run_dir("own-2", Arc::new(TempDir::new("own-2-run")), None);
    let conf1 = one.conf("1.1.0");
    let conf2 = two.conf("1.1.0");
    let ns1 = TestNetns::new("own-1");
    let ns2 = TestNetns::new("own-2");
    let c1 = one.cni(&ns1);
    let c2 = two.cni(&ns2);
    let r1 = c1.add(&conf1).expect_ok().clone();
    let r2 = c2.add(&conf2).expect_ok().clone();
    let before = berth_nft_objects(&two.name);
    assert!(
        !before.is_empty(),
        "network {} has no nft objects",
        two.name
    );

    c1.del(&with_prev_result(&conf1, &r1)).assert_ok();
    assert_eq!(berth_nft_objects(&one.name), Vec::<String>::new());
    assert_eq!(
        berth_nft_objects(&two.name),
        before,
        "DEL of the last container of {} (run dir {}) removed the rules of {} (run dir {})",
        one.name,
        one.run.path().display(),
        two.name,
        two.run.path().display()
    );
    c2.check(&with_prev_result(&conf2, &r2)).assert_ok();
    c2.del(&with_prev_result(&conf2, &r2)).assert_ok();
    assert_eq!(berth_nft_objects(&two.name), Vec::<String>::new());
    one.assert_empty();
    two.assert_empty();
}

/// A failure late in ADD (after the bridge, veth and addresses exist: a
/// route whose gateway is unreachable) is rolled back completely,
/// including the bridge the failed ADD created.
#[test]
fn late_add_failure_is_rolled_back() {
    let net = Net::new("late");
    let mut conf = net.conf("1.1.0");
    conf["ipam"]["routes"] = json!([{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]);
    let ns = TestNetns::new("late");
    let c = net.cni(&ns);
    assert!(!link_exists(&net.bridge));
    let o = c.add(&conf);
    assert!(
        !o.success(),
        "ADD with an unreachable route gateway succeeded: {o}"
    );
    assert!(
        o.error_msg().is_some_and(|m| m.contains("192.0.2.0/24")),
        "{o}"
    );
    assert!(!link_exists(&host_veth(&c)), "failed ADD left a host veth");
    assert!(ns_link(&ns, "eth0").is_none(), "failed ADD left eth0");
    assert!(
        !link_exists(&net.bridge),
        "failed ADD left the bridge it created"
    );
    assert_eq!(berth_nft_objects(&net.name), Vec::<String>::new());
    net.assert_empty();
    c.del(&conf).assert_ok();
    net.assert_empty();
}

/// A new container's router solicitations and MLD reports are dropped as
/// they enter the bridge: neither the containers already there nor the
/// host get them (flooding them made every ADD cost more the more
/// containers there were). Other multicast still reaches both, and
/// neighbour discovery between containers is untouched (the dual-stack
/// ping test).
#[test]
fn solicitations_and_mld_reports_stay_off_the_bridge() {
    let net = Net::new("quiet");
    let conf = net.conf("1.1.0");
    let (ns_a, ns_b) = (TestNetns::new("quiet-a"), TestNetns::new("quiet-b"));
    let (a, b) = (net.cni(&ns_a), net.cni(&ns_b));
    a.add(&conf).expect_ok();
    // Frames A's interface received (a flooded solicitation or report is
    // dropped by A's IPv6 stack without any ICMP counter seeing it).
    let sibling = || {
        ns_a.ip_json(&["-s", "link", "show", "eth0"])[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .unwrap()
    };
    let host = || std::fs::read_to_string(format!("/proc/net/dev_snmp6/{}", net.bridge)).unwrap();
    // ICMPv6 messages of a type in a dev_snmp6 text (absent: none yet).
    let count = |text: &str, counter: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(counter))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    // A host multicast router listens on ff02::16, where MLDv2 reports go.
    let bridge_index = host_link(&net.bridge, false)["ifindex"].as_u64().unwrap() as u32;
    let mld_router = std::net::UdpSocket::bind("[::]:0").unwrap();
    mld_router
        .join_multicast_v6(&"ff02::16".parse().unwrap(), bridge_index)
        .unwrap();
    // Container A's own solicitations and the bridge's reports for the
    // gateway address (which do go to every port) are over first: wait
    // until A has received nothing for 1.5 s.
    let settle_deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (mut last, mut since) = (sibling(), std::time::Instant::now());
    while since.elapsed() < std::time::Duration::from_millis(1500) {
        assert!(
            std::time::Instant::now() < settle_deadline,
            "container A kept receiving frames"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = sibling();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    let (a_before, host_before) = (sibling(), host());
    b.add(&conf).expect_ok();
    // B sends a solicitation within rtr_solicit_delay (1 s) and its
    // reports at once.
    let sent = || ns_b.exec(&["cat", "/proc/net/dev_snmp6/eth0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&sent().stdout).into_owned();
        if count(&text, "Icmp6OutType133") > 0 && count(&text, "Icmp6OutType143") > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B sent no solicitation or report: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (counter, what) in [
        ("Icmp6InType133", "solicitation"),
        ("Icmp6InType143", "MLD report"),
    ] {
        assert_eq!(
            count(&host(), counter),
            count(&host_before, counter),
            "the host got B's {what}"
        );
    }
    assert_eq!(
        sibling(),
        a_before,
        "B's solicitations or reports were flooded to A"
    );
    // Other multicast from B still reaches A and the host: an echo
    // request to all nodes.
    let host_echo = count(&host_before, "Icmp6InType128");
    let out = ns_b.exec(&[
        "busybox", "ping", "-6", "-c1", "-W1", "-I", "eth0", "ff02::1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sibling() > a_before,
        "B's echo request to ff02::1 did not reach A"
    );
    assert!(
        count(&host(), "Icmp6InType128") > host_echo,
        "B's echo request to ff02::1 did not reach the host"
    );
    for c in [&a, &b] {
        c.del(&conf).assert_ok();
    }
}

/// The container's link-local addresses as (address, tentative).
fn link_locals(ns: &TestNetns) -> Vec<(String, bool)> {
    ns.ip_json(&["-6", "addr", "show", "dev", "eth0", "scope", "link"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        // ip(8) leaves an empty object for each address the scope filters out.
        .filter_map(|a| Some((a["local"].as_str()?.to_string(), a["tentative"] == true)))
        .collect()
}

/// `enabledad` false (the default): the container's link-local address is
/// the one the kernel derives from the MAC, and usable the moment ADD
/// returns (no DAD). `enabledad` true: the kernel's own, still tentative
/// right after ADD while DAD probes for it.
#[test]
fn link_local_is_usable_at_once_unless_enabledad() {
    let net = Net::new("lladdr");
    let conf = net.conf("1.1.0");
    let ns = TestNetns::new("lladdr");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    let mac: Vec<u8> = r["interfaces"][2]["mac"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let eui64 = format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]])
    );
    let eui64: std::net::Ipv6Addr = eui64.parse().unwrap();
    assert_eq!(link_locals(&ns), vec![(eui64.to_string(), false)]);
    c.del(&with_prev_result(&conf, &r)).assert_ok();

    let mut dad = conf.clone();
    dad["enabledad"] = json!(true);
    let ns = TestNetns::new("lladdr-dad");
    let c = net.cni(&ns);
    let r = c.add(&dad).expect_ok().clone();
    let lls = link_locals(&ns);
    assert_eq!(lls.len(), 1, "{lls:?}");
    assert!(
        lls[0].1,
        "with enabledad the link-local address goes through DAD: {lls:?}"
    );
    c.del(&with_prev_result(&dad, &r)).assert_ok();
    net.assert_empty();
}

/// A bridge berth-bridge creates has IGMP/MLD snooping off: nothing on it
/// queries for group members, so snooping only flooded anyway, and it made
/// every port that came up walk all ports' query timers. A bridge that
/// already existed is adopted as it is. Both ends of each veth have one
/// queue (the kernel's default for veth would be one per CPU, cut to one
/// after creation at the cost of an RCU wait).
#[test]
fn created_bridges_do_not_snoop_and_veths_have_one_queue() {
    let snooping =
        |bridge: &str| host_link(bridge, true)["linkinfo"]["info_data"]["mcast_snooping"].clone();
    let net = Net::new("snoop");
    let conf = net.conf("1.1.0");
    let ns = TestNetns::new("snoop");
    let c = net.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(snooping(&net.bridge), 0);
    assert_eq!(host_link(&host_veth(&c), true)["num_tx_queues"], 1);
    assert_eq!(host_link(&host_veth(&c), true)["num_rx_queues"], 1);
    let peer = ns.ip_json(&["-d", "link", "show", "eth0"])[0].clone();
    assert_eq!(
        (peer["num_tx_queues"].clone(), peer["num_rx_queues"].clone()),
        (json!(1), json!(1))
    );
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    net.assert_empty();

    let adopted = Net::new("snoop-adopt");
    run_ok("ip", &["link", "add", &adopted.bridge, "type", "bridge"]);
    let conf = adopted.conf("1.1.0");
    let ns = TestNetns::new("snoop-adopt");
    let c = adopted.cni(&ns);
    let r = c.add(&conf).expect_ok().clone();
    assert_eq!(snooping(&adopted.bridge), 1);
    c.del(&with_prev_result(&conf, &r)).assert_ok();
    adopted.assert_empty();
}
