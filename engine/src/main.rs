//! berthd: the daemon the Docker engine calls, on one unix socket
//! (default `/run/docker/plugins/berth.sock`, where the engine looks for a
//! plugin named `berth`): the VolumeDriver, NetworkDriver (bridge and
//! overlay modes) and IpamDriver protocols.
//!
//! ```text
//! berthd [--config FILE] [--root DIR] [--state DIR] [--socket PATH]
//! ```
//!
//! The config file is JSON: `{"root": DIR, "state": DIR, "socket": PATH, "bindAllow":
//! [DIR...], "dockerSocket": PATH}` (the engine's API, asked to reconcile
//! mount counts; default /var/run/docker.sock), "overlay": {berth-overlay keys}}` (defaults of
//! every `mode=overlay` network, e.g. `{"iface": "eth1", "store": {"etcd": {"endpoints": [...]}}}`),
//! "metricsAddress": "HOST:PORT"` (Prometheus metrics at /metrics there;
//! off by default); flags win over it. Each call is logged on stderr with its duration;
//! `BERTH_LOG` sets the level (`error`, `warn`, `info` (the default),
//! `debug`, `trace`, or a tracing filter such as `berthd=debug`).

mod docker;
mod ipam_api;
mod network_api;
mod overlay_net;
mod server;
mod volume_api;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use volumes::Volumes;

const DEFAULT_SOCKET: &str = "/run/docker/plugins/berth.sock";
/// Networks, endpoints and address pools of the network and IPAM drivers.
const DEFAULT_STATE: &str = berth_network::docker_records::DEFAULT_STATE_DIR;
/// The engine's API, asked when mount counts need reconciling.
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// How often the reconciler looks without being told of a change.
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// berthd: the Docker engine's volume, network and IPAM driver.
#[derive(Parser, Debug)]
#[command(name = "berthd", version)]
struct Cli {
    /// JSON config file (root, state, socket, bindAllow, dockerSocket,
    /// overlay); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where volumes live [default: /var/lib/berth/volumes].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Networks, endpoints and pools [default: /var/lib/berth/engine].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The plugin socket [default: /run/docker/plugins/berth.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(default)]
    bind_allow: Vec<PathBuf>,
    docker_socket: Option<PathBuf>,
    /// Defaults of overlay networks (berth-overlay's config keys).
    #[serde(default)]
    overlay: serde_json::Value,
    /// Where to serve Prometheus metrics ("host:port"); none by default.
    metrics_address: Option<String>,
}

struct Settings {
    socket: PathBuf,
    state: PathBuf,
    docker: PathBuf,
    volumes: volumes::Config,
    overlay: serde_json::Value,
    metrics: Option<std::net::SocketAddr>,
}

fn settings(cli: Cli) -> Result<Settings> {
    let Cli {
        config,
        root,
        state,
        socket,
    } = cli;
    let file: FileConfig = match &config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let metrics = match &file.metrics_address {
        None => None,
        Some(a) => Some(a.parse().map_err(|e| {
            anyhow::anyhow!(
                "config metricsAddress {a:?}: {e} (expected host:port, such as 127.0.0.1:9473)"
            )
        })?),
    };
    Ok(Settings {
        metrics,
        socket: socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        docker: file
            .docker_socket
            .unwrap_or_else(|| DEFAULT_DOCKER_SOCKET.into()),
        state: state.or(file.state).unwrap_or_else(|| DEFAULT_STATE.into()),
        volumes: volumes::Config {
            root: root
                .or(file.root)
                .unwrap_or_else(|| volumes::DEFAULT_ROOT.into()),
            bind_allow: file.bind_allow,
        },
        overlay: file.overlay,
    })
}

/// Everything berthd serves.
struct Drivers {
    volumes: Volumes,
    networks: network_api::Networks,
    ipam: Arc<ipam_api::Ipam>,
    docker: PathBuf,
    activity: berth_metrics::Activity,
}

/// One call: route, run, log.
fn dispatch(d: &Drivers, req: &server::Call) -> server::Answer {
    let start = Instant::now();
    let method = req.path.trim_start_matches('/');
    let unknown = || (404, json!({"Err": format!("unknown method {method}")}));
    let (status, body) = match method.split_once('.') {
        _ if req.method != "POST" => (
            404,
            json!({"Err": format!("{} {}: only POST is served", req.method, req.path)}),
        ),
        Some(("Plugin", "Activate")) => (
            200,
            json!({"Implements": ["VolumeDriver", "NetworkDriver", "IpamDriver"], "Err": ""}),
        ),
        Some(("VolumeDriver", m)) => {
            volume_api::handle(&d.volumes, &d.docker, m, &req.body).unwrap_or_else(unknown)
        }
        Some(("NetworkDriver", m)) => d.networks.handle(m, &req.body).unwrap_or_else(unknown),
        // IPAM's error field is "Error" (the protocol's own).
        Some(("IpamDriver", m)) => {
            d.ipam.handle(m, &req.body).unwrap_or_else(|| {
                // A 4xx is read by the engine's plugin client as {"Err"}.
                let msg = format!("unknown method {method}");
                (404, json!({"Err": msg, "Error": msg}))
            })
        }
        _ => unknown(),
    };
    // What the call is about: a volume's name, or a network, endpoint or
    // pool ID (shortened).
    let name = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| {
            ["Name", "EndpointID", "NetworkID", "PoolID"]
                .iter()
                .find_map(|k| {
                    v.get(*k)
                        .and_then(|n| n.as_str())
                        .map(|s| s.chars().take(24).collect::<String>())
                })
        })
        .unwrap_or_default();
    let outcome = match body
        .get("Err")
        .or_else(|| body.get("Error"))
        .and_then(|e| e.as_str())
    {
        Some(e) if !e.is_empty() => format!("error: {e}"),
        _ => "ok".to_string(),
    };
    // Methods not served count as one, so no request grows the metrics.
    d.activity.called(
        if status == 404 { "unknown" } else { method },
        outcome == "ok",
        start.elapsed(),
    );
    tracing::info!(
        "{method} {name:?} {status} {:.2?} {outcome}",
        start.elapsed()
    );
    server::Answer {
        status,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

fn run(cli: Cli) -> Result<()> {
    let s = settings(cli)?;
    let vols = Volumes::open(s.volumes.clone())
        .with_context(|| format!("volume root {}", s.volumes.root.display()))?;
    let count = vols.list().map(|l| l.len()).unwrap_or(0);
    let ipam = Arc::new(ipam_api::Ipam::new(&s.state));
    let drivers = Arc::new(Drivers {
        volumes: vols,
        networks: network_api::Networks::new(&s.state, ipam.clone(), s.overlay.clone()),
        ipam,
        docker: s.docker.clone(),
        activity: berth_metrics::Activity::daemon(),
    });
    drivers.networks.resume();
    // What changed in the ruleset while berthd was down, and whatever
    // changes later, is put back from the records (every berth network on
    // the host, berthd's and the CNI plugins').
    let activity = drivers.activity.clone();
    std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            berth_network::reconcile::watch(RECONCILE_INTERVAL, |repaired, failed| {
                activity.reconciled(repaired, failed)
            })
        })
        .context("starting the reconciler")?;
    if let Some(addr) = s.metrics {
        // The node's view, as `berth status` has it by default, with
        // berthd's own state and volumes.
        let sources = berth_metrics::NodeSources {
            inventory: berth_network::inventory::Sources {
                data_dirs: vec![berth_network::inventory::DEFAULT_DATA_DIR.into()],
                engine_state: Some(s.state.clone()),
            },
            volumes_root: Some(s.volumes.root.clone()),
        };
        let activity = drivers.activity.clone();
        let at = berth_metrics::serve(addr, move || {
            berth_metrics::render(&sources, Some(&activity))
        })?;
        tracing::info!("serving Prometheus metrics on http://{at}/metrics");
    }
    if let Some(dir) = s.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a previous berthd (we hold the root's lock, so no
    // other berthd serves it).
    let _ = std::fs::remove_file(&s.socket);
    // One runtime thread does the I/O; the drivers' calls run on its
    // blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(&s.socket) })
        .with_context(|| format!("binding {}", s.socket.display()))?;
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", s.socket.display()))?;
    tracing::info!(
        "serving VolumeDriver, NetworkDriver and IpamDriver on {} (volumes under {}: {count}; state {})",
        s.socket.display(),
        s.volumes.root.display(),
        s.state.display()
    );
    let handler = Arc::new(move |call: server::Call| dispatch(&drivers, &call));
    rt.block_on(server::serve(listener, handler));
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    cni::skel::init_daemon_logging();
    if let Err(e) = run(cli) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
