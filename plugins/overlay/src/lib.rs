//! berth-overlay: containers on different hosts reach each other by
//! address over VXLAN, flannel's L3 model. Each node owns one subnet of the
//! cluster network; its containers sit on a local bridge (berth-bridge's
//! code, run in process with a config derived from this one); one VXLAN
//! device `berth.<vni>` carries traffic to the other nodes, with exactly
//! one FDB entry, one neighbour entry and one onlink route per remote node.
//! Learning is off: nothing is flooded or learnt.
//!
//! Peers come from the static store (`store.static`: this node's subnet
//! and the others', the same list on every node) or from subnet leases in
//! etcd (`store.etcd`, see `resolve`); the agent (`run_agent`) keeps the
//! datapath equal to them. A node's VTEP MAC is derived from its underlay
//! address (02:bf and its last four bytes), so peers know it without
//! exchanging it, and its VTEP addresses are its subnets' network
//! addresses (as flannel's).

pub mod config;
pub mod etcd;

use std::net::IpAddr;

use cni::{CniResult, Command, Error, Plugin, Request};
use config::{OverlayConf, Peer};
use ifconf::kernel;
use ipnet::IpNet;
use net::{AddressOptions, Handle, Link, Route, VxlanOptions};
use serde_json::json;

pub struct OverlayPlugin;

/// VXLAN costs 50 bytes of the underlay MTU over IPv4 (20 IP + 8 UDP + 8
/// VXLAN + 14 inner Ethernet), 70 over IPv6 (40-byte IP header).
const VXLAN_OVERHEAD_V4: u32 = 50;
const VXLAN_OVERHEAD_V6: u32 = 70;

pub fn vxlan_name(vni: u32) -> String {
    format!("berth.{vni}")
}

pub fn bridge_name(vni: u32) -> String {
    format!("bov{vni}")
}

/// The VTEP MAC of the node whose underlay address is `underlay`: 02:bf
/// and the last four bytes of the address (all of an IPv4 address).
pub fn vtep_mac(underlay: IpAddr) -> [u8; 6] {
    let o = match underlay {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0xbf, o[0], o[1], o[2], o[3]]
}

/// `02:bf:…` as text.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// An address a VXLAN tunnel can start from: IPv4, or global IPv6.
fn usable_underlay(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// The underlay link and this node's address on it: `iface`, or the link
/// of the IPv4 default route (else the IPv6 one). The link's IPv4 address
/// is preferred; a link with only IPv6 gives an IPv6 underlay.
fn underlay(h: &mut Handle, conf: &OverlayConf) -> Result<(Link, IpAddr), Error> {
    let link = match &conf.iface {
        Some(name) => h
            .link_by_name(name)
            .map_err(kernel)?
            .ok_or_else(|| Error::config("iface", format!("no link {name:?} on this host")))?,
        None => {
            let routes = h.routes().map_err(kernel)?;
            let default = |v4: bool| {
                routes
                    .iter()
                    .find(|r| {
                        r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4 && r.table.is_none()
                    })
                    .and_then(|r| r.oif)
            };
            let oif = default(true).or_else(|| default(false)).ok_or_else(|| {
                Error::config(
                    "iface",
                    "not given, and there is no default route to take it from",
                )
            })?;
            h.link_by_index(oif)
                .map_err(kernel)?
                .ok_or_else(|| Error::config("iface", "the default route's link vanished"))?
        }
    };
    let addrs: Vec<IpAddr> = h
        .addresses(Some(link.index))
        .map_err(kernel)?
        .iter()
        .map(|a| a.addr.addr())
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.iter().find(|a| usable_underlay(a)))
        .copied()
        .ok_or_else(|| {
            Error::config(
                "iface",
                format!(
                    "{} has no IPv4 or global IPv6 address to use as the VTEP address",
                    link.name
                ),
            )
        })?;
    Ok((link, addr))
}

fn try_again(e: etcd::StoreError) -> Error {
    Error::new(cni::codes::TRY_AGAIN, format!("cluster store: {}", e.0))
}

/// Where the node's subnet from the store is remembered, for DEL and
/// STATUS while the store is unreachable.
fn cache_path(conf: &OverlayConf) -> std::path::PathBuf {
    let dir = std::env::var_os("BERTH_RUN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/berth/overlay".into());
    dir.join(format!("{}.subnet", conf.name))
}

fn cached_subnet(conf: &OverlayConf) -> Option<ipnet::Ipv4Net> {
    std::fs::read_to_string(cache_path(conf))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn subnet_key(conf: &OverlayConf, e: &config::EtcdConf, subnet: &ipnet::Ipv4Net) -> String {
    format!(
        "{}/{}/subnets/{}-{}",
        e.prefix.trim_end_matches('/'),
        conf.name,
        subnet.network(),
        subnet.prefix_len()
    )
}

/// A lease's value: who holds the subnet and where its VTEP is.
fn lease_value(conf: &OverlayConf, underlay: IpAddr, subnet: &ipnet::Ipv4Net) -> String {
    let mut v = json!({
        "node": conf.node, "underlay": underlay.to_string(), "subnet": subnet.to_string(), "vtepMac": mac_text(&vtep_mac(underlay)),
    });
    if let Some(s6) = conf.subnet6_of(subnet) {
        v["subnet6"] = json!(s6.to_string());
    }
    v.to_string()
}

/// The store's view of the network: every node's lease, which etcd lease
/// holds each, and the revision it is from.
struct Leases {
    peers: Vec<(Peer, i64)>,
    revision: i64,
}

fn leases_prefix(conf: &OverlayConf, e: &config::EtcdConf) -> String {
    format!("{}/{}/subnets/", e.prefix.trim_end_matches('/'), conf.name)
}

/// Every node's lease of the network (records that don't parse are
/// somebody else's business and skipped).
fn read_leases(
    conf: &OverlayConf,
    e: &config::EtcdConf,
    store: &etcd::Etcd,
) -> Result<Leases, Error> {
    let range = store
        .get_prefix(&leases_prefix(conf, e))
        .map_err(try_again)?;
    let mut peers = Vec::new();
    for kv in range.kvs {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&kv.value) else {
            continue;
        };
        let (Some(node), Some(underlay), Some(subnet)) = (
            v["node"].as_str(),
            v["underlay"]
                .as_str()
                .and_then(|u| u.parse::<IpAddr>().ok()),
            v["subnet"]
                .as_str()
                .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok()),
        ) else {
            continue;
        };
        if conf.network.contains(&subnet) && subnet.prefix_len() == conf.subnet_len {
            let mut peer = conf.peer(node, underlay, subnet);
            if let Some(mac) = v["vtepMac"].as_str().and_then(parse_mac) {
                peer.mac = mac;
            }
            peers.push((peer, kv.lease));
        }
    }
    Ok(Leases {
        peers,
        revision: range.revision,
    })
}

/// The conf with this node's subnet and its peers filled in from the
/// store (the static store's are already there). With `claim`, a node
/// without a subnet lease takes one (see `claim_subnet`). An unreachable
/// store is code 11; a node name whose lease is held from another underlay
/// address, or a requested subnet another node holds, is code 7.
pub fn resolve(conf: &OverlayConf, claim: bool) -> Result<OverlayConf, Error> {
    let claim_from = match (claim, &conf.etcd) {
        (true, Some(_)) => Some(underlay(&mut Handle::new().map_err(kernel)?, conf)?.1),
        _ => None,
    };
    resolve_held(conf, claim_from).map(|(c, _)| c)
}

/// What the agent keeps of the store between rounds.
#[derive(Clone, Copy)]
struct Held {
    /// The etcd lease this node's subnet is held under.
    lease: i64,
    /// The store revision the peers were read at (watched from there).
    revision: i64,
}

/// `resolve`, and (etcd store) the node's lease and the revision read.
/// `claim_from`: claim a lease if needed, for this node's underlay address.
fn resolve_held(
    conf: &OverlayConf,
    claim_from: Option<IpAddr>,
) -> Result<(OverlayConf, Option<Held>), Error> {
    let Some(e) = &conf.etcd else {
        return Ok((conf.clone(), None));
    };
    let store = etcd::Etcd::new(&e.endpoints).map_err(try_again)?;
    let Leases {
        peers: mut leases,
        mut revision,
    } = read_leases(conf, e, &store)?;
    // Claims on this host are serialized (the agent and an ADD may both
    // find no lease at once and would each take a subnet); the leases are
    // read again under the lock.
    let _claiming = if claim_from.is_some() && !leases.iter().any(|(p, _)| p.node == conf.node) {
        let dir = cache_path(conf)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let lock =
            store::file::lock_dir(&dir).map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
        Leases {
            peers: leases,
            revision,
        } = read_leases(conf, e, &store)?;
        Some(lock)
    } else {
        None
    };
    let mine = own_lease(conf, &store, &leases);
    let (own, lease) = match (mine, claim_from) {
        (Some(m), None) => m,
        (None, None) => {
            return Err(Error::new(
                cni::codes::TRY_AGAIN,
                format!("node {} holds no subnet lease", conf.node),
            ))
        }
        (m, Some(local)) => {
            match m {
                // Two hosts under one name would steal each other's
                // subnet; a host whose address changed gets its name back
                // when the old lease expires.
                Some((m, _)) if m.underlay != local => {
                    return Err(Error::config(
                        "node",
                        format!(
                            "node {:?} already holds {} from underlay {} (this host is {local}): give this host its own node name, or wait up to leaseTTL ({} s) for that lease to expire",
                            conf.node, m.subnet, m.underlay, e.lease_ttl
                        ),
                    ))
                }
                Some((m, lease)) => {
                    if let Some(wanted) = e.subnet.as_deref().and_then(|s| s.parse::<ipnet::Ipv4Net>().ok()) {
                        if wanted != m.subnet {
                            return Err(Error::config(
                                "store.etcd.subnet",
                                format!("{wanted} asked for, but node {:?} holds {}; release it first", conf.node, m.subnet),
                            ));
                        }
                    }
                    (m, lease)
                }
                None => {
                    let peers: Vec<Peer> = leases.iter().map(|(p, _)| p.clone()).collect();
                    claim_subnet(conf, e, &store, &peers, local)?
                }
            }
        }
    };
    if let Some(dir) = cache_path(conf).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = store::file::write_atomic(&cache_path(conf), own.subnet.to_string().as_bytes());
    let peers = leases
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.node != conf.node)
        .collect();
    Ok((
        OverlayConf {
            subnet: own.subnet,
            peers,
            ..conf.clone()
        },
        Some(Held { lease, revision }),
    ))
}

/// This node's lease among `leases`. Should the node hold more than one
/// from this underlay address (claims that raced before they were
/// serialized), it keeps the subnet it last used (else the first) and
/// gives the others back.
fn own_lease(
    conf: &OverlayConf,
    store: &etcd::Etcd,
    leases: &[(Peer, i64)],
) -> Option<(Peer, i64)> {
    let mine: Vec<&(Peer, i64)> = leases.iter().filter(|(p, _)| p.node == conf.node).collect();
    let last = cached_subnet(conf);
    let keep = mine
        .iter()
        .find(|(p, _)| Some(p.subnet) == last)
        .or(mine.first())
        .map(|k| (*k).clone())?;
    if let Some(e) = &conf.etcd {
        for (p, _) in mine
            .iter()
            .filter(|(p, _)| p.subnet != keep.0.subnet && p.underlay == keep.0.underlay)
        {
            let _ = store.delete(&subnet_key(conf, e, &p.subnet));
        }
    }
    Some(keep)
}

/// Takes a subnet no lease holds, with a create-if-absent transaction
/// (two nodes never get the same one): `store.etcd.subnet` if given (code 7
/// naming the holder if another node has it), else the subnet this node
/// last held (its containers may still use it), else the first free one.
fn claim_subnet(
    conf: &OverlayConf,
    e: &config::EtcdConf,
    store: &etcd::Etcd,
    leases: &[Peer],
    local: IpAddr,
) -> Result<(Peer, i64), Error> {
    let holder = |s: &ipnet::Ipv4Net| leases.iter().find(|l| l.subnet == *s);
    let wanted = e
        .subnet
        .as_deref()
        .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok());
    if let Some(h) = wanted.and_then(|w| holder(&w)) {
        return Err(Error::config(
            "store.etcd.subnet",
            format!("{} is held by node {:?} ({})", h.subnet, h.node, h.underlay),
        ));
    }
    // Derived MACs of IPv6 underlays can collide (last four bytes); two
    // VTEPs with one MAC would share FDB entries.
    let mac = vtep_mac(local);
    if let Some(other) = leases.iter().find(|p| p.mac == mac) {
        let why = if other.underlay == local {
            format!(
                "underlay {local} is already node {:?}'s VTEP (one node name per host)",
                other.node
            )
        } else {
            format!(
                "this host's VTEP MAC {} (from underlay {local}) is node {:?}'s (underlay {}): underlay addresses must differ in their last four bytes",
                mac_text(&mac),
                other.node,
                other.underlay
            )
        };
        return Err(Error::config("iface", why));
    }
    let lease = store.grant(e.lease_ttl).map_err(try_again)?;
    let try_one = |s: &ipnet::Ipv4Net| -> Result<bool, Error> {
        store
            .create(&subnet_key(conf, e, s), &lease_value(conf, local, s), lease)
            .map_err(try_again)
    };
    if let Some(wanted) = wanted {
        if try_one(&wanted)? {
            return Ok((conf.peer(&conf.node, local, wanted), lease));
        }
        return Err(Error::config(
            "store.etcd.subnet",
            format!("{wanted} was just taken by another node"),
        ));
    }
    if let Some(last) = cached_subnet(conf)
        .filter(|s| conf.network.contains(s) && s.prefix_len() == conf.subnet_len)
    {
        if holder(&last).is_none() && try_one(&last)? {
            return Ok((conf.peer(&conf.node, local, last), lease));
        }
    }
    let subnets = conf
        .network
        .subnets(conf.subnet_len)
        .map_err(|err| Error::config("subnetLen", err))?;
    for s in subnets.filter(|s| holder(s).is_none()) {
        if try_one(&s)? {
            return Ok((conf.peer(&conf.node, local, s), lease));
        }
    }
    Err(Error::new(
        cni::codes::TRY_AGAIN,
        format!("no free /{} left in {}", conf.subnet_len, conf.network),
    ))
}

/// Renews this node's lease `lease` (a keepalive: no write, so no watch
/// wakes). A lease that no longer exists (expired while the store was
/// away) is replaced: a new one, the same entry put under it. The lease
/// held afterwards.
fn renew_lease(conf: &OverlayConf, lease: i64) -> Result<i64, Error> {
    let Some(e) = &conf.etcd else {
        return Ok(lease);
    };
    let store = etcd::Etcd::new(&e.endpoints).map_err(try_again)?;
    if lease != 0 && store.keepalive(lease).map_err(try_again)? > 0 {
        return Ok(lease);
    }
    let mut h = Handle::new().map_err(kernel)?;
    let (_, local) = underlay(&mut h, conf)?;
    let fresh = store.grant(e.lease_ttl).map_err(try_again)?;
    store
        .put(
            &subnet_key(conf, e, &conf.subnet),
            &lease_value(conf, local, &conf.subnet),
            fresh,
        )
        .map_err(try_again)?;
    Ok(fresh)
}

/// Gives this node's subnet back (the agent's clean shutdown): the other
/// nodes forget it at once instead of after leaseTTL. Only a lease that
/// still names this node is deleted.
fn release_lease(conf: &OverlayConf) -> Result<(), Error> {
    let Some(e) = &conf.etcd else { return Ok(()) };
    let store = etcd::Etcd::new(&e.endpoints).map_err(try_again)?;
    let key = subnet_key(conf, e, &conf.subnet);
    for kv in store.get_prefix(&key).map_err(try_again)?.kvs {
        let holder = serde_json::from_str::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|v| v["node"].as_str().map(str::to_string));
        if kv.key == key && holder.as_deref() == Some(conf.node.as_str()) {
            store.delete(&key).map_err(try_again)?;
        }
    }
    Ok(())
}

/// For DEL, CHECK, GC: the store's view, or the cached subnet (no peers)
/// while the store is unreachable.
fn resolve_or_cached(conf: &OverlayConf) -> Result<OverlayConf, Error> {
    match resolve(conf, false) {
        Ok(c) => Ok(c),
        Err(err) => match cached_subnet(conf) {
            Some(subnet) if conf.etcd.is_some() => Ok(OverlayConf {
                subnet,
                peers: Vec::new(),
                ..conf.clone()
            }),
            _ => Err(err),
        },
    }
}

/// MTU of the overlay's links (VXLAN device, bridge, veths).
fn overlay_mtu(conf: &OverlayConf, underlay: &Link, local: IpAddr) -> u32 {
    let overhead = if local.is_ipv4() {
        VXLAN_OVERHEAD_V4
    } else {
        VXLAN_OVERHEAD_V6
    };
    conf.mtu.unwrap_or(underlay.mtu.saturating_sub(overhead))
}

/// Where each network's cluster CIDRs and VNI are noted on this host, so
/// a second overlay network cannot take an overlapping CIDR or the same
/// VNI (their routes would shadow each other).
fn network_note_path(conf: &OverlayConf) -> std::path::PathBuf {
    cache_path(conf).with_extension("network")
}

/// Refuses a network whose CIDRs overlap, or whose VNI is, another overlay
/// network's on this host (one whose VXLAN device still exists), then
/// notes this one's.
fn claim_network(h: &mut Handle, conf: &OverlayConf) -> Result<(), Error> {
    let note = json!({"network": conf.network.to_string(), "network6": conf.network6.map(|(n, _)| n.to_string()), "vni": conf.vni});
    let mine = network_note_path(conf);
    let dir = mine
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path == mine || path.extension().is_none_or(|x| x != "network") {
            continue;
        }
        let Some(other) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let vni = other["vni"].as_u64().unwrap_or(0) as u32;
        if h.link_by_name(&vxlan_name(vni)).map_err(kernel)?.is_none() {
            continue; // that network is gone from this host
        }
        if vni == conf.vni {
            return Err(Error::config(
                "vni",
                format!("VNI {vni} is overlay network {name:?}'s on this host"),
            ));
        }
        let overlaps4 = other["network"]
            .as_str()
            .and_then(|n| n.parse::<ipnet::Ipv4Net>().ok())
            .filter(|n| n.contains(&conf.network.network()) || conf.network.contains(&n.network()));
        if let Some(n) = overlaps4 {
            return Err(Error::config(
                "network",
                format!(
                    "{} overlaps {n} of overlay network {name:?} (VXLAN {}) on this host",
                    conf.network,
                    vxlan_name(vni)
                ),
            ));
        }
        let overlaps6 = other["network6"]
            .as_str()
            .and_then(|n| n.parse::<ipnet::Ipv6Net>().ok())
            .filter(|n| {
                conf.network6
                    .is_some_and(|(m, _)| n.contains(&m.network()) || m.contains(&n.network()))
            });
        if let Some(n) = overlaps6 {
            return Err(Error::config(
                "network6",
                format!("overlaps {n} of overlay network {name:?} on this host"),
            ));
        }
    }
    let _ = std::fs::create_dir_all(&dir);
    store::file::write_atomic(&mine, note.to_string().as_bytes())
        .map_err(|e| Error::new(cni::codes::IO, e.to_string()))
}

/// Makes the VXLAN device exist (with the node's VTEP addresses) and every
/// peer's entries current. Idempotent; entries are replaced.
fn ensure_datapath(conf: &OverlayConf) -> Result<u32, Error> {
    let mut h = Handle::new().map_err(kernel)?;
    let (up, local) = underlay(&mut h, conf)?;
    ensure_datapath_on(&mut h, conf, &up, local)
}

/// `ensure_datapath` over the underlay link `up`, whose address is `local`.
fn ensure_datapath_on(
    h: &mut Handle,
    conf: &OverlayConf,
    up: &Link,
    local: IpAddr,
) -> Result<u32, Error> {
    let mtu = overlay_mtu(conf, up, local);
    let name = vxlan_name(conf.vni);
    let vx = match h.link_by_name(&name).map_err(kernel)? {
        Some(l) if l.kind.as_deref() == Some("vxlan") => l,
        Some(_) => {
            return Err(Error::config(
                "vni",
                format!("link {name} exists and is not a VXLAN device"),
            ))
        }
        None => {
            let opts = VxlanOptions {
                vni: conf.vni,
                port: conf.port,
                underlay: Some(up.index),
                local: Some(local),
                mtu: Some(mtu),
                mac: Some(vtep_mac(local)),
                learning: false,
            };
            h.add_vxlan(&name, &opts).map_err(kernel)?;
            h.link_by_name(&name)
                .map_err(kernel)?
                .ok_or_else(|| Error::new(cni::codes::KERNEL, format!("{name} vanished")))?
        }
    };
    let have = h.addresses(Some(vx.index)).map_err(kernel)?;
    for vtep in vteps(conf.subnet, conf.subnet6()) {
        let addr = IpNet::new(vtep, if vtep.is_ipv4() { 32 } else { 128 })
            .map_err(|e| Error::config("network", e))?;
        if !have.iter().any(|a| a.addr == addr) {
            // No DAD: the address is ours by lease, and waiting would
            // leave it tentative (unusable) for the first second.
            let opts = AddressOptions {
                nodad: vtep.is_ipv6(),
            };
            h.add_address(vx.index, addr, &opts).map_err(kernel)?;
        }
    }
    h.set_up(vx.index).map_err(kernel)?;
    net::sysctl::write("net/ipv4/ip_forward", "1").map_err(kernel)?;
    if conf.network6.is_some() {
        net::sysctl::write("net/ipv6/conf/all/forwarding", "1").map_err(kernel)?;
    }
    for p in &conf.peers {
        program_peer(h, vx.index, p)?;
    }
    Ok(mtu)
}

/// A node's VTEP addresses: the network address of each of its subnets.
fn vteps(subnet: ipnet::Ipv4Net, subnet6: Option<ipnet::Ipv6Net>) -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(subnet.network())];
    v.extend(subnet6.map(|s| IpAddr::V6(s.network())));
    v
}

/// A peer's routes: each of its subnets via its VTEP address, onlink.
fn peer_routes(vx: u32, p: &Peer) -> Vec<Route> {
    let mut nets = vec![IpNet::V4(p.subnet)];
    nets.extend(p.subnet6.map(IpNet::V6));
    nets.into_iter()
        .map(|n| {
            let mut r = Route::new(n).via(n.network()).dev(vx);
            r.onlink = true;
            r
        })
        .collect()
}

/// One remote node: FDB (its VTEP MAC at its underlay address), a
/// neighbour per VTEP address at that MAC, an onlink route per subnet.
fn program_peer(h: &mut Handle, vx: u32, p: &Peer) -> Result<(), Error> {
    let mac = p.mac;
    h.set_fdb(vx, mac, p.underlay).map_err(kernel)?;
    for vtep in vteps(p.subnet, p.subnet6) {
        h.set_neighbour(vx, vtep, mac).map_err(kernel)?;
    }
    for r in peer_routes(vx, p) {
        h.replace_route(&r).map_err(kernel)?;
    }
    Ok(())
}

/// Removes a remote node's entries (each already gone is fine); its FDB
/// entry only if no peer in `remaining` shares its VTEP MAC (FDB entries
/// are keyed by MAC alone).
fn forget_peer(h: &mut Handle, vx: u32, p: &Peer, remaining: &[Peer]) -> Result<(), Error> {
    for r in peer_routes(vx, p) {
        match h.del_route(&r) {
            // Already gone (no such route).
            Err(e) if e.errno() == Some(libc::ESRCH) => {}
            other => other.map_err(kernel)?,
        }
    }
    for vtep in vteps(p.subnet, p.subnet6) {
        h.del_neighbour(vx, vtep).map_err(kernel)?;
    }
    if remaining.iter().any(|r| r.mac == p.mac) {
        return Ok(());
    }
    h.del_fdb(vx, p.mac).map_err(kernel)
}

/// The agent: keeps the node's datapath equal to the peers of its config:
/// the static store's list in the file (re-read every `interval`), or the
/// etcd store's leases (read again as soon as a watch on them fires). A
/// peer that appears is programmed, one that goes is forgotten (the kernel
/// is only touched when something changed, and every 10 s to repair).
/// With etcd it holds this node's lease, kept alive every third of
/// leaseTTL. When `stop` turns true it gives the lease back and returns;
/// the datapath stays as it is, so containers keep talking to the peers
/// they know.
pub fn run_agent(
    conf_path: &std::path::Path,
    interval: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    use std::time::{Duration, Instant};
    /// Everything is reprogrammed this often even without a change, so
    /// entries removed behind the agent's back come back.
    const RESYNC: Duration = Duration::from_secs(10);
    /// The longest one watch waits: how soon a stop, or a change of the
    /// config file, is noticed with the etcd store.
    const WATCH_SLICE: Duration = Duration::from_secs(1);
    let mut programmed: Vec<Peer> = Vec::new();
    let mut last: Option<(OverlayConf, Instant)> = None;
    let mut renewed: Option<Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut held: Option<Held> = None;
        let round = read_agent_conf(conf_path).and_then(|c| {
            claim_network(&mut Handle::new().map_err(kernel)?, &c)?;
            // The first round, and each renewal, also claims the lease.
            let due = c.etcd.as_ref().is_some_and(|e| {
                renewed.is_none_or(|at| at.elapsed().as_secs_f64() >= e.lease_ttl as f64 / 3.0)
            });
            let claim_from = if due {
                Some(underlay(&mut Handle::new().map_err(kernel)?, &c)?.1)
            } else {
                None
            };
            let (conf, mut h) = resolve_held(&c, claim_from)?;
            if due {
                if let Some(h) = h.as_mut() {
                    h.lease = renew_lease(&conf, h.lease)?;
                }
                renewed = Some(Instant::now());
            }
            held = h;
            Ok(conf)
        });
        let conf = match round {
            Ok(conf) => conf,
            Err(e) => {
                eprintln!("berth-overlay agent: {}: {}", conf_path.display(), e.msg);
                std::thread::sleep(interval);
                continue;
            }
        };
        if last
            .as_ref()
            .is_none_or(|(c, at)| *c != conf || at.elapsed() >= RESYNC)
        {
            let synced = (|| -> Result<(), Error> {
                let _lock =
                    store::host::lock().map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
                let mut h = Handle::new().map_err(kernel)?;
                // The gone first: then programming the current peers
                // restores anything they shared with them.
                if let Some(vx) = h.link_by_name(&vxlan_name(conf.vni)).map_err(kernel)? {
                    for gone in programmed.iter().filter(|p| !conf.peers.contains(p)) {
                        forget_peer(&mut h, vx.index, gone, &conf.peers)?;
                        eprintln!(
                            "berth-overlay agent: peer {} ({}) left",
                            gone.node, gone.subnet
                        );
                    }
                }
                ensure_datapath(&conf)?;
                for new in conf.peers.iter().filter(|p| !programmed.contains(p)) {
                    eprintln!(
                        "berth-overlay agent: peer {} ({}) at {}",
                        new.node, new.subnet, new.underlay
                    );
                }
                programmed = conf.peers.clone();
                Ok(())
            })();
            match synced {
                Ok(()) => last = Some((conf.clone(), Instant::now())),
                Err(e) => {
                    eprintln!("berth-overlay agent: {}", e.msg);
                    last = None;
                }
            }
        }
        // Wait for the next round: a change of the leases (etcd), or the
        // interval (the static store's file; etcd while unreachable).
        let watched = match (&conf.etcd, held) {
            (Some(e), Some(h)) => {
                let renew_in = Duration::from_secs_f64(e.lease_ttl as f64 / 3.0)
                    .saturating_sub(renewed.map(|at| at.elapsed()).unwrap_or_default());
                etcd::Etcd::new(&e.endpoints)
                    .and_then(|store| {
                        store.wait_for_change(
                            &leases_prefix(&conf, e),
                            h.revision,
                            WATCH_SLICE.min(renew_in),
                        )
                    })
                    .is_ok()
            }
            _ => false,
        };
        if !watched {
            std::thread::sleep(interval);
        }
    }
    if let Some((conf, _)) = last.filter(|(c, _)| c.etcd.is_some() && renewed.is_some()) {
        match release_lease(&conf) {
            Ok(()) => eprintln!("berth-overlay agent: stopping; released {}", conf.subnet),
            Err(e) => eprintln!(
                "berth-overlay agent: stopping; lease not released ({}), it expires by itself",
                e.msg
            ),
        }
    }
    Ok(())
}

/// The agent's config: the plugin's own object, or a conflist holding one.
fn read_agent_conf(path: &std::path::Path) -> Result<OverlayConf, Error> {
    let text = std::fs::read(path).map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Error::decode(e.to_string()))?;
    let mut plugin = match v.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list
            .iter()
            .find(|p| p["type"] == "berth-overlay")
            .cloned()
            .ok_or_else(|| Error::config("plugins", "no berth-overlay plugin in the conflist"))?,
        None => v.clone(),
    };
    if plugin.get("name").is_none() {
        plugin["name"] = v.get("name").cloned().unwrap_or_else(|| json!("overlay"));
    }
    parse_conf(&plugin)
}

/// A berth-overlay config object (the plugin's keys, with `name`) outside
/// any CNI call: the agent's file, berthd's overlay networks.
pub fn parse_conf(plugin: &serde_json::Value) -> Result<OverlayConf, Error> {
    let conf = cni::NetConf::parse(
        &serde_json::to_vec(plugin).map_err(|e| Error::decode(e.to_string()))?,
    )?;
    let req = Request {
        command: Command::Status,
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        cni_path: Vec::new(),
        args: Default::default(),
        raw_args: String::new(),
        stdin: Vec::new(),
        version: cni::version::Version::parse("1.1.0")?,
        conf,
    };
    OverlayConf::parse(&req)
}

/// Makes this node part of the overlay: refuses a network that conflicts
/// with another on this host (before leasing anything), takes or finds the
/// node's subnet lease, and makes the VXLAN device and every peer's
/// entries. The conf with the node's subnet and peers, and the overlay
/// MTU.
pub fn join_node(conf: &OverlayConf) -> Result<(OverlayConf, u32), Error> {
    let mut h = Handle::new().map_err(kernel)?;
    claim_network(&mut h, conf)?;
    // Looked up once for the lease and the datapath (route and address dumps).
    let (up, local) = underlay(&mut h, conf)?;
    let (conf, _) = resolve_held(conf, Some(local))?;
    let mtu = {
        // The VXLAN device and peer entries are shared by every ADD on
        // the node (and berthd's overlay networks).
        let _lock = store::host::lock().map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
        ensure_datapath_on(&mut h, &conf, &up, local)?
    };
    Ok((conf, mtu))
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
                .ok_or_else(|| Error::new(cni::codes::TRY_AGAIN, "no lease"))
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

/// The request berth-bridge gets: this config turned into a bridge
/// network on the node's subnet, routes to the cluster network.
fn bridge_request(req: &Request, conf: &OverlayConf, mtu: u32) -> Result<Request, Error> {
    let mut ipam = json!({
        "type": "berth-ipam",
        "ranges": [[{"subnet": conf.subnet.to_string()}]],
        "routes": [{"dst": conf.network.to_string()}],
    });
    if let (Some((net6, _)), Some(sub6)) = (conf.network6, conf.subnet6()) {
        ipam["ranges"]
            .as_array_mut()
            .into_iter()
            .for_each(|r| r.push(json!([{"subnet": sub6.to_string()}])));
        ipam["routes"]
            .as_array_mut()
            .into_iter()
            .for_each(|r| r.push(json!({"dst": net6.to_string()})));
    }
    if let Some(d) = &conf.data_dir {
        ipam["dataDir"] = json!(d);
    }
    let mut c = json!({
        "cniVersion": req.conf.cni_version,
        "name": req.conf.name,
        "type": "berth-bridge",
        "bridge": bridge_name(conf.vni),
        "isGateway": true,
        "ipMasq": false,
        "mtu": mtu,
        // Other nodes' containers connect in through the VXLAN device.
        "uplinks": [vxlan_name(conf.vni)],
        "ipam": ipam,
    });
    for key in [
        "runtimeConfig",
        "args",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    ] {
        if let Some(v) = req.conf.raw.get(key) {
            c[key] = v.clone();
        }
    }
    let stdin = serde_json::to_vec(&c).map_err(|e| Error::decode(e.to_string()))?;
    let conf = cni::NetConf::parse(&stdin)?;
    Ok(Request {
        conf,
        stdin,
        ..req.clone()
    })
}

/// The overlay MTU without touching anything (DEL, CHECK, GC, STATUS).
fn current_mtu(conf: &OverlayConf) -> u32 {
    Handle::new()
        .ok()
        .and_then(|mut h| underlay(&mut h, conf).ok())
        .map(|(l, local)| overlay_mtu(conf, &l, local))
        .unwrap_or(1450)
}

fn delegate(
    req: &Request,
    conf: &OverlayConf,
    command: Command,
) -> Result<Option<CniResult>, Error> {
    let breq = bridge_request(req, conf, current_mtu(conf))?;
    let bridge = berth_bridge::BridgePlugin;
    match command {
        Command::Del => bridge.del(&breq).map(|_| None),
        Command::Check => bridge.check(&breq).map(|_| None),
        Command::Gc => bridge.gc(&breq).map(|_| None),
        _ => bridge.status(&breq).map(|_| None),
    }
}

impl Plugin for OverlayPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let (conf, mtu) = join_node(&OverlayConf::parse(req)?)?;
        berth_bridge::BridgePlugin.add(&bridge_request(req, &conf, mtu)?)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&OverlayConf::parse(req)?)?;
        delegate(req, &conf, Command::Del).map(|_| ())
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&OverlayConf::parse(req)?)?;
        let mut h = Handle::new().map_err(kernel)?;
        let name = vxlan_name(conf.vni);
        if h.link_by_name(&name).map_err(kernel)?.is_none() {
            return Err(ifconf::check_failed(format!(
                "VXLAN device {name} is missing"
            )));
        }
        let routes = h.routes().map_err(kernel)?;
        for p in &conf.peers {
            for want in peer_routes(0, p) {
                if !routes.iter().any(|r| r.dst == want.dst) {
                    return Err(ifconf::check_failed(format!(
                        "no route to node {}'s subnet {}",
                        p.node, want.dst
                    )));
                }
            }
        }
        delegate(req, &conf, Command::Check).map(|_| ())
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let parsed = OverlayConf::parse(req)?;
        // Unreachable store: fine while this node holds a lease (its
        // containers keep working), 50 when it holds none.
        let conf = match resolve(&parsed, false) {
            Ok(c) => c,
            Err(e) if e.code == cni::codes::TRY_AGAIN => match cached_subnet(&parsed) {
                Some(subnet) => OverlayConf {
                    subnet,
                    peers: Vec::new(),
                    ..parsed.clone()
                },
                None => {
                    return Err(Error::new(
                        cni::codes::NOT_AVAILABLE,
                        format!("{}; this node holds no subnet lease", e.msg),
                    ))
                }
            },
            Err(e) => return Err(e),
        };
        delegate(req, &conf, Command::Status).map(|_| ())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&OverlayConf::parse(req)?)?;
        delegate(req, &conf, Command::Gc).map(|_| ())
    }

    fn about(&self) -> String {
        format!(
            "berth-overlay {}: multi-host VXLAN networks (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert_eq!(vxlan_name(16_777_215), "berth.16777215");
        assert!(vxlan_name(16_777_215).len() <= 15);
        assert_eq!(bridge_name(42), "bov42");
        assert_eq!(
            vtep_mac("192.0.2.7".parse().unwrap()),
            [0x02, 0xbf, 192, 0, 2, 7]
        );
        assert_eq!(
            vtep_mac("2001:db8::a:b0c:d".parse().unwrap()),
            [0x02, 0xbf, 0x0b, 0x0c, 0x00, 0x0d]
        );
        assert_eq!(mac_text(&[0x02, 0xbf, 192, 0, 2, 7]), "02:bf:c0:00:02:07");
        assert_eq!(
            parse_mac("02:bf:c0:00:02:07"),
            Some([0x02, 0xbf, 192, 0, 2, 7])
        );
        assert_eq!(parse_mac("02:bf:c0"), None);
    }
}
