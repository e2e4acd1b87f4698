//! berth-overlay's configuration (the keys, same meaning):
//! `network` (cluster CIDR), `subnetLen`, `vni`, `port`, `iface`, `node`,
//! `mtu`, and `store`: `static` (this node's subnet and its peers) or
//! `etcd` (`endpoints`, `prefix`, `leaseTTL`, `subnet`: leases in the
//! cluster store).
//!
//! Dual stack: `network6` (an IPv6 cluster CIDR) and `subnetLen6` (default
//! 64). A node's IPv6 subnet is not leased separately: it is the subnet of
//! `network6` with the same index as its IPv4 subnet in `network` (the
//! node holding 10.244.5.0/24 of 10.244.0.0/16 holds fd44:0:0:5::/64 of
//! fd44::/48), so one lease, static or in etcd, covers both families.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cni::GoObject;

use crate::{Error, Kind};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub underlay: IpAddr,
    pub subnet: Ipv4Net,
    /// Its IPv6 subnet, when the network is dual stack.
    pub subnet6: Option<Ipv6Net>,
    /// Its VTEP MAC: published in its lease, else derived from `underlay`.
    pub mac: [u8; 6],
}

/// `store.etcd`: the cluster store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConf {
    /// How to reach it: endpoints, TLS files, credentials, dial timeout.
    pub client: berth_etcd::Options,
    pub prefix: String,
    /// Seconds a node's lease outlives its last renewal (the agent renews
    /// it every third of this): how long a node that died without a clean
    /// shutdown stays a peer.
    pub lease_ttl: i64,
    /// The subnet this node asks for; None: the first free one.
    pub subnet: Option<String>,
    /// The IPv6 subnet this node holds, when given (`podCIDRs`); None:
    /// the one paired with its IPv4 subnet.
    pub subnet6: Option<Ipv6Net>,
    /// The key `subnet` came from, for errors: `store.etcd.subnet`, or
    /// `podCIDRs` (the node's podCIDRs, which it never trades for another).
    pub subnet_field: String,
}

/// `store.etcd` as written (Go's field matching, see cni::gojson).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEtcd {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_lease_ttl", rename = "leaseTTL")]
    lease_ttl: i64,
    #[serde(default)]
    subnet: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    /// A Go duration ("5s", "1500ms") or a number of seconds.
    dial_timeout: Option<Value>,
}

fn default_prefix() -> String {
    "/berth".to_string()
}

fn default_lease_ttl() -> i64 {
    60
}

/// `dialTimeout`: a Go duration string or a number of seconds.
fn dial_timeout(v: &Value) -> Result<Duration, Error> {
    let field = "store.etcd.dialTimeout";
    let d = match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64),
        Value::String(s) => humantime::parse_duration(s).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        bad(
            field,
            format!("{v} is not a duration (\"5s\", \"1500ms\", or seconds)"),
        )
    })?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(bad(field, format!("{v} is outside 0..1h")));
    }
    Ok(d)
}

impl EtcdConf {
    /// `store.etcd` of network `network`, every setting checked and every
    /// file it names read (code 7 naming the key), before anything is
    /// leased or made. The auth token is kept in `token_dir`.
    fn parse(v: &Value, network: &str, token_dir: &Path) -> Result<EtcdConf, Error> {
        let raw: RawEtcd = cni::gojson::from_value(v).map_err(|e| bad("store.etcd", e))?;
        let mut client = berth_etcd::Options::new(raw.endpoints);
        client.ca_file = raw.ca_file;
        client.cert_file = raw.cert_file;
        client.key_file = raw.key_file;
        client.username = raw.username;
        client.password = raw.password.map(berth_etcd::Secret::new);
        client.password_file = raw.password_file;
        if let Some(t) = &raw.dial_timeout {
            client.dial_timeout = dial_timeout(t)?;
        }
        if client.username.is_some() {
            client.token_file = Some(token_dir.join(format!("{network}.etcd-token")));
        }
        let conf = EtcdConf {
            client,
            prefix: raw.prefix,
            lease_ttl: raw.lease_ttl,
            subnet: raw.subnet,
            subnet6: None,
            subnet_field: "store.etcd.subnet".into(),
        };
        conf.store()?;
        Ok(conf)
    }

    /// The client for this store, made once per process (it follows its
    /// TLS files as they change).
    pub fn store(&self) -> Result<Arc<berth_etcd::Client>, Error> {
        static CLIENTS: Mutex<Vec<(berth_etcd::Options, Arc<berth_etcd::Client>)>> =
            Mutex::new(Vec::new());
        let mut clients = CLIENTS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = clients.iter().find(|(o, _)| *o == self.client) {
            return Ok(c.clone());
        }
        let c = Arc::new(berth_etcd::Client::new(&self.client).map_err(store_error)?);
        clients.push((self.client.clone(), c.clone()));
        Ok(c)
    }
}

/// berth-etcd's error as the plugin's: a setting at fault is code 7 naming
/// its `store.etcd` key, an unreachable store code 11 (try again).
pub fn store_error(e: berth_etcd::Error) -> Error {
    match e {
        berth_etcd::Error::Config { key, msg } => bad(&format!("store.etcd.{key}"), msg),
        e @ berth_etcd::Error::Unavailable(_) => {
            Error::new(Kind::TryAgain, format!("cluster store: {e}"))
        }
    }
}

/// etcd refuses TTLs below its election timeout; an hour is plenty.
const LEASE_TTL_RANGE: std::ops::RangeInclusive<i64> = 3..=3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConf {
    /// The CNI network name (keys in the store are under it).
    pub name: String,
    /// The etcd store; None: the static store. With etcd, `subnet` and
    /// `peers` are filled in from the store (see `resolve`).
    pub etcd: Option<EtcdConf>,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// The IPv6 cluster CIDR and node subnet length (dual stack).
    pub network6: Option<(Ipv6Net, u8)>,
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
    /// `ipMasq` (flannel's `--ip-masq`): traffic from the cluster network
    /// leaving it is masqueraded; between pods it keeps its addresses.
    pub ip_masq: bool,
    /// `hairpinMode` (flannel's conflist sets it): a pod reaches itself
    /// through a Service's address.
    pub hairpin: bool,
    /// `isDefaultGateway` (flannel's conflist sets it): the pods' default
    /// routes go through the node's bridge, not only the cluster
    /// networks'.
    pub default_gateway: bool,
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
    network6: Option<String>,
    subnet_len6: Option<u8>,
    store: Option<Value>,
    data_dir: Option<String>,
    ip_masq: Option<bool>,
    hairpin_mode: Option<bool>,
    is_default_gateway: Option<bool>,
    /// The node's subnets as the orchestrator gave them (kubelet's
    /// podCIDRs, rendered by the runtime into the conflist).
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
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
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn subnet(field: &str, s: &str, network: &Ipv4Net, len: u8) -> Result<Ipv4Net, Error> {
    let n: Ipv4Net = s
        .parse()
        .map_err(|_| bad(field, format!("{s:?} is not an IPv4 CIDR")))?;
    if n.prefix_len() != len || n.trunc() != n {
        return Err(bad(
            field,
            format!("{s} is not a /{len} subnet (subnetLen)"),
        ));
    }
    if !network.contains(&n) {
        return Err(bad(
            field,
            format!("{s} is outside the cluster network {network}"),
        ));
    }
    Ok(n)
}

/// `podCIDRs`: the node's subnets as Kubernetes allocated them, one per
/// family (kubelet's `podCIDRs`, "10.244.3.0/24" and, dual stack,
/// "fd44:0:0:3::/64"). The IPv4 one is a /subnetLen of `network`; the IPv6
/// one, if any, a /subnetLen6 of `network6`.
fn pod_cidrs(
    cidrs: &[String],
    network: &Ipv4Net,
    subnet_len: u8,
    network6: Option<(Ipv6Net, u8)>,
) -> Result<(Ipv4Net, Option<Ipv6Net>), Error> {
    let field = "podCIDRs";
    let mut v4: Option<Ipv4Net> = None;
    let mut v6: Option<Ipv6Net> = None;
    for (i, c) in cidrs.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match c.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(_)) if v4.is_some() => {
                return Err(bad(&at, format!("{c}: a second IPv4 podCIDR")))
            }
            Ok(ipnet::IpNet::V4(_)) => v4 = Some(subnet(&at, c, network, subnet_len)?),
            Ok(ipnet::IpNet::V6(_)) if v6.is_some() => {
                return Err(bad(&at, format!("{c}: a second IPv6 podCIDR")))
            }
            Ok(ipnet::IpNet::V6(n)) => {
                let Some((net6, len6)) = network6 else {
                    return Err(bad(
                        &at,
                        format!("{c} is IPv6, and the network has no network6"),
                    ));
                };
                if n.prefix_len() != len6 || n.trunc() != n || !net6.contains(&n) {
                    return Err(bad(
                        &at,
                        format!("{c} is not a /{len6} subnet of network6 {net6}"),
                    ));
                }
                v6 = Some(n);
            }
            Err(_) => return Err(bad(&at, format!("{c:?} is not a CIDR"))),
        }
    }
    let v4 = v4.ok_or_else(|| {
        bad(
            field,
            format!("{cidrs:?} holds no IPv4 subnet of {network} (the node's podCIDR)"),
        )
    })?;
    Ok((v4, v6))
}

impl OverlayConf {
    /// This node's IPv6 subnet (dual stack only): the one given in
    /// `podCIDRs`, else the one paired with its IPv4 subnet.
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        self.given_subnet6()
            .or_else(|| self.subnet6_of(&self.subnet))
    }

    /// The IPv6 subnet `podCIDRs` gave this node, if any.
    pub fn given_subnet6(&self) -> Option<Ipv6Net> {
        self.etcd.as_ref().and_then(|e| e.subnet6)
    }

    /// The IPv6 subnet paired with the IPv4 node subnet `subnet`: the one
    /// with the same index in `network6`.
    pub fn subnet6_of(&self, subnet: &Ipv4Net) -> Option<Ipv6Net> {
        let (net6, len6) = self.network6?;
        let index = (u32::from(subnet.network()) - u32::from(self.network.network()))
            >> (32 - self.subnet_len);
        let base = u128::from(net6.network()) + (u128::from(index) << (128 - len6));
        Ipv6Net::new(base.into(), len6).ok()
    }

    /// The peer record for node `node` at `underlay` holding `subnet`.
    pub fn peer(&self, node: &str, underlay: IpAddr, subnet: Ipv4Net) -> Peer {
        Peer {
            node: node.to_string(),
            underlay,
            subnet,
            subnet6: self.subnet6_of(&subnet),
            mac: super::datapath::vtep_mac(underlay),
        }
    }

    /// The config object `raw` of the network `name` (a CNI config's
    /// keys, read the way Go's encoding/json reads them).
    pub fn parse(name: &str, raw: &Value) -> Result<OverlayConf, Error> {
        let raw: Raw = cni::gojson::from_value(raw)
            .map_err(|e| Error::new(Kind::Decode, format!("berth-overlay config: {e}")))?;
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
                format!(
                    "{subnet_len} must be longer than the network's /{} and at most 30",
                    network.prefix_len()
                ),
            ));
        }
        let vni = match raw.vni.unwrap_or(1) {
            v @ 1..=0xff_ffff => v as u32,
            v => return Err(bad("vni", format!("{v} is outside 1..16777215"))),
        };
        let port = match raw.port.unwrap_or(i64::from(berth_kernel::VXLAN_PORT)) {
            p @ 1..=65535 => p as u16,
            p => return Err(bad("port", format!("{p} is not a port"))),
        };
        let mtu = match raw.mtu.unwrap_or(0) {
            0 => None,
            m @ 68..=65535 => Some(m as u32),
            m => return Err(bad("mtu", format!("{m} is outside 68..65535"))),
        };
        let network6 = match raw.network6.as_deref().filter(|n| !n.is_empty()) {
            None => {
                if raw.subnet_len6.is_some() {
                    return Err(bad("subnetLen6", "given without network6"));
                }
                None
            }
            Some(n) => {
                let n6: Ipv6Net = n
                    .parse()
                    .map_err(|_| bad("network6", format!("{n:?} is not an IPv6 CIDR")))?;
                let n6 = n6.trunc();
                let len6 = raw.subnet_len6.unwrap_or(64);
                if len6 <= n6.prefix_len() || len6 > 120 {
                    return Err(bad(
                        "subnetLen6",
                        format!(
                            "{len6} must be longer than network6's /{} and at most 120",
                            n6.prefix_len()
                        ),
                    ));
                }
                // Every IPv4 node subnet needs its IPv6 twin.
                if len6 - n6.prefix_len() < subnet_len - network.prefix_len() {
                    return Err(bad(
                        "subnetLen6",
                        format!(
                            "{n6} holds {} /{len6} subnets, fewer than the {} /{subnet_len} node subnets of {network}",
                            1u128 << (len6 - n6.prefix_len()).min(127),
                            1u64 << (subnet_len - network.prefix_len())
                        ),
                    ));
                }
                Some((n6, len6))
            }
        };
        let store = raw
            .store
            .ok_or_else(|| bad("store", "missing ({\"static\": ...} or {\"etcd\": ...})"))?;
        let common = |subnet: Ipv4Net, peers: Vec<Peer>, etcd: Option<EtcdConf>| OverlayConf {
            name: name.to_string(),
            etcd,
            network,
            subnet_len,
            network6,
            vni,
            port,
            iface: raw.iface.clone().filter(|i| !i.is_empty()),
            node: raw
                .node
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(hostname),
            mtu,
            subnet,
            peers,
            data_dir: raw.data_dir.clone(),
            ip_masq: raw.ip_masq.unwrap_or(false),
            hairpin: raw.hairpin_mode.unwrap_or(false),
            default_gateway: raw.is_default_gateway.unwrap_or(false),
        };
        if let Some(e) = store.go_get("etcd") {
            let etcd = EtcdConf::parse(e, name, &super::lease::run_dir())?;
            if !LEASE_TTL_RANGE.contains(&etcd.lease_ttl) {
                return Err(bad(
                    "store.etcd.leaseTTL",
                    format!(
                        "{} is outside {}..{} seconds",
                        etcd.lease_ttl,
                        LEASE_TTL_RANGE.start(),
                        LEASE_TTL_RANGE.end()
                    ),
                ));
            }
            let mut etcd = etcd;
            if let Some(s) = &etcd.subnet {
                subnet("store.etcd.subnet", s, &network, subnet_len)?;
            }
            if let Some(cidrs) = &raw.pod_cidrs {
                let (v4, v6) = pod_cidrs(cidrs, &network, subnet_len, network6)?;
                if let Some(s) = etcd.subnet.as_deref().filter(|s| **s != v4.to_string()) {
                    return Err(bad(
                        "store.etcd.subnet",
                        format!("{s} is not podCIDRs' {v4}: give one or the other"),
                    ));
                }
                etcd.subnet = Some(v4.to_string());
                etcd.subnet6 = v6;
                etcd.subnet_field = "podCIDRs".into();
            }
            // The node's subnet comes from the store; a placeholder until then.
            let first = network
                .subnets(subnet_len)
                .map_err(|e| bad("subnetLen", e))?
                .next()
                .unwrap_or(network);
            return Ok(common(first, Vec::new(), Some(etcd)));
        }
        let st = store
            .go_get("static")
            .ok_or_else(|| bad("store", "needs \"static\" (or \"etcd\")"))?;
        if raw.pod_cidrs.is_some() {
            return Err(bad(
                "podCIDRs",
                "needs the etcd store, where the node announces them (with the static store, give store.static.subnet)",
            ));
        }
        let own = st
            .go_get("subnet")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("store.static.subnet", "missing"))?;
        let own = subnet("store.static.subnet", own, &network, subnet_len)?;
        let raw_peers: Vec<RawPeer> = match st.go_get("peers") {
            None => Vec::new(),
            Some(v) => cni::gojson::from_value(v).map_err(|e| bad("store.static.peers", e))?,
        };
        let mut peers: Vec<Peer> = Vec::new();
        for (i, p) in raw_peers.iter().enumerate() {
            let field = format!("store.static.peers[{i}]");
            let underlay: IpAddr = p.underlay.parse().map_err(|_| {
                bad(
                    &format!("{field}.underlay"),
                    format!("{:?} is not an address", p.underlay),
                )
            })?;
            let s = subnet(&format!("{field}.subnet"), &p.subnet, &network, subnet_len)?;
            if s == own || peers.iter().any(|q| q.subnet == s) {
                return Err(bad(
                    &format!("{field}.subnet"),
                    format!("{s} is already another node's"),
                ));
            }
            let mac = super::datapath::vtep_mac(underlay);
            if let Some(q) = peers.iter().find(|q| q.mac == mac) {
                return Err(bad(
                    &format!("{field}.underlay"),
                    format!("{underlay} gives the VTEP MAC of node {:?} ({}): underlay addresses must differ in their last four bytes", q.node, q.underlay),
                ));
            }
            peers.push(Peer {
                node: p.node.clone(),
                underlay,
                subnet: s,
                subnet6: None,
                mac,
            });
        }
        let conf = common(own, Vec::new(), None);
        let peers = peers
            .iter()
            .map(|p| conf.peer(&p.node, p.underlay, p.subnet))
            .collect();
        Ok(OverlayConf { peers, ..conf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(network6: Option<(&str, u8)>) -> OverlayConf {
        OverlayConf {
            name: "t".into(),
            etcd: None,
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            network6: network6.map(|(n, l)| (n.parse().unwrap(), l)),
            vni: 1,
            port: 4789,
            iface: None,
            node: "n".into(),
            mtu: None,
            subnet: "10.244.5.0/24".parse().unwrap(),
            peers: Vec::new(),
            data_dir: None,
            ip_masq: false,
            hairpin: false,
            default_gateway: false,
        }
    }

    /// An etcd-backed config with `extra` keys (no connection is made).
    fn etcd_conf(extra: serde_json::Value) -> Result<OverlayConf, Error> {
        let mut v = serde_json::json!({
            "network": "10.244.0.0/16", "network6": "fd44::/48",
            "store": {"etcd": {"endpoints": ["http://127.0.0.1:1"]}}
        });
        for (k, x) in extra.as_object().unwrap() {
            if k == "subnet" {
                v["store"]["etcd"]["subnet"] = x.clone();
            } else {
                v[k] = x.clone();
            }
        }
        OverlayConf::parse("t", &v)
    }

    #[test]
    fn pod_cidrs_are_the_nodes_subnets() {
        let c = etcd_conf(serde_json::json!({"podCIDRs": ["10.244.7.0/24", "fd44:0:0:1f::/64"]}))
            .unwrap();
        let e = c.etcd.as_ref().unwrap();
        assert_eq!(e.subnet.as_deref(), Some("10.244.7.0/24"));
        assert_eq!(e.subnet_field, "podCIDRs");
        // The IPv6 podCIDR is the node's, not the one paired by index.
        let own = OverlayConf {
            subnet: "10.244.7.0/24".parse().unwrap(),
            ..c.clone()
        };
        assert_eq!(own.subnet6().unwrap().to_string(), "fd44:0:0:1f::/64");
        // IPv6 first, as a cluster whose first cluster CIDR is IPv6 has it.
        let c = etcd_conf(serde_json::json!({"podCIDRs": ["fd44:0:0:2::/64", "10.244.2.0/24"]}))
            .unwrap();
        assert_eq!(c.etcd.unwrap().subnet.as_deref(), Some("10.244.2.0/24"));
        // The same as store.etcd.subnet is fine.
        assert!(etcd_conf(
            serde_json::json!({"podCIDRs": ["10.244.7.0/24"], "subnet": "10.244.7.0/24"})
        )
        .is_ok());
    }

    #[test]
    fn bad_pod_cidrs_name_the_key() {
        let field = |extra: serde_json::Value| {
            let e = etcd_conf(extra).unwrap_err();
            assert_eq!(e.kind, Kind::Config, "{e}");
            format!("{}: {}", e.field.unwrap_or_default(), e.msg)
        };
        for (cidrs, at) in [
            (serde_json::json!(["10.245.0.0/24"]), "podCIDRs[0]"),
            (serde_json::json!(["10.244.0.0/23"]), "podCIDRs[0]"),
            (
                serde_json::json!(["10.244.1.0/24", "10.244.2.0/24"]),
                "podCIDRs[1]",
            ),
            (serde_json::json!(["fd44::/64"]), "podCIDRs"),
            (
                serde_json::json!(["10.244.1.0/24", "fd45::/64"]),
                "podCIDRs[1]",
            ),
            (
                serde_json::json!(["10.244.1.0/24", "fd44::/56"]),
                "podCIDRs[1]",
            ),
            (serde_json::json!(["nonsense"]), "podCIDRs[0]"),
            (serde_json::json!([]), "podCIDRs"),
        ] {
            let msg = field(serde_json::json!({ "podCIDRs": cidrs }));
            assert!(msg.contains(at), "{cidrs}: {msg}");
        }
        let msg =
            field(serde_json::json!({"podCIDRs": ["10.244.1.0/24"], "subnet": "10.244.2.0/24"}));
        assert!(msg.contains("store.etcd.subnet"), "{msg}");
        // Without network6, an IPv6 podCIDR has no place.
        let v = serde_json::json!({"network": "10.244.0.0/16",
            "podCIDRs": ["10.244.1.0/24", "fd44::/64"],
            "store": {"etcd": {"endpoints": ["http://127.0.0.1:1"]}}});
        let e = OverlayConf::parse("t", &v).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("podCIDRs[1]"));
        assert!(e.msg.contains("network6"), "{e}");
        // The static store has its own subnet key.
        let v = serde_json::json!({"network": "10.244.0.0/16", "podCIDRs": ["10.244.1.0/24"],
            "store": {"static": {"subnet": "10.244.1.0/24"}}});
        let e = OverlayConf::parse("t", &v).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("podCIDRs"));
    }

    #[test]
    fn ipv6_subnet_has_the_ipv4_subnets_index() {
        let c = conf(Some(("fd44::/48", 64)));
        assert_eq!(c.subnet6().unwrap().to_string(), "fd44:0:0:5::/64");
        assert_eq!(
            c.subnet6_of(&"10.244.0.0/24".parse().unwrap())
                .unwrap()
                .to_string(),
            "fd44::/64"
        );
        assert_eq!(
            c.subnet6_of(&"10.244.255.0/24".parse().unwrap())
                .unwrap()
                .to_string(),
            "fd44:0:0:ff::/64"
        );
        let p = c.peer(
            "b",
            "192.0.2.2".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
        );
        assert_eq!(p.subnet6.unwrap().to_string(), "fd44:0:0:7::/64");
        assert_eq!(conf(None).subnet6(), None);
        assert_eq!(
            conf(Some(("fd44:1::/32", 80)))
                .subnet6()
                .unwrap()
                .to_string(),
            "fd44:1:0:0:5::/80"
        );
    }
}
