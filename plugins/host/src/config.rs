//! berth-host's configuration. One `mode` key picks what the container
//! gets; the other keys are those of the reference plugin doing that job
//! (`loopback`, `host-device`, `macvlan`), with the same meaning. A key that
//! belongs to another mode is refused rather than ignored, so a config
//! that says something berth would not do fails at once.

use berth_kernel::MacvlanMode;
use cni::conf::flexible_bool;
use cni::{Error, Request};
use serde::Deserialize;
use std::path::PathBuf;

const MODES: &str =
    "none, host, device, macvlan (or a macvlan mode: bridge, private, vepa, passthru)";

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Loopback only, like the reference `loopback` plugin.
    None,
    /// The container shares the host's network namespace.
    Host,
    /// An existing host link moved into the container.
    Device(DeviceConf),
    /// A macvlan child of a host link, created in the container.
    Macvlan(MacvlanConf),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Host => "host",
            Mode::Device(_) => "device",
            Mode::Macvlan(_) => "macvlan",
        }
    }
}

/// How `device` mode finds the host link (host-device's keys).
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSelector {
    Name(String),
    Mac([u8; 6]),
    /// A /sys/devices/... path whose `net/` directory names the link.
    KernelPath(PathBuf),
    /// A PCI address (`pciBusID`, or `runtimeConfig.deviceID`).
    Pci(String),
    /// An auxiliary-bus device (`runtimeConfig.deviceID`).
    Auxiliary(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConf {
    pub selector: DeviceSelector,
    /// Allows moving the link that carries the host's default route.
    pub allow_default_route: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MacvlanConf {
    /// The parent link; None: the link of the default route.
    pub master: Option<String>,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// The master is a link of the container's namespace, not the host's.
    pub link_in_container: bool,
    pub bc_queue_len: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct HostConf {
    pub mode: Mode,
    /// `ipam.type` (device and macvlan modes only).
    pub ipam_type: Option<String>,
    pub dns: cni::Dns,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    mode: Option<String>,
    // device
    device: Option<String>,
    hwaddr: Option<String>,
    kernelpath: Option<String>,
    #[serde(rename = "pciBusID")]
    pci_bus_id: Option<String>,
    #[serde(default, deserialize_with = "flexible_bool")]
    allow_default_route: bool,
    // macvlan
    master: Option<String>,
    macvlan_mode: Option<String>,
    mtu: Option<i64>,
    mac: Option<String>,
    #[serde(default, deserialize_with = "flexible_bool")]
    link_in_container: bool,
    bcqueuelen: Option<i64>,
}

const DEVICE_KEYS: &[&str] = &[
    "device",
    "hwaddr",
    "kernelpath",
    "pciBusID",
    "allowDefaultRoute",
];
const MACVLAN_KEYS: &[&str] = &[
    "master",
    "macvlanMode",
    "mtu",
    "mac",
    "linkInContainer",
    "bcqueuelen",
];

fn macvlan_mode(field: &str, s: &str) -> Option<Result<MacvlanMode, Error>> {
    let m = match s {
        "bridge" => MacvlanMode::Bridge,
        "private" => MacvlanMode::Private,
        "vepa" => MacvlanMode::Vepa,
        "passthru" => MacvlanMode::Passthru,
        "" if field == "macvlanMode" => MacvlanMode::Bridge,
        _ if field == "macvlanMode" => {
            return Some(Err(Error::config(
                field,
                format!("{s:?}: expected bridge, private, vepa or passthru"),
            )))
        }
        _ => return None,
    };
    Some(Ok(m))
}

/// Interface names the kernel accepts (berth-kernel's rule, the only one).
pub fn check_ifname(field: &str, name: &str) -> Result<(), Error> {
    berth_kernel::check_ifname(name).map_err(|e| Error::config(field, e.to_string()))
}

impl HostConf {
    pub fn parse(req: &Request) -> Result<HostConf, Error> {
        let raw: Raw = cni::gojson::from_value(&req.conf.raw).map_err(|e| {
            Error::new(
                cni::codes::INVALID_CONFIG,
                format!("berth-host config: {e}"),
            )
        })?;
        let present = |key: &str| req.conf.key(key).is_some();
        let mode_str = raw
            .mode
            .as_deref()
            .ok_or_else(|| Error::config("mode", format!("missing; expected one of {MODES}")))?;
        let mode = match mode_str {
            "none" => Mode::None,
            "host" => Mode::Host,
            "device" => Mode::Device(device_conf(req, &raw)?),
            "macvlan" => Mode::Macvlan(macvlan_conf(req, &raw, None)?),
            other => match macvlan_mode("mode", other) {
                Some(m) => Mode::Macvlan(macvlan_conf(req, &raw, Some(m?))?),
                None => {
                    return Err(Error::config(
                        "mode",
                        format!("unknown mode {other:?}; expected one of {MODES}"),
                    ))
                }
            },
        };
        let own_keys: &[&str] = match mode {
            Mode::Device(_) => DEVICE_KEYS,
            Mode::Macvlan(_) => MACVLAN_KEYS,
            _ => &[],
        };
        for key in DEVICE_KEYS.iter().chain(MACVLAN_KEYS) {
            if present(key) && !own_keys.contains(key) {
                return Err(Error::config(
                    key,
                    format!("not used in mode {}", mode.name()),
                ));
            }
        }
        let ipam_type = ifconf::ipam_type(&req.conf)?;
        if ipam_type.is_some() && matches!(mode, Mode::None | Mode::Host) {
            return Err(Error::config(
                "ipam",
                format!("not used in mode {}", mode.name()),
            ));
        }
        req.args.check_known(&["MAC"])?;
        Ok(HostConf {
            mode,
            ipam_type,
            dns: ifconf::dns(&req.conf)?,
        })
    }
}

fn device_conf(req: &Request, raw: &Raw) -> Result<DeviceConf, Error> {
    let given: Vec<&str> = [
        ("device", raw.device.is_some()),
        ("hwaddr", raw.hwaddr.is_some()),
        ("kernelpath", raw.kernelpath.is_some()),
        ("pciBusID", raw.pci_bus_id.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() > 1 {
        return Err(Error::config(
            given[1],
            format!("give only one of {}", given.join(", ")),
        ));
    }
    let selector = if let Some(name) = &raw.device {
        check_ifname("device", name)?;
        DeviceSelector::Name(name.clone())
    } else if let Some(mac) = &raw.hwaddr {
        DeviceSelector::Mac(ifconf::parse_mac("hwaddr", mac)?)
    } else if let Some(path) = &raw.kernelpath {
        if !path.starts_with("/sys/devices/") || path.contains("/../") || path.ends_with("/..") {
            return Err(Error::config(
                "kernelpath",
                format!("{path:?} must be an absolute path under /sys/devices/"),
            ));
        }
        DeviceSelector::KernelPath(PathBuf::from(path))
    } else if let Some(id) = runtime_device_id(req)? {
        // As in host-device, the runtime's deviceID wins over pciBusID.
        id
    } else if let Some(pci) = &raw.pci_bus_id {
        check_bus_id("pciBusID", pci)?;
        DeviceSelector::Pci(pci.clone())
    } else {
        return Err(Error::config(
            "device",
            "missing; device mode needs one of device, hwaddr, kernelpath, pciBusID or runtimeConfig.deviceID",
        ));
    };
    Ok(DeviceConf {
        selector,
        allow_default_route: raw.allow_default_route,
    })
}

/// A bus address is one path component under /sys/bus/*/devices.
fn check_bus_id(field: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return Err(Error::config(
            field,
            format!("{id:?} is not a device address"),
        ));
    }
    Ok(())
}

/// `runtimeConfig.deviceID` (the `deviceID` capability): a PCI address, or
/// an auxiliary-bus device, whichever exists.
fn runtime_device_id(req: &Request) -> Result<Option<DeviceSelector>, Error> {
    let Some(v) = req.conf.runtime("deviceID") else {
        return Ok(None);
    };
    let field = "runtimeConfig.deviceID";
    let id = v
        .as_str()
        .ok_or_else(|| Error::config(field, "expected a string"))?;
    check_bus_id(field, id)?;
    if std::path::Path::new("/sys/bus/pci/devices")
        .join(id)
        .exists()
    {
        Ok(Some(DeviceSelector::Pci(id.to_string())))
    } else if std::path::Path::new("/sys/bus/auxiliary/devices")
        .join(id)
        .exists()
    {
        Ok(Some(DeviceSelector::Auxiliary(id.to_string())))
    } else {
        Err(Error::config(
            field,
            format!("no PCI or auxiliary device {id:?}"),
        ))
    }
}

fn macvlan_conf(
    req: &Request,
    raw: &Raw,
    from_mode: Option<MacvlanMode>,
) -> Result<MacvlanConf, Error> {
    let given = match raw.macvlan_mode.as_deref() {
        None => None,
        Some(s) => macvlan_mode("macvlanMode", s).transpose()?,
    };
    let mode = match (from_mode, given) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(
                "macvlanMode",
                "contradicts the macvlan mode given in \"mode\"",
            ))
        }
        (a, b) => a.or(b).unwrap_or(MacvlanMode::Bridge),
    };
    if let Some(m) = &raw.master {
        check_ifname("master", m)?;
    }
    let mtu = match raw.mtu {
        None | Some(0) => None,
        Some(m) if (68..=65535).contains(&m) => Some(m as u32),
        Some(m) => return Err(Error::config("mtu", format!("{m} is outside 68..65535"))),
    };
    let bc_queue_len = match raw.bcqueuelen {
        None => None,
        Some(n) if (0..=u32::MAX as i64).contains(&n) => Some(n as u32),
        Some(n) => return Err(Error::config("bcqueuelen", format!("{n} is out of range"))),
    };
    // As in the reference macvlan: the config's mac, then CNI_ARGS MAC,
    // args.cni.mac and runtimeConfig.mac, each overriding the one before.
    let mac = match ifconf::container_mac(req)? {
        Some(m) => Some(m),
        None => raw
            .mac
            .as_deref()
            .map(|m| ifconf::parse_mac("mac", m))
            .transpose()?,
    };
    Ok(MacvlanConf {
        master: raw.master.clone(),
        mode,
        mtu,
        mac,
        link_in_container: raw.link_in_container,
        bc_queue_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::{CniArgs, Command, NetConf, Version};
    use serde_json::json;

    fn parse(extra: serde_json::Value, cni_args: &str) -> Result<HostConf, Error> {
        let mut conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "berth-host"});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let stdin = serde_json::to_vec(&conf).unwrap();
        let req = Request {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            cni_path: vec![],
            args: CniArgs::parse(cni_args).unwrap(),
            raw_args: cni_args.into(),
            conf: NetConf::parse(&stdin).unwrap(),
            stdin,
            version: Version::parse("1.1.0").unwrap(),
        };
        HostConf::parse(&req)
    }

    fn err(extra: serde_json::Value) -> Error {
        parse(extra, "").expect_err("config must be refused")
    }

    #[test]
    fn modes_and_their_keys() {
        assert_eq!(parse(json!({"mode": "none"}), "").unwrap().mode, Mode::None);
        assert_eq!(parse(json!({"mode": "host"}), "").unwrap().mode, Mode::Host);
        let d = parse(
            json!({"mode": "device", "hwaddr": "02:00:00:00:00:0a", "allowDefaultRoute": true}),
            "",
        )
        .unwrap();
        assert_eq!(
            d.mode,
            Mode::Device(DeviceConf {
                selector: DeviceSelector::Mac([2, 0, 0, 0, 0, 10]),
                allow_default_route: true
            })
        );
        let Mode::Macvlan(m) = parse(
            json!({"mode": "macvlan", "master": "eth1", "mtu": 1400}),
            "",
        )
        .unwrap()
        .mode
        else {
            panic!("not macvlan")
        };
        assert_eq!(
            (m.master.as_deref(), m.mode, m.mtu),
            (Some("eth1"), MacvlanMode::Bridge, Some(1400))
        );
    }

    #[test]
    fn a_macvlan_mode_in_mode_means_macvlan() {
        let Mode::Macvlan(m) = parse(json!({"mode": "private"}), "").unwrap().mode else {
            panic!("not macvlan")
        };
        assert_eq!(m.mode, MacvlanMode::Private);
        let e = err(json!({"mode": "private", "macvlanMode": "vepa"}));
        assert!(e.msg.starts_with("macvlanMode:"), "{}", e.msg);
    }

    #[test]
    fn macvlan_mac_priority_follows_the_reference() {
        let mac = |extra, args| match parse(extra, args).unwrap().mode {
            Mode::Macvlan(m) => m.mac,
            _ => panic!("not macvlan"),
        };
        let conf_mac = json!({"mode": "macvlan", "mac": "02:00:00:00:00:01"});
        assert_eq!(mac(conf_mac.clone(), ""), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            mac(conf_mac, "MAC=02:00:00:00:00:02"),
            Some([2, 0, 0, 0, 0, 2])
        );
        let with_runtime = json!({"mode": "macvlan", "mac": "02:00:00:00:00:01", "runtimeConfig": {"mac": "02:00:00:00:00:03"}});
        assert_eq!(
            mac(with_runtime, "MAC=02:00:00:00:00:02"),
            Some([2, 0, 0, 0, 0, 3])
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        let cases = [
            (json!({}), "mode:"),
            (json!({"mode": "bridge0"}), "mode:"),
            (json!({"mode": "device"}), "device:"),
            (
                json!({"mode": "device", "device": "eth0", "kernelpath": "/sys/devices/x"}),
                "kernelpath:",
            ),
            (
                json!({"mode": "device", "device": "sixteen-bytes-xx"}),
                "device:",
            ),
            (json!({"mode": "device", "device": "a/b"}), "device:"),
            (
                json!({"mode": "device", "kernelpath": "/sys/devices/../../etc"}),
                "kernelpath:",
            ),
            (json!({"mode": "device", "pciBusID": "../x"}), "pciBusID:"),
            (
                json!({"mode": "device", "hwaddr": "01:00:00:00:00:01"}),
                "hwaddr:",
            ),
            (json!({"mode": "macvlan", "mtu": 10}), "mtu:"),
            (
                json!({"mode": "macvlan", "macvlanMode": "loud"}),
                "macvlanMode:",
            ),
            (json!({"mode": "macvlan", "device": "eth1"}), "device:"),
            (json!({"mode": "host", "master": "eth1"}), "master:"),
            (
                json!({"mode": "none", "ipam": {"type": "berth-ipam"}}),
                "ipam:",
            ),
            (json!({"mode": "macvlan", "ipam": {}}), "ipam.type:"),
        ];
        for (extra, field) in cases {
            let e = err(extra.clone());
            assert_eq!(e.code, cni::codes::INVALID_CONFIG, "{extra}");
            assert!(e.msg.starts_with(field), "{extra}: {}", e.msg);
        }
    }
}
