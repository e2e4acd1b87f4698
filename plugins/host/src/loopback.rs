//! `mode: none`: loopback only, as the reference `loopback` plugin does it.
//! CNI_IFNAME is ignored (the interface is always `lo`); chained after
//! another plugin, the prevResult passes through unchanged.

use berth_kernel::{Handle, Link, Netns};
use cni::{CniResult, Error, Interface, IpConfig, Request};
use ifconf::{check_failed, kernel};

const LO: &str = "lo";

fn loopback(h: &mut Handle, ns: &Netns) -> Result<Link, Error> {
    h.link_by_name(LO)
        .map_err(kernel)?
        .ok_or_else(|| check_failed(format!("{} has no {LO}", ns.path().display())))
}

pub fn add(req: &Request, ns: &Netns) -> Result<CniResult, Error> {
    // A prevResult that doesn't parse is refused before lo changes.
    let prev = req.prev_result()?;
    let mut h = Handle::in_netns(ns).map_err(kernel)?;
    let lo = loopback(&mut h, ns)?;
    // Bringing lo up makes the kernel add 127.0.0.1/8 and ::1 to it.
    h.set_up(lo.index).map_err(kernel)?;
    if let Some(prev) = prev {
        return Ok(CniResult {
            cni_version: req.result_version(),
            ..prev
        });
    }
    let addrs = h.addresses(Some(lo.index)).map_err(kernel)?;
    if let Some(a) = addrs.iter().find(|a| !a.addr.addr().is_loopback()) {
        return Err(Error::new(
            cni::codes::KERNEL,
            format!("{LO} carries a non-loopback address {}", a.addr),
        ));
    }
    // One address per family, as the reference reports them.
    let first = |v4: bool| addrs.iter().find(|a| a.addr.addr().is_ipv4() == v4);
    let ips = [first(true), first(false)]
        .into_iter()
        .flatten()
        .map(|a| IpConfig {
            address: a.addr,
            gateway: None,
            interface: Some(0),
        })
        .collect();
    Ok(CniResult {
        cni_version: req.result_version(),
        interfaces: vec![Interface {
            name: LO.into(),
            mac: "00:00:00:00:00:00".into(),
            sandbox: ns.path().display().to_string(),
            ..Default::default()
        }],
        ips,
        ..Default::default()
    })
}

/// Sets lo down; a namespace that is gone has nothing to undo.
pub fn del(ns: Option<Netns>) -> Result<(), Error> {
    let Some(ns) = ns else { return Ok(()) };
    let mut h = Handle::in_netns(&ns).map_err(kernel)?;
    match h.link_by_name(LO).map_err(kernel)? {
        Some(lo) => h.set_down(lo.index).map_err(kernel),
        None => Ok(()),
    }
}

/// CHECK: lo is up with a loopback address, and has the addresses the ADD
/// result gave it (all of them when chained, where the prevResult describes
/// other interfaces). lo's state needs nothing from the ADD, so, as in the
/// reference, a CHECK without prevResult (libcni sends none when its cache
/// lost the result) checks the kernel alone; a prevResult given must still
/// parse.
pub fn check(req: &Request, ns: &Netns) -> Result<(), Error> {
    let prev = req.prev_result()?;
    let mut h = Handle::in_netns(ns).map_err(kernel)?;
    let lo = loopback(&mut h, ns)?;
    if !lo.admin_up {
        return Err(check_failed(format!(
            "{LO} is down in {}",
            ns.path().display()
        )));
    }
    let addrs = h.addresses(Some(lo.index)).map_err(kernel)?;
    let expected = prev.iter().flat_map(|p| {
        let lo_index = p.interfaces.iter().position(|i| i.name == LO);
        p.ips
            .iter()
            .filter(move |ip| lo_index.is_some() && ip.interface == lo_index)
    });
    for ip in expected {
        if !addrs.iter().any(|a| a.addr == ip.address) {
            return Err(check_failed(format!(
                "address {} is missing from {LO}",
                ip.address
            )));
        }
    }
    if !addrs.iter().any(|a| a.addr.addr().is_loopback()) {
        return Err(check_failed(format!(
            "{LO} has no loopback address in {}",
            ns.path().display()
        )));
    }
    Ok(())
}
