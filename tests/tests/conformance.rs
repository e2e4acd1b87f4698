//! berth-conformance run for real against berth's plugins (every applicable
//! case must pass) and against Debian's reference plugins (the report is
//! printed; its failures are findings about the reference, not test
//! failures).
//!
//! The suite makes its own private host namespace and container namespaces
//! (`bc-<pid>-*`) and removes them; these tests also check that nothing of
//! the run is left: namespaces, temp dirs, files in the run dir.

use std::process::{Command, Stdio};

use berth_tests::{bin, bin_dir, require_root, TempDir, REFERENCE_CNI_DIR};
use serde_json::{json, Value};

struct Run {
    status: i32,
    stdout: String,
    pid: u32,
}

fn conformance(cni_path: &str, conf: &Value, dir: &TempDir, extra: &[&str]) -> Run {
    let conf_path = dir.path().join("net.conflist");
    std::fs::write(&conf_path, serde_json::to_vec_pretty(conf).unwrap()).unwrap();
    let mut cmd = Command::new(bin("berth-conformance"));
    cmd.args(["--cni-path", cni_path, "--conf"])
        .arg(&conf_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run berth-conformance");
    let pid = child.id();
    let out = child
        .wait_with_output()
        .expect("wait for berth-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout,
        pid,
    }
}

/// The summary line CI parses: exactly "N passed, N failed".
fn summary(stdout: &str) -> Option<(u32, u32)> {
    stdout.lines().find_map(|l| {
        let (p, f) = l.split_once(" passed, ")?;
        let f = f.strip_suffix(" failed")?;
        Some((p.parse().ok()?, f.parse().ok()?))
    })
}

/// Nothing of run `pid` is left: namespaces and the suite's temp dirs.
fn assert_no_leftovers(pid: u32) {
    let prefix = format!("bc-{pid}-");
    let ns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    let tmp: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(tmp.is_empty(), "temp dirs left behind: {tmp:?}");
}

#[test]
fn berth_passes_every_applicable_case() {
    require_root();
    let dir = TempDir::new("conf-berth");
    let run_dir = TempDir::new("conf-berth-run");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "bcberth",
        "plugins": [{
            "type": "berth-bridge",
            "bridge": "bcberth0",
            "isGateway": true,
            "ipMasq": true,
            "capabilities": {"ips": true},
            "ipam": {
                "type": "berth-ipam",
                "ranges": [[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd12:3::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        }, {"type": "berth-portmap", "capabilities": {"portMappings": true}}]
    });
    let rd = run_dir.path().to_str().unwrap().to_string();
    let env = format!("BERTH_RUN_DIR={rd}");
    let cni_path = bin_dir().to_str().unwrap().to_string();
    let r = conformance(&cni_path, &conf, &dir, &["--env", &env, "--state-dir", &rd]);
    assert_no_leftovers(r.pid);
    let (passed, failed) = summary(&r.stdout).expect("no summary line");
    assert_eq!(failed, 0, "failed cases:\n{}", r.stdout);
    assert!(
        r.stdout.lines().any(|l| l.ends_with(" 0 failed")),
        "{}",
        r.stdout
    );
    assert_eq!(r.status, 0, "exit status with 0 failed cases");
    assert!(passed >= 40, "only {passed} cases passed:\n{}", r.stdout);
    // Every case applies to a 1.1.0 bridge + IPAM network with capability ips.
    assert!(r.stdout.contains("\n0 not applicable\n"), "{}", r.stdout);
    // The markdown report of the same kind of run (and a second run in a
    // row works: nothing of the first is in its way).
    let r = conformance(
        &cni_path,
        &conf,
        &dir,
        &[
            "--env",
            &env,
            "--state-dir",
            &rd,
            "--format",
            "markdown",
            "--case",
            "add-result",
            "--case",
            "gc-valid-attachments",
        ],
    );
    assert_no_leftovers(r.pid);
    assert_eq!(r.status, 0, "{}", r.stdout);
    assert!(
        r.stdout
            .starts_with("| case | result | detail |\n|---|---|---|\n"),
        "{}",
        r.stdout
    );
    assert_eq!(summary(&r.stdout), Some((2, 0)), "{}", r.stdout);
}

/// berth-bridge, berth-portmap and berth-bandwidth chained, with limits in
/// both directions: every case passes with the rate-limit plugin in the
/// chain (its result passes the bridge's through, its DEL and GC leave no
/// ifb, CHECK verifies its qdiscs).
#[test]
fn berth_passes_every_applicable_case_with_berth_bandwidth_chained() {
    require_root();
    let dir = TempDir::new("conf-bw");
    let run_dir = TempDir::new("conf-bw-run");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "bcbw",
        "plugins": [{
            "type": "berth-bridge",
            "bridge": "bcbw0",
            "isGateway": true,
            "ipMasq": true,
            "capabilities": {"ips": true},
            "ipam": {
                "type": "berth-ipam",
                "ranges": [[{"subnet": "10.125.0.0/24"}], [{"subnet": "fd12:5::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        },
        {"type": "berth-portmap", "capabilities": {"portMappings": true}},
        {"type": "berth-bandwidth", "capabilities": {"bandwidth": true},
         "ingressRate": 10_000_000, "ingressBurst": 524_288,
         "egressRate": 50_000_000, "egressBurst": 524_288}]
    });
    let rd = run_dir.path().to_str().unwrap().to_string();
    let env = format!("BERTH_RUN_DIR={rd}");
    let cni_path = bin_dir().to_str().unwrap().to_string();
    let r = conformance(&cni_path, &conf, &dir, &["--env", &env, "--state-dir", &rd]);
    assert_no_leftovers(r.pid);
    let (passed, failed) = summary(&r.stdout).expect("no summary line");
    assert_eq!(failed, 0, "failed cases:\n{}", r.stdout);
    assert_eq!(r.status, 0, "exit status with 0 failed cases");
    assert!(passed >= 40, "only {passed} cases passed:\n{}", r.stdout);
    assert!(r.stdout.contains("\n0 not applicable\n"), "{}", r.stdout);
}

#[test]
fn reference_plugins_run_to_completion() {
    require_root();
    for p in ["bridge", "host-local", "loopback"] {
        assert!(
            std::path::Path::new(REFERENCE_CNI_DIR).join(p).is_file(),
            "reference plugin {p} missing: apt-get install containernetworking-plugins"
        );
    }
    let dir = TempDir::new("conf-ref");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "bcref",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "bcref0",
                "isGateway": true,
                "ipMasq": true,
                "capabilities": {"ips": true},
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.124.0.0/24"}], [{"subnet": "fd12:4::/64"}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
                }
            },
            {"type": "loopback"}
        ]
    });
    let r = conformance(REFERENCE_CNI_DIR, &conf, &dir, &[]);
    println!("{}", r.stdout);
    assert_no_leftovers(r.pid);
    assert!(
        r.status == 0 || r.status == 1,
        "the suite itself failed (exit {})",
        r.status
    );
    let (passed, failed) = summary(&r.stdout).expect("no summary line");
    assert!(passed + failed > 0, "{}", r.stdout);
    assert_eq!(
        r.status == 1,
        failed > 0,
        "exit status does not match {failed} failed"
    );
}

/// Case ids with their outcome ("PASS", "FAIL", "N/A") from a text report.
fn outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (result, rest) = l.split_once(char::is_whitespace)?;
            if !["PASS", "FAIL", "N/A"].contains(&result) {
                return None;
            }
            let id = rest.split_whitespace().next()?;
            Some((id.to_string(), result.to_string()))
        })
        .collect()
}

fn failed_cases(stdout: &str) -> Vec<String> {
    outcomes(stdout)
        .into_iter()
        .filter(|(_, r)| r == "FAIL")
        .map(|(id, _)| id)
        .collect()
}

/// berth-host, one mode per run, the suite's host namespace given the
/// links the mode needs by `--host-setup`.
fn berth_host_run(tag: &str, plugin: Value, extra: &[&str]) -> Run {
    berth_host_chain_run(tag, vec![plugin], extra)
}

/// [`berth_host_run`] with plugins chained after berth-host.
fn berth_host_chain_run(tag: &str, plugins: Vec<Value>, extra: &[&str]) -> Run {
    require_root();
    let dir = TempDir::new(&format!("conf-host-{tag}"));
    let run_dir = TempDir::new(&format!("conf-host-{tag}-run"));
    let conf = json!({"cniVersion": "1.1.0", "name": format!("bchost{tag}"), "plugins": plugins});
    let rd = run_dir.path().to_str().unwrap().to_string();
    let env = format!("BERTH_RUN_DIR={rd}");
    let cni_path = bin_dir().to_str().unwrap().to_string();
    let mut args = vec!["--env", env.as_str(), "--state-dir", rd.as_str()];
    args.extend_from_slice(extra);
    let r = conformance(&cni_path, &conf, &dir, &args);
    assert_no_leftovers(r.pid);
    // berth-portmap's host-wide database stays, as berth-ipam's does.
    let left: Vec<_> = std::fs::read_dir(&rd)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ports.db"))
        })
        .collect();
    assert!(left.is_empty(), "records left in the run dir: {left:?}");
    r
}

fn host_ipam(subnet4: &str, subnet6: &str) -> Value {
    json!({
        "type": "berth-ipam",
        "ranges": [[{"subnet": subnet4}], [{"subnet": subnet6}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    })
}

/// An uplink in the suite's host namespace: `name` with its peer
/// `name`p carrying the network's gateways (created only if missing).
fn uplink_setup(name: &str, gw4: &str, gw6: &str) -> String {
    format!(
        "ip link show {name} >/dev/null 2>&1 || {{ ip link add {name} type veth peer name {name}p && \
         ip addr add {gw4} dev {name}p && ip addr add {gw6} dev {name}p nodad && \
         ip link set {name} up && ip link set {name}p up; }}"
    )
}

#[test]
fn berth_host_none_passes_every_applicable_case() {
    // Loopback: CNI_IFNAME is lo; the cases about addresses from IPAM
    // don't apply.
    let r = berth_host_run(
        "none",
        json!({"type": "berth-host", "mode": "none"}),
        &["--ifname", "lo"],
    );
    assert_eq!(
        failed_cases(&r.stdout),
        Vec::<String>::new(),
        "{}",
        r.stdout
    );
    let (passed, _) = summary(&r.stdout).expect("no summary line");
    assert!(passed >= 30, "only {passed} cases passed:\n{}", r.stdout);
}

/// The suite on a loopback plugin (`--ifname lo`) from `cni_path`, the
/// conflist `{"type": "loopback"}` alone at `version`.
fn loopback_run(cni_path: &str, version: &str, tag: &str) -> Run {
    require_root();
    let dir = TempDir::new(&format!("conf-lo-{tag}"));
    let conf = json!({"cniVersion": version, "name": format!("bclo{tag}"), "plugins": [{"type": "loopback"}]});
    let r = conformance(cni_path, &conf, &dir, &["--ifname", "lo"]);
    assert_no_leftovers(r.pid);
    r
}

/// berth's `loopback` and the reference's, case by case: the same outcome
/// everywhere but in the rows listed, where the reference (1.1.1) falls
/// short and berth passes. At 0.3.1 (what containerd's CRI sends for `lo`)
/// and 1.0.0 (the reference's newest).
#[test]
fn loopback_scores_like_the_reference_loopback() {
    let berth = bin_dir().to_str().unwrap().to_string();
    let expected: [(&str, &[(&str, &str)]); 2] = [
        (
            "0.3.1",
            &[
                // 1.1.1 has no cniVersion 1.1.0, so no STATUS or GC.
                ("status-gc-old-version", "N/A"),
                // Its result is 1.0.0-shaped under every version: no
                // ips[].version at 0.3.1, `ips` instead of ip4/ip6 at 0.1.0.
                ("add-versions", "FAIL"),
                ("add-result", "FAIL"),
                // It configures the host's own namespace when asked.
                ("add-own-netns", "FAIL"),
            ],
        ),
        (
            "1.0.0",
            &[
                ("status-gc-old-version", "N/A"),
                ("add-versions", "FAIL"),
                // Its CHECK looks at lo's state only: not at the addresses
                // of the result, nor at whether the prevResult parses.
                ("check-addr-removed", "FAIL"),
                ("prev-result-version", "FAIL"),
                ("add-own-netns", "FAIL"),
            ],
        ),
    ];
    for (version, reference_falls_short) in expected {
        let ours = loopback_run(&berth, version, &format!("b{}", version.replace('.', "")));
        let theirs = loopback_run(
            REFERENCE_CNI_DIR,
            version,
            &format!("r{}", version.replace('.', "")),
        );
        assert_eq!(
            failed_cases(&ours.stdout),
            Vec::<String>::new(),
            "{version}:\n{}",
            ours.stdout
        );
        assert_eq!(ours.status, 0, "{version}");
        let (o, t) = (outcomes(&ours.stdout), outcomes(&theirs.stdout));
        let ids = |v: &[(String, String)]| v.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(&o),
            ids(&t),
            "{version}: the two runs have different cases"
        );
        let mut differ = Vec::new();
        for ((id, ours), (_, theirs)) in o.iter().zip(&t) {
            if ours != theirs {
                assert_eq!(
                    ours, "PASS",
                    "{version}: {id}: berth {ours}, the reference {theirs}"
                );
                differ.push((id.as_str(), theirs.as_str()));
            }
        }
        assert_eq!(
            differ, reference_falls_short,
            "{version}: berth\n{}\nreference\n{}",
            ours.stdout, theirs.stdout
        );
        // Loopback's own readings of the cases: a second ADD succeeds; and
        // where there is CHECK (0.4.0 on), lo set down by hand fails it and
        // it needs no prevResult.
        let readings: &[(&str, &str)] = match version {
            "0.3.1" => &[("add-duplicate", "PASS"), ("check-iface-removed", "N/A")],
            _ => &[
                ("add-duplicate", "PASS"),
                ("check-iface-removed", "PASS"),
                ("check-no-prevresult", "N/A"),
            ],
        };
        for (id, want) in readings {
            assert!(
                o.contains(&(id.to_string(), want.to_string())),
                "{version}: {id} not {want}:\n{}",
                ours.stdout
            );
        }
    }
    // At 1.1.0 (which the reference lacks) STATUS applies too.
    let r = loopback_run(&berth, "1.1.0", "b110");
    assert_eq!(
        failed_cases(&r.stdout),
        Vec::<String>::new(),
        "{}",
        r.stdout
    );
    assert!(
        outcomes(&r.stdout).contains(&("status".to_string(), "PASS".to_string())),
        "{}",
        r.stdout
    );
    let (passed, _) = summary(&r.stdout).expect("no summary line");
    assert!(passed >= 31, "only {passed} cases passed:\n{}", r.stdout);
}

/// Host mode: every attachment's CNI_NETNS names the suite's host
/// namespace itself (`--shared-netns`); the container's interface is the
/// host's `lo`. Cases that need a namespace of the container's own are n/a.
#[test]
fn berth_host_host_mode_passes_every_applicable_case() {
    let r = berth_host_run(
        "host",
        json!({"type": "berth-host", "mode": "host"}),
        &["--shared-netns", "--ifname", "lo"],
    );
    assert_eq!(
        failed_cases(&r.stdout),
        Vec::<String>::new(),
        "{}",
        r.stdout
    );
    let (passed, _) = summary(&r.stdout).expect("no summary line");
    assert!(passed >= 25, "only {passed} cases passed:\n{}", r.stdout);
}

/// Control for the shared-namespace checks: the reference `loopback` run
/// with the host's namespace as the container's sets the host's `lo` down
/// on DEL, which the suite must catch.
#[test]
fn shared_netns_catches_a_plugin_that_changes_the_host() {
    require_root();
    let dir = TempDir::new("conf-loopback-shared");
    let conf =
        json!({"cniVersion": "1.0.0", "name": "bcloshared", "plugins": [{"type": "loopback"}]});
    let r = conformance(
        REFERENCE_CNI_DIR,
        &conf,
        &dir,
        &["--shared-netns", "--ifname", "lo"],
    );
    assert_no_leftovers(r.pid);
    let failed = failed_cases(&r.stdout);
    assert!(
        failed
            .iter()
            .any(|c| c == "add-del-del" || c == "del-no-prevresult" || c == "add-result"),
        "{}",
        r.stdout
    );
}

#[test]
fn berth_host_macvlan_passes_every_case() {
    let setup = uplink_setup("up0", "10.124.0.1/24", "fd12:4::1/64");
    let plugin = json!({
        "type": "berth-host", "mode": "macvlan", "master": "up0", "capabilities": {"ips": true},
        "ipam": host_ipam("10.124.0.0/24", "fd12:4::/64")
    });
    // Published ports work on any attachment with an address: chained.
    let portmap = json!({"type": "berth-portmap", "capabilities": {"portMappings": true}});
    let r = berth_host_chain_run("macvlan", vec![plugin, portmap], &["--host-setup", &setup]);
    assert_eq!(
        failed_cases(&r.stdout),
        Vec::<String>::new(),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\n0 not applicable\n"), "{}", r.stdout);
    assert_eq!(r.status, 0);
}

/// Device mode moves one device, and the suite's stand-in for a device is a
/// veth (this kernel has no dummy links): the cases that need two
/// attachments at once, or a device that survives its namespace or the
/// deletion of its container end, fail by construction. Every other case
/// passes.
#[test]
fn berth_host_device_fails_only_where_one_virtual_device_cannot_do() {
    let setup = uplink_setup("dev0", "10.125.0.1/24", "fd12:5::1/64");
    let plugin = json!({
        "type": "berth-host", "mode": "device", "device": "dev0", "capabilities": {"ips": true},
        "ipam": host_ipam("10.125.0.0/24", "fd12:5::/64")
    });
    let r = berth_host_run("device", plugin, &["--host-setup", &setup]);
    let expected = [
        // The veth dies with the namespace (a physical link would return).
        "del-netns-gone",
        // Deleting the container end of a veth deletes the pair.
        "check-iface-removed",
        // Two or more containers at once on one device.
        "parallel-add",
        "gc-valid-attachments",
        "gc-attachments-legacy",
        "ping",
    ];
    assert_eq!(failed_cases(&r.stdout), expected, "{}", r.stdout);
    let (passed, _) = summary(&r.stdout).expect("no summary line");
    assert_eq!(passed, 42, "{}", r.stdout);
}
