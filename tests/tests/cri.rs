//! containerd's CRI (Debian's containerd 1.6) driving the plugins exactly
//! as kubelet does: RunPodSandbox / PodSandboxStatus / StopPodSandbox /
//! RemovePodSandbox over containerd's gRPC socket (`berth_tests::cri`).
//! containerd's go-cni/libcni then runs the plugins from the test's own CNI
//! bin dir with the test's conflist, as on a Kubernetes node.
//!
//! Each test starts its own containerd (root, state, socket, bin and conf
//! dirs in temp dirs), so tests run in parallel and a restart touches only
//! its own pods. The berth bin dir holds only berth's binaries
//! (berth-bridge, berth-ipam, berth-portmap and `loopback`, which containerd
//! runs for every pod's `lo`); the reference one holds /usr/lib/cni's
//! bridge, host-local, portmap and loopback. Every test runs for both (the
//! reference run shows the test itself is sound), except where noted.
//!
//! Networks live in the real root namespace (that is where containerd runs
//! the plugins), so each test has a unique network name, bridge and subnets;
//! "the host's address" is on a veth the test makes to an "outside"
//! namespace of its own (10.250.x.y), and all traffic stays between the
//! test's namespaces and loopback. After RemovePodSandbox nothing of a pod
//! may be left: no veth, no address allocation (the IPAM dataDir is the
//! test's), no firewall rule or port element, no netns, no libcni cache
//! entry. containerd's CNI log lines are printed when a test fails.
//!
//! What containerd 1.6 does that the tests rely on: a failed RunPodSandbox
//! is torn down at once (CNI DEL of the whole conflist); when that DEL fails
//! too, containerd keeps the sandbox (state unknown, netns mounted) until a
//! StopPodSandbox's DEL succeeds, so the bad-input tests fix the conflist
//! and stop and remove it as kubelet would. RemovePodSandbox runs DEL a
//! second time, with an empty CNI_NETNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::cri::{
    ask, ping_in, serve_hi_in, Containerd, ContainerdOptions, CriClient, KillOnDrop, PodSpec,
    PodStatus,
};
use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

/// berth-bridge's run dir when BERTH_RUN_DIR is not set (containerd's
/// environment does not set it).
const BERTH_BRIDGE_RUN_DIR: &str = "/run/berth/bridge";
/// libcni's result cache (containerd 1.6 uses the default).
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";
/// How long leftovers that the kernel removes asynchronously (a veth whose
/// namespace just died) may take to go.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plugins {
    Berth,
    Reference,
}

impl Plugins {
    fn tag(self) -> &'static str {
        match self {
            Plugins::Berth => "b",
            Plugins::Reference => "r",
        }
    }

    /// (bridge, ipam, portmap) plugin types.
    fn types(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Plugins::Berth => (BRIDGE_BIN, IPAM_BIN, "berth-portmap"),
            Plugins::Reference => ("bridge", "host-local", "portmap"),
        }
    }

    /// The rate-limit plugin's type.
    fn shaper(self) -> &'static str {
        match self {
            Plugins::Berth => "berth-bandwidth",
            Plugins::Reference => "bandwidth",
        }
    }

    /// The binaries of the CNI bin dir: (name there, source).
    fn binaries(self) -> Vec<(&'static str, PathBuf)> {
        match self {
            Plugins::Berth => [
                BRIDGE_BIN,
                IPAM_BIN,
                "berth-portmap",
                "berth-bandwidth",
                "loopback",
            ]
            .into_iter()
            .map(|n| (n, bin(n)))
            .collect(),
            Plugins::Reference => ["bridge", "host-local", "portmap", "bandwidth", "loopback"]
                .into_iter()
                .map(|n| {
                    let p = Path::new(REFERENCE_CNI_DIR).join(n);
                    assert!(
                        p.is_file(),
                        "{} not found: run ./scripts/test, which installs containernetworking-plugins",
                        p.display()
                    );
                    (n, p)
                })
                .collect(),
        }
    }
}

/// A port for one test, distinct within this process and spread by pid.
fn unique_port() -> u16 {
    let n = u64::from(std::process::id()) * 64 + next_id();
    20000 + (n % 12000) as u16
}

fn in_subnet(ip: IpAddr, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    match (ip, net.parse::<IpAddr>().unwrap()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// the fixture: a network, a CNI bin and conf dir, a containerd

/// Fields drop in order: containerd first (it removes what pods are left
/// through CRI, so CNI DEL runs while the bin dir, IPAM data and network
/// still exist), then the dirs, then the firewall and bridge guards.
struct Fx {
    cd: Containerd,
    _ipt: IptablesGuard,
    plugins: Plugins,
    /// The conflist as the test wrote it first (and `fix_conflist` puts
    /// back).
    conflist: Value,
    network: String,
    bridge: String,
    v4: String,
    v6: String,
    data: TempDir,
    _bin: TempDir,
    conf: TempDir,
    _nft: NftNetworkGuard,
    _bridge: LinkGuard,
}

/// A pod as RunPodSandbox + PodSandboxStatus showed it.
#[derive(Debug, Clone)]
struct Pod {
    id: String,
    v4: IpAddr,
    v6: IpAddr,
    netns: PathBuf,
}

impl Fx {
    /// The default dual-stack conflist, containerd started, NetworkReady.
    fn new(plugins: Plugins, tag: &str) -> Fx {
        Fx::with_conf(plugins, tag, |c| c.to_string()).ready()
    }

    /// Waits for NetworkReady.
    fn ready(self) -> Fx {
        let fx = self;
        let (ready, why) = fx
            .client()
            .wait_network_ready(true, Duration::from_secs(10))
            .expect("Status");
        assert!(ready, "NetworkReady is false: {why}");
        fx
    }

    /// Like `new`, but the conflist file holds `conf(default conflist)`
    /// and NetworkReady is not checked.
    fn with_conf(plugins: Plugins, tag: &str, conf: impl FnOnce(Value) -> String) -> Fx {
        require_root();
        let tag = format!("{tag}-{}", plugins.tag());
        let bin_dir = TempDir::new(&format!("{tag}-bin"));
        for (name, src) in plugins.binaries() {
            std::os::unix::fs::symlink(&src, bin_dir.path().join(name)).unwrap();
        }
        let conf_dir = TempDir::new(&format!("{tag}-conf"));
        let data = TempDir::new(&format!("{tag}-ipam"));
        let network = unique_name("bcri", 32);
        let bridge = unique_name("bcri", IFNAMSIZ_MAX);
        let (v4, v6) = unique_subnets();
        let (br, ipam, portmap) = plugins.types();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {"type": br, "bridge": bridge, "isGateway": true, "ipMasq": true,
                 "ipam": {"type": ipam, "dataDir": data.path(),
                          "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
                {"type": portmap, "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            conf_dir.path().join(format!("10-{network}.conflist")),
            conf(conflist.clone()),
        )
        .unwrap();
        let cd = Containerd::start_with(
            &tag,
            ContainerdOptions::new(bin_dir.path(), conf_dir.path()).metrics(true),
        );
        Fx {
            cd,
            _ipt: IptablesGuard::new(network.clone()),
            plugins,
            conflist,
            _nft: NftNetworkGuard::new(network.clone()),
            _bridge: LinkGuard::new(bridge.clone()),
            network,
            bridge,
            v4,
            v6,
            data,
            _bin: bin_dir,
            conf: conf_dir,
        }
    }

    fn client(&self) -> CriClient {
        self.cd.client()
    }

    fn conflist_path(&self) -> PathBuf {
        self.conf
            .path()
            .join(format!("10-{}.conflist", self.network))
    }

    /// Puts the default conflist back, as an operator would (written
    /// aside and renamed: containerd reloads on the rename).
    fn fix_conflist(&self) {
        let tmp = self.conf.path().join("fixed.tmp");
        std::fs::write(&tmp, self.conflist.to_string()).unwrap();
        std::fs::rename(&tmp, self.conflist_path()).unwrap();
    }

    /// Runs a pod that must come up with an address of each family in the
    /// network's subnets and a netns.
    fn run_pod(&self, c: &mut CriClient, spec: &PodSpec) -> Pod {
        let id = c
            .run_pod(spec)
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {}", spec.name, e.message()));
        let st = c
            .pod_status(&id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {}", e.message()));
        self.pod_from(&st)
    }

    fn pod_from(&self, st: &PodStatus) -> Pod {
        assert!(st.ready, "pod {} not ready: {st:?}", st.id);
        let v4 = st
            .ip
            .unwrap_or_else(|| panic!("pod {}: no ip: {st:?}", st.id));
        assert!(
            in_subnet(v4, &self.v4),
            "pod {}: ip {v4} not in {}",
            st.id,
            self.v4
        );
        assert_eq!(
            st.additional_ips.len(),
            1,
            "pod {}: additional_ips {:?}",
            st.id,
            st.additional_ips
        );
        let v6 = st.additional_ips[0];
        assert!(
            in_subnet(v6, &self.v6),
            "pod {}: additional ip {v6} not in {}",
            st.id,
            self.v6
        );
        let netns = st
            .netns
            .clone()
            .unwrap_or_else(|| panic!("pod {}: no netns in the verbose info: {}", st.id, st.info));
        assert!(
            netns.exists(),
            "pod {}: {} does not exist",
            st.id,
            netns.display()
        );
        Pod {
            id: st.id.clone(),
            v4,
            v6,
            netns,
        }
    }

    fn gateway_v4(&self) -> IpAddr {
        subnet_host(&self.v4, 1)
    }

    fn gateway_v6(&self) -> IpAddr {
        subnet_host(&self.v6, 1)
    }

    /// What the plugins hold for these pods while they run.
    fn assert_attached(&self, pods: &[&Pod]) {
        let mut ports = bridge_ports(&self.bridge);
        ports.sort();
        assert_eq!(
            ports.len(),
            pods.len(),
            "ports of {}: {ports:?}",
            self.bridge
        );
        match self.plugins {
            Plugins::Berth => {
                let mut want: Vec<String> = pods
                    .iter()
                    .map(|p| bridge_host_veth(&p.id, "eth0"))
                    .collect();
                want.sort();
                assert_eq!(ports, want, "berth-bridge's host veths");
                let mut want: Vec<(IpAddr, String)> = pods
                    .iter()
                    .flat_map(|p| [(p.v4, p.id.clone()), (p.v6, p.id.clone())])
                    .collect();
                want.sort();
                assert_eq!(
                    berth_allocations(self.data.path(), &self.network),
                    want,
                    "berth-ipam's allocations"
                );
                assert!(
                    !berth_nft_objects(&self.network).is_empty(),
                    "ipMasq: no nftables objects for {}",
                    self.network
                );
            }
            Plugins::Reference => {
                let files = host_local_files(self.data.path(), &self.network);
                for p in pods {
                    for ip in [p.v4, p.v6] {
                        assert!(
                            files.contains(&ip.to_string()),
                            "host-local holds no {ip}: {files:?}"
                        );
                    }
                }
            }
        }
    }

    /// Nothing of `pods` (and of published `ports`) is left on the host
    /// once they are removed; waits up to SETTLE for what the kernel removes
    /// asynchronously.
    fn assert_nothing_left(&self, pods: &[&Pod], ports: &[u16]) {
        self.assert_nothing_left_of(pods, &[], ports)
    }

    /// [`assert_nothing_left`] for `pods` plus sandboxes known only by id
    /// (`others`: pods whose ADD failed).
    fn assert_nothing_left_of(&self, pods: &[&Pod], others: &[String], ports: &[u16]) {
        let mut ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        ids.extend(others.iter().map(String::as_str));
        let listed = self.client().list_pods().expect("ListPodSandbox");
        assert_eq!(
            listed,
            Vec::<String>::new(),
            "pods still listed by containerd"
        );
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = self.leftovers(pods, &ids, ports);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?}: left on the host after RemovePodSandbox:\n  {}",
                    self.plugins,
                    left.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            libcni_cache_entries(&ids),
            Vec::<String>::new(),
            "libcni cache entries left"
        );
        let mounts: Vec<String> = self
            .cd
            .mounts()
            .into_iter()
            .filter(|m| m.contains("/netns/"))
            .collect();
        assert_eq!(mounts, Vec::<String>::new(), "netns mounts left");
        let files: Vec<PathBuf> = std::fs::read_dir(self.cd.netns_dir())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(
            files,
            Vec::<PathBuf>::new(),
            "netns files left under containerd's state"
        );
        if self.plugins == Plugins::Berth {
            let records = bridge_records(&Path::new(BERTH_BRIDGE_RUN_DIR).join(&self.network));
            assert_eq!(
                records,
                Vec::<String>::new(),
                "berth-bridge attachment records left"
            );
        }
    }

    fn leftovers(&self, pods: &[&Pod], ids: &[&str], ports: &[u16]) -> Vec<String> {
        let mut left = Vec::new();
        if link_exists(&self.bridge) {
            let p = bridge_ports(&self.bridge);
            if !p.is_empty() {
                left.push(format!("ports of {}: {p:?}", self.bridge));
            }
        }
        for p in pods {
            if p.netns.exists() {
                left.push(format!("netns {}", p.netns.display()));
            }
        }
        for &port in ports {
            if let Ok(answer) = ask(([127, 0, 0, 1], port).into()) {
                left.push(format!("127.0.0.1:{port} still answers {answer:?}"));
            }
        }
        match self.plugins {
            Plugins::Berth => {
                for id in ids {
                    let veth = bridge_host_veth(id, "eth0");
                    if link_exists(&veth) {
                        left.push(format!("host veth {veth} of {id}"));
                    }
                }
                let held = berth_allocations(self.data.path(), &self.network);
                if !held.is_empty() {
                    left.push(format!("berth-ipam allocations {held:?}"));
                }
                let objs = berth_nft_objects(&self.network);
                if !objs.is_empty() {
                    left.push(format!("nftables objects {objs:?}"));
                }
                let table = nft_table_text();
                for &port in ports {
                    for line in table
                        .lines()
                        .filter(|l| l.contains(&format!("tcp . {port}")))
                    {
                        left.push(format!("nft element for port {port}: {}", line.trim()));
                    }
                    for pid in portmap_proxies(port) {
                        left.push(format!("berth-portmap proxy for port {port}: pid {pid}"));
                    }
                }
                let dir = Path::new(BERTH_BRIDGE_RUN_DIR).join(&self.network);
                if dir.exists() {
                    left.push(format!("berth-bridge state {}", dir.display()));
                }
            }
            Plugins::Reference => {
                let files = host_local_files(self.data.path(), &self.network);
                let held: Vec<&String> = files
                    .iter()
                    .filter(|f| *f != "lock" && !f.starts_with("last_reserved_ip."))
                    .collect();
                if !held.is_empty() {
                    left.push(format!("host-local allocations {held:?}"));
                }
                let mut needles: Vec<String> = pods
                    .iter()
                    .flat_map(|p| [p.v4.to_string(), p.v6.to_string()])
                    .collect();
                needles.extend(ports.iter().map(|p| format!("--dport {p} ")));
                needles.extend(ids.iter().map(|id| id.to_string()));
                needles.push(format!("name: \\\"{}\\\"", self.network));
                for l in iptables_lines_with(&needles) {
                    left.push(format!("iptables: {l}"));
                }
            }
        }
        left
    }

    /// Stops and removes pods as kubelet does; both calls must succeed.
    fn remove(&self, c: &mut CriClient, pods: &[&Pod]) {
        for p in pods {
            c.stop_pod(&p.id)
                .unwrap_or_else(|e| panic!("StopPodSandbox {}: {}", p.id, e.message()));
            c.remove_pod(&p.id)
                .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {}", p.id, e.message()));
        }
    }
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
fn host_local_files(data: &Path, network: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join(network))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Lines of `iptables-save` and `ip6tables-save` that mention a needle.
fn iptables_lines_with(needles: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for prog in ["iptables-save", "ip6tables-save"] {
        let o = run(prog, &[]);
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if needles.iter().any(|n| format!("{l} ").contains(n.as_str())) {
                out.push(l.to_string());
            }
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

fn nft_table_text() -> String {
    String::from_utf8_lossy(&run("nft", &["list", "table", "inet", BERTH_NFT_TABLE]).stdout)
        .into_owned()
}

/// berth-portmap's `::1` relays whose command line serves `port`.
fn portmap_proxies(port: u16) -> Vec<i32> {
    let needle = format!(":{port}=");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("berth-portmap"))
            && args.iter().any(|a| a.contains(&needle))
        {
            out.push(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// inside pods

/// `busybox ping` from the pod ([`ping_in`]).
fn ping(pod: &Pod, addr: IpAddr) -> Result<(), String> {
    ping_in(&pod.netns, addr)
}

fn assert_ping(pod: &Pod, addr: IpAddr) {
    if let Err(e) = ping(pod, addr) {
        panic!("ping {addr} from pod {} failed: {e}", pod.id);
    }
}

/// Every pod reaches every other over both families, the gateway (the
/// host's address on the bridge) and its own loopback.
fn assert_mesh(fx: &Fx, pods: &[&Pod]) {
    for a in pods {
        for b in pods {
            if a.id != b.id {
                assert_ping(a, b.v4);
                assert_ping(a, b.v6);
            }
        }
        assert_ping(a, fx.gateway_v4());
        assert_ping(a, fx.gateway_v6());
        // `lo` is up: containerd's loopback network ran.
        assert_ping(a, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ping(a, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}

/// "hi" on port 80 of the pod ([`serve_hi_in`]).
fn serve_hi(pod: &Pod) -> KillOnDrop {
    serve_hi_in(&pod.netns, pod.v4)
}

/// An "outside" namespace joined to the host by a veth the test made:
/// (namespace, host-side address, host-side link guard).
fn outside_link() -> (TestNetns, Ipv4Addr, LinkGuard) {
    let outside = TestNetns::new("cri-out");
    let idx = (u64::from(std::process::id()) * 64 + next_id()) % 16384;
    let (x, y) = ((idx / 64) as u8, ((idx % 64) * 4) as u8);
    let host = Ipv4Addr::new(10, 250, x, y + 1);
    let out = Ipv4Addr::new(10, 250, x, y + 2);
    let link = unique_name("bcro", IFNAMSIZ_MAX);
    let guard = LinkGuard::new(link.clone());
    run_ok(
        "ip",
        &[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            outside.name(),
        ],
    );
    run_ok("ip", &["addr", "add", &format!("{host}/30"), "dev", &link]);
    run_ok("ip", &["link", "set", &link, "up"]);
    outside.sh(&format!(
        "ip link set lo up && ip addr add {out}/30 dev eth0 && ip link set eth0 up"
    ));
    (outside, host, guard)
}

// ---------------------------------------------------------------------------
// 1 + 6: three pods, dual stack, then nothing left

fn three_pods_reach_each_other_and_the_host(plugins: Plugins) {
    let t0 = Instant::now();
    let fx = Fx::new(plugins, "mesh");
    let mut c = fx.client();
    let pods: Vec<Pod> = (0..3)
        .map(|i| fx.run_pod(&mut c, &PodSpec::new(format!("mesh{i}"))))
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let mut ips: Vec<IpAddr> = pods.iter().flat_map(|p| [p.v4, p.v6]).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "pods share addresses: {pods:?}");
    fx.assert_attached(&refs);
    assert_mesh(&fx, &refs);
    fx.remove(&mut c, &refs);
    fx.assert_nothing_left(&refs, &[]);

    // What containerd tells of the CNI work (what a benchmark reads): a
    // setup per pod in its debug log, and in its metrics a setup per pod
    // and two teardowns (StopPodSandbox's, then RemovePodSandbox's).
    let setups = fx.cd.cni_setup_durations();
    let mut logged: Vec<&str> = setups.iter().map(|(id, _)| id.as_str()).collect();
    logged.sort();
    let mut ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    assert_eq!(logged, ids, "CNI setups in containerd's log");
    let m = fx.cd.network_metrics().expect("containerd metrics");
    assert_eq!(m.plugin_setup.count, 3, "{m:?}");
    assert_eq!(m.plugin_teardown.count, 6, "{m:?}");
    assert_eq!(m.sandbox_create_network.count, 3, "{m:?}");
    eprintln!(
        "{plugins:?}: CNI setup per pod (log) {:?}; metrics: setup mean {:.1?}, teardown mean {:.1?} ({} calls)",
        setups.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
        m.plugin_setup.mean(),
        m.plugin_teardown.mean(),
        m.plugin_teardown.count
    );
    eprintln!(
        "{plugins:?}: three pods up, pinged and removed in {:.2?}",
        t0.elapsed()
    );
}

#[test]
fn three_pods_reach_each_other_and_the_host_berth() {
    three_pods_reach_each_other_and_the_host(Plugins::Berth);
}

#[test]
fn three_pods_reach_each_other_and_the_host_reference() {
    three_pods_reach_each_other_and_the_host(Plugins::Reference);
}

// ---------------------------------------------------------------------------
// 2: hostPort

fn host_port_answers_on_loopback_and_the_host_address(plugins: Plugins) {
    let fx = Fx::new(plugins, "hostport");
    let (outside, host_addr, _link) = outside_link();
    let port = unique_port();
    let mut c = fx.client();
    let pod = fx.run_pod(&mut c, &PodSpec::new("web").tcp_port(port, 80));
    let server = serve_hi(&pod);

    assert_eq!(
        ask(([127, 0, 0, 1], port).into()),
        Ok("hi".into()),
        "hostPort {port} on 127.0.0.1"
    );
    assert_eq!(
        tcp_ask(&outside, (host_addr, port).into()),
        Ok("hi".into()),
        "hostPort {port} on the host's address {host_addr}, from outside"
    );

    // The server must go before the sandbox, or it keeps the netns alive.
    drop(server);
    fx.remove(&mut c, &[&pod]);
    assert!(
        tcp_ask(&outside, (host_addr, port).into()).is_err(),
        "hostPort still answers from outside"
    );
    fx.assert_nothing_left(&[&pod], &[port]);
}

#[test]
fn host_port_answers_on_loopback_and_the_host_address_berth() {
    host_port_answers_on_loopback_and_the_host_address(Plugins::Berth);
}

#[test]
fn host_port_answers_on_loopback_and_the_host_address_reference() {
    host_port_answers_on_loopback_and_the_host_address(Plugins::Reference);
}

// ---------------------------------------------------------------------------
// 3: StopPodSandbox after the netns is gone

fn stop_works_after_the_netns_is_gone(plugins: Plugins) {
    let fx = Fx::new(plugins, "nonetns");
    let mut c = fx.client();
    let pod = fx.run_pod(&mut c, &PodSpec::new("gone"));
    fx.assert_attached(&[&pod]);
    let path = std::ffi::CString::new(pod.netns.to_str().unwrap()).unwrap();
    // SAFETY: umount2 with a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        pod.netns.display(),
        std::io::Error::last_os_error()
    );
    std::fs::remove_file(&pod.netns).unwrap();
    fx.remove(&mut c, &[&pod]);
    if plugins == Plugins::Reference {
        // The reference bridge's DEL returns right after its IPAM DEL when
        // CNI_NETNS is empty, before tearing its ipMasq rules down: they
        // are all it leaves (berth leaves nothing). Check that, then
        // remove them to check the rest.
        let deadline = Instant::now() + SETTLE;
        let left = loop {
            let left = fx.leftovers(&[&pod], &[pod.id.as_str()], &[]);
            if left.iter().all(|l| l.starts_with("iptables: ")) || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            !left.is_empty()
                && left
                    .iter()
                    .all(|l| l.starts_with("iptables: ") && l.contains(&pod.id)),
            "expected only the reference bridge's ipMasq rules of {} to be left, found:\n  {}",
            pod.id,
            left.join("\n  ")
        );
        fx._ipt.clean();
    }
    fx.assert_nothing_left(&[&pod], &[]);
}

#[test]
fn stop_works_after_the_netns_is_gone_berth() {
    stop_works_after_the_netns_is_gone(Plugins::Berth);
}

#[test]
fn stop_works_after_the_netns_is_gone_reference() {
    stop_works_after_the_netns_is_gone(Plugins::Reference);
}

// ---------------------------------------------------------------------------
// 4: containerd restarted with pods running

fn pods_keep_their_network_across_a_containerd_restart(plugins: Plugins) {
    let mut fx = Fx::new(plugins, "restart");
    let mut c = fx.client();
    let pods: Vec<Pod> = (0..2)
        .map(|i| fx.run_pod(&mut c, &PodSpec::new(format!("rs{i}"))))
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    assert_mesh(&fx, &refs);

    drop(c);
    let old = fx.cd.pid();
    fx.cd.restart();
    assert_ne!(fx.cd.pid(), old);
    let mut c = fx.client();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady after restart: {why}");
    let mut listed = c.list_pods().expect("ListPodSandbox");
    listed.sort();
    let mut want: Vec<String> = pods.iter().map(|p| p.id.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "pods after the restart");
    for p in &pods {
        let st = c.pod_status(&p.id).expect("PodSandboxStatus");
        let again = fx.pod_from(&st);
        assert_eq!(
            (again.v4, again.v6, &again.netns),
            (p.v4, p.v6, &p.netns),
            "pod {} after the restart",
            p.id
        );
    }
    fx.assert_attached(&refs);
    assert_mesh(&fx, &refs);
    fx.remove(&mut c, &refs);
    fx.assert_nothing_left(&refs, &[]);
}

#[test]
fn pods_keep_their_network_across_a_containerd_restart_berth() {
    pods_keep_their_network_across_a_containerd_restart(Plugins::Berth);
}

#[test]
fn pods_keep_their_network_across_a_containerd_restart_reference() {
    pods_keep_their_network_across_a_containerd_restart(Plugins::Reference);
}

// ---------------------------------------------------------------------------
// the bandwidth annotations

/// A pod with `kubernetes.io/ingress-bandwidth: 10M` and
/// `kubernetes.io/egress-bandwidth: 50M`, its network's conflist chaining
/// the rate-limit plugin with the `bandwidth` capability (as k3s's default
/// conflist does): TCP both ways between the pod and an outside namespace
/// is within 10% of its limit, and a pod without the annotations on the
/// same network is not held. After RemovePodSandbox the pod's ifb is gone.
///
/// containerd sends the rates in bit/s with a burst of math.MaxUint32 bits
/// (512 MiB) each, which TCP at veth speed uses up within its first
/// second: the measurements leave out their first 2 s.
fn bandwidth_annotations_limit_the_pod(plugins: Plugins) {
    use berth_tests::bandwidth::{
        assert_above, assert_near, measure, redirect_targets, require_tools, tbf_rate, Flow,
        NetnsPath, Proto, Root,
    };
    const MBIT: u64 = 1_000_000;
    require_tools();
    let shaper = plugins.shaper();
    let fx = Fx::with_conf(plugins, "bw", |mut c| {
        c["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": shaper, "capabilities": {"bandwidth": true}}));
        c.to_string()
    })
    .ready();
    let (outside, host_addr, _link) = outside_link();
    let out_addr = IpAddr::V4(Ipv4Addr::from(u32::from(host_addr) + 1));
    let mut c = fx.client();
    let limited = fx.run_pod(
        &mut c,
        &PodSpec::new("bwlimited")
            .annotation("kubernetes.io/ingress-bandwidth", "10M")
            .annotation("kubernetes.io/egress-bandwidth", "50M"),
    );
    let free = fx.run_pod(&mut c, &PodSpec::new("bwfree"));
    fx.assert_attached(&[&limited, &free]);

    // The limited pod's host veth is the one bridge port with a redirect.
    let shaped: Vec<(String, Vec<String>)> = bridge_ports(&fx.bridge)
        .into_iter()
        .map(|p| {
            let to = redirect_targets(&Root, &p);
            (p, to)
        })
        .filter(|(_, to)| !to.is_empty())
        .collect();
    assert_eq!(shaped.len(), 1, "one shaped port: {shaped:?}");
    let (veth, to) = &shaped[0];
    assert_eq!(to.len(), 1, "{veth} redirects to one ifb: {to:?}");
    let ifb = to[0].clone();
    assert_eq!(tbf_rate(&Root, veth), Some(10 * MBIT), "{veth}'s tbf");
    assert_eq!(tbf_rate(&Root, &ifb), Some(50 * MBIT), "{ifb}'s tbf");

    let pod = NetnsPath(&limited.netns);
    let what = format!("{plugins:?} pod with annotations");
    let flow = |limit| Flow::limited(Proto::Tcp, limit).omitting(2);
    let r = measure(&pod, &outside, out_addr, &flow(10 * MBIT).reversed());
    assert_near(r, 10 * MBIT, &format!("{what}: tcp ingress"));
    let r = measure(&pod, &outside, out_addr, &flow(50 * MBIT));
    assert_near(r, 50 * MBIT, &format!("{what}: tcp egress"));
    let pod = NetnsPath(&free.netns);
    let what = format!("{plugins:?} pod without annotations");
    let flow = Flow::unlimited(Proto::Tcp);
    let r = measure(&pod, &outside, out_addr, &flow.clone().reversed());
    assert_above(r, 200 * MBIT, &format!("{what}: tcp ingress"));
    let r = measure(&pod, &outside, out_addr, &flow);
    assert_above(r, 200 * MBIT, &format!("{what}: tcp egress"));

    fx.remove(&mut c, &[&limited, &free]);
    fx.assert_nothing_left(&[&limited, &free], &[]);
    let gone = run("ip", &["link", "show", "dev", &ifb]);
    assert!(
        !gone.status.success(),
        "{ifb} is left after RemovePodSandbox"
    );
}

#[test]
fn bandwidth_annotations_limit_the_pod_berth() {
    bandwidth_annotations_limit_the_pod(Plugins::Berth);
}

#[test]
fn bandwidth_annotations_limit_the_pod_reference() {
    bandwidth_annotations_limit_the_pod(Plugins::Reference);
}

// ---------------------------------------------------------------------------
// 5 + 7: ADDs that fail, and what containerd shows of them

/// RunPodSandbox must fail; returns its error message.
fn run_pod_fails(fx: &Fx, c: &mut CriClient, spec: &PodSpec) -> String {
    match c.run_pod(spec) {
        Ok(id) => panic!(
            "{:?}: RunPodSandbox {} succeeded ({id}), expected an error",
            fx.plugins, spec.name
        ),
        Err(e) => {
            let err = e.message().to_string();
            eprintln!(
                "{:?}: RunPodSandbox {} failed: {err}",
                fx.plugins, spec.name
            );
            err
        }
    }
}

/// Sandboxes containerd kept after a failed RunPodSandbox. containerd 1.6
/// tears the network of a failed sandbox down at once (CNI DEL); when that
/// DEL fails too, it keeps the sandbox (state unknown, its netns mounted)
/// for kubelet to stop and remove later.
fn kept_sandboxes(c: &mut CriClient) -> Vec<String> {
    c.list_pods().expect("ListPodSandbox")
}

/// What an operator and kubelet do about kept sandboxes: put the good
/// conflist back, then StopPodSandbox (retried while containerd reloads its
/// CNI config, as kubelet retries) and RemovePodSandbox.
fn fix_and_clean_up(fx: &Fx, c: &mut CriClient, kept: &[String]) {
    fx.fix_conflist();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady after fixing the conflist: {why}");
    for id in kept {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.stop_pod(id) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    panic!("StopPodSandbox {id} after the fix: {}", e.message())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        c.remove_pod(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {}", e.message()));
    }
}

/// libcni replaces a plugin's `runtimeConfig` only when it has a
/// capability value to inject, so a conflist's own
/// `"runtimeConfig":{"portMappings":"oops"}` reaches portmap as is for a pod
/// without port mappings — after the bridge's ADD succeeded (an ADD that
/// fails part-way). The CNI error names the field and containerd shows it.
///
/// berth-portmap's DEL does not read the mappings (its record says what to
/// remove), so containerd's own cleanup DEL succeeds and nothing is left at
/// once. The reference portmap fails its DEL on the same config: containerd
/// keeps the sandbox until the conflist is fixed and kubelet stops it.
fn wrong_capability_type_fails_the_add_and_leaves_nothing(plugins: Plugins) {
    let fx = Fx::with_conf(plugins, "badcap", |mut c| {
        c["plugins"][1]["runtimeConfig"] = json!({"portMappings": "oops"});
        c.to_string()
    });
    let mut c = fx.client();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady: {why}");
    let err = run_pod_fails(&fx, &mut c, &PodSpec::new("badcap"));
    let (_, _, portmap) = plugins.types();
    assert!(err.contains("failed to setup network for sandbox"), "{err}");
    assert!(
        err.contains(&format!("plugin type=\"{portmap}\" failed (add)")),
        "the error names another plugin: {err}"
    );
    match plugins {
        Plugins::Berth => {
            assert!(
                err.contains("runtimeConfig.portMappings"),
                "the error does not name the field: {err}"
            );
            let kept = kept_sandboxes(&mut c);
            assert_eq!(
                kept,
                Vec::<String>::new(),
                "containerd's cleanup DEL failed: sandboxes kept"
            );
            fx.assert_nothing_left_of(&[], &[], &[]);
        }
        Plugins::Reference => {
            assert!(
                err.contains(".runtimeConfig.portMappings"),
                "the error does not name the field: {err}"
            );
            let kept = kept_sandboxes(&mut c);
            assert_eq!(
                kept.len(),
                1,
                "the reference portmap's DEL fails too: containerd keeps the sandbox"
            );
            let stop = c
                .stop_pod(&kept[0])
                .expect_err("StopPodSandbox with the bad conflist");
            assert!(
                stop.message().contains("failed (delete)"),
                "{}",
                stop.message()
            );
            fix_and_clean_up(&fx, &mut c, &kept);
            fx.assert_nothing_left_of(&[], &kept, &[]);
        }
    }
}

#[test]
fn wrong_capability_type_fails_the_add_and_leaves_nothing_berth() {
    wrong_capability_type_fails_the_add_and_leaves_nothing(Plugins::Berth);
}

#[test]
fn wrong_capability_type_fails_the_add_and_leaves_nothing_reference() {
    wrong_capability_type_fails_the_add_and_leaves_nothing(Plugins::Reference);
}

/// berth-portmap relays `[::1]:hostPort` itself; when that port is taken,
/// its ADD fails after the bridge's ADD (and after its own NAT elements),
/// containerd's cleanup DEL succeeds, and nothing of the pod stays. (The
/// reference portmap only writes iptables rules and never notices a bound
/// port: berth only.)
#[test]
fn host_port_in_use_fails_the_add_and_leaves_nothing_berth() {
    let fx = Fx::new(Plugins::Berth, "inuse");
    let port = unique_port();
    let taken = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)).expect("bind [::1]:port");
    let mut c = fx.client();
    let err = run_pod_fails(&fx, &mut c, &PodSpec::new("inuse").tcp_port(port, 80));
    assert!(
        err.contains("plugin type=\"berth-portmap\" failed (add)"),
        "{err}"
    );
    assert!(
        err.contains(&port.to_string()),
        "the error does not name the port: {err}"
    );
    let kept = kept_sandboxes(&mut c);
    assert_eq!(
        kept,
        Vec::<String>::new(),
        "containerd's cleanup DEL failed: sandboxes kept"
    );
    fx.assert_nothing_left_of(&[], &[], &[]);
    // Only now: while it was bound, "127.0.0.1 answers" would be ours.
    drop(taken);
    fx.assert_nothing_left_of(&[], &[], &[port]);
}

/// A conflist whose main plugin is not in the bin dir (a typo in `type`):
/// libcni's error names it, and nothing was set up. libcni's DEL cannot
/// find the plugin either, so containerd keeps the sandbox until the
/// conflist is fixed; then kubelet's StopPodSandbox and RemovePodSandbox
/// leave nothing.
fn missing_plugin_is_reported(plugins: Plugins) {
    let (br, _, _) = plugins.types();
    let typo = format!("{br}x");
    let fx = Fx::with_conf(plugins, "missing", |mut c| {
        c["plugins"][0]["type"] = json!(typo);
        c.to_string()
    });
    let mut c = fx.client();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady: {why}");
    let err = run_pod_fails(&fx, &mut c, &PodSpec::new("missing"));
    assert!(
        err.contains(&format!(
            "plugin type=\"{typo}\" failed (add): failed to find plugin \"{typo}\""
        )),
        "{err}"
    );
    assert!(!link_exists(&fx.bridge), "bridge {} created", fx.bridge);
    let kept = kept_sandboxes(&mut c);
    assert_eq!(
        kept.len(),
        1,
        "libcni cannot DEL through a missing plugin: containerd keeps the sandbox"
    );
    fix_and_clean_up(&fx, &mut c, &kept);
    fx.assert_nothing_left_of(&[], &kept, &[]);
}

#[test]
fn missing_plugin_is_reported_berth() {
    missing_plugin_is_reported(Plugins::Berth);
}

#[test]
fn missing_plugin_is_reported_reference() {
    missing_plugin_is_reported(Plugins::Reference);
}

/// A conflist that parses but whose bridge config has a wrong type
/// (`"mtu": "big"`): the plugin's CNI error names the field and nothing is
/// set up. If the plugin's DEL refuses the same config (the reference's
/// does), containerd keeps the sandbox until the conflist is fixed.
fn malformed_plugin_config_is_reported(plugins: Plugins) {
    let fx = Fx::with_conf(plugins, "badconf", |mut c| {
        c["plugins"][0]["mtu"] = json!("big");
        c.to_string()
    });
    let mut c = fx.client();
    let (ready, why) = c
        .wait_network_ready(true, Duration::from_secs(10))
        .expect("Status");
    assert!(ready, "NetworkReady: {why}");
    let err = run_pod_fails(&fx, &mut c, &PodSpec::new("badconf"));
    let (br, _, _) = plugins.types();
    assert!(
        err.contains(&format!("plugin type=\"{br}\" failed (add)")),
        "{err}"
    );
    assert!(
        err.contains("mtu"),
        "the error does not name the field: {err}"
    );
    assert!(
        !link_exists(&fx.bridge),
        "bridge {} created for a rejected config",
        fx.bridge
    );
    let kept = kept_sandboxes(&mut c);
    eprintln!(
        "{plugins:?}: mtu \"big\": {} sandbox(es) kept after the failed ADD",
        kept.len()
    );
    if !kept.is_empty() {
        fix_and_clean_up(&fx, &mut c, &kept);
    }
    fx.assert_nothing_left_of(&[], &kept, &[]);
}

#[test]
fn malformed_plugin_config_is_reported_berth() {
    malformed_plugin_config_is_reported(Plugins::Berth);
}

#[test]
fn malformed_plugin_config_is_reported_reference() {
    malformed_plugin_config_is_reported(Plugins::Reference);
}

/// A conflist file that is not JSON: containerd's CNI config does not load,
/// Status says why (naming the file), NetworkReady is false and
/// RunPodSandbox fails before any plugin runs ("cni plugin not
/// initialized"); containerd keeps the sandbox until the conflist is fixed.
/// No plugin is involved, so once, with berth's bin dir.
#[test]
fn unparsable_conflist_is_reported() {
    let fx = Fx::with_conf(Plugins::Berth, "unparsable", |c| {
        let text = c.to_string();
        text[..text.len() / 2].to_string()
    });
    let mut c = fx.client();
    let (ready, why) = c
        .wait_network_ready(false, Duration::from_secs(10))
        .expect("Status");
    assert!(!ready, "NetworkReady with an unparsable conflist: {why}");
    let st = c.status().expect("Status");
    let load = st
        .info
        .get("lastCNILoadStatus")
        .cloned()
        .unwrap_or_default();
    let file = fx.conflist_path();
    assert!(
        load.contains(file.to_str().unwrap()) && load.contains("error parsing configuration list"),
        "lastCNILoadStatus does not name {}: {load:?}",
        file.display()
    );
    let err = run_pod_fails(&fx, &mut c, &PodSpec::new("unparsable"));
    assert!(err.contains("cni plugin not initialized"), "{err}");
    assert!(!link_exists(&fx.bridge), "bridge {} created", fx.bridge);
    let kept = kept_sandboxes(&mut c);
    assert_eq!(kept.len(), 1, "sandboxes kept: {kept:?}");
    fix_and_clean_up(&fx, &mut c, &kept);
    fx.assert_nothing_left_of(&[], &kept, &[]);
}
