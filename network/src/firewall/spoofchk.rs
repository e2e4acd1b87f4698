//! MAC spoof checking (the bridge plugin's `macspoofchk`): frames entering
//! a bridge from a container's host veth must carry the container's MAC as
//! their source, or they are dropped.
//!
//! Everything lives in one table, `bridge berth` (bridge family: it sees
//! frames as the bridge receives them, before forwarding):
//!
//! ```text
//! map spoofchk-ports { type ifname : verdict }   "<hostveth>" : jump spoof-<hostveth>
//! chain spoofchk     { type filter hook prerouting priority -300;
//!                      iifname vmap @spoofchk-ports }
//! chain spoof-<hostveth> { ether saddr != <MAC> drop }
//! ```
//!
//! A frame costs one map lookup whatever the number of containers, and a
//! container costs one element and one chain, added and removed by one
//! batch each that never lists the ruleset (same idempotent "add, then
//! flush" / "add, then delete" scheme as rules.rs; adding an element that
//! exists with the same verdict is a no-op in the kernel).

use super::check_ifname;
use super::listing::TableListing;
use super::rules::clean_comment;
use crate::{Error, Result};
use berth_kernel::nf_tables::value::{cmp, ifname, meta};
use berth_kernel::nf_tables::{
    self, Batch, Chain, ChainRef, ChainType, CmpOp, DataType, Element, Expr, Family, Hook, Key,
    MapData, MetaKey, PayloadBase, Rule, Set, Table, Verdict, REG_1, REG_VERDICT,
};
use berth_kernel::Netns;

/// The table's name (family bridge; `inet berth` is another table).
pub const SPOOFCHK_TABLE: &str = "berth";
/// The base chain holding the single vmap rule.
pub const SPOOFCHK_CHAIN: &str = "spoofchk";
/// The verdict map from host veth to its port chain.
pub const SPOOFCHK_MAP: &str = "spoofchk-ports";
/// Before everything else in the bridge family's prerouting.
const PRIO: i32 = -300;

/// The per-port chain of `host_veth`.
pub fn spoofchk_chain_name(host_veth: &str) -> String {
    format!("spoof-{host_veth}")
}

/// `bridge berth`: the spoof checks and the quiet chain.
pub(crate) fn bridge_table() -> Table {
    Table::new(Family::Bridge, SPOOFCHK_TABLE)
}

fn base_chain() -> Chain {
    Chain::base(
        bridge_table().chain(SPOOFCHK_CHAIN),
        ChainType::Filter,
        Hook::Prerouting,
        PRIO,
    )
}

fn port_chain(host_veth: &str) -> Chain {
    Chain::regular(bridge_table().chain(&spoofchk_chain_name(host_veth)))
}

fn map() -> Set {
    Set {
        table: bridge_table(),
        name: SPOOFCHK_MAP.to_string(),
        key: Key(vec![DataType::Ifname]),
        data: Some(MapData::Verdict),
        interval: false,
    }
}

fn element(host_veth: &str) -> Vec<Element> {
    vec![Element::verdict(
        ifname(host_veth),
        Verdict::Jump(spoofchk_chain_name(host_veth)),
    )]
}

/// `ether saddr`: the link header's source address.
fn ether_saddr() -> Expr {
    Expr::Payload {
        base: PayloadBase::Link,
        offset: 6,
        len: 6,
        dreg: REG_1,
    }
}

/// Adds the table, map and base chain if missing (the base chain is
/// refilled: one rule), the port's chain (refilled) and its map element.
pub(crate) fn add_batch(host_veth: &str, mac: &[u8; 6], container_id: &str) -> Batch {
    let mut b = Batch::new();
    let base = base_chain();
    b.add_table(&bridge_table())
        .add_set(&map())
        .add_chain(&base)
        .flush_chain(&base.at);
    // iifname vmap @spoofchk-ports
    b.add_rule(Rule::new(
        &base.at,
        vec![
            meta(MetaKey::Iifname),
            Expr::Lookup {
                set: SPOOFCHK_MAP.to_string(),
                sreg: REG_1,
                dreg: Some(REG_VERDICT),
                invert: false,
            },
        ],
    ));
    let port = port_chain(host_veth);
    b.add_chain(&port).flush_chain(&port.at);
    // ether saddr != MAC drop
    b.add_rule(
        Rule::new(
            &port.at,
            vec![
                ether_saddr(),
                cmp(CmpOp::Neq, mac.to_vec()),
                Expr::Verdict(Verdict::Drop),
            ],
        )
        .with_comment(clean_comment(format!("berth container {container_id}"))),
    );
    b.add_elements(&bridge_table(), SPOOFCHK_MAP, element(host_veth));
    b
}

/// Removes the port's element and chain, whether or not they exist (the
/// element goes first: the chain is referenced by it).
pub(crate) fn remove_batch(host_veth: &str) -> Batch {
    let port = port_chain(host_veth);
    let mut b = Batch::new();
    b.add_table(&bridge_table())
        .add_set(&map())
        .add_chain(&port)
        .add_elements(&bridge_table(), SPOOFCHK_MAP, element(host_veth))
        .delete_elements(&bridge_table(), SPOOFCHK_MAP, element(host_veth))
        .flush_chain(&port.at)
        .delete_chain(&port.at);
    b
}

/// Adds the MAC spoof check of `host_veth` (idempotent).
pub fn spoofchk_add_in(
    ns: Option<&Netns>,
    host_veth: &str,
    mac: &[u8; 6],
    container_id: &str,
) -> Result<()> {
    let op = format!("add MAC spoof check of {host_veth}");
    spoofchk_add_batch(host_veth, mac, container_id)?
        .commit(ns, &op)
        .map_err(Error::firewall)
}

/// What [`spoofchk_add_in`] commits.
pub fn spoofchk_add_batch(host_veth: &str, mac: &[u8; 6], container_id: &str) -> Result<Batch> {
    check_ifname(host_veth)?;
    Ok(add_batch(host_veth, mac, container_id))
}

/// Removes the MAC spoof check of `host_veth` (idempotent).
pub fn spoofchk_remove_in(ns: Option<&Netns>, host_veth: &str) -> Result<()> {
    check_ifname(host_veth)?;
    let op = format!("remove MAC spoof check of {host_veth}");
    remove_batch(host_veth)
        .commit(ns, &op)
        .map_err(Error::firewall)
}

/// Drops the whole `bridge berth` table (idempotent).
pub fn spoofchk_remove_table_in(ns: Option<&Netns>) -> Result<()> {
    let mut b = Batch::new();
    b.add_table(&bridge_table()).delete_table(&bridge_table());
    b.commit(ns, "remove table bridge berth")
        .map_err(Error::firewall)
}

/// Drops `bridge berth` if no port's check is left in it (the quiet chain
/// and the base chain alone don't keep it).
pub fn spoofchk_remove_table_if_unused_in(ns: Option<&Netns>) -> Result<()> {
    let Some(unused) = unused_in(ns)? else {
        return Ok(());
    };
    let mut b = Batch::new();
    if unused {
        b.add_table(&bridge_table()).delete_table(&bridge_table());
    }
    b.commit(ns, "remove table bridge berth")
        .map_err(Error::firewall)
}

/// What the last network's removal does to `bridge berth` (after a
/// listing): drops the table if no port's check is left in it, else only
/// the quiet chain; nothing if there is no such table.
pub(crate) fn release_batch(ns: Option<&Netns>) -> Result<Batch> {
    Ok(match unused_in(ns)? {
        None => Batch::new(),
        Some(true) => {
            let mut b = Batch::new();
            b.add_table(&bridge_table()).delete_table(&bridge_table());
            b
        }
        Some(false) => super::quiet::quiet_remove_batch(),
    })
}

/// Whether `bridge berth` holds no port's check; None if there is no such
/// table.
fn unused_in(ns: Option<&Netns>) -> Result<Option<bool>> {
    let Some(listing) = nf_tables::list_table(ns, &bridge_table()).map_err(Error::firewall)? else {
        return Ok(None);
    };
    let ports = listing
        .chains
        .iter()
        .filter(|c| c.at.name != SPOOFCHK_CHAIN && !super::quiet::is_quiet_chain(&c.at.name))
        .count();
    Ok(Some(ports == 0))
}

/// For the reconciler: what `listing` (of `bridge berth`) lacks of
/// `host_veth`'s check, or None.
pub fn spoofchk_missing_from_listing(listing: &TableListing, host_veth: &str) -> Option<String> {
    let chain = spoofchk_chain_name(host_veth);
    let filled = |c: &str| listing.chain_rules(c).is_some_and(|r| r > 0);
    if !filled(SPOOFCHK_CHAIN) {
        return Some(format!("chain {SPOOFCHK_CHAIN}"));
    }
    if !listing.has_element(SPOOFCHK_MAP, &element(host_veth)[0]) {
        return Some(format!("{host_veth} in map {SPOOFCHK_MAP}"));
    }
    if !filled(&chain) {
        return Some(format!("chain {chain}"));
    }
    None
}

/// The MACs `host_veth`'s chain lets through (lower case), or None if it
/// has no chain.
pub fn spoofchk_macs_in(ns: Option<&Netns>, host_veth: &str) -> Result<Option<Vec<String>>> {
    check_ifname(host_veth)?;
    let chain: ChainRef = bridge_table().chain(&spoofchk_chain_name(host_veth));
    Ok(nf_tables::list_chain(ns, &chain)
        .map_err(Error::firewall)?
        .map(|rules| macs(&rules)))
}

/// The MACs of `ether saddr != MAC drop` rules.
fn macs(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.exprs.contains(&Expr::Verdict(Verdict::Drop)))
        .filter_map(|r| {
            r.exprs.windows(2).find_map(|w| match w {
                [load, Expr::Cmp {
                    op: CmpOp::Neq,
                    data,
                    ..
                }] if *load == ether_saddr() => <[u8; 6]>::try_from(data.as_slice()).ok(),
                _ => None,
            })
        })
        .map(|mac| berth_kernel::mac_text(&mac).to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_batch_shape() {
        let b = add_batch("bv0123abcd", &[2, 0, 0, 0, 0, 0xab], "c1");
        assert_eq!(
            b.describe(),
            [
                "add table bridge berth",
                "add set bridge berth spoofchk-ports",
                "add chain bridge berth spoofchk",
                "flush chain bridge berth spoofchk",
                "add rule to bridge berth spoofchk",
                "add chain bridge berth spoof-bv0123abcd",
                "flush chain bridge berth spoof-bv0123abcd",
                "add rule to bridge berth spoof-bv0123abcd",
                "add 1 element(s) to bridge berth spoofchk-ports",
            ]
        );
        let rules: Vec<&Rule> = b.rules().collect();
        assert_eq!(rules[1].comment.as_deref(), Some("berth container c1"));
        assert_eq!(macs(&[rules[1].clone()]), vec!["02:00:00:00:00:ab"]);
        assert_eq!(
            b.added_elements(SPOOFCHK_MAP),
            vec![&element("bv0123abcd")[0]]
        );
    }

    #[test]
    fn remove_batch_deletes_element_before_chain() {
        let c = remove_batch("bv1").describe();
        let pos = |x: &str| c.iter().position(|a| a.starts_with(x));
        assert!(pos("add chain") < pos("add 1 element"));
        assert!(pos("delete 1 element") < pos("delete chain"));
        assert!(!c
            .iter()
            .any(|a| a.starts_with("delete table") || a.starts_with("delete set")));
    }

    #[test]
    fn macs_of_accept_rules_are_not_listed() {
        let chain = bridge_table().chain("spoof-bv1");
        let accept = Rule::new(&chain, vec![Expr::Verdict(Verdict::Accept)]);
        assert_eq!(macs(&[accept]), Vec::<String>::new());
    }
}
