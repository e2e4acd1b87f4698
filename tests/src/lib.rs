//! Test support for berth's integration tests.
//!
//! Integration tests run the real plugin binaries the way a CNI runtime does
//! (exec with env + JSON on stdin) against real network namespaces. They run
//! as root (`./scripts/test`); nothing here skips a test when it is not root:
//! [`require_root`] fails it instead.
//!
//! Everything a test creates has a unique name (pid + per-process counter) so
//! parallel test threads and concurrent test processes don't collide, and is
//! removed on drop, also when the test panics.
//!
//! Observation uses `ip -j` ([`ip_json`]); that is fine here: the "no `ip`
//! subprocesses" rule is for product code.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bandwidth;
pub mod cluster;
pub mod cri;
pub mod etcd_tls;
pub mod image;
pub mod kube_proxy;
pub mod manifest;
pub mod metrics;
pub mod overlay_hosts;

/// Plugin binaries the integration tests expect in [`bin_dir`].
pub const BRIDGE_BIN: &str = "berth-bridge";
pub const IPAM_BIN: &str = "berth-ipam";

/// Where the reference plugins live (Debian's containernetworking-plugins).
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAMSIZ_MAX: usize = 15;

/// How long [`run_plugin`] lets a plugin run before killing it.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number unique within this process (starts at 0).
pub fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// root

/// True when running as uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test (never skips it) when not running as root.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it creates network namespaces and links); \
         run the suite with ./scripts/test as root"
    );
}

// ---------------------------------------------------------------------------
// binaries

/// The workspace's root directory (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory holding the built plugin binaries: `$BERTH_BIN_DIR` if set,
/// else the cargo target profile directory this test executable was built
/// into (tests run from `target/<profile>/deps/`, binaries are in
/// `target/<profile>/`).
///
/// Panics if `berth-bridge` is not there.
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("BERTH_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let exe = std::env::current_exe().expect("current_exe");
            bin_dir_from_exe(&exe)
        }
    };
    let bridge = dir.join(BRIDGE_BIN);
    assert!(
        bridge.is_file(),
        "{} not found in {}: build the plugins first with \
         `cargo build --workspace --bins` (./scripts/test does), \
         or point BERTH_BIN_DIR at the directory holding them",
        BRIDGE_BIN,
        dir.display()
    );
    dir
}

/// The profile directory for a test executable path:
/// `target/debug/deps/foo-1234` -> `target/debug`,
/// `target/debug/foo` -> `target/debug`.
pub fn bin_dir_from_exe(exe: &Path) -> PathBuf {
    let parent = exe.parent().unwrap_or_else(|| Path::new("."));
    if parent.file_name() == Some(OsStr::new("deps")) {
        parent.parent().unwrap_or(parent).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// Path to a named binary in [`bin_dir`]; panics if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: build it with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------
// names

/// Fixed-width base-36 digits of `n` (lowercase), `width` chars, high digits
/// first; panics if `n` does not fit.
fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    assert_eq!(n, 0, "value does not fit in {width} base-36 digits");
    String::from_utf8(out).unwrap()
}

/// Minimal width in base 36 for `n`.
fn base36_min(n: u64) -> String {
    let mut w = 1;
    let mut m = n / 36;
    while m > 0 {
        w += 1;
        m /= 36;
    }
    base36(n, w)
}

/// A name unique among all live processes: `prefix` + 5 base-36 chars of the
/// pid + base-36 counter, at most `maxlen` bytes. Use `maxlen` =
/// [`IFNAMSIZ_MAX`] (15) for interface names.
///
/// Panics if `prefix` leaves no room for the unique part (prefix + 6 bytes
/// must fit) or the counter no longer fits.
pub fn unique_name(prefix: &str, maxlen: usize) -> String {
    unique_name_with(prefix, maxlen, std::process::id(), next_id())
}

/// [`unique_name`] with explicit pid and counter (pure; for tests).
pub fn unique_name_with(prefix: &str, maxlen: usize, pid: u32, counter: u64) -> String {
    let pid = base36(u64::from(pid), 5);
    let ctr = base36_min(counter);
    let name = format!("{prefix}{pid}{ctr}");
    assert!(
        name.len() <= maxlen,
        "unique_name: prefix {prefix:?} too long for maxlen {maxlen} \
         (needs {} bytes: prefix + 5 pid chars + counter)",
        name.len()
    );
    name
}

/// Keeps `[a-z0-9-]` of a tag (lowercased), at most 24 chars.
fn sanitize_tag(tag: &str) -> String {
    tag.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(24)
        .collect()
}

/// The name of the `counter`th test netns of process `pid`:
/// `berth-t-<pid>-<counter>-<tag>`. `./scripts/test` removes namespaces of
/// this form whose pid is no longer alive.
pub fn netns_name(pid: u32, counter: u64, tag: &str) -> String {
    let tag = sanitize_tag(tag);
    if tag.is_empty() {
        format!("berth-t-{pid}-{counter}")
    } else {
        format!("berth-t-{pid}-{counter}-{tag}")
    }
}

/// A private IPv4 /24 and IPv6 /64 for one test network, distinct for each
/// call within a process (for the first 256 calls) and spread by pid across
/// processes: IPv4 in 10.128.0.0/9, IPv6 in fd42::/16.
pub fn unique_subnets() -> (String, String) {
    unique_subnets_with(std::process::id(), next_id())
}

/// [`unique_subnets`] with explicit pid and counter (pure).
pub fn unique_subnets_with(pid: u32, counter: u64) -> (String, String) {
    let idx = (u64::from(pid).wrapping_mul(256).wrapping_add(counter)) % 32768;
    let a = 128 + (idx >> 8);
    let b = idx & 0xff;
    let v4 = format!("10.{a}.{b}.0/24");
    let v6 = format!(
        "fd42:{:x}:{:x}:{:x}::/64",
        (pid >> 16) & 0xffff,
        pid & 0xffff,
        counter & 0xffff
    );
    (v4, v6)
}

/// The network named `name` in `berth status -o json`'s output `st`;
/// panics, showing `st`, if it has none.
pub fn status_network<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no network {name} in {st:#}"))
}

// ---------------------------------------------------------------------------
// commands

/// Runs a command, returns its output; panics if it cannot be started.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command that must succeed; returns its stdout. Panics with the
/// command line, status and stderr otherwise.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{} {}` failed ({}): {}{}",
        program,
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j <args>` parsed as JSON. An empty output is `[]`. Panics on failure.
pub fn ip_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run_ok("ip", &full);
    parse_ip_json(&out)
}

fn parse_ip_json(out: &str) -> Value {
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(out).unwrap_or_else(|e| panic!("ip -j printed invalid JSON ({e}): {out}"))
}

/// Whether a link of that name exists in the host netns.
pub fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

/// Whether a named netns (/run/netns/<name>) exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

// ---------------------------------------------------------------------------
// TestNetns

/// A network namespace made for one test, deleted on drop (also on panic).
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    /// `ip netns add berth-t-<pid>-<counter>-<tag>`; panics on failure.
    pub fn new(tag: &str) -> Self {
        Self::try_new(tag).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_new(tag: &str) -> anyhow::Result<Self> {
        let name = netns_name(std::process::id(), next_id(), tag);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run ip: {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "ip netns add {name} failed ({}): {} (tests need root: ./scripts/test)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = Path::new("/run/netns").join(&name);
        Ok(Self { name, path })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what a runtime passes as CNI_NETNS.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` as a &str (for env vars and JSON).
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("netns path is UTF-8")
    }

    /// Runs `ip netns exec <name> <cmd...>`; returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        assert!(!cmd.is_empty(), "TestNetns::exec needs a command");
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Like [`exec`](Self::exec) but the command must succeed; returns stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "in netns {}: `{}` failed ({}): {}{}",
            self.name,
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <name> -j <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", self.name.as_str(), "-j"];
        full.extend_from_slice(args);
        parse_ip_json(&run_ok("ip", &full))
    }
}

impl TestNetns {
    /// Kills (by PID) every process running in this namespace: daemons a
    /// plugin under test left there (e.g. berth-portmap's ::1 proxy of a
    /// container never DELeted) would keep it alive after `ip netns del`.
    fn kill_processes_inside(&self) {
        let Ok(mine) = std::fs::metadata(&self.path) else {
            return;
        };
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
                continue;
            };
            if ns.ino() == mine.ino() && ns.dev() == mine.dev() && pid != std::process::id() as i32
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.kill_processes_inside();
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// LinkGuard

/// Deletes a host link (bridge, veth...) by name on drop, if it exists.
#[derive(Debug)]
pub struct LinkGuard {
    name: String,
}

impl LinkGuard {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if link_exists(&self.name) {
            let out = run("ip", &["link", "del", "dev", &self.name]);
            if !out.status.success() {
                eprintln!(
                    "warning: ip link del {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// TempDir

/// A temporary directory removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "berth-t-{}-{}-{}",
            std::process::id(),
            next_id(),
            sanitize_tag(tag)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` joined with `rel`, as a String (for JSON configs).
    pub fn join_str(&self, rel: &str) -> String {
        self.path.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// running plugins

/// What a plugin run produced.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    /// Exit status; -1 if killed by a signal (or timed out).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, if it is JSON.
    pub json: Option<Value>,
}

impl PluginOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The JSON result of a successful run; panics (showing stdout and
    /// stderr) otherwise.
    pub fn expect_ok(&self) -> &Value {
        assert!(self.success(), "plugin failed: {self}");
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("plugin succeeded but printed no JSON: {self}"))
    }

    /// Panics unless the run succeeded (DEL prints nothing on success).
    pub fn assert_ok(&self) {
        assert!(self.success(), "plugin failed: {self}");
    }

    /// The CNI error code of a failed run (`{"code": N, ...}` on stdout).
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The CNI error `msg`, if any.
    pub fn error_msg(&self) -> Option<&str> {
        self.json.as_ref()?.get("msg")?.as_str()
    }

    /// Panics unless the run failed with CNI error `code`.
    pub fn expect_error(&self, code: u64) -> &Value {
        assert!(
            !self.success(),
            "expected CNI error {code}, plugin succeeded: {self}"
        );
        assert_eq!(
            self.error_code(),
            Some(code),
            "wrong CNI error code: {self}"
        );
        self.json.as_ref().unwrap()
    }
}

impl std::fmt::Display for PluginOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a CNI plugin as a runtime does: a cleared environment plus `PATH`,
/// `CNI_COMMAND=command` and `env`, `stdin` as JSON on standard input.
/// (`BERTH_LOG` is passed through too when set, for debugging.) Kills the
/// plugin after [`PLUGIN_TIMEOUT`]. Panics only if the binary cannot be
/// started.
pub fn run_plugin(bin: &Path, command: &str, env: &[(&str, &str)], stdin: &Value) -> PluginOutput {
    let input = serde_json::to_vec(stdin).expect("serialize stdin");
    run_plugin_raw(bin, command, env, &input)
}

/// [`run_plugin`] with raw stdin bytes (for malformed-input tests).
pub fn run_plugin_raw(
    bin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> PluginOutput {
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    if let Some(v) = std::env::var_os("BERTH_LOG") {
        cmd.env("BERTH_LOG", v);
    }
    cmd.env("CNI_COMMAND", command);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run plugin {}: {e}", bin.display()));

    // Feed stdin and drain stdout/stderr on threads so no pipe can fill up.
    let mut child_stdin = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A plugin may exit without reading stdin: ignore EPIPE.
        let _ = child_stdin.write_all(&input);
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });

    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let mut pause = Duration::from_micros(100);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for plugin") {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait for killed plugin");
            }
            None => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        }
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let mut stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    if timed_out {
        stderr.push_str(&format!(
            "\n[berth-tests: killed {} after {:?}]",
            bin.display(),
            PLUGIN_TIMEOUT
        ));
    }
    let json = if stdout.trim().is_empty() {
        None
    } else {
        serde_json::from_str(&stdout).ok()
    };
    PluginOutput {
        status: status.code().unwrap_or(-1),
        stdout,
        stderr,
        json,
    }
}

/// What a runtime puts on stdin for `plugins[idx]` of a conflist: that
/// plugin's object plus the list's `name` and `cniVersion` (and
/// `prevResult` if given).
pub fn plugin_conf(conflist: &Value, idx: usize, prev_result: Option<&Value>) -> Value {
    let mut conf = conflist["plugins"][idx].clone();
    let obj = conf
        .as_object_mut()
        .unwrap_or_else(|| panic!("conflist has no plugins[{idx}] object"));
    obj.insert("name".into(), conflist["name"].clone());
    obj.insert("cniVersion".into(), conflist["cniVersion"].clone());
    if let Some(prev) = prev_result {
        obj.insert("prevResult".into(), prev.clone());
    }
    conf
}

/// `conf` with `prevResult` set (what a runtime sends on DEL/CHECK).
pub fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c.as_object_mut()
        .expect("plugin config is a JSON object")
        .insert("prevResult".into(), prev.clone());
    c
}

/// A builder for running one plugin for one container:
///
/// ```no_run
/// # use berth_tests::*;
/// let ns = TestNetns::new("demo");
/// let cni = Cni::new("berth-bridge").netns(&ns);
/// # let conf = serde_json::json!({});
/// let result = cni.add(&conf).expect_ok().clone();
/// cni.del(&with_prev_result(&conf, &result)).assert_ok();
/// ```
#[derive(Debug, Clone)]
pub struct Cni {
    /// Directory holding `plugin`.
    pub bin_dir: PathBuf,
    /// Binary name of the plugin to exec.
    pub plugin: String,
    pub containerid: String,
    /// CNI_NETNS (a path).
    pub netns: String,
    pub ifname: String,
    /// CNI_PATH (':'-separated); defaults to `bin_dir`.
    pub path: String,
    /// CNI_ARGS, if any.
    pub args: Option<String>,
    /// Extra environment variables.
    pub extra_env: Vec<(String, String)>,
}

impl Cni {
    /// `plugin` from [`bin_dir`], a fresh unique container id, ifname `eth0`,
    /// CNI_PATH = bin_dir. Set the netns with [`netns`](Self::netns).
    pub fn new(plugin: &str) -> Self {
        Self::in_dir(bin_dir(), plugin)
    }

    /// A plugin from another directory (e.g. [`REFERENCE_CNI_DIR`]).
    pub fn in_dir(dir: impl Into<PathBuf>, plugin: &str) -> Self {
        let bin_dir = dir.into();
        let path = bin_dir.to_string_lossy().into_owned();
        Self {
            bin_dir,
            plugin: plugin.to_string(),
            containerid: format!("berth-test-{}-{}", std::process::id(), next_id()),
            netns: String::new(),
            ifname: "eth0".to_string(),
            path,
            args: None,
            extra_env: Vec::new(),
        }
    }

    pub fn containerid(mut self, id: impl Into<String>) -> Self {
        self.containerid = id.into();
        self
    }

    pub fn netns(mut self, ns: &TestNetns) -> Self {
        self.netns = ns.path_str().to_string();
        self
    }

    pub fn netns_path(mut self, path: impl Into<String>) -> Self {
        self.netns = path.into();
        self
    }

    pub fn ifname(mut self, ifname: impl Into<String>) -> Self {
        self.ifname = ifname.into();
        self
    }

    /// Sets CNI_PATH (':'-separated directories).
    pub fn cni_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub fn cni_args(mut self, args: impl Into<String>) -> Self {
        self.args = Some(args.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    pub fn bin(&self) -> PathBuf {
        self.bin_dir.join(&self.plugin)
    }

    /// Runs `command` with this container's env and `conf` on stdin.
    pub fn run(&self, command: &str, conf: &Value) -> PluginOutput {
        let mut env: Vec<(&str, &str)> = vec![
            ("CNI_CONTAINERID", self.containerid.as_str()),
            ("CNI_NETNS", self.netns.as_str()),
            ("CNI_IFNAME", self.ifname.as_str()),
            ("CNI_PATH", self.path.as_str()),
        ];
        if let Some(a) = &self.args {
            env.push(("CNI_ARGS", a.as_str()));
        }
        for (k, v) in &self.extra_env {
            env.push((k.as_str(), v.as_str()));
        }
        run_plugin(&self.bin(), command, &env, conf)
    }

    pub fn add(&self, conf: &Value) -> PluginOutput {
        self.run("ADD", conf)
    }

    pub fn del(&self, conf: &Value) -> PluginOutput {
        self.run("DEL", conf)
    }

    pub fn check(&self, conf: &Value) -> PluginOutput {
        self.run("CHECK", conf)
    }

    /// VERSION needs no container env; `conf` is usually `{"cniVersion": ...}`.
    pub fn version(&self, conf: &Value) -> PluginOutput {
        run_plugin(&self.bin(), "VERSION", &[], conf)
    }
}

// ---------------------------------------------------------------------------
// unit tests (no root needed)

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn base36_is_fixed_width() {
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36, 2), "10");
        // pid_max on Linux is at most 2^22
        assert_eq!(base36(1 << 22, 5).len(), 5);
        assert_eq!(base36_min(0), "0");
        assert_eq!(base36_min(36 * 36), "100");
    }

    #[test]
    fn unique_names_fit_ifnamsiz() {
        for counter in [0u64, 1, 35, 36, 1295, 46655, 1_000_000] {
            let n = unique_name_with("bt", IFNAMSIZ_MAX, 4_194_304, counter);
            assert!(n.len() <= IFNAMSIZ_MAX, "{n}");
            assert!(n.starts_with("bt"));
            assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let n = unique_name("brx", IFNAMSIZ_MAX);
        assert!(n.len() <= IFNAMSIZ_MAX && n.starts_with("brx"), "{n}");
    }

    #[test]
    fn unique_names_distinct_across_pids_and_counters() {
        let mut seen = HashSet::new();
        for pid in [1u32, 2, 36, 37, 1296, 4_194_304] {
            for counter in 0..200u64 {
                assert!(
                    seen.insert(unique_name_with("b", 15, pid, counter)),
                    "duplicate for pid {pid} counter {counter}"
                );
            }
        }
        let names: HashSet<String> = (0..1000).map(|_| unique_name("t", 15)).collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn unique_names_distinct_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| (0..200).map(|_| unique_name("th", 15)).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(all.insert(n));
            }
        }
    }

    #[test]
    #[should_panic(expected = "too long")]
    fn unique_name_rejects_long_prefix() {
        unique_name_with("averylongprefix", IFNAMSIZ_MAX, 1, 0);
    }

    #[test]
    fn netns_names_are_parseable() {
        let n = netns_name(1234, 7, "Bridge ADD/del");
        assert_eq!(n, "berth-t-1234-7-bridge-add-del");
        assert_eq!(netns_name(1, 2, ""), "berth-t-1-2");
        // ./scripts/test recovers the pid as the field after "berth-t-"
        let pid: u32 = n
            .strip_prefix("berth-t-")
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pid, 1234);
        assert!(netns_name(1, 2, &"x".repeat(300)).len() < 64);
    }

    #[test]
    fn subnets_are_distinct_within_a_process() {
        let mut v4s = HashSet::new();
        let mut v6s = HashSet::new();
        for c in 0..256 {
            let (a, b) = unique_subnets_with(4242, c);
            assert!(a.starts_with("10.") && a.ends_with(".0/24"), "{a}");
            assert!(b.starts_with("fd42:") && b.ends_with("::/64"), "{b}");
            let second: u32 = a.split('.').nth(1).unwrap().parse().unwrap();
            assert!((128..=255).contains(&second), "{a}");
            assert!(v4s.insert(a));
            assert!(v6s.insert(b));
        }
    }

    #[test]
    fn bin_dir_from_test_exe() {
        assert_eq!(
            bin_dir_from_exe(Path::new("/w/target/debug/deps/support-0123abcd")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            bin_dir_from_exe(Path::new("/w/target/release/berth-bench")),
            PathBuf::from("/w/target/release")
        );
    }

    #[test]
    fn plugin_conf_injects_name_and_version() {
        let list = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "net1",
            "plugins": [{"type": "berth-bridge", "bridge": "br0"}]
        });
        let prev = serde_json::json!({"cniVersion": "1.1.0", "ips": []});
        let c = plugin_conf(&list, 0, None);
        assert_eq!(c["name"], "net1");
        assert_eq!(c["cniVersion"], "1.1.0");
        assert_eq!(c["type"], "berth-bridge");
        assert!(c.get("prevResult").is_none());
        let d = with_prev_result(&c, &prev);
        assert_eq!(d["prevResult"], prev);
        assert_eq!(plugin_conf(&list, 0, Some(&prev)), d);
    }

    #[test]
    fn plugin_output_error_accessors() {
        let o = PluginOutput {
            status: 1,
            stdout: r#"{"cniVersion":"1.1.0","code":7,"msg":"bad bridge"}"#.into(),
            stderr: String::new(),
            json: serde_json::from_str(r#"{"cniVersion":"1.1.0","code":7,"msg":"bad bridge"}"#)
                .ok(),
        };
        assert!(!o.success());
        assert_eq!(o.error_code(), Some(7));
        assert_eq!(o.error_msg(), Some("bad bridge"));
        o.expect_error(7);
    }

    #[test]
    fn ip_json_empty_output_is_empty_array() {
        assert_eq!(parse_ip_json(""), serde_json::json!([]));
        assert_eq!(parse_ip_json("[{\"ifname\":\"lo\"}]\n")[0]["ifname"], "lo");
    }
}

// ---------------------------------------------------------------------------
// bridge plugin helpers (tests/bridge.rs, bridge_bad_input.rs, interop.rs)

/// The host end of berth-bridge's veth for (container ID, ifname): "bv" + the
/// first 8 hex digits of sha256(containerID + "\0" + ifname). Recomputed here
/// so the tests stay black-box.
pub fn bridge_host_veth(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    format!("bv{}", &hex::encode(h.finalize())[..8])
}

/// The host veths berth-bridge holds records for in a network's run dir
/// (`<run dir>/<network>`), sorted: its attachments log replayed (a line
/// per change, `{"op":"add"|"del","hostVeth":…}`; a last line without a
/// newline is a write cut short), over the one-file-per-record directory of
/// older versions.
pub fn bridge_records(net_dir: &Path) -> Vec<String> {
    let mut live: std::collections::BTreeSet<String> =
        std::fs::read_dir(net_dir.join("attachments"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
    let log = std::fs::read_to_string(net_dir.join("attachments.log")).unwrap_or_default();
    let complete = log.rfind('\n').map_or("", |end| &log[..end]);
    for line in complete.lines().filter(|l| !l.is_empty()) {
        let Ok(change) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let veth = change["hostVeth"].as_str().unwrap_or_default().to_string();
        match change["op"].as_str() {
            Some("add") => {
                live.insert(veth);
            }
            Some("del") => {
                live.remove(&veth);
            }
            _ => {}
        }
    }
    live.into_iter().collect()
}

/// `ip netns exec <ns> busybox ping -c1 -W2 <addr>`, up to 3 tries (the
/// first packet may race neighbour discovery). Err carries the last output.
pub fn ping_from(ns: &TestNetns, addr: &str) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let out = ns.exec(&["busybox", "ping", "-c1", "-W2", addr]);
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

/// Panics unless `addr` answers a ping from `ns`.
pub fn assert_ping(ns: &TestNetns, addr: &str) {
    if let Err(e) = ping_from(ns, addr) {
        panic!("ping {addr} from netns {} failed: {e}", ns.name());
    }
}

/// The nftables table berth-bridge's firewall uses (`inet berth`).
pub const BERTH_NFT_TABLE: &str = "berth";

/// `<short>` of berth's per-network nft object names
/// (`nat-<short>-<hash8>`, `fwd-...`, `masq4-...`, `masq6-...`): the network
/// name cut to 32 chars, characters outside `[A-Za-z0-9_-]` replaced by `_`.
pub fn nft_short_name(network: &str) -> String {
    network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect()
}

/// Whether an nft object name is `<kind>-<short>-<8 hex>` for `network`.
pub fn nft_name_is_of(name: &str, network: &str) -> bool {
    let short = nft_short_name(network);
    ["nat-", "fwd-", "masq4-", "masq6-"].iter().any(|kind| {
        name.strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix(short.as_str()))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// `nft -j list table inet berth` as the list of its objects (empty when
/// the table does not exist).
pub fn berth_nft_table() -> Vec<Value> {
    let out = run("nft", &["-j", "list", "table", "inet", BERTH_NFT_TABLE]);
    if !out.status.success() {
        // "No such file or directory": no table.
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nft -j printed invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    v["nftables"].as_array().cloned().unwrap_or_default()
}

/// Objects of table `inet berth` that belong to `network`, as
/// "chain <name>", "set <name>" and "rule <chain>" strings, sorted.
pub fn berth_nft_objects(network: &str) -> Vec<String> {
    let mut out = Vec::new();
    for obj in berth_nft_table() {
        for (kind, key) in [("chain", "name"), ("set", "name"), ("rule", "chain")] {
            if let Some(name) = obj
                .get(kind)
                .and_then(|o| o.get(key))
                .and_then(Value::as_str)
            {
                if nft_name_is_of(name, network) {
                    out.push(format!("{kind} {name}"));
                }
            }
        }
    }
    out.sort();
    out
}

/// Deletes `network`'s chains and sets from `inet berth` on drop (best
/// effort; never the table itself), for tests that use ipMasq.
#[derive(Debug)]
pub struct NftNetworkGuard {
    network: String,
}

impl NftNetworkGuard {
    pub fn new(network: impl Into<String>) -> Self {
        Self {
            network: network.into(),
        }
    }
}

impl Drop for NftNetworkGuard {
    fn drop(&mut self) {
        let objs = berth_nft_objects(&self.network);
        let t = BERTH_NFT_TABLE;
        // Chains first (their rules reference the sets).
        for o in &objs {
            if let Some(chain) = o.strip_prefix("chain ") {
                let _ = run("nft", &["flush", "chain", "inet", t, chain]);
                let _ = run("nft", &["delete", "chain", "inet", t, chain]);
            }
        }
        for o in &objs {
            if let Some(set) = o.strip_prefix("set ") {
                let _ = run("nft", &["delete", "set", "inet", t, set]);
            }
        }
    }
}

/// Deletes the nat rules of iptables and ip6tables whose comment names
/// `network` (the reference bridge's ipMasq and portmap rules), and the
/// chains they jump to, on drop: what the reference plugins leave when a
/// test fails, or when their DEL runs without a netns (as containerd's
/// RemovePodSandbox runs it).
#[derive(Debug)]
pub struct IptablesGuard {
    network: String,
}

impl IptablesGuard {
    pub fn new(network: impl Into<String>) -> Self {
        Self {
            network: network.into(),
        }
    }

    /// nat rules naming the network, as `iptables-save` prints them.
    fn rules(&self, save: &str) -> Vec<String> {
        let needle = format!("name: \\\"{}\\\"", self.network);
        let o = run(save, &["-t", "nat"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("-A ") && l.contains(&needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        self.clean();
    }
}

impl IptablesGuard {
    /// Deletes the rules and chains now (drop does it again).
    pub fn clean(&self) {
        for (prog, save) in [
            ("iptables", "iptables-save"),
            ("ip6tables", "ip6tables-save"),
        ] {
            let rules = self.rules(save);
            let mut chains = Vec::new();
            for r in &rules {
                // iptables-save quotes like a shell: let sh split it.
                let _ = run("sh", &["-c", &format!("{prog} -t nat -D {}", &r[3..])]);
                if let Some(target) = r.split(" -j ").nth(1).map(str::trim) {
                    let shared = target.starts_with("CNI-HOSTPORT-") || !target.starts_with("CNI-");
                    if !shared && !chains.iter().any(|c| c == target) {
                        chains.push(target.to_string());
                    }
                }
            }
            for chain in chains {
                let _ = run(prog, &["-t", "nat", "-F", &chain]);
                let _ = run(prog, &["-t", "nat", "-X", &chain]);
            }
        }
    }
}

/// Every entry under `root`, recursively: relative path -> file content
/// (`None` for directories, `Some(target)` bytes for symlinks). A missing
/// `root` is an empty map.
pub fn dir_tree(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<String, Option<Vec<u8>>>,
    ) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap_or_default();
                out.insert(rel, Some(t.to_string_lossy().into_owned().into_bytes()));
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A BERTH_RUN_DIR shared by the tests of this process that are alive at
/// the same time (removed when the last of them drops its handle), as all
/// berth-bridge networks of a host share /run/berth/bridge. berth-bridge
/// decides from its run dir whether a network was the last one with
/// firewall rules (then it drops the whole `inet berth` table), so networks
/// under different run dirs would delete each other's rules; tests keep
/// apart by using unique network names (`<run dir>/<network>`).
pub fn shared_run_dir() -> std::sync::Arc<TempDir> {
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Weak<TempDir>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = slot.upgrade() {
        return dir;
    }
    let dir = Arc::new(TempDir::new("run"));
    *slot = Arc::downgrade(&dir);
    dir
}

/// Runs a CNI plugin inside `host`, which is then the plugin's "host"
/// namespace (its bridges, veths and nftables rules land there, not on the
/// real host), as a runtime there would: a cleared environment plus PATH,
/// `CNI_COMMAND=command` and `env`, `stdin` as JSON.
/// Runs berth plugin `plugin` (from the built binaries) inside `host` for
/// container `cid` in `ns` with ifname eth0, the binaries' dir as
/// CNI_PATH and `run_dir` as BERTH_RUN_DIR.
pub fn run_cni_in(
    host: &TestNetns,
    plugin: &str,
    command: &str,
    cid: &str,
    ns: &TestNetns,
    run_dir: &Path,
    conf: &Value,
) -> PluginOutput {
    let path = bin_dir();
    let env = [
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", ns.path_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.to_str().unwrap_or_default()),
        ("BERTH_RUN_DIR", run_dir.to_str().unwrap_or_default()),
    ];
    run_plugin_in(host, &bin(plugin), command, &env, conf)
}

pub fn run_plugin_in(
    host: &TestNetns,
    bin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &Value,
) -> PluginOutput {
    let child = spawn_plugin_in(host, bin, command, env, stdin);
    plugin_output(child.wait_with_output().expect("wait for plugin"))
}

/// [`run_plugin_in`], but the plugin is SIGKILLed if it still runs
/// `kill_after` after it was started, as a runtime's timeout kills it
/// (only the plugin: its children are left to what they do then). Returns
/// whether it was killed, and what it printed.
pub fn run_plugin_in_killed(
    host: &TestNetns,
    bin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &Value,
    kill_after: Duration,
) -> (bool, PluginOutput) {
    let mut child = spawn_plugin_in(host, bin, command, env, stdin);
    // `ip netns exec` and `env` exec in place, so the child's PID is the
    // plugin's from the moment it runs.
    let deadline = Instant::now() + kill_after;
    let mut killed = false;
    while child.try_wait().expect("wait for plugin").is_none() {
        if Instant::now() >= deadline {
            killed = child.kill().is_ok();
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    (
        killed,
        plugin_output(child.wait_with_output().expect("wait for plugin")),
    )
}

fn plugin_output(out: Output) -> PluginOutput {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    PluginOutput {
        status: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `bin` in `host` as a runtime would ([`run_plugin_in`]), its
/// config already written to its stdin.
fn spawn_plugin_in(
    host: &TestNetns,
    bin: &Path,
    command: &str,
    env: &[(&str, &str)],
    stdin: &Value,
) -> std::process::Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.name(), "env", "-i"])
        .arg(format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        ))
        .arg(format!("CNI_COMMAND={command}"));
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {}: {e}", host.name()));
    let input = serde_json::to_vec(stdin).expect("serialize stdin");
    // Configs are far below a pipe's capacity: writing first cannot block.
    let _ = child.stdin.take().expect("stdin").write_all(&input);
    child
}

impl TestNetns {
    /// Runs `sh -c script` in the namespace; panics (with its output) on
    /// failure, returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in {}: {script}\n{}{}",
            self.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Names of the links enslaved to `bridge` in the caller's netns.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    ip_json(&["link", "show", "master", bridge])
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// sockets inside test namespaces

/// A network namespace the socket helpers below can work in: a
/// [`TestNetns`], or any namespace file ([`NetnsPath`], e.g. a Docker
/// container's `SandboxKey`).
pub trait Netns {
    /// The namespace's file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
    fn netns_path(&self) -> &Path;

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates belong to the namespace for their whole life.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.netns_path();
        let file =
            std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into test namespace");
                f()
            })
            .join()
            .expect("thread in test namespace panicked")
        })
    }
}

impl Netns for TestNetns {
    fn netns_path(&self) -> &Path {
        &self.path
    }
}

impl<N: Netns + ?Sized> Netns for &N {
    fn netns_path(&self) -> &Path {
        (**self).netns_path()
    }
}

/// A network namespace known by its file only, which is not the test's:
/// dropping it deletes nothing (e.g. a Docker container's namespace,
/// `docker inspect -f '{{.NetworkSettings.SandboxKey}}'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsPath(pub PathBuf);

impl Netns for NetnsPath {
    fn netns_path(&self) -> &Path {
        &self.0
    }
}

impl TestNetns {
    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates belong to the namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Netns::run(self, f)
    }
}

/// A TCP and a UDP service in a namespace, answering every connection or
/// datagram with `peer=<the client address it sees>` (IPv4 and IPv6,
/// v4-mapped addresses shown as IPv4). Stops when dropped.
pub struct PeerEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    pub fn start(ns: &impl Netns, tcp_port: u16, udp_port: u16) -> PeerEcho {
        use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        // Bound inside the namespace, served from ordinary threads.
        let (tcp, udp) = ns.run(|| {
            let tcp = TcpListener::bind(SocketAddr::new(any.ip(), tcp_port)).expect("bind tcp");
            let udp = UdpSocket::bind(SocketAddr::new(any.ip(), udp_port)).expect("bind udp");
            (tcp, udp)
        });
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = writeln!(conn, "peer={}", peer.ip().to_canonical());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(
                        format!("peer={}\n", peer.ip().to_canonical()).as_bytes(),
                        peer,
                    );
                }
            }
        });
        PeerEcho {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From inside `ns`: connects over TCP to `addr` and returns the first
/// line the service sent, or the error.
pub fn tcp_ask(ns: &impl Netns, addr: std::net::SocketAddr) -> Result<String, String> {
    ns.run(|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text.trim().to_string())
    })
}

/// From inside `ns`: sends one UDP datagram to `addr` and returns the
/// reply and the address it came from, or the error (a 2 s timeout).
pub fn udp_ask(
    ns: &impl Netns,
    addr: std::net::SocketAddr,
) -> Result<(String, std::net::SocketAddr), String> {
    udp_ask_from(ns, 0, addr)
}

/// [`udp_ask`] from a fixed local port (so the kernel sees one flow
/// across calls; 0: any port).
pub fn udp_ask_from(
    ns: &impl Netns,
    local_port: u16,
    addr: std::net::SocketAddr,
) -> Result<(String, std::net::SocketAddr), String> {
    ns.run(|| {
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], local_port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
        };
        let s = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"hello", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
    })
}

/// etcd (Debian's etcd-server) run by a test inside one of its namespaces,
/// serving clients on `addr`:2379 only (peers on that namespace's
/// loopback); killed by PID when dropped or stopped, its data in a temp
/// dir.
pub struct Etcd {
    child: Option<std::process::Child>,
    host: String,
    addr: String,
    data: TempDir,
}

impl Etcd {
    pub fn start(host: &TestNetns, addr: &str) -> Etcd {
        let mut e = Etcd {
            child: None,
            host: host.name().to_string(),
            addr: addr.to_string(),
            data: TempDir::new("etcd"),
        };
        e.spawn();
        e
    }

    /// Starts it (again, after `stop`: same data).
    pub fn spawn(&mut self) {
        let url = format!("http://{}:2379", self.addr);
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host,
                "etcd",
                "--name",
                "t",
                "--data-dir",
            ])
            .arg(self.data.path())
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "t=http://127.0.0.1:2380",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `n`th address of a "10.a.b.0/24" or "fd42:...::/64" subnet (as
/// [`unique_subnets`] gives them).
pub fn subnet_host(subnet: &str, n: u8) -> std::net::IpAddr {
    use std::net::IpAddr;
    let base = subnet.split('/').next().unwrap();
    match base.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::from([o[0], o[1], o[2], n])
        }
        IpAddr::V6(a) => {
            let mut s = a.segments();
            s[7] = u16::from(n);
            IpAddr::from(s)
        }
    }
}

/// Every address of a plugin's result, without its prefix length, in
/// the result's order.
pub fn result_addresses(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| {
            a.split('/')
                .next()
                .unwrap()
                .parse::<std::net::IpAddr>()
                .unwrap()
        })
        .collect()
}

/// The container's address of one family from a bridge plugin's result.
pub fn result_address(result: &Value, v4: bool) -> std::net::IpAddr {
    result_addresses(result)
        .into_iter()
        .find(|a| a.is_ipv4() == v4)
        .expect("address of the family")
}

/// What [`PeerEcho`] answers a client it sees as `ip`.
pub fn echo_peer(ip: std::net::IpAddr) -> Result<String, String> {
    Ok(format!("peer={ip}"))
}

/// The two ends' addresses of a link from a test's "host" namespace to an
/// "outside" one standing for another machine ([`link_outside`]).
pub struct OutsideLink {
    pub host_v4: std::net::IpAddr,
    pub host_v6: std::net::IpAddr,
    pub out_v4: std::net::IpAddr,
    pub out_v6: std::net::IpAddr,
}

/// Joins `host` (link `up0`) and `outside` (link `eth0`) by a veth with a
/// unique dual-stack subnet, .1 on the host's end and .2 outside, both up
/// with `lo`.
pub fn link_outside(host: &TestNetns, outside: &TestNetns) -> OutsideLink {
    let (v4, v6) = unique_subnets();
    let l = OutsideLink {
        host_v4: subnet_host(&v4, 1),
        host_v6: subnet_host(&v6, 1),
        out_v4: subnet_host(&v4, 2),
        out_v6: subnet_host(&v6, 2),
    };
    host.sh(&format!(
        "ip link set lo up && ip link add up0 type veth peer name eth0 netns {o} && \
         ip addr add {h4}/24 dev up0 && ip addr add {h6}/64 dev up0 nodad && ip link set up0 up",
        o = outside.name(),
        h4 = l.host_v4,
        h6 = l.host_v6
    ));
    outside.sh(&format!(
        "ip link set lo up && ip addr add {o4}/24 dev eth0 && ip addr add {o6}/64 dev eth0 nodad && \
         ip link set eth0 up",
        o4 = l.out_v4,
        o6 = l.out_v6
    ));
    l
}

/// The maps of `inet berth` (in `ns`; None: the caller's namespace) with
/// an element whose key is `key` as nft prints it (`tcp . 8080`,
/// `127.0.0.1 . tcp . 8080`), in listing order.
pub fn berth_maps_holding(ns: Option<&TestNetns>, key: &str) -> Vec<String> {
    let args = ["nft", "list", "table", "inet", "berth"];
    let listing = match ns {
        Some(ns) => ns.exec_ok(&args),
        None => run_ok(args[0], &args[1..]),
    };
    let mut maps: Vec<String> = Vec::new();
    let mut map = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("map ").and_then(|r| r.strip_suffix(" {")) {
            map = Some(name.to_string());
        } else if line.starts_with("chain ") || line.starts_with("set ") {
            map = None;
        } else if let Some(m) = &map {
            // Elements are comma-separated, wrapped over lines.
            let list = line
                .trim_start_matches("elements = {")
                .trim_end_matches('}');
            let holds = list
                .split(',')
                .any(|e| e.trim().starts_with(&format!("{key} :")));
            if holds && !maps.contains(m) {
                maps.push(m.clone());
            }
        }
    }
    maps
}

// ---------------------------------------------------------------------------
// firewall reloads (tests/tests/reconcile.rs, docker_engine.rs)

/// How often a test polls whether something is back.
pub const POLL: Duration = Duration::from_millis(20);

/// A user's ruleset file as /etc/nftables.conf usually is: a flush, then
/// a table of theirs.
pub const USER_RULESET: &str = "flush ruleset\n\
table inet user {\n\
\tchain input {\n\
\t\ttype filter hook input priority 0; policy accept;\n\
\t\ttcp dport 9999 counter\n\
\t}\n\
}\n";

pub fn at(ip: std::net::IpAddr, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(ip, port)
}

/// Calls `ok` every [`POLL`] until it is true: how long after `since` that
/// was (measured after the successful call), or None once `limit` after
/// `since` has passed.
pub fn poll_until(
    since: std::time::Instant,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> Option<Duration> {
    loop {
        if ok() {
            return Some(since.elapsed());
        }
        if since.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// From inside `ns`: connects over TCP to `addr` (giving up after
/// `connect`: a dropped SYN is not waited for) and returns the first line
/// the service sent, or the error.
pub fn tcp_probe(
    ns: &impl Netns,
    addr: std::net::SocketAddr,
    connect: Duration,
) -> Result<String, String> {
    ns.run(|| {
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, connect).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text.trim().to_string())
    })
}

/// POST /`method` with `body` (sent as is, so it may be malformed on
/// purpose) to berthd's plugin socket, as the Docker engine calls it
/// (hyper's HTTP/1.1 client): the status and the JSON answer
/// (`Value::Null` if the answer is not JSON). Panics if the socket does
/// not connect, the exchange fails or it takes longer than `timeout`.
pub fn plugin_post(socket: &Path, method: &str, body: &[u8], timeout: Duration) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    use hyper::header::{ACCEPT, CONTENT_LENGTH, HOST};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let request = hyper::Request::post(format!("/{method}"))
        .header(HOST, "plugin.moby.localhost")
        .header(ACCEPT, "application/vnd.docker.plugins.v1.2+json")
        // As Go's client sends it, even for an empty body.
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .expect("plugin request");
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        conn.abort();
        Ok::<_, String>((status, answer))
    };
    let (status, answer) = rt
        .block_on(async { tokio::time::timeout(timeout, exchange).await })
        .unwrap_or_else(|_| {
            panic!(
                "POST /{method} to {}: no answer within {timeout:?}",
                socket.display()
            )
        })
        .unwrap_or_else(|e| panic!("POST /{method} to {}: {e}", socket.display()));
    let answer = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    (status, answer)
}
