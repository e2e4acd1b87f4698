//! What the CNI plugins that give a container an interface (berth-bridge,
//! berth-overlay, berth-host) share between CNI and the network core: the
//! IPAM call, CNI results' addresses as the core's and back, the core's
//! errors as CNI's, CHECK of the container side against a prevResult, and
//! ([`attach`]) the CNI verbs of an attachment to a bridge network.

pub mod attach;
pub mod ipam;

use berth_kernel::{Handle, Link};
use berth_network::attachment::Addresses;
use berth_network::container::Address;
use cni::{codes, CniResult, Error, GoObject, IpConfig, Request, Route};

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
        Kind::Exists => codes::ALREADY_EXISTS,
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
    berth_kernel::mac_text(mac)
}

/// "aa:bb:cc:dd:ee:ff" (also with '-'), unicast; errors name `field`.
pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], Error> {
    let mac = berth_kernel::parse_mac(s)
        .ok_or_else(|| Error::config(field, format!("{s:?} is not a MAC address")))?;
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

/// A CNI result's addresses and routes as the core's.
pub fn core_addresses(result: &CniResult) -> Addresses {
    Addresses {
        addresses: result
            .ips
            .iter()
            .map(|ip| Address {
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect(),
        routes: result
            .routes
            .iter()
            .map(|r| {
                let mut route = berth_kernel::Route::new(r.dst);
                route.gateway = r.gw;
                route.mtu = r.mtu;
                route.advmss = r.advmss;
                route.priority = r.priority;
                route.table = r.table;
                route.scope = r.scope;
                route
            })
            .collect(),
    }
}

/// The core's addresses and routes into `result`, the addresses on
/// `result.interfaces[interface]`.
pub fn set_addresses(result: &mut CniResult, a: &Addresses, interface: usize) {
    result.ips = a
        .addresses
        .iter()
        .map(|a| IpConfig {
            address: a.address,
            gateway: a.gateway,
            interface: Some(interface),
        })
        .collect();
    result.routes = a
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst,
            gw: r.gateway,
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        })
        .collect();
}

/// Puts `result`'s addresses on link `index` of `cont`, sets it up, then
/// adds `result`'s routes through it (the core's
/// [`berth_network::container::configure`]).
pub fn apply(cont: &mut Handle, index: u32, result: &CniResult, nodad: bool) -> Result<(), Error> {
    let a = core_addresses(result);
    berth_network::container::configure(cont, index, &a.addresses, &a.routes, nodad)
        .map_err(core_error)
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
    fn results_and_core_addresses_convert_both_ways() {
        let r = CniResult::from_json(&serde_json::json!({
            "cniVersion": "1.1.0",
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}, {"address": "fd00::5/64"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 7, "scope": 0}]
        }), "1.1.0")
        .unwrap();
        let mut back = CniResult::default();
        set_addresses(&mut back, &core_addresses(&r), 2);
        assert_eq!(back.routes, r.routes);
        assert_eq!(back.ips.len(), 2);
        assert!(back.ips.iter().all(|ip| ip.interface == Some(2)));
        assert_eq!(back.ips[0].address, r.ips[0].address);
        assert_eq!(back.ips[0].gateway, r.ips[0].gateway);
        assert_eq!(back.ips[1].gateway, None);
    }
}
