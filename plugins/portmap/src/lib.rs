//! berth-portmap: published ports (`runtimeConfig.portMappings`) for a
//! container whose address an earlier plugin in the chain gave it.
//!
//! Everything happens in the host's namespace; the container's is never
//! entered, so DEL and GC work without it. Per ADD: one SQLite transaction
//! that checks and claims the host ports (a port another attachment holds
//! is refused, naming the holder) and records what will be installed, then
//! one nf_tables batch adding exactly those elements (berth_network's
//! firewall/portmap.rs; the shared chains and sets are built only when the
//! store's note says they are missing, see `install`). DEL removes what the
//! record says, so it needs neither the mappings again nor a listing of the
//! ruleset. Both run under berth's host-wide lock, which berth-bridge also
//! takes around its table changes.
//!
//! Order for crash safety: the record is written before the kernel
//! changes, and forgotten only after they are undone, so a plugin killed at
//! any point leaves a record that DEL or GC acts on (removing an element
//! that was never added is fine).

//!
//! The published ports themselves are the network core's
//! (`berth_network::ports`, shared with berthd); this crate turns the CNI
//! config and prevResult into them.

pub mod config;
/// The `::1` relay (the core's; this binary runs it, see main.rs).
pub use berth_network::ports::proxy;

use std::net::IpAddr;

use berth_kernel::Handle;
use berth_network::firewall::{PortMapping, Protocol, PublishedPorts};
use berth_network::ports;
use cni::{codes, CniResult, Error, Plugin, Request};
use config::{HostAddr, PortmapConf};
use ifconf::{core_error, kernel};
use store::ports::{PortClaim, PortOwner};

pub struct PortmapPlugin;

fn owner(req: &Request) -> PortOwner {
    PortOwner {
        network: req.conf.name.clone(),
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
    }
}

/// The first IPv4 and first IPv6 address of the container's CNI_IFNAME in
/// prevResult (an address naming no interface counts, as in the
/// reference).
fn container_addresses(prev: &CniResult, ifname: &str) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in &prev.ips {
        if let Some(i) = ip.interface {
            match prev.interfaces.get(i) {
                Some(intf) if intf.name != ifname || intf.sandbox.is_empty() => continue,
                _ => {}
            }
        }
        let addr = ip.address.addr();
        if addr.is_ipv4() {
            v4 = v4.or(Some(addr));
        } else {
            v6 = v6.or(Some(addr));
        }
    }
    (v4, v6)
}

/// Turns the config's mappings and the container's addresses into what
/// the kernel gets and which host ports that claims. Checks hostIP against
/// the host's addresses; changes nothing.
/// What ADD publishes: the NAT mappings, the host ports they claim, and
/// the `::1` ports proxies relay.
struct Plan {
    ports: PublishedPorts,
    claims: Vec<PortClaim>,
    loopback6: Vec<proxy::Proxy>,
}

fn plan(
    conf: &PortmapConf,
    req: &Request,
    prev: &CniResult,
    host: &mut Handle,
) -> Result<Plan, Error> {
    let (v4, v6) = container_addresses(prev, &req.ifname);
    if v4.is_none() && v6.is_none() {
        return Err(Error::config(
            "prevResult",
            format!(
                "has no IP address on the container's interface {:?} to forward ports to",
                req.ifname
            ),
        ));
    }
    // The host's addresses, only when a mapping names one (a dump of every
    // address is not free on a host with many links).
    let local: Vec<IpAddr> = if conf.mappings.iter().any(|m| m.host.ip().is_some()) {
        host.addresses(None)
            .map_err(kernel)?
            .iter()
            .map(|a| a.addr.addr())
            .collect()
    } else {
        Vec::new()
    };
    let mut ports = PublishedPorts {
        conditions: conf.conditions.clone(),
        ..Default::default()
    };
    let mut claims = Vec::new();
    let mut loopback6 = Vec::new();
    for (i, m) in conf.mappings.iter().enumerate() {
        // ::1 is a host address the mapping covers (no hostIP, "::", or
        // "::1" itself); with snat, as 127.0.0.1 is served.
        let on_loopback6 = match m.host {
            HostAddr::Any | HostAddr::AnyOf { v4: false } => true,
            HostAddr::Ip(ip) => ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            HostAddr::AnyOf { v4: true } => false,
        };
        if let (true, true, Some(c6), Protocol::Tcp | Protocol::Udp) =
            (on_loopback6, conf.snat, v6, m.protocol)
        {
            loopback6.push(proxy::Proxy {
                protocol: m.protocol.name().to_string(),
                host_port: m.host_port,
                container_ip: c6,
                container_port: m.container_port,
            });
        }
        if let HostAddr::Ip(ip) = m.host {
            if !local.contains(&ip) {
                return Err(Error::config(
                    &format!("runtimeConfig.portMappings[{i}].hostIP"),
                    format!("{ip} is not an address of this host"),
                ));
            }
        }
        let targets: Vec<IpAddr> = [v4, v6]
            .into_iter()
            .flatten()
            .filter(|c| m.host.serves(c.is_ipv4()))
            .collect();
        if targets.is_empty() {
            return Err(Error::config(
                &format!("runtimeConfig.portMappings[{i}].hostIP"),
                format!(
                    "{} is {} but the container has no address of that family",
                    m.host
                        .ip()
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "the unspecified address".into()),
                    if v4.is_none() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        for c in targets {
            ports.mappings.push(PortMapping {
                protocol: m.protocol,
                host_ip: m.host.ip(),
                host_port: m.host_port,
                container_ip: c,
                container_port: m.container_port,
            });
            claims.push(PortClaim {
                family: if c.is_ipv4() { 4 } else { 6 },
                protocol: m.protocol.name().to_string(),
                host_port: m.host_port,
                host_ip: m.host.ip(),
            });
            if !ports.container_ips.contains(&c) {
                ports.container_ips.push(c);
            }
        }
    }
    for c in ports.container_ips.clone() {
        if conf.snat {
            // The host-side link the container is reached through: a
            // connection arriving from it was made by the container or a
            // sibling on its bridge (hairpin) and must be masqueraded, or
            // the reply would go to the client directly, skipping the NAT.
            if let Some(link) = host_link(host, c)? {
                ports.hairpin.push((c, link));
            }
            if c.is_ipv4() {
                ports.localhost.push(c);
            }
        }
        if conf.masq_all {
            ports.masq_all.push(c);
        }
    }
    Ok(Plan {
        ports,
        claims,
        loopback6,
    })
}

/// The name of the host link the route to `ip` leaves through, if any.
fn host_link(host: &mut Handle, ip: IpAddr) -> Result<Option<String>, Error> {
    let Some(route) = host.route_get(ip).map_err(kernel)? else {
        return Ok(None);
    };
    let Some(oif) = route.oif else {
        return Ok(None);
    };
    Ok(host.link_by_index(oif).map_err(kernel)?.map(|l| l.name))
}

impl Plugin for PortmapPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = PortmapConf::parse(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            Error::config(
                "prevResult",
                "missing: berth-portmap is a chained plugin and needs the previous plugin's result",
            )
        })?;
        let result = CniResult {
            cni_version: req.result_version(),
            ..prev.clone()
        };
        if conf.mappings.is_empty() {
            return Ok(result);
        }
        let mut host = Handle::new().map_err(kernel)?;
        let plan = plan(&conf, req, &prev, &mut host)?;
        let netns = req.netns.as_deref().and_then(|p| p.to_str());
        ports::publish_with_proxies(
            &owner(req),
            &plan.ports,
            &plan.claims,
            &plan.loopback6,
            netns,
        )
        .map_err(core_error)?;
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        // The plugin's keys must still parse (as in the reference), but
        // the mappings are not needed: the record says what to remove.
        PortmapConf::parse_keys(req)?;
        ports::unpublish(&owner(req)).map_err(core_error)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = PortmapConf::parse(req)?;
        let prev = req.prev_result()?.ok_or_else(|| {
            Error::config("prevResult", "CHECK needs the ADD result as prevResult")
        })?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        let mut host = Handle::new().map_err(kernel)?;
        let wanted = plan(&conf, req, &prev, &mut host)?.ports;
        ports::check(&owner(req), &wanted, &conf.conditions).map_err(core_error)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        PortmapConf::parse_keys(req)?;
        // No list means no attachment is valid (the spec's reading).
        let valid = req.conf.valid_attachments.clone().unwrap_or_default();
        let keep = |o: &PortOwner| {
            valid
                .iter()
                .any(|a| a.container_id == o.container_id && a.ifname == o.ifname)
        };
        ports::gc(&req.conf.name, keep).map_err(core_error)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        PortmapConf::parse_keys(req)?;
        // The kernel's nf_tables is what berth-portmap needs (no nft
        // binary): a generation query tells whether it answers.
        berth_kernel::nf_tables::available(None).map_err(|e| {
            Error::new(
                codes::NOT_AVAILABLE,
                format!("nf_tables (the kernel's nftables) is not available: {e}"),
            )
        })
    }

    fn about(&self) -> String {
        format!(
            "berth-portmap {}: published ports on nftables maps (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
