//! A network's Linux bridge.

use berth_kernel::{BridgeOptions, Handle, Link};

use crate::{Error, Result};

/// The bridge a network asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// The link's name.
    pub name: String,
    /// The bridge's MTU (the kernel's default when `None`).
    pub mtu: Option<u32>,
    /// VLAN filtering (ports with VLANs).
    pub vlan_filtering: bool,
    /// Promiscuous mode on the bridge device.
    pub promisc: bool,
    /// IGMP/MLD snooping. Off unless asked for: nothing on a berth bridge
    /// queries for group members, and without a querier snooping floods
    /// all multicast anyway; it only costs work on every port that comes
    /// up (all ports' query timers, under RTNL). Docker's bridge driver
    /// leaves the kernel's default (on); berthd users can ask for that.
    pub multicast_snooping: bool,
    /// Bridged IPv4/IPv6 traffic passes the IP netfilter hooks (this
    /// bridge's own bridge-nf-call-iptables): kube-proxy's Service DNAT to
    /// a pod on the same bridge needs conntrack to see the reply, which is
    /// bridged.
    pub netfilter: bool,
}

impl BridgeSpec {
    /// A bridge named `name` with every option at berth's default.
    pub fn new(name: impl Into<String>) -> BridgeSpec {
        BridgeSpec {
            name: name.into(),
            mtu: None,
            vlan_filtering: false,
            promisc: false,
            multicast_snooping: false,
            netfilter: false,
        }
    }

    /// `field` is the front end's key for the bridge name.
    pub fn validate(&self, field: &'static str) -> Result<()> {
        berth_kernel::check_ifname(&self.name).map_err(|e| Error::config(field, e.to_string()))?;
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config("mtu", format!("{mtu}: expected 68..65535")));
            }
        }
        Ok(())
    }

    /// What a new bridge is created with.
    pub fn plan(&self) -> BridgeOptions {
        BridgeOptions {
            mtu: self.mtu,
            mac: Some(bridge_mac(&self.name)),
            vlan_filtering: self.vlan_filtering,
            promisc: self.promisc,
            no_multicast_snooping: !self.multicast_snooping,
            nf_call: self.netfilter,
        }
    }

    /// Creates the bridge, or adopts an existing one as it is (save for
    /// what the spec needs switched on: up, promiscuous, VLAN filtering).
    /// Anything else by that name is an error. `field` names the bridge
    /// name's key in errors.
    pub fn apply(&self, h: &mut Handle, field: &'static str) -> Result<Bridge> {
        let not_a_bridge = |l: &Link| {
            Error::config(
                field,
                format!(
                    "{:?} exists and is not a bridge (kind {})",
                    self.name,
                    l.kind.as_deref().unwrap_or("unknown")
                ),
            )
        };
        let lookup = |h: &mut Handle| h.link_by_name(&self.name).map_err(Error::kernel("netlink"));
        let (link, created) = match lookup(h)? {
            Some(l) => (l, false),
            None => {
                let created = match h.add_bridge(&self.name, &self.plan()) {
                    Ok(()) => true,
                    // Another front end's call created it a moment ago.
                    Err(e) if e.is_exists() => false,
                    Err(e) => return Err(Error::kernel(format!("create bridge {}", self.name))(e)),
                };
                let l = lookup(h)?.ok_or_else(|| {
                    Error::config(
                        field,
                        format!("bridge {} vanished after creation", self.name),
                    )
                })?;
                (l, created)
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(not_a_bridge(&link));
        }
        if !link.admin_up {
            h.set_up(link.index).map_err(Error::kernel("bridge up"))?;
        }
        if self.promisc && !link.promisc {
            h.set_promisc(link.index, true)
                .map_err(Error::kernel("bridge promiscuous mode"))?;
        }
        if self.vlan_filtering && !created {
            h.set_bridge_vlan_filtering(link.index, true)
                .map_err(Error::kernel("bridge VLAN filtering"))?;
        }
        if self.netfilter && !created {
            // A bridge made before, or by hand: cheap to set again.
            h.set_bridge_nf_call(link.index, true)
                .map_err(Error::kernel("bridge nf_call_iptables"))?;
        }
        Ok(Bridge { link, created })
    }
}

/// A bridge as [`BridgeSpec::apply`] left it.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub link: Link,
    /// This call created it (rollback may delete it).
    pub created: bool,
}

/// A locally administered unicast MAC derived from the bridge name, so a
/// re-created bridge keeps its gateway MAC (and the kernel does not give
/// it the lowest MAC of its ports, which changes as containers come and
/// go, and with it the gateway's MAC in every container's neighbour
/// cache).
pub fn bridge_mac(name: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(name.as_bytes());
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fixes_the_mac_and_turns_snooping_off() {
        let p = BridgeSpec::new("br0").plan();
        assert_eq!(p.mac, Some(bridge_mac("br0")));
        assert!(p.no_multicast_snooping);
        assert_eq!(p.mtu, None);
        let p = BridgeSpec {
            multicast_snooping: true,
            mtu: Some(1400),
            ..BridgeSpec::new("br0")
        }
        .plan();
        assert!(!p.no_multicast_snooping);
        assert_eq!(p.mtu, Some(1400));
    }

    #[test]
    fn the_mac_is_local_unicast_and_stable() {
        let m = bridge_mac("berth0");
        assert_eq!(m[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(m, bridge_mac("berth0"));
        assert_ne!(m, bridge_mac("berth1"));
    }

    #[test]
    fn validate_names_the_field() {
        assert!(BridgeSpec::new("br0").validate("bridge").is_ok());
        let e = BridgeSpec::new("a-name-far-too-long")
            .validate("bridge")
            .unwrap_err();
        assert!(e.to_string().starts_with("bridge: "), "{e}");
        let e = BridgeSpec {
            mtu: Some(10),
            ..BridgeSpec::new("br0")
        }
        .validate("bridge")
        .unwrap_err();
        assert!(e.to_string().starts_with("mtu: "), "{e}");
    }
}
