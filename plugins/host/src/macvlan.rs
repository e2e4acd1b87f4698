//! `mode: macvlan`: a macvlan child of a host link, created directly in the
//! container's namespace under CNI_IFNAME (one RTM_NEWLINK carrying the
//! namespace fd: no temporary name, no move). Keys as in the reference
//! `macvlan` plugin; its `mode` is `macvlanMode` here (or `mode` itself
//! names the macvlan mode).
//!
//! The child dies with the container's namespace; the attachment record
//! only lets GC delete children whose namespace outlived their attachment.

use crate::config::{HostConf, MacvlanConf};
use crate::state::{boot_id, Record, State};
use crate::{configure_interface, ensure_ifname_free, existing_container_netns, finish_or_undo};
use berth_kernel::{Handle, Link, MacvlanOptions, Netns};
use cni::{codes, CniResult, Command, Error, Request};
use ifconf::{check_failed, core_error, ipam, kernel};
use std::path::Path;

const KIND: &str = "macvlan";

/// The link of the namespace's first default route.
fn default_route_link(h: &mut Handle) -> Result<Option<Link>, Error> {
    let routes = h.routes().map_err(kernel)?;
    let Some(oif) = routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0 && r.table.is_none())
        .and_then(|r| r.oif)
    else {
        return Ok(None);
    };
    h.link_by_index(oif).map_err(kernel)
}

/// The parent link, in the host's namespace or (linkInContainer) the
/// container's.
fn master(parent_ns: &mut Handle, m: &MacvlanConf) -> Result<Link, Error> {
    let where_ = if m.link_in_container {
        "the container's"
    } else {
        "the host's"
    };
    match &m.master {
        Some(name) => parent_ns
            .link_by_name(name)
            .map_err(kernel)?
            .ok_or_else(|| Error::config("master", format!("no link {name:?} in {where_} network namespace"))),
        None => default_route_link(parent_ns)?.ok_or_else(|| {
            Error::config("master", format!("not given, and {where_} network namespace has no default route to take it from"))
        }),
    }
}

pub fn add(
    req: &Request,
    conf: &HostConf,
    m: &MacvlanConf,
    ns: &Netns,
) -> Result<CniResult, Error> {
    let network = &req.conf.name;
    let mut cont = Handle::in_netns(ns).map_err(kernel)?;
    ensure_ifname_free(&mut cont, req, ns)?;
    let mut host = Handle::new().map_err(kernel)?;
    let parent_ns = if m.link_in_container {
        &mut cont
    } else {
        &mut host
    };
    let parent = master(parent_ns, m)?;
    if let Some(mtu) = m.mtu {
        if mtu > parent.mtu {
            return Err(Error::config(
                "mtu",
                format!(
                    "{mtu} is above the MTU of master {:?} ({})",
                    parent.name, parent.mtu
                ),
            ));
        }
    }
    let state = State::from_env();
    let rec = Record {
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        netns: ns.path().display().to_string(),
        mode: KIND.into(),
        master: Some(parent.name.clone()),
        boot_id: boot_id(),
        device: None,
    };
    {
        let lock = state.lock().map_err(core_error)?;
        state.write(&lock, network, &rec).map_err(core_error)?;
    }
    let opts = MacvlanOptions {
        mode: m.mode,
        mtu: m.mtu,
        mac: m.mac,
        bc_queue_len: m.bc_queue_len,
    };
    let parent_ns = if m.link_in_container {
        &mut cont
    } else {
        &mut host
    };
    let created = parent_ns
        .add_macvlan(&req.ifname, parent.index, ns, &opts)
        .map_err(|e| {
            if e.is_exists() {
                Error::new(
                    codes::ALREADY_EXISTS,
                    format!("CNI_IFNAME: interface {:?} already exists: {e}", req.ifname),
                )
            } else {
                kernel(e)
            }
        });
    let configured = created.and_then(|()| {
        if conf.ipam_type.is_some() {
            announce_on_up(ns, &req.ifname)?;
        }
        configure_interface(req, conf, ns, &mut cont)
    });
    finish_or_undo(req, conf, configured, || release(&state, network, &rec))
}

/// Gratuitous ARP and unsolicited neighbour advertisements when the link
/// comes up, as the reference macvlan sets them: the segment's switches
/// and neighbours learn the new MAC at once.
fn announce_on_up(ns: &Netns, ifname: &str) -> Result<(), Error> {
    let ifname = ifname.to_string();
    let written = ns.run(move || {
        for key in [
            format!("net/ipv4/conf/{ifname}/arp_notify"),
            format!("net/ipv6/conf/{ifname}/ndisc_notify"),
        ] {
            match berth_kernel::sysctl::write(&key, "1") {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {} // no IPv6 in this kernel
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    written.map_err(kernel)?.map_err(kernel)
}

/// Deletes CNI_IFNAME in `ns` if it is a macvlan (anything else by that
/// name is not ours).
fn delete_child(ns: &Netns, ifname: &str) -> Result<(), Error> {
    let mut cont = Handle::in_netns(ns).map_err(kernel)?;
    match cont.link_by_name(ifname).map_err(kernel)? {
        Some(l) if l.kind.as_deref() == Some(KIND) => match cont.delete_link(l.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(kernel(e)),
        },
        _ => Ok(()),
    }
}

pub fn del(req: &Request, conf: &HostConf) -> Result<(), Error> {
    let ns = existing_container_netns(req.netns.as_deref(), conf.mode.name())?;
    let mut errors = Vec::new();
    if let Some(t) = &conf.ipam_type {
        if let Err(e) = ipam::call(t, Command::Del, req) {
            errors.push(e);
        }
    }
    let deleted = match &ns {
        Some(ns) => delete_child(ns, &req.ifname),
        None => Ok(()),
    };
    match deleted {
        Ok(()) => {
            let state = State::from_env();
            let removed = state
                .lock()
                .and_then(|lock| {
                    state.remove(&lock, &req.conf.name, &req.container_id, &req.ifname)
                })
                .map_err(core_error);
            if let Err(e) = removed {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }
    errors.into_iter().next().map_or(Ok(()), Err)
}

/// GC, and ADD's rollback: deletes the child if its namespace still
/// exists, then the record.
pub fn release(state: &State, network: &str, rec: &Record) -> Result<(), Error> {
    if rec.is_current() {
        if let Some(ns) = existing_container_netns(Some(Path::new(&rec.netns)), KIND)? {
            delete_child(&ns, &rec.ifname)?;
        }
    }
    let lock = state.lock().map_err(core_error)?;
    state
        .remove(&lock, network, &rec.container_id, &rec.ifname)
        .map_err(core_error)
}

pub fn check(req: &Request, m: &MacvlanConf, ns: &Netns, prev: &CniResult) -> Result<(), Error> {
    let mut cont = Handle::in_netns(ns).map_err(kernel)?;
    let checked = ifconf::check_interface(&mut cont, req, prev)?;
    let link = &checked.link;
    if link.kind.as_deref() != Some(KIND) {
        return Err(check_failed(format!(
            "{:?} is not a macvlan (kind {:?})",
            req.ifname, link.kind
        )));
    }
    if link.macvlan_mode != Some(m.mode) {
        return Err(check_failed(format!(
            "{:?} is in macvlan mode {:?}, the config says {:?}",
            req.ifname, link.macvlan_mode, m.mode
        )));
    }
    let mut host = Handle::new().map_err(kernel)?;
    let parent_ns = if m.link_in_container {
        &mut cont
    } else {
        &mut host
    };
    master(parent_ns, m).map_err(|e| check_failed(e.msg))?;
    Ok(())
}
