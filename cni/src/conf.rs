//! The network configuration a plugin receives on stdin: the keys every
//! plugin shares. Plugin-specific keys are read from [`NetConf::raw`] by
//! each plugin into its own struct.

use crate::error::{codes, Error};
use crate::gojson::{self, GoObject};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One container attachment, as listed by GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    /// As given; "" when absent (which the spec reads as 0.1.0).
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// `runtimeConfig`, an object or Null.
    pub runtime_config: Value,
    /// `args`, an object or Null.
    pub args: Value,
    pub prev_result: Option<Value>,
    /// GC only: `cni.dev/valid-attachments`, or the legacy
    /// `cni.dev/attachments` when only that is given.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole object, for plugin-specific keys (`ipam`, `bridge`, ...).
    pub raw: Value,
}

impl NetConf {
    /// Parses stdin. Not a JSON object → 6; a missing or invalid `name` → 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, Error> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            Error::decode(format!("network config on stdin is not valid JSON: {e}"))
        })?;
        let obj = raw
            .as_object()
            .ok_or_else(|| Error::decode("network config on stdin is not a JSON object"))?;
        let str_field = |key: &str| -> Result<String, Error> {
            match obj.go_get(key) {
                None => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::new(
                    codes::DECODE,
                    format!("{key}: expected a string, got {other}"),
                )),
            }
        };
        let cni_version = str_field("cniVersion")?;
        let name = str_field("name")?;
        validate_network_name(&name)?;
        let plugin_type = str_field("type")?;
        let valid_attachments = match obj
            .go_get("cni.dev/valid-attachments")
            .or_else(|| obj.go_get("cni.dev/attachments"))
        {
            None => None,
            Some(v) => Some(gojson::from_value::<Vec<Attachment>>(v).map_err(|e| {
                Error::new(codes::DECODE, format!("cni.dev/valid-attachments: {e}"))
            })?),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            runtime_config: obj.go_get("runtimeConfig").cloned().unwrap_or(Value::Null),
            args: obj.go_get("args").cloned().unwrap_or(Value::Null),
            prev_result: obj.go_get("prevResult").cloned(),
            valid_attachments,
            raw,
        })
    }

    /// `args.cni.<key>`, if present and not null (keys matched as Go does).
    pub fn args_cni(&self, key: &str) -> Option<&Value> {
        self.args.go_get("cni").and_then(|c| c.go_get(key))
    }

    /// `runtimeConfig.<key>`, if present and not null (keys matched as Go
    /// does: containerd sends some capabilities with capitalised keys).
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.go_get(key)
    }

    /// A key of the plugin's own config, if present and not null (keys
    /// matched as Go does).
    pub fn key(&self, key: &str) -> Option<&Value> {
        self.raw.go_get(key)
    }
}

/// libcni's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_network_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::config("name", "missing network name"));
    }
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(Error::config(
            "name",
            format!("invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
        ));
    }
    Ok(())
}

/// Deserializes a boolean that runtimes sometimes send as "true"/"false".
pub fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::Null => Ok(false),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") || s.is_empty() => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

/// Same as [`flexible_bool`] for `Option<bool>` fields.
pub fn flexible_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => flexible_bool(v).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_keys() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"web","type":"berth-bridge",
                 "runtimeConfig":{"mac":"02:00:00:00:00:01"},"args":{"cni":{"ips":["10.0.0.5"]}},
                 "prevResult":{"cniVersion":"1.1.0"},
                 "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.name, "web");
        assert_eq!(c.plugin_type, "berth-bridge");
        assert_eq!(c.runtime("mac").unwrap(), "02:00:00:00:00:01");
        assert_eq!(c.args_cni("ips").unwrap()[0], "10.0.0.5");
        assert!(c.prev_result.is_some());
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn errors_have_codes() {
        assert_eq!(NetConf::parse(b"{bad").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"name":"bad name!"}"#).unwrap_err().code,
            7
        );
        assert!(NetConf::parse(br#"{"name":"a.b_c-1"}"#).is_ok());
    }

    #[test]
    fn flexible_bools() {
        #[derive(Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "flexible_bool")]
            a: bool,
        }
        let t: T = serde_json::from_str(r#"{"a":"true"}"#).unwrap();
        assert!(t.a);
        let t: T = serde_json::from_str(r#"{"a":false}"#).unwrap();
        assert!(!t.a);
        assert!(serde_json::from_str::<T>(r#"{"a":3}"#).is_err());
    }

    /// What containerd 1.6's CRI sends a chained berth-portmap (go-cni:
    /// capability structs without JSON tags; pod annotations null when the
    /// pod has none), and its CNI_ARGS.
    const CONTAINERD_PORTMAP: &str = r#"{"capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":true},
        "cniVersion":"1.0.0","name":"k8s-pod-network","type":"berth-portmap",
        "runtimeConfig":{"io.kubernetes.cri.pod-annotations":null,
            "portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]},
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/var/run/netns/cni-1"}],
            "ips":[{"interface":0,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],"dns":{}}}"#;

    #[test]
    fn containerd_shapes_are_read_as_go_reads_them() {
        let c = NetConf::parse(CONTAINERD_PORTMAP.as_bytes()).unwrap();
        assert_eq!(c.runtime("io.kubernetes.cri.pod-annotations"), None);
        let m = &c.runtime("portMappings").unwrap()[0];
        assert_eq!(m.go_get("hostPort").unwrap(), 8080);
        assert_eq!(m.go_get("containerPort").unwrap(), 80);
        assert_eq!(m.go_get("protocol").unwrap(), "tcp");
        assert_eq!(m.go_get("hostIP").unwrap(), "");
        assert!(c.prev_result.is_some());
        let args = crate::CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=5f1c",
        )
        .unwrap();
        assert!(args.check_known(&["IP", "MAC"]).is_ok());
        assert_eq!(args.get("K8S_POD_NAME"), Some("web-0"));
    }

    #[test]
    fn common_keys_match_case_insensitively_exact_first() {
        let c = NetConf::parse(
            br#"{"CNIVersion":"1.1.0","Name":"web","name":"exact","TYPE":"berth-bridge",
                 "RuntimeConfig":{"MAC":"02:00:00:00:00:01"},"Args":{"CNI":{"IPs":["10.0.0.5"]}},
                 "PrevResult":{"cniVersion":"1.1.0"},
                 "cni.dev/Valid-Attachments":[{"ContainerID":"c1","IfName":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        assert_eq!(c.name, "exact");
        assert_eq!(c.plugin_type, "berth-bridge");
        assert_eq!(c.runtime("mac").unwrap(), "02:00:00:00:00:01");
        assert_eq!(c.args_cni("ips").unwrap()[0], "10.0.0.5");
        assert!(c.prev_result.is_some());
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn nulls_are_absent() {
        let c = NetConf::parse(br#"{"cniVersion":null,"name":"n","type":null,"runtimeConfig":null,"args":null,"prevResult":null,"cni.dev/valid-attachments":null}"#).unwrap();
        assert_eq!(c.cni_version, "");
        assert!(
            c.runtime_config.is_null()
                && c.args.is_null()
                && c.prev_result.is_none()
                && c.valid_attachments.is_none()
        );
    }
}
