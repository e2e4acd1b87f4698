//! berth-bandwidth: rate limits on a container's link, chained after the
//! plugin that made it (berth-bridge, berth-overlay, the reference
//! `bridge`, or any plugin whose result names a host-side interface).
//!
//! The shaping itself is the network core's (`berth_network::bandwidth`):
//! this crate reads the reference bandwidth plugin's keys, finds the host
//! end of the container's link in prevResult, and turns the core's errors
//! into CNI's. DEL works from the attachment alone (its ifb's name is a
//! hash of it), so it needs no netns; GC finds the ifbs by their aliases.

pub mod config;

use berth_kernel::{Handle, Link, Netns};
use berth_network::bandwidth::{self, Owner};
use cni::{CniResult, Error, Interface, Plugin, Request};
use config::BandwidthConf;
use ifconf::{core_error, kernel};

pub struct BandwidthPlugin;

fn owner(req: &Request) -> Owner {
    Owner {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
    }
}

fn prev_result(req: &Request) -> Result<CniResult, Error> {
    req.prev_result()?.ok_or_else(|| {
        Error::config(
            "prevResult",
            "missing: berth-bandwidth is a chained plugin and shapes the link the previous \
             plugin made",
        )
    })
}

/// The host end of the container's link among prevResult's host-side
/// interfaces (those without a sandbox): the one that is not a bridge (or
/// an ifb of an earlier bandwidth plugin). When there are several, the
/// veth whose peer is CNI_IFNAME in the container (what the reference
/// finds it by).
fn host_link(req: &Request, prev: &CniResult, host: &mut Handle) -> Result<Option<Link>, Error> {
    let mut candidates = Vec::new();
    for intf in prev.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
        if let Some(link) = host.link_by_name(&intf.name).map_err(kernel)? {
            if !matches!(link.kind.as_deref(), Some("bridge" | "ifb")) {
                candidates.push(link);
            }
        }
    }
    if candidates.len() <= 1 {
        return Ok(candidates.pop());
    }
    let Some(netns) = &req.netns else {
        return Err(ambiguous(
            &candidates,
            "and there is no CNI_NETNS to tell by",
        ));
    };
    let ns = Netns::open(netns).map_err(kernel)?;
    let peer = Handle::in_netns(&ns)
        .and_then(|mut h| h.link_by_name(&req.ifname))
        .map_err(kernel)?
        .and_then(|l| l.peer_index);
    match candidates.iter().position(|l| Some(l.index) == peer) {
        Some(i) => Ok(Some(candidates.swap_remove(i))),
        None => Err(ambiguous(
            &candidates,
            &format!(
                "and none is the veth peer of {} in the container",
                req.ifname
            ),
        )),
    }
}

fn ambiguous(candidates: &[Link], why: &str) -> Error {
    let names: Vec<&str> = candidates.iter().map(|l| l.name.as_str()).collect();
    Error::config(
        "prevResult",
        format!(
            "names several host-side interfaces ({}) {why}",
            names.join(", ")
        ),
    )
}

fn no_host_link(req: &Request) -> Error {
    Error::config(
        "prevResult",
        format!(
            "names no host-side interface of {:?} to shape (berth-bandwidth limits the host \
             end of a veth; a plugin like macvlan leaves none)",
            req.ifname
        ),
    )
}

impl Plugin for BandwidthPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = BandwidthConf::parse(req)?;
        let prev = prev_result(req)?;
        let mut result = CniResult {
            cni_version: req.result_version(),
            ..prev.clone()
        };
        let mut host = Handle::new().map_err(kernel)?;
        let Some(link) = host_link(req, &prev, &mut host)? else {
            if conf.spec.is_empty() {
                return Ok(result);
            }
            return Err(no_host_link(req));
        };
        // With no limits this still runs, so a repeated ADD without them
        // lifts an earlier ADD's.
        let ifb = bandwidth::apply(&mut host, &owner(req), &link.name, &conf.spec)
            .map_err(|e| conf.name_key(e))?;
        if let Some(ifb) = ifb {
            // As the reference reports it: a host-side interface.
            result.interfaces.push(Interface {
                name: ifb.name,
                mac: ifb.mac.map(|m| ifconf::format_mac(&m)).unwrap_or_default(),
                ..Default::default()
            });
        }
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        // Nothing of the config is needed (a DEL after an ADD refused for
        // a bad rate must still succeed), nor the netns: the ifb's name is
        // the attachment's. The host link, when the cached result names it,
        // loses its qdiscs too.
        let mut host = Handle::new().map_err(kernel)?;
        let link = match req.prev_result() {
            Ok(Some(prev)) => host_link(req, &prev, &mut host).ok().flatten(),
            _ => None,
        };
        bandwidth::remove(
            &mut host,
            &owner(req),
            link.as_ref().map(|l| l.name.as_str()),
        )
        .map_err(core_error)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = BandwidthConf::parse(req)?;
        let prev = prev_result(req)?;
        let mut host = Handle::new().map_err(kernel)?;
        let Some(link) = host_link(req, &prev, &mut host)? else {
            if conf.spec.is_empty() {
                return Ok(());
            }
            return Err(no_host_link(req));
        };
        bandwidth::check(&mut host, &owner(req), &link.name, &conf.spec)
            .map_err(|e| conf.name_key(e))
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        // No list means no attachment is valid (the spec's reading).
        let valid = req.conf.valid_attachments.clone().unwrap_or_default();
        let mut host = Handle::new().map_err(kernel)?;
        bandwidth::gc(&mut host, &req.conf.name, |o| {
            valid
                .iter()
                .any(|a| a.container_id == o.container_id && a.ifname == o.ifname)
        })
        .map(|_| ())
        .map_err(core_error)
    }

    fn about(&self) -> String {
        format!(
            "berth-bandwidth {}: rate limits on a container's link (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
