//! VXLAN devices and the static forwarding state an overlay programs on
//! them (flannel's L3 model: per remote node one FDB entry, one neighbour
//! entry and one onlink route; learning off, so nothing else is ever
//! flooded or learnt).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::handle::check_ifname;
use crate::{Error, Handle, Result};

/// The well-known VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// What a VXLAN device is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanOptions {
    /// 1..=16777215.
    pub vni: u32,
    /// UDP destination (and listening) port.
    pub port: u16,
    /// The underlay link packets leave by.
    pub underlay: Option<u32>,
    /// The local VTEP address (the underlay link's), the source of the
    /// encapsulated packets.
    pub local: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Learn remote MACs from traffic; an overlay with static entries
    /// turns it off.
    pub learning: bool,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions {
            vni: 1,
            port: VXLAN_PORT,
            underlay: None,
            local: None,
            mtu: None,
            mac: None,
            learning: false,
        }
    }
}

fn fam(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Handle {
    /// Creates VXLAN device `name`.
    pub fn add_vxlan(&mut self, name: &str, opts: &VxlanOptions) -> Result<()> {
        check_ifname(name)?;
        if opts.vni == 0 || opts.vni > 0x00ff_ffff {
            return Err(Error::invalid(
                "vni",
                opts.vni.to_string(),
                "must be 1..16777215",
            ));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = opts.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = opts.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut data = vec![
            InfoVxlan::Id(opts.vni),
            InfoVxlan::Port(opts.port),
            InfoVxlan::Learning(opts.learning),
        ];
        if let Some(l) = opts.underlay {
            data.push(InfoVxlan::Link(l));
        }
        match opts.local {
            Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
            None => {}
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create vxlan {name} (vni {})", opts.vni)))
    }

    /// Sends frames for `mac` on VXLAN device `index` to the VTEP at
    /// `remote` (`bridge fdb replace MAC dev DEV dst REMOTE self permanent`).
    pub fn set_fdb(&mut self, index: u32, mac: [u8; 6], remote: IpAddr) -> Result<()> {
        let msg = fdb_msg(index, mac, Some(remote));
        self.sock
            .request(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| {
                e.context(format!(
                    "set fdb {} -> {remote} on link {index}",
                    crate::mac_text(&mac)
                ))
            })
    }

    /// Removes the FDB entry for `mac` on `index`; missing is fine.
    pub fn del_fdb(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = fdb_msg(index, mac, None);
        match self.sock.request(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r.map_err(|e| {
                e.context(format!(
                    "delete fdb {} on link {index}",
                    crate::mac_text(&mac)
                ))
            }),
        }
    }

    /// A permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub fn set_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = fam(&ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.sock
            .request(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| e.context(format!("set neighbour {ip} on link {index}")))
    }

    /// Removes the neighbour entry of `ip` on `index`; missing is fine.
    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = fam(&ip);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        match self.sock.request(RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            r => r.map_err(|e| e.context(format!("delete neighbour {ip} on link {index}"))),
        }
    }
}

fn fdb_msg(index: u32, mac: [u8; 6], remote: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(r) = remote {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(r)));
    }
    msg
}
