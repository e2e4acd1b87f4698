//! `berth-overlay`: the CNI plugin, or with `agent --conf FILE` the node
//! agent that keeps the peers of FILE (the plugin's config) programmed.
//! Without arguments it is the plugin, and clap is not consulted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Set by SIGTERM or SIGINT: the agent gives its lease back and exits.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// berth-overlay's command line (only parsed when there are arguments).
#[derive(Debug, Parser)]
#[command(
    name = "berth-overlay",
    bin_name = "berth-overlay",
    about = "berth-overlay: VXLAN overlay CNI plugin (run without arguments by a CNI \
             runtime) and its node agent",
    version,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node agent: keeps the node's peers equal to FILE's
    #[command(long_about = "Runs the node agent: keeps the node's peers equal to \
        FILE's (or, with an etcd store, leases this node's subnet and follows the \
        other nodes'). Runs until SIGTERM or SIGINT, then gives its lease back.")]
    Agent {
        /// The plugin's config, or a conflist holding it
        #[arg(long, value_name = "FILE")]
        conf: PathBuf,
    },
}

fn main() {
    if std::env::args_os().len() > 1 {
        // Usage errors exit 2, --help 0.
        let Command::Agent { conf } = Cli::parse().command;
        // The agent is a daemon: leveled logs on stderr, `BERTH_LOG`
        // (default info; e.g. `debug`, `warn`) sets what is shown.
        cni::skel::init_daemon_logging();
        let handler = request_stop as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
        if let Err(e) =
            berth_overlay::run_agent(&conf, std::time::Duration::from_millis(250), &STOP)
        {
            tracing::error!("{e}");
            std::process::exit(1);
        }
        return;
    }
    cni::skel::run(&berth_overlay::OverlayPlugin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth-overlay").chain(args.iter().copied()))
    }

    #[test]
    fn agent_args() {
        Cli::command().debug_assert();
        for argv in [
            &["agent", "--conf", "/e/o.conf"][..],
            &["agent", "--conf=/e/o.conf"],
        ] {
            let Command::Agent { conf } = parse(argv).unwrap().command;
            assert_eq!(conf, PathBuf::from("/e/o.conf"));
        }
        assert!(parse(&["agent"]).is_err());
        assert!(parse(&["agent", "--conf"]).is_err());
        assert!(parse(&["agent", "--conf", "/a", "extra"]).is_err());
        assert!(parse(&["bogus"]).is_err());
        assert_eq!(parse(&["bogus"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["agent", "--help"]).unwrap_err().exit_code(), 0);
    }
}
