//! berth-bench: side-by-side timings of berth's plugins and the reference
//! CNI plugins, driven exactly as a runtime drives them.
//!
//! Parts (all by default; choose with `--only`):
//!
//! * `compare` — for each N: one network per implementation (its own bridge,
//!   subnet and IPAM dataDir), N containers each in a fresh netns (created
//!   up front, not timed). Each ADD and each DEL is one exec of the bridge
//!   plugin with CNI env + config on stdin (it execs its IPAM plugin itself),
//!   timed with `Instant` around the exec. Reports per-container medians and
//!   the ref/berth ratio, and (N ≥ 200) the ADD median of the last 100
//!   containers against the first 100 (does cost grow with the network?).
//! * `floor` — the kernel's veth deletion cost, the floor under any DEL:
//!   times `ip link del` of a veth pair (both ends in one throwaway netns,
//!   and with the peer in a second netns as for a container), next to the
//!   cost of running `ip` itself (`ip link show lo`); and a network's first
//!   ADD and last DEL against the usual ones, berth-bridge + berth-ipam in
//!   private host namespaces (see floor.rs).
//! * `concurrent` — K (64) ADDs at once on one berth network: all must
//!   succeed with no address handed out twice; then K DELs at once.
//! * `host` — berth-host's none, macvlan and device modes against
//!   `loopback`, `macvlan` and `host-device` (see host.rs).
//! * `portmap` — one more container's published ports with 0, 1000 and
//!   5000 mappings installed, berth-portmap against `portmap`, and the
//!   firewall part of berth's ADD and DEL (its one nf_tables batch) timed
//!   in process (see portmap.rs).
//! * `engine` — berthd under the Docker engine: volume protocol round
//!   trips, `docker volume create` + `docker run -v` against the `local`
//!   driver, `docker run` on a berth network against the `bridge` driver
//!   (see engine.rs).
//! * `overlay` — berth-overlay against issue 6's targets: iperf3 between
//!   containers on two namespace "hosts" against the same container path
//!   built by hand (bridge, veth, VXLAN with `ip`/`bridge`) between the
//!   same hosts, a raw host-to-host VXLAN for reference, and the agent's
//!   convergence with etcd and N simulated nodes (initial, join, leave)
//!   (see overlay.rs).
//! * `cri` — a Kubernetes node's pod lifecycle under containerd's CRI:
//!   RunPodSandbox + StopPodSandbox + RemovePodSandbox per pod, berth
//!   against the reference plugins, with the CNI ADD and DEL times
//!   containerd itself reports (see cri.rs).
//! * `reconcile` — `berth watch` putting berth's rules back after
//!   `nft flush ruleset`, with 1000 containers and 2000 published ports
//!   installed in a private host namespace: flush to the published port
//!   answering again from outside (median and max of 20 flushes), and the
//!   watcher's CPU idle and during a flush storm (10 a second for 10 s)
//!   (see reconcile.rs).
//! * `etcd` — what berth-overlay's etcd store adds to an ADD and a DEL:
//!   N containers per store on a namespace "host", alternating round by
//!   round, with the static store (no etcd), etcd over http, over https
//!   with a client certificate, and with auth on top (token cached, and
//!   without one), against private etcd members in a namespace of their
//!   own; and, in process, a fresh berth-etcd client's first call against
//!   the next one on the same connection (see etcd.rs). Target: ADD median
//!   < 10 ms with each etcd store.
//! * `bandwidth` — berth-bridge + berth-bandwidth against `bridge` +
//!   `bandwidth`, chained as a runtime chains them, each in a private host
//!   namespace: the bridge's ADD, the shaper's and the chain's, and the
//!   same for DEL, with 0 and 1000 shaped containers already there; and
//!   the rates both hold (iperf3 to an "outside" namespace, TCP and UDP,
//!   each direction, 10 and 50 Mbit/s) as the receiver counts them (see
//!   bandwidth.rs).
//! * `cluster` — berth as a Kubernetes cluster network: nodes (namespaces
//!   on one underlay switch) running `berth node` on
//!   deploy/kubernetes/berth.yaml's conflist, leases in a private etcd
//!   (TLS). Pod-to-pod iperf3 across two nodes against the same on one
//!   node, the hand-built VXLAN path and the raw underlay; RunPodSandbox
//!   and its CNI ADD under containerd's CRI on the cluster conflist with
//!   the agent running against the single-node conflist; a new node's
//!   join (agent start to its pod answering a ping from another node's);
//!   the agent's RSS and CPU with N nodes' leases and M pods, idle and in
//!   a flush storm (see cluster.rs).
//!
//! `--cni-path-before DIR` adds berth's previous build (its plugins and
//! `berth` binary in DIR) as a third implementation, `berth (before)`, to
//! compare, floor, portmap, cri, bandwidth and reconcile, in the same
//! rounds as the others, with its figures over berth's in the tables.
//!
//! The report (report.rs) is printed as tables for people (print.rs), as
//! JSON (`--json`) or as Markdown tables for docs/results/ (`--markdown`,
//! markdown.rs; `scripts/bench-table` writes them there).
//!
//! Everything is cleaned up at the end: DELs (which remove the plugins'
//! firewall rules), namespaces, the bridges (`ip link del`), temp dirs.
//! nftables is left to the plugins. (`reconcile` deletes its private host
//! namespace instead, which takes its bridge, veths and ruleset along.)

mod args;
mod bandwidth;
mod cluster;
mod compare;
mod concurrent;
mod cri;
mod engine;
mod etcd;
mod exec;
mod floor;
mod host;
mod markdown;
mod overlay;
mod portmap;
mod print;
mod reconcile;
mod report;
mod stats;
mod sys;

use anyhow::{bail, Result};

use crate::args::parse_args;
use crate::compare::compare;
use crate::concurrent::concurrent;
use crate::exec::Impl;
use crate::floor::{del_in_place, first_last, floor, FIRST_LAST_CONTAINERS, FLOOR_BRIDGE_PORTS};
use crate::print::print_tables;
use crate::report::{split, Config, Report};

fn main() {
    match real_main() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Ok(false) when a part failed (the report says which).
fn real_main() -> Result<bool> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // --help: the help on stdout, status 0; a usage error: status 2.
    let args = parse_args(&argv).unwrap_or_else(|e| e.exit());
    if !sys::is_root() {
        bail!("must run as root (creates namespaces, bridges and firewall rules)");
    }
    if args.compare || args.concurrent {
        Impl::berth(&args.berth_dir).check()?;
    }
    if args.compare && !args.no_ref {
        Impl::reference(&args.ref_dir).check()?;
    }
    // For the Markdown's heading lines: the day the run started.
    let started = markdown::Run::now(&argv);

    let mut taken = Vec::new();
    let mut report = Report::new(Config {
        cni_path_berth: args.berth_dir.clone(),
        cni_path_ref: (!args.no_ref).then(|| args.ref_dir.clone()),
        n: args.ns.clone(),
        cni_version: args.cni_version.clone(),
        network: "bridge + IPAM, isGateway, ipMasq, IPv4 /16 + IPv6 /64, default routes",
        warmup: "compare: 1 container per implementation on its own network first, not counted",
    });
    let mut ok = true;
    if args.compare {
        let rows = compare(&args, &mut taken);
        ok &= rows.iter().all(|r| r.ok());
        report.compare = Some(rows);
    }
    if args.floor {
        eprintln!("floor: {} veth deletions", args.floor_reps);
        (report.floor, report.floor_error) = split(floor(args.floor_reps));
        ok &= report.floor_error.is_none();
    }
    if args.floor {
        eprintln!("floor: berth DEL vs deleting the same veth, {FLOOR_BRIDGE_PORTS} containers");
        let berth = Impl::berth(&args.berth_dir);
        (report.del_in_place, report.del_in_place_error) =
            split(del_in_place(&args, &berth, &mut taken));
        ok &= report.del_in_place_error.is_none();
        if let Some(dir) = &args.before_dir {
            let before = Impl::before(dir);
            eprintln!(
                "floor: {} DEL vs deleting the same veth, {FLOOR_BRIDGE_PORTS} containers",
                before.display()
            );
            (report.del_in_place_before, report.del_in_place_before_error) = split(
                before
                    .check()
                    .and_then(|()| del_in_place(&args, &before, &mut taken)),
            );
            ok &= report.del_in_place_before_error.is_none();
        }
        eprintln!(
            "floor: a network's first ADD and last DEL, {} networks of {FIRST_LAST_CONTAINERS} containers per build and case",
            args.floor_reps
        );
        (report.first_last, report.first_last_error) = split(first_last(&args, args.floor_reps));
        ok &= report.first_last_error.is_none();
    }
    if args.concurrent {
        (report.concurrent, report.concurrent_error) = split(concurrent(&args, &mut taken));
        ok &= report.concurrent.as_ref().is_some_and(|c| c.ok);
    }
    if args.host {
        (report.host, report.host_error) = split(host::host_modes(
            &args.berth_dir,
            &args.ref_dir,
            args.host_reps,
        ));
        ok &= report.host_error.is_none();
    }
    if args.portmap {
        (report.portmap, report.portmap_error) = split(portmap::portmap_levels(
            &args.berth_dir,
            args.before_dir.as_deref(),
            &args.ref_dir,
            args.portmap_reps,
        ));
        ok &= report.portmap_error.is_none();
    }
    if args.volumes {
        (report.volumes, report.volumes_error) = split(engine::engine(
            &args.berth_dir,
            args.volume_reps,
            args.docker_reps,
        ));
        ok &= report.volumes_error.is_none();
    }
    if args.overlay {
        (report.overlay, report.overlay_error) = split(overlay::overlay(
            &args.berth_dir,
            args.overlay_nodes,
            args.iperf_secs,
            args.iperf_reps,
        ));
        ok &= report.overlay.as_ref().is_some_and(|o| o.ok());
    }
    if args.cri {
        (report.cri, report.cri_error) = split(cri::cri(
            &args.berth_dir,
            args.before_dir.as_deref(),
            &args.ref_dir,
            args.cri_pods,
        ));
        ok &= report.cri_error.is_none();
    }
    if args.reconcile {
        (report.reconcile, report.reconcile_error) = split(reconcile::reconcile(
            &args.berth_dir,
            args.before_dir.as_deref(),
            args.reconcile_containers,
            args.reconcile_flushes,
            &args.cni_version,
        ));
        ok &= report.reconcile.as_ref().is_some_and(|r| r.ok());
    }
    if args.etcd {
        (report.etcd, report.etcd_error) = split(etcd::etcd(&args.berth_dir, args.etcd_containers));
        ok &= report.etcd_error.is_none();
    }
    if args.bandwidth {
        (report.bandwidth, report.bandwidth_error) = split(bandwidth::bandwidth(
            &args.berth_dir,
            args.before_dir.as_deref(),
            &args.ref_dir,
            &args.cni_version,
            &args.bandwidth_levels,
            args.bandwidth_reps,
            args.bandwidth_secs,
        ));
        ok &= report.bandwidth.as_ref().is_some_and(|b| b.ok());
    }
    if args.cluster {
        (report.cluster, report.cluster_error) = split(cluster::cluster(&args));
        ok &= report.cluster.as_ref().is_some_and(|c| c.ok());
    }
    report.ok = ok;
    if args.json {
        println!("{}", report.to_json()?);
    } else if args.markdown {
        print!("{}", markdown::tables(&report, &args, &started));
    } else {
        print_tables(&report);
    }
    Ok(ok)
}
