//! Building the nftables batches for one network (pure: no I/O).
//!
//! Every batch is idempotent without listing the ruleset first: `add` of an
//! existing table/chain/set is a no-op, so "add, then flush" always leaves
//! an empty object to refill, and "add, then delete" always removes it,
//! whether or not it existed before (nft 1.0.6 has no `destroy`). The whole
//! batch is one kernel transaction: other processes see the old rules or
//! the new ones, never a half-applied state.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Accept, Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::names::{chain_names, ChainNames};
use super::NetworkRules;

/// berth's private table (family inet: one table for IPv4 and IPv6).
pub const TABLE: &str = "berth";
/// Priority of the masquerade chain (`srcnat`).
const PRIO_SRCNAT: i32 = 100;
/// Priority of the forward chain: just before `filter` (0), where
/// iptables' FORWARD chain (and Docker's DOCKER-USER) runs, so the mark set
/// here is visible there.
const PRIO_FORWARD: i32 = -1;
/// The packet mark bit berth's forward chains set on a network's own
/// traffic (from its bridge, and replies to it). An `accept` in our table
/// cannot overrule a drop policy in another table; the mark lets one rule
/// in Docker's DOCKER-USER chain accept exactly this traffic (see
/// docker.rs). Bit 30: clear of kube-proxy (0x4000/0x8000), the portmap
/// and netavark masquerade bits (0x2000, 0x1000) and Tailscale (0xff0000).
pub const FORWARD_MARK: u32 = 0x4000_0000;
/// The set of every berth bridge network's bridge (type ifname): isolated
/// networks drop traffic to and from its members other than themselves.
pub const BRIDGES_SET: &str = "berth-bridges";
/// nft keeps at most 128 bytes of a rule comment.
const COMMENT_MAX: usize = 120;

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn base_chain(name: &str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }
}

fn nat_chain(n: &ChainNames) -> Chain<'static> {
    base_chain(&n.nat, NfChainType::NAT, NfHook::Postrouting, PRIO_SRCNAT)
}

fn fwd_chain(n: &ChainNames) -> Chain<'static> {
    base_chain(
        &n.forward,
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FORWARD,
    )
}

fn addr_set(name: &str, kind: SetType) -> Box<Set<'static>> {
    Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        set_type: SetTypeValue::Single(kind),
        flags: Some(HashSet::from([SetFlag::Interval])),
        ..Set::default()
    })
}

/// Adds `chain` and empties it.
fn ensure_empty_chain(b: &mut Batch<'static>, chain: Chain<'static>) {
    b.add(NfListObject::Chain(chain.clone()));
    b.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
}

/// Removes `chain` whether or not it exists. Flushed first: a chain must
/// be empty to be deleted on older kernels.
fn drop_chain(b: &mut Batch<'static>, chain: Chain<'static>) {
    ensure_empty_chain(b, chain.clone());
    b.delete(NfListObject::Chain(chain));
}

/// Removes `set` whether or not it exists (must come after the rules
/// referring to it are gone).
fn drop_set(b: &mut Batch<'static>, set: Box<Set<'static>>) {
    b.add(NfListObject::Set(set.clone()));
    b.delete(NfListObject::Set(set));
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn prefix(net: IpNet) -> Expression<'static> {
    let net = net.trunc();
    prefix_raw(net.addr().to_string(), net.prefix_len())
}

fn prefix_raw(addr: String, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(addr.into())),
        len: u32::from(len),
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(chain: &str, comment: &str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(comment.to_string().into()),
    }
}

/// `ip saddr @set ip daddr != @set ip daddr != 224.0.0.0/4 masquerade` (or
/// the ip6 form): traffic from the network's subnets leaving to anything
/// but the network itself or multicast gets the outgoing address.
fn masquerade_rule(chain: &str, set: &str, v6: bool, comment: &str) -> Rule<'static> {
    let (proto, multicast) = if v6 {
        ("ip6", prefix_raw("ff00::".into(), 8))
    } else {
        ("ip", prefix_raw("224.0.0.0".into(), 4))
    };
    let set_ref = || Expression::String(format!("@{set}").into());
    rule(
        chain,
        comment,
        vec![
            matches(payload(proto, "saddr"), Operator::EQ, set_ref()),
            matches(payload(proto, "daddr"), Operator::NEQ, set_ref()),
            matches(payload(proto, "daddr"), Operator::NEQ, multicast),
            Statement::Masquerade(None),
        ],
    )
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `meta mark set meta mark | FORWARD_MARK`
fn set_forward_mark() -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            Expression::Number(FORWARD_MARK),
        ]))),
    })
}

fn forward_rules(chain: &str, bridge: &str, comment: &str) -> [Rule<'static>; 2] {
    let dev = || Expression::String(bridge.to_string().into());
    [
        // iifname BRIDGE meta mark set meta mark | FORWARD_MARK accept
        rule(
            chain,
            comment,
            vec![
                matches(meta(MetaKey::Iifname), Operator::EQ, dev()),
                set_forward_mark(),
                Statement::Accept(Some(Accept {})),
            ],
        ),
        // oifname BRIDGE ct state established,related
        //   meta mark set meta mark | FORWARD_MARK accept
        rule(
            chain,
            comment,
            vec![
                matches(meta(MetaKey::Oifname), Operator::EQ, dev()),
                matches(
                    Expression::Named(NamedExpression::CT(CT {
                        key: "state".into(),
                        family: None,
                        dir: None,
                    })),
                    Operator::IN,
                    Expression::List(vec![
                        Expression::String("established".into()),
                        Expression::String("related".into()),
                    ]),
                ),
                set_forward_mark(),
                Statement::Accept(Some(Accept {})),
            ],
        ),
    ]
}

/// `iifname UPLINK oifname BRIDGE meta mark set meta mark | FORWARD_MARK
/// accept`: connections from an uplink (e.g. the overlay's VXLAN device)
/// into the bridge.
fn uplink_rule(chain: &str, bridge: &str, uplink: &str, comment: &str) -> Rule<'static> {
    rule(
        chain,
        comment,
        vec![
            matches(
                meta(MetaKey::Iifname),
                Operator::EQ,
                Expression::String(uplink.to_string().into()),
            ),
            matches(
                meta(MetaKey::Oifname),
                Operator::EQ,
                Expression::String(bridge.to_string().into()),
            ),
            set_forward_mark(),
            Statement::Accept(Some(Accept {})),
        ],
    )
}

fn bridges_set() -> Box<Set<'static>> {
    Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BRIDGES_SET.into(),
        set_type: SetTypeValue::Single(SetType::Ifname),
        ..Set::default()
    })
}

fn bridge_element(bridge: &str) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BRIDGES_SET.into(),
        elem: Cow::Owned(vec![Expression::String(bridge.to_string().into())]),
    })
}

/// `ct status & dnat != dnat`: not a published-port connection (those may
/// cross networks, as they may come from anywhere).
fn not_dnat() -> Statement<'static> {
    let status = Expression::Named(NamedExpression::CT(CT {
        key: "status".into(),
        family: None,
        dir: None,
    }));
    matches(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            status,
            Expression::String("dnat".into()),
        ))),
        Operator::NEQ,
        Expression::String("dnat".into()),
    )
}

/// Isolation: drop traffic from `bridge` to another berth bridge, and from
/// another berth bridge to `bridge`.
fn isolation_rules(chain: &str, bridge: &str, comment: &str) -> [Rule<'static>; 2] {
    let dev = || Expression::String(bridge.to_string().into());
    let set = || Expression::String(format!("@{BRIDGES_SET}").into());
    let drop = || Statement::Drop(Some(nftables::stmt::Drop {}));
    let one_way = |here: MetaKey, there: MetaKey| {
        rule(
            chain,
            comment,
            vec![
                matches(meta(here), Operator::EQ, dev()),
                matches(meta(there), Operator::NEQ, dev()),
                matches(meta(there), Operator::EQ, set()),
                not_dnat(),
                drop(),
            ],
        )
    };
    [
        one_way(MetaKey::Iifname, MetaKey::Oifname),
        one_way(MetaKey::Oifname, MetaKey::Iifname),
    ]
}

/// Internal network: drop everything the bridge would forward to or from
/// any other link (its containers only talk among themselves and to the
/// gateway address).
fn internal_rules(chain: &str, bridge: &str, comment: &str) -> [Rule<'static>; 2] {
    let dev = || Expression::String(bridge.to_string().into());
    let drop = || Statement::Drop(Some(nftables::stmt::Drop {}));
    let one_way = |here: MetaKey, there: MetaKey| {
        rule(
            chain,
            comment,
            vec![
                matches(meta(here), Operator::EQ, dev()),
                matches(meta(there), Operator::NEQ, dev()),
                drop(),
            ],
        )
    };
    [
        one_way(MetaKey::Iifname, MetaKey::Oifname),
        one_way(MetaKey::Oifname, MetaKey::Iifname),
    ]
}

/// Rule comment: lets an operator reading `nft list` find the network.
fn comment_for(network: &str) -> String {
    clean_comment(format!("berth network {network}"))
}

/// Makes `text` a safe rule comment: quotes, backslashes and control
/// characters are replaced so the text listing stays loadable with
/// `nft -f`, and it is cut (on a char boundary) to what nft keeps.
pub(crate) fn clean_comment(text: String) -> String {
    let mut c: String = text
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if c.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX;
        while !c.is_char_boundary(cut) {
            cut -= 1;
        }
        c.truncate(cut);
    }
    c
}

/// Splits and normalises the masquerade subnets: host bits cleared,
/// duplicates and overlaps merged (an interval set rejects overlapping
/// elements).
fn split_subnets(nets: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let v4: Vec<Ipv4Net> = nets
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(v) => Some(v.trunc()),
            _ => None,
        })
        .collect();
    let v6: Vec<Ipv6Net> = nets
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(v) => Some(v.trunc()),
            _ => None,
        })
        .collect();
    (Ipv4Net::aggregate(&v4), Ipv6Net::aggregate(&v6))
}

/// The batch that makes `rules` the network's exact rule set.
pub(crate) fn apply_batch(rules: &NetworkRules) -> Batch<'static> {
    let n = chain_names(&rules.network);
    let comment = comment_for(&rules.network);
    let (v4, v6) = split_subnets(&rules.masquerade);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));

    if v4.is_empty() && v6.is_empty() {
        drop_chain(&mut b, nat_chain(&n));
        drop_set(&mut b, addr_set(&n.set_v4, SetType::Ipv4Addr));
        drop_set(&mut b, addr_set(&n.set_v6, SetType::Ipv6Addr));
    } else {
        // Flush the chain before touching the sets: a set still referenced
        // by a rule cannot be deleted.
        ensure_empty_chain(&mut b, nat_chain(&n));
        let families: [(&str, SetType, Vec<IpNet>, bool); 2] = [
            (
                &n.set_v4,
                SetType::Ipv4Addr,
                v4.into_iter().map(IpNet::V4).collect(),
                false,
            ),
            (
                &n.set_v6,
                SetType::Ipv6Addr,
                v6.into_iter().map(IpNet::V6).collect(),
                true,
            ),
        ];
        for (set_name, kind, nets, is_v6) in families {
            let set = addr_set(set_name, kind);
            if nets.is_empty() {
                drop_set(&mut b, set);
                continue;
            }
            b.add(NfListObject::Set(set.clone()));
            b.add_cmd(NfCmd::Flush(FlushObject::Set(set)));
            b.add(NfListObject::Element(Element {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: set_name.to_string().into(),
                elem: Cow::Owned(nets.into_iter().map(prefix).collect()),
            }));
            b.add(NfListObject::Rule(masquerade_rule(
                &n.nat, set_name, is_v6, &comment,
            )));
        }
    }

    if rules.forward {
        b.add(NfListObject::Set(bridges_set()));
        b.add(bridge_element(&rules.bridge));
        ensure_empty_chain(&mut b, fwd_chain(&n));
        if rules.internal {
            for r in internal_rules(&n.forward, &rules.bridge, &comment) {
                b.add(NfListObject::Rule(r));
            }
        }
        if rules.isolation {
            for r in isolation_rules(&n.forward, &rules.bridge, &comment) {
                b.add(NfListObject::Rule(r));
            }
        }
        for r in forward_rules(&n.forward, &rules.bridge, &comment) {
            b.add(NfListObject::Rule(r));
        }
        for uplink in &rules.uplinks {
            b.add(NfListObject::Rule(uplink_rule(
                &n.forward,
                &rules.bridge,
                uplink,
                &comment,
            )));
        }
    } else {
        drop_chain(&mut b, fwd_chain(&n));
    }
    b
}

/// The batch that removes everything `network` owns (the shared table
/// stays: other networks and port mappings live in it).
/// Drops the whole `inet berth` table ("add, then delete" so a missing
/// table is not an error).
pub(crate) fn remove_table_batch() -> Batch<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b
}

pub(crate) fn remove_batch(network: &str, bridge: Option<&str>) -> Batch<'static> {
    let n = chain_names(network);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    if let Some(br) = bridge {
        // "add, then delete": gone whether or not it was there.
        b.add(NfListObject::Set(bridges_set()));
        b.add(bridge_element(br));
        b.delete(bridge_element(br));
    }
    drop_chain(&mut b, nat_chain(&n));
    drop_chain(&mut b, fwd_chain(&n));
    drop_set(&mut b, addr_set(&n.set_v4, SetType::Ipv4Addr));
    drop_set(&mut b, addr_set(&n.set_v6, SetType::Ipv6Addr));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(b: Batch<'static>) -> Value {
        serde_json::to_value(b.to_nftables()).unwrap()
    }

    fn cmds(v: &Value) -> Vec<(String, String, String)> {
        // (command, object kind, name)
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let (cmd, inner) = o.as_object().unwrap().iter().next().unwrap();
                let (kind, obj) = inner.as_object().unwrap().iter().next().unwrap();
                let name = obj
                    .get("name")
                    .or_else(|| obj.get("chain"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (cmd.clone(), kind.clone(), name)
            })
            .collect()
    }

    fn rules(masq: &[&str], forward: bool) -> NetworkRules {
        NetworkRules {
            network: "net1".into(),
            bridge: "br-test".into(),
            masquerade: masq.iter().map(|s| s.parse().unwrap()).collect(),
            forward,
            isolation: forward,
            internal: false,
            uplinks: Vec::new(),
            quiet_ports: Vec::new(),
        }
    }

    #[test]
    fn apply_v4_only_with_forward() {
        let n = chain_names("net1");
        let v = json(apply_batch(&rules(&["10.88.0.5/16"], true)));
        let c = cmds(&v);
        assert_eq!(c[0], ("add".into(), "table".into(), "berth".into()));
        assert!(c.contains(&("flush".into(), "chain".into(), n.nat.clone())));
        assert!(c.contains(&("flush".into(), "set".into(), n.set_v4.clone())));
        assert!(c.contains(&("delete".into(), "set".into(), n.set_v6.clone())));
        assert!(c.contains(&("flush".into(), "chain".into(), n.forward.clone())));
        assert!(!c
            .iter()
            .any(|(cmd, kind, _)| cmd == "delete" && kind == "chain"));
        // the chain flush precedes the v6 set deletion
        let flush = c
            .iter()
            .position(|x| x == &("flush".into(), "chain".into(), n.nat.clone()));
        let del = c
            .iter()
            .position(|x| x == &("delete".into(), "set".into(), n.set_v6.clone()));
        assert!(flush < del);

        let text = v.to_string();
        // host bits cleared, set referenced, multicast excluded
        assert!(
            text.contains(r#"{"prefix":{"addr":"10.88.0.0","len":16}}"#),
            "{text}"
        );
        assert!(text.contains(&format!("@{}", n.set_v4)));
        assert!(text.contains(r#""addr":"224.0.0.0","len":4"#));
        assert!(text.contains(r#""masquerade":null"#));
        assert!(text.contains(r#""right":"br-test""#));
        assert!(text.contains(r#"["established","related"]"#));
    }

    #[test]
    fn apply_without_masquerade_drops_nat_objects() {
        let n = chain_names("net1");
        let c = cmds(&json(apply_batch(&rules(&[], false))));
        for name in [&n.nat, &n.forward] {
            assert!(c.contains(&("delete".into(), "chain".into(), name.clone())));
        }
        for name in [&n.set_v4, &n.set_v6] {
            assert!(c.contains(&("delete".into(), "set".into(), name.clone())));
        }
        assert!(!c
            .iter()
            .any(|(cmd, kind, _)| cmd == "add" && kind == "rule"));
    }

    #[test]
    fn overlapping_subnets_are_merged() {
        let (v4, v6) = split_subnets(&[
            "10.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
            "fd00::1/64".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ]);
        assert_eq!(v4, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(v6, vec!["fd00::/64".parse::<Ipv6Net>().unwrap()]);
    }

    #[test]
    fn v6_rule_uses_ip6() {
        let text = json(apply_batch(&rules(&["fd10::/64"], false))).to_string();
        assert!(text.contains(r#""protocol":"ip6""#));
        assert!(text.contains(r#""addr":"ff00::","len":8"#));
    }

    #[test]
    fn remove_keeps_table() {
        let c = cmds(&json(remove_batch("net1", None)));
        assert!(!c
            .iter()
            .any(|(cmd, kind, _)| cmd == "delete" && kind == "table"));
        assert_eq!(c.iter().filter(|(cmd, _, _)| cmd == "delete").count(), 4);
    }

    #[test]
    fn long_comment_is_cut_on_char_boundary() {
        let c = comment_for(&"é".repeat(100));
        assert!(c.len() <= COMMENT_MAX);
    }

    #[test]
    fn comment_has_no_quotes() {
        assert_eq!(comment_for("a\"b\\c\n"), "berth network a_b_c_");
    }
}
