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

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Verdict};
use nftables::schema::{
    Chain, Element, FlushObject, Map, NfCmd, NfListObject, Rule, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::listing::TableListing;
use super::nft;
use super::rules::clean_comment;
use crate::handle::check_ifname;
use crate::{Error, Netns, Result};

/// The table's name (family bridge; `inet berth` is another table).
pub const SPOOFCHK_TABLE: &str = "berth";
/// The base chain holding the single vmap rule.
pub const SPOOFCHK_CHAIN: &str = "spoofchk";
/// The verdict map from host veth name to its per-port chain.
pub const SPOOFCHK_MAP: &str = "spoofchk-ports";
/// Priority of the base chain: the reference plugin's (before anything
/// else in the bridge family's prerouting).
const PRIO: i32 = -300;

/// The per-port chain of `host_veth`.
pub fn spoofchk_chain_name(host_veth: &str) -> String {
    format!("spoof-{host_veth}")
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::Bridge,
        name: SPOOFCHK_TABLE.into(),
        handle: None,
    }
}

fn chain(name: String, base: bool) -> Chain<'static> {
    Chain {
        family: NfFamily::Bridge,
        table: SPOOFCHK_TABLE.into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: base.then_some(NfChainType::Filter),
        hook: base.then_some(NfHook::Prerouting),
        prio: base.then_some(PRIO),
        dev: None,
        policy: base.then_some(NfChainPolicy::Accept),
    }
}

/// The map's data type is really `verdict`, which the nftables crate (0.6)
/// cannot express: `to_json` rewrites this placeholder.
fn map() -> Box<Map<'static>> {
    Box::new(Map {
        family: NfFamily::Bridge,
        table: SPOOFCHK_TABLE.into(),
        name: SPOOFCHK_MAP.into(),
        set_type: SetTypeValue::Single(SetType::Ifname),
        map: SetTypeValue::Single(SetType::Ifname),
        ..Map::default()
    })
}

/// `"<hostveth>" : jump spoof-<hostveth>`
fn element(host_veth: &str) -> Element<'static> {
    Element {
        family: NfFamily::Bridge,
        table: SPOOFCHK_TABLE.into(),
        name: SPOOFCHK_MAP.into(),
        elem: Cow::Owned(vec![Expression::List(vec![
            Expression::String(host_veth.to_string().into()),
            Expression::Verdict(Verdict::Jump(JumpTarget {
                target: spoofchk_chain_name(host_veth).into(),
            })),
        ])]),
    }
}

fn rule(chain: String, expr: Vec<Statement<'static>>, comment: Option<String>) -> Rule<'static> {
    Rule {
        family: NfFamily::Bridge,
        table: SPOOFCHK_TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: comment.map(Cow::Owned),
    }
}

/// The batch installing the check for one port (and the shared table,
/// map and base chain, which every ADD re-asserts so none is ever missing).
pub(crate) fn add_batch(host_veth: &str, mac: &[u8; 6], container_id: &str) -> Batch<'static> {
    let port = spoofchk_chain_name(host_veth);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    // The map before the rule that refers to it.
    b.add(NfListObject::Map(map()));
    // Base chain: flushed and refilled so its one rule is never doubled.
    let base = chain(SPOOFCHK_CHAIN.into(), true);
    b.add(NfListObject::Chain(base.clone()));
    b.add_cmd(NfCmd::Flush(FlushObject::Chain(base)));
    // iifname vmap @spoofchk-ports
    b.add(NfListObject::Rule(rule(
        SPOOFCHK_CHAIN.into(),
        vec![Statement::VerdictMap(VerdictMap {
            key: Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::Iifname,
            })),
            data: Expression::String(format!("@{SPOOFCHK_MAP}").into()),
        })],
        None,
    )));
    // The port's chain, emptied first: a re-ADD with another MAC replaces
    // the rule instead of adding a second one.
    let pc = chain(port.clone(), false);
    b.add(NfListObject::Chain(pc.clone()));
    b.add_cmd(NfCmd::Flush(FlushObject::Chain(pc)));
    // ether saddr != MAC drop
    b.add(NfListObject::Rule(rule(
        port,
        vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: "ether".into(),
                        field: "saddr".into(),
                    },
                ))),
                right: Expression::String(crate::mac_text(mac).into()),
                op: Operator::NEQ,
            }),
            Statement::Drop(None),
        ],
        Some(clean_comment(format!("berth container {container_id}"))),
    )));
    b.add(NfListObject::Element(element(host_veth)));
    b
}

/// The batch removing one port's element and chain, whatever exists. The
/// element is added before it is deleted, so its chain must exist: the
/// chain is added first and deleted last (after the element no longer
/// refers to it). The table and map stay for the other ports.
pub(crate) fn remove_batch(host_veth: &str) -> Batch<'static> {
    let pc = chain(spoofchk_chain_name(host_veth), false);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.add(NfListObject::Map(map()));
    b.add(NfListObject::Chain(pc.clone()));
    b.add(NfListObject::Element(element(host_veth)));
    b.delete(NfListObject::Element(element(host_veth)));
    b.add_cmd(NfCmd::Flush(FlushObject::Chain(pc.clone())));
    b.delete(NfListObject::Chain(pc));
    b
}

/// Serializes `b`, giving every map its real data type (see [`map`]).
fn to_json(b: Batch<'_>, op: &str) -> Result<String> {
    let mut v = serde_json::to_value(b.to_nftables()).map_err(|e| Error::Nft {
        op: op.to_string(),
        msg: format!("serialize ruleset: {e}"),
    })?;
    for cmd in v["nftables"].as_array_mut().into_iter().flatten() {
        for obj in cmd.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            if let Some(m) = obj.get_mut("map") {
                m["map"] = Value::from("verdict");
            }
        }
    }
    Ok(v.to_string())
}

fn run(ns: Option<&Netns>, b: Batch<'_>, op: &str) -> Result<()> {
    let json = to_json(b, op)?;
    nft::run(ns, &["-j", "-f", "-"], Some(&json), op).map(|_| ())
}

/// Installs (or replaces) the spoof check of `host_veth`: only frames from
/// `mac` may enter the bridge through it. One nft transaction; idempotent.
pub fn spoofchk_add_in(
    ns: Option<&Netns>,
    host_veth: &str,
    mac: &[u8; 6],
    container_id: &str,
) -> Result<()> {
    check_ifname(host_veth)?;
    let op = format!("add MAC spoof check of {host_veth}");
    run(ns, add_batch(host_veth, mac, container_id), &op)
}

/// Removes the spoof check of `host_veth`; succeeds when there is none.
/// Needs no MAC. One nft transaction.
pub fn spoofchk_remove_in(ns: Option<&Netns>, host_veth: &str) -> Result<()> {
    check_ifname(host_veth)?;
    let op = format!("remove MAC spoof check of {host_veth}");
    run(ns, remove_batch(host_veth), &op)
}

/// Removes the whole `bridge berth` table ("add, then delete"), for the
/// caller that knows no berth network is left. Idempotent.
pub fn spoofchk_remove_table_in(ns: Option<&Netns>) -> Result<()> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    run(ns, b, "remove table bridge berth")
}

/// Drops `bridge berth` when it holds no port's check any more (one
/// listing; a missing table is fine), the quiet chain with it: callers
/// call this once no berth network is left. Caller holds berth's
/// host-wide lock.
pub fn spoofchk_remove_table_if_unused_in(ns: Option<&Netns>) -> Result<()> {
    let op = format!("list table bridge {SPOOFCHK_TABLE}");
    let out = match nft::run(
        ns,
        &["-j", "list", "table", "bridge", SPOOFCHK_TABLE],
        None,
        &op,
    ) {
        Ok(out) => out,
        Err(Error::Nft { msg, .. }) if msg.contains("No such file or directory") => return Ok(()),
        Err(e) => return Err(e),
    };
    let doc: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Nft {
        op: op.clone(),
        msg: format!("bad nft JSON: {e}"),
    })?;
    let ports = doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("chain")?.get("name")?.as_str())
        .filter(|n| *n != SPOOFCHK_CHAIN && !super::quiet::is_quiet_chain(n))
        .count();
    if ports == 0 {
        spoofchk_remove_table_in(ns)?;
    }
    Ok(())
}

/// For the reconciler: what `listing` (of `bridge berth`) lacks of
/// `host_veth`'s check (the base chain's rule, the port's element in the
/// map, its chain's rule), as text, or None.
pub fn spoofchk_missing_from_listing(listing: &TableListing, host_veth: &str) -> Option<String> {
    let chain = spoofchk_chain_name(host_veth);
    let filled = |c: &str| listing.chain_rules(c).is_some_and(|r| !r.is_empty());
    if !filled(SPOOFCHK_CHAIN) {
        return Some(format!("chain {SPOOFCHK_CHAIN}"));
    }
    if !listing.has_element(SPOOFCHK_MAP, &format!("\"{host_veth}\" : jump {chain}")) {
        return Some(format!("{host_veth} in map {SPOOFCHK_MAP}"));
    }
    if !filled(&chain) {
        return Some(format!("chain {chain}"));
    }
    None
}

/// For CHECK: the MACs the per-port chain of `host_veth` lets through
/// (lowercase, one per `ether saddr != MAC drop` rule), or None if the
/// chain (or the table) does not exist. One `nft list chain`.
pub fn spoofchk_macs_in(ns: Option<&Netns>, host_veth: &str) -> Result<Option<Vec<String>>> {
    check_ifname(host_veth)?;
    let name = spoofchk_chain_name(host_veth);
    let op = format!("list chain bridge {SPOOFCHK_TABLE} {name}");
    let args = [
        "-j",
        "list",
        "chain",
        "bridge",
        SPOOFCHK_TABLE,
        name.as_str(),
    ];
    let out = match nft::run(ns, &args, None, &op) {
        Ok(out) => out,
        // nft reports a missing table or chain as ENOENT on stderr.
        Err(Error::Nft { msg, .. }) if msg.contains("No such file or directory") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    parse_macs(&out)
        .map(Some)
        .map_err(|msg| Error::Nft { op, msg })
}

/// The MACs of the `ether saddr != MAC drop` rules in a chain listing.
fn parse_macs(listing: &str) -> std::result::Result<Vec<String>, String> {
    let doc: Value = serde_json::from_str(listing).map_err(|e| format!("bad nft JSON: {e}"))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or("nft JSON without an \"nftables\" array")?;
    let macs = items
        .iter()
        .filter_map(|o| o.get("rule")?.get("expr")?.as_array())
        .filter(|expr| expr.iter().any(|s| s.get("drop").is_some()))
        .filter_map(|expr| {
            expr.iter().find_map(|s| {
                let m = s.get("match")?;
                let saddr = m["left"]["payload"]["protocol"] == "ether"
                    && m["left"]["payload"]["field"] == "saddr"
                    && m["op"] == "!=";
                saddr.then(|| m["right"].as_str().map(str::to_ascii_lowercase))?
            })
        })
        .collect();
    Ok(macs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: Batch<'static>) -> Value {
        serde_json::from_str(&to_json(b, "test").unwrap()).unwrap()
    }

    /// (command, object kind) of each command.
    fn cmds(v: &Value) -> Vec<(String, String)> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let (cmd, inner) = o.as_object().unwrap().iter().next().unwrap();
                let kind = inner.as_object().unwrap().keys().next().unwrap();
                (cmd.clone(), kind.clone())
            })
            .collect()
    }

    #[test]
    fn add_batch_shape() {
        let v = json(add_batch("bv0123abcd", &[2, 0, 0, 0, 0, 0xab], "c1"));
        let want = [
            ("add", "table"),
            ("add", "map"),
            ("add", "chain"),
            ("flush", "chain"),
            ("add", "rule"),
            ("add", "chain"),
            ("flush", "chain"),
            ("add", "rule"),
            ("add", "element"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(cmds(&v), want);
        let n = &v["nftables"];
        assert_eq!(n[0]["add"]["table"]["family"], "bridge");
        assert_eq!(n[1]["add"]["map"]["type"], "ifname");
        assert_eq!(n[1]["add"]["map"]["map"], "verdict");
        assert_eq!(n[2]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(n[2]["add"]["chain"]["prio"], -300);
        assert_eq!(
            n[4]["add"]["rule"]["expr"][0]["vmap"]["data"],
            "@spoofchk-ports"
        );
        assert!(n[5]["add"]["chain"].get("hook").is_none());
        let r = &n[7]["add"]["rule"];
        assert_eq!(r["chain"], "spoof-bv0123abcd");
        assert_eq!(r["expr"][0]["match"]["right"], "02:00:00:00:00:ab");
        assert_eq!(r["expr"][0]["match"]["op"], "!=");
        assert_eq!(r["comment"], "berth container c1");
        assert_eq!(
            n[8]["add"]["element"]["elem"],
            serde_json::json!([["bv0123abcd", {"jump": {"target": "spoof-bv0123abcd"}}]])
        );
    }

    #[test]
    fn remove_batch_deletes_element_before_chain() {
        let c = cmds(&json(remove_batch("bv1")));
        let pos = |x: (&str, &str)| c.iter().position(|(a, b)| a == x.0 && b == x.1).unwrap();
        assert!(pos(("add", "chain")) < pos(("add", "element")));
        assert!(pos(("delete", "element")) < pos(("delete", "chain")));
        assert!(!c
            .iter()
            .any(|(a, b)| a == "delete" && (b == "table" || b == "map")));
    }

    #[test]
    fn parses_macs_from_listing() {
        let listing = r#"{"nftables": [{"metainfo": {}},
          {"chain": {"family": "bridge", "table": "berth", "name": "spoof-bv1"}},
          {"rule": {"chain": "spoof-bv1", "expr": [{"match": {"op": "!=",
            "left": {"payload": {"protocol": "ether", "field": "saddr"}},
            "right": "02:00:00:00:00:AB"}}, {"drop": null}]}},
          {"rule": {"chain": "spoof-bv1", "expr": [{"accept": null}]}}]}"#;
        assert_eq!(parse_macs(listing).unwrap(), vec!["02:00:00:00:00:ab"]);
        assert_eq!(
            parse_macs(r#"{"nftables": []}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_macs("nope").is_err());
    }
}
