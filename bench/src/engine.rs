//! `engine` part: berthd as the Docker engine's volume and network driver.
//!
//! * Protocol round trip: for V volumes, Create + Mount + Unmount + Remove
//!   over berthd's socket (one HTTP request each, as the engine sends
//!   them), timed per volume: median and p99, for managed and for
//!   size-limited (8M) volumes.
//! * Through the Docker engine: `docker volume create` + `docker run --rm
//!   -v VOL:/data` with `-d berth` and with `-d local`, alternating, on a
//!   private dockerd (no networking of its own; containers use
//!   `--network none`); median per volume and the ratio.
//! * `docker run --rm --network NET bb:1 true` on a berth bridge network
//!   and on one of the engine's own `bridge` driver, alternating; median
//!   and ratio.
//!
//! berthd and dockerd run with private roots in a temp dir and are
//! stopped (by PID) at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::report::{DockerNetwork, DockerVolumes, Engine, RoundTrip};
use crate::stats::{median, ms, ratio};
use crate::sys::{Proc, TempDir};

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One POST over a kept-alive connection; the `Err` of the answer, if any.
fn call(conn: &mut BufReader<UnixStream>, method: &str, body: &Value) -> Result<Value> {
    let body = format!("{body}\n");
    let head = format!("POST /VolumeDriver.{method} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nContent-Length: {}\r\n\r\n", body.len());
    let s = conn.get_mut();
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut status = String::new();
    conn.read_line(&mut status)?;
    let mut len = 0;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut buf = vec![0; len];
    conn.read_exact(&mut buf)?;
    let v: Value = serde_json::from_slice(&buf)?;
    if let Some(e) = v["Err"].as_str().filter(|e| !e.is_empty()) {
        bail!("{method}: {e}");
    }
    Ok(v)
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

fn start_berthd(berth_dir: &Path, dir: &Path, socket: &Path) -> Result<Proc> {
    let child = Command::new(berth_dir.join("berthd"))
        .arg("--root")
        .arg(dir.join("volumes"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", berth_dir.join("berthd").display()))?;
    let p = Proc(child);
    wait_for(|| UnixStream::connect(socket).is_ok(), "berthd")?;
    Ok(p)
}

/// Round trips over the socket: [median, p99] in ms for `opts`.
fn round_trips(socket: &Path, volumes: usize, opts: Value) -> Result<[Option<f64>; 2]> {
    let mut conn = BufReader::new(UnixStream::connect(socket)?);
    let mut samples = Vec::with_capacity(volumes);
    for i in 0..volumes {
        let name = format!("bench{i}");
        let t = Instant::now();
        call(&mut conn, "Create", &json!({"Name": name, "Opts": opts}))?;
        call(&mut conn, "Mount", &json!({"Name": name, "ID": "c"}))?;
        call(&mut conn, "Unmount", &json!({"Name": name, "ID": "c"}))?;
        call(&mut conn, "Remove", &json!({"Name": name}))?;
        samples.push(ms(t.elapsed()));
    }
    Ok([median(&samples), percentile(&samples, 0.99)])
}

struct Docker {
    sock: PathBuf,
}

impl Docker {
    fn run(&self, args: &[&str]) -> Result<Duration> {
        let t = Instant::now();
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run docker")?;
        if !out.status.success() {
            bail!(
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t.elapsed())
    }
}

fn start_dockerd(dir: &Path) -> Result<(Proc, Docker)> {
    let child = Command::new("/usr/sbin/dockerd")
        .args(berth_tests::image::private_dockerd_args(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start /usr/sbin/dockerd (Debian package docker.io)")?;
    let p = Proc(child);
    let d = Docker {
        sock: dir.join("docker.sock"),
    };
    wait_for(|| d.run(&["info"]).is_ok(), "dockerd")?;
    let rootfs = dir.join("rootfs/bin");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy("/bin/busybox", rootfs.join("busybox")).context("busybox-static")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("true"))?;
    let tar = dir.join("bb.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar of the busybox rootfs failed");
    }
    d.run(&["import", tar.to_str().context("path")?, "bb:1"])?;
    Ok((p, d))
}

pub fn engine(berth_dir: &Path, volumes: usize, docker_volumes: usize) -> Result<Engine> {
    let dir = TempDir::new("volumes")?;
    let plugin = format!("berth-bench{}", std::process::id());
    let socket = PathBuf::from(format!("/run/docker/plugins/{plugin}.sock"));
    let _berthd = start_berthd(berth_dir, dir.path(), &socket)?;
    eprintln!("volumes: {volumes} round trips over berthd's socket, managed and size-limited");
    let managed = round_trips(&socket, volumes, json!(null))?;
    let sized = round_trips(&socket, volumes, json!({"size": "8M"}))?;

    eprintln!("volumes: docker volume create + docker run -v, {docker_volumes} volumes per driver");
    let (dockerd, docker) = start_dockerd(dir.path())?;
    let mut samples: [Vec<f64>; 2] = Default::default();
    // One warm-up each, not counted.
    for i in 0..=docker_volumes {
        for (s, driver) in [plugin.as_str(), "local"].into_iter().enumerate() {
            let name = format!("v{s}-{i}");
            let t = docker.run(&["volume", "create", "-d", driver, &name])?
                + docker.run(&[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "-v",
                    &format!("{name}:/data"),
                    "bb:1",
                    "true",
                ])?;
            if i > 0 {
                samples[s].push(ms(t));
            }
            docker.run(&["volume", "rm", &name])?;
        }
    }
    eprintln!("engine: docker run on a berth network and on a bridge-driver network, {docker_volumes} each");
    let mut taken = Vec::new();
    let (s1, _) = crate::sys::free_subnets(&mut taken)?;
    let (s2, _) = crate::sys::free_subnets(&mut taken)?;
    let bnet = format!("bb{}", std::process::id());
    let dnet = format!("db{}", std::process::id());
    docker.run(&[
        "network",
        "create",
        "-d",
        &plugin,
        "--ipam-driver",
        &plugin,
        "--subnet",
        &s1,
        &bnet,
    ])?;
    docker.run(&["network", "create", "-d", "bridge", "--subnet", &s2, &dnet])?;
    let mut net_samples: [Vec<f64>; 2] = Default::default();
    let timed = (|| -> Result<()> {
        for i in 0..=docker_volumes {
            for (s, n) in [bnet.as_str(), dnet.as_str()].into_iter().enumerate() {
                let t = docker.run(&["run", "--rm", "--network", n, "bb:1", "true"])?;
                if i > 0 {
                    net_samples[s].push(ms(t));
                }
            }
        }
        Ok(())
    })();
    let _ = docker.run(&["network", "rm", &bnet, &dnet]);
    timed?;
    drop(dockerd);
    let _ = std::fs::remove_file(&socket);
    let [nb, nd] = net_samples.map(|v| median(&v));
    let [b, l] = samples.map(|v| median(&v));
    Ok(Engine {
        round_trip: RoundTrip {
            volumes,
            managed_median_ms: managed[0],
            managed_p99_ms: managed[1],
            sized_median_ms: sized[0],
            sized_p99_ms: sized[1],
        },
        docker: DockerVolumes {
            volumes: docker_volumes,
            berth_ms: b,
            local_ms: l,
            berth_over_local: ratio(b, l),
        },
        network: DockerNetwork {
            runs: docker_volumes,
            berth_ms: nb,
            bridge_driver_ms: nd,
            berth_over_bridge: ratio(nb, nd),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
