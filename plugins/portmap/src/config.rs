//! berth-portmap's configuration: the reference portmap's keys with the
//! meaning its nftables backend gives them, and the mappings from
//! `runtimeConfig.portMappings` (capability `portMappings`).

use std::net::IpAddr;

use berth_network::firewall::{Conditions, Protocol};
use cni::conf::{flexible_bool, flexible_opt_bool};
use cni::{Error, GoObject, Request};
use serde::Deserialize;
use serde_json::Value;

/// Default of `markMasqBit`, as in the reference (Kubernetes uses 14 and
/// 15, Calico 20-31).
pub const DEFAULT_MARK_BIT: u8 = 13;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Keys {
    #[serde(default, deserialize_with = "flexible_opt_bool")]
    snat: Option<bool>,
    #[serde(default, deserialize_with = "flexible_bool")]
    masq_all: bool,
    #[serde(default)]
    mark_masq_bit: Option<i64>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default)]
    conditions_v4: Option<Vec<String>>,
    #[serde(default)]
    conditions_v6: Option<Vec<String>>,
    #[serde(default)]
    backend: Option<String>,
}

/// One requested mapping, before it meets the container's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
    /// What the mapping listens on: a family's every address, or one.
    pub host: HostAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAddr {
    /// No hostIP: every local address of each family the container has.
    Any,
    /// 0.0.0.0 or ::: every local address of that family only.
    AnyOf { v4: bool },
    /// One local address.
    Ip(IpAddr),
}

impl HostAddr {
    /// Whether the mapping applies to a container address of this family.
    pub fn serves(&self, v4: bool) -> bool {
        match self {
            HostAddr::Any => true,
            HostAddr::AnyOf { v4: f } => *f == v4,
            HostAddr::Ip(ip) => ip.is_ipv4() == v4,
        }
    }

    /// The address itself (None: every address).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            HostAddr::Ip(ip) => Some(*ip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortmapConf {
    /// Masquerade hairpin and localhost connections (default true).
    pub snat: bool,
    /// Masquerade every published-port connection.
    pub masq_all: bool,
    /// Accepted and checked for compatibility; berth masquerades by set
    /// membership, not by packet mark (as the reference nftables backend,
    /// which checks and ignores it too).
    pub mark_masq_bit: u8,
    pub conditions: Conditions,
    pub mappings: Vec<Mapping>,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(field, msg)
}

impl PortmapConf {
    /// The whole config, mappings included (ADD and CHECK).
    pub fn parse(req: &Request) -> Result<PortmapConf, Error> {
        let mut conf = PortmapConf::parse_keys(req)?;
        conf.mappings = mappings(req.conf.runtime("portMappings"))?;
        Ok(conf)
    }

    /// The plugin's own keys, without looking at the mappings: DEL, GC and
    /// STATUS don't need them (DEL works from the record), and a runtime
    /// cleaning up after an ADD refused for a bad mapping sends the same
    /// bad mapping to DEL, which must still succeed.
    pub fn parse_keys(req: &Request) -> Result<PortmapConf, Error> {
        let keys: Keys = cni::gojson::from_value(&req.conf.raw)
            .map_err(|e| Error::decode(format!("network configuration: {e}")))?;
        if keys.external_set_mark_chain.is_some() && keys.mark_masq_bit.is_some() {
            return Err(bad(
                "externalSetMarkChain",
                "cannot specify both externalSetMarkChain and markMasqBit",
            ));
        }
        if let Some(chain) = &keys.external_set_mark_chain {
            return Err(bad(
                "externalSetMarkChain",
                format!(
                    "{chain:?} names an iptables chain; berth-portmap works on nftables and masquerades itself \
                     (the reference portmap's nftables backend refuses this key too)"
                ),
            ));
        }
        let mark_masq_bit = match keys.mark_masq_bit {
            None => DEFAULT_MARK_BIT,
            Some(b) if (0..=31).contains(&b) => b as u8,
            Some(b) => return Err(bad("markMasqBit", format!("{b} is not between 0 and 31"))),
        };
        match keys.backend.as_deref() {
            None | Some("") | Some("nftables") => {}
            Some(other) => {
                return Err(bad(
                    "backend",
                    format!("{other:?}: berth-portmap has only the \"nftables\" backend"),
                ))
            }
        }
        let conditions = Conditions {
            v4: conditions("conditionsV4", keys.conditions_v4)?,
            v6: conditions("conditionsV6", keys.conditions_v6)?,
        };
        conditions
            .validate()
            .map_err(|e| bad("conditionsV4/conditionsV6", e))?;
        Ok(PortmapConf {
            snat: keys.snat.unwrap_or(true),
            masq_all: keys.masq_all,
            mark_masq_bit,
            conditions,
            mappings: Vec::new(),
        })
    }
}

/// nft expressions; iptables arguments (what the reference's iptables
/// backend takes: "-s", "!") are recognised and refused by name.
fn conditions(key: &str, list: Option<Vec<String>>) -> Result<Vec<String>, Error> {
    let list = list.unwrap_or_default();
    if let Some(first) = list.first() {
        if first.starts_with('-') || first.starts_with('!') {
            return Err(bad(
                key,
                format!(
                    "{list:?} are iptables arguments; berth-portmap takes nftables expressions \
                     (e.g. [\"ip saddr != 192.0.2.0/24\"])"
                ),
            ));
        }
    }
    Ok(list)
}

fn port(field: &str, v: Option<&Value>) -> Result<u16, Error> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err(bad(field, "missing"));
    };
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => Err(bad(field, format!("{p} is not a port number (1-65535)"))),
        None => Err(bad(field, format!("{v} is not a port number (1-65535)"))),
    }
}

fn mappings(raw: Option<&Value>) -> Result<Vec<Mapping>, Error> {
    let list = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(bad(
                "runtimeConfig.portMappings",
                format!("expected a list, got {other}"),
            ))
        }
    };
    let mut out: Vec<Mapping> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
        let obj = m
            .as_object()
            .ok_or_else(|| bad(&format!("runtimeConfig.portMappings[{i}]"), "not an object"))?;
        let host_port = port(&at("hostPort"), obj.go_get("hostPort"))?;
        let container_port = port(&at("containerPort"), obj.go_get("containerPort"))?;
        let protocol = match obj.go_get("protocol") {
            // Unset: TCP, as Kubernetes and Docker default it.
            None => Protocol::Tcp,
            Some(Value::String(s)) if s.is_empty() => Protocol::Tcp,
            Some(Value::String(s)) => Protocol::parse(s).ok_or_else(|| {
                bad(
                    &at("protocol"),
                    format!("{s:?} is not one of tcp, udp, sctp"),
                )
            })?,
            Some(other) => {
                return Err(bad(
                    &at("protocol"),
                    format!("{other} is not one of tcp, udp, sctp"),
                ))
            }
        };
        let host = match obj.go_get("hostIP") {
            None => HostAddr::Any,
            Some(Value::String(s)) if s.is_empty() => HostAddr::Any,
            Some(Value::String(s)) => match s.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => HostAddr::AnyOf { v4: ip.is_ipv4() },
                Ok(ip) => HostAddr::Ip(ip),
                Err(_) => return Err(bad(&at("hostIP"), format!("{s:?} is not an IP address"))),
            },
            Some(other) => return Err(bad(&at("hostIP"), format!("{other} is not an IP address"))),
        };
        let mapping = Mapping {
            protocol,
            host_port,
            container_port,
            host,
        };
        if let Some(j) = out.iter().position(|o| overlaps(o, &mapping)) {
            return Err(bad(
                &format!("runtimeConfig.portMappings[{i}]"),
                format!(
                    "publishes {}/{} again (already in portMappings[{j}])",
                    protocol.name(),
                    host_port
                ),
            ));
        }
        out.push(mapping);
    }
    Ok(out)
}

/// Two mappings of one request that would claim the same host port.
fn overlaps(a: &Mapping, b: &Mapping) -> bool {
    if a.protocol != b.protocol || a.host_port != b.host_port {
        return false;
    }
    [true, false].iter().any(|&v4| {
        a.host.serves(v4)
            && b.host.serves(v4)
            && (a.host.ip().is_none() || b.host.ip().is_none() || a.host == b.host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Vec<Mapping>, Error> {
        mappings(Some(&v))
    }

    #[test]
    fn mappings_parse_and_default() {
        let m = parse(json!([
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "0.0.0.0"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "::"},
            {"hostPort": 443, "containerPort": 443, "protocol": "sctp", "hostIP": "192.0.2.1"}
        ]))
        .unwrap();
        assert_eq!(m[0].protocol, Protocol::Tcp);
        assert_eq!(m[0].host, HostAddr::Any);
        assert_eq!(m[1].host, HostAddr::AnyOf { v4: true });
        assert_eq!(m[2].host, HostAddr::AnyOf { v4: false });
        assert_eq!(m[3].host, HostAddr::Ip("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_mappings_name_the_field() {
        for (v, field) in [
            (
                json!([{"hostPort": 0, "containerPort": 80}]),
                "portMappings[0].hostPort",
            ),
            (
                json!([{"hostPort": 65536, "containerPort": 80}]),
                "portMappings[0].hostPort",
            ),
            (json!([{"hostPort": 80}]), "portMappings[0].containerPort"),
            (
                json!([{"hostPort": 80, "containerPort": "80"}]),
                "portMappings[0].containerPort",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                "portMappings[0].protocol",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]),
                "portMappings[0].hostIP",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81, "hostIP": "192.0.2.1"}]),
                "portMappings[1]",
            ),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, cni::codes::INVALID_CONFIG, "{v}");
            assert!(e.msg.contains(field), "{v}: {}", e.msg);
        }
    }

    #[test]
    fn different_families_or_addresses_do_not_overlap() {
        parse(json!([
            {"hostPort": 80, "containerPort": 80, "hostIP": "0.0.0.0"},
            {"hostPort": 80, "containerPort": 80, "hostIP": "::"},
            {"hostPort": 81, "containerPort": 80, "hostIP": "192.0.2.1"},
            {"hostPort": 81, "containerPort": 80, "hostIP": "192.0.2.2"},
            {"hostPort": 80, "containerPort": 80, "protocol": "udp"}
        ]))
        .unwrap();
    }

    /// One runtime's stdin for a chained berth-portmap, as it sends it.
    fn runtime_stdin(runtime_config: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"net","type":"berth-portmap","capabilities":{{"portMappings":true}},
                "runtimeConfig":{runtime_config},
                "prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.88.0.5/16"}}]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn every_runtime_shape_gives_the_same_mappings() {
        let want = vec![
            Mapping {
                protocol: Protocol::Tcp,
                host_port: 8080,
                container_port: 80,
                host: HostAddr::Any,
            },
            Mapping {
                protocol: Protocol::Udp,
                host_port: 5353,
                container_port: 53,
                host: HostAddr::Ip("127.0.0.1".parse().unwrap()),
            },
        ];
        for (who, rc) in [
            // containerd (go-cni PortMapping: no JSON tags), with the pod
            // annotations capability it always fills, null without annotations.
            (
                "containerd",
                r#"{"io.kubernetes.cri.pod-annotations":null,"portMappings":[
                    {"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""},
                    {"HostPort":5353,"ContainerPort":53,"Protocol":"udp","HostIP":"127.0.0.1"}]}"#,
            ),
            // CRI-O (ocicni: tagged, protocol lower-cased).
            (
                "cri-o",
                r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
                    {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}]}"#,
            ),
            // podman 4 (CNI backend): tagged, no hostIP when unset.
            (
                "podman",
                r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                    {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}]}"#,
            ),
            // libcni's cnitool: CAP_ARGS as the user wrote them.
            (
                "cnitool",
                r#"{"portMappings":[{"hostPort":8080,"containerPort":80},
                    {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"}]}"#,
            ),
        ] {
            let req = Request::from_parts(
                cni::Command::Add,
                "c",
                "eth0",
                &runtime_stdin(rc),
                "IgnoreUnknown=1;K8S_POD_NAME=p",
            )
            .unwrap();
            assert_eq!(PortmapConf::parse(&req).unwrap().mappings, want, "{who}");
        }
    }

    #[test]
    fn wrong_types_from_a_runtime_name_the_field() {
        for (rc, field) in [
            (r#"{"portMappings":"oops"}"#, "runtimeConfig.portMappings"),
            (
                r#"{"portMappings":[{"HostPort":"8080","ContainerPort":80}]}"#,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                r#"{"PortMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":7}]}"#,
                "runtimeConfig.portMappings[0].protocol",
            ),
        ] {
            let req = Request::from_parts(cni::Command::Add, "c", "eth0", &runtime_stdin(rc), "")
                .unwrap();
            let e = PortmapConf::parse(&req).unwrap_err();
            assert_eq!(e.code, cni::codes::INVALID_CONFIG, "{rc}");
            assert!(e.msg.contains(field), "{rc}: {}", e.msg);
        }
    }

    #[test]
    fn own_keys_match_case_insensitively() {
        let stdin = br#"{"cniVersion":"1.0.0","name":"net","type":"berth-portmap","SNAT":false,"MasqAll":"true","markmasqbit":14}"#;
        let req = Request::from_parts(cni::Command::Add, "c", "eth0", stdin, "").unwrap();
        let c = PortmapConf::parse(&req).unwrap();
        assert!(!c.snat && c.masq_all);
        assert_eq!(c.mark_masq_bit, 14);
    }
}
