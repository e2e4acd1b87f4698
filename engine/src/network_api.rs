//! Docker's remote NetworkDriver protocol. Bridge mode: the same kernel
//! objects berth-bridge makes for a CNI network (a Linux bridge with the
//! gateway address, the network's rules in `inet berth` with masquerade,
//! forward marks and isolation, one veth per endpoint), through the same
//! `net` library. The engine moves the veth's peer into the container and
//! configures it (shared/reference/docker-plugins.md §4). Published ports
//! (`-p`) go through berth-portmap's library onto its nftables maps.
//! Overlay mode: the node's share of a berth-overlay network (see
//! `overlay_net`): the same bridge and endpoints, on the node's leased
//! subnet, behind the overlay's VXLAN device.
//!
//! The engine never re-sends CreateNetwork after a restart, so every
//! network and endpoint is recorded (`<state>/networks/<id>.json`,
//! `<state>/endpoints/<id>.json`, written durably) before its kernel
//! objects exist and forgotten after they are gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::net::IpAddr;

use crate::ipam_api::Ipam;
use crate::overlay_net;

use berth_network::bridge::BridgeSpec;
use berth_network::gateway::GatewaySpec;
use berth_network::port::PortSpec;
use ipnet::IpNet;
use net::firewall::{PortMapping, Protocol, PublishedPorts};
use net::{Handle, Netns};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::ports::{PortClaim, PortOwner};

pub type Answer = (u16, Value);

fn fail(msg: impl std::fmt::Display) -> Answer {
    (500, json!({"Err": msg.to_string()}))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Network {
    id: String,
    bridge: String,
    mtu: Option<u32>,
    masquerade: bool,
    isolation: bool,
    /// `docker network create --internal`: no traffic to or from outside.
    #[serde(default)]
    internal: bool,
    /// "ip/len" gateways, from the engine's IPv4Data/IPv6Data (overlay:
    /// the node subnet's first address).
    gateways: Vec<IpNet>,
    /// mode=overlay: the berth-overlay config object.
    #[serde(default)]
    overlay: Option<Value>,
    /// `-o multicast_snooping=true`: the kernel's (and Docker's bridge
    /// driver's) default; berth's bridges have it off.
    #[serde(default)]
    multicast_snooping: bool,
}

impl Network {
    /// The name the network's rules carry in `inet berth`.
    fn rules_name(&self) -> String {
        format!("docker-{}", short(&self.id))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    network: String,
    host_veth: String,
    peer: String,
    /// The engine's addresses for it (CreateEndpoint's Interface).
    #[serde(default)]
    addresses: Vec<String>,
}

fn short(id: &str) -> String {
    berth_network::names::docker_short_id(id)
}

pub struct Networks {
    dir: PathBuf,
    ops: Mutex<()>,
    /// Overlay networks' addresses come from the node's subnet of their pool.
    ipam: Arc<Ipam>,
    /// berthd's config `overlay`: defaults of every overlay network.
    overlay_defaults: Value,
    agents: overlay_net::Agents,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| (400, json!({"Err": format!("malformed request JSON: {e}")})))
}

fn kernel(what: &str) -> impl Fn(net::Error) -> Answer + '_ {
    move |e| fail(format!("{what}: {e}"))
}

/// The core's errors as the protocol's.
fn core(e: berth_network::Error) -> Answer {
    fail(e)
}

#[derive(Deserialize)]
struct IdReq {
    #[serde(rename = "NetworkID", default)]
    network_id: String,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
}

#[derive(Deserialize, Default)]
struct Interface {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "AddressIPv6", default)]
    address_v6: String,
}

#[derive(Deserialize)]
struct CreateEndpointReq {
    #[serde(rename = "NetworkID", default)]
    network_id: String,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "Interface", default)]
    interface: Option<Interface>,
}

#[derive(Deserialize)]
struct ProgramReq {
    #[serde(rename = "NetworkID", default)]
    network_id: String,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "Options", default)]
    options: BTreeMap<String, Value>,
}

/// One of the engine's `com.docker.network.portmap` entries.
#[derive(Deserialize)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u16,
}

#[derive(Deserialize)]
struct IpData {
    #[serde(rename = "Pool", default)]
    pool: String,
    #[serde(rename = "Gateway", default)]
    gateway: String,
}

#[derive(Deserialize)]
struct CreateNetworkReq {
    #[serde(rename = "NetworkID", default)]
    network_id: String,
    #[serde(rename = "Options", default)]
    options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    ipv4: Option<Vec<IpData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6: Option<Vec<IpData>>,
}

fn flag(opts: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool, Answer> {
    match opts.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
        Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
        Some(v) => Err(fail(format!("option {key}={v:?}: expected true or false"))),
    }
}

impl Networks {
    pub fn new(state: &Path, ipam: Arc<Ipam>, overlay_defaults: Value) -> Networks {
        Networks {
            dir: state.to_path_buf(),
            ops: Mutex::new(()),
            ipam,
            overlay_defaults,
            agents: overlay_net::Agents::new(state),
        }
    }

    /// At start: the node agents of the overlay networks (berthd is their
    /// agent; the engine sends nothing for networks it already has).
    pub fn resume(&self) {
        for n in self.networks() {
            if let Some(conf) = &n.overlay {
                if let Err(e) = self.agents.start(&short(&n.id), conf) {
                    tracing::warn!("overlay network {}: agent: {e}", short(&n.id));
                }
            }
        }
    }

    fn net_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("networks")
            .join(format!("{}.json", short(id)))
    }

    fn ep_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("endpoints")
            .join(format!("{}.json", short(id)))
    }

    fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn write<T: Serialize>(path: &Path, v: &T) -> Result<(), Answer> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        }
        let text = serde_json::to_vec_pretty(v).map_err(fail)?;
        store::file::write_durable(path, &text).map_err(fail)
    }

    fn networks(&self) -> Vec<Network> {
        let Ok(rd) = std::fs::read_dir(self.dir.join("networks")) else {
            return Vec::new();
        };
        rd.flatten().filter_map(|e| Self::read(&e.path())).collect()
    }

    pub fn handle(&self, method: &str, body: &[u8]) -> Option<Answer> {
        let _g = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let a = match method {
            "GetCapabilities" => (200, json!({"Scope": "local", "ConnectivityScope": "local"})),
            "CreateNetwork" => self.create_network(body).unwrap_or_else(|a| a),
            "DeleteNetwork" => self.delete_network(body).unwrap_or_else(|a| a),
            "CreateEndpoint" => self.create_endpoint(body).unwrap_or_else(|a| a),
            "Join" => self.join(body).unwrap_or_else(|a| a),
            "Leave" => (200, json!({})),
            "DeleteEndpoint" => self.delete_endpoint(body).unwrap_or_else(|a| a),
            "EndpointOperInfo" => self.oper_info(body).unwrap_or_else(|a| a),
            "ProgramExternalConnectivity" => self.program(body).unwrap_or_else(|a| a),
            "RevokeExternalConnectivity" => self.revoke(body).unwrap_or_else(|a| a),
            _ => return None,
        };
        Some(a)
    }

    fn create_network(&self, body: &[u8]) -> Result<Answer, Answer> {
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
            berth_overlay::parse_conf(&conf)
                .map_err(|e| fail(format!("mode=overlay: {}", e.msg)))?;
            Some(conf)
        } else {
            None
        };
        let default_bridge = match &overlay_conf {
            Some(c) => berth_overlay::bridge_name(c["vni"].as_u64().unwrap_or(1) as u32),
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
        spec.validate("bridge").map_err(core)?;
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        // A CreateNetwork retried after berthd died halfway through it:
        // what the first attempt made goes, then it is made again.
        if let Some(old) = Self::read::<Network>(&self.net_path(&req.network_id)) {
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

    fn build(&self, h: &mut Handle, n: &Network) -> Result<(), Answer> {
        // The same bridge berth-bridge makes for a CNI network with these
        // options (berth_network).
        let bridge = BridgeSpec {
            mtu: n.mtu,
            multicast_snooping: n.multicast_snooping,
            ..BridgeSpec::new(&n.bridge)
        }
        .apply(h, "bridge")
        .map_err(core)?;
        GatewaySpec {
            addresses: n.gateways.clone(),
            force: false,
        }
        .apply(h, &bridge.link)
        .map_err(core)?;
        let _lock = store::host::lock().map_err(fail)?;
        // An overlay's traffic stays unmasqueraded within the cluster
        // CIDR (other nodes see container addresses), as flannel's.
        let masq = match (&n.overlay, n.masquerade) {
            (_, false) => Vec::new(),
            (Some(o), true) => o["network"]
                .as_str()
                .and_then(|c| c.parse::<IpNet>().ok())
                .into_iter()
                .collect(),
            (None, true) => n.gateways.iter().map(|g| g.trunc()).collect(),
        };
        net::firewall::apply(&net::firewall::NetworkRules {
            network: n.rules_name(),
            bridge: n.bridge.clone(),
            masquerade: masq,
            forward: true,
            isolation: n.isolation,
            internal: n.internal,
            uplinks: n
                .overlay
                .as_ref()
                .and_then(|o| o["vni"].as_u64())
                .map(|v| berth_overlay::vxlan_name(v as u32))
                .into_iter()
                .collect(),
            quiet_ports: berth_network::names::port_prefixes(),
        })
        .map_err(kernel("firewall"))?;
        net::firewall::ensure_docker_user_in(None).map_err(kernel("firewall"))
    }

    /// The cluster CIDR of an overlay network: the engine's IPv4 pool,
    /// which must be berth's IPAM's (the node's subnet is carved from it).
    fn overlay_pool(&self, req: &CreateNetworkReq) -> Result<IpNet, Answer> {
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
    fn join_overlay(&self, n: &mut Network) -> Result<(), Answer> {
        let Some(conf) = n.overlay.clone() else {
            return Ok(());
        };
        let parsed = berth_overlay::parse_conf(&conf)
            .map_err(|e| fail(format!("mode=overlay: {}", e.msg)))?;
        let (joined, mtu) = berth_overlay::join_node(&parsed)
            .map_err(|e| fail(format!("mode=overlay: {}", e.msg)))?;
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

    fn teardown(&self, h: &mut Handle, n: &Network) -> Result<(), Answer> {
        if let Some(conf) = &n.overlay {
            self.agents.stop(&short(&n.id));
            if let Ok(parsed) = berth_overlay::parse_conf(conf) {
                berth_overlay::leave_node(&parsed)
                    .map_err(|e| fail(format!("mode=overlay: {}", e.msg)))?;
            }
        }
        {
            let _lock = store::host::lock().map_err(fail)?;
            net::firewall::release_network_in(None, &n.rules_name(), Some(&n.bridge))
                .map_err(kernel("firewall"))?;
        }
        h.delete_link_by_name(&n.bridge)
            .map_err(kernel("delete bridge"))?;
        Ok(())
    }

    fn delete_network(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let Some(n) = Self::read::<Network>(&self.net_path(&req.network_id)) else {
            return Ok((200, json!({})));
        };
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        self.teardown(&mut h, &n)?;
        let _ = std::fs::remove_file(self.net_path(&n.id));
        Ok((200, json!({})))
    }

    fn endpoint_of(&self, network: &str, endpoint: &str) -> Endpoint {
        let (host_veth, peer) = berth_network::names::docker_endpoint_veths(endpoint);
        Endpoint {
            network: network.to_string(),
            host_veth,
            peer,
            addresses: Vec::new(),
        }
    }

    fn create_endpoint(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: CreateEndpointReq = parse(body)?;
        if Self::read::<Network>(&self.net_path(&req.network_id)).is_none() {
            return Err(fail(format!("unknown network {}", short(&req.network_id))));
        }
        if req.endpoint_id.is_empty() {
            return Err(fail("request has no EndpointID"));
        }
        let mut ep = self.endpoint_of(&req.network_id, &req.endpoint_id);
        let i = req.interface.unwrap_or_default();
        ep.addresses = [i.address, i.address_v6]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        Self::write(&self.ep_path(&req.endpoint_id), &ep)?;
        // The engine's addresses and MAC stand: nothing to fill in.
        Ok((200, json!({"Interface": {}})))
    }

    fn join(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let n: Network = Self::read(&self.net_path(&req.network_id))
            .ok_or_else(|| fail(format!("unknown network {}", short(&req.network_id))))?;
        if req.endpoint_id.is_empty() {
            return Err(fail("request has no EndpointID"));
        }
        let ep: Endpoint = Self::read(&self.ep_path(&req.endpoint_id)).ok_or_else(|| {
            fail(format!(
                "unknown endpoint {} (Join before CreateEndpoint)",
                short(&req.endpoint_id)
            ))
        })?;
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        let port = PortSpec {
            mtu: n.mtu,
            ..PortSpec::new(&ep.host_veth, &ep.peer)
        };
        let wired = (|| -> Result<(), Answer> {
            let here = Netns::current().map_err(kernel("own namespace"))?;
            // A Join retried after berthd died halfway through it.
            port.teardown(&mut h).map_err(core)?;
            let br = h
                .link_by_name(&n.bridge)
                .map_err(kernel("netlink"))?
                .ok_or_else(|| fail(format!("bridge {} is gone", n.bridge)))?;
            port.apply(&mut h, &br, &here).map_err(core)?;
            Ok(())
        })();
        if let Err(e) = wired {
            let _ = port.teardown(&mut h);
            return Err(e);
        }
        let gw = |v4: bool| {
            n.gateways
                .iter()
                .find(|g| g.addr().is_ipv4() == v4)
                .map(|g| g.addr().to_string())
                .unwrap_or_default()
        };
        Ok((
            200,
            json!({
                "InterfaceName": {"SrcName": ep.peer, "DstPrefix": "eth"},
                "Gateway": gw(true),
                "GatewayIPv6": gw(false),
            }),
        ))
    }

    fn delete_endpoint(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let path = self.ep_path(&req.endpoint_id);
        // Tolerant: the link may be gone with its namespace, or never made.
        let host_veth = Self::read::<Endpoint>(&path)
            .map(|e| e.host_veth)
            .unwrap_or_else(|| {
                self.endpoint_of(&req.network_id, &req.endpoint_id)
                    .host_veth
            });
        if let Some(n) = Self::read::<Network>(&self.net_path(&req.network_id)) {
            berth_portmap::unpublish(&Self::port_owner(&n, &req.endpoint_id))
                .map_err(|e| fail(e.msg))?;
        }
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        h.delete_link_by_name(&host_veth)
            .map_err(kernel("delete veth"))?;
        let _ = std::fs::remove_file(path);
        Ok((200, json!({})))
    }

    /// Who owns an endpoint's published ports in berth-portmap's store
    /// (shared with the CNI plugin: a host port is published once, by
    /// either).
    fn port_owner(network: &Network, endpoint: &str) -> PortOwner {
        PortOwner {
            network: network.rules_name(),
            container_id: endpoint.to_string(),
            ifname: "docker".into(),
        }
    }

    /// `-p`: the engine's port bindings, published on berth-portmap's
    /// nftables maps.
    fn program(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: ProgramReq = parse(body)?;
        let n: Network = Self::read(&self.net_path(&req.network_id))
            .ok_or_else(|| fail(format!("unknown network {}", short(&req.network_id))))?;
        let ep: Endpoint = Self::read(&self.ep_path(&req.endpoint_id))
            .ok_or_else(|| fail(format!("unknown endpoint {}", short(&req.endpoint_id))))?;
        let bindings: Vec<PortBinding> = match req.options.get("com.docker.network.portmap") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| fail(format!("com.docker.network.portmap: {e}")))?,
        };
        if bindings.is_empty() {
            return Ok((200, json!({})));
        }
        let ips: Vec<IpAddr> = ep
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpNet>().ok())
            .map(|n| n.addr())
            .collect();
        let mut ports = PublishedPorts::default();
        let mut claims = Vec::new();
        for b in &bindings {
            let protocol = match b.proto {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                132 => Protocol::Sctp,
                p => {
                    return Err(fail(format!(
                        "port binding with protocol number {p}: only tcp, udp, sctp"
                    )))
                }
            };
            if b.host_port == 0 {
                return Err(fail(format!(
                    "port {}: give the host port (-p HOST:{})",
                    b.port, b.port
                )));
            }
            let end = b.host_port_end.max(b.host_port);
            let host_ip: Option<IpAddr> = match b.host_ip.as_str() {
                "" => None,
                s => Some(
                    s.parse()
                        .map_err(|_| fail(format!("HostIP {s:?} is not an address")))?,
                ),
            };
            let families: Vec<&IpAddr> = ips
                .iter()
                .filter(|c| host_ip.is_none_or(|h| h.is_ipv4() == c.is_ipv4()))
                .collect();
            for c in families {
                for off in 0..=(end - b.host_port) {
                    let hp = b.host_port + off;
                    let specific = host_ip.filter(|h| !h.is_unspecified());
                    ports.mappings.push(PortMapping {
                        protocol,
                        host_ip: specific,
                        host_port: hp,
                        container_ip: *c,
                        container_port: b.port + off,
                    });
                    claims.push(PortClaim {
                        family: if c.is_ipv4() { 4 } else { 6 },
                        protocol: protocol.name().to_string(),
                        host_port: hp,
                        host_ip: specific,
                    });
                }
                if !ports.container_ips.contains(c) {
                    ports.container_ips.push(*c);
                    ports.hairpin.push((*c, n.bridge.clone()));
                    if c.is_ipv4() {
                        ports.localhost.push(*c);
                    }
                }
            }
        }
        berth_portmap::publish(&Self::port_owner(&n, &req.endpoint_id), &ports, &claims)
            .map_err(|e| fail(e.msg))?;
        Ok((200, json!({})))
    }

    fn revoke(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        if let Some(n) = Self::read::<Network>(&self.net_path(&req.network_id)) {
            berth_portmap::unpublish(&Self::port_owner(&n, &req.endpoint_id))
                .map_err(|e| fail(e.msg))?;
        }
        Ok((200, json!({})))
    }

    fn oper_info(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let ep: Endpoint = Self::read(&self.ep_path(&req.endpoint_id))
            .ok_or_else(|| fail(format!("unknown endpoint {}", short(&req.endpoint_id))))?;
        Ok((
            200,
            json!({"Value": {"hostVeth": ep.host_veth, "network": short(&ep.network), "addresses": ep.addresses}}),
        ))
    }
}
