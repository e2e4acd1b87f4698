//! The CNI plugin: ADD, DEL, CHECK and GC of a container on the node's
//! bridge, delegated to berth-bridge's code with a config derived from
//! the overlay's.

use berth_kernel::Handle;
use cni::{CniResult, Command, Error, Plugin, Request};
use ifconf::kernel;
use serde_json::json;

use berth_network::overlay::datapath::{
    bridge_name, overlay_mtu, peer_routes, underlay, vxlan_name,
};
use berth_network::overlay::lease::{cached_subnet, resolve, resolve_or_cached};
use berth_network::overlay::{join_node, OverlayConf};
use berth_network::Kind;
use ifconf::core_error;

pub struct OverlayPlugin;

/// The request's config as the core's overlay spec.
fn overlay_conf(req: &Request) -> Result<OverlayConf, Error> {
    OverlayConf::parse(&req.conf.name, &req.conf.raw).map_err(core_error)
}

/// The request berth-bridge gets: this config turned into a bridge
/// network on the node's subnet, routes to the cluster network.
pub(crate) fn bridge_request(
    req: &Request,
    conf: &OverlayConf,
    mtu: u32,
) -> Result<Request, Error> {
    let mut ipam = json!({
        "type": "berth-ipam",
        "ranges": [[{"subnet": conf.subnet.to_string()}]],
        "routes": [{"dst": conf.network.to_string()}],
    });
    if let (Some((net6, _)), Some(sub6)) = (conf.network6, conf.subnet6()) {
        ipam["ranges"]
            .as_array_mut()
            .into_iter()
            .for_each(|r| r.push(json!([{"subnet": sub6.to_string()}])));
        ipam["routes"]
            .as_array_mut()
            .into_iter()
            .for_each(|r| r.push(json!({"dst": net6.to_string()})));
    }
    if let Some(d) = &conf.data_dir {
        ipam["dataDir"] = json!(d);
    }
    let mut c = json!({
        "cniVersion": req.conf.cni_version,
        "name": req.conf.name,
        "type": "berth-bridge",
        "bridge": bridge_name(conf.vni),
        "isGateway": true,
        "ipMasq": false,
        "mtu": mtu,
        // Other nodes' containers connect in through the VXLAN device.
        "uplinks": [vxlan_name(conf.vni)],
        "ipam": ipam,
    });
    for key in [
        "runtimeConfig",
        "args",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    ] {
        if let Some(v) = req.conf.raw.get(key) {
            c[key] = v.clone();
        }
    }
    let stdin = serde_json::to_vec(&c).map_err(|e| Error::decode(e.to_string()))?;
    let conf = cni::NetConf::parse(&stdin)?;
    Ok(Request {
        conf,
        stdin,
        ..req.clone()
    })
}

/// The overlay MTU without touching anything (DEL, CHECK, GC, STATUS).
pub(crate) fn current_mtu(conf: &OverlayConf) -> u32 {
    Handle::new()
        .ok()
        .and_then(|mut h| underlay(&mut h, conf).ok())
        .map(|(l, local)| overlay_mtu(conf, &l, local))
        .unwrap_or(1450)
}

pub(crate) fn delegate(
    req: &Request,
    conf: &OverlayConf,
    command: Command,
) -> Result<Option<CniResult>, Error> {
    let breq = bridge_request(req, conf, current_mtu(conf))?;
    let bridge = berth_bridge::BridgePlugin;
    match command {
        Command::Del => bridge.del(&breq).map(|_| None),
        Command::Check => bridge.check(&breq).map(|_| None),
        Command::Gc => bridge.gc(&breq).map(|_| None),
        _ => bridge.status(&breq).map(|_| None),
    }
}

impl Plugin for OverlayPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let (conf, mtu) = join_node(&overlay_conf(req)?).map_err(core_error)?;
        berth_bridge::BridgePlugin.add(&bridge_request(req, &conf, mtu)?)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&overlay_conf(req)?).map_err(core_error)?;
        delegate(req, &conf, Command::Del).map(|_| ())
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
        delegate(req, &conf, Command::Check).map(|_| ())
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
        delegate(req, &conf, Command::Status).map(|_| ())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = resolve_or_cached(&overlay_conf(req)?).map_err(core_error)?;
        delegate(req, &conf, Command::Gc).map(|_| ())
    }

    fn about(&self) -> String {
        format!(
            "berth-overlay {}: multi-host VXLAN networks (CNI 0.1.0 - 1.1.0)",
            env!("CARGO_PKG_VERSION")
        )
    }
}
