//! The NetworkDriver protocol's request bodies, as the engine sends them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
pub(super) struct IdReq {
    #[serde(rename = "NetworkID", default)]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub(super) endpoint_id: String,
}

#[derive(Deserialize)]
pub(super) struct JoinReq {
    #[serde(rename = "NetworkID", default)]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub(super) endpoint_id: String,
    /// The container's netns (/var/run/docker/netns/<id>).
    #[serde(rename = "SandboxKey", default)]
    pub(super) sandbox_key: String,
}

#[derive(Deserialize, Default)]
pub(super) struct Interface {
    #[serde(rename = "Address", default)]
    pub(super) address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub(super) address_v6: String,
}

#[derive(Deserialize)]
pub(super) struct CreateEndpointReq {
    #[serde(rename = "NetworkID", default)]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub(super) endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub(super) interface: Option<Interface>,
}

#[derive(Deserialize)]
pub(super) struct ProgramReq {
    #[serde(rename = "NetworkID", default)]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub(super) endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub(super) options: BTreeMap<String, Value>,
}

/// One of the engine's `com.docker.network.portmap` entries.
#[derive(Deserialize)]
pub(super) struct PortBinding {
    #[serde(rename = "Proto")]
    pub(super) proto: u8,
    #[serde(rename = "Port")]
    pub(super) port: u16,
    #[serde(rename = "HostIP", default)]
    pub(super) host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub(super) host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    pub(super) host_port_end: u16,
}

#[derive(Deserialize)]
pub(super) struct IpData {
    #[serde(rename = "Pool", default)]
    pub(super) pool: String,
    #[serde(rename = "Gateway", default)]
    pub(super) gateway: String,
}

#[derive(Deserialize)]
pub(super) struct CreateNetworkReq {
    #[serde(rename = "NetworkID", default)]
    pub(super) network_id: String,
    #[serde(rename = "Options", default)]
    pub(super) options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub(super) ipv4: Option<Vec<IpData>>,
    #[serde(rename = "IPv6Data", default)]
    pub(super) ipv6: Option<Vec<IpData>>,
}
