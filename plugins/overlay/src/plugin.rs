//! The CNI plugin: ADD, DEL, CHECK and GC of a container on the node's
//! bridge network (the core's bridge attachment, its uplink the VXLAN
//! device), addresses from berth-ipam on the node's subnets.

use std::path::PathBuf;

use berth_ipam::{IpamConfig, Range, RangeSet};
use berth_kernel::Handle;
use berth_network::attachment::{Addresses, BridgeNetwork, Ipam};
use berth_network::overlay::datapath::{bridge_name, peer_routes, vxlan_name};
use berth_network::overlay::lease::{cached_subnet, resolve, resolve_or_cached};
use berth_network::overlay::{held_or_resolved, join_node, OverlayConf};
use berth_network::Kind;
use cni::{CniResult, Error, Plugin, Request, Route};
use ifconf::attach;
use ifconf::{core_addresses, core_error, kernel};
use ipnet::IpNet;
use store::Owner;

pub struct OverlayPlugin;

/// The request's config as the core's overlay spec.
fn overlay_conf(req: &Request) -> Result<OverlayConf, Error> {
    req.args.check_known(&["MAC", "IP"])?;
    OverlayConf::parse(&req.conf.name, &req.conf.raw).map_err(core_error)
}

/// The node's bridge network: a gateway on the node's subnets, routes to
/// the cluster network, the VXLAN device its uplink (other nodes'
/// containers connect in through it). `mtu`: the overlay's (ADD; the
/// other verbs don't look at it).
fn node_network(req: &Request, conf: &OverlayConf, mtu: Option<u32>) -> BridgeNetwork {
    BridgeNetwork {
        name: req.conf.name.clone(),
        bridge: bridge_name(conf.vni),
        mtu,
        promisc: false,
        gateway: true,
        default_gateway: conf.default_gateway,
        force_address: false,
        // Traffic between nodes' containers keeps its addresses: only what
        // leaves the cluster networks is masqueraded (ipMasq).
        masquerade: conf.ip_masq,
        masquerade_subnets: Some(
            std::iter::once(ipnet::IpNet::V4(conf.network))
                .chain(conf.network6.map(|(n6, _)| ipnet::IpNet::V6(n6)))
                .collect(),
        ),
        isolation: true,
        uplinks: vec![vxlan_name(conf.vni)],
        macspoofchk: false,
        hairpin: conf.hairpin,
        // Kubernetes Services: kube-proxy DNATs to pods on this bridge too.
        bridge_netfilter: true,
        port_isolation: false,
        vlans: None,
        dad: false,
        container_interface: true,
    }
}

/// berth-ipam on the node's subnets, in process.
struct NodeIpam<'a> {
    req: &'a Request,
    conf: &'a OverlayConf,
}

impl NodeIpam<'_> {
    fn data_dir(&self) -> PathBuf {
        self.conf
            .data_dir
            .as_deref()
            .map_or_else(|| PathBuf::from(store::DEFAULT_DATA_DIR), PathBuf::from)
    }

    /// One range set per node subnet, a route per cluster network.
    fn config(&self) -> Result<IpamConfig, Error> {
        let conf = self.conf;
        let mut sets = vec![IpNet::V4(conf.subnet)];
        let mut routes = vec![Route::new(IpNet::V4(conf.network), None)];
        if let (Some((net6, _)), Some(sub6)) = (conf.network6, conf.subnet6()) {
            sets.push(IpNet::V6(sub6));
            routes.push(Route::new(IpNet::V6(net6), None));
        }
        let range_sets = sets
            .into_iter()
            .enumerate()
            .map(|(i, subnet)| {
                Range::new(subnet, None, None, None, &format!("subnet[{i}]"))
                    .map(|r| RangeSet { ranges: vec![r] })
            })
            .collect::<Result<_, _>>()?;
        IpamConfig::for_range_sets(self.req, range_sets, routes, self.data_dir())
    }
}

impl Ipam for NodeIpam<'_> {
    type Error = Error;

    fn core_error(e: berth_network::Error) -> Error {
        core_error(e)
    }

    fn add(&mut self) -> Result<Addresses, Error> {
        let req = self.req;
        let r = berth_ipam::add(
            &self.config()?,
            &req.container_id,
            &req.ifname,
            req.netns.as_deref(),
            &req.result_version(),
        )?;
        Ok(core_addresses(&r))
    }

    fn del(&mut self) -> Result<(), Error> {
        let req = self.req;
        berth_ipam::del(
            &self.data_dir(),
            &req.conf.name,
            &req.container_id,
            &req.ifname,
        )
        .map(|_| ())
    }

    fn gc(&mut self, valid: &[(String, String)]) -> Result<(), Error> {
        // berth-ipam's GC without a list releases nothing (the node's
        // records read no list as "none is valid").
        if self.req.conf.valid_attachments.is_none() {
            return Ok(());
        }
        let owners: Vec<Owner> = valid
            .iter()
            .map(|(id, ifname)| Owner::new(id.clone(), ifname.clone()))
            .collect();
        berth_ipam::gc(&self.data_dir(), &self.req.conf.name, &owners).map(|_| ())
    }
}

impl Plugin for OverlayPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let (conf, mtu) = join_node(&overlay_conf(req)?).map_err(core_error)?;
        let net = node_network(req, &conf, Some(mtu));
        let mac = ifconf::container_mac(req)?;
        let mut ipam = NodeIpam { req, conf: &conf };
        attach::add(req, &net, mac, Some(&mut ipam))
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = held_or_resolved(&overlay_conf(req)?).map_err(core_error)?;
        let mut ipam = NodeIpam { req, conf: &conf };
        attach::del(req, &node_network(req, &conf, None), Some(&mut ipam))
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&overlay_conf(req)?).map_err(core_error)?;
        let mut h = Handle::new().map_err(kernel)?;
        let name = vxlan_name(conf.vni);
        if h.link_by_name(&name).map_err(kernel)?.is_none() {
            return Err(ifconf::check_failed(format!(
                "VXLAN device {name} is missing"
            )));
        }
        let routes = h.routes().map_err(kernel)?;
        for p in &conf.peers {
            for want in peer_routes(0, p) {
                if !routes.iter().any(|r| r.dst == want.dst) {
                    return Err(ifconf::check_failed(format!(
                        "no route to node {}'s subnet {}",
                        p.node, want.dst
                    )));
                }
            }
        }
        let prev = attach::prev_result(req)?;
        let ipam = NodeIpam { req, conf: &conf };
        berth_ipam::check(&ipam.config()?, &req.container_id, &req.ifname)?;
        attach::check(req, &node_network(req, &conf, None), &prev)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let parsed = overlay_conf(req)?;
        // Unreachable store: fine while this node holds a lease (its
        // containers keep working), 50 when it holds none.
        let conf = match resolve(&parsed, false) {
            Ok(c) => c,
            Err(e) if e.kind == Kind::TryAgain => match cached_subnet(&parsed) {
                Some(subnet) => OverlayConf {
                    subnet,
                    peers: Vec::new(),
                    ..parsed.clone()
                },
                None => {
                    return Err(Error::new(
                        cni::codes::NOT_AVAILABLE,
                        format!("{e}; this node holds no subnet lease"),
                    ))
                }
            },
            Err(e) => return Err(core_error(e)),
        };
        berth_ipam::status(&NodeIpam { req, conf: &conf }.config()?)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = held_or_resolved(&overlay_conf(req)?).map_err(core_error)?;
        let mut ipam = NodeIpam { req, conf: &conf };
        attach::gc(req, &node_network(req, &conf, None), Some(&mut ipam))
    }

    fn about(&self) -> String {
        format!(
            "berth-overlay {}: multi-host VXLAN networks (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
