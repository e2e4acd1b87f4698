//! `berth node`: berth's node agent, the long-running container of the
//! Kubernetes DaemonSet (deploy/kubernetes/berth.yaml). In one process:
//!
//! - the overlay agent of the node's conflist, when it holds a
//!   berth-overlay plugin: the node's subnet lease kept alive, every other
//!   node's routes programmed (berth_network::overlay);
//! - the reconciler: berth's firewall rules put back within a second of a
//!   firewall reload (berth_network::reconcile, as `berth watch`);
//! - `/metrics`, `/readyz` and `/healthz` on `--address`.
//!
//! Ready means: the conflist is there and reads, the node holds its lease
//! and the datapath is programmed (overlay), and the reconciler's last
//! pass left nothing missing. Not ready, the probe's body and the log say
//! why in one line.
//!
//! On SIGTERM (a rolling update, a node drain) it exits and leaves
//! everything in place: the datapath, the rules and the lease, which the
//! next agent renews, so the node's pods lose no packets meanwhile. An
//! agent that should give its subnet back is `berth-overlay agent`'s
//! (systemd), or the node's uninstall.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_network::overlay::{AgentHealth, AgentOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The network configuration the node's runtime uses: a file, or the
    /// runtime's conf dir, where the first `.conf`, `.conflist` or `.json`
    /// file by name is the one (as containerd and CRI-O pick it). It may
    /// appear after the agent starts (containerd rendering its template
    /// once kubelet hands it the node's podCIDR): the node is not ready
    /// until it does.
    #[arg(long, value_name = "FILE|DIR")]
    conf: PathBuf,
    /// Serve /metrics, /readyz and /healthz at http://HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:9624")]
    address: std::net::SocketAddr,
    /// Seconds between the reconciler's checks made without being told
    /// of a change (a ruleset change is seen as it happens).
    #[arg(long, value_name = "SECS", default_value_t = 30.0,
          value_parser = |s: &str| match s.parse::<f64>() {
              Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
              _ => Err(format!("{s:?}: expected seconds, more than 0 and at most 86400")),
          })]
    interval: f64,
    /// Where the node's metrics are read from.
    #[command(flatten)]
    metrics: crate::metrics::NodeArgs,
}

/// How often the overlay agent reads its file again, and how soon a stop
/// is seen by it.
const AGENT_INTERVAL: Duration = Duration::from_millis(250);
/// An overlay agent silent for longer than this is stuck: not live.
const AGENT_STUCK: Duration = Duration::from_secs(60);

/// What the probes read: each part's last word.
struct Health {
    started: Instant,
    /// Why the conflist cannot be used (None: it is, or not looked at yet).
    conf: Mutex<Option<String>>,
    /// The conflist's overlay, once known: None before the conflist was
    /// read, Some(None) for a conflist without berth-overlay.
    overlay: Mutex<Option<Option<Arc<AgentHealth>>>>,
    /// Reconciler passes so far, and what the last could not put back.
    passes: AtomicU64,
    unrepaired: AtomicU64,
}

impl Health {
    fn ready(&self) -> Result<String, String> {
        if let Some(why) = lock(&self.conf).clone() {
            return Err(why);
        }
        let overlay = match lock(&self.overlay).clone() {
            None => return Err("the conflist has not been read yet".into()),
            Some(o) => o,
        };
        let mut said = Vec::new();
        if let Some(agent) = overlay {
            let s = agent.get();
            if let Some(why) = s.problem {
                return Err(why);
            }
            if let Some(subnet) = s.subnet {
                said.push(format!("subnet {subnet}, {} peers", s.peers));
            }
        }
        match self.passes.load(Ordering::SeqCst) {
            0 => return Err("the reconciler has not checked the rules yet".into()),
            _ => match self.unrepaired.load(Ordering::SeqCst) {
                0 => said.push("rules in place".into()),
                n => {
                    return Err(format!(
                        "the reconciler could not put back {n} of berth's rules (see the log)"
                    ))
                }
            },
        }
        Ok(format!("ready: {}", said.join("; ")))
    }

    fn live(&self, reconciler: &std::thread::JoinHandle<()>) -> Result<String, String> {
        if reconciler.is_finished() {
            return Err("the reconciler stopped".into());
        }
        if let Some(Some(agent)) = lock(&self.overlay).clone() {
            let last = agent.get().last_round.unwrap_or(self.started);
            if last.elapsed() > AGENT_STUCK {
                return Err(format!(
                    "the overlay agent has not finished a round for {} s",
                    last.elapsed().as_secs()
                ));
            }
        }
        Ok("live".into())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cni::skel::init_daemon_logging();
    let stop_signals = crate::idle::block_stop_signals()?;
    let health = Arc::new(Health {
        started: Instant::now(),
        conf: Mutex::new(None),
        overlay: Mutex::new(None),
        passes: AtomicU64::new(0),
        unrepaired: AtomicU64::new(0),
    });
    let activity = berth_metrics::Activity::reconciler();

    let reconciler = {
        let health = health.clone();
        let activity = activity.clone();
        let interval = Duration::from_secs_f64(args.interval);
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || {
                berth_network::reconcile::watch(interval, |repaired, failed| {
                    activity.reconciled(repaired, failed);
                    health.unrepaired.store(failed as u64, Ordering::SeqCst);
                    health.passes.fetch_add(1, Ordering::SeqCst);
                })
            })
            .context("starting the reconciler")?
    };

    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let health = health.clone();
        let stop = stop.clone();
        let conf = args.conf.clone();
        std::thread::Builder::new()
            .name("overlay".into())
            .spawn(move || overlay(&conf, &health, &stop))
            .context("starting the overlay agent")?
    };

    let sources = args.metrics.sources();
    let reconciler = Arc::new(reconciler);
    let at = {
        let health = health.clone();
        let activity = activity.clone();
        berth_metrics::serve_with_probes(
            args.address,
            move || berth_metrics::render(&sources, Some(&activity)),
            move |probe| match probe {
                berth_metrics::Probe::Ready => health.ready(),
                berth_metrics::Probe::Live => health.live(&reconciler),
            },
        )?
    };
    tracing::info!("serving /metrics, /readyz and /healthz on http://{at}");
    // Readiness changes are logged as they happen, one line each, so the
    // pod's log says why it is not ready.
    let watcher = {
        let health = health.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("readiness".into())
            .spawn(move || {
                let mut said: Option<Result<String, String>> = None;
                while !stop.load(Ordering::SeqCst) {
                    let now = health.ready();
                    let changed = match (&said, &now) {
                        (Some(Ok(_)), Ok(_)) => false,
                        (Some(a), b) => a != b,
                        (None, _) => true,
                    };
                    if changed {
                        match &now {
                            Ok(s) => tracing::info!("{s}"),
                            Err(why) => tracing::warn!("not ready: {why}"),
                        }
                        said = Some(now);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .context("starting the readiness log")?
    };

    let sig = stop_signals.wait().context("waiting for a signal")?;
    tracing::info!("{sig}: stopping; the datapath, the rules and the lease stay in place");
    stop.store(true, Ordering::SeqCst);
    let _ = agent.join();
    let _ = watcher.join();
    Ok(())
}

/// The overlay part: waits for the conflist, then runs the overlay agent
/// on it if it holds berth-overlay, until `stop`.
fn overlay(conf: &Path, health: &Health, stop: &AtomicBool) {
    let (conf, has_overlay) = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match runtime_conf(conf).and_then(|f| conflist_has_overlay(&f).map(|o| (f, o))) {
            Ok((file, o)) => {
                tracing::info!("the node's network configuration: {}", file.display());
                *lock(&health.conf) = None;
                break (file, o);
            }
            Err(why) => {
                *lock(&health.conf) = Some(why);
                std::thread::sleep(AGENT_INTERVAL);
            }
        }
    };
    if !has_overlay {
        *lock(&health.overlay) = Some(None);
        return;
    }
    let agent = AgentHealth::new();
    *lock(&health.overlay) = Some(Some(agent.clone()));
    let opts = AgentOptions {
        interval: AGENT_INTERVAL,
        // Its successor renews the lease: see the module doc.
        release_on_stop: false,
        health: Some(agent),
    };
    if let Err(e) = berth_network::overlay::run_agent_with(&conf, &opts, stop) {
        tracing::error!("overlay agent: {e}");
    }
}

/// The file the runtime takes its network from: `path` itself, or in a
/// directory the first `.conf`, `.conflist` or `.json` file by name
/// (libcni's `ConfFiles`, sorted, of which containerd and CRI-O load the
/// first).
fn runtime_conf(path: &Path) -> Result<PathBuf, String> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| {
        format!(
            "no network configuration in {} yet (.conf, .conflist or .json)",
            path.display()
        )
    })
}

/// Whether the network configuration at `path` (a conflist, or a single
/// plugin's `.conf`) is berth-overlay's; why it cannot be used
/// otherwise, in one line naming the file.
fn conflist_has_overlay(path: &Path) -> Result<bool, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let is_overlay =
        |p: &serde_json::Value| p.get("type").and_then(|t| t.as_str()) == Some("berth-overlay");
    match (v.get("plugins").and_then(|p| p.as_array()), v.get("type")) {
        (Some(plugins), _) => Ok(plugins.iter().any(is_overlay)),
        (None, Some(_)) => Ok(is_overlay(&v)),
        (None, None) => Err(format!(
            "{}: field `plugins`: missing (nor a plugin's `type`)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health {
            started: Instant::now(),
            conf: Mutex::new(None),
            overlay: Mutex::new(Some(None)),
            passes: AtomicU64::new(1),
            unrepaired: AtomicU64::new(0),
        }
    }

    #[test]
    fn ready_needs_the_conflist_the_lease_and_the_rules() {
        let h = health();
        assert_eq!(h.ready(), Ok("ready: rules in place".into()));
        *lock(&h.conf) = Some("/x: No such file or directory".into());
        assert_eq!(h.ready(), Err("/x: No such file or directory".into()));
        *lock(&h.conf) = None;
        h.unrepaired.store(2, Ordering::SeqCst);
        assert!(h.ready().unwrap_err().contains("could not put back 2"));
        h.unrepaired.store(0, Ordering::SeqCst);
        let agent = AgentHealth::new();
        *lock(&h.overlay) = Some(Some(agent.clone()));
        assert!(h.ready().unwrap_err().contains("first round"));
        *lock(&h.overlay) = None;
        assert!(h.ready().unwrap_err().contains("not been read"));
        let h = health();
        h.passes.store(0, Ordering::SeqCst);
        assert!(h.ready().unwrap_err().contains("reconciler"));
    }

    #[test]
    fn the_conflist_is_looked_at_for_berth_overlay() {
        let dir = std::env::temp_dir().join(format!("berth-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.conflist");
        std::fs::write(&f, r#"{"plugins":[{"type":"berth-bridge"}]}"#).unwrap();
        assert_eq!(conflist_has_overlay(&f), Ok(false));
        std::fs::write(
            &f,
            r#"{"plugins":[{"type":"berth-overlay"},{"type":"berth-portmap"}]}"#,
        )
        .unwrap();
        assert_eq!(conflist_has_overlay(&f), Ok(true));
        std::fs::write(&f, "{").unwrap();
        assert!(conflist_has_overlay(&f).unwrap_err().contains("not JSON"));
        std::fs::write(&f, "{}").unwrap();
        assert!(conflist_has_overlay(&f).unwrap_err().contains("`plugins`"));
        let gone = dir.join("gone.conflist");
        assert!(conflist_has_overlay(&gone)
            .unwrap_err()
            .starts_with(&gone.display().to_string()));
        let single = dir.join("s.conf");
        std::fs::write(&single, r#"{"type":"berth-overlay"}"#).unwrap();
        assert_eq!(conflist_has_overlay(&single), Ok(true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_a_conf_dir_the_runtimes_first_file_is_the_one() {
        let dir = std::env::temp_dir().join(format!("berth-node-dir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("berth-etcd")).unwrap();
        assert!(runtime_conf(&dir)
            .unwrap_err()
            .contains("no network configuration"));
        for f in [
            "20-b.conflist",
            "10-containerd-net.conflist",
            "05-x.txt",
            ".hidden",
        ] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        assert_eq!(
            runtime_conf(&dir).unwrap(),
            dir.join("10-containerd-net.conflist")
        );
        std::fs::write(dir.join("00-a.json"), "{}").unwrap();
        assert_eq!(runtime_conf(&dir).unwrap(), dir.join("00-a.json"));
        let file = dir.join("20-b.conflist");
        assert_eq!(runtime_conf(&file).unwrap(), file);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
