//! Subnet leases: which subnet this node owns and who the peers are, from
//! the static store or from leases in etcd (claimed, renewed, released),
//! with the last known subnet cached for when etcd is unreachable.

use std::net::IpAddr;

use crate::kernel;
use crate::{Error, Kind};
use berth_kernel::Handle;
use serde_json::json;

use super::config::{self, store_error as try_again, OverlayConf, Peer};
use super::datapath::{mac_text, parse_mac, underlay, vtep_mac};
use berth_etcd::Client as Store;

/// Where the overlay keeps what it knows between processes: each
/// network's last subnet and its etcd auth token.
pub fn run_dir() -> std::path::PathBuf {
    std::env::var_os("BERTH_RUN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/berth/overlay".into())
}

/// Where the node's subnet from the store is remembered, for DEL and
/// STATUS while the store is unreachable.
pub fn cache_path(conf: &OverlayConf) -> std::path::PathBuf {
    run_dir().join(format!("{}.subnet", conf.name))
}

pub fn cached_subnet(conf: &OverlayConf) -> Option<ipnet::Ipv4Net> {
    std::fs::read_to_string(cache_path(conf))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn subnet_key(conf: &OverlayConf, e: &config::EtcdConf, subnet: &ipnet::Ipv4Net) -> String {
    format!(
        "{}/{}/subnets/{}-{}",
        e.prefix.trim_end_matches('/'),
        conf.name,
        subnet.network(),
        subnet.prefix_len()
    )
}

/// A lease's value: who holds the subnet and where its VTEP is.
pub fn lease_value(conf: &OverlayConf, underlay: IpAddr, subnet: &ipnet::Ipv4Net) -> String {
    let mut v = json!({
        "node": conf.node, "underlay": underlay.to_string(), "subnet": subnet.to_string(), "vtepMac": mac_text(&vtep_mac(underlay)),
    });
    if let Some(s6) = conf.given_subnet6().or_else(|| conf.subnet6_of(subnet)) {
        v["subnet6"] = json!(s6.to_string());
    }
    v.to_string()
}

/// The store's view of the network: every node's lease, which etcd lease
/// holds each, and the revision it is from.
pub struct Leases {
    pub peers: Vec<(Peer, i64)>,
    pub revision: i64,
}

pub fn leases_prefix(conf: &OverlayConf, e: &config::EtcdConf) -> String {
    format!("{}/{}/subnets/", e.prefix.trim_end_matches('/'), conf.name)
}

/// Every node's lease of the network (records that don't parse are
/// somebody else's business and skipped).
pub fn read_leases(
    conf: &OverlayConf,
    e: &config::EtcdConf,
    store: &Store,
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
            // A node given its IPv6 podCIDR announces it: it need not be
            // the one paired with its IPv4 subnet.
            if let (Some((net6, len6)), Some(s6)) = (
                conf.network6,
                v["subnet6"]
                    .as_str()
                    .and_then(|s| s.parse::<ipnet::Ipv6Net>().ok()),
            ) {
                if net6.contains(&s6) && s6.prefix_len() == len6 {
                    peer.subnet6 = Some(s6);
                }
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
pub struct Held {
    /// The etcd lease this node's subnet is held under.
    pub lease: i64,
    /// The store revision the peers were read at (watched from there).
    pub revision: i64,
}

/// `resolve`, and (etcd store) the node's lease and the revision read.
/// `claim_from`: claim a lease if needed, for this node's underlay address.
pub fn resolve_held(
    conf: &OverlayConf,
    claim_from: Option<IpAddr>,
) -> Result<(OverlayConf, Option<Held>), Error> {
    let Some(e) = &conf.etcd else {
        return Ok((conf.clone(), None));
    };
    let store = e.store()?;
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
        let lock = store::file::lock_dir(&dir).map_err(|e| Error::new(Kind::Io, e.to_string()))?;
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
                Kind::TryAgain,
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
                                &e.subnet_field,
                                format!("{wanted} asked for, but node {:?} holds {}; release it first", conf.node, m.subnet),
                            ));
                        }
                    }
                    if let Some(wanted6) = e.subnet6.filter(|w| Some(*w) != m.subnet6) {
                        return Err(Error::config(
                            &e.subnet_field,
                            format!(
                                "{wanted6} asked for, but node {:?} holds {}; release it first",
                                conf.node,
                                m.subnet6.map(|s| s.to_string()).unwrap_or_else(|| "no IPv6 subnet".into())
                            ),
                        ));
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
pub fn own_lease(conf: &OverlayConf, store: &Store, leases: &[(Peer, i64)]) -> Option<(Peer, i64)> {
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
pub fn claim_subnet(
    conf: &OverlayConf,
    e: &config::EtcdConf,
    store: &Store,
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
            &e.subnet_field,
            format!("{} is held by node {:?} ({})", h.subnet, h.node, h.underlay),
        ));
    }
    if let Some((w6, h)) = e.subnet6.and_then(|w6| {
        leases
            .iter()
            .find(|l| l.subnet6 == Some(w6))
            .map(|h| (w6, h))
    }) {
        return Err(Error::config(
            &e.subnet_field,
            format!("{w6} is held by node {:?} ({})", h.node, h.underlay),
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
            let mut own = conf.peer(&conf.node, local, wanted);
            if e.subnet6.is_some() {
                own.subnet6 = e.subnet6;
            }
            return Ok((own, lease));
        }
        return Err(Error::config(
            &e.subnet_field,
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
        Kind::TryAgain,
        format!("no free /{} left in {}", conf.subnet_len, conf.network),
    ))
}

/// Renews this node's lease `lease` (a keepalive: no write, so no watch
/// wakes). A lease that no longer exists (expired while the store was
/// away) is replaced: a new one, the same entry put under it. The lease
/// held afterwards.
pub fn renew_lease(conf: &OverlayConf, lease: i64) -> Result<i64, Error> {
    let Some(e) = &conf.etcd else {
        return Ok(lease);
    };
    let store = e.store()?;
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
pub fn release_lease(conf: &OverlayConf) -> Result<(), Error> {
    let Some(e) = &conf.etcd else { return Ok(()) };
    let store = e.store()?;
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
pub fn resolve_or_cached(conf: &OverlayConf) -> Result<OverlayConf, Error> {
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
