//! A bridge network's firewall as the front ends install it, and the
//! record of it.

use super::NetworkRules;
use crate::attachment::state::{boot_id, Lock, RulesMarker, State};
use crate::Result;
use ipnet::IpNet;

/// A bridge network's firewall: what berth installs in `inet berth` for
/// it, and records (in the run dir's rules marker) so that it can be
/// removed, checked and put back from the record alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkFirewall {
    /// The name its objects are derived from (the CNI network's name,
    /// berthd's `docker-<id>`).
    pub network: String,
    pub bridge: String,
    /// Subnets masqueraded as they leave the network (empty: none).
    pub masquerade: Vec<IpNet>,
    /// Drop traffic to and from other berth bridges.
    pub isolation: bool,
    /// No forwarding off the bridge at all (Docker's `--internal`).
    pub internal: bool,
    /// Links whose connections into the bridge are accepted (an
    /// overlay's VXLAN device).
    pub uplinks: Vec<String>,
}

impl NetworkFirewall {
    /// The rules the kernel layer installs for it.
    pub fn rules(&self) -> NetworkRules {
        NetworkRules {
            network: self.network.clone(),
            bridge: self.bridge.clone(),
            masquerade: self.masquerade.clone(),
            forward: true,
            isolation: self.isolation,
            internal: self.internal,
            uplinks: self.uplinks.clone(),
            quiet_ports: crate::names::port_prefixes(),
        }
    }

    /// The firewall `network`'s marker records.
    pub fn of_marker(network: &str, m: &RulesMarker) -> NetworkFirewall {
        NetworkFirewall {
            network: network.to_string(),
            bridge: m.bridge.clone(),
            masquerade: m.subnets.clone(),
            isolation: m.isolation,
            internal: m.internal,
            uplinks: m.uplinks.clone(),
        }
    }

    fn marker(&self, pending: bool) -> RulesMarker {
        RulesMarker {
            bridge: self.bridge.clone(),
            subnets: self.masquerade.clone(),
            boot_id: boot_id(),
            isolation: self.isolation,
            internal: self.internal,
            uplinks: self.uplinks.clone(),
            pending,
        }
    }

    /// True if what `m` records covers this firewall (its subnets may be
    /// more: another range of the same network).
    fn covered_by(&self, m: &RulesMarker) -> bool {
        !m.pending
            && m.bridge == self.bridge
            && m.isolation == self.isolation
            && m.internal == self.internal
            && m.uplinks == self.uplinks
            && self.masquerade.iter().all(|s| m.subnets.contains(s))
    }
}

/// An attachment's ADD: makes sure `fw`'s rules exist, keeping the
/// subnets the network's rules already masquerade (another range of the
/// same network). The common case reads the marker and nothing else.
pub fn ensure(state: &State, lock: &Lock, fw: &NetworkFirewall) -> Result<()> {
    let marker = state.rules_marker(&fw.network);
    if marker.as_ref().is_some_and(|m| fw.covered_by(m)) {
        return Ok(());
    }
    let mut all = fw.clone();
    all.masquerade = marker
        .filter(|m| m.bridge == fw.bridge)
        .map(|m| m.subnets)
        .unwrap_or_default();
    for s in &fw.masquerade {
        if !all.masquerade.contains(s) {
            all.masquerade.push(*s);
        }
    }
    install(state, lock, &all)
}

/// Installs exactly `fw` (berthd's CreateNetwork; [`ensure`] on the CNI
/// path) and records it. The marker is written pending first and
/// cleared once the rules are in: a process killed in between leaves a
/// marker that the network's removal acts on.
pub fn install(state: &State, lock: &Lock, fw: &NetworkFirewall) -> Result<()> {
    state.write_rules_marker(lock, &fw.network, &fw.marker(true))?;
    super::apply_listed_in(None, &fw.rules())?;
    // Docker may have started since the last network was set up: this is
    // where a missing DOCKER-USER exception gets (re)added.
    super::ensure_docker_user_in(None)?;
    state.write_rules_marker(lock, &fw.network, &fw.marker(false))
}

/// The reconciler's repair: puts `fw`'s rules back as its marker already
/// records them. Nothing is written (a read-only /run does not stop the
/// repair); killed midway, the marker still describes what the next pass
/// puts back.
pub fn restore(fw: &NetworkFirewall) -> Result<()> {
    super::apply(&fw.rules())?;
    super::ensure_docker_user_in(None)
}

/// Removes the network's rules and state once no attachment is left.
pub fn release_if_unused(state: &State, lock: &Lock, network: &str) -> Result<()> {
    if state.has_records(network) {
        return Ok(());
    }
    release(state, lock, network)
}

/// berthd's DeleteNetwork: removes `fw`'s rules and record, recorded or
/// not (networks berthd made before it recorded their rules have none).
pub fn uninstall(state: &State, lock: &Lock, fw: &NetworkFirewall) -> Result<()> {
    if state.rules_marker(&fw.network).is_none() {
        state.write_rules_marker(lock, &fw.network, &fw.marker(true))?;
    }
    release(state, lock, &fw.network)
}

/// Removes the network's rules (whatever its marker says may be
/// installed) and its state.
fn release(state: &State, lock: &Lock, network: &str) -> Result<()> {
    if let Some(marker) = state.rules_marker(network) {
        // Only this network's objects go — unless nothing else is left in
        // the table (networks of any berth process on this host, whatever
        // its run dir, count), so a host without berth containers has no
        // berth ruleset at all. The bridge leaves the set of berth bridges
        // unless another network still uses it.
        let bridge = (!state.bridge_used_by_others(network, &marker.bridge))
            .then_some(marker.bridge.as_str());
        // The last network also takes `bridge berth` if it is unused.
        super::release_network_in(None, network, bridge)?;
    }
    state.forget_network(lock, network)
}

/// CHECK: the network's rules are in the ruleset (masquerade too when
/// `masquerade`), and Docker's DOCKER-USER, if there is one, lets them
/// through. Returns what is missing.
pub fn missing(network: &str, masquerade: bool) -> Result<Option<String>> {
    let st = super::network_state(network)?;
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
    let docker = super::docker_user_in(None)?;
    if docker.contains(&super::DockerUser::Missing) {
        return Ok(Some(format!(
            "chain {} exists but lacks berth's rule {:?} (Docker started after the network was set up?)",
            super::DOCKER_USER,
            super::DOCKER_USER_COMMENT
        )));
    }
    Ok(None)
}

/// macspoofchk: only `mac` may send into the bridge through `host_veth`.
/// Called under the state lock, after [`ensure`]: the network's marker
/// then exists, so a concurrent last DEL of another network cannot drop
/// the `bridge berth` table under us.
pub fn spoofchk_add(host_veth: &str, mac: &[u8; 6], container_id: &str) -> Result<()> {
    super::spoofchk_add_in(None, host_veth, mac, container_id)
}

/// Removes `host_veth`'s spoof check (no MAC needed; nothing there is
/// fine). Called under the state lock for the same reason as
/// [`spoofchk_add`]: run after the table was dropped, the batch would
/// re-create it empty.
pub fn spoofchk_remove(host_veth: &str) -> Result<()> {
    super::spoofchk_remove_in(None, host_veth)
}

/// CHECK with macspoofchk: `host_veth`'s chain exists and lets `mac`
/// through. Returns what is missing.
pub fn spoofchk_missing(host_veth: &str, mac: &str) -> Result<Option<String>> {
    let chain = super::spoofchk_chain_name(host_veth);
    let table = super::SPOOFCHK_TABLE;
    match super::spoofchk_macs_in(None, host_veth)? {
        None => Ok(Some(format!("MAC spoof check chain {chain} is missing from table bridge {table}"))),
        Some(macs) if !macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) => Ok(Some(format!(
            "MAC spoof check chain {chain} in table bridge {table} has no rule for MAC {mac} (has {macs:?})"
        ))),
        Some(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> NetworkFirewall {
        NetworkFirewall {
            network: "n1".into(),
            bridge: "b0".into(),
            masquerade: vec!["10.9.0.0/24".parse().unwrap()],
            isolation: true,
            internal: false,
            uplinks: vec!["berth.7".into()],
        }
    }

    #[test]
    fn the_marker_records_the_firewall() {
        let fw = fw();
        assert_eq!(NetworkFirewall::of_marker("n1", &fw.marker(false)), fw);
        let internal = NetworkFirewall {
            internal: true,
            ..fw.clone()
        };
        assert!(NetworkFirewall::of_marker("n1", &internal.marker(false)).internal);
    }

    #[test]
    fn only_an_applied_marker_vouches_for_the_rules() {
        let fw = fw();
        assert!(fw.covered_by(&fw.marker(false)));
        assert!(!fw.covered_by(&fw.marker(true)), "pending");
        // More subnets recorded (another range) still cover it.
        let mut wider = fw.marker(false);
        wider.subnets.push("10.10.0.0/24".parse().unwrap());
        assert!(fw.covered_by(&wider));
        for other in [
            NetworkFirewall {
                bridge: "b1".into(),
                ..fw.clone()
            },
            NetworkFirewall {
                isolation: false,
                ..fw.clone()
            },
            NetworkFirewall {
                internal: true,
                ..fw.clone()
            },
            NetworkFirewall {
                uplinks: Vec::new(),
                ..fw.clone()
            },
            NetworkFirewall {
                masquerade: vec!["10.11.0.0/24".parse().unwrap()],
                ..fw.clone()
            },
        ] {
            assert!(!other.covered_by(&fw.marker(false)), "{other:?}");
        }
    }

    #[test]
    fn markers_of_earlier_versions_read_as_applied() {
        let m: RulesMarker = serde_json::from_str(
            r#"{"bridge":"b0","subnets":["10.9.0.0/24"],"boot_id":"x","isolation":true,"uplinks":[]}"#,
        )
        .unwrap();
        assert!(!m.pending && !m.internal);
        // And what is written has no key the earlier versions lack unless set.
        let text = serde_json::to_string(&fw().marker(false)).unwrap();
        assert!(
            !text.contains("pending") && !text.contains("internal"),
            "{text}"
        );
        assert!(serde_json::to_string(&fw().marker(true))
            .unwrap()
            .contains(r#""pending":true"#));
    }
}
