//! A network's gateway addresses on its bridge, and the forwarding they
//! need.

use berth_kernel::{AddressOptions, Handle, Link};
use ipnet::IpNet;

use crate::{Error, Result};

/// The addresses the bridge must carry, as "gateway/prefix".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySpec {
    pub addresses: Vec<IpNet>,
    /// Replace a conflicting address already on the bridge (the
    /// reference's `forceAddress`) instead of refusing.
    pub force: bool,
}

/// What [`GatewaySpec::plan`] found to do on one bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
    pub ipv4_forwarding: bool,
    pub ipv6_forwarding: bool,
}

impl GatewaySpec {
    /// What to change given the bridge's `existing` addresses (address,
    /// scope): another IPv4 address, or an IPv6 one overlapping the
    /// gateway's subnet, is a conflict, refused unless `force`. IPv6
    /// link-local addresses never conflict. `bridge` names it in errors.
    pub fn plan(&self, bridge: &str, existing: &[(IpNet, u8)]) -> Result<GatewayPlan> {
        let mut plan = GatewayPlan::default();
        // The bridge's addresses as each gateway in turn finds them (the
        // reference adds them one by one, so a second IPv4 gateway meets
        // the first).
        let mut current: Vec<(IpNet, u8)> = existing.to_vec();
        for want in &self.addresses {
            let v4 = want.addr().is_ipv4();
            let mut present = false;
            let mut conflicting = Vec::new();
            for &(a, scope) in current.iter().filter(|(a, _)| a.addr().is_ipv4() == v4) {
                if a == *want {
                    present = true;
                } else if v4
                    || (scope != 253 && (a.contains(&want.addr()) || want.contains(&a.addr())))
                {
                    conflicting.push(a);
                }
            }
            if let Some(a) = conflicting.first().filter(|_| !self.force) {
                return Err(Error::config(
                    "bridge",
                    format!("{bridge:?} already has address {a} which differs from gateway {want} (set forceAddress to replace it)"),
                ));
            }
            for a in conflicting {
                current.retain(|(c, _)| *c != a);
                match plan.add.iter().position(|x| *x == a) {
                    Some(i) => {
                        plan.add.remove(i);
                    }
                    None => plan.remove.push(a),
                }
            }
            if !present {
                current.push((*want, 0));
                plan.add.push(*want);
            }
            plan.ipv4_forwarding |= v4;
            plan.ipv6_forwarding |= !v4;
        }
        Ok(plan)
    }

    /// Puts the addresses on `bridge` (one address dump) and turns
    /// forwarding on for their families.
    pub fn apply(&self, h: &mut Handle, bridge: &Link) -> Result<()> {
        if self.addresses.is_empty() {
            return Ok(());
        }
        let existing: Vec<(IpNet, u8)> = h
            .addresses(Some(bridge.index))
            .map_err(Error::kernel("list the bridge's addresses"))?
            .into_iter()
            .map(|a| (a.addr, a.scope))
            .collect();
        let plan = self.plan(&bridge.name, &existing)?;
        for a in &plan.remove {
            h.del_address(bridge.index, *a)
                .map_err(Error::kernel(format!("remove {a} from {}", bridge.name)))?;
        }
        for a in &plan.add {
            match h.add_address(bridge.index, *a, &AddressOptions { nodad: true }) {
                Ok(()) => {}
                // A concurrent call added it.
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(Error::kernel(format!("gateway address {a}"))(e)),
            }
        }
        for (needed, v4) in [(plan.ipv4_forwarding, true), (plan.ipv6_forwarding, false)] {
            if needed {
                let key = forwarding_key(v4);
                berth_kernel::sysctl::write(key, "1").map_err(Error::kernel(key))?;
            }
        }
        Ok(())
    }
}

/// The sysctl that forwards one family, which a gateway address of that
/// family turned on.
fn forwarding_key(v4: bool) -> &'static str {
    if v4 {
        "net/ipv4/ip_forward"
    } else {
        "net/ipv6/conf/all/forwarding"
    }
}

/// The reconciler's part: turns forwarding back on for each family that
/// a gateway address (global scope) on one of `bridges` needs, where
/// someone turned it off. Returns the sysctls set. Bridges that are gone
/// need nothing (their network's repair says so).
pub fn repair_forwarding<'a>(bridges: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>> {
    let mut h = Handle::new().map_err(Error::kernel("netlink"))?;
    let (mut v4, mut v6) = (false, false);
    for name in bridges {
        let Some(bridge) = h
            .link_by_name(name)
            .map_err(Error::kernel(format!("look up bridge {name}")))?
        else {
            continue;
        };
        for a in h
            .addresses(Some(bridge.index))
            .map_err(Error::kernel(format!("list {name}'s addresses")))?
        {
            if a.scope == 0 {
                v4 |= a.addr.addr().is_ipv4();
                v6 |= a.addr.addr().is_ipv6();
            }
        }
    }
    let mut set = Vec::new();
    for (needed, is_v4) in [(v4, true), (v6, false)] {
        let key = forwarding_key(is_v4);
        if needed && berth_kernel::sysctl::read(key).map_or(true, |v| v != "1") {
            berth_kernel::sysctl::write(key, "1").map_err(Error::kernel(key))?;
            set.push(key.replace('/', "."));
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn spec(addrs: &[&str], force: bool) -> GatewaySpec {
        GatewaySpec {
            addresses: addrs.iter().map(|a| n(a)).collect(),
            force,
        }
    }

    #[test]
    fn a_fresh_bridge_gets_every_address() {
        let p = spec(&["10.1.0.1/24", "fd00::1/64"], false)
            .plan("br0", &[])
            .unwrap();
        assert_eq!(p.add, vec![n("10.1.0.1/24"), n("fd00::1/64")]);
        assert!(p.remove.is_empty() && p.ipv4_forwarding && p.ipv6_forwarding);
    }

    #[test]
    fn present_addresses_and_link_local_are_left_alone() {
        let existing = [(n("10.1.0.1/24"), 0), (n("fe80::1/64"), 253)];
        let p = spec(&["10.1.0.1/24", "fd00::1/64"], false)
            .plan("br0", &existing)
            .unwrap();
        assert_eq!(p.add, vec![n("fd00::1/64")]);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn another_ipv4_address_is_refused_unless_forced() {
        let existing = [(n("10.9.0.1/24"), 0)];
        let e = spec(&["10.1.0.1/24"], false)
            .plan("br0", &existing)
            .unwrap_err();
        assert!(e.to_string().contains("forceAddress"), "{e}");
        let p = spec(&["10.1.0.1/24"], true).plan("br0", &existing).unwrap();
        assert_eq!(
            (p.add, p.remove),
            (vec![n("10.1.0.1/24")], vec![n("10.9.0.1/24")])
        );
    }

    #[test]
    fn only_overlapping_ipv6_conflicts() {
        let existing = [(n("fd00:1::1/64"), 0), (n("fd00::9/64"), 0)];
        let e = spec(&["fd00::1/64"], false)
            .plan("br0", &existing)
            .unwrap_err();
        assert!(e.to_string().contains("fd00::9/64"), "{e}");
        let p = spec(&["fd00::1/64"], true).plan("br0", &existing).unwrap();
        assert_eq!(p.remove, vec![n("fd00::9/64")]);
    }

    #[test]
    fn a_second_ipv4_gateway_meets_the_first_as_in_the_reference() {
        let e = spec(&["10.1.0.1/24", "10.2.0.1/24"], false)
            .plan("br0", &[])
            .unwrap_err();
        assert!(e.to_string().contains("10.1.0.1/24"), "{e}");
        // Forced, the second replaces the first: only it is added.
        let p = spec(&["10.1.0.1/24", "10.2.0.1/24"], true)
            .plan("br0", &[])
            .unwrap();
        assert_eq!((p.add, p.remove), (vec![n("10.2.0.1/24")], vec![]));
        // Two IPv6 gateways in different subnets are both kept.
        let p = spec(&["fd00:1::1/64", "fd00:2::1/64"], false)
            .plan("br0", &[])
            .unwrap();
        assert_eq!(p.add.len(), 2);
    }
}
