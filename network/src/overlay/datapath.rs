//! The node's datapath: the VXLAN device, its MTU, the names and MACs
//! derived from the VNI and underlay, and one FDB entry, neighbour entry
//! and onlink route per remote node.

use std::net::IpAddr;

use crate::kernel;
use crate::{Error, Kind};
use berth_kernel::{AddressOptions, Handle, Link, Route, VxlanOptions};
use ipnet::IpNet;
use serde_json::json;

use super::config::{OverlayConf, Peer};
use super::lease::cache_path;

/// VXLAN costs 50 bytes of the underlay MTU over IPv4 (20 IP + 8 UDP + 8
/// VXLAN + 14 inner Ethernet), 70 over IPv6 (40-byte IP header).
pub const VXLAN_OVERHEAD_V4: u32 = 50;

pub const VXLAN_OVERHEAD_V6: u32 = 70;

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

pub use berth_kernel::{mac_text, parse_mac};

/// An address a VXLAN tunnel can start from: IPv4, or global IPv6.
pub fn usable_underlay(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// The underlay link and this node's address on it: `iface`, or the link
/// of the IPv4 default route (else the IPv6 one). The link's IPv4 address
/// is preferred; a link with only IPv6 gives an IPv6 underlay.
pub fn underlay(h: &mut Handle, conf: &OverlayConf) -> Result<(Link, IpAddr), Error> {
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

/// MTU of the overlay's links (VXLAN device, bridge, veths).
pub fn overlay_mtu(conf: &OverlayConf, underlay: &Link, local: IpAddr) -> u32 {
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
pub fn network_note_path(conf: &OverlayConf) -> std::path::PathBuf {
    cache_path(conf).with_extension("network")
}

/// Refuses a network whose CIDRs overlap, or whose VNI is, another overlay
/// network's on this host (one whose VXLAN device still exists), then
/// notes this one's.
pub fn claim_network(h: &mut Handle, conf: &OverlayConf) -> Result<(), Error> {
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
    let text = note.to_string();
    // Every ADD claims: the note is written (with its fsync) only when new.
    if std::fs::read(&mine).is_ok_and(|had| had == text.as_bytes()) {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(&dir);
    store::file::write_atomic(&mine, text.as_bytes())
        .map_err(|e| Error::new(Kind::Io, e.to_string()))
}

/// Makes the VXLAN device exist (with the node's VTEP addresses) and every
/// peer's entries current. Idempotent; entries are replaced.
pub fn ensure_datapath(conf: &OverlayConf) -> Result<u32, Error> {
    let mut h = Handle::new().map_err(kernel)?;
    let (up, local) = underlay(&mut h, conf)?;
    ensure_datapath_on(&mut h, conf, &up, local)
}

/// `ensure_datapath` over the underlay link `up`, whose address is `local`.
pub fn ensure_datapath_on(
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
                .ok_or_else(|| Error::new(Kind::Kernel, format!("{name} vanished")))?
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
    berth_kernel::sysctl::write("net/ipv4/ip_forward", "1").map_err(kernel)?;
    if conf.network6.is_some() {
        berth_kernel::sysctl::write("net/ipv6/conf/all/forwarding", "1").map_err(kernel)?;
    }
    for p in &conf.peers {
        program_peer(h, vx.index, p)?;
    }
    Ok(mtu)
}

/// A node's VTEP addresses: the network address of each of its subnets.
pub fn vteps(subnet: ipnet::Ipv4Net, subnet6: Option<ipnet::Ipv6Net>) -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(subnet.network())];
    v.extend(subnet6.map(|s| IpAddr::V6(s.network())));
    v
}

/// A peer's routes: each of its subnets via its VTEP address, onlink.
pub fn peer_routes(vx: u32, p: &Peer) -> Vec<Route> {
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
pub fn program_peer(h: &mut Handle, vx: u32, p: &Peer) -> Result<(), Error> {
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
pub fn forget_peer(h: &mut Handle, vx: u32, p: &Peer, remaining: &[Peer]) -> Result<(), Error> {
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
