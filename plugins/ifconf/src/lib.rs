//! The container side of an attachment, shared by every plugin that gives a
//! container an interface (berth-bridge, berth-host): the IPAM call, the
//! addresses and routes of a CNI result put on the interface, and CHECK of
//! them against a prevResult.

pub mod ipam;

use berth_kernel::{AddressOptions, Handle, Link, Netns};
use cni::{codes, CniResult, Error, GoObject, Request};
use ipnet::{IpNet, Ipv6Net};
use std::net::IpAddr;

/// `ipam.type`, if the config has an `ipam` section (which must name one).
pub fn ipam_type(conf: &cni::NetConf) -> Result<Option<String>, Error> {
    match conf.key("ipam") {
        None => Ok(None),
        Some(v) => match v.go_get("type").and_then(serde_json::Value::as_str) {
            Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
            _ => Err(Error::config("ipam.type", "missing")),
        },
    }
}

/// The config's `dns` key, which wins over what IPAM returns.
pub fn dns(conf: &cni::NetConf) -> Result<cni::Dns, Error> {
    cni::Dns::from_json(conf.key("dns").unwrap_or(&serde_json::Value::Null))
        .map_err(|e| Error::config("dns", e.msg))
}

/// The network core's error as a CNI error: a config key at fault is code
/// 7 naming it; the rest by kind.
pub fn core_error(e: berth_network::Error) -> Error {
    use berth_network::Kind;
    let code = match e.kind {
        Kind::Config => {
            return Error::config(e.field.as_deref().unwrap_or("config"), e.msg);
        }
        Kind::Kernel => codes::KERNEL,
        Kind::Firewall => codes::FIREWALL,
        Kind::PortTaken => codes::ADDRESS_TAKEN,
        Kind::TryAgain => codes::TRY_AGAIN,
        Kind::Store => codes::STORE,
        Kind::Io => codes::IO,
        Kind::CheckFailed => codes::CHECK_FAILED,
        Kind::Decode => codes::DECODE,
    };
    Error::new(code, e.msg)
}

/// A failed kernel operation as a CNI error.
pub fn kernel(e: berth_kernel::Error) -> Error {
    Error::new(codes::KERNEL, e.to_string())
}

/// CHECK found something missing or different.
pub fn check_failed(what: impl Into<String>) -> Error {
    Error::new(codes::CHECK_FAILED, what.into())
}

/// "aa:bb:cc:dd:ee:ff", the way CNI results spell MACs.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// "aa:bb:cc:dd:ee:ff" (also with '-'), unicast; errors name `field`.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], Error> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || Error::config(field, format!("{s:?} is not a MAC address"));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(Error::config(
            field,
            format!("{s:?} is a multicast address"),
        ));
    }
    Ok(mac)
}

/// The MAC the runtime asks for, if any. Priority, lowest first (as in the
/// reference plugins): CNI_ARGS MAC, args.cni.mac, runtimeConfig.mac.
pub fn container_mac(req: &Request) -> Result<Option<[u8; 6]>, Error> {
    if let Some(m) = req.conf.runtime("mac") {
        let s = m
            .as_str()
            .ok_or_else(|| Error::config("runtimeConfig.mac", "expected a string"))?;
        return parse_mac("runtimeConfig.mac", s).map(Some);
    }
    if let Some(m) = req.conf.args_cni("mac") {
        let s = m
            .as_str()
            .ok_or_else(|| Error::config("args.cni.mac", "expected a string"))?;
        return parse_mac("args.cni.mac", s).map(Some);
    }
    match req.args.get("MAC") {
        Some(s) => parse_mac("CNI_ARGS MAC", s).map(Some),
        None => Ok(None),
    }
}

/// The link's MAC as a result spells it, empty if it has none.
pub fn mac_string(link: &Link) -> String {
    link.mac.as_ref().map(format_mac).unwrap_or_default()
}

/// `enabledad: false`, as in the reference plugins: no duplicate address
/// detection on the container interface, so its link-local address is
/// usable at once and sends no DAD probe. Must run before the link comes
/// up; the addresses from IPAM are added without DAD by [`apply`].
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
pub fn disable_dad(cont: &mut Handle, ns: &Netns, link: &Link) -> Result<(), Error> {
    let Some(v6) = &link.ipv6 else {
        return Ok(()); // no IPv6 in this kernel
    };
    if v6.disabled {
        return Ok(());
    }
    match link.mac {
        Some(mac) if v6.eui64_link_local => {
            let ll = Ipv6Net::new(berth_kernel::eui64_link_local(&mac), 64)
                .map_err(|e| Error::new(codes::KERNEL, format!("link-local address: {e}")))?;
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
fn accept_no_dad_sysctl(ns: &Netns, ifname: &str) -> Result<(), Error> {
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

/// The gateway a route of `result` without its own `gw` goes through: that
/// of the first address of the route's family.
fn family_gateway(result: &CniResult, dst: &IpNet) -> Option<IpAddr> {
    let v4 = dst.addr().is_ipv4();
    result
        .ips
        .iter()
        .find(|i| i.address.addr().is_ipv4() == v4)
        .and_then(|i| i.gateway)
}

/// Puts `result`'s addresses on link `index` of `cont`, sets it up, then
/// adds `result`'s routes through it (IPv6 prefix routes need the link
/// up). `nodad` marks the addresses as needing no duplicate address
/// detection. A route that already exists (listed twice, or implied by an
/// address) is fine.
pub fn apply(cont: &mut Handle, index: u32, result: &CniResult, nodad: bool) -> Result<(), Error> {
    for ip in &result.ips {
        cont.add_address(index, ip.address, &AddressOptions { nodad })
            .map_err(kernel)?;
    }
    cont.set_up(index).map_err(kernel)?;
    for r in &result.routes {
        let mut route = berth_kernel::Route::new(r.dst);
        route.gateway = r.gw.or_else(|| family_gateway(result, &r.dst));
        route.oif = Some(index);
        route.mtu = r.mtu;
        route.advmss = r.advmss;
        route.priority = r.priority;
        route.table = r.table;
        route.scope = r.scope;
        match cont.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(Error::new(codes::KERNEL, format!("route {}: {e}", r.dst))),
        }
    }
    Ok(())
}

/// The container interface CHECK found: its position in the prevResult's
/// `interfaces` and the link as it is now.
pub struct Checked {
    pub index_in_result: usize,
    pub link: Link,
}

/// CHECK of the container side: `prev` names CNI_IFNAME with a sandbox, the
/// link exists in `cont` with the MAC `prev` gives, and carries every
/// address and route `prev` lists for it.
pub fn check_interface(
    cont: &mut Handle,
    req: &Request,
    prev: &CniResult,
) -> Result<Checked, Error> {
    let ns_path = req
        .netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            Error::config(
                "prevResult",
                format!("no interface {:?} with a sandbox", req.ifname),
            )
        })?;
    let want = &prev.interfaces[idx];
    let link = cont
        .link_by_name(&req.ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {:?} is missing from {ns_path}",
                req.ifname
            ))
        })?;
    if !want.mac.is_empty() && !mac_string(&link).eq_ignore_ascii_case(&want.mac) {
        return Err(check_failed(format!(
            "interface {:?} has MAC {} but the ADD result says {}",
            req.ifname,
            mac_string(&link),
            want.mac
        )));
    }
    let addrs = cont.addresses(Some(link.index)).map_err(kernel)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(idx)) {
        if !addrs.iter().any(|a| a.addr == ip.address) {
            return Err(check_failed(format!(
                "address {} is missing from {:?}",
                ip.address, req.ifname
            )));
        }
    }
    let routes = cont.routes().map_err(kernel)?;
    for r in &prev.routes {
        let found = routes
            .iter()
            .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gateway == r.gw));
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(check_failed(format!(
                "route {}{via} is missing from {ns_path}",
                r.dst
            )));
        }
    }
    Ok(Checked {
        index_in_result: idx,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_lower_case_and_colon_separated() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }

    #[test]
    fn routes_without_gw_use_their_familys_gateway() {
        let r = CniResult::from_json(&serde_json::json!({
            "cniVersion": "1.1.0",
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}, {"address": "fd00::5/64", "gateway": "fd00::1"}]
        }), "1.1.0")
        .unwrap();
        assert_eq!(
            family_gateway(&r, &"0.0.0.0/0".parse().unwrap()),
            Some("10.1.0.1".parse().unwrap())
        );
        assert_eq!(
            family_gateway(&r, &"::/0".parse().unwrap()),
            Some("fd00::1".parse().unwrap())
        );
    }
}
