//! `--markdown`: the report as Markdown, one block per part that ran, in
//! the order of `--only`'s list, for docs/results/ (scripts/bench-table
//! writes each block between its part's markers there).
//!
//! A block starts with its heading line, which names the part, the date,
//! the machine and the command:
//!
//! ```text
//! `host`, measured 2026-12-02 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only host`; 30 containers per side, medians:
//! ```
//!
//! and runs to the next heading line: its table (overlay and compare with
//! N ≥ 200: two), a line or two of what the table does not hold, and any
//! failure as a `- FAILED ...` item. scripts/bench-table finds the blocks by
//! [`HEADING`]: a line that starts with a part's name in backticks
//! followed by it.

use std::fmt::Write as _;

use crate::args::Args;
use crate::exec::BEFORE;
use crate::print::{fx, fx2, pct};
use crate::report::{
    Bandwidth, Cluster, CompareRow, Concurrent, Cri, CriTimes, DelInPlace, Engine, Etcd, FirstLast,
    Floor, FlowReport, FlowRow, HostRow, Overlay, PortmapRow, Reconcile, Report,
};

/// What follows the part's name on a heading line.
pub(crate) const HEADING: &str = ", measured ";

/// When, where and how the bench ran.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// YYYY-MM-DD, UTC.
    pub(crate) date: String,
    pub(crate) cores: usize,
    /// The running kernel's release.
    pub(crate) kernel: String,
    /// `berth-bench` and the arguments, as a shell would take them.
    pub(crate) command: String,
}

impl Run {
    /// Now, on this machine, with the arguments after the program name.
    pub(crate) fn now(argv: &[String]) -> Run {
        Run {
            date: date(std::time::SystemTime::now()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".into(), |s| s.trim().to_string()),
            command: command(argv),
        }
    }

    /// The heading line of `part`'s block, ending in `what` and a colon.
    fn heading(&self, part: &str, what: &str) -> String {
        format!(
            "`{part}`{HEADING}{} ({} core{}, Linux {}) by `{}`; {what}:",
            self.date,
            self.cores,
            if self.cores == 1 { "" } else { "s" },
            self.kernel,
            self.command
        )
    }
}

/// The UTC date of `t`, as YYYY-MM-DD.
pub(crate) fn date(t: std::time::SystemTime) -> String {
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate("YYYY-MM-DD".len());
    s
}

/// `berth-bench ARGS`, each argument quoted for a POSIX shell if it needs
/// it.
pub(crate) fn command(argv: &[String]) -> String {
    let args = shell_words::join(argv);
    if args.is_empty() {
        "berth-bench".into()
    } else {
        format!("berth-bench {args}")
    }
}

/// A time in ms, `-` if there is none.
fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2} ms"))
}

/// A difference in ms with its sign, `-` if there is none.
fn plus_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:+.2} ms"))
}

/// Table rows from cells.
fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// A failure as a list item, after a blank line unless it follows one.
fn failed(out: &mut String, what: &str, e: &Option<String>) {
    if let Some(e) = e {
        let last = out.trim_end_matches('\n').rsplit('\n').next().unwrap_or("");
        if !out.ends_with("\n\n") && !last.starts_with("- FAILED") {
            out.push('\n');
        }
        let _ = writeln!(out, "- FAILED {what}: {}", e.replace('\n', " "));
    }
}

/// `n` and `thing`, plural unless n is 1.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// The Markdown of every part that ran, in the order of [`crate::args::PARTS`].
pub(crate) fn tables(report: &Report, args: &Args, run: &Run) -> String {
    let mut blocks = Vec::new();
    if let Some(rows) = &report.compare {
        blocks.push(compare(run, rows));
    }
    if args.floor {
        blocks.push(floor(run, report, args));
    }
    if args.concurrent {
        let mut b = run.heading(
            "concurrent",
            &format!(
                "{} at once on one berth network, then as many DELs at once",
                count(args.concurrency, "ADD")
            ),
        );
        b.push_str("\n\n");
        if let Some(c) = &report.concurrent {
            concurrent(&mut b, c);
        }
        failed(&mut b, "concurrent", &report.concurrent_error);
        blocks.push(b);
    }
    if args.host {
        let mut b = run.heading(
            "host",
            &format!("{} per side, medians", count(args.host_reps, "container")),
        );
        b.push_str("\n\n");
        if let Some(rows) = &report.host {
            host(&mut b, rows);
        }
        failed(&mut b, "host", &report.host_error);
        blocks.push(b);
    }
    if args.portmap {
        let mut b = run.heading(
            "portmap",
            &format!(
                "{} per level (2 mappings each), medians",
                count(args.portmap_reps, "container")
            ),
        );
        b.push_str("\n\n");
        if let Some(rows) = &report.portmap {
            portmap(&mut b, rows);
        }
        failed(&mut b, "portmap", &report.portmap_error);
        blocks.push(b);
    }
    if args.volumes {
        let mut b = run.heading("engine", "berthd under a private Docker engine, medians");
        b.push_str("\n\n");
        if let Some(e) = &report.volumes {
            engine(&mut b, e);
        }
        failed(&mut b, "engine", &report.volumes_error);
        blocks.push(b);
    }
    if args.overlay {
        let mut b = run.heading(
            "overlay",
            &format!(
                "iperf3 TCP, {} x {} s per path, alternating, and the agent's convergence with etcd and {}",
                count(args.iperf_reps, "run"),
                args.iperf_secs,
                count(args.overlay_nodes, "node")
            ),
        );
        b.push_str("\n\n");
        if let Some(o) = &report.overlay {
            overlay(&mut b, o);
        }
        failed(&mut b, "overlay", &report.overlay_error);
        blocks.push(b);
    }
    if args.cri {
        let mut b = run.heading(
            "cri",
            &format!(
                "{} per implementation under containerd {}'s CRI (one hostPort each, beside a resident pod), medians",
                count(args.cri_pods, "pod"),
                report
                    .cri
                    .as_ref()
                    .and_then(|c| c.containerd.as_deref())
                    .unwrap_or("?")
            ),
        );
        b.push_str("\n\n");
        if let Some(c) = &report.cri {
            cri(&mut b, c);
        }
        failed(&mut b, "cri", &report.cri_error);
        blocks.push(b);
    }
    if args.reconcile {
        let mut b = run.heading(
            "reconcile",
            &format!(
                "`berth watch` with {} of 2 published ports each (TCP and UDP), `nft flush ruleset` {} 1 s apart, then the watcher's CPU",
                count(args.reconcile_containers, "container"),
                count(args.reconcile_flushes, "time"),
            ),
        );
        b.push_str("\n\n");
        if let Some(r) = &report.reconcile {
            reconcile(&mut b, r);
        }
        failed(&mut b, "reconcile", &report.reconcile_error);
        blocks.push(b);
    }
    if args.etcd {
        let mut b = run.heading(
            "etcd",
            &format!(
                "berth-overlay ADD, DEL and STATUS by store, {} each (one exec each, alternating round by round), against private etcd {} members, medians and p90",
                count(args.etcd_containers, "container"),
                report
                    .etcd
                    .as_ref()
                    .and_then(|e| e.etcd_version.as_deref())
                    .unwrap_or("?")
            ),
        );
        b.push_str("\n\n");
        if let Some(e) = &report.etcd {
            etcd(&mut b, e);
        }
        failed(&mut b, "etcd", &report.etcd_error);
        blocks.push(b);
    }
    if args.bandwidth {
        let mut b = run.heading(
            "bandwidth",
            &format!(
                "berth-bridge + berth-bandwidth against `bridge` + `bandwidth`, chained (one exec per plugin), {} per level, medians and p90; then the rates both hold",
                count(args.bandwidth_reps, "container")
            ),
        );
        b.push_str("\n\n");
        if let Some(bw) = &report.bandwidth {
            bandwidth(&mut b, bw);
        }
        failed(&mut b, "bandwidth", &report.bandwidth_error);
        blocks.push(b);
    }
    if args.cluster {
        let mut b = run.heading(
            "cluster",
            &format!(
                "nodes on one underlay running `berth node` on deploy/kubernetes/berth.yaml's conflist, leases in etcd {} over TLS; iperf3 TCP {} x {} s per path, alternating; {} per conflist under containerd's CRI; {}; the agent with {} simulated nodes' leases and {}; medians",
                report
                    .cluster
                    .as_ref()
                    .and_then(|c| c.etcd.as_deref())
                    .unwrap_or("?"),
                count(args.cluster_iperf_reps, "run"),
                args.cluster_iperf_secs,
                count(args.cluster_pods, "pod"),
                count(args.cluster_joins, "join"),
                args.cluster_nodes,
                count(args.cluster_node_pods, "pod"),
            ),
        );
        b.push_str("\n\n");
        if let Some(c) = &report.cluster {
            cluster(&mut b, c);
        }
        failed(&mut b, "cluster", &report.cluster_error);
        blocks.push(b);
    }
    let mut out = String::new();
    for b in blocks {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(b.trim_end());
        out.push('\n');
    }
    out
}

fn compare(run: &Run, rows: &[CompareRow]) -> String {
    let mut b = run.heading(
        "compare",
        "per container (one exec of the bridge plugin each), medians",
    );
    b.push_str("\n\n");
    let three = rows.iter().any(|r| r.before.is_some());
    if three {
        let _ = writeln!(
            b,
            "| containers | berth ADD | {BEFORE} ADD | before/berth | reference ADD | ratio | berth DEL | {BEFORE} DEL | before/berth | reference DEL | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    } else {
        b.push_str(
            "| containers | berth ADD | reference ADD | ratio | berth DEL | reference DEL | ratio |\n",
        );
        b.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    for r in rows {
        let reference = r.reference.as_ref();
        let old = r.before.as_ref();
        let mut cells = vec![r.n.to_string()];
        // One verb's columns: berth, (before, before/berth,) reference, ratio.
        let mut verb = |berth, before, before_ratio, refm, ref_ratio| {
            cells.push(ms(berth));
            if three {
                cells.extend([ms(before), fx2(before_ratio)]);
            }
            cells.extend([ms(refm), fx(ref_ratio)]);
        };
        verb(
            r.berth.add_median_ms,
            old.and_then(|s| s.add_median_ms),
            r.add_ratio_before_over_berth,
            reference.and_then(|s| s.add_median_ms),
            r.add_ratio_ref_over_berth,
        );
        verb(
            r.berth.del_median_ms,
            old.and_then(|s| s.del_median_ms),
            r.del_ratio_before_over_berth,
            reference.and_then(|s| s.del_median_ms),
            r.del_ratio_ref_over_berth,
        );
        row(&mut b, &cells);
    }
    let growth: Vec<&CompareRow> = rows.iter().filter(|r| r.n >= 200).collect();
    if !growth.is_empty() {
        b.push_str("\nADD, the first 100 containers against the last 100, medians:\n\n");
        b.push_str("| containers | plugins | first 100 | last 100 | last/first |\n");
        b.push_str("|---:|---|---:|---:|---:|\n");
        for r in growth {
            for (imp, s) in r.series() {
                row(
                    &mut b,
                    &[
                        r.n.to_string(),
                        if imp == "ref" { "reference" } else { imp }.into(),
                        ms(s.add_first100_median_ms),
                        ms(s.add_last100_median_ms),
                        fx2(s.add_growth()),
                    ],
                );
            }
        }
    }
    for r in rows {
        for (imp, s) in r.series() {
            failed(&mut b, &format!("{imp} N={}", r.n), &s.error);
        }
    }
    b
}

fn floor(run: &Run, report: &Report, args: &Args) -> String {
    let mut b = run.heading(
        "floor",
        "the kernel's veth deletion (one RTM_DELLINK and its ack), the floor under any DEL, medians",
    );
    b.push_str("\n\n| deletion | median |\n|---|---:|\n");
    if let Some(fl) = &report.floor {
        floor_rows(&mut b, fl, args.floor_reps);
    }
    if let Some(d) = &report.del_in_place {
        del_in_place_rows(&mut b, d);
    }
    if let Some(d) = &report.del_in_place_before {
        del_in_place_rows(&mut b, d);
    }
    failed(&mut b, "floor", &report.floor_error);
    failed(&mut b, "del_in_place", &report.del_in_place_error);
    failed(
        &mut b,
        &format!("del_in_place, {BEFORE}"),
        &report.del_in_place_before_error,
    );
    if let Some(fl) = &report.first_last {
        first_last(&mut b, fl);
    }
    failed(&mut b, "first_last", &report.first_last_error);
    b
}

/// A network's first ADD and last DEL against the usual ones.
fn first_last(b: &mut String, fl: &FirstLast) {
    let _ = writeln!(
        b,
        "\nA network's first ADD (it makes the network's bridge and firewall rules) and last DEL (it removes the rules), berth-bridge + berth-ipam as in `compare`, {} of {} per build and case (the first, {} usual ADDs and DELs, the last), builds alternating, each in a private host namespace that holds another berth network or nothing, medians (target: no more than {} ms above a usual ADD or DEL):\n",
        count(fl.networks, "network"),
        count(fl.containers, "container"),
        fl.containers.saturating_sub(2) + 1,
        fl.target_ms
    );
    b.push_str("| build | host holds | first ADD | usual ADD | first − usual | last DEL | usual DEL | last − usual | ≤ target |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &fl.rows {
        row(
            b,
            &[
                r.build.to_string(),
                r.case.to_string(),
                ms(r.first_add.median_ms),
                ms(r.usual_add.median_ms),
                plus_ms(r.add_over_usual_ms),
                ms(r.last_del.median_ms),
                ms(r.usual_del.median_ms),
                plus_ms(r.del_over_usual_ms),
                crate::print::pass(r.pass(fl.target_ms)).into(),
            ],
        );
    }
}

fn floor_rows(b: &mut String, fl: &Floor, reps: usize) {
    for (what, v) in [
        (
            format!(
                "a veth, both ends in one netns ({})",
                count(reps, "deletion")
            ),
            fl.veth_del_same_netns_ms,
        ),
        (
            "a veth, its peer in another netns".into(),
            fl.veth_del_peer_in_other_netns_ms,
        ),
        (
            format!(
                "a bridge port ({} other ports), its peer up in another netns",
                fl.bridge_ports
            ),
            fl.veth_del_bridge_port_ms,
        ),
    ] {
        row(b, &[what, ms(v)]);
    }
}

fn del_in_place_rows(b: &mut String, d: &DelInPlace) {
    // berth's rows as they always were; the previous build's say so.
    let (containers, whose) = if d.build == "berth" {
        ("berth container", "berth's".to_string())
    } else {
        ("container", format!("{}'s", d.build))
    };
    let of = if d.build == "berth" {
        String::new()
    } else {
        format!(" of {}", d.build)
    };
    row(
        b,
        &[
            format!(
                "a container's host veth, {}{of} on one network (every other one)",
                count(d.containers, containers)
            ),
            ms(d.kernel_veth_del_ms),
        ],
    );
    row(
        b,
        &[
            format!(
                "{whose} whole DEL of the others (process start included): {} the kernel's",
                fx(d.berth_over_kernel)
            ),
            ms(d.berth_del_ms),
        ],
    );
}

fn concurrent(b: &mut String, c: &Concurrent) {
    b.push_str("| | ADD | DEL |\n|---|---:|---:|\n");
    let k = c.containers;
    row(
        b,
        &[
            "succeeded".into(),
            format!("{} of {k}", c.add_succeeded),
            format!("{} of {k}", c.del_succeeded),
        ],
    );
    row(
        b,
        &[
            "wall time, all of them".into(),
            ms(Some(c.add_wall_ms)),
            ms(Some(c.del_wall_ms)),
        ],
    );
    row(
        b,
        &["median".into(), ms(c.add_median_ms), ms(c.del_median_ms)],
    );
    row(b, &["max".into(), ms(c.add_max_ms), ms(c.del_max_ms)]);
    let _ = writeln!(
        b,
        "\n{} distinct addresses, {} given twice: {}.",
        c.distinct_addresses,
        match c.duplicate_addresses.len() {
            0 => "none".to_string(),
            n => n.to_string(),
        },
        if c.ok { "OK" } else { "FAILED" }
    );
    for (what, list) in [
        ("ADD", &c.add_failures),
        ("duplicate", &c.duplicate_addresses),
        ("DEL", &c.del_failures),
    ] {
        for e in list.iter().take(10) {
            failed(b, what, &Some(e.clone()));
        }
    }
}

fn host(b: &mut String, rows: &[HostRow]) {
    b.push_str(
        "| mode | berth ADD | reference ADD | ratio | berth DEL | reference DEL | ratio |\n",
    );
    b.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        row(
            b,
            &[
                format!("`{}` / `{}`", r.mode, r.reference.plugin),
                ms(r.berth.add_ms),
                ms(r.reference.add_ms),
                fx(r.add_ratio),
                ms(r.berth.del_ms),
                ms(r.reference.del_ms),
                fx(r.del_ratio),
            ],
        );
    }
}

fn portmap(b: &mut String, rows: &[PortmapRow]) {
    if rows.iter().any(|r| r.before.is_some()) {
        portmap_three(b, rows);
    } else {
        b.push_str("| installed | berth ADD | growth | berth DEL | growth | reference ADD | growth | reference DEL | growth |\n");
        b.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in rows {
            let (s, rf) = (&r.berth, &r.reference);
            row(
                b,
                &[
                    r.installed_mappings.to_string(),
                    ms(s.add_ms),
                    fx2(s.add_growth),
                    ms(s.del_ms),
                    fx2(s.del_growth),
                    ms(rf.add_ms),
                    fx2(rf.add_growth),
                    ms(rf.del_ms),
                    fx2(rf.del_growth),
                ],
            );
        }
        b.push_str("\n(growth: the cost at that level over the cost with none installed.)\n");
    }
    portmap_firewall(b, rows);
}

/// The portmap table with berth's previous build: a row per level and
/// implementation, each with its cost over berth's.
fn portmap_three(b: &mut String, rows: &[PortmapRow]) {
    b.push_str(
        "| installed | plugin | ADD | growth | over berth's | DEL | growth | over berth's |\n",
    );
    b.push_str("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let rf = &r.reference;
        let mut sides = vec![(
            "berth".to_string(),
            [r.berth.add_ms, r.berth.add_growth, None],
            [r.berth.del_ms, r.berth.del_growth, None],
        )];
        if let Some(s) = &r.before {
            sides.push((
                BEFORE.to_string(),
                [s.add_ms, s.add_growth, r.add_ratio_before],
                [s.del_ms, s.del_growth, r.del_ratio_before],
            ));
        }
        sides.push((
            format!("reference ({})", rf.plugin),
            [rf.add_ms, rf.add_growth, r.add_ratio],
            [rf.del_ms, rf.del_growth, r.del_ratio],
        ));
        for (name, add, del) in sides {
            row(
                b,
                &[
                    r.installed_mappings.to_string(),
                    name,
                    ms(add[0]),
                    fx2(add[1]),
                    fx2(add[2]),
                    ms(del[0]),
                    fx2(del[1]),
                    fx2(del[2]),
                ],
            );
        }
    }
    b.push_str("\n(growth: the cost at that level over the cost with none installed; over berth's: the median over berth's at the same level, in the same rounds.)\n");
}

/// The firewall part of berth's ADD and DEL, timed in process.
fn portmap_firewall(b: &mut String, rows: &[PortmapRow]) {
    let Some(target) = rows.first().map(|r| r.firewall.target_ms) else {
        return;
    };
    let _ = writeln!(
        b,
        "\nThe firewall part of berth's ADD and DEL alone (target < {target} ms each): the one nf_tables batch the common ADD commits (`add_elements_in`) and the one the common DEL commits (`remove_elements_in`), timed in process in a namespace of its own holding the level's mappings, with the elements berth-portmap makes for the measured container, in the same rounds, medians and p90:\n"
    );
    b.push_str("| installed | ADD batch | p90 | DEL batch | p90 | < target |\n|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let f = &r.firewall;
        row(
            b,
            &[
                r.installed_mappings.to_string(),
                ms(f.add.median_ms),
                ms(f.add.p90_ms),
                ms(f.del.median_ms),
                ms(f.del.p90_ms),
                crate::print::pass(f.pass()).into(),
            ],
        );
    }
    if let Some((first, last)) = rows.iter().find_map(|r| {
        Some((
            r.firewall.first_add.as_ref()?,
            r.firewall.last_del.as_ref()?,
        ))
    }) {
        let _ = writeln!(
            b,
            "\nWith nothing published (what berth-portmap does at 0 installed, where each measured container is the first and the last): the first ADD's batch (the structure and the elements, `rebuild_in`) {} (p90 {}), the last DEL's (`unpublish_in`, then the empty table removed) {} (p90 {}).",
            ms(first.median_ms),
            ms(first.p90_ms),
            ms(last.median_ms),
            ms(last.p90_ms)
        );
    }
}

fn engine(b: &mut String, e: &Engine) {
    let (r, d, n) = (&e.round_trip, &e.docker, &e.network);
    let with_p99 = |m: Option<f64>, p: Option<f64>| format!("{} (p99 {})", ms(m), ms(p));
    b.push_str("| | berth | against | ratio |\n|---|---:|---:|---:|\n");
    row(
        b,
        &[
            format!(
                "Create + Mount + Unmount + Remove over the socket, {} managed volumes",
                r.volumes
            ),
            with_p99(r.managed_median_ms, r.managed_p99_ms),
            String::new(),
            String::new(),
        ],
    );
    row(
        b,
        &[
            format!(
                "the same, {} size-limited (8M) volumes, mkfs.ext4 included",
                r.volumes
            ),
            with_p99(r.sized_median_ms, r.sized_p99_ms),
            String::new(),
            String::new(),
        ],
    );
    row(
        b,
        &[
            format!(
                "`docker volume create` + `docker run --rm -v`, {} each: `-d berth` against `-d local`",
                d.volumes
            ),
            ms(d.berth_ms),
            ms(d.local_ms),
            fx2(d.berth_over_local),
        ],
    );
    row(
        b,
        &[
            format!(
                "`docker run --rm` on a network, {} each: berth against the engine's `bridge` driver",
                n.runs
            ),
            ms(n.berth_ms),
            ms(n.bridge_driver_ms),
            fx2(n.berth_over_bridge),
        ],
    );
}

fn overlay(b: &mut String, o: &Overlay) {
    if let Some(t) = &o.throughput {
        b.push_str(FLOW_HEAD);
        for FlowRow { what, flow, .. } in t.paths() {
            flow_row(b, what, flow);
        }
        let m = &t.mtu;
        let _ = writeln!(
            b,
            "\nberth over the hand-built path {} (target ≥ {:.2}): {}; over the raw VXLAN {} (a ceiling, not judged); no fragmentation: {}. MTU: underlay {}; berth eth0 {}, bridge {}, VXLAN {}; hand-built eth0 {}, bridge {}, VXLAN {}; raw VXLAN {}.",
            fx2(t.berth_over_hand_container),
            t.target_ratio,
            crate::print::pass(t.ratio_pass),
            fx2(t.berth_over_raw_vxlan),
            crate::print::pass(t.no_fragmentation),
            m.underlay,
            m.berth_eth0,
            m.berth_bridge,
            m.berth_vxlan,
            m.hand_eth0,
            m.hand_bridge,
            m.hand_vxlan,
            m.raw_vxlan
        );
    }
    failed(b, "overlay throughput", &o.throughput_error);
    if let Some(c) = &o.convergence {
        if o.throughput.is_some() || o.throughput_error.is_some() {
            b.push('\n');
        }
        let _ = writeln!(
            b,
            "The agent with etcd and {} simulated nodes (target < {:.0} ms each):\n",
            c.nodes, c.target_ms
        );
        b.push_str("| convergence | median | max | each | |\n|---|---:|---:|---|---|\n");
        row(
            b,
            &[
                format!("initial: agent start → {} onlink routes", c.nodes),
                ms(Some(c.initial_ms)),
                String::new(),
                String::new(),
                crate::print::pass(c.initial_pass).into(),
            ],
        );
        for j in c.churn() {
            let each: Vec<String> = j.samples.iter().map(|x| format!("{x:.1}")).collect();
            row(
                b,
                &[
                    j.label.trim().replace("->", "→"),
                    ms(j.median),
                    ms(j.max),
                    each.join(" "),
                    crate::print::pass(j.pass).into(),
                ],
            );
        }
        let _ = writeln!(
            b,
            "\nFDB entries with a dst on berth.77: {}, onlink routes: {}, live nodes: {}: {}. Records put beforehand in {}; agent VTEP {}.",
            c.fdb_entries_with_dst,
            c.onlink_routes,
            c.live_nodes,
            if c.fdb_matches_live_nodes { "OK" } else { "MISMATCH" },
            ms(Some(c.records_put_ms)),
            c.agent_vtep_address.as_deref().unwrap_or("-")
        );
    }
    failed(b, "overlay convergence", &o.convergence_error);
}

/// A path's row of a throughput table.
fn flow_row(b: &mut String, what: &str, p: &FlowReport) {
    let gbps: Vec<String> = p.gbps.iter().map(|g| format!("{g:.2}")).collect();
    let retr: Vec<String> = p.retransmits.iter().map(u64::to_string).collect();
    row(
        b,
        &[
            what.replace("->", "→"),
            p.median_gbps
                .map_or("-".into(), |g| format!("{g:.2} Gbit/s")),
            gbps.join(" "),
            retr.join(" "),
            format!("+{} / +{}", p.frag_creates, p.reasm_reqds),
        ],
    );
}

/// The throughput table's head.
const FLOW_HEAD: &str =
    "| path | median | runs | retransmits | FragCreates / ReasmReqds |\n|---|---:|---|---|---|\n";

fn cluster(b: &mut String, c: &Cluster) {
    let each = |v: &[f64]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        items.join(" ")
    };
    let load = crate::print::load;
    let _ = writeln!(
        b,
        "The machine's load average (1 min) when the part started: {}; when it ended: {}.\n",
        load(c.load_average[0]),
        load(c.load_average[1])
    );
    if let Some(t) = &c.throughput {
        b.push_str(FLOW_HEAD);
        for FlowRow { what, flow, .. } in t.paths() {
            flow_row(b, what, flow);
        }
        let _ = writeln!(
            b,
            "\nAcross nodes over the hand-built VXLAN path: {} (target ≥ {:.2}): {}; over the same node: {}; over the underlay: {}; no fragmentation: {}. MTU: underlay {}, VXLAN {}, pod eth0 {}.",
            fx2(t.cross_over_hand),
            t.target_ratio,
            crate::print::pass(t.ratio_pass),
            fx2(t.cross_over_same_node),
            fx2(t.cross_over_underlay),
            crate::print::pass(t.no_fragmentation),
            t.underlay_mtu,
            t.vxlan_mtu,
            t.pod_mtu
        );
    }
    failed(b, "cluster throughput", &c.throughput_error);
    if let Some(r) = &c.cri {
        b.push_str(&format!(
            "\nPods under containerd {}'s CRI, {} per conflist, alternating:\n\n",
            r.containerd.as_deref().unwrap_or("?"),
            r.pods
        ));
        b.push_str("| | cluster conflist, `berth node` running | single-node conflist | cluster/single | bench-cri.md (berth) |\n|---|---:|---:|---:|---:|\n");
        for (name, figure) in CriTimes::ROWS {
            let doc = match name {
                "RunPodSandbox" => ms(Some(r.doc_run_ms)),
                n if n.contains("CNI ADD") => ms(Some(r.doc_cni_add_ms)),
                _ => String::new(),
            };
            let name = match name.strip_prefix("  ") {
                Some(sub) => format!("&nbsp;&nbsp;{sub}"),
                None => name.to_string(),
            };
            row(
                b,
                &[
                    name,
                    ms(figure(&r.cluster.times)),
                    ms(figure(&r.single.times)),
                    fx2(figure(&r.ratio)),
                    doc,
                ],
            );
        }
        let _ = writeln!(
            b,
            "\nCNI ADD, the cluster conflist's over the single-node one's in this run: {} (target ≤ {:.2}): {}. The same conflists' plugins run straight in the same node namespaces ({} pods each, alternating, one exec per plugin, no containerd and no `loopback`), medians: cluster {}; single-node {}.",
            fx2(r.ratio.cni_add_ms),
            r.target_add_ratio,
            crate::print::pass(r.add_pass),
            r.straight_adds,
            r.cluster_chain.describe(),
            r.single_chain.describe()
        );
    }
    failed(b, "cluster cri", &c.cri_error);
    if let Some(j) = &c.join {
        let _ = writeln!(
            b,
            "\n{} new nodes, one after the other (target < {:.0} ms):\n",
            j.joins, j.target_ms
        );
        b.push_str("| from `berth node` starting on the new node | median | max | each | |\n|---|---:|---:|---|---|\n");
        row(
            b,
            &[
                "→ its pod answered a ping from a pod on another node (every 10 ms)".into(),
                ms(j.answer_median_ms),
                ms(j.answer_max_ms),
                each(&j.answer_ms),
                crate::print::pass(j.pass).into(),
            ],
        );
        row(
            b,
            &[
                "→ the pod's ADD returned (run right after the agent started)".into(),
                ms(j.add_median_ms),
                ms(j.add_ms.iter().copied().reduce(f64::max)),
                each(&j.add_ms),
                String::new(),
            ],
        );
        row(
            b,
            &[
                "→ the agent's /readyz answered 200".into(),
                ms(j.ready_median_ms),
                ms(j.ready_ms.iter().copied().reduce(f64::max)),
                each(&j.ready_ms),
                String::new(),
            ],
        );
    }
    failed(b, "cluster join", &c.join_error);
    if let Some(p) = &c.footprint {
        let _ = writeln!(
            b,
            "\n`berth node` with {} simulated nodes' leases and {} on its node:\n",
            p.nodes,
            count(p.pods, "pod")
        );
        b.push_str("| | CPU, share of one core | resident (VmRSS, most read) |\n|---|---:|---:|\n");
        row(
            b,
            &[
                format!("idle, {:.0} s", p.idle_secs),
                pct(p.idle_cpu_percent),
                format!("{:.1} MiB", p.idle_rss_mib),
            ],
        );
        row(
            b,
            &[
                format!(
                    "flush storm: {} `nft flush ruleset` in {:.1} s, until berth's tables were back",
                    p.storm_flushes, p.storm_secs
                ),
                pct(p.storm_cpu_percent),
                format!("{:.1} MiB", p.storm_rss_mib),
            ],
        );
        let _ = writeln!(
            b,
            "\nIdle CPU < {:.0}% of a core: {}; resident < {:.0} MiB: {} (VmHWM, the most it was ever resident: {:.1} MiB). After the storm's last flush berth's tables ({}) were back in {:.1} ms; the reconciler counted {} repairs during the storm. Setup (leases, the agent ready, the pods' ADDs): {:.1} s; the pods' ADDs, medians: {}.",
            p.idle_cpu_target_percent,
            crate::print::pass(p.idle_cpu_pass),
            p.rss_target_mib,
            crate::print::pass(p.rss_pass),
            p.peak_rss_mib,
            p.tables.join(", "),
            p.rules_back_ms,
            p.storm_repairs.map_or("?".into(), |r| r.to_string()),
            p.setup_secs,
            p.chain.describe()
        );
    }
    failed(b, "cluster footprint", &c.footprint_error);
}

fn cri(b: &mut String, c: &Cri) {
    let name = |name: &str| match name.strip_prefix("  ") {
        Some(sub) => format!("&nbsp;&nbsp;{sub}"),
        None => name.to_string(),
    };
    if let (Some(before), Some(rb), Some(rrb)) =
        (&c.before, &c.ratio_before, &c.ratio_ref_over_before)
    {
        let _ = writeln!(
            b,
            "| | berth | {BEFORE} | reference | ref/berth | before/berth | ref/before |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for (n, figure) in CriTimes::ROWS {
            row(
                b,
                &[
                    name(n),
                    ms(figure(&c.berth.times)),
                    ms(figure(&before.times)),
                    ms(figure(&c.reference.times)),
                    fx(figure(&c.ratio)),
                    fx2(figure(rb)),
                    fx(figure(rrb)),
                ],
            );
        }
        return;
    }
    b.push_str("| | berth | reference | ref/berth |\n|---|---:|---:|---:|\n");
    for (n, figure) in CriTimes::ROWS {
        row(
            b,
            &[
                name(n),
                ms(figure(&c.berth.times)),
                ms(figure(&c.reference.times)),
                fx(figure(&c.ratio)),
            ],
        );
    }
}

fn reconcile(b: &mut String, r: &Reconcile) {
    if let Some(old) = &r.before {
        return reconcile_three(b, r, old);
    }
    // `count` adds an "s"; these take "es".
    let each = |v: &[f64]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        items.join(" ")
    };
    b.push_str("| | median | max | each |\n|---|---:|---:|---|\n");
    for (what, median, max, v) in reconcile_rows(r) {
        row(b, &[what, ms(median), ms(max), each(v)]);
    }
    b.push_str("\n| the watcher's CPU | share of one core |\n|---|---:|\n");
    for (what, v) in reconcile_cpu(r) {
        row(b, &[what, pct(v)]);
    }
    let _ = writeln!(b, "\n{}", reconcile_after(r));
    for e in &r.errors {
        failed(b, "reconcile", &Some(e.clone()));
    }
}

/// `count` with "es".
fn es(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "es" })
}

/// A row of the reconcile table: what, median, max, each.
type ReconcileRow<'a> = (String, Option<f64>, Option<f64>, &'a [f64]);

/// The reconcile table's rows.
fn reconcile_rows(r: &Reconcile) -> [ReconcileRow<'_>; 4] {
    [
        (
            format!(
                "`nft flush ruleset` returned → the published port answered again from outside ({} of {})",
                r.answer_ms.len(),
                es(r.flushes, "flush")
            ),
            r.answer_median_ms,
            r.answer_max_ms,
            &r.answer_ms,
        ),
        (
            "the watcher's own figure (its log): change seen → end of the pass that put the rules back".into(),
            r.logged_median_ms,
            r.logged_max_ms,
            &r.logged_ms,
        ),
        (
            format!(
                "`berth status -o json` over the {} and {} (process start included)",
                count(r.containers, "container"),
                count(r.mappings, "published port")
            ),
            r.status_median_ms,
            r.status_max_ms,
            &r.status_ms,
        ),
        (
            "`berth metrics` over the same (process start included)".into(),
            r.metrics_median_ms,
            r.metrics_max_ms,
            &r.metrics_ms,
        ),
    ]
}

/// The watcher's CPU rows: what, share of one core.
fn reconcile_cpu(r: &Reconcile) -> [(String, f64); 2] {
    [
        (format!("idle, {:.0} s", r.idle_secs), r.idle_cpu_percent),
        (
            format!(
                "flush storm: {} in {:.1} s, until the port answered again ({} put the ports back)",
                es(r.storm_flushes, "flush"),
                r.storm_secs,
                es(r.storm_port_repairs, "pass")
            ),
            r.storm_cpu_percent,
        ),
    ]
}

/// The line after the tables: the storm's end, the setup, the first pass.
fn reconcile_after(r: &Reconcile) -> String {
    format!(
        "After the storm the port answered again in {} (limit {:.0} ms): {}. {} and {} installed in {:.1} s; the watcher's first pass (nothing to repair) took {}.",
        ms(r.after_storm_answer_ms),
        r.after_storm_limit_ms,
        crate::print::pass(r.after_storm_pass),
        count(r.containers, "container"),
        count(r.mappings, "published port"),
        r.setup_secs,
        ms(Some(r.first_pass_ms))
    )
}

/// The reconcile tables with berth's previous build: a row per figure and
/// build, each with its median over berth's.
fn reconcile_three(b: &mut String, r: &Reconcile, old: &Reconcile) {
    let each = |v: &[f64]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        items.join(" ")
    };
    b.push_str("| | build | median | max | over berth's | each |\n|---|---|---:|---:|---:|---|\n");
    for ((what, median, max, v), (_, old_median, old_max, old_v)) in
        reconcile_rows(r).into_iter().zip(reconcile_rows(old))
    {
        row(
            b,
            &[
                what,
                "berth".into(),
                ms(median),
                ms(max),
                String::new(),
                each(v),
            ],
        );
        row(
            b,
            &[
                String::new(),
                BEFORE.into(),
                ms(old_median),
                ms(old_max),
                fx2(crate::stats::ratio(old_median, median)),
                each(old_v),
            ],
        );
    }
    let _ = writeln!(
        b,
        "\n| the watcher's CPU | berth | {BEFORE} |\n|---|---:|---:|"
    );
    for ((what, v), (old_what, old_v)) in reconcile_cpu(r).into_iter().zip(reconcile_cpu(old)) {
        let what = if what == old_what {
            what
        } else {
            format!(
                "{what}; {BEFORE}: {}",
                old_what.replace("flush storm: ", "")
            )
        };
        row(b, &[what, pct(v), pct(old_v)]);
    }
    let _ = writeln!(
        b,
        "\nberth: {}\n\n{BEFORE} (its own host namespace, containers and watcher; flushes alternating with berth's, the idle CPU over the same 10 s): {}",
        reconcile_after(r),
        reconcile_after(old)
    );
    for e in &r.errors {
        failed(b, "reconcile", &Some(e.clone()));
    }
    for e in &old.errors {
        failed(b, &format!("reconcile, {BEFORE}"), &Some(e.clone()));
    }
}

fn etcd(b: &mut String, e: &Etcd) {
    let _ = writeln!(
        b,
        "| store | first ADD | ADD median | ADD p90 | ADD over static | DEL median | DEL p90 | DEL over static | STATUS median | STATUS over static | ADD < {:.0} ms |",
        e.target_ms
    );
    b.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for s in &e.stores {
        row(
            b,
            &[
                format!("`{}`: {}", s.store, s.what),
                ms(Some(s.first_add_ms)),
                ms(s.add_median_ms),
                ms(s.add_p90_ms),
                plus_ms(s.add_over_static_ms),
                ms(s.del_median_ms),
                ms(s.del_p90_ms),
                plus_ms(s.del_over_static_ms),
                ms(s.status_median_ms),
                plus_ms(s.status_over_static_ms),
                s.add_pass
                    .map_or("baseline", crate::print::pass)
                    .to_string(),
            ],
        );
    }
    let c = &e.cold_auth;
    let each: Vec<String> = c.adds_ms.iter().map(|x| format!("{x:.1}")).collect();
    let _ = writeln!(
        b,
        "\nWithout a cached token (the token file deleted before each of {} on the `https+cert+auth` network): median {}, {} over the cached token, etcd's bcrypt password check (each: {}). The first ADD of a network claims the node's lease and makes the datapath (with auth it also takes the first token); not counted in the medians.",
        count(c.adds_ms.len(), "ADD"),
        ms(c.median_ms),
        plus_ms(c.over_cached_ms),
        each.join(" ")
    );
    let _ = writeln!(
        b,
        "\nWhere an ADD's time goes (medians): the process start alone (berth-overlay's CNI `VERSION`) {} (p90 {}); etcd adds {} (`http` − `static`), TLS {} (`https+cert` − `http`), auth with the token cached {} (`https+cert+auth` − `https+cert`). ADD median under {:.0} ms with every etcd store: {}.",
        ms(e.process_start_ms),
        ms(e.process_start_p90_ms),
        plus_ms(e.etcd_adds_ms),
        plus_ms(e.tls_adds_ms),
        plus_ms(e.auth_adds_ms),
        e.target_ms,
        crate::print::pass(e.pass())
    );
    if let Some(first) = e.client.first() {
        let _ = writeln!(
            b,
            "\nIn process (the bench in the host namespace), {} per store, alternating, each after a {pause:.0} ms pause (etcd idle, as between two ADDs): `berth_etcd::Client::new`, one `get_prefix` of the network's leases on that fresh client (what an ADD process pays), the same call again on it at once (its connection reused, etcd busy), and once more after another {pause:.0} ms pause (the connection reused, etcd idle), medians:\n",
            first.calls,
            pause = first.pause_ms
        );
        b.push_str("| store | `Client::new` | first `get_prefix` | p90 | again at once | p90 | again after the pause | p90 | connection setup (first − after the pause) | the pause's cost (after the pause − at once) |\n");
        b.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &e.client {
            row(
                b,
                &[
                    format!("`{}`", r.store),
                    ms(r.new_median_ms),
                    ms(r.first_call_median_ms),
                    ms(r.first_call_p90_ms),
                    ms(r.reused_call_median_ms),
                    ms(r.reused_call_p90_ms),
                    ms(r.paused_call_median_ms),
                    ms(r.paused_call_p90_ms),
                    plus_ms(r.setup_ms),
                    plus_ms(r.wake_ms),
                ],
            );
        }
    }
    let _ = writeln!(b, "\nThe part took {:.1} s.", e.secs);
}

/// A rate in Mbit/s, `-` if there is none.
fn mbit(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.2} Mbit/s", x / 1e6))
}

fn bandwidth(b: &mut String, bw: &Bandwidth) {
    let three = bw
        .levels
        .iter()
        .any(|l| l.steps.iter().any(|s| s.before.is_some()));
    if three {
        let _ = writeln!(
            b,
            "| shaped already | step | berth | p90 | growth | {BEFORE} | p90 | growth | before/berth | reference | p90 | growth | ref/berth |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    } else {
        b.push_str(
            "| shaped already | step | berth | p90 | growth | reference | p90 | growth | ref/berth |\n",
        );
        b.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    for l in &bw.levels {
        for s in &l.steps {
            let (be, rf) = (&s.berth, &s.reference);
            // The chain's sums in bold: what a runtime waits for.
            let step = if s.step.starts_with("chain") {
                format!("**{}**", s.step)
            } else {
                s.step.to_string()
            };
            let mut cells = vec![
                l.shaped.to_string(),
                step,
                ms(be.median_ms),
                ms(be.p90_ms),
                fx2(be.growth),
            ];
            if three {
                let old = s.before.as_ref();
                cells.extend([
                    ms(old.and_then(|o| o.median_ms)),
                    ms(old.and_then(|o| o.p90_ms)),
                    fx2(old.and_then(|o| o.growth)),
                    fx2(s.ratio_before),
                ]);
            }
            cells.extend([ms(rf.median_ms), ms(rf.p90_ms), fx2(rf.growth), fx(s.ratio)]);
            row(b, &cells);
        }
    }
    b.push_str("\n(bridge: the bridge plugin with its IPAM; shaper: the bandwidth plugin, its `prevResult` the bridge's result; chain: the two, per container; DEL in reverse order, each with the chain's result. growth: the median at that level over the median at the first.)\n");
    let filled: Vec<String> = bw
        .levels
        .iter()
        .filter(|l| l.shaped > 0)
        .map(|l| match l.before_fill_secs {
            Some(old) => format!(
                "up to {}: berth {:.1} s, {BEFORE} {old:.1} s, reference {:.1} s",
                l.shaped, l.berth_fill_secs, l.ref_fill_secs
            ),
            None => format!(
                "up to {}: berth {:.1} s, reference {:.1} s",
                l.shaped, l.berth_fill_secs, l.ref_fill_secs
            ),
        })
        .collect();
    if !filled.is_empty() {
        let _ = writeln!(
            b,
            "\nThe shaped containers were installed through the chain itself, each in a netns of its own, at 10 Mbit/s both ways ({}).",
            filled.join("; ")
        );
    }
    let _ = writeln!(
        b,
        "\nRates as the receiver counted them (iperf3 `-J`, `end.sum_received`), with {} beside, `-t {} -O {}`, bursts of {} bits; the client always in the container (`-R` for ingress); TCP as fast as it goes, UDP sent at twice the limit{}:\n",
        count(bw.rates_at_shaped, "shaped container"),
        bw.iperf_secs,
        bw.omit_secs,
        bw.burst_bits,
        if three {
            " (berth and the reference only)"
        } else {
            ""
        }
    );
    b.push_str(
        "| limit | protocol | direction | berth | of the limit | reference | of the limit |\n",
    );
    b.push_str("|---:|---|---|---:|---:|---:|---:|\n");
    for r in &bw.rates {
        row(
            b,
            &[
                format!("{} Mbit/s", r.limit_bps / 1_000_000),
                r.proto.to_uppercase(),
                match r.direction {
                    "ingress" => "ingress (outside → container)".into(),
                    "egress" => "egress (container → outside)".into(),
                    d => d.to_string(),
                },
                mbit(r.berth.received_bps),
                r.berth.percent_of_limit.map_or("-".into(), pct),
                mbit(r.reference.received_bps),
                r.reference.percent_of_limit.map_or("-".into(), pct),
            ],
        );
    }
    for r in &bw.rates {
        for (who, side) in [("berth", &r.berth), ("reference", &r.reference)] {
            let what = format!(
                "bandwidth: {who} {} {} at {} Mbit/s",
                r.proto,
                r.direction,
                r.limit_bps / 1_000_000
            );
            failed(b, &what, &side.error);
        }
    }
    let _ = writeln!(b, "\nThe part took {:.1} s.", bw.secs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_args;
    use crate::report::{Config, SeriesReport};

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn dates() {
        let at = |secs| date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_709_251_199), "2024-02-29");
        assert_eq!(at(1_709_251_200), "2024-03-01");
    }

    #[test]
    fn commands_quote_what_a_shell_would_split() {
        assert_eq!(
            command(&argv("--only compare --n 1,20")),
            "berth-bench --only compare --n 1,20"
        );
        assert_eq!(
            command(&["--cni-path-berth=/a b".into(), "it's".into(), String::new()]),
            r"berth-bench '--cni-path-berth=/a b' 'it'\''s' ''"
        );
    }

    fn series(add: f64, first_last: Option<(f64, f64)>) -> SeriesReport {
        SeriesReport {
            adds: 1,
            dels: 1,
            add_median_ms: Some(add),
            del_median_ms: Some(2.0 * add),
            add_first100_median_ms: first_last.map(|p| p.0),
            add_last100_median_ms: first_last.map(|p| p.1),
            error: None,
        }
    }

    #[test]
    fn blocks_of_the_parts_that_ran() {
        let args = parse_args(&argv("--only compare,concurrent,host --n 1,300")).unwrap();
        let run = Run {
            date: "2026-12-02".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv("--markdown --only compare,concurrent --n 1,300")),
        };
        let mut report = Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![1, 300],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        });
        report.compare = Some(vec![
            CompareRow {
                n: 1,
                berth: series(3.0, None),
                reference: Some(series(30.0, None)),
                add_ratio_ref_over_berth: Some(10.0),
                del_ratio_ref_over_berth: Some(10.0),
                before: None,
                add_ratio_before_over_berth: None,
                del_ratio_before_over_berth: None,
            },
            CompareRow {
                n: 300,
                berth: series(2.5, Some((2.0, 2.5))),
                reference: None,
                add_ratio_ref_over_berth: None,
                del_ratio_ref_over_berth: None,
                before: None,
                add_ratio_before_over_berth: None,
                del_ratio_before_over_berth: None,
            },
        ]);
        report.concurrent_error = Some("no luck".into());
        report.host_error = Some("none\nat all".into());
        let md = tables(&report, &args, &run);
        let headings: Vec<&str> = md.lines().filter(|l| l.contains(HEADING)).collect();
        assert_eq!(
            headings[0],
            "`compare`, measured 2026-12-02 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only compare,concurrent --n 1,300`; per container (one exec of the bridge plugin each), medians:"
        );
        let parts: Vec<&str> = headings
            .iter()
            .map(|h| h.split('`').nth(1).unwrap())
            .collect();
        assert_eq!(parts, ["compare", "concurrent", "host"]);
        assert!(md.contains("| 1 | 3.00 ms | 30.00 ms | 10.0x | 6.00 ms | 60.00 ms | 10.0x |\n"));
        assert!(md.contains("| 300 | 2.50 ms | - | - | 5.00 ms | - | - |\n"));
        assert!(md.contains("| 300 | berth | 2.00 ms | 2.50 ms | 1.25x |\n"));
        assert!(md.contains("then as many DELs at once:\n\n- FAILED concurrent: no luck\n\n`host`"));
        // One blank line between blocks, none at the end.
        assert!(md.contains("| 1.25x |\n\n`concurrent`"));
        assert!(md.ends_with("30 containers per side, medians:\n\n- FAILED host: none at all\n"));
        let mut b = String::from("| a |\n");
        failed(&mut b, "x", &Some("1".into()));
        failed(&mut b, "y", &Some("2".into()));
        failed(&mut b, "z", &None);
        assert_eq!(b, "| a |\n\n- FAILED x: 1\n- FAILED y: 2\n");
        assert_eq!(
            (count(1, "pod"), count(2, "pod")),
            ("1 pod".into(), "2 pods".into())
        );
    }

    #[test]
    fn etcd_block() {
        use crate::report::{ClientCalls, ColdAuth, EtcdStore};
        let args = parse_args(&argv("--only etcd --etcd-containers 3")).unwrap();
        let run = Run {
            date: "2026-12-04".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv("--markdown --only etcd --etcd-containers 3")),
        };
        let mut report = Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        });
        let store = |name: &'static str, add: f64, pass: Option<bool>| EtcdStore {
            store: name,
            what: "what",
            first_add_ms: 40.0,
            adds: 3,
            dels: 3,
            add_median_ms: Some(add),
            add_p90_ms: Some(add + 1.0),
            del_median_ms: Some(20.0),
            del_p90_ms: Some(25.0),
            status_median_ms: Some(2.0),
            status_p90_ms: Some(2.5),
            add_over_static_ms: pass.map(|_| add - 3.0),
            del_over_static_ms: pass.map(|_| 0.5),
            status_over_static_ms: pass.map(|_| 1.0),
            add_pass: pass,
        };
        report.etcd = Some(Etcd {
            containers: 3,
            etcd_version: Some("3.4.23".into()),
            target_ms: 10.0,
            process_start_ms: Some(1.4),
            process_start_p90_ms: Some(1.6),
            stores: vec![
                store("static", 3.0, None),
                store("http", 4.5, Some(true)),
                store("https+cert", 11.0, Some(false)),
            ],
            etcd_adds_ms: Some(1.5),
            tls_adds_ms: Some(6.5),
            auth_adds_ms: None,
            cold_auth: ColdAuth {
                adds_ms: vec![70.0, 71.5],
                median_ms: Some(70.75),
                over_cached_ms: Some(64.0),
            },
            client: vec![ClientCalls {
                store: "http",
                calls: 3,
                pause_ms: 5.0,
                new_median_ms: Some(0.01),
                first_call_median_ms: Some(0.9),
                first_call_p90_ms: Some(1.1),
                reused_call_median_ms: Some(0.5),
                reused_call_p90_ms: Some(0.7),
                paused_call_median_ms: Some(0.6),
                paused_call_p90_ms: Some(0.8),
                setup_ms: Some(0.3),
                wake_ms: Some(0.1),
            }],
            secs: 10.94,
        });
        let md = tables(&report, &args, &run);
        assert!(md.starts_with(
            "`etcd`, measured 2026-12-04 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only etcd --etcd-containers 3`; \
             berth-overlay ADD, DEL and STATUS by store, 3 containers each (one exec each, alternating round by round), against private etcd 3.4.23 members, medians and p90:\n\n| store | first ADD |"
        ), "{md}");
        assert!(md.contains("| `static`: what | 40.00 ms | 3.00 ms | 4.00 ms | - | 20.00 ms | 25.00 ms | - | 2.00 ms | - | baseline |\n"), "{md}");
        assert!(md.contains("| `https+cert`: what | 40.00 ms | 11.00 ms | 12.00 ms | +8.00 ms | 20.00 ms | 25.00 ms | +0.50 ms | 2.00 ms | +1.00 ms | FAIL |\n"), "{md}");
        assert!(md.contains("each of 2 ADDs on the `https+cert+auth` network): median 70.75 ms, +64.00 ms over the cached token"));
        assert!(md.contains("etcd adds +1.50 ms (`http` − `static`), TLS +6.50 ms"));
        assert!(md.contains("every etcd store: FAIL."));
        assert!(md.contains("| `http` | 0.01 ms | 0.90 ms | 1.10 ms | 0.50 ms | 0.70 ms | 0.60 ms | 0.80 ms | +0.30 ms | +0.10 ms |\n"), "{md}");
        assert!(md.ends_with("\n\nThe part took 10.9 s.\n"), "{md}");
        assert_eq!(md.lines().filter(|l| l.contains(HEADING)).count(), 1);

        report.etcd = None;
        report.etcd_error = Some("etcd member plain exited".into());
        assert!(tables(&report, &args, &run)
            .ends_with("medians and p90:\n\n- FAILED etcd: etcd member plain exited\n"));
    }

    #[test]
    fn bandwidth_block() {
        use crate::report::{BandwidthLevel, ChainStep, Rate, RateRow, Spread};
        let args = parse_args(&argv("--only bandwidth --bandwidth-reps 3")).unwrap();
        let run = Run {
            date: "2026-12-05".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv("--markdown --only bandwidth --bandwidth-reps 3")),
        };
        let mut report = Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        });
        let spread = |m: f64, g: Option<f64>| Spread {
            median_ms: Some(m),
            p90_ms: Some(m + 1.0),
            growth: g,
        };
        let level = |shaped: usize, g: Option<f64>| BandwidthLevel {
            shaped,
            berth_fill_secs: 12.34,
            ref_fill_secs: 56.78,
            before_fill_secs: None,
            steps: ChainStep::NAMES
                .iter()
                .map(|&step| ChainStep {
                    step,
                    berth: spread(2.0, g),
                    before: None,
                    reference: spread(20.0, g),
                    ratio: Some(10.0),
                    ratio_before: None,
                })
                .collect(),
        };
        let rate = |bps: Option<f64>, error: Option<&str>| Rate {
            received_bps: bps,
            percent_of_limit: bps.map(|b| b / 1e5),
            error: error.map(String::from),
        };
        report.bandwidth = Some(Bandwidth {
            reps: 3,
            cni_version: "1.0.0".into(),
            burst_bits: 524288,
            iperf_secs: 2,
            omit_secs: 1,
            rates_at_shaped: 0,
            levels: vec![level(0, Some(1.0)), level(1000, None)],
            rates: vec![
                RateRow {
                    limit_bps: 10_000_000,
                    proto: "tcp",
                    direction: "ingress",
                    send_bps: None,
                    berth: rate(Some(9.55e6), None),
                    reference: rate(Some(9.6e6), None),
                },
                RateRow {
                    limit_bps: 10_000_000,
                    proto: "udp",
                    direction: "egress",
                    send_bps: Some(20_000_000),
                    berth: rate(Some(9.7e6), None),
                    reference: rate(None, Some("iperf3 hung")),
                },
            ],
            secs: 150.04,
        });
        let md = tables(&report, &args, &run);
        assert!(md.starts_with(
            "`bandwidth`, measured 2026-12-05 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only bandwidth --bandwidth-reps 3`; \
             berth-bridge + berth-bandwidth against `bridge` + `bandwidth`, chained (one exec per plugin), 3 containers per level, medians and p90; then the rates both hold:\n\n| shaped already | step |"
        ), "{md}");
        assert!(md.contains("| 0 | bridge ADD | 2.00 ms | 3.00 ms | 1.00x | 20.00 ms | 21.00 ms | 1.00x | 10.0x |\n"), "{md}");
        assert!(md.contains("| 1000 | **chain DEL** | 2.00 ms | 3.00 ms | - | 20.00 ms | 21.00 ms | - | 10.0x |\n"), "{md}");
        assert!(
            md.contains("(up to 1000: berth 12.3 s, reference 56.8 s)."),
            "{md}"
        );
        assert!(
            md.contains("with 0 shaped containers beside, `-t 2 -O 1`, bursts of 524288 bits;"),
            "{md}"
        );
        assert!(md.contains("| 10 Mbit/s | TCP | ingress (outside → container) | 9.55 Mbit/s | 95.5% | 9.60 Mbit/s | 96.0% |\n"), "{md}");
        assert!(md.contains("| 10 Mbit/s | UDP | egress (container → outside) | 9.70 Mbit/s | 97.0% | - | - |\n\n- FAILED bandwidth: reference udp egress at 10 Mbit/s: iperf3 hung\n"), "{md}");
        assert!(md.ends_with("\n\nThe part took 150.0 s.\n"), "{md}");
        assert_eq!(md.lines().filter(|l| l.contains(HEADING)).count(), 1);

        report.bandwidth = None;
        report.bandwidth_error = Some("no iperf3".into());
        assert!(tables(&report, &args, &run)
            .ends_with("then the rates both hold:\n\n- FAILED bandwidth: no iperf3\n"));
    }

    #[test]
    fn reconcile_block() {
        let args = parse_args(&argv(
            "--only reconcile --reconcile-containers 200 --reconcile-flushes 3",
        ))
        .unwrap();
        let run = Run {
            date: "2026-12-03".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv(
                "--markdown --only reconcile --reconcile-containers 200 --reconcile-flushes 3",
            )),
        };
        let mut report = Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        });
        report.reconcile = Some(Reconcile {
            containers: 200,
            mappings: 400,
            setup_secs: 6.24,
            status_ms: vec![20.0, 22.0],
            status_median_ms: Some(21.0),
            status_max_ms: Some(22.0),
            metrics_ms: vec![30.0, 32.0],
            metrics_median_ms: Some(31.0),
            metrics_max_ms: Some(32.0),
            first_pass_ms: 80.0,
            flushes: 3,
            answer_ms: vec![40.0, 50.5],
            answer_median_ms: Some(45.25),
            answer_max_ms: Some(50.5),
            logged_ms: vec![30.0, 31.0],
            logged_median_ms: Some(30.5),
            logged_max_ms: Some(31.0),
            idle_secs: 10.0,
            idle_cpu_percent: 0.0,
            storm_flushes: 100,
            storm_secs: 9.93,
            storm_cpu_percent: 12.34,
            storm_port_repairs: 1,
            after_storm_answer_ms: Some(44.0),
            after_storm_limit_ms: 1000.0,
            after_storm_pass: true,
            errors: vec!["flush 2: the port still answered".into()],
            before: None,
        });
        let md = tables(&report, &args, &run);
        assert!(md.starts_with(
            "`reconcile`, measured 2026-12-03 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only reconcile --reconcile-containers 200 --reconcile-flushes 3`; \
             `berth watch` with 200 containers of 2 published ports each (TCP and UDP), `nft flush ruleset` 3 times 1 s apart, then the watcher's CPU:\n\n| | median | max | each |\n"
        ), "{md}");
        assert!(md.contains(
            "| `nft flush ruleset` returned → the published port answered again from outside (2 of 3 flushes) | 45.25 ms | 50.50 ms | 40.0 50.5 |\n"
        ));
        assert!(md.contains("| the watcher's own figure (its log): change seen → end of the pass that put the rules back | 30.50 ms | 31.00 ms | 30.0 31.0 |\n"));
        assert!(md.contains("| `berth status -o json` over the 200 containers and 400 published ports (process start included) | 21.00 ms | 22.00 ms | 20.0 22.0 |\n"), "{md}");
        assert!(md.contains("| idle, 10 s | 0.0% |\n"));
        assert!(md.contains("| flush storm: 100 flushes in 9.9 s, until the port answered again (1 pass put the ports back) | 12.3% |\n"));
        assert!(md.contains("again in 44.00 ms (limit 1000 ms): PASS. 200 containers and 400 published ports installed in 6.2 s; the watcher's first pass (nothing to repair) took 80.00 ms.\n\n- FAILED reconcile: flush 2: the port still answered\n"));
        assert_eq!(md.lines().filter(|l| l.contains(HEADING)).count(), 1);

        report.reconcile = None;
        report.reconcile_error = Some("berth watch exited".into());
        assert!(tables(&report, &args, &run)
            .ends_with("then the watcher's CPU:\n\n- FAILED reconcile: berth watch exited\n"));
    }

    #[test]
    fn cluster_block() {
        use crate::report::{ChainTimes, ClusterCri, CriSummary, CriTimes, Footprint, Join};
        let args = parse_args(&argv("--only cluster --cluster-pods 3 --cluster-joins 2")).unwrap();
        let run = Run {
            date: "2026-12-07".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv("--markdown --only cluster")),
        };
        let mut report = Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        });
        let times = |add: f64| CriSummary {
            times: CriTimes {
                run_ms: Some(60.0),
                stop_ms: Some(50.0),
                remove_ms: Some(8.0),
                total_ms: Some(118.0),
                cni_add_ms: Some(add),
                cni_del_stop_ms: Some(30.0),
                cni_del_remove_ms: Some(5.0),
            },
            pods_with_logged_add: 3,
        };
        let (cluster, single) = (times(14.0), times(12.5));
        let chain = |plugins: &[&str], ms: &[f64]| ChainTimes {
            plugins: plugins.iter().map(|p| p.to_string()).collect(),
            median_ms: ms.iter().map(|&m| Some(m)).collect(),
            total_median_ms: Some(ms.iter().sum()),
        };
        let fp_chain = chain(
            &["berth-overlay", "berth-portmap", "berth-bandwidth"],
            &[3.5, 4.5, 1.5],
        );
        report.cluster = Some(Cluster {
            etcd: Some("3.4.23".into()),
            load_average: [Some(0.25), None],
            conflist: serde_json::json!({}),
            throughput: None,
            throughput_error: Some("iperf3 said no".into()),
            cri: Some(ClusterCri {
                pods: 3,
                containerd: Some("1.6.20".into()),
                ratio: CriTimes::ratio(&cluster.times, &single.times),
                cluster,
                single,
                target_add_ratio: 1.05,
                add_pass: false,
                doc_cni_add_ms: 14.79,
                doc_run_ms: 66.05,
                straight_adds: 3,
                cluster_chain: chain(
                    &["berth-overlay", "berth-portmap", "berth-bandwidth"],
                    &[3.0, 4.0, 1.5],
                ),
                single_chain: chain(&["berth-bridge", "berth-portmap"], &[2.5, 5.0]),
            }),
            cri_error: None,
            join: Some(Join {
                joins: 2,
                answer_ms: vec![60.0, 70.0],
                answer_median_ms: Some(65.0),
                answer_max_ms: Some(70.0),
                add_ms: vec![59.0, 69.0],
                add_median_ms: Some(64.0),
                ready_ms: vec![61.0, 71.0],
                ready_median_ms: Some(66.0),
                target_ms: 1000.0,
                pass: true,
            }),
            join_error: None,
            footprint: Some(Footprint {
                nodes: 100,
                pods: 200,
                setup_secs: 5.04,
                chain: fp_chain,
                tables: vec!["inet berth".into()],
                idle_secs: 30.0,
                idle_cpu_percent: 0.03,
                idle_rss_mib: 12.04,
                storm_flushes: 100,
                storm_secs: 9.91,
                storm_cpu_percent: 6.25,
                storm_rss_mib: 13.0,
                rules_back_ms: 80.0,
                storm_repairs: Some(40),
                peak_rss_mib: 14.0,
                rss_target_mib: 30.0,
                idle_cpu_target_percent: 1.0,
                rss_pass: true,
                idle_cpu_pass: true,
            }),
            footprint_error: None,
        });
        let md = tables(&report, &args, &run);
        assert!(md.starts_with(
            "`cluster`, measured 2026-12-07 (2 cores, Linux 6.18.0) by `berth-bench --markdown --only cluster`; \
             nodes on one underlay running `berth node` on deploy/kubernetes/berth.yaml's conflist, leases in etcd 3.4.23 over TLS; \
             iperf3 TCP 3 runs x 5 s per path, alternating; 3 pods per conflist under containerd's CRI; 2 joins; \
             the agent with 100 simulated nodes' leases and 200 pods; medians:\n\n\
             The machine's load average (1 min) when the part started: 0.25; when it ended: ?.\n\n\
             - FAILED cluster throughput: iperf3 said no\n"
        ), "{md}");
        assert!(
            md.contains("| RunPodSandbox | 60.00 ms | 60.00 ms | 1.00x | 66.05 ms |\n"),
            "{md}"
        );
        assert!(md.contains("| &nbsp;&nbsp;CNI ADD (containerd's log) | 14.00 ms | 12.50 ms | 1.12x | 14.79 ms |\n"), "{md}");
        assert!(
            md.contains("| StopPodSandbox | 50.00 ms | 50.00 ms | 1.00x |  |\n"),
            "{md}"
        );
        assert!(
            md.contains("in this run: 1.12x (target ≤ 1.05): FAIL."),
            "{md}"
        );
        assert!(md.contains("cluster berth-overlay 3.00 ms + berth-portmap 4.00 ms + berth-bandwidth 1.50 ms = 8.50 ms; single-node berth-bridge 2.50 ms + berth-portmap 5.00 ms = 7.50 ms."), "{md}");
        assert!(md.contains("| → its pod answered a ping from a pod on another node (every 10 ms) | 65.00 ms | 70.00 ms | 60.0 70.0 | PASS |\n"), "{md}");
        assert!(md.contains("| idle, 30 s | 0.0% | 12.0 MiB |\n"), "{md}");
        assert!(md.contains("| flush storm: 100 `nft flush ruleset` in 9.9 s, until berth's tables were back | 6.2% | 13.0 MiB |\n"), "{md}");
        assert!(md.contains("Idle CPU < 1% of a core: PASS; resident < 30 MiB: PASS (VmHWM, the most it was ever resident: 14.0 MiB)."), "{md}");
        assert!(md.ends_with("berth-bandwidth 1.50 ms = 9.50 ms.\n"), "{md}");
    }

    fn report() -> Report {
        Report::new(Config {
            cni_path_berth: "/b".into(),
            cni_path_ref: None,
            n: vec![],
            cni_version: "1.0.0".into(),
            network: "",
            warmup: "",
        })
    }

    fn run_of(args: &str) -> Run {
        Run {
            date: "2026-12-08".into(),
            cores: 2,
            kernel: "6.18.0".into(),
            command: command(&argv(args)),
        }
    }

    fn portmap_rows(before: bool) -> Vec<PortmapRow> {
        use crate::report::{FirewallPart, PortmapRefSide, PortmapSide, Spread};
        let side = |add: f64, growth: f64| PortmapSide {
            add_ms: Some(add),
            del_ms: Some(2.0 * add),
            add_growth: Some(growth),
            del_growth: Some(growth),
        };
        let spread = |m: f64| Spread {
            median_ms: Some(m),
            p90_ms: Some(m + 0.1),
            growth: None,
        };
        [0, 1000]
            .into_iter()
            .map(|level| PortmapRow {
                installed_mappings: level,
                berth: side(5.0, 1.0),
                before: before.then(|| side(10.0, 1.0)),
                reference: PortmapRefSide {
                    plugin: "portmap (iptables)",
                    add_ms: Some(50.0),
                    del_ms: Some(100.0),
                    add_growth: Some(1.0),
                    del_growth: Some(1.0),
                },
                add_ratio: Some(10.0),
                del_ratio: Some(10.0),
                add_ratio_before: before.then_some(2.0),
                del_ratio_before: before.then_some(2.0),
                firewall: FirewallPart {
                    add: spread(0.2),
                    del: spread(if level == 0 { 0.3 } else { 0.6 }),
                    first_add: (level == 0).then(|| spread(1.5)),
                    last_del: (level == 0).then(|| spread(16.0)),
                    target_ms: 0.5,
                },
            })
            .collect()
    }

    #[test]
    fn portmap_block_with_and_without_before() {
        let args = parse_args(&argv("--only portmap --portmap-reps 3")).unwrap();
        let run = run_of("--markdown --only portmap --portmap-reps 3");
        let mut report = report();
        report.portmap = Some(portmap_rows(false));
        let md = tables(&report, &args, &run);
        // Without the previous build: the table as it always was.
        assert!(md.contains("| installed | berth ADD | growth | berth DEL | growth | reference ADD | growth | reference DEL | growth |\n"), "{md}");
        assert!(md.contains("| 0 | 5.00 ms | 1.00x | 10.00 ms | 1.00x | 50.00 ms | 1.00x | 100.00 ms | 1.00x |\n"), "{md}");
        assert!(!md.contains(BEFORE), "{md}");
        // The firewall part under it.
        assert!(
            md.contains("| installed | ADD batch | p90 | DEL batch | p90 | < target |\n"),
            "{md}"
        );
        assert!(
            md.contains("| 0 | 0.20 ms | 0.30 ms | 0.30 ms | 0.40 ms | PASS |\n"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 | 0.20 ms | 0.30 ms | 0.60 ms | 0.70 ms | FAIL |\n"),
            "{md}"
        );
        assert!(md.contains("the first ADD's batch (the structure and the elements, `rebuild_in`) 1.50 ms (p90 1.60 ms), the last DEL's (`unpublish_in`, then the empty table removed) 16.00 ms (p90 16.10 ms)."), "{md}");

        report.portmap = Some(portmap_rows(true));
        let md = tables(&report, &args, &run);
        assert!(md.contains("| installed | plugin | ADD | growth | over berth's | DEL | growth | over berth's |\n"), "{md}");
        assert!(
            md.contains("| 1000 | berth | 5.00 ms | 1.00x | - | 10.00 ms | 1.00x | - |\n"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1000 | berth (before) | 10.00 ms | 1.00x | 2.00x | 20.00 ms | 1.00x | 2.00x |\n"
            ),
            "{md}"
        );
        assert!(md.contains("| 1000 | reference (portmap (iptables)) | 50.00 ms | 1.00x | 10.00x | 100.00 ms | 1.00x | 10.00x |\n"), "{md}");
        assert!(
            md.contains("| 1000 | 0.20 ms | 0.30 ms | 0.60 ms | 0.70 ms | FAIL |\n"),
            "{md}"
        );
        assert_eq!(md.lines().filter(|l| l.contains(HEADING)).count(), 1);
        // The JSON has the previous build's figures only when it ran.
        let j = serde_json::to_value(&portmap_rows(false)[0]).unwrap();
        assert!(j.get("before").is_none() && j.get("add_ratio_before").is_none());
        assert_eq!(j["firewall"]["add"]["median_ms"], 0.2);
        let j = serde_json::to_value(&portmap_rows(true)[1]).unwrap();
        assert_eq!(j["before"]["add_ms"], 10.0);
        assert!(j["firewall"].get("first_add").is_none());
    }

    #[test]
    fn cri_block_with_before() {
        use crate::report::CriSummary;
        let args = parse_args(&argv("--only cri --cri-pods 3")).unwrap();
        let run = run_of("--markdown --only cri --cri-pods 3");
        let times = |k: f64| CriSummary {
            times: CriTimes {
                run_ms: Some(60.0 * k),
                stop_ms: Some(50.0 * k),
                remove_ms: Some(8.0 * k),
                total_ms: Some(118.0 * k),
                cni_add_ms: Some(10.0 * k),
                cni_del_stop_ms: Some(20.0 * k),
                cni_del_remove_ms: Some(5.0 * k),
            },
            pods_with_logged_add: 3,
        };
        let (berth, reference) = (times(1.0), times(12.0));
        let mut cri = Cri {
            pods: 3,
            containerd: Some("1.6.20".into()),
            network: "",
            ratio: CriTimes::ratio(&reference.times, &berth.times),
            ratio_before: None,
            ratio_ref_over_before: None,
            berth,
            before: None,
            reference,
        };
        let mut report = report();
        report.cri = Some(clone_cri(&cri));
        let md = tables(&report, &args, &run);
        assert!(md.contains("| | berth | reference | ref/berth |\n"), "{md}");
        assert!(
            md.contains(
                "| &nbsp;&nbsp;CNI ADD (containerd's log) | 10.00 ms | 120.00 ms | 12.0x |\n"
            ),
            "{md}"
        );

        let before = times(2.0);
        cri.ratio_before = Some(CriTimes::ratio(&before.times, &cri.berth.times));
        cri.ratio_ref_over_before = Some(CriTimes::ratio(&cri.reference.times, &before.times));
        cri.before = Some(before);
        report.cri = Some(cri);
        let md = tables(&report, &args, &run);
        assert!(md.contains("| | berth | berth (before) | reference | ref/berth | before/berth | ref/before |\n|---|---:|---:|---:|---:|---:|---:|\n"), "{md}");
        assert!(md.contains("| &nbsp;&nbsp;CNI ADD (containerd's log) | 10.00 ms | 20.00 ms | 120.00 ms | 12.0x | 2.00x | 6.0x |\n"), "{md}");
        assert!(
            md.contains(
                "| RunPodSandbox | 60.00 ms | 120.00 ms | 720.00 ms | 12.0x | 2.00x | 6.0x |\n"
            ),
            "{md}"
        );
        let j = serde_json::to_value(report.cri.as_ref().unwrap()).unwrap();
        assert_eq!(j["before"]["cni_add_ms"], 20.0);
        assert_eq!(j["ratio_before"]["cni_add_ms"], 2.0);
    }

    fn clone_cri(c: &Cri) -> Cri {
        use crate::report::CriSummary;
        Cri {
            pods: c.pods,
            containerd: c.containerd.clone(),
            network: c.network,
            berth: CriSummary {
                times: c.berth.times,
                pods_with_logged_add: c.berth.pods_with_logged_add,
            },
            before: None,
            reference: CriSummary {
                times: c.reference.times,
                pods_with_logged_add: c.reference.pods_with_logged_add,
            },
            ratio: c.ratio,
            ratio_before: None,
            ratio_ref_over_before: None,
        }
    }

    #[test]
    fn bandwidth_block_with_before() {
        use crate::report::{BandwidthLevel, ChainStep, Spread};
        let args = parse_args(&argv("--only bandwidth --bandwidth-reps 3")).unwrap();
        let run = run_of("--markdown --only bandwidth --bandwidth-reps 3");
        let spread = |m: f64| Spread {
            median_ms: Some(m),
            p90_ms: Some(m + 1.0),
            growth: Some(1.0),
        };
        let mut report = report();
        report.bandwidth = Some(Bandwidth {
            reps: 3,
            cni_version: "1.0.0".into(),
            burst_bits: 524288,
            iperf_secs: 2,
            omit_secs: 1,
            rates_at_shaped: 0,
            levels: vec![BandwidthLevel {
                shaped: 1000,
                berth_fill_secs: 10.0,
                ref_fill_secs: 40.0,
                before_fill_secs: Some(20.0),
                steps: ChainStep::NAMES
                    .iter()
                    .map(|&step| ChainStep {
                        step,
                        berth: spread(2.0),
                        before: Some(spread(3.0)),
                        reference: spread(20.0),
                        ratio: Some(10.0),
                        ratio_before: Some(1.5),
                    })
                    .collect(),
            }],
            rates: vec![],
            secs: 1.0,
        });
        let md = tables(&report, &args, &run);
        assert!(md.contains("| shaped already | step | berth | p90 | growth | berth (before) | p90 | growth | before/berth | reference | p90 | growth | ref/berth |\n"), "{md}");
        assert!(md.contains("| 1000 | **chain ADD** | 2.00 ms | 3.00 ms | 1.00x | 3.00 ms | 4.00 ms | 1.00x | 1.50x | 20.00 ms | 21.00 ms | 1.00x | 10.0x |\n"), "{md}");
        assert!(
            md.contains("(up to 1000: berth 10.0 s, berth (before) 20.0 s, reference 40.0 s)"),
            "{md}"
        );
        assert!(
            md.contains("UDP sent at twice the limit (berth and the reference only):"),
            "{md}"
        );
    }

    #[test]
    fn reconcile_block_with_before() {
        let args = parse_args(&argv(
            "--only reconcile --reconcile-containers 2 --reconcile-flushes 2",
        ))
        .unwrap();
        let run =
            run_of("--markdown --only reconcile --reconcile-containers 2 --reconcile-flushes 2");
        let figures = |k: f64| Reconcile {
            containers: 2,
            mappings: 4,
            setup_secs: 1.0 * k,
            status_ms: vec![20.0 * k],
            status_median_ms: Some(20.0 * k),
            status_max_ms: Some(20.0 * k),
            metrics_ms: vec![30.0 * k],
            metrics_median_ms: Some(30.0 * k),
            metrics_max_ms: Some(30.0 * k),
            first_pass_ms: 10.0 * k,
            flushes: 2,
            answer_ms: vec![40.0 * k, 50.0 * k],
            answer_median_ms: Some(45.0 * k),
            answer_max_ms: Some(50.0 * k),
            logged_ms: vec![30.0 * k],
            logged_median_ms: Some(30.0 * k),
            logged_max_ms: Some(30.0 * k),
            idle_secs: 10.0,
            idle_cpu_percent: 0.0,
            storm_flushes: 100,
            storm_secs: 9.9,
            storm_cpu_percent: 10.0 * k,
            storm_port_repairs: 50,
            after_storm_answer_ms: Some(44.0 * k),
            after_storm_limit_ms: 1000.0,
            after_storm_pass: true,
            errors: vec![],
            before: None,
        };
        let mut r = figures(1.0);
        let mut old = figures(2.0);
        old.errors.push("flush 1: the port still answered".into());
        r.before = Some(Box::new(old));
        let mut report = report();
        report.reconcile = Some(r);
        let md = tables(&report, &args, &run);
        assert!(
            md.contains("| | build | median | max | over berth's | each |\n"),
            "{md}"
        );
        assert!(md.contains("| `nft flush ruleset` returned → the published port answered again from outside (2 of 2 flushes) | berth | 45.00 ms | 50.00 ms |  | 40.0 50.0 |\n|  | berth (before) | 90.00 ms | 100.00 ms | 2.00x | 80.0 100.0 |\n"), "{md}");
        assert!(md.contains("| the watcher's CPU | berth | berth (before) |\n|---|---:|---:|\n| idle, 10 s | 0.0% | 0.0% |\n"), "{md}");
        assert!(md.contains("| flush storm: 100 flushes in 9.9 s, until the port answered again (50 passes put the ports back) | 10.0% | 20.0% |\n"), "{md}");
        assert!(
            md.contains("\nberth: After the storm the port answered again in 44.00 ms"),
            "{md}"
        );
        assert!(
            md.contains("- FAILED reconcile, berth (before): flush 1: the port still answered\n"),
            "{md}"
        );
        assert!(report.reconcile.as_ref().unwrap().ok());
        let j = serde_json::to_value(report.reconcile.as_ref().unwrap()).unwrap();
        assert_eq!(j["before"]["answer_median_ms"], 90.0);
    }

    #[test]
    fn floor_block_with_first_last() {
        use crate::floor::{FirstLastSamples, FIRST_LAST_CASES};
        use crate::report::FirstLast;
        let args = parse_args(&argv("--only floor --floor-reps 2")).unwrap();
        let run = run_of("--markdown --only floor --floor-reps 2");
        let mut report = report();
        report.floor_error = Some("no veth".into());
        report.del_in_place = Some(DelInPlace {
            build: "berth",
            containers: 100,
            kernel_veth_del_ms: Some(15.0),
            berth_del_ms: Some(22.5),
            berth_over_kernel: Some(1.5),
        });
        report.del_in_place_before = Some(DelInPlace {
            build: BEFORE,
            containers: 100,
            kernel_veth_del_ms: Some(15.0),
            berth_del_ms: Some(30.0),
            berth_over_kernel: Some(2.0),
        });
        let rows = vec![crate::floor::tests_samples().row("berth", FIRST_LAST_CASES[0])];
        report.first_last = Some(FirstLast {
            networks: 2,
            containers: 5,
            rows,
            target_ms: 2.0,
        });
        let md = tables(&report, &args, &run);
        assert!(md.contains("| a container's host veth, 100 berth containers on one network (every other one) | 15.00 ms |\n| berth's whole DEL of the others (process start included): 1.5x the kernel's | 22.50 ms |\n"), "{md}");
        assert!(md.contains("| a container's host veth, 100 containers of berth (before) on one network (every other one) | 15.00 ms |\n| berth (before)'s whole DEL of the others (process start included): 2.0x the kernel's | 30.00 ms |\n"), "{md}");
        assert!(md.contains("2 networks of 5 containers per build and case (the first, 4 usual ADDs and DELs, the last)"), "{md}");
        assert!(md.contains("| berth | another berth network | 11.00 ms | 2.25 ms | +8.75 ms | 40.00 ms | 16.00 ms | +24.00 ms | FAIL |\n"), "{md}");
        assert!(md.contains("- FAILED floor: no veth"), "{md}");
        let j = serde_json::to_value(report.del_in_place.as_ref().unwrap()).unwrap();
        assert!(j.get("build").is_none());
        let _ = FirstLastSamples::default();
    }
}
