//! The container side of an interface: its addresses and routes, and
//! duplicate address detection turned off when asked (berth-bridge,
//! berth-overlay and berth-host alike).

use berth_kernel::{AddressOptions, Handle, Link, Netns, Route};
use ipnet::{IpNet, Ipv6Net};
use std::net::IpAddr;

use crate::{kernel, Error, Kind, Result};

/// An address of the interface, with the gateway its family's routes go
/// through when they name none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// A route through the interface; `route.gateway` `None` means the
/// gateway of the first address of the route's family, `route.oif` is
/// set to the interface.
pub type ContainerRoute = Route;

/// `enabledad: false`, as in the reference plugins: no duplicate address
/// detection on the container interface, so its link-local address is
/// up; the addresses are added without DAD by [`configure`].
///
/// The reference sets the link's accept_dad to 0 under /proc/sys. Finding
/// a /proc/sys/net file costs a walk over one cached entry per network
/// namespace that ever looked up the same name (they share a hash chain),
/// so doing that in every container made every ADD on the host slower as
/// containers accumulated. Instead the link gets, through netlink, the
/// link-local address the kernel would make, flagged for no DAD; the
/// kernel's own attempt at link-up then finds it already there. Only a
/// link whose namespace chose stable or random link-local addresses falls
/// back to the sysctl.
pub fn disable_dad(cont: &mut Handle, ns: &Netns, link: &Link) -> Result<()> {
    let Some(v6) = &link.ipv6 else {
        return Ok(()); // no IPv6 in this kernel
    };
    if v6.disabled {
        return Ok(());
    }
    match link.mac {
        Some(mac) if v6.eui64_link_local => {
            let ll = Ipv6Net::new(berth_kernel::eui64_link_local(&mac), 64)
                .map_err(|e| Error::new(Kind::Kernel, format!("link-local address: {e}")))?;
            match cont.add_address(link.index, IpNet::V6(ll), &AddressOptions { nodad: true }) {
                Ok(()) => Ok(()),
                Err(e) if e.is_exists() => Ok(()),
                Err(e) => Err(kernel(e)),
            }
        }
        _ => accept_no_dad_sysctl(ns, &link.name),
    }
}

/// /proc/sys/net resolves in the writer's netns, hence the thread in the
/// container's.
fn accept_no_dad_sysctl(ns: &Netns, ifname: &str) -> Result<()> {
    let ifname = ifname.to_string();
    let written = ns.run(move || {
        for key in ["accept_dad", "enhanced_dad"] {
            match berth_kernel::sysctl::write(&format!("net/ipv6/conf/{ifname}/{key}"), "0") {
                Ok(()) => {}
                // No enhanced_dad knob in this kernel.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    written.map_err(kernel)?.map_err(kernel)
}

/// The gateway of a route without its own: that of the first address of
/// the route's family.
fn family_gateway(addresses: &[Address], dst: &IpNet) -> Option<IpAddr> {
    let v4 = dst.addr().is_ipv4();
    addresses
        .iter()
        .find(|a| a.address.addr().is_ipv4() == v4)
        .and_then(|a| a.gateway)
}

/// Puts `addresses` on link `index` of `cont`, sets it up, then adds
/// `routes` through it (IPv6 prefix routes need the link up). `nodad`
/// marks the addresses as needing no duplicate address detection. A route
/// that already exists (listed twice, or implied by an address) is fine.
pub fn configure(
    cont: &mut Handle,
    index: u32,
    addresses: &[Address],
    routes: &[ContainerRoute],
    nodad: bool,
) -> Result<()> {
    for a in addresses {
        cont.add_address(index, a.address, &AddressOptions { nodad })
            .map_err(kernel)?;
    }
    cont.set_up(index).map_err(kernel)?;
    for r in routes {
        let mut route = r.clone();
        route.gateway = r.gateway.or_else(|| family_gateway(addresses, &r.dst));
        route.oif = Some(index);
        match cont.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(Error::new(Kind::Kernel, format!("route {}: {e}", r.dst))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_without_gw_use_their_familys_gateway() {
        let addresses = [
            Address {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
            },
            Address {
                address: "fd00::5/64".parse().unwrap(),
                gateway: Some("fd00::1".parse().unwrap()),
            },
        ];
        assert_eq!(
            family_gateway(&addresses, &"0.0.0.0/0".parse().unwrap()),
            Some("10.1.0.1".parse().unwrap())
        );
        assert_eq!(
            family_gateway(&addresses, &"::/0".parse().unwrap()),
            Some("fd00::1".parse().unwrap())
        );
    }
}
