//! `berth idle`: block until told to stop.
//!
//! A DaemonSet's pod needs a long-running container; the work (installing
//! the plugins) is done by its init container, which runs again whenever
//! the pod is recreated (a new image rolled out, a node rebooted). The main
//! container therefore only has to stay up and stop promptly when the
//! kubelet asks. As PID 1 of its container, a process with the default
//! disposition never sees SIGTERM, so the signals are blocked and taken
//! synchronously with sigwait (blocked signals are queued even for PID 1).

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    let stop = block_stop_signals()?;
    let sig = stop.wait().context("waiting for a signal")?;
    eprintln!("berth idle: {sig}, exiting");
    Ok(())
}

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every
/// thread it starts afterwards); wait on the set returned to take them.
pub fn block_stop_signals() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    Ok(set)
}
