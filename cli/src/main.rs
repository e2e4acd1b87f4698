//! `berth`: the operator's command line.
//!
//! One binary, one module per subcommand; this file only parses arguments
//! and dispatches. Later subcommands (status, inspect, gc, metrics...)
//! add a variant to [`Command`] and a module beside `install`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod atomic;
mod idle;
mod install;
mod watch;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "berth: container networking for Linux, the operator's tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install the CNI plugins and a conflist on this node, atomically and
    /// idempotently (what a Kubernetes DaemonSet's init container runs).
    Install(install::Args),
    /// Block until SIGTERM or SIGINT, then exit 0 (a DaemonSet's main
    /// container, once the init container has installed everything).
    Idle(idle::Args),
    /// Put back berth's firewall rules whenever something removes them
    /// (a firewall reload, `nft flush ruleset`), from berth's records;
    /// for hosts that run the CNI plugins without berthd. Runs until
    /// killed.
    Watch(watch::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Install(args) => install::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Watch(args) => watch::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
