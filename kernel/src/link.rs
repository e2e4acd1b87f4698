//! Links: lookup, bridge and veth creation, generic link settings, deletion.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridge, InfoData, InfoKind, InfoMacVlan,
    InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::AsRawFd;

use crate::handle::check_ifname;
use crate::{Handle, Netns, Result};

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "vxlan"... None for physical or
    /// loopback devices.
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the bridge (or bond...) this link is enslaved to.
    pub master: Option<u32>,
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// Operationally up (IF_OPER_UP, or IF_OPER_UNKNOWN with a carrier:
    /// drivers that do not track operstate, like loopback, report UNKNOWN).
    pub oper_up: bool,
    pub promisc: bool,
    pub alias: Option<String>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace);
    /// for a macvlan, its parent's index (in the parent's namespace).
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the namespace of the peer, as an id local to this
    /// link's namespace; None when the peer is in the same namespace.
    pub link_netnsid: Option<i32>,
    /// For a macvlan: its mode.
    pub macvlan_mode: Option<MacvlanMode>,
    /// The link's IPv6 settings; None when the kernel reports no IPv6
    /// state for it (IPv6 not built in).
    pub ipv6: Option<Ipv6Settings>,
}

/// The per-link IPv6 settings that decide what the kernel does on its own
/// when the link comes up, read from the link message (IFLA_AF_SPEC) rather
/// than /proc/sys: a /proc/sys/net lookup walks one cached entry per
/// network namespace that ever looked up the same name, so it slows down
/// as a host gains containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Settings {
    /// net.ipv6.conf.<link>.disable_ipv6
    pub disabled: bool,
    /// The kernel makes the link-local address from the MAC (EUI-64), the
    /// default; otherwise it uses a stable or random one, or none at all.
    pub eui64_link_local: bool,
}

impl Ipv6Settings {
    fn from_af_spec(attrs: &[AfSpecInet6]) -> Option<Ipv6Settings> {
        let mut settings = None;
        // Reported since Linux 3.17; older kernels only know EUI-64.
        let mut eui64 = true;
        for attr in attrs {
            match attr {
                AfSpecInet6::DevConf(conf) => settings = Some(conf.disable_ipv6 != 0),
                AfSpecInet6::AddrGenMode(mode) => eui64 = *mode == In6AddrGenMode::Eui64,
                _ => {}
            }
        }
        settings.map(|disabled| Ipv6Settings {
            disabled,
            eui64_link_local: eui64,
        })
    }
}

/// The link-local address the kernel gives an Ethernet link with this MAC
/// in EUI-64 mode: fe80::/64 with the MAC split by ff:fe and its
/// universal/local bit flipped (RFC 4291 appendix A).
pub fn eui64_link_local(mac: &[u8; 6]) -> std::net::Ipv6Addr {
    let m = mac;
    std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Link {
        let flags = msg.header.flags;
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            admin_up: flags.contains(LinkFlags::Up),
            oper_up: false,
            promisc: flags.contains(LinkFlags::Promisc),
            alias: None,
            peer_index: None,
            link_netnsid: None,
            macvlan_mode: None,
            ipv6: None,
        };
        let mut oper = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    link.mac = Some(mac);
                }
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
                LinkAttribute::Link(i) if *i != 0 => link.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
                LinkAttribute::OperState(s) => oper = Some(*s),
                LinkAttribute::AfSpecUnspec(families) => {
                    for family in families {
                        if let AfSpecUnspec::Inet6(attrs) = family {
                            link.ipv6 = Ipv6Settings::from_af_spec(attrs);
                        }
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::MacVlan(data)) => {
                                link.macvlan_mode = data.iter().find_map(|d| match d {
                                    InfoMacVlan::Mode(m) => MacvlanMode::from_kernel(*m),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link.oper_up = match oper {
            Some(State::Up) => true,
            Some(State::Unknown) | None => flags.contains(LinkFlags::LowerUp),
            _ => false,
        };
        link
    }
}

/// Asks for a device with one TX and one RX queue: what a veth ends up
/// using anyway. Without the request the kernel allocates one queue per
/// possible CPU and then cuts the active count down to one, and cutting
/// it waits for an expedited RCU grace period with RTNL held, once per end
/// of the pair: with ~1000 containers on a host, the only place a bridge
/// ADD slept in the kernel (perf sched).
fn single_queue(msg: &mut LinkMessage) {
    msg.attributes.push(LinkAttribute::NumTxQueues(1));
    msg.attributes.push(LinkAttribute::NumRxQueues(1));
}

/// Options for [`Handle::add_bridge`].
#[derive(Clone, Debug, Default)]
pub struct BridgeOptions {
    pub mtu: Option<u32>,
    /// A fixed MAC. Without one, the kernel gives the bridge the lowest MAC
    /// of its ports, which changes as containers come and go (and with it
    /// the gateway's MAC in every container's neighbour cache).
    pub mac: Option<[u8; 6]>,
    pub vlan_filtering: bool,
    pub promisc: bool,
    /// Turn IGMP/MLD snooping off (the kernel turns it on).
    pub no_multicast_snooping: bool,
    /// Bridged IPv4/IPv6 frames pass the IP netfilter hooks (see
    /// [`Handle::set_bridge_nf_call`]).
    pub nf_call: bool,
}

/// Options for [`Handle::add_veth`]. `mtu` applies to both ends.
#[derive(Clone, Debug, Default)]
pub struct VethOptions {
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
    pub host_mac: Option<[u8; 6]>,
    /// Enslave the host end to this bridge (index) in the create request
    /// itself, which saves a request and its notification.
    pub host_master: Option<u32>,
}

/// How a macvlan forwards between its siblings on the same parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacvlanMode {
    /// Siblings reach each other directly, inside the kernel.
    Bridge,
    /// Siblings never reach each other, not even through the wire.
    Private,
    /// Everything goes out of the parent; siblings meet only if the
    /// switch on the other end hairpins.
    Vepa,
    /// The only child of its parent, taking the parent's MAC.
    Passthru,
}

impl MacvlanMode {
    fn to_kernel(self) -> MacVlanMode {
        match self {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    fn from_kernel(m: MacVlanMode) -> Option<MacvlanMode> {
        match m {
            MacVlanMode::Bridge => Some(MacvlanMode::Bridge),
            MacVlanMode::Private => Some(MacvlanMode::Private),
            MacVlanMode::Vepa => Some(MacvlanMode::Vepa),
            MacVlanMode::Passthrough => Some(MacvlanMode::Passthru),
            _ => None,
        }
    }
}

/// Options for [`Handle::add_macvlan`].
#[derive(Clone, Debug)]
pub struct MacvlanOptions {
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// Length of the queue of broadcast/multicast frames to the children.
    pub bc_queue_len: Option<u32>,
}

fn link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

impl Handle {
    /// Looks a link up by name; None if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        check_ifname(name)?;
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("get link {name}"))
    }

    /// Looks a link up by index; None if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.get_link(link_msg(index), || format!("get link {index}"))
    }

    fn get_link(&mut self, msg: LinkMessage, op: impl Fn() -> String) -> Result<Option<Link>> {
        match self.sock.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(m)) => Ok(Some(Link::from_message(&m))),
            Ok(other) => Err(crate::Error::Protocol {
                op: op(),
                msg: format!("unexpected reply {other:?}"),
            }),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e.context(op())),
        }
    }

    /// All links of this handle's namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self
            .sock
            .dump(RouteNetlinkMessage::GetLink(link_msg(0)))
            .map_err(|e| e.context("list links"))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge. Fails with errno EEXIST if `name` exists.
    pub fn add_bridge(&mut self, name: &str, opts: &BridgeOptions) -> Result<()> {
        check_ifname(name)?;
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = opts.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = opts.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        let mut data = Vec::new();
        if opts.vlan_filtering {
            data.push(InfoBridge::VlanFiltering(true));
        }
        if opts.no_multicast_snooping {
            data.push(InfoBridge::MulticastSnooping(false));
        }
        if opts.nf_call {
            data.push(InfoBridge::NfCallIpTables(true));
            data.push(InfoBridge::NfCallIp6Tables(true));
        }
        if !data.is_empty() {
            info.push(LinkInfo::Data(InfoData::Bridge(data)));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        if opts.promisc {
            // Flags in a create request are applied to the new device, which
            // saves a separate SETLINK round trip.
            msg.header.flags = LinkFlags::Promisc;
            msg.header.change_mask = LinkFlags::Promisc;
        }
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create bridge {name}")))
    }

    /// Creates a veth pair: `host_name` in this handle's namespace and
    /// `peer_name` directly in `peer_ns`, in a single request. The peer is
    /// born in its namespace rather than moved there afterwards: moving a
    /// device costs a synchronize_net() (~20 ms), creating it in place
    /// costs ~0.3 ms.
    pub fn add_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_ns: &Netns,
        opts: &VethOptions,
    ) -> Result<()> {
        check_ifname(host_name)?;
        check_ifname(peer_name)?;
        let mut peer = link_msg(0);
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        if let Some(mtu) = opts.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = opts.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        single_queue(&mut peer);

        let mut msg = link_msg(0);
        msg.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        single_queue(&mut msg);
        if let Some(mtu) = opts.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = opts.host_mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(master) = opts.host_master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create veth {host_name}")))
    }

    /// Creates a macvlan child of `parent` (a link of this handle's
    /// namespace) named `name` directly in `ns`, in one request: like a
    /// veth peer, it is born where it will live rather than moved there.
    pub fn add_macvlan(
        &mut self,
        name: &str,
        parent: u32,
        ns: &Netns,
        opts: &MacvlanOptions,
    ) -> Result<()> {
        check_ifname(name)?;
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(parent));
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        if let Some(mtu) = opts.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = opts.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut data = vec![InfoMacVlan::Mode(opts.mode.to_kernel())];
        if let Some(n) = opts.bc_queue_len {
            data.push(InfoMacVlan::BcQueueLen(n));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(data)),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create macvlan {name} on link {parent}")))
    }

    /// Moves link `index` of this handle's namespace into `ns`, renamed to
    /// `new_name` there and with its alias set to `alias`, in one request.
    /// The kernel takes the link down, moves it, then renames it in `ns`,
    /// so a name taken in this namespace doesn't matter; a name taken in
    /// `ns` fails with EEXIST after the move (the link is then in `ns`
    /// under its old name).
    pub fn move_link(
        &mut self,
        index: u32,
        ns: &Netns,
        new_name: &str,
        alias: Option<&str>,
    ) -> Result<()> {
        check_ifname(new_name)?;
        let mut msg = link_msg(index);
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        msg.attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        if let Some(a) = alias {
            msg.attributes.push(LinkAttribute::IfAlias(a.to_string()));
        }
        self.sock
            .request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| {
                e.context(format!(
                    "move link {index} to netns {} as {new_name}",
                    ns.path().display()
                ))
            })
    }

    /// Renames link `index` (which must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        check_ifname(name)?;
        self.set_attr(index, LinkAttribute::IfName(name.to_string()), || {
            format!("rename link {index} to {name}")
        })
    }

    /// Sets the link's alias (ifalias); an empty string clears it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        self.set_attr(index, LinkAttribute::IfAlias(alias.to_string()), || {
            format!("set alias of link {index}")
        })
    }

    fn set_flags(
        &mut self,
        index: u32,
        flag: LinkFlags,
        on: bool,
        op: impl Fn() -> String,
    ) -> Result<()> {
        let mut msg = link_msg(index);
        msg.header.change_mask = flag;
        if on {
            msg.header.flags = flag;
        }
        self.sock
            .request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| e.context(op()))
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, LinkFlags::Up, true, || {
            format!("set link {index} up")
        })
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, LinkFlags::Up, false, || {
            format!("set link {index} down")
        })
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flags(index, LinkFlags::Promisc, on, || {
            format!(
                "set promisc {} on link {index}",
                if on { "on" } else { "off" }
            )
        })
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Mtu(mtu), || {
            format!("set mtu {mtu} on link {index}")
        })
    }

    /// Enslaves link `index` to `master` (a bridge); 0 releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Controller(master), || {
            format!("set master {master} on link {index}")
        })
    }

    fn set_attr(&mut self, index: u32, attr: LinkAttribute, op: impl Fn() -> String) -> Result<()> {
        let mut msg = link_msg(index);
        msg.attributes.push(attr);
        self.sock
            .request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| e.context(op()))
    }

    /// Deletes a link (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.sock
            .request(RouteNetlinkMessage::DelLink(link_msg(index)), 0)
            .map_err(|e| e.context(format!("delete link {index}")))
    }

    /// Deletes a link by name in one request; Ok(false) if it did not exist.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        check_ifname(name)?;
        let mut msg = link_msg(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.sock.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e.context(format!("delete link {name}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_link_local_flips_the_local_bit_and_inserts_fffe() {
        // Docker's first container MAC and the address the kernel gives it.
        assert_eq!(
            eui64_link_local(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x02]).to_string(),
            "fe80::42:acff:fe11:2"
        );
        assert_eq!(
            eui64_link_local(&[0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]).to_string(),
            "fe80::216:3eff:fe01:203"
        );
    }
}
