//! berth-overlay: containers on different hosts reach each other by
//! address over VXLAN, flannel's L3 model. Each node owns one subnet of the
//! cluster network; its containers sit on a local bridge (berth-bridge's
//! code, run in process with a config derived from this one); one VXLAN
//! device `berth.<vni>` carries traffic to the other nodes, with exactly
//! one FDB entry, one neighbour entry and one onlink route per remote node.
//! Learning is off: nothing is flooded or learnt.
//!
//! This increment serves the static store (`store.static`: this node's
//! subnet and its peers, the same list on every node); the etcd store and
//! the agent come next. A node's VTEP MAC is derived from its underlay
//! IPv4 address (02:bf:a:b:c:d), so peers know it without exchanging it,
//! and its VTEP address is its subnet's network address (as flannel's).

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

/// VXLAN over IPv4 costs 50 bytes of the underlay MTU.
const VXLAN_OVERHEAD: u32 = 50;
/// berth's host-wide lock: the VXLAN device and peer entries are shared by
/// every ADD on the node.
const LOCK_DIR: &str = "/run/berth";

pub fn vxlan_name(vni: u32) -> String {
    format!("berth.{vni}")
}

pub fn bridge_name(vni: u32) -> String {
    format!("bov{vni}")
}

/// The VTEP MAC of the node whose underlay address is `underlay`.
pub fn vtep_mac(underlay: IpAddr) -> Result<[u8; 6], Error> {
    match underlay {
        IpAddr::V4(a) => {
            let o = a.octets();
            Ok([0x02, 0xbf, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => Err(Error::config("underlay", "IPv6 underlays are not served yet")),
    }
}

/// The underlay link: `iface`, or the link of the default route.
fn underlay(h: &mut Handle, conf: &OverlayConf) -> Result<(Link, IpAddr), Error> {
    let link = match &conf.iface {
        Some(name) => h
            .link_by_name(name)
            .map_err(kernel)?
            .ok_or_else(|| Error::config("iface", format!("no link {name:?} on this host")))?,
        None => {
            let routes = h.routes().map_err(kernel)?;
            let oif = routes
                .iter()
                .find(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() && r.table.is_none())
                .and_then(|r| r.oif)
                .ok_or_else(|| Error::config("iface", "not given, and there is no IPv4 default route to take it from"))?;
            h.link_by_index(oif).map_err(kernel)?.ok_or_else(|| Error::config("iface", "the default route's link vanished"))?
        }
    };
    let addr = h
        .addresses(Some(link.index))
        .map_err(kernel)?
        .iter()
        .map(|a| a.addr.addr())
        .find(|a| a.is_ipv4())
        .ok_or_else(|| Error::config("iface", format!("{} has no IPv4 address to use as the VTEP address", link.name)))?;
    Ok((link, addr))
}

fn try_again(e: etcd::StoreError) -> Error {
    Error::new(cni::codes::TRY_AGAIN, format!("cluster store: {}", e.0))
}

/// Where the node's subnet from the store is remembered, for DEL and
/// STATUS while the store is unreachable.
fn cache_path(conf: &OverlayConf) -> std::path::PathBuf {
    let dir = std::env::var_os("BERTH_RUN_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/run/berth/overlay".into());
    dir.join(format!("{}.subnet", conf.name))
}

fn cached_subnet(conf: &OverlayConf) -> Option<ipnet::Ipv4Net> {
    std::fs::read_to_string(cache_path(conf)).ok()?.trim().parse().ok()
}

fn subnet_key(conf: &OverlayConf, e: &config::EtcdConf, subnet: &ipnet::Ipv4Net) -> String {
    format!("{}/{}/subnets/{}-{}", e.prefix.trim_end_matches('/'), conf.name, subnet.network(), subnet.prefix_len())
}

/// The conf with this node's subnet and its peers filled in from the
/// store (the static store's are already there). With `claim`, a node
/// without a subnet lease takes the first free subnet, and a lease whose
/// underlay address changed is rewritten. An unreachable store is code 11.
pub fn resolve(conf: &OverlayConf, claim: bool) -> Result<OverlayConf, Error> {
    let Some(e) = &conf.etcd else { return Ok(conf.clone()) };
    let store = etcd::Etcd::new(&e.endpoints).map_err(try_again)?;
    let prefix = format!("{}/{}/subnets/", e.prefix.trim_end_matches('/'), conf.name);
    let mut leases: Vec<Peer> = Vec::new();
    for (_, v) in store.get_prefix(&prefix).map_err(try_again)? {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&v) else { continue };
        let (Some(node), Some(underlay), Some(subnet)) = (
            v["node"].as_str(),
            v["underlay"].as_str().and_then(|u| u.parse::<IpAddr>().ok()),
            v["subnet"].as_str().and_then(|s| s.parse::<ipnet::Ipv4Net>().ok()),
        ) else {
            continue;
        };
        leases.push(Peer { node: node.to_string(), underlay, subnet });
    }
    let mine = leases.iter().find(|p| p.node == conf.node).cloned();
    let own = match mine {
        Some(m) if !claim => m,
        _ if !claim => return Err(Error::new(cni::codes::TRY_AGAIN, format!("node {} holds no subnet lease", conf.node))),
        m => {
            let mut h = Handle::new().map_err(kernel)?;
            let (_, local) = underlay(&mut h, conf)?;
            match m {
                Some(m) if m.underlay == local => m,
                Some(m) => {
                    let lease = store.grant(etcd::LEASE_TTL).map_err(try_again)?;
                    let value = json!({"node": conf.node, "underlay": local.to_string(), "subnet": m.subnet.to_string()}).to_string();
                    store.put(&subnet_key(conf, e, &m.subnet), &value, lease).map_err(try_again)?;
                    Peer { underlay: local, ..m }
                }
                None => claim_subnet(conf, e, &store, &leases, local)?,
            }
        }
    };
    if let Some(dir) = cache_path(conf).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = store::file::write_atomic(&cache_path(conf), own.subnet.to_string().as_bytes());
    let peers = leases.into_iter().filter(|p| p.node != conf.node).collect();
    Ok(OverlayConf { subnet: own.subnet, peers, ..conf.clone() })
}

/// Takes the first subnet of the cluster network no lease holds (a
/// create-if-absent transaction: two nodes never get the same one).
fn claim_subnet(conf: &OverlayConf, e: &config::EtcdConf, store: &etcd::Etcd, leases: &[Peer], local: IpAddr) -> Result<Peer, Error> {
    let lease = store.grant(etcd::LEASE_TTL).map_err(try_again)?;
    let subnets = conf.network.subnets(conf.subnet_len).map_err(|err| Error::config("subnetLen", err))?;
    for s in subnets.filter(|s| !leases.iter().any(|l| l.subnet == *s)) {
        let value = json!({"node": conf.node, "underlay": local.to_string(), "subnet": s.to_string()}).to_string();
        if store.create(&subnet_key(conf, e, &s), &value, lease).map_err(try_again)? {
            return Ok(Peer { node: conf.node.clone(), underlay: local, subnet: s });
        }
    }
    Err(Error::new(cni::codes::TRY_AGAIN, format!("no free /{} left in {}", conf.subnet_len, conf.network)))
}

/// Renews this node's lease: a new lease, the same entry put under it (the
/// old lease then expires holding nothing).
fn renew_lease(conf: &OverlayConf) -> Result<(), Error> {
    let Some(e) = &conf.etcd else { return Ok(()) };
    let store = etcd::Etcd::new(&e.endpoints).map_err(try_again)?;
    let mut h = Handle::new().map_err(kernel)?;
    let (_, local) = underlay(&mut h, conf)?;
    let lease = store.grant(etcd::LEASE_TTL).map_err(try_again)?;
    let value = json!({"node": conf.node, "underlay": local.to_string(), "subnet": conf.subnet.to_string()}).to_string();
    store.put(&subnet_key(conf, e, &conf.subnet), &value, lease).map_err(try_again)
}

/// For DEL, CHECK, GC: the store's view, or the cached subnet (no peers)
/// while the store is unreachable.
fn resolve_or_cached(conf: &OverlayConf) -> Result<OverlayConf, Error> {
    match resolve(conf, false) {
        Ok(c) => Ok(c),
        Err(err) => match cached_subnet(conf) {
            Some(subnet) if conf.etcd.is_some() => Ok(OverlayConf { subnet, peers: Vec::new(), ..conf.clone() }),
            _ => Err(err),
        },
    }
}

/// MTU of the overlay's links (VXLAN device, bridge, veths).
fn overlay_mtu(conf: &OverlayConf, underlay: &Link) -> u32 {
    conf.mtu.unwrap_or(underlay.mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// Makes the VXLAN device exist (with the node's VTEP address) and every
/// peer's entries current. Idempotent; entries are replaced.
fn ensure_datapath(conf: &OverlayConf) -> Result<u32, Error> {
    let mut h = Handle::new().map_err(kernel)?;
    let (up, local) = underlay(&mut h, conf)?;
    let mtu = overlay_mtu(conf, &up);
    let name = vxlan_name(conf.vni);
    let vx = match h.link_by_name(&name).map_err(kernel)? {
        Some(l) if l.kind.as_deref() == Some("vxlan") => l,
        Some(_) => return Err(Error::config("vni", format!("link {name} exists and is not a VXLAN device"))),
        None => {
            let opts = VxlanOptions {
                vni: conf.vni,
                port: conf.port,
                underlay: Some(up.index),
                local: Some(local),
                mtu: Some(mtu),
                mac: Some(vtep_mac(local)?),
                learning: false,
            };
            h.add_vxlan(&name, &opts).map_err(kernel)?;
            h.link_by_name(&name).map_err(kernel)?.ok_or_else(|| Error::new(cni::codes::KERNEL, format!("{name} vanished")))?
        }
    };
    let vtep = IpNet::new(IpAddr::V4(conf.subnet.network()), 32).map_err(|e| Error::config("store.static.subnet", e))?;
    if !h.addresses(Some(vx.index)).map_err(kernel)?.iter().any(|a| a.addr == vtep) {
        h.add_address(vx.index, vtep, &AddressOptions::default()).map_err(kernel)?;
    }
    h.set_up(vx.index).map_err(kernel)?;
    net::sysctl::write("net/ipv4/ip_forward", "1").map_err(kernel)?;
    for p in &conf.peers {
        program_peer(&mut h, vx.index, p)?;
    }
    Ok(mtu)
}

/// Removes a remote node's entries (each already gone is fine).
fn forget_peer(h: &mut Handle, vx: u32, p: &Peer) -> Result<(), Error> {
    let mac = vtep_mac(p.underlay)?;
    let vtep = IpAddr::V4(p.subnet.network());
    let mut r = Route::new(IpNet::V4(p.subnet)).via(vtep).dev(vx);
    r.onlink = true;
    match h.del_route(&r) {
        // Already gone (no such route).
        Err(e) if e.errno() == Some(libc::ESRCH) => {}
        other => other.map_err(kernel)?,
    }
    h.del_neighbour(vx, vtep).map_err(kernel)?;
    h.del_fdb(vx, mac).map_err(kernel)
}

/// The agent: keeps the node's datapath equal to the config file's peers,
/// re-reading it every `interval`: a peer added to the file is programmed,
/// a peer removed from it is forgotten, within one interval (the kernel is
/// only touched when the file changed, and every 10 s to repair). Runs
/// until killed; the datapath stays as it is when it stops.
pub fn run_agent(conf_path: &std::path::Path, interval: std::time::Duration) -> Result<(), Error> {
    /// Everything is reprogrammed this often even without a change, so
    /// entries removed behind the agent's back come back.
    const RESYNC: std::time::Duration = std::time::Duration::from_secs(10);
    /// The node's lease is renewed this often (a third of its TTL).
    const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs((etcd::LEASE_TTL / 3) as u64);
    let mut programmed: Vec<Peer> = Vec::new();
    let mut last: Option<(OverlayConf, std::time::Instant)> = None;
    let mut renewed: Option<std::time::Instant> = None;
    loop {
        let conf = read_agent_conf(conf_path).and_then(|c| {
            if c.etcd.is_some() && renewed.is_none_or(|at| at.elapsed() >= LEASE_RENEW) {
                let claimed = resolve(&c, true)?;
                renew_lease(&claimed)?;
                renewed = Some(std::time::Instant::now());
                Ok(claimed)
            } else {
                resolve(&c, false)
            }
        });
        match conf {
            Ok(conf) if last.as_ref().is_some_and(|(c, at)| *c == conf && at.elapsed() < RESYNC) => {}
            Ok(conf) => {
                let synced = (|| -> Result<(), Error> {
                    let _lock = store::file::lock_dir(std::path::Path::new(LOCK_DIR))
                        .map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
                    ensure_datapath(&conf)?;
                    let mut h = Handle::new().map_err(kernel)?;
                    let vx = h
                        .link_by_name(&vxlan_name(conf.vni))
                        .map_err(kernel)?
                        .ok_or_else(|| Error::new(cni::codes::KERNEL, "VXLAN device vanished"))?;
                    for gone in programmed.iter().filter(|p| !conf.peers.contains(p)) {
                        forget_peer(&mut h, vx.index, gone)?;
                        eprintln!("berth-overlay agent: peer {} ({}) left", gone.node, gone.subnet);
                    }
                    for new in conf.peers.iter().filter(|p| !programmed.contains(p)) {
                        eprintln!("berth-overlay agent: peer {} ({}) at {}", new.node, new.subnet, new.underlay);
                    }
                    programmed = conf.peers.clone();
                    Ok(())
                })();
                match synced {
                    Ok(()) => last = Some((conf, std::time::Instant::now())),
                    Err(e) => {
                        eprintln!("berth-overlay agent: {}", e.msg);
                        last = None;
                    }
                }
            }
            Err(e) => eprintln!("berth-overlay agent: {}: {}", conf_path.display(), e.msg),
        }
        std::thread::sleep(interval);
    }
}

/// The agent's config: the plugin's own object, or a conflist holding one.
fn read_agent_conf(path: &std::path::Path) -> Result<OverlayConf, Error> {
    let text = std::fs::read(path).map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::decode(e.to_string()))?;
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
    let conf = cni::NetConf::parse(&serde_json::to_vec(&plugin).map_err(|e| Error::decode(e.to_string()))?)?;
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

/// One remote node: FDB (its VTEP MAC at its underlay address), neighbour
/// (its VTEP address at that MAC), onlink route to its subnet.
fn program_peer(h: &mut Handle, vx: u32, p: &Peer) -> Result<(), Error> {
    let mac = vtep_mac(p.underlay)?;
    let vtep = IpAddr::V4(p.subnet.network());
    h.set_fdb(vx, mac, p.underlay).map_err(kernel)?;
    h.set_neighbour(vx, vtep, mac).map_err(kernel)?;
    let mut r = Route::new(IpNet::V4(p.subnet)).via(vtep).dev(vx);
    r.onlink = true;
    h.replace_route(&r).map_err(kernel)
}

/// The request berth-bridge gets: this config turned into a bridge
/// network on the node's subnet, routes to the cluster network.
fn bridge_request(req: &Request, conf: &OverlayConf, mtu: u32) -> Result<Request, Error> {
    let mut ipam = json!({
        "type": "berth-ipam",
        "ranges": [[{"subnet": conf.subnet.to_string()}]],
        "routes": [{"dst": conf.network.to_string()}],
    });
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
        "ipam": ipam,
    });
    for key in ["runtimeConfig", "args", "prevResult", "cni.dev/valid-attachments", "cni.dev/attachments"] {
        if let Some(v) = req.conf.raw.get(key) {
            c[key] = v.clone();
        }
    }
    let stdin = serde_json::to_vec(&c).map_err(|e| Error::decode(e.to_string()))?;
    let conf = cni::NetConf::parse(&stdin)?;
    Ok(Request { conf, stdin, ..req.clone() })
}

/// The overlay MTU without touching anything (DEL, CHECK, GC, STATUS).
fn current_mtu(conf: &OverlayConf) -> u32 {
    Handle::new()
        .ok()
        .and_then(|mut h| underlay(&mut h, conf).ok())
        .map(|(l, _)| overlay_mtu(conf, &l))
        .unwrap_or(1450)
}

fn delegate(req: &Request, conf: &OverlayConf, command: Command) -> Result<Option<CniResult>, Error> {
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
        let conf = resolve(&OverlayConf::parse(req)?, true)?;
        let mtu = {
            let _lock = store::file::lock_dir(std::path::Path::new(LOCK_DIR))
                .map_err(|e| Error::new(cni::codes::IO, e.to_string()))?;
            ensure_datapath(&conf)?
        };
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
            return Err(ifconf::check_failed(format!("VXLAN device {name} is missing")));
        }
        let routes = h.routes().map_err(kernel)?;
        for p in &conf.peers {
            if !routes.iter().any(|r| r.dst == IpNet::V4(p.subnet)) {
                return Err(ifconf::check_failed(format!("no route to node {}'s subnet {}", p.node, p.subnet)));
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
                Some(subnet) => OverlayConf { subnet, peers: Vec::new(), ..parsed.clone() },
                None => return Err(Error::new(cni::codes::NOT_AVAILABLE, format!("{}; this node holds no subnet lease", e.msg))),
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
        format!("berth-overlay {}: multi-host VXLAN networks (CNI 0.1.0 - 1.1.0)", env!("CARGO_PKG_VERSION"))
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
        assert_eq!(vtep_mac("192.0.2.7".parse().unwrap()).unwrap(), [0x02, 0xbf, 192, 0, 2, 7]);
        assert!(vtep_mac("2001:db8::1".parse().unwrap()).is_err());
    }
}
