//! The CNI verbs of a container's attachment to a bridge network, for
//! berth-bridge and berth-overlay: the request's netns, prevResult and
//! valid attachments in, a CNI result out, the core's [`BridgeNetwork`]
//! in between.

use berth_kernel::{Handle, Netns};
use berth_network::attachment::{Addresses, Attached, BridgeNetwork, Container, Ipam};
use cni::{CniResult, Command, Error, Interface, Request};

use crate::{
    check_interface, core_addresses, core_error, ipam, kernel, mac_string, set_addresses, Checked,
};

/// The IPAM plugin a config names (`ipam.type`), run as CNI describes
/// (berth-ipam in process); its errors reach the runtime unchanged.
pub struct IpamPlugin<'a> {
    ipam_type: &'a str,
    req: &'a Request,
    /// The DNS its ADD returned.
    pub dns: cni::Dns,
}

impl<'a> IpamPlugin<'a> {
    pub fn new(ipam_type: &'a str, req: &'a Request) -> IpamPlugin<'a> {
        IpamPlugin {
            ipam_type,
            req,
            dns: cni::Dns::default(),
        }
    }

    /// A verb with nothing to return (CHECK, STATUS).
    pub fn call(&self, command: Command) -> Result<(), Error> {
        ipam::call(self.ipam_type, command, self.req).map(|_| ())
    }
}

impl Ipam for IpamPlugin<'_> {
    type Error = Error;

    fn core_error(e: berth_network::Error) -> Error {
        core_error(e)
    }

    fn add(&mut self) -> Result<Addresses, Error> {
        let r = ipam::add(self.ipam_type, self.req)?;
        self.dns = r.dns.clone();
        Ok(core_addresses(&r))
    }

    fn del(&mut self) -> Result<(), Error> {
        self.call(Command::Del)
    }

    /// The request carries the valid attachments to the plugin.
    fn gc(&mut self, _valid: &[(String, String)]) -> Result<(), Error> {
        self.call(Command::Gc)
    }
}

/// The request's netns, opened.
fn netns(req: &Request) -> Result<Netns, Error> {
    let path = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "missing"))?;
    Netns::open(path).map_err(|e| Error::env("CNI_NETNS", e))
}

/// ADD: the request's container on `net`, its interface with `mac` (or
/// the kernel's). The result lists the bridge, the host veth and the
/// container's interface, the addresses on the last.
pub fn add<I: Ipam<Error = Error>>(
    req: &Request,
    net: &BridgeNetwork,
    mac: Option<[u8; 6]>,
    ipam: Option<&mut I>,
) -> Result<CniResult, Error> {
    let ns = netns(req)?;
    let container = Container {
        id: &req.container_id,
        ifname: &req.ifname,
        mac,
        netns: &ns,
    };
    let attached = net.attach(&container, ipam)?;
    Ok(result(req, &ns, &attached))
}

fn result(req: &Request, ns: &Netns, a: &Attached) -> CniResult {
    let mut result = CniResult {
        cni_version: req.result_version(),
        interfaces: vec![
            Interface {
                name: a.bridge.name.clone(),
                mac: mac_string(&a.bridge),
                ..Default::default()
            },
            Interface {
                name: a.host.name.clone(),
                mac: mac_string(&a.host),
                ..Default::default()
            },
            Interface {
                name: req.ifname.clone(),
                mac: mac_string(&a.container),
                mtu: Some(a.mtu),
                sandbox: ns.path().display().to_string(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    set_addresses(&mut result, &a.addresses, 2);
    result
}

/// DEL: needs no netns.
pub fn del<I: Ipam<Error = Error>>(
    req: &Request,
    net: &BridgeNetwork,
    ipam: Option<&mut I>,
) -> Result<(), Error> {
    net.detach(&req.container_id, &req.ifname, ipam)
}

/// GC: everything of attachments not in the request's valid attachments
/// (no list means none is valid, the spec's reading).
pub fn gc<I: Ipam<Error = Error>>(
    req: &Request,
    net: &BridgeNetwork,
    ipam: Option<&mut I>,
) -> Result<(), Error> {
    let valid: Vec<(String, String)> = req
        .conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    net.gc(&valid, ipam)
}

/// The ADD result CHECK checks against.
pub fn prev_result(req: &Request) -> Result<CniResult, Error> {
    req.prev_result()?
        .ok_or_else(|| Error::config("prevResult", "CHECK needs the ADD result as prevResult"))
}

/// CHECK: everything the ADD result `prev` promises is still there, the
/// container's side and the host's.
pub fn check(req: &Request, net: &BridgeNetwork, prev: &CniResult) -> Result<(), Error> {
    let ns = netns(req)?;
    let mut cont = Handle::in_netns(&ns).map_err(kernel)?;
    let Checked {
        index_in_result: idx,
        link,
    } = check_interface(&mut cont, req, prev)?;
    let gateways: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .filter_map(|ip| ip.gateway)
        .collect();
    // The ADD result's MAC (check_interface found it on the link).
    let want = &prev.interfaces[idx];
    let mac = if want.mac.is_empty() {
        mac_string(&link)
    } else {
        want.mac.clone()
    };
    net.check(
        &req.container_id,
        &req.ifname,
        &gateways,
        net.masquerade && !prev.ips.is_empty(),
        &mac,
    )
    .map_err(core_error)
}
