//! A container's attachment to a bridge network: a veth whose host end is
//! a port of the network's bridge, the container side's addresses and
//! routes, the gateway on the bridge, the network's firewall, and the
//! records that let DEL and GC undo all of it. berth-bridge and
//! berth-overlay (whose node is a bridge network with a VXLAN uplink) are
//! both front ends of this.
//!
//! ADD works in this order so that a failure at any step can be undone and
//! a crash at any step leaves something DEL or GC cleans: write the
//! attachment record, reserve the addresses (the front end's IPAM),
//! bridge, veth (peer born in the container netns), container addresses
//! and routes, gateway address, firewall.

pub mod state;

use berth_kernel::{Handle, Link, Netns};
use ipnet::IpNet;
use std::net::IpAddr;

use crate::bridge::BridgeSpec;
use crate::container::{self, Address, ContainerRoute};
use crate::firewall::{self, NetworkFirewall};
use crate::gateway::GatewaySpec;
use crate::names::cni_host_veth;
use crate::port::{PortSpec, PortVlans};
use crate::{kernel, Error, Kind, Result};
use state::{Record, State};

/// A bridge network as its attachments share it: the reference `bridge`
/// plugin's options, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The network's name (its records and firewall objects are keyed by it).
    pub name: String,
    /// The bridge's name.
    pub bridge: String,
    /// The bridge's and the veths' MTU; `None`: the bridge's own.
    pub mtu: Option<u32>,
    pub promisc: bool,
    /// Gateway addresses on the bridge (and the addresses' gateways
    /// default to the subnet's first address).
    pub gateway: bool,
    /// Default routes in the container through the gateways.
    pub default_gateway: bool,
    /// Another address on the bridge is replaced rather than refused.
    pub force_address: bool,
    /// Traffic from the network's subnets leaving the host is masqueraded.
    pub masquerade: bool,
    /// Bridged traffic passes the IP netfilter hooks (see
    /// [`BridgeSpec::netfilter`](crate::bridge::BridgeSpec)).
    pub bridge_netfilter: bool,
    /// With `masquerade`: the subnets whose traffic is masqueraded as it
    /// leaves them (an overlay's cluster networks: between nodes' pods it
    /// keeps its addresses). None: the network's addresses' subnets.
    pub masquerade_subnets: Option<Vec<IpNet>>,
    /// No traffic to or from other berth bridge networks (published ports
    /// excepted).
    pub isolation: bool,
    /// Links whose connections into the bridge the firewall accepts like
    /// the bridge's own traffic (an overlay's VXLAN device).
    pub uplinks: Vec<String>,
    /// Only the container's MAC may send through its port.
    pub macspoofchk: bool,
    pub hairpin: bool,
    pub port_isolation: bool,
    /// VLANs of the ports; `None`: no VLAN filtering on the bridge.
    pub vlans: Option<PortVlans>,
    /// Duplicate address detection on the container's addresses.
    pub dad: bool,
    /// Whether the container's interface is configured (addresses,
    /// routes, up) at all.
    pub container_interface: bool,
}

/// The container an attachment is for.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    pub id: &'a str,
    /// Its interface's name in its namespace.
    pub ifname: &'a str,
    /// Its interface's MAC; `None`: the kernel's choice.
    pub mac: Option<[u8; 6]>,
    pub netns: &'a Netns,
}

/// The addresses of an attachment, as its front end's IPAM hands them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub addresses: Vec<Address>,
    pub routes: Vec<ContainerRoute>,
}

/// Where an attachment's addresses come from: the front end's IPAM (for
/// the CNI plugins, the IPAM plugin the config names, which answers in
/// CNI's error codes). The core's own errors reach the front end through
/// [`Ipam::core_error`], so the IPAM's pass through unchanged.
pub trait Ipam {
    type Error;
    fn core_error(e: Error) -> Self::Error;
    /// Reserves the container's addresses (at least one).
    fn add(&mut self) -> std::result::Result<Addresses, Self::Error>;
    /// Releases them; nothing reserved is fine.
    fn del(&mut self) -> std::result::Result<(), Self::Error>;
    /// Releases what belongs to attachments not in `valid`.
    fn gc(&mut self, valid: &[(String, String)]) -> std::result::Result<(), Self::Error>;
}

/// What ADD made.
#[derive(Debug, Clone)]
pub struct Attached {
    pub bridge: Link,
    pub host: Link,
    pub container: Link,
    /// The veth's MTU.
    pub mtu: u32,
    /// The addresses and routes on the container's interface (with the
    /// gateways and default routes the network adds).
    pub addresses: Addresses,
}

/// What ADD has done so far, for rollback.
#[derive(Default)]
struct Progress {
    ipam: bool,
    bridge_created: Option<u32>,
    veth: bool,
    /// The macspoofchk batch was attempted: from then on rollback removes
    /// the port's check (set before the call, so a batch that applied but
    /// reported an error is covered too).
    spoofchk: bool,
}

/// Removes the attachments of `network` that `remove` picks by host veth
/// and record (None: unreadable): its host veth, its port's spoof
/// check (`spoofchk`), its record; then the network's firewall if no
/// attachment is left. Returns the first error, after trying them all.
fn remove_attachments(
    network: &str,
    remove: impl Fn(&str, Option<&Record>) -> bool,
    spoofchk: impl Fn(&State, &str) -> Result<()>,
) -> Result<()> {
    let state = State::from_env();
    let mut host = Handle::new().map_err(kernel)?;
    let mut first_error = None;
    for (host_veth, rec) in state.records(network) {
        if !remove(&host_veth, rec.as_ref()) {
            continue;
        }
        if let Err(e) = host.delete_link_by_name(&host_veth) {
            first_error.get_or_insert(kernel(e));
            continue;
        }
        let lock = state.lock()?;
        let removed = spoofchk(&state, &host_veth)
            .and_then(|()| state.remove_record(&lock, network, &host_veth));
        if let Err(e) = removed {
            first_error.get_or_insert(e);
        }
    }
    let lock = state.lock()?;
    if let Err(e) = firewall::release_if_unused(&state, &lock, network) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// `berth gc`: removes the attachments of `network` with these host veths
/// as a GC would, without the network's config. Whether a port has a spoof
/// check is read from its record's MAC line rather than the config's
/// `macspoofchk` (an ADD killed between adding the check and recording
/// its MAC leaves a check matching an interface name that no longer
/// exists: inert).
pub fn remove_by_host_veth(network: &str, host_veths: &[&str]) -> Result<()> {
    let checked: std::collections::HashSet<String> = State::from_env()
        .spoof_macs(network)
        .into_iter()
        .map(|(veth, _)| veth)
        .collect();
    remove_attachments(
        network,
        |host_veth, _| host_veths.contains(&host_veth),
        |_, host_veth| {
            if checked.contains(host_veth) {
                firewall::spoofchk_remove(host_veth)
            } else {
                Ok(())
            }
        },
    )
}

/// The first host address of the subnet: the reference's default gateway.
fn default_gateway(addr: &IpNet) -> IpAddr {
    match addr.trunc() {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

/// Default routes through the gateways, for the families `routes` has none.
fn add_default_routes(a: &mut Addresses) {
    for v4 in [true, false] {
        let has_default = a
            .routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
        let gw = a
            .addresses
            .iter()
            .find(|i| i.address.addr().is_ipv4() == v4)
            .and_then(|i| i.gateway);
        if let (false, Some(gw)) = (has_default, gw) {
            let dst = if v4 {
                IpNet::V4(Default::default())
            } else {
                IpNet::V6(Default::default())
            };
            let mut route = ContainerRoute::new(dst);
            route.gateway = Some(gw);
            a.routes.push(route);
        }
    }
}

/// The gateway addresses the bridge gets: each address's gateway with the
/// address's prefix.
fn gateway_addresses(addresses: &[Address]) -> Result<Vec<IpNet>> {
    addresses
        .iter()
        .filter_map(|a| a.gateway.map(|gw| (gw, a.address.prefix_len())))
        .map(|(gw, len)| IpNet::new(gw, len).map_err(|e| Error::config("gateway", e)))
        .collect()
}

impl BridgeNetwork {
    /// The host end of `container`'s veth.
    pub fn host_veth(container_id: &str, ifname: &str) -> String {
        cni_host_veth(container_id, ifname)
    }

    fn bridge_spec(&self) -> BridgeSpec {
        BridgeSpec {
            mtu: self.mtu,
            vlan_filtering: self.vlans.is_some(),
            promisc: self.promisc,
            netfilter: self.bridge_netfilter,
            ..BridgeSpec::new(&self.bridge)
        }
    }

    /// ADD: attaches `c` (whose interface must not exist yet) and returns
    /// what was made. On failure everything done so far is undone,
    /// addresses included.
    pub fn attach<I: Ipam>(
        &self,
        c: &Container,
        ipam: Option<&mut I>,
    ) -> std::result::Result<Attached, I::Error> {
        let host_veth = Self::host_veth(c.id, c.ifname);
        let mut host = Handle::new().map_err(|e| I::core_error(kernel(e)))?;
        let mut cont = Handle::in_netns(c.netns).map_err(|e| I::core_error(kernel(e)))?;
        let exists = |h: &mut Handle, name: &str, what: String| match h.link_by_name(name) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(I::core_error(Error::new(Kind::Exists, what))),
            Err(e) => Err(I::core_error(kernel(e))),
        };
        exists(
            &mut cont,
            c.ifname,
            format!(
                "CNI_IFNAME: interface {:?} already exists in {}",
                c.ifname,
                c.netns.path().display()
            ),
        )?;
        exists(
            &mut host,
            &host_veth,
            format!(
                "host interface {host_veth} for container {:?} ifname {:?} already exists",
                c.id, c.ifname
            ),
        )?;
        let state = State::from_env();
        {
            let lock = state.lock().map_err(I::core_error)?;
            let rec = Record {
                container_id: c.id.to_string(),
                ifname: c.ifname.to_string(),
                bridge: self.bridge.clone(),
            };
            state
                .write_record(&lock, &self.name, &host_veth, &rec)
                .map_err(I::core_error)?;
        }
        let mut add = Add {
            net: self,
            c,
            host: &mut host,
            cont: &mut cont,
            host_veth: &host_veth,
            state: &state,
            progress: Progress::default(),
        };
        let mut ipam = ipam;
        let addresses = match ipam.as_deref_mut().map(|i| i.add()).transpose() {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => {
                add.rollback();
                return Err(e);
            }
        };
        add.progress.ipam = ipam.is_some();
        match add.run(addresses) {
            Ok(attached) => Ok(attached),
            Err(e) => {
                add.rollback();
                if let (true, Some(ipam)) = (add.progress.ipam, ipam) {
                    let _ = ipam.del();
                }
                Err(I::core_error(e))
            }
        }
    }

    /// DEL: removes `(container_id, ifname)`'s attachment, whether or not
    /// its netns still exists, and the network's firewall with its last
    /// attachment. Everything is tried; the first error is returned.
    pub fn detach<I: Ipam>(
        &self,
        container_id: &str,
        ifname: &str,
        ipam: Option<&mut I>,
    ) -> std::result::Result<(), I::Error> {
        let host_veth = Self::host_veth(container_id, ifname);
        let mut errors = Vec::new();
        // Deleting the host end removes the pair: no need to enter the
        // netns, and it works when the netns is already gone (then the
        // kernel has removed the pair and this is a no-op).
        if let Err(e) = Handle::new().and_then(|mut h| h.delete_link_by_name(&host_veth)) {
            errors.push(I::core_error(kernel(e)));
        }
        if let Some(ipam) = ipam {
            if let Err(e) = ipam.del() {
                errors.push(e);
            }
        }
        let state = State::from_env();
        let removed = state.lock().and_then(|lock| {
            // A spoof check that could not be removed keeps its record,
            // so a retried DEL or a GC tries again.
            self.spoofchk_remove(&state, &host_veth)
                .and_then(|()| state.remove_record(&lock, &self.name, &host_veth))
                .and_then(|()| firewall::release_if_unused(&state, &lock, &self.name))
        });
        if let Err(e) = removed {
            errors.push(I::core_error(e));
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// GC: removes the attachments not in `valid` (container ID, ifname),
    /// and the network's firewall if none is left.
    pub fn gc<I: Ipam>(
        &self,
        valid: &[(String, String)],
        ipam: Option<&mut I>,
    ) -> std::result::Result<(), I::Error> {
        let mut errors = Vec::new();
        if let Some(ipam) = ipam {
            if let Err(e) = ipam.gc(valid) {
                errors.push(e);
            }
        }
        if let Err(e) = self.gc_records(valid) {
            errors.push(I::core_error(e));
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn gc_records(&self, valid: &[(String, String)]) -> Result<()> {
        remove_attachments(
            &self.name,
            |_, rec| {
                !rec.is_some_and(|r| {
                    valid
                        .iter()
                        .any(|(id, ifname)| *id == r.container_id && *ifname == r.ifname)
                })
            },
            |state, host_veth| self.spoofchk_remove(state, host_veth),
        )
    }

    /// DEL and GC (under the state lock): removes the port's MAC spoof
    /// check when the network has macspoofchk on; one nft batch, no MAC
    /// needed. Skipped where there can be no check: without an attachment
    /// record (the record outlives the check), and without the network's
    /// rules marker (ADD adds the check after the marker, so an ADD killed
    /// before it added none). Running the batch then would be worse than
    /// useless: its "add, then delete" would leave an empty `bridge berth`
    /// table behind that no network's removal drops.
    fn spoofchk_remove(&self, state: &State, host_veth: &str) -> Result<()> {
        if self.macspoofchk
            && state.has_record(&self.name, host_veth)
            && state.rules_marker(&self.name).is_some()
        {
            firewall::spoofchk_remove(host_veth)
        } else {
            Ok(())
        }
    }

    /// CHECK of the host side: the bridge, the container's port on it,
    /// the `gateways` on the bridge, the network's firewall (masquerade
    /// too when `masquerade`) and, with macspoofchk, the port's check for
    /// `mac`.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        gateways: &[IpAddr],
        masquerade: bool,
        mac: &str,
    ) -> Result<()> {
        let mut host = Handle::new().map_err(kernel)?;
        let bridge = host
            .link_by_name(&self.bridge)
            .map_err(kernel)?
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| Error::check_failed(format!("bridge {:?} is missing", self.bridge)))?;
        let host_veth = Self::host_veth(container_id, ifname);
        let hv = host
            .link_by_name(&host_veth)
            .map_err(kernel)?
            .ok_or_else(|| Error::check_failed(format!("host interface {host_veth} is missing")))?;
        if hv.master != Some(bridge.index) {
            return Err(Error::check_failed(format!(
                "host interface {host_veth} is not attached to bridge {:?}",
                self.bridge
            )));
        }
        if self.gateway {
            let on_bridge = host.addresses(Some(bridge.index)).map_err(kernel)?;
            if let Some(gw) = gateways
                .iter()
                .find(|gw| !on_bridge.iter().any(|a| a.addr.addr() == **gw))
            {
                return Err(Error::check_failed(format!(
                    "gateway address {gw} is missing from bridge {:?}",
                    self.bridge
                )));
            }
        }
        if let Some(what) = firewall::missing(&self.name, masquerade)? {
            return Err(Error::check_failed(what));
        }
        if self.macspoofchk {
            if let Some(what) = firewall::spoofchk_missing(&host_veth, mac)? {
                return Err(Error::check_failed(what));
            }
        }
        Ok(())
    }
}

/// One ADD in progress.
struct Add<'a> {
    net: &'a BridgeNetwork,
    c: &'a Container<'a>,
    host: &'a mut Handle,
    cont: &'a mut Handle,
    host_veth: &'a str,
    state: &'a State,
    progress: Progress,
}

impl Add<'_> {
    /// Everything after the addresses are reserved.
    fn run(&mut self, mut addresses: Addresses) -> Result<Attached> {
        let net = self.net;
        if net.gateway {
            for a in &mut addresses.addresses {
                a.gateway.get_or_insert_with(|| default_gateway(&a.address));
            }
        }
        let bridge = net.bridge_spec().apply(self.host, "bridge")?;
        if bridge.created {
            self.progress.bridge_created = Some(bridge.link.index);
        }
        let bridge = bridge.link;
        let mtu = net.mtu.unwrap_or(bridge.mtu);
        let port = PortSpec {
            mtu: Some(mtu),
            peer_mac: self.c.mac,
            hairpin: net.hairpin,
            isolated: net.port_isolation,
            vlans: net.vlans.clone(),
            ..PortSpec::new(self.host_veth, self.c.ifname)
        };
        self.progress.veth = true;
        let hv = port.apply(self.host, &bridge, self.c.netns)?;

        let cl = self
            .cont
            .link_by_name(self.c.ifname)
            .map_err(kernel)?
            .ok_or_else(|| {
                Error::new(
                    Kind::Kernel,
                    format!("{} vanished after creation", self.c.ifname),
                )
            })?;
        if net.container_interface {
            if !net.dad {
                container::disable_dad(self.cont, self.c.netns, &cl)?;
            }
            if net.default_gateway {
                add_default_routes(&mut addresses);
            }
            container::configure(
                self.cont,
                cl.index,
                &addresses.addresses,
                &addresses.routes,
                !net.dad,
            )?;
        }
        if net.gateway {
            // Another IPv4 address (or an overlapping IPv6 one) on the
            // bridge is an error unless forceAddress replaces it, as in
            // the reference.
            GatewaySpec {
                addresses: gateway_addresses(&addresses.addresses)?,
                force: net.force_address,
            }
            .apply(self.host, &bridge)?;
        }
        let masquerade: Vec<IpNet> = match (&net.masquerade_subnets, net.masquerade) {
            (_, false) => Vec::new(),
            (Some(subnets), true) => subnets.clone(),
            (None, true) => addresses
                .addresses
                .iter()
                .map(|a| a.address.trunc())
                .collect(),
        };
        let lock = self.state.lock()?;
        let fw = NetworkFirewall {
            network: net.name.clone(),
            bridge: net.bridge.clone(),
            masquerade,
            isolation: net.isolation,
            internal: false,
            uplinks: net.uplinks.clone(),
        };
        firewall::ensure(self.state, &lock, &fw)?;
        if net.macspoofchk {
            // The MAC the container really has (given or kernel-chosen).
            let mac = cl.mac.ok_or_else(|| {
                Error::new(
                    Kind::Kernel,
                    format!("{} has no MAC address", self.c.ifname),
                )
            })?;
            self.progress.spoofchk = true;
            firewall::spoofchk_add(self.host_veth, &mac, self.c.id)?;
            // What the reconciler puts the check back from.
            self.state.write_spoof_mac(
                &lock,
                &net.name,
                self.host_veth,
                &berth_kernel::mac_text(&mac),
            )?;
        }
        Ok(Attached {
            bridge,
            host: hv,
            container: cl,
            mtu,
            addresses,
        })
    }

    /// Undoes whatever ADD did but the addresses, best effort, newest
    /// first.
    fn rollback(&mut self) {
        let progress = &self.progress;
        if progress.veth {
            let _ = self.host.delete_link_by_name(self.host_veth);
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
                .remove_record(&lock, &self.net.name, self.host_veth);
            let _ = firewall::release_if_unused(self.state, &lock, &self.net.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, gw: Option<&str>) -> Address {
        Address {
            address: a.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn default_gateways_are_the_subnets_first_addresses() {
        assert_eq!(
            default_gateway(&"10.1.2.7/16".parse().unwrap()),
            "10.1.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            default_gateway(&"fd00:1::7/64".parse().unwrap()),
            "fd00:1::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn default_routes_only_for_families_without_one() {
        let mut a = Addresses {
            addresses: vec![
                addr("10.1.0.5/24", Some("10.1.0.1")),
                addr("fd00::5/64", Some("fd00::1")),
            ],
            routes: vec![ContainerRoute::new("::/0".parse().unwrap())],
        };
        add_default_routes(&mut a);
        let dsts: Vec<String> = a.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["::/0", "0.0.0.0/0"]);
        assert_eq!(a.routes[1].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(a.routes[0].gateway, None);
    }

    #[test]
    fn gateway_addresses_carry_their_addresses_prefix() {
        let gws = gateway_addresses(&[
            addr("10.1.0.5/24", Some("10.1.0.1")),
            addr("fd00::5/64", None),
        ])
        .unwrap();
        assert_eq!(gws, vec!["10.1.0.1/24".parse::<IpNet>().unwrap()]);
    }
}
