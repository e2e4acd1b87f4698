//! A Kubernetes-like cluster of berth nodes on one machine, for tests: no
//! kube-apiserver or kubelet (none can run here), but every node runs a
//! real containerd driven over the CRI exactly as kubelet drives it, and
//! runs the DaemonSet of `deploy/kubernetes/berth.yaml` from the parsed
//! manifest.
//!
//! A node ([`ClusterNode`]) is:
//! - a network namespace on an underlay [`Switch`] (192.168.77.0/24,
//!   node `i` at 192.168.77.(10+i), a default route through .1 so that
//!   berth-overlay finds its underlay link the way it does on a host);
//! - its own mount and UTS namespaces (hostname = the node's name), in
//!   which the node's `/run/berth`, `/var/run/netns` (where its
//!   containerd pins pods' network namespaces, as on a host),
//!   `/var/lib/berth`, `/opt/cni/bin`, `/etc/cni/net.d`,
//!   `/etc/kubernetes` and every other hostPath of the manifest are bind
//!   mounts of per-node temporary directories. So the
//!   manifest's hostPaths are the node's own directories, and the plugins
//!   (exec'd by containerd with their default paths) and the node pod's
//!   containers see the same per-node files, as on separate machines.
//!
//! containerd is started through `nsenter --net=<netns> unshare --mount
//! --uts --propagation private sh -c '<hostname; /sys of the node's netns
//! (the cgroup mounts moved onto it); mount --make-rshared /; bind
//! mounts>; exec "$@"' sh containerd --config …`: every program in
//! that chain execs in place, so the PID the test holds is containerd's.
//! The node's mount tree is shared within its own namespace, as systemd
//! makes a host's, so HostToContainer mounts work. Commands "on the node"
//! run with `nsenter -t <containerd pid> -m -u -n`
//! ([`ClusterNode::exec`]). A mountpoint missing on the real root (say
//! `/etc/kubernetes`) is created there for the bind mount, and removed
//! again when the last node using it is gone; the bind mounts themselves
//! live and die with the node's mount namespace.
//!
//! Pods' network namespaces are mounted in the node's mount namespace, so
//! the test reaches a pod through `/proc/<pause pid>/ns/net`
//! ([`PodStatus::proc_netns`](crate::cri::PodStatus::proc_netns)).
//!
//! The DaemonSet's pod runs as kubelet runs it ([`ClusterNode::start_node_pod`]):
//! RunPodSandbox (host network when the spec says so), then each init
//! container (CreateContainer, StartContainer, wait for its exit, fail
//! with its log if non-zero), then the containers; hostPath volumes are
//! the node's paths (created for `DirectoryOrCreate`), configMap and
//! secret volumes are per-pod directories laid out as kubelet lays them
//! out (`..data` symlink to a timestamped directory, one symlink per key,
//! file modes from `defaultMode`); readOnly, privileged and capabilities,
//! env (values and the downward API's fields), resources and the default
//! masked/read-only paths of unprivileged containers as kubelet sets them.
//! The image (built by build-image.sh, [`NodeImage`]) is imported into
//! every node's containerd with `ctr`, as the README says to load it.
//!
//! A test adds nodes to a running cluster ([`Cluster::add_node`]), kills
//! one as a machine dies ([`ClusterNode::kill`]: containerd, its shims
//! and every pod process SIGKILLed by PID, the underlay link down), and
//! runs commands in the node pod's containers as `kubectl exec` does (CRI
//! ExecSync, [`ClusterNode::exec_in_pod`]).
//!
//! etcd is set up as kubeadm sets it up ([`KubeadmPki`]): a 3-member TLS
//! [`EtcdCluster`] in namespaces of its own on the same underlay
//! (192.168.77.(200+i)), its CA and the API server's etcd client
//! certificate at kubeadm's paths on every node, and the Secret
//! `berth-etcd` made from exactly those files, as the manifest's
//! `kubectl create secret` line makes it.
//!
//! Cleanup (also when a test fails): every pod is removed through CRI (so
//! CNI DEL runs), containerd is stopped by its PID, the namespaces are
//! deleted, the temporary directories removed. A failing test prints
//! containerd's CNI log lines and every node pod container's log.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerState, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};
use serde_json::{json, Value};

use crate::cri::{cri_log_text, Containerd, ContainerdOptions, CriClient, PodSpec, PodStatus};
use crate::etcd_tls::{CertFiles, EtcdCluster, Pki, CLIENT_PORT};
use crate::image::{output_text, NodeImage};
use crate::manifest::{self, Container, DaemonSet, Manifest, Resources, Volume};
use crate::overlay_hosts::Switch;
use crate::{bin, next_id, run, Netns, TempDir, TestNetns};
use k8s_cri::v1::ExecSyncResponse;

/// Paths every node has as its own, whatever the manifest names.
pub const NODE_PATHS: &[&str] = &[
    "/run/berth",
    // Where the node's containerd pins pods' network namespaces.
    "/var/run/netns",
    "/var/lib/berth",
    "/opt/cni/bin",
    "/etc/cni/net.d",
    "/etc/kubernetes",
];

/// The underlay's gateway (nothing answers there: it only gives nodes the
/// default route berth-overlay takes its underlay link from).
pub const UNDERLAY_GATEWAY: [u8; 4] = [192, 168, 77, 1];

/// Node `i`'s underlay address (i from 1).
pub fn node_address(i: u8) -> IpAddr {
    IpAddr::from([192, 168, 77, 10 + i])
}

/// etcd member `i`'s address (i from 0).
pub fn etcd_address(i: u8) -> IpAddr {
    IpAddr::from([192, 168, 77, 200 + i])
}

/// How long an init container may run.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(120);

/// kubelet's masked paths for a container that is not privileged
/// (`securitycontext.ConvertToRuntimeMaskedPaths` with the default
/// procMount).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// kubelet's read-only paths for a container that is not privileged.
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

// ---------------------------------------------------------------------------
// mountpoints on the real root

/// Mountpoints this process created on the real root: path -> (nodes
/// using it, the directories created for it, outermost first).
static MOUNTPOINTS: Mutex<BTreeMap<PathBuf, (usize, Vec<PathBuf>)>> = Mutex::new(BTreeMap::new());

/// The mountpoints a node holds; released on drop (a directory this
/// process created is removed once no node uses it, if it is empty).
struct Mountpoints(Vec<PathBuf>);

impl Mountpoints {
    fn acquire(paths: &[String]) -> Mountpoints {
        let mut held = Mountpoints(Vec::new());
        let mut map = MOUNTPOINTS.lock().unwrap_or_else(PoisonError::into_inner);
        for p in paths {
            let path = PathBuf::from(p);
            if let Some(e) = map.get_mut(&path) {
                e.0 += 1;
            } else {
                let mut created = Vec::new();
                let mut at = PathBuf::new();
                for c in path.components() {
                    at.push(c);
                    if !at.exists() {
                        std::fs::create_dir(&at)
                            .unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
                        created.push(at.clone());
                    }
                }
                assert!(path.is_dir(), "{} is not a directory", path.display());
                map.insert(path.clone(), (1, created));
            }
            held.0.push(path);
        }
        held
    }
}

impl Drop for Mountpoints {
    fn drop(&mut self) {
        let mut map = MOUNTPOINTS.lock().unwrap_or_else(PoisonError::into_inner);
        for p in self.0.drain(..) {
            let Some(e) = map.get_mut(&p) else { continue };
            e.0 -= 1;
            if e.0 == 0 {
                let (_, created) = map.remove(&p).unwrap_or_default();
                for d in created.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the API objects pods' volumes are made from

/// The ConfigMaps and Secrets of the cluster, as the API server would hold
/// them.
#[derive(Debug, Clone, Default)]
pub struct ApiObjects {
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// kubelet's name for a volume's timestamped data directory
/// (`..2006_01_02_15_04_05.000000000`): RFC 3339 with its separators
/// made underscores.
fn timestamp_dir() -> String {
    let t = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    format!(
        "..{}",
        t.trim_end_matches('Z').replace(['-', 'T', ':'], "_")
    )
}

/// Writes a configMap or secret volume into `dir` as kubelet's atomic
/// writer does: the files in a timestamped directory, `..data` a symlink
/// to it, each top-level name a symlink into `..data`.
pub fn write_atomic_volume(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[manifest::KeyToPath],
    default_mode: u32,
) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let ts = timestamp_dir();
    let data_dir = dir.join(&ts);
    std::fs::create_dir_all(&data_dir).map_err(|e| io("mkdir", &data_dir, e))?;
    let files: Vec<(String, &[u8], u32)> = if items.is_empty() {
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_slice(), default_mode))
            .collect()
    } else {
        items
            .iter()
            .map(|it| {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("items: no key {:?}", it.key))?;
                Ok((
                    it.path.clone(),
                    v.as_slice(),
                    it.mode.map_or(default_mode, |m| m.0),
                ))
            })
            .collect::<Result<_, String>>()?
    };
    let mut top: Vec<String> = Vec::new();
    for (path, content, mode) in &files {
        let f = data_dir.join(path);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("mkdir", parent, e))?;
        }
        std::fs::write(&f, content).map_err(|e| io("write", &f, e))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io("chmod", &f, e))?;
        let first = path.split('/').next().unwrap_or(path).to_string();
        if !top.contains(&first) {
            top.push(first);
        }
    }
    std::os::unix::fs::symlink(&ts, dir.join("..data"))
        .map_err(|e| io("symlink", &dir.join("..data"), e))?;
    for name in top {
        let link = dir.join(&name);
        std::os::unix::fs::symlink(format!("..data/{name}"), &link)
            .map_err(|e| io("symlink", &link, e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP, as kubelet's probes ask

/// What an HTTP GET got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl HttpAnswer {
    /// What kubelet counts as a probe's success: 200..399.
    pub fn success(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// `GET path` on `addr` over HTTP/1.1 from inside `ns` (as kubelet's
/// prober asks: `Connection: close`, a `kube-probe` user agent), within
/// `timeout`; the status and the body (chunked bodies decoded).
pub fn http_get_in(
    ns: &impl Netns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpAnswer, String> {
    let raw = ns.run(|| -> Result<Vec<u8>, String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/berth-tests\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(buf)
    })?;
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> Result<HttpAnswer, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of HTTP header in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(HttpAnswer { status, body })
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| format!("bad chunk in {s:?}"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| format!("short chunk in {rest:?}"))?;
        out.push_str(chunk);
        s = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

// ---------------------------------------------------------------------------
// etcd's PKI, as kubeadm lays it out

/// kubeadm's etcd PKI: the etcd CA (which signs the members' certificates:
/// [`EtcdCluster::start`] takes it) and the API server's etcd client
/// certificate (`CN=kube-apiserver-etcd-client`, no SANs).
pub struct KubeadmPki {
    pub ca: Pki,
    pub apiserver_etcd_client: CertFiles,
}

impl KubeadmPki {
    pub fn new() -> KubeadmPki {
        let ca = Pki::new("etcd-ca");
        let apiserver_etcd_client = ca.client("kube-apiserver-etcd-client");
        KubeadmPki {
            ca,
            apiserver_etcd_client,
        }
    }

    /// (path on a node, source file, mode), as kubeadm writes them.
    pub fn node_files(&self) -> Vec<(&'static str, PathBuf, u32)> {
        vec![
            (
                "/etc/kubernetes/pki/etcd/ca.crt",
                self.ca.ca().cert.clone(),
                0o644,
            ),
            (
                "/etc/kubernetes/pki/etcd/ca.key",
                self.ca.ca().key.clone(),
                0o600,
            ),
            (
                "/etc/kubernetes/pki/apiserver-etcd-client.crt",
                self.apiserver_etcd_client.cert.clone(),
                0o644,
            ),
            (
                "/etc/kubernetes/pki/apiserver-etcd-client.key",
                self.apiserver_etcd_client.key.clone(),
                0o600,
            ),
        ]
    }
}

impl Default for KubeadmPki {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// a node

/// A container of a node pod, as created through CRI.
#[derive(Debug, Clone)]
pub struct PodContainer {
    pub name: String,
    pub id: String,
    pub init: bool,
    /// Its CRI log file.
    pub log: PathBuf,
    /// When StartContainer returned for it.
    pub started: Option<Instant>,
}

/// The DaemonSet's pod on a node.
#[derive(Debug, Clone)]
pub struct NodePod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub sandbox: String,
    pub config: PodSandboxConfig,
    /// Init containers (exited) then containers, in the spec's order.
    pub containers: Vec<PodContainer>,
    /// The pod spec it runs.
    pub spec: manifest::PodSpec,
}

/// What [`ClusterNode::stop_node_pod`] saw.
#[derive(Debug, Clone)]
pub struct StoppedPod {
    /// Each container's exit code.
    pub exit_codes: Vec<(String, i32)>,
    /// How long StopContainer took for all containers.
    pub took: Duration,
}

/// A node of the cluster (see the module doc). Dropping it removes every
/// pod through CRI, stops containerd, deletes the namespaces and
/// directories.
pub struct ClusterNode {
    /// Its name: its hostname, so its name in the overlay.
    pub name: String,
    /// Its index (from 1): its address is [`node_address`] of it.
    pub index: u8,
    /// Its address on the underlay.
    pub address: IpAddr,
    // Dropped first: pods removed (CNI DEL), containerd stopped.
    containerd: Containerd,
    pod: Option<NodePod>,
    /// Logs of node pods stopped earlier: (what, text).
    archived_logs: Mutex<Vec<(String, String)>>,
    pods_started: u32,
    pub ns: TestNetns,
    dir: TempDir,
    /// The node's own paths (bind mounts of `dir`'s `fs/...`).
    paths: Vec<String>,
    _mountpoints: Mountpoints,
}

/// What a node is started with, beyond its name and index.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Paths to make the node's own besides [`NODE_PATHS`] (the
    /// manifest's hostPaths).
    pub extra_paths: Vec<String>,
    /// containerd's CNI `conf_template`, a path on the node (kubelet's
    /// podCIDR is then handed over with
    /// [`ClusterNode::set_pod_cidr`]).
    pub conf_template: Option<String>,
}

impl ClusterNode {
    /// Starts node `index` (1..) named `name` on `switch`: its namespace
    /// and address, its own directories for [`NODE_PATHS`] and
    /// `opts.extra_paths`, and containerd in its namespaces (CNI dirs
    /// `/opt/cni/bin` and `/etc/cni/net.d`, the node's).
    pub fn start(switch: &Switch, name: &str, index: u8, opts: &NodeOptions) -> ClusterNode {
        crate::require_root();
        let extra = &opts.extra_paths;
        let address = node_address(index);
        let ns = TestNetns::new(&format!("n{index}"));
        switch.join(&ns, &format!("pn{index}"), &[address]);
        let gw = IpAddr::from(UNDERLAY_GATEWAY);
        ns.sh(&format!("ip route add default via {gw} dev ovu"));

        let mut paths: Vec<String> = NODE_PATHS.iter().map(|s| s.to_string()).collect();
        for p in extra {
            assert!(p.starts_with('/'), "hostPath {p:?} is not absolute");
            let covered = paths.iter().any(|q| Path::new(p).starts_with(q));
            if !covered {
                paths.push(p.clone());
            }
        }
        // Parents before what is under them.
        paths.sort_by_key(|p| p.len());
        let dir = TempDir::new(&format!("node-{name}"));
        // A host's mount tree is shared (systemd makes it so): mounts the
        // runtime makes under a hostPath reach containers that mount it
        // with HostToContainer propagation. Shared within the node's own
        // namespace only: the private copy above cut it from the test's.
        //
        // /sys is mounted again for the node's network namespace (its
        // /sys/class/net), as `ip netns exec` does, but with the host's
        // cgroup mounts moved over to it: runc needs them.
        let hold = dir.path().join("cgroup-hold");
        std::fs::create_dir_all(&hold).expect("mkdir cgroup-hold");
        let hold = sq(hold.to_str().expect("UTF-8 path"));
        let mut script = format!(
            "set -e\n\
             echo {} > /proc/sys/kernel/hostname\n\
             mount --rbind /sys/fs/cgroup {hold}\n\
             umount -l /sys\n\
             mount -t sysfs -o rw,nosuid,nodev,noexec sysfs /sys\n\
             mount --move {hold} /sys/fs/cgroup\n\
             mount --make-rshared /\n",
            sq(name)
        );
        for p in &paths {
            let src = dir.path().join("fs").join(p.trim_start_matches('/'));
            std::fs::create_dir_all(&src)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", src.display()));
            script.push_str(&format!(
                "mount --bind {} {}\n",
                sq(src.to_str().expect("UTF-8 path")),
                sq(p)
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mountpoints = Mountpoints::acquire(&paths);
        // The network namespace first (found in the host's /run/netns,
        // which the node has a /var/run/netns of its own over), then the
        // node's mount and UTS namespaces.
        let netns_arg = format!("--net={}", ns.path_str());
        let launcher: Vec<String> = [
            "nsenter",
            &netns_arg,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Pods' netns where a node's containerd puts them: /var/run/netns.
        let mut cd_opts = ContainerdOptions::new("/opt/cni/bin", "/etc/cni/net.d")
            .launcher(launcher)
            .netns_under_state_dir(false);
        if let Some(t) = &opts.conf_template {
            cd_opts = cd_opts.conf_template(t);
        }
        let containerd = Containerd::start_with(&format!("node-{name}"), cd_opts);
        let node = ClusterNode {
            name: name.to_string(),
            index,
            address,
            containerd,
            pod: None,
            archived_logs: Mutex::new(Vec::new()),
            pods_started: 0,
            ns,
            dir,
            paths,
            _mountpoints: mountpoints,
        };
        let host = node.exec_ok(&["cat", "/proc/sys/kernel/hostname"]);
        assert_eq!(host.trim(), name, "the node's hostname");
        node
    }

    /// The node's containerd.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// A CRI client of the node's containerd.
    pub fn cri(&self) -> CriClient {
        self.containerd.client()
    }

    /// containerd's PID (the node's namespaces are its).
    pub fn pid(&self) -> u32 {
        self.containerd.pid().expect("the node's containerd runs")
    }

    /// The paths that are the node's own.
    pub fn own_paths(&self) -> &[String] {
        &self.paths
    }

    /// Where `node_path` (a path under one of the node's own paths) is
    /// from the test's mount namespace.
    pub fn host_path(&self, node_path: &str) -> PathBuf {
        let p = Path::new(node_path);
        assert!(
            self.paths.iter().any(|q| p.starts_with(q)),
            "{node_path} is not one of node {}'s own paths {:?}",
            self.name,
            self.paths
        );
        self.dir
            .path()
            .join("fs")
            .join(node_path.trim_start_matches('/'))
    }

    /// Writes a file on the node (parents created), with `mode`.
    pub fn write_file(&self, node_path: &str, content: &[u8], mode: u32) {
        let f = self.host_path(node_path);
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f, content).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A command run on the node: `nsenter -t <containerd> -m -u -n`.
    pub fn command(&self, args: &[&str]) -> Command {
        assert!(!args.is_empty(), "ClusterNode::command needs a program");
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "-u", "-n", "--"])
            .args(args)
            .env_remove("BERTH_RUN_DIR")
            .stdin(Stdio::null());
        c
    }

    /// Runs `args` on the node; its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("run nsenter on node {}: {e}", self.name))
    }

    /// [`exec`](Self::exec) that must succeed; its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "on node {}: {args:?} failed ({}): {}",
            self.name,
            out.status,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c script` on the node, must succeed; its stdout.
    pub fn sh(&self, script: &str) -> String {
        self.exec_ok(&["sh", "-c", script])
    }

    /// The workspace's `berth` binary run on the node with `args`.
    pub fn berth(&self, args: &[&str]) -> Output {
        let berth = bin("berth");
        let mut full = vec![berth.to_str().expect("UTF-8 path")];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// `berth status -o json` on the node.
    pub fn status(&self) -> Value {
        let out = self.berth(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "berth status on node {}: {}",
            self.name,
            output_text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "berth status -o json on {}: {e}: {}",
                self.name,
                output_text(&out)
            )
        })
    }

    /// Imports an image tar into the node's containerd (`ctr -n k8s.io
    /// images import --snapshotter native`).
    pub fn import_image(&self, tar: &Path) {
        let sock = self.containerd.socket();
        let out = run(
            "ctr",
            &[
                "-a",
                sock.to_str().expect("UTF-8 path"),
                "-n",
                crate::cri::CRI_NAMESPACE,
                "images",
                "import",
                "--snapshotter",
                "native",
                tar.to_str().expect("UTF-8 path"),
            ],
        );
        assert!(
            out.status.success(),
            "ctr images import {} on node {}: {}",
            tar.display(),
            self.name,
            output_text(&out)
        );
    }

    /// Writes kubeadm's etcd PKI files on the node.
    pub fn install_kubeadm_pki(&self, pki: &KubeadmPki) {
        for (path, src, mode) in pki.node_files() {
            let content =
                std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
            self.write_file(path, &content, mode);
        }
    }

    /// The node pod, if one runs.
    pub fn node_pod(&self) -> Option<&NodePod> {
        self.pod.as_ref()
    }

    /// The node dies as a machine does: containerd, its shims, the node
    /// pod's containers and every pod's processes are killed (SIGKILL, by
    /// PID; no CNI DEL, no clean stop of anything), and the node's
    /// underlay link goes down. What the node left in its namespace stays
    /// until the node is dropped. Returns how many processes were killed.
    /// Nothing can run on the node afterwards.
    pub fn kill(&mut self) -> usize {
        if let Some(pod) = self.pod.take() {
            self.archive_logs(&pod);
        }
        let killed = self.containerd.kill_all();
        self.ns.sh("ip link set ovu down");
        killed
    }

    /// The id of the node pod's container `name`.
    pub fn container_id(&self, name: &str) -> Result<String, String> {
        let pod = self.pod.as_ref().ok_or("no node pod runs")?;
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.id.clone())
            .ok_or_else(|| format!("the node pod has no container {name:?}"))
    }

    /// `cmd` run in the node pod's container `name` through CRI `ExecSync`,
    /// as `kubectl exec` runs it (no terminal), within `timeout`.
    pub fn exec_in_pod(
        &self,
        container: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecSyncResponse, String> {
        let id = self.container_id(container)?;
        self.cri()
            .exec_sync(&id, cmd, timeout)
            .map_err(|e| format!("ExecSync {cmd:?} in {container}: {}", e.message()))
    }

    // -- the DaemonSet's pod ------------------------------------------------

    /// Runs the DaemonSet's pod on this node as kubelet runs it (see the
    /// module doc), with its volumes made from `objects`. Returns once the
    /// init containers have succeeded and the containers are started (not
    /// yet ready: [`wait_node_pod_ready`](Self::wait_node_pod_ready)).
    /// Err: what failed, with the failing container's log. The pod stays
    /// recorded (and is removed on drop) either way.
    pub fn start_node_pod(&mut self, ds: &DaemonSet, objects: &ApiObjects) -> Result<(), String> {
        if self.pod.is_some() {
            return Err(format!("node {}: a node pod already runs", self.name));
        }
        self.pods_started += 1;
        let spec = ds.spec.template.spec.clone();
        let namespace = ds
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let suffix = format!(
            "{:05x}",
            (std::process::id() as u64 * 7919 + next_id()) % 0xfffff
        );
        let name = format!("{}-{suffix}", ds.metadata.name);
        // A UUID-shaped uid, unique in this process.
        let uid = format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            std::process::id(),
            self.pods_started,
            next_id()
        );
        let mut cri = self.cri();

        // Images: present (imagePullPolicy IfNotPresent; nothing to pull
        // from), by id as kubelet passes them.
        let mut image_ids = BTreeMap::new();
        for image in spec.images() {
            let id = cri
                .image_id(&image)
                .map_err(|e| format!("ImageStatus {image}: {}", e.message()))?
                .ok_or_else(|| {
                    format!(
                        "image {image} is not on node {} (ErrImageNeverPull)",
                        self.name
                    )
                })?;
            image_ids.insert(image, id);
        }

        // Volumes.
        let pod_dir = self
            .dir
            .path()
            .join("kubelet/pods")
            .join(&uid)
            .join("volumes");
        let mut volumes: BTreeMap<String, String> = BTreeMap::new();
        for v in &spec.volumes {
            let at = self.volume(v, &pod_dir, objects)?;
            volumes.insert(v.name.clone(), at);
        }

        // The sandbox.
        let log_dir = self
            .dir
            .path()
            .join("logs/pods")
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("mkdir logs: {e}"))?;
        let ns_mode = if spec.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        let mut labels = ds.spec.template.metadata.labels.clone();
        labels.insert("io.kubernetes.pod.name".into(), name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
        let mut annotations = ds.spec.template.metadata.annotations.clone();
        annotations.insert("kubernetes.io/config.source".into(), "api".into());
        let port_mappings = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| {
                // The API server defaults hostPort to containerPort on
                // host network pods.
                let host_port = p
                    .host_port
                    .or(spec.host_network.then_some(p.container_port))?;
                Some(PortMapping {
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => Protocol::Udp,
                        Some("SCTP") => Protocol::Sctp,
                        _ => Protocol::Tcp,
                    } as i32,
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(host_port),
                    host_ip: String::new(),
                })
            })
            .collect();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: namespace.clone(),
                attempt: 0,
            }),
            // kubelet leaves it empty on host network pods (they have the
            // node's).
            hostname: if spec.host_network {
                String::new()
            } else {
                name.clone()
            },
            log_directory: log_dir.to_string_lossy().into_owned(),
            port_mappings,
            labels: labels.into_iter().collect(),
            annotations: annotations.into_iter().collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: ns_mode as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    privileged: spec
                        .init_containers
                        .iter()
                        .chain(&spec.containers)
                        .any(Container::privileged),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = cri
            .run_pod_config(config.clone())
            .map_err(|e| format!("RunPodSandbox {name}: {}", e.message()))?;
        self.pod = Some(NodePod {
            name: name.clone(),
            namespace: namespace.clone(),
            uid: uid.clone(),
            sandbox: sandbox.clone(),
            config: config.clone(),
            containers: Vec::new(),
            spec: spec.clone(),
        });

        let ctx = ContainerContext {
            node: self,
            pod_name: &name,
            namespace: &namespace,
            uid: &uid,
            spec: &spec,
            volumes: &volumes,
        };
        let mut created = Vec::new();
        let mut failure = None;
        for (c, init) in spec
            .init_containers
            .iter()
            .map(|c| (c, true))
            .chain(spec.containers.iter().map(|c| (c, false)))
        {
            let cfg = match ctx.config(c, &image_ids[&c.image]) {
                Ok(cfg) => cfg,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let log = log_dir.join(&cfg.log_path);
            let id = match cri.create_container(&sandbox, cfg, &config) {
                Ok(id) => id,
                Err(e) => {
                    failure = Some(format!("CreateContainer {}: {}", c.name, e.message()));
                    break;
                }
            };
            created.push(PodContainer {
                name: c.name.clone(),
                id: id.clone(),
                init,
                log: log.clone(),
                started: None,
            });
            if let Err(e) = cri.start_container(&id) {
                failure = Some(format!("StartContainer {}: {}", c.name, e.message()));
                break;
            }
            if let Some(last) = created.last_mut() {
                last.started = Some(Instant::now());
            }
            if init {
                match cri.wait_container_exit(&id, INIT_TIMEOUT) {
                    Ok(0) => {}
                    Ok(code) => {
                        failure = Some(format!(
                            "init container {} on node {} exited {code} (Init:Error); its log:\n{}",
                            c.name,
                            self.name,
                            read_log(&log)
                        ));
                        break;
                    }
                    Err(e) => {
                        failure = Some(format!(
                            "init container {} on node {}: {e}; its log:\n{}",
                            c.name,
                            self.name,
                            read_log(&log)
                        ));
                        break;
                    }
                }
            }
        }
        if let Some(p) = self.pod.as_mut() {
            p.containers = created;
        }
        match failure {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Makes volume `v` for a pod whose volume dirs are under `pod_dir`;
    /// the path on the node to mount.
    fn volume(&self, v: &Volume, pod_dir: &Path, objects: &ApiObjects) -> Result<String, String> {
        if let Some(h) = &v.host_path {
            let kind = h.kind.as_deref().unwrap_or("");
            let test = |flag: &str| self.exec(&["test", flag, &h.path]).status.success();
            match kind {
                "" => {}
                "DirectoryOrCreate" => {
                    let out = self.exec(&["mkdir", "-p", "-m", "0755", &h.path]);
                    if !out.status.success() {
                        return Err(format!("hostPath {}: {}", h.path, output_text(&out)));
                    }
                }
                "Directory" if !test("-d") => {
                    return Err(format!("hostPath {} is not a directory", h.path));
                }
                "FileOrCreate" => {
                    let out =
                        self.exec(&["sh", "-c", "[ -e \"$1\" ] || : > \"$1\"", "sh", &h.path]);
                    if !out.status.success() {
                        return Err(format!("hostPath {}: {}", h.path, output_text(&out)));
                    }
                }
                "File" if !test("-f") => {
                    return Err(format!("hostPath {} is not a file", h.path));
                }
                "Socket" if !test("-S") => {
                    return Err(format!("hostPath {} is not a socket", h.path));
                }
                "Directory" | "File" | "Socket" => {}
                other => return Err(format!("hostPath type {other:?}: not run by the harness")),
            }
            return Ok(h.path.clone());
        }
        let (kind, source, data, default_mode, items, optional) = if let Some(c) = &v.config_map {
            (
                "configmap",
                &c.name,
                objects.config_maps.get(&c.name),
                c.default_mode,
                &c.items,
                c.optional,
            )
        } else if let Some(s) = &v.secret {
            (
                "secret",
                &s.secret_name,
                objects.secrets.get(&s.secret_name),
                s.default_mode,
                &s.items,
                s.optional,
            )
        } else {
            return Err(format!("volume {}: no source the harness knows", v.name));
        };
        let dir = pod_dir.join(format!("kubernetes.io~{kind}")).join(&v.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let empty = BTreeMap::new();
        let data = match data {
            Some(d) => d,
            None if optional == Some(true) => &empty,
            None => {
                return Err(format!(
                    "volume {}: {kind} {source:?} not found (the pod would stay ContainerCreating)",
                    v.name
                ))
            }
        };
        write_atomic_volume(
            &dir,
            data,
            items,
            default_mode.map_or(manifest::DEFAULT_VOLUME_MODE, |m| m.0),
        )?;
        Ok(dir.to_string_lossy().into_owned())
    }

    /// `GET path` on the node's address, port `port`, from the node's
    /// network namespace (what a host network pod serves there).
    pub fn http_get(&self, port: u16, path: &str) -> Result<HttpAnswer, String> {
        http_get_in(
            &self.ns,
            SocketAddr::new(self.address, port),
            path,
            Duration::from_secs(5),
        )
    }

    /// The node pod's readiness probe (its first container that has one):
    /// HTTP GET on the probe's path and port at the node's address, from
    /// the node's network namespace (host network: the pod's IP is the
    /// node's).
    pub fn readiness(&self) -> Result<HttpAnswer, String> {
        self.probe(|c| c.readiness_probe.as_ref())
    }

    /// The node pod's liveness probe, likewise.
    pub fn liveness(&self) -> Result<HttpAnswer, String> {
        self.probe(|c| c.liveness_probe.as_ref())
    }

    fn probe(
        &self,
        which: impl Fn(&Container) -> Option<&manifest::Probe>,
    ) -> Result<HttpAnswer, String> {
        let pod = self.pod.as_ref().ok_or("no node pod runs")?;
        let (c, probe) = pod
            .spec
            .containers
            .iter()
            .find_map(|c| which(c).map(|p| (c, p)))
            .ok_or("no container of the node pod has that probe")?;
        let get = probe
            .http_get
            .as_ref()
            .ok_or("the probe is not an httpGet (not run by the harness)")?;
        if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(format!(
                "probe scheme {:?}: not run by the harness",
                get.scheme
            ));
        }
        let port = c.port(&get.port)?;
        let host: IpAddr = match &get.host {
            Some(h) => h.parse().map_err(|_| format!("probe host {h:?}"))?,
            None if pod.spec.host_network => self.address,
            None => return Err("probes of pod-network pods: not run by the harness".into()),
        };
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        http_get_in(&self.ns, SocketAddr::new(host, port), get.path(), timeout)
    }

    /// Waits up to `timeout` for the readiness probe to succeed; Err: the
    /// last answer, or the container that exited (with its log).
    pub fn wait_node_pod_ready(&self, timeout: Duration) -> Result<HttpAnswer, String> {
        let pod = self.pod.as_ref().ok_or("no node pod runs")?;
        let mut cri = self.cri();
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            for c in pod.containers.iter().filter(|c| !c.init) {
                let st = cri
                    .container_status(&c.id)
                    .map_err(|e| format!("ContainerStatus {}: {}", c.name, e.message()))?;
                if st.state != ContainerState::ContainerRunning as i32 {
                    return Err(format!(
                        "container {} on node {} is {:?} (exit code {}, {}); its log:\n{}",
                        c.name,
                        self.name,
                        ContainerState::try_from(st.state),
                        st.exit_code,
                        st.reason,
                        read_log(&c.log)
                    ));
                }
            }
            match self.readiness() {
                Ok(a) if a.success() => return Ok(a),
                Ok(a) => last = format!("HTTP {}: {}", a.status, a.body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {}: the node pod is not ready after {timeout:?}: {last}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the node pod as kubelet deletes one (a rolling update): each
    /// container gets StopContainer with the pod's
    /// terminationGracePeriodSeconds (SIGTERM, SIGKILL once that is over),
    /// then the containers and the sandbox are removed. Their logs are
    /// kept for a failing test. Err if no pod runs or a CRI call fails.
    pub fn stop_node_pod(&mut self) -> Result<StoppedPod, String> {
        let pod = self.pod.take().ok_or("no node pod runs")?;
        let mut cri = self.cri();
        let grace = pod.spec.grace_period();
        let t = Instant::now();
        let mut exit_codes = Vec::new();
        let mut result = Ok(());
        for c in pod.containers.iter().filter(|c| !c.init) {
            if let Err(e) = cri.stop_container(&c.id, grace) {
                result = Err(format!("StopContainer {}: {}", c.name, e.message()));
            }
        }
        let took = t.elapsed();
        for c in &pod.containers {
            match cri.container_status(&c.id) {
                Ok(st) => exit_codes.push((c.name.clone(), st.exit_code)),
                Err(e) => result = Err(format!("ContainerStatus {}: {}", c.name, e.message())),
            }
        }
        self.archive_logs(&pod);
        for c in &pod.containers {
            let _ = cri.remove_container(&c.id);
        }
        if let Err(e) = cri.stop_and_remove_pod(&pod.sandbox) {
            result = Err(format!(
                "stop/remove sandbox {}: {}",
                pod.sandbox,
                e.message()
            ));
        }
        result.map(|_| StoppedPod { exit_codes, took })
    }

    fn archive_logs(&self, pod: &NodePod) {
        let mut a = self
            .archived_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for c in &pod.containers {
            a.push((format!("{} {}", pod.name, c.name), read_log(&c.log)));
        }
    }

    /// Every node pod container's log, the current pod's and the stopped
    /// ones'.
    pub fn node_pod_logs(&self) -> String {
        let mut out = String::new();
        for (what, text) in self
            .archived_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.push_str(&format!(
                "--- node {}: {what} (stopped) ---\n{text}",
                self.name
            ));
        }
        if let Some(pod) = &self.pod {
            for c in &pod.containers {
                out.push_str(&format!(
                    "--- node {}: {} {} ---\n{}",
                    self.name,
                    pod.name,
                    c.name,
                    read_log(&c.log)
                ));
            }
        }
        out
    }

    /// The current node pod's container `name`'s log.
    pub fn container_log(&self, name: &str) -> Option<String> {
        let pod = self.pod.as_ref()?;
        let c = pod.containers.iter().find(|c| c.name == name)?;
        Some(read_log(&c.log))
    }

    // -- application pods ---------------------------------------------------

    /// Hands the node's podCIDR(s) to its runtime as kubelet does
    /// (`UpdateRuntimeConfig`; containerd renders its `conf_template`).
    /// Several CIDRs (dual stack) are given comma-separated, as kubelet
    /// joins `spec.podCIDRs`.
    pub fn set_pod_cidr(&self, cidrs: &str) -> Result<(), String> {
        self.cri()
            .update_runtime_config(cidrs)
            .map_err(|e| format!("UpdateRuntimeConfig on {}: {}", self.name, e.message()))
    }

    /// Waits until the node's runtime reports NetworkReady (a conflist in
    /// its `/etc/cni/net.d`).
    pub fn wait_network_ready(&self, timeout: Duration) -> Result<(), String> {
        let (ready, why) = self
            .cri()
            .wait_network_ready(true, timeout)
            .map_err(|e| e.message().to_string())?;
        if ready {
            Ok(())
        } else {
            Err(format!("node {}: NetworkReady false: {why}", self.name))
        }
    }

    /// RunPodSandbox of `spec` on the node's pod network; its status.
    /// Panics with the call's error.
    pub fn run_pod(&self, spec: &PodSpec) -> PodStatus {
        let mut c = self.cri();
        c.run_pod_and_status(spec).unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {} on node {}: {}",
                spec.name,
                self.name,
                e.message()
            )
        })
    }
}

/// What a container's config is built from.
struct ContainerContext<'a> {
    node: &'a ClusterNode,
    pod_name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    spec: &'a manifest::PodSpec,
    volumes: &'a BTreeMap<String, String>,
}

impl ContainerContext<'_> {
    /// The CRI config of `c`, as kubelet builds it.
    fn config(&self, c: &Container, image_id: &str) -> Result<ContainerConfig, String> {
        let mut envs = Vec::new();
        for e in &c.env {
            let value = match (&e.value, &e.value_from) {
                (_, Some(from)) => self.field(&from.field_ref.field_path)?,
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            envs.push(KeyValue {
                key: e.name.clone(),
                value,
            });
        }
        let mut mounts = Vec::new();
        for m in &c.volume_mounts {
            let src = self
                .volumes
                .get(&m.name)
                .ok_or_else(|| format!("container {}: no volume {:?}", c.name, m.name))?;
            let host_path = match &m.sub_path {
                Some(sub) if !sub.is_empty() => format!("{src}/{sub}"),
                _ => src.clone(),
            };
            let propagation = match m.mount_propagation.as_deref() {
                None | Some("None") => MountPropagation::PropagationPrivate,
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                Some(o) => return Err(format!("mountPropagation {o:?}")),
            };
            mounts.push(Mount {
                container_path: m.mount_path.clone(),
                host_path,
                readonly: m.read_only,
                propagation: propagation as i32,
                ..Default::default()
            });
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let privileged = sc.privileged.unwrap_or(false);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let ns_mode = if self.spec.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        let security_context = LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: caps.add.clone(),
                drop_capabilities: caps.drop.clone(),
                ..Default::default()
            }),
            privileged,
            namespace_options: Some(NamespaceOption {
                network: ns_mode as i32,
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            run_as_user: sc.run_as_user.map(|v| k8s_cri::v1::Int64Value { value: v }),
            run_as_group: sc
                .run_as_group
                .map(|v| k8s_cri::v1::Int64Value { value: v }),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            no_new_privs: sc.allow_privilege_escalation == Some(false) && !privileged,
            masked_paths: if privileged {
                Vec::new()
            } else {
                DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
            },
            readonly_paths: if privileged {
                Vec::new()
            } else {
                DEFAULT_READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            },
            ..Default::default()
        };
        let attempt = 0;
        let labels: BTreeMap<String, String> = [
            ("io.kubernetes.container.name", c.name.as_str()),
            ("io.kubernetes.pod.name", self.pod_name),
            ("io.kubernetes.pod.namespace", self.namespace),
            ("io.kubernetes.pod.uid", self.uid),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations: BTreeMap<String, String> = [
            ("io.kubernetes.container.restartCount", attempt.to_string()),
            (
                "io.kubernetes.pod.terminationGracePeriod",
                self.spec.grace_period().to_string(),
            ),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: image_id.to_string(),
                user_specified_image: c.image.clone(),
                ..Default::default()
            }),
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            envs,
            mounts,
            labels: labels.into_iter().collect(),
            annotations: annotations.into_iter().collect(),
            log_path: format!("{}/{attempt}.log", c.name),
            linux: Some(LinuxContainerConfig {
                resources: Some(self.resources(c)),
                security_context: Some(security_context),
            }),
            ..Default::default()
        })
    }

    /// The downward API's value of `path`.
    fn field(&self, path: &str) -> Result<String, String> {
        let node = self.node;
        Ok(match path {
            "spec.nodeName" => node.name.clone(),
            "status.hostIP" | "status.hostIPs" => node.address.to_string(),
            "status.podIP" | "status.podIPs" if self.spec.host_network => node.address.to_string(),
            "metadata.name" => self.pod_name.to_string(),
            "metadata.namespace" => self.namespace.to_string(),
            "metadata.uid" => self.uid.to_string(),
            "spec.serviceAccountName" => self
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            other => return Err(format!("fieldRef {other:?}: not run by the harness")),
        })
    }

    /// kubelet's resources of a container: CPU shares from the request,
    /// quota from the limit, the memory limit, and the OOM score
    /// adjustment of its QoS class (containerd raises it to its own,
    /// `restrict_oom_score_adj`).
    fn resources(&self, c: &Container) -> LinuxContainerResources {
        let r = c.resources.clone().unwrap_or_default();
        let cpu_req = Resources::cpu_milli(r.requests.get("cpu"))
            .or(Resources::cpu_milli(r.limits.get("cpu")));
        let cpu_lim = Resources::cpu_milli(r.limits.get("cpu"));
        let mem_req =
            Resources::bytes(r.requests.get("memory")).or(Resources::bytes(r.limits.get("memory")));
        let mem_lim = Resources::bytes(r.limits.get("memory"));
        let cpu_shares = cpu_req.map_or(2, |m| (m * 1024 / 1000).max(2));
        let (cpu_period, cpu_quota) = match cpu_lim {
            Some(m) => (100_000, (m * 100_000 / 1000).max(1000)),
            None => (0, 0),
        };
        let critical = self.spec.priority_class_name.as_deref() == Some("system-node-critical");
        let oom_score_adj = if critical {
            -997
        } else if cpu_req.is_none() && mem_req.is_none() {
            1000
        } else {
            let capacity = mem_total().max(1);
            (1000 - 1000 * mem_req.unwrap_or(0) / capacity).clamp(2, 999)
        };
        LinuxContainerResources {
            cpu_period,
            cpu_quota,
            cpu_shares,
            memory_limit_in_bytes: mem_lim.unwrap_or(0),
            oom_score_adj,
            ..Default::default()
        }
    }
}

/// MemTotal in bytes.
fn mem_total() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

/// A CRI log file's messages (or why it cannot be read).
fn read_log(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) => cri_log_text(&t),
        Err(e) => format!("(no log at {}: {e})\n", path.display()),
    }
}

/// `s` single-quoted for sh.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.node_pod_logs());
        }
        // Fields drop next: containerd first (pods removed through CRI,
        // containerd stopped by PID), then the namespace, the directories
        // and the mountpoints.
    }
}

// ---------------------------------------------------------------------------
// the cluster

/// What [`Cluster::start`] makes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (1..=9).
    pub nodes: u8,
    /// Added to the overlay plugin of the ConfigMap's conflist as
    /// `network6` (dual stack), if given.
    pub network6: Option<String>,
    /// Every node's containerd `conf_template` (a path on the node).
    pub conf_template: Option<String>,
    /// The overlay's etcd `leaseTTL` in the ConfigMap's conflists, in
    /// seconds (None: the manifest's).
    pub lease_ttl: Option<u64>,
    /// The ConfigMap's conflists name kubeadm's own etcd client files on
    /// the node (README.md's "kubeadm's files" variant) instead of the
    /// Secret's copies.
    pub kubeadm_files: bool,
}

impl ClusterOptions {
    pub fn new(nodes: u8) -> Self {
        ClusterOptions {
            nodes,
            network6: None,
            conf_template: None,
            lease_ttl: None,
            kubeadm_files: false,
        }
    }

    pub fn kubeadm_files(mut self) -> Self {
        self.kubeadm_files = true;
        self
    }

    pub fn lease_ttl(mut self, secs: u64) -> Self {
        self.lease_ttl = Some(secs);
        self
    }

    pub fn conf_template(mut self, node_path: &str) -> Self {
        self.conf_template = Some(node_path.to_string());
        self
    }

    pub fn network6(mut self, cidr: &str) -> Self {
        self.network6 = Some(cidr.to_string());
        self
    }
}

/// Nodes on one underlay with a kubeadm-like etcd, the node image
/// imported everywhere, and the API objects of the manifest (its
/// ConfigMap with the test's etcd endpoints, the Secret `berth-etcd`).
/// The node pods are started by [`start_node_pods`](Self::start_node_pods).
pub struct Cluster {
    // Dropped in this order: nodes (pods, containerd), etcd, its
    // namespaces, the PKI, the switch, the image.
    pub nodes: Vec<ClusterNode>,
    pub etcd: EtcdCluster,
    _etcd_ns: Vec<TestNetns>,
    pub pki: KubeadmPki,
    pub manifest: Manifest,
    /// The ConfigMaps and Secrets the node pods' volumes are made from.
    pub objects: ApiObjects,
    pub switch: Switch,
    pub image: Arc<NodeImage>,
    /// How long [`start`](Self::start) took.
    pub started_in: Duration,
    /// What nodes are started with ([`add_node`](Self::add_node) too).
    node_opts: NodeOptions,
}

/// The Secret the DaemonSet's etcd volume names, as the manifest's
/// `kubectl create secret generic berth-etcd` line makes it.
pub const ETCD_SECRET: &str = "berth-etcd";

impl Cluster {
    /// Builds the image (once per test binary, in parallel with the rest),
    /// starts the underlay, etcd and `opts.nodes` nodes (in parallel),
    /// imports the image into each, lays kubeadm's etcd files on each, and
    /// makes the API objects.
    pub fn start(opts: ClusterOptions) -> Cluster {
        crate::require_root();
        assert!((1..=9).contains(&opts.nodes), "1..=9 nodes");
        let t0 = Instant::now();
        let manifest = Manifest::read();
        let node_opts = NodeOptions {
            extra_paths: manifest.pod().host_paths(),
            conf_template: opts.conf_template.clone(),
        };
        std::thread::scope(|s| {
            let image = s.spawn(NodeImage::shared);
            let switch = Switch::new("cls");
            let pki = KubeadmPki::new();
            let etcd_ns: Vec<TestNetns> = (0..3u8)
                .map(|i| {
                    let ns = TestNetns::new(&format!("etcd{i}"));
                    switch.join(&ns, &format!("pe{i}"), &[etcd_address(i)]);
                    ns
                })
                .collect();
            let members: Vec<(&TestNetns, IpAddr)> = etcd_ns
                .iter()
                .enumerate()
                .map(|(i, ns)| (ns, etcd_address(i as u8)))
                .collect();
            let etcd = EtcdCluster::start(&members, &pki.ca);
            let nodes: Vec<ClusterNode> = std::thread::scope(|s2| {
                let handles: Vec<_> = (1..=opts.nodes)
                    .map(|i| {
                        let (switch, node_opts) = (&switch, &node_opts);
                        s2.spawn(move || {
                            ClusterNode::start(switch, &format!("node-{i}"), i, node_opts)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
            for n in &nodes {
                n.install_kubeadm_pki(&pki);
            }
            let image = image
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            std::thread::scope(|s2| {
                for n in &nodes {
                    let tar = &image.tar;
                    s2.spawn(move || n.import_image(tar));
                }
            });
            let endpoints: Vec<String> = (0..3u8)
                .map(|i| format!("https://{}", SocketAddr::new(etcd_address(i), CLIENT_PORT)))
                .collect();
            let edits = ConflistEdits {
                endpoints,
                network6: opts.network6.clone(),
                lease_ttl: opts.lease_ttl,
                tls_files: opts
                    .kubeadm_files
                    .then(|| KUBEADM_ETCD_CLIENT_FILES.map(String::from)),
            };
            let objects = api_objects(&manifest, &nodes[0], &edits);
            Cluster {
                nodes,
                etcd,
                _etcd_ns: etcd_ns,
                pki,
                manifest,
                objects,
                switch,
                image,
                started_in: t0.elapsed(),
                node_opts,
            }
        })
    }

    /// Starts one more node (the next index after the highest there is,
    /// named `node-<index>`) as [`start`](Self::start) starts each: on
    /// the underlay, kubeadm's etcd files laid on it, the image imported.
    /// No node pod runs on it yet. Returns its position in
    /// [`nodes`](Self::nodes).
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        assert!(index <= 40, "node index {index}: too many nodes");
        let node = ClusterNode::start(
            &self.switch,
            &format!("node-{index}"),
            index,
            &self.node_opts,
        );
        node.install_kubeadm_pki(&self.pki);
        node.import_image(&self.image.tar);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The node named `name`; panics if there is none.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The DaemonSet.
    pub fn daemon_set(&self) -> &DaemonSet {
        self.manifest.daemon_set()
    }

    /// The conflist as the ConfigMap serves it (its file name and JSON).
    pub fn conflist(&self) -> (String, Value) {
        conflist_of(&self.objects)
    }

    /// The cluster network's name (the conflist's `name`).
    pub fn network(&self) -> String {
        self.conflist().1["name"]
            .as_str()
            .expect("conflist name")
            .to_string()
    }

    /// Starts the DaemonSet's pod on every node, then waits (up to
    /// `timeout`) until each is ready. Panics with the logs otherwise.
    pub fn start_node_pods(&mut self, timeout: Duration) {
        let ds = self.manifest.daemon_set().clone();
        for n in &mut self.nodes {
            if let Err(e) = n.start_node_pod(&ds, &self.objects) {
                panic!("node pod on {}: {e}", n.name);
            }
        }
        for n in &self.nodes {
            if let Err(e) = n.wait_node_pod_ready(timeout) {
                panic!("{e}\n{}", n.node_pod_logs());
            }
        }
    }
}

/// The ConfigMap's conflist in `objects`: (key, JSON).
fn conflist_of(objects: &ApiObjects) -> (String, Value) {
    objects
        .config_maps
        .values()
        .flat_map(|d| d.iter())
        .find(|(k, _)| k.ends_with(".conflist"))
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_slice(v).expect("the conflist is JSON"),
            )
        })
        .expect("no ConfigMap holds a .conflist")
}

/// The manifest's ConfigMaps, each conflist (and conflist template)
/// edited by `edits`, and the Secret `berth-etcd` from kubeadm's files on
/// `node`.
fn api_objects(manifest: &Manifest, node: &ClusterNode, edits: &ConflistEdits) -> ApiObjects {
    let mut objects = ApiObjects::default();
    for cm in &manifest.config_maps {
        let mut data = BTreeMap::new();
        for (k, v) in &cm.data {
            let text = if k.ends_with(".conflist") {
                edit_conflist(v, edits)
            } else if k.ends_with(".conflist.template") {
                edit_conflist_template(v, edits).unwrap_or_else(|| {
                    eprintln!(
                        "warning: ConfigMap {} key {k}: not JSON once its template \
                         actions are hidden; served unedited",
                        cm.metadata.name
                    );
                    v.clone()
                })
            } else {
                v.clone()
            };
            data.insert(k.clone(), text.into_bytes());
        }
        objects.config_maps.insert(cm.metadata.name.clone(), data);
    }
    let read = |p: &str| {
        let f = node.host_path(p);
        std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()))
    };
    let secret: BTreeMap<String, Vec<u8>> = [
        ("ca.crt", read("/etc/kubernetes/pki/etcd/ca.crt")),
        (
            "tls.crt",
            read("/etc/kubernetes/pki/apiserver-etcd-client.crt"),
        ),
        (
            "tls.key",
            read("/etc/kubernetes/pki/apiserver-etcd-client.key"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    objects.secrets.insert(ETCD_SECRET.to_string(), secret);
    objects
}

/// What the test changes in the manifest's conflists: what the README
/// tells the operator to edit (the etcd `endpoints`; `network6` for dual
/// stack), and the lease TTL where a test wants a short one.
#[derive(Debug, Clone, Default)]
pub struct ConflistEdits {
    /// Every berth-overlay plugin's `store.etcd.endpoints`.
    pub endpoints: Vec<String>,
    /// Added as `network6`, if given.
    pub network6: Option<String>,
    /// `store.etcd.leaseTTL`, if given.
    pub lease_ttl: Option<u64>,
    /// `store.etcd`'s `caFile`, `certFile` and `keyFile`, if given.
    pub tls_files: Option<[String; 3]>,
}

/// kubeadm's etcd CA and the API server's etcd client certificate and key,
/// where kubeadm writes them on a control-plane node.
pub const KUBEADM_ETCD_CLIENT_FILES: [&str; 3] = [
    "/etc/kubernetes/pki/etcd/ca.crt",
    "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    "/etc/kubernetes/pki/apiserver-etcd-client.key",
];

/// The conflist `text` with every berth-overlay plugin edited by `edits`.
pub fn edit_conflist(text: &str, edits: &ConflistEdits) -> String {
    let mut c: Value = serde_json::from_str(text).expect("the ConfigMap's conflist is JSON");
    let mut found = false;
    for p in c["plugins"].as_array_mut().into_iter().flatten() {
        if p["type"] != "berth-overlay" {
            continue;
        }
        found = true;
        assert!(
            p["store"]["etcd"].is_object(),
            "the conflist's berth-overlay has no etcd store: {p}"
        );
        p["store"]["etcd"]["endpoints"] = json!(edits.endpoints);
        if let Some(n6) = &edits.network6 {
            p["network6"] = json!(n6);
        }
        if let Some(ttl) = edits.lease_ttl {
            p["store"]["etcd"]["leaseTTL"] = json!(ttl);
        }
        if let Some([ca, cert, key]) = &edits.tls_files {
            p["store"]["etcd"]["caFile"] = json!(ca);
            p["store"]["etcd"]["certFile"] = json!(cert);
            p["store"]["etcd"]["keyFile"] = json!(key);
        }
    }
    assert!(found, "the conflist has no berth-overlay plugin: {c}");
    serde_json::to_string_pretty(&c).expect("JSON") + "\n"
}

/// [`edit_conflist`] for a conflist template (containerd's
/// `conf_template`, a Go template): each JSON array holding template
/// actions (`"podCIDRs": [{{range …}}…{{end}}]`) is hidden as a string
/// while the JSON is edited, then put back as it was. None if the text is
/// not JSON that way.
pub fn edit_conflist_template(text: &str, edits: &ConflistEdits) -> Option<String> {
    let mut hidden: Vec<String> = Vec::new();
    let mut plain = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(len) = rest[open..].find(']') else {
            break;
        };
        let array = &rest[open..=open + len];
        if array[1..].contains('[') {
            // Not innermost: keep the bracket, look further.
            plain.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        }
        plain.push_str(&rest[..open]);
        if array.contains("{{") {
            plain.push_str(&format!("\"@@berth-template-{}@@\"", hidden.len()));
            hidden.push(array.to_string());
        } else {
            plain.push_str(array);
        }
        rest = &rest[open + len + 1..];
    }
    plain.push_str(rest);
    serde_json::from_str::<Value>(&plain).ok()?;
    let mut edited = edit_conflist(&plain, edits);
    for (i, array) in hidden.iter().enumerate() {
        edited = edited.replace(&format!("\"@@berth-template-{i}@@\""), array);
    }
    Some(edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_edit_keeps_its_actions() {
        let t = r#"{"name":"n","plugins":[{"type":"berth-overlay",
          "podCIDRs": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}"{{$r}}"{{end}}],
          "store":{"etcd":{"endpoints":["https://X:2379"]}}}]}"#;
        let edits = ConflistEdits {
            endpoints: vec!["https://10.0.0.1:2379".into()],
            ..Default::default()
        };
        let out = edit_conflist_template(t, &edits).unwrap();
        assert!(
            out.contains(r#""podCIDRs": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}"{{$r}}"{{end}}]"#),
            "{out}"
        );
        assert!(out.contains("https://10.0.0.1:2379"), "{out}");
        assert_eq!(edit_conflist_template("{{.x}}", &edits), None);
    }

    #[test]
    fn http_answers() {
        let a =
            parse_http(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nno lease\n")
                .unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(a.body, "no lease\n");
        assert!(!a.success());
        let a = parse_http(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n2\r\nab\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(a.body, "ok\nab");
        assert!(a.success());
    }

    #[test]
    fn timestamp_dirs_look_like_kubelets() {
        let t = timestamp_dir();
        assert!(t.starts_with("..20"), "{t}");
        assert_eq!(t.len(), "..2006_01_02_15_04_05.000000000".len(), "{t}");
    }

    #[test]
    fn atomic_volume_layout() {
        let d = TempDir::new("atomic-vol");
        let data: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"x".to_vec())].into();
        write_atomic_volume(d.path(), &data, &[], 0o400).unwrap();
        let link = std::fs::read_link(d.path().join("a")).unwrap();
        assert_eq!(link, Path::new("..data/a"));
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"x");
        let m = std::fs::metadata(d.path().join("a")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o400);
        assert!(std::fs::read_link(d.path().join("..data"))
            .unwrap()
            .to_string_lossy()
            .starts_with("..20"));
    }

    #[test]
    fn conflist_edit_sets_endpoints() {
        let c = r#"{"name":"n","plugins":[{"type":"berth-overlay","store":{"etcd":{"endpoints":["https://X:2379"]}}},{"type":"berth-portmap"}]}"#;
        let edits = ConflistEdits {
            endpoints: vec!["https://10.0.0.1:2379".into()],
            network6: Some("fd44::/48".into()),
            lease_ttl: Some(6),
            tls_files: Some(KUBEADM_ETCD_CLIENT_FILES.map(String::from)),
        };
        let out: Value = serde_json::from_str(&edit_conflist(c, &edits)).unwrap();
        assert_eq!(
            out["plugins"][0]["store"]["etcd"]["certFile"],
            json!("/etc/kubernetes/pki/apiserver-etcd-client.crt")
        );
        assert_eq!(
            out["plugins"][0]["store"]["etcd"]["endpoints"],
            json!(["https://10.0.0.1:2379"])
        );
        assert_eq!(out["plugins"][0]["network6"], "fd44::/48");
        assert_eq!(out["plugins"][0]["store"]["etcd"]["leaseTTL"], 6);
        assert_eq!(out["plugins"][1], json!({"type": "berth-portmap"}));
    }
}
