//! berthd as the volume driver and the network driver of a real Docker
//! engine (Debian's docker.io 20.10), end to end (root).
//!
//! Each test starts its own dockerd with private data, exec and socket
//! paths and no networking of its own (`--bridge=none --iptables=false`;
//! containers run on `--network none` or on the berth network the test
//! makes, whose bridge, veths and rules have unique names), so the host's
//! firewall and other tests are untouched, and its own berthd under a
//! plugin name unique to the test (`/run/docker/plugins/berth-t<pid>-<n>.sock`).
//! Both are stopped by PID at the end; busybox-static is the image.
//!
//! The firewall-reload test flushes and replaces rulesets, so it runs
//! both daemons inside a network namespace of its own (still in the root
//! mount namespace), where every `nft` and `iptables` command it makes
//! goes; all its traffic is between namespaces it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_tests::etcd_tls::{unb64, EtcdCluster, Pki};
use berth_tests::metrics;
use berth_tests::*;
use serde_json::Value;

struct Daemons {
    dir: TempDir,
    plugin: String,
    dockerd: Option<Child>,
    berthd: Option<Child>,
    /// The network namespace both daemons run in (its file), in the root
    /// mount namespace still; None: the test's own network namespace.
    netns: Option<PathBuf>,
    /// berthd's metrics port, on 127.0.0.1 of that namespace.
    metrics_port: u16,
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Daemons {
    fn start() -> Daemons {
        Self::start_in(None)
    }

    /// Both daemons inside `netns` (None: in the test's own network
    /// namespace, as [`start`](Self::start)). They keep the root mount
    /// namespace: dockerd bind-mounts its containers' namespace files
    /// under its exec root, where berthd must see them, and finds
    /// berthd's socket under /run/docker/plugins.
    fn start_in(netns: Option<&TestNetns>) -> Daemons {
        require_root();
        assert!(
            Path::new("/usr/sbin/dockerd").is_file(),
            "dockerd not found: run ./scripts/test, which installs docker.io"
        );
        let dir = TempDir::new("dockervol");
        let plugin = format!("berth-t{}-{}", std::process::id(), next_id());
        std::fs::create_dir_all(dir.path().join("allowed/site")).unwrap();
        std::fs::write(dir.path().join("allowed/site/index.txt"), "from the host\n").unwrap();
        // A port free now (the kernel's pick), for berthd's metrics.
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("berthd.json"),
            serde_json::to_vec(&serde_json::json!({
                "bindAllow": [dir.path().join("allowed")],
                "dockerSocket": dir.path().join("docker.sock"),
                "metricsAddress": format!("127.0.0.1:{metrics_port}"),
            }))
            .unwrap(),
        )
        .unwrap();
        let mut d = Daemons {
            dir,
            plugin,
            dockerd: None,
            berthd: None,
            netns: netns.map(|n| n.path().to_path_buf()),
            metrics_port,
        };
        d.start_berthd();
        d.start_dockerd();
        d.import_busybox();
        d
    }

    /// A command starting `program` in the daemons' network namespace.
    /// `nsenter` execs it in place (only the network namespace is
    /// entered), so the child's PID is the daemon's.
    fn daemon_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(program);
                c
            }
        }
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/docker/plugins/{}.sock", self.plugin))
    }

    fn start_berthd(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.dir.path().join("berthd.log")).unwrap();
        let child = self
            .daemon_command(bin("berthd"))
            // Overlay networks' notes and lease caches: the test's own.
            .env("BERTH_RUN_DIR", self.dir.path().join("run"))
            .arg("--config")
            .arg(self.dir.path().join("berthd.json"))
            .arg("--root")
            .arg(self.dir.path().join("volumes"))
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .arg("--socket")
            .arg(self.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start berthd");
        self.berthd = Some(child);
        wait_for(
            || std::os::unix::net::UnixStream::connect(self.socket()).is_ok(),
            "berthd's socket",
        );
    }

    fn stop_berthd_hard(&mut self) {
        if let Some(mut c) = self.berthd.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn start_dockerd(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = self
            .daemon_command("/usr/sbin/dockerd")
            .args(berth_tests::image::private_dockerd_args(d))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        wait_for(|| self.docker(&["info"]).status.success(), "dockerd");
    }

    /// SIGTERM and wait, as a service manager stops it.
    fn stop_dockerd(&mut self) {
        if let Some(mut c) = self.dockerd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("busybox")).unwrap();
        for a in ["sh", "cat", "dd", "echo", "sleep", "ls", "ping", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join(a)).unwrap();
        }
        let tar = self.dir.path().join("bb.tar");
        run_ok(
            "tar",
            &[
                "-C",
                self.dir.path().join("rootfs").to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        self.ok(&["import", tar.to_str().unwrap(), "bb:1"]);
    }

    /// One POST to berthd, as the engine sends it; the answer's text.
    fn plugin_call(&self, method: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).expect("berthd socket");
        let req = format!("POST /{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{method} {body}: {out}");
        out
    }

    /// `docker run --rm --network none -v VOL:/data bb:1 sh -c SCRIPT`.
    fn run(&self, vol: &str, script: &str) -> Output {
        self.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{vol}:/data"),
            "bb:1",
            "sh",
            "-c",
            script,
        ])
    }

    /// `berth ARGS -o json` on the test's run dir and berthd's state (no
    /// berth-ipam data dir: only berthd's networks and this test's).
    fn berth_json(&self, args: &[&str]) -> Value {
        let out = Command::new(bin("berth"))
            .env("BERTH_RUN_DIR", self.dir.path().join("run"))
            .args(args)
            .args(["-o", "json", "--engine-state"])
            .arg(self.dir.path().join("state"))
            .arg("--data-dir")
            .arg(self.dir.path().join("no-data-dir"))
            .output()
            .unwrap();
        assert!(out.status.success(), "berth {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn berth_status(&self) -> Value {
        let v = self.berth_json(&["status"]);
        assert_eq!(v["problems"], serde_json::json!([]), "{v:#}");
        v
    }

    fn status(&self, vol: &str) -> Value {
        let out = self.ok(&["volume", "inspect", vol]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["Status"].clone()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = self.docker(&[
            "rm", "-f", "keeper1", "keeper2", "na", "nb", "nc", "web", "ia", "ib", "oa", "ob",
            "fw1", "fw2", "fw3",
        ]);
        self.stop_dockerd();
        self.stop_berthd_hard();
        let _ = std::fs::remove_file(self.socket());
        berth_tests::image::unmount_under(self.dir.path());
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker_engine_uses_berthd_volumes() {
    let mut d = Daemons::start();
    let p = d.plugin.clone();
    let site = d.dir.path().join("allowed/site");

    // Each kind: created through the engine, written by one container,
    // read by another.
    d.ok(&["volume", "create", "-d", &p, "managed1"]);
    d.ok(&["volume", "create", "-d", &p, "--opt", "size=8M", "small"]);
    d.ok(&[
        "volume",
        "create",
        "-d",
        &p,
        "--opt",
        "type=bind",
        "--opt",
        &format!("device={}", site.display()),
        "site",
    ]);
    d.ok(&[
        "volume",
        "create",
        "-d",
        &p,
        "--opt",
        "type=tmpfs",
        "--opt",
        "o=size=4m",
        "scratch",
    ]);
    for vol in ["managed1", "small"] {
        let w = d.run(vol, "echo written-by-one > /data/f");
        assert!(w.status.success(), "{vol}: {}", text(&w));
        let r = d.run(vol, "cat /data/f");
        assert_eq!(
            String::from_utf8_lossy(&r.stdout).trim(),
            "written-by-one",
            "{vol}: {}",
            text(&r)
        );
    }
    let r = d.run("site", "cat /data/index.txt && echo new > /data/new.txt");
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(
        std::fs::read_to_string(site.join("new.txt")).unwrap(),
        "new\n",
        "bind volume did not reach the host directory"
    );
    let r = d.run("scratch", "echo t > /data/t && cat /data/t");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "t",
        "{}",
        text(&r)
    );

    // The size limit holds inside a container.
    let r = d.run("small", "dd if=/dev/zero of=/data/big bs=1M count=16");
    assert!(
        !r.status.success(),
        "16 MiB written to an 8M volume: {}",
        text(&r)
    );
    assert!(text(&r).contains("No space left"), "{}", text(&r));
    assert_eq!(d.status("small")["sizeLimit"], 8 << 20);

    // Two containers on one volume: one stops, the volume stays mounted
    // for the other.
    for c in ["keeper1", "keeper2"] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "none",
            "-v",
            "small:/data",
            "bb:1",
            "sleep",
            "300",
        ]);
    }
    assert_eq!(d.status("small")["mountCount"], 2);
    d.ok(&["rm", "-f", "keeper1"]);
    assert_eq!(d.status("small")["mountCount"], 1);
    let r = d.docker(&["exec", "keeper2", "cat", "/data/f"]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "written-by-one",
        "{}",
        text(&r)
    );

    // berthd killed with SIGKILL and restarted: every volume and the mount
    // count are still there, the running container keeps its data.
    d.stop_berthd_hard();
    d.start_berthd();
    let listed = d.ok(&["volume", "ls", "-q", "--filter", &format!("driver={p}")]);
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    assert_eq!(names, vec!["managed1", "scratch", "site", "small"]);
    assert_eq!(d.status("small")["mountCount"], 1);

    // `berth volumes` reads the records while berthd holds the root, and
    // says what berthd says through the engine.
    let out = Command::new(bin("berth"))
        .args(["volumes", "-o", "json", "--root"])
        .arg(d.dir.path().join("volumes"))
        .output()
        .unwrap();
    assert!(out.status.success(), "berth volumes: {}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["problems"], serde_json::json!([]), "{listed:#}");
    let vols = listed["volumes"].as_array().unwrap();
    let names: Vec<&str> = vols.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["managed1", "scratch", "site", "small"]);
    for v in vols {
        let s = d.status(v["name"].as_str().unwrap());
        for (ours, theirs) in [
            ("kind", "kind"),
            ("sizeLimit", "sizeLimit"),
            ("usedBytes", "usedBytes"),
            ("mountCount", "mountCount"),
        ] {
            assert_eq!(v[ours], s[theirs], "{ours} of {v:#} against berthd's {s:#}");
        }
    }
    let small = vols.iter().find(|v| v["name"] == "small").unwrap();
    assert_eq!(small["kind"], "size-limited");
    assert_eq!(small["mountCount"], 1);
    assert!(small["usedBytes"].as_u64().unwrap() > 0, "{small:#}");
    let managed = vols.iter().find(|v| v["name"] == "managed1").unwrap();
    assert_eq!(managed["usedBytes"], "written-by-one\n".len());
    // berthd's metrics: the same volumes, bytes, limits and mounts.
    let m = berthd_metrics(&d);
    for v in vols {
        let l = [
            ("volume", v["name"].as_str().unwrap()),
            ("kind", v["kind"].as_str().unwrap()),
        ];
        let get = |name: &str| m.get(&metrics::key(name, &l)).copied();
        assert_eq!(
            get("berth_volume_used_bytes"),
            v["usedBytes"].as_f64(),
            "{v:#} {m:?}"
        );
        assert_eq!(
            get("berth_volume_mounts"),
            v["mountCount"].as_f64(),
            "{v:#}"
        );
        assert_eq!(
            get("berth_volume_size_limit_bytes"),
            v["sizeLimit"].as_f64(),
            "{v:#}"
        );
    }
    let total: f64 = m
        .iter()
        .filter(|((name, _), _)| name == "berth_volumes")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, vols.len() as f64, "{m:?}");
    let r = d.docker(&[
        "exec",
        "keeper2",
        "sh",
        "-c",
        "echo more >> /data/f && cat /data/f",
    ]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("more"),
        "{}",
        text(&r)
    );
    d.ok(&["rm", "-f", "keeper2"]);
    assert_eq!(d.status("small")["mountCount"], 0);

    // dockerd restarted: it asks berthd for each volume and keeps them all.
    d.stop_dockerd();
    d.start_dockerd();
    let listed = d.ok(&["volume", "ls", "-q", "--filter", &format!("driver={p}")]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    let r = d.run("managed1", "cat /data/f");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "written-by-one",
        "{}",
        text(&r)
    );

    // A mount the engine lost track of (a container killed with dockerd
    // never sends Unmount): the engine's Remove reaches berthd, which asks
    // the engine, finds no container using the volume, and drops it.
    d.ok(&[
        "volume",
        "create",
        "-d",
        &p,
        "--opt",
        "type=tmpfs",
        "orphan",
    ]);
    let mp = d.plugin_call(
        "VolumeDriver.Mount",
        r#"{"Name":"orphan","ID":"lost-with-dockerd"}"#,
    );
    assert_eq!(d.status("orphan")["mountCount"], 1, "{mp}");
    d.ok(&["volume", "rm", "orphan"]);
    let log = std::fs::read_to_string(d.dir.path().join("berthd.log")).unwrap();
    assert!(log.contains("stale mount"), "{log}");

    // Removal: a managed volume's data goes, a bind volume's host
    // directory stays.
    for v in ["managed1", "small", "site", "scratch"] {
        d.ok(&["volume", "rm", v]);
    }
    assert!(
        site.join("index.txt").is_file(),
        "removing a bind volume deleted the host directory"
    );
    let left: Vec<_> = std::fs::read_dir(d.dir.path().join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in berthd's root: {left:?}");
}

/// `docker inspect` of a container's address, gateway on `net`.
fn net_addr(d: &Daemons, container: &str, net: &str, field: &str) -> String {
    d.ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").{field}}}}}"),
        container,
    ])
}

/// GET /index.html on 127.0.0.1:`port`, retried for `patience` (the
/// server starts after `docker run -d` returns).
fn http_get(port: u16, patience: Duration) -> Result<String, String> {
    http_get_path(port, "/index.html", patience)
}

/// berthd's metrics, as Prometheus scrapes them: the samples by name and
/// labels, after promtool found nothing to say about the exposition.
fn berthd_metrics(d: &Daemons) -> metrics::Samples {
    let answer = http_get_path(d.metrics_port, "/metrics", Duration::from_secs(5))
        .expect("berthd's metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    metrics::promtool_finds_nothing(body);
    metrics::samples(body)
}

/// GET `path` on 127.0.0.1:`port`, retried for `patience`.
fn http_get_path(port: u16, path: &str, patience: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + patience;
    loop {
        let attempt = (|| -> Result<String, String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let mut body = String::new();
            s.read_to_string(&mut body).map_err(|e| e.to_string())?;
            Ok(body)
        })();
        if attempt.is_ok() || Instant::now() > deadline {
            return attempt;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pings(d: &Daemons, from: &str, to: &str) -> bool {
    d.docker(&["exec", from, "ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

/// A berth bridge network through the engine: containers reach each other
/// and their gateway, disconnect/connect work, berthd killed and restarted
/// keeps existing connectivity and lets new containers join, and
/// `docker network rm` leaves no bridge, rule or address pool. Containers
/// on `none` and `host` run beside it unaffected.
#[test]
fn docker_engine_uses_berthd_networks() {
    let mut d = Daemons::start();
    let p = d.plugin.clone();
    let (subnet, subnet6) = unique_subnets();
    let net = format!("bn{}", std::process::id());
    d.ok(&[
        "network",
        "create",
        "-d",
        &p,
        "--ipam-driver",
        &p,
        "--subnet",
        &subnet,
        "--ipv6",
        "--subnet",
        &subnet6,
        "-o",
        "mode=bridge",
        &net,
    ]);
    let id = d.ok(&["network", "inspect", "-f", "{{.Id}}", &net]);
    let bridge = format!("bd{}", &id[..12]);
    let _bridge_guard = LinkGuard::new(bridge.clone());
    let rules = format!("docker-{}", &id[..12]);
    let _rules_guard = NftNetworkGuard::new(rules.clone());
    assert!(link_exists(&bridge), "no bridge {bridge}");
    assert!(
        !berth_nft_objects(&rules).is_empty(),
        "no rules for {rules}"
    );

    for c in ["na", "nb"] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            &net,
            "bb:1",
            "sleep",
            "300",
        ]);
    }
    let ip_b = net_addr(&d, "nb", &net, "IPAddress");
    let gw = net_addr(&d, "na", &net, "Gateway");
    assert!(pings(&d, "na", &ip_b), "na cannot reach nb at {ip_b}");
    assert!(pings(&d, "nb", &gw), "nb cannot reach its gateway {gw}");
    // Dual stack: IPv6 addresses from berth's IPAM, and traffic over them.
    let ip6_b = net_addr(&d, "nb", &net, "GlobalIPv6Address");
    assert!(
        ip6_b.starts_with("fd42:"),
        "no IPv6 address from {subnet6}: {ip6_b:?}"
    );
    assert!(pings(&d, "na", &ip6_b), "na cannot reach nb at {ip6_b}");
    // The engine's own none and host networks are unaffected.
    d.ok(&["run", "--rm", "--network", "none", "bb:1", "true"]);
    d.ok(&["run", "--rm", "--network", "host", "bb:1", "true"]);

    // A published port (-p) answers from the host through berth's maps.
    let port = 21000 + (std::process::id() % 20000) as u16;
    d.ok(&[
        "run", "-d", "--name", "web", "--network", &net, "-p", &format!("127.0.0.1:{port}:80"), "bb:1",
        "sh", "-c", "busybox mkdir -p /www && echo from-a-berth-network > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    let answer = http_get(port, Duration::from_secs(10));
    assert!(
        answer
            .as_deref()
            .is_ok_and(|a| a.contains("from-a-berth-network")),
        "127.0.0.1:{port}: {answer:?}"
    );
    // `berth status` shows the network, its three endpoints with the
    // engine's addresses, their netns, and the published port.
    let shown = d.berth_status();
    let n = status_network(&shown, &rules).clone();
    assert_eq!(n["dockerNetworkID"], id.as_str(), "{n:#}");
    assert_eq!(n["kind"], "bridge");
    assert_eq!(n["bridge"], bridge.as_str());
    assert_eq!(n["kernel"]["matches"], true, "{n:#}");
    assert_eq!(n["publishedPorts"], 1, "{n:#}");
    let attachments = n["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 3, "{n:#}");
    for c in ["na", "nb", "web"] {
        let ep = net_addr(&d, c, &net, "EndpointID");
        let a = attachments
            .iter()
            .find(|a| a["containerID"] == ep.as_str())
            .unwrap_or_else(|| panic!("no endpoint {ep} of {c} in {n:#}"));
        assert_eq!(a["state"], "live", "{a:#}");
        assert_eq!(a["inKernel"], true, "{a:#}");
        let sandbox = d.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", c]);
        assert_eq!(a["netns"], sandbox.as_str(), "{a:#}");
        let mut want = vec![
            net_addr(&d, c, &net, "IPAddress"),
            net_addr(&d, c, &net, "GlobalIPv6Address"),
        ];
        want.sort();
        let mut got: Vec<String> = a["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, want, "{a:#}");
        let ports = a["ports"].as_array().unwrap();
        if c == "web" {
            assert_eq!(ports.len(), 1, "{a:#}");
            assert_eq!(ports[0]["hostPort"], port);
            assert_eq!(ports[0]["containerPort"], 80);
            assert_eq!(ports[0]["hostIP"], "127.0.0.1");
        } else {
            assert!(ports.is_empty(), "{a:#}");
        }
    }
    // berthd's IPAM: one pool per family, each holding the gateway and
    // the three endpoints' addresses.
    let ranges = n["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 2, "{n:#}");
    for r in ranges {
        assert_eq!(r["used"], 4, "{r:#}");
        assert!(r["size"].as_u64().is_some_and(|s| s > 4), "{r:#}");
    }
    // berthd's metrics say the same, and count the engine's calls.
    let m = berthd_metrics(&d);
    let get = |name: &str, pairs: &[(&str, &str)]| m.get(&metrics::key(name, pairs)).copied();
    assert_eq!(
        get(
            "berth_attachments",
            &[("network", &rules), ("state", "live")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(
            "berth_attachments",
            &[("network", &rules), ("state", "stale")]
        ),
        Some(0.0)
    );
    assert_eq!(
        get("berth_published_ports", &[("network", &rules)]),
        Some(1.0)
    );
    for r in ranges {
        let set = r["rangeSet"].as_u64().unwrap().to_string();
        let l = [
            ("network", rules.as_str()),
            ("range_set", set.as_str()),
            ("range", r["label"].as_str().unwrap()),
        ];
        assert_eq!(get("berth_range_addresses_used", &l), Some(4.0), "{m:?}");
        assert_eq!(
            get("berth_range_addresses_capacity", &l),
            r["size"].as_f64(),
            "{m:?}"
        );
    }
    assert!(
        get(
            "berthd_calls_total",
            &[
                ("method", "NetworkDriver.CreateEndpoint"),
                ("outcome", "ok")
            ]
        )
        .is_some_and(|n| n >= 3.0),
        "{m:?}"
    );
    assert!(
        get(
            "berthd_call_duration_seconds",
            &[("method", "NetworkDriver.Join")]
        )
        .is_some_and(|n| n >= 3.0),
        "{m:?}"
    );
    assert_eq!(get("berth_records_unreadable", &[]), Some(0.0));

    // `berth gc` leaves berthd's endpoints to the engine.
    let gc = d.berth_json(&["gc", "--dry-run"]);
    assert_eq!(gc["stale"], serde_json::json!([]), "{gc:#}");

    // Taken away behind berth's back (only this test's objects: the host's
    // ruleset is shared), the port's map element and the network's rules
    // are put back by berthd's reconciler within a second.
    let key = format!("127.0.0.1 . tcp . {port}");
    let map = berth_maps_holding(None, &key)
        .into_iter()
        .next()
        .expect("the port's map element");
    run_ok(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            "berth",
            &map,
            &format!("{{ {key} }}"),
        ],
    );
    berth_network::firewall::remove(&rules).expect("remove the network's rules");
    // (Both removals succeeded, so whatever is there again was put back.)
    let taken = Instant::now();
    wait_for(
        || !berth_maps_holding(None, &key).is_empty() && !berth_nft_objects(&rules).is_empty(),
        "the port's element and the network's rules back",
    );
    assert!(
        taken.elapsed() < Duration::from_secs(1),
        "put back only after {:?}",
        taken.elapsed()
    );
    // berthd's reconciler did it, and said so (its log is written as the
    // pass ends, just after the rules are in).
    let log_path = d.dir.path().join("berthd.log");
    wait_for(
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains(&format!("repaired network {rules:?}"))
                && log.contains("repaired published ports")
        },
        "berthd's log of the repairs",
    );
    let answer = http_get(port, Duration::from_secs(1));
    assert!(
        answer
            .as_deref()
            .is_ok_and(|a| a.contains("from-a-berth-network")),
        "127.0.0.1:{port} after the repair: {answer:?}"
    );
    d.ok(&["rm", "-f", "web"]);
    let shown = d.berth_status();
    let n = status_network(&shown, &rules).clone();
    assert_eq!(n["attachments"].as_array().unwrap().len(), 2, "{n:#}");
    assert_eq!(n["publishedPorts"], 0, "{n:#}");
    assert!(
        http_get(port, Duration::ZERO).is_err(),
        "port {port} still answers after the container went"
    );
    let table = run("nft", &["list", "table", "inet", "berth"]);
    assert!(
        !String::from_utf8_lossy(&table.stdout).contains(&format!("tcp . {port}")),
        "element of port {port} left"
    );

    d.ok(&["network", "disconnect", &net, "nb"]);
    assert!(
        !pings(&d, "na", &ip_b),
        "nb still reachable after disconnect"
    );
    d.ok(&["network", "connect", &net, "nb"]);
    let ip_b = net_addr(&d, "nb", &net, "IPAddress");
    assert!(pings(&d, "na", &ip_b), "nb unreachable after connect");

    // berthd killed and restarted: existing containers keep talking, a new
    // one joins.
    d.stop_berthd_hard();
    d.start_berthd();
    assert!(
        pings(&d, "na", &ip_b),
        "connectivity lost with berthd's restart"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "nc",
        "--network",
        &net,
        "bb:1",
        "sleep",
        "300",
    ]);
    let ip_c = net_addr(&d, "nc", &net, "IPAddress");
    assert!(
        pings(&d, "na", &ip_c),
        "a container started after the restart is unreachable"
    );

    // dockerd restarted: the engine never re-sends CreateNetwork; berthd's
    // records keep the network usable.
    d.ok(&["rm", "-f", "nc"]);
    d.stop_dockerd();
    d.start_dockerd();
    for c in ["na", "nb"] {
        let _ = d.docker(&["start", c]);
    }
    let ip_b = net_addr(&d, "nb", &net, "IPAddress");
    assert!(
        pings(&d, "na", &ip_b),
        "containers on the network cannot talk after dockerd's restart"
    );

    // --internal: containers talk among themselves, nothing is forwarded
    // to or from any other link, nothing masqueraded.
    let (isub, _) = unique_subnets();
    let inet = format!("bi{}", std::process::id());
    d.ok(&[
        "network",
        "create",
        "-d",
        &p,
        "--ipam-driver",
        &p,
        "--internal",
        "--subnet",
        &isub,
        &inet,
    ]);
    let iid = d.ok(&["network", "inspect", "-f", "{{.Id}}", &inet]);
    let ibridge = format!("bd{}", &iid[..12]);
    let _ibridge_guard = LinkGuard::new(ibridge.clone());
    let irules = format!("docker-{}", &iid[..12]);
    let _irules_guard = NftNetworkGuard::new(irules.clone());
    for c in ["ia", "ib"] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            &inet,
            "bb:1",
            "sleep",
            "300",
        ]);
    }
    assert!(
        pings(&d, "ia", &net_addr(&d, "ib", &inet, "IPAddress")),
        "containers of an internal network cannot talk"
    );
    let chain = run_ok("nft", &["list", "table", "inet", "berth"]);
    assert!(
        chain.contains(&format!(
            "iifname \"{ibridge}\" oifname != \"{ibridge}\" drop"
        )),
        "{chain}"
    );
    d.ok(&["rm", "-f", "ia", "ib"]);
    d.ok(&["network", "rm", &inet]);

    d.ok(&["rm", "-f", "na", "nb"]);
    d.ok(&["network", "rm", &net]);
    assert!(!link_exists(&bridge), "bridge {bridge} left");
    assert_eq!(
        berth_nft_objects(&rules),
        Vec::<String>::new(),
        "rules of {rules} left"
    );
    let pools =
        std::fs::read_to_string(d.dir.path().join("state/ipam/pools.json")).unwrap_or_default();
    assert!(
        !pools.contains(&subnet),
        "pool {subnet} still held: {pools}"
    );
    let eps: Vec<_> = std::fs::read_dir(d.dir.path().join("state/endpoints"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(eps.is_empty(), "endpoint records left: {eps:?}");
}

/// The nodes holding a lease under `prefix` in the cluster (the `node` of
/// each lease record, sorted), read with the cluster's own etcdctl.
fn lease_nodes(cluster: &EtcdCluster, prefix: &str) -> Vec<String> {
    let out = cluster.etcdctl_ok(&[
        "--command-timeout=5s",
        "get",
        "--prefix",
        &format!("{prefix}/"),
        "-w",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl get: {e}: {out}"));
    let mut nodes: Vec<String> = v["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|kv| {
            let key = unb64(kv["key"].as_str().unwrap_or_default()).unwrap_or_default();
            String::from_utf8_lossy(&key).contains("/subnets/")
        })
        .map(|kv| {
            let value = unb64(kv["value"].as_str().unwrap_or_default()).unwrap_or_default();
            let lease: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
            lease["node"].as_str().unwrap_or("?").to_string()
        })
        .collect();
    nodes.sort();
    nodes
}

/// Every regular file under `dir` (recursively, symlinks not followed)
/// holding one of `needles`.
fn files_holding(dir: &Path, needles: &[Vec<u8>]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&path, needles));
        } else if meta.is_file() {
            let data = std::fs::read(&path).unwrap_or_default();
            if needles
                .iter()
                .any(|n| !n.is_empty() && data.windows(n.len()).any(|w| w == n.as_slice()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// A berth overlay network through the engine, shared with a host running
/// the berth-overlay CNI plugin: the Docker host (this namespace, berthd
/// as its agent) and a "remote host" namespace on a veth underlay lease
/// subnets of one cluster CIDR in a production-like etcd (a 3-member
/// cluster in the remote namespace, TLS with client-certificate auth, each
/// host with its own client certificate); a Docker container and the
/// remote CNI container reach each other across VXLAN; berthd killed and
/// restarted keeps the node's lease alive; `docker network rm` gives the
/// lease back and leaves no VXLAN device, bridge or pool. Bad overlay
/// options (a CA file that is not PEM, an option that does not exist) are
/// refused with nothing made, and berthd copies no key material into its
/// state or run directories.
#[test]
fn docker_engine_runs_berthd_overlay_networks() {
    let t0 = Instant::now();
    let mut d = Daemons::start();
    let p = d.plugin.clone();
    let pid = std::process::id();
    let vni = 3000 + pid % 4000;
    let (vxlan, bridge) = (format!("berth.{vni}"), format!("bov{vni}"));
    let _guards = (
        LinkGuard::new(vxlan.clone()),
        LinkGuard::new(bridge.clone()),
    );
    // The underlay: a veth from this namespace to the remote host's. The
    // remote end's first address is its VTEP address; the etcd members
    // listen on it and on two more of the same /24 there.
    let remote = TestNetns::new("dovr");
    let uplink = format!("bu{}", pid % 100000);
    let _uplink_guard = LinkGuard::new(uplink.clone());
    let k = 1 + pid % 250;
    let (here, there) = (format!("198.19.{k}.1"), format!("198.19.{k}.2"));
    let etcd_ips: Vec<std::net::IpAddr> = (2..=4)
        .map(|n| format!("198.19.{k}.{n}").parse().unwrap())
        .collect();
    run_ok(
        "ip",
        &[
            "link",
            "add",
            &uplink,
            "type",
            "veth",
            "peer",
            "name",
            "ovu",
            "netns",
            remote.name(),
        ],
    );
    run_ok(
        "ip",
        &["addr", "add", &format!("{here}/24"), "dev", &uplink],
    );
    run_ok("ip", &["link", "set", &uplink, "up"]);
    remote.sh(&format!(
        "ip link set lo up && ip addr add {there}/24 dev ovu && \
         ip addr add {}/24 dev ovu && ip addr add {}/24 dev ovu && ip link set ovu up",
        etcd_ips[1], etcd_ips[2]
    ));
    let pki = Pki::new("dovr");
    let members: Vec<(&TestNetns, std::net::IpAddr)> =
        etcd_ips.iter().map(|ip| (&remote, *ip)).collect();
    let cluster = EtcdCluster::start(&members, &pki);
    eprintln!(
        "etcd cluster of {} (TLS, client certificates) healthy in {:?}: {:?}",
        cluster.len(),
        cluster.started_in(),
        cluster.endpoints()
    );
    let endpoints = cluster.endpoints();
    let ca = pki.ca_file().to_str().unwrap().to_string();
    let host_cert = pki.client("docker-host");
    let remote_cert = pki.client("remote-host");
    let prefix = format!("/berth-test-{pid}");

    // The remote host: berth-overlay's agent and a CNI container.
    let remote_run = TempDir::new("dovr-run");
    let remote_conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": format!("vni{vni}"), "type": "berth-overlay",
        "network": "10.246.0.0/16", "subnetLen": 24, "vni": vni, "iface": "ovu", "node": "remote",
        "dataDir": remote_run.path().join("ipam"),
        "store": {"etcd": {
            "endpoints": endpoints, "prefix": prefix, "leaseTTL": 5,
            "caFile": ca, "certFile": remote_cert.cert, "keyFile": remote_cert.key,
        }}
    });
    std::fs::write(
        remote_run.path().join("agent.conf"),
        serde_json::to_vec(&remote_conf).unwrap(),
    )
    .unwrap();
    let remote_agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            remote.name(),
            "env",
            &format!("BERTH_RUN_DIR={}", remote_run.path().display()),
        ])
        .arg(bin("berth-overlay"))
        .args(["agent", "--conf"])
        .arg(remote_run.path().join("agent.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the remote agent");
    let _remote_agent = KillOnDrop(remote_agent);
    let cr = TestNetns::new("dovc");
    let added = run_cni_in(
        &remote,
        "berth-overlay",
        "ADD",
        "cr",
        &cr,
        remote_run.path(),
        &remote_conf,
    )
    .expect_ok()
    .clone();
    let remote_ip = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        lease_nodes(&cluster, &prefix),
        vec!["remote"],
        "the remote host's lease in etcd"
    );

    // Bad overlay options: refused, nothing made (no link, no lease).
    let vni_opt = format!("vni={vni}");
    let etcd_opt = format!("etcd={}", endpoints.join(","));
    let ca_opt = format!("etcd-ca={ca}");
    let cert_opt = format!("etcd-cert={}", host_cert.cert_str());
    let key_opt = format!("etcd-key={}", host_cert.key_str());
    let iface_opt = format!("iface={uplink}");
    let prefix_opt = format!("prefix={prefix}");
    let bad_files = TempDir::new("dovbad");
    let not_pem = bad_files.path().join("ca.txt");
    std::fs::write(&not_pem, "this is not a PEM certificate\n").unwrap();
    let not_pem_opt = format!("etcd-ca={}", not_pem.display());
    let tls: Vec<&str> = vec!["-o", &ca_opt, "-o", &cert_opt, "-o", &key_opt];
    // Everything a good network needs but the TLS files.
    let rest: Vec<&str> = vec![
        "--ipam-driver",
        &p,
        "--subnet",
        "10.246.0.0/16",
        "-o",
        "mode=overlay",
        "-o",
        &vni_opt,
        "-o",
        &etcd_opt,
        "-o",
        &prefix_opt,
        "-o",
        &iface_opt,
        "-o",
        "node=docker-host",
        "-o",
        "leaseTTL=5",
    ];
    for (args, says) in [
        (
            vec![
                "--ipam-driver",
                &p,
                "--subnet",
                "10.246.0.0/16",
                "-o",
                "mode=overlay",
                "-o",
                &vni_opt,
            ],
            "etcd",
        ),
        (
            [
                vec![
                    "--subnet",
                    "10.246.0.0/16",
                    "-o",
                    "mode=overlay",
                    "-o",
                    &vni_opt,
                    "-o",
                    &etcd_opt,
                ],
                tls.clone(),
            ]
            .concat(),
            "--ipam-driver",
        ),
        (
            [
                vec![
                    "--ipam-driver",
                    &p,
                    "--subnet",
                    "10.246.0.0/16",
                    "-o",
                    "mode=overlay",
                    "-o",
                    "vni=0",
                    "-o",
                    &etcd_opt,
                ],
                tls.clone(),
            ]
            .concat(),
            "vni",
        ),
        (
            vec![
                "--ipam-driver",
                &p,
                "--subnet",
                "10.246.0.0/16",
                "-o",
                "mode=bridge",
                "-o",
                &vni_opt,
            ],
            "mode=overlay",
        ),
        (
            vec![
                "--ipam-driver",
                &p,
                "--subnet",
                "10.246.0.0/16",
                "-o",
                "mode=mesh",
            ],
            "mode",
        ),
        // A CA file that is not PEM: berth-overlay's store key named.
        (
            [
                rest.clone(),
                vec!["-o", &not_pem_opt, "-o", &cert_opt, "-o", &key_opt],
            ]
            .concat(),
            "caFile",
        ),
        // No such option (a password goes in a file or berthd's config).
        (
            [rest.clone(), tls.clone(), vec!["-o", "etcd-password=x"]].concat(),
            "\"etcd-password\"",
        ),
    ] {
        let mut full = vec!["network", "create", "-d", &p];
        full.extend(args.iter().copied());
        full.push("ovbad");
        let out = d.docker(&full);
        assert!(
            !out.status.success() && text(&out).contains(says),
            "{args:?}: {}",
            text(&out)
        );
        eprintln!("refused as it should be: {}", text(&out).trim());
        assert!(
            !link_exists(&vxlan) && !link_exists(&bridge),
            "{args:?} left a link"
        );
        assert_eq!(
            lease_nodes(&cluster, &prefix),
            vec!["remote"],
            "{args:?} left a lease in etcd"
        );
    }
    assert!(
        !d.docker(&["network", "inspect", "ovbad"]).status.success(),
        "a refused network exists"
    );

    let mut good = vec!["network", "create", "-d", &p];
    good.extend(rest.iter().copied());
    good.extend(tls.iter().copied());
    good.push("ovnet");
    d.ok(&good);
    let ov_id = d.ok(&["network", "inspect", "-f", "{{.Id}}", "ovnet"]);
    // Its rules go even if the test fails before `docker network rm`.
    let _rules_guard = NftNetworkGuard::new(format!("docker-{}", &ov_id[..12]));
    assert!(
        link_exists(&vxlan) && link_exists(&bridge),
        "no {vxlan} or {bridge}"
    );
    assert_eq!(
        lease_nodes(&cluster, &prefix),
        vec!["docker-host", "remote"],
        "the Docker host's lease in etcd"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "oa",
        "--network",
        "ovnet",
        "bb:1",
        "sleep",
        "300",
    ]);
    let ip_a = net_addr(&d, "oa", "ovnet", "IPAddress");
    let gw = net_addr(&d, "oa", "ovnet", "Gateway");
    let node_net = ip_a.rsplit_once('.').unwrap().0.to_string();
    assert!(
        ip_a.starts_with("10.246.")
            && remote_ip.starts_with("10.246.")
            && !remote_ip.starts_with(&format!("{node_net}.")),
        "{ip_a} {remote_ip}"
    );
    assert_eq!(
        net_addr(&d, "oa", "ovnet", "IPPrefixLen"),
        "24",
        "the container's prefix is the node subnet's"
    );
    assert!(pings(&d, "oa", &gw), "oa cannot reach its gateway {gw}");
    assert!(
        pings(&d, "oa", &remote_ip),
        "the Docker container cannot reach the remote CNI container {remote_ip}"
    );
    assert_ping(&cr, &ip_a);
    let mtu = d.ok(&["exec", "oa", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu, "1450", "underlay 1500 minus 50");

    // berthd killed: the lease outlives it (TTL 5 s) only because the
    // restarted berthd keeps it alive.
    let docker_subnet = format!("{node_net}.0/24");
    let remote_routes = || remote.exec_ok(&["ip", "route", "show", &docker_subnet]);
    d.stop_berthd_hard();
    d.start_berthd();
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        !remote_routes().is_empty(),
        "the Docker host's lease expired after berthd's restart"
    );
    assert_eq!(
        lease_nodes(&cluster, &prefix),
        vec!["docker-host", "remote"],
        "the Docker host's lease in etcd after berthd's restart"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ob",
        "--network",
        "ovnet",
        "bb:1",
        "sleep",
        "300",
    ]);
    let ip_b = net_addr(&d, "ob", "ovnet", "IPAddress");
    let (b_to_remote, a_to_b) = (pings(&d, "ob", &remote_ip), pings(&d, "oa", &ip_b));
    assert!(
        b_to_remote && a_to_b,
        "a container started after berthd's restart cannot talk (ob -> remote {b_to_remote}, oa -> ob {a_to_b}); ob: {}\nhost routes: {}\nfdb: {}\nberthd log: {}",
        text(&d.docker(&["exec", "ob", "ip", "addr"])),
        run_ok("ip", &["route"]),
        run_ok("bridge", &["fdb", "show", "dev", &vxlan]),
        std::fs::read_to_string(d.dir.path().join("berthd.log")).unwrap_or_default()
    );

    // No key material in berthd's files: the network's record names the
    // key file, and nothing holds the key itself (its base64 lines, the
    // whole body, or its DER bytes).
    let key_pem = std::fs::read_to_string(&host_cert.key).unwrap();
    let body: Vec<&str> = key_pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    let joined = body.concat();
    let mut needles: Vec<Vec<u8>> = body
        .iter()
        .filter(|l| l.len() >= 16)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    needles.push(joined.clone().into_bytes());
    needles.push(unb64(&joined).expect("the key's body is base64"));
    let (state_dir, run_dir) = (d.dir.path().join("state"), d.dir.path().join("run"));
    assert!(
        !files_holding(&state_dir, &[host_cert.key_str().as_bytes().to_vec()]).is_empty(),
        "no file under {} records the network's keyFile (is this berthd's state dir?)",
        state_dir.display()
    );
    for dir in [&state_dir, &run_dir] {
        let holding = files_holding(dir, &needles);
        assert!(
            holding.is_empty(),
            "berthd copied the client key's material into {holding:?}"
        );
    }

    // docker network rm: the lease goes back at once, nothing is left.
    d.ok(&["rm", "-f", "oa", "ob"]);
    d.ok(&["network", "rm", "ovnet"]);
    assert!(
        !link_exists(&vxlan) && !link_exists(&bridge),
        "{vxlan} or {bridge} left"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !remote_routes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the remote host still routes to {docker_subnet}: the lease was not given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lease_nodes(&cluster, &prefix),
        vec!["remote"],
        "the Docker host's lease is still in etcd after docker network rm"
    );
    let pools =
        std::fs::read_to_string(d.dir.path().join("state/ipam/pools.json")).unwrap_or_default();
    assert!(!pools.contains("10.246.0.0"), "pool still held: {pools}");
    let agents: Vec<_> = std::fs::read_dir(d.dir.path().join("state/overlay"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(agents.is_empty(), "agent configs left: {agents:?}");

    run_cni_in(
        &remote,
        "berth-overlay",
        "DEL",
        "cr",
        &cr,
        remote_run.path(),
        &remote_conf,
    )
    .assert_ok();
    eprintln!("test took {:?}", t0.elapsed());
}

/// A child process killed (by PID) when dropped, even when a test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// firewall reloads on a Docker host (tests/tests/reconcile.rs does the same
// for the CNI plugins and `berth watch`)

/// What berthd must repair within.
const REPAIR_WITHIN: Duration = Duration::from_secs(1);
/// What a restarted berthd's first pass must repair within (its start
/// included).
const REPAIR_AT_START: Duration = Duration::from_secs(5);
/// A probe's connect timeout: a dropped SYN is not waited for (the next
/// probe, 20 ms later, is a new connection).
const PROBE_CONNECT: Duration = Duration::from_millis(200);
/// How long a connection that must fail (isolation) is given.
const BLOCKED_CONNECT: Duration = Duration::from_secs(1);
/// The published host port (`-p 8080:80`; the host namespace is the
/// test's, so any port is free there).
const HOST_PORT: u16 = 8080;
/// The TCP port of the service in the outside namespace, which containers
/// reach through the host's masquerade.
const FAR_PORT: u16 = 7070;

/// The ways the test takes berth's rules away behind berthd's back.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// `iptables -F DOCKER-USER` (Docker's FORWARD policy DROP stays).
    DockerUserFlushed,
    /// `nft delete table inet berth`.
    DeleteTable,
    /// The published port's element deleted from its map.
    DeleteElement,
    /// `nft flush ruleset`, as nftables.service's reload does.
    Flush,
    /// `nft -f` of the user's own ruleset file, which starts with `flush
    /// ruleset`, as most /etc/nftables.conf do.
    LoadUserFile,
}

/// The Docker host (a namespace of the test's, where dockerd and berthd
/// run), the machine outside it, and the test's containers' namespaces
/// and addresses. The namespaces are borrowed: they must outlive the
/// daemons (dropped first, so that `docker rm -f` still reaches dockerd
/// before the namespace's processes are killed).
struct FwFx<'a> {
    host: &'a TestNetns,
    outside: &'a TestNetns,
    link: OutsideLink,
    /// c1 (publishes HOST_PORT, serves PeerEcho on 80) and c2 on network
    /// A, c3 on network B.
    c1: NetnsPath,
    c2: NetnsPath,
    c3: NetnsPath,
    c1_ip: std::net::IpAddr,
    c2_ip: std::net::IpAddr,
    /// Network A's gateway (the bridge's address).
    gw: std::net::IpAddr,
    log: PathBuf,
    user_file: PathBuf,
}

impl FwFx<'_> {
    /// The published port from outside, to the host's IPv4 address on
    /// the link.
    fn published(&self) -> Result<String, String> {
        tcp_probe(
            self.outside,
            at(self.link.host_v4, HOST_PORT),
            PROBE_CONNECT,
        )
    }

    fn berthd_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many repairs berthd has logged since it (last) started.
    fn repairs(&self) -> usize {
        self.berthd_log()
            .lines()
            .filter(|l| l.contains("repaired"))
            .count()
    }

    /// berth's rules in the host's DOCKER-USER chain (`iptables -S`).
    fn docker_user_rules(&self) -> Vec<String> {
        let out = self.host.exec(&["iptables", "-S", "DOCKER-USER"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(berth_network::firewall::DOCKER_USER_COMMENT))
            .map(String::from)
            .collect()
    }

    /// The host's ruleset and berthd's log, for failure messages.
    fn diagnostics(&self) -> String {
        format!(
            "--- host ruleset ---\n{}--- berthd log ---\n{}--- end ---",
            String::from_utf8_lossy(&self.host.exec(&["nft", "list", "ruleset"]).stdout),
            self.berthd_log()
        )
    }

    /// Polls the published port from outside until it answers as it
    /// should; panics unless it does within `limit` of `since`. Returns
    /// the time it took.
    fn assert_port_back(&self, since: Instant, limit: Duration, what: &str) -> Duration {
        let want = echo_peer(self.link.out_v4);
        let took = poll_until(since, limit, || self.published() == want);
        eprintln!(
            "{what}: {}:{HOST_PORT} answered after {took:?}",
            self.link.host_v4
        );
        match took {
            Some(t) if t < limit => t,
            _ => panic!(
                "{what}: {}:{HOST_PORT} did not answer within {limit:?} (answered after \
                 {took:?}; now: {:?})\n{}",
                self.link.host_v4,
                self.published(),
                self.diagnostics()
            ),
        }
    }

    /// Polls berthd's log until it has more than `before` `repaired`
    /// lines (it writes them as the pass ends, just after the repair),
    /// and prints the new ones.
    fn assert_logs_a_repair(&self, before: usize, since: Instant, what: &str) {
        let took = poll_until(since, REPAIR_AT_START, || self.repairs() > before);
        assert!(
            took.is_some(),
            "{what}: berthd logged no `repaired` line\n{}",
            self.diagnostics()
        );
        for line in self
            .berthd_log()
            .lines()
            .filter(|l| l.contains("repaired"))
            .skip(before)
        {
            eprintln!("  berthd: {line}");
        }
    }

    /// Makes `d` happen in the host namespace. With `verify` (berthd
    /// stopped, so nothing races the listing) it also checks that what
    /// was taken away is gone.
    fn disrupt(&self, d: Disruption, verify: bool) {
        match d {
            Disruption::DockerUserFlushed => {
                self.host.exec_ok(&["iptables", "-F", "DOCKER-USER"]);
                if verify {
                    assert_eq!(self.docker_user_rules(), Vec::<String>::new());
                }
            }
            Disruption::DeleteTable => {
                self.host
                    .exec_ok(&["nft", "delete", "table", "inet", "berth"]);
            }
            Disruption::DeleteElement => {
                // `-p 8080:80` is on every address: the key has no
                // address, and the IPv4 map (`pm4-<profile>`, see
                // network/src/firewall/portmap.rs) holds it.
                let key = format!("tcp . {HOST_PORT}");
                let map = berth_maps_holding(Some(self.host), &key)
                    .into_iter()
                    .find(|m| m.starts_with("pm4-"))
                    .unwrap_or_else(|| panic!("no IPv4 map holds {key}\n{}", self.diagnostics()));
                self.host.exec_ok(&[
                    "nft",
                    "delete",
                    "element",
                    "inet",
                    "berth",
                    &map,
                    &format!("{{ {key} }}"),
                ]);
                if verify {
                    assert!(
                        berth_maps_holding(Some(self.host), &key).is_empty(),
                        "{key} is still in a map\n{}",
                        self.diagnostics()
                    );
                }
            }
            Disruption::Flush => {
                self.host.exec_ok(&["nft", "flush", "ruleset"]);
            }
            Disruption::LoadUserFile => {
                self.host
                    .exec_ok(&["nft", "-f", self.user_file.to_str().expect("UTF-8 path")]);
            }
        }
    }

    /// Everything that must work: c2 reaches c1 on their bridge; c1's
    /// connections out are masqueraded to the host's address; the
    /// published port answers from outside and from 127.0.0.1 on the
    /// host; c3 (network B) cannot reach c1.
    fn assert_everything_works(&self, what: &str) {
        let d = || self.diagnostics();
        assert_eq!(
            tcp_ask(&self.c2, at(self.c1_ip, 80)),
            echo_peer(self.c2_ip),
            "{what}: c2 to c1 on their bridge\n{}",
            d()
        );
        // The outside has no route to the containers' subnet: only the
        // masquerade lets a connection out and its replies back.
        assert_eq!(
            tcp_ask(&self.c1, at(self.link.out_v4, FAR_PORT)),
            echo_peer(self.link.host_v4),
            "{what}: c1 to {}:{FAR_PORT} outside, masqueraded\n{}",
            self.link.out_v4,
            d()
        );
        assert_eq!(
            tcp_ask(self.outside, at(self.link.host_v4, HOST_PORT)),
            echo_peer(self.link.out_v4),
            "{what}: {}:{HOST_PORT} from outside\n{}",
            self.link.host_v4,
            d()
        );
        // Via loopback the source is masqueraded to the bridge's address.
        assert_eq!(
            tcp_ask(self.host, at([127, 0, 0, 1].into(), HOST_PORT)),
            echo_peer(self.gw),
            "{what}: 127.0.0.1:{HOST_PORT} on the host\n{}",
            d()
        );
        let across = tcp_probe(&self.c3, at(self.c1_ip, 80), BLOCKED_CONNECT);
        assert!(
            across.is_err(),
            "{what}: c3 on another network reached c1 directly (isolation): {across:?}\n{}",
            d()
        );
    }
}

/// A Docker host whose firewall is reloaded under berthd: dockerd and
/// berthd run in a namespace of the test's (its ruleset and iptables are
/// the test's own) joined to an "outside" one, with Docker's DOCKER-USER
/// setup (FORWARD policy DROP), two berth networks, c1 publishing a port
/// (`-p 8080:80`) and c2 beside it on network A, c3 on network B. Each
/// disruption (DOCKER-USER flushed, `inet berth` deleted, the port's map
/// element deleted, `nft flush ruleset`, the user's `nft -f` file
/// starting with `flush ruleset`) breaks the published port while berthd
/// is stopped; the restarted berthd repairs it, and with berthd running
/// the port answers again within a second of the disruption. Each time
/// berthd logs the repair, and the bridge, masquerade, the published port
/// (outside and 127.0.0.1) and isolation all work; the user's table is
/// exactly what the file makes without berth.
///
/// DOCKER-USER goes first and the flushes last: a flush removes Docker's
/// iptables setup too (as it does on a real host until Docker restarts),
/// so the disruptions before them run under FORWARD policy DROP.
#[test]
fn a_berthd_network_survives_firewall_reloads() {
    require_root();
    let test_started = Instant::now();
    let host = TestNetns::new("dfwh");
    let outside = TestNetns::new("dfwo");
    let link = link_outside(&host, &outside);
    // Docker's setup, before berth's network (iptables is the nft backend
    // on Debian, so these are nftables changes too).
    host.sh("iptables -N DOCKER-USER && iptables -P FORWARD DROP && \
         iptables -A FORWARD -j DOCKER-USER");
    let mut d = Daemons::start_in(Some(&host));
    let p = d.plugin.clone();
    let pid = std::process::id();
    let (net_a, net_b) = (format!("fwa{pid}"), format!("fwb{pid}"));
    for net in [&net_a, &net_b] {
        let (subnet, _) = unique_subnets();
        d.ok(&[
            "network",
            "create",
            "-d",
            &p,
            "--ipam-driver",
            &p,
            "--subnet",
            &subnet,
            "-o",
            "mode=bridge",
            net,
        ]);
    }
    let publish = format!("{HOST_PORT}:80");
    for (c, net, extra) in [
        ("fw1", &net_a, vec!["-p", publish.as_str()]),
        ("fw2", &net_a, vec![]),
        ("fw3", &net_b, vec![]),
    ] {
        let mut args = vec!["run", "-d", "--name", c, "--network", net.as_str()];
        args.extend(extra);
        args.extend(["bb:1", "sleep", "300"]);
        d.ok(&args);
    }
    let sandbox = |c: &str| {
        NetnsPath(PathBuf::from(d.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.SandboxKey}}",
            c,
        ])))
    };
    let ip = |c: &str, net: &str, field: &str| -> std::net::IpAddr {
        let a = net_addr(&d, c, net, field);
        a.parse()
            .unwrap_or_else(|_| panic!("{c}'s {field} on {net}: {a:?}"))
    };
    let files = TempDir::new("dfwuser");
    let user_file = files.path().join("user.nft");
    std::fs::write(&user_file, USER_RULESET).expect("write the user's ruleset file");
    let fx = FwFx {
        c1: sandbox("fw1"),
        c2: sandbox("fw2"),
        c3: sandbox("fw3"),
        c1_ip: ip("fw1", &net_a, "IPAddress"),
        c2_ip: ip("fw2", &net_a, "IPAddress"),
        gw: ip("fw1", &net_a, "Gateway"),
        host: &host,
        outside: &outside,
        link,
        log: d.dir.path().join("berthd.log"),
        user_file,
    };
    let _svc = PeerEcho::start(&fx.c1, 80, 53);
    let _far = PeerEcho::start(fx.outside, FAR_PORT, FAR_PORT);
    let rules = fx.docker_user_rules();
    assert_eq!(
        rules.len(),
        1,
        "berthd's network did not add berth's exception to DOCKER-USER: {rules:?}"
    );
    // The port answers once the container runs (it does: PeerEcho is
    // already listening in its namespace).
    fx.assert_port_back(Instant::now(), REPAIR_AT_START, "after docker run");
    fx.assert_everything_works("after docker run");

    // What the file makes where berth is not: the user's table as it must
    // stay in the host namespace.
    let scratch = TestNetns::new("dfwscratch");
    scratch.exec_ok(&["nft", "-f", fx.user_file.to_str().unwrap()]);
    let user_table = scratch.exec_ok(&["nft", "list", "table", "inet", "user"]);

    let mut times = Vec::new();
    for dis in [
        Disruption::DockerUserFlushed,
        Disruption::DeleteTable,
        Disruption::DeleteElement,
        Disruption::Flush,
        Disruption::LoadUserFile,
    ] {
        // With berthd stopped the disruption breaks the port, and nothing
        // else puts it back.
        d.stop_berthd_hard();
        fx.disrupt(dis, true);
        let dead = fx.published();
        assert!(
            dead.is_err(),
            "{dis:?} with berthd stopped: the published port still answers: {dead:?}\n{}",
            fx.diagnostics()
        );

        // berthd's first pass, as it starts, repairs it.
        let started = Instant::now();
        d.start_berthd();
        let at_start = fx.assert_port_back(
            started,
            REPAIR_AT_START,
            &format!("{dis:?} while berthd was stopped"),
        );
        fx.assert_logs_a_repair(0, started, &format!("{dis:?} while berthd was stopped"));
        fx.assert_everything_works(&format!("{dis:?} repaired by berthd's start"));

        // With berthd running: back within a second.
        let before = fx.repairs();
        fx.disrupt(dis, false);
        let since = Instant::now();
        let took = fx.assert_port_back(
            since,
            REPAIR_WITHIN,
            &format!("{dis:?} with berthd running"),
        );
        fx.assert_logs_a_repair(before, since, &format!("{dis:?} with berthd running"));
        fx.assert_everything_works(&format!("after {dis:?} with berthd running"));
        match dis {
            Disruption::DockerUserFlushed => assert_eq!(
                fx.docker_user_rules().len(),
                1,
                "berth's rule in DOCKER-USER not put back exactly once: {:?}",
                fx.docker_user_rules()
            ),
            Disruption::LoadUserFile => assert_eq!(
                fx.host.exec_ok(&["nft", "list", "table", "inet", "user"]),
                user_table,
                "berthd changed the user's own table"
            ),
            _ => {}
        }
        times.push((dis, at_start, took));
    }
    let running = d
        .berthd
        .as_mut()
        .expect("berthd started")
        .try_wait()
        .expect("wait for berthd")
        .is_none();
    assert!(running, "berthd exited\n{}", fx.diagnostics());
    eprintln!("repair times (published port answering again from outside):");
    for (dis, at_start, took) in &times {
        eprintln!(
            "  {dis:?}: with berthd running {took:?}; by a restarted berthd {at_start:?} \
             (its start included)"
        );
    }
    eprintln!("test took {:?}", test_started.elapsed());
}
