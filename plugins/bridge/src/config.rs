//! berth-bridge's configuration: the reference bridge plugin's keys with the
//! same meaning, validated completely before anything on the host changes.

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

#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// Untagged VLAN of the container's port (0 = none).
    pub vlan: u16,
    /// Tagged VLAN ranges on the container's port, inclusive.
    pub vlan_trunk: Vec<(u16, u16)>,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enabledad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// No traffic to or from other berth bridge networks (published ports
    /// excepted), as the reference firewall plugin's `ingressPolicy:
    /// same-bridge`. Default true.
    pub isolation: bool,
    /// berth's own key: links whose connections into the bridge the
    /// firewall accepts like the bridge's own traffic (berth-overlay passes
    /// its VXLAN device). Default none.
    pub uplinks: Vec<String>,
    /// `ipam.type`, if an `ipam` section is present.
    pub ipam_type: Option<String>,
    /// The `dns` key; wins over the IPAM plugin's DNS.
    pub dns: cni::Dns,
    /// The container MAC from CNI_ARGS, args.cni.mac or runtimeConfig.mac.
    pub mac: Option<[u8; 6]>,
}

impl BridgeConf {
    pub fn uses_vlans(&self) -> bool {
        self.vlan != 0 || !self.vlan_trunk.is_empty()
    }

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
        Ok(BridgeConf {
            bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            mtu,
            hairpin_mode: raw.hairpin_mode,
            promisc_mode: raw.promisc_mode,
            vlan,
            vlan_trunk,
            preserve_default_vlan: raw.preserve_default_vlan.unwrap_or(true),
            macspoofchk: raw.macspoofchk,
            enabledad: raw.enabledad,
            disable_container_interface: raw.disable_container_interface,
            port_isolation: raw.port_isolation,
            isolation: raw.isolation.unwrap_or(true),
            uplinks: uplinks(raw.uplinks.unwrap_or_default())?,
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
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ', ':']) || n == "." || n == ".." {
            return Err(Error::config(
                &format!("uplinks[{i}]"),
                format!("{n:?} is not an interface name"),
            ));
        }
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
        assert_eq!(c.bridge, "br-go");
        assert!(c.is_gateway && c.ip_masq && !c.hairpin_mode);
        assert_eq!(c.mtu, Some(1400));
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
