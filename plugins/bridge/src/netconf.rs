//! The kernel side of ADD and CHECK: bridge, veth, addresses, routes,
//! gateway, forwarding, firewall.

use crate::config::BridgeConf;
use crate::state::State;
use crate::{firewall, host_veth_name};
use cni::{codes, CniResult, Command, Error, Interface, IpConfig, Request, Route};
use ifconf::{check_failed as missing, ipam, kernel, mac_string};
use ipnet::IpNet;
use net::{
    AddressOptions, BridgeOptions, BridgePortOptions, BridgeVlan, Handle, Link, Netns, VethOptions,
};
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

/// A locally administered unicast MAC derived from the bridge name, so a
/// re-created bridge keeps its gateway MAC.
fn bridge_mac(name: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(name.as_bytes());
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The host end of the veth is a bridge port: it forwards IPv6 frames at
/// layer 2 and needs no IPv6 of its own. Left on (before the link comes up),
/// every port would get a link-local address and an fe80::/64 route, all in
/// one node of the host's IPv6 routing table, where inserting and looking
/// up routes is linear in the number of containers — and it would send DAD
/// and router solicitations into its container.
fn disable_ipv6(host_veth: &str) -> Result<(), Error> {
    match net::sysctl::write(&format!("net/ipv6/conf/{host_veth}/disable_ipv6"), "1") {
        Ok(()) => Ok(()),
        // IPv6 disabled in the whole kernel: nothing to turn off.
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(kernel(e)),
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
        self.host
            .add_veth(
                self.host_veth,
                &req.ifname,
                self.ns,
                &VethOptions {
                    mtu: Some(mtu),
                    peer_mac: conf.mac,
                    host_mac: None,
                    host_master: Some(bridge.index),
                },
            )
            .map_err(kernel)?;
        progress.veth = true;
        let hv = self
            .host
            .link_by_name(self.host_veth)
            .map_err(kernel)?
            .ok_or_else(|| {
                Error::new(
                    codes::KERNEL,
                    format!("{} vanished after creation", self.host_veth),
                )
            })?;
        if conf.hairpin_mode || conf.port_isolation {
            let port = BridgePortOptions {
                hairpin: Some(conf.hairpin_mode),
                isolated: Some(conf.port_isolation),
            };
            self.host.set_bridge_port(hv.index, &port).map_err(kernel)?;
        }
        self.configure_vlans(hv.index, bridge.index)?;
        disable_ipv6(self.host_veth)?;
        self.host.set_up(hv.index).map_err(kernel)?;

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
        let existing = self.host.link_by_name(&conf.bridge).map_err(kernel)?;
        let link = match existing {
            Some(l) => {
                if l.kind.as_deref() != Some("bridge") {
                    return Err(Error::config(
                        "bridge",
                        format!(
                            "{:?} exists and is not a bridge (kind {})",
                            conf.bridge,
                            l.kind.as_deref().unwrap_or("unknown")
                        ),
                    ));
                }
                l
            }
            None => {
                let opts = BridgeOptions {
                    mtu: conf.mtu,
                    mac: Some(bridge_mac(&conf.bridge)),
                    vlan_filtering: conf.uses_vlans(),
                    promisc: conf.promisc_mode,
                    // Nothing on a berth bridge queries for group
                    // members, and without a querier snooping floods all
                    // multicast anyway; it only cost work on every port
                    // that came up (all ports' query timers, under RTNL).
                    // A bridge that already exists is adopted as it is.
                    no_multicast_snooping: true,
                };
                let created = match self.host.add_bridge(&conf.bridge, &opts) {
                    Ok(()) => true,
                    // Another ADD created it a moment ago: adopt it.
                    Err(e) if e.is_exists() => false,
                    Err(e) => return Err(kernel(e)),
                };
                let l = self
                    .host
                    .link_by_name(&conf.bridge)
                    .map_err(kernel)?
                    .ok_or_else(|| {
                        Error::new(
                            codes::KERNEL,
                            format!("bridge {} vanished after creation", conf.bridge),
                        )
                    })?;
                if l.kind.as_deref() != Some("bridge") {
                    return Err(Error::config(
                        "bridge",
                        format!("{:?} exists and is not a bridge", conf.bridge),
                    ));
                }
                if created {
                    progress.bridge_created = Some(l.index);
                }
                l
            }
        };
        if !link.admin_up {
            self.host.set_up(link.index).map_err(kernel)?;
        }
        if conf.promisc_mode && !link.promisc {
            self.host.set_promisc(link.index, true).map_err(kernel)?;
        }
        if conf.uses_vlans() && progress.bridge_created.is_none() {
            self.host
                .set_bridge_vlan_filtering(link.index, true)
                .map_err(kernel)?;
        }
        Ok(link)
    }

    fn configure_vlans(&mut self, port: u32, bridge: u32) -> Result<(), Error> {
        let conf = self.conf;
        if !conf.uses_vlans() {
            return Ok(());
        }
        if !conf.preserve_default_vlan {
            let v1 = BridgeVlan {
                vid: 1,
                pvid: false,
                untagged: false,
                self_: false,
                range_end: None,
            };
            match self.host.bridge_vlan_del(port, &v1) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(kernel(e)),
            }
        }
        if conf.vlan != 0 {
            let v = BridgeVlan {
                vid: conf.vlan,
                pvid: true,
                untagged: true,
                self_: false,
                range_end: None,
            };
            self.host.bridge_vlan_add(port, &v).map_err(kernel)?;
            // The bridge device joins the VLAN too, so the gateway address
            // on it is reachable from the container.
            let v = BridgeVlan {
                vid: conf.vlan,
                pvid: false,
                untagged: false,
                self_: true,
                range_end: None,
            };
            self.host.bridge_vlan_add(bridge, &v).map_err(kernel)?;
        }
        for &(lo, hi) in &conf.vlan_trunk {
            let v = BridgeVlan {
                vid: lo,
                pvid: false,
                untagged: false,
                self_: false,
                range_end: (hi > lo).then_some(hi),
            };
            self.host.bridge_vlan_add(port, &v).map_err(kernel)?;
        }
        Ok(())
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
        let mut v4 = false;
        let mut v6 = false;
        // One dump, kept current below as addresses are added and removed.
        let mut existing = self.host.addresses(Some(bridge.index)).map_err(kernel)?;
        for ip in ips {
            let Some(gw) = ip.gateway else { continue };
            let want =
                IpNet::new(gw, ip.address.prefix_len()).map_err(|e| Error::config("gateway", e))?;
            let mut present = false;
            let mut replaced = Vec::new();
            for a in existing
                .iter()
                .filter(|a| a.addr.addr().is_ipv4() == gw.is_ipv4())
            {
                if a.addr == want {
                    present = true;
                    continue;
                }
                if a.addr.addr().is_ipv6() && a.scope == 253 {
                    continue; // link-local
                }
                let conflicts =
                    gw.is_ipv4() || a.addr.contains(&want.addr()) || want.contains(&a.addr.addr());
                if !conflicts {
                    continue;
                }
                if !self.conf.force_address {
                    return Err(Error::config(
                        "bridge",
                        format!("{:?} already has address {} which differs from gateway {want} (set forceAddress to replace it)", bridge.name, a.addr),
                    ));
                }
                self.host
                    .del_address(bridge.index, a.addr)
                    .map_err(kernel)?;
                replaced.push(a.addr);
            }
            existing.retain(|a| !replaced.contains(&a.addr));
            if !present {
                match self
                    .host
                    .add_address(bridge.index, want, &AddressOptions { nodad: true })
                {
                    Ok(()) => {}
                    Err(e) if e.is_exists() => {} // a concurrent ADD added it
                    Err(e) => return Err(kernel(e)),
                }
                existing.push(net::Address {
                    index: bridge.index,
                    addr: want,
                    scope: 0,
                });
            }
            if gw.is_ipv4() {
                v4 = true;
            } else {
                v6 = true;
            }
        }
        if v4 {
            net::sysctl::write("net/ipv4/ip_forward", "1").map_err(kernel)?;
        }
        if v6 {
            net::sysctl::write("net/ipv6/conf/all/forwarding", "1").map_err(kernel)?;
        }
        Ok(())
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
