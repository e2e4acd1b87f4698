//! ProgramExternalConnectivity and RevokeExternalConnectivity: `-p`
//! through the core's published ports (shared with berth-portmap).

use std::net::IpAddr;

use berth_network::firewall::{PortMapping, Protocol, PublishedPorts};
use ipnet::IpNet;
use serde_json::{json, Value};
use store::ports::{PortClaim, PortOwner};

use super::requests::{IdReq, PortBinding, ProgramReq};
use super::{fail, parse, short, Answer, Endpoint, Network, Networks};

impl Networks {
    /// Who owns an endpoint's published ports in berth-portmap's store
    /// (shared with the CNI plugin: a host port is published once, by
    /// either).
    pub(super) fn port_owner(network: &Network, endpoint: &str) -> PortOwner {
        PortOwner {
            network: network.rules_name(),
            container_id: endpoint.to_string(),
            ifname: berth_network::docker_records::DOCKER_IFNAME.into(),
        }
    }

    /// `-p`: the engine's port bindings, published on berth-portmap's
    /// nftables maps.
    pub(super) fn program(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: ProgramReq = parse(body)?;
        let n: Network = self
            .records
            .network(&req.network_id)
            .ok_or_else(|| fail(format!("unknown network {}", short(&req.network_id))))?;
        let ep: Endpoint = self
            .records
            .endpoint(&req.endpoint_id)
            .ok_or_else(|| fail(format!("unknown endpoint {}", short(&req.endpoint_id))))?;
        let bindings: Vec<PortBinding> = match req.options.get("com.docker.network.portmap") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| fail(format!("com.docker.network.portmap: {e}")))?,
        };
        if bindings.is_empty() {
            return Ok((200, json!({})));
        }
        let ips: Vec<IpAddr> = ep
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpNet>().ok())
            .map(|n| n.addr())
            .collect();
        let mut ports = PublishedPorts::default();
        let mut claims = Vec::new();
        for b in &bindings {
            let protocol = match b.proto {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                132 => Protocol::Sctp,
                p => {
                    return Err(fail(format!(
                        "port binding with protocol number {p}: only tcp, udp, sctp"
                    )))
                }
            };
            if b.host_port == 0 {
                return Err(fail(format!(
                    "port {}: give the host port (-p HOST:{})",
                    b.port, b.port
                )));
            }
            let end = b.host_port_end.max(b.host_port);
            let host_ip: Option<IpAddr> = match b.host_ip.as_str() {
                "" => None,
                s => Some(
                    s.parse()
                        .map_err(|_| fail(format!("HostIP {s:?} is not an address")))?,
                ),
            };
            let families: Vec<&IpAddr> = ips
                .iter()
                .filter(|c| host_ip.is_none_or(|h| h.is_ipv4() == c.is_ipv4()))
                .collect();
            for c in families {
                for off in 0..=(end - b.host_port) {
                    let hp = b.host_port + off;
                    let specific = host_ip.filter(|h| !h.is_unspecified());
                    ports.mappings.push(PortMapping {
                        protocol,
                        host_ip: specific,
                        host_port: hp,
                        container_ip: *c,
                        container_port: b.port + off,
                    });
                    claims.push(PortClaim {
                        family: if c.is_ipv4() { 4 } else { 6 },
                        protocol: protocol.name().to_string(),
                        host_port: hp,
                        host_ip: specific,
                    });
                }
                if !ports.container_ips.contains(c) {
                    ports.container_ips.push(*c);
                    ports.hairpin.push((*c, n.bridge.clone()));
                    if c.is_ipv4() {
                        ports.localhost.push(*c);
                    }
                }
            }
        }
        berth_network::ports::publish(
            &Self::port_owner(&n, &req.endpoint_id),
            &ports,
            &claims,
            ep.sandbox_key.as_deref(),
        )
        .map_err(fail)?;
        Ok((200, json!({})))
    }

    pub(super) fn revoke(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        if let Some(n) = self.records.network(&req.network_id) {
            berth_network::ports::unpublish(&Self::port_owner(&n, &req.endpoint_id))
                .map_err(fail)?;
        }
        Ok((200, json!({})))
    }
}
