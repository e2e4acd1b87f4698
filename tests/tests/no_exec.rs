//! Nothing on the host is required: berth's plugins (berth-bridge,
//! berth-portmap, berth-bandwidth, berth-host in each of its modes,
//! `loopback`, berth-ipam, berth-overlay), `berth status`, `berth gc`, the
//! reconciler and berthd exec no program but berth's own (the delegated
//! berth-ipam, berth-portmap's proxy). Each runs under
//! `strace -f -e trace=execve` in a namespace standing for the host, and
//! every exec it attempts, successful or not, is listed. Run as root.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::*;
use serde_json::{json, Value};

/// berth's binaries, by file name: what may be exec'd.
const OURS: [&str; 9] = [
    "berth",
    "berthd",
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

/// Fails naming every step of `all` (what ran, the execs of its trace)
/// that exec'd something not berth's, or whose trace is empty.
fn assert_ours(all: &[(String, Vec<String>)]) {
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

/// The PID of the trace's first process (strace writes "PID execve(...)").
fn traced_pid(trace: &Path) -> Option<i32> {
    std::fs::read_to_string(trace)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A daemon (`berth watch`, berthd) running traced in the host namespace:
/// `stop` ends it by its PID and returns its execs; dropped unstopped (a
/// failed test), it is killed, and strace with it.
struct Daemon {
    strace: Child,
    trace: PathBuf,
    program: PathBuf,
    stopped: bool,
}

impl Daemon {
    /// The daemon's PID, once strace has started it.
    fn pid(&self) -> Option<i32> {
        traced_pid(&self.trace)
    }

    /// SIGTERM to the daemon, then its trace's execs once strace is done.
    fn stop(&mut self) -> Vec<String> {
        let pid = self.pid().expect("the daemon's pid in its trace");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let gone = poll_until(Instant::now(), Duration::from_secs(10), || {
            matches!(self.strace.try_wait(), Ok(Some(_)))
        });
        // Still running, it is killed when dropped.
        self.stopped = gone.is_some();
        assert!(
            gone.is_some(),
            "{} did not stop on SIGTERM",
            self.program.display()
        );
        execs(&self.trace)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stopped {
            // Only the daemon strace started: its PID, while it still runs
            // that program.
            if let Some(pid) = self.pid() {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                if exe.as_deref() == Some(self.program.as_path()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
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

    /// Runs `berth ARGS` traced; returns its execs.
    fn berth(&self, what: &str, args: &[&str]) -> Vec<String> {
        self.berth_output(what, args).1
    }

    /// Runs `berth ARGS` traced; returns its stdout and execs.
    fn berth_output(&self, what: &str, args: &[&str]) -> (String, Vec<String>) {
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
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            execs(&trace),
        )
    }

    /// `--data-dir` and `--engine-state` of `berth status` and `berth gc`:
    /// the test's address stores, and no engine's.
    fn stores(&self) -> Vec<String> {
        vec![
            "--data-dir".into(),
            self.data.path().display().to_string(),
            "--engine-state".into(),
            self.data.path().join("no-engine").display().to_string(),
        ]
    }

    /// `berth gc --yes`, traced: it must release something, and fail at
    /// nothing. Returns its execs.
    fn gc_releasing(&self) -> Vec<String> {
        let stores = self.stores();
        let mut args = vec!["gc", "--yes", "-o", "json"];
        args.extend(stores.iter().map(String::as_str));
        let (out, e) = self.berth_output("gc-yes", &args);
        let out: Value = serde_json::from_str(&out).expect("berth gc -o json");
        assert!(
            out["released"].as_array().is_some_and(|r| !r.is_empty())
                && out["errors"].as_array().is_none_or(Vec::is_empty),
            "berth gc --yes: {out}"
        );
        e
    }

    /// One plugin's every verb, traced: ADD, CHECK (with the ADD's result),
    /// STATUS, DEL (with it again) of one attachment; then ADD of a second
    /// one, GC with no valid attachment (which must undo it) and DEL of
    /// that one (nothing left to do). Returns the execs of each step,
    /// named `LABEL VERB`, and the first ADD's result.
    fn every_verb(
        &self,
        plugin: &str,
        label: &str,
        ns: &TestNetns,
        conf: &Value,
    ) -> (Value, Vec<(String, Vec<String>)>) {
        let tag: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let (first, second) = (format!("nx-{tag}-1"), format!("nx-{tag}-2"));
        let mut all = Vec::new();
        let (result, e) = self.plugin(plugin, "ADD", &first, ns, conf);
        all.push((format!("{label} ADD"), e));
        let with_result = with_prev_result(conf, &result);
        let (_, e) = self.plugin(plugin, "CHECK", &first, ns, &with_result);
        all.push((format!("{label} CHECK"), e));
        let (_, e) = self.plugin(plugin, "STATUS", &first, ns, conf);
        all.push((format!("{label} STATUS"), e));
        let (_, e) = self.plugin(plugin, "DEL", &first, ns, &with_result);
        all.push((format!("{label} DEL"), e));
        let (_, e) = self.plugin(plugin, "ADD", &second, ns, conf);
        all.push((format!("{label} ADD (for GC)"), e));
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([]);
        let (_, e) = self.plugin(plugin, "GC", &second, ns, &gc);
        all.push((format!("{label} GC"), e));
        let (_, e) = self.plugin(plugin, "DEL", &second, ns, conf);
        all.push((format!("{label} DEL after GC"), e));
        (result, all)
    }

    /// Starts `program ARGS` traced, as a daemon: its stderr goes to
    /// `WHAT.log` beside its trace.
    fn daemon(&self, what: &str, env: &[(&str, String)], program: &Path, args: &[&str]) -> Daemon {
        let trace = self.trace_file(what);
        let log = std::fs::File::create(self.traces.path().join(format!("{what}.log")))
            .expect("daemon log");
        let strace = self
            .traced(&trace, env, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        Daemon {
            strace,
            trace,
            program: program.to_path_buf(),
            stopped: false,
        }
    }

    /// What a daemon started as `what` logged.
    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.traces.path().join(format!("{what}.log"))).unwrap_or_default()
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
    // Host ports `port` (tcp) and `port + 1` (udp).
    let portmap_at = |prev: Option<&Value>, port: u16| {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": net, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "conditionsV4": ["ip saddr != 10.254.0.0/16"],
            "runtimeConfig": {"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": port + 1, "containerPort": 53, "protocol": "udp"}]}
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let portmap = |prev: Option<&Value>| portmap_at(prev, 18480);
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
    let stores = fx.stores();
    let stores: Vec<&str> = stores.iter().map(String::as_str).collect();
    let (st, e) = fx.berth_output("status", &[&["status", "-o", "json"][..], &stores].concat());
    assert!(st.contains(&cid), "berth status does not show {cid}: {st}");
    all.push(("berth status".into(), e));
    all.push((
        "berth gc --dry-run".into(),
        fx.berth("gc", &[&["gc", "--dry-run"][..], &stores].concat()),
    ));

    // The reconciler: started traced, shown a flushed ruleset, stopped by
    // berth's PID once everything is back.
    let env = [("BERTH_RUN_DIR", fx.run.path().display().to_string())];
    let mut watch = fx.daemon(
        "watch",
        &env,
        &bin("berth"),
        &["watch", "--interval", "0.2"],
    );
    let before = fx.host.sh("nft list ruleset");
    assert!(before.contains("pm-prerouting"), "{before}");
    std::thread::sleep(Duration::from_millis(500));
    fx.host.sh("nft flush ruleset");
    let back = poll_until(Instant::now(), Duration::from_secs(10), || {
        fx.host.sh("nft list ruleset") == before
    });
    let e = watch.stop();
    assert!(
        back.is_some(),
        "the reconciler did not put the ruleset back: {}",
        fx.log("watch")
    );
    all.push(("berth watch".into(), e));

    // A container gone without its DEL: `berth gc` releases what it left
    // (its addresses, published ports, ifb, records).
    let gone = TestNetns::new("nxc");
    let gone_cid = format!("{cid}-gone");
    let (r, e) = fx.plugin("berth-bridge", "ADD", &gone_cid, &gone, &bridge);
    all.push(("berth-bridge ADD (a container then gone)".into(), e));
    let (r, e) = fx.plugin(
        "berth-portmap",
        "ADD",
        &gone_cid,
        &gone,
        &portmap_at(Some(&r), 18490),
    );
    all.push(("berth-portmap ADD (a container then gone)".into(), e));
    let (_, e) = fx.plugin(
        "berth-bandwidth",
        "ADD",
        &gone_cid,
        &gone,
        &bandwidth(Some(&r)),
    );
    all.push(("berth-bandwidth ADD (a container then gone)".into(), e));
    drop(gone);
    all.push(("berth gc --yes".into(), fx.gc_releasing()));

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
    assert_ours(&all);
}

/// berth-host in each mode that needs no hardware (the device moved in and
/// the macvlan's parent are veths of the test's host namespace), and
/// the `loopback` binary: ADD, CHECK, STATUS, DEL and GC.
#[test]
fn berth_host_in_each_mode_and_loopback_exec_nothing_of_the_hosts() {
    let fx = Fx::new();
    fx.host.sh(
        "ip link add nxdev0 type veth peer name nxdev0p && ip link set nxdev0p up && \
         ip link set nxdev0 up && \
         ip link add nxmac0 type veth peer name nxmac0p && ip link set nxmac0p up && \
         ip link set nxmac0 up",
    );
    let ipam = |subnet: &str| {
        json!({"type": "berth-ipam", "dataDir": fx.data.path(),
               "ranges": [[{"subnet": subnet}]]})
    };
    let (dev4, _) = unique_subnets();
    let (mac4, _) = unique_subnets();
    let conf_of = |mode: &str, keys: Value| {
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": format!("nx{}-{mode}", std::process::id()),
            "type": "berth-host", "mode": mode
        });
        for (k, v) in keys.as_object().expect("keys") {
            conf[k] = v.clone();
        }
        conf
    };
    let device = conf_of("device", json!({"device": "nxdev0", "ipam": ipam(&dev4)}));
    let mut all: Vec<(String, Vec<String>)> = Vec::new();
    for (mode, conf) in [
        ("none", conf_of("none", json!({}))),
        ("host", conf_of("host", json!({}))),
        ("device", device.clone()),
        (
            "macvlan",
            conf_of("macvlan", json!({"master": "nxmac0", "ipam": ipam(&mac4)})),
        ),
    ] {
        let c = TestNetns::new("nxc");
        // Mode host attaches the host's own namespace.
        let ns = if mode == "host" { &fx.host } else { &c };
        let (result, e) = fx.every_verb("berth-host", &format!("berth-host {mode}"), ns, &conf);
        all.extend(e);
        let eth0 = || {
            c.exec(&["ip", "link", "show", "dev", "eth0"])
                .status
                .success()
        };
        if matches!(mode, "device" | "macvlan") {
            assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
            assert!(!eth0(), "GC left the {mode} link in the container");
        }
        if mode == "device" {
            fx.host.sh("ip link show dev nxdev0");
        }
    }

    // A container gone without its DEL, its device back on the host under
    // its container name (as the kernel returns a physical link): `berth
    // gc` gives the device its name back and releases its address.
    let gone = TestNetns::new("nxc");
    let (_, e) = fx.plugin("berth-host", "ADD", "nx-gone", &gone, &device);
    all.push(("berth-host device ADD (a container then gone)".into(), e));
    gone.sh(&format!("ip link set eth0 netns {}", fx.host.name()));
    drop(gone);
    all.push(("berth gc --yes".into(), fx.gc_releasing()));
    fx.host.sh("ip link show dev nxdev0");

    let c = TestNetns::new("nxc");
    let lo = json!({"cniVersion": "1.1.0", "name": "nxlo", "type": "loopback"});
    let (result, e) = fx.every_verb("loopback", "loopback", &c, &lo);
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    all.extend(e);
    assert_ours(&all);
}

/// berth-ipam on its own, and berth-overlay with static peers (its
/// underlay a veth of the test's host namespace, its one peer never
/// reached) and its node agent, shown a peer added to its file.
#[test]
fn berth_ipam_and_berth_overlay_exec_nothing_of_the_hosts() {
    let fx = Fx::new();
    let (v4, v6) = unique_subnets();
    let c = TestNetns::new("nxc");
    let mut all: Vec<(String, Vec<String>)> = Vec::new();
    let ipam = json!({
        "cniVersion": "1.1.0", "name": format!("nx{}-ipam", std::process::id()),
        "type": "berth-ipam",
        "ipam": {"type": "berth-ipam", "dataDir": fx.data.path(),
                 "ranges": [[{"subnet": v4}], [{"subnet": v6}]]}
    });
    let (result, e) = fx.every_verb("berth-ipam", "berth-ipam", &c, &ipam);
    assert_eq!(result["ips"].as_array().map(Vec::len), Some(2), "{result}");
    all.extend(e);

    fx.host.sh(
        "ip link add nxu0 type veth peer name nxu0p && ip link set nxu0p up && \
         ip addr add 192.168.77.1/24 dev nxu0 && ip link set nxu0 up",
    );
    let overlay = json!({
        "cniVersion": "1.1.0", "name": format!("nx{}-ov", std::process::id()),
        "type": "berth-overlay",
        "network": "10.244.0.0/16", "subnetLen": 24, "vni": 42, "iface": "nxu0",
        "ipMasq": true, "hairpinMode": true, "dataDir": fx.data.path(),
        "store": {"static": {"subnet": "10.244.1.0/24", "peers": [
            {"node": "nxpeer", "underlay": "192.168.77.2", "subnet": "10.244.2.0/24"}]}}
    });
    let (result, e) = fx.every_verb("berth-overlay", "berth-overlay", &c, &overlay);
    assert!(
        result["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.244.1.")),
        "{result}"
    );
    all.extend(e);

    // The agent keeps the node's peers equal to its file's.
    let conf = fx.traces.path().join("overlay.json");
    std::fs::write(&conf, serde_json::to_vec(&overlay).expect("config")).expect("write");
    let env = [("BERTH_RUN_DIR", fx.run.path().display().to_string())];
    let conf_arg = conf.display().to_string();
    let mut agent = fx.daemon(
        "overlay-agent",
        &env,
        &bin("berth-overlay"),
        &["agent", "--conf", &conf_arg],
    );
    let routed = |subnet: &str| {
        poll_until(Instant::now(), Duration::from_secs(10), || {
            fx.host
                .sh(&format!("ip route show {subnet}"))
                .contains("berth.42")
        })
    };
    assert!(
        routed("10.244.2.0/24").is_some(),
        "no route to the peer: {}",
        fx.log("overlay-agent")
    );
    let mut more = overlay.clone();
    more["store"]["static"]["peers"]
        .as_array_mut()
        .expect("peers")
        .push(json!({"node": "nxpeer2", "underlay": "192.168.77.3", "subnet": "10.244.3.0/24"}));
    // Replaced whole (renamed over), as an operator's tools do.
    let new = fx.traces.path().join("overlay.json.new");
    std::fs::write(&new, serde_json::to_vec(&more).expect("config")).expect("write");
    std::fs::rename(&new, &conf).expect("rename");
    let joined = routed("10.244.3.0/24");
    let e = agent.stop();
    assert!(
        joined.is_some(),
        "the agent did not program a peer added to its file: {}",
        fx.log("overlay-agent")
    );
    all.push(("berth-overlay agent".into(), e));
    all.push((
        "berth status".into(),
        fx.berth("status", &["status", "-o", "json"]),
    ));
    assert_ours(&all);
}

/// POST /METHOD with `body` to berthd's plugin socket, as the Docker
/// engine calls it: (status, JSON answer).
fn post(socket: &Path, method: &str, body: &Value) -> (u16, Value) {
    plugin_post(
        socket,
        method,
        format!("{body}\n").as_bytes(),
        Duration::from_secs(30),
    )
}

/// etcd's answer to GET /health on 127.0.0.1:2379 in `ns` (empty while it
/// does not answer).
fn etcd_health(ns: &TestNetns) -> String {
    ns.run(|| {
        let mut s = match std::net::TcpStream::connect("127.0.0.1:2379") {
            Ok(s) => s,
            Err(_) => return String::new(),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    })
}

/// berthd, traced from its start to its SIGTERM, through one bridge
/// network's whole life as the engine drives it (IPAM pools and
/// addresses, the network, an endpoint joined with published ports, the
/// reconciler shown a flushed ruleset), an overlay network's (its lease in
/// etcd), and volumes created, mounted, unmounted and removed: managed,
/// tmpfs and bind ones. Size-limited volumes (`size`) are not among them:
/// formatting their image execs mkfs.ext4 (volumes::backing::make_image).
#[test]
fn berthd_execs_nothing_of_the_hosts() {
    let fx = Fx::new();
    let dir = TempDir::new("nx-berthd");
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).expect("bind allowlist");
    let socket = dir.path().join("berth.sock");
    let config = dir.path().join("berthd.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "root": dir.path().join("root"), "state": dir.path().join("state"),
            "socket": socket, "bindAllow": [allowed],
            // Nothing answers there: berthd never asks the host's engine.
            "dockerSocket": dir.path().join("docker.sock")
        }))
        .expect("config"),
    )
    .expect("write the config");
    let env = [
        ("BERTH_RUN_DIR", fx.run.path().display().to_string()),
        ("BERTH_LOG", "info".to_string()),
    ];
    let config_arg = config.display().to_string();
    // Declared after `dir`: stopped (or killed) before it is removed.
    let mut d = fx.daemon("berthd", &env, &bin("berthd"), &["--config", &config_arg]);
    let listening = poll_until(Instant::now(), Duration::from_secs(10), || {
        UnixStream::connect(&socket).is_ok()
    });
    assert!(
        listening.is_some(),
        "berthd did not listen on {}: {}",
        socket.display(),
        fx.log("berthd")
    );
    let call = |method: &str, body: Value| -> Value {
        let (code, v) = post(&socket, method, &body);
        let err = [&v["Err"], &v["Error"]]
            .iter()
            .find_map(|e| e.as_str().filter(|e| !e.is_empty()))
            .unwrap_or("")
            .to_string();
        assert_eq!((code, err.as_str()), (200, ""), "{method} {body}: {v}");
        v
    };
    // The address part of "ADDRESS/LEN".
    let addr = |v: &Value| -> String {
        let a = v["Address"].as_str().unwrap_or_else(|| panic!("{v}"));
        a.split('/').next().unwrap_or(a).to_string()
    };

    call("Plugin.Activate", json!({}));
    call("NetworkDriver.GetCapabilities", json!({}));
    call("IpamDriver.GetCapabilities", json!({}));
    call("IpamDriver.GetDefaultAddressSpaces", json!({}));
    let (v4, v6) = unique_subnets();
    let space = "berth-local";
    let pool4 = call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": space, "Pool": v4, "V6": false}),
    );
    let pool6 = call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": space, "Pool": v6, "V6": true}),
    );
    let (id4, id6) = (pool4["PoolID"].clone(), pool6["PoolID"].clone());
    let gateway = json!({"RequestAddressType": "com.docker.network.gateway"});
    let gw4 = call(
        "IpamDriver.RequestAddress",
        json!({"PoolID": id4, "Options": gateway}),
    );
    let gw6 = call(
        "IpamDriver.RequestAddress",
        json!({"PoolID": id6, "Options": gateway}),
    );
    let net = format!("{:08x}{}", std::process::id(), "a".repeat(56));
    let ep = format!("{:08x}{}", std::process::id(), "b".repeat(56));
    call(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "Options": {"com.docker.network.generic": {}},
               "IPv4Data": [{"AddressSpace": space, "Pool": v4, "Gateway": gw4["Address"]}],
               "IPv6Data": [{"AddressSpace": space, "Pool": v6, "Gateway": gw6["Address"]}]}),
    );
    let a4 = call("IpamDriver.RequestAddress", json!({"PoolID": id4}));
    let a6 = call("IpamDriver.RequestAddress", json!({"PoolID": id6}));
    call(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep,
               "Interface": {"Address": a4["Address"], "AddressIPv6": a6["Address"]}}),
    );
    let c = TestNetns::new("nxc");
    let joined = call(
        "NetworkDriver.Join",
        json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": c.path_str()}),
    );
    assert!(joined["InterfaceName"]["SrcName"].is_string(), "{joined}");
    // `-p 18490:80 -p 18491:53/udp`.
    call(
        "NetworkDriver.ProgramExternalConnectivity",
        json!({"NetworkID": net, "EndpointID": ep, "Options": {"com.docker.network.portmap": [
            {"Proto": 6, "Port": 80, "HostPort": 18490},
            {"Proto": 17, "Port": 53, "HostPort": 18491}]}}),
    );
    call(
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": net, "EndpointID": ep}),
    );

    // `berth status` and `berth gc` read berthd's records too.
    let state = dir.path().join("state").display().to_string();
    let data = fx.data.path().display().to_string();
    let engine = ["--data-dir", &data, "--engine-state", &state];
    let (st, e) = fx.berth_output(
        "status-engine",
        &[&["status", "-o", "json"][..], &engine].concat(),
    );
    assert!(
        st.contains(&net[..12]),
        "berth status does not show berthd's network: {st}"
    );
    let mut all = vec![("berth status (berthd's networks)".to_string(), e)];
    all.push((
        "berth gc --dry-run (berthd's networks)".into(),
        fx.berth("gc-engine", &[&["gc", "--dry-run"][..], &engine].concat()),
    ));

    // berthd's reconciler, shown a flushed ruleset.
    let before = fx.host.sh("nft list ruleset");
    assert!(before.contains("pm-prerouting"), "{before}");
    fx.host.sh("nft flush ruleset");
    let back = poll_until(Instant::now(), Duration::from_secs(10), || {
        fx.host.sh("nft list ruleset") == before
    });
    assert!(
        back.is_some(),
        "berthd's reconciler did not put the ruleset back: {}",
        fx.log("berthd")
    );

    call(
        "NetworkDriver.RevokeExternalConnectivity",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    call(
        "NetworkDriver.Leave",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    call(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    for (pool, a) in [(&id4, &a4), (&id6, &a6)] {
        call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": addr(a)}),
        );
    }
    call("NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    for (pool, a) in [(&id4, &gw4), (&id6, &gw6)] {
        call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": addr(a)}),
        );
        call("IpamDriver.ReleasePool", json!({"PoolID": pool}));
    }
    assert_eq!(
        fx.host.sh("nft list ruleset"),
        "",
        "DeleteNetwork left rules"
    );

    // An overlay network (its lease in an etcd of the test's host
    // namespace, its underlay a veth there): berthd is its node agent.
    fx.host.sh(
        "ip link add nxu0 type veth peer name nxu0p && ip link set nxu0p up && \
         ip addr add 192.168.77.1/24 dev nxu0 && ip link set nxu0 up",
    );
    let _etcd = Etcd::start(&fx.host, "127.0.0.1");
    let healthy = poll_until(Instant::now(), Duration::from_secs(20), || {
        etcd_health(&fx.host).contains("\"health\":\"true\"")
    });
    assert!(healthy.is_some(), "etcd: {}", etcd_health(&fx.host));
    let cluster = "10.244.0.0/16";
    let pool = call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": space, "Pool": cluster, "V6": false}),
    );
    let id = pool["PoolID"].clone();
    let gw = call(
        "IpamDriver.RequestAddress",
        json!({"PoolID": id, "Options": gateway}),
    );
    let net = format!("{:08x}{}", std::process::id(), "c".repeat(56));
    let ep = format!("{:08x}{}", std::process::id(), "d".repeat(56));
    call(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "Options": {"com.docker.network.generic": {
                   "mode": "overlay", "vni": "77", "iface": "nxu0", "node": "nxnode",
                   "etcd": "http://127.0.0.1:2379", "prefix": "/nx"}},
               "IPv4Data": [{"AddressSpace": space, "Pool": cluster, "Gateway": gw["Address"]}],
               "IPv6Data": []}),
    );
    let a = call("IpamDriver.RequestAddress", json!({"PoolID": id}));
    call(
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": a["Address"]}}),
    );
    call(
        "NetworkDriver.Join",
        json!({"NetworkID": net, "EndpointID": ep, "SandboxKey": c.path_str()}),
    );
    assert!(
        fx.host.sh("ip -br link").contains("berth.77"),
        "no VXLAN device"
    );
    call(
        "NetworkDriver.Leave",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    call(
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    call(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": addr(&a)}),
    );
    call("NetworkDriver.DeleteNetwork", json!({"NetworkID": net}));
    call(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": addr(&gw)}),
    );
    call("IpamDriver.ReleasePool", json!({"PoolID": id}));

    call("VolumeDriver.Capabilities", json!({}));
    for (name, opts) in [
        ("nxdata", json!({"mode": "0750"})),
        ("nxscratch", json!({"type": "tmpfs", "o": "size=1m"})),
        (
            "nxsite",
            json!({"type": "bind", "device": allowed, "ro": "true"}),
        ),
    ] {
        call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
        call("VolumeDriver.Get", json!({"Name": name}));
        call("VolumeDriver.Path", json!({"Name": name}));
        call("VolumeDriver.Mount", json!({"Name": name, "ID": "nx1"}));
        call("VolumeDriver.List", json!({}));
        call("VolumeDriver.Unmount", json!({"Name": name, "ID": "nx1"}));
        call("VolumeDriver.Remove", json!({"Name": name}));
    }

    all.push(("berthd".into(), d.stop()));
    assert_ours(&all);
}
