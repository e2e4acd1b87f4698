//! berth-overlay's configuration (the keys, same meaning):
//! `network` (cluster CIDR), `subnetLen`, `vni`, `port`, `iface`, `node`,
//! `mtu`, and `store`: `static` (this node's subnet and its peers) or
//! `etcd` (`endpoints`, `prefix`: leases in the cluster store).

use std::net::IpAddr;

use cni::{Error, Request};
use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub underlay: IpAddr,
    pub subnet: Ipv4Net,
}

/// `store.etcd`: the cluster store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EtcdConf {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "/berth".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConf {
    /// The CNI network name (keys in the store are under it).
    pub name: String,
    /// The etcd store; None: the static store. With etcd, `subnet` and
    /// `peers` are filled in from the store (see `resolve`).
    pub etcd: Option<EtcdConf>,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub vni: u32,
    pub port: u16,
    pub iface: Option<String>,
    pub node: String,
    /// None: underlay MTU minus 50.
    pub mtu: Option<u32>,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    pub peers: Vec<Peer>,
    /// berth-ipam's dataDir for the node subnet (default berth-ipam's).
    pub data_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    network: Option<String>,
    subnet_len: Option<u8>,
    vni: Option<i64>,
    port: Option<i64>,
    iface: Option<String>,
    node: Option<String>,
    mtu: Option<i64>,
    store: Option<Value>,
    data_dir: Option<String>,
}

#[derive(Deserialize)]
struct RawPeer {
    node: String,
    underlay: String,
    subnet: String,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(field, msg)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn subnet(field: &str, s: &str, network: &Ipv4Net, len: u8) -> Result<Ipv4Net, Error> {
    let n: Ipv4Net = s.parse().map_err(|_| bad(field, format!("{s:?} is not an IPv4 CIDR")))?;
    if n.prefix_len() != len || n.trunc() != n {
        return Err(bad(field, format!("{s} is not a /{len} subnet (subnetLen)")));
    }
    if !network.contains(&n) {
        return Err(bad(field, format!("{s} is outside the cluster network {network}")));
    }
    Ok(n)
}

impl OverlayConf {
    pub fn parse(req: &Request) -> Result<OverlayConf, Error> {
        let raw: Raw = serde_json::from_value(req.conf.raw.clone())
            .map_err(|e| Error::decode(format!("berth-overlay config: {e}")))?;
        let network: Ipv4Net = raw
            .network
            .as_deref()
            .ok_or_else(|| bad("network", "missing (the cluster CIDR, e.g. 10.244.0.0/16)"))?
            .parse()
            .map_err(|_| bad("network", "not an IPv4 CIDR"))?;
        let network = network.trunc();
        let subnet_len = raw.subnet_len.unwrap_or(24);
        if subnet_len <= network.prefix_len() || subnet_len > 30 {
            return Err(bad(
                "subnetLen",
                format!("{subnet_len} must be longer than the network's /{} and at most 30", network.prefix_len()),
            ));
        }
        let vni = match raw.vni.unwrap_or(1) {
            v @ 1..=0xff_ffff => v as u32,
            v => return Err(bad("vni", format!("{v} is outside 1..16777215"))),
        };
        let port = match raw.port.unwrap_or(i64::from(net::VXLAN_PORT)) {
            p @ 1..=65535 => p as u16,
            p => return Err(bad("port", format!("{p} is not a port"))),
        };
        let mtu = match raw.mtu.unwrap_or(0) {
            0 => None,
            m @ 68..=65535 => Some(m as u32),
            m => return Err(bad("mtu", format!("{m} is outside 68..65535"))),
        };
        let store = raw.store.ok_or_else(|| bad("store", "missing ({\"static\": ...} or {\"etcd\": ...})"))?;
        let common = |subnet: Ipv4Net, peers: Vec<Peer>, etcd: Option<EtcdConf>| OverlayConf {
            name: req.conf.name.clone(),
            etcd,
            network,
            subnet_len,
            vni,
            port,
            iface: raw.iface.clone().filter(|i| !i.is_empty()),
            node: raw.node.clone().filter(|n| !n.is_empty()).unwrap_or_else(hostname),
            mtu,
            subnet,
            peers,
            data_dir: raw.data_dir.clone(),
        };
        if let Some(e) = store.get("etcd") {
            let etcd: EtcdConf = serde_json::from_value(e.clone()).map_err(|e| bad("store.etcd", e))?;
            if etcd.endpoints.is_empty() {
                return Err(bad("store.etcd.endpoints", "empty"));
            }
            for ep in &etcd.endpoints {
                if !ep.starts_with("http://") {
                    return Err(bad("store.etcd.endpoints", format!("{ep:?}: only http:// endpoints are served")));
                }
            }
            // The node's subnet comes from the store; a placeholder until then.
            let first = network.subnets(subnet_len).map_err(|e| bad("subnetLen", e))?.next().unwrap_or(network);
            return Ok(common(first, Vec::new(), Some(etcd)));
        }
        let st = store.get("static").ok_or_else(|| bad("store", "needs \"static\" (or \"etcd\")"))?;
        let own = st
            .get("subnet")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("store.static.subnet", "missing"))?;
        let own = subnet("store.static.subnet", own, &network, subnet_len)?;
        let raw_peers: Vec<RawPeer> = match st.get("peers") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad("store.static.peers", e))?,
        };
        let mut peers: Vec<Peer> = Vec::new();
        for (i, p) in raw_peers.iter().enumerate() {
            let field = format!("store.static.peers[{i}]");
            let underlay: IpAddr =
                p.underlay.parse().map_err(|_| bad(&format!("{field}.underlay"), format!("{:?} is not an address", p.underlay)))?;
            let s = subnet(&format!("{field}.subnet"), &p.subnet, &network, subnet_len)?;
            if s == own || peers.iter().any(|q| q.subnet == s) {
                return Err(bad(&format!("{field}.subnet"), format!("{s} is already another node's")));
            }
            peers.push(Peer { node: p.node.clone(), underlay, subnet: s });
        }
        Ok(common(own, peers, None))
    }
}
