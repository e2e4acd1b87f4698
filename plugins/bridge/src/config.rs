//! berth-bridge's configuration: the reference bridge plugin's keys with the
//! same meaning, validated completely before anything on the host changes.

use berth_network::attachment::BridgeNetwork;
use berth_network::port::PortVlans;
use cni::conf::{flexible_bool, flexible_opt_bool};
use cni::{Error, Request};
use serde::Deserialize;

pub const DEFAULT_BRIDGE: &str = "berth0";

/// `vlanTrunk` entries: `{"id": N}` or `{"minID": A, "maxID": B}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TrunkEntry {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default, rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    pub max_id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default, deserialize_with = "flexible_bool")]
    is_gateway: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    is_default_gateway: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    force_address: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default, deserialize_with = "flexible_bool")]
    hairpin_mode: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    promisc_mode: bool,
    #[serde(default)]
    vlan: Option<i64>,
    #[serde(default)]
    vlan_trunk: Option<Vec<TrunkEntry>>,
    #[serde(default, deserialize_with = "flexible_opt_bool")]
    preserve_default_vlan: Option<bool>,
    #[serde(default, deserialize_with = "flexible_bool")]
    macspoofchk: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    enabledad: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    disable_container_interface: bool,
    #[serde(default, deserialize_with = "flexible_bool")]
    port_isolation: bool,
    #[serde(default, deserialize_with = "flexible_opt_bool")]
    isolation: Option<bool>,
    #[serde(default)]
    uplinks: Option<Vec<String>>,
}

/// A request's config: the network as the core takes it, and what stays
/// with the CNI front end.
#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub network: BridgeNetwork,
    /// `ipam.type`, if an `ipam` section is present.
    pub ipam_type: Option<String>,
    /// The `dns` key; wins over the IPAM plugin's DNS.
    pub dns: cni::Dns,
    /// The container MAC from CNI_ARGS, args.cni.mac or runtimeConfig.mac.
    pub mac: Option<[u8; 6]>,
}

impl BridgeConf {
    pub fn parse(req: &Request) -> Result<BridgeConf, Error> {
        let raw: Raw = cni::gojson::from_value(&req.conf.raw).map_err(|e| {
            Error::new(
                cni::codes::INVALID_CONFIG,
                format!("berth-bridge config: {e}"),
            )
        })?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        check_ifname("bridge", &bridge)?;
        if let Some(b) = &raw.ip_masq_backend {
            if b != "iptables" && b != "nftables" {
                return Err(Error::config(
                    "ipMasqBackend",
                    format!("{b:?}: expected \"iptables\" or \"nftables\""),
                ));
            }
        }
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => return Err(Error::config("mtu", format!("{m} is outside 68..65535"))),
        };
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::config(
                "hairpinMode",
                "cannot be combined with promiscMode",
            ));
        }
        let vlan = match raw.vlan {
            None => 0,
            Some(v) if (0..=4094).contains(&v) => v as u16,
            Some(v) => return Err(Error::config("vlan", format!("{v} is outside 0..4094"))),
        };
        let vlan_trunk = parse_trunk(raw.vlan_trunk.as_deref().unwrap_or_default())?;
        let ipam_type = ifconf::ipam_type(&req.conf)?;
        if raw.disable_container_interface && ipam_type.is_some() {
            return Err(Error::config(
                "disableContainerInterface",
                "cannot be used together with ipam",
            ));
        }
        let dns = ifconf::dns(&req.conf)?;
        req.args.check_known(&["MAC", "IP"])?;
        let vlans = (vlan != 0 || !vlan_trunk.is_empty()).then(|| PortVlans {
            access: vlan,
            trunk: vlan_trunk,
            keep_default: raw.preserve_default_vlan.unwrap_or(true),
        });
        Ok(BridgeConf {
            network: BridgeNetwork {
                name: req.conf.name.clone(),
                bridge,
                mtu,
                promisc: raw.promisc_mode,
                gateway: raw.is_gateway || raw.is_default_gateway,
                default_gateway: raw.is_default_gateway,
                force_address: raw.force_address,
                masquerade: raw.ip_masq,
                masquerade_subnets: None,
                bridge_netfilter: false,
                // No traffic to or from other berth bridge networks
                // (published ports excepted), as the reference firewall
                // plugin's `ingressPolicy: same-bridge`.
                isolation: raw.isolation.unwrap_or(true),
                // berth's own key: berth-overlay's VXLAN device, say.
                uplinks: uplinks(raw.uplinks.unwrap_or_default())?,
                macspoofchk: raw.macspoofchk,
                hairpin: raw.hairpin_mode,
                port_isolation: raw.port_isolation,
                vlans,
                dad: raw.enabledad,
                container_interface: !raw.disable_container_interface,
            },
            ipam_type,
            dns,
            mac: ifconf::container_mac(req)?,
        })
    }
}

/// Interface names the kernel accepts (berth-kernel's rule, the only one).
pub fn check_ifname(field: &str, name: &str) -> Result<(), Error> {
    berth_kernel::check_ifname(name).map_err(|e| Error::config(field, e.to_string()))
}

fn parse_trunk(entries: &[TrunkEntry]) -> Result<Vec<(u16, u16)>, Error> {
    let valid = |field: &str, v: i64| -> Result<u16, Error> {
        if (1..=4094).contains(&v) {
            Ok(v as u16)
        } else {
            Err(Error::config(field, format!("{v} is outside 1..4094")))
        }
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match (e.id, e.min_id, e.max_id) {
            (Some(id), None, None) => {
                let id = valid(&format!("vlanTrunk[{i}].id"), id)?;
                out.push((id, id));
            }
            (None, Some(lo), Some(hi)) => {
                let lo = valid(&format!("vlanTrunk[{i}].minID"), lo)?;
                let hi = valid(&format!("vlanTrunk[{i}].maxID"), hi)?;
                if lo > hi {
                    return Err(Error::config(
                        &format!("vlanTrunk[{i}]"),
                        "minID is greater than maxID",
                    ));
                }
                out.push((lo, hi));
            }
            _ => {
                return Err(Error::config(
                    &format!("vlanTrunk[{i}]"),
                    "give either \"id\" or both \"minID\" and \"maxID\"",
                ))
            }
        }
    }
    Ok(out)
}

/// `uplinks`: interface names (checked as the kernel would).
fn uplinks(names: Vec<String>) -> Result<Vec<String>, Error> {
    for (i, n) in names.iter().enumerate() {
        check_ifname(&format!("uplinks[{i}]"), n)?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::Command;

    fn parse(stdin: &str) -> Result<BridgeConf, Error> {
        BridgeConf::parse(&Request::from_parts(
            Command::Add,
            "c",
            "eth0",
            stdin.as_bytes(),
            "",
        )?)
    }

    #[test]
    fn keys_match_as_the_reference_bridge_reads_them() {
        // Go's encoding/json: any case, exact case first, null a no-op.
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"berth-bridge","Bridge":"other","bridge":"br-go",
                "IsGateway":true,"IPMasq":"true","MTU":1400,"hairpinMode":null,
                "RuntimeConfig":{"Mac":"02:00:00:00:00:07"},"ipam":null}"#,
        )
        .unwrap();
        assert_eq!(c.network.bridge, "br-go");
        assert!(c.network.gateway && c.network.masquerade && !c.network.hairpin);
        assert_eq!(c.network.mtu, Some(1400));
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 7]));
        assert_eq!(c.ipam_type, None);
    }

    #[test]
    fn a_wrong_type_is_refused() {
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"berth-bridge","IsGateway":7}"#)
            .unwrap_err();
        assert_eq!(e.code, cni::codes::INVALID_CONFIG);
        assert_eq!(
            e.msg,
            "berth-bridge config: isGateway: expected a boolean, got 7"
        );
    }
}
