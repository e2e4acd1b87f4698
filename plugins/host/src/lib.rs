//! berth-host: a container with no network of its own beyond loopback
//! (`mode: none`), the host's network (`host`), a host link moved into it
//! (`device`), or a macvlan child of a host link (`macvlan`). One binary,
//! the reference `loopback`, `host-device` and `macvlan` plugins' keys.
//!
//! Which namespace CNI_NETNS may name depends on the mode, so the plugin
//! judges it itself: `host` requires the host's namespace, every other
//! mode refuses it (code 4, naming CNI_NETNS) before changing anything.

pub mod config;
mod device;
mod hostns;
mod loopback;
mod macvlan;
/// The attachments' records are the core's (`berth status` reads them).
pub use berth_network::host_attachment as state;

use berth_kernel::{Handle, Netns};
use cni::{codes, CniResult, Command, Error, Interface, Plugin, Request};
use config::{HostConf, Mode};
use ifconf::{ipam, kernel, mac_string};
use std::os::unix::fs::MetadataExt;

pub struct HostPlugin;

/// (st_dev, st_ino) of a namespace file, if it can be stat'ed.
fn ns_identity(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True if `ns` is the host's network namespace: this process's own, or
/// that of PID 1 (the plugin may run in a namespace of its own, e.g. when
/// a runtime is itself containerised).
pub fn is_host_netns(ns: &Netns) -> Result<bool, Error> {
    let id = ns.identity().map_err(kernel)?;
    Ok(["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|p| ns_identity(p) == Some(id)))
}

/// CNI_NETNS for the modes that configure a container's own namespace:
/// present, a network namespace, and not the host's.
fn container_netns(req: &Request, mode: &Mode) -> Result<Netns, Error> {
    let path = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "missing"))?;
    let ns = Netns::open(path).map_err(|e| Error::env("CNI_NETNS", e))?;
    if is_host_netns(&ns)? {
        return Err(Error::env(
            "CNI_NETNS",
            format!(
                "{} is the host's network namespace; mode {} configures a container's own (use mode host to share the host's)",
                path.display(),
                mode.name()
            ),
        ));
    }
    Ok(ns)
}

/// CNI_NETNS for DEL and GC, which must work when the namespace is gone:
/// None if it is unset or no longer exists; an error if it is the host's,
/// so a DEL can never reconfigure the host.
fn existing_container_netns(
    path: Option<&std::path::Path>,
    mode: &str,
) -> Result<Option<Netns>, Error> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    match Netns::open(path) {
        Ok(ns) if is_host_netns(&ns)? => Err(Error::env(
            "CNI_NETNS",
            format!(
                "{} is the host's network namespace, not a container's (mode {mode})",
                path.display()
            ),
        )),
        Ok(ns) => Ok(Some(ns)),
        // Gone already (ENOENT), or its mount point left without a namespace.
        Err(_) => Ok(None),
    }
}

/// A duplicate ADD (or a name the container already uses) fails before
/// anything changes.
fn ensure_ifname_free(cont: &mut Handle, req: &Request, ns: &Netns) -> Result<(), Error> {
    if cont.link_by_name(&req.ifname).map_err(kernel)?.is_some() {
        return Err(Error::new(
            codes::ALREADY_EXISTS,
            format!(
                "CNI_IFNAME: interface {:?} already exists in {}",
                req.ifname,
                ns.path().display()
            ),
        ));
    }
    Ok(())
}

/// CNI_IFNAME has arrived in the container (moved there or created there):
/// addresses and routes from IPAM on it, or just up without IPAM, and the
/// result naming it. Duplicate address detection stays on: device and
/// macvlan links sit on real segments shared with other hosts.
fn configure_interface(
    req: &Request,
    conf: &HostConf,
    ns: &Netns,
    cont: &mut Handle,
) -> Result<CniResult, Error> {
    let link = cont
        .link_by_name(&req.ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            Error::new(
                codes::KERNEL,
                format!("{} vanished from {}", req.ifname, ns.path().display()),
            )
        })?;
    let mut result = CniResult {
        cni_version: req.result_version(),
        ..Default::default()
    };
    match &conf.ipam_type {
        Some(t) => {
            let r = ipam::add(t, req)?;
            result.ips = r.ips;
            result.routes = r.routes;
            result.dns = r.dns;
            ifconf::apply(cont, link.index, &result, false)?;
        }
        None => cont.set_up(link.index).map_err(kernel)?,
    }
    if !conf.dns.is_empty() {
        result.dns = conf.dns.clone();
    }
    result.interfaces = vec![Interface {
        name: req.ifname.clone(),
        mac: mac_string(&link),
        mtu: Some(link.mtu),
        sandbox: ns.path().display().to_string(),
        ..Default::default()
    }];
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
    Ok(result)
}

/// The end of an ADD: its result, or, after a failure, the IPAM
/// reservation given back and the attachment undone by `undo`.
fn finish_or_undo(
    req: &Request,
    conf: &HostConf,
    configured: Result<CniResult, Error>,
    undo: impl FnOnce() -> Result<(), Error>,
) -> Result<CniResult, Error> {
    configured.inspect_err(|_| {
        if let Some(t) = &conf.ipam_type {
            let _ = ipam::call(t, Command::Del, req);
        }
        let _ = undo();
    })
}

/// The IPAM part of GC: forwarded with the same valid attachments.
fn ipam_forward(conf: &HostConf, command: Command, req: &Request) -> Result<(), Error> {
    match &conf.ipam_type {
        Some(t) => ipam::call(t, command, req).map(|_| ()),
        None => Ok(()),
    }
}

/// The reference `loopback` plugin's name and config (no `mode`): the
/// plugin containerd and CRI-O run for every pod's `lo`, so a CNI directory
/// holding only berth serves them. It is berth-host's `none` mode.
pub struct LoopbackPlugin;

impl LoopbackPlugin {
    /// A `mode` other than none would be a berth-host config sent to the
    /// wrong binary.
    fn check_mode(req: &Request) -> Result<(), Error> {
        match req.conf.key("mode") {
            None => Ok(()),
            Some(m) if m == "none" => Ok(()),
            Some(m) => Err(Error::config(
                "mode",
                format!("{m}: the loopback plugin only sets up lo (mode \"none\")"),
            )),
        }
    }
}

impl Plugin for LoopbackPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        Self::check_mode(req)?;
        loopback::add(req, &container_netns(req, &Mode::None)?)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        Self::check_mode(req)?;
        loopback::del(existing_container_netns(
            req.netns.as_deref(),
            Mode::None.name(),
        )?)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        Self::check_mode(req)?;
        loopback::check(req, &container_netns(req, &Mode::None)?)
    }

    /// No IPAM to ask: ready whenever the config is loopback's.
    fn status(&self, req: &Request) -> Result<(), Error> {
        Self::check_mode(req)
    }

    /// Nothing outlives a container's namespace: no records to collect.
    fn gc(&self, req: &Request) -> Result<(), Error> {
        Self::check_mode(req)
    }

    fn judges_netns_itself(&self) -> bool {
        true
    }

    fn about(&self) -> String {
        format!(
            "berth loopback {}: lo up in the container (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}

impl Plugin for HostPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = HostConf::parse(req)?;
        match &conf.mode {
            Mode::None => loopback::add(req, &container_netns(req, &conf.mode)?),
            Mode::Host => hostns::add(req),
            Mode::Device(d) => device::add(req, &conf, d, &container_netns(req, &conf.mode)?),
            Mode::Macvlan(m) => macvlan::add(req, &conf, m, &container_netns(req, &conf.mode)?),
        }
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = HostConf::parse(req)?;
        match &conf.mode {
            Mode::None => loopback::del(existing_container_netns(
                req.netns.as_deref(),
                conf.mode.name(),
            )?),
            // The container used the host's namespace; nothing was made.
            Mode::Host => Ok(()),
            Mode::Device(_) => device::del(req, &conf),
            Mode::Macvlan(_) => macvlan::del(req, &conf),
        }
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = HostConf::parse(req)?;
        match &conf.mode {
            Mode::None => loopback::check(req, &container_netns(req, &conf.mode)?),
            Mode::Host => hostns::check(req),
            Mode::Device(_) | Mode::Macvlan(_) => {
                let ns = container_netns(req, &conf.mode)?;
                let prev = req.prev_result()?.ok_or_else(|| {
                    Error::config("prevResult", "CHECK needs the ADD result as prevResult")
                })?;
                ipam_forward(&conf, Command::Check, req)?;
                match &conf.mode {
                    Mode::Device(_) => device::check(req, &ns, &prev),
                    Mode::Macvlan(m) => macvlan::check(req, m, &ns, &prev),
                    _ => unreachable!("matched above"),
                }
            }
        }
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = HostConf::parse(req)?;
        ipam_forward(&conf, Command::Status, req)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = HostConf::parse(req)?;
        let mut errors = Vec::new();
        if let Err(e) = ipam_forward(&conf, Command::Gc, req) {
            errors.push(e);
        }
        // No list means no attachment is valid (the spec's reading).
        let valid = req.conf.valid_attachments.clone().unwrap_or_default();
        let state = state::State::from_env();
        for rec in state.records(&req.conf.name) {
            if valid
                .iter()
                .any(|a| a.container_id == rec.container_id && a.ifname == rec.ifname)
            {
                continue;
            }
            let undone = match rec.mode.as_str() {
                "device" => device::release(&state, &req.conf.name, &rec),
                "macvlan" => macvlan::release(&state, &req.conf.name, &rec),
                other => Err(Error::new(
                    codes::STORE,
                    format!("record of {} has unknown mode {other:?}", rec.container_id),
                )),
            };
            if let Err(e) = undone {
                errors.push(e);
            }
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn judges_netns_itself(&self) -> bool {
        true
    }

    fn about(&self) -> String {
        format!(
            "berth-host {}: loopback only, the host's network, a host device or a macvlan (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
