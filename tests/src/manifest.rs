//! `deploy/kubernetes/berth.yaml` read with a YAML parser into typed
//! structs: the ConfigMaps' data and the DaemonSet's pod template (host
//! network, init containers and containers with their image, command,
//! args, env, ports, volume mounts, security context and probes, the
//! volumes: hostPath, configMap, secret).
//!
//! Only what the tests act on is modelled. The objects a test runs (pod
//! spec, containers, volumes, mounts, env, probes, security context) refuse
//! fields they do not know (`deny_unknown_fields`): a field added to the
//! manifest that the harness would silently ignore fails the parse,
//! naming it, instead of being run wrongly. Fields the harness accepts
//! without acting on them are listed as such (`tolerations`,
//! `nodeSelector`, `priorityClassName`, `imagePullPolicy`, probes'
//! timings).
//!
//! Modes (`defaultMode`) are read as Kubernetes reads YAML (1.1): `0400`
//! is octal. The YAML 1.2 parser here keeps a leading-zero scalar as a
//! string, which [`Mode`] reads as octal; `0o400` and decimal numbers are
//! numbers already.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// The manifest's path in the workspace.
pub fn berth_yaml() -> PathBuf {
    crate::workspace_root().join("deploy/kubernetes/berth.yaml")
}

/// Every document of a manifest file.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
    /// (kind, name) of the other documents (not modelled).
    pub others: Vec<(String, String)>,
}

impl Manifest {
    /// Reads `deploy/kubernetes/berth.yaml`; panics naming what is wrong.
    pub fn read() -> Manifest {
        Self::read_path(&berth_yaml())
    }

    /// Reads a manifest file; panics naming what is wrong.
    pub fn read_path(path: &Path) -> Manifest {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut m = Self::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        m.path = path.to_path_buf();
        m
    }

    /// Parses every document of `text` (`---` separated).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let mut m = Manifest {
            path: PathBuf::new(),
            config_maps: Vec::new(),
            daemon_sets: Vec::new(),
            others: Vec::new(),
        };
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v =
                serde_yaml_ng::Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))?;
            if v.is_null() {
                continue;
            }
            let kind = v
                .get("kind")
                .and_then(|k| k.as_str())
                .ok_or_else(|| format!("document {i} has no kind"))?
                .to_string();
            let name = v
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            let at = |e: serde_yaml_ng::Error| format!("{kind} {name:?}: {e}");
            match kind.as_str() {
                "ConfigMap" => m
                    .config_maps
                    .push(serde_yaml_ng::from_value(v).map_err(at)?),
                "DaemonSet" => m
                    .daemon_sets
                    .push(serde_yaml_ng::from_value(v).map_err(at)?),
                _ => m.others.push((kind, name)),
            }
        }
        Ok(m)
    }

    /// The ConfigMap `name`; panics if there is none.
    pub fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name == name)
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name:?}", self.path.display()))
    }

    /// The only DaemonSet; panics unless there is exactly one.
    pub fn daemon_set(&self) -> &DaemonSet {
        match self.daemon_sets.as_slice() {
            [ds] => ds,
            other => panic!(
                "{}: {} DaemonSets, the harness runs exactly one",
                self.path.display(),
                other.len()
            ),
        }
    }

    /// The DaemonSet's pod spec.
    pub fn pod(&self) -> &PodSpec {
        &self.daemon_set().spec.template.spec
    }
}

/// `metadata` of an object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSet {
    pub metadata: ObjectMeta,
    pub spec: DaemonSetSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetSpec {
    pub template: PodTemplate,
    #[serde(default)]
    pub update_strategy: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub selector: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

/// A pod spec: the fields the harness runs, and a few it accepts without
/// acting on them (scheduling).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    // Scheduling: one node of each kind here, nothing to schedule.
    #[serde(default)]
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub tolerations: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account_name: Option<String>,
}

impl PodSpec {
    /// The volume `name`; panics if there is none.
    pub fn volume(&self, name: &str) -> &Volume {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("the pod spec has no volume {name:?}"))
    }

    /// The container (init or main) `name`; panics if there is none.
    pub fn container(&self, name: &str) -> &Container {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("the pod spec has no container {name:?}"))
    }

    /// Every hostPath volume's path, in order, once each.
    pub fn host_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in &self.volumes {
            if let Some(h) = &v.host_path {
                if !out.contains(&h.path) {
                    out.push(h.path.clone());
                }
            }
        }
        out
    }

    /// Every image the pod's containers run, once each.
    pub fn images(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.init_containers.iter().chain(&self.containers) {
            if !out.contains(&c.image) {
                out.push(c.image.clone());
            }
        }
        out
    }

    /// terminationGracePeriodSeconds, 30 (Kubernetes' default) if unset.
    pub fn grace_period(&self) -> i64 {
        self.termination_grace_period_seconds.unwrap_or(30)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Replaces the image's ENTRYPOINT when given.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    #[serde(default)]
    pub resources: Option<Resources>,
}

impl Container {
    /// The mount at `path` in the container, if any.
    pub fn mount_at(&self, path: &str) -> Option<&VolumeMount> {
        self.volume_mounts.iter().find(|m| m.mount_path == path)
    }

    /// The mount of volume `name`, if any.
    pub fn mount_of(&self, name: &str) -> Option<&VolumeMount> {
        self.volume_mounts.iter().find(|m| m.name == name)
    }

    /// A port given by number or by the name of one of the ports.
    pub fn port(&self, p: &IntOrString) -> Result<u16, String> {
        match p {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| format!("container {}: port {n}", self.name))
            }
            IntOrString::Str(s) => {
                if let Ok(n) = s.parse::<u16>() {
                    return Ok(n);
                }
                self.ports
                    .iter()
                    .find(|q| q.name.as_deref() == Some(s))
                    .map(|q| q.container_port)
                    .ok_or_else(|| format!("container {}: no port named {s:?}", self.name))
            }
        }
    }

    pub fn privileged(&self) -> bool {
        self.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<EnvVarSource>,
}

/// `valueFrom`: the harness knows the downward API's field references.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    pub field_ref: FieldRef,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRef {
    pub field_path: String,
    #[serde(default)]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub sub_path: Option<String>,
    #[serde(default)]
    pub mount_propagation: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    #[serde(default)]
    pub privileged: Option<bool>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub run_as_user: Option<i64>,
    #[serde(default)]
    pub run_as_group: Option<i64>,
    #[serde(default)]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

/// A probe: the harness runs `httpGet` ones; the timings are kept for the
/// tests to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub initial_delay_seconds: Option<i64>,
    #[serde(default)]
    pub period_seconds: Option<i64>,
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub success_threshold: Option<i64>,
    #[serde(default)]
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    #[serde(default)]
    pub path: Option<String>,
    pub port: IntOrString,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
}

impl HttpGet {
    /// The path, `/` if unset.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

/// `resources`: quantities as written (`10m`, `64Mi`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
}

impl Resources {
    /// A CPU quantity in millicores.
    pub fn cpu_milli(q: Option<&Quantity>) -> Option<i64> {
        q.map(|q| q.milli().unwrap_or_else(|e| panic!("{e}")))
    }

    /// A memory quantity in bytes.
    pub fn bytes(q: Option<&Quantity>) -> Option<i64> {
        q.map(|q| q.value().unwrap_or_else(|e| panic!("{e}")))
    }
}

/// A Kubernetes quantity (`10m`, `64Mi`, `1`, `0.5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml_ng::Value::deserialize(d)?;
        match v {
            serde_yaml_ng::Value::String(s) => Ok(Quantity(s)),
            serde_yaml_ng::Value::Number(n) => Ok(Quantity(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "{other:?} is not a quantity"
            ))),
        }
    }
}

impl Quantity {
    /// The quantity in thousandths (`10m` -> 10, `2` -> 2000, `64Mi` ->
    /// 64 * 2^20 * 1000).
    pub fn milli(&self) -> Result<i64, String> {
        let s = self.0.trim();
        let bad = || format!("{s:?} is not a quantity");
        let (num, mult_milli): (&str, f64) = if let Some(n) = s.strip_suffix('m') {
            (n, 1.0)
        } else {
            let suffixes: [(&str, f64); 10] = [
                ("Ki", 1024.0),
                ("Mi", 1024.0 * 1024.0),
                ("Gi", 1024.0 * 1024.0 * 1024.0),
                ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
                ("k", 1e3),
                ("M", 1e6),
                ("G", 1e9),
                ("T", 1e12),
                ("P", 1e15),
                ("E", 1e18),
            ];
            suffixes
                .iter()
                .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, m * 1000.0)))
                .unwrap_or((s, 1000.0))
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        if !n.is_finite() || n < 0.0 {
            return Err(bad());
        }
        Ok((n * mult_milli).ceil() as i64)
    }

    /// The quantity, rounded up to a whole number.
    pub fn value(&self) -> Result<i64, String> {
        Ok((self.milli()? + 999) / 1000)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub host_path: Option<HostPathSource>,
    #[serde(default)]
    pub config_map: Option<ConfigMapSource>,
    #[serde(default)]
    pub secret: Option<SecretSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathSource {
    pub path: String,
    /// `DirectoryOrCreate`, `Directory`, `FileOrCreate`, `File`, ...; ""
    /// or absent: no check.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapSource {
    pub name: String,
    #[serde(default)]
    pub default_mode: Option<Mode>,
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    #[serde(default)]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    pub secret_name: String,
    #[serde(default)]
    pub default_mode: Option<Mode>,
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    #[serde(default)]
    pub optional: Option<bool>,
}

/// Kubernetes' default file mode of configMap and secret volumes.
pub const DEFAULT_VOLUME_MODE: u32 = 0o644;

/// A file mode as Kubernetes reads it from YAML: a number, or a
/// leading-zero octal literal (`0400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml_ng::Value::deserialize(d)?;
        let mode = match &v {
            serde_yaml_ng::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_yaml_ng::Value::String(s) => parse_mode(s),
            _ => None,
        };
        match mode {
            Some(m) if m <= 0o777 => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "{v:?} is not a file mode (0..0777)"
            ))),
        }
    }
}

/// `0400` (YAML 1.1 octal), `0o400`, or decimal.
fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(o) = s.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: sa
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  a.conflist: |
    {"x": 1}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ds
spec:
  template:
    metadata:
      labels: {app: x}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 10
      initContainers:
        - name: init
          image: img:1
          args: ["install", "--x"]
          volumeMounts:
            - {name: cfg, mountPath: /etc/cfg, readOnly: true}
      containers:
        - name: main
          image: img:1
          args: ["run"]
          env:
            - {name: A, value: b}
            - name: NODE
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
          ports: [{name: metrics, containerPort: 9624}]
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
          securityContext:
            capabilities: {add: [NET_ADMIN]}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {memory: 64Mi}
      volumes:
        - {name: h, hostPath: {path: /run/x, type: DirectoryOrCreate}}
        - {name: cfg, configMap: {name: cfg}}
        - {name: s, secret: {secretName: s, defaultMode: 0400}}
        - {name: t, secret: {secretName: t, defaultMode: 420}}
"#;

    #[test]
    fn parses_documents() {
        let m = Manifest::parse(SAMPLE).unwrap();
        assert_eq!(m.others, vec![("ServiceAccount".into(), "sa".into())]);
        assert_eq!(m.config_map("cfg").data["a.conflist"], "{\"x\": 1}\n");
        let pod = m.pod();
        assert!(pod.host_network);
        assert_eq!(pod.grace_period(), 10);
        assert_eq!(pod.init_containers[0].args, vec!["install", "--x"]);
        assert!(pod.init_containers[0].volume_mounts[0].read_only);
        let main = pod.container("main");
        assert_eq!(
            main.env[1]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .field_path,
            "spec.nodeName"
        );
        let probe = main.readiness_probe.as_ref().unwrap().http_get.as_ref();
        assert_eq!(main.port(&probe.unwrap().port), Ok(9624));
        assert!(!main.privileged());
        let r = main.resources.as_ref().unwrap();
        assert_eq!(Resources::cpu_milli(r.requests.get("cpu")), Some(10));
        assert_eq!(Resources::bytes(r.limits.get("memory")), Some(64 << 20));
        assert_eq!(pod.host_paths(), vec!["/run/x".to_string()]);
        assert_eq!(
            pod.volume("s").secret.as_ref().unwrap().default_mode,
            Some(Mode(0o400))
        );
        assert_eq!(
            pod.volume("t").secret.as_ref().unwrap().default_mode,
            Some(Mode(420))
        );
        assert_eq!(pod.images(), vec!["img:1".to_string()]);
    }

    #[test]
    fn refuses_fields_it_would_ignore() {
        let bad = SAMPLE.replace("args: [\"run\"]", "args: [\"run\"]\n          stdin: true");
        let e = Manifest::parse(&bad).unwrap_err();
        assert!(e.contains("unknown field `stdin`"), "{e}");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0400"), Some(0o400));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("420"), Some(420));
        assert_eq!(parse_mode("09"), None);
    }

    #[test]
    fn the_shipped_manifest_parses() {
        let m = Manifest::read();
        let pod = m.pod();
        assert!(!pod.containers.is_empty());
        for v in &pod.volumes {
            assert!(
                v.host_path.is_some() || v.config_map.is_some() || v.secret.is_some(),
                "volume {}: no source the harness knows",
                v.name
            );
        }
    }
}
