//! `reconcile` part: `berth watch`, the reconciler, putting berth's rules
//! back after `nft flush ruleset`, with N containers (1000) and 2N
//! published ports (2000) installed: the time from the flush to the
//! published port answering again, over F flushes (20), and the
//! reconciler's CPU while idle and during a flush storm (10 flushes a
//! second for 10 s).
//!
//! Everything happens in namespaces of the bench's own, so the real
//! host's ruleset and links are never touched:
//! * a private "host" namespace, which the plugins and the watcher run in
//!   (with a private run dir, `BERTH_RUN_DIR`, and IPAM dataDir), as
//!   portmap.rs runs the plugins; every `nft flush ruleset` runs there;
//! * an "outside" namespace, another machine on a veth to the host
//!   (192.168.79.0/24: overlay.rs's links are .77 and .78), which the
//!   probe connects from, to the host's address on that link: the path a
//!   client of a published port takes (prerouting DNAT, forward, the
//!   bridge), not a shortcut through the host's own output chain;
//! * N container namespaces on one berth-bridge network (isGateway,
//!   ipMasq, 10.200.0.0/16, IPv4 only: the flushes remove both families'
//!   rules alike), each published by berth-portmap with a TCP and a UDP
//!   mapping. Container 0 runs the service the probe reaches (a thread of
//!   the bench listening on port 80 there, answering one byte).
//!
//! The probe is a TCP connect (50 ms timeout) and a one-byte read, every
//! 5 ms. Right after a flush it must fail (no DNAT: the host itself
//! refuses the connection), or the flush was not measured: that flush is
//! recorded as an error instead. A flush is timed from the moment
//! `nft flush ruleset` returns (the rules are gone then) to the first
//! probe that answers; the watcher's own figure for each repair ("... N ms
//! after the change was seen", from its log) is reported beside it.
//! Flushes are 1 s apart, so each one starts from a quiet reconciler.
//!
//! With `--cni-path-before`, berth's previous build gets the same setup of
//! its own (host and outside namespaces, containers, service, its `berth
//! watch`); flushes alternate between the two hosts, both watchers' idle
//! CPU is read over the same interval, then each host has its storm.
//!
//! CPU is the watcher's utime + stime from /proc/PID/stat (all its
//! threads), with its waited-for children's (cutime + cstime: the `nft`
//! processes of a build that runs `nft`), over the interval, as a share
//! of one core.
//!
//! Nothing is DELeted at the end: deleting the host namespace takes its
//! bridge, veths and ruleset with it, and the run and IPAM dirs are the
//! bench's temp dirs (1000 DELs would double the part's time for
//! nothing it measures).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::exec::exec_plugin_env;
use crate::report::Reconcile;
use crate::stats::{median, ms};
use crate::sys::{self, Netns, Proc, TempDir};

/// Most containers: their host ports ([`host_port`]) must stay below
/// 65536 (and their addresses fit the /16 many times over).
pub(crate) const MAX_CONTAINERS: usize = 25_000;
const NETWORK: &str = "bench-rc";
const BRIDGE: &str = "brc0";
const SUBNET: &str = "10.200.0.0/16";
/// The host's end of the link to the outside namespace, and the outside's.
const UPLINK: &str = "brcup0";
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 1);
const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 2);
/// The service's port in container 0 (its TCP mapping's containerPort).
const SERVICE_PORT: u16 = 80;
const PROBE_CONNECT: Duration = Duration::from_millis(50);
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Past this the reconciler did not repair at all: the part fails.
const REPAIR_LIMIT: Duration = Duration::from_secs(10);
/// How long `berth watch` may take to its `watching` line (its first
/// pass lists and compares all 2000 mappings).
const STARTUP: Duration = Duration::from_secs(30);
/// The watcher's periodic re-check (its default): during the
/// measurements every pass is one a ruleset change caused, or the
/// periodic one a real host would run too.
const INTERVAL_SECS: &str = "30";
/// Between flushes, and after the last repair before the CPU figures.
const GAP: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(10);
const STORM: Duration = Duration::from_secs(10);
const STORM_PER_SEC: u32 = 10;
/// After the storm, the port must answer again within this.
const AFTER_STORM_LIMIT: Duration = Duration::from_secs(1);

/// Container `i`'s host ports: TCP `10000 + 2i`, UDP the next one (as
/// portmap.rs numbers its installed mappings).
fn host_port(i: usize, udp: bool) -> u16 {
    u16::try_from(10_000 + 2 * i + usize::from(udp)).expect("at most MAX_CONTAINERS containers")
}

/// The plugins' configs, chained as a runtime chains them.
struct Confs {
    bridge: Value,
    cni_version: String,
}

impl Confs {
    fn new(cni_version: &str, data_dir: &Path) -> Confs {
        Confs {
            bridge: json!({
                "cniVersion": cni_version, "name": NETWORK, "type": "berth-bridge",
                "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                "ipam": {"type": "berth-ipam", "dataDir": data_dir.to_string_lossy(),
                         "ranges": [[{"subnet": SUBNET}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}
            }),
            cni_version: cni_version.to_string(),
        }
    }

    /// berth-portmap's config for container `i`, after the bridge's ADD
    /// returned `prev`.
    fn portmap(&self, i: usize, prev: Value) -> Value {
        json!({
            "cniVersion": self.cni_version, "name": NETWORK, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port(i, false), "containerPort": SERVICE_PORT, "protocol": "tcp"},
                {"hostPort": host_port(i, true), "containerPort": 53, "protocol": "udp"}
            ]},
            "prevResult": prev
        })
    }
}

/// Runs a plugin of `dir` inside the host namespace, with the private run
/// dir; returns its stdout.
fn exec(
    host: &Netns,
    run_dir: &Path,
    dir: &Path,
    plugin: &str,
    cid: &str,
    container_ns: &str,
    conf: &Value,
) -> Result<String> {
    let run_dir = run_dir.display().to_string();
    let env = [("BERTH_RUN_DIR", run_dir.as_str())];
    let out = host.run(|| exec_plugin_env(dir, plugin, "ADD", cid, container_ns, conf, &env))?;
    if !out.ok {
        bail!("{plugin} ADD {cid}: {}", out.describe());
    }
    Ok(out.stdout)
}

/// How many times `berth status` is timed.
const STATUS_RUNS: usize = 10;

/// One `berth ARGS --data-dir DATA` in the host namespace, timed; its
/// stdout.
fn time_berth(
    host: &Netns,
    run_dir: &Path,
    data_dir: &Path,
    berth_dir: &Path,
    args: &[&str],
) -> Result<(Duration, String)> {
    let mut cmd = Command::new(berth_dir.join("berth"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("BERTH_RUN_DIR", run_dir)
        .stdin(Stdio::null());
    // Run from a thread inside the host namespace, as the watcher is:
    // berth's own process start is timed, with nothing between.
    let start = Instant::now();
    let out = host.run(move || cmd.output().context("running berth"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "berth {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `berth status -o json`'s arguments.
const STATUS: [&str; 3] = ["status", "-o", "json"];
/// `berth metrics`' arguments.
const METRICS: [&str; 3] = ["metrics", "--volumes-root", "/nonexistent"];

/// Checks that `berth status -o json` and `berth metrics` in the host
/// namespace count exactly `containers` attachments and `mappings`
/// published ports (the records the setup made); they are timed later
/// (see [`reconcile`]).
fn check_status(
    host: &Netns,
    run_dir: &Path,
    data_dir: &Path,
    berth_dir: &Path,
    containers: usize,
    mappings: usize,
) -> Result<()> {
    let status = STATUS;
    let (_, text) = time_berth(host, run_dir, data_dir, berth_dir, &status)?;
    let v: Value = serde_json::from_str(&text).context("berth status -o json")?;
    let nets = v["networks"].as_array().cloned().unwrap_or_default();
    let attached: usize = nets
        .iter()
        .map(|n| n["attachments"].as_array().map_or(0, Vec::len))
        .sum();
    let published: u64 = nets
        .iter()
        .filter_map(|n| n["publishedPorts"].as_u64())
        .sum();
    if attached != containers || published != mappings as u64 {
        bail!(
            "berth status counts {attached} attachments and {published} published ports, \
             not {containers} and {mappings}"
        );
    }
    let metrics = METRICS;
    let (_, text) = time_berth(host, run_dir, data_dir, berth_dir, &metrics)?;
    let want = [
        format!("berth_attachments{{network=\"{NETWORK}\",state=\"live\"}} {containers}"),
        format!("berth_published_ports{{network=\"{NETWORK}\"}} {mappings}"),
    ];
    if let Some(w) = want.iter().find(|w| !text.lines().any(|l| l == w.as_str())) {
        bail!("berth metrics has no line {w:?}");
    }
    Ok(())
}

/// `nft flush ruleset` in the host namespace (never the real host's).
fn flush(host: &Netns) -> Result<()> {
    let out = host.run(|| {
        Command::new("nft")
            .args(["flush", "ruleset"])
            .stdin(Stdio::null())
            .output()
            .context("run nft")
    })?;
    if !out.status.success() {
        bail!(
            "nft flush ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The host and outside namespaces, joined by a veth.
fn link(host: &Netns, outside: &Netns) -> Result<()> {
    sys::join(
        host,
        UPLINK,
        &format!("{HOST_ADDR}/24"),
        outside,
        UPLINK,
        &format!("{OUTSIDE_ADDR}/24"),
    )
    .context("veth between the bench's host and outside namespaces")
}

/// The service in container 0: accepts on port 80 and answers one byte.
/// Stopped on drop (flag, then one connection to wake the accept).
struct Service {
    ns: berth_kernel::Netns,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(container: &Netns) -> Result<Service> {
        let mut h = sys::handle_in(container)?;
        // For the wake-up connection on drop.
        let lo = h.link_by_name("lo")?.context("no lo")?;
        h.set_up(lo.index)?;
        // The socket lives in the namespace it was made in; the thread
        // that accepts on it need not.
        let listener = container.run(|| {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, SERVICE_PORT)).context("listen on :80")
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = s.write_all(b"x");
                }
            }
        });
        Ok(Service {
            ns: berth_kernel::Netns::open(Path::new(&container.path))?,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, SERVICE_PORT));
        let woke = self
            .ns
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
        // A thread that could not be woken is left to the process's exit
        // rather than waited for forever.
        if matches!(woke, Ok(true)) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One probe: a TCP connection to the published port that answers.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_CONNECT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_CONNECT));
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(1))
}

/// Probes from `outside` every [`PROBE_EVERY`] until the port answers:
/// how long after `since` that was, or None past `limit` after it.
fn answered_after(
    outside: &Netns,
    addr: SocketAddr,
    since: Instant,
    limit: Duration,
) -> Result<Option<Duration>> {
    outside.run(|| {
        Ok(loop {
            if answers(addr) {
                break Some(since.elapsed());
            }
            if since.elapsed() >= limit {
                break None;
            }
            std::thread::sleep(PROBE_EVERY);
        })
    })
}

/// A long-running `berth` command (`berth watch`, `berth node`) in a host
/// namespace, its stderr in a file; stopped (SIGTERM by its PID) on drop.
pub(crate) struct Daemon {
    proc: Proc,
    log: PathBuf,
    what: String,
    _dir: TempDir,
}

impl Daemon {
    /// `berth watch` in the host namespace.
    fn watch(berth_dir: &Path, host: &Netns, run_dir: &Path) -> Result<Daemon> {
        Daemon::start(
            berth_dir,
            host,
            run_dir,
            &["watch", "--interval", INTERVAL_SECS],
        )
    }

    /// `berth ARGS` in `host` with `run_dir` as its BERTH_RUN_DIR (the
    /// plugins' there), logging at info level.
    pub(crate) fn start(
        berth_dir: &Path,
        host: &Netns,
        run_dir: &Path,
        args: &[&str],
    ) -> Result<Daemon> {
        let what = format!("berth {}", args.first().copied().unwrap_or_default());
        let dir = TempDir::new("daemon-log")?;
        let log = dir.path().join("berth.log");
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let mut cmd = Command::new(berth_dir.join("berth"));
        cmd.args(args)
            .env("BERTH_RUN_DIR", run_dir)
            .env("BERTH_LOG", "info")
            // Plain lines in the file, whatever tracing's default.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        // Spawned from a thread inside the host namespace: the process is
        // born there (its PID is berth's own, no `ip netns exec` between).
        let child = host.run(|| cmd.spawn().with_context(|| format!("start {what}")))?;
        Ok(Daemon {
            proc: Proc(child),
            log,
            what,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Fails if it has exited, saying how and how its log ends.
    pub(crate) fn still_running(&mut self) -> Result<()> {
        match self.proc.0.try_wait()? {
            Some(status) => bail!("{} exited ({status}); {}", self.what, self.tail()),
            None => Ok(()),
        }
    }

    /// The log's length now, to read what comes after it.
    fn mark(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// The log from `mark` on.
    fn since(&self, mark: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(mark..).unwrap_or_default()).into_owned()
    }

    /// The last lines of the log, for an error message.
    pub(crate) fn tail(&self) -> String {
        let log = self.since(0);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
        format!("{}'s log ends: {tail:?}", self.what)
    }

    /// Waits for the `watching` line (the end of the first pass).
    fn wait_watching(&mut self) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.since(0).contains("watching") {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.proc.0.try_wait()? {
                bail!(
                    "berth watch exited ({status}) before watching; {}",
                    self.tail()
                );
            }
            if start.elapsed() > STARTUP {
                bail!(
                    "berth watch did not log `watching` within {STARTUP:?}; {}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its CPU time so far, in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> Result<u64> {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat (has {} exited?)", self.what))?;
        stat_cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat: {stat:?}"))
    }

    /// A `kB` line of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
    pub(crate) fn status_kib(&self, key: &str) -> Result<u64> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status (has {} exited?)", self.what))?;
        status_kib(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
    }
}

/// The value of `key` (`VmRSS: 1234 kB`) in a /proc/PID/status text, in
/// KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `per_sec` flushes of `host`'s ruleset a second for `over`, evenly
/// spaced from the first; `each` runs after every flush. The flushes made
/// and when the first started.
pub(crate) fn flush_storm(
    host: &Netns,
    per_sec: u32,
    over: Duration,
    mut each: impl FnMut() -> Result<()>,
) -> Result<(u32, Instant)> {
    let flushes = (f64::from(per_sec) * over.as_secs_f64()).round() as u32;
    let start = Instant::now();
    for k in 0..flushes {
        let at = start + over / flushes * k;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        flush(host)?;
        each()?;
    }
    Ok((flushes, start))
}

/// utime + stime of a /proc/PID/stat line (all the process's threads),
/// plus cutime + cstime: its children that it has waited for (the `nft`
/// processes a build that runs `nft` starts; berth's own code starts
/// none). comm, field 2, is in parentheses and may hold spaces and
/// parentheses itself: the fields after the last `)` are 3 (state) on,
/// which puts utime, stime, cutime and cstime (14 to 17) at 11 to 14.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    (11..=14).try_fold(0u64, |sum, i| {
        Some(sum + fields.get(i)?.parse::<u64>().ok()?)
    })
}

/// Clock ticks over `over` as a percentage of one core.
pub(crate) fn percent_of_a_core(ticks: u64, over: Duration) -> f64 {
    // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is always known.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_sec / over.as_secs_f64() * 100.0
}

/// What the watcher logs after a repair: "repaired WHAT, N ms after the
/// change was seen".
const REPAIRED: &str = " ms after the change was seen";

/// The N of every repair line of `log`.
fn logged_repairs(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("repaired "))
        .filter_map(|l| l.split(REPAIRED).next()?.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Passes that put the published ports back ("repaired published ports:
/// ...", one per pass that found them missing).
fn port_repairs(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("repaired published ports"))
        .count()
}

fn check_binaries(berth_dir: &Path) -> Result<()> {
    for b in ["berth-bridge", "berth-ipam", "berth-portmap", "berth"] {
        if !berth_dir.join(b).is_file() {
            bail!(
                "{} not found (build with `cargo build --release -p berth-bridge -p berth-ipam \
                 -p berth-portmap -p berth-cli`, or pass --cni-path-berth)",
                berth_dir.join(b).display()
            );
        }
    }
    Ok(())
}

/// One implementation's host, containers, service and watcher. Fields
/// drop in order: the watcher first, then the service, the namespaces, the
/// dirs.
struct Side {
    watcher: Daemon,
    _service: Service,
    _nss: Vec<Netns>,
    outside: Netns,
    host: Netns,
    data: TempDir,
    run: TempDir,
    berth_dir: PathBuf,
    label: &'static str,
    probe: SocketAddr,
    setup_secs: f64,
    status_ms: Vec<f64>,
    metrics_ms: Vec<f64>,
    first_pass: Duration,
    answer_ms: Vec<f64>,
    logged_ms: Vec<f64>,
    errors: Vec<String>,
}

impl Side {
    /// Installs `containers` containers through `berth_dir`'s plugins in a
    /// host namespace of its own, checks `berth status` and `berth
    /// metrics` count them, starts the service and `berth watch`.
    fn new(
        label: &'static str,
        berth_dir: &Path,
        containers: usize,
        cni_version: &str,
    ) -> Result<Side> {
        check_binaries(berth_dir)?;
        let run = TempDir::new("rc-run")?;
        let data = TempDir::new("rc-ipam")?;
        let tag = format!("brc-{}-{}", std::process::id(), sys::next_id());
        let host = Netns::new(format!("{tag}-h"))?;
        let outside = Netns::new(format!("{tag}-o"))?;
        link(&host, &outside)?;
        let confs = Confs::new(cni_version, data.path());

        eprintln!(
            "reconcile ({label}): {containers} containers with 2 published ports each, in a private host namespace"
        );
        let setup = Instant::now();
        let mut nss = Vec::with_capacity(containers);
        for i in 0..containers {
            let ns = Netns::new(format!("{tag}-{i}"))?;
            let cid = format!("rc{i}");
            let result = exec(
                &host,
                run.path(),
                berth_dir,
                "berth-bridge",
                &cid,
                &ns.path,
                &confs.bridge,
            )?;
            let prev: Value = serde_json::from_str(&result)
                .with_context(|| format!("berth-bridge ADD {cid} printed {result:?}"))?;
            exec(
                &host,
                run.path(),
                berth_dir,
                "berth-portmap",
                &cid,
                &ns.path,
                &confs.portmap(i, prev),
            )?;
            nss.push(ns);
            if (i + 1) % 100 == 0 || i + 1 == containers {
                eprint!(
                    "\r  reconcile ({label}): {} of {containers} containers",
                    i + 1
                );
            }
        }
        eprintln!();
        let setup_secs = setup.elapsed().as_secs_f64();
        check_status(
            &host,
            run.path(),
            data.path(),
            berth_dir,
            containers,
            2 * containers,
        )?;
        let service = Service::start(&nss[0])?;
        let probe = SocketAddr::from((HOST_ADDR, host_port(0, false)));
        // The path works before anything is flushed, or nothing below
        // means anything.
        if answered_after(&outside, probe, Instant::now(), Duration::from_secs(5))?.is_none() {
            bail!("{label}: {probe} does not answer from outside even before any flush");
        }

        eprintln!("reconcile ({label}): starting berth watch");
        let mut watcher = Daemon::watch(berth_dir, &host, run.path())?;
        let first_pass = watcher.wait_watching()?;
        if answered_after(&outside, probe, Instant::now(), Duration::from_secs(5))?.is_none() {
            bail!(
                "{label}: {probe} does not answer once berth watch runs; {}",
                watcher.tail()
            );
        }
        Ok(Side {
            watcher,
            _service: service,
            _nss: nss,
            outside,
            host,
            data,
            run,
            berth_dir: berth_dir.to_path_buf(),
            label,
            probe,
            setup_secs,
            status_ms: Vec::new(),
            metrics_ms: Vec::new(),
            first_pass,
            answer_ms: Vec::new(),
            logged_ms: Vec::new(),
            errors: Vec::new(),
        })
    }

    /// One `berth ARGS` in this host, timed (ms).
    fn time_berth(&self, args: &[&str]) -> Result<f64> {
        let (t, _) = time_berth(
            &self.host,
            self.run.path(),
            self.data.path(),
            &self.berth_dir,
            args,
        )?;
        Ok(ms(t))
    }

    /// Flush `k`: timed to the port answering again, then the gap; the
    /// watcher's own figure from its log.
    fn flush(&mut self, k: usize) -> Result<()> {
        let mark = self.watcher.mark();
        flush(&self.host)?;
        let flushed = Instant::now();
        if self.outside.run(|| Ok(answers(self.probe)))? {
            self.errors.push(format!(
                "flush {k}: the port still answered right after `nft flush ruleset` returned (not measured)"
            ));
        } else {
            match answered_after(&self.outside, self.probe, flushed, REPAIR_LIMIT)? {
                Some(t) => self.answer_ms.push(ms(t)),
                None => bail!(
                    "{}: flush {k}: the port did not answer again within {REPAIR_LIMIT:?}; {}",
                    self.label,
                    self.watcher.tail()
                ),
            }
        }
        std::thread::sleep(GAP);
        // One figure per flush: a pass logs each thing it put back with
        // the same figure; should a second pass have been needed, the
        // flush took until the later one.
        if let Some(m) = logged_repairs(&self.watcher.since(mark))
            .into_iter()
            .reduce(f64::max)
        {
            self.logged_ms.push(m);
        }
        Ok(())
    }

    /// The flush storm, and the figures of this side.
    fn storm(
        &mut self,
        containers: usize,
        flushes: usize,
        idle: Duration,
        idle_ticks: u64,
    ) -> Result<Reconcile> {
        let label = self.label;
        eprintln!(
            "reconcile ({label}): a flush storm, {STORM_PER_SEC} flushes a second for {STORM:?}"
        );
        let mark = self.watcher.mark();
        let ticks = self.watcher.cpu_ticks()?;
        let (storm_flushes, start) = flush_storm(&self.host, STORM_PER_SEC, STORM, || Ok(()))?;
        let last = Instant::now();
        let storm = last - start;
        let back = answered_after(&self.outside, self.probe, last, REPAIR_LIMIT)?;
        // The storm's CPU runs until the port is back: the last flush's
        // repair is part of the storm's work.
        let storm_cpu_percent =
            percent_of_a_core(self.watcher.cpu_ticks()? - ticks, start.elapsed());
        std::thread::sleep(GAP);
        let storm_port_repairs = port_repairs(&self.watcher.since(mark));
        let mut errors = std::mem::take(&mut self.errors);
        if back.is_none() {
            errors.push(format!(
                "after the storm the port did not answer again within {REPAIR_LIMIT:?}; {}",
                self.watcher.tail()
            ));
        }
        let after_storm_answer_ms = back.map(ms);
        let (status_ms, metrics_ms) = (&self.status_ms, &self.metrics_ms);
        let answer_ms = std::mem::take(&mut self.answer_ms);
        let logged_ms = std::mem::take(&mut self.logged_ms);
        Ok(Reconcile {
            containers,
            mappings: 2 * containers,
            setup_secs: self.setup_secs,
            status_median_ms: median(status_ms),
            status_max_ms: status_ms.iter().copied().reduce(f64::max),
            status_ms: status_ms.clone(),
            metrics_median_ms: median(metrics_ms),
            metrics_max_ms: metrics_ms.iter().copied().reduce(f64::max),
            metrics_ms: metrics_ms.clone(),
            first_pass_ms: ms(self.first_pass),
            flushes,
            answer_median_ms: median(&answer_ms),
            answer_max_ms: answer_ms.iter().copied().reduce(f64::max),
            answer_ms,
            logged_median_ms: median(&logged_ms),
            logged_max_ms: logged_ms.iter().copied().reduce(f64::max),
            logged_ms,
            idle_secs: idle.as_secs_f64(),
            idle_cpu_percent: percent_of_a_core(idle_ticks, idle),
            storm_flushes: storm_flushes as usize,
            storm_secs: storm.as_secs_f64(),
            storm_cpu_percent,
            storm_port_repairs,
            after_storm_answer_ms,
            after_storm_limit_ms: ms(AFTER_STORM_LIMIT),
            after_storm_pass: back.is_some_and(|t| t <= AFTER_STORM_LIMIT),
            errors,
            before: None,
        })
    }
}

/// The part: berth's side, and with `before_dir` berth's previous
/// build's beside it (its own host namespace, containers and watcher),
/// flushes alternating between the two, both watchers' idle CPU over the
/// same interval, then each one's storm.
pub(crate) fn reconcile(
    berth_dir: &Path,
    before_dir: Option<&Path>,
    containers: usize,
    flushes: usize,
    cni_version: &str,
) -> Result<Reconcile> {
    let mut sides = vec![Side::new("berth", berth_dir, containers, cni_version)?];
    if let Some(dir) = before_dir {
        sides.push(Side::new("before", dir, containers, cni_version)?);
    }

    // Timed here, once every host is set up, alternating between the
    // builds run by run: each sees the machine as the other does.
    eprintln!(
        "reconcile: berth status and berth metrics over {containers} attachments, {STATUS_RUNS} times each per implementation"
    );
    for args in [&STATUS, &METRICS] {
        for _ in 0..STATUS_RUNS {
            for side in sides.iter_mut() {
                let t = side.time_berth(args)?;
                if args == &STATUS {
                    side.status_ms.push(t);
                } else {
                    side.metrics_ms.push(t);
                }
            }
        }
    }

    eprintln!(
        "reconcile: {flushes} flushes per implementation, {GAP:?} apart{}",
        if sides.len() > 1 { ", alternating" } else { "" }
    );
    for k in 1..=flushes {
        for side in sides.iter_mut() {
            side.flush(k)?;
        }
        eprint!("\r  reconcile: {k} of {flushes} flushes");
    }
    eprintln!();

    eprintln!("reconcile: the watcher's CPU, idle for {IDLE:?}");
    let ticks = sides
        .iter()
        .map(|s| s.watcher.cpu_ticks())
        .collect::<Result<Vec<u64>>>()?;
    let start = Instant::now();
    std::thread::sleep(IDLE);
    let idle = start.elapsed();
    let idle_ticks = sides
        .iter()
        .zip(&ticks)
        .map(|(s, t)| Ok(s.watcher.cpu_ticks()? - t))
        .collect::<Result<Vec<u64>>>()?;

    let mut out = Vec::new();
    for (side, ticks) in sides.iter_mut().zip(idle_ticks) {
        out.push(side.storm(containers, flushes, idle, ticks)?);
    }
    let mut out = out.into_iter();
    let mut berth = out.next().context("no figures of berth")?;
    berth.before = out.next().map(Box::new);
    Ok(berth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_of_a_stat_line() {
        // comm with a space and a parenthesis of its own.
        let stat =
            "4242 (berth (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 5 0 0 20 0 2 0 123 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(42));
        // Waited-for children (cutime 7, cstime 3) count too.
        let stat = "4242 (berth) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 5 7 3 20 0 2 0 123 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(52));
        assert_eq!(
            stat_cpu_ticks("4242 (berth) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 5 7"),
            None
        );
        assert_eq!(stat_cpu_ticks("4242 (berth) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn kib_of_a_status_file() {
        let status = "Name:\tberth\nVmHWM:\t   14336 kB\nVmRSS:\t   12288 kB\nThreads:\t5\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12288));
        assert_eq!(status_kib(status, "VmHWM"), Some(14336));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib("VmRSSx: 1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn repairs_from_the_log() {
        let log = "2026-12-03T06:00:00.000000Z  INFO watching berth's rules (on each ruleset change; every 30 s regardless)\n\
            2026-12-03T06:00:01.000000Z  INFO repaired network \"bench-rc\": table inet berth, 41.3 ms after the change was seen\n\
            2026-12-03T06:00:01.000000Z  INFO repaired published ports: 2000 mappings, 41.3 ms after the change was seen\n\
            2026-12-03T06:00:02.000000Z  WARN reconciling: something\n\
            2026-12-03T06:00:03.000000Z  INFO repaired published ports: 2 mappings, 7.0 ms after the change was seen\n";
        assert_eq!(logged_repairs(log), [41.3, 41.3, 7.0]);
        assert_eq!(port_repairs(log), 2);
        assert!(logged_repairs("").is_empty());
    }

    #[test]
    fn ports_fit() {
        assert_eq!(host_port(0, false), 10_000);
        assert_eq!(host_port(0, true), 10_001);
        assert_eq!(host_port(MAX_CONTAINERS - 1, true), 59_999);
    }

    #[test]
    fn cpu_share() {
        // SAFETY: as in percent_of_a_core.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let p = percent_of_a_core(hz, Duration::from_secs(4));
        assert!((p - 25.0).abs() < 1e-9, "{p}");
    }
}
