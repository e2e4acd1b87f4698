//! A bridge network's objects in `inet berth`: installed, removed and
//! read back as one batch or listing each.

use berth_kernel::nf_tables::Batch;
use ipnet::IpNet;

use super::docker::remove_docker_user_batch;
use super::listing::list_table_in;
use super::listing::TableListing;
use super::names::{chain_names, ChainNames};
use super::rules::{self, Known, BRIDGES_SET, TABLE};
use super::spoofchk;
use super::spoofchk::SPOOFCHK_TABLE;
use super::state::{self, NetworkState};
use super::{check_ifname, quiet};

use crate::{Error, Result};
use berth_kernel::Netns;

/// The firewall rules of one bridge network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkRules {
    /// The CNI network name (any characters).
    pub network: String,
    /// The bridge's interface name.
    pub bridge: String,
    /// Subnets whose traffic leaving the network is masqueraded; empty
    /// means no masquerading.
    pub masquerade: Vec<IpNet>,
    /// Accept forwarding from the bridge and established/related traffic
    /// back to it.
    pub forward: bool,
    /// Drop traffic between this bridge and any other berth bridge
    /// (published ports excepted: DNATed connections pass). With
    /// `forward`, the bridge is listed in the table's `berth-bridges` set
    /// either way, so isolated networks also refuse non-isolated ones.
    pub isolation: bool,
    /// No forwarding between the bridge and any other link at all (Docker's
    /// `--internal`); implies no masquerading is useful.
    pub internal: bool,
    /// Links whose new connections into the bridge are accepted and marked
    /// like the bridge's own traffic (an overlay's VXLAN device: other
    /// nodes' containers connecting to this node's), so a drop policy that
    /// lets berth's mark through (Docker's) does not drop them.
    pub uplinks: Vec<String>,
    /// Name prefixes of the bridge ports whose router solicitations and
    /// MLD reports are dropped on entry (the `bridge berth` quiet chain,
    /// shared by all networks: every caller passes every prefix its
    /// front ends name ports with). Empty: the chain is left as it is.
    pub quiet_ports: Vec<String>,
}

fn check_network(network: &str) -> Result<()> {
    if network.is_empty() {
        return Err(Error::invalid("network name", network, "empty"));
    }
    Ok(())
}

/// Makes the kernel's rules for `rules.network` exactly `rules`
/// (creating the table, chains and sets as needed). Idempotent.
pub fn apply(rules: &NetworkRules) -> Result<()> {
    apply_in(None, rules)
}

/// [`apply`] inside `ns` (None: the caller's namespace).
pub fn apply_in(ns: Option<&Netns>, rules: &NetworkRules) -> Result<()> {
    let op = format!("apply firewall rules of network {}", rules.network);
    network_batch(rules)?
        .commit(ns, &op)
        .map_err(Error::firewall)
}

/// [`apply_in`], after listing `inet berth` and `bridge berth`: the batch
/// leaves out removing what is not there and refilling a quiet chain that
/// is full, so a network's first ADD removes nothing and its process has
/// no grace period to wait for when it closes its socket (see
/// berth_kernel::nf_tables). The caller holds berth's host-wide lock, so
/// the listings stay true until the commit.
pub fn apply_listed_in(ns: Option<&Netns>, rules: &NetworkRules) -> Result<()> {
    let inet = list_table_in(ns, "inet", TABLE)?;
    let bridge = list_table_in(ns, "bridge", SPOOFCHK_TABLE)?;
    let op = format!("apply firewall rules of network {}", rules.network);
    network_batch_given(rules, &Known::Listing(inet.as_ref()), Some(bridge.as_ref()))?
        .commit(ns, &op)
        .map_err(Error::firewall)
}

/// What [`apply`] commits: the network's objects, and the quiet chain
/// for its bridge's ports, in one transaction.
pub fn network_batch(rules: &NetworkRules) -> Result<Batch> {
    network_batch_given(rules, &Known::Nothing, None)
}

fn network_batch_given(
    rules: &NetworkRules,
    inet: &Known,
    bridge: Option<Option<&TableListing>>,
) -> Result<Batch> {
    check_network(&rules.network)?;
    if rules.forward {
        check_ifname(&rules.bridge)?;
    }
    for u in &rules.uplinks {
        check_ifname(u)?;
    }
    let mut b = Batch::new();
    if rules.forward && !rules.quiet_ports.is_empty() {
        b.extend(quiet::quiet_batch_given(&rules.quiet_ports, bridge)?);
    }
    b.extend(rules::apply_batch(rules, inet));
    Ok(b)
}

/// Removes everything `network` has in the table. Succeeds when there is
/// nothing to remove.
pub fn remove(network: &str) -> Result<()> {
    remove_in(None, network)
}

/// [`remove`] inside `ns` (None: the caller's namespace).
pub fn remove_in(ns: Option<&Netns>, network: &str) -> Result<()> {
    remove_with_bridge_in(ns, network, None)
}

/// [`remove_in`], also taking `bridge` out of the `berth-bridges` set
/// (pass None while another network still uses that bridge).
pub fn remove_with_bridge_in(
    ns: Option<&Netns>,
    network: &str,
    bridge: Option<&str>,
) -> Result<()> {
    check_network(network)?;
    if let Some(b) = bridge {
        check_ifname(b)?;
    }
    let op = format!("remove firewall rules of network {network}");
    rules::remove_batch(network, bridge)
        .commit(ns, &op)
        .map_err(Error::firewall)
}

/// Removes the whole `inet berth` table with everything in it, for the
/// caller that knows it held the last objects in it. Idempotent.
pub fn remove_table() -> Result<()> {
    remove_table_in(None)
}

/// [`remove_table`] inside `ns` (None: the caller's namespace).
pub fn remove_table_in(ns: Option<&Netns>) -> Result<()> {
    rules::remove_table_batch()
        .commit(ns, "remove table inet berth")
        .map_err(Error::firewall)
}

/// Removes `network`'s objects (and `bridge` from `berth-bridges`, see
/// [`remove_with_bridge_in`]), or the whole `inet berth` table together
/// with berth's DOCKER-USER rule when nothing but this network's objects is
/// left in it (one listing, then one batch). Returns true if the table was
/// dropped. Other berth processes must not change the table meanwhile: the
/// caller holds berth's host-wide lock.
pub fn release_network_in(ns: Option<&Netns>, network: &str, bridge: Option<&str>) -> Result<bool> {
    check_network(network)?;
    let listing =
        berth_kernel::nf_tables::list_table(ns, &rules::table()).map_err(Error::firewall)?;
    let others = match &listing {
        Some(l) => state::foreign_objects(l, &chain_names(network)),
        None => 0,
    };
    if others > 0 {
        remove_with_bridge_in(ns, network, bridge)?;
        return Ok(false);
    }
    release_all_in(ns, listing.is_some())?;
    Ok(true)
}

/// No berth network is left: berth's DOCKER-USER rule, `inet berth` (if
/// `inet`: it is there), the quiet chain and an unused `bridge berth` go,
/// in one transaction: all or nothing, in one round trip.
fn release_all_in(ns: Option<&Netns>, inet: bool) -> Result<()> {
    let mut b = remove_docker_user_batch(ns)?;
    if inet {
        b.extend(rules::remove_table_batch());
    }
    b.extend(spoofchk::release_batch(ns)?);
    b.commit(ns, "remove berth's last network's rules")
        .map_err(Error::firewall)
}

/// Drops the `inet berth` table, and berth's DOCKER-USER rule with it, if
/// no chain, set or map is left in it (after the last published port went:
/// one listing, at most one batch). Returns true if it was dropped; then
/// no berth network is left either (each has chains there), so the quiet
/// chain and an unused `bridge berth` go too: the last network's removal
/// left them while the ports were still there. The caller holds berth's
/// host-wide lock, as for [`release_network_in`].
pub fn remove_table_if_empty_in(ns: Option<&Netns>) -> Result<bool> {
    let Some(listing) =
        berth_kernel::nf_tables::list_table(ns, &rules::table()).map_err(Error::firewall)?
    else {
        return Ok(false);
    };
    let nothing = ChainNames {
        nat: String::new(),
        forward: String::new(),
        set_v4: String::new(),
        set_v6: String::new(),
    };
    if state::foreign_objects(&listing, &nothing) > 0 {
        return Ok(false);
    }
    release_all_in(ns, true)?;
    Ok(true)
}

/// For the reconciler: the first thing `listing` (of `inet berth`) lacks
/// of `rules`, as text, or None.
pub fn network_missing_from_listing(
    listing: &TableListing,
    rules: &NetworkRules,
) -> Option<String> {
    let n = chain_names(&rules.network);
    let filled = |chain: &str| listing.chain_rules(chain).is_some_and(|r| r > 0);
    if rules.forward {
        if !filled(&n.forward) {
            return Some(format!("forward chain {}", n.forward));
        }
        let bridge = berth_kernel::nf_tables::Element::key(berth_kernel::nf_tables::value::ifname(
            &rules.bridge,
        ));
        if !listing.has_element(BRIDGES_SET, &bridge) {
            return Some(format!("{} in set {BRIDGES_SET}", rules.bridge));
        }
    }
    if !rules.masquerade.is_empty() {
        if !filled(&n.nat) {
            return Some(format!("masquerade chain {}", n.nat));
        }
        let held = |set: &str| {
            listing
                .listing()
                .set(set)
                .map(|(_, e)| berth_kernel::nf_tables::value::interval_prefixes(e))
                .unwrap_or_default()
        };
        for net in &rules.masquerade {
            let set = if net.addr().is_ipv4() {
                &n.set_v4
            } else {
                &n.set_v6
            };
            // Covered by a prefix of the set (overlapping subnets are
            // written merged).
            if !held(set).iter().any(|p| p.contains(&net.trunc())) {
                return Some(format!("{net} in set {set}"));
            }
        }
    }
    None
}

/// For CHECK: true if the network's masquerade chain exists and holds
/// rules. A missing table means false.
pub fn network_present(network: &str) -> Result<bool> {
    network_present_in(None, network)
}

/// [`network_present`] inside `ns` (None: the caller's namespace).
pub fn network_present_in(ns: Option<&Netns>, network: &str) -> Result<bool> {
    let st = network_state_in(ns, network)?;
    Ok(st.nat_chain && st.nat_rules > 0)
}

/// Everything the kernel holds for `network` (all empty if the table does
/// not exist).
pub fn network_state(network: &str) -> Result<NetworkState> {
    network_state_in(None, network)
}

/// [`network_state`] inside `ns` (None: the caller's namespace).
pub fn network_state_in(ns: Option<&Netns>, network: &str) -> Result<NetworkState> {
    check_network(network)?;
    let Some(listing) =
        berth_kernel::nf_tables::list_table(ns, &rules::table()).map_err(Error::firewall)?
    else {
        return Ok(NetworkState::default());
    };
    Ok(state::parse(&listing, &chain_names(network)))
}
