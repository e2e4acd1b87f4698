//! The network's nftables rules (masquerade and forward accept), installed
//! once per network and removed with its last attachment. The common ADD
//! path only reads a marker file: no nft call per container.
//!
//! Every network gets its forward rules, masquerading or not: on a host
//! where Docker set iptables' FORWARD policy to DROP and loaded
//! br_netfilter, even traffic between two containers on one bridge passes
//! that chain. The rules mark berth's traffic and one rule in Docker's
//! DOCKER-USER chain accepts the mark (net::firewall's docker module).

use crate::state::{Lock, RulesMarker, State};
use cni::{codes, Error};
use ipnet::IpNet;

fn nft_err(e: net::Error) -> Error {
    Error::new(codes::FIREWALL, format!("nftables: {e}"))
}

/// Makes sure the network's rules exist and masquerade `subnets` (empty:
/// no masquerading) from `bridge`.
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
    // Docker may have started since the last network was set up: this is
    // where a missing DOCKER-USER exception gets (re)added.
    net::firewall::ensure_docker_user_in(None).map_err(nft_err)?;
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
            net::firewall::remove_docker_user_in(None).map_err(nft_err)?;
            net::firewall::remove_table().map_err(nft_err)?;
        } else {
            net::firewall::remove(network).map_err(nft_err)?;
        }
    }
    state.forget_network(lock, network)
}

/// CHECK: the network's rules are in the ruleset (masquerade too when
/// `masquerade`), and Docker's DOCKER-USER, if there is one, lets them
/// through. Returns what is missing.
pub fn missing(network: &str, masquerade: bool) -> Result<Option<String>, Error> {
    let st = net::firewall::network_state(network).map_err(nft_err)?;
    if !st.forward_chain || st.forward_rules == 0 {
        return Ok(Some(format!("forward rules of network {network:?} are missing from table inet berth")));
    }
    if masquerade && st.nat_rules == 0 {
        return Ok(Some(format!("masquerade rules of network {network:?} are missing from table inet berth")));
    }
    let docker = net::firewall::docker_user_in(None).map_err(nft_err)?;
    if docker.iter().any(|d| *d == net::firewall::DockerUser::Missing) {
        return Ok(Some(format!(
            "chain {} exists but lacks berth's rule {:?} (Docker started after the network was set up?)",
            net::firewall::DOCKER_USER,
            net::firewall::DOCKER_USER_COMMENT
        )));
    }
    Ok(None)
}
