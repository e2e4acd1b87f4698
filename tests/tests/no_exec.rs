//! Nothing on the host is required: berth's plugins, `berth status`,
//! `berth gc` and the reconciler exec no program but berth's own (the
//! delegated berth-ipam, berth-portmap's proxy). Each runs under
//! `strace -f -e trace=execve` in a namespace standing for the host, and
//! every exec it attempts, successful or not, is listed. Run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::*;
use serde_json::{json, Value};

/// berth's binaries, by file name: what may be exec'd.
const OURS: [&str; 8] = [
    "berth",
    "berth-bridge",
    "berth-portmap",
    "berth-ipam",
    "berth-bandwidth",
    "berth-host",
    "loopback",
    "berth-overlay",
];

struct Fx {
    host: TestNetns,
    run: TempDir,
    data: TempDir,
    traces: TempDir,
}

/// The programs a trace shows exec'd (or tried), by path.
fn execs(trace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("execve(\"")? + 8..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

/// The exit status of the trace's first process (the program strace
/// started), once it has exited.
fn plugin_exit(trace: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(trace).ok()?;
    let pid = text.split_whitespace().next()?.to_string();
    // strace pads the pid column (`7299  +++ exited with 0 +++`).
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(&pid)?.trim_start();
        let rest = rest.strip_prefix("+++ exited with ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn foreign(execs: &[String]) -> Vec<String> {
    execs
        .iter()
        .filter(|p| {
            let name = Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            !(OURS.contains(&name) && Path::new(p).starts_with(bin_dir()))
        })
        .cloned()
        .collect()
}

impl Fx {
    fn new() -> Fx {
        require_root();
        let host = TestNetns::new("nxh");
        host.sh("ip link set lo up");
        Fx {
            host,
            run: TempDir::new("nx-run"),
            data: TempDir::new("nx-data"),
            traces: TempDir::new("nx-trace"),
        }
    }

    fn trace_file(&self, what: &str) -> PathBuf {
        self.traces.path().join(format!("{what}.trace"))
    }

    /// `ip netns exec HOST env -i ... strace -f -e trace=execve -o TRACE
    /// PROGRAM ARGS`.
    fn traced(&self, trace: &Path, env: &[(&str, String)], program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name(), "env", "-i"]);
        // An empty PATH: nothing can be found by name either.
        cmd.arg("PATH=");
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        // -q, not -qq: the trace must say when the program exited.
        cmd.args(["/usr/bin/strace", "-f", "-q", "-e", "trace=execve", "-o"])
            .arg(trace)
            .arg(program);
        cmd
    }

    /// Runs a plugin verb traced; returns its parsed stdout and the execs.
    /// A published port's relay outlives the plugin and strace follows it
    /// (`-f`), so strace is not waited for: the plugin's exit is read from
    /// the trace, and strace is then stopped (it detaches from the relay).
    fn plugin(
        &self,
        plugin: &str,
        verb: &str,
        cid: &str,
        ns: &TestNetns,
        conf: &Value,
    ) -> (Value, Vec<String>) {
        let trace = self.trace_file(&format!("{plugin}-{verb}-{cid}"));
        let env = [
            ("CNI_COMMAND", verb.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", ns.path_str().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", bin_dir().display().to_string()),
            ("BERTH_RUN_DIR", self.run.path().display().to_string()),
        ];
        let mut child = self
            .traced(&trace, &env, &bin(plugin))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run strace");
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&serde_json::to_vec(conf).expect("config"));
        let exit = poll_until(Instant::now(), Duration::from_secs(30), || {
            plugin_exit(&trace).is_some()
        });
        let status = plugin_exit(&trace);
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait for strace");
        assert!(
            exit.is_some(),
            "{plugin} {verb} did not exit; trace:\n{}",
            std::fs::read_to_string(&trace).unwrap_or_default()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(status, Some(0), "{plugin} {verb}: {stdout}");
        let v = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).expect("plugin output")
        };
        (v, execs(&trace))
    }

    /// Runs `berth ARGS` traced.
    fn berth(&self, what: &str, args: &[&str]) -> Vec<String> {
        let trace = self.trace_file(what);
        let env = [("BERTH_RUN_DIR", self.run.path().display().to_string())];
        let out = self
            .traced(&trace, &env, &bin("berth"))
            .args(args)
            .output()
            .expect("run berth");
        assert!(
            out.status.success(),
            "berth {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        execs(&trace)
    }
}

#[test]
fn plugins_and_the_reconciler_exec_nothing_of_the_hosts() {
    let fx = Fx::new();
    let (v4, v6) = unique_subnets();
    let net = format!("nx{}-{}", std::process::id(), next_id());
    let bridge = json!({
        "cniVersion": "1.1.0", "name": net, "type": "berth-bridge",
        "bridge": "nxbr0", "isGateway": true, "ipMasq": true,
        "hairpinMode": true, "macspoofchk": true,
        "ipam": {"type": "berth-ipam", "dataDir": fx.data.path(),
                 "ranges": [[{"subnet": v4}], [{"subnet": v6}]]}
    });
    let c = TestNetns::new("nxc");
    c.sh("ip link set lo up");
    let cid = format!("nxc{}", std::process::id());
    let mut all: Vec<(String, Vec<String>)> = Vec::new();

    let (result, e) = fx.plugin("berth-bridge", "ADD", &cid, &c, &bridge);
    all.push(("berth-bridge ADD".into(), e));
    let portmap = |prev: Option<&Value>| {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": net, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "conditionsV4": ["ip saddr != 10.254.0.0/16"],
            "runtimeConfig": {"portMappings": [
                {"hostPort": 18480, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18481, "containerPort": 53, "protocol": "udp"}]}
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let bandwidth = |prev: Option<&Value>| {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": net, "type": "berth-bandwidth",
            "ingressRate": 10_000_000, "ingressBurst": 100_000,
            "egressRate": 10_000_000, "egressBurst": 100_000
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let (pm_result, e) = fx.plugin("berth-portmap", "ADD", &cid, &c, &portmap(Some(&result)));
    all.push(("berth-portmap ADD".into(), e));
    let (last, e) = fx.plugin(
        "berth-bandwidth",
        "ADD",
        &cid,
        &c,
        &bandwidth(Some(&pm_result)),
    );
    all.push(("berth-bandwidth ADD".into(), e));
    // CHECK gets the chain's final result, as a runtime passes it.
    let mut bridge_check = bridge.clone();
    bridge_check["prevResult"] = last.clone();
    for (plugin, conf) in [
        ("berth-bridge", bridge_check),
        ("berth-portmap", portmap(Some(&last))),
        ("berth-bandwidth", bandwidth(Some(&last))),
    ] {
        let (_, e) = fx.plugin(plugin, "CHECK", &cid, &c, &conf);
        all.push((format!("{plugin} CHECK"), e));
        let mut status = conf.clone();
        if let Some(o) = status.as_object_mut() {
            o.remove("prevResult");
        }
        let (_, e) = fx.plugin(plugin, "STATUS", &cid, &c, &status);
        all.push((format!("{plugin} STATUS"), e));
    }
    all.push((
        "berth status".into(),
        fx.berth("status", &["status", "-o", "json"]),
    ));
    all.push(("berth gc".into(), fx.berth("gc", &["gc", "--dry-run"])));

    // The reconciler: started traced, shown a flushed ruleset, stopped by
    // berth's PID once everything is back.
    let trace = fx.trace_file("watch");
    let env = [("BERTH_RUN_DIR", fx.run.path().display().to_string())];
    let mut watch = fx
        .traced(&trace, &env, &bin("berth"))
        .args(["watch", "--interval", "0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run berth watch");
    let before = fx.host.sh("nft list ruleset");
    assert!(before.contains("pm-prerouting"), "{before}");
    std::thread::sleep(Duration::from_millis(500));
    fx.host.sh("nft flush ruleset");
    let back = poll_until(Instant::now(), Duration::from_secs(10), || {
        fx.host.sh("nft list ruleset") == before
    });
    // berth's PID is the trace's first (strace writes "PID execve(...").
    let pid: i32 = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("berth watch's pid in the trace");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = watch.wait();
    assert!(
        back.is_some(),
        "the reconciler did not put the ruleset back"
    );
    all.push(("berth watch".into(), execs(&trace)));

    for (plugin, conf) in [
        ("berth-bandwidth", bandwidth(None)),
        ("berth-portmap", portmap(None)),
        ("berth-bridge", bridge.clone()),
    ] {
        let (_, e) = fx.plugin(plugin, "DEL", &cid, &c, &conf);
        all.push((format!("{plugin} DEL"), e));
    }
    let mut gc = bridge.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (_, e) = fx.plugin("berth-bridge", "GC", &cid, &c, &gc);
    all.push(("berth-bridge GC".into(), e));
    assert_eq!(fx.host.sh("nft list ruleset"), "", "DEL left rules");

    let bad: Vec<String> = all
        .iter()
        .filter_map(|(what, e)| {
            assert!(!e.is_empty(), "{what}: an empty trace proves nothing");
            let f = foreign(e);
            (!f.is_empty()).then(|| format!("{what}: {f:?}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "programs not berth's were exec'd:\n{}",
        bad.join("\n")
    );
}
