//! CreateEndpoint, Join, DeleteEndpoint and EndpointOperInfo: each
//! endpoint a veth whose host end is a port of the network's bridge.

use berth_kernel::{Handle, Netns};
use berth_network::port::PortSpec;
use serde_json::json;

use super::requests::{CreateEndpointReq, IdReq, JoinReq};
use super::{fail, kernel, parse, short, Answer, Endpoint, Network, Networks};

impl Networks {
    pub(super) fn endpoint_of(&self, network: &str, endpoint: &str) -> Endpoint {
        let (host_veth, peer) = berth_network::names::docker_endpoint_veths(endpoint);
        Endpoint {
            id: endpoint.to_string(),
            network: network.to_string(),
            host_veth,
            peer,
            addresses: Vec::new(),
            sandbox_key: None,
        }
    }

    pub(super) fn create_endpoint(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: CreateEndpointReq = parse(body)?;
        if self.records.network(&req.network_id).is_none() {
            return Err(fail(format!("unknown network {}", short(&req.network_id))));
        }
        if req.endpoint_id.is_empty() {
            return Err(fail("request has no EndpointID"));
        }
        let mut ep = self.endpoint_of(&req.network_id, &req.endpoint_id);
        let i = req.interface.unwrap_or_default();
        ep.addresses = [i.address, i.address_v6]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        Self::write(&self.ep_path(&req.endpoint_id), &ep)?;
        // The engine's addresses and MAC stand: nothing to fill in.
        Ok((200, json!({"Interface": {}})))
    }

    pub(super) fn join(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: JoinReq = parse(body)?;
        let n: Network = self
            .records
            .network(&req.network_id)
            .ok_or_else(|| fail(format!("unknown network {}", short(&req.network_id))))?;
        if req.endpoint_id.is_empty() {
            return Err(fail("request has no EndpointID"));
        }
        let mut ep: Endpoint = self.records.endpoint(&req.endpoint_id).ok_or_else(|| {
            fail(format!(
                "unknown endpoint {} (Join before CreateEndpoint)",
                short(&req.endpoint_id)
            ))
        })?;
        // Which netns the endpoint lives in, for `berth status` to tell a
        // live endpoint from one whose container is gone.
        if !req.sandbox_key.is_empty() && ep.sandbox_key.as_deref() != Some(&req.sandbox_key) {
            ep.sandbox_key = Some(req.sandbox_key.clone());
            Self::write(&self.ep_path(&req.endpoint_id), &ep)?;
        }
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        let port = PortSpec {
            mtu: n.mtu,
            ..PortSpec::new(&ep.host_veth, &ep.peer)
        };
        let wired = (|| -> Result<(), Answer> {
            let here = Netns::current().map_err(kernel("own namespace"))?;
            // A Join retried after berthd died halfway through it.
            port.teardown(&mut h).map_err(fail)?;
            let br = h
                .link_by_name(&n.bridge)
                .map_err(kernel("netlink"))?
                .ok_or_else(|| fail(format!("bridge {} is gone", n.bridge)))?;
            port.apply(&mut h, &br, &here).map_err(fail)?;
            Ok(())
        })();
        if let Err(e) = wired {
            let _ = port.teardown(&mut h);
            return Err(e);
        }
        let gw = |v4: bool| {
            n.gateways
                .iter()
                .find(|g| g.addr().is_ipv4() == v4)
                .map(|g| g.addr().to_string())
                .unwrap_or_default()
        };
        Ok((
            200,
            json!({
                "InterfaceName": {"SrcName": ep.peer, "DstPrefix": "eth"},
                "Gateway": gw(true),
                "GatewayIPv6": gw(false),
            }),
        ))
    }

    pub(super) fn delete_endpoint(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let path = self.ep_path(&req.endpoint_id);
        // Tolerant: the link may be gone with its namespace, or never made.
        let host_veth = self
            .records
            .endpoint(&req.endpoint_id)
            .map(|e| e.host_veth)
            .unwrap_or_else(|| {
                self.endpoint_of(&req.network_id, &req.endpoint_id)
                    .host_veth
            });
        if let Some(n) = self.records.network(&req.network_id) {
            berth_network::ports::unpublish(&Self::port_owner(&n, &req.endpoint_id))
                .map_err(fail)?;
        }
        let mut h = Handle::new().map_err(kernel("netlink"))?;
        h.delete_link_by_name(&host_veth)
            .map_err(kernel("delete veth"))?;
        let _ = std::fs::remove_file(path);
        Ok((200, json!({})))
    }

    pub(super) fn oper_info(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: IdReq = parse(body)?;
        let ep: Endpoint = self
            .records
            .endpoint(&req.endpoint_id)
            .ok_or_else(|| fail(format!("unknown endpoint {}", short(&req.endpoint_id))))?;
        Ok((
            200,
            json!({"Value": {"hostVeth": ep.host_veth, "network": short(&ep.network), "addresses": ep.addresses}}),
        ))
    }
}
