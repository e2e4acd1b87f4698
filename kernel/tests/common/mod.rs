//! Shared helpers for the root integration tests: throw-away network
//! namespaces and `ip`/`nft` observers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A uniquely named namespace (`berth-net-<pid>-<n>`), deleted on drop —
/// also when the test fails, since unwinding runs Drop.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new() -> TestNs {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("berth-net-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        TestNs { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn open(&self) -> berth_kernel::Netns {
        berth_kernel::Netns::open(&self.path()).expect("open test netns")
    }

    /// `ip -n NS -j ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", self.name.as_str(), "-j"];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).expect("ip -j output")
    }

    /// `ip netns exec NS PROG ARGS`, returning (success, stdout, stderr).
    pub fn exec(&self, prog: &str, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["netns", "exec", self.name.as_str(), prog];
        full.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&full)
            .output()
            .expect("spawn ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
