//! Podman (Debian's podman 4.3, CNI backend, libcni) as a real CNI client.
//!
//! Each test gives podman a private world in a TempDir: its own
//! `containers.conf` (via `CONTAINERS_CONF`: runtime runc, cgroupfs, file
//! locks, tmp dir, the CNI `network_config_dir` holding just the test's
//! conflist, `cni_plugin_dirs` = berth's bin dir + /usr/lib/cni) and its own
//! image store (via `CONTAINERS_STORAGE_CONF`, vfs driver). A busybox image is
//! imported from busybox-static (no registry is reachable). Outside the
//! TempDir podman leaves only what any CNI runtime does: libcni's cache
//! entries under /var/lib/cni (removed on DEL; checked) and runc's state
//! under /run/runc (removed with the container). Two detached
//! containers run on the network; they must reach each other and the gateway
//! by address; after `podman rm` (which runs CNI DEL) nothing of theirs may be
//! left on the host: no bridge port, no netns, no libcni cache entry, no
//! address allocation, no firewall rule.
//!
//! The same test with the reference plugins (bridge + host-local) shows the
//! test itself is sound.
//!
//! cniVersion is 1.0.0: podman 4.3's libcni does not know 1.1.0 — berth's ADD
//! runs, then libcni fails with `unsupported CNI result version "1.1.0"`.
//!
//! Plugins inherit podman's environment (libcni passes it on), and the
//! cleanup podman that conmon runs when a container exits inherits it as
//! well; BERTH_RUN_DIR is removed from it so berth-bridge uses its default
//! /run/berth/bridge in every run. Assertions only look at this test's own
//! network's objects there.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

const IMAGE: &str = "localhost/bb:1";
/// What `podman` commands may take before they are killed (`timeout`).
const PODMAN_TIMEOUT_SECS: &str = "120";
/// berth-bridge's run dir when BERTH_RUN_DIR is not set.
const BERTH_DEFAULT_RUN_DIR: &str = "/run/berth/bridge";
/// libcni's result cache (podman 4.3 uses the default).
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

fn need_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: run ./scripts/test (as root), which installs the apt \
         packages the tests need (podman, runc, busybox-static, ...)"
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------
// a private podman

/// Podman with a private config, image store, tmp dir and CNI config dir,
/// all under one TempDir. On drop: removes every container of its store,
/// unmounts anything left mounted under the dir, then removes the dir.
struct Podman {
    dir: TempDir,
    conf: PathBuf,
    storage_conf: PathBuf,
    net_dir: PathBuf,
}

impl Podman {
    fn new(tag: &str) -> Self {
        need_tool("podman");
        need_tool("runc");
        need_tool("conmon");
        need_tool("tar");
        need_tool("unshare");
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox not found: run ./scripts/test, which installs busybox-static"
        );
        let dir = TempDir::new(tag);
        let p = |rel: &str| dir.path().join(rel);
        for d in ["net.d", "root", "runroot", "tmp", "volumes", "rootfs/bin"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        let q = |path: PathBuf| serde_json::to_string(path.to_str().unwrap()).unwrap();
        let conf = p("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [{}, {}]\n\
                 network_config_dir = {}\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"none\"\n\
                 lock_type = \"file\"\n\
                 tmp_dir = {}\n\
                 volume_path = {}\n",
                q(bin_dir()),
                q(PathBuf::from(REFERENCE_CNI_DIR)),
                q(p("net.d")),
                q(p("tmp")),
                q(p("volumes")),
            ),
        )
        .unwrap();
        let storage_conf = p("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                q(p("root")),
                q(p("runroot")),
            ),
        )
        .unwrap();
        let net_dir = p("net.d");
        let podman = Self {
            dir,
            conf,
            storage_conf,
            net_dir,
        };
        podman.import_busybox();
        podman
    }

    /// A one-layer image: /bin/busybox (static) and the applets the test uses.
    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ping", "ip", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.path().join("bb.tar");
        run_ok(
            "tar",
            &[
                "-C",
                rootfs.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        // Copying an image records blob digests in containers/image's
        // blob-info cache, for root always /var/lib/containers/cache (podman
        // 4.3 has no option for it). Import in a private mount namespace with
        // a tmpfs on /var/lib so the test leaves nothing there.
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs berth-test-varlib /var/lib && exec \"$@\"")
            .args(["sh", "timeout", PODMAN_TIMEOUT_SECS, "podman", "import"])
            .arg(&tar)
            .arg(IMAGE)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run unshare: {e}"));
        assert!(
            out.status.success(),
            "podman import failed ({}): {}",
            out.status,
            text(&out)
        );
        let images = self.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(
            images.lines().any(|l| l == IMAGE),
            "image not imported: {images}"
        );
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(PODMAN_TIMEOUT_SECS)
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .env_remove("BERTH_RUN_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run timeout podman: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`podman {}` failed ({}): {}",
            args.join(" "),
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn install_conflist(&self, conflist: &Value) {
        let name = conflist["name"].as_str().unwrap();
        std::fs::write(
            self.net_dir.join(format!("{name}.conflist")),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
    }

    fn inspect(&self, container: &str) -> Value {
        let out = self.ok(&["inspect", "--type", "container", container]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("podman inspect printed invalid JSON ({e}): {out}"));
        v[0].clone()
    }

    /// `ping -c1 -W2` from inside `container`, up to 3 tries.
    fn ping(&self, container: &str, addr: &str) {
        let mut last = String::new();
        for _ in 0..3 {
            let out = self.run(&["exec", container, "ping", "-c1", "-W2", addr]);
            if out.status.success() {
                return;
            }
            last = text(&out);
        }
        panic!("ping {addr} from container {container} failed: {last}");
    }

    /// Mount points under our dir (podman's shm mounts etc. if left over).
    fn mounts_under(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.path().display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        // Deepest first.
        v.sort_by_key(|m| std::cmp::Reverse(m.len()));
        v
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = self.run(&["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            eprintln!("warning: podman rm --all failed: {}", text(&out));
        }
        for m in self.mounts_under() {
            let c = std::ffi::CString::new(m.clone()).unwrap();
            // SAFETY: umount2 with a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!("warning: umount {m}: {}", std::io::Error::last_os_error());
            }
        }
        // self.dir (TempDir) removes the directory after this.
    }
}

/// Removes the named containers (`podman rm -f -t 0`) on drop, before the
/// bridge and firewall guards and the Podman store go.
struct Containers<'a> {
    podman: &'a Podman,
    names: Vec<String>,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = vec!["rm", "--force", "--ignore", "--time", "0"];
        args.extend(self.names.iter().map(String::as_str));
        let out = self.podman.run(&args);
        if !out.status.success() {
            eprintln!("warning: podman rm failed: {}", text(&out));
        }
    }
}

// ---------------------------------------------------------------------------
// what a container got

struct Attached {
    name: String,
    id: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    netns: String,
}

fn attached(podman: &Podman, name: &str, network: &str) -> Attached {
    let v = podman.inspect(name);
    let id = v["Id"]
        .as_str()
        .unwrap_or_else(|| panic!("no Id: {v}"))
        .to_string();
    let n = &v["NetworkSettings"]["Networks"][network];
    let parse = |key: &str| -> Ipv4Addr {
        n[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("container {name}: no IPv4 {key} on {network}: {v}"))
    };
    let netns = v["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        netns.starts_with("/run/netns/"),
        "container {name}: netns {netns:?}"
    );
    Attached {
        name: name.to_string(),
        id,
        ip: parse("IPAddress"),
        gateway: parse("Gateway"),
        netns,
    }
}

fn in_subnet(ip: Ipv4Addr, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn bridge_v4_addrs(bridge: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in ip_json(&["-4", "addr", "show", "dev", bridge])
        .as_array()
        .unwrap()
    {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            out.push(a["local"].as_str().unwrap().to_string());
        }
    }
    out
}

fn libcni_cache_entries(ids: &[&str]) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(LIBCNI_RESULTS) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| ids.iter().any(|id| f.contains(id)))
        .collect()
}

fn berth_allocations(data: &Path, network: &str) -> Vec<(IpAddr, String)> {
    let st = SqliteStore::open_existing(data, network)
        .unwrap_or_else(|e| panic!("open berth-ipam store: {e}"));
    let Some(mut st) = st else { return Vec::new() };
    let mut v: Vec<_> = st
        .list()
        .unwrap_or_else(|e| panic!("list berth-ipam store: {e}"))
        .into_iter()
        .map(|a| (a.ip, a.owner.container_id))
        .collect();
    v.sort();
    v
}

/// Files of host-local's store for `network` (dataDir/<network>/*).
fn host_local_files(data: &Path, network: &str) -> BTreeSet<String> {
    std::fs::read_dir(data.join(network))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Lines of `iptables-save` that mention any of `needles`.
fn iptables_lines_with(needles: &[String]) -> Vec<String> {
    let out = run("iptables-save", &[]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// the test, for both plugin sets

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plugins {
    Berth,
    Reference,
}

fn two_containers_then_nothing_left(plugins: Plugins) {
    require_root();
    let t0 = Instant::now();
    let tag = match plugins {
        Plugins::Berth => "pm-berth",
        Plugins::Reference => "pm-ref",
    };
    if plugins == Plugins::Berth {
        bin(IPAM_BIN);
    } else {
        for p in ["bridge", "host-local"] {
            assert!(
                Path::new(REFERENCE_CNI_DIR).join(p).is_file(),
                "{REFERENCE_CNI_DIR}/{p} not found: run ./scripts/test, which installs \
                 containernetworking-plugins"
            );
        }
    }

    // Dropped in reverse order: containers first, then firewall objects,
    // the bridge, the IPAM data and podman's store.
    let podman = Podman::new(tag);
    let data = TempDir::new(&format!("{tag}-ipam"));
    let network = unique_name("bpm", 32);
    let bridge = unique_name("bpm", IFNAMSIZ_MAX);
    let _bridge_guard = LinkGuard::new(bridge.clone());
    let _nft_guard = NftNetworkGuard::new(network.clone());
    let (subnet, _) = unique_subnets();

    let (plugin, ipam) = match plugins {
        Plugins::Berth => (BRIDGE_BIN, IPAM_BIN),
        Plugins::Reference => ("bridge", "host-local"),
    };
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": plugin,
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": ipam,
                "dataDir": data.path().to_str().unwrap(),
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    });
    podman.install_conflist(&conflist);

    let mut containers = Containers {
        podman: &podman,
        names: Vec::new(),
    };
    for _ in 0..2 {
        let name = unique_name("bpmc", 63);
        containers.names.push(name.clone());
        podman.ok(&[
            "run",
            "-d",
            "--network",
            &network,
            "--name",
            &name,
            IMAGE,
            "sleep",
            "300",
        ]);
    }
    let a = attached(&podman, &containers.names[0], &network);
    let b = attached(&podman, &containers.names[1], &network);
    let ids = [a.id.as_str(), b.id.as_str()];

    // What the plugins set up.
    for c in [&a, &b] {
        assert!(
            in_subnet(c.ip, &subnet),
            "{}: {} not in {subnet}",
            c.name,
            c.ip
        );
        assert!(Path::new(&c.netns).exists(), "{}: no {}", c.name, c.netns);
    }
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.gateway, b.gateway);
    assert!(
        bridge_v4_addrs(&bridge).contains(&a.gateway.to_string()),
        "gateway {} is not on bridge {bridge}: {:?}",
        a.gateway,
        bridge_v4_addrs(&bridge)
    );
    let ports = bridge_ports(&bridge);
    assert_eq!(ports.len(), 2, "ports of {bridge}: {ports:?}");
    match plugins {
        Plugins::Berth => {
            let mut want: Vec<String> = ids.iter().map(|id| bridge_host_veth(id, "eth0")).collect();
            want.sort();
            let mut got = ports.clone();
            got.sort();
            assert_eq!(got, want, "berth-bridge's host veths");
            let held = berth_allocations(data.path(), &network);
            let mut want: Vec<(IpAddr, String)> = [&a, &b]
                .iter()
                .map(|c| (IpAddr::V4(c.ip), c.id.clone()))
                .collect();
            want.sort();
            assert_eq!(held, want, "berth-ipam's allocations");
            assert!(
                !berth_nft_objects(&network).is_empty(),
                "ipMasq: no nftables objects for {network}"
            );
            let records = bridge_records(&Path::new(BERTH_DEFAULT_RUN_DIR).join(&network));
            assert_eq!(records.len(), 2, "{records:?}");
        }
        Plugins::Reference => {
            let files = host_local_files(data.path(), &network);
            for c in [&a, &b] {
                assert!(
                    files.contains(&c.ip.to_string()),
                    "host-local files: {files:?}"
                );
            }
            assert!(
                !iptables_lines_with(&[a.ip.to_string(), b.ip.to_string()]).is_empty(),
                "ipMasq: no iptables rule for the containers"
            );
        }
    }
    assert_eq!(libcni_cache_entries(&ids).len(), 2, "libcni cache");

    // Reachability by address, both ways, and the gateway.
    podman.ping(&a.name, &b.ip.to_string());
    podman.ping(&b.name, &a.ip.to_string());
    podman.ping(&a.name, &a.gateway.to_string());
    podman.ping(&b.name, &b.gateway.to_string());
    let t_up = t0.elapsed();

    // podman rm stops the containers and runs CNI DEL.
    let mut args = vec!["rm", "--force", "--time", "0"];
    args.extend(containers.names.iter().map(String::as_str));
    podman.ok(&args);
    containers.names.clear();
    assert_eq!(podman.ok(&["ps", "-aq"]).trim(), "", "containers left");

    // Nothing of theirs is left on the host.
    assert_eq!(
        bridge_ports(&bridge),
        Vec::<String>::new(),
        "ports of {bridge}"
    );
    for c in [&a, &b] {
        assert!(
            !Path::new(&c.netns).exists(),
            "{}: {} left",
            c.name,
            c.netns
        );
        if plugins == Plugins::Berth {
            let veth = bridge_host_veth(&c.id, "eth0");
            assert!(!link_exists(&veth), "{}: host veth {veth} left", c.name);
        }
    }
    assert_eq!(
        libcni_cache_entries(&ids),
        Vec::<String>::new(),
        "libcni cache"
    );
    match plugins {
        Plugins::Berth => {
            assert_eq!(
                berth_allocations(data.path(), &network),
                vec![],
                "berth-ipam still holds addresses"
            );
            assert_eq!(
                berth_nft_objects(&network),
                Vec::<String>::new(),
                "nftables objects of {network} left"
            );
            let dir = Path::new(BERTH_DEFAULT_RUN_DIR).join(&network);
            assert!(!dir.exists(), "berth-bridge state left: {}", dir.display());
        }
        Plugins::Reference => {
            let files = host_local_files(data.path(), &network);
            assert!(
                files
                    .iter()
                    .all(|f| f == "lock" || f.starts_with("last_reserved_ip.")),
                "host-local still holds addresses: {files:?}"
            );
            let mut needles = vec![a.ip.to_string(), b.ip.to_string()];
            needles.extend(ids.iter().map(|s| s.to_string()));
            assert_eq!(
                iptables_lines_with(&needles),
                Vec::<String>::new(),
                "iptables rules of the containers left"
            );
        }
    }
    eprintln!(
        "podman {plugins:?}: containers up and pinged after {:.2?}, all done after {:.2?}",
        t_up,
        t0.elapsed()
    );
}

#[test]
fn podman_containers_on_berth_network() {
    two_containers_then_nothing_left(Plugins::Berth);
}

#[test]
fn podman_containers_on_reference_network() {
    two_containers_then_nothing_left(Plugins::Reference);
}

/// `podman run -p` with berth-portmap chained after berth-bridge: the
/// container's HTTP service answers on the published port of the host's
/// loopback address (the only address the test publishes on), and after
/// `podman rm` nothing answers and the port's element is gone.
#[test]
fn podman_publishes_a_port_through_berth_portmap() {
    require_root();
    bin(IPAM_BIN);
    bin("berth-portmap");
    let podman = Podman::new("pm-ports");
    let data = TempDir::new("pm-ports-ipam");
    let network = unique_name("bpp", 32);
    let bridge = unique_name("bpp", IFNAMSIZ_MAX);
    let _bridge_guard = LinkGuard::new(bridge.clone());
    let _nft_guard = NftNetworkGuard::new(network.clone());
    let (subnet, _) = unique_subnets();
    podman.install_conflist(&json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {"type": BRIDGE_BIN, "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": IPAM_BIN, "dataDir": data.path().to_str().unwrap(),
                      "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "berth-portmap", "capabilities": {"portMappings": true}}
        ],
    }));
    // A port unlikely to be in use, spread by pid across parallel runs.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let element = format!("127.0.0.1 . tcp . {port}");
    let mut containers = Containers {
        podman: &podman,
        names: Vec::new(),
    };
    let name = unique_name("bppc", 63);
    containers.names.push(name.clone());
    podman.ok(&[
        "run", "-d", "--network", &network, "-p", &format!("127.0.0.1:{port}:80"), "--name", &name, IMAGE,
        "sh", "-c", "busybox mkdir -p /www && echo berth-portmap-ok > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let get = || -> Result<String, String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body)
    };
    // httpd needs a moment to listen after podman returns.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let answer = loop {
        match get() {
            Ok(body) if body.contains("berth-portmap-ok") => break Ok(body),
            other if Instant::now() > deadline => break other,
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    assert!(
        answer.is_ok(),
        "published port 127.0.0.1:{port}: {answer:?}"
    );
    let table = run_ok("nft", &["list", "table", "inet", "berth"]);
    assert!(
        table.contains(&element),
        "no element {element} in:\n{table}"
    );

    podman.ok(&["rm", "--force", "--time", "0", &name]);
    containers.names.clear();
    assert!(get().is_err(), "port {port} still answers after podman rm");
    let table = run("nft", &["list", "table", "inet", "berth"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        !table.contains(&element),
        "element {element} left:\n{table}"
    );
}
