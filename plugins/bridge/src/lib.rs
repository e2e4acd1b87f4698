//! berth-bridge: containers on a Linux bridge through veth pairs, with the
//! reference `bridge` plugin's config keys and meaning.
//!
//! ADD works in this order so that a failure at any step can be undone and
//! a crash at any step leaves something DEL or GC cleans: validate, write
//! the attachment record, IPAM, bridge, veth (peer born in the container
//! netns), container addresses and routes, gateway address, firewall.

pub mod config;
mod firewall;
mod netconf;
pub mod state;

use berth_kernel::{Handle, Netns};
use cni::{codes, CniResult, Command, Error, Plugin, Request};
use config::BridgeConf;
use ifconf::{ipam, kernel};
use state::{Record, State};

pub struct BridgePlugin;

/// The host end of the veth (the core's naming: deterministic, so DEL
/// and GC find it without the netns).
pub use berth_network::names::cni_host_veth as host_veth_name;

/// DEL and GC (under the state lock): removes the port's MAC spoof check
/// when the network has macspoofchk on; one nft batch, no MAC needed.
/// Skipped without an attachment record: the record outlives the check, so
/// there is nothing to remove, and a repeated DEL must not run the batch
/// (after the last network took the table with it, its "add, then delete"
/// would leave an empty `bridge berth` table behind).
fn spoofchk_remove(
    conf: &BridgeConf,
    state: &State,
    network: &str,
    host_veth: &str,
) -> Result<(), Error> {
    if conf.macspoofchk && state.has_record(network, host_veth) {
        firewall::spoofchk_remove(host_veth)
    } else {
        Ok(())
    }
}

impl Plugin for BridgePlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = BridgeConf::parse(req)?;
        let ns_path = req
            .netns
            .as_deref()
            .ok_or_else(|| Error::env("CNI_NETNS", "missing"))?;
        let ns = Netns::open(ns_path).map_err(|e| Error::env("CNI_NETNS", e))?;
        let mut host = Handle::new().map_err(kernel)?;
        let mut cont = Handle::in_netns(&ns).map_err(kernel)?;
        if cont.link_by_name(&req.ifname).map_err(kernel)?.is_some() {
            return Err(Error::new(
                codes::ALREADY_EXISTS,
                format!(
                    "CNI_IFNAME: interface {:?} already exists in {}",
                    req.ifname,
                    ns_path.display()
                ),
            ));
        }
        let host_veth = host_veth_name(&req.container_id, &req.ifname);
        if host.link_by_name(&host_veth).map_err(kernel)?.is_some() {
            return Err(Error::new(
                codes::ALREADY_EXISTS,
                format!(
                    "host interface {host_veth} for container {:?} ifname {:?} already exists",
                    req.container_id, req.ifname
                ),
            ));
        }
        let state = State::from_env();
        {
            let lock = state.lock()?;
            let rec = Record {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                bridge: conf.bridge.clone(),
            };
            state.write_record(&lock, &req.conf.name, &host_veth, &rec)?;
        }
        let mut progress = netconf::Progress::default();
        let mut ctx = netconf::AddContext {
            req,
            conf: &conf,
            ns: &ns,
            ns_path,
            host: &mut host,
            cont: &mut cont,
            host_veth: &host_veth,
            state: &state,
        };
        match ctx.run(&mut progress) {
            Ok(r) => Ok(r),
            Err(e) => {
                ctx.rollback(&progress);
                Err(e)
            }
        }
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        let host_veth = host_veth_name(&req.container_id, &req.ifname);
        let mut errors = Vec::new();
        // Deleting the host end removes the pair: no need to enter the
        // netns, and it works when the netns is already gone (then the
        // kernel has removed the pair and this is a no-op).
        match Handle::new().and_then(|mut h| h.delete_link_by_name(&host_veth)) {
            Ok(_) => {}
            Err(e) => errors.push(kernel(e)),
        }
        if let Some(ipam) = &conf.ipam_type {
            if let Err(e) = ipam::call(ipam, Command::Del, req) {
                errors.push(e);
            }
        }
        let state = State::from_env();
        match state.lock() {
            Ok(lock) => {
                // A spoof check that could not be removed keeps its record,
                // so a retried DEL or a GC tries again.
                let removed = spoofchk_remove(&conf, &state, &req.conf.name, &host_veth)
                    .and_then(|()| state.remove_record(&lock, &req.conf.name, &host_veth))
                    .and_then(|()| firewall::release_if_unused(&state, &lock, &req.conf.name));
                if let Err(e) = removed {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            Error::config("prevResult", "CHECK needs the ADD result as prevResult")
        })?;
        if let Some(ipam) = &conf.ipam_type {
            ipam::call(ipam, Command::Check, req)?;
        }
        netconf::check(req, &conf, &prev)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        if let Some(ipam) = &conf.ipam_type {
            ipam::call(ipam, Command::Status, req)?;
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::parse(req)?;
        let mut errors = Vec::new();
        if let Some(ipam) = &conf.ipam_type {
            if let Err(e) = ipam::call(ipam, Command::Gc, req) {
                errors.push(e);
            }
        }
        // No list means no attachment is valid (the spec's reading).
        let valid = req.conf.valid_attachments.clone().unwrap_or_default();
        let state = State::from_env();
        let mut host = Handle::new().map_err(kernel)?;
        for (host_veth, rec) in state.records(&req.conf.name) {
            let keep = rec.as_ref().is_some_and(|r| {
                valid
                    .iter()
                    .any(|a| a.container_id == r.container_id && a.ifname == r.ifname)
            });
            if keep {
                continue;
            }
            if let Err(e) = host.delete_link_by_name(&host_veth) {
                errors.push(kernel(e));
                continue;
            }
            let lock = state.lock()?;
            let removed = spoofchk_remove(&conf, &state, &req.conf.name, &host_veth)
                .and_then(|()| state.remove_record(&lock, &req.conf.name, &host_veth));
            if let Err(e) = removed {
                errors.push(e);
            }
        }
        let lock = state.lock()?;
        if let Err(e) = firewall::release_if_unused(&state, &lock, &req.conf.name) {
            errors.push(e);
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn about(&self) -> String {
        format!(
            "berth-bridge {}: containers on a Linux bridge (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_eq!(a.len(), 10);
        assert!(a.starts_with("bv"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(host_veth_name("c1e", "th0"), host_veth_name("c1", "eth0"));
    }
}
