//! The report as tables for people (`--json` prints it as it is,
//! `--markdown` as Markdown tables: markdown.rs).

use crate::report::{
    Bandwidth, Cluster, CompareRow, Concurrent, Cri, CriTimes, DelInPlace, Engine, Etcd, FirstLast,
    Floor, FlowRow, HostRow, Overlay, PortmapRow, Reconcile, Report,
};

/// A figure with two decimals, `-` if there is none.
pub(crate) fn f(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// A ratio with one decimal, `-` if there is none.
pub(crate) fn fx(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.1}x"),
        None => "-".into(),
    }
}

/// A ratio with two decimals (where a target needs them).
pub(crate) fn fx2(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}x"))
}

pub(crate) fn pass(v: bool) -> &'static str {
    if v {
        "PASS"
    } else {
        "FAIL"
    }
}

/// A difference in ms with its sign, two decimals, `-` if there is none.
pub(crate) fn plus(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:+.2}"))
}

/// Numbers, each formatted with `digits` decimals.
pub(crate) fn list<T: Copy + Into<f64>>(v: &[T], digits: usize) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|&x| format!("{:.*}", digits, x.into()))
        .collect();
    items.join(" ")
}

/// Retransmits are u64 (no `Into<f64>`): as the JSON held them, as f64.
fn counts(v: &[u64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// One line per iperf3 path: label, what, median, runs, retransmits.
fn print_flows(paths: &[FlowRow<'_>]) {
    let width = paths.iter().map(|p| p.what.len()).max().unwrap_or(0);
    for FlowRow {
        label,
        what,
        flow: p,
    } in paths
    {
        println!(
            "  {label:<6} {what:<width$} median {:>6} Gbit/s   runs [{}]   retransmits [{}]",
            f(p.median_gbps),
            list(&p.gbps, 2),
            list(&counts(&p.retransmits), 0),
        );
    }
}

pub(crate) fn print_overlay(o: &Overlay) {
    if let Some(t) = &o.throughput {
        println!(
            "== berth-overlay throughput: iperf3 TCP, {} runs x {} s per path, alternating ==",
            t.runs_per_path, t.iperf_secs
        );
        let m = &t.mtu;
        println!(
            "   (MTU: underlay {}; berth eth0 {}, bov42 {}, berth.42 {}; hand-built eth0 {}, hbr {}, vxh {}; raw vxb {})",
            m.underlay,
            m.berth_eth0,
            m.berth_bridge,
            m.berth_vxlan,
            m.hand_eth0,
            m.hand_bridge,
            m.hand_vxlan,
            m.raw_vxlan
        );
        let paths = t.paths();
        print_flows(&paths);
        println!(
            "  berth/hand {} (target >= {:.2}): {}",
            f(t.berth_over_hand_container),
            t.target_ratio,
            pass(t.ratio_pass)
        );
        println!(
            "  berth/raw  {} (raw VXLAN host to host, no veth/bridge/forwarding: for reference, not judged)",
            f(t.berth_over_raw_vxlan)
        );
        let frag: Vec<String> = paths
            .iter()
            .map(|p| {
                format!(
                    "{} +{} / +{}",
                    p.label, p.flow.frag_creates, p.flow.reasm_reqds
                )
            })
            .collect();
        println!(
            "  fragmentation, FragCreates / ReasmReqds over each path's namespaces: {}: {}",
            frag.join(", "),
            pass(t.no_fragmentation)
        );
        println!();
    }
    if let Some(e) = &o.throughput_error {
        println!("FAILED overlay throughput: {e}\n");
    }
    if let Some(c) = &o.convergence {
        println!(
            "== berth-overlay agent convergence: etcd, {} simulated nodes (target < {:.0} ms) ==",
            c.nodes, c.target_ms
        );
        println!(
            "  initial: agent start -> {} onlink routes   {:>8} ms             {}   (records put beforehand in {} ms; agent VTEP {})",
            c.nodes,
            f(Some(c.initial_ms)),
            pass(c.initial_pass),
            f(Some(c.records_put_ms)),
            c.agent_vtep_address.as_deref().unwrap_or("-")
        );
        for j in c.churn() {
            println!(
                "  {}  median {:>8} ms, max {:>8} ms   {}   [{}]",
                j.label,
                f(j.median),
                f(j.max),
                pass(j.pass),
                list(j.samples, 1),
            );
        }
        println!(
            "  FDB entries with a dst on berth.77: {}, onlink routes: {}, live nodes: {}: {}",
            c.fdb_entries_with_dst,
            c.onlink_routes,
            c.live_nodes,
            if c.fdb_matches_live_nodes {
                "OK"
            } else {
                "MISMATCH"
            }
        );
        println!();
    }
    if let Some(e) = &o.convergence_error {
        println!("FAILED overlay convergence: {e}\n");
    }
}

pub(crate) fn print_cri(c: &Cri) {
    println!(
        "== cri: pods under containerd {}'s CRI, median ms over {} pods (one hostPort each, beside a resident pod) ==",
        c.containerd.as_deref().unwrap_or("?"),
        c.pods
    );
    if let (Some(before), Some(rb), Some(rrb)) =
        (&c.before, &c.ratio_before, &c.ratio_ref_over_before)
    {
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}",
            "", "berth", "before", "ref", "ref/berth", "bef/berth", "ref/before"
        );
        for (name, figure) in CriTimes::ROWS {
            println!(
                "{:<44} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}",
                name,
                f(figure(&c.berth.times)),
                f(figure(&before.times)),
                f(figure(&c.reference.times)),
                fx(figure(&c.ratio)),
                fx2(figure(rb)),
                fx(figure(rrb))
            );
        }
        println!();
        return;
    }
    println!(
        "{:<44} {:>10} {:>10} {:>9}",
        "", "berth", "ref", "ref/berth"
    );
    for (name, figure) in CriTimes::ROWS {
        println!(
            "{:<44} {:>10} {:>10} {:>9}",
            name,
            f(figure(&c.berth.times)),
            f(figure(&c.reference.times)),
            fx(figure(&c.ratio))
        );
    }
    println!();
}

/// A load average, two decimals, `?` if there is none.
pub(crate) fn load(l: Option<f64>) -> String {
    l.map_or("?".into(), |l| format!("{l:.2}"))
}

fn print_cluster(c: &Cluster) {
    println!(
        "== cluster: load average (1 min) {} at the start, {} at the end ==",
        load(c.load_average[0]),
        load(c.load_average[1])
    );
    if let Some(t) = &c.throughput {
        println!(
            "== cluster: iperf3 TCP, {} runs x {} s per path, alternating (MTU: underlay {}, VXLAN {}, pod eth0 {}) ==",
            t.runs_per_path, t.iperf_secs, t.underlay_mtu, t.vxlan_mtu, t.pod_mtu
        );
        print_flows(&t.paths());
        println!(
            "  cross/hand {} (target >= {:.2}): {}; cross/same node {}; cross/underlay {}; no fragmentation: {}",
            f(t.cross_over_hand),
            t.target_ratio,
            pass(t.ratio_pass),
            f(t.cross_over_same_node),
            f(t.cross_over_underlay),
            pass(t.no_fragmentation)
        );
        println!();
    }
    print_error("cluster throughput", &c.throughput_error);
    if let Some(r) = &c.cri {
        println!(
            "== cluster: pods under containerd {}'s CRI, median ms over {} pods each: the cluster conflist with `berth node` vs the single-node conflist ==",
            r.containerd.as_deref().unwrap_or("?"),
            r.pods
        );
        println!(
            "{:<44} {:>10} {:>10} {:>14}",
            "", "cluster", "single", "cluster/single"
        );
        for (name, figure) in CriTimes::ROWS {
            println!(
                "{:<44} {:>10} {:>10} {:>14}",
                name,
                f(figure(&r.cluster.times)),
                f(figure(&r.single.times)),
                f(figure(&r.ratio))
            );
        }
        println!(
            "  CNI ADD cluster/single {} (target <= {:.2}): {}; bench-cri.md (berth): RunPodSandbox {:.2}, CNI ADD {:.2}",
            f(r.ratio.cni_add_ms),
            r.target_add_ratio,
            pass(r.add_pass),
            r.doc_run_ms,
            r.doc_cni_add_ms
        );
        println!(
            "  straight ADDs ({} pods each, no containerd/loopback): cluster {}; single {}",
            r.straight_adds,
            r.cluster_chain.describe(),
            r.single_chain.describe()
        );
        println!();
    }
    print_error("cluster cri", &c.cri_error);
    if let Some(j) = &c.join {
        println!(
            "== cluster: {} new nodes joining, from `berth node` starting (target < {:.0} ms) ==",
            j.joins, j.target_ms
        );
        println!(
            "  -> its pod answers a ping from another node's: median {:>8} ms, max {:>8} ms   {}   [{}]",
            f(j.answer_median_ms),
            f(j.answer_max_ms),
            pass(j.pass),
            list(&j.answer_ms, 1)
        );
        println!(
            "  -> the pod's ADD returned: median {:>8} ms [{}]; -> /readyz 200: median {:>8} ms [{}]",
            f(j.add_median_ms),
            list(&j.add_ms, 1),
            f(j.ready_median_ms),
            list(&j.ready_ms, 1)
        );
        println!();
    }
    print_error("cluster join", &c.join_error);
    if let Some(p) = &c.footprint {
        println!(
            "== cluster: `berth node` with {} nodes' leases and {} pods (targets: < {:.0} MiB, < {:.0}% of a core idle) ==",
            p.nodes, p.pods, p.rss_target_mib, p.idle_cpu_target_percent
        );
        println!(
            "  idle {:.0} s: CPU {} ({}), RSS {:.1} MiB",
            p.idle_secs,
            pct(p.idle_cpu_percent),
            pass(p.idle_cpu_pass),
            p.idle_rss_mib
        );
        println!(
            "  flush storm ({} flushes in {:.1} s, tables back {:.1} ms after the last, {} repairs counted): CPU {}, RSS {:.1} MiB",
            p.storm_flushes,
            p.storm_secs,
            p.rules_back_ms,
            p.storm_repairs.map_or("?".into(), |r| r.to_string()),
            pct(p.storm_cpu_percent),
            p.storm_rss_mib
        );
        println!(
            "  resident at most {:.1} MiB while measured ({}); VmHWM {:.1} MiB; setup {:.1} s; ADDs: {}",
            p.idle_rss_mib.max(p.storm_rss_mib),
            pass(p.rss_pass),
            p.peak_rss_mib,
            p.setup_secs,
            p.chain.describe()
        );
        println!();
    }
    print_error("cluster footprint", &c.footprint_error);
}

/// A CPU share of one core, one decimal.
pub(crate) fn pct(v: f64) -> String {
    format!("{v:.1}%")
}

fn print_reconcile(r: &Reconcile) {
    println!(
        "== reconcile: berth watch after `nft flush ruleset`, {} containers, {} published ports ==",
        r.containers, r.mappings
    );
    print_reconcile_figures(r);
    if let Some(old) = &r.before {
        println!("  -- berth (before), flushes alternating with berth's:");
        print_reconcile_figures(old);
    }
    println!();
}

fn print_reconcile_figures(r: &Reconcile) {
    println!(
        "  flush returned -> port answers from outside ({} of {} flushes):  median {:>8} ms, max {:>8} ms   [{}]",
        r.answer_ms.len(),
        r.flushes,
        f(r.answer_median_ms),
        f(r.answer_max_ms),
        list(&r.answer_ms, 1)
    );
    println!(
        "  the watcher's log: change seen -> end of its repairing pass: median {:>8} ms, max {:>8} ms   [{}]",
        f(r.logged_median_ms),
        f(r.logged_max_ms),
        list(&r.logged_ms, 1)
    );
    println!(
        "  watcher CPU: idle {} over {:.0} s; flush storm ({} flushes in {:.1} s) {}, {} passes put the ports back",
        pct(r.idle_cpu_percent),
        r.idle_secs,
        r.storm_flushes,
        r.storm_secs,
        pct(r.storm_cpu_percent),
        r.storm_port_repairs
    );
    println!(
        "  after the storm the port answered in {} ms (limit {:.0} ms): {}",
        f(r.after_storm_answer_ms),
        r.after_storm_limit_ms,
        pass(r.after_storm_pass)
    );
    println!(
        "  berth status -o json: median {:>8} ms, max {:>8} ms; berth metrics: median {:>8} ms, max {:>8} ms",
        f(r.status_median_ms),
        f(r.status_max_ms),
        f(r.metrics_median_ms),
        f(r.metrics_max_ms)
    );
    println!(
        "  (setup {:.1} s; the watcher's first pass, nothing to repair, {} ms)",
        r.setup_secs,
        f(Some(r.first_pass_ms))
    );
    for e in &r.errors {
        println!("  FAILED {e}");
    }
}

fn print_etcd(e: &Etcd) {
    println!(
        "== etcd: berth-overlay ADD / DEL / STATUS by store, {} containers each, alternating, ms (etcd {}; target: ADD median < {:.0} ms) ==",
        e.containers,
        e.etcd_version.as_deref().unwrap_or("?"),
        e.target_ms
    );
    println!(
        "{:<16} {:>10} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}  {:>8} {:>8}  {:<10}",
        "store",
        "first ADD",
        "ADD med",
        "ADD p90",
        "+static",
        "DEL med",
        "DEL p90",
        "+static",
        "STATUS",
        "+static",
        "ADD target"
    );
    for s in &e.stores {
        println!(
            "{:<16} {:>10} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}  {:>8} {:>8}  {}",
            s.store,
            f(Some(s.first_add_ms)),
            f(s.add_median_ms),
            f(s.add_p90_ms),
            plus(s.add_over_static_ms),
            f(s.del_median_ms),
            f(s.del_p90_ms),
            plus(s.del_over_static_ms),
            f(s.status_median_ms),
            plus(s.status_over_static_ms),
            s.add_pass.map_or("(baseline)", pass)
        );
    }
    let c = &e.cold_auth;
    println!(
        "  https+cert+auth without a cached token ({} ADDs, the token file deleted before each): median {} ms, {} ms over the cached token (etcd's bcrypt password check)   [{}]",
        c.adds_ms.len(),
        f(c.median_ms),
        plus(c.over_cached_ms),
        list(&c.adds_ms, 1)
    );
    println!(
        "  where an ADD's time goes (medians): process start (CNI VERSION) {} ms (p90 {}); etcd adds {} ms (http - static), TLS {} ms (https+cert - http), auth {} ms (https+cert+auth - https+cert, token cached)",
        f(e.process_start_ms),
        f(e.process_start_p90_ms),
        plus(e.etcd_adds_ms),
        plus(e.tls_adds_ms),
        plus(e.auth_adds_ms)
    );
    println!(
        "  first ADD of each network: the node's lease claimed and the datapath made (and with auth the first token taken)"
    );
    println!(
        "  ADD median < {:.0} ms with every etcd store: {}",
        e.target_ms,
        pass(e.pass())
    );
    println!();
    if let Some(first) = e.client.first() {
        println!(
            "== berth_etcd in process, from the host namespace: a fresh client's first call and the next ones, {} each, ms ==",
            first.calls
        );
        println!(
            "   (each fresh client after a {pause:.0} ms pause; \"again\": on the same connection at once, then after another {pause:.0} ms pause)",
            pause = first.pause_ms
        );
        println!(
            "{:<16} {:>11}  {:>10} {:>6}  {:>13} {:>6}  {:>14} {:>6}  {:>16} {:>11}",
            "store",
            "Client::new",
            "first call",
            "p90",
            "again at once",
            "p90",
            "again, paused",
            "p90",
            "connection setup",
            "pause costs"
        );
        for r in &e.client {
            println!(
                "{:<16} {:>11}  {:>10} {:>6}  {:>13} {:>6}  {:>14} {:>6}  {:>16} {:>11}",
                r.store,
                f(r.new_median_ms),
                f(r.first_call_median_ms),
                f(r.first_call_p90_ms),
                f(r.reused_call_median_ms),
                f(r.reused_call_p90_ms),
                f(r.paused_call_median_ms),
                f(r.paused_call_p90_ms),
                plus(r.setup_ms),
                plus(r.wake_ms)
            );
        }
    }
    println!("  (the part took {:.1} s)", e.secs);
    println!();
}

fn print_bandwidth(bw: &Bandwidth) {
    println!(
        "== bandwidth: berth-bridge + berth-bandwidth vs bridge + bandwidth, chained, {} rounds per level, median / p90 ms ==",
        bw.reps
    );
    println!(
        "{:>6} {:<11} {:>8} {:>8} {:>7}  {:>8} {:>8} {:>7}  {:>8}",
        "shaped", "step", "berth", "p90", "growth", "ref", "p90", "growth", "ref/berth"
    );
    for l in &bw.levels {
        for s in &l.steps {
            let (b, r) = (&s.berth, &s.reference);
            println!(
                "{:>6} {:<11} {:>8} {:>8} {:>7}  {:>8} {:>8} {:>7}  {:>8}",
                l.shaped,
                s.step,
                f(b.median_ms),
                f(b.p90_ms),
                fx2(b.growth),
                f(r.median_ms),
                f(r.p90_ms),
                fx2(r.growth),
                fx(s.ratio)
            );
            if let Some(o) = &s.before {
                println!(
                    "{:>6} {:<11} {:>8} {:>8} {:>7}  (berth (before); before/berth {})",
                    "",
                    "",
                    f(o.median_ms),
                    f(o.p90_ms),
                    fx2(o.growth),
                    fx2(s.ratio_before)
                );
            }
        }
        if l.shaped > 0 {
            println!(
                "       (installed: berth {:.1} s, ref {:.1} s)",
                l.berth_fill_secs, l.ref_fill_secs
            );
        }
    }
    println!(
        "-- rates at the receiver, {} shaped beside, iperf3 -t {} -O {}, UDP sent at 2x the limit --",
        bw.rates_at_shaped, bw.iperf_secs, bw.omit_secs
    );
    for r in &bw.rates {
        println!(
            "{:>3} Mbit/s {} {:<8} berth {:<28} ref {}",
            r.limit_bps / 1_000_000,
            r.proto,
            r.direction,
            r.berth.describe(),
            r.reference.describe()
        );
    }
    println!("  (the part took {:.1} s)", bw.secs);
    println!();
}

fn print_host(rows: &[HostRow]) {
    println!("== berth-host vs the reference plugin of each mode: ADD / DEL, median ms ==");
    println!(
        "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
        "mode", "berth ADD", "berth DEL", "ref", "ref ADD", "ref DEL", "ADD x", "DEL x"
    );
    for r in rows {
        println!(
            "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
            r.mode,
            f(r.berth.add_ms),
            f(r.berth.del_ms),
            r.reference.plugin,
            f(r.reference.add_ms),
            f(r.reference.del_ms),
            fx(r.add_ratio),
            fx(r.del_ratio),
        );
    }
    println!();
}

fn print_portmap(rows: &[PortmapRow]) {
    println!("== portmap: one more container (2 mappings) with M mappings installed, median ms ==");
    println!(
        "   (growth = cost at M / cost at 0; berth's target at 5000: ADD and DEL growth <= 1.25x)"
    );
    let before = rows.iter().any(|r| r.before.is_some());
    if before {
        println!(
            "{:>6}  {:>10} {:>7} {:>10} {:>7}  {:>10} {:>7} {:>6} {:>10} {:>7} {:>6}  {:>10} {:>7} {:>10} {:>7}",
            "M", "berth ADD", "growth", "berth DEL", "growth", "before ADD", "growth", "x", "before DEL", "growth", "x", "ref ADD", "growth", "ref DEL", "growth"
        );
    } else {
        println!(
            "{:>6}  {:>10} {:>7} {:>10} {:>7}  {:>10} {:>7} {:>10} {:>7}",
            "M",
            "berth ADD",
            "growth",
            "berth DEL",
            "growth",
            "ref ADD",
            "growth",
            "ref DEL",
            "growth"
        );
    }
    for r in rows {
        let (b, rf) = (&r.berth, &r.reference);
        let old = match &r.before {
            Some(o) => format!(
                "  {:>10} {:>7} {:>6} {:>10} {:>7} {:>6}",
                f(o.add_ms),
                fx(o.add_growth),
                fx(r.add_ratio_before),
                f(o.del_ms),
                fx(o.del_growth),
                fx(r.del_ratio_before)
            ),
            None => String::new(),
        };
        println!(
            "{:>6}  {:>10} {:>7} {:>10} {:>7}{old}  {:>10} {:>7} {:>10} {:>7}",
            r.installed_mappings,
            f(b.add_ms),
            fx(b.add_growth),
            f(b.del_ms),
            fx(b.del_growth),
            f(rf.add_ms),
            fx(rf.add_growth),
            f(rf.del_ms),
            fx(rf.del_growth),
        );
    }
    if before {
        println!("   (x: berth (before)'s median over berth's)");
    }
    println!("   firewall part (in process, one nf_tables batch), median / p90 ms:");
    for r in rows {
        let fw = &r.firewall;
        let mut line = format!(
            "{:>6}  ADD {} / {}   DEL {} / {}   (< {} ms: {})",
            r.installed_mappings,
            f(fw.add.median_ms),
            f(fw.add.p90_ms),
            f(fw.del.median_ms),
            f(fw.del.p90_ms),
            fw.target_ms,
            pass(fw.pass())
        );
        if let (Some(a), Some(d)) = (&fw.first_add, &fw.last_del) {
            line.push_str(&format!(
                "   first ADD {} / {}   last DEL {} / {}",
                f(a.median_ms),
                f(a.p90_ms),
                f(d.median_ms),
                f(d.p90_ms)
            ));
        }
        println!("{line}");
    }
    println!();
}

fn print_engine(v: &Engine) {
    let (r, d, n) = (&v.round_trip, &v.docker, &v.network);
    println!("== berthd under the Docker engine ==");
    println!(
        "Create+Mount+Unmount+Remove over the socket, {} volumes: managed median {} ms, p99 {} ms; size-limited (8M) median {} ms, p99 {} ms",
        r.volumes, f(r.managed_median_ms), f(r.managed_p99_ms), f(r.sized_median_ms), f(r.sized_p99_ms)
    );
    println!(
        "docker volume create + docker run -v, {} volumes each: -d berth {} ms, -d local {} ms, berth/local {} (target <= 1.3x)",
        d.volumes, f(d.berth_ms), f(d.local_ms), fx(d.berth_over_local)
    );
    println!(
        "docker run --rm on a network, {} runs each: berth {} ms, bridge driver {} ms, berth/bridge {} (target <= 1.2x)",
        n.runs, f(n.berth_ms), f(n.bridge_driver_ms), fx(n.berth_over_bridge)
    );
    println!();
}

fn print_compare(rows: &[CompareRow]) {
    println!("== per-container ADD / DEL, median ms (one exec of the bridge plugin each) ==");
    println!(
        "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
        "N", "berth ADD", "ref ADD", "ref/berth", "berth DEL", "ref DEL", "ref/berth"
    );
    for r in rows {
        let reference = r.reference.as_ref();
        println!(
            "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
            r.n,
            f(r.berth.add_median_ms),
            f(reference.and_then(|s| s.add_median_ms)),
            fx(r.add_ratio_ref_over_berth),
            f(r.berth.del_median_ms),
            f(reference.and_then(|s| s.del_median_ms)),
            fx(r.del_ratio_ref_over_berth),
        );
        if let Some(old) = &r.before {
            println!(
                "{:>6}  berth (before): ADD {} ({} berth's), DEL {} ({} berth's)",
                "",
                f(old.add_median_ms),
                fx2(r.add_ratio_before_over_berth),
                f(old.del_median_ms),
                fx2(r.del_ratio_before_over_berth),
            );
        }
    }
    let growth: Vec<&CompareRow> = rows.iter().filter(|r| r.n >= 200).collect();
    if !growth.is_empty() {
        println!();
        println!("== ADD median ms: first 100 vs last 100 containers ==");
        println!(
            "{:>6}  {:<6} {:>10} {:>10} {:>10}",
            "N", "impl", "first100", "last100", "last/first"
        );
        for r in growth {
            for (imp, s) in r.series() {
                println!(
                    "{:>6}  {:<6} {:>10} {:>10} {:>10}",
                    r.n,
                    imp,
                    f(s.add_first100_median_ms),
                    f(s.add_last100_median_ms),
                    // two decimals: the target (1.25x) needs them
                    fx2(s.add_growth())
                );
            }
        }
    }
    for r in rows {
        for (imp, s) in r.series() {
            if let Some(e) = &s.error {
                println!("FAILED {imp} N={}: {e}", r.n);
            }
        }
    }
    println!();
}

fn print_floor(fl: &Floor) {
    println!(
        "== veth deletion floor (median of {} RTM_DELLINKs, netlink round trip included) ==",
        fl.reps
    );
    println!(
        "  veth, both ends in one netns:   {:>8} ms",
        f(fl.veth_del_same_netns_ms)
    );
    println!(
        "  veth, peer in another netns:    {:>8} ms",
        f(fl.veth_del_peer_in_other_netns_ms)
    );
    println!(
        "  bridge port ({} other ports), peer up in another netns: {:>8} ms",
        fl.bridge_ports,
        f(fl.veth_del_bridge_port_ms)
    );
    println!();
}

fn print_first_last(fl: &FirstLast) {
    println!(
        "== a network's first ADD and last DEL vs the usual ones ({} networks of {} containers per build and case), median ms (target: <= +{} ms) ==",
        fl.networks, fl.containers, fl.target_ms
    );
    println!(
        "{:<15} {:<28} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "build", "host holds", "first ADD", "usual ADD", "diff", "last DEL", "usual DEL", "diff"
    );
    for r in &fl.rows {
        println!(
            "{:<15} {:<28} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}  {}",
            r.build,
            r.case,
            f(r.first_add.median_ms),
            f(r.usual_add.median_ms),
            plus(r.add_over_usual_ms),
            f(r.last_del.median_ms),
            f(r.usual_del.median_ms),
            plus(r.del_over_usual_ms),
            pass(r.pass(fl.target_ms))
        );
    }
    println!();
}

fn print_del_in_place(d: &DelInPlace) {
    println!();
    println!(
        "== {} DEL vs the kernel deleting the same veth ({} containers on one network, alternating) ==",
        d.build, d.containers
    );
    println!(
        "  kernel (one RTM_DELLINK of the host veth):          {:>8} ms",
        f(d.kernel_veth_del_ms)
    );
    println!(
        "  berth DEL (whole plugin run):                       {:>8} ms  ({} the kernel's)",
        f(d.berth_del_ms),
        fx(d.berth_over_kernel)
    );
    println!();
}

fn print_concurrent(c: &Concurrent) {
    println!(
        "== {} concurrent ADDs on one berth network ==",
        c.containers
    );
    println!(
        "  {}: {} of {} ADDs succeeded, {} distinct addresses, {} duplicates",
        if c.ok { "OK" } else { "FAILED" },
        c.add_succeeded,
        c.containers,
        c.distinct_addresses,
        c.duplicate_addresses.len(),
    );
    println!(
        "  ADD: wall {} ms, median {} ms, max {} ms;  DEL: {} ok, wall {} ms, median {} ms, max {} ms",
        f(Some(c.add_wall_ms)), f(c.add_median_ms), f(c.add_max_ms),
        c.del_succeeded, f(Some(c.del_wall_ms)), f(c.del_median_ms), f(c.del_max_ms),
    );
    for (key, list) in [
        ("add_failures", &c.add_failures),
        ("duplicate_addresses", &c.duplicate_addresses),
        ("del_failures", &c.del_failures),
    ] {
        for e in list.iter().take(10) {
            println!("  {key}: {e}");
        }
    }
    println!();
}

fn print_error(part: &str, e: &Option<String>) {
    if let Some(e) = e {
        println!("FAILED {part}: {e}\n");
    }
}

pub(crate) fn print_tables(report: &Report) {
    if let Some(rows) = &report.host {
        print_host(rows);
    }
    print_error("host", &report.host_error);
    if let Some(rows) = &report.portmap {
        print_portmap(rows);
    }
    print_error("portmap", &report.portmap_error);
    if let Some(v) = &report.volumes {
        print_engine(v);
    }
    print_error("volumes", &report.volumes_error);
    if let Some(o) = &report.overlay {
        print_overlay(o);
    }
    print_error("overlay", &report.overlay_error);
    if let Some(c) = &report.cri {
        print_cri(c);
    }
    print_error("cri", &report.cri_error);
    if let Some(r) = &report.reconcile {
        print_reconcile(r);
    }
    print_error("reconcile", &report.reconcile_error);
    if let Some(e) = &report.etcd {
        print_etcd(e);
    }
    print_error("etcd", &report.etcd_error);
    if let Some(bw) = &report.bandwidth {
        print_bandwidth(bw);
    }
    print_error("bandwidth", &report.bandwidth_error);
    if let Some(c) = &report.cluster {
        print_cluster(c);
    }
    print_error("cluster", &report.cluster_error);
    if let Some(rows) = &report.compare {
        print_compare(rows);
    }
    if let Some(fl) = &report.floor {
        print_floor(fl);
    }
    if let Some(d) = &report.del_in_place {
        print_del_in_place(d);
    }
    print_error("del_in_place", &report.del_in_place_error);
    if let Some(d) = &report.del_in_place_before {
        print_del_in_place(d);
    }
    print_error("del_in_place (before)", &report.del_in_place_before_error);
    if let Some(fl) = &report.first_last {
        print_first_last(fl);
    }
    print_error("first_last", &report.first_last_error);
    print_error("floor", &report.floor_error);
    if let Some(c) = &report.concurrent {
        print_concurrent(c);
    }
    print_error("concurrent", &report.concurrent_error);
}
