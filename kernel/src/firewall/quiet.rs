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
//! and dropped with the last one (one nft call each, never per container;
//! nft's text syntax, as the portmap module's). The forward chain `quiet`
//! of earlier versions is removed when the chain is made or dropped.

use super::nft;
use super::spoofchk::SPOOFCHK_TABLE;
use crate::{Netns, Result};

/// The prerouting chain of `bridge berth` holding the drop rules.
pub const QUIET_CHAIN: &str = "quiet_ingress";
/// The forward chain that held them in earlier versions.
const OLD_QUIET_CHAIN: &str = "quiet";
/// Before the bridge family's default filter priority.
const PRIO: i32 = -200;

/// True for the quiet chain's name, or the one it had before.
pub(crate) fn is_quiet_chain(name: &str) -> bool {
    name == QUIET_CHAIN || name == OLD_QUIET_CHAIN
}

/// Makes the table and the chain if missing, and removes the old forward
/// chain (made first, so deleting it never fails for its absence).
fn chain() -> String {
    let t = SPOOFCHK_TABLE;
    format!(
        "add table bridge {t}\n\
         add chain bridge {t} {OLD_QUIET_CHAIN} {{ type filter hook forward priority {PRIO}; policy accept; }}\n\
         flush chain bridge {t} {OLD_QUIET_CHAIN}\n\
         delete chain bridge {t} {OLD_QUIET_CHAIN}\n\
         add chain bridge {t} {QUIET_CHAIN} {{ type filter hook prerouting priority {PRIO}; policy accept; }}\n"
    )
}

/// Makes berth's bridges quiet for ports named `port_prefixes*`
/// (idempotent: the chain is refilled).
pub fn quiet_add_in(ns: Option<&Netns>, port_prefixes: &[String]) -> Result<()> {
    let t = SPOOFCHK_TABLE;
    let mut script = format!("{}flush chain bridge {t} {QUIET_CHAIN}\n", chain());
    for p in port_prefixes {
        crate::check_ifname(p)?;
        script.push_str(&format!(
            "add rule bridge {t} {QUIET_CHAIN} iifname \"{p}*\" icmpv6 type {{ nd-router-solicit, mld-listener-report, mld2-listener-report }} drop\n"
        ));
    }
    nft::run(ns, &["-f", "-"], Some(&script), "quiet berth's bridges").map(|_| ())
}

/// Drops the chain (no berth network is left; gone already is fine).
pub fn quiet_remove_in(ns: Option<&Netns>) -> Result<()> {
    let script = format!(
        "{}delete chain bridge {} {QUIET_CHAIN}\n",
        chain(),
        SPOOFCHK_TABLE
    );
    nft::run(ns, &["-f", "-"], Some(&script), "drop the quiet chain").map(|_| ())
}
