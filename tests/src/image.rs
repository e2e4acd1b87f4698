//! berth's node image, as `deploy/kubernetes/build-image.sh` builds it,
//! against a private dockerd ([`Dockerd`]), and saved (`docker save`) to a
//! tar that a node's containerd imports ([`NodeImage`]).
//!
//! The private dockerd has its own data root, exec root, pidfile and
//! socket, and no networking of its own (`--bridge=none
//! --iptables=false`; containers run on `--network none`), so it never
//! meets the dockerd of another test running at the same time. It is
//! stopped by its PID.
//!
//! [`NodeImage::shared`] builds the image once per test binary: the tests
//! that hold it at the same time share one build (the last one to drop it
//! stops dockerd and removes the tar).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::manifest::Manifest;
use crate::{bin_dir_from_exe, require_root, workspace_root, TempDir};

/// stdout then stderr of a command, for messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `target/release`, where build-image.sh takes the binaries from.
pub fn release_dir() -> PathBuf {
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
// a private dockerd

/// A dockerd of the test's own (see the module doc).
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
}

/// dockerd's arguments for a private engine in `dir`: its own data root,
/// exec root, pidfile and socket (`dir/docker.sock`), and no networking of
/// its own (no bridge, no iptables), so it never meets another test's
/// dockerd or the host's.
pub fn private_dockerd_args(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    for (flag, sub) in [
        ("--data-root", "data"),
        ("--exec-root", "exec"),
        ("--pidfile", "docker.pid"),
    ] {
        a.push(flag.into());
        a.push(dir.join(sub).into());
    }
    a.push("-H".into());
    a.push(format!("unix://{}", dir.join("docker.sock").display()).into());
    for flag in [
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--bridge=none",
    ] {
        a.push(flag.into());
    }
    a
}

/// Lazily unmounts whatever is mounted under `root`, deepest first: what
/// a daemon a test started (dockerd, berthd) left mounted when it died.
pub fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(root))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
}

impl Dockerd {
    pub fn start() -> Dockerd {
        require_root();
        assert!(
            Path::new("/usr/sbin/dockerd").is_file(),
            "dockerd not found: run ./scripts/test, which installs docker.io"
        );
        let dir = TempDir::new("dockerd");
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .args(private_dockerd_args(d))
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

    /// `docker ARGS` that must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}: {}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
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
        unmount_under(self.dir.path());
    }
}

// ---------------------------------------------------------------------------
// the image

/// The node image built by build-image.sh in a private dockerd, with
/// every tag the manifest's DaemonSet runs, saved to one tar.
pub struct NodeImage {
    /// The dockerd holding the image (for `docker run` of its containers).
    pub docker: Dockerd,
    /// The tags built (the first by build-image.sh, the others by `docker
    /// tag`).
    pub tags: Vec<String>,
    /// `docker save` of every tag: what `ctr images import` loads.
    pub tar: PathBuf,
    /// How long build-image.sh took.
    pub build_time: Duration,
    _dir: TempDir,
}

static SHARED: Mutex<Weak<NodeImage>> = Mutex::new(Weak::new());

impl NodeImage {
    /// The image with the tags of `deploy/kubernetes/berth.yaml`'s
    /// DaemonSet, built once for every test of this binary that holds it
    /// at the same time.
    pub fn shared() -> Arc<NodeImage> {
        let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(img) = slot.upgrade() {
            return img;
        }
        let img = Arc::new(NodeImage::build(&Manifest::read().pod().images()));
        *slot = Arc::downgrade(&img);
        img
    }

    /// Starts a private dockerd, runs build-image.sh with `tags[0]`, tags
    /// the image with the others, and saves all to a tar. Panics with the
    /// script's output if it fails.
    pub fn build(tags: &[String]) -> NodeImage {
        assert!(!tags.is_empty(), "NodeImage::build needs a tag");
        let docker = Dockerd::start();
        let dir = TempDir::new("node-image");
        let script = workspace_root().join("deploy/kubernetes/build-image.sh");
        let log_path = dir.path().join("build-image.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let t = Instant::now();
        let status = Command::new("bash")
            .arg(&script)
            .arg(&tags[0])
            .env("DOCKER_HOST", docker.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run build-image.sh");
        let build_time = t.elapsed();
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success(),
            "{} {} failed ({status}):\n{out}",
            script.display(),
            tags[0]
        );
        eprintln!(
            "build-image.sh {} took {:.1} s",
            tags[0],
            build_time.as_secs_f64()
        );
        for t in &tags[1..] {
            docker.ok(&["tag", &tags[0], t]);
        }
        let tar = dir.path().join("image.tar");
        let mut args = vec!["save", "-o", tar.to_str().expect("UTF-8 path")];
        args.extend(tags.iter().map(String::as_str));
        docker.ok(&args);
        NodeImage {
            docker,
            tags: tags.to_vec(),
            tar,
            build_time,
            _dir: dir,
        }
    }
}
