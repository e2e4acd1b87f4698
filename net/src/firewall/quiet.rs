//! Quiet bridges: a container's router solicitations and MLD reports are
//! not forwarded to the other ports of its berth bridge (the bridge itself,
//! i.e. the host, still receives them).
//!
//! Why: every new container sends a few of them as its interface comes up
//! (MLD reports for its solicited-node groups, router solicitations). A
//! bridge without a multicast querier floods them to every port, and with
//! br_netfilter loaded (Docker loads it) each copy also crosses the
//! forward hooks; so each ADD costs work proportional to the containers
//! already there, N² over a network's life. Measured here with 1000
//! containers on one bridge (`berth-bench --only compare --n 1000
//! --no-ref`): the last 100 ADDs cost 3.1x the first 100 before, 1.8x
//! with this (median ADD 7.9 ms before, 4.1 ms with). Only a router or
//! multicast router *inside a container* would miss them; the host's (radvd or a
//! multicast daemon on the bridge) still gets them, and neighbour discovery
//! between containers is untouched.
//!
//! ```text
//! table bridge berth {
//!   chain quiet { type filter hook forward priority -200;
//!     iifname "bv*" icmpv6 type { nd-router-solicit, mld-listener-report,
//!       mld2-listener-report } drop          (berth-bridge's host veths)
//!     iifname "bh*" ...                      (berthd's) }
//! }
//! ```
//!
//! Matched by the ports' names, which berth chooses: this kernel has no
//! `meta ibrname` in the bridge family. Made with the first berth network
//! and dropped with the last one (one nft call each, never per container;
//! nft's text syntax, as the portmap module's).

use super::nft;
use super::spoofchk::SPOOFCHK_TABLE;
use crate::{Netns, Result};

/// The forward chain of `bridge berth` holding the drop rules.
pub const QUIET_CHAIN: &str = "quiet";
/// Name prefixes of the host ends of berth's veths (berth-bridge's `bv`,
/// berthd's `bh`).
const PORT_PREFIXES: [&str; 2] = ["bv", "bh"];
/// Before the bridge family's default filter priority.
const PRIO: i32 = -200;

fn chain() -> String {
    let t = SPOOFCHK_TABLE;
    format!(
        "add table bridge {t}\n\
         add chain bridge {t} {QUIET_CHAIN} {{ type filter hook forward priority {PRIO}; policy accept; }}\n"
    )
}

/// Makes berth's bridges quiet (idempotent: the chain is refilled).
pub fn quiet_add_in(ns: Option<&Netns>) -> Result<()> {
    let t = SPOOFCHK_TABLE;
    let mut script = format!("{}flush chain bridge {t} {QUIET_CHAIN}\n", chain());
    for p in PORT_PREFIXES {
        script.push_str(&format!(
            "add rule bridge {t} {QUIET_CHAIN} iifname \"{p}*\" icmpv6 type {{ nd-router-solicit, mld-listener-report, mld2-listener-report }} drop\n"
        ));
    }
    nft::run(ns, &["-f", "-"], Some(&script), "quiet berth's bridges").map(|_| ())
}

/// Drops the chain (no berth network is left; gone already is fine).
pub fn quiet_remove_in(ns: Option<&Netns>) -> Result<()> {
    let script = format!("{}delete chain bridge {} {QUIET_CHAIN}\n", chain(), SPOOFCHK_TABLE);
    nft::run(ns, &["-f", "-"], Some(&script), "drop the quiet chain").map(|_| ())
}
