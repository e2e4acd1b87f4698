//! The node agent: keeps the datapath equal to the peers the store
//! reports, and the node's lease renewed, until told to stop.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::kernel;
use crate::{Error, Kind};
use berth_kernel::Handle;
use serde_json::json;

use super::config::{OverlayConf, Peer};
use super::datapath::{claim_network, ensure_datapath, forget_peer, underlay, vxlan_name};
use super::lease::{leases_prefix, release_lease, renew_lease, resolve_held, Held};
use super::node::parse_conf;
use super::record::{self, NodeRecord};

/// How an agent runs, beyond its config.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// How often the static store's file is read again (and etcd tried
    /// again while unreachable).
    pub interval: std::time::Duration,
    /// Give the lease back when stopping, so the other nodes forget this
    /// one at once (a node leaving for good: `berth-overlay agent` under
    /// systemd, berthd). False for an agent that is being replaced (a
    /// Kubernetes node pod rolled or restarted): its successor renews the
    /// same lease, and the other nodes keep their routes to this node's
    /// pods meanwhile.
    pub release_on_stop: bool,
    /// Where each round's outcome is told (a node agent's readiness).
    pub health: Option<Arc<AgentHealth>>,
}

impl AgentOptions {
    pub fn new(interval: std::time::Duration) -> AgentOptions {
        AgentOptions {
            interval,
            release_on_stop: true,
            health: None,
        }
    }
}

/// What the agent's last round found, for a readiness probe: ready once
/// the node holds its subnet and the datapath is programmed for every
/// peer; not ready, with the reason in one line, while it cannot.
#[derive(Debug, Default)]
pub struct AgentHealth {
    state: Mutex<HealthState>,
}

/// One reading of [`AgentHealth`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    /// When the last round ended, whatever it found.
    pub last_round: Option<Instant>,
    /// The node's subnet and peers, as last programmed.
    pub subnet: Option<ipnet::Ipv4Net>,
    pub peers: usize,
    /// Why the node is not ready: None once a round held the lease and
    /// programmed the datapath.
    pub problem: Option<String>,
}

impl AgentHealth {
    pub fn new() -> Arc<AgentHealth> {
        Arc::new(AgentHealth {
            state: Mutex::new(HealthState {
                problem: Some("the overlay agent has not finished its first round".into()),
                ..HealthState::default()
            }),
        })
    }

    pub fn get(&self) -> HealthState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut HealthState)) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s);
        s.last_round = Some(Instant::now());
    }
}

/// The agent: keeps the node's datapath equal to the peers of its config:
/// the static store's list in the file (re-read every `interval`), or the
/// etcd store's leases (read again as soon as a watch on them fires). A
/// peer that appears is programmed, one that goes is forgotten (the kernel
/// is only touched when something changed, and every 10 s to repair).
/// With etcd it holds this node's lease, kept alive every third of
/// leaseTTL. When `stop` turns true it gives the lease back and returns;
/// the datapath stays as it is, so containers keep talking to the peers
/// they know.
pub fn run_agent(
    conf_path: &std::path::Path,
    interval: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    run_agent_with(conf_path, &AgentOptions::new(interval), stop)
}

/// [`run_agent`] with every option: a file that is missing or wrong is
/// read again each `interval` (a conflist the runtime has yet to render
/// from its template), told to `health` meanwhile.
pub fn run_agent_with(
    conf_path: &std::path::Path,
    opts: &AgentOptions,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    agent_loop(
        &|| read_agent_conf(conf_path),
        &conf_path.display().to_string(),
        opts,
        stop,
    )
}

/// [`run_agent`] on a config held in memory (berthd's: it may hold a
/// password, which berth writes to no file). `what` names it in the log.
pub fn run_agent_on(
    conf: &OverlayConf,
    what: &str,
    interval: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    agent_loop(
        &|| Ok(conf.clone()),
        what,
        &AgentOptions::new(interval),
        stop,
    )
}

/// The agent's rounds, on the config `read` gives each round.
fn agent_loop(
    read: &dyn Fn() -> Result<OverlayConf, Error>,
    what: &str,
    opts: &AgentOptions,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    use std::time::Duration;
    let interval = opts.interval;
    let tell = |f: &dyn Fn(&mut HealthState)| {
        if let Some(h) = &opts.health {
            h.set(f);
        }
    };
    /// Everything is reprogrammed this often even without a change, so
    /// entries removed behind the agent's back come back.
    const RESYNC: Duration = Duration::from_secs(10);
    /// The longest one watch waits: how soon a stop, or a change of the
    /// config file, is noticed with the etcd store.
    const WATCH_SLICE: Duration = Duration::from_secs(1);
    let mut programmed: Vec<Peer> = Vec::new();
    let mut last: Option<(OverlayConf, Instant)> = None;
    let mut renewed: Option<Instant> = None;
    // The same instant by the wall clock, for the node's record.
    let mut renewed_at: Option<u64> = None;
    let mut recorded: Option<NodeRecord> = None;
    let mut failing: Option<String> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut held: Option<Held> = None;
        let round = read().and_then(|c| {
            claim_network(&mut Handle::new().map_err(kernel)?, &c)?;
            // The first round, and each renewal, also claims the lease.
            let due = c.etcd.as_ref().is_some_and(|e| {
                renewed.is_none_or(|at| at.elapsed().as_secs_f64() >= e.lease_ttl as f64 / 3.0)
            });
            let claim_from = if due {
                Some(underlay(&mut Handle::new().map_err(kernel)?, &c)?.1)
            } else {
                None
            };
            let (conf, mut h) = resolve_held(&c, claim_from)?;
            if due {
                if let Some(h) = h.as_mut() {
                    h.lease = renew_lease(&conf, h.lease)?;
                }
                renewed = Some(Instant::now());
                renewed_at = Some(record::now());
            }
            held = h;
            Ok(conf)
        });
        let conf = match round {
            Ok(conf) => {
                if failing.take().is_some() {
                    tracing::info!("{what}: working again");
                }
                conf
            }
            Err(e) => {
                // Said once, not every round, while it stays the same (an
                // expired certificate fails every round until renewed).
                let said = e.to_string();
                tell(&|s| s.problem = Some(format!("{what}: {said}")));
                if failing.as_deref() != Some(said.as_str()) {
                    tracing::warn!("{what}: {said} (the datapath stays as it is; trying again)");
                    failing = Some(said);
                }
                std::thread::sleep(interval);
                continue;
            }
        };
        if last
            .as_ref()
            .is_none_or(|(c, at)| *c != conf || at.elapsed() >= RESYNC)
        {
            let synced = (|| -> Result<(), Error> {
                let _lock = store::host::lock().map_err(|e| Error::new(Kind::Io, e.to_string()))?;
                let mut h = Handle::new().map_err(kernel)?;
                // The gone first: then programming the current peers
                // restores anything they shared with them.
                if let Some(vx) = h.link_by_name(&vxlan_name(conf.vni)).map_err(kernel)? {
                    for gone in programmed.iter().filter(|p| !conf.peers.contains(p)) {
                        forget_peer(&mut h, vx.index, gone, &conf.peers)?;
                        tracing::info!("peer {} ({}) left", gone.node, gone.subnet);
                    }
                }
                ensure_datapath(&conf)?;
                for new in conf.peers.iter().filter(|p| !programmed.contains(p)) {
                    tracing::info!("peer {} ({}) at {}", new.node, new.subnet, new.underlay);
                }
                programmed = conf.peers.clone();
                Ok(())
            })();
            match synced {
                Ok(()) => last = Some((conf.clone(), Instant::now())),
                Err(e) => {
                    tracing::warn!("{e}");
                    tell(&|s| s.problem = Some(format!("{what}: the datapath: {e}")));
                    last = None;
                }
            }
        }
        if last.is_some() {
            tell(&|s| {
                s.subnet = Some(conf.subnet);
                s.peers = conf.peers.len();
                s.problem = None;
            });
        }
        // What `berth status` shows of the node: written when it changes
        // (a peer, the subnet, a renewal).
        let now = NodeRecord::of(&conf, renewed_at);
        if recorded.as_ref() != Some(&now) {
            match now.write() {
                Ok(()) => recorded = Some(now),
                Err(e) => tracing::warn!("{what}: the node's record: {e}"),
            }
        }
        // Wait for the next round: a change of the leases (etcd), or the
        // interval (the static store's file; etcd while unreachable).
        let watched = match (&conf.etcd, held) {
            (Some(e), Some(h)) => {
                let renew_in = Duration::from_secs_f64(e.lease_ttl as f64 / 3.0)
                    .saturating_sub(renewed.map(|at| at.elapsed()).unwrap_or_default());
                match e.store() {
                    Ok(store) => store
                        .wait_for_change(
                            &leases_prefix(&conf, e),
                            h.revision,
                            WATCH_SLICE.min(renew_in),
                        )
                        .is_ok(),
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !watched {
            std::thread::sleep(interval);
        }
    }
    if let Some(r) = &recorded {
        NodeRecord::remove(&r.network);
    }
    if !opts.release_on_stop {
        if let Some((conf, _)) = last.filter(|(c, _)| c.etcd.is_some()) {
            tracing::info!(
                "stopping; {} stays leased for this node's next agent",
                conf.subnet
            );
        }
        return Ok(());
    }
    if let Some((conf, _)) = last.filter(|(c, _)| c.etcd.is_some() && renewed.is_some()) {
        match release_lease(&conf) {
            Ok(()) => tracing::info!("stopping; released {}", conf.subnet),
            Err(e) => tracing::warn!(
                "stopping; lease not released ({}), it expires by itself",
                e.msg
            ),
        }
    }
    Ok(())
}

/// The agent's config: the plugin's own object, or a conflist holding one.
pub fn read_agent_conf(path: &std::path::Path) -> Result<OverlayConf, Error> {
    let text = std::fs::read(path).map_err(|e| Error::new(Kind::Io, e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Error::new(Kind::Decode, e.to_string()))?;
    let mut plugin = match v.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list
            .iter()
            .find(|p| p["type"] == "berth-overlay")
            .cloned()
            .ok_or_else(|| Error::config("plugins", "no berth-overlay plugin in the conflist"))?,
        None => v.clone(),
    };
    if plugin.get("name").is_none() {
        plugin["name"] = v.get("name").cloned().unwrap_or_else(|| json!("overlay"));
    }
    parse_conf(&plugin)
}
