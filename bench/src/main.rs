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
//!   cost of running `ip` itself (`ip link show lo`).
//! * `concurrent` — K (64) ADDs at once on one berth network: all must
//!   succeed with no address handed out twice; then K DELs at once.
//! * `host` — berth-host's none, macvlan and device modes against
//!   `loopback`, `macvlan` and `host-device` (see host.rs).
//! * `portmap` — one more container's published ports with 0, 1000 and
//!   5000 mappings installed, berth-portmap against `portmap` (see
//!   portmap.rs).
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
//!
//! Everything is cleaned up at the end: DELs (which remove the plugins'
//! firewall rules), namespaces, the bridges (`ip link del`), temp dirs.
//! nftables is left to the plugins.

mod args;
mod compare;
mod concurrent;
mod cri;
mod engine;
mod exec;
mod floor;
mod host;
mod overlay;
mod portmap;
mod print;
mod stats;
mod sys;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::args::parse_args;
use crate::compare::compare;
use crate::concurrent::concurrent;
use crate::exec::Impl;
use crate::floor::{del_in_place, floor, FLOOR_BRIDGE_PORTS};
use crate::print::print_tables;

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

    let mut taken = Vec::new();
    let mut report = json!({
        "config": {
            "cni_path_berth": args.berth_dir,
            "cni_path_ref": if args.no_ref { Value::Null } else { json!(args.ref_dir) },
            "n": args.ns,
            "cni_version": args.cni_version,
            "network": "bridge + IPAM, isGateway, ipMasq, IPv4 /16 + IPv6 /64, default routes",
            "warmup": "compare: 1 container per implementation on its own network first, not counted",
        }
    });
    let mut ok = true;
    if args.compare {
        let rows = compare(&args, &mut taken);
        ok &= rows
            .iter()
            .all(|r| r["berth"]["error"].is_null() && r["ref"]["error"].is_null());
        report["compare"] = Value::Array(rows);
    }
    if args.floor {
        eprintln!("floor: {} veth deletions", args.floor_reps);
        match floor(args.floor_reps) {
            Ok(v) => report["floor"] = v,
            Err(e) => {
                ok = false;
                report["floor_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.floor {
        eprintln!("floor: berth DEL vs deleting the same veth, {FLOOR_BRIDGE_PORTS} containers");
        match del_in_place(&args, &mut taken) {
            Ok(v) => report["del_in_place"] = v,
            Err(e) => {
                ok = false;
                report["del_in_place_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.concurrent {
        match concurrent(&args, &mut taken) {
            Ok(v) => {
                ok &= v["ok"] == true;
                report["concurrent"] = v;
            }
            Err(e) => {
                ok = false;
                report["concurrent_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.host {
        match host::host_modes(&args.berth_dir, &args.ref_dir, args.host_reps) {
            Ok(v) => report["host"] = v,
            Err(e) => {
                ok = false;
                report["host_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.portmap {
        match portmap::portmap_levels(&args.berth_dir, &args.ref_dir, args.portmap_reps) {
            Ok(v) => report["portmap"] = v,
            Err(e) => {
                ok = false;
                report["portmap_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.volumes {
        match engine::engine(&args.berth_dir, args.volume_reps, args.docker_reps) {
            Ok(v) => report["volumes"] = v,
            Err(e) => {
                ok = false;
                report["volumes_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.overlay {
        match overlay::overlay(
            &args.berth_dir,
            args.overlay_nodes,
            args.iperf_secs,
            args.iperf_reps,
        ) {
            Ok(v) => {
                ok &= overlay::ok(&v);
                report["overlay"] = v;
            }
            Err(e) => {
                ok = false;
                report["overlay_error"] = json!(format!("{e:#}"));
            }
        }
    }
    if args.cri {
        match cri::cri(&args.berth_dir, &args.ref_dir, args.cri_pods) {
            Ok(v) => report["cri"] = v,
            Err(e) => {
                ok = false;
                report["cri_error"] = json!(format!("{e:#}"));
            }
        }
    }
    report["ok"] = json!(ok);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(ok)
}
