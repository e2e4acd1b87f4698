//! The kernel side of ADD and CHECK: bridge, veth, addresses, routes,
//! gateway, forwarding, firewall.

use crate::config::BridgeConf;
use crate::state::State;
use crate::{firewall, host_veth_name};
use berth_kernel::{Handle, Link, Netns};
use berth_network::bridge::BridgeSpec;
use berth_network::gateway::GatewaySpec;
use berth_network::port::{PortSpec, PortVlans};
use cni::{codes, CniResult, Command, Error, Interface, IpConfig, Request, Route};
use ifconf::{check_failed as missing, core_error, ipam, kernel, mac_string};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;

/// What ADD has done so far, for rollback.
#[derive(Default)]
pub struct Progress {
    ipam: bool,
    bridge_created: Option<u32>,
    veth: bool,
    /// The macspoofchk batch was attempted: from then on rollback removes
    /// the port's check (set before the call, so a batch that applied but
    /// reported an error is covered too).
    spoofchk: bool,
}

pub struct AddContext<'a> {
    pub req: &'a Request,
    pub conf: &'a BridgeConf,
    pub ns: &'a Netns,
    pub ns_path: &'a Path,
    pub host: &'a mut Handle,
    pub cont: &'a mut Handle,
    pub host_veth: &'a str,
    pub state: &'a State,
}

/// The first host address of the subnet: the reference's default gateway.
fn default_gateway(addr: &IpNet) -> IpAddr {
    match addr.trunc() {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

fn is_default_route(dst: &IpNet) -> bool {
    dst.prefix_len() == 0
}

impl AddContext<'_> {
    pub fn run(&mut self, progress: &mut Progress) -> Result<CniResult, Error> {
        let (req, conf) = (self.req, self.conf);
        let mut result = CniResult {
            cni_version: req.result_version(),
            ..Default::default()
        };
        if let Some(ipam) = &conf.ipam_type {
            let r = ipam::add(ipam, req)?;
            progress.ipam = true;
            result.ips = r.ips;
            result.routes = r.routes;
            result.dns = r.dns;
        }
        if conf.is_gateway {
            for ip in &mut result.ips {
                ip.gateway
                    .get_or_insert_with(|| default_gateway(&ip.address));
            }
        }
        if !conf.dns.is_empty() {
            result.dns = conf.dns.clone();
        }

        let bridge = self.ensure_bridge(progress)?;
        let mtu = conf.mtu.unwrap_or(bridge.mtu);
        let port = PortSpec {
            mtu: Some(mtu),
            peer_mac: conf.mac,
            hairpin: conf.hairpin_mode,
            isolated: conf.port_isolation,
            vlans: conf.uses_vlans().then(|| PortVlans {
                access: conf.vlan,
                trunk: conf.vlan_trunk.clone(),
                keep_default: conf.preserve_default_vlan,
            }),
            ..PortSpec::new(self.host_veth, &req.ifname)
        };
        progress.veth = true;
        let hv = port
            .apply(self.host, &bridge, self.ns)
            .map_err(core_error)?;

        let cl = self
            .cont
            .link_by_name(&req.ifname)
            .map_err(kernel)?
            .ok_or_else(|| {
                Error::new(
                    codes::KERNEL,
                    format!("{} vanished after creation", req.ifname),
                )
            })?;
        if !conf.disable_container_interface {
            self.configure_container(&cl, &mut result)?;
        }
        if conf.is_gateway {
            self.configure_gateway(&bridge, &result.ips)?;
        }
        let masquerade: Vec<IpNet> = if conf.ip_masq {
            result.ips.iter().map(|ip| ip.address.trunc()).collect()
        } else {
            Vec::new()
        };
        {
            let lock = self.state.lock()?;
            firewall::ensure(
                self.state,
                &lock,
                &req.conf.name,
                &conf.bridge,
                &masquerade,
                conf.isolation,
                &conf.uplinks,
            )?;
            if conf.macspoofchk {
                // The MAC the container really has (given or kernel-chosen).
                let mac = cl.mac.ok_or_else(|| {
                    Error::new(codes::KERNEL, format!("{} has no MAC address", req.ifname))
                })?;
                progress.spoofchk = true;
                firewall::spoofchk_add(self.host_veth, &mac, &req.container_id)?;
            }
        }

        result.interfaces = vec![
            Interface {
                name: bridge.name.clone(),
                mac: mac_string(&bridge),
                ..Default::default()
            },
            Interface {
                name: hv.name.clone(),
                mac: mac_string(&hv),
                ..Default::default()
            },
            Interface {
                name: req.ifname.clone(),
                mac: mac_string(&cl),
                mtu: Some(mtu),
                sandbox: self.ns_path.display().to_string(),
                ..Default::default()
            },
        ];
        for ip in &mut result.ips {
            ip.interface = Some(2);
        }
        Ok(result)
    }

    /// Creates the bridge, or adopts an existing one; anything else by that
    /// name is an error.
    fn ensure_bridge(&mut self, progress: &mut Progress) -> Result<Link, Error> {
        let conf = self.conf;
        let spec = BridgeSpec {
            mtu: conf.mtu,
            vlan_filtering: conf.uses_vlans(),
            promisc: conf.promisc_mode,
            ..BridgeSpec::new(&conf.bridge)
        };
        let bridge = spec.apply(self.host, "bridge").map_err(core_error)?;
        if bridge.created {
            progress.bridge_created = Some(bridge.link.index);
        }
        Ok(bridge.link)
    }

    /// Addresses, link up, then routes, with default routes through the
    /// gateways when isDefaultGateway asks for them.
    fn configure_container(&mut self, link: &Link, result: &mut CniResult) -> Result<(), Error> {
        let conf = self.conf;
        if !conf.enabledad {
            ifconf::disable_dad(self.cont, self.ns, link)?;
        }
        if conf.is_default_gateway {
            for v4 in [true, false] {
                let has_default = result
                    .routes
                    .iter()
                    .any(|r| is_default_route(&r.dst) && r.dst.addr().is_ipv4() == v4);
                let gw = result
                    .ips
                    .iter()
                    .find(|i| i.address.addr().is_ipv4() == v4)
                    .and_then(|i| i.gateway);
                if let (false, Some(gw)) = (has_default, gw) {
                    let dst: IpNet = if v4 {
                        "0.0.0.0/0".parse()
                    } else {
                        "::/0".parse()
                    }
                    .map_err(|_| Error::new(codes::KERNEL, "default route"))?;
                    result.routes.push(Route::new(dst, Some(gw)));
                }
            }
        }
        ifconf::apply(self.cont, link.index, result, !conf.enabledad)
    }

    /// Gateway addresses on the bridge and forwarding on, like the
    /// reference: another IPv4 address (or an overlapping IPv6 one) on the
    /// bridge is an error unless forceAddress replaces it.
    fn configure_gateway(&mut self, bridge: &Link, ips: &[IpConfig]) -> Result<(), Error> {
        let mut addresses = Vec::new();
        for ip in ips {
            let Some(gw) = ip.gateway else { continue };
            addresses.push(
                IpNet::new(gw, ip.address.prefix_len()).map_err(|e| Error::config("gateway", e))?,
            );
        }
        GatewaySpec {
            addresses,
            force: self.conf.force_address,
        }
        .apply(self.host, bridge)
        .map_err(core_error)
    }

    /// Undoes whatever ADD did, best effort, newest first.
    pub fn rollback(&mut self, progress: &Progress) {
        if progress.veth {
            let _ = self.host.delete_link_by_name(self.host_veth);
        }
        if progress.ipam {
            if let Some(ipam) = &self.conf.ipam_type {
                let _ = ipam::call(ipam, Command::Del, self.req);
            }
        }
        if let Some(index) = progress.bridge_created {
            // Only if nothing else joined it meanwhile.
            let in_use = self
                .host
                .links()
                .map(|ls| ls.iter().any(|l| l.master == Some(index)))
                .unwrap_or(true);
            if !in_use {
                let _ = self.host.delete_link(index);
            }
        }
        if let Ok(lock) = self.state.lock() {
            if progress.spoofchk {
                let _ = firewall::spoofchk_remove(self.host_veth);
            }
            let _ = self
                .state
                .remove_record(&lock, &self.req.conf.name, self.host_veth);
            let _ = firewall::release_if_unused(self.state, &lock, &self.req.conf.name);
        }
    }
}

/// CHECK: everything the ADD result promises is still there.
pub fn check(req: &Request, conf: &BridgeConf, prev: &CniResult) -> Result<(), Error> {
    let ns_path = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "missing"))?;
    let ns = Netns::open(ns_path).map_err(|e| Error::env("CNI_NETNS", e))?;
    let mut host = Handle::new().map_err(kernel)?;
    let mut cont = Handle::in_netns(&ns).map_err(kernel)?;

    let ifconf::Checked {
        index_in_result: idx,
        link,
    } = ifconf::check_interface(&mut cont, req, prev)?;
    let want = &prev.interfaces[idx];

    let bridge = host
        .link_by_name(&conf.bridge)
        .map_err(kernel)?
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| missing(format!("bridge {:?} is missing", conf.bridge)))?;
    let host_veth = host_veth_name(&req.container_id, &req.ifname);
    let hv = host
        .link_by_name(&host_veth)
        .map_err(kernel)?
        .ok_or_else(|| missing(format!("host interface {host_veth} is missing")))?;
    if hv.master != Some(bridge.index) {
        return Err(missing(format!(
            "host interface {host_veth} is not attached to bridge {:?}",
            conf.bridge
        )));
    }
    if conf.is_gateway {
        let br_addrs = host.addresses(Some(bridge.index)).map_err(kernel)?;
        for ip in prev.ips.iter().filter(|ip| ip.interface == Some(idx)) {
            if let Some(gw) = ip.gateway {
                if !br_addrs.iter().any(|a| a.addr.addr() == gw) {
                    return Err(missing(format!(
                        "gateway address {gw} is missing from bridge {:?}",
                        conf.bridge
                    )));
                }
            }
        }
    }
    if let Some(what) = firewall::missing(&req.conf.name, conf.ip_masq && !prev.ips.is_empty())? {
        return Err(missing(what));
    }
    if conf.macspoofchk {
        // The ADD result's MAC (already checked to be the link's above).
        let mac = if want.mac.is_empty() {
            mac_string(&link)
        } else {
            want.mac.clone()
        };
        if let Some(what) = firewall::spoofchk_missing(&host_veth, &mac)? {
            return Err(missing(what));
        }
    }
    Ok(())
}
