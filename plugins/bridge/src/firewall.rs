//! The network's nftables rules (masquerade and forward accept), installed
//! once per network and removed with its last attachment. The common ADD
//! path only reads a marker file: no nft call per container.

use crate::state::{Lock, RulesMarker, State};
use cni::{codes, Error};
use ipnet::IpNet;

fn nft_err(e: net::Error) -> Error {
    Error::new(codes::FIREWALL, format!("nftables: {e}"))
}

/// Makes sure the network's rules masquerade `subnets` from `bridge`.
pub fn ensure(state: &State, lock: &Lock, network: &str, bridge: &str, subnets: &[IpNet]) -> Result<(), Error> {
    let marker = state.rules_marker(network);
    if let Some(m) = &marker {
        if m.bridge == bridge && subnets.iter().all(|s| m.subnets.contains(s)) {
            return Ok(());
        }
    }
    // Keep subnets already covered (another range of the same network).
    let mut all: Vec<IpNet> = marker.filter(|m| m.bridge == bridge).map(|m| m.subnets).unwrap_or_default();
    for s in subnets {
        if !all.contains(s) {
            all.push(*s);
        }
    }
    net::firewall::apply(&net::firewall::NetworkRules {
        network: network.to_string(),
        bridge: bridge.to_string(),
        masquerade: all.clone(),
        forward: true,
    })
    .map_err(nft_err)?;
    state.write_rules_marker(lock, network, &RulesMarker { bridge: bridge.to_string(), subnets: all })
}

/// Removes the network's rules and state once no attachment is left.
pub fn release_if_unused(state: &State, lock: &Lock, network: &str) -> Result<(), Error> {
    if state.has_records(network) {
        return Ok(());
    }
    if state.rules_marker(network).is_some() {
        // The last network with rules takes the table with it, so a host
        // without berth containers has no berth ruleset at all. (Only
        // berth-bridge puts objects in the table today; a plugin that adds
        // its own must be counted here too.)
        if state.networks_with_rules().iter().all(|n| n == network) {
            net::firewall::remove_table().map_err(nft_err)?;
        } else {
            net::firewall::remove(network).map_err(nft_err)?;
        }
    }
    state.forget_network(lock, network)
}

/// CHECK: the rules the marker promises are really in the ruleset.
pub fn present(network: &str) -> Result<bool, Error> {
    net::firewall::network_present(network).map_err(nft_err)
}
