//! nf_tables batches over netlink inside throw-away namespaces: what a
//! batch writes is what the listing reads back and what nft prints; a
//! refused batch names the command at fault and leaves nothing. Run as
//! root.

mod common;

use berth_kernel::nf_tables::value::{
    addr_load, concat, ifname, interval_prefixes, ip, meta_cmp, nfproto_is, port,
};
use berth_kernel::nf_tables::{
    self, BaseChain, Batch, Chain, ChainType, CmpOp, DataType, Element, Expr, Family, Hook, Key,
    MapData, MetaKey, Rule, Set, Table, Verdict, REG_1,
};
use common::TestNs;
use ipnet::IpNet;

fn table() -> Table {
    Table::new(Family::Inet, "t")
}

fn chain() -> Chain {
    Chain {
        at: table().chain("fwd"),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: -1,
            accept: true,
        }),
    }
}

fn masq_set() -> Set {
    Set {
        table: table(),
        name: "nets".into(),
        key: Key(vec![DataType::Ipv4Addr]),
        data: None,
        interval: true,
    }
}

fn ports_map() -> Set {
    Set {
        table: table(),
        name: "ports".into(),
        key: Key(vec![DataType::InetProto, DataType::InetService]),
        data: Some(MapData::Value(Key(vec![
            DataType::Ipv4Addr,
            DataType::InetService,
        ]))),
        interval: false,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rule() -> Rule {
    let mut e = meta_cmp(MetaKey::Iifname, CmpOp::Eq, ifname("br-x"));
    e.extend(nfproto_is(false));
    e.push(addr_load(false, true, REG_1));
    e.push(Expr::Lookup {
        set: "nets".into(),
        sreg: REG_1,
        dreg: None,
        invert: false,
    });
    e.push(Expr::Verdict(Verdict::Accept));
    Rule::new(&chain().at, e).with_comment("a comment")
}

fn mapping() -> Element {
    Element::mapping(
        concat(&[vec![6], port(8080)]),
        concat(&[ip(&"10.1.0.2".parse().unwrap()), port(80)]),
    )
}

fn build() -> Batch {
    let mut b = Batch::new();
    b.add_table(&table())
        .add_chain(&chain())
        .add_set(&masq_set())
        .add_elements(
            &table(),
            "nets",
            Element::intervals(&[net("10.1.0.0/24"), net("10.9.0.0/16")]),
        )
        .add_set(&ports_map())
        .add_elements(&table(), "ports", vec![mapping()])
        .add_rule(rule());
    b
}

#[test]
fn what_a_batch_writes_is_what_the_listing_reads() {
    let ns = TestNs::new();
    let netns = ns.open();
    assert_eq!(nf_tables::list_table(Some(&netns), &table()).unwrap(), None);
    build().commit(Some(&netns), "test").unwrap();
    // Applying it again changes nothing (adds of what exists are no-ops),
    // except the rule, which is appended again.
    let l = nf_tables::list_table(Some(&netns), &table())
        .unwrap()
        .expect("the table");
    assert_eq!(l.chains, vec![chain()]);
    let rules: Vec<&Rule> = l.rules_of("fwd").collect();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].same_as(&rule()), "{:?}", rules[0]);
    assert!(rules[0].handle.is_some());
    let (set, elements) = l.set("nets").expect("set nets");
    assert_eq!(set, &masq_set());
    assert_eq!(
        interval_prefixes(elements),
        vec![net("10.1.0.0/24"), net("10.9.0.0/16")]
    );
    let (map, elements) = l.set("ports").expect("map ports");
    assert_eq!(map, &ports_map());
    assert_eq!(elements, &vec![mapping()]);

    // nft reads berth's objects as its own.
    let (ok, text, err) = ns.exec("nft", &["list", "table", "inet", "t"]);
    assert!(ok, "{err}");
    for want in [
        "type filter hook forward priority filter - 1; policy accept;",
        "iifname \"br-x\" ip saddr @nets accept comment \"a comment\"",
        "elements = { 10.1.0.0/24, 10.9.0.0/16 }",
        "type inet_proto . inet_service : ipv4_addr . inet_service",
        "elements = { tcp . 8080 : 10.1.0.2 . 80 }",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }

    // Deleting an element, then the table.
    let mut b = Batch::new();
    b.delete_elements(&table(), "ports", vec![mapping()]);
    b.commit(Some(&netns), "test").unwrap();
    let l = nf_tables::list_table(Some(&netns), &table())
        .unwrap()
        .unwrap();
    assert_eq!(l.set("ports").unwrap().1, vec![]);
    let mut b = Batch::new();
    b.delete_table(&table());
    b.commit(Some(&netns), "test").unwrap();
    assert_eq!(nf_tables::list_table(Some(&netns), &table()).unwrap(), None);
}

#[test]
fn a_refused_batch_names_its_command_and_applies_nothing() {
    let ns = TestNs::new();
    let netns = ns.open();
    let mut b = build();
    // The chain does not exist: ENOENT, and nothing of the batch (the
    // table first of all) is applied.
    b.delete_chain(&table().chain("no-such-chain"));
    let err = b.commit(Some(&netns), "apply test rules").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("apply test rules"), "{text}");
    assert!(text.contains("delete chain inet t no-such-chain"), "{text}");
    assert_eq!(err.errno(), Some(libc::ENOENT), "{text}");
    assert_eq!(nf_tables::list_table(Some(&netns), &table()).unwrap(), None);

    // A table of the same name in another family is not in the way (it is
    // another table), but a set whose type changed is refused.
    build().commit(Some(&netns), "test").unwrap();
    let mut other = masq_set();
    other.key = Key(vec![DataType::Ipv6Addr]);
    let mut b = Batch::new();
    b.add_set(&other);
    let err = b.commit(Some(&netns), "test").unwrap_err();
    assert!(err.to_string().contains("add set inet t nets"), "{err}");
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
}

#[test]
fn listing_a_missing_table_is_none_and_nft_is_not_needed() {
    let ns = TestNs::new();
    let netns = ns.open();
    nf_tables::available(Some(&netns)).unwrap();
    let bridge = Table::new(Family::Bridge, "t");
    assert_eq!(nf_tables::list_table(Some(&netns), &bridge).unwrap(), None);
    // An inet table "t" does not make a bridge table "t".
    build().commit(Some(&netns), "test").unwrap();
    assert_eq!(nf_tables::list_table(Some(&netns), &bridge).unwrap(), None);
}

#[test]
fn thousands_of_elements_go_in_one_batch() {
    let ns = TestNs::new();
    let netns = ns.open();
    // More than one netlink attribute can hold: sent in several messages
    // of the same transaction.
    let many: Vec<Element> = (0..3000u16)
        .map(|p| {
            Element::mapping(
                concat(&[vec![17], port(10000 + p)]),
                concat(&[ip(&"10.1.0.2".parse().unwrap()), port(p)]),
            )
        })
        .collect();
    let mut b = build();
    b.add_elements(&table(), "ports", many.clone());
    b.commit(Some(&netns), "test").unwrap();
    let l = nf_tables::list_table(Some(&netns), &table())
        .unwrap()
        .unwrap();
    assert_eq!(l.set("ports").unwrap().1.len(), 3001);
    let mut b = Batch::new();
    b.delete_elements(&table(), "ports", many);
    b.commit(Some(&netns), "test").unwrap();
    let l = nf_tables::list_table(Some(&netns), &table())
        .unwrap()
        .unwrap();
    assert_eq!(l.set("ports").unwrap().1, vec![mapping()]);
}

#[test]
fn a_missing_kernel_feature_is_named_and_nothing_is_applied() {
    let ns = TestNs::new();
    let netns = ns.open();
    // An expression no kernel has: the kernel tries to load its module,
    // fails, and refuses the rule, pointing at the expression.
    let mut b = build();
    let mut r = rule();
    r.exprs.insert(
        0,
        Expr::Other {
            name: "berthnosuch".into(),
            data: vec![],
        },
    );
    b.add_rule(r);
    let err = b.commit(Some(&netns), "apply test rules").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, berth_kernel::Error::Unsupported { .. }),
        "{err:?}"
    );
    assert!(text.contains("apply test rules"), "{text}");
    assert!(
        text.contains("the kernel has no nf_tables expression \"berthnosuch\""),
        "{text}"
    );
    assert_eq!(nf_tables::list_table(Some(&netns), &table()).unwrap(), None);
}

#[test]
fn ruleset_events_tell_own_commits_from_another_process() {
    use berth_kernel::nf_tables::{RulesetEvents, Seen};
    use std::time::Duration;
    let ns = TestNs::new();
    let netns = ns.open();
    let mut events = netns
        .run(RulesetEvents::subscribe)
        .unwrap()
        .expect("subscribe");
    assert_eq!(events.wait(Duration::ZERO).unwrap(), Seen::Nothing);
    build().commit(Some(&netns), "test").unwrap();
    assert_eq!(
        events.wait(Duration::from_secs(2)).unwrap(),
        Seen::OwnCommits
    );
    let (ok, _, err) = ns.exec("nft", &["add", "table", "inet", "other"]);
    assert!(ok, "{err}");
    assert_eq!(events.wait(Duration::from_secs(2)).unwrap(), Seen::Changes);
}
