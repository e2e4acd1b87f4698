//! `mode: device`: an existing host link moved into the container as
//! CNI_IFNAME, and back to the host as it was on DEL.
//!
//! The move, the rename and the alias are one RTM_SETLINK: the kernel
//! takes the link down, moves it, then renames it inside the container, so
//! a name that exists on the host (eth0) doesn't matter. The link's alias
//! carries its host name while it is in the container (what the reference
//! `host-device` does, so either plugin can find it), and the attachment
//! record, written before the move, holds everything DEL restores: name,
//! MTU, up/down, alias, addresses and routes (a namespace move drops the
//! addresses, and the routes with them).
//!
//! When the container's namespace is destroyed with the link still in it,
//! the kernel returns physical links (those without rtnl_link_ops) to the
//! initial namespace, keeping the container-side name or, if that is
//! taken, `dev<ifindex>`; virtual links (veth, macvlan, ifb, ...) are
//! deleted with the namespace. DEL and GC handle both: a returned link is
//! found on the host by its alias and restored (a physical one is waited
//! for while the kernel tears the namespace down); a deleted one leaves
//! nothing to restore, and its record is dropped.

use crate::config::{DeviceConf, DeviceSelector, HostConf};
use crate::state::{self, boot_id, Record, SavedDevice, SavedRoute, State};
use crate::{configure_interface, ensure_ifname_free, existing_container_netns, finish_or_undo};
use berth_kernel::{Handle, Link, Netns};
use cni::{CniResult, Command, Error, Request};
use ifconf::{check_failed, core_error, ipam, kernel};
use std::path::Path;

/// RT_SCOPE_LINK: IPv6 link-local addresses come back by themselves.
const SCOPE_LINK: u8 = 253;

pub fn add(
    req: &Request,
    conf: &HostConf,
    dev: &DeviceConf,
    ns: &Netns,
) -> Result<CniResult, Error> {
    let network = &req.conf.name;
    let mut host = Handle::new().map_err(kernel)?;
    let mut cont = Handle::in_netns(ns).map_err(kernel)?;
    ensure_ifname_free(&mut cont, req, ns)?;
    let state = State::from_env();
    // Held until the link has moved, so two ADDs claiming the same device
    // are told apart by the record of the first.
    let lock = state.lock().map_err(core_error)?;
    let link = find_link(&mut host, &dev.selector, &state)?;
    if link.name == "lo" {
        return Err(Error::config(
            selector_field(&dev.selector),
            "the loopback device cannot be moved",
        ));
    }
    if !dev.allow_default_route && carries_default_route(&mut host, link.index)? {
        return Err(Error::config(
            selector_field(&dev.selector),
            format!(
                "{:?} carries the host's default route; set allowDefaultRoute to move it anyway",
                link.name
            ),
        ));
    }
    let addresses = host
        .addresses(Some(link.index))
        .map_err(kernel)?
        .into_iter()
        .filter(|a| a.scope != SCOPE_LINK)
        .map(|a| a.addr)
        .collect();
    let routes = host
        .routes()
        .map_err(kernel)?
        .into_iter()
        .filter(|r| r.oif == Some(link.index) && r.table.is_none() && !r.kernel_made)
        .map(|r| SavedRoute {
            dst: r.dst,
            gateway: r.gateway,
            metric: r.priority,
        })
        .collect();
    let saved = SavedDevice {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        up: link.admin_up,
        alias: link.alias.clone(),
        addresses,
        routes,
        // Physical links have no IFLA_INFO_KIND (no rtnl_link_ops).
        virtual_link: link.kind.is_some(),
    };
    let rec = Record {
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        netns: ns.path().display().to_string(),
        mode: "device".into(),
        master: None,
        boot_id: boot_id(),
        device: Some(saved),
    };
    state.write(&lock, network, &rec).map_err(core_error)?;
    let moved = host
        .move_link(link.index, ns, &req.ifname, Some(&link.name))
        .map_err(kernel);
    drop(lock);
    let configured = moved.and_then(|()| configure_interface(req, conf, ns, &mut cont));
    finish_or_undo(req, conf, configured, || release(&state, network, &rec))
}

fn selector_field(s: &DeviceSelector) -> &'static str {
    match s {
        DeviceSelector::Name(_) => "device",
        DeviceSelector::Mac(_) => "hwaddr",
        DeviceSelector::KernelPath(_) => "kernelpath",
        DeviceSelector::Pci(_) | DeviceSelector::Auxiliary(_) => "pciBusID",
    }
}

/// The name of the first link under a sysfs device's `net/` directory.
fn sysfs_net_name(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir.join("net"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .min()
}

/// A PCI device's link; virtio devices keep it one level down.
fn pci_net_name(id: &str) -> Option<String> {
    let dir = Path::new("/sys/bus/pci/devices").join(id);
    sysfs_net_name(&dir).or_else(|| {
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
            .find_map(|e| sysfs_net_name(&e.path()))
    })
}

fn find_link(host: &mut Handle, selector: &DeviceSelector, state: &State) -> Result<Link, Error> {
    let field = selector_field(selector);
    let found = match selector {
        DeviceSelector::Name(n) => host.link_by_name(n).map_err(kernel)?,
        DeviceSelector::Mac(m) => host
            .links()
            .map_err(kernel)?
            .into_iter()
            .find(|l| l.mac.as_ref() == Some(m)),
        DeviceSelector::KernelPath(p) => match sysfs_net_name(p) {
            Some(n) => host.link_by_name(&n).map_err(kernel)?,
            None => {
                return Err(Error::config(
                    field,
                    format!("no network interface under {}", p.display()),
                ))
            }
        },
        DeviceSelector::Pci(id) => match pci_net_name(id) {
            Some(n) => host.link_by_name(&n).map_err(kernel)?,
            None => {
                return Err(Error::config(
                    field,
                    format!("no network interface under PCI device {id}"),
                ))
            }
        },
        DeviceSelector::Auxiliary(id) => {
            match sysfs_net_name(&Path::new("/sys/bus/auxiliary/devices").join(id)) {
                Some(n) => host.link_by_name(&n).map_err(kernel)?,
                None => {
                    return Err(Error::config(
                        field,
                        format!("no network interface under auxiliary device {id}"),
                    ))
                }
            }
        }
    };
    if let Some(l) = found {
        return Ok(l);
    }
    let what = match selector {
        DeviceSelector::Name(n) => format!("{n:?}"),
        DeviceSelector::Mac(m) => format!("with MAC {}", ifconf::format_mac(m)),
        _ => "found in sysfs".to_string(),
    };
    if let DeviceSelector::Name(n) = selector {
        if let Some((network, holder)) = state.device_holder(n) {
            return Err(Error::config(
                field,
                format!(
                    "{n:?} is already in a container: {} (ifname {:?}, network {network:?}, netns {})",
                    holder.container_id, holder.ifname, holder.netns
                ),
            ));
        }
    }
    Err(Error::config(
        field,
        format!("no link {what} in the host's network namespace"),
    ))
}

fn carries_default_route(host: &mut Handle, index: u32) -> Result<bool, Error> {
    let routes = host.routes().map_err(kernel)?;
    Ok(routes
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.oif == Some(index) && r.table.is_none()))
}

pub fn del(req: &Request, conf: &HostConf) -> Result<(), Error> {
    let network = &req.conf.name;
    let state = State::from_env();
    let rec = state.read(network, &req.container_id, &req.ifname);
    // Without CNI_NETNS (allowed on DEL), the namespace ADD moved the
    // device into, if it still exists. The host's namespace is refused
    // before anything, IPAM included.
    let ns_path = match (&req.netns, &rec) {
        (Some(p), _) if !p.as_os_str().is_empty() => Some(p.clone()),
        (_, Some(r)) => Some(std::path::PathBuf::from(&r.netns)),
        _ => None,
    };
    let ns = existing_container_netns(ns_path.as_deref(), conf.mode.name())?;
    let mut errors = Vec::new();
    if let Some(t) = &conf.ipam_type {
        if let Err(e) = ipam::call(t, Command::Del, req) {
            errors.push(e);
        }
    }
    if let Some(rec) = rec {
        if let Err(e) = restore_and_forget(&state, network, &rec, ns.as_ref()) {
            errors.push(e);
        }
    }
    errors.into_iter().next().map_or(Ok(()), Err)
}

/// GC, and ADD's rollback: the record's own netns, if it still exists.
pub fn release(state: &State, network: &str, rec: &Record) -> Result<(), Error> {
    let ns = existing_container_netns(Some(Path::new(&rec.netns)), "device")?;
    restore_and_forget(state, network, rec, ns.as_ref())
}

/// Puts the device back as it was and drops the record; the record stays
/// if that fails, so a retried DEL or a GC tries again.
fn restore_and_forget(
    state: &State,
    network: &str,
    rec: &Record,
    ns: Option<&Netns>,
) -> Result<(), Error> {
    // A record from another boot describes a link the reboot returned.
    if rec.is_current() {
        if let Some(saved) = &rec.device {
            state::restore_device(saved, &rec.ifname, ns).map_err(core_error)?;
        }
    }
    let lock = state.lock().map_err(core_error)?;
    state
        .remove(&lock, network, &rec.container_id, &rec.ifname)
        .map_err(core_error)
}

pub fn check(req: &Request, ns: &Netns, prev: &CniResult) -> Result<(), Error> {
    let mut cont = Handle::in_netns(ns).map_err(kernel)?;
    let checked = ifconf::check_interface(&mut cont, req, prev)?;
    let state = State::from_env();
    let rec = state
        .read(&req.conf.name, &req.container_id, &req.ifname)
        .filter(Record::is_current)
        .ok_or_else(|| {
            check_failed(format!(
                "no record of container {} ifname {:?}",
                req.container_id, req.ifname
            ))
        })?;
    let name = rec.device.map(|d| d.name).unwrap_or_default();
    if checked.link.alias.as_deref() != Some(name.as_str()) {
        return Err(check_failed(format!(
            "{:?} is not host device {name:?} (its alias is {:?})",
            req.ifname, checked.link.alias
        )));
    }
    Ok(())
}
