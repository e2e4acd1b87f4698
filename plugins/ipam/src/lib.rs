//! berth-ipam: IP address management compatible with the reference host-local
//! plugin's configuration, backed by berth's embedded store (one SQLite
//! database per network at `<dataDir>/<network>/ipam.db`).
//!
//! The CNI verbs are in [`IpamPlugin`]; the same operations are exposed as
//! functions ([`add`], [`del`], [`check`], [`status`], [`gc`]) so other berth
//! components can allocate without going through a process.

pub mod cli;
pub mod config;
pub mod dns;
pub mod import;

use std::net::IpAddr;
use std::path::Path;

use cni::{codes, CniResult, Error, IpConfig, Request};
use ipnet::IpNet;
use store::{Allocation, AllocationStore, Owner, SqliteStore};

pub use config::{data_dir_of, IpamConfig, Range, RangeSet, RequestedIp};
pub use import::{import_host_local, read_host_local_dir, HostLocalState, ImportReport};

/// Map a store failure to a CNI error (101 duplicate, 102 exhausted, 103
/// taken, 7 invalid request, 11 lock contention, 104 anything else).
pub fn store_error(e: store::Error) -> Error {
    let code = match &e {
        store::Error::Duplicate { .. } => codes::ALREADY_EXISTS,
        store::Error::Exhausted { .. } => codes::NO_ADDRESSES,
        store::Error::AddressTaken { .. } => codes::ADDRESS_TAKEN,
        store::Error::InvalidRequest(_) | store::Error::InvalidNetworkName(_) => {
            codes::INVALID_CONFIG
        }
        _ if e.is_busy() => codes::TRY_AGAIN,
        _ => codes::STORE,
    };
    Error::new(code, e.to_string())
}

fn open_store(data_dir: &Path, network: &str) -> Result<SqliteStore, Error> {
    SqliteStore::open(data_dir, network).map_err(store_error)
}

fn open_existing(data_dir: &Path, network: &str) -> Result<Option<SqliteStore>, Error> {
    SqliteStore::open_existing(data_dir, network).map_err(store_error)
}

/// Allocate one address from each range set for `(container_id, ifname)` in a
/// single transaction and build the IPAM result (`ips` with gateways, config
/// `routes`, `dns` from `resolvConf`). On any error nothing is allocated.
/// The store records `netns` (CNI_NETNS) and this boot with the addresses,
/// so that `berth gc` can tell when the container is gone.
pub fn add(
    conf: &IpamConfig,
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
    cni_version: &str,
) -> Result<CniResult, Error> {
    // Everything that can fail without the store is done first.
    let dns = match &conf.resolv_conf {
        Some(p) => dns::parse_resolv_conf(p)?,
        None => cni::Dns::default(),
    };
    let sets = conf
        .range_sets
        .iter()
        .enumerate()
        .map(|(i, s)| s.to_store(i as u32))
        .collect::<Result<Vec<_>, _>>()?;
    let requests: Vec<store::Request<'_>> = sets
        .iter()
        .zip(&conf.requested)
        .map(|(set, want)| match want {
            Some(ip) => store::Request::exact(set, *ip),
            None => store::Request::next(set),
        })
        .collect();

    let mut st = open_store(&conf.data_dir, &conf.name)?;
    let owner = Owner::new(container_id, ifname);
    let sandbox = store::Sandbox {
        netns: netns.map(|p| p.display().to_string()).unwrap_or_default(),
        boot_id: store::host::boot_id(),
    };
    let ips = st
        .allocate_in(&owner, &requests, Some(&sandbox))
        .map_err(store_error)?;

    let mut out = Vec::with_capacity(ips.len());
    for (set, ip) in conf.range_sets.iter().zip(&ips) {
        let range = set.range_for(*ip).ok_or_else(|| {
            Error::new(
                codes::STORE,
                format!(
                    "store returned {ip}, which is outside range set {}",
                    set.label()
                ),
            )
        })?;
        let address = IpNet::new(*ip, range.subnet.prefix_len()).map_err(|e| {
            Error::new(
                codes::STORE,
                format!("{ip}/{}: {e}", range.subnet.prefix_len()),
            )
        })?;
        out.push(IpConfig {
            address,
            gateway: Some(range.gateway),
            interface: None,
        });
    }
    Ok(CniResult {
        cni_version: cni_version.to_string(),
        interfaces: Vec::new(),
        ips: out,
        routes: conf.routes.clone(),
        dns,
    })
}

/// Release everything `(container_id, ifname)` holds on `network`. Idempotent:
/// nothing held (or no database at all) is success. Returns what was released.
pub fn del(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, Error> {
    match open_existing(data_dir, network)? {
        Some(mut st) => st
            .release(&Owner::new(container_id, ifname))
            .map_err(store_error),
        None => Ok(Vec::new()),
    }
}

/// Error (code 107) unless `(container_id, ifname)` holds an address.
pub fn check(conf: &IpamConfig, container_id: &str, ifname: &str) -> Result<(), Error> {
    let owner = Owner::new(container_id, ifname);
    let held = match open_existing(&conf.data_dir, &conf.name)? {
        Some(mut st) => st.allocations_of(&owner).map_err(store_error)?,
        None => Vec::new(),
    };
    if held.is_empty() {
        return Err(Error::new(
            codes::CHECK_FAILED,
            format!(
                "no IP address is allocated to {owner} on network {}",
                conf.name
            ),
        ));
    }
    Ok(())
}

/// Error 50 if some range set has no free address left.
pub fn status(conf: &IpamConfig) -> Result<(), Error> {
    let exhausted = |set: &RangeSet| {
        Error::new(
            codes::NOT_AVAILABLE,
            format!("no IP addresses available in range set {}", set.label()),
        )
    };
    let mut st = open_existing(&conf.data_dir, &conf.name)?;
    for (i, set) in conf.range_sets.iter().enumerate() {
        let free = match st.as_mut() {
            Some(st) => st
                .next_free(&set.to_store(i as u32)?)
                .map_err(store_error)?
                .is_some(),
            None => !set.has_no_addresses(),
        };
        if !free {
            return Err(exhausted(set));
        }
    }
    Ok(())
}

/// Release every allocation on `network` whose attachment is not in `valid`.
/// Returns what was released.
pub fn gc(data_dir: &Path, network: &str, valid: &[Owner]) -> Result<Vec<Allocation>, Error> {
    match open_existing(data_dir, network)? {
        Some(mut st) => st.retain(valid).map_err(store_error),
        None => Ok(Vec::new()),
    }
}

/// The CNI plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpamPlugin;

impl cni::Plugin for IpamPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = IpamConfig::from_request(req)?;
        add(
            &conf,
            &req.container_id,
            &req.ifname,
            req.netns.as_deref(),
            &req.result_version(),
        )
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = IpamConfig::from_request(req)?;
        check(&conf, &req.container_id, &req.ifname)
    }

    /// Lenient on purpose: DEL must succeed whenever there is nothing to
    /// release, so only `name` and `ipam.dataDir` are read.
    fn del(&self, req: &Request) -> Result<(), Error> {
        del(
            &data_dir_of(&req.conf.raw),
            &req.conf.name,
            &req.container_id,
            &req.ifname,
        )
        .map(|_| ())
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = IpamConfig::from_request(req)?;
        status(&conf)
    }

    /// Without `cni.dev/valid-attachments` (or `cni.dev/attachments`) nothing
    /// is released.
    fn gc(&self, req: &Request) -> Result<(), Error> {
        let Some(valid) = &req.conf.valid_attachments else {
            return Ok(());
        };
        let owners: Vec<Owner> = valid
            .iter()
            .map(|a| Owner::new(a.container_id.clone(), a.ifname.clone()))
            .collect();
        gc(&data_dir_of(&req.conf.raw), &req.conf.name, &owners).map(|_| ())
    }

    fn about(&self) -> String {
        format!(
            "berth-ipam {}: host-local compatible IP address management (CNI 0.1.0-1.1.0)\n{}",
            env!("CARGO_PKG_VERSION"),
            cli::USAGE
        )
    }
}

#[cfg(test)]
mod tests;
