//! Joining and leaving a node as a whole, for berthd's overlay networks
//! (the CNI plugin joins on its first ADD).

use crate::kernel;
use crate::{Error, Kind};
use berth_kernel::Handle;

use super::config::OverlayConf;
use super::datapath::{
    bridge_name, claim_network, ensure_datapath_on, network_note_path, underlay, vxlan_name,
};
use super::lease::{cache_path, cached_subnet, release_lease, resolve, resolve_held};
use super::record::{self, NodeRecord};

/// A berth-overlay config object (the plugin's keys, with `name`) outside
/// any CNI call: the agent's file, berthd's overlay networks.
pub fn parse_conf(plugin: &serde_json::Value) -> Result<OverlayConf, Error> {
    use cni::GoObject;
    let name = plugin
        .go_get("name")
        .and_then(serde_json::Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::config("name", "missing"))?;
    OverlayConf::parse(name, plugin)
}

/// Makes this node part of the overlay: refuses a network that conflicts
/// with another on this host (before leasing anything), takes or finds the
/// node's subnet lease, and makes the VXLAN device and every peer's
/// entries. The conf with the node's subnet and peers, and the overlay
/// MTU.
pub fn join_node(conf: &OverlayConf) -> Result<(OverlayConf, u32), Error> {
    let mut h = Handle::new().map_err(kernel)?;
    claim_network(&mut h, conf)?;
    let held = agent_held(conf, &NodeRecord::read(&conf.name), record::now());
    if let Some(held) = held.as_ref() {
        // The agent keeps the datapath; its VXLAN device's MTU is the
        // overlay's. Nothing to look up in the underlay or to program.
        let vx = h.link_by_name(&vxlan_name(conf.vni)).map_err(kernel)?;
        if let Some(vx) = vx.filter(|l| l.kind.as_deref() == Some("vxlan") && l.admin_up) {
            return Ok((held.clone(), conf.mtu.unwrap_or(vx.mtu)));
        }
    }
    // Looked up once for the lease and the datapath (route and address dumps).
    let (up, local) = underlay(&mut h, conf)?;
    let conf = match held {
        Some(held) => held,
        None => resolve_held(conf, Some(local))?.0,
    };
    let mtu = {
        // The VXLAN device and peer entries are shared by every ADD on
        // the node (and berthd's overlay networks).
        let _lock = store::host::lock().map_err(|e| Error::new(Kind::Io, e.to_string()))?;
        ensure_datapath_on(&mut h, &conf, &up, local)?
    };
    Ok((conf, mtu))
}

/// The node's subnet as its agent holds it, when the agent's record says
/// the lease is certainly alive: renewed less than half its TTL ago (the
/// agent renews every third), for this node, VNI and store (the same
/// endpoints, credentials and prefix: a config with others must hear
/// etcd's own answer), and the subnets the config asks for. An ADD then
/// needs no round trip to etcd; the agent keeps the peers, so none are
/// returned to program. None: ask the store (no agent, one stopped
/// cleanly, one that has not renewed, etcd unreachable for a while).
fn agent_held(conf: &OverlayConf, rec: &Option<NodeRecord>, now: u64) -> Option<OverlayConf> {
    let e = conf.etcd.as_ref()?;
    let rec = rec.as_ref()?;
    let ttl = rec.lease_ttl?.min(u64::try_from(e.lease_ttl).ok()?);
    let fresh = rec
        .lease_age(now)
        .is_some_and(|age| age.saturating_mul(2) < ttl);
    let wanted = e.subnet.as_deref().map(str::parse::<ipnet::Ipv4Net>);
    let same = rec.node == conf.node
        && rec.vni == conf.vni
        && rec.store == "etcd"
        && rec.store_key.as_deref() == Some(record::store_key(e).as_str())
        && wanted.is_none_or(|w| w.ok() == Some(rec.subnet))
        && e.subnet6.is_none_or(|w| rec.subnet6 == Some(w))
        && conf.network.contains(&rec.subnet)
        && rec.subnet.prefix_len() == conf.subnet_len;
    (fresh && same).then(|| OverlayConf {
        subnet: rec.subnet,
        peers: Vec::new(),
        ..conf.clone()
    })
}

/// For DEL and GC, which need the node's subnet but not its peers: the
/// agent's word when it holds a fresh lease (no round trip to etcd), else
/// the store's view, else the subnet cached on this node.
pub fn held_or_resolved(conf: &OverlayConf) -> Result<OverlayConf, Error> {
    match agent_held(conf, &NodeRecord::read(&conf.name), record::now()) {
        Some(held) => Ok(held),
        None => super::lease::resolve_or_cached(conf),
    }
}

/// Takes this node out of the overlay (berthd's DeleteNetwork): gives the
/// lease back, deletes the VXLAN device (its FDB, neighbour entries and
/// routes go with it) and this host's notes of the network. Each step
/// already done is fine. A network that never joined (no note of it on
/// this host, e.g. refused for another's VNI) touches nothing.
pub fn leave_node(conf: &OverlayConf) -> Result<(), Error> {
    if !network_note_path(conf).exists() {
        return Ok(());
    }
    if conf.etcd.is_some() {
        let held = resolve(conf, false).or_else(|_| {
            cached_subnet(conf)
                .map(|subnet| OverlayConf {
                    subnet,
                    ..conf.clone()
                })
                .ok_or_else(|| Error::new(Kind::TryAgain, "no lease"))
        });
        if let Ok(held) = held {
            // Unreachable store: the lease expires by itself.
            let _ = release_lease(&held);
        }
    }
    Handle::new()
        .map_err(kernel)?
        .delete_link_by_name(&vxlan_name(conf.vni))
        .map_err(kernel)?;
    let _ = std::fs::remove_file(network_note_path(conf));
    let _ = std::fs::remove_file(cache_path(conf));
    Ok(())
}

/// Takes this node off the overlay network for good (`berth uninstall`):
/// its lease given back and the VXLAN device gone ([`leave_node`]), the
/// network's rules out of the ruleset, and the node's bridge deleted.
/// Refused while a container is still attached (its record names it):
/// pods are the operator's to drain first. Each step already done is fine.
pub fn remove_node(conf: &OverlayConf) -> Result<(), Error> {
    let state = crate::attachment::state::State::from_env();
    let attached = state.records(&conf.name);
    if let Some((veth, _)) = attached.first() {
        return Err(Error::new(
            Kind::Exists,
            format!(
                "network {:?} still has {} container(s) on this node (host veth {veth}): \
                 drain the node's pods first",
                conf.name,
                attached.len()
            ),
        ));
    }
    // Even without a note of the network (a plugin that never joined on
    // this node), a lease this node holds in the store is given back.
    if conf.etcd.is_some() && !network_note_path(conf).exists() {
        if let Ok(held) = resolve(conf, false) {
            let _ = release_lease(&held);
        }
    }
    leave_node(conf)?;
    {
        let lock = state.lock()?;
        if let Some(marker) = state.rules_marker(&conf.name) {
            crate::firewall::uninstall(
                &state,
                &lock,
                &crate::firewall::NetworkFirewall::of_marker(&conf.name, &marker),
            )?;
        }
    }
    Handle::new()
        .map_err(kernel)?
        .delete_link_by_name(&bridge_name(conf.vni))
        .map_err(kernel)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: serde_json::Value) -> OverlayConf {
        let mut v = serde_json::json!({"name": "n", "network": "10.244.0.0/16", "node": "a",
            "store": {"etcd": {"endpoints": ["http://127.0.0.1:1"], "leaseTTL": 60}}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        parse_conf(&v).unwrap()
    }

    fn rec(renewed_at: u64) -> Option<NodeRecord> {
        let held = OverlayConf {
            subnet: "10.244.3.0/24".parse().unwrap(),
            ..conf(serde_json::json!({}))
        };
        Some(NodeRecord::of(&held, Some(renewed_at)))
    }

    #[test]
    fn an_agents_fresh_lease_spares_the_store() {
        let c = conf(serde_json::json!({}));
        let held = agent_held(&c, &rec(1000), 1010).unwrap();
        assert_eq!(held.subnet.to_string(), "10.244.3.0/24");
        assert!(held.peers.is_empty());
        // Renewed too long ago (half the TTL): ask the store.
        assert!(agent_held(&c, &rec(1000), 1030).is_none());
        assert!(agent_held(&c, &None, 1010).is_none());
        // Other credentials for the store, or another prefix.
        let other = conf(
            serde_json::json!({"store": {"etcd": {"endpoints": ["http://127.0.0.1:1"],
            "leaseTTL": 60, "username": "u", "password": "p"}}}),
        );
        assert!(agent_held(&other, &rec(1000), 1010).is_none());
        let prefix = conf(
            serde_json::json!({"store": {"etcd": {"endpoints": ["http://127.0.0.1:1"],
            "leaseTTL": 60, "prefix": "/else"}}}),
        );
        assert!(agent_held(&prefix, &rec(1000), 1010).is_none());
        // Another node name, or podCIDRs the record does not hold.
        assert!(agent_held(&conf(serde_json::json!({"node": "b"})), &rec(1000), 1010).is_none());
        let given = conf(serde_json::json!({"podCIDRs": ["10.244.4.0/24"]}));
        assert!(agent_held(&given, &rec(1000), 1010).is_none());
        let same = conf(serde_json::json!({"podCIDRs": ["10.244.3.0/24"]}));
        assert!(agent_held(&same, &rec(1000), 1010).is_some());
        // The static store has no lease to spare.
        let st = parse_conf(&serde_json::json!({"name": "n", "network": "10.244.0.0/16",
            "store": {"static": {"subnet": "10.244.3.0/24"}}}))
        .unwrap();
        assert!(agent_held(&st, &rec(1000), 1010).is_none());
    }
}
