//! `mode=overlay` networks: berth-overlay's library under the engine. A
//! berthd overlay network is one node's share of a multi-host VXLAN
//! network, exactly as the CNI plugin makes it: the same subnet leases in
//! etcd, the same VXLAN device `berth.<vni>`, peers and bridge, so Docker
//! hosts and Kubernetes nodes running berth-overlay can share one network.
//!
//! The engine's `--subnet` (berth's IPAM driver) is the cluster CIDR; the
//! node's subnet comes from its lease, and berth's IPAM hands out the
//! containers' addresses from it (see `Ipam::narrow`). berthd runs the
//! node agent itself (a thread per network, `berth_network::overlay::run_agent_on`
//! the network's config in memory), so no separate agent is needed on a
//! Docker host. The password of an etcd user is never written to berthd's
//! state: it comes from berthd's config (or a password file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// The `-o` options of an overlay network (besides mode, mtu, masquerade
/// and isolation, which every mode has).
pub const OPTIONS: [&str; 14] = [
    "vni",
    "subnetLen",
    "iface",
    "etcd",
    "prefix",
    "node",
    "leaseTTL",
    "name",
    "etcd-ca",
    "etcd-cert",
    "etcd-key",
    "etcd-user",
    "etcd-password-file",
    "etcd-dial-timeout",
];

/// The `-o etcd-*` options and the `store.etcd` key each sets. There is
/// no option for the password itself: Docker would show it in `docker
/// network inspect`; it goes in a file (or in berthd's config).
const ETCD_OPTIONS: [(&str, &str); 6] = [
    ("etcd-ca", "caFile"),
    ("etcd-cert", "certFile"),
    ("etcd-key", "keyFile"),
    ("etcd-user", "username"),
    ("etcd-password-file", "passwordFile"),
    ("etcd-dial-timeout", "dialTimeout"),
];

/// Settings that go together: one given by `-o` replaces all of its group
/// that berthd's config gave (a user of the config with the password
/// file of an option would be neither's).
const ETCD_GROUPS: [&[&str]; 2] = [
    &["certFile", "keyFile"],
    &["username", "password", "passwordFile"],
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
    let etcd_option = |k: &String| k.starts_with("etcd") || k == "prefix" || k == "leaseTTL";
    if opts.keys().any(etcd_option) {
        let mut etcd = c["store"]["etcd"].clone();
        if !etcd.is_object() {
            etcd = json!({});
        }
        let given: Vec<(&str, &String)> = ETCD_OPTIONS
            .iter()
            .filter_map(|(option, key)| opts.get(*option).map(|v| (*key, v)))
            .collect();
        for group in ETCD_GROUPS {
            if given.iter().any(|(k, _)| group.contains(k)) {
                for k in group {
                    etcd.as_object_mut().map(|o| o.remove(*k));
                }
            }
        }
        for (key, v) in given {
            etcd[key] = json!(v);
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

/// A network's config read back from berthd's state (written
/// without its password), with the password of
/// berthd's config (`defaults`) for the user it names, as it was made.
pub fn with_secrets(conf: &Value, defaults: &Value) -> Value {
    let mut c = conf.clone();
    let given = &defaults["store"]["etcd"];
    let Some(etcd) = c
        .get_mut("store")
        .and_then(|s| s.get_mut("etcd"))
        .and_then(Value::as_object_mut)
    else {
        return c;
    };
    let same_user =
        given.get("username").is_some() && etcd.get("username") == given.get("username");
    if same_user && !etcd.contains_key("password") && !etcd.contains_key("passwordFile") {
        if let Some(p) = given.get("password") {
            etcd.insert("password".into(), p.clone());
        }
    }
    c
}

/// A running agent: its stop flag and its thread.
struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The node agents berthd runs, one thread per overlay network, each on
/// its network's config held in memory.
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

    /// Starts network `id`'s agent on `conf` (a running one is kept).
    pub fn start(&self, id: &str, conf: &Value) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(id) {
            return Ok(());
        }
        // Where berthd wrote each agent's config before it held them in
        // memory.
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        let parsed = berth_network::overlay::parse_conf(conf).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = id.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("overlay-{id}"))
            .spawn(move || {
                let what = format!("overlay network {name}");
                if let Err(e) =
                    berth_network::overlay::run_agent_on(&parsed, &what, AGENT_INTERVAL, &flag)
                {
                    tracing::warn!("{what}: agent: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
        running.insert(id.to_string(), Running { stop, thread });
        Ok(())
    }

    /// Stops network `id`'s agent (it gives the node's lease back) and
    /// waits for it.
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

    #[test]
    fn etcd_options_set_their_keys_and_replace_their_group() {
        let defaults = json!({"store": {"etcd": {
            "endpoints": ["https://a:1"], "username": "cfg", "password": "pw",
            "certFile": "/c.pem", "keyFile": "/k.pem", "caFile": "/ca.pem"}}});
        let c = overlay_conf(
            &opts(&[
                ("etcd-user", "berth"),
                ("etcd-password-file", "/pw"),
                ("etcd-dial-timeout", "5s"),
            ]),
            &defaults,
            "10.244.0.0/16",
            None,
        )
        .unwrap();
        let e = &c["store"]["etcd"];
        assert_eq!(e["username"], "berth");
        assert_eq!(e["passwordFile"], "/pw");
        assert_eq!(e["dialTimeout"], "5s");
        assert!(e.get("password").is_none(), "{e}");
        // The other group is the config's.
        assert_eq!(e["certFile"], "/c.pem");
        assert_eq!(e["caFile"], "/ca.pem");
        let c = overlay_conf(
            &opts(&[
                ("etcd-cert", "/c2.pem"),
                ("etcd-key", "/k2.pem"),
                ("etcd-ca", "/ca2.pem"),
            ]),
            &defaults,
            "10.244.0.0/16",
            None,
        )
        .unwrap();
        let e = &c["store"]["etcd"];
        assert_eq!(
            (&e["certFile"], &e["keyFile"], &e["caFile"]),
            (&json!("/c2.pem"), &json!("/k2.pem"), &json!("/ca2.pem"))
        );
        assert_eq!(e["password"], "pw");
    }

    #[test]
    fn the_password_stays_out_of_the_state_and_comes_back() {
        let defaults = json!({"store": {"etcd": {"username": "cfg", "password": "pw"}}});
        let conf = json!({"store": {"etcd": {"endpoints": ["https://a:1"], "username": "cfg", "password": "pw"}}});
        let kept = berth_network::docker_records::without_secrets(&conf);
        assert!(!kept.to_string().contains("pw\""), "{kept}");
        assert_eq!(with_secrets(&kept, &defaults), conf);
        // Another user's config gets none of it.
        let other = json!({"store": {"etcd": {"username": "x"}}});
        assert_eq!(with_secrets(&other, &defaults), other);
        let static_store = json!({"store": {"static": {}}});
        assert_eq!(with_secrets(&static_store, &defaults), static_store);
    }
}
