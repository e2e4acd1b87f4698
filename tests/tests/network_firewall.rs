//! nftables rules applied inside throw-away namespaces (nft inherits the
//! namespace of the thread that spawns it), never on the host. Run as root.

use berth_network::firewall::{self, chain_names, NetworkRules};
use berth_tests::TestNetns;
use ipnet::IpNet;
use serde_json::Value;

/// A throw-away namespace, removed on drop.
struct TestNs(TestNetns);

impl TestNs {
    fn new() -> TestNs {
        TestNs(TestNetns::new("fw"))
    }

    fn open(&self) -> berth_kernel::Netns {
        berth_kernel::Netns::open(self.0.path()).expect("open test netns")
    }

    /// `PROG ARGS` inside it: (success, stdout, stderr).
    fn exec(&self, prog: &str, args: &[&str]) -> (bool, String, String) {
        let mut cmd = vec![prog];
        cmd.extend_from_slice(args);
        let out = self.0.exec(&cmd);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `nft -j list table inet berth` inside `ns`: (chains, rules per chain
/// name, set name -> element strings).
struct Listing {
    chains: Vec<Value>,
    rules: Vec<Value>,
    sets: Vec<Value>,
}

fn list(ns: &TestNs) -> Option<Listing> {
    let (ok, out, _) = ns.exec("nft", &["-j", "list", "table", "inet", "berth"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    let items = v["nftables"].as_array().unwrap();
    let pick = |k: &str| {
        items
            .iter()
            .filter_map(|i| i.get(k).cloned())
            .collect::<Vec<_>>()
    };
    Some(Listing {
        chains: pick("chain"),
        rules: pick("rule"),
        sets: pick("set"),
    })
}

impl Listing {
    fn chain(&self, name: &str) -> Option<&Value> {
        self.chains.iter().find(|c| c["name"] == name)
    }
    fn rules_of(&self, chain: &str) -> Vec<&Value> {
        self.rules.iter().filter(|r| r["chain"] == chain).collect()
    }
    fn set(&self, name: &str) -> Option<&Value> {
        self.sets.iter().find(|s| s["name"] == name)
    }
}

fn unique_network(tag: &str) -> String {
    // spaces and slashes on purpose: names are free-form
    format!("test net/{tag} {}", std::process::id())
}

#[test]
fn apply_check_update_remove() {
    let ns = TestNs::new();
    let netns = ns.open();
    let network = unique_network("a");
    let names = chain_names(&network);

    assert!(list(&ns).is_none(), "fresh namespace has no berth table");
    assert!(!firewall::network_present_in(Some(&netns), &network).unwrap());

    let rules = NetworkRules {
        network: network.clone(),
        bridge: "berth-test0".into(),
        masquerade: vec![net("10.88.0.0/16"), net("fd88::/64")],
        forward: true,
        isolation: true,
        internal: false,
        uplinks: Vec::new(),
        quiet_ports: Vec::new(),
    };
    firewall::apply_in(Some(&netns), &rules).unwrap();

    let (_, text, _) = ns.exec("nft", &["list", "table", "inet", "berth"]);
    println!("{text}");
    let l = list(&ns).expect("table created");
    let nat = l.chain(&names.nat).expect("nat chain");
    assert_eq!(nat["type"], "nat");
    assert_eq!(nat["hook"], "postrouting");
    assert_eq!(nat["prio"], 100);
    let fwd = l.chain(&names.forward).expect("forward chain");
    assert_eq!(fwd["type"], "filter");
    assert_eq!(fwd["hook"], "forward");
    assert_eq!(
        fwd["prio"], -1,
        "before iptables' filter chains (see FORWARD_MARK)"
    );
    assert_eq!(
        l.rules_of(&names.nat).len(),
        2,
        "one masquerade rule per family"
    );
    assert_eq!(
        l.rules_of(&names.forward).len(),
        4,
        "two isolation drops, two accepts"
    );
    let text = serde_json::to_string(&l.rules).unwrap();
    assert!(text.contains("masquerade"));
    assert!(text.contains("berth-test0"));
    assert!(text.contains("established"));
    assert!(l.set(&names.set_v4).unwrap()["elem"]
        .to_string()
        .contains("10.88.0.0"));
    assert!(l.set(&names.set_v6).unwrap()["elem"]
        .to_string()
        .contains("fd88::"));

    assert!(firewall::network_present_in(Some(&netns), &network).unwrap());
    let st = firewall::network_state_in(Some(&netns), &network).unwrap();
    assert_eq!(st.masquerade, vec![net("10.88.0.0/16"), net("fd88::/64")]);
    assert!(st.forward_chain);

    // applying again changes nothing (no duplicated rules)
    firewall::apply_in(Some(&netns), &rules).unwrap();
    let l = list(&ns).unwrap();
    assert_eq!(l.rules_of(&names.nat).len(), 2);
    assert_eq!(l.rules_of(&names.forward).len(), 4);

    // update: other v4 subnet, no v6, no forwarding
    let updated = NetworkRules {
        masquerade: vec![net("10.99.0.0/24")],
        forward: false,
        ..rules.clone()
    };
    firewall::apply_in(Some(&netns), &updated).unwrap();
    let l = list(&ns).unwrap();
    assert_eq!(l.rules_of(&names.nat).len(), 1);
    assert!(l.chain(&names.forward).is_none());
    assert!(l.set(&names.set_v6).is_none());
    let elems = l.set(&names.set_v4).unwrap()["elem"].to_string();
    assert!(
        elems.contains("10.99.0.0") && !elems.contains("10.88.0.0"),
        "{elems}"
    );

    // no masquerade: the nat side goes away entirely
    let bare = NetworkRules {
        masquerade: vec![],
        forward: true,
        ..rules.clone()
    };
    firewall::apply_in(Some(&netns), &bare).unwrap();
    let l = list(&ns).unwrap();
    assert!(l.chain(&names.nat).is_none());
    assert!(l.set(&names.set_v4).is_none());
    assert_eq!(l.rules_of(&names.forward).len(), 4);
    assert!(!firewall::network_present_in(Some(&netns), &network).unwrap());

    // remove, twice
    firewall::apply_in(Some(&netns), &rules).unwrap();
    firewall::remove_with_bridge_in(Some(&netns), &network, Some("berth-test0")).unwrap();
    firewall::remove_with_bridge_in(Some(&netns), &network, Some("berth-test0")).unwrap();
    let l = list(&ns).expect("the shared table stays");
    assert!(l.chains.is_empty(), "{:?}", l.chains);
    let (_, text, _) = ns.exec(
        "nft",
        &["list", "set", "inet", "berth", firewall::BRIDGES_SET],
    );
    assert!(!text.contains("berth-test0"), "{text}");
    assert!(!firewall::network_present_in(Some(&netns), &network).unwrap());
}

#[test]
fn networks_are_independent() {
    let ns = TestNs::new();
    let netns = ns.open();
    let a = unique_network("b1");
    let b = unique_network("b2");
    for (network, subnet, bridge) in [(&a, "10.10.0.0/24", "br-a"), (&b, "10.20.0.0/24", "br-b")] {
        firewall::apply_in(
            Some(&netns),
            &NetworkRules {
                network: network.clone(),
                bridge: bridge.into(),
                masquerade: vec![net(subnet)],
                forward: true,
                isolation: true,
                internal: false,
                uplinks: Vec::new(),
                quiet_ports: Vec::new(),
            },
        )
        .unwrap();
    }
    let (_, text, _) = ns.exec(
        "nft",
        &["list", "set", "inet", "berth", firewall::BRIDGES_SET],
    );
    assert!(
        text.contains("\"br-a\"") && text.contains("\"br-b\""),
        "{text}"
    );
    let (_, text, _) = ns.exec(
        "nft",
        &["list", "chain", "inet", "berth", &chain_names(&a).forward],
    );
    assert!(text.contains("iifname \"br-a\" oifname != \"br-a\" oifname @berth-bridges ct status & dnat != dnat drop"), "{text}");
    firewall::remove_with_bridge_in(Some(&netns), &a, Some("br-a")).unwrap();
    let (_, text, _) = ns.exec(
        "nft",
        &["list", "set", "inet", "berth", firewall::BRIDGES_SET],
    );
    assert!(
        !text.contains("\"br-a\"") && text.contains("\"br-b\""),
        "{text}"
    );
    assert!(!firewall::network_present_in(Some(&netns), &a).unwrap());
    assert!(firewall::network_present_in(Some(&netns), &b).unwrap());
    let l = list(&ns).unwrap();
    assert!(l.chain(&chain_names(&b).forward).is_some());
    assert!(l.chain(&chain_names(&a).forward).is_none());
}

#[test]
fn host_ruleset_is_not_touched() {
    let ns = TestNs::new();
    let netns = ns.open();
    let network = unique_network("c");
    firewall::apply_in(
        Some(&netns),
        &NetworkRules {
            network: network.clone(),
            bridge: "br-c".into(),
            masquerade: vec![net("10.30.0.0/24")],
            forward: true,
            isolation: false,
            internal: true,
            uplinks: Vec::new(),
            quiet_ports: Vec::new(),
        },
    )
    .unwrap();
    // internal: nothing forwarded between the bridge and any other link
    let (_, text, _) = ns.exec(
        "nft",
        &[
            "list",
            "chain",
            "inet",
            "berth",
            &chain_names(&network).forward,
        ],
    );
    assert!(
        text.contains("iifname \"br-c\" oifname != \"br-c\" drop"),
        "{text}"
    );
    assert!(
        text.contains("oifname \"br-c\" iifname != \"br-c\" drop"),
        "{text}"
    );
    // whatever the host has, it has nothing of this (uniquely named) network
    let host = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(!host.contains(&chain_names(&network).nat));
    firewall::remove_in(Some(&netns), &network).unwrap();
}

#[test]
fn bad_input_is_rejected_before_nft() {
    let err = firewall::apply_in(
        None,
        &NetworkRules {
            network: String::new(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("network name"), "{err}");
    let err = firewall::apply_in(
        None,
        &NetworkRules {
            network: "x".into(),
            bridge: "bad name".into(),
            forward: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
}
