//! Interface addresses (IPv4 and IPv6).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Handle, Result};

/// An address assigned to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// The address with its prefix length (host bits kept: 10.1.0.5/24).
    pub addr: IpNet,
    /// RT_SCOPE_*: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

/// Options for [`Handle::add_address`].
#[derive(Clone, Debug, Default)]
pub struct AddressOptions {
    /// IPv6 only: skip duplicate address detection, so the address is
    /// usable at once instead of "tentative" for about a second.
    pub nodad: bool,
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request identifying `addr` on `index`, shared by add and delete.
fn addr_msg(index: u32, addr: IpNet) -> AddressMessage {
    let ip = addr.addr();
    let mut msg = AddressMessage::default();
    msg.header.family = family(&ip);
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    if ip.is_ipv4() {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
        // peer on point-to-point links and equal to it elsewhere.
        msg.attributes.push(AddressAttribute::Local(ip));
    }
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

impl Handle {
    /// Lists addresses of all families, of link `index` only if given.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut req = AddressMessage::default();
        // With strict checking on, the kernel filters by ifa_index itself.
        req.header.index = index.unwrap_or(0);
        let replies = self
            .sock
            .dump(RouteNetlinkMessage::GetAddress(req))
            .map_err(|e| match index {
                Some(i) => e.context(format!("list addresses of link {i}")),
                None => e.context("list addresses"),
            })?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            if index.is_some_and(|i| i != m.header.index) {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            let Ok(addr) = IpNet::new(ip, m.header.prefix_len) else {
                continue;
            };
            out.push(Address {
                index: m.header.index,
                addr,
                scope: m.header.scope.into(),
            });
        }
        Ok(out)
    }

    /// Adds `addr` to link `index`. Fails with errno EEXIST if present.
    pub fn add_address(&mut self, index: u32, addr: IpNet, opts: &AddressOptions) -> Result<()> {
        let mut msg = addr_msg(index, addr);
        if let IpNet::V4(v4) = addr {
            // Like ip(8) "brd +" and the reference plugins: hosts on the
            // subnet expect the directed broadcast to work.
            if v4.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        if opts.nodad && addr.addr().is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.sock
            .request(
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| e.context(format!("add address {addr} on link {index}")))
    }

    /// Removes `addr` from link `index` (errno EADDRNOTAVAIL if absent).
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.sock
            .request(RouteNetlinkMessage::DelAddress(addr_msg(index, addr)), 0)
            .map_err(|e| e.context(format!("delete address {addr} on link {index}")))
    }
}
