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

use super::rules::FORWARD_MARK;
use crate::{Error, Result};
use berth_kernel::nf_tables::value::{bits, meta};
use berth_kernel::nf_tables::{
    self, Batch, ChainRef, CmpOp, Expr, Family, MetaKey, Rule, Table, Verdict,
};
use berth_kernel::Netns;

pub const DOCKER_USER: &str = "DOCKER-USER";
/// Identifies berth's rule in DOCKER-USER.
pub const DOCKER_USER_COMMENT: &str = "berth: accept traffic of berth bridges";

const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

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

fn chain(family: Family) -> ChainRef {
    Table::new(family, "filter").chain(DOCKER_USER)
}

/// The state of berth's rule in `ip filter DOCKER-USER` and
/// `ip6 filter DOCKER-USER` (one listing each).
pub fn docker_user_in(ns: Option<&Netns>) -> Result<[DockerUser; 2]> {
    Ok([state(ns, Family::Ip)?, state(ns, Family::Ip6)?])
}

fn state(ns: Option<&Netns>, family: Family) -> Result<DockerUser> {
    Ok(
        match nf_tables::list_chain(ns, &chain(family)).map_err(Error::firewall)? {
            None => DockerUser::NoChain,
            Some(rules) => state_of(&rules),
        },
    )
}

fn state_of(rules: &[Rule]) -> DockerUser {
    let handles: Vec<u64> = rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some(DOCKER_USER_COMMENT))
        .filter_map(|r| r.handle)
        .collect();
    if handles.is_empty() {
        DockerUser::Missing
    } else {
        DockerUser::Present(handles)
    }
}

/// `meta mark & FORWARD_MARK == FORWARD_MARK accept`, with berth's
/// comment.
fn accept_rule(family: Family) -> Rule {
    let mut e = vec![meta(MetaKey::Mark)];
    e.extend(bits(FORWARD_MARK, CmpOp::Eq, FORWARD_MARK));
    e.push(Expr::Verdict(Verdict::Accept));
    Rule::new(&chain(family), e).with_comment(DOCKER_USER_COMMENT)
}

/// Adds berth's rule to every existing DOCKER-USER chain that lacks it.
/// No-op (after the listing) when Docker isn't there.
pub fn ensure_docker_user_in(ns: Option<&Netns>) -> Result<()> {
    let states = docker_user_in(ns)?;
    let mut b = Batch::new();
    for (family, st) in FAMILIES.into_iter().zip(&states) {
        if *st == DockerUser::Missing {
            b.insert_rule(accept_rule(family));
        }
    }
    b.commit(ns, "insert berth's rule into DOCKER-USER")
        .map_err(Error::firewall)
}

/// Removes berth's rule from the DOCKER-USER chains, if it is there.
pub fn remove_docker_user_in(ns: Option<&Netns>) -> Result<()> {
    remove_docker_user_batch(ns)?
        .commit(ns, "delete berth's rule from DOCKER-USER")
        .map_err(Error::firewall)
}

/// What [`remove_docker_user_in`] commits (after listing the chains).
pub(crate) fn remove_docker_user_batch(ns: Option<&Netns>) -> Result<Batch> {
    let states = docker_user_in(ns)?;
    let mut b = Batch::new();
    for (family, st) in FAMILIES.into_iter().zip(&states) {
        if let DockerUser::Present(handles) = st {
            for &h in handles {
                b.delete_rule(&chain(family), h);
            }
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_berth_rules_by_comment() {
        let mut ours = accept_rule(Family::Ip);
        ours.handle = Some(7);
        let mut other = Rule::new(&chain(Family::Ip), vec![Expr::Verdict(Verdict::Return)]);
        other.handle = Some(2);
        assert_eq!(
            state_of(&[ours, other.clone()]),
            DockerUser::Present(vec![7])
        );
        assert_eq!(state_of(&[other]), DockerUser::Missing);
    }

    #[test]
    fn rule_matches_the_mark_and_accepts() {
        let r = accept_rule(Family::Ip6);
        assert_eq!(r.chain.table.family, Family::Ip6);
        assert_eq!(r.chain.name, DOCKER_USER);
        assert_eq!(r.exprs.last(), Some(&Expr::Verdict(Verdict::Accept)));
        assert!(r.exprs.contains(&berth_kernel::nf_tables::value::cmp(
            CmpOp::Eq,
            FORWARD_MARK.to_ne_bytes().to_vec()
        )));
    }
}
