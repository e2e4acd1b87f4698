//! CreateNetwork and DeleteNetwork: the bridge (through the core, as
//! berth-bridge makes it), its rules, and for mode=overlay the node's
//! share of the overlay.

use std::collections::BTreeMap;

use berth_kernel::Handle;
use berth_network::attachment::state::State;
use berth_network::bridge::BridgeSpec;
use berth_network::firewall::{self, NetworkFirewall};
use berth_network::gateway::GatewaySpec;
use ipnet::IpNet;
use serde_json::{json, Value};

use super::requests::{CreateNetworkReq, IdReq};
use super::{fail, flag, kernel, parse, short, Answer, Network, Networks};
use crate::overlay_net;

impl Networks {
    pub(super) fn create_network(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: CreateNetworkReq = parse(body)?;
        if req.network_id.is_empty() {
            return Err(fail("request has no NetworkID"));
        }
        let generic: BTreeMap<String, String> = match req.options.get("com.docker.network.generic")
        {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        const COMMON: [&str; 7] = [
            "mode",
            "bridge",
            "mtu",
            "masquerade",
            "isolation",
            "vlan",
            "multicast_snooping",
        ];
        let overlay = match generic.get("mode").map(String::as_str) {
            None | Some("bridge") => false,
            Some("overlay") => true,
            Some(m) => return Err(fail(format!("unknown mode {m:?} (bridge, overlay)"))),
        };
        for k in generic.keys() {
            let known = COMMON.contains(&k.as_str())
                || (overlay && overlay_net::OPTIONS.contains(&k.as_str()));
            if !known && overlay_net::OPTIONS.contains(&k.as_str()) {
                return Err(fail(format!("option {k:?} is for mode=overlay")));
            }
            if !known {
                return Err(fail(format!(
                    "unknown option {k:?} (known: {}; with mode=overlay also {})",
                    COMMON.join(", "),
                    overlay_net::OPTIONS.join(", ")
                )));
            }
        }
        if generic.get("vlan").is_some_and(|v| v != "0") {
            return Err(fail(
                "option vlan: VLAN networks are not served: berth could not build or verify them on a kernel without bridge VLAN filtering and 802.1Q links",
            ));
        }
        let mtu = match generic.get("mtu") {
            None => None,
            Some(m) => match m.parse::<u32>() {
                Ok(v) if (68..=65535).contains(&v) => Some(v),
                _ => return Err(fail(format!("option mtu={m:?}: expected 68..65535"))),
            },
        };
        let overlay_conf = if overlay {
            let cluster = self.overlay_pool(&req)?;
            let conf = overlay_net::overlay_conf(
                &generic,
                &self.overlay_defaults,
                &cluster.to_string(),
                mtu,
            )
            .map_err(fail)?;
            // Checked now, so a bad option changes nothing.
            berth_network::overlay::parse_conf(&conf)
                .map_err(|e| fail(format!("mode=overlay: {e}")))?;
            Some(conf)
        } else {
            None
        };
        let default_bridge = match &overlay_conf {
            Some(c) => berth_network::overlay::bridge_name(c["vni"].as_u64().unwrap_or(1) as u32),
            None => format!("bd{}", short(&req.network_id)),
        };
        let bridge = generic.get("bridge").cloned().unwrap_or(default_bridge);
        let mut gateways = Vec::new();
        for d in req
            .ipv4
            .iter()
            .flatten()
            .chain(req.ipv6.iter().flatten())
            .filter(|_| !overlay)
        {
            if d.gateway.is_empty() {
                continue;
            }
            let g: IpNet = d
                .gateway
                .parse()
                .map_err(|_| fail(format!("Gateway {:?} is not ip/len", d.gateway)))?;
            gateways.push(g);
        }
        // As Docker's own bridge driver: one IPv4 subnet per bridge (a
        // second gateway on it would replace the first).
        if gateways.iter().filter(|g| g.addr().is_ipv4()).count() > 1 {
            return Err(fail(
                "IPv4Data: a bridge network takes one IPv4 subnet (as Docker's bridge driver)",
            ));
        }
        let spec = BridgeSpec::new(&bridge);
        spec.validate("bridge").map_err(fail)?;
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        // A CreateNetwork retried after berthd died halfway through it:
        // what the first attempt made goes, then it is made again.
        if let Some(old) = self.records.network(&req.network_id) {
            self.teardown(&mut h, &old)?;
            let _ = std::fs::remove_file(self.net_path(&old.id));
        }
        let others = self.networks();
        if let Some(o) = others
            .iter()
            .find(|n| n.bridge == bridge && n.id != req.network_id)
        {
            return Err(fail(format!(
                "bridge {bridge:?} belongs to berth network {}",
                short(&o.id)
            )));
        }
        for g in &gateways {
            if let Some(o) = others.iter().find(|n| {
                n.id != req.network_id
                    && n.gateways
                        .iter()
                        .any(|og| og.contains(&g.network()) || g.contains(&og.network()))
            }) {
                return Err(fail(format!(
                    "subnet {} overlaps berth network {}",
                    g.trunc(),
                    short(&o.id)
                )));
            }
        }
        if h.link_by_name(&bridge)
            .map_err(kernel("netlink"))?
            .is_some()
        {
            return Err(fail(format!("a link named {bridge:?} already exists (owned by another network or not a berth bridge)")));
        }
        let internal = req
            .options
            .get("com.docker.network.internal")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut network = Network {
            id: req.network_id.clone(),
            bridge,
            mtu,
            // Nothing leaves an internal network, so nothing to masquerade.
            masquerade: flag(&generic, "masquerade", true)? && !internal,
            isolation: flag(&generic, "isolation", true)?,
            internal,
            gateways,
            overlay: overlay_conf,
            multicast_snooping: flag(&generic, "multicast_snooping", false)?,
        };
        // Recorded first: a berthd killed from here on leaves a record
        // that DeleteNetwork cleans.
        Self::write(&self.net_path(&network.id), &network)?;
        let built = self
            .join_overlay(&mut network)
            .and_then(|()| self.build(&mut h, &network));
        if let Err(e) = built {
            let _ = self.teardown(&mut h, &network);
            let _ = std::fs::remove_file(self.net_path(&network.id));
            return Err(e);
        }
        Ok((200, json!({})))
    }

    pub(super) fn build(&self, h: &mut Handle, n: &Network) -> Result<(), Answer> {
        // The same bridge berth-bridge makes for a CNI network with these
        // options (berth_network).
        let bridge = BridgeSpec {
            mtu: n.mtu,
            multicast_snooping: n.multicast_snooping,
            ..BridgeSpec::new(&n.bridge)
        }
        .apply(h, "bridge")
        .map_err(fail)?;
        GatewaySpec {
            addresses: n.gateways.clone(),
            force: false,
        }
        .apply(h, &bridge.link)
        .map_err(fail)?;
        let state = State::from_env();
        let lock = state.lock().map_err(fail)?;
        firewall::install(&state, &lock, &Self::firewall(n)).map_err(fail)
    }

    /// The network's firewall, as berth-bridge would make it for the same
    /// options.
    fn firewall(n: &Network) -> NetworkFirewall {
        // An overlay's traffic stays unmasqueraded within the cluster
        // CIDR (other nodes see container addresses), as flannel's.
        let masquerade = match (&n.overlay, n.masquerade) {
            (_, false) => Vec::new(),
            (Some(o), true) => o["network"]
                .as_str()
                .and_then(|c| c.parse::<IpNet>().ok())
                .into_iter()
                .collect(),
            (None, true) => n.gateways.iter().map(|g| g.trunc()).collect(),
        };
        NetworkFirewall {
            network: n.rules_name(),
            bridge: n.bridge.clone(),
            masquerade,
            isolation: n.isolation,
            internal: n.internal,
            uplinks: n
                .overlay
                .as_ref()
                .and_then(|o| o["vni"].as_u64())
                .map(|v| berth_network::overlay::vxlan_name(v as u32))
                .into_iter()
                .collect(),
        }
    }

    /// The cluster CIDR of an overlay network: the engine's IPv4 pool,
    /// which must be berth's IPAM's (the node's subnet is carved from it).
    pub(super) fn overlay_pool(&self, req: &CreateNetworkReq) -> Result<IpNet, Answer> {
        if req.ipv6.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(fail(
                "mode=overlay: IPv6 (--ipv6) is not served on Docker overlay networks yet",
            ));
        }
        let pool = req
            .ipv4
            .iter()
            .flatten()
            .map(|d| d.pool.as_str())
            .find(|p| !p.is_empty())
            .unwrap_or("");
        let cluster: IpNet = pool
            .parse()
            .map_err(|_| fail(format!("mode=overlay: IPv4 pool {pool:?} is not a CIDR")))?;
        if !self.ipam.has_pool(&cluster) {
            return Err(fail(format!(
                "mode=overlay: the pool {cluster} is not berth's: create the network with --ipam-driver berth --subnet <cluster CIDR>"
            )));
        }
        Ok(cluster)
    }

    /// mode=overlay: joins the node to the overlay (its lease, the VXLAN
    /// device and peers), then the bridge gets the node subnet's gateway,
    /// berth's IPAM hands out the node subnet, and the agent starts.
    /// Bridge mode: nothing to do.
    pub(super) fn join_overlay(&self, n: &mut Network) -> Result<(), Answer> {
        let Some(conf) = self.overlay_of(n) else {
            return Ok(());
        };
        let parsed = berth_network::overlay::parse_conf(&conf)
            .map_err(|e| fail(format!("mode=overlay: {e}")))?;
        let (joined, mtu) = berth_network::overlay::join_node(&parsed)
            .map_err(|e| fail(format!("mode=overlay: {e}")))?;
        let subnet = IpNet::V4(joined.subnet);
        let gateway = match subnet.hosts().next() {
            Some(g) => IpNet::new(g, subnet.prefix_len()).map_err(fail)?,
            None => return Err(fail(format!("node subnet {subnet} has no host address"))),
        };
        n.gateways = vec![gateway];
        n.mtu = Some(mtu);
        Self::write(&self.net_path(&n.id), n)?;
        let cluster: IpNet = conf["network"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(fail)?;
        self.ipam.narrow(&cluster, &subnet).map_err(fail)?;
        self.agents.start(&short(&n.id), &conf).map_err(fail)
    }

    pub(super) fn teardown(&self, h: &mut Handle, n: &Network) -> Result<(), Answer> {
        if let Some(conf) = &n.overlay {
            self.agents.stop(&short(&n.id));
            if let Ok(parsed) = berth_network::overlay::parse_conf(conf) {
                berth_network::overlay::leave_node(&parsed)
                    .map_err(|e| fail(format!("mode=overlay: {e}")))?;
            }
        }
        {
            let state = State::from_env();
            let lock = state.lock().map_err(fail)?;
            firewall::uninstall(&state, &lock, &Self::firewall(n)).map_err(fail)?;
        }
        h.delete_link_by_name(&n.bridge)
            .map_err(kernel("delete bridge"))?;
        Ok(())
    }

    pub(super) fn delete_network(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let Some(n) = self.records.network(&req.network_id) else {
            return Ok((200, json!({})));
        };
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        self.teardown(&mut h, &n)?;
        let _ = std::fs::remove_file(self.net_path(&n.id));
        Ok((200, json!({})))
    }
}
