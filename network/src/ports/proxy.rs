//! Published ports on `::1`. NAT cannot serve them: a connection from ::1
//! DNATed to a container leaves the host with the loopback source (IPv6
//! has no `route_localnet`), and the kernel drops it. So, as Docker's
//! userland proxy does, a small process per (protocol, port) listens on
//! `[::1]:hostPort` and relays to `[container]:containerPort`; the output
//! DNAT leaves `::1` alone so the connection reaches it.
//!
//! One process serves all of an attachment's `::1` ports (a thread each):
//! the publishing binary itself (berth-portmap) run as
//! `berth-portmap proxy --owner KEY PROTO:LISTEN=TARGET...`, in its own
//! session with no stdio, so it outlives the plugin. Nothing but its
//! command line ties it to the attachment: DEL and GC find and stop the
//! attachment's proxies by scanning `/proc` for KEY (only when the record
//! says it has any), so a plugin killed between spawning and recording
//! leaves nothing they can't find. The spawner waits for the proxy's first
//! line on a pipe (`ready`, or why it could not listen) to report a port
//! already in use as an error.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Kind};
use serde::{Deserialize, Serialize};

/// One `::1` port of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    pub protocol: String,
    pub host_port: u16,
    #[serde(rename = "containerIP")]
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// A relayed UDP client is forgotten after this long without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long a new TCP connection may take to reach the container.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the spawner waits for the proxy to say it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The command-line tag of an attachment's proxies.
pub fn owner_key(owner: &str) -> String {
    // FNV-1a, 64 bits: stable across versions, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("pm{h:016x}")
}

/// `PROTO:LISTEN=TARGET`, as the proxy's command line carries a port.
fn spec(p: &Proxy) -> String {
    let listen = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p.host_port);
    let target = SocketAddr::new(p.container_ip, p.container_port);
    format!("{}:{listen}={target}", p.protocol)
}

fn parse_spec(s: &str) -> Option<(String, SocketAddr, SocketAddr)> {
    let (proto, rest) = s.split_once(':')?;
    let (listen, target) = rest.split_once('=')?;
    Some((
        proto.to_string(),
        listen.parse().ok()?,
        target.parse().ok()?,
    ))
}

/// Starts the proxy of the attachment tagged `key` for `ports` and waits
/// until it listens on all of them. A port something else holds on ::1 is
/// code 103.
pub fn spawn(key: &str, ports: &[Proxy]) -> Result<(), Error> {
    if ports.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Kind::Io, format!("own executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["proxy", "--owner", key])
        .args(ports.iter().map(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the child leaves the plugin's
    // session so the runtime's signals to the plugin don't reach it.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(Kind::Io, format!("starting the ::1 proxy: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new(Kind::Io, "the ::1 proxy has no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    match line.trim() {
        "ready" => Ok(()),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let why = if other.is_empty() {
                "the ::1 proxy did not start".to_string()
            } else {
                other.to_string()
            };
            Err(Error::new(
                Kind::PortTaken,
                format!("published ports on ::1: {why}"),
            ))
        }
    }
}

/// The PIDs of the proxies of the attachment tagged `key`.
fn pids(key: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.get(1) == Some(&&b"proxy"[..])
            && args.get(2) == Some(&&b"--owner"[..])
            && args.get(3) == Some(&key.as_bytes())
            && args.first().is_some_and(|a| a.ends_with(b"berth-portmap"));
        if ours {
            found.push(pid);
        }
    }
    found
}

/// True if the attachment tagged `key` has its proxy running (CHECK).
pub fn running(key: &str) -> bool {
    !pids(key).is_empty()
}

/// Stops every proxy of the attachment tagged `key` (none is fine).
pub fn stop_all(key: &str) {
    let pids = pids(key);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // A killed relay holds its ports until it has exited: a new relay of
    // the same ports (a repeated ADD) must not bind before that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// True while `pid` runs: neither gone nor a zombie (whose sockets are
/// closed already).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The proxy process: `proxy --owner KEY PROTO:LISTEN=TARGET...`. Prints
/// `ready` once it listens on every port (or why it can't), then relays
/// until killed.
pub fn run(args: &[String]) -> ! {
    let specs: Option<Vec<_>> = match args {
        [flag, _key, specs @ ..] if flag == "--owner" && !specs.is_empty() => {
            specs.iter().map(|s| parse_spec(s)).collect()
        }
        _ => None,
    };
    let Some(specs) = specs else {
        std::process::exit(announce(
            "error: usage: berth-portmap proxy --owner KEY tcp|udp:LISTEN=TARGET...",
        ))
    };
    let mut relays: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    for (proto, listen, target) in specs {
        match bind(&proto, listen, target) {
            Ok(relay) => relays.push(relay),
            Err(e) => std::process::exit(announce(&format!("error: {proto} {listen}: {e}"))),
        }
    }
    announce("ready");
    let threads: Vec<_> = relays.into_iter().map(std::thread::spawn).collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

/// Tells the spawner how it went; after `ready` stdout goes to /dev/null
/// so the spawner's reader ends.
fn announce(line: &str) -> i32 {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if line != "ready" {
        return 1;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
    0
}

/// Listens on `listen`; the relay to run (forever) once every port is bound.
fn bind(
    proto: &str,
    listen: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<Box<dyn FnOnce() + Send>> {
    match proto {
        "tcp" => {
            let l = TcpListener::bind(listen)?;
            Ok(Box::new(move || serve_tcp(l, target)))
        }
        "udp" => {
            let s = UdpSocket::bind(listen)?;
            Ok(Box::new(move || serve_udp(s, target)))
        }
        other => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("protocol {other:?} is not relayed"),
        )),
    }
}

fn serve_tcp(listener: TcpListener, target: SocketAddr) {
    for client in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
                return;
            };
            let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                return;
            };
            let one_way = |mut from: TcpStream, mut to: TcpStream| {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            };
            let back = std::thread::spawn(move || one_way(u2, c2));
            one_way(client, upstream);
            let _ = back.join();
        });
    }
}

/// Each client address gets its own socket towards the container, so
/// replies find their way back; idle ones are dropped.
fn serve_udp(socket: UdpSocket, target: SocketAddr) {
    type Flows = Arc<Mutex<Vec<(SocketAddr, UdpSocket, Instant)>>>;
    let flows: Flows = Arc::new(Mutex::new(Vec::new()));
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let mut all = flows.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, _, seen)| seen.elapsed() < UDP_IDLE);
        let known = all.iter_mut().find(|(c, _, _)| *c == client);
        let upstream = match known {
            Some((_, up, seen)) => {
                *seen = Instant::now();
                up.try_clone().ok()
            }
            None => {
                let bind: SocketAddr = if target.is_ipv6() {
                    "[::]:0".parse()
                } else {
                    "0.0.0.0:0".parse()
                }
                .unwrap_or(target);
                let up = UdpSocket::bind(bind)
                    .and_then(|u| u.connect(target).map(|_| u))
                    .ok();
                if let Some(up) = &up {
                    let (reply, back, flows_ref) =
                        (up.try_clone(), socket.try_clone(), flows.clone());
                    if let (Ok(reply), Ok(back)) = (reply, back) {
                        let _ = reply.set_read_timeout(Some(UDP_IDLE));
                        std::thread::spawn(move || {
                            let mut b = vec![0u8; 65536];
                            while let Ok(n) = reply.recv(&mut b) {
                                let _ = back.send_to(&b[..n], client);
                            }
                            // Idle: forget the flow.
                            flows_ref
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .retain(|(c, _, _)| *c != client);
                        });
                    }
                    if let Ok(kept) = up.try_clone() {
                        all.push((client, kept, Instant::now()));
                    }
                }
                up
            }
        };
        drop(all);
        if let Some(up) = upstream {
            let _ = up.send(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_keys_are_stable_and_distinct() {
        assert_eq!(owner_key("net/c1/eth0"), owner_key("net/c1/eth0"));
        assert_ne!(owner_key("net/c1/eth0"), owner_key("net/c2/eth0"));
        assert!(owner_key("x").starts_with("pm") && owner_key("x").len() == 18);
    }

    #[test]
    fn specs_round_trip_and_sctp_is_not_relayed() {
        let p = Proxy {
            protocol: "udp".into(),
            host_port: 5353,
            container_ip: "fd00::2".parse().unwrap(),
            container_port: 53,
        };
        assert_eq!(spec(&p), "udp:[::1]:5353=[fd00::2]:53");
        assert_eq!(
            parse_spec(&spec(&p)),
            Some((
                "udp".to_string(),
                "[::1]:5353".parse().unwrap(),
                "[fd00::2]:53".parse().unwrap()
            ))
        );
        assert!(bind(
            "sctp",
            "[::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap()
        )
        .is_err());
    }
}
