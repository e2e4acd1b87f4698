//! The network configuration a plugin receives on stdin: the keys every
//! plugin shares. Plugin-specific keys are read from [`NetConf::raw`] by
//! each plugin into its own struct.

use crate::error::{codes, Error};
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
        let raw: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::decode(format!("network config on stdin is not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| Error::decode("network config on stdin is not a JSON object"))?;
        let str_field = |key: &str| -> Result<String, Error> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
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
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(Vec::<Attachment>::deserialize(v).map_err(|e| {
                Error::new(codes::DECODE, format!("cni.dev/valid-attachments: {e}"))
            })?),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            runtime_config: obj.get("runtimeConfig").cloned().unwrap_or(Value::Null),
            args: obj.get("args").cloned().unwrap_or(Value::Null),
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments,
            raw,
        })
    }

    /// `args.cni.<key>`, if present.
    pub fn args_cni(&self, key: &str) -> Option<&Value> {
        self.args.get("cni").and_then(|c| c.get(key))
    }

    /// `runtimeConfig.<key>`, if present.
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.get(key).filter(|v| !v.is_null())
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
        other => Err(serde::de::Error::custom(format!("expected a boolean, got {other}"))),
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
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, 7);
        assert_eq!(NetConf::parse(br#"{"name":"bad name!"}"#).unwrap_err().code, 7);
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
}
