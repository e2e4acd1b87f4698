//! berth's node image and DaemonSet (deploy/kubernetes), end to end (root).
//!
//! The image is built by `deploy/kubernetes/build-image.sh` (release
//! binaries; cargo only rebuilds what changed) against a private dockerd:
//! its own data root, exec root, pidfile and socket, no networking of its
//! own (`--bridge=none --iptables=false`, containers on `--network none`),
//! so it never meets the dockerd of another test running at the same time.
//! The DaemonSet's init container is then run as `berth.yaml` describes it
//! (its image, its args and the ConfigMap's conflist are read from the
//! manifest), with temporary directories mounted where the DaemonSet mounts
//! the host's `/opt/cni/bin` and `/etc/cni/net.d`, and what lands there is
//! checked. dockerd is stopped by its PID.
//!
//! Then containerd's CRI (a private containerd, `berth_tests::cri`) is
//! pointed at the installed bin and conf dirs, as kubelet's containerd is
//! on a node, and runs pods on the conflist the init container put there:
//! the manifest's own, with only its identity made the test's (network
//! name, bridge, subnet, IPAM dataDir), so it cannot meet a real node's.
//!
//! [`deploy_node`] is the reusable part: it returns the [`Node`] with the
//! installed bin and conf dirs, for a runtime (containerd's CRI) to be
//! pointed at next.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_tests::cri::{ask, ping_in, serve_hi_in, Containerd, PodSpec};
use berth_tests::*;
use serde_json::{json, Value};

/// What `berth install` puts in the bin dir (cli/src/install.rs PLUGINS).
const PLUGINS: [&str; 7] = [
    "berth-bridge",
    "berth-host",
    "berth-ipam",
    "berth-portmap",
    "berth-bandwidth",
    "berth-overlay",
    "loopback",
];

/// Where the DaemonSet mounts the host's directories (berth.yaml).
const POD_BIN_DIR: &str = "/host/opt/cni/bin";
const POD_CONF_DIR: &str = "/host/etc/cni/net.d";
const POD_CONFIG_DIR: &str = "/etc/berth";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/release`, where build-image.sh takes the binaries from.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = bin_dir_from_exe(&exe);
    profile.parent().expect("target dir").join("release")
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// the manifest

/// What the test takes from `deploy/kubernetes/berth.yaml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The init container's image.
    pub image: String,
    /// The init container's args (the image's entrypoint is `berth`).
    pub init_args: Vec<String>,
    /// The ConfigMap's conflist: its key (file name) and text.
    pub conflist_name: String,
    pub conflist: String,
}

impl Manifest {
    /// Reads the fields this test needs with plain text matching (the
    /// manifest keeps `args` in flow style, which is JSON).
    pub fn read() -> Manifest {
        let path = workspace_root().join("deploy/kubernetes/berth.yaml");
        let yaml =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let lines: Vec<&str> = yaml.lines().collect();
        let key = lines
            .iter()
            .position(|l| l.trim_end() == "  10-berth.conflist: |")
            .expect("ConfigMap key 10-berth.conflist");
        let mut conflist = String::new();
        for l in &lines[key + 1..] {
            if !l.trim().is_empty() && !l.starts_with("    ") {
                break;
            }
            conflist.push_str(l.strip_prefix("    ").unwrap_or(""));
            conflist.push('\n');
        }
        let init = lines
            .iter()
            .position(|l| l.trim() == "initContainers:")
            .expect("initContainers");
        let after = &lines[init..];
        let image = after
            .iter()
            .find_map(|l| l.trim().strip_prefix("image: "))
            .expect("init container image")
            .to_string();
        let args = after
            .iter()
            .find_map(|l| l.trim().strip_prefix("args: "))
            .expect("init container args");
        let init_args: Vec<String> =
            serde_json::from_str(args).expect("init container args are a JSON list");
        for mount in [POD_BIN_DIR, POD_CONF_DIR, POD_CONFIG_DIR] {
            assert!(
                yaml.contains(&format!("mountPath: {mount}\n")),
                "berth.yaml mounts nothing at {mount}"
            );
        }
        Manifest {
            image,
            init_args,
            conflist_name: "10-berth.conflist".into(),
            conflist: conflist.trim_end().to_string() + "\n",
        }
    }
}

// ---------------------------------------------------------------------------
// a private dockerd

pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        require_root();
        assert!(
            Path::new("/usr/sbin/dockerd").is_file(),
            "dockerd not found: run ./scripts/test, which installs docker.io"
        );
        let dir = TempDir::new("deploy-dockerd");
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let dockerd = Dockerd {
            dir,
            child: Some(child),
        };
        wait_for(|| dockerd.docker(&["info"]).status.success(), "dockerd");
        dockerd
    }

    /// `unix://…/docker.sock`, for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    /// SIGTERM by PID and wait, as a service manager stops it.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- dockerd.log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        // Mounts dockerd left under its data root (overlay, shm) if it died.
        let root = self.dir.path().to_path_buf();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

// ---------------------------------------------------------------------------
// a node

/// A node as the DaemonSet sees it: a private dockerd holding the berth
/// image, and temporary directories standing for the host's
/// `/opt/cni/bin` and `/etc/cni/net.d` (created beforehand, as the
/// DaemonSet's `hostPath` volumes with `DirectoryOrCreate` are).
pub struct Node {
    pub manifest: Manifest,
    /// The host's CNI plugin directory (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The host's CNI conf directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// How long build-image.sh took.
    pub image_build: Duration,
    host: TempDir,
    pub docker: Dockerd,
}

impl Node {
    /// Starts dockerd and builds the image with the manifest's tag.
    pub fn start() -> Node {
        let manifest = Manifest::read();
        let docker = Dockerd::start();
        let host = TempDir::new("deploy-host");
        let bin_dir = host.path().join("opt/cni/bin");
        let conf_dir = host.path().join("etc/cni/net.d");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::create_dir_all(&conf_dir).unwrap();

        let script = workspace_root().join("deploy/kubernetes/build-image.sh");
        let log_path = host.path().join("build-image.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let t = Instant::now();
        let status = Command::new("bash")
            .arg(&script)
            .arg(&manifest.image)
            .env("DOCKER_HOST", docker.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run build-image.sh");
        let image_build = t.elapsed();
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success(),
            "{} {} failed ({status}):\n{out}",
            script.display(),
            manifest.image
        );
        eprintln!(
            "build-image.sh {} took {:.1} s",
            manifest.image,
            image_build.as_secs_f64()
        );
        Node {
            manifest,
            bin_dir,
            conf_dir,
            image_build,
            host,
            docker,
        }
    }

    /// A ConfigMap volume holding `conflist` under `name`, laid out as the
    /// kubelet lays one out (the key a symlink into `..data`).
    fn config_map(&self, name: &str, conflist: &str) -> PathBuf {
        let dir = self.host.path().join(format!("configmap-{}", next_id()));
        let data = dir.join("..2025_01_01_00_00_00.000000001");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(name), conflist).unwrap();
        std::os::unix::fs::symlink("..2025_01_01_00_00_00.000000001", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        dir
    }

    /// Runs the DaemonSet's init container (its image and args from the
    /// manifest) with these host dirs and a ConfigMap holding `conflist`.
    pub fn run_init_container(&self, conflist: &str) -> Output {
        let cm = self.config_map(&self.manifest.conflist_name, conflist);
        let bin = format!("{}:{POD_BIN_DIR}", self.bin_dir.display());
        let conf = format!("{}:{POD_CONF_DIR}", self.conf_dir.display());
        let config = format!("{}:{POD_CONFIG_DIR}:ro", cm.display());
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &bin,
            "-v",
            &conf,
            "-v",
            &config,
        ];
        args.push(&self.manifest.image);
        args.extend(self.manifest.init_args.iter().map(String::as_str));
        self.docker.docker(&args)
    }

    /// [`run_init_container`](Self::run_init_container) with the
    /// ConfigMap's conflist; must succeed. Returns its output.
    pub fn install(&self) -> String {
        let out = self.run_init_container(&self.manifest.conflist);
        assert!(
            out.status.success(),
            "init container failed ({}): {}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The installed conflist's path.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(&self.manifest.conflist_name)
    }
}

/// A node whose init container has run: the plugins in [`Node::bin_dir`],
/// the ConfigMap's conflist in [`Node::conf_dir`]. What a runtime test
/// (containerd's CRI with `bin_dir`/`conf_dir` set to these) starts from.
pub fn deploy_node() -> Node {
    let node = Node::start();
    node.install();
    node
}

/// A directory's entries: name -> (inode, mode, mtime s, mtime ns), and
/// every entry's content ([`dir_tree`]).
type Snapshot = (
    BTreeMap<String, (u64, u32, i64, i64)>,
    BTreeMap<String, Option<Vec<u8>>>,
);

/// What [`Snapshot`] says of `dir`.
fn snapshot(dir: &Path) -> Snapshot {
    let mut meta = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        meta.insert(
            e.file_name().to_string_lossy().into_owned(),
            (m.ino(), m.mode(), m.mtime(), m.mtime_nsec()),
        );
    }
    (meta, dir_tree(dir))
}

// ---------------------------------------------------------------------------
// tests

#[test]
fn daemonset_installs_the_plugins_from_a_scratch_image() {
    let t0 = Instant::now();
    let node = Node::start();
    let release = release_dir();

    // A plugin already on the node (the runtime's own): left alone.
    let other = node.bin_dir.join("bandwidth");
    std::fs::write(&other, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The image is FROM scratch: the binaries side by side, libraries and
    // the loader, no shell.
    let cid = node.ok_create();
    let files = node.docker_export_list(&cid);
    for b in ["berth"].iter().chain(PLUGINS.iter()) {
        assert!(
            files.contains(&format!("opt/berth/bin/{b}")),
            "image lacks /opt/berth/bin/{b}: {files:?}"
        );
    }
    assert!(
        files.iter().any(|f| f.contains("ld-linux")),
        "image lacks the dynamic loader: {files:?}"
    );
    assert!(
        !files.iter().any(|f| f == "bin/sh" || f == "usr/bin/sh"),
        "a scratch image has no shell: {files:?}"
    );

    // The init container, as the manifest runs it.
    let out = node.install();
    for p in PLUGINS {
        let dst = node.bin_dir.join(p);
        let m = std::fs::symlink_metadata(&dst)
            .unwrap_or_else(|e| panic!("{}: {e}\n{out}", dst.display()));
        assert!(m.is_file(), "{} is not a regular file", dst.display());
        assert_eq!(
            m.mode() & 0o7777,
            0o755,
            "{} mode {:o}",
            dst.display(),
            m.mode()
        );
        assert!(
            std::fs::read(&dst).unwrap() == std::fs::read(release.join(p)).unwrap(),
            "{} differs from {}",
            dst.display(),
            release.join(p).display()
        );
        assert!(
            out.contains(&format!("installed {POD_BIN_DIR}/{p}")),
            "{out}"
        );
    }
    let conflist = node.conflist_path();
    let m = std::fs::symlink_metadata(&conflist).unwrap();
    assert!(
        m.is_file(),
        "the conflist is installed as a file, not the ConfigMap's symlink"
    );
    assert_eq!(
        std::fs::read_to_string(&conflist).unwrap(),
        node.manifest.conflist
    );
    let parsed: Value =
        serde_json::from_str(&node.manifest.conflist).expect("the ConfigMap's conflist is JSON");
    assert_eq!(parsed["plugins"][0]["type"], "berth-bridge");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "#!/bin/sh\n");
    // Nothing else: no temporary files.
    let mut names: Vec<String> = std::fs::read_dir(&node.bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = PLUGINS
        .iter()
        .map(|s| s.to_string())
        .chain(["bandwidth".to_string()])
        .collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(std::fs::read_dir(&node.conf_dir).unwrap().count(), 1);

    // The installed loopback runs on the host.
    let v = run_plugin(
        &node.bin_dir.join("loopback"),
        "VERSION",
        &[],
        &json!({"cniVersion": "1.0.0"}),
    );
    let v = v.expect_ok();
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        supported.contains(&"1.0.0") && supported.contains(&"0.3.1"),
        "{v}"
    );

    // Again (a pod restart): nothing is touched.
    let before = (snapshot(&node.bin_dir), snapshot(&node.conf_dir));
    let again = node.install();
    assert_eq!(
        again.lines().filter(|l| l.starts_with("unchanged")).count(),
        PLUGINS.len() + 1,
        "{again}"
    );
    assert_eq!(
        (snapshot(&node.bin_dir), snapshot(&node.conf_dir)),
        before,
        "a re-run changed files"
    );

    // A broken ConfigMap fails the init container, naming the field, and
    // leaves the node as it was.
    let bad = node
        .manifest
        .conflist
        .replace("\"berth-portmap\"", "\"no-such-plugin\"");
    assert_ne!(bad, node.manifest.conflist);
    let out = node.run_init_container(&bad);
    assert!(
        !out.status.success(),
        "a conflist naming a missing plugin was accepted: {}",
        text(&out)
    );
    assert!(text(&out).contains("plugins[1].type"), "{}", text(&out));
    assert_eq!(
        (snapshot(&node.bin_dir), snapshot(&node.conf_dir)),
        before,
        "a rejected conflist changed files"
    );

    // The main container idles and stops at once on SIGTERM (as PID 1).
    let id = node.docker.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        &node.manifest.image,
        "idle",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        node.docker
            .ok(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );
    let t = Instant::now();
    node.docker.ok(&["stop", "-t", "20", &id]);
    let stop = t.elapsed();
    assert!(
        stop < Duration::from_secs(10),
        "berth idle ignored SIGTERM (stopped after {stop:?})"
    );
    assert_eq!(
        node.docker
            .ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]),
        "0"
    );
    node.docker.ok(&["rm", &id]);

    pods_run_on_the_installed_node(&node);

    eprintln!(
        "deploy test: image build {:.1} s, whole test {:.1} s",
        node.image_build.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

impl Node {
    /// `docker create` of the image (not started); the container's id.
    fn ok_create(&self) -> String {
        self.docker.ok(&[
            "create",
            "--network",
            "none",
            &self.manifest.image,
            "--help",
        ])
    }

    /// The files of a created container's filesystem (`docker export`),
    /// relative paths without a leading `./`; removes the container.
    fn docker_export_list(&self, id: &str) -> Vec<String> {
        let tar = self.host.path().join(format!("export-{}.tar", next_id()));
        self.docker.ok(&["export", "-o", tar.to_str().unwrap(), id]);
        self.docker.ok(&["rm", id]);
        let list = run_ok("tar", &["-tf", tar.to_str().unwrap()]);
        let _ = std::fs::remove_file(&tar);
        list.lines()
            .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// the installed node under containerd's CRI

/// The manifest's conflist with the test's network name, bridge, subnet
/// and IPAM dataDir; everything else as shipped.
fn node_conflist(manifest: &str, network: &str, bridge: &str, v4: &str, data: &Path) -> String {
    let mut c: Value = serde_json::from_str(manifest).expect("the ConfigMap's conflist is JSON");
    c["name"] = json!(network);
    let br = &mut c["plugins"][0];
    assert_eq!(br["type"], "berth-bridge", "the manifest's first plugin");
    br["bridge"] = json!(bridge);
    br["ipam"]["ranges"] = json!([[{"subnet": v4}]]);
    br["ipam"]["dataDir"] = json!(data);
    serde_json::to_string_pretty(&c).unwrap()
}

/// Installs a conflist through the init container, starts containerd on
/// the node's dirs, and runs two pods (one with a hostPort) that reach
/// each other and the host, and one with an egress-bandwidth annotation is
/// shaped; after StopPodSandbox and RemovePodSandbox nothing of them is
/// left.
fn pods_run_on_the_installed_node(node: &Node) {
    let network = unique_name("bdep", 32);
    let bridge = unique_name("bdep", IFNAMSIZ_MAX);
    let _link = LinkGuard::new(bridge.clone());
    let _nft = NftNetworkGuard::new(network.clone());
    let (v4, _) = unique_subnets();
    let data = TempDir::new("deploy-ipam");
    let conflist = node_conflist(&node.manifest.conflist, &network, &bridge, &v4, data.path());
    let out = node.run_init_container(&conflist);
    assert!(out.status.success(), "init container: {}", text(&out));
    assert_eq!(
        std::fs::read_to_string(node.conflist_path()).unwrap(),
        conflist
    );

    let cd = Containerd::start("deploy", &node.bin_dir, &node.conf_dir);
    let mut c = cd.client();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady is false on the installed node: {why}");

    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut pods = Vec::new();
    for spec in [
        PodSpec::new("deploy-a").tcp_port(port, 80),
        PodSpec::new("deploy-b").annotation("kubernetes.io/egress-bandwidth", "20M"),
    ] {
        let st = c
            .run_pod_and_status(&spec)
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {}", spec.name, e.message()));
        let ip = st
            .ipv4()
            .unwrap_or_else(|| panic!("pod {}: no IPv4: {st:?}", st.id));
        let netns = st.netns.clone().expect("the pod's netns");
        pods.push((st.id, ip, netns));
    }
    // The bridge's address: .1 of the test's /24.
    let gateway: std::net::IpAddr = format!("{}1", v4.strip_suffix("0/24").unwrap())
        .parse()
        .unwrap();
    for (id, _, netns) in &pods {
        for (other, ip, _) in &pods {
            if other != id {
                ping_in(netns, *ip).unwrap_or_else(|e| panic!("pod {id} -> {ip}: {e}"));
            }
        }
        ping_in(netns, gateway).unwrap_or_else(|e| panic!("pod {id} -> the host {gateway}: {e}"));
    }
    // deploy-b's egress goes through an ifb at 20 Mbit/s (the shipped
    // conflist chains berth-bandwidth); deploy-a is not shaped.
    use berth_tests::bandwidth::{redirect_targets, tbf_rate, Root};
    let shaped_veth = bridge_host_veth(&pods[1].0, "eth0");
    let ifbs = redirect_targets(&Root, &shaped_veth);
    assert_eq!(
        ifbs.len(),
        1,
        "{shaped_veth} redirects to one ifb: {ifbs:?}"
    );
    assert_eq!(
        tbf_rate(&Root, &ifbs[0]),
        Some(20_000_000),
        "{}'s tbf",
        ifbs[0]
    );
    assert_eq!(
        redirect_targets(&Root, &bridge_host_veth(&pods[0].0, "eth0")),
        Vec::<String>::new()
    );
    let server = serve_hi_in(&pods[0].2, pods[0].1);
    assert_eq!(
        ask(([127, 0, 0, 1], port).into()),
        Ok("hi".into()),
        "hostPort {port}"
    );
    drop(server);

    for (id, _, _) in &pods {
        c.stop_and_remove_pod(id)
            .unwrap_or_else(|e| panic!("stop and remove {id}: {}", e.message()));
    }
    assert_eq!(c.list_pods().expect("ListPodSandbox"), Vec::<String>::new());
    assert_eq!(
        bridge_ports(&bridge),
        Vec::<String>::new(),
        "ports left on {bridge}"
    );
    assert!(!link_exists(&ifbs[0]), "{} left", ifbs[0]);
    for (id, _, _) in &pods {
        assert!(
            !link_exists(&bridge_host_veth(id, "eth0")),
            "host veth of {id} left"
        );
    }
    assert!(
        ask(([127, 0, 0, 1], port).into()).is_err(),
        "hostPort {port} still answers"
    );
    drop(cd);
}
