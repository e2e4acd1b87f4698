//! The report as tables for people (`--json` prints it as it is).

use serde_json::Value;

use crate::stats::ratio;

pub(crate) fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

pub(crate) fn fx(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.1}x"),
        None => "-".into(),
    }
}

pub(crate) fn pass(v: &Value) -> &'static str {
    if *v == true {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Numbers of a JSON array, each formatted with `digits` decimals.
pub(crate) fn list(v: &Value, digits: usize) -> String {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| format!("{:.*}", digits, x.as_f64().unwrap_or(f64::NAN)))
        .collect();
    items.join(" ")
}

pub(crate) fn print_overlay(o: &Value) {
    let t = &o["throughput"];
    if t.is_object() {
        println!(
            "== berth-overlay throughput: iperf3 TCP, {} runs x {} s per path, alternating ==",
            t["runs_per_path"], t["iperf_secs"]
        );
        let m = &t["mtu"];
        println!(
            "   (MTU: underlay {}; berth eth0 {}, bov42 {}, berth.42 {}; hand-built eth0 {}, hbr {}, vxh {}; raw vxb {})",
            m["underlay"],
            m["berth_eth0"],
            m["berth_bridge"],
            m["berth_vxlan"],
            m["hand_eth0"],
            m["hand_bridge"],
            m["hand_vxlan"],
            m["raw_vxlan"]
        );
        let paths = [
            (
                "berth",
                "berth",
                "container -> container over berth-overlay",
            ),
            (
                "hand",
                "hand_container",
                "container -> container, built by hand",
            ),
            ("raw", "raw_vxlan", "host -> host over a raw VXLAN"),
        ];
        for (label, key, what) in paths {
            let p = &t[key];
            println!(
                "  {label:<6} {what:<42} median {:>6} Gbit/s   runs [{}]   retransmits [{}]",
                f(&p["median_gbps"]),
                list(&p["gbps"], 2),
                list(&p["retransmits"], 0),
            );
        }
        println!(
            "  berth/hand {} (target >= {:.2}): {}",
            f(&t["berth_over_hand_container"]),
            t["target_ratio"].as_f64().unwrap_or(f64::NAN),
            pass(&t["ratio_pass"])
        );
        println!(
            "  berth/raw  {} (raw VXLAN host to host, no veth/bridge/forwarding: for reference, not judged)",
            f(&t["berth_over_raw_vxlan"])
        );
        let frag: Vec<String> = paths
            .iter()
            .map(|(label, key, _)| {
                format!(
                    "{label} +{} / +{}",
                    t[key]["frag_creates"], t[key]["reasm_reqds"]
                )
            })
            .collect();
        println!(
            "  fragmentation, FragCreates / ReasmReqds over each path's namespaces: {}: {}",
            frag.join(", "),
            pass(&t["no_fragmentation"])
        );
        println!();
    }
    if let Some(e) = o["throughput_error"].as_str() {
        println!("FAILED overlay throughput: {e}\n");
    }
    let c = &o["convergence"];
    if c.is_object() {
        println!(
            "== berth-overlay agent convergence: etcd, {} simulated nodes (target < {:.0} ms) ==",
            c["nodes"],
            c["target_ms"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "  initial: agent start -> {} onlink routes   {:>8} ms             {}   (records put beforehand in {} ms; agent VTEP {})",
            c["nodes"], f(&c["initial_ms"]), pass(&c["initial_pass"]), f(&c["records_put_ms"]), c["agent_vtep_address"].as_str().unwrap_or("-")
        );
        for (label, key) in [
            ("join:  record put -> its route     ", "join"),
            ("leave: record deleted -> route gone", "leave"),
        ] {
            println!(
                "  {label}  median {:>8} ms, max {:>8} ms   {}   [{}]",
                f(&c[format!("{key}_median_ms")]),
                f(&c[format!("{key}_max_ms")]),
                pass(&c[format!("{key}_pass")]),
                list(&c[format!("{key}_ms")], 1),
            );
        }
        println!(
            "  FDB entries with a dst on berth.77: {}, onlink routes: {}, live nodes: {}: {}",
            c["fdb_entries_with_dst"],
            c["onlink_routes"],
            c["live_nodes"],
            if c["fdb_matches_live_nodes"] == true {
                "OK"
            } else {
                "MISMATCH"
            }
        );
        println!();
    }
    if let Some(e) = o["convergence_error"].as_str() {
        println!("FAILED overlay convergence: {e}\n");
    }
}

pub(crate) fn print_cri(c: &Value) {
    println!(
        "== cri: pods under containerd {}'s CRI, median ms over {} pods (one hostPort each, beside a resident pod) ==",
        c["containerd"].as_str().unwrap_or("?"),
        c["pods"]
    );
    println!(
        "{:<44} {:>10} {:>10} {:>9}",
        "", "berth", "ref", "ref/berth"
    );
    let rows = [
        ("RunPodSandbox", "run_ms"),
        ("  CNI ADD (containerd's log)", "cni_add_ms"),
        ("StopPodSandbox", "stop_ms"),
        ("  CNI DEL (containerd's metrics)", "cni_del_stop_ms"),
        ("RemovePodSandbox", "remove_ms"),
        ("  CNI DEL again, no netns (metrics)", "cni_del_remove_ms"),
        ("Run + Stop + Remove", "total_ms"),
    ];
    for (name, key) in rows {
        println!(
            "{:<44} {:>10} {:>10} {:>9}",
            name,
            f(&c["berth"][key]),
            f(&c["ref"][key]),
            fx(&c["ratio"][key])
        );
    }
    println!();
}

pub(crate) fn print_tables(report: &Value) {
    if let Some(rows) = report["host"].as_array() {
        println!("== berth-host vs the reference plugin of each mode: ADD / DEL, median ms ==");
        println!(
            "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
            "mode", "berth ADD", "berth DEL", "ref", "ref ADD", "ref DEL", "ADD x", "DEL x"
        );
        for r in rows {
            println!(
                "{:<8} {:>10} {:>10} {:<12} {:>10} {:>10} {:>8} {:>8}",
                r["mode"].as_str().unwrap_or("-"),
                f(&r["berth"]["add_ms"]),
                f(&r["berth"]["del_ms"]),
                r["ref"]["plugin"].as_str().unwrap_or("-"),
                f(&r["ref"]["add_ms"]),
                f(&r["ref"]["del_ms"]),
                fx(&r["add_ratio"]),
                fx(&r["del_ratio"]),
            );
        }
        println!();
    }
    if let Some(e) = report["host_error"].as_str() {
        println!("FAILED host: {e}\n");
    }
    if let Some(rows) = report["portmap"].as_array() {
        println!(
            "== portmap: one more container (2 mappings) with M mappings installed, median ms =="
        );
        println!("   (growth = cost at M / cost at 0; berth's target at 5000: ADD and DEL growth <= 1.25x)");
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
        for r in rows {
            let (b, rf) = (&r["berth"], &r["ref"]);
            println!(
                "{:>6}  {:>10} {:>7} {:>10} {:>7}  {:>10} {:>7} {:>10} {:>7}",
                r["installed_mappings"].as_u64().unwrap_or(0),
                f(&b["add_ms"]),
                fx(&b["add_growth"]),
                f(&b["del_ms"]),
                fx(&b["del_growth"]),
                f(&rf["add_ms"]),
                fx(&rf["add_growth"]),
                f(&rf["del_ms"]),
                fx(&rf["del_growth"]),
            );
        }
        println!();
    }
    if let Some(e) = report["portmap_error"].as_str() {
        println!("FAILED portmap: {e}\n");
    }
    if report["volumes"].is_object() {
        let (r, d) = (
            &report["volumes"]["round_trip"],
            &report["volumes"]["docker"],
        );
        println!("== berthd under the Docker engine ==");
        println!(
            "Create+Mount+Unmount+Remove over the socket, {} volumes: managed median {} ms, p99 {} ms; size-limited (8M) median {} ms, p99 {} ms",
            r["volumes"], f(&r["managed_median_ms"]), f(&r["managed_p99_ms"]), f(&r["sized_median_ms"]), f(&r["sized_p99_ms"])
        );
        println!(
            "docker volume create + docker run -v, {} volumes each: -d berth {} ms, -d local {} ms, berth/local {} (target <= 1.3x)",
            d["volumes"], f(&d["berth_ms"]), f(&d["local_ms"]), fx(&d["berth_over_local"])
        );
        let n = &report["volumes"]["network"];
        println!(
            "docker run --rm on a network, {} runs each: berth {} ms, bridge driver {} ms, berth/bridge {} (target <= 1.2x)",
            n["runs"], f(&n["berth_ms"]), f(&n["bridge_driver_ms"]), fx(&n["berth_over_bridge"])
        );
        println!();
    }
    if let Some(e) = report["volumes_error"].as_str() {
        println!("FAILED volumes: {e}\n");
    }
    if report["overlay"].is_object() {
        print_overlay(&report["overlay"]);
    }
    if let Some(e) = report["overlay_error"].as_str() {
        println!("FAILED overlay: {e}\n");
    }
    if report["cri"].is_object() {
        print_cri(&report["cri"]);
    }
    if let Some(e) = report["cri_error"].as_str() {
        println!("FAILED cri: {e}\n");
    }
    if let Some(rows) = report["compare"].as_array() {
        println!("== per-container ADD / DEL, median ms (one exec of the bridge plugin each) ==");
        println!(
            "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
            "N", "berth ADD", "ref ADD", "ref/berth", "berth DEL", "ref DEL", "ref/berth"
        );
        for r in rows {
            println!(
                "{:>6}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
                r["n"].as_u64().unwrap_or(0),
                f(&r["berth"]["add_median_ms"]),
                f(&r["ref"]["add_median_ms"]),
                fx(&r["add_ratio_ref_over_berth"]),
                f(&r["berth"]["del_median_ms"]),
                f(&r["ref"]["del_median_ms"]),
                fx(&r["del_ratio_ref_over_berth"]),
            );
        }
        let growth: Vec<&Value> = rows
            .iter()
            .filter(|r| r["n"].as_u64().unwrap_or(0) >= 200)
            .collect();
        if !growth.is_empty() {
            println!();
            println!("== ADD median ms: first 100 vs last 100 containers ==");
            println!(
                "{:>6}  {:<6} {:>10} {:>10} {:>10}",
                "N", "impl", "first100", "last100", "last/first"
            );
            for r in growth {
                for imp in ["berth", "ref"] {
                    let s = &r[imp];
                    if s.is_null() {
                        continue;
                    }
                    let (a, b) = (&s["add_first100_median_ms"], &s["add_last100_median_ms"]);
                    let g = ratio(b.as_f64(), a.as_f64())
                        .map(Value::from)
                        .unwrap_or(Value::Null);
                    println!(
                        "{:>6}  {:<6} {:>10} {:>10} {:>10}",
                        r["n"].as_u64().unwrap_or(0),
                        imp,
                        f(a),
                        f(b),
                        // two decimals: the target (1.25x) needs them
                        g.as_f64().map_or("-".into(), |x| format!("{x:.2}x"))
                    );
                }
            }
        }
        for r in rows {
            for imp in ["berth", "ref"] {
                if let Some(e) = r[imp]["error"].as_str() {
                    println!("FAILED {imp} N={}: {e}", r["n"]);
                }
            }
        }
        println!();
    }
    if !report["floor"].is_null() {
        let fl = &report["floor"];
        println!(
            "== veth deletion floor (median of {} RTM_DELLINKs, netlink round trip included) ==",
            fl["reps"]
        );
        println!(
            "  veth, both ends in one netns:   {:>8} ms",
            f(&fl["veth_del_same_netns_ms"])
        );
        println!(
            "  veth, peer in another netns:    {:>8} ms",
            f(&fl["veth_del_peer_in_other_netns_ms"])
        );
        println!(
            "  bridge port ({} other ports), peer up in another netns: {:>8} ms",
            fl["bridge_ports"],
            f(&fl["veth_del_bridge_port_ms"])
        );
        println!();
    }
    if !report["del_in_place"].is_null() {
        let d = &report["del_in_place"];
        println!();
        println!("== berth DEL vs the kernel deleting the same veth ({} containers on one network, alternating) ==", d["containers"]);
        println!(
            "  kernel (one RTM_DELLINK of the host veth):          {:>8} ms",
            f(&d["kernel_veth_del_ms"])
        );
        println!(
            "  berth DEL (whole plugin run):                       {:>8} ms  ({} the kernel's)",
            f(&d["berth_del_ms"]),
            fx(&d["berth_over_kernel"])
        );
        println!();
    }
    if let Some(e) = report["del_in_place_error"].as_str() {
        println!("FAILED del_in_place: {e}\n");
    }
    if let Some(e) = report["floor_error"].as_str() {
        println!("FAILED floor: {e}\n");
    }
    if !report["concurrent"].is_null() {
        let c = &report["concurrent"];
        println!(
            "== {} concurrent ADDs on one berth network ==",
            c["containers"]
        );
        println!(
            "  {}: {} of {} ADDs succeeded, {} distinct addresses, {} duplicates",
            if c["ok"] == true { "OK" } else { "FAILED" },
            c["add_succeeded"],
            c["containers"],
            c["distinct_addresses"],
            c["duplicate_addresses"].as_array().map_or(0, |v| v.len()),
        );
        println!(
            "  ADD: wall {} ms, median {} ms, max {} ms;  DEL: {} ok, wall {} ms, median {} ms, max {} ms",
            f(&c["add_wall_ms"]), f(&c["add_median_ms"]), f(&c["add_max_ms"]),
            c["del_succeeded"], f(&c["del_wall_ms"]), f(&c["del_median_ms"]), f(&c["del_max_ms"]),
        );
        for key in ["add_failures", "duplicate_addresses", "del_failures"] {
            for e in c[key].as_array().into_iter().flatten().take(10) {
                println!("  {key}: {}", e.as_str().unwrap_or_default());
            }
        }
        println!();
    }
    if let Some(e) = report["concurrent_error"].as_str() {
        println!("FAILED concurrent: {e}\n");
    }
}
