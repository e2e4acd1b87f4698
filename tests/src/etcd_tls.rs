//! A production-like etcd for integration tests: a small PKI made with the
//! `openssl` CLI ([`Pki`]) and an etcd cluster (Debian's etcd 3.4) with TLS
//! on client and peer URLs and client-certificate auth on both
//! ([`EtcdCluster`]), each member running inside a network namespace the
//! test made.
//!
//! Members are given as (namespace, address) pairs, so a test can run all of
//! them in one namespace (three addresses on one link) or each in its own
//! namespace of an underlay (the "switch" namespace with bridge `sw0` and
//! hosts on 192.168.77.<n>/24 of `tests/overlay.rs`). Traffic stays in those
//! namespaces: etcd listens on the given addresses only (no loopback, no
//! plain-HTTP listener).
//!
//! What etcd 3.4 does here, as measured (see `tests/etcd_tls.rs`):
//! - With `--peer-client-cert-auth` (and `--client-cert-auth`) etcd checks
//!   that the *remote address* of a connection is one of the IP SANs of the
//!   client certificate it presents, when that certificate has any SANs.
//!   Members sharing a namespace dial each other from that namespace's
//!   primary address, so every member's certificate carries the addresses
//!   of all members ([`EtcdCluster::start`] does that). Client certificates
//!   made by [`Pki::client`] have no SANs, so they work from anywhere.
//! - A client that fails the TLS handshake (no certificate, another CA,
//!   expired) gets no answer; etcdctl reports only `context deadline
//!   exceeded`. The member logs the reason (`rejected connection`), which
//!   [`EtcdCluster::log`] shows.
//! - The JSON gateway (`POST /v3/...`, HTTP/1.1 or HTTP/2) answers with a
//!   client certificate. Once auth is enabled, it refuses (HTTP 400,
//!   text/plain `CommonName of client sending a request against gateway will
//!   be ignored and not used as expected`) every `/v3/` request made with a
//!   certificate that has a CommonName, whatever token it carries: gateway
//!   clients of an auth-enabled cluster need a certificate *without* CN
//!   ([`Pki::client_without_cn`]) and a token from `/v3/auth/authenticate`,
//!   sent as the raw `Authorization: <token>` header (not `Bearer <token>`:
//!   401). Tokens are etcd's default "simple" ones: valid on every member,
//!   expiring after 300 s unused (etcd's `--auth-token-ttl` default; not
//!   measured here). Errors are JSON
//!   `{"error","message","code"}` with the gRPC code: no token 400/3 `user
//!   name is empty`, wrong password 400/3 `authentication failed, invalid
//!   user ID or password`, bad token 401/16 `invalid auth token`, outside
//!   the user's prefix 403/7 `permission denied`. (Over gRPC, a request with
//!   neither user nor CN gets `permission denied`.)
//! - A restarted member needs the same flags again: with an existing data
//!   dir etcd ignores `--initial-cluster*` ("server has been already
//!   initialized").

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::{next_id, run, run_ok, TempDir, TestNetns};

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;

/// How long [`EtcdCluster::start`] and [`EtcdCluster::start_member`] wait
/// for health.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The subject [`Pki::client`] gives a certificate without CN.
pub const NO_CN_SUBJECT: &str = "/O=berth-tests";

// ---------------------------------------------------------------------------
// PKI

/// A certificate and its private key, PEM files (the key PKCS#8, mode 0600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().expect("cert path is UTF-8")
    }

    pub fn key_str(&self) -> &str {
        self.key.to_str().expect("key path is UTF-8")
    }
}

/// A test CA (ECDSA P-256) and the certificates it signs, all PEM files in
/// a [`TempDir`] it owns (removed on drop). Made with the `openssl` CLI
/// (OpenSSL 3.0). Every certificate gets a fresh file name, so calls never
/// overwrite each other, except the `reissue`/`rekey` ones, which replace
/// the files they are given, each file atomically (temp file + rename in
/// the same directory).
///
/// Two `Pki`s are unrelated CAs; [`foreign_client`](Self::foreign_client)
/// gives a certificate of a second CA this one owns.
pub struct Pki {
    dir: TempDir,
    ca: CertFiles,
    cnf: PathBuf,
    foreign: OnceLock<Box<Pki>>,
}

/// Extensions of a certificate [`Pki`] signs.
const CLIENT_EXT: &str = "basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature\n\
     extendedKeyUsage = clientAuth\n\
     subjectKeyIdentifier = hash\n\
     authorityKeyIdentifier = keyid\n";

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

impl Pki {
    /// A new CA (`CN=berth test CA <tag> <unique>`), valid for 10 years.
    pub fn new(tag: &str) -> Pki {
        let dir = TempDir::new(&format!("pki-{tag}"));
        let cnf = dir.path().join("req.cnf");
        fs::write(&cnf, REQ_CNF).expect("write req.cnf");
        let ca = CertFiles {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca-key.pem"),
        };
        new_key(&ca.key);
        let subject = format!(
            "/CN=berth test CA {} {}-{}",
            tag.replace(['/', '\\', '=', '+', ','], "-"),
            std::process::id(),
            next_id()
        );
        let tmp = tmp_sibling(&ca.cert);
        openssl(&[
            "req",
            "-config",
            path_str(&cnf),
            "-x509",
            "-new",
            "-key",
            ca.key_str(),
            "-subj",
            &subject,
            "-days",
            "3650",
            "-sha256",
            "-set_serial",
            &format!("0x{}", serial()),
            "-extensions",
            "v3_ca",
            "-out",
            path_str(&tmp),
        ]);
        publish_cert(&tmp, &ca.cert);
        Pki {
            dir,
            ca,
            cnf,
            foreign: OnceLock::new(),
        }
    }

    /// The CA certificate (PEM): what clients and servers trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca.cert
    }

    /// The CA's certificate and key.
    pub fn ca(&self) -> &CertFiles {
        &self.ca
    }

    /// The directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate usable as server and as client (extendedKeyUsage
    /// serverAuth,clientAuth: etcd peers use theirs both ways), `CN=name`,
    /// with SANs `DNS:localhost`, `IP:127.0.0.1` and `ips`, valid for a
    /// year.
    pub fn server(&self, name: &str, ips: &[IpAddr]) -> CertFiles {
        let files = self.new_files(&format!("server-{name}"));
        new_key(&files.key);
        self.sign(
            &files.key,
            &subject_for(name),
            &server_ext(ips),
            &files.cert,
        );
        files
    }

    /// A client certificate (extendedKeyUsage clientAuth, no SANs),
    /// `CN=cn` (etcd's user name for it when auth is on); `cn` empty: no CN
    /// at all (subject [`NO_CN_SUBJECT`]), see [`client_without_cn`](Self::client_without_cn).
    pub fn client(&self, cn: &str) -> CertFiles {
        let files = self.new_files(&format!("client-{cn}"));
        new_key(&files.key);
        self.sign(&files.key, &subject_for(cn), CLIENT_EXT, &files.cert);
        files
    }

    /// A client certificate without CommonName: what a gateway (`/v3/...`
    /// JSON) client of an auth-enabled cluster must present (etcd refuses
    /// certificates with a CN there) and authenticate by token instead.
    pub fn client_without_cn(&self) -> CertFiles {
        self.client("")
    }

    /// A client certificate like [`client`](Self::client), correctly signed
    /// by this CA, but expired: valid from 2020-01-01 to 2020-01-02
    /// (`openssl ca` with explicit dates; OpenSSL 3.0's `x509 -req` cannot
    /// set them). Checked with `openssl x509 -checkend 0`.
    pub fn expired_client(&self, cn: &str) -> CertFiles {
        let files = self.new_files(&format!("expired-{cn}"));
        new_key(&files.key);
        self.sign_expired(&files.key, &subject_for(cn), &files.cert);
        files
    }

    /// A client certificate (`CN=cn`) of a second CA, unrelated to this
    /// one (made on first use, owned by this `Pki`).
    pub fn foreign_client(&self, cn: &str) -> CertFiles {
        self.foreign().client(cn)
    }

    /// The second CA's certificate ([`foreign_client`](Self::foreign_client)).
    pub fn foreign_ca_file(&self) -> &Path {
        self.foreign().ca_file()
    }

    /// The second CA itself.
    pub fn foreign(&self) -> &Pki {
        self.foreign.get_or_init(|| Box::new(Pki::new("foreign")))
    }

    /// Replaces the certificate at `files.cert` by a fresh one (new serial,
    /// new validity from now) for the same key and `CN=cn` ("" = no CN):
    /// one atomic rename, so a reader sees the old or the new certificate,
    /// always matching the key.
    pub fn reissue_client(&self, files: &CertFiles, cn: &str) {
        self.sign(&files.key, &subject_for(cn), CLIENT_EXT, &files.cert);
    }

    /// Replaces both files by a new key and a certificate for it (`CN=cn`):
    /// the key first, then the certificate, each atomically (between the
    /// two renames the files do not match; readers retry).
    pub fn rekey_client(&self, files: &CertFiles, cn: &str) {
        let key_tmp = tmp_sibling(&files.key);
        new_key_at(&key_tmp);
        // Sign with the new key before publishing either file, so the
        // mismatch window is just between the two renames.
        let cert_tmp = tmp_sibling(&files.cert);
        self.sign_to(&key_tmp, &subject_for(cn), CLIENT_EXT, &cert_tmp);
        fs::rename(&key_tmp, &files.key).expect("rename new key");
        publish_cert(&cert_tmp, &files.cert);
    }

    /// Replaces the certificate at `files.cert` (same key) by an expired
    /// one, like [`expired_client`](Self::expired_client), atomically.
    pub fn reissue_expired_client(&self, files: &CertFiles, cn: &str) {
        self.sign_expired(&files.key, &subject_for(cn), &files.cert);
    }

    /// Fresh, unique file names in this PKI's directory.
    fn new_files(&self, what: &str) -> CertFiles {
        let base = format!("{}-{}", file_tag(what), next_id());
        CertFiles {
            cert: self.dir.path().join(format!("{base}.pem")),
            key: self.dir.path().join(format!("{base}-key.pem")),
        }
    }

    /// Signs a certificate for `key` (valid a year from now) and publishes
    /// it at `out` atomically.
    fn sign(&self, key: &Path, subject: &str, ext: &str, out: &Path) {
        let tmp = tmp_sibling(out);
        self.sign_to(key, subject, ext, &tmp);
        publish_cert(&tmp, out);
    }

    fn sign_to(&self, key: &Path, subject: &str, ext: &str, out: &Path) {
        let csr = tmp_sibling(out);
        let extfile = tmp_sibling(out);
        fs::write(&extfile, ext).expect("write extfile");
        self.csr(key, subject, &csr);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            self.ca.cert_str(),
            "-CAkey",
            self.ca.key_str(),
            "-set_serial",
            &format!("0x{}", serial()),
            "-days",
            "365",
            "-sha256",
            "-extfile",
            path_str(&extfile),
            "-out",
            path_str(out),
        ]);
        let _ = fs::remove_file(&csr);
        let _ = fs::remove_file(&extfile);
    }

    fn csr(&self, key: &Path, subject: &str, out: &Path) {
        openssl(&[
            "req",
            "-config",
            path_str(&self.cnf),
            "-new",
            "-key",
            path_str(key),
            "-subj",
            subject,
            "-out",
            path_str(out),
        ]);
    }

    /// `openssl ca` with a throwaway database, dates in 2020, client
    /// extensions; publishes at `out` atomically.
    fn sign_expired(&self, key: &Path, subject: &str, out: &Path) {
        let db = self.dir.path().join(format!("ca-db-{}", next_id()));
        fs::create_dir(&db).expect("create ca db");
        fs::write(db.join("index.txt"), "").expect("write index.txt");
        fs::write(db.join("serial"), format!("{}\n", serial())).expect("write serial");
        let cnf = db.join("ca.cnf");
        fs::write(
            &cnf,
            format!(
                "[ ca ]\n\
                 default_ca = tca\n\
                 [ tca ]\n\
                 dir = {db}\n\
                 database = $dir/index.txt\n\
                 new_certs_dir = $dir\n\
                 serial = $dir/serial\n\
                 default_md = sha256\n\
                 policy = pol\n\
                 unique_subject = no\n\
                 copy_extensions = none\n\
                 x509_extensions = client_ext\n\
                 [ pol ]\n\
                 commonName = optional\n\
                 organizationName = optional\n\
                 [ client_ext ]\n\
                 {CLIENT_EXT}",
                db = db.display()
            ),
        )
        .expect("write ca.cnf");
        let csr = db.join("req.csr");
        self.csr(key, subject, &csr);
        let tmp = tmp_sibling(out);
        openssl(&[
            "ca",
            "-batch",
            "-config",
            path_str(&cnf),
            "-cert",
            self.ca.cert_str(),
            "-keyfile",
            self.ca.key_str(),
            "-in",
            path_str(&csr),
            "-out",
            path_str(&tmp),
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ]);
        assert!(
            cert_expired(&tmp),
            "openssl ca made a certificate that is not expired: {}",
            tmp.display()
        );
        publish_cert(&tmp, out);
        let _ = fs::remove_dir_all(&db);
    }
}

/// `-subj` for a CN ("" = no CN).
fn subject_for(cn: &str) -> String {
    assert!(
        !cn.contains(['/', '\\', '=', '+', ',', '\n']),
        "CN {cn:?}: keep it to plain characters (no / \\ = + ,)"
    );
    if cn.is_empty() {
        NO_CN_SUBJECT.to_string()
    } else {
        format!("/CN={cn}")
    }
}

fn server_ext(ips: &[IpAddr]) -> String {
    let mut sans = vec!["DNS:localhost".to_string(), "IP:127.0.0.1".to_string()];
    for ip in ips {
        let san = format!("IP:{ip}");
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    format!(
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth,clientAuth\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         subjectAltName = {}\n",
        sans.join(",")
    )
}

/// Whether the certificate's notAfter is in the past (`openssl x509
/// -checkend 0`).
pub fn cert_expired(cert: &Path) -> bool {
    let out = run(
        "openssl",
        &["x509", "-noout", "-checkend", "0", "-in", path_str(cert)],
    );
    match out.status.code() {
        Some(0) => false,
        Some(1) => true,
        _ => panic!(
            "openssl x509 -checkend on {}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The certificate's SHA-256 fingerprint as openssl prints it
/// (`AB:CD:...`).
pub fn cert_fingerprint(cert: &Path) -> String {
    let out = openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        path_str(cert),
    ]);
    out.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The certificate's subject as `openssl x509 -subject` prints it (`CN =
/// root`, `O = berth-tests`).
pub fn cert_subject(cert: &Path) -> String {
    let out = openssl(&["x509", "-noout", "-subject", "-in", path_str(cert)]);
    out.trim()
        .strip_prefix("subject=")
        .unwrap_or(out.trim())
        .trim()
        .to_string()
}

/// Whether `openssl verify -CAfile ca cert` accepts the certificate
/// (`-attime` not given: now).
pub fn cert_verifies(ca: &Path, cert: &Path) -> bool {
    run(
        "openssl",
        &["verify", "-CAfile", path_str(ca), path_str(cert)],
    )
    .status
    .success()
}

fn openssl(args: &[&str]) -> String {
    run_ok("openssl", args)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("path is UTF-8")
}

/// A new ECDSA P-256 key (PEM PKCS#8, mode 0600) published at `path`
/// atomically.
fn new_key(path: &Path) {
    let tmp = tmp_sibling(path);
    new_key_at(&tmp);
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Writes a new key to `path` (a file created here, mode 0600 from the
/// start).
fn new_key_at(path: &Path) {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(path),
    ]);
    // openssl reuses the file; make sure of the mode anyway.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// Renames a freshly written certificate (mode 0644) over `dest`.
fn publish_cert(tmp: &Path, dest: &Path) {
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o644)).expect("chmod cert");
    fs::rename(tmp, dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
}

/// A unique temp name next to `path` (same directory: rename is atomic).
fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), next_id()))
}

/// `[a-z0-9-]` of a name, for file names.
fn file_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect()
}

/// A positive 128-bit serial in hex, unique in this process and (very
/// likely) across processes.
fn serial() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!(
        "{:016x}{:08x}{:08x}",
        nanos & 0x7fff_ffff_ffff_ffff,
        std::process::id(),
        next_id() as u32
    )
}

// ---------------------------------------------------------------------------
// etcd cluster

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    netns: String,
    ip: IpAddr,
    certs: CertFiles,
    data_dir: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.ip, CLIENT_PORT))
    }

    fn peer_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.ip, PEER_PORT))
    }
}

/// An etcd cluster (Debian's etcd 3.4), one member per (namespace, address)
/// pair: member `i` is `m<i>`, serving clients on `https://<ip>:2379` only
/// and peers on `https://<ip>:2380`, with client-certificate auth on both
/// (`--client-cert-auth`, `--peer-client-cert-auth`), certificates from the
/// test's [`Pki`] (copied into the cluster's own [`TempDir`], with the data
/// dirs and one log file per member).
///
/// Each member runs as `ip netns exec <ns> etcd ...`, which execs in place:
/// the child's PID is etcd's. [`stop_member`](Self::stop_member) and drop
/// kill members by that PID (SIGKILL) and nothing else.
///
/// The namespaces must outlive the cluster (declare the cluster after
/// them); a [`TestNetns`] dropped first kills its etcd anyway.
///
/// The cluster has its own admin client certificate, `CN=root`
/// ([`root_cert`](Self::root_cert)): [`etcdctl`](Self::etcdctl) uses it;
/// after [`enable_auth`](Self::enable_auth) it authenticates as `root`.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    ca: PathBuf,
    root: CertFiles,
    started_in: Duration,
    root_user_added: AtomicBool,
    dir: TempDir,
}

/// What a request through the JSON gateway got ([`EtcdCluster::gateway`]).
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The HTTP status; None: no HTTP answer (connection or TLS failure,
    /// see `error`).
    pub status: Option<u16>,
    pub body: String,
    /// curl's exit code and message when it failed.
    pub error: String,
}

impl HttpReply {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

impl std::fmt::Display for HttpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.body.trim()),
            None => write!(f, "no HTTP answer: {}", self.error.trim()),
        }
    }
}

impl EtcdCluster {
    /// Starts one member per pair (`m0`, `m1`, ...; addresses distinct) and
    /// waits (up to [`START_TIMEOUT`]) until `etcdctl endpoint health
    /// --cluster` succeeds with the root certificate; panics with the
    /// members' log tails otherwise (also as soon as a member exits).
    ///
    /// Every member's certificate has all members' addresses as IP SANs
    /// (etcd checks a peer's source address against them; members in one
    /// namespace dial from its primary address).
    pub fn start(members: &[(&TestNetns, IpAddr)], pki: &Pki) -> EtcdCluster {
        assert!(!members.is_empty(), "EtcdCluster::start needs members");
        let ips: Vec<IpAddr> = members.iter().map(|(_, ip)| *ip).collect();
        for (i, ip) in ips.iter().enumerate() {
            assert!(
                !ips[..i].contains(ip),
                "EtcdCluster::start: address {ip} given twice"
            );
        }
        let dir = TempDir::new("etcd-tls");
        let certs_dir = dir.path().join("certs");
        fs::create_dir(&certs_dir).expect("create certs dir");
        let copy = |files: &CertFiles, name: &str| {
            let c = CertFiles {
                cert: certs_dir.join(format!("{name}.pem")),
                key: certs_dir.join(format!("{name}-key.pem")),
            };
            fs::copy(&files.cert, &c.cert).expect("copy cert");
            fs::copy(&files.key, &c.key).expect("copy key");
            fs::set_permissions(&c.key, fs::Permissions::from_mode(0o600)).expect("chmod key");
            c
        };
        let ca = certs_dir.join("ca.pem");
        fs::copy(pki.ca_file(), &ca).expect("copy CA");
        let root = copy(&pki.client("root"), "root");
        let members: Vec<Member> = members
            .iter()
            .enumerate()
            .map(|(i, (ns, ip))| {
                let name = format!("m{i}");
                Member {
                    certs: copy(&pki.server(&name, &ips), &name),
                    netns: ns.name().to_string(),
                    ip: *ip,
                    data_dir: dir.path().join(format!("{name}.etcd")),
                    log: dir.path().join(format!("{name}.log")),
                    child: Mutex::new(None),
                    name,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token: format!("berth-t-{}-{}", std::process::id(), next_id()),
            ca,
            root,
            started_in: Duration::ZERO,
            root_user_added: AtomicBool::new(false),
            dir,
        };
        let t0 = Instant::now();
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        if let Err(e) = cluster.wait_healthy(START_TIMEOUT) {
            panic!(
                "etcd cluster not healthy within {START_TIMEOUT:?}: {e}\n{}",
                cluster.logs_tail(40)
            );
        }
        cluster.started_in = t0.elapsed();
        cluster
    }

    /// How long [`start`](Self::start) took from spawning the members to a
    /// healthy cluster.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs, `https://<ip>:2379`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// Member `i`'s address.
    pub fn ip(&self, i: usize) -> IpAddr {
        self.members[i].ip
    }

    /// Member `i`'s name (`m<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The namespace member `i` runs in.
    pub fn netns_name(&self, i: usize) -> &str {
        &self.members[i].netns
    }

    /// The CA file the members trust (a copy of the [`Pki`]'s).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// The cluster's admin client certificate (`CN=root`).
    pub fn root_cert(&self) -> &CertFiles {
        &self.root
    }

    /// Member `i`'s own certificate (server and peer).
    pub fn member_cert(&self, i: usize) -> &CertFiles {
        &self.members[i].certs
    }

    /// The directory holding data dirs, logs and certificate copies.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member `i`'s log file (etcd's zap JSON lines on stderr, appended
    /// over restarts, each start marked by a `=== berth-tests:` line).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Member `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        fs::read(&self.members[i].log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.members[i].log, lines)
    }

    /// The last `lines` lines of every member's log, headed by its name
    /// and path: for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        for (i, m) in self.members.iter().enumerate() {
            s.push_str(&format!(
                "--- {} ({} in {}) log {}:\n{}\n",
                m.name,
                m.ip,
                m.netns,
                m.log.display(),
                self.log_tail(i, lines)
            ));
        }
        s
    }

    /// Member `i`'s PID (etcd's), if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let mut guard = self.members[i].child.lock().unwrap();
        let c = guard.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Whether member `i`'s process is alive.
    pub fn is_running(&self, i: usize) -> bool {
        self.pid(i).is_some()
    }

    /// Kills member `i` (SIGKILL to its PID) and reaps it. No-op if it is
    /// not running.
    pub fn stop_member(&self, i: usize) {
        let mut guard = self.members[i].child.lock().unwrap();
        if let Some(mut c) = guard.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again (same data dir, same flags: etcd 3.4 ignores
    /// `--initial-cluster*` for a data dir it has initialized) and waits
    /// (up to [`START_TIMEOUT`]) until its endpoint is healthy (it commits
    /// a proposal, so it has rejoined the quorum); panics with its log tail
    /// otherwise. Panics if it is running.
    pub fn start_member(&self, i: usize) {
        assert!(!self.is_running(i), "member {i} is running");
        self.spawn(i);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.is_running(i) {
                panic!(
                    "etcd member {} exited on restart:\n{}",
                    self.members[i].name,
                    self.log_tail(i, 40)
                );
            }
            let out = self.etcdctl_at(
                i,
                Some(&self.root),
                &[
                    "--dial-timeout=1s",
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ],
            );
            if out.status.success() {
                return;
            }
            last = output_text(&out);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd member {} not healthy {START_TIMEOUT:?} after restart: {last}\n{}",
            self.members[i].name,
            self.log_tail(i, 40)
        );
    }

    /// Waits until `etcdctl endpoint health --cluster` (root certificate)
    /// succeeds, or `timeout`; Err: the last answer, or which member
    /// exited.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                let mut guard = m.child.lock().unwrap();
                if let Some(c) = guard.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        guard.take();
                        return Err(format!("member {i} ({}) exited: {status}", m.name));
                    }
                }
            }
            let out = self.etcdctl(&[
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "health",
                "--cluster",
            ]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(output_text(&out));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member that is leader now, asked of each running member
    /// (`endpoint status`); None if none says it is.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .find(|&i| {
                let out = self.etcdctl_at(
                    i,
                    Some(&self.root),
                    &["--command-timeout=2s", "endpoint", "status", "-w", "json"],
                );
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                let st = &v[0]["Status"];
                st["leader"].as_u64().is_some()
                    && st["leader"].as_u64() == st["header"]["member_id"].as_u64()
            })
    }

    /// `etcdctl` (API v3) in member 0's namespace against all endpoints,
    /// trusting the cluster's CA, with the root client certificate. Global
    /// flags (`--command-timeout=2s`, `--user`, `-w json`) may be in `args`,
    /// except `--endpoints`, `--cacert`, `--cert` and `--key`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_as(Some(&self.root), args)
    }

    /// [`etcdctl`](Self::etcdctl) that must succeed; returns stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`etcdctl`](Self::etcdctl) with another client certificate
    /// (None: none at all).
    pub fn etcdctl_as(&self, client: Option<&CertFiles>, args: &[&str]) -> Output {
        self.etcdctl_in(
            &self.members[0].netns,
            &self.endpoints().join(","),
            client,
            args,
        )
    }

    /// `etcdctl` in member `i`'s namespace against member `i` only, with
    /// that client certificate (None: none).
    pub fn etcdctl_at(&self, i: usize, client: Option<&CertFiles>, args: &[&str]) -> Output {
        self.etcdctl_in(&self.members[i].netns, &self.endpoint(i), client, args)
    }

    fn etcdctl_in(
        &self,
        netns: &str,
        endpoints: &str,
        client: Option<&CertFiles>,
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "etcdctl"])
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", self.ca.display()));
        if let Some(c) = client {
            cmd.arg(format!("--cert={}", c.cert.display()))
                .arg(format!("--key={}", c.key.display()));
        }
        clear_etcd_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {netns} etcdctl: {e}"))
    }

    /// Turns auth on for one user: creates user `root` (no password: the
    /// root certificate, CN=root, authenticates as it) with role `root`,
    /// then [`add_user`](Self::add_user)`(user, password, prefix)`, then
    /// `auth enable`. May be called again for more users (root and auth
    /// are then left as they are). The root certificate keeps working for
    /// admin commands.
    pub fn enable_auth(&self, user: &str, password: &str, prefix: &str) {
        if !self.root_user_added.swap(true, Ordering::SeqCst) {
            self.etcdctl_ok(&["user", "add", "root", "--no-password"]);
            self.etcdctl_ok(&["user", "grant-role", "root", "root"]);
        }
        self.add_user(user, password, prefix);
        let out = self.etcdctl(&["auth", "enable"]);
        let text = output_text(&out);
        assert!(
            out.status.success() || text.contains("already enabled"),
            "etcdctl auth enable failed: {text}"
        );
    }

    /// Creates role `<user>-role` with readwrite on key prefix `prefix`
    /// and user `user` with `password` holding it (works with auth on or
    /// off).
    pub fn add_user(&self, user: &str, password: &str, prefix: &str) {
        let role = format!("{user}-role");
        self.etcdctl_ok(&["role", "add", &role]);
        self.etcdctl_ok(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.etcdctl_ok(&[
            "user",
            "add",
            user,
            "--interactive=false",
            &format!("--new-user-password={password}"),
        ]);
        self.etcdctl_ok(&["user", "grant-role", user, &role]);
    }

    /// A POST of `body` (JSON) to `path` (`/v3/kv/range`, ...) of member
    /// `i`'s JSON gateway, from its namespace, over HTTPS (HTTP/1.1)
    /// trusting the cluster's CA, with that client certificate (None:
    /// none) and extra headers (`("Authorization", token)`). curl is only
    /// the tests' observer here.
    pub fn gateway(
        &self,
        i: usize,
        client: Option<&CertFiles>,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> HttpReply {
        let url = format!("{}{path}", self.endpoint(i));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.members[i].netns, "curl"])
            .args(["-sS", "--http1.1", "--max-time", "5", "--noproxy", "*"])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-o", "-", "-w", "\n%{http_code}"]);
        if let Some(c) = client {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        let out = cmd
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ])
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl (test-only observer): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = match stdout.rsplit_once('\n') {
            Some((b, c)) => (b.to_string(), c.trim().to_string()),
            None => (String::new(), stdout.trim().to_string()),
        };
        let status = code.parse::<u16>().ok().filter(|&c| c != 0);
        HttpReply {
            status,
            body,
            error: if out.status.success() {
                String::new()
            } else {
                format!(
                    "curl {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            },
        }
    }

    /// `POST /v3/auth/authenticate {"name":user,"password":password}` on
    /// member `i`: the token, or the reply.
    pub fn gateway_token(
        &self,
        i: usize,
        client: Option<&CertFiles>,
        user: &str,
        password: &str,
    ) -> Result<String, HttpReply> {
        let body = serde_json::json!({ "name": user, "password": password }).to_string();
        let r = self.gateway(i, client, "/v3/auth/authenticate", &body, &[]);
        match (r.status, r.json()) {
            (Some(200), Some(v)) if v["token"].is_string() => {
                Ok(v["token"].as_str().unwrap().to_string())
            }
            _ => Err(r),
        }
    }

    /// Starts member `i`'s etcd (no waiting).
    fn spawn(&self, i: usize) {
        let m = &self.members[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log.display()));
        let _ = writeln!(
            log,
            "=== berth-tests: starting {} ({}) in netns {}",
            m.name, m.ip, m.netns
        );
        let client_url = m.client_url();
        let peer_url = m.peer_url();
        let ca = path_str(&self.ca);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.netns, "etcd"])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--cert-file", m.certs.cert_str()])
            .args(["--key-file", m.certs.key_str()])
            .args(["--trusted-ca-file", ca])
            .arg("--client-cert-auth")
            .args(["--peer-cert-file", m.certs.cert_str()])
            .args(["--peer-key-file", m.certs.key_str()])
            .args(["--peer-trusted-ca-file", ca])
            .arg("--peer-client-cert-auth")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        clear_etcd_env(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (Debian package etcd-server): {e}"));
        *m.child.lock().unwrap() = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd cluster logs (test failed):\n{}", self.logs_tail(30));
        }
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}

/// Removes `ETCD_*` / `ETCDCTL_*` variables of the test's environment from
/// a command (etcd and etcdctl read them as flags).
fn clear_etcd_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
}

/// stdout and stderr of a command, for messages.
fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `lines` lines of a file (reads at most its last 256 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// base64 (the gateway's JSON carries keys and values in it)

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); None if invalid.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("/berth/x", "L2JlcnRoL3g="),
        ] {
            assert_eq!(b64(plain.as_bytes()), enc);
            assert_eq!(unb64(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(unb64("Zm9v!"), None);
    }

    #[test]
    fn server_ext_has_default_and_given_sans_once() {
        let ext = server_ext(&[
            "10.1.2.3".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "fd42::1".parse().unwrap(),
        ]);
        assert!(
            ext.contains("subjectAltName = DNS:localhost,IP:127.0.0.1,IP:10.1.2.3,IP:fd42::1\n")
        );
        assert!(ext.contains("extendedKeyUsage = serverAuth,clientAuth"));
    }

    #[test]
    fn subjects() {
        assert_eq!(subject_for("root"), "/CN=root");
        assert_eq!(subject_for(""), NO_CN_SUBJECT);
    }
}
