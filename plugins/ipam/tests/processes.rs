//! The real binary, many processes at once: 64 concurrent ADDs on one fresh
//! network all succeed with distinct addresses; DELs release everything; the
//! `import` subcommand works without CNI_COMMAND.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_berth-ipam");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = PathBuf::from(format!(
            "/tmp/berth-ipam-proc-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn conf(data: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "procnet", "type": "berth-ipam",
        "ipam": {"type": "berth-ipam", "dataDir": data,
                 "ranges": [[{"subnet": "10.20.0.0/24"}], [{"subnet": "fd20::/64"}]]}
    })
    .to_string()
}

fn spawn(cmd: &str, cid: &str, conf: &str) -> Child {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/run/netns/berth-ipam-test-does-not-exist")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    child
}

#[test]
fn sixty_four_concurrent_processes_get_distinct_addresses() {
    let t = TempDir::new("64");
    let conf = conf(&t.0);
    let start = Instant::now();
    let children: Vec<Child> = (0..64)
        .map(|i| spawn("ADD", &format!("ctr{i}"), &conf))
        .collect();
    let mut addrs = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ADD {i} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let ips = v["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{v}");
        for ip in ips {
            addrs.push(ip["address"].as_str().unwrap().to_string());
        }
    }
    let elapsed = start.elapsed();
    let n = addrs.len();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), n, "duplicate addresses");
    assert_eq!(n, 128);
    println!(
        "[measure] 64 concurrent dual-stack ADD processes: {:.1} ms total, {:.2} ms per ADD",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3 / 64.0
    );

    let start = Instant::now();
    let children: Vec<Child> = (0..64)
        .map(|i| spawn("DEL", &format!("ctr{i}"), &conf))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
    }
    println!(
        "[measure] 64 concurrent DEL processes: {:.1} ms total",
        start.elapsed().as_secs_f64() * 1e3
    );
    // Every address is free again: the same container can be added anew.
    let out = spawn("ADD", "ctr0", &conf).wait_with_output().unwrap();
    assert!(out.status.success());

    // Sequential single-process ADD + DEL latency.
    let iters = 50;
    let start = Instant::now();
    for i in 0..iters {
        let cid = format!("seq{i}");
        assert!(spawn("ADD", &cid, &conf)
            .wait_with_output()
            .unwrap()
            .status
            .success());
        assert!(spawn("DEL", &cid, &conf)
            .wait_with_output()
            .unwrap()
            .status
            .success());
    }
    println!(
        "[measure] sequential ADD+DEL via the binary: {:.2} ms per pair (incl. process spawn)",
        start.elapsed().as_secs_f64() * 1e3 / iters as f64
    );
}

#[test]
fn no_command_prints_about_and_import_subcommand_runs() {
    let out = Command::new(BIN)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("berth-ipam"));

    let t = TempDir::new("imp");
    let hl = t.0.join("hl");
    std::fs::create_dir_all(&hl).unwrap();
    std::fs::write(hl.join("10.20.0.9"), "ctr9\r\neth0").unwrap();
    std::fs::write(hl.join("last_reserved_ip.0"), "10.20.0.9").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .args([
            "import",
            "--from",
            hl.to_str().unwrap(),
            "--network",
            "procnet",
            "--data-dir",
        ])
        .arg(&t.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 allocation"));
    let conf = conf(&t.0);
    let out = spawn("ADD", "fresh", &conf).wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ips"][0]["address"], "10.20.0.10/24");
    let out = Command::new(BIN)
        .env_clear()
        .args(["import", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
