//! An endpoint's veth: the host end a port of the network's bridge, the
//! peer in the namespace the endpoint's container gets.

use berth_kernel::{BridgePortOptions, BridgeVlan, Handle, Link, Netns, VethOptions};

use crate::{Error, Result};

/// One endpoint's veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The host end (a port of the bridge).
    pub host_name: String,
    /// The peer's name in its namespace.
    pub peer_name: String,
    /// Both ends' MTU; `None`: the bridge's.
    pub mtu: Option<u32>,
    /// The peer's MAC; `None`: the kernel's choice.
    pub peer_mac: Option<[u8; 6]>,
    /// Frames may leave through the port they came in by.
    pub hairpin: bool,
    /// The port talks only to non-isolated ports (the bridge's uplinks).
    pub isolated: bool,
    /// VLAN membership (the bridge must filter VLANs).
    pub vlans: Option<PortVlans>,
}

/// A port's VLANs on a VLAN-filtering bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortVlans {
    /// The untagged VLAN (PVID) of the port; 0: none. The bridge device
    /// joins it too, so the gateway on it is reachable.
    pub access: u16,
    /// Tagged VLAN ranges (inclusive).
    pub trunk: Vec<(u16, u16)>,
    /// Keep the kernel's default VLAN 1 on the port.
    pub keep_default: bool,
}

impl PortVlans {
    /// The VLAN entries to delete from and add to the port, and to add to
    /// the bridge device itself.
    pub fn plan(&self) -> (Option<BridgeVlan>, Vec<BridgeVlan>, Option<BridgeVlan>) {
        let vlan = |vid, pvid, self_, range_end| BridgeVlan {
            vid,
            pvid,
            untagged: pvid,
            self_,
            range_end,
        };
        let del = (!self.keep_default).then(|| vlan(1, false, false, None));
        let mut add = Vec::new();
        let mut on_bridge = None;
        if self.access != 0 {
            add.push(vlan(self.access, true, false, None));
            on_bridge = Some(vlan(self.access, false, true, None));
        }
        for &(lo, hi) in &self.trunk {
            add.push(vlan(lo, false, false, (hi > lo).then_some(hi)));
        }
        (del, add, on_bridge)
    }
}

impl PortSpec {
    pub fn new(host_name: impl Into<String>, peer_name: impl Into<String>) -> PortSpec {
        PortSpec {
            host_name: host_name.into(),
            peer_name: peer_name.into(),
            mtu: None,
            peer_mac: None,
            hairpin: false,
            isolated: false,
            vlans: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (field, name) in [("host veth", &self.host_name), ("ifname", &self.peer_name)] {
            berth_kernel::check_ifname(name).map_err(|e| Error::config(field, e.to_string()))?;
        }
        Ok(())
    }

    /// The veth's create request, with the host end enslaved to the
    /// bridge (`bridge_index`, of `bridge_mtu`) in it (one request and
    /// notification fewer), and the port options to set afterwards, if
    /// any.
    pub fn plan(
        &self,
        bridge_index: u32,
        bridge_mtu: u32,
    ) -> (VethOptions, Option<BridgePortOptions>) {
        let veth = VethOptions {
            mtu: Some(self.mtu.unwrap_or(bridge_mtu)),
            peer_mac: self.peer_mac,
            host_mac: None,
            host_master: Some(bridge_index),
        };
        let port = (self.hairpin || self.isolated).then_some(BridgePortOptions {
            hairpin: Some(self.hairpin),
            isolated: Some(self.isolated),
        });
        (veth, port)
    }

    /// Creates the pair (peer in `peer_ns`), makes the host end a port of
    /// `bridge` without IPv6 of its own, and sets it up. Returns the host
    /// end. On error the pair may exist: [`PortSpec::teardown`] removes it.
    pub fn apply(&self, h: &mut Handle, bridge: &Link, peer_ns: &Netns) -> Result<Link> {
        let (veth, port) = self.plan(bridge.index, bridge.mtu);
        h.add_veth(&self.host_name, &self.peer_name, peer_ns, &veth)
            .map_err(Error::kernel(format!("create veth {}", self.host_name)))?;
        let host = h
            .link_by_name(&self.host_name)
            .map_err(Error::kernel("netlink"))?
            .ok_or_else(|| {
                Error::config(
                    "host veth",
                    format!("{} vanished after creation", self.host_name),
                )
            })?;
        if let Some(port) = port {
            h.set_bridge_port(host.index, &port)
                .map_err(Error::kernel("bridge port options"))?;
        }
        if let Some(vlans) = &self.vlans {
            let (del, add, on_bridge) = vlans.plan();
            if let Some(v) = del {
                match h.bridge_vlan_del(host.index, &v) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::kernel("remove VLAN 1 from the port")(e)),
                }
            }
            for v in &add {
                h.bridge_vlan_add(host.index, v)
                    .map_err(Error::kernel(format!("VLAN {} on the port", v.vid)))?;
            }
            if let Some(v) = on_bridge {
                h.bridge_vlan_add(bridge.index, &v)
                    .map_err(Error::kernel(format!("VLAN {} on the bridge", v.vid)))?;
            }
        }
        disable_ipv6(&self.host_name)?;
        h.set_up(host.index).map_err(Error::kernel("veth up"))?;
        Ok(host)
    }

    /// Removes the pair (both ends go with either); gone already is fine.
    /// Returns whether it was there.
    pub fn teardown(&self, h: &mut Handle) -> Result<bool> {
        h.delete_link_by_name(&self.host_name)
            .map_err(Error::kernel(format!("delete veth {}", self.host_name)))
    }
}

/// The host end of a veth is a bridge port: it forwards IPv6 frames at
/// layer 2 and needs no IPv6 of its own. Left on (before the link comes
/// up), every port would get a link-local address and an fe80::/64 route,
/// all in one node of the host's IPv6 routing table, where inserting and
/// looking up routes is linear in the number of containers, and it would
/// send DAD and router solicitations into its container.
fn disable_ipv6(host_veth: &str) -> Result<()> {
    match berth_kernel::sysctl::write(&format!("net/ipv6/conf/{host_veth}/disable_ipv6"), "1") {
        Ok(()) => Ok(()),
        // IPv6 disabled in the whole kernel: nothing to turn off.
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(Error::kernel(format!("disable IPv6 on {host_veth}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_takes_the_bridges_mtu_unless_given() {
        let (v, port) = PortSpec::new("h0", "eth0").plan(7, 1400);
        assert_eq!(v.mtu, Some(1400));
        assert_eq!(v.host_master, Some(7));
        assert!(port.is_none());
        let spec = PortSpec {
            mtu: Some(9000),
            hairpin: true,
            ..PortSpec::new("h0", "eth0")
        };
        let (v, port) = spec.plan(7, 1400);
        assert_eq!(v.mtu, Some(9000));
        let port = port.expect("hairpin needs port options");
        assert_eq!((port.hairpin, port.isolated), (Some(true), Some(false)));
    }

    #[test]
    fn vlans_plan_as_the_reference_configures_them() {
        let (del, add, on_bridge) = PortVlans {
            access: 100,
            trunk: vec![(200, 200), (300, 310)],
            keep_default: false,
        }
        .plan();
        assert_eq!(del.map(|v| v.vid), Some(1));
        let got: Vec<_> = add
            .iter()
            .map(|v| (v.vid, v.pvid, v.untagged, v.range_end))
            .collect();
        assert_eq!(
            got,
            vec![
                (100, true, true, None),
                (200, false, false, None),
                (300, false, false, Some(310))
            ]
        );
        let b = on_bridge.unwrap();
        assert!(b.self_ && b.vid == 100 && !b.pvid);
        let (del, add, on_bridge) = PortVlans {
            keep_default: true,
            ..Default::default()
        }
        .plan();
        assert!(del.is_none() && add.is_empty() && on_bridge.is_none());
    }

    #[test]
    fn names_follow_the_kernels_rule() {
        assert!(PortSpec::new("h0", "eth0").validate().is_ok());
        let e = PortSpec::new("h0", "eth/0").validate().unwrap_err();
        assert!(e.to_string().starts_with("ifname: "), "{e}");
        let e = PortSpec::new("", "eth0").validate().unwrap_err();
        assert!(e.to_string().starts_with("host veth: "), "{e}");
    }
}
