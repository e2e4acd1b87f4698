//! A private containerd (Debian's package, 1.6, with its CRI plugin built
//! in) driven over its gRPC socket exactly as kubelet drives it: the CRI v1
//! `RuntimeService` (`k8s_cri::v1`) over a unix socket, through tonic.
//!
//! [`Containerd::start`] gives a test its own containerd: root, state, gRPC
//! socket, runc root, CNI `bin_dir` and `conf_dir` are the test's own, all in
//! one [`TempDir`] (the CNI dirs are the caller's). Its sandbox ("pause")
//! image is built here from busybox-static and imported with `ctr` (no
//! registry is reachable). containerd logs at debug level to `containerd.log`
//! in that dir; a failing test prints the log's CNI lines ([`Containerd`]'s
//! drop). Drop removes every pod through CRI (so CNI DEL runs), kills
//! containerd by its PID, force-deletes any sandbox left (runc, by our runc
//! root) and shims serving our socket (by PID), unmounts what is mounted
//! under the dir and removes it.
//!
//! What containerd 1.6 shows of CNI (for benchmarks):
//! - Its debug log has `begin cni setup` and `cni result: ...` lines, each
//!   with `podsandboxid=<id>` and a nanosecond timestamp: the whole CNI ADD
//!   of one pod (the `loopback` network, then the pod network's conflist).
//!   [`cni_setup_durations`] pairs them.
//! - Teardown logs only its end (`TearDown network for sandbox "<id>"
//!   successfully`, info level), no start; its duration is in the metrics.
//! - With a metrics address ([`ContainerdOptions::metrics`]) it serves
//!   Prometheus text on `/v1/metrics`; [`NetworkMetrics`] reads the CNI
//!   histograms from it: `containerd_cri_network_plugin_operations_duration_seconds_seconds`
//!   (`operation_type="set_up_pod"` / `"tear_down_pod"`) and
//!   `containerd_cri_sandbox_create_network_seconds` /
//!   `..._delete_network_seconds` (sums and counts).
//! - Removing a pod runs CNI DEL a second time: StopPodSandbox tears the
//!   network down (and removes the netns), then RemovePodSandbox "forcibly
//!   stops" the sandbox and tears it down again with an empty CNI_NETNS. So
//!   `tear_down_pod` counts two per pod stopped and removed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec, ImageStatusRequest,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, NetworkConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, Protocol, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    RuntimeConfig, StartContainerRequest, StatusRequest, StatusResponse, StopContainerRequest,
    StopPodSandboxRequest, UpdateRuntimeConfigRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{next_id, run, run_ok, TempDir};

/// The sandbox image every private containerd imports (built here).
pub const SANDBOX_IMAGE: &str = "berth.test/pause:1";
/// The containerd namespace the CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// What one CRI call may take before the client gives up.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Containerd::start`] waits for the socket to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// busybox applets in the sandbox image.
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "ip", "ping", "nc", "httpd"];
/// Plugins a CRI-only containerd does not need (faster start-up, nothing
/// under /opt). The legacy `io.containerd.runtime.v1.linux` must stay: 1.6's
/// tasks service, and so CRI, need it loaded.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

fn need_tool(name: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!(
            "{name} not found: run ./scripts/test (as root), which installs the apt \
             packages the tests need (containerd, runc, busybox-static, ...)"
        ))
    }
}

// ---------------------------------------------------------------------------
// the sandbox image

/// Writes a docker-archive tar (`docker save` format) of a one-layer image
/// into `dir` and returns its path: /bin/busybox (static) with symlinks for
/// [`APPLETS`], entrypoint `sleep` for about 68 years, tagged
/// [`SANDBOX_IMAGE`].
pub fn build_sandbox_image(dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox not found: run ./scripts/test, which installs busybox-static"
    );
    need_tool("tar").unwrap_or_else(|e| panic!("{e}"));
    let rootfs = dir.join("image-rootfs");
    let img = dir.join("image");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(&img).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layer = img.join("layer.tar");
    run_ok(
        "tar",
        &[
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            layer.to_str().unwrap(),
            ".",
        ],
    );
    let diff_id = hex::encode(Sha256::digest(std::fs::read(&layer).unwrap()));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sleep", "2147483647"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(img.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [SANDBOX_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(img.join("manifest.json"), manifest.to_string()).unwrap();
    let tar = dir.join("pause.tar");
    run_ok(
        "tar",
        &[
            "-C",
            img.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "manifest.json",
            "config.json",
            "layer.tar",
        ],
    );
    let _ = std::fs::remove_dir_all(&rootfs);
    let _ = std::fs::remove_dir_all(&img);
    tar
}

// ---------------------------------------------------------------------------
// a private containerd

/// What a private containerd is started with.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// The CRI plugin's CNI `bin_dir`.
    pub bin_dir: PathBuf,
    /// The CRI plugin's CNI `conf_dir` (it loads the first conflist there).
    pub conf_dir: PathBuf,
    /// Serve Prometheus metrics on a free 127.0.0.1 port.
    pub metrics: bool,
    /// A command containerd's own command line is appended to, which must
    /// exec it in place (so the child's PID stays containerd's): e.g.
    /// `unshare ... sh -c '...; exec "$@"' sh`, to start it in namespaces
    /// of its own. Empty: containerd is started directly.
    pub launcher: Vec<String>,
    /// The CRI plugin's CNI `conf_template`: the conflist containerd
    /// writes into `conf_dir` once kubelet hands it a pod CIDR
    /// (`UpdateRuntimeConfig`).
    pub conf_template: Option<PathBuf>,
    /// Pods' network namespaces mounted under containerd's state dir
    /// (`netns_mounts_under_state_dir`, the default here: nothing of the
    /// test's in the host's `/var/run/netns`); false: containerd's own
    /// default, `/var/run/netns`, as on a node.
    pub netns_under_state_dir: bool,
}

impl ContainerdOptions {
    pub fn new(bin_dir: impl Into<PathBuf>, conf_dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.into(),
            conf_dir: conf_dir.into(),
            metrics: false,
            launcher: Vec::new(),
            conf_template: None,
            netns_under_state_dir: true,
        }
    }

    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// See [`launcher`](Self::launcher).
    pub fn launcher(mut self, cmd: Vec<String>) -> Self {
        self.launcher = cmd;
        self
    }

    /// See [`netns_under_state_dir`](Self::netns_under_state_dir).
    pub fn netns_under_state_dir(mut self, on: bool) -> Self {
        self.netns_under_state_dir = on;
        self
    }

    /// See [`conf_template`](Self::conf_template).
    pub fn conf_template(mut self, path: impl Into<PathBuf>) -> Self {
        self.conf_template = Some(path.into());
        self
    }
}

/// A containerd of the test's own; see the module doc.
pub struct Containerd {
    dir: TempDir,
    opts: ContainerdOptions,
    child: Option<Child>,
    metrics_addr: Option<SocketAddr>,
}

impl Containerd {
    /// Starts containerd with `bin_dir` and `conf_dir`, imports the sandbox
    /// image and returns once its CRI socket answers `Status`. Panics (with
    /// the log) if it does not.
    pub fn start(tag: &str, bin_dir: &Path, conf_dir: &Path) -> Containerd {
        Self::start_with(tag, ContainerdOptions::new(bin_dir, conf_dir))
    }

    pub fn start_with(tag: &str, opts: ContainerdOptions) -> Containerd {
        crate::require_root();
        Self::try_start_with(tag, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start_with`](Self::start_with) for callers that report failures
    /// instead of panicking (berth-bench). What was started is stopped
    /// again when it fails.
    pub fn try_start_with(tag: &str, opts: ContainerdOptions) -> Result<Containerd, String> {
        if !crate::is_root() {
            return Err("containerd's CRI needs root".into());
        }
        for tool in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "runc",
            "tar",
        ] {
            need_tool(tool)?;
        }
        if !Path::new("/bin/busybox").is_file() {
            return Err("/bin/busybox not found: install busybox-static".into());
        }
        let dir = TempDir::new(&format!("cri-{tag}"));
        let metrics_addr = opts.metrics.then(free_local_port);
        let mut cd = Containerd {
            dir,
            opts,
            child: None,
            metrics_addr,
        };
        std::fs::write(cd.config_path(), cd.config_toml())
            .map_err(|e| format!("write {}: {e}", cd.config_path().display()))?;
        let image = build_sandbox_image(cd.dir.path());
        cd.try_spawn()?;
        let sock = cd.socket().to_string_lossy().into_owned();
        let out = run(
            "ctr",
            &[
                "-a",
                &sock,
                "-n",
                CRI_NAMESPACE,
                "images",
                "import",
                "--snapshotter",
                "native",
                image.to_str().unwrap(),
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "ctr images import failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cd.log_tail(40)
            ));
        }
        let _ = std::fs::remove_file(&image);
        Ok(cd)
    }

    /// The directory holding root, state, socket, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    /// The gRPC (CRI) socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// containerd's log (debug level; appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// runc's root for the CRI namespace (the runc shim's `Root` option
    /// plus the namespace).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc").join(CRI_NAMESPACE)
    }

    /// Where pod network namespaces are mounted (under the state dir, or
    /// containerd's default `/var/run/netns`: see
    /// [`ContainerdOptions::netns_under_state_dir`]).
    pub fn netns_dir(&self) -> PathBuf {
        if self.opts.netns_under_state_dir {
            self.state().join("io.containerd.grpc.v1.cri").join("netns")
        } else {
            PathBuf::from("/var/run/netns")
        }
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// containerd's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn config_toml(&self) -> String {
        let q = |p: &Path| serde_json::to_string(p.to_str().expect("UTF-8 path")).unwrap();
        let disabled: Vec<String> = DISABLED_PLUGINS
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        let sock = self.socket();
        let ttrpc = PathBuf::from(format!("{}.ttrpc", sock.display()));
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let metrics = match self.metrics_addr {
            Some(a) => format!("[metrics]\n  address = \"{a}\"\n"),
            None => String::new(),
        };
        let conf_template = match &self.opts.conf_template {
            Some(t) => format!("\x20 conf_template = {}\n", q(t)),
            None => String::new(),
        };
        format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = {sock}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  level = \"debug\"\n\
             {metrics}\
             [{cri}]\n\
             \x20 sandbox_image = \"{image}\"\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 netns_mounts_under_state_dir = {netns_under_state_dir}\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"0\"\n\
             [{cri}.containerd]\n\
             \x20 snapshotter = \"native\"\n\
             \x20 default_runtime_name = \"runc\"\n\
             [{cri}.containerd.runtimes.runc]\n\
             \x20 runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.runc.options]\n\
             \x20 Root = {runc}\n\
             [{cri}.cni]\n\
             \x20 bin_dir = {bin}\n\
             \x20 conf_dir = {conf}\n\
             \x20 max_conf_num = 1\n\
             {conf_template}",
            root = q(&self.root()),
            state = q(&self.state()),
            disabled = disabled.join(", "),
            sock = q(&sock),
            ttrpc = q(&ttrpc),
            image = SANDBOX_IMAGE,
            runc = q(&self.dir.path().join("runc")),
            bin = q(&self.opts.bin_dir),
            conf = q(&self.opts.conf_dir),
            netns_under_state_dir = self.opts.netns_under_state_dir,
        )
    }

    /// Starts containerd (again, after [`kill`](Self::kill) or
    /// [`stop`](Self::stop): same config, root and state) and waits until
    /// its CRI answers `Status`.
    pub fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`spawn`](Self::spawn), reporting instead of panicking.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("containerd is already running".into());
        }
        let sock = self.socket();
        // A containerd killed earlier leaves its socket files.
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(format!("{}.ttrpc", sock.display()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open containerd.log: {e}"))?;
        let mut cmd = match self.opts.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(self.config_path())
            // Plugins inherit containerd's environment: berth-bridge must
            // use its default run dir, shared by all its networks.
            .env_remove("BERTH_RUN_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("dup log: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start containerd (Debian package containerd): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("socket not there yet");
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "containerd exited at start-up ({st}):\n{}",
                    self.log_tail(60)
                ));
            }
            if sock.exists() {
                match CriClient::connect(&sock)
                    .and_then(|mut c| c.status().map_err(|e| e.to_string()))
                {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd's CRI did not answer within {START_TIMEOUT:?} ({last}):\n{}",
                    self.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills containerd by its PID (SIGKILL, as a crash would) and reaps it.
    /// Pods, their shims and their networks stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills containerd, its shims and every process under them (the
    /// pods' sandboxes and containers) with SIGKILL, each by its PID, as
    /// when the machine dies: no CNI DEL runs, nothing is stopped cleanly.
    /// Returns how many processes were killed.
    pub fn kill_all(&mut self) -> usize {
        let mut roots: Vec<i32> = self.shim_pids();
        if let Some(c) = &self.child {
            roots.push(c.id() as i32);
        }
        let doomed = descendants(&roots);
        // Stopped first, so none of them acts on another's death (a shim
        // reaping its container, containerd restarting a shim).
        for pid in &doomed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
        for pid in &doomed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        doomed.len()
    }

    /// Stops containerd by its PID: SIGTERM, SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return;
                }
            }
        }
    }

    /// [`kill`](Self::kill), then [`spawn`](Self::spawn).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client connected to the CRI socket; panics if it cannot connect.
    pub fn client(&self) -> CriClient {
        CriClient::connect(&self.socket())
            .unwrap_or_else(|e| panic!("connect to containerd's CRI: {e}"))
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log, each cut to 600 bytes.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| cut(l, 600))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The log lines about CNI, pod networks and errors (each cut to 1500
    /// bytes): what a failing test prints.
    pub fn cni_log(&self) -> String {
        self.log()
            .lines()
            .filter(|l| is_cni_line(l))
            .map(|l| cut(l, 1500))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Prometheus text from `/v1/metrics` (needs
    /// [`ContainerdOptions::metrics`]).
    pub fn metrics_text(&self) -> Result<String, String> {
        let addr = self
            .metrics_addr
            .ok_or("containerd was started without metrics")?;
        http_get(addr, "/v1/metrics")
    }

    /// The CNI histograms of [`metrics_text`](Self::metrics_text).
    pub fn network_metrics(&self) -> Result<NetworkMetrics, String> {
        Ok(NetworkMetrics::parse(&self.metrics_text()?))
    }

    /// Per-pod CNI setup (ADD) durations from the log, in log order.
    pub fn cni_setup_durations(&self) -> Vec<(String, Duration)> {
        cni_setup_durations(&self.log())
    }

    /// Shims serving this containerd (their command line names our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket();
        let sock = sock.to_string_lossy();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            if is_shim && args.iter().any(|a| *a == sock.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    /// Stops and removes every pod through CRI (CNI DEL runs), within
    /// `budget`. Returns the ids it could not remove, with why.
    pub fn remove_all_pods(&self, budget: Duration) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let Ok(mut c) = CriClient::connect(&self.socket()) else {
            return failed;
        };
        c.timeout = budget.min(CRI_TIMEOUT);
        let ids = match c.list_pods() {
            Ok(ids) => ids,
            Err(e) => return vec![(String::from("*"), e.to_string())],
        };
        let deadline = Instant::now() + budget;
        for id in ids {
            if Instant::now() > deadline {
                failed.push((id, "no time left".into()));
                continue;
            }
            if let Err(e) = c.stop_pod(&id).and_then(|_| c.remove_pod(&id)) {
                failed.push((id, e.message().to_string()));
            }
        }
        failed
    }

    /// Mount points under our dir, deepest first.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.path().display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.len()));
        v.dedup();
        v
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- containerd log ({}), CNI lines ---\n{}\n--- end of containerd log ---",
                self.log_path().display(),
                self.cni_log()
            );
        }
        if self.child.is_some() {
            for (id, why) in self.remove_all_pods(Duration::from_secs(30)) {
                eprintln!("warning: containerd: cannot remove pod {id}: {why}");
            }
        }
        self.stop();
        // Whatever CRI could not remove: its containers (by our runc root),
        // then the shims serving our socket, by PID.
        let root = self.runc_root();
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = run(
                    "runc",
                    &[
                        "--root",
                        root.to_str().unwrap_or_default(),
                        "delete",
                        "--force",
                        &id,
                    ],
                );
            }
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in self.mounts() {
            let c = std::ffi::CString::new(m.clone()).unwrap();
            // SAFETY: umount2 with a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!("warning: umount {m}: {}", std::io::Error::last_os_error());
            }
        }
        // self.dir (TempDir) removes the directory after this.
    }
}

/// `roots` and every process below them (by the parent PIDs in
/// `/proc/<pid>/stat`), roots first.
fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parens.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut out: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            if !out.contains(child) {
                out.push(*child);
            }
        }
        i += 1;
    }
    out
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Whether a containerd log line is about CNI, pod networks or an error.
pub fn is_cni_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    [
        "cni",
        "network",
        "netns",
        "level=error",
        "level=warning",
        "runpodsandbox",
        "stoppodsandbox",
        "removepodsandbox",
    ]
    .iter()
    .any(|k| l.contains(k))
        && !l.contains("sandbox container spec")
        && !l.contains("start cri plugin with config")
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_local_port() -> SocketAddr {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// A plain HTTP/1.0 GET; the body on status 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

// ---------------------------------------------------------------------------
// what containerd tells of CNI timings

/// Sum and count of one Prometheus histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub sum: Duration,
}

impl Histogram {
    /// The mean (zero when empty).
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.sum / self.count as u32
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }
}

/// containerd 1.6's CNI histograms (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetworkMetrics {
    /// `network_plugin_operations_duration_seconds{operation_type="set_up_pod"}`:
    /// go-cni's Setup (every network of the pod, loopback included).
    pub plugin_setup: Histogram,
    /// `...{operation_type="tear_down_pod"}`: go-cni's Remove.
    pub plugin_teardown: Histogram,
    /// `sandbox_create_network_seconds`: RunPodSandbox's network step
    /// (netns creation + setup).
    pub sandbox_create_network: Histogram,
    /// `sandbox_delete_network_seconds`: StopPodSandbox's network step
    /// (teardown + netns removal).
    pub sandbox_delete_network: Histogram,
}

impl NetworkMetrics {
    pub fn parse(text: &str) -> NetworkMetrics {
        const OPS: &str = "containerd_cri_network_plugin_operations_duration_seconds_seconds";
        let hist = |name: &str, labels: &str| Histogram {
            count: prom_value(text, &format!("{name}_count{labels}")).map_or(0, |v| v as u64),
            sum: prom_value(text, &format!("{name}_sum{labels}"))
                .map_or(Duration::ZERO, Duration::from_secs_f64),
        };
        NetworkMetrics {
            plugin_setup: hist(OPS, "{operation_type=\"set_up_pod\"}"),
            plugin_teardown: hist(OPS, "{operation_type=\"tear_down_pod\"}"),
            sandbox_create_network: hist("containerd_cri_sandbox_create_network_seconds", ""),
            sandbox_delete_network: hist("containerd_cri_sandbox_delete_network_seconds", ""),
        }
    }
}

/// The value of the sample named exactly `series` (name plus labels).
fn prom_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The `time="..."` of a containerd log line, in nanoseconds since the
/// epoch (RFC 3339, UTC `Z` or a numeric offset).
pub fn log_time(line: &str) -> Option<i128> {
    let t = line.strip_prefix("time=\"")?;
    let t = &t[..t.find('"')?];
    parse_rfc3339_nanos(t)
}

fn parse_rfc3339_nanos(t: &str) -> Option<i128> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut h = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{frac:0<9}").parse().ok()?;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss - offset;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// The `podsandboxid=<id>` field of a log line.
fn sandbox_field(line: &str) -> Option<&str> {
    let rest = &line[line.find(" podsandboxid=")? + " podsandboxid=".len()..];
    let rest = rest.trim_start_matches('"');
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// (sandbox id, CNI setup duration) for each pod whose `begin cni setup`
/// and `cni result` lines are both in `log` (containerd at debug level),
/// in the order the setups ended.
pub fn cni_setup_durations(log: &str) -> Vec<(String, Duration)> {
    let mut begun: std::collections::HashMap<String, i128> = Default::default();
    let mut out = Vec::new();
    for line in log.lines() {
        let is_begin = line.contains("msg=\"begin cni setup\"");
        let is_end = line.contains("msg=\"cni result: ");
        if !is_begin && !is_end {
            continue;
        }
        let (Some(id), Some(t)) = (sandbox_field(line), log_time(line)) else {
            continue;
        };
        if is_begin {
            begun.insert(id.to_string(), t);
        } else if let Some(t0) = begun.remove(id) {
            let ns = u64::try_from(t - t0).unwrap_or(0);
            out.push((id.to_string(), Duration::from_nanos(ns)));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// the CRI client

/// A blocking CRI v1 RuntimeService client over a unix socket: tonic's
/// Endpoint with a connector that dials the socket, on a current-thread
/// tokio runtime of its own. Every call has [`timeout`](Self::timeout).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Deadline of each call ([`CRI_TIMEOUT`] by default).
    pub timeout: Duration,
}

/// What PodSandboxStatus (verbose) says of a pod.
#[derive(Debug, Clone)]
pub struct PodStatus {
    pub id: String,
    /// `SANDBOX_READY` or `SANDBOX_NOTREADY`.
    pub ready: bool,
    /// `network.ip`.
    pub ip: Option<IpAddr>,
    /// `network.additional_ips` (dual stack: the other family).
    pub additional_ips: Vec<IpAddr>,
    /// The network namespace path from the verbose info's runtime spec
    /// (a path in containerd's mount namespace).
    pub netns: Option<PathBuf>,
    /// The sandbox ("pause") process, from the verbose info.
    pub pid: Option<u32>,
    /// The verbose `info` entry, parsed.
    pub info: Value,
}

impl PodStatus {
    /// `ip` then `additional_ips`.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ip
            .iter()
            .copied()
            .chain(self.additional_ips.iter().copied())
            .collect()
    }

    pub fn ipv4(&self) -> Option<IpAddr> {
        self.ips().into_iter().find(IpAddr::is_ipv4)
    }

    pub fn ipv6(&self) -> Option<IpAddr> {
        self.ips().into_iter().find(IpAddr::is_ipv6)
    }

    /// `/proc/<pause pid>/ns/net`: the pod's network namespace, usable
    /// from any mount namespace (unlike [`netns`](Self::netns) when
    /// containerd runs in a mount namespace of its own).
    pub fn proc_netns(&self) -> Option<PathBuf> {
        self.pid
            .filter(|p| *p > 0)
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
    }
}

/// A pod sandbox request the way kubelet builds one (metadata, hostname,
/// pod network namespace, port mappings).
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub port_mappings: Vec<PortMapping>,
    /// The pod's annotations (kubelet copies them into the sandbox config;
    /// containerd reads `kubernetes.io/ingress-bandwidth` and
    /// `kubernetes.io/egress-bandwidth` from them).
    pub annotations: Vec<(String, String)>,
}

impl PodSpec {
    /// A pod named `name` in namespace `default` with a uid made from it.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            uid: format!("uid-{name}-{}-{}", std::process::id(), next_id()),
            name,
            namespace: "default".into(),
            port_mappings: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// Adds the annotation `key: value`.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// Publishes `container_port` on `host_port` (TCP, every host address).
    pub fn tcp_port(mut self, host_port: u16, container_port: u16) -> Self {
        self.port_mappings.push(PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: i32::from(container_port),
            host_port: i32::from(host_port),
            host_ip: String::new(),
        });
        self
    }

    pub fn config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            port_mappings: self.port_mappings.clone(),
            labels: [("io.kubernetes.pod.name".to_string(), self.name.clone())].into(),
            annotations: self.annotations.iter().cloned().collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl CriClient {
    /// Connects to the CRI socket at `socket`.
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is not used: the connector dials the socket.
                Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connect to {}: {e:?}", socket.display()))?;
        Ok(CriClient {
            rt,
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: CRI_TIMEOUT,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// The raw client and the runtime to drive it, for calls not wrapped
    /// here.
    pub fn raw(&mut self) -> (&tokio::runtime::Runtime, &mut RuntimeServiceClient<Channel>) {
        (&self.rt, &mut self.client)
    }

    /// `Status` (verbose: its info carries the CNI config and load status).
    pub fn status(&mut self) -> Result<StatusResponse, tonic::Status> {
        let req = self.request(StatusRequest { verbose: true });
        let c = &mut self.client;
        self.rt
            .block_on(c.status(req))
            .map(tonic::Response::into_inner)
    }

    /// The `NetworkReady` condition: (status, "reason: message").
    pub fn network_ready(&mut self) -> Result<(bool, String), tonic::Status> {
        let st = self.status()?;
        let cond = st
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "NetworkReady"))
            .ok_or_else(|| {
                tonic::Status::internal(format!("no NetworkReady condition in {st:?}"))
            })?;
        Ok((cond.status, format!("{}: {}", cond.reason, cond.message)))
    }

    /// Waits (up to `timeout`) until NetworkReady is `want`; returns the
    /// last condition seen.
    pub fn wait_network_ready(
        &mut self,
        want: bool,
        timeout: Duration,
    ) -> Result<(bool, String), tonic::Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let cond = self.network_ready()?;
            if cond.0 == want || Instant::now() > deadline {
                return Ok(cond);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `RunPodSandbox`; the sandbox id.
    pub fn run_pod(&mut self, pod: &PodSpec) -> Result<String, tonic::Status> {
        let req = self.request(RunPodSandboxRequest {
            config: Some(pod.config()),
            runtime_handler: String::new(),
        });
        let c = &mut self.client;
        self.rt
            .block_on(c.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `PodSandboxStatus` with verbose = true.
    pub fn pod_status(&mut self, id: &str) -> Result<PodStatus, tonic::Status> {
        let req = self.request(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        });
        let c = &mut self.client;
        let resp = self.rt.block_on(c.pod_sandbox_status(req))?.into_inner();
        let st = resp
            .status
            .ok_or_else(|| tonic::Status::internal("PodSandboxStatus without status"))?;
        let parse_ip = |s: &str| s.parse::<IpAddr>().ok();
        let (ip, additional_ips) = match &st.network {
            Some(n) => (
                parse_ip(&n.ip),
                n.additional_ips
                    .iter()
                    .filter_map(|p| parse_ip(&p.ip))
                    .collect(),
            ),
            None => (None, Vec::new()),
        };
        let info: Value = resp
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        Ok(PodStatus {
            id: st.id,
            ready: st.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32,
            ip,
            additional_ips,
            netns: netns_of(&info),
            pid: info["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            info,
        })
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = self.request(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        });
        let c = &mut self.client;
        self.rt.block_on(c.stop_pod_sandbox(req)).map(|_| ())
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = self.request(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        });
        let c = &mut self.client;
        self.rt.block_on(c.remove_pod_sandbox(req)).map(|_| ())
    }

    /// `ListPodSandbox` (no filter): the ids.
    pub fn list_pods(&mut self) -> Result<Vec<String>, tonic::Status> {
        let req = self.request(ListPodSandboxRequest { filter: None });
        let c = &mut self.client;
        let resp = self.rt.block_on(c.list_pod_sandbox(req))?.into_inner();
        Ok(resp.items.into_iter().map(|p| p.id).collect())
    }

    /// Runs a pod and reads its status: what a benchmark times as "one
    /// pod up".
    pub fn run_pod_and_status(&mut self, pod: &PodSpec) -> Result<PodStatus, tonic::Status> {
        let id = self.run_pod(pod)?;
        self.pod_status(&id)
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does.
    pub fn stop_and_remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.stop_pod(id)?;
        self.remove_pod(id)
    }

    /// `RunPodSandbox` of a sandbox config built by the caller; the id.
    pub fn run_pod_config(&mut self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = self.request(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        });
        let c = &mut self.client;
        self.rt
            .block_on(c.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `CreateContainer` in sandbox `pod` (whose config was `sandbox`); the
    /// container's id.
    pub fn create_container(
        &mut self,
        pod: &str,
        config: ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = self.request(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        });
        let c = &mut self.client;
        self.rt
            .block_on(c.create_container(req))
            .map(|r| r.into_inner().container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = self.request(StartContainerRequest {
            container_id: id.to_string(),
        });
        let c = &mut self.client;
        self.rt.block_on(c.start_container(req)).map(|_| ())
    }

    /// `ContainerStatus` (not verbose).
    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let req = self.request(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        });
        let c = &mut self.client;
        self.rt
            .block_on(c.container_status(req))?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("ContainerStatus without status"))
    }

    /// Waits (up to `timeout`) until the container has exited; its exit
    /// code. Err: the last status seen, or the call's error.
    pub fn wait_container_exit(&mut self, id: &str, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id).map_err(|e| e.to_string())?;
            if st.state == ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {id} still {:?} after {timeout:?}",
                    ContainerState::try_from(st.state)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `StopContainer` with `timeout` seconds between SIGTERM (the image's
    /// stop signal) and SIGKILL, as kubelet stops a container with the
    /// pod's terminationGracePeriodSeconds. The call returns once the
    /// container has exited.
    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let mut req = self.request(StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        });
        // The call itself lasts up to `timeout`.
        req.set_timeout(self.timeout + Duration::from_secs(timeout.max(0) as u64));
        let c = &mut self.client;
        self.rt.block_on(c.stop_container(req)).map(|_| ())
    }

    /// `RemoveContainer`.
    pub fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = self.request(RemoveContainerRequest {
            container_id: id.to_string(),
        });
        let c = &mut self.client;
        self.rt.block_on(c.remove_container(req)).map(|_| ())
    }

    /// `UpdateRuntimeConfig` with the node's pod CIDR, as kubelet sends
    /// `spec.podCIDR` (containerd then writes its `conf_template`).
    pub fn update_runtime_config(&mut self, pod_cidr: &str) -> Result<(), tonic::Status> {
        let req = self.request(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: pod_cidr.to_string(),
                }),
            }),
        });
        let c = &mut self.client;
        self.rt.block_on(c.update_runtime_config(req)).map(|_| ())
    }

    /// `ExecSync` of `cmd` in container `id` (what `kubectl exec` without a
    /// terminal asks), killed by the runtime after `timeout`: its exit code,
    /// stdout and stderr.
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let secs = timeout.as_secs().max(1);
        let mut req = self.request(ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: i64::try_from(secs).unwrap_or(i64::MAX),
        });
        // The call lasts as long as the command may.
        req.set_timeout(self.timeout + Duration::from_secs(secs));
        let c = &mut self.client;
        self.rt
            .block_on(c.exec_sync(req))
            .map(tonic::Response::into_inner)
    }

    /// `ImageStatus` of `image` (a reference as a pod spec names it): the
    /// image's id if the runtime has it, as kubelet asks before pulling
    /// with `imagePullPolicy: IfNotPresent`.
    pub fn image_id(&mut self, image: &str) -> Result<Option<String>, tonic::Status> {
        let req = self.request(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        });
        let c = &mut self.images;
        let resp = self.rt.block_on(c.image_status(req))?.into_inner();
        Ok(resp.image.map(|i| i.id))
    }
}

/// The messages of a CRI container log (`<time> <stream> <P|F> <msg>`
/// lines, as containerd writes them), one line each; partial lines (`P`)
/// joined with what follows.
pub fn cri_log_text(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, _stream, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        match (tag, msg) {
            (Some("P"), Some(m)) => out.push_str(m),
            (Some(_), Some(m)) => {
                out.push_str(m);
                out.push('\n');
            }
            (Some("F"), None) | (Some("P"), None) => out.push('\n'),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The network namespace path in a verbose PodSandboxStatus info
/// (`runtimeSpec.linux.namespaces[type=network].path`).
pub fn netns_of(info: &Value) -> Option<PathBuf> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

// ---------------------------------------------------------------------------
// unit tests (no root, no containerd)

// ---------------------------------------------------------------------------
// inside pods

/// `nsenter --net=NETNS cmd...` (busybox is on the host: the pod image's
/// applets are the host's busybox).
pub fn in_netns(netns: &Path, cmd: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter")
}

/// `busybox ping -c1 -W1 addr` from `netns`, up to 5 tries (the first
/// packets may race neighbour discovery or IPv6 DAD).
pub fn ping_in(netns: &Path, addr: IpAddr) -> Result<(), String> {
    let addr = addr.to_string();
    let mut last = String::new();
    for _ in 0..5 {
        let out = in_netns(netns, &["busybox", "ping", "-c1", "-W1", &addr]);
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Err(last)
}

/// A process the test started, killed by PID on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `busybox nc -ll -p 80 -e echo hi` in `netns`: answers `hi` to every
/// connection. Returns once it answers on `at`:80 (the pod's address).
pub fn serve_hi_in(netns: &Path, at: IpAddr) -> KillOnDrop {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "nc", "-ll", "-p", "80", "-e", "echo", "hi"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start busybox nc in the pod");
    let server = KillOnDrop(child);
    let at: SocketAddr = (at, 80).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask(at) {
            Ok(a) if a == "hi" => return server,
            other if Instant::now() > deadline => {
                panic!("server in {} on {at}: {other:?}", netns.display())
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Connects over TCP from the caller's namespace; the whole answer,
/// trimmed.
pub fn ask(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("1970-01-02T00:00:01.5Z"),
            Some(86_401_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-12-02T13:05:04.591982531Z"),
            Some(1_796_216_704_591_982_531)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-12-02T14:05:04.591982531+01:00"),
            parse_rfc3339_nanos("2026-12-02T13:05:04.591982531Z")
        );
        assert_eq!(parse_rfc3339_nanos("garbage"), None);
    }

    #[test]
    fn cni_setup_durations_from_a_log() {
        let log = "\
time=\"2026-12-02T13:05:04.591982531Z\" level=debug msg=\"begin cni setup\" podsandboxid=aea7f0
time=\"2026-12-02T13:05:04.600000000Z\" level=debug msg=\"begin cni setup\" podsandboxid=bb11
time=\"2026-12-02T13:05:04.650000000Z\" level=debug msg=\"cni result: {\\\"Interfaces\\\":{}}\" podsandboxid=bb11
time=\"2026-12-02T13:05:05.772809456Z\" level=debug msg=\"cni result: {}\" podsandboxid=aea7f0
time=\"2026-12-02T13:05:06.000000000Z\" level=debug msg=\"begin cni setup\" podsandboxid=cc22
";
        let d = cni_setup_durations(log);
        assert_eq!(
            d,
            vec![
                ("bb11".to_string(), Duration::from_millis(50)),
                ("aea7f0".to_string(), Duration::from_nanos(1_180_826_925)),
            ]
        );
    }

    #[test]
    fn network_metrics_from_prometheus_text() {
        let text = "\
# TYPE containerd_cri_network_plugin_operations_duration_seconds_seconds histogram
containerd_cri_network_plugin_operations_duration_seconds_seconds_bucket{operation_type=\"set_up_pod\",le=\"0.5\"} 1
containerd_cri_network_plugin_operations_duration_seconds_seconds_sum{operation_type=\"set_up_pod\"} 0.290220153
containerd_cri_network_plugin_operations_duration_seconds_seconds_count{operation_type=\"set_up_pod\"} 1
containerd_cri_network_plugin_operations_duration_seconds_seconds_sum{operation_type=\"tear_down_pod\"} 0.5
containerd_cri_network_plugin_operations_duration_seconds_seconds_count{operation_type=\"tear_down_pod\"} 2
containerd_cri_sandbox_create_network_seconds_sum 0.298173872
containerd_cri_sandbox_create_network_seconds_count 1
";
        let m = NetworkMetrics::parse(text);
        assert_eq!(m.plugin_setup.count, 1);
        assert_eq!(m.plugin_setup.sum, Duration::from_nanos(290_220_153));
        assert_eq!(m.plugin_teardown.count, 2);
        assert_eq!(m.plugin_teardown.mean(), Duration::from_millis(250));
        assert_eq!(m.sandbox_create_network.count, 1);
        assert_eq!(m.sandbox_delete_network, Histogram::default());
        let later = Histogram {
            count: 3,
            sum: Duration::from_secs(1),
        };
        assert_eq!(
            later.since(&m.plugin_teardown),
            Histogram {
                count: 1,
                sum: Duration::from_millis(500)
            }
        );
    }

    #[test]
    fn cri_log_lines() {
        let log = "2026-12-07T18:00:00.1Z stderr F installed /host/opt/cni/bin/loopback\n\
                   2026-12-07T18:00:00.2Z stdout P part one \n\
                   2026-12-07T18:00:00.3Z stdout F and two\n";
        assert_eq!(
            cri_log_text(log),
            "installed /host/opt/cni/bin/loopback\npart one and two\n"
        );
    }

    #[test]
    fn netns_from_verbose_info() {
        let info = serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}
        ]}}});
        assert_eq!(netns_of(&info), Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(netns_of(&Value::Null), None);
    }

    #[test]
    fn config_names_the_private_dirs() {
        // A Containerd value is built only to render its config (never
        // started, so Drop has nothing to stop).
        let cd = Containerd {
            dir: TempDir::new("cri-config"),
            opts: ContainerdOptions::new("/b", "/c"),
            child: None,
            metrics_addr: Some("127.0.0.1:9999".parse().unwrap()),
        };
        let t = cd.config_toml();
        assert!(t.contains("bin_dir = \"/b\""), "{t}");
        assert!(t.contains("conf_dir = \"/c\""), "{t}");
        assert!(t.contains("restrict_oom_score_adj = true"), "{t}");
        assert!(t.contains("snapshotter = \"native\""), "{t}");
        assert!(
            t.contains("runtime_type = \"io.containerd.runc.v2\""),
            "{t}"
        );
        assert!(t.contains("address = \"127.0.0.1:9999\""), "{t}");
        assert!(
            t.contains(&format!("address = \"{}\"", cd.socket().display())),
            "{t}"
        );
        assert!(t.contains(SANDBOX_IMAGE));
    }
}
