//! berth's node image and DaemonSet (deploy/kubernetes), end to end (root).
//!
//! The image is built by `deploy/kubernetes/build-image.sh` (release
//! binaries; cargo only rebuilds what changed) against a private dockerd
//! (`berth_tests::image`). The DaemonSet's init container is then run as
//! `berth.yaml` describes it (its image, args, volume mounts and the
//! ConfigMap's conflist are read from the parsed manifest,
//! `berth_tests::manifest`), with temporary directories mounted where the
//! DaemonSet mounts the host's paths, the ConfigMap and a Secret
//! `berth-etcd` laid out as kubelet lays them out, and what lands there is
//! checked.
//!
//! Pods on what the DaemonSet installs (containerd's CRI on nodes of their
//! own, with etcd: published ports, the bandwidth annotations, nothing
//! left after StopPodSandbox and RemovePodSandbox) are tests/cluster.rs.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::cluster::write_atomic_volume;
use berth_tests::etcd_tls::Pki;
use berth_tests::image::{output_text as text, release_dir, NodeImage};
use berth_tests::manifest::{Container, Manifest, DEFAULT_VOLUME_MODE};
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

/// The etcd client files the init container copies from the Secret.
const ETCD_FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

// ---------------------------------------------------------------------------
// a node

/// A node as the DaemonSet sees it: the berth image in a private dockerd,
/// and temporary directories standing for the host's paths the manifest's
/// hostPath volumes name (created beforehand, as `DirectoryOrCreate`
/// does).
pub struct Node {
    pub manifest: Manifest,
    /// The host's CNI plugin directory (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The host's CNI conf directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The Secret `berth-etcd`'s data (any PEM files of a test CA).
    pub secret: BTreeMap<String, Vec<u8>>,
    host: TempDir,
    _pki: Pki,
    pub image: Arc<NodeImage>,
}

impl Node {
    /// Builds (or shares) the image and makes the host's directories.
    pub fn start() -> Node {
        let manifest = Manifest::read();
        let image = NodeImage::shared();
        let host = TempDir::new("deploy-host");
        for p in manifest.pod().host_paths() {
            std::fs::create_dir_all(host.path().join(p.trim_start_matches('/'))).unwrap();
        }
        let bin_dir = host.path().join("opt/cni/bin");
        let conf_dir = host.path().join("etc/cni/net.d");
        assert!(
            bin_dir.is_dir(),
            "the manifest has no hostPath /opt/cni/bin"
        );
        assert!(
            conf_dir.is_dir(),
            "the manifest has no hostPath /etc/cni/net.d"
        );
        let pki = Pki::new("deploy");
        let client = pki.client("kube-apiserver-etcd-client");
        let secret = [
            ("ca.crt", std::fs::read(pki.ca_file()).unwrap()),
            ("tls.crt", std::fs::read(&client.cert).unwrap()),
            ("tls.key", std::fs::read(&client.key).unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Node {
            manifest,
            bin_dir,
            conf_dir,
            secret,
            host,
            _pki: pki,
            image,
        }
    }

    /// The DaemonSet's (only) init container.
    pub fn init_container(&self) -> &Container {
        match self.manifest.pod().init_containers.as_slice() {
            [c] => c,
            other => panic!("the DaemonSet has {} init containers, not 1", other.len()),
        }
    }

    /// Where the init container mounts the host path `host_path`.
    pub fn pod_path_of(&self, host_path: &str) -> String {
        let pod = self.manifest.pod();
        let c = self.init_container();
        c.volume_mounts
            .iter()
            .find(|m| {
                pod.volume(&m.name)
                    .host_path
                    .as_ref()
                    .is_some_and(|h| h.path == host_path)
            })
            .unwrap_or_else(|| panic!("the init container does not mount the host's {host_path}"))
            .mount_path
            .clone()
    }

    /// The ConfigMap's conflist: its key (file name) and text.
    pub fn conflist(&self) -> (String, String) {
        let pod = self.manifest.pod();
        let cm = self
            .init_container()
            .volume_mounts
            .iter()
            .find_map(|m| pod.volume(&m.name).config_map.as_ref())
            .expect("the init container mounts no ConfigMap");
        self.manifest
            .config_map(&cm.name)
            .data
            .iter()
            .find(|(k, _)| k.ends_with(".conflist"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("the ConfigMap holds no .conflist")
    }

    /// Runs the DaemonSet's init container (its image, args and mounts
    /// from the manifest) with these host dirs, the manifest's ConfigMap
    /// with `conflist` in place of its conflist, and the Secret.
    pub fn run_init_container(&self, conflist: &str) -> Output {
        let pod = self.manifest.pod();
        let c = self.init_container();
        let (key, _) = self.conflist();
        let mut volumes = Vec::new();
        for m in &c.volume_mounts {
            let v = pod.volume(&m.name);
            let src = if let Some(h) = &v.host_path {
                self.host.path().join(h.path.trim_start_matches('/'))
            } else {
                let dir = self
                    .host
                    .path()
                    .join(format!("vol-{}-{}", v.name, next_id()));
                std::fs::create_dir_all(&dir).unwrap();
                let (data, mode, items) = if let Some(cm) = &v.config_map {
                    // The ConfigMap as shipped, its conflist replaced.
                    let mut data: BTreeMap<String, Vec<u8>> = self
                        .manifest
                        .config_map(&cm.name)
                        .data
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect();
                    data.insert(key.clone(), conflist.as_bytes().to_vec());
                    (data, cm.default_mode, &cm.items)
                } else if let Some(s) = &v.secret {
                    assert_eq!(s.secret_name, "berth-etcd", "the Secret the manifest names");
                    (self.secret.clone(), s.default_mode, &s.items)
                } else {
                    panic!("volume {}: no source", v.name)
                };
                write_atomic_volume(
                    &dir,
                    &data,
                    items,
                    mode.map_or(DEFAULT_VOLUME_MODE, |m| m.0),
                )
                .unwrap();
                dir
            };
            let ro = if m.read_only { ":ro" } else { "" };
            volumes.push(format!("{}:{}{ro}", src.display(), m.mount_path));
        }
        let mut args = vec!["run", "--rm", "--network", "none"];
        for v in &volumes {
            args.extend(["-v", v.as_str()]);
        }
        if !c.command.is_empty() {
            args.extend(["--entrypoint", c.command[0].as_str()]);
        }
        args.push(&c.image);
        args.extend(c.command.iter().skip(1).map(String::as_str));
        args.extend(c.args.iter().map(String::as_str));
        self.image.docker.docker(&args)
    }

    /// [`run_init_container`](Self::run_init_container) with the
    /// ConfigMap's conflist; must succeed. Returns its output.
    pub fn install(&self) -> String {
        let out = self.run_init_container(&self.conflist().1);
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
        self.conf_dir.join(self.conflist().0)
    }
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
    let pod_bin_dir = node.pod_path_of("/opt/cni/bin");
    let (conflist_key, conflist_text) = node.conflist();
    let etcd_dir = node.conf_dir.join("berth-etcd");

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
    // Nor any tool: berth programs nftables over netlink itself.
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("/nft") || f.ends_with("/iptables")),
        "the image carries a firewall tool: {files:?}"
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
            out.contains(&format!("installed {pod_bin_dir}/{p}")),
            "{out}"
        );
    }
    let conflist = node.conflist_path();
    let m = std::fs::symlink_metadata(&conflist).unwrap();
    assert!(
        m.is_file(),
        "the conflist is installed as a file, not the ConfigMap's symlink"
    );
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), conflist_text);
    let parsed: Value =
        serde_json::from_str(&conflist_text).expect("the ConfigMap's conflist is JSON");
    assert_eq!(parsed["plugins"][0]["type"], "berth-overlay");
    // The Secret's files, copied (not linked) where the conflist names
    // them; the key readable by root only.
    for f in ETCD_FILES {
        let dst = etcd_dir.join(f);
        let m = std::fs::symlink_metadata(&dst)
            .unwrap_or_else(|e| panic!("{}: {e}\n{out}", dst.display()));
        assert!(m.is_file(), "{} is not a regular file", dst.display());
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            node.secret[f],
            "{} differs from the Secret's {f}",
            dst.display()
        );
    }
    let key_mode = std::fs::metadata(etcd_dir.join("tls.key")).unwrap().mode();
    assert_eq!(
        key_mode & 0o077,
        0,
        "the installed tls.key is mode {:o}",
        key_mode & 0o7777
    );
    let store = &parsed["plugins"][0]["store"]["etcd"];
    for (k, f) in [
        ("caFile", "ca.crt"),
        ("certFile", "tls.crt"),
        ("keyFile", "tls.key"),
    ] {
        assert_eq!(
            store[k].as_str(),
            Some(format!("/etc/cni/net.d/berth-etcd/{f}").as_str()),
            "the conflist's {k}"
        );
    }
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
    let list = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut want_conf = vec!["berth-etcd".to_string(), conflist_key.clone()];
    want_conf.sort();
    assert_eq!(list(&node.conf_dir), want_conf);
    assert_eq!(list(&etcd_dir), ETCD_FILES.map(String::from).to_vec());

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
    let state = || {
        (
            snapshot(&node.bin_dir),
            snapshot(&node.conf_dir),
            snapshot(&etcd_dir),
        )
    };
    let before = state();
    let again = node.install();
    assert!(
        !again.lines().any(|l| l.starts_with("installed")),
        "a re-run installed something: {again}"
    );
    assert!(
        again.lines().filter(|l| l.starts_with("unchanged")).count() > PLUGINS.len(),
        "{again}"
    );
    assert_eq!(state(), before, "a re-run changed files");

    // A broken ConfigMap fails the init container, naming the field, and
    // leaves the node as it was.
    let bad = conflist_text.replace("\"berth-portmap\"", "\"no-such-plugin\"");
    assert_ne!(bad, conflist_text);
    let out = node.run_init_container(&bad);
    assert!(
        !out.status.success(),
        "a conflist naming a missing plugin was accepted: {}",
        text(&out)
    );
    assert!(text(&out).contains("plugins[1].type"), "{}", text(&out));
    assert_eq!(state(), before, "a rejected conflist changed files");

    // `berth idle` stops at once on SIGTERM (as PID 1).
    let image = &node.init_container().image;
    let docker = &node.image.docker;
    let id = docker.ok(&["run", "-d", "--network", "none", image, "idle"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );
    let t = Instant::now();
    docker.ok(&["stop", "-t", "20", &id]);
    let stop = t.elapsed();
    assert!(
        stop < Duration::from_secs(10),
        "berth idle ignored SIGTERM (stopped after {stop:?})"
    );
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]),
        "0"
    );
    docker.ok(&["rm", &id]);

    eprintln!(
        "deploy test: image build {:.1} s, whole test {:.1} s",
        node.image.build_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

impl Node {
    /// `docker create` of the image (not started); the container's id.
    fn ok_create(&self) -> String {
        let image = &self.init_container().image;
        self.image
            .docker
            .ok(&["create", "--network", "none", image, "--help"])
    }

    /// The files of a created container's filesystem (`docker export`),
    /// relative paths without a leading `./`; removes the container.
    fn docker_export_list(&self, id: &str) -> Vec<String> {
        let tar = self.host.path().join(format!("export-{}.tar", next_id()));
        let docker = &self.image.docker;
        docker.ok(&["export", "-o", tar.to_str().unwrap(), id]);
        docker.ok(&["rm", id]);
        let list = run_ok("tar", &["-tf", tar.to_str().unwrap()]);
        let _ = std::fs::remove_file(&tar);
        list.lines()
            .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
            .collect()
    }
}
