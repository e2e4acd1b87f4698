//! Coexisting with Docker's firewall.
//!
//! Docker sets the policy of iptables' FORWARD chain (`table ip filter`) to
//! DROP and loads br_netfilter, so bridged and routed traffic of every
//! other bridge is dropped there. An `accept` in berth's own table cannot
//! overrule that: in nftables a drop in any base chain is final. Docker's
//! documented hook for exceptions is its DOCKER-USER chain, which FORWARD
//! jumps to first and which Docker never flushes. berth puts one rule
//! there, per family, accepting packets that carry [`FORWARD_MARK`] — the
//! bit berth's per-network forward chains (priority filter - 1, so they run
//! first) set on traffic from a berth bridge and on replies to it. Nothing
//! else is opened.
//!
//! The rule uses only expressions iptables-nft can read back
//! (`-m mark --mark 0x40000000/0x40000000 -m comment ... -j ACCEPT`), so
//! `iptables -S`, iptables-save and Docker itself keep working.
//!
//! With iptables-legacy, Docker's chains live in the legacy xtables and are
//! invisible to nftables: berth cannot add the exception there, and the
//! operator must (see plugins/bridge/README.md).

use nftables::batch::Batch;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{NfCmd, NfListObject, Rule};
use nftables::stmt::{Accept, Match, Operator, Statement};
use nftables::types::NfFamily;
use serde_json::Value;
use std::borrow::Cow;

use super::nft;
use super::rules::FORWARD_MARK;
use crate::{Netns, Result};

pub const DOCKER_USER: &str = "DOCKER-USER";
/// Identifies berth's rule in DOCKER-USER.
pub const DOCKER_USER_COMMENT: &str = "berth: accept traffic of berth bridges";

const FAMILIES: [(NfFamily, &str); 2] = [(NfFamily::IP, "ip"), (NfFamily::IP6, "ip6")];

/// berth's rule in one family's DOCKER-USER chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerUser {
    /// There is no DOCKER-USER chain (Docker isn't using iptables-nft).
    NoChain,
    /// The chain exists without berth's rule.
    Missing,
    /// berth's rule, by handle (more than one if something duplicated it).
    Present(Vec<u64>),
}

/// The state of berth's rule in `ip filter DOCKER-USER` and
/// `ip6 filter DOCKER-USER` (one `nft list` call each).
pub fn docker_user_in(ns: Option<&Netns>) -> Result<[DockerUser; 2]> {
    Ok([state(ns, "ip")?, state(ns, "ip6")?])
}

fn state(ns: Option<&Netns>, family: &str) -> Result<DockerUser> {
    let op = format!("list {family} filter {DOCKER_USER}");
    let out = match nft::run(
        ns,
        &["-j", "list", "chain", family, "filter", DOCKER_USER],
        None,
        &op,
    ) {
        Ok(out) => out,
        // nft says "No such file or directory" for a missing table or chain.
        Err(crate::Error::Nft { msg, .. }) if msg.contains("No such file or directory") => {
            return Ok(DockerUser::NoChain)
        }
        Err(e) => return Err(e),
    };
    Ok(parse_state(&out))
}

fn parse_state(listing: &str) -> DockerUser {
    let v: Value = serde_json::from_str(listing).unwrap_or(Value::Null);
    let handles: Vec<u64> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"].as_str() == Some(DOCKER_USER_COMMENT))
        .filter_map(|r| r["handle"].as_u64())
        .collect();
    if handles.is_empty() {
        DockerUser::Missing
    } else {
        DockerUser::Present(handles)
    }
}

fn mark() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
}

fn accept_rule(family: NfFamily, handle: Option<u32>) -> Rule<'static> {
    Rule {
        family,
        table: "filter".into(),
        chain: DOCKER_USER.into(),
        // meta mark & FORWARD_MARK == FORWARD_MARK accept
        expr: Cow::Owned(vec![
            Statement::Match(Match {
                left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                    mark(),
                    Expression::Number(FORWARD_MARK),
                ))),
                right: Expression::Number(FORWARD_MARK),
                op: Operator::EQ,
            }),
            Statement::Accept(Some(Accept {})),
        ]),
        handle,
        index: None,
        comment: Some(DOCKER_USER_COMMENT.into()),
    }
}

/// Adds berth's rule to every existing DOCKER-USER chain that lacks it.
/// No-op (after the listing) when Docker isn't there.
pub fn ensure_docker_user_in(ns: Option<&Netns>) -> Result<()> {
    let states = docker_user_in(ns)?;
    let mut b = Batch::new();
    let mut any = false;
    for ((family, _), st) in FAMILIES.into_iter().zip(&states) {
        if *st == DockerUser::Missing {
            b.add_cmd(NfCmd::Insert(NfListObject::Rule(accept_rule(family, None))));
            any = true;
        }
    }
    if !any {
        return Ok(());
    }
    nft::run_batch(ns, b, "insert berth's rule into DOCKER-USER")
}

/// Removes berth's rule from the DOCKER-USER chains, if it is there.
pub fn remove_docker_user_in(ns: Option<&Netns>) -> Result<()> {
    let states = docker_user_in(ns)?;
    let mut b = Batch::new();
    let mut any = false;
    for ((family, _), st) in FAMILIES.into_iter().zip(&states) {
        if let DockerUser::Present(handles) = st {
            for &h in handles {
                let Ok(h) = u32::try_from(h) else { continue };
                b.delete(NfListObject::Rule(accept_rule(family, Some(h))));
                any = true;
            }
        }
    }
    if !any {
        return Ok(());
    }
    nft::run_batch(ns, b, "delete berth's rule from DOCKER-USER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_berth_rules_by_comment() {
        let listing = format!(
            r#"{{"nftables":[{{"metainfo":{{}}}},{{"chain":{{"name":"DOCKER-USER"}}}},
            {{"rule":{{"handle":7,"comment":"{DOCKER_USER_COMMENT}","expr":[]}}}},
            {{"rule":{{"handle":2,"expr":[{{"return":null}}]}}}}]}}"#
        );
        assert_eq!(parse_state(&listing), DockerUser::Present(vec![7]));
        assert_eq!(
            parse_state(r#"{"nftables":[{"rule":{"handle":2}}]}"#),
            DockerUser::Missing
        );
    }

    #[test]
    fn rule_matches_the_mark_and_accepts() {
        let mut b = Batch::new();
        b.add_cmd(NfCmd::Insert(NfListObject::Rule(accept_rule(
            NfFamily::IP,
            None,
        ))));
        let j = serde_json::to_value(b.to_nftables()).unwrap();
        let rule = &j["nftables"][0]["insert"]["rule"];
        assert_eq!(rule["family"], "ip");
        assert_eq!(rule["chain"], DOCKER_USER);
        assert_eq!(rule["expr"][0]["match"]["right"], FORWARD_MARK);
        assert!(rule["expr"][1].get("accept").is_some());
    }
}
