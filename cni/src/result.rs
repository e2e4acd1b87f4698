//! ADD results, held in the 1.1 model and printed in whatever version the
//! runtime asked for (rules from the spec's upgrade notes and the reference
//! `types/*` packages).

use crate::error::{codes, Error};
use crate::gojson::GoObject;
use crate::version::{Family, Version};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; empty for host ones.
    pub sandbox: String,
    pub socket_path: String,
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix length (host bits kept).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM results leave it unset.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// Parses the `dns` object of a config or result.
    pub fn from_json(v: &Value) -> Result<Dns, Error> {
        if v.is_null() {
            return Ok(Dns::default());
        }
        let list = |key: &str| -> Result<Vec<String>, Error> {
            match v.go_get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_string).ok_or_else(|| {
                            Error::new(codes::DECODE, format!("dns.{key}: expected strings"))
                        })
                    })
                    .collect(),
                Some(_) => Err(Error::new(
                    codes::DECODE,
                    format!("dns.{key}: expected a list"),
                )),
            }
        };
        Ok(Dns {
            nameservers: list("nameservers")?,
            domain: v
                .go_get("domain")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from),
            search: list("search")?,
            options: list("options")?,
        })
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            m.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(codes::DECODE, format!("{what}: {e}"))
}

fn parse_ip(v: &Value, what: &str) -> Result<Option<IpAddr>, Error> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => IpAddr::from_str(s)
            .map(Some)
            .map_err(|e| decode_err(what, format!("{s:?}: {e}"))),
        other => Err(decode_err(
            what,
            format!("expected an address string, got {other}"),
        )),
    }
}

fn parse_net(v: &Value, what: &str) -> Result<IpNet, Error> {
    let s = v
        .as_str()
        .ok_or_else(|| decode_err(what, "expected a CIDR string"))?;
    IpNet::from_str(s).map_err(|e| decode_err(what, format!("{s:?}: {e}")))
}

fn opt_u32(v: &Value, key: &str) -> Option<u32> {
    v.go_get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n != 0)
}

fn parse_route(v: &Value, what: &str) -> Result<Route, Error> {
    Ok(Route {
        dst: parse_net(
            v.go_get("dst").unwrap_or(&Value::Null),
            &format!("{what}.dst"),
        )?,
        gw: parse_ip(
            v.go_get("gw").unwrap_or(&Value::Null),
            &format!("{what}.gw"),
        )?,
        mtu: opt_u32(v, "mtu"),
        advmss: opt_u32(v, "advmss"),
        priority: opt_u32(v, "priority"),
        table: opt_u32(v, "table"),
        scope: v
            .go_get("scope")
            .and_then(Value::as_u64)
            .and_then(|n| u8::try_from(n).ok()),
    })
}

/// Parses a `routes` list (config or result); shared with plugins that
/// read `routes` from their own config.
pub fn parse_routes(v: &Value, what: &str) -> Result<Vec<Route>, Error> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(r, &format!("{what}[{i}]")))
            .collect(),
        _ => Err(decode_err(what, "expected a list")),
    }
}

fn route_json(r: &Route, v11: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    if v11 {
        for (k, val) in [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
        ] {
            if let Some(n) = val {
                m.insert(k.into(), json!(n));
            }
        }
        if let Some(s) = r.scope {
            m.insert("scope".into(), json!(s));
        }
    }
    Value::Object(m)
}

impl CniResult {
    /// Parses a result (a prevResult, or an IPAM plugin's output) of any
    /// version. A missing `cniVersion` takes `default_version`, as libcni
    /// does.
    pub fn from_json(v: &Value, default_version: &str) -> Result<CniResult, Error> {
        if !v.is_object() {
            return Err(decode_err("result", "expected a JSON object"));
        }
        let version_str = match v.go_get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => default_version.to_string(),
        };
        let version = Version::parse(&version_str)?;
        let dns = Dns::from_json(v.go_get("dns").unwrap_or(&Value::Null))?;
        let mut r = CniResult {
            cni_version: version_str,
            dns,
            ..Default::default()
        };
        if version.family() == Family::V02 {
            for key in ["ip4", "ip6"] {
                let Some(ipc) = v.go_get(key).filter(|x| !x.is_null()) else {
                    continue;
                };
                let address = parse_net(
                    ipc.go_get("ip").unwrap_or(&Value::Null),
                    &format!("{key}.ip"),
                )?;
                let gateway = parse_ip(
                    ipc.go_get("gateway").unwrap_or(&Value::Null),
                    &format!("{key}.gateway"),
                )?;
                r.ips.push(IpConfig {
                    address,
                    gateway,
                    interface: None,
                });
                r.routes.extend(parse_routes(
                    ipc.go_get("routes").unwrap_or(&Value::Null),
                    &format!("{key}.routes"),
                )?);
            }
            return Ok(r);
        }
        if let Some(ifaces) = v.go_get("interfaces").and_then(Value::as_array) {
            for (i, it) in ifaces.iter().enumerate() {
                let s = |k: &str| {
                    it.go_get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let name = s("name");
                if name.is_empty() {
                    return Err(decode_err(&format!("interfaces[{i}].name"), "missing"));
                }
                r.interfaces.push(Interface {
                    name,
                    mac: s("mac"),
                    mtu: opt_u32(it, "mtu"),
                    sandbox: s("sandbox"),
                    socket_path: s("socketPath"),
                    pci_id: s("pciID"),
                });
            }
        }
        // 0.3.0 results were briefly keyed "ip"; accept both spellings.
        let ips = v
            .go_get("ips")
            .or_else(|| v.go_get("ip"))
            .unwrap_or(&Value::Null);
        if let Some(list) = ips.as_array() {
            for (i, it) in list.iter().enumerate() {
                let what = format!("ips[{i}]");
                let address = parse_net(
                    it.go_get("address").unwrap_or(&Value::Null),
                    &format!("{what}.address"),
                )?;
                let gateway = parse_ip(
                    it.go_get("gateway").unwrap_or(&Value::Null),
                    &format!("{what}.gateway"),
                )?;
                let interface = match it.go_get("interface") {
                    None | Some(Value::Null) => None,
                    Some(n) => Some(n.as_u64().map(|n| n as usize).ok_or_else(|| {
                        decode_err(&format!("{what}.interface"), "expected an index")
                    })?),
                };
                if let Some(idx) = interface {
                    if idx >= r.interfaces.len() {
                        return Err(decode_err(
                            &format!("{what}.interface"),
                            format!("index {idx} out of range"),
                        ));
                    }
                }
                r.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        r.routes = parse_routes(v.go_get("routes").unwrap_or(&Value::Null), "routes")?;
        Ok(r)
    }

    /// The result as printed for `version` (which must be supported).
    /// Converting to 0.1.0/0.2.0 keeps the first IPv4 and IPv6 address and
    /// fails if there is none, as the reference does.
    pub fn to_json(&self, version: &str) -> Result<Value, Error> {
        let ver = Version::parse(version)?;
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        match ver.family() {
            Family::V02 => {
                if self.ips.is_empty() {
                    return Err(Error::new(
                        codes::INCOMPATIBLE_VERSION,
                        format!(
                            "cannot convert a result without IP addresses to version {version}"
                        ),
                    ));
                }
                for (key, v4) in [("ip4", true), ("ip6", false)] {
                    let Some(ipc) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4)
                    else {
                        continue;
                    };
                    let mut m = Map::new();
                    m.insert("ip".into(), json!(ipc.address.to_string()));
                    if let Some(gw) = ipc.gateway {
                        m.insert("gateway".into(), json!(gw.to_string()));
                    }
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.addr().is_ipv4() == v4)
                        .map(|r| route_json(r, false))
                        .collect();
                    if !routes.is_empty() {
                        m.insert("routes".into(), Value::Array(routes));
                    }
                    out.insert(key.into(), Value::Object(m));
                }
            }
            fam => {
                let v11 = ver >= Version::V1_1_0;
                if !self.interfaces.is_empty() {
                    let ifaces: Vec<Value> = self
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut m = Map::new();
                            m.insert("name".into(), json!(i.name));
                            if !i.mac.is_empty() {
                                m.insert("mac".into(), json!(i.mac));
                            }
                            if v11 {
                                if let Some(mtu) = i.mtu {
                                    m.insert("mtu".into(), json!(mtu));
                                }
                            }
                            if !i.sandbox.is_empty() {
                                m.insert("sandbox".into(), json!(i.sandbox));
                            }
                            if v11 && !i.socket_path.is_empty() {
                                m.insert("socketPath".into(), json!(i.socket_path));
                            }
                            if v11 && !i.pci_id.is_empty() {
                                m.insert("pciID".into(), json!(i.pci_id));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    out.insert("interfaces".into(), Value::Array(ifaces));
                }
                if !self.ips.is_empty() {
                    let ips: Vec<Value> = self
                        .ips
                        .iter()
                        .map(|ip| {
                            let mut m = Map::new();
                            if fam == Family::V04 {
                                let v = if ip.address.addr().is_ipv4() {
                                    "4"
                                } else {
                                    "6"
                                };
                                m.insert("version".into(), json!(v));
                            }
                            m.insert("address".into(), json!(ip.address.to_string()));
                            if let Some(gw) = ip.gateway {
                                m.insert("gateway".into(), json!(gw.to_string()));
                            }
                            if let Some(idx) = ip.interface {
                                m.insert("interface".into(), json!(idx));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    out.insert("ips".into(), Value::Array(ips));
                }
                if !self.routes.is_empty() {
                    out.insert(
                        "routes".into(),
                        Value::Array(self.routes.iter().map(|r| route_json(r, v11)).collect()),
                    );
                }
            }
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_json());
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "berth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: Some(1500),
                    sandbox: "/run/netns/x".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.88.0.2/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd88::2/64".parse().unwrap(),
                    gateway: Some("fd88::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    mtu: Some(1400),
                    ..Route::new("0.0.0.0/0".parse().unwrap(), None)
                },
                Route::new("::/0".parse().unwrap(), Some("fd88::1".parse().unwrap())),
            ],
            dns: Dns {
                nameservers: vec!["10.88.0.1".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v11_round_trip() {
        let r = sample();
        let j = r.to_json("1.1.0").unwrap();
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(j["routes"][0]["mtu"], 1400);
        assert!(j["ips"][0].get("version").is_none());
        let back = CniResult::from_json(&j, "1.1.0").unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn v10_drops_11_fields() {
        let j = sample().to_json("1.0.0").unwrap();
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j["interfaces"][1].get("mtu").is_none());
        assert!(j["routes"][0].get("mtu").is_none());
    }

    #[test]
    fn v04_has_ip_versions() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = sample().to_json(v).unwrap();
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert_eq!(j["ips"][1]["interface"], 1);
            let back = CniResult::from_json(&j, v).unwrap();
            assert_eq!(back.ips, sample().ips);
        }
    }

    #[test]
    fn v02_uses_ip4_ip6() {
        let j = sample().to_json("0.2.0").unwrap();
        assert_eq!(j["ip4"]["ip"], "10.88.0.2/16");
        assert_eq!(j["ip4"]["gateway"], "10.88.0.1");
        assert_eq!(j["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(j["ip6"]["routes"][0]["gw"], "fd88::1");
        assert!(j.get("interfaces").is_none());
        assert_eq!(j["dns"]["nameservers"][0], "10.88.0.1");
        let back = CniResult::from_json(&j, "0.2.0").unwrap();
        assert_eq!(back.ips.len(), 2);
        assert_eq!(back.routes.len(), 2);
        assert!(back.interfaces.is_empty());
    }

    #[test]
    fn v02_without_ips_fails() {
        let r = CniResult {
            ips: vec![],
            ..sample()
        };
        assert!(r.to_json("0.1.0").is_err());
    }

    #[test]
    fn missing_version_takes_default_and_bad_index_is_rejected() {
        let j = json!({"ips":[{"address":"10.0.0.2/24","interface":3}]});
        assert_eq!(
            CniResult::from_json(&j, "1.0.0").unwrap_err().code,
            codes::DECODE
        );
        let j = json!({"ips":[{"address":"10.0.0.2/24"}]});
        assert_eq!(
            CniResult::from_json(&j, "1.0.0").unwrap().cni_version,
            "1.0.0"
        );
    }

    #[test]
    fn results_are_read_with_go_key_matching() {
        let v = json!({"CNIVersion":"1.0.0","Interfaces":[{"Name":"eth0","MAC":"02:00:00:00:00:01","Sandbox":"/run/netns/x"}],
            "IPs":[{"Interface":0,"Address":"10.1.0.2/24","Gateway":"10.1.0.1"}],"Routes":[{"Dst":"0.0.0.0/0","GW":"10.1.0.1"}],
            "DNS":{"Nameservers":["10.1.0.1"]}});
        let r = CniResult::from_json(&v, "0.4.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.interfaces[0].mac, "02:00:00:00:00:01");
        assert_eq!(r.ips[0].interface, Some(0));
        assert_eq!(r.routes[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1".to_string()]);
    }
}
