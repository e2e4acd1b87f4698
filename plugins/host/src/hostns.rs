//! `mode: host`: the container shares the host's network namespace. ADD
//! changes nothing; it makes sure CNI_NETNS really is the host's namespace
//! and reports what the container will see: the host's interfaces that
//! carry addresses, and those addresses.

use crate::is_host_netns;
use berth_kernel::{Handle, Netns};
use cni::{CniResult, Error, Interface, IpConfig, Request};
use ifconf::{kernel, mac_string};

/// RT_SCOPE_LINK: IPv6 link-local addresses, which say nothing about how
/// the container is reached.
const SCOPE_LINK: u8 = 253;

fn host_netns(req: &Request) -> Result<Netns, Error> {
    let path = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "missing"))?;
    let ns = Netns::open(path).map_err(|e| Error::env("CNI_NETNS", e))?;
    if !is_host_netns(&ns)? {
        return Err(Error::env(
            "CNI_NETNS",
            format!(
                "{} is not the host's network namespace, which mode host requires",
                path.display()
            ),
        ));
    }
    Ok(ns)
}

pub fn add(req: &Request) -> Result<CniResult, Error> {
    let ns = host_netns(req)?;
    let sandbox = ns.path().display().to_string();
    let mut h = Handle::in_netns(&ns).map_err(kernel)?;
    let mut links = h.links().map_err(kernel)?;
    let addrs = h.addresses(None).map_err(kernel)?;
    // Loopback last: runtimes take the first address as the container's.
    links.sort_by_key(|l| (l.name == "lo", l.index));
    let mut result = CniResult {
        cni_version: req.result_version(),
        ..Default::default()
    };
    for link in links {
        let mut own: Vec<_> = addrs
            .iter()
            .filter(|a| a.index == link.index && a.scope != SCOPE_LINK)
            .collect();
        if own.is_empty() {
            continue;
        }
        // IPv4 first, each family in the kernel's order.
        own.sort_by_key(|a| !a.addr.addr().is_ipv4());
        let idx = result.interfaces.len();
        result.interfaces.push(Interface {
            name: link.name.clone(),
            mac: mac_string(&link),
            mtu: Some(link.mtu),
            sandbox: sandbox.clone(),
            ..Default::default()
        });
        result.ips.extend(own.into_iter().map(|a| IpConfig {
            address: a.addr,
            gateway: None,
            interface: Some(idx),
        }));
    }
    Ok(result)
}

/// CHECK: the namespace is still the host's.
/// CHECK needs the ADD's result, as in every other mode (the runtime
/// always passes it); the namespace must still be the host's.
pub fn check(req: &Request) -> Result<(), Error> {
    req.prev_result()?
        .ok_or_else(|| Error::config("prevResult", "CHECK needs the ADD result as prevResult"))?;
    host_netns(req).map(|_| ())
}
