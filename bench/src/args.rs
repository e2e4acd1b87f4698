//! berth-bench's command line (clap) and the settings it turns into.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::{bandwidth, cluster, overlay, reconcile};

/// The parts `--only` chooses from.
pub(crate) const PARTS: [&str; 12] = [
    "compare",
    "floor",
    "concurrent",
    "host",
    "portmap",
    "engine",
    "overlay",
    "cri",
    "reconcile",
    "etcd",
    "bandwidth",
    "cluster",
];

/// berth-bench's command line, as clap reads it; [`Args`] is what the
/// parts use.
#[derive(Debug, Parser)]
#[command(
    name = "berth-bench",
    bin_name = "berth-bench",
    about = "berth-bench: berth's CNI plugins vs the reference plugins, as a runtime runs them",
    override_usage = "berth-bench [options]        (as root)",
    // As before clap: the last of a repeated flag wins.
    args_override_self = true
)]
pub(crate) struct Cli {
    /// berth-bridge + berth-ipam [default: this binary's dir if it has
    /// berth-bridge, else <workspace>/target/release]
    #[arg(long = "cni-path-berth", value_name = "DIR")]
    pub(crate) berth_dir: Option<PathBuf>,
    /// berth's previous build (its plugins and its `berth` binary): the
    /// parts compare, floor, portmap, cri, bandwidth and reconcile measure
    /// it as a third implementation, `berth (before)`, in the same rounds
    #[arg(long = "cni-path-before", value_name = "DIR")]
    pub(crate) before_dir: Option<PathBuf>,
    /// reference bridge + host-local
    #[arg(
        long = "cni-path-ref",
        value_name = "DIR",
        default_value = "/usr/lib/cni"
    )]
    pub(crate) ref_dir: PathBuf,
    /// container counts for compare
    // `std::vec::Vec`: one value (a comma-separated list), not a repeated flag.
    #[arg(long = "n", value_name = "LIST", default_value = "1,100,1000", value_parser = counts)]
    pub(crate) ns: std::vec::Vec<usize>,
    /// parts to run: compare,floor,concurrent,host,portmap,engine,overlay,cri,
    /// reconcile,etcd,bandwidth,cluster [default: all]
    #[arg(long, value_name = "LIST", value_parser = parts)]
    pub(crate) only: Option<std::vec::Vec<String>>,
    /// compare: run berth only
    #[arg(long)]
    pub(crate) no_ref: bool,
    /// concurrent ADDs for `concurrent`
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = at_least_one::<usize>)]
    pub(crate) concurrency: usize,
    /// repetitions for `floor`
    #[arg(long, value_name = "R", default_value_t = 30, value_parser = at_least_one::<usize>)]
    pub(crate) floor_reps: usize,
    /// containers per mode for `host`
    #[arg(long, value_name = "R", default_value_t = 30, value_parser = at_least_one::<usize>)]
    pub(crate) host_reps: usize,
    /// containers per level for `portmap`
    #[arg(long, value_name = "R", default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub(crate) portmap_reps: usize,
    /// volume round trips for `engine`
    #[arg(long, value_name = "V", default_value_t = 1000, value_parser = at_least_one::<usize>)]
    pub(crate) volume_reps: usize,
    /// docker runs per driver for `engine`
    #[arg(long, value_name = "D", default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub(crate) docker_reps: usize,
    /// simulated nodes for `overlay` convergence (at most 250)
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = overlay_nodes)]
    pub(crate) overlay_nodes: usize,
    /// length of each iperf3 run for `overlay`, in seconds
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = at_least_one::<u64>)]
    pub(crate) iperf_secs: u64,
    /// iperf3 runs per path for `overlay`
    #[arg(long, value_name = "R", default_value_t = 3, value_parser = at_least_one::<usize>)]
    pub(crate) iperf_reps: usize,
    /// pods per implementation for `cri`
    #[arg(long, value_name = "P", default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub(crate) cri_pods: usize,
    /// containers for `reconcile`, 2 published ports each
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = reconcile_containers)]
    pub(crate) reconcile_containers: usize,
    /// `nft flush ruleset`s timed by `reconcile`
    #[arg(long, value_name = "F", default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub(crate) reconcile_flushes: usize,
    /// containers per store for `etcd` (berth-overlay ADD and DEL)
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = at_least_one::<usize>)]
    pub(crate) etcd_containers: usize,
    /// shaped containers already on the host for `bandwidth`'s ADD and DEL
    /// timings (the rates are measured at the first)
    #[arg(long, value_name = "LIST", default_value = bandwidth::DEFAULT_LEVELS, value_parser = bandwidth_levels)]
    pub(crate) bandwidth_levels: std::vec::Vec<usize>,
    /// rounds (one more container per implementation) per level for
    /// `bandwidth`
    #[arg(long, value_name = "R", default_value_t = 20, value_parser = at_least_one::<usize>)]
    pub(crate) bandwidth_reps: usize,
    /// seconds each iperf3 run of `bandwidth` measures (after 1 s left out)
    #[arg(long, value_name = "S", default_value_t = 2, value_parser = at_least_one::<u64>)]
    pub(crate) bandwidth_secs: u64,
    /// length of each iperf3 run for `cluster`, in seconds
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = at_least_one::<u64>)]
    pub(crate) cluster_iperf_secs: u64,
    /// iperf3 runs per path for `cluster`
    #[arg(long, value_name = "R", default_value_t = 3, value_parser = at_least_one::<usize>)]
    pub(crate) cluster_iperf_reps: usize,
    /// pods per conflist (cluster and single-node) under containerd's CRI
    /// for `cluster`
    #[arg(long, value_name = "P", default_value_t = 40, value_parser = cluster_pods)]
    pub(crate) cluster_pods: usize,
    /// new nodes joined, one after the other, for `cluster`
    #[arg(long, value_name = "J", default_value_t = 5, value_parser = cluster_joins)]
    pub(crate) cluster_joins: usize,
    /// simulated nodes' leases beside the node whose footprint `cluster`
    /// measures (at most 250)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = cluster_nodes)]
    pub(crate) cluster_nodes: usize,
    /// pods on that node (at most 250)
    #[arg(long, value_name = "P", default_value_t = 200, value_parser = cluster_node_pods)]
    pub(crate) cluster_node_pods: usize,
    /// seconds the footprint is measured idle for `cluster`
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = at_least_one::<u64>)]
    pub(crate) cluster_idle_secs: u64,
    /// seconds of the flush storm (10 `nft flush ruleset` a second) for
    /// `cluster`
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = at_least_one::<u64>)]
    pub(crate) cluster_storm_secs: u64,
    /// cniVersion of the configs (1.0.0 is the newest the reference plugins
    /// 1.1.1 accept)
    #[arg(long, value_name = "V", default_value = "1.0.0")]
    pub(crate) cni_version: String,
    /// print the report as JSON on stdout (progress on stderr)
    #[arg(long)]
    pub(crate) json: bool,
    /// print one Markdown table per part that ran, each under a line
    /// naming the part, the date and the command (for docs/results/, see
    /// scripts/bench-table)
    #[arg(long, conflicts_with = "json")]
    pub(crate) markdown: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) berth_dir: PathBuf,
    /// `--cni-path-before`: berth's previous build, measured beside.
    pub(crate) before_dir: Option<PathBuf>,
    pub(crate) ref_dir: PathBuf,
    pub(crate) ns: Vec<usize>,
    pub(crate) compare: bool,
    pub(crate) floor: bool,
    pub(crate) concurrent: bool,
    pub(crate) host: bool,
    pub(crate) no_ref: bool,
    pub(crate) concurrency: usize,
    pub(crate) floor_reps: usize,
    pub(crate) host_reps: usize,
    pub(crate) portmap: bool,
    pub(crate) portmap_reps: usize,
    pub(crate) volumes: bool,
    pub(crate) volume_reps: usize,
    pub(crate) docker_reps: usize,
    pub(crate) overlay: bool,
    pub(crate) overlay_nodes: usize,
    pub(crate) iperf_secs: u64,
    pub(crate) iperf_reps: usize,
    pub(crate) cri: bool,
    pub(crate) cri_pods: usize,
    pub(crate) reconcile: bool,
    pub(crate) reconcile_containers: usize,
    pub(crate) reconcile_flushes: usize,
    pub(crate) etcd: bool,
    pub(crate) etcd_containers: usize,
    pub(crate) bandwidth: bool,
    pub(crate) bandwidth_levels: Vec<usize>,
    pub(crate) bandwidth_reps: usize,
    pub(crate) bandwidth_secs: u64,
    pub(crate) cluster: bool,
    pub(crate) cluster_iperf_secs: u64,
    pub(crate) cluster_iperf_reps: usize,
    pub(crate) cluster_pods: usize,
    pub(crate) cluster_joins: usize,
    pub(crate) cluster_nodes: usize,
    pub(crate) cluster_node_pods: usize,
    pub(crate) cluster_idle_secs: u64,
    pub(crate) cluster_storm_secs: u64,
    pub(crate) cni_version: String,
    pub(crate) json: bool,
    pub(crate) markdown: bool,
}

pub(crate) fn default_berth_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if dir.join("berth-bridge").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// A comma-separated list; blank items are skipped.
pub(crate) fn parse_list<T: std::str::FromStr>(v: &str) -> std::result::Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| format!("bad value {s:?}")))
        .collect()
}

/// `--n`: container counts, each at least 1.
pub(crate) fn counts(v: &str) -> std::result::Result<Vec<usize>, String> {
    let ns: Vec<usize> = parse_list(v)?;
    if ns.contains(&0) {
        return Err("counts must be at least 1".into());
    }
    Ok(ns)
}

/// `--only`: parts of [`PARTS`].
pub(crate) fn parts(v: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<String> = parse_list(v)?;
    if let Some(p) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!("unknown part {p:?} ({})", PARTS.join(", ")));
    }
    Ok(parts)
}

/// A count or repetition that must be at least 1.
pub(crate) fn at_least_one<T>(v: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = v.parse().map_err(|e| format!("{e}"))?;
    if n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

pub(crate) fn overlay_nodes(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=overlay::MAX_NODES).contains(&n) {
        return Err(format!(
            "1 to {} (the nodes and 5 joiners take /24s of 10.200.0.0/16)",
            overlay::MAX_NODES
        ));
    }
    Ok(n)
}

/// `--reconcile-containers`: each takes two host ports above 10000.
pub(crate) fn reconcile_containers(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=reconcile::MAX_CONTAINERS).contains(&n) {
        return Err(format!(
            "1 to {} (2 host ports each, from 10000 up)",
            reconcile::MAX_CONTAINERS
        ));
    }
    Ok(n)
}

/// `--cluster-pods`: each conflist's pods take host ports from a base of
/// their own, 1000 apart.
pub(crate) fn cluster_pods(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=cluster::MAX_CRI_PODS).contains(&n) {
        return Err(format!(
            "1 to {} (host ports 1000 apart per conflist)",
            cluster::MAX_CRI_PODS
        ));
    }
    Ok(n)
}

/// `--cluster-joins`: each new node takes an underlay address.
pub(crate) fn cluster_joins(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=cluster::MAX_JOINS).contains(&n) {
        return Err(format!(
            "1 to {} (each new node takes an underlay address)",
            cluster::MAX_JOINS
        ));
    }
    Ok(n)
}

/// `--cluster-nodes`: each simulated node holds a /24 of the ConfigMap's
/// /16 beside the measured node's.
pub(crate) fn cluster_nodes(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=cluster::MAX_NODES).contains(&n) {
        return Err(format!(
            "1 to {} (each takes a /24 of 10.244.0.0/16)",
            cluster::MAX_NODES
        ));
    }
    Ok(n)
}

/// `--cluster-node-pods`: the pods share the node's /24.
pub(crate) fn cluster_node_pods(v: &str) -> std::result::Result<usize, String> {
    let n: usize = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=cluster::MAX_POD_COUNT).contains(&n) {
        return Err(format!("1 to {} (the node's /24)", cluster::MAX_POD_COUNT));
    }
    Ok(n)
}

/// `--bandwidth-levels`: counts of shaped containers, at most
/// [`bandwidth::MAX_LEVEL`], in increasing order (each level is installed
/// on top of the one before); at least one.
pub(crate) fn bandwidth_levels(v: &str) -> std::result::Result<Vec<usize>, String> {
    let mut levels: Vec<usize> = parse_list(v)?;
    if levels.is_empty() {
        return Err("at least one level".into());
    }
    if let Some(l) = levels.iter().find(|&&l| l > bandwidth::MAX_LEVEL) {
        return Err(format!(
            "{l}: at most {} shaped containers",
            bandwidth::MAX_LEVEL
        ));
    }
    levels.sort_unstable();
    levels.dedup();
    Ok(levels)
}

/// Parses the arguments after the program name. `--help` is an error of
/// kind `DisplayHelp` (`exit()` prints the help and exits 0); a usage
/// error names the flag at fault (`exit()`: status 2).
pub(crate) fn parse_args(argv: &[String]) -> std::result::Result<Args, clap::Error> {
    let cli =
        Cli::try_parse_from(std::iter::once("berth-bench").chain(argv.iter().map(String::as_str)))?;
    // Without --only every part runs.
    let only = |part: &str| match &cli.only {
        None => true,
        Some(parts) => parts.iter().any(|p| p == part),
    };
    Ok(Args {
        berth_dir: cli.berth_dir.unwrap_or_else(default_berth_dir),
        before_dir: cli.before_dir,
        compare: only("compare"),
        floor: only("floor"),
        concurrent: only("concurrent"),
        host: only("host"),
        portmap: only("portmap"),
        volumes: only("engine"),
        overlay: only("overlay"),
        cri: only("cri"),
        reconcile: only("reconcile"),
        etcd: only("etcd"),
        bandwidth: only("bandwidth"),
        cluster: only("cluster"),
        ref_dir: cli.ref_dir,
        ns: cli.ns,
        no_ref: cli.no_ref,
        concurrency: cli.concurrency,
        floor_reps: cli.floor_reps,
        host_reps: cli.host_reps,
        portmap_reps: cli.portmap_reps,
        volume_reps: cli.volume_reps,
        docker_reps: cli.docker_reps,
        overlay_nodes: cli.overlay_nodes,
        iperf_secs: cli.iperf_secs,
        iperf_reps: cli.iperf_reps,
        cri_pods: cli.cri_pods,
        reconcile_containers: cli.reconcile_containers,
        reconcile_flushes: cli.reconcile_flushes,
        etcd_containers: cli.etcd_containers,
        bandwidth_levels: cli.bandwidth_levels,
        bandwidth_reps: cli.bandwidth_reps,
        bandwidth_secs: cli.bandwidth_secs,
        cluster_iperf_secs: cli.cluster_iperf_secs,
        cluster_iperf_reps: cli.cluster_iperf_reps,
        cluster_pods: cli.cluster_pods,
        cluster_joins: cli.cluster_joins,
        cluster_nodes: cli.cluster_nodes,
        cluster_node_pods: cli.cluster_node_pods,
        cluster_idle_secs: cli.cluster_idle_secs,
        cluster_storm_secs: cli.cluster_storm_secs,
        cni_version: cli.cni_version,
        json: cli.json,
        markdown: cli.markdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::PathBuf;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults() {
        let a = parse_args(&[]).unwrap();
        assert_eq!(a.ns, vec![1, 100, 1000]);
        assert_eq!(a.ref_dir, PathBuf::from("/usr/lib/cni"));
        assert!(a.compare && a.floor && a.concurrent && !a.json && !a.markdown);
        assert_eq!(a.concurrency, 64);
    }

    #[test]
    fn flags() {
        let a = parse_args(&argv(
            "--n 5,200 --only compare,concurrent --json --cni-path-berth /x --cni-path-ref=/y --no-ref",
        ))
        .unwrap();
        assert_eq!(a.ns, vec![5, 200]);
        assert!(a.compare && a.concurrent && !a.floor);
        assert!(a.json && a.no_ref && !a.markdown);
        assert!(
            parse_args(&argv("--markdown --only host"))
                .unwrap()
                .markdown
        );
        assert!(parse_args(&argv("--markdown --json")).is_err());
        assert_eq!(a.berth_dir, PathBuf::from("/x"));
        assert_eq!(a.ref_dir, PathBuf::from("/y"));
        assert_eq!(
            parse_args(&argv("--help")).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert!(parse_args(&argv("--bogus")).is_err());
        assert!(parse_args(&argv("--n 0")).is_err());
        assert!(parse_args(&argv("--only nope")).is_err());
        assert!(parse_args(&argv("--n")).is_err());
    }

    #[test]
    fn before_flag() {
        assert_eq!(parse_args(&[]).unwrap().before_dir, None);
        let a = parse_args(&argv(
            "--only portmap,cri --cni-path-before /old/target/release",
        ))
        .unwrap();
        assert_eq!(a.before_dir, Some(PathBuf::from("/old/target/release")));
        assert!(a.portmap && a.cri && !a.compare);
        let a = parse_args(&argv("--cni-path-before=/a --cni-path-before /b")).unwrap();
        assert_eq!(a.before_dir, Some(PathBuf::from("/b")));
        assert!(parse_args(&argv("--cni-path-before")).is_err());
    }

    #[test]
    fn cri_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.cri && a.cri_pods == 20);
        let a = parse_args(&argv("--only cri --cri-pods 3")).unwrap();
        assert!(a.cri && !a.compare && !a.overlay && a.cri_pods == 3);
        assert!(parse_args(&argv("--cri-pods 0")).is_err());
    }

    #[test]
    fn overlay_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.overlay);
        assert_eq!((a.overlay_nodes, a.iperf_secs, a.iperf_reps), (200, 5, 3));
        let a = parse_args(&argv(
            "--only overlay --overlay-nodes 50 --iperf-secs=2 --iperf-reps 1",
        ))
        .unwrap();
        assert!(
            a.overlay
                && !a.compare
                && !a.floor
                && !a.concurrent
                && !a.host
                && !a.portmap
                && !a.volumes
        );
        assert_eq!((a.overlay_nodes, a.iperf_secs, a.iperf_reps), (50, 2, 1));
        assert!(!parse_args(&argv("--only compare")).unwrap().overlay);
        assert!(parse_args(&argv("--overlay-nodes 0")).is_err());
        assert!(parse_args(&argv("--overlay-nodes 251")).is_err());
        assert!(parse_args(&argv("--overlay-nodes 250")).is_ok());
        assert!(parse_args(&argv("--iperf-secs 0")).is_err());
        assert!(parse_args(&argv("--iperf-reps 0")).is_err());
    }

    #[test]
    fn reconcile_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.reconcile);
        assert_eq!((a.reconcile_containers, a.reconcile_flushes), (1000, 20));
        let a = parse_args(&argv(
            "--only reconcile --reconcile-containers 200 --reconcile-flushes=5",
        ))
        .unwrap();
        assert!(a.reconcile && !a.compare && !a.portmap && !a.cri);
        assert_eq!((a.reconcile_containers, a.reconcile_flushes), (200, 5));
        assert!(!parse_args(&argv("--only portmap")).unwrap().reconcile);
        assert!(parse_args(&argv("--reconcile-containers 25000")).is_ok());
        assert!(parse_args(&argv("--reconcile-containers 25001")).is_err());
    }

    #[test]
    fn etcd_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.etcd && a.etcd_containers == 50);
        let a = parse_args(&argv("--only etcd --etcd-containers=7")).unwrap();
        assert!(a.etcd && !a.overlay && !a.compare && !a.reconcile);
        assert_eq!(a.etcd_containers, 7);
        assert!(!parse_args(&argv("--only overlay")).unwrap().etcd);
        assert!(parse_args(&argv("--etcd-containers 0")).is_err());
    }

    #[test]
    fn bandwidth_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.bandwidth);
        assert_eq!(a.bandwidth_levels, vec![0, 1000]);
        assert_eq!((a.bandwidth_reps, a.bandwidth_secs), (20, 2));
        let a = parse_args(&argv(
            "--only bandwidth --bandwidth-levels 500,0,500 --bandwidth-reps=3 --bandwidth-secs 5",
        ))
        .unwrap();
        assert!(a.bandwidth && !a.compare && !a.portmap && !a.etcd && !a.overlay);
        assert_eq!(a.bandwidth_levels, vec![0, 500]);
        assert_eq!((a.bandwidth_reps, a.bandwidth_secs), (3, 5));
        assert!(!parse_args(&argv("--only etcd")).unwrap().bandwidth);
        assert_eq!(
            parse_args(&argv("--bandwidth-levels 5000"))
                .unwrap()
                .bandwidth_levels,
            vec![5000]
        );
        assert!(parse_args(&argv("--bandwidth-levels 5001")).is_err());
        assert!(parse_args(&argv("--bandwidth-levels ,")).is_err());
        assert!(parse_args(&argv("--bandwidth-levels x")).is_err());
        assert!(parse_args(&argv("--bandwidth-reps 0")).is_err());
        assert!(parse_args(&argv("--bandwidth-secs 0")).is_err());
    }

    #[test]
    fn cluster_flags() {
        let a = parse_args(&[]).unwrap();
        assert!(a.cluster);
        assert_eq!(
            (
                a.cluster_iperf_secs,
                a.cluster_iperf_reps,
                a.cluster_pods,
                a.cluster_joins
            ),
            (5, 3, 40, 5)
        );
        assert_eq!(
            (
                a.cluster_nodes,
                a.cluster_node_pods,
                a.cluster_idle_secs,
                a.cluster_storm_secs
            ),
            (100, 200, 30, 10)
        );
        let a = parse_args(&argv(
            "--only cluster --cluster-iperf-secs 2 --cluster-iperf-reps=1 --cluster-pods 4 --cluster-joins 2 \
             --cluster-nodes 250 --cluster-node-pods 10 --cluster-idle-secs 3 --cluster-storm-secs 1",
        ))
        .unwrap();
        assert!(a.cluster && !a.overlay && !a.cri && !a.reconcile && !a.compare);
        assert_eq!(
            (
                a.cluster_iperf_secs,
                a.cluster_iperf_reps,
                a.cluster_pods,
                a.cluster_joins
            ),
            (2, 1, 4, 2)
        );
        assert_eq!(
            (
                a.cluster_nodes,
                a.cluster_node_pods,
                a.cluster_idle_secs,
                a.cluster_storm_secs
            ),
            (250, 10, 3, 1)
        );
        assert!(!parse_args(&argv("--only overlay")).unwrap().cluster);
        for bad in [
            "--cluster-nodes 251",
            "--cluster-nodes 0",
            "--cluster-node-pods 251",
            "--cluster-joins 0",
            "--cluster-joins 201",
            "--cluster-pods 1000",
            "--cluster-idle-secs 0",
        ] {
            assert!(parse_args(&argv(bad)).is_err(), "{bad}");
        }
    }

    /// Every check names the flag at fault; the last of a repeated flag
    /// wins, as before clap.

    #[test]
    fn errors_name_the_flag() {
        Cli::command().debug_assert();
        for (args, flag) in [
            ("--n 0", "--n"),
            ("--n 1,x", "--n"),
            ("--only nope", "--only"),
            ("--concurrency 0", "--concurrency"),
            ("--floor-reps 0", "--floor-reps"),
            ("--host-reps 0", "--host-reps"),
            ("--portmap-reps 0", "--portmap-reps"),
            ("--volume-reps 0", "--volume-reps"),
            ("--docker-reps 0", "--docker-reps"),
            ("--cri-pods 0", "--cri-pods"),
            ("--iperf-secs 0", "--iperf-secs"),
            ("--iperf-reps 0", "--iperf-reps"),
            ("--overlay-nodes 251", "--overlay-nodes"),
            ("--reconcile-containers 0", "--reconcile-containers"),
            ("--reconcile-flushes 0", "--reconcile-flushes"),
            ("--etcd-containers 0", "--etcd-containers"),
            ("--bandwidth-levels 9999", "--bandwidth-levels"),
            ("--bandwidth-reps 0", "--bandwidth-reps"),
            ("--bandwidth-secs 0", "--bandwidth-secs"),
            ("--cluster-nodes 251", "--cluster-nodes"),
            ("--cluster-node-pods 0", "--cluster-node-pods"),
            ("--cluster-pods 0", "--cluster-pods"),
            ("--concurrency x", "--concurrency"),
            ("--cni-version", "--cni-version"),
        ] {
            let e = parse_args(&argv(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args}");
            let msg = e.to_string();
            assert!(msg.contains(flag), "{args}: {msg}");
            for other in ["--concurrency", "--floor-reps", "--cri-pods"] {
                assert!(other == flag || !msg.contains(other), "{args}: {msg}");
            }
        }
        let a = parse_args(&argv(
            "--n 1,,2 --n 3 --only host --only floor --json --json",
        ))
        .unwrap();
        assert_eq!(a.ns, vec![3]);
        assert!(a.floor && !a.host && a.json);
        let a = parse_args(&argv("--n=4, 5")).unwrap_err();
        assert_eq!(a.exit_code(), 2);
        let a = parse_args(&["--n=4, 5".to_string()]).unwrap();
        assert_eq!(a.ns, vec![4, 5]);
        let a = parse_args(&argv("--volume-reps 7 --docker-reps 8 --cni-version 1.1.0")).unwrap();
        assert_eq!((a.volume_reps, a.docker_reps), (7, 8));
        assert_eq!(a.cni_version, "1.1.0");
        assert!(a.volumes && a.portmap && a.host);
    }
}
