//! A bridge network's nftables rules (masquerade, forward accept,
//! isolation), for every front end: installed with a CNI network's first
//! attachment or at berthd's CreateNetwork, recorded in the run dir's
//! rules marker (attachment::state), and removed with the last attachment
//! or at DeleteNetwork. The common ADD path only reads the marker: no nft
//! call per container (except with macspoofchk: one batch per ADD and per
//! DEL for the port's check).
//!
//! Every network gets its forward rules, masquerading or not: on a host
//! where Docker set iptables' FORWARD policy to DROP and loaded
//! br_netfilter, even traffic between two containers on one bridge passes
//! that chain. The rules mark berth's traffic and one rule in Docker's
//! DOCKER-USER chain accepts the mark (docker.rs).
//!
//! With `isolation` (the default) the forward chain first drops traffic
//! between the bridge and any other berth bridge, except published-port
//! (DNATed) connections.
//!
//! ## The objects in the ruleset
//!
//! berth's objects live in one private table, `inet berth`. Each bridge
//! network owns a few objects in it (named by
//! [`chain_names`]): a postrouting nat chain that masquerades the network's
//! subnets (held in one interval set per family), and a forward filter
//! chain accepting traffic from the bridge and replies to it. Each
//! operation is a single nf_tables batch over netlink (berth_kernel::nf_tables:
//! no nft process) that never needs to list the ruleset first; see
//! rules.rs for how that stays idempotent.
//!
//! Note on `forward`: an `accept` in our chain only ends evaluation of *our*
//! base chain. A drop policy in another table's forward hook still applies.
//! So the forward chain also marks the network's traffic ([`FORWARD_MARK`]),
//! and docker.rs puts one rule accepting that mark into Docker's
//! DOCKER-USER chain. Other firewalls with a drop policy (firewalld, for
//! instance) still need their own exception.
//!
//! A second table, `bridge berth`, holds the macspoofchk rules
//! (spoofchk.rs).
//!
//! Every function has an `_in` variant taking the namespace to act in
//! (`None` = the caller's), which tests use to stay off the host's ruleset.

mod docker;
mod listing;
mod names;
mod network;
mod portmap;
mod quiet;
mod rules;
mod spoofchk;
mod state;
mod table;

pub use docker::{
    docker_user_in, ensure_docker_user_in, remove_docker_user_in, DockerUser, DOCKER_USER,
    DOCKER_USER_COMMENT,
};
pub use listing::{list_table_in, TableListing};
pub use names::{chain_names, ChainNames};
pub use network::{
    ensure, install, missing, release_if_unused, restore, spoofchk_add, spoofchk_missing,
    spoofchk_remove, uninstall, NetworkFirewall,
};
pub use portmap::{
    add_elements_in, missing_from_listing as portmap_missing_from_listing,
    missing_in as portmap_missing_in, rebuild_batch, rebuild_in, remove_elements_in,
    structure_missing_in, unpublish_in, Conditions, PortMapping, Protocol, PublishedPorts,
    HAIRPIN_MARK, PM_FORWARD, PM_OUTPUT, PM_POSTROUTING, PM_PREROUTING,
};
pub use quiet::{quiet_add_in, quiet_batch, quiet_remove_in, QUIET_CHAIN};
pub use rules::{BRIDGES_SET, FORWARD_MARK, TABLE};
pub use spoofchk::{
    spoofchk_add_batch, spoofchk_add_in, spoofchk_chain_name, spoofchk_macs_in,
    spoofchk_missing_from_listing, spoofchk_remove_in, spoofchk_remove_table_if_unused_in,
    spoofchk_remove_table_in, SPOOFCHK_CHAIN, SPOOFCHK_MAP, SPOOFCHK_TABLE,
};
pub use state::NetworkState;
pub use table::{
    apply, apply_in, apply_listed_in, network_batch, network_missing_from_listing, network_present,
    network_present_in, network_state, network_state_in, release_network_in, remove, remove_in,
    remove_table, remove_table_if_empty_in, remove_table_in, remove_with_bridge_in, NetworkRules,
};

use crate::{Error, Result};

/// An interface name the kernel would take, checked before a batch names
/// it.
fn check_ifname(name: &str) -> Result<()> {
    berth_kernel::check_ifname(name).map_err(|e| Error::new(crate::Kind::Config, e.to_string()))
}
