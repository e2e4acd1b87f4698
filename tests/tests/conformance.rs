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
        }]
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
