//! `berth watch`: the reconciler (berth_network::reconcile) as a process
//! of its own, for hosts that run the CNI plugins without berthd (berthd
//! runs the same reconciler itself). It acts in the network namespace it
//! is started in, on the records of the run dirs the plugins use
//! (`BERTH_RUN_DIR` as for them), and logs each repair on stderr
//! (`BERTH_LOG`, default info). deploy/systemd/berth-watch.service runs
//! it.
//!
//! With `--metrics-address HOST:PORT` it also serves Prometheus metrics
//! at /metrics there: the node's (as `berth metrics` prints them) and its
//! reconciler's passes and repairs. Off by default.
//!
//! The reconciler runs on a thread of its own; the main thread takes
//! SIGTERM and SIGINT, so that the process also stops when it is PID 1
//! of a container (which ignores signals it has no handler for).

use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds between checks made without being told of a change (a
    /// ruleset change is seen as it happens).
    #[arg(long, value_name = "SECS", default_value_t = 30.0,
          value_parser = |s: &str| match s.parse::<f64>() {
              Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
              _ => Err(format!("{s:?}: expected seconds, more than 0 and at most 86400")),
          })]
    interval: f64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off unless
    /// given).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Where the node's metrics are read from.
    #[command(flatten)]
    metrics: crate::metrics::NodeArgs,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cni::skel::init_daemon_logging();
    let stop = crate::idle::block_stop_signals()?;
    let interval = Duration::from_secs_f64(args.interval);
    let activity = berth_metrics::Activity::reconciler();
    if let Some(addr) = args.metrics_address {
        let sources = args.metrics.sources();
        let activity = activity.clone();
        let at = berth_metrics::serve(addr, move || {
            berth_metrics::render(&sources, Some(&activity))
        })?;
        tracing::info!("serving Prometheus metrics on http://{at}/metrics");
    }
    std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            berth_network::reconcile::watch(interval, |repaired, failed| {
                activity.reconciled(repaired, failed)
            })
        })
        .context("starting the reconciler")?;
    let sig = stop.wait().context("waiting for a signal")?;
    tracing::info!("{sig}, exiting");
    Ok(())
}
