//! `berth`: the operator's command line.
//!
//! One binary, one module per subcommand (`status` serves the four that
//! read berth's records, `gc` releases from them); this file only parses arguments and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod atomic;
mod gc;
mod idle;
mod install;
mod metrics;
mod node;
mod status;
mod uninstall;
mod volumes;
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
    /// Take this node off berth once its pods are drained and the node
    /// agent stopped: an overlay network left for good (lease, VXLAN
    /// device, bridge, rules), then the conflists, etcd files and plugins
    /// `berth install` put there (`loopback` stays).
    Uninstall(uninstall::Args),
    /// berth's node agent (a Kubernetes DaemonSet's main container): the
    /// overlay agent of the node's conflist, the reconciler, and
    /// /metrics, /readyz and /healthz. Runs until SIGTERM, which leaves
    /// the datapath, the rules and the lease in place.
    Node(node::Args),
    /// Put back berth's firewall rules whenever something removes them
    /// (a firewall reload, `nft flush ruleset`), from berth's records;
    /// for hosts that run the CNI plugins without berthd. Runs until
    /// killed.
    Watch(watch::Args),
    /// Every berth network on this node: its bridge, subnets, how full
    /// each address range is, attachments, published ports, and whether
    /// the kernel still has what the records describe.
    Status(status::StatusArgs),
    /// List what berth holds: `berth ls containers`.
    Ls(status::LsArgs),
    /// One container's attachments: addresses, host veth, ports.
    Inspect(status::InspectArgs),
    /// Every published host port and who holds it.
    Ports(status::PortsArgs),
    /// Release what belongs to containers whose netns no longer exists,
    /// or whose addresses were allocated before the last reboot (for
    /// runtimes that never send CNI GC). Asks first, unless --yes.
    Gc(gc::GcArgs),
    /// berthd's volumes: kind, size limit, bytes used, mount count.
    Volumes(volumes::VolumesArgs),
    /// The node's Prometheus metrics, once (node_exporter's textfile
    /// collector): address ranges, attachments, ports, volumes.
    Metrics(metrics::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Install(args) => install::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Node(args) => node::run(&args),
        Command::Uninstall(args) => uninstall::run(&args),
        Command::Status(args) => status::status(&args),
        Command::Ls(args) => status::ls(&args),
        Command::Inspect(args) => status::inspect(&args),
        Command::Ports(args) => status::ports(&args),
        Command::Gc(args) => gc::run(&args),
        Command::Volumes(args) => volumes::run(&args),
        Command::Metrics(args) => metrics::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
