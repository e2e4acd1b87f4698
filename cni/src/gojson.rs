//! JSON read the way Go's `encoding/json` reads it into structs.
//!
//! Every runtime that calls a CNI plugin is a Go program, and so are the
//! reference plugins whose keys berth takes. When Go decodes an object into
//! a struct, it matches each key to a field case-insensitively, preferring
//! an exact match, and a `null` has no effect on a field. containerd relies
//! on that: go-cni fills capability arguments from structs without JSON
//! tags, so `runtimeConfig.portMappings` arrives as
//! `[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]`,
//! which the reference portmap reads as `hostPort` and so on.
//!
//! Two ways in, used by every plugin instead of serde_json's:
//! - [`from_value`] deserializes a serde struct with Go's field matching;
//! - [`GoObject::go_get`] looks up one key of an object the same way, for
//!   code that walks a [`Value`] by hand.
//!
//! Keys of maps (as opposed to structs) stay exact, as in Go.
//!
//! Where an object holds several spellings of one field, the exact one
//! wins; among the others, the last in key order (Go takes the last in
//! document order; serde_json keeps keys sorted, and runtimes never send
//! two spellings, so the difference is academic).

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserializer;
use serde_json::{Map, Value};

/// Go's key folding: `bytes.EqualFold`, i.e. Unicode simple case folding.
fn fold_eq(a: &str, b: &str) -> bool {
    a.len() <= b.len() * 4
        && b.len() <= a.len() * 4
        && a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// Case-insensitive lookup of one key, as Go matches a struct field.
pub trait GoObject {
    /// The value for `key`: the exact key if it is there and not null,
    /// else a key that differs only in case. `null` counts as absent.
    fn go_get(&self, key: &str) -> Option<&Value>;
}

impl GoObject for Map<String, Value> {
    fn go_get(&self, key: &str) -> Option<&Value> {
        if let Some(v) = self.get(key).filter(|v| !v.is_null()) {
            return Some(v);
        }
        self.iter()
            .rev()
            .find(|(k, v)| !v.is_null() && fold_eq(k, key))
            .map(|(_, v)| v)
    }
}

impl GoObject for Value {
    fn go_get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.go_get(key))
    }
}

/// Deserializes `v` into `T` with Go's field matching, at every depth.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, GoError> {
    T::deserialize(GoValue(v.clone()))
}

/// A value of the wrong shape, with the path of the key at fault
/// (`portMappings[0].hostPort`), in the struct's own spelling of each key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoError {
    path: String,
    msg: String,
}

impl GoError {
    /// Where the fault is: empty when it is the value as a whole.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    fn under_key(mut self, key: &str) -> Self {
        self.path = match self.path.as_str() {
            "" => key.to_string(),
            p if p.starts_with('[') => format!("{key}{p}"),
            p => format!("{key}.{p}"),
        };
        self
    }

    fn under_index(mut self, i: usize) -> Self {
        self.path = match self.path.as_str() {
            "" => format!("[{i}]"),
            p if p.starts_with('[') => format!("[{i}]{p}"),
            p => format!("[{i}].{p}"),
        };
        self
    }
}

impl std::fmt::Display for GoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path.as_str() {
            "" => f.write_str(&self.msg),
            p => write!(f, "{p}: {}", self.msg),
        }
    }
}

impl std::error::Error for GoError {}

impl de::Error for GoError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        GoError {
            path: String::new(),
            msg: msg.to_string(),
        }
    }
}

fn from_json(e: serde_json::Error) -> GoError {
    de::Error::custom(e)
}

/// The object's keys renamed to the struct's field names where they match
/// one case-insensitively, nulls dropped (Go leaves the field as it was).
/// Keys that match no field are kept, for serde to ignore or refuse.
fn fields_of(obj: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
    let (exact, other): (Vec<_>, Vec<_>) = obj
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .partition(|(k, _)| fields.contains(&k.as_str()));
    let mut out: Map<String, Value> = exact.into_iter().collect();
    let exact_keys: Vec<String> = out.keys().cloned().collect();
    for (k, v) in other {
        match fields.iter().find(|f| fold_eq(f, &k)) {
            // The field's exact key was there: it wins.
            Some(f) if exact_keys.iter().any(|e| e == f) => {}
            // Otherwise the last spelling in key order.
            Some(f) => {
                out.insert((*f).to_string(), v);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    out
}

/// A [`Value`] that deserializes structs the way Go does.
struct GoValue(Value);

struct GoSeq {
    items: std::vec::IntoIter<Value>,
    next: usize,
}

struct GoMap {
    entries: serde_json::map::IntoIter,
    /// The value of the key just read, and the key, for error paths.
    value: Option<(String, Value)>,
}

impl<'de> SeqAccess<'de> for GoSeq {
    type Error = GoError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let Some(v) = self.items.next() else {
            return Ok(None);
        };
        let i = self.next;
        self.next += 1;
        seed.deserialize(GoValue(v))
            .map(Some)
            .map_err(|e| e.under_index(i))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

impl<'de> MapAccess<'de> for GoMap {
    type Error = GoError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(k.as_str().into_deserializer()).map(Some)?;
        self.value = Some((k, v));
        Ok(key)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let (k, v) = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value asked for before its key"))?;
        seed.deserialize(GoValue(v)).map_err(|e| e.under_key(&k))
    }
}

fn visit_map<'de, V: Visitor<'de>>(m: Map<String, Value>, visitor: V) -> Result<V::Value, GoError> {
    visitor.visit_map(GoMap {
        entries: m.into_iter(),
        value: None,
    })
}

fn visit_seq<'de, V: Visitor<'de>>(a: Vec<Value>, visitor: V) -> Result<V::Value, GoError> {
    visitor.visit_seq(GoSeq {
        items: a.into_iter(),
        next: 0,
    })
}

/// Scalars and enums: serde_json's own rules (ranges, types, messages).
macro_rules! as_serde_json {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(visitor).map_err(from_json)
        }
    )*};
}

impl<'de> Deserializer<'de> for GoValue {
    type Error = GoError;

    as_serde_json! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier
        deserialize_ignored_any
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => visit_seq(a, visitor),
            Value::Object(m) => visit_map(m, visitor),
            other => other.deserialize_any(visitor).map_err(from_json),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(GoValue(v)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_unit_struct(name, visitor)
            .map_err(from_json)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => visit_seq(a, visitor),
            other => other.deserialize_seq(visitor).map_err(from_json),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visit_map(m, visitor),
            other => other.deserialize_map(visitor).map_err(from_json),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visit_map(fields_of(m, fields), visitor),
            other => other
                .deserialize_struct(name, fields, visitor)
                .map_err(from_json),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_enum(name, variants, visitor)
            .map_err(from_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        host_port: i64,
        container_port: i64,
        #[serde(default)]
        protocol: String,
        #[serde(default, rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Runtime {
        #[serde(default)]
        port_mappings: Vec<Mapping>,
        #[serde(default)]
        mac: Option<String>,
    }

    #[test]
    fn struct_fields_match_case_insensitively_at_every_depth() {
        // containerd's go-cni: PortMapping has no JSON tags.
        let v = json!({"PortMappings": [{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]});
        let r: Runtime = from_value(&v).unwrap();
        assert_eq!(
            r.port_mappings,
            vec![Mapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new()
            }]
        );
        // Any case at all, as bytes.EqualFold.
        let v = json!({"portmappings": [{"HOSTPORT":1,"containerport":2,"hostip":"::1"}]});
        let r: Runtime = from_value(&v).unwrap();
        assert_eq!(r.port_mappings[0].host_port, 1);
        assert_eq!(r.port_mappings[0].host_ip, "::1");
    }

    #[test]
    fn exact_case_wins_whatever_the_order() {
        let m: Mapping = from_value(&json!({"HostPort":1,"hostPort":2,"containerPort":3})).unwrap();
        assert_eq!(m.host_port, 2);
        let m: Mapping = from_value(&json!({"hostPort":2,"hostport":1,"containerPort":3})).unwrap();
        assert_eq!(m.host_port, 2);
        let v = json!({"hostPort":2,"HOSTPORT":1});
        assert_eq!(v.go_get("hostPort"), Some(&json!(2)));
        // No exact key: one of the spellings, never nothing.
        assert!(v.go_get("HostPort").is_some());
    }

    #[test]
    fn nulls_are_no_ops() {
        // containerd sends "io.kubernetes.cri.pod-annotations": null and a
        // null portMappings for a pod without ports.
        let v =
            json!({"portMappings": null, "mac": null, "io.kubernetes.cri.pod-annotations": null});
        let r: Runtime = from_value(&v).unwrap();
        assert_eq!(
            r,
            Runtime {
                port_mappings: vec![],
                mac: None
            }
        );
        assert_eq!(v.go_get("portMappings"), None);
        // A null exact key does not hide a spelling that has a value.
        let v = json!({"mac": null, "MAC": "02:00:00:00:00:01"});
        assert_eq!(v.go_get("mac"), Some(&json!("02:00:00:00:00:01")));
        let r: Runtime = from_value(&v).unwrap();
        assert_eq!(r.mac.as_deref(), Some("02:00:00:00:00:01"));
    }

    #[test]
    fn map_keys_stay_exact_and_types_are_checked() {
        let m: std::collections::BTreeMap<String, i64> = from_value(&json!({"A":1,"a":2})).unwrap();
        assert_eq!(m.len(), 2);
        let e = from_value::<Mapping>(&json!({"HostPort":"8080","ContainerPort":80})).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        assert_eq!(e.path(), "hostPort");
        assert!(from_value::<Mapping>(&json!({"ContainerPort":80}))
            .unwrap_err()
            .to_string()
            .contains("hostPort"));
        // The path in the struct's spelling, whatever the runtime's was.
        let e = from_value::<Runtime>(
            &json!({"PortMappings":[{"HostPort":1,"ContainerPort":2},{"HostPort":true}]}),
        )
        .unwrap_err();
        assert_eq!(e.path(), "portMappings[1].hostPort");
        assert_eq!(
            e.to_string(),
            "portMappings[1].hostPort: invalid type: boolean `true`, expected i64"
        );
    }

    #[test]
    fn lookup_on_non_objects_finds_nothing() {
        assert_eq!(json!([1]).go_get("a"), None);
        assert_eq!(
            json!({"ValidAttachments":1}).go_get("validAttachments"),
            Some(&json!(1))
        );
        assert_eq!(json!({"ab":1}).go_get("a"), None);
    }
}
