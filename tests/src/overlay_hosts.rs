//! Hosts of berth-overlay networks for the tests: namespaces on one
//! underlay switch, each with its run and IPAM dirs, running the plugin
//! and its node agent (`berth-overlay agent`), whose log is kept.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, bin_dir, run_plugin_in, PluginOutput, TempDir, TestNetns};

/// An underlay: a namespace holding bridge `sw0`, which hosts and etcd
/// members join by veths, on 192.168.77.0/24.
pub struct Switch {
    pub ns: TestNetns,
}

impl Switch {
    pub fn new(tag: &str) -> Switch {
        let ns = TestNetns::new(tag);
        ns.sh("ip link add sw0 type bridge && ip link set sw0 up");
        Switch { ns }
    }

    /// Joins `ns` to the switch by a veth `ovu` with `ips` (the first is
    /// its primary address), up with `lo`. `port` names the switch's end.
    pub fn join(&self, ns: &TestNetns, port: &str, ips: &[IpAddr]) {
        self.ns.sh(&format!(
            "ip link add {port} type veth peer name ovu netns {} && ip link set {port} master sw0 up",
            ns.name()
        ));
        let mut script = String::from("ip link set lo up");
        for ip in ips {
            script.push_str(&format!(" && ip addr add {ip}/24 dev ovu"));
        }
        script.push_str(" && ip link set ovu up");
        ns.sh(&script);
    }

    /// A host on 192.168.77.`n`.
    pub fn host(&self, tag: &str, n: u8) -> OverlayHost {
        let ns = TestNetns::new(&format!("{tag}{n}"));
        let underlay = IpAddr::from([192, 168, 77, n]);
        self.join(&ns, &format!("p{n}"), &[underlay]);
        OverlayHost {
            ns,
            underlay,
            run: TempDir::new(&format!("{tag}-run{n}")),
            data: TempDir::new(&format!("{tag}-data{n}")),
        }
    }
}

/// One host: its namespace (underlay link `ovu`), its address there, and
/// the plugin's run dir (`BERTH_RUN_DIR`) and IPAM dir.
pub struct OverlayHost {
    pub ns: TestNetns,
    pub underlay: IpAddr,
    pub run: TempDir,
    pub data: TempDir,
}

impl OverlayHost {
    /// berth-overlay's `command` for container `cid` in `container`.
    pub fn exec(
        &self,
        command: &str,
        cid: &str,
        container: &TestNetns,
        conf: &Value,
    ) -> PluginOutput {
        self.exec_env(command, cid, container, conf, &[])
    }

    /// [`exec`](Self::exec) with `extra` environment variables.
    pub fn exec_env(
        &self,
        command: &str,
        cid: &str,
        container: &TestNetns,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> PluginOutput {
        let dir = bin_dir();
        let mut env: Vec<(&str, &str)> = vec![
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", container.path_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", dir.to_str().unwrap_or_default()),
            (
                "BERTH_RUN_DIR",
                self.run.path().to_str().unwrap_or_default(),
            ),
        ];
        env.extend_from_slice(extra);
        run_plugin_in(&self.ns, &bin("berth-overlay"), command, &env, conf)
    }

    /// Starts the node agent on `conf` (written to the run dir).
    pub fn agent(&self, conf: &Value) -> Agent {
        let file = self.run.path().join("agent.conf");
        std::fs::write(&file, serde_json::to_vec(conf).expect("conf")).expect("write agent conf");
        Agent::start(&self.ns, self.run.path(), &file)
    }

    /// How many peers the host's VXLAN device `berth.<vni>` routes to.
    pub fn peer_routes(&self, vni: u32) -> usize {
        let out = self
            .ns
            .exec(&["ip", "route", "show", "dev", &format!("berth.{vni}")]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("onlink"))
            .count()
    }

    /// True if the host routes `subnet` ("10.244.3.0/24").
    pub fn routes(&self, subnet: &str) -> bool {
        !self
            .ns
            .exec_ok(&["ip", "route", "show", subnet])
            .trim()
            .is_empty()
    }
}

/// `berth-overlay agent` on a host.
pub type Agent = LoggedChild;

impl Agent {
    fn start(ns: &TestNetns, run: &Path, conf: &Path) -> Agent {
        // `ip netns exec` and `env` exec in place: the child is the agent.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "env"])
            .arg(format!("BERTH_RUN_DIR={}", run.display()))
            .arg("BERTH_LOG=info")
            .arg(bin("berth-overlay"))
            .arg("agent")
            .arg("--conf")
            .arg(conf);
        LoggedChild::spawn(cmd, "berth-overlay agent")
    }
}

/// A daemon a test started (an agent), killed by its PID when dropped;
/// what it logs on stderr is kept (and printed on drop if the test is
/// failing).
pub struct LoggedChild {
    child: Child,
    log: Arc<Mutex<String>>,
    what: &'static str,
}

impl LoggedChild {
    /// Spawns `cmd` with stdin and stdout closed and stderr kept.
    pub fn spawn(mut cmd: Command, what: &'static str) -> LoggedChild {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe);
            let mut line = String::new();
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&line);
                line.clear();
            }
        });
        LoggedChild { child, log, what }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What it logged after byte `mark` (a length [`log`](Self::log) had).
    pub fn log_since(&self, mark: usize) -> String {
        self.log().get(mark..).unwrap_or_default().to_string()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A clean stop (SIGTERM, as systemd or the kubelet stops it); waits
    /// up to 5 s for the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit on SIGTERM\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) log ---\n{}--- end ---",
                self.what,
                self.child.id(),
                self.log()
            );
        }
    }
}

/// Polls `cond` every 50 ms for up to `limit`; true if it held in time.
pub fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first address of a plugin result, without its prefix length.
pub fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}
