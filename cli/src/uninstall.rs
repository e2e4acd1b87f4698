//! `berth uninstall`: take a node off berth, the reverse of `berth
//! install` plus what the plugins and the node agent made for the node's
//! overlay network. Run once the node's pods are drained and the berth
//! DaemonSet is gone (deploy/kubernetes/uninstall.yaml runs it on every
//! node):
//!
//! 1. every network configuration in the conf dir that names a berth
//!    plugin is read; an overlay network's node leaves it for good (its
//!    lease given back in etcd, the VXLAN device, the network's rules and
//!    the node's bridge gone: berth_network::overlay::remove_node). A
//!    container still attached, or a node agent still running, stops it
//!    before anything changes;
//! 2. then the files: those configurations, the etcd client files and
//!    the conf template `berth install` put in the conf dir, and the
//!    berth plugins in the bin dir. `loopback` stays: the runtime runs it
//!    for every pod whatever the network, and other CNI plugins don't
//!    bring one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_network::overlay::record::NodeRecord;

use crate::install::{ETCD_TLS_SUBDIR, PLUGINS, TEMPLATE_SUBDIR};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the runtime looks for CNI plugins.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the runtime looks for network configurations.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Go on although a node agent's record says it runs (an agent killed
    /// without a clean stop leaves its record).
    #[arg(long)]
    force: bool,
}

/// The plugin that stays (see the module doc).
const KEPT: &str = "loopback";

pub fn run(args: &Args) -> anyhow::Result<()> {
    cni::skel::init_daemon_logging();
    let confs = berth_confs(&args.cni_conf_dir)?;
    // 1. The networks, each checked before any is touched.
    let mut overlays = Vec::new();
    for (path, v) in &confs {
        if !names_plugin(v, "berth-overlay") {
            continue;
        }
        let conf = berth_network::overlay::agent::read_agent_conf(path)
            .with_context(|| format!("reading {}", path.display()))?;
        overlays.push((path.clone(), conf));
    }
    let running: Vec<NodeRecord> = NodeRecord::all()
        .into_iter()
        .flatten()
        .filter(|r| overlays.iter().any(|(_, c)| c.name == r.network))
        .collect();
    if let (Some(r), false) = (running.first(), args.force) {
        bail!(
            "berth's node agent (pid {}) holds network {:?} on this node: delete the berth \
             DaemonSet first (or pass --force if it is gone without a clean stop)",
            r.pid,
            r.network
        );
    }
    for (path, conf) in &overlays {
        berth_network::overlay::remove_node(conf).with_context(|| {
            format!(
                "taking this node off network {:?} ({})",
                conf.name,
                path.display()
            )
        })?;
        println!(
            "left      network {} (lease, VXLAN device, bridge, rules)",
            conf.name
        );
    }
    // 2. The files.
    for (path, _) in &confs {
        remove(path)?;
    }
    for sub in [ETCD_TLS_SUBDIR, TEMPLATE_SUBDIR] {
        let dir = args.cni_conf_dir.join(sub);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            println!("removed   {}", dir.display());
        }
    }
    for p in PLUGINS.iter().filter(|p| **p != KEPT) {
        remove(&args.cni_bin_dir.join(p))?;
    }
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            println!("removed   {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The network configurations in `dir` (`.conf`, `.conflist`, `.json`,
/// as runtimes read them) that name a berth plugin.
fn berth_confs(dir: &Path) -> anyhow::Result<Vec<(PathBuf, serde_json::Value)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let conf_file = path.is_file()
            && matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("conf" | "conflist" | "json")
            );
        if !conf_file {
            continue;
        }
        // Another program's file that is not JSON is not berth's business.
        let Ok(v) = fs::read(&path)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
        else {
            continue;
        };
        if plugin_types(&v).iter().any(|t| is_berths(t)) {
            out.push((path, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A plugin `berth install` puts there, but the kept one.
fn is_berths(ty: &str) -> bool {
    ty != KEPT && PLUGINS.contains(&ty)
}

/// Every plugin `type` of a conflist (or of a single `.conf`).
fn plugin_types(v: &serde_json::Value) -> Vec<String> {
    let one = |p: &serde_json::Value| p.get("type").and_then(|t| t.as_str()).map(String::from);
    match v.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(v).into_iter().collect(),
    }
}

fn names_plugin(v: &serde_json::Value, ty: &str) -> bool {
    plugin_types(v).iter().any(|t| t == ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configurations_naming_berth_plugins_are_berths() {
        let dir = std::env::temp_dir().join(format!("berth-uninstall-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files = [
            (
                "10-berth.conflist",
                r#"{"plugins":[{"type":"berth-overlay"},{"type":"berth-portmap"}]}"#,
            ),
            (
                "10-containerd-net.conflist",
                r#"{"plugins":[{"type":"berth-overlay"}]}"#,
            ),
            (
                "20-other.conflist",
                r#"{"plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
            ),
            ("30-lo.conf", r#"{"type":"loopback"}"#),
            ("40-single.conf", r#"{"type":"berth-bridge"}"#),
            ("50-broken.conflist", "{"),
            ("README", r#"{"type":"berth-bridge"}"#),
        ];
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        let found: Vec<String> = berth_confs(&dir)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            found,
            [
                "10-berth.conflist",
                "10-containerd-net.conflist",
                "40-single.conf"
            ]
        );
        assert!(berth_confs(&dir.join("absent")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
