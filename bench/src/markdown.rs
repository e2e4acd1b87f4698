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
use crate::print::{fx, fx2, pct};
use crate::report::{
    Bandwidth, Cluster, CompareRow, Concurrent, Cri, CriTimes, DelInPlace, Engine, Etcd, Floor,
    FlowReport, FlowRow, HostRow, Overlay, PortmapRow, Reconcile, Report,
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
    b.push_str(
        "| containers | berth ADD | reference ADD | ratio | berth DEL | reference DEL | ratio |\n",
    );
    b.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let reference = r.reference.as_ref();
        row(
            &mut b,
            &[
                r.n.to_string(),
                ms(r.berth.add_median_ms),
                ms(reference.and_then(|s| s.add_median_ms)),
                fx(r.add_ratio_ref_over_berth),
                ms(r.berth.del_median_ms),
                ms(reference.and_then(|s| s.del_median_ms)),
                fx(r.del_ratio_ref_over_berth),
            ],
        );
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
    failed(&mut b, "floor", &report.floor_error);
    failed(&mut b, "del_in_place", &report.del_in_place_error);
    b
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
    row(
        b,
        &[
            format!(
                "a container's host veth, {} on one network (every other one)",
                count(d.containers, "berth container")
            ),
            ms(d.kernel_veth_del_ms),
        ],
    );
    row(
        b,
        &[
            format!(
                "berth's whole DEL of the others (process start included): {} the kernel's",
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
    b.push_str("| | berth | reference | ref/berth |\n|---|---:|---:|---:|\n");
    for (name, figure) in CriTimes::ROWS {
        let name = match name.strip_prefix("  ") {
            Some(sub) => format!("&nbsp;&nbsp;{sub}"),
            None => name.to_string(),
        };
        row(
            b,
            &[
                name,
                ms(figure(&c.berth.times)),
                ms(figure(&c.reference.times)),
                fx(figure(&c.ratio)),
            ],
        );
    }
}

fn reconcile(b: &mut String, r: &Reconcile) {
    // `count` adds an "s"; these take "es".
    let es = |n: usize, thing: &str| format!("{n} {thing}{}", if n == 1 { "" } else { "es" });
    let each = |v: &[f64]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        items.join(" ")
    };
    b.push_str("| | median | max | each |\n|---|---:|---:|---|\n");
    row(
        b,
        &[
            format!(
                "`nft flush ruleset` returned → the published port answered again from outside ({} of {})",
                r.answer_ms.len(),
                es(r.flushes, "flush")
            ),
            ms(r.answer_median_ms),
            ms(r.answer_max_ms),
            each(&r.answer_ms),
        ],
    );
    row(
        b,
        &[
            "the watcher's own figure (its log): change seen → end of the pass that put the rules back".into(),
            ms(r.logged_median_ms),
            ms(r.logged_max_ms),
            each(&r.logged_ms),
        ],
    );
    row(
        b,
        &[
            format!(
                "`berth status -o json` over the {} and {} (process start included)",
                count(r.containers, "container"),
                count(r.mappings, "published port")
            ),
            ms(r.status_median_ms),
            ms(r.status_max_ms),
            each(&r.status_ms),
        ],
    );
    row(
        b,
        &[
            "`berth metrics` over the same (process start included)".into(),
            ms(r.metrics_median_ms),
            ms(r.metrics_max_ms),
            each(&r.metrics_ms),
        ],
    );
    b.push_str("\n| the watcher's CPU | share of one core |\n|---|---:|\n");
    row(
        b,
        &[
            format!("idle, {:.0} s", r.idle_secs),
            pct(r.idle_cpu_percent),
        ],
    );
    row(
        b,
        &[
            format!(
                "flush storm: {} in {:.1} s, until the port answered again ({} put the ports back)",
                es(r.storm_flushes, "flush"),
                r.storm_secs,
                es(r.storm_port_repairs, "pass")
            ),
            pct(r.storm_cpu_percent),
        ],
    );
    let _ = writeln!(
        b,
        "\nAfter the storm the port answered again in {} (limit {:.0} ms): {}. {} and {} installed in {:.1} s; the watcher's first pass (nothing to repair) took {}.",
        ms(r.after_storm_answer_ms),
        r.after_storm_limit_ms,
        crate::print::pass(r.after_storm_pass),
        count(r.containers, "container"),
        count(r.mappings, "published port"),
        r.setup_secs,
        ms(Some(r.first_pass_ms))
    );
    for e in &r.errors {
        failed(b, "reconcile", &Some(e.clone()));
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
    b.push_str(
        "| shaped already | step | berth | p90 | growth | reference | p90 | growth | ref/berth |\n",
    );
    b.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in &bw.levels {
        for s in &l.steps {
            let (be, rf) = (&s.berth, &s.reference);
            // The chain's sums in bold: what a runtime waits for.
            let step = if s.step.starts_with("chain") {
                format!("**{}**", s.step)
            } else {
                s.step.to_string()
            };
            row(
                b,
                &[
                    l.shaped.to_string(),
                    step,
                    ms(be.median_ms),
                    ms(be.p90_ms),
                    fx2(be.growth),
                    ms(rf.median_ms),
                    ms(rf.p90_ms),
                    fx2(rf.growth),
                    fx(s.ratio),
                ],
            );
        }
    }
    b.push_str("\n(bridge: the bridge plugin with its IPAM; shaper: the bandwidth plugin, its `prevResult` the bridge's result; chain: the two, per container; DEL in reverse order, each with the chain's result. growth: the median at that level over the median at the first.)\n");
    let filled: Vec<String> = bw
        .levels
        .iter()
        .filter(|l| l.shaped > 0)
        .map(|l| {
            format!(
                "up to {}: berth {:.1} s, reference {:.1} s",
                l.shaped, l.berth_fill_secs, l.ref_fill_secs
            )
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
        "\nRates as the receiver counted them (iperf3 `-J`, `end.sum_received`), with {} beside, `-t {} -O {}`, bursts of {} bits; the client always in the container (`-R` for ingress); TCP as fast as it goes, UDP sent at twice the limit:\n",
        count(bw.rates_at_shaped, "shaped container"),
        bw.iperf_secs,
        bw.omit_secs,
        bw.burst_bits
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
            },
            CompareRow {
                n: 300,
                berth: series(2.5, Some((2.0, 2.5))),
                reference: None,
                add_ratio_ref_over_berth: None,
                del_ratio_ref_over_berth: None,
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
            steps: ChainStep::NAMES
                .iter()
                .map(|&step| ChainStep {
                    step,
                    berth: spread(2.0, g),
                    reference: spread(20.0, g),
                    ratio: Some(10.0),
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
}
