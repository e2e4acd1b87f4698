//! Quiet bridges: a container's router solicitations and MLD reports are
//! dropped as they enter its berth bridge, before the bridge floods them.
//!
//! Why: every new container sends a few of them as its interface comes up
//! (MLD reports for its solicited-node groups, router solicitations, then
//! solicitations again with backoff). A bridge without a multicast querier
//! floods them to every port, and with br_netfilter loaded (Docker loads
//! it) each copy also crosses the forward hooks; so each ADD costs work
//! proportional to the containers already there, N² over a network's
//! life, on the same CPUs the ADDs run on. Measured here with 1000
//! containers on one bridge (`berth-bench --only compare --n 1000
//! --no-ref`, growth = median of the last 100 ADDs / the first 100):
//! - no filtering: 3.1x;
//! - dropped per copy, at the forward hook (the first version of this, so
//!   that the host still heard them): the copies no longer reached the
//!   containers, but the flood itself and one chain run per copy remained;
//!   1.21x-1.25x after the other fixes of that round;
//! - dropped once, on entry (prerouting): 1.05x-1.14x in the same
//!   conditions.
//!
//! What nobody on a berth network misses: containers get their addresses
//! and routes from IPAM, not from router advertisements, and nothing on the
//! bridge tracks multicast listeners (berth creates its bridges without
//! snooping). A radvd on the bridge still sends its periodic
//! advertisements, only doesn't answer solicitations; a multicast router on
//! the host would not learn the containers' groups. Neighbour discovery,
//! router advertisements and all other multicast are untouched.
//!
//! ```text
//! table bridge berth {
//!   chain quiet_ingress { type filter hook prerouting priority -200;
//!     iifname "<prefix>*" icmpv6 type { nd-router-solicit,
//!       mld-listener-report, mld2-listener-report } drop
//!     ... one rule per prefix the front ends name their ports with }
//! }
//! ```
//!
//! Matched by the ports' names, which the front ends choose (the caller
//! passes their prefixes: names are not this crate's): this kernel has no
//! `meta ibrname` in the bridge family. Made with the first berth network
//! and dropped with the last one (one batch each, never per container).
//! The forward chain `quiet` of earlier versions is removed when the
//! chain is made or dropped.

use super::listing::TableListing;
use super::spoofchk::bridge_table;
use crate::{Error, Result};
use berth_kernel::nf_tables::value::{cmp, meta};
use berth_kernel::nf_tables::{
    Batch, Chain, ChainType, CmpOp, DataType, Element, Expr, Hook, Key, MetaKey, PayloadBase, Rule,
    Verdict, REG_1,
};
use berth_kernel::Netns;

/// The prerouting chain of `bridge berth` holding the drop rules.
pub const QUIET_CHAIN: &str = "quiet_ingress";
/// The forward chain that held them in earlier versions.
const OLD_QUIET_CHAIN: &str = "quiet";
/// Before the bridge family's default filter priority.
const PRIO: i32 = -200;
/// ICMPv6 types dropped: router solicitation, MLD report, MLDv2 report.
const QUIET_TYPES: [u8; 3] = [133, 131, 143];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_ICMPV6: u8 = 58;

/// True for the quiet chain's name, or the one it had before.
pub(crate) fn is_quiet_chain(name: &str) -> bool {
    name == QUIET_CHAIN || name == OLD_QUIET_CHAIN
}

fn base(name: &str, hook: Hook) -> Chain {
    Chain::base(bridge_table().chain(name), ChainType::Filter, hook, PRIO)
}

/// Makes the table and the chain if missing, and removes the old forward
/// chain (made first, so deleting it never fails for its absence) unless
/// `bridge` (the table's listing; None: no such table) shows it is not
/// there.
fn chain(b: &mut Batch, bridge: Option<Option<&TableListing>>) -> Chain {
    let old = base(OLD_QUIET_CHAIN, Hook::Forward);
    let quiet = base(QUIET_CHAIN, Hook::Prerouting);
    b.add_table(&bridge_table());
    let old_absent =
        bridge.is_some_and(|l| l.is_none_or(|l| l.chain_rules(OLD_QUIET_CHAIN).is_none()));
    if !old_absent {
        b.add_chain(&old).flush_chain(&old.at).delete_chain(&old.at);
    }
    b.add_chain(&quiet);
    quiet
}

/// `iifname "PREFIX*" icmpv6 type { nd-router-solicit,
/// mld-listener-report, mld2-listener-report } drop`, as nft compiles it
/// in the bridge family (with its `ether type ip6` dependency).
fn quiet_rule(b: &mut Batch, chain: &Chain, prefix: &str) -> Rule {
    let set = b.add_anonymous_set(
        &bridge_table(),
        Key(vec![DataType::Icmpv6Type]),
        QUIET_TYPES.iter().map(|t| Element::key(vec![*t])).collect(),
    );
    let load = |base, offset, len| Expr::Payload {
        base,
        offset,
        len,
        dreg: REG_1,
    };
    let exprs = vec![
        meta(MetaKey::Iifname),
        cmp(CmpOp::Eq, prefix.as_bytes().to_vec()),
        load(PayloadBase::Link, 12, 2),
        cmp(CmpOp::Eq, ETH_P_IPV6.to_vec()),
        meta(MetaKey::L4proto),
        cmp(CmpOp::Eq, vec![IPPROTO_ICMPV6]),
        load(PayloadBase::Transport, 0, 1),
        Expr::Lookup {
            set,
            sreg: REG_1,
            dreg: None,
            invert: false,
        },
        Expr::Verdict(Verdict::Drop),
    ];
    Rule::new(&chain.at, exprs)
}

/// Makes berth's bridges quiet for ports named `port_prefixes*`
/// (idempotent: the chain is refilled).
pub fn quiet_add_in(ns: Option<&Netns>, port_prefixes: &[String]) -> Result<()> {
    quiet_batch(port_prefixes)?
        .commit(ns, "quiet berth's bridges")
        .map_err(Error::firewall)
}

/// What [`quiet_add_in`] commits.
pub fn quiet_batch(port_prefixes: &[String]) -> Result<Batch> {
    quiet_batch_given(port_prefixes, None)
}

/// [`quiet_batch`], knowing `bridge berth` as `bridge` lists it (None:
/// unknown; Some(None): no such table): nothing if the chain holds a rule
/// per prefix already, and no removal of an old chain that is not there.
/// (A commit that removes nothing leaves the kernel nothing to free, which
/// a process would wait for when it closes its socket.)
pub(crate) fn quiet_batch_given(
    port_prefixes: &[String],
    bridge: Option<Option<&TableListing>>,
) -> Result<Batch> {
    let full = bridge.flatten().is_some_and(|l| {
        l.chain_rules(QUIET_CHAIN)
            .is_some_and(|r| r == port_prefixes.len())
            && l.chain_rules(OLD_QUIET_CHAIN).is_none()
    });
    if full {
        return Ok(Batch::new());
    }
    let mut b = Batch::new();
    let quiet = chain(&mut b, bridge);
    b.flush_chain(&quiet.at);
    for p in port_prefixes {
        super::check_ifname(p)?;
        let rule = quiet_rule(&mut b, &quiet, p);
        b.add_rule(rule);
    }
    Ok(b)
}

/// Drops the chain (no berth network is left; gone already is fine).
pub fn quiet_remove_in(ns: Option<&Netns>) -> Result<()> {
    quiet_remove_batch()
        .commit(ns, "drop the quiet chain")
        .map_err(Error::firewall)
}

/// What [`quiet_remove_in`] commits.
pub(crate) fn quiet_remove_batch() -> Batch {
    let mut b = Batch::new();
    let quiet = chain(&mut b, None);
    b.delete_chain(&quiet.at);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_and_one_set_per_prefix() {
        let mut b = Batch::new();
        let quiet = chain(&mut b, None);
        let r = quiet_rule(&mut b, &quiet, "bv");
        assert_eq!(r.exprs[1], cmp(CmpOp::Eq, b"bv".to_vec()));
        b.add_rule(r);
        let c = b.describe();
        assert_eq!(c[0], "add table bridge berth");
        assert!(c.contains(&"delete chain bridge berth quiet".to_string()));
        assert!(c.contains(&"add anonymous set to bridge berth".to_string()));
        assert_eq!(
            c.last().map(String::as_str),
            Some("add rule to bridge berth quiet_ingress")
        );
    }

    #[test]
    fn a_known_table_is_not_cleaned_of_what_it_lacks() {
        let prefixes = vec!["bv".to_string(), "vb".to_string()];
        for bridge in [None, Some(None)] {
            let b = quiet_batch_given(&prefixes, bridge).unwrap_or_default();
            let deletes = b.describe().iter().any(|c| c.starts_with("delete"));
            // Unknown: the old chain is removed whether or not it is
            // there; no table: there is nothing to remove.
            assert_eq!(deletes, bridge.is_none(), "{bridge:?}: {:?}", b.describe());
            assert_eq!(b.rules().count(), 2);
        }
    }
}
