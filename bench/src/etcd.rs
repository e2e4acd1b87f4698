//! `etcd` part: what berth-etcd adds to a berth-overlay ADD. The issue:
//! "Measure what it adds to an ADD (connection and handshake) and keep ADD
//! on an overlay network under 10 ms at the median. Say where the time
//! goes."
//!
//! * Two namespaces of the bench's own: a "host", where berth-overlay runs
//!   (as a runtime there would run it), and an "etcd" one, joined by a veth
//!   underlay `ebu` (192.168.83.1/24 and .2/24). No traffic leaves them.
//! * A PKI made with the `openssl` CLI in a temp dir: an ECDSA P-256 CA,
//!   etcd's server certificate (IP SAN 192.168.83.2, extendedKeyUsage
//!   serverAuth,clientAuth) and a client certificate without a CommonName
//!   (subject `/O=berth-bench`: with auth on, etcd's JSON gateway refuses
//!   client certificates that have one).
//! * Two etcd members (Debian's etcd 3.4), a one-member cluster each, in the
//!   etcd namespace, client-cert-auth on their TLS listeners:
//!   - `plain`: `http://192.168.83.2:2379` and `https://192.168.83.2:2381`;
//!   - `auth`: `https://192.168.83.2:2479`, users root and `berth` (a role
//!     with readwrite on `/bench-etcd-auth/` only), then `auth enable`. A
//!     member of its own, since auth applies to every listener of a
//!     member: so the four stores can alternate.
//! * Four berth-overlay networks on the host, each with its own name, VNI,
//!   cluster CIDR, IPAM dataDir, run dir (`BERTH_RUN_DIR`) and etcd prefix,
//!   one per store: `static` (store.static, no etcd: process start and
//!   kernel work, the baseline), `http`, `https+cert` (caFile, certFile,
//!   keyFile) and `https+cert+auth` (the same and username + passwordFile;
//!   the token kept in `<run dir>/<network>.etcd-token`). One node,
//!   `bench-node`, and no agent: each network's first ADD (a warm-up, not
//!   counted, shown as "first ADD") claims the node's lease (leaseTTL
//!   3600 s, so that it outlives the run without an agent to renew it) and
//!   makes the datapath; every later ADD finds the lease with one range
//!   request (`resolve_held`), every DEL with one more.
//! * N containers per network (`--etcd-containers`), each in a fresh netns
//!   made up front (not timed). N rounds of ADDs, each round one ADD per
//!   network in an order rotating from round to round; then N rounds of
//!   DELs (with prevResult) likewise; then N rounds of STATUS on each
//!   network (the config, the store's read of the leases, IPAM's check:
//!   no kernel work) and one of `VERSION` (the process start alone). Each
//!   is one exec of the plugin, CNI env + config on stdin, timed around
//!   the exec: medians and p90s, and each store's medians over `static`'s.
//! * No cached token: the token file deleted before each of [`COLD_ADDS`]
//!   more ADDs on the auth network, each of which authenticates first
//!   (etcd checks the password with bcrypt, slowly on purpose).
//! * In process, from the host namespace: `berth_etcd::Client::new` and one
//!   `get_prefix` of a network's leases on that fresh client (what an ADD
//!   process pays: connection, TLS handshake, the request), then the same
//!   call again on that client at once (its connection reused: the request
//!   alone, etcd busy), and once more after a 5 ms pause (the request
//!   alone, etcd idle as it is between two ADDs), N times per store,
//!   alternating, each after a 5 ms pause as well.
//!
//! Target: ADD median < 10 ms with each etcd store (reported, not
//! enforced, like the other parts' targets).
//!
//! Cleanup, on failure as well: containers still attached are DELeted
//! through the plugin while etcd still runs, the etcd members are stopped
//! by PID, the namespaces deleted (with every link in them) and the temp
//! dirs removed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::exec::{exec_plugin_env, with_prev_result, Exec};
use crate::report::{ClientCalls, ColdAuth, Etcd, EtcdStore};
use crate::stats::{median, ms};
use crate::sys::{self, Netns, Proc, TempDir};

/// ADD median under this with each etcd store.
pub(crate) const TARGET_MS: f64 = 10.0;
/// ADDs on the auth network with no cached token.
pub(crate) const COLD_ADDS: usize = 5;
/// In process, the pause before a fresh client's first call and before
/// the last call on it: about the time between two ADDs' requests.
const PAUSE: Duration = Duration::from_millis(5);

const PLUGIN: &str = "berth-overlay";
const CNI_VERSION: &str = "1.1.0";
const NODE: &str = "bench-node";
/// The underlay link in both namespaces.
const UNDERLAY: &str = "ebu";
const HOST_ADDR: &str = "192.168.83.1";
const ETCD_ADDR: &str = "192.168.83.2";
/// The plain member's listeners and the auth member's.
const HTTP_PORT: u16 = 2379;
const HTTPS_PORT: u16 = 2381;
const AUTH_PORT: u16 = 2479;
/// The user berth-overlay authenticates as on the auth member.
const USER: &str = "berth";

/// The stores compared, in the order of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Static,
    Http,
    Tls,
    Auth,
}

impl Store {
    const ALL: [Store; 4] = [Store::Static, Store::Http, Store::Tls, Store::Auth];
    /// The ones that reach etcd (judged, and timed in process).
    const ETCD: [Store; 3] = [Store::Http, Store::Tls, Store::Auth];

    fn label(self) -> &'static str {
        match self {
            Store::Static => "static",
            Store::Http => "http",
            Store::Tls => "https+cert",
            Store::Auth => "https+cert+auth",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Store::Static => "store.static: no etcd (process start and kernel work)",
            Store::Http => "etcd over http://",
            Store::Tls => "etcd over https://, caFile + certFile + keyFile",
            Store::Auth => {
                "etcd over https:// with a client certificate, username + passwordFile, the token cached"
            }
        }
    }

    /// 1..=4: its VNI (80 + n) and cluster CIDR (10.18n.0.0/16).
    fn n(self) -> u8 {
        match self {
            Store::Static => 1,
            Store::Http => 2,
            Store::Tls => 3,
            Store::Auth => 4,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Store::Static => "static",
            Store::Http => "http",
            Store::Tls => "tls",
            Store::Auth => "auth",
        }
    }

    /// The network's name (also in the token file's name).
    fn network(self) -> String {
        format!("bench-etcd-{}", self.tag())
    }

    /// Its etcd prefix: the leases are under `<prefix>/<network>/subnets/`.
    fn prefix(self) -> String {
        format!("/bench-etcd-{}", self.tag())
    }

    /// The range berth-overlay reads on each ADD and DEL.
    fn leases(self) -> String {
        format!("{}/{}/subnets/", self.prefix(), self.network())
    }

    fn cidr(self) -> String {
        format!("10.18{}.0.0/16", self.n())
    }

    fn endpoint(self) -> Option<String> {
        match self {
            Store::Static => None,
            Store::Http => Some(format!("http://{ETCD_ADDR}:{HTTP_PORT}")),
            Store::Tls => Some(format!("https://{ETCD_ADDR}:{HTTPS_PORT}")),
            Store::Auth => Some(format!("https://{ETCD_ADDR}:{AUTH_PORT}")),
        }
    }
}

/// Round `r`'s order of `items`: it starts with item `r % len`.
pub(crate) fn rotated<T: Copy>(items: &[T], r: usize) -> Vec<T> {
    let k = r % items.len();
    items[k..].iter().chain(&items[..k]).copied().collect()
}

/// The p-th quantile by nearest rank (p in 0..=1), `None` without samples.
pub(crate) fn quantile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

fn p90(v: &[f64]) -> Option<f64> {
    quantile(v, 0.9)
}

/// `a - b` when both are there.
fn minus(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

// ---------------------------------------------------------------------------
// tools

/// `program args` in the bench's own namespace (iproute2 with `-n NS`
/// reaches the others); its stdout.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn ns_name(tag: &str) -> String {
    format!("bet-{}-{}-{tag}", std::process::id(), sys::next_id())
}

/// The last lines of a daemon's log, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `etcd --version`'s version, if it says one.
pub(crate) fn etcd_version() -> Option<String> {
    let out = Command::new("etcd")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
}

// ---------------------------------------------------------------------------
// PKI

/// The CA and the certificates it signed, PEM files in the part's temp dir.
pub(crate) struct Pki {
    pub(crate) ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

/// Minimal config for `openssl req` (independent of /etc/ssl/openssl.cnf).
const REQ_CNF: &str = "[ req ]\n\
     distinguished_name = dn\n\
     prompt = no\n\
     [ dn ]\n\
     [ v3_ca ]\n\
     basicConstraints = critical,CA:TRUE\n\
     keyUsage = critical,keyCertSign,cRLSign\n\
     subjectKeyIdentifier = hash\n\
     authorityKeyIdentifier = keyid:always\n";

const CLIENT_EXT: &str = "basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature\n\
     extendedKeyUsage = clientAuth\n\
     subjectKeyIdentifier = hash\n\
     authorityKeyIdentifier = keyid\n";

/// The server certificate's extensions: serverAuth and clientAuth, the
/// etcd address as its IP SAN.
fn server_ext(ip: &str) -> String {
    format!(
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth,clientAuth\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         subjectAltName = IP:{ip}\n"
    )
}

/// The subject of the client certificate: no CommonName.
const CLIENT_SUBJECT: &str = "/O=berth-bench";

impl Pki {
    /// The files in `dir`; etcd's server certificate for `server_ip`.
    pub(crate) fn new(dir: &Path, server_ip: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cnf = dir.join("req.cnf");
        std::fs::write(&cnf, REQ_CNF).context("write req.cnf")?;
        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        let ca_key = dir.join("ca-key.pem");
        new_key(&ca_key)?;
        run(
            "openssl",
            &[
                "req",
                "-config",
                path_str(&cnf)?,
                "-x509",
                "-new",
                "-key",
                path_str(&ca_key)?,
                "-subj",
                "/CN=berth-bench etcd CA",
                "-days",
                "30",
                "-sha256",
                "-set_serial",
                "0x01",
                "-extensions",
                "v3_ca",
                "-out",
                path_str(&pki.ca)?,
            ],
        )
        .context("openssl: the CA")?;
        let sign = |key: &Path, subject: &str, ext: &str, serial: &str, out: &Path| -> Result<()> {
            let csr = out.with_extension("csr");
            let extfile = out.with_extension("ext");
            std::fs::write(&extfile, ext)?;
            new_key(key)?;
            run(
                "openssl",
                &[
                    "req",
                    "-config",
                    path_str(&cnf)?,
                    "-new",
                    "-key",
                    path_str(key)?,
                    "-subj",
                    subject,
                    "-out",
                    path_str(&csr)?,
                ],
            )?;
            run(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    path_str(&csr)?,
                    "-CA",
                    path_str(&pki.ca)?,
                    "-CAkey",
                    path_str(&ca_key)?,
                    "-set_serial",
                    serial,
                    "-days",
                    "30",
                    "-sha256",
                    "-extfile",
                    path_str(&extfile)?,
                    "-out",
                    path_str(out)?,
                ],
            )?;
            Ok(())
        };
        sign(
            &pki.server_key,
            "/CN=berth-bench etcd",
            &server_ext(server_ip),
            "0x02",
            &pki.server_cert,
        )
        .context("openssl: etcd's server certificate")?;
        sign(
            &pki.client_key,
            CLIENT_SUBJECT,
            CLIENT_EXT,
            "0x03",
            &pki.client_cert,
        )
        .context("openssl: the client certificate")?;
        Ok(pki)
    }
}

#[cfg(test)]
impl Pki {
    /// Paths under /p, no files: for configs in unit tests.
    pub(crate) fn for_tests() -> Pki {
        Pki {
            ca: "/p/ca.pem".into(),
            server_cert: "/p/s.pem".into(),
            server_key: "/p/s-key.pem".into(),
            client_cert: "/p/c.pem".into(),
            client_key: "/p/c-key.pem".into(),
        }
    }
}

/// A new ECDSA P-256 key (PEM PKCS#8) at `path`, a file made 0600 first.
fn new_key(path: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(path)?,
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// etcd

/// An etcd member started by the bench, stopped by its PID on drop.
pub(crate) struct Member {
    pub(crate) proc: Proc,
    log: PathBuf,
    what: &'static str,
}

/// Starts a one-member cluster `name` in `ns`, listening for clients on
/// `client_urls` (the first advertised), for its peer on 127.0.0.1:`peer`
/// (the etcd namespace's loopback), with the server certificate and
/// client-cert-auth on its TLS listeners.
pub(crate) fn start_member(
    ns: &Netns,
    dir: &Path,
    pki: &Pki,
    name: &'static str,
    client_urls: &[String],
    peer: u16,
) -> Result<Member> {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join(format!("etcd-{name}.log"));
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", name, "--data-dir"])
        .arg(dir.join(format!("etcd-{name}")))
        .arg("--listen-client-urls")
        .arg(client_urls.join(","))
        .arg("--advertise-client-urls")
        .arg(&client_urls[0])
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("{name}={peer_url}"))
        .arg("--cert-file")
        .arg(&pki.server_cert)
        .arg("--key-file")
        .arg(&pki.server_key)
        .arg("--trusted-ca-file")
        .arg(&pki.ca)
        .arg("--client-cert-auth")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).with_context(|| format!("create {}", log.display()))?);
    let child = ns.run(move || {
        cmd.spawn()
            .context("start etcd (Debian package etcd-server)")
    })?;
    Ok(Member {
        proc: Proc(child),
        log,
        what: name,
    })
}

impl Member {
    /// Waits (up to 30 s) until a fresh client of `opts` reads `/` from
    /// the bench's host namespace `from`.
    fn wait_ready(&mut self, from: &Netns, opts: &berth_etcd::Options) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tried = from.run(|| {
                Ok(berth_etcd::Client::new(opts).and_then(|c| c.get_prefix("/").map(|_| ())))
            })?;
            let Err(e) = tried else {
                return Ok(());
            };
            if let Some(status) = self.proc.0.try_wait()? {
                bail!(
                    "etcd member {} exited: {status} (its log: {})",
                    self.what,
                    log_tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} not answering after 30 s: {e} (its log: {})",
                    self.what,
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `etcdctl ARGS` against `endpoint` with the client certificate, from
/// `ns`. A `--new-user-password=` argument never shows in an error.
fn etcdctl(ns: &Netns, pki: &Pki, endpoint: &str, args: &[&str]) -> Result<()> {
    let out = ns.run(|| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--cacert")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .args(["--dial-timeout=2s", "--command-timeout=10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run etcdctl (Debian package etcd-client)")
    })?;
    if !out.status.success() {
        let shown: Vec<&str> = args
            .iter()
            .map(|a| {
                if a.starts_with("--new-user-password=") {
                    "--new-user-password=***"
                } else {
                    a
                }
            })
            .collect();
        bail!(
            "etcdctl {}: {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// On the auth member: user root (role root), role `berth-role` with
/// readwrite on the auth network's prefix, user [`USER`] holding it, then
/// `auth enable`.
fn enable_auth(ns: &Netns, pki: &Pki, root_password: &str, password: &str) -> Result<()> {
    let ep = Store::Auth.endpoint().expect("an etcd store");
    let role = format!("{USER}-role");
    let prefix = format!("{}/", Store::Auth.prefix());
    let root_pw = format!("--new-user-password={root_password}");
    let user_pw = format!("--new-user-password={password}");
    for args in [
        &["user", "add", "root", "--interactive=false", &root_pw][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", &role],
        &[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            &prefix,
        ],
        &["user", "add", USER, "--interactive=false", &user_pw],
        &["user", "grant-role", USER, &role],
        &["auth", "enable"],
    ] {
        etcdctl(ns, pki, &ep, args)?;
    }
    Ok(())
}

/// A password nobody guesses within the run (the members are private and
/// gone at the end).
fn password(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{nanos:x}-{}", std::process::id(), sys::next_id())
}

// ---------------------------------------------------------------------------
// the networks

/// What the etcd stores are given: files and the password.
struct Secrets<'a> {
    pki: &'a Pki,
    password_file: &'a Path,
}

/// berth_etcd's options for `store` as berth-overlay makes them from
/// [`store_conf`] (a token file only with a user).
fn client_options(
    store: Store,
    s: &Secrets<'_>,
    token_file: Option<PathBuf>,
) -> Option<berth_etcd::Options> {
    let mut o = berth_etcd::Options::new(vec![store.endpoint()?]);
    if matches!(store, Store::Tls | Store::Auth) {
        o.ca_file = Some(s.pki.ca.clone());
        o.cert_file = Some(s.pki.client_cert.clone());
        o.key_file = Some(s.pki.client_key.clone());
    }
    if store == Store::Auth {
        o.username = Some(USER.into());
        o.password_file = Some(s.password_file.to_path_buf());
        o.token_file = token_file;
    }
    Some(o)
}

/// `store` of the network's config.
fn store_conf(store: Store, s: &Secrets<'_>) -> Value {
    let Some(endpoint) = store.endpoint() else {
        return json!({"static": {"subnet": format!("10.18{}.0.0/24", store.n())}});
    };
    let mut e = json!({
        "endpoints": [endpoint],
        "prefix": store.prefix(),
        // No agent renews it: it must outlive the run.
        "leaseTTL": 3600,
    });
    if matches!(store, Store::Tls | Store::Auth) {
        e["caFile"] = json!(s.pki.ca);
        e["certFile"] = json!(s.pki.client_cert);
        e["keyFile"] = json!(s.pki.client_key);
    }
    if store == Store::Auth {
        e["username"] = json!(USER);
        e["passwordFile"] = json!(s.password_file);
    }
    json!({ "etcd": e })
}

/// The network config of `store`'s network.
fn network_conf(store: Store, s: &Secrets<'_>, data_dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION, "name": store.network(), "type": PLUGIN,
        "network": store.cidr(), "subnetLen": 24, "vni": 80 + u32::from(store.n()),
        "iface": UNDERLAY, "node": NODE, "dataDir": data_dir,
        "store": store_conf(store, s),
    })
}

/// One network on the host: its config, run dir and IPAM dataDir.
struct Net {
    store: Store,
    conf: Value,
    run: TempDir,
    _data: TempDir,
}

impl Net {
    fn new(store: Store, s: &Secrets<'_>) -> Result<Net> {
        let run = TempDir::new(&format!("etcd-run-{}", store.tag()))?;
        let data = TempDir::new(&format!("etcd-data-{}", store.tag()))?;
        Ok(Net {
            store,
            conf: network_conf(store, s, data.path()),
            run,
            _data: data,
        })
    }

    /// Where berth-overlay keeps the auth token of this network.
    fn token_file(&self) -> PathBuf {
        self.run
            .path()
            .join(format!("{}.etcd-token", self.store.network()))
    }

    /// One plugin run in the host namespace, `BERTH_RUN_DIR` this
    /// network's; timed around the exec.
    fn exec(
        &self,
        b: &Bench<'_>,
        command: &str,
        cid: &str,
        container: &Netns,
        conf: &Value,
    ) -> Result<Exec> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        b.host.run(|| {
            exec_plugin_env(
                b.berth_dir,
                PLUGIN,
                command,
                cid,
                &container.path,
                conf,
                &env,
            )
        })
    }
}

/// Where the plugin runs.
struct Bench<'a> {
    berth_dir: &'a Path,
    host: &'a Netns,
}

/// A container ADDed and not yet DELeted.
struct Attached<'a> {
    net: &'a Net,
    cid: String,
    container: &'a Netns,
    result: Value,
}

/// The containers attached: DELeted through the plugin (untimed) on drop,
/// those [`Live::del`] has not done yet.
struct Live<'a> {
    bench: &'a Bench<'a>,
    attached: Vec<Attached<'a>>,
}

impl<'a> Live<'a> {
    /// One ADD; its time in ms.
    fn add(&mut self, net: &'a Net, cid: String, container: &'a Netns) -> Result<f64> {
        let x = net.exec(self.bench, "ADD", &cid, container, &net.conf)?;
        if !x.ok {
            // As a runtime does after a failed ADD.
            let _ = net.exec(self.bench, "DEL", &cid, container, &net.conf);
            bail!(
                "{PLUGIN} ADD {cid} ({}): {}",
                net.store.label(),
                x.describe()
            );
        }
        let result: Value = match serde_json::from_str(&x.stdout) {
            Ok(v) => v,
            Err(e) => {
                let _ = net.exec(self.bench, "DEL", &cid, container, &net.conf);
                bail!("{PLUGIN} ADD {cid}: result {:?}: {e}", x.stdout);
            }
        };
        self.attached.push(Attached {
            net,
            cid,
            container,
            result,
        });
        Ok(ms(x.elapsed))
    }

    /// The DEL of an attached container (with its prevResult); its time in
    /// ms.
    fn del(&mut self, cid: &str) -> Result<f64> {
        let i = self
            .attached
            .iter()
            .position(|a| a.cid == cid)
            .with_context(|| format!("{cid} is not attached"))?;
        let a = self.attached.remove(i);
        let conf = with_prev_result(&a.net.conf, &a.result);
        let x = a.net.exec(self.bench, "DEL", &a.cid, a.container, &conf)?;
        if !x.ok {
            bail!(
                "{PLUGIN} DEL {cid} ({}): {}",
                a.net.store.label(),
                x.describe()
            );
        }
        Ok(ms(x.elapsed))
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        while let Some(a) = self.attached.pop() {
            let conf = with_prev_result(&a.net.conf, &a.result);
            match a.net.exec(self.bench, "DEL", &a.cid, a.container, &conf) {
                Ok(x) if x.ok => {}
                Ok(x) => eprintln!("warning: {PLUGIN} DEL {}: {}", a.cid, x.describe()),
                Err(e) => eprintln!("warning: {PLUGIN} DEL {}: {e:#}", a.cid),
            }
        }
    }
}

/// The underlay: veth `ebu` between the host and the etcd namespace.
fn underlay(host: &Netns, etcd_ns: &Netns) -> Result<()> {
    for ns in [host, etcd_ns] {
        run("ip", &["-n", ns.name(), "link", "set", "lo", "up"])?;
    }
    run(
        "ip",
        &[
            "-n",
            host.name(),
            "link",
            "add",
            UNDERLAY,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY,
            "netns",
            etcd_ns.name(),
        ],
    )?;
    for (ns, addr) in [(host, HOST_ADDR), (etcd_ns, ETCD_ADDR)] {
        run(
            "ip",
            &[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                UNDERLAY,
            ],
        )?;
        run("ip", &["-n", ns.name(), "link", "set", UNDERLAY, "up"])?;
    }
    Ok(())
}

/// Per store: ADD, DEL and STATUS times in ms.
#[derive(Default)]
struct Samples {
    first_add: f64,
    add: Vec<f64>,
    del: Vec<f64>,
    status: Vec<f64>,
}

// ---------------------------------------------------------------------------
// the part

pub(crate) fn etcd(berth_dir: &Path, containers: usize) -> Result<Etcd> {
    let started = Instant::now();
    let plugin = berth_dir.join(PLUGIN);
    if !plugin.is_file() {
        bail!(
            "{} not found (build with `cargo build --release -p berth-overlay` or pass --cni-path-berth)",
            plugin.display()
        );
    }
    let dir = TempDir::new("etcd")?;
    eprintln!("etcd: PKI (openssl), namespaces, two etcd members");
    let pki = Pki::new(&dir.path().join("pki"), ETCD_ADDR).context("the PKI")?;
    let password_file = dir.path().join("pki/berth.password");
    let user_password = password("berth");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&password_file)
            .with_context(|| format!("create {}", password_file.display()))?;
        std::io::Write::write_all(&mut f, format!("{user_password}\n").as_bytes())?;
    }
    let secrets = Secrets {
        pki: &pki,
        password_file: &password_file,
    };

    let host = Netns::new(ns_name("host"))?;
    let etcd_ns = Netns::new(ns_name("etcd"))?;
    underlay(&host, &etcd_ns)?;
    let url = |store: Store| store.endpoint().expect("an etcd store");
    // Declared before the containers: stopped after their DELs.
    let mut plain = start_member(
        &etcd_ns,
        dir.path(),
        &pki,
        "plain",
        &[url(Store::Http), url(Store::Tls)],
        2380,
    )?;
    let mut authed = start_member(
        &etcd_ns,
        dir.path(),
        &pki,
        "auth",
        &[url(Store::Auth)],
        2480,
    )?;
    for store in [Store::Http, Store::Tls] {
        let opts = client_options(store, &secrets, None).expect("an etcd store");
        plain.wait_ready(&host, &opts)?;
    }
    // Before auth is on: the client certificate alone.
    let mut opts = client_options(Store::Tls, &secrets, None).expect("an etcd store");
    opts.endpoints = vec![url(Store::Auth)];
    authed.wait_ready(&host, &opts)?;
    enable_auth(&etcd_ns, &pki, &password("root"), &user_password)
        .context("etcd auth (etcdctl)")?;

    let nets: Vec<Net> = Store::ALL
        .iter()
        .map(|&s| Net::new(s, &secrets))
        .collect::<Result<_>>()?;
    let bench = Bench {
        berth_dir,
        host: &host,
    };
    // The containers, made up front: a warm-up one per network, N per
    // network, and the auth network's cold ones.
    eprintln!(
        "etcd: {} container namespaces",
        nets.len() * (containers + 1) + COLD_ADDS
    );
    let container_ns = |what: &str, i: usize| Netns::new(ns_name(&format!("{what}{i}")));
    let warm: Vec<Netns> = (0..nets.len())
        .map(|i| container_ns("w", i))
        .collect::<Result<_>>()?;
    // Round by round: rounds[r][k] is network k's container of round r.
    let rounds: Vec<Vec<Netns>> = (0..containers)
        .map(|r| {
            nets.iter()
                .map(|n| container_ns(n.store.tag(), r))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let cold: Vec<Netns> = (0..COLD_ADDS)
        .map(|i| container_ns("cold", i))
        .collect::<Result<_>>()?;
    let cid = |net: &Net, what: &str| format!("bench-etcd-{}-{what}", net.store.tag());

    // Declared last: dropped (the DELs) first.
    let mut live = Live {
        bench: &bench,
        attached: Vec::new(),
    };
    let mut samples: Vec<Samples> = Store::ALL.iter().map(|_| Samples::default()).collect();
    // The first ADD of each network: the lease claimed, the datapath made.
    for (k, net) in nets.iter().enumerate() {
        samples[k].first_add = live.add(net, cid(net, "warm"), &warm[k])?;
        if net.store == Store::Auth && !net.token_file().is_file() {
            bail!(
                "{PLUGIN} kept no auth token in {} after its first ADD",
                net.token_file().display()
            );
        }
    }
    eprintln!(
        "etcd: first ADDs (lease claim + datapath) {:.1?} ms",
        samples.iter().map(|s| s.first_add).collect::<Vec<_>>()
    );
    let order: Vec<usize> = (0..nets.len()).collect();
    for (r, round) in rounds.iter().enumerate() {
        for k in rotated(&order, r) {
            let net = &nets[k];
            let t = live.add(net, cid(net, &r.to_string()), &round[k])?;
            samples[k].add.push(t);
        }
        if (r + 1) % 10 == 0 {
            eprintln!("etcd: {} of {containers} rounds of ADDs", r + 1);
        }
    }
    for r in 0..containers {
        for k in rotated(&order, r) {
            let net = &nets[k];
            let t = live.del(&cid(net, &r.to_string()))?;
            samples[k].del.push(t);
        }
    }
    eprintln!("etcd: {containers} rounds of DELs");

    // No kernel work: the process start alone (berth-overlay's CNI
    // VERSION), and STATUS on each network (the config, the store's read
    // of the leases, IPAM's check of its dataDir).
    let version_conf = json!({ "cniVersion": CNI_VERSION });
    let mut version_ms = Vec::new();
    for r in 0..containers {
        let x = nets[0].exec(&bench, "VERSION", "", &warm[0], &version_conf)?;
        if !x.ok {
            bail!("{PLUGIN} VERSION: {}", x.describe());
        }
        version_ms.push(ms(x.elapsed));
        for k in rotated(&order, r) {
            let net = &nets[k];
            let x = net.exec(&bench, "STATUS", "", &warm[k], &net.conf)?;
            if !x.ok {
                bail!("{PLUGIN} STATUS ({}): {}", net.store.label(), x.describe());
            }
            samples[k].status.push(ms(x.elapsed));
        }
    }
    eprintln!("etcd: {containers} rounds of VERSION and STATUS");

    // No cached token: each of these authenticates first.
    let auth = nets
        .iter()
        .find(|n| n.store == Store::Auth)
        .expect("the auth network");
    let mut cold_ms = Vec::new();
    for (i, c) in cold.iter().enumerate() {
        let token = auth.token_file();
        std::fs::remove_file(&token).with_context(|| format!("remove {}", token.display()))?;
        cold_ms.push(live.add(auth, cid(auth, &format!("cold{i}")), c)?);
        if !token.is_file() {
            bail!(
                "{PLUGIN} kept no auth token in {} after an ADD without one",
                token.display()
            );
        }
    }
    eprintln!("etcd: ADDs without a cached token {cold_ms:.1?} ms");

    eprintln!("etcd: in process, berth_etcd::Client::new + get_prefix, {containers} per store");
    let client = client_calls(&host, &secrets, dir.path(), containers)?;

    drop(live);
    let stores: Vec<EtcdStore> = nets
        .iter()
        .zip(&samples)
        .map(|(net, s)| EtcdStore {
            store: net.store.label(),
            what: net.store.what(),
            first_add_ms: s.first_add,
            adds: s.add.len(),
            dels: s.del.len(),
            add_median_ms: median(&s.add),
            add_p90_ms: p90(&s.add),
            del_median_ms: median(&s.del),
            del_p90_ms: p90(&s.del),
            status_median_ms: median(&s.status),
            status_p90_ms: p90(&s.status),
            add_over_static_ms: None,
            del_over_static_ms: None,
            status_over_static_ms: None,
            add_pass: (net.store != Store::Static)
                .then(|| median(&s.add).is_some_and(|m| m < TARGET_MS)),
        })
        .collect();
    let mut report = summarize(
        containers,
        stores,
        cold_ms,
        client,
        median(&version_ms),
        p90(&version_ms),
        started.elapsed().as_secs_f64(),
    );
    report.etcd_version = etcd_version();
    Ok(report)
}

/// The report from the figures: each store over `static`, and the
/// differences that say where the time goes.
fn summarize(
    containers: usize,
    mut stores: Vec<EtcdStore>,
    cold_ms: Vec<f64>,
    client: Vec<ClientCalls>,
    process_start_ms: Option<f64>,
    process_start_p90_ms: Option<f64>,
    secs: f64,
) -> Etcd {
    let get = |stores: &[EtcdStore], s: Store| {
        stores
            .iter()
            .find(|r| r.store == s.label())
            .map(|r| (r.add_median_ms, r.del_median_ms, r.status_median_ms))
            .unwrap_or((None, None, None))
    };
    let (static_add, static_del, static_status) = get(&stores, Store::Static);
    for r in stores
        .iter_mut()
        .filter(|r| r.store != Store::Static.label())
    {
        r.add_over_static_ms = minus(r.add_median_ms, static_add);
        r.del_over_static_ms = minus(r.del_median_ms, static_del);
        r.status_over_static_ms = minus(r.status_median_ms, static_status);
    }
    let add = |s: Store| get(&stores, s).0;
    let cold_median = median(&cold_ms);
    Etcd {
        containers,
        etcd_version: None,
        target_ms: TARGET_MS,
        process_start_ms,
        process_start_p90_ms,
        etcd_adds_ms: minus(add(Store::Http), add(Store::Static)),
        tls_adds_ms: minus(add(Store::Tls), add(Store::Http)),
        auth_adds_ms: minus(add(Store::Auth), add(Store::Tls)),
        cold_auth: ColdAuth {
            adds_ms: cold_ms.clone(),
            median_ms: cold_median,
            over_cached_ms: minus(cold_median, add(Store::Auth)),
        },
        stores,
        client,
        secs,
    }
}

/// In the host namespace, per etcd store, `n` times alternating, each
/// after a [`PAUSE`] (etcd idle, as between two ADDs): a fresh client
/// (`Client::new`), one `get_prefix` of the network's leases on it
/// (connection, TLS handshake, request), the same call again at once (the
/// connection reused, etcd busy), and once more after another pause (the
/// connection reused, etcd idle again). The first call's time over the
/// last one's is the connection's setup alone; the last over the one
/// before, what a pause costs the request (etcd's and the host's wake-up).
/// The auth store reads its token from a token file of the bench's,
/// filled by a first call (not counted).
fn client_calls(host: &Netns, s: &Secrets<'_>, dir: &Path, n: usize) -> Result<Vec<ClientCalls>> {
    let token = dir.join("bench.etcd-token");
    let stores: Vec<(Store, berth_etcd::Options)> = Store::ETCD
        .iter()
        .map(|&st| {
            let opts = client_options(st, s, Some(token.clone())).expect("an etcd store");
            (st, opts)
        })
        .collect();
    host.run(|| {
        // Warm-up, not counted: the token, first-use costs.
        for (st, opts) in &stores {
            berth_etcd::Client::new(opts)
                .and_then(|c| c.get_prefix(&st.leases()))
                .with_context(|| format!("{}: a first call", st.label()))?;
        }
        // [new, first call, again at once, again after a pause] per store.
        let mut t: Vec<[Vec<f64>; 4]> = stores.iter().map(|_| Default::default()).collect();
        let order: Vec<usize> = (0..stores.len()).collect();
        for r in 0..n {
            for k in rotated(&order, r) {
                let (st, opts) = &stores[k];
                let leases = st.leases();
                // As between two ADDs: etcd (and this host) idle a while.
                std::thread::sleep(PAUSE);
                let t0 = Instant::now();
                let c = berth_etcd::Client::new(opts)
                    .with_context(|| format!("{}: Client::new", st.label()))?;
                let t1 = Instant::now();
                let first = c
                    .get_prefix(&leases)
                    .with_context(|| format!("{}: get_prefix", st.label()))?;
                let t2 = Instant::now();
                c.get_prefix(&leases)
                    .with_context(|| format!("{}: get_prefix again", st.label()))?;
                let t3 = Instant::now();
                std::thread::sleep(PAUSE);
                let t4 = Instant::now();
                c.get_prefix(&leases)
                    .with_context(|| format!("{}: get_prefix after a pause", st.label()))?;
                let t5 = Instant::now();
                if first.kvs.len() != 1 {
                    bail!(
                        "{}: {} leases under {leases}, not the node's one",
                        st.label(),
                        first.kvs.len()
                    );
                }
                t[k][0].push(ms(t1 - t0));
                t[k][1].push(ms(t2 - t1));
                t[k][2].push(ms(t3 - t2));
                t[k][3].push(ms(t5 - t4));
            }
        }
        Ok(stores
            .iter()
            .zip(&t)
            .map(|((st, _), [new, first, again, paused])| ClientCalls {
                store: st.label(),
                calls: first.len(),
                pause_ms: ms(PAUSE),
                new_median_ms: median(new),
                first_call_median_ms: median(first),
                first_call_p90_ms: p90(first),
                reused_call_median_ms: median(again),
                reused_call_p90_ms: p90(again),
                paused_call_median_ms: median(paused),
                paused_call_p90_ms: p90(paused),
                setup_ms: minus(median(first), median(paused)),
                wake_ms: minus(median(paused), median(again)),
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> Pki {
        Pki::for_tests()
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.9), None);
        assert_eq!(p90(&[5.0]), Some(5.0));
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(p90(&v), Some(9.0));
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(p90(&v), Some(45.0));
        assert_eq!(minus(Some(3.0), Some(1.0)), Some(2.0));
        assert_eq!(minus(None, Some(1.0)), None);
    }

    #[test]
    fn rounds_rotate() {
        assert_eq!(rotated(&[0, 1, 2, 3], 0), [0, 1, 2, 3]);
        assert_eq!(rotated(&[0, 1, 2, 3], 1), [1, 2, 3, 0]);
        assert_eq!(rotated(&[0, 1, 2, 3], 6), [2, 3, 0, 1]);
    }

    #[test]
    fn each_store_its_own_network() {
        let p = pki();
        let s = Secrets {
            pki: &p,
            password_file: Path::new("/p/pw"),
        };
        let confs: Vec<Value> = Store::ALL
            .iter()
            .map(|&st| network_conf(st, &s, Path::new("/d")))
            .collect();
        for key in ["name", "vni", "network"] {
            let seen: std::collections::BTreeSet<String> =
                confs.iter().map(|c| c[key].to_string()).collect();
            assert_eq!(seen.len(), 4, "{key}");
        }
        assert_eq!(
            confs[0]["store"],
            json!({"static": {"subnet": "10.181.0.0/24"}})
        );
        assert_eq!(
            confs[1]["store"],
            json!({"etcd": {"endpoints": ["http://192.168.83.2:2379"], "prefix": "/bench-etcd-http", "leaseTTL": 3600}})
        );
        let tls = &confs[2]["store"]["etcd"];
        assert_eq!(tls["endpoints"], json!(["https://192.168.83.2:2381"]));
        assert_eq!(tls["certFile"], "/p/c.pem");
        assert!(tls.get("username").is_none());
        let auth = &confs[3]["store"]["etcd"];
        assert_eq!(auth["endpoints"], json!(["https://192.168.83.2:2479"]));
        assert_eq!(
            (&auth["username"], &auth["passwordFile"], &auth["keyFile"]),
            (&json!("berth"), &json!("/p/pw"), &json!("/p/c-key.pem"))
        );
        assert_eq!(
            Store::Auth.leases(),
            "/bench-etcd-auth/bench-etcd-auth/subnets/"
        );
        // The in-process client is set up as berth-overlay sets up its own.
        let o = client_options(Store::Auth, &s, Some("/t".into())).unwrap();
        assert_eq!(o.endpoints, ["https://192.168.83.2:2479"]);
        assert_eq!(o.username.as_deref(), Some("berth"));
        assert_eq!(o.token_file, Some(PathBuf::from("/t")));
        assert!(client_options(Store::Http, &s, None)
            .unwrap()
            .ca_file
            .is_none());
        assert!(client_options(Store::Static, &s, None).is_none());
        // Never the documentation range, never the root namespace's.
        for a in [HOST_ADDR, ETCD_ADDR] {
            assert!(!a.starts_with("192.0.2."));
        }
    }

    #[test]
    fn differences_against_static() {
        let row = |st: Store, add: f64, del: f64| EtcdStore {
            store: st.label(),
            what: st.what(),
            first_add_ms: 20.0,
            adds: 3,
            dels: 3,
            add_median_ms: Some(add),
            add_p90_ms: Some(add),
            del_median_ms: Some(del),
            del_p90_ms: Some(del),
            status_median_ms: Some(del / 2.0),
            status_p90_ms: Some(del / 2.0),
            add_over_static_ms: None,
            del_over_static_ms: None,
            status_over_static_ms: None,
            add_pass: (st != Store::Static).then_some(add < TARGET_MS),
        };
        let e = summarize(
            3,
            vec![
                row(Store::Static, 4.0, 3.0),
                row(Store::Http, 5.0, 4.0),
                row(Store::Tls, 7.5, 6.0),
                row(Store::Auth, 8.0, 6.5),
            ],
            vec![60.0, 70.0, 80.0],
            Vec::new(),
            Some(1.0),
            Some(1.5),
            12.0,
        );
        assert_eq!(e.stores[0].add_over_static_ms, None);
        assert_eq!(e.stores[2].add_over_static_ms, Some(3.5));
        assert_eq!(e.stores[3].del_over_static_ms, Some(3.5));
        assert_eq!(e.stores[1].status_over_static_ms, Some(0.5));
        assert_eq!(
            (e.etcd_adds_ms, e.tls_adds_ms, e.auth_adds_ms),
            (Some(1.0), Some(2.5), Some(0.5))
        );
        assert_eq!(e.cold_auth.median_ms, Some(70.0));
        assert_eq!(e.cold_auth.over_cached_ms, Some(62.0));
        assert!(e.pass());
    }
}
