//! The network's nftables rules (masquerade and forward accept), installed
//! once per network and removed with its last attachment. The common ADD
//! path only reads a marker file: no nft call per container (except with
//! macspoofchk: one batch per ADD and per DEL for the port's check).
//!
//! Every network gets its forward rules, masquerading or not: on a host
//! where Docker set iptables' FORWARD policy to DROP and loaded
//! br_netfilter, even traffic between two containers on one bridge passes
//! that chain. The rules mark berth's traffic and one rule in Docker's
//! DOCKER-USER chain accepts the mark (berth_kernel::firewall's docker module).
//!
//! With `isolation` (the default) the forward chain first drops traffic
//! between the bridge and any other berth bridge, except published-port
//! (DNATed) connections.

use super::state::{boot_id, Lock, RulesMarker, State};
use crate::{Error, Result};
use ipnet::IpNet;

/// Makes sure the network's rules exist and masquerade `subnets` (empty:
/// no masquerading) from `bridge`.
pub fn ensure(
    state: &State,
    lock: &Lock,
    network: &str,
    bridge: &str,
    subnets: &[IpNet],
    isolation: bool,
    uplinks: &[String],
) -> Result<()> {
    let marker = state.rules_marker(network);
    if let Some(m) = &marker {
        if m.bridge == bridge
            && m.isolation == isolation
            && m.uplinks == uplinks
            && subnets.iter().all(|s| m.subnets.contains(s))
        {
            return Ok(());
        }
    }
    // Keep subnets already covered (another range of the same network).
    let mut all: Vec<IpNet> = marker
        .filter(|m| m.bridge == bridge)
        .map(|m| m.subnets)
        .unwrap_or_default();
    for s in subnets {
        if !all.contains(s) {
            all.push(*s);
        }
    }
    berth_kernel::firewall::apply(&berth_kernel::firewall::NetworkRules {
        network: network.to_string(),
        bridge: bridge.to_string(),
        masquerade: all.clone(),
        forward: true,
        isolation,
        internal: false,
        uplinks: uplinks.to_vec(),
        quiet_ports: crate::names::port_prefixes(),
    })
    .map_err(Error::firewall)?;
    // Docker may have started since the last network was set up: this is
    // where a missing DOCKER-USER exception gets (re)added.
    berth_kernel::firewall::ensure_docker_user_in(None).map_err(Error::firewall)?;
    let marker = RulesMarker {
        bridge: bridge.to_string(),
        subnets: all,
        boot_id: boot_id(),
        isolation,
        uplinks: uplinks.to_vec(),
    };
    state.write_rules_marker(lock, network, &marker)
}

/// Removes the network's rules and state once no attachment is left.
pub fn release_if_unused(state: &State, lock: &Lock, network: &str) -> Result<()> {
    if state.has_records(network) {
        return Ok(());
    }
    if let Some(marker) = state.rules_marker(network) {
        // Only this network's objects go — unless nothing else is left in
        // the table (networks of any berth process on this host, whatever
        // its run dir, count), so a host without berth containers has no
        // berth ruleset at all. The bridge leaves the set of berth bridges
        // unless another network still uses it.
        let bridge = (!state.bridge_used_by_others(network, &marker.bridge))
            .then_some(marker.bridge.as_str());
        let table_dropped = berth_kernel::firewall::release_network_in(None, network, bridge)
            .map_err(Error::firewall)?;
        if table_dropped {
            berth_kernel::firewall::spoofchk_remove_table_if_unused_in(None)
                .map_err(Error::firewall)?;
        }
    }
    state.forget_network(lock, network)
}

/// CHECK: the network's rules are in the ruleset (masquerade too when
/// `masquerade`), and Docker's DOCKER-USER, if there is one, lets them
/// through. Returns what is missing.
pub fn missing(network: &str, masquerade: bool) -> Result<Option<String>> {
    let st = berth_kernel::firewall::network_state(network).map_err(Error::firewall)?;
    if !st.forward_chain || st.forward_rules == 0 {
        return Ok(Some(format!(
            "forward rules of network {network:?} are missing from table inet berth"
        )));
    }
    if masquerade && st.nat_rules == 0 {
        return Ok(Some(format!(
            "masquerade rules of network {network:?} are missing from table inet berth"
        )));
    }
    let docker = berth_kernel::firewall::docker_user_in(None).map_err(Error::firewall)?;
    if docker.contains(&berth_kernel::firewall::DockerUser::Missing) {
        return Ok(Some(format!(
            "chain {} exists but lacks berth's rule {:?} (Docker started after the network was set up?)",
            berth_kernel::firewall::DOCKER_USER,
            berth_kernel::firewall::DOCKER_USER_COMMENT
        )));
    }
    Ok(None)
}

/// macspoofchk: only `mac` may send into the bridge through `host_veth`.
/// Called under the state lock, after [`ensure`]: the network's marker
/// then exists, so a concurrent last DEL of another network cannot drop
/// the `bridge berth` table under us.
pub fn spoofchk_add(host_veth: &str, mac: &[u8; 6], container_id: &str) -> Result<()> {
    berth_kernel::firewall::spoofchk_add_in(None, host_veth, mac, container_id)
        .map_err(Error::firewall)
}

/// Removes `host_veth`'s spoof check (no MAC needed; nothing there is
/// fine). Called under the state lock for the same reason as
/// [`spoofchk_add`]: run after the table was dropped, the batch would
/// re-create it empty.
pub fn spoofchk_remove(host_veth: &str) -> Result<()> {
    berth_kernel::firewall::spoofchk_remove_in(None, host_veth).map_err(Error::firewall)
}

/// CHECK with macspoofchk: `host_veth`'s chain exists and lets `mac`
/// through. Returns what is missing.
pub fn spoofchk_missing(host_veth: &str, mac: &str) -> Result<Option<String>> {
    let chain = berth_kernel::firewall::spoofchk_chain_name(host_veth);
    let table = berth_kernel::firewall::SPOOFCHK_TABLE;
    match berth_kernel::firewall::spoofchk_macs_in(None, host_veth).map_err(Error::firewall)? {
        None => Ok(Some(format!("MAC spoof check chain {chain} is missing from table bridge {table}"))),
        Some(macs) if !macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) => Ok(Some(format!(
            "MAC spoof check chain {chain} in table bridge {table} has no rule for MAC {mac} (has {macs:?})"
        ))),
        Some(_) => Ok(None),
    }
}
