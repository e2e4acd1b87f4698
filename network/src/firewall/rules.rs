//! Building the nf_tables batches for one network (pure: no I/O).
//!
//! Every batch is idempotent without listing the ruleset first: `add` of an
//! existing table/chain/set is a no-op, so "add, then flush" always leaves
//! an empty object to refill, and "add, then delete" always removes it,
//! whether or not it existed before (kernels before 6.3 have no
//! `destroy`). The whole batch is one kernel transaction: other processes
//! see the old rules or the new ones, never a half-applied state.
//!
//! The rules are written as nft compiles them, instruction for
//! instruction, so `nft list ruleset` shows them as it always has.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::listing::TableListing;
use super::names::{chain_names, ChainNames};
use super::NetworkRules;
use berth_kernel::nf_tables::value::{
    addr_load, addr_prefix_cmp, bits, ct, ifname, meta, meta_cmp, nfproto_is, set_mark_bit,
};
use berth_kernel::nf_tables::{
    Batch, Chain, ChainRef, ChainType, CmpOp, CtKey, DataType, Element, Expr, Family, Hook, Key,
    MetaKey, Rule, Set, Table, Verdict, REG_1,
};

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
/// IPS_DST_NAT: a connection that was DNATed (`ct status dnat`).
pub(crate) const CT_STATUS_DNAT: u32 = 0x20;
/// `ct state established,related`.
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;

pub(crate) fn table() -> Table {
    Table::new(Family::Inet, TABLE)
}

fn base_chain(name: &str, kind: ChainType, hook: Hook, priority: i32) -> Chain {
    Chain::base(table().chain(name), kind, hook, priority)
}

fn nat_chain(n: &ChainNames) -> Chain {
    base_chain(&n.nat, ChainType::Nat, Hook::Postrouting, PRIO_SRCNAT)
}

fn fwd_chain(n: &ChainNames) -> Chain {
    base_chain(&n.forward, ChainType::Filter, Hook::Forward, PRIO_FORWARD)
}

fn addr_set(name: &str, v6: bool) -> Set {
    Set {
        table: table(),
        name: name.to_string(),
        key: Key(vec![if v6 {
            DataType::Ipv6Addr
        } else {
            DataType::Ipv4Addr
        }]),
        data: None,
        interval: true,
    }
}

/// Adds `chain` and empties it.
fn ensure_empty_chain(b: &mut Batch, chain: &Chain) {
    b.add_chain(chain).flush_chain(&chain.at);
}

/// Removes `chain` whether or not it exists, unless `known` says it is
/// not there. Flushed first: a chain must be empty to be deleted on older
/// kernels.
fn drop_chain(b: &mut Batch, known: &Known, chain: &Chain) {
    if known.absent(&chain.at.name) {
        return;
    }
    ensure_empty_chain(b, chain);
    b.delete_chain(&chain.at);
}

/// Removes `set` whether or not it exists, unless `known` says it is not
/// there (must come after the rules referring to it are gone).
fn drop_set(b: &mut Batch, known: &Known, set: &Set) {
    if known.absent(&set.name) {
        return;
    }
    b.add_set(set).delete_set(&set.table, &set.name);
}

/// What is known of `inet berth` before a batch: with a listing, objects
/// that are not there need no removing. Removing nothing matters beyond
/// the batch: what a commit removes the kernel frees after a grace period,
/// which the process then waits for when it closes its socket.
pub(crate) enum Known<'a> {
    /// Anything may be there.
    Nothing,
    /// The table as listed (None: there is no such table).
    Listing(Option<&'a TableListing>),
}

impl Known<'_> {
    fn absent(&self, object: &str) -> bool {
        match self {
            Known::Nothing => false,
            Known::Listing(None) => true,
            Known::Listing(Some(l)) => l.chain_rules(object).is_none() && !l.has_set(object),
        }
    }
}

/// `ip saddr @set ip daddr != @set ip daddr != 224.0.0.0/4 masquerade` (or
/// the ip6 form): traffic from the network's subnets leaving to anything
/// but the network itself or multicast gets the outgoing address.
fn masquerade_rule(chain: &ChainRef, set: &str, v6: bool, comment: &str) -> Rule {
    let multicast: IpNet = if v6 {
        IpNet::V6(Ipv6Net::new_assert(
            std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
        ))
    } else {
        IpNet::V4(Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(224, 0, 0, 0),
            4,
        ))
    };
    let lookup = |invert| Expr::Lookup {
        set: set.to_string(),
        sreg: REG_1,
        dreg: None,
        invert,
    };
    let mut e = nfproto_is(v6);
    e.push(addr_load(v6, true, REG_1));
    e.push(lookup(false));
    e.push(addr_load(v6, false, REG_1));
    e.push(lookup(true));
    e.extend(addr_prefix_cmp(v6, false, CmpOp::Neq, &multicast));
    e.push(Expr::Masquerade);
    Rule::new(chain, e).with_comment(comment)
}

/// `iifname|oifname NAME` (OP: == or !=).
fn dev(key: MetaKey, op: CmpOp, name: &str) -> Vec<Expr> {
    meta_cmp(key, op, ifname(name))
}

/// `... meta mark set meta mark | FORWARD_MARK accept`
fn mark_and_accept(mut e: Vec<Expr>) -> Vec<Expr> {
    e.extend(set_mark_bit(FORWARD_MARK));
    e.push(Expr::Verdict(Verdict::Accept));
    e
}

fn forward_rules(chain: &ChainRef, bridge: &str, comment: &str) -> [Rule; 2] {
    // oifname BRIDGE ct state established,related
    //   meta mark set meta mark | FORWARD_MARK accept
    let mut replies = dev(MetaKey::Oifname, CmpOp::Eq, bridge);
    replies.push(ct(CtKey::State));
    replies.extend(bits(CT_ESTABLISHED_RELATED, CmpOp::Neq, 0));
    [
        // iifname BRIDGE meta mark set meta mark | FORWARD_MARK accept
        Rule::new(
            chain,
            mark_and_accept(dev(MetaKey::Iifname, CmpOp::Eq, bridge)),
        )
        .with_comment(comment),
        Rule::new(chain, mark_and_accept(replies)).with_comment(comment),
    ]
}

/// `iifname UPLINK oifname BRIDGE meta mark set meta mark | FORWARD_MARK
/// accept`: connections from an uplink (e.g. the overlay's VXLAN device)
/// into the bridge.
fn uplink_rule(chain: &ChainRef, bridge: &str, uplink: &str, comment: &str) -> Rule {
    let mut e = dev(MetaKey::Iifname, CmpOp::Eq, uplink);
    e.extend(dev(MetaKey::Oifname, CmpOp::Eq, bridge));
    Rule::new(chain, mark_and_accept(e)).with_comment(comment)
}

fn bridges_set() -> Set {
    Set {
        table: table(),
        name: BRIDGES_SET.to_string(),
        key: Key(vec![DataType::Ifname]),
        data: None,
        interval: false,
    }
}

fn bridge_element(bridge: &str) -> Vec<Element> {
    vec![Element::key(ifname(bridge))]
}

/// Isolation: drop traffic from `bridge` to another berth bridge, and from
/// another berth bridge to `bridge`, unless it is a published-port
/// connection (`ct status & dnat != dnat`: those may cross networks, as
/// they may come from anywhere).
fn isolation_rules(chain: &ChainRef, bridge: &str, comment: &str) -> [Rule; 2] {
    let one_way = |here: MetaKey, there: MetaKey| {
        let mut e = dev(here, CmpOp::Eq, bridge);
        e.extend(dev(there, CmpOp::Neq, bridge));
        e.push(meta(there));
        e.push(Expr::Lookup {
            set: BRIDGES_SET.to_string(),
            sreg: REG_1,
            dreg: None,
            invert: false,
        });
        e.push(ct(CtKey::Status));
        e.extend(bits(CT_STATUS_DNAT, CmpOp::Neq, CT_STATUS_DNAT));
        e.push(Expr::Verdict(Verdict::Drop));
        Rule::new(chain, e).with_comment(comment)
    };
    [
        one_way(MetaKey::Iifname, MetaKey::Oifname),
        one_way(MetaKey::Oifname, MetaKey::Iifname),
    ]
}

/// Internal network: drop everything the bridge would forward to or from
/// any other link (its containers only talk among themselves and to the
/// gateway address).
fn internal_rules(chain: &ChainRef, bridge: &str, comment: &str) -> [Rule; 2] {
    let one_way = |here: MetaKey, there: MetaKey| {
        let mut e = dev(here, CmpOp::Eq, bridge);
        e.extend(dev(there, CmpOp::Neq, bridge));
        e.push(Expr::Verdict(Verdict::Drop));
        Rule::new(chain, e).with_comment(comment)
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
pub(crate) fn apply_batch(rules: &NetworkRules, known: &Known) -> Batch {
    let n = chain_names(&rules.network);
    let comment = comment_for(&rules.network);
    let (v4, v6) = split_subnets(&rules.masquerade);
    let mut b = Batch::new();
    b.add_table(&table());

    if v4.is_empty() && v6.is_empty() {
        drop_chain(&mut b, known, &nat_chain(&n));
        drop_set(&mut b, known, &addr_set(&n.set_v4, false));
        drop_set(&mut b, known, &addr_set(&n.set_v6, true));
    } else {
        // Flush the chain before touching the sets: a set still referenced
        // by a rule cannot be deleted.
        let nat = nat_chain(&n);
        ensure_empty_chain(&mut b, &nat);
        let families: [(&str, Vec<IpNet>, bool); 2] = [
            (&n.set_v4, v4.into_iter().map(IpNet::V4).collect(), false),
            (&n.set_v6, v6.into_iter().map(IpNet::V6).collect(), true),
        ];
        for (set_name, nets, is_v6) in families {
            let set = addr_set(set_name, is_v6);
            if nets.is_empty() {
                drop_set(&mut b, known, &set);
                continue;
            }
            b.add_set(&set)
                .flush_set(&set.table, set_name)
                .add_elements(&set.table, set_name, Element::intervals(&nets));
            b.add_rule(masquerade_rule(&nat.at, set_name, is_v6, &comment));
        }
    }

    let fwd = fwd_chain(&n);
    if rules.forward {
        b.add_set(&bridges_set()).add_elements(
            &table(),
            BRIDGES_SET,
            bridge_element(&rules.bridge),
        );
        ensure_empty_chain(&mut b, &fwd);
        if rules.internal {
            for r in internal_rules(&fwd.at, &rules.bridge, &comment) {
                b.add_rule(r);
            }
        }
        if rules.isolation {
            for r in isolation_rules(&fwd.at, &rules.bridge, &comment) {
                b.add_rule(r);
            }
        }
        for r in forward_rules(&fwd.at, &rules.bridge, &comment) {
            b.add_rule(r);
        }
        for uplink in &rules.uplinks {
            b.add_rule(uplink_rule(&fwd.at, &rules.bridge, uplink, &comment));
        }
    } else {
        drop_chain(&mut b, known, &fwd);
    }
    b
}

/// Drops the whole `inet berth` table ("add, then delete" so a missing
/// table is not an error).
pub(crate) fn remove_table_batch() -> Batch {
    let mut b = Batch::new();
    b.add_table(&table()).delete_table(&table());
    b
}

/// The batch that removes everything `network` owns (the shared table
/// stays: other networks and port mappings live in it).
pub(crate) fn remove_batch(network: &str, bridge: Option<&str>) -> Batch {
    let n = chain_names(network);
    let mut b = Batch::new();
    b.add_table(&table());
    if let Some(br) = bridge {
        // "add, then delete": gone whether or not it was there.
        b.add_set(&bridges_set())
            .add_elements(&table(), BRIDGES_SET, bridge_element(br))
            .delete_elements(&table(), BRIDGES_SET, bridge_element(br));
    }
    drop_chain(&mut b, &Known::Nothing, &nat_chain(&n));
    drop_chain(&mut b, &Known::Nothing, &fwd_chain(&n));
    drop_set(&mut b, &Known::Nothing, &addr_set(&n.set_v4, false));
    drop_set(&mut b, &Known::Nothing, &addr_set(&n.set_v6, true));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_kernel::nf_tables::value::interval_prefixes;

    fn rules(masq: &[&str], forward: bool) -> NetworkRules {
        NetworkRules {
            network: "net1".into(),
            bridge: "br-test".into(),
            masquerade: masq
                .iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
                .collect(),
            forward,
            isolation: forward,
            internal: false,
            uplinks: Vec::new(),
            quiet_ports: Vec::new(),
        }
    }

    fn has(cmds: &[String], want: &str) -> bool {
        cmds.iter().any(|c| c == want)
    }

    #[test]
    fn apply_v4_only_with_forward() {
        let n = chain_names("net1");
        let b = apply_batch(&rules(&["10.88.0.5/16"], true), &Known::Nothing);
        let c = b.describe();
        assert_eq!(c[0], "add table inet berth");
        assert!(has(&c, &format!("flush chain inet berth {}", n.nat)));
        assert!(has(&c, &format!("flush set inet berth {}", n.set_v4)));
        assert!(has(&c, &format!("delete set inet berth {}", n.set_v6)));
        assert!(has(&c, &format!("flush chain inet berth {}", n.forward)));
        assert!(!c.iter().any(|c| c.starts_with("delete chain")));
        // The chain flush precedes the v6 set deletion.
        let at = |w: String| c.iter().position(|x| *x == w);
        assert!(
            at(format!("flush chain inet berth {}", n.nat))
                < at(format!("delete set inet berth {}", n.set_v6))
        );
        // Host bits cleared.
        let masq: Vec<Element> = b.added_elements(&n.set_v4).into_iter().cloned().collect();
        assert_eq!(
            interval_prefixes(&masq),
            vec!["10.88.0.0/16"
                .parse::<IpNet>()
                .unwrap_or_else(|_| unreachable!())]
        );
        let rules: Vec<&Rule> = b.rules().collect();
        // Masquerade, two isolation drops, two accepts.
        assert_eq!(rules.len(), 5);
        assert!(rules[0].exprs.contains(&Expr::Masquerade));
        assert!(rules[0].exprs.contains(&Expr::Lookup {
            set: n.set_v4.clone(),
            sreg: REG_1,
            dreg: None,
            invert: true
        }));
        assert!(rules[1].exprs.contains(&Expr::Verdict(Verdict::Drop)));
        assert!(rules[4].exprs.contains(&Expr::Verdict(Verdict::Accept)));
        assert!(rules
            .iter()
            .all(|r| r.comment.as_deref() == Some("berth network net1")));
    }

    #[test]
    fn apply_without_masquerade_drops_nat_objects() {
        let n = chain_names("net1");
        let b = apply_batch(&rules(&[], false), &Known::Nothing);
        let c = b.describe();
        for name in [&n.nat, &n.forward] {
            assert!(has(&c, &format!("delete chain inet berth {name}")));
        }
        for name in [&n.set_v4, &n.set_v6] {
            assert!(has(&c, &format!("delete set inet berth {name}")));
        }
        assert_eq!(b.rules().count(), 0);
    }

    #[test]
    fn overlapping_subnets_are_merged() {
        let p = |s: &str| s.parse::<IpNet>().unwrap_or_else(|e| panic!("{s}: {e}"));
        let (v4, v6) = split_subnets(&[
            p("10.0.0.0/8"),
            p("10.1.0.0/16"),
            p("fd00::1/64"),
            p("fd00::/64"),
        ]);
        assert_eq!(v4, vec![Ipv4Net::new_assert([10, 0, 0, 0].into(), 8)]);
        assert_eq!(
            v6,
            vec![Ipv6Net::new_assert(
                std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
                64
            )]
        );
    }

    #[test]
    fn v6_rule_matches_ip6_and_multicast() {
        let b = apply_batch(&rules(&["fd10::/64"], false), &Known::Nothing);
        let r: Vec<&Rule> = b.rules().collect();
        assert_eq!(r.len(), 1);
        // meta nfproto ipv6 first, ff00::/8 as one byte.
        assert_eq!(
            r[0].exprs[1],
            berth_kernel::nf_tables::value::cmp(CmpOp::Eq, vec![10])
        );
        assert!(r[0]
            .exprs
            .contains(&berth_kernel::nf_tables::value::cmp(CmpOp::Neq, vec![0xff])));
    }

    #[test]
    fn remove_keeps_table() {
        let c = remove_batch("net1", None).describe();
        assert!(!c.iter().any(|c| c.starts_with("delete table")));
        assert_eq!(c.iter().filter(|c| c.starts_with("delete")).count(), 4);
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

    #[test]
    fn a_first_apply_removes_nothing() {
        // A v4-only network without forwarding, into a host with no
        // table: unknown, its v6 set and forward chain are removed in
        // case they are there; known absent, nothing is.
        let r = rules(&["10.88.0.5/16"], false);
        let removals = |known: &Known| {
            apply_batch(&r, known)
                .describe()
                .into_iter()
                .filter(|c| c.starts_with("delete"))
                .count()
        };
        assert!(removals(&Known::Nothing) > 0);
        // (Its new chain and set are still flushed: empty, they lose
        // nothing.)
        assert_eq!(removals(&Known::Listing(None)), 0);
    }
}
