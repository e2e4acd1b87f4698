//! `mode=overlay` networks: berth-overlay's library under the engine. A
//! berthd overlay network is one node's share of a multi-host VXLAN
//! network, exactly as the CNI plugin makes it: the same subnet leases in
//! etcd, the same VXLAN device `berth.<vni>`, peers and bridge, so Docker
//! hosts and Kubernetes nodes running berth-overlay can share one network.
//!
//! The engine's `--subnet` (berth's IPAM driver) is the cluster CIDR; the
//! node's subnet comes from its lease, and berth's IPAM hands out the
//! containers' addresses from it (see `Ipam::narrow`). berthd runs the
//! node agent itself (a thread per network, `berth_network::overlay::run_agent` on
//! the network's config written under `<state>/overlay/`), so no separate
//! agent is needed on a Docker host.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// The `-o` options of an overlay network (besides mode, mtu, masquerade
/// and isolation, which every mode has).
pub const OPTIONS: [&str; 8] = [
    "vni",
    "subnetLen",
    "iface",
    "etcd",
    "prefix",
    "node",
    "leaseTTL",
    "name",
];

/// How often an agent re-reads its peers when it cannot watch (a static
/// store, or etcd unreachable); as the berth-overlay agent.
const AGENT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The berth-overlay config object of a network: berthd's `overlay`
/// defaults (from its config file), the network's `-o` options over them,
/// and the engine's pool as the cluster CIDR. The overlay's name in the
/// store (shared by every host of the network) is `name`, by default
/// `vni<vni>`.
pub fn overlay_conf(
    opts: &BTreeMap<String, String>,
    defaults: &Value,
    cluster: &str,
    mtu: Option<u32>,
) -> Result<Value, String> {
    let mut c = match defaults {
        Value::Object(_) => defaults.clone(),
        _ => json!({}),
    };
    c["cniVersion"] = json!("1.1.0");
    c["type"] = json!("berth-overlay");
    c["network"] = json!(cluster);
    let number = |key: &str| -> Result<Option<i64>, String> {
        opts.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("option {key}={v:?}: expected a number"))
            })
            .transpose()
    };
    if let Some(v) = number("vni")? {
        c["vni"] = json!(v);
    }
    if let Some(v) = number("subnetLen")? {
        c["subnetLen"] = json!(v);
    }
    for key in ["iface", "node"] {
        if let Some(v) = opts.get(key) {
            c[key] = json!(v);
        }
    }
    if let Some(m) = mtu {
        c["mtu"] = json!(m);
    }
    if opts.contains_key("etcd") || opts.contains_key("prefix") || opts.contains_key("leaseTTL") {
        let mut etcd = c["store"]["etcd"].clone();
        if !etcd.is_object() {
            etcd = json!({});
        }
        if let Some(eps) = opts.get("etcd") {
            etcd["endpoints"] = json!(eps
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>());
        }
        if let Some(p) = opts.get("prefix") {
            etcd["prefix"] = json!(p);
        }
        if let Some(t) = number("leaseTTL")? {
            etcd["leaseTTL"] = json!(t);
        }
        c["store"] = json!({"etcd": etcd});
    }
    if c.get("store").is_none_or(Value::is_null) {
        return Err("mode=overlay needs the cluster store: -o etcd=http://HOST:2379 (or overlay.store in berthd's config)".into());
    }
    let vni = c["vni"].as_i64().unwrap_or(1);
    c["name"] = match opts.get("name") {
        Some(n) => json!(n),
        None => c
            .get("name")
            .cloned()
            .filter(|n| n.is_string())
            .unwrap_or_else(|| json!(format!("vni{vni}"))),
    };
    Ok(c)
}

/// A running agent: its stop flag and its thread.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The node agents berthd runs, one thread per overlay network.
pub struct Agents {
    dir: PathBuf,
    running: Mutex<HashMap<String, Running>>,
}

impl Agents {
    pub fn new(state: &Path) -> Agents {
        Agents {
            dir: state.join("overlay"),
            running: Mutex::new(HashMap::new()),
        }
    }

    fn conf_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Starts network `id`'s agent on `conf` (a running one is kept).
    pub fn start(&self, id: &str, conf: &Value) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(id) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let path = self.conf_path(id);
        store::file::write_durable(&path, conf.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = id.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("overlay-{id}"))
            .spawn(move || {
                if let Err(e) = berth_network::overlay::run_agent(&path, AGENT_INTERVAL, &flag) {
                    tracing::warn!("overlay agent of network {name}: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
        running.insert(id.to_string(), Running { stop, thread });
        Ok(())
    }

    /// Stops network `id`'s agent (it gives the node's lease back) and
    /// waits for it; forgets its config file.
    pub fn stop(&self, id: &str) {
        let agent = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(a) = agent {
            a.stop.store(true, Ordering::SeqCst);
            let _ = a.thread.join();
        }
        let _ = std::fs::remove_file(self.conf_path(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_over_defaults() {
        let defaults = json!({"iface": "eth1", "store": {"etcd": {"endpoints": ["http://192.0.2.1:2379"], "prefix": "/p"}}});
        let c = overlay_conf(
            &opts(&[
                ("vni", "42"),
                ("etcd", "http://a:1, http://b:2"),
                ("node", "n1"),
            ]),
            &defaults,
            "10.244.0.0/16",
            Some(1400),
        )
        .unwrap();
        assert_eq!(c["vni"], 42);
        assert_eq!(c["name"], "vni42");
        assert_eq!(c["iface"], "eth1");
        assert_eq!(c["node"], "n1");
        assert_eq!(c["mtu"], 1400);
        assert_eq!(c["network"], "10.244.0.0/16");
        assert_eq!(
            c["store"]["etcd"]["endpoints"],
            json!(["http://a:1", "http://b:2"])
        );
        assert_eq!(c["store"]["etcd"]["prefix"], "/p");
        let named =
            overlay_conf(&opts(&[("name", "ov")]), &defaults, "10.244.0.0/16", None).unwrap();
        assert_eq!(named["name"], "ov");
        assert!(overlay_conf(&opts(&[]), &json!({}), "10.244.0.0/16", None)
            .unwrap_err()
            .contains("etcd"));
        assert!(
            overlay_conf(&opts(&[("vni", "x")]), &defaults, "10.244.0.0/16", None)
                .unwrap_err()
                .contains("vni")
        );
    }
}
