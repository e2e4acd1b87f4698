//! IPAM calls. `berth-ipam` runs in this process through its library — the
//! same request, config and store as the binary would see, minus a second
//! process start (about 1 ms of a 3 ms ADD). Any other IPAM plugin is
//! executed from CNI_PATH as the spec describes.

use cni::invoke::{delegate, find};
use cni::{codes, CniResult, Command, Error, Plugin, Request};

const FIELD: &str = "ipam.type";

pub fn call(ipam_type: &str, command: Command, req: &Request) -> Result<Option<CniResult>, Error> {
    if ipam_type != "berth-ipam" {
        return delegate(ipam_type, FIELD, command, req);
    }
    // The runtime's CNI_PATH must still provide berth-ipam, so a config
    // fails the same way whether or not the IPAM runs in process.
    find(ipam_type, req, FIELD)?;
    let ipam = berth_ipam::IpamPlugin;
    match command {
        Command::Add => ipam.add(req).map(Some),
        Command::Check => ipam.check(req).map(|()| None),
        Command::Del => ipam.del(req).map(|()| None),
        Command::Status => ipam.status(req).map(|()| None),
        Command::Gc => ipam.gc(req).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// ADD: the IPAM result, which must hold at least one address.
pub fn add(ipam_type: &str, req: &Request) -> Result<CniResult, Error> {
    let r = call(ipam_type, Command::Add, req)?.ok_or_else(|| {
        Error::new(
            codes::DELEGATE,
            format!("{FIELD}: {ipam_type} printed no result"),
        )
    })?;
    if r.ips.is_empty() {
        // Give back whatever it did reserve.
        let _ = call(ipam_type, Command::Del, req);
        return Err(Error::new(
            codes::DELEGATE,
            format!("{FIELD}: {ipam_type} returned no IP addresses"),
        ));
    }
    Ok(r)
}
