//! Docker's remote NetworkDriver protocol. Bridge mode: the same kernel
//! objects berth-bridge makes for a CNI network (a Linux bridge with the
//! gateway address, the network's rules in `inet berth` with masquerade,
//! forward marks and isolation, one veth per endpoint), through the same
//! core (berth-network). The engine moves the veth's peer into the container and
//! configures it (shared/reference/docker-plugins.md §4). Published ports
//! (`-p`) are the core's (berth_network::ports), on the nftables maps and
//! host-port claims berth-portmap uses too.
//! Overlay mode: the node's share of a berth-overlay network (see
//! `overlay_net`): the same bridge and endpoints, on the node's leased
//! subnet, behind the overlay's VXLAN device.
//!
//! The engine never re-sends CreateNetwork after a restart, so every
//! network and endpoint is recorded (`<state>/networks/<id>.json`,
//! `<state>/endpoints/<id>.json`, written durably) before its kernel
//! objects exist and forgotten after they are gone. The records' types
//! are the core's (`berth_network::docker_records`): `berth status`
//! reads the same files.
//!
//! The protocol's JSON types are in `requests`; networks (bridge and
//! overlay), endpoints and published ports each have a module of
//! `Networks`' methods.

mod endpoints;
mod networks;
mod ports;
mod requests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ipam_api::Ipam;
use crate::overlay_net;
use berth_network::docker_records::{
    DockerEndpoint as Endpoint, DockerNetwork as Network, Records,
};

pub type Answer = (u16, Value);

fn fail(msg: impl std::fmt::Display) -> Answer {
    (500, json!({"Err": msg.to_string()}))
}

fn short(id: &str) -> String {
    berth_network::names::docker_short_id(id)
}

pub struct Networks {
    records: Records,
    ops: Mutex<()>,
    /// Overlay networks' addresses come from the node's subnet of their pool.
    ipam: Arc<Ipam>,
    /// berthd's config `overlay`: defaults of every overlay network.
    overlay_defaults: Value,
    agents: overlay_net::Agents,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| (400, json!({"Err": format!("malformed request JSON: {e}")})))
}

fn kernel(what: &str) -> impl Fn(berth_kernel::Error) -> Answer + '_ {
    move |e| fail(format!("{what}: {e}"))
}

fn flag(opts: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool, Answer> {
    match opts.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
        Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
        Some(v) => Err(fail(format!("option {key}={v:?}: expected true or false"))),
    }
}

impl Networks {
    pub fn new(state: &Path, ipam: Arc<Ipam>, overlay_defaults: Value) -> Networks {
        Networks {
            records: Records::new(state),
            ops: Mutex::new(()),
            ipam,
            overlay_defaults,
            agents: overlay_net::Agents::new(state),
        }
    }

    /// At start: the node agents of the overlay networks (berthd is their
    /// agent; the engine sends nothing for networks it already has).
    pub fn resume(&self) {
        for n in self.networks() {
            if let Some(conf) = self.overlay_of(&n) {
                if let Err(e) = self.agents.start(&short(&n.id), &conf) {
                    tracing::warn!("overlay network {}: agent: {e}", short(&n.id));
                }
            }
        }
    }

    /// A network's overlay config, with berthd's secrets back in it.
    fn overlay_of(&self, n: &Network) -> Option<Value> {
        n.overlay
            .as_ref()
            .map(|c| overlay_net::with_secrets(c, &self.overlay_defaults))
    }

    fn net_path(&self, id: &str) -> PathBuf {
        self.records.network_path(id)
    }

    fn ep_path(&self, id: &str) -> PathBuf {
        self.records.endpoint_path(id)
    }

    fn write<T: Serialize>(path: &Path, v: &T) -> Result<(), Answer> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        }
        let text = serde_json::to_vec_pretty(v).map_err(fail)?;
        store::file::write_durable(path, &text).map_err(fail)
    }

    fn networks(&self) -> Vec<Network> {
        self.records.networks().into_iter().flatten().collect()
    }

    pub fn handle(&self, method: &str, body: &[u8]) -> Option<Answer> {
        let _g = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let a = match method {
            "GetCapabilities" => (200, json!({"Scope": "local", "ConnectivityScope": "local"})),
            "CreateNetwork" => self.create_network(body).unwrap_or_else(|a| a),
            "DeleteNetwork" => self.delete_network(body).unwrap_or_else(|a| a),
            "CreateEndpoint" => self.create_endpoint(body).unwrap_or_else(|a| a),
            "Join" => self.join(body).unwrap_or_else(|a| a),
            "Leave" => (200, json!({})),
            "DeleteEndpoint" => self.delete_endpoint(body).unwrap_or_else(|a| a),
            "EndpointOperInfo" => self.oper_info(body).unwrap_or_else(|a| a),
            "ProgramExternalConnectivity" => self.program(body).unwrap_or_else(|a| a),
            "RevokeExternalConnectivity" => self.revoke(body).unwrap_or_else(|a| a),
            _ => return None,
        };
        Some(a)
    }
}
