//! Bridge-specific settings: port options (hairpin, isolated), VLAN
//! filtering and per-port VLAN membership.

use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Handle, Result};

/// Options of a bridge port. `None` leaves a setting alone when writing;
/// when read back, a bridge port always reports both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgePortOptions {
    /// Hairpin mode: frames may be sent back out of the port they came in
    /// on (needed for a container to reach itself through a service IP).
    pub hairpin: Option<bool>,
    /// Isolated ports cannot talk to each other, only to non-isolated ones.
    pub isolated: Option<bool>,
}

/// A VLAN (or a range of VLANs) on a bridge port or the bridge itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged ingress frames are assigned to this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
    /// Apply to the bridge device itself (BRIDGE_FLAGS_SELF) rather than to
    /// a port of it.
    pub self_: bool,
    /// When set, the entry covers `vid..=range_end`.
    pub range_end: Option<u16>,
}

impl BridgeVlan {
    fn check(&self) -> Result<()> {
        let valid = |v: u16| (1..=4094).contains(&v);
        if !valid(self.vid) {
            return Err(Error::invalid(
                "vlan id",
                self.vid.to_string(),
                "must be 1..=4094",
            ));
        }
        if let Some(end) = self.range_end {
            if !valid(end) || end < self.vid {
                return Err(Error::invalid(
                    "vlan range",
                    format!("{}-{end}", self.vid),
                    "end must be 1..=4094 and not below the start",
                ));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self.range_end {
            Some(end) if end != self.vid => format!("vlan {}-{end}", self.vid),
            _ => format!("vlan {}", self.vid),
        }
    }

    /// The IFLA_AF_SPEC content for this entry.
    fn af_spec(&self) -> Vec<AfSpecBridge> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if self.pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if self.untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let mut spec = Vec::with_capacity(3);
        if self.self_ {
            spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
        }
        match self.range_end {
            Some(end) if end != self.vid => {
                spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo {
                    flags: flags | BridgeVlanInfoFlags::RangeBegin,
                    vid: self.vid,
                }));
                spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo {
                    flags: flags | BridgeVlanInfoFlags::RangeEnd,
                    vid: end,
                }));
            }
            _ => spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags,
                vid: self.vid,
            })),
        }
        spec
    }
}

fn bridge_msg(index: u32, spec: Vec<AfSpecBridge>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
    msg
}

impl Handle {
    /// Sets the bridge port options of link `index` (which must already be
    /// enslaved to a bridge). Fields left `None` are not touched.
    pub fn set_bridge_port(&mut self, index: u32, opts: &BridgePortOptions) -> Result<()> {
        let mut data = Vec::new();
        if let Some(h) = opts.hairpin {
            data.push(InfoBridgePort::HairpinMode(h));
        }
        if let Some(i) = opts.isolated {
            data.push(InfoBridgePort::Isolated(i));
        }
        if data.is_empty() {
            return Ok(());
        }
        // Port options travel as IFLA_INFO_SLAVE_DATA of an RTM_NEWLINK on
        // the port (what `ip link set DEV type bridge_slave` sends).
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(data)),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(|e| e.context(format!("set bridge port options on link {index}")))
    }

    /// The bridge port options of link `index`; None if the link does not
    /// exist or is not a bridge port.
    pub fn bridge_port(&mut self, index: u32) -> Result<Option<BridgePortOptions>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let reply = match self.sock.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(m)) => m,
            Ok(_) => return Ok(None),
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e.context(format!("get bridge port {index}"))),
        };
        let mut is_bridge_port = false;
        let mut opts = BridgePortOptions::default();
        for attr in &reply.attributes {
            let LinkAttribute::LinkInfo(infos) = attr else {
                continue;
            };
            for info in infos {
                match info {
                    LinkInfo::PortKind(InfoPortKind::Bridge) => is_bridge_port = true,
                    LinkInfo::PortData(InfoPortData::BridgePort(data)) => {
                        for d in data {
                            match d {
                                InfoBridgePort::HairpinMode(h) => opts.hairpin = Some(*h),
                                InfoBridgePort::Isolated(i) => opts.isolated = Some(*i),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(is_bridge_port.then_some(opts))
    }

    /// Turns VLAN filtering on or off on bridge `index`.
    pub fn set_bridge_vlan_filtering(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(|e| {
                e.context(format!(
                    "set vlan_filtering={} on bridge {index}",
                    u8::from(on)
                ))
            })
    }

    /// Sets the bridge's own `nf_call_iptables` and `nf_call_ip6tables`
    /// (br_netfilter's bridge-nf-call-* for this bridge alone): bridged
    /// IPv4 and IPv6 frames pass the IP netfilter hooks, so conntrack sees
    /// both directions of a connection DNATed to a port of the same bridge.
    pub fn set_bridge_nf_call(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::NfCallIpTables(on),
                InfoBridge::NfCallIp6Tables(on),
            ])),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), 0)
            .map_err(|e| {
                e.context(format!(
                    "set nf_call_iptables={} on bridge {index}",
                    u8::from(on)
                ))
            })
    }

    /// Adds a VLAN entry to port `index` (or to the bridge itself when
    /// `vlan.self_`). Re-adding an existing VID updates its flags.
    pub fn bridge_vlan_add(&mut self, index: u32, vlan: &BridgeVlan) -> Result<()> {
        vlan.check()?;
        let msg = bridge_msg(index, vlan.af_spec());
        self.sock
            .request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| e.context(format!("add {} on link {index}", vlan.describe())))
    }

    /// Removes a VLAN entry from port `index` (or the bridge itself).
    pub fn bridge_vlan_del(&mut self, index: u32, vlan: &BridgeVlan) -> Result<()> {
        vlan.check()?;
        let msg = bridge_msg(index, vlan.af_spec());
        self.sock
            .request(RouteNetlinkMessage::DelLink(msg), 0)
            .map_err(|e| e.context(format!("delete {} on link {index}", vlan.describe())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_vlan_spec() {
        let v = BridgeVlan {
            vid: 10,
            pvid: true,
            untagged: true,
            ..Default::default()
        };
        assert_eq!(
            v.af_spec(),
            vec![AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags: BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
                vid: 10
            })]
        );
    }

    #[test]
    fn range_vlan_spec_on_self() {
        let v = BridgeVlan {
            vid: 100,
            range_end: Some(200),
            self_: true,
            ..Default::default()
        };
        let spec = v.af_spec();
        assert_eq!(spec.len(), 3);
        assert_eq!(spec[0], AfSpecBridge::Flags(BridgeFlag::LowerDev));
        assert_eq!(
            spec[1],
            AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags: BridgeVlanInfoFlags::RangeBegin,
                vid: 100
            })
        );
        assert_eq!(
            spec[2],
            AfSpecBridge::VlanInfo(BridgeVlanInfo {
                flags: BridgeVlanInfoFlags::RangeEnd,
                vid: 200
            })
        );
    }

    #[test]
    fn vlan_bounds() {
        assert!(BridgeVlan {
            vid: 0,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(BridgeVlan {
            vid: 4095,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(BridgeVlan {
            vid: 5,
            range_end: Some(4),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(BridgeVlan {
            vid: 5,
            range_end: Some(5),
            ..Default::default()
        }
        .check()
        .is_ok());
    }
}
