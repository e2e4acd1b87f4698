//! The operator's view of what berth holds on this host (`berth status`,
//! `berth ls containers`, `berth inspect`, `berth ports`): its networks,
//! their address ranges and how full they are, their attachments with
//! addresses and published ports, and whether the kernel still has what
//! the records describe.
//!
//! Everything here only reads. No lock is taken, so a plugin in the middle
//! of an ADD is never held up: the attachments log is read as one file (a
//! half-written line is skipped), each SQLite store in one read
//! transaction (WAL readers never block its writer). What cannot be read
//! is named in [`Inventory::problems`] with its path, and the rest is
//! still shown.
//!
//! Sources: the bridge attachments' records and the port store follow
//! BERTH_RUN_DIR as the plugins do; berth-ipam's stores are found under
//! the data dirs given (a config's `dataDir`, by default
//! /var/lib/berth/networks), one `<network>/ipam.db` each.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use store::{Allocation, Owner, RangeSetUse, Sandbox, StoreReader, DB_FILE};

/// berth-ipam's data dir when a config gives none.
pub use store::DEFAULT_DATA_DIR;

use crate::attachment::state::{boot_id, State};
use crate::bandwidth;
use crate::docker_records::{Records, DOCKER_IFNAME};
use crate::host_attachment;
use crate::overlay::record::{self, NodeRecord, RecordedPeer};
use crate::ports::{self, PortsOf};

/// Where to look for records besides the run dirs.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// berth-ipam data dirs, each holding `<network>/ipam.db`.
    pub data_dirs: Vec<PathBuf>,
    /// berthd's state dir, holding its records of the engine's networks
    /// and endpoints and its IPAM's pools.
    pub engine_state: Option<PathBuf>,
}

/// Everything berth holds on this host. Field names are the JSON schema
/// of `berth status -o json` (docs: cli/README.md).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// This boot's ID (records of other boots are stale).
    #[serde(rename = "bootID")]
    pub boot_id: String,
    pub networks: Vec<Network>,
    /// Records that could not be read, each naming its path and why.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// A bridge with its rules (berth-bridge's, berth-overlay's).
    Bridge,
    /// Addresses and ports only: berth-ipam or berth-portmap under a
    /// plugin that keeps no records of its own.
    Addresses,
    /// berth-host's `device` mode: host links moved into containers.
    Device,
    /// berth-host's `macvlan` mode: macvlan children of a host link.
    Macvlan,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
    /// The engine's network ID, for a network of berthd's (whose
    /// endpoints the engine deletes, not `berth gc`).
    #[serde(rename = "dockerNetworkID")]
    pub docker_network_id: Option<String>,
    /// The bridge, for a bridge network.
    pub bridge: Option<String>,
    /// A macvlan network's master (the host link its children hang off).
    pub master: Option<String>,
    /// The subnets its rules cover (masquerade, isolation).
    pub subnets: Vec<IpNet>,
    /// The data dir of its address store, if it has one.
    pub data_dir: Option<PathBuf>,
    /// How full each of its range sets is.
    pub ranges: Vec<RangeUse>,
    pub attachments: Vec<Attachment>,
    /// How many host ports its attachments publish.
    pub published_ports: usize,
    /// Whether the kernel has what the records describe.
    pub kernel: KernelMatch,
    /// For an overlay network whose node agent runs here: the node's
    /// lease and its peers, as the agent last recorded them.
    pub overlay: Option<OverlayNode>,
}

/// An overlay network's node, from its agent's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayNode {
    pub node: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    /// `etcd` or `static`.
    pub store: String,
    /// The lease's TTL, seconds since it was last renewed, and seconds it
    /// has left (etcd only; 0 left: expired, unless renewed since the
    /// record was written).
    #[serde(rename = "leaseTTL")]
    pub lease_ttl: Option<u64>,
    pub lease_age: Option<u64>,
    #[serde(rename = "ttlLeft")]
    pub ttl_left: Option<u64>,
    /// Whether the agent that wrote the record still runs.
    pub agent_running: bool,
    pub peers: Vec<RecordedPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeUse {
    /// The set's index in the config (None: imported allocations).
    pub range_set: Option<u32>,
    /// The set's ranges (None: not yet described by an allocation).
    pub label: Option<String>,
    pub used: u64,
    /// Addresses it may hand out, and of those, how many are free (None
    /// when not described yet).
    pub size: Option<u128>,
    pub free: Option<u128>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The host end of its veth (bridge networks).
    pub host_veth: Option<String>,
    /// A `device` attachment's host link (its name on the host).
    pub host_device: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<Port>,
    /// False when its host veth is gone from the kernel (what CHECK would
    /// report).
    pub in_kernel: bool,
    /// The network namespace its addresses were allocated for, and the
    /// boot they were allocated in (None: not recorded).
    pub netns: Option<String>,
    #[serde(rename = "bootID")]
    pub boot_id: Option<String>,
    /// Whether its container is still there (`berth gc` releases the
    /// stale ones), and what says so.
    pub state: Liveness,
    pub reason: String,
    /// Its rate limits as the kernel holds them; only read for `berth
    /// inspect` (see [`read_limits`]), and left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<bandwidth::Limits>,
}

/// Whether an attachment's container is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Its host veth is there, or its netns is.
    Live,
    /// Made in another boot, or its host veth or netns is gone.
    Stale,
    /// No record says where it lives (addresses and ports recorded before
    /// berth recorded netns paths): never released by `berth gc`.
    Unknown,
}

impl Liveness {
    /// Its name in the JSON and the tables.
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Stale => "stale",
            Liveness::Unknown => "unknown",
        }
    }
}

impl NetworkKind {
    /// Its name in the JSON and the tables.
    pub fn name(self) -> &'static str {
        match self {
            NetworkKind::Bridge => "bridge",
            NetworkKind::Addresses => "addresses",
            NetworkKind::Device => "device",
            NetworkKind::Macvlan => "macvlan",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub protocol: String,
    /// None: every address of the container address's family.
    #[serde(rename = "hostIP")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    #[serde(rename = "containerIP")]
    pub container_ip: IpAddr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelMatch {
    pub matches: bool,
    /// What the records name and the kernel lacks, one line each.
    pub missing: Vec<String>,
}

impl Inventory {
    /// The attachments of every network, in network then container order.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.networks.iter().flat_map(|n| n.attachments.iter())
    }

    /// The stale attachments `berth gc` may release: those of the CNI
    /// plugins' networks. berthd's endpoints are the engine's to delete
    /// (it sends DeleteEndpoint for each when it cleans up a sandbox).
    pub fn releasable(&self) -> impl Iterator<Item = &Attachment> {
        self.networks
            .iter()
            .filter(|n| n.docker_network_id.is_none())
            .flat_map(|n| n.attachments.iter())
            .filter(|a| a.state == Liveness::Stale)
    }
}

/// One network's address store, read.
struct AddressStore {
    data_dir: PathBuf,
    allocations: Vec<Allocation>,
    ranges: Vec<RangeSetUse>,
    sandboxes: Vec<(Owner, Sandbox)>,
}

/// Reads everything berth holds, and checks the kernel of the calling
/// process's network namespace for it.
pub fn gather(sources: &Sources) -> Inventory {
    let mut problems = Vec::new();
    let state = State::from_env();
    let stores = address_stores(&sources.data_dirs, &mut problems);
    let published = ports::published().unwrap_or_else(|e| {
        problems.push(format!("published ports: {e}"));
        Vec::new()
    });
    let mut by_network: BTreeMap<String, Vec<PortsOf>> = BTreeMap::new();
    for p in published {
        by_network
            .entry(p.owner.network.clone())
            .or_default()
            .push(p);
    }

    let mut networks: BTreeMap<String, Network> = BTreeMap::new();
    for (name, marker) in state.networks() {
        let mut n = empty(&name, NetworkKind::Bridge);
        n.bridge = Some(marker.bridge.clone());
        n.subnets = marker.subnets.clone();
        for (host_veth, record) in state.records(&name) {
            match record {
                Some(r) => n.attachments.push(Attachment {
                    network: name.clone(),
                    container_id: r.container_id,
                    ifname: r.ifname,
                    host_veth: Some(host_veth),
                    addresses: Vec::new(),
                    ports: Vec::new(),
                    ..unjudged(&name, "", "")
                }),
                None => problems.push(format!(
                    "network {name:?}: the record of {host_veth} cannot be read"
                )),
            }
        }
        sort_attachments(&mut n);
        networks.insert(name, n);
    }
    // berthd's overlay networks are named for the engine; their agents'
    // records by the overlay's own name.
    let mut overlay_names = BTreeMap::new();
    if let Some(dir) = &sources.engine_state {
        overlay_names = engine_networks(&Records::new(dir), &mut networks, &mut problems);
    }
    overlay_nodes(&overlay_names, &mut networks, &mut problems);
    host_mode_networks(&mut networks, &mut problems);
    for (name, s) in &stores {
        let n = networks
            .entry(name.clone())
            .or_insert_with(|| empty(name, NetworkKind::Addresses));
        n.data_dir = Some(s.data_dir.clone());
        n.ranges = range_uses(&s.ranges);
        for a in &s.allocations {
            attachment(n, &a.owner.container_id, &a.owner.ifname)
                .addresses
                .push(a.ip);
        }
        for (owner, sb) in &s.sandboxes {
            // Only owners that still hold addresses (a sandbox row goes
            // with them, but an older berth-ipam's release left its row).
            if let Some(a) = find(n, &owner.container_id, &owner.ifname) {
                a.netns = (!sb.netns.is_empty()).then(|| sb.netns.clone());
                a.boot_id = (!sb.boot_id.is_empty()).then(|| sb.boot_id.clone());
            }
        }
    }
    for (name, owners) in by_network {
        let n = networks
            .entry(name.clone())
            .or_insert_with(|| empty(&name, NetworkKind::Addresses));
        for p in owners {
            n.published_ports += p.mappings.len();
            let a = attachment(n, &p.owner.container_id, &p.owner.ifname);
            // The address store's record, where there is one, says first.
            if a.netns.is_none() {
                a.netns = p.netns;
            }
            a.ports.extend(p.mappings.iter().map(|m| Port {
                protocol: m.protocol.name().to_string(),
                host_ip: m.host_ip,
                host_port: m.host_port,
                container_ip: m.container_ip,
                container_port: m.container_port,
            }));
        }
    }
    let mut networks: Vec<Network> = networks.into_values().collect();
    let kernel_checked = check_kernel(&mut networks, &mut problems);
    let boot = boot_id();
    for n in &mut networks {
        for a in &mut n.attachments {
            a.addresses.sort();
            a.ports.sort_by_key(|p| (p.host_port, p.protocol.clone()));
            (a.state, a.reason) = judge(a, &boot, kernel_checked, netns_exists);
        }
    }
    Inventory {
        boot_id: boot,
        networks,
        problems,
    }
}

fn range_uses(ranges: &[RangeSetUse]) -> Vec<RangeUse> {
    ranges
        .iter()
        .map(|r| RangeUse {
            range_set: r.range_set,
            label: r.label.clone(),
            used: r.used,
            size: r.size,
            free: r.size.map(|s| s.saturating_sub(u128::from(r.used))),
        })
        .collect()
}

/// berthd's networks (named as their rules are, `docker-<short id>`, so
/// that their published ports join them) with their endpoints as
/// attachments: container ID the engine's endpoint ID, ifname `docker`,
/// netns the SandboxKey Join gave. Each network's ranges are those of the
/// pools of berthd's IPAM its gateways are in. Returns the engine's
/// overlay networks' names by their overlay names (their agents' records
/// go by those).
fn engine_networks(
    records: &Records,
    networks: &mut BTreeMap<String, Network>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut overlay_names = BTreeMap::new();
    let pools = address_stores(&[records.ipam_dir()], problems);
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for r in records.networks() {
        let d = match r {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("berthd's network record {e}"));
                continue;
            }
        };
        let name = d.rules_name();
        let n = networks
            .entry(name.clone())
            .or_insert_with(|| empty(&name, NetworkKind::Bridge));
        n.kind = NetworkKind::Bridge;
        n.bridge = Some(d.bridge.clone());
        if n.subnets.is_empty() {
            n.subnets = d.gateways.iter().map(IpNet::trunc).collect();
        }
        n.docker_network_id = Some(d.id.clone());
        if let Some(o) = d.overlay.as_ref().and_then(|o| o["name"].as_str()) {
            overlay_names.insert(o.to_string(), name.clone());
        }
        // One pool per address family, each a store of its own.
        let in_network = |p: &&AddressStore| {
            p.ranges.iter().any(|r| {
                r.label
                    .as_deref()
                    .and_then(|l| l.parse::<IpNet>().ok())
                    .is_some_and(|net| d.gateways.iter().any(|g| net.contains(&g.addr())))
            })
        };
        for p in pools.values().filter(in_network) {
            n.data_dir.get_or_insert_with(|| p.data_dir.clone());
            n.ranges.extend(range_uses(&p.ranges));
        }
        names.insert(d.id, name);
    }
    for r in records.endpoints() {
        let ep = match r {
            Ok(ep) => ep,
            Err(e) => {
                problems.push(format!("berthd's endpoint record {e}"));
                continue;
            }
        };
        let Some(n) = names
            .get(&ep.network)
            .and_then(|name| networks.get_mut(name))
        else {
            problems.push(format!(
                "berthd's endpoint {} names network {}, which berthd has no record of",
                ep.id, ep.network
            ));
            continue;
        };
        let a = attachment(n, &ep.id, DOCKER_IFNAME);
        a.addresses = ep
            .addresses
            .iter()
            .filter_map(|s| s.parse::<IpNet>().ok())
            .map(|net| net.addr())
            .collect();
        // The veth is made at Join: before it, nothing is in the kernel.
        a.host_veth = ep.sandbox_key.is_some().then(|| ep.host_veth.clone());
        a.netns = ep.sandbox_key;
    }
    overlay_names
}

/// berth-host's `device` and `macvlan` attachments, from its records.
fn host_mode_networks(networks: &mut BTreeMap<String, Network>, problems: &mut Vec<String>) {
    for (name, records) in host_attachment::State::from_env().all() {
        let n = networks
            .entry(name.clone())
            .or_insert_with(|| empty(&name, NetworkKind::Addresses));
        for r in records {
            let rec = match r {
                Ok(rec) => rec,
                Err(e) => {
                    problems.push(format!("network {name:?}: berth-host's record {e}"));
                    continue;
                }
            };
            match rec.mode.as_str() {
                "device" => n.kind = NetworkKind::Device,
                "macvlan" => {
                    n.kind = NetworkKind::Macvlan;
                    if rec.master.is_some() {
                        n.master = rec.master.clone();
                    }
                }
                other => problems.push(format!(
                    "network {name:?}: berth-host's record of {} has mode {other:?}",
                    rec.container_id
                )),
            }
            let a = attachment(n, &rec.container_id, &rec.ifname);
            a.host_device = rec.device.as_ref().map(|d| d.name.clone());
            // The address store's record, where there is one, says first.
            if a.netns.is_none() {
                a.netns = Some(rec.netns.clone());
                a.boot_id = Some(rec.boot_id.clone());
            }
        }
    }
}

/// The node agents' records, each on its network (added, with the
/// overlay's bridge, when no container is attached yet).
fn overlay_nodes(
    aliases: &BTreeMap<String, String>,
    networks: &mut BTreeMap<String, Network>,
    problems: &mut Vec<String>,
) {
    let now = record::now();
    for r in NodeRecord::all() {
        let rec = match r {
            Ok(rec) => rec,
            Err(e) => {
                problems.push(format!("overlay node record {e}"));
                continue;
            }
        };
        let name = aliases.get(&rec.network).unwrap_or(&rec.network).clone();
        let n = networks.entry(name.clone()).or_insert_with(|| {
            let mut n = empty(&name, NetworkKind::Bridge);
            n.bridge = Some(crate::overlay::bridge_name(rec.vni));
            n
        });
        n.overlay = Some(OverlayNode {
            lease_age: rec.lease_age(now),
            ttl_left: rec.ttl_left(now),
            agent_running: rec.agent_running(),
            node: rec.node,
            vni: rec.vni,
            subnet: rec.subnet,
            subnet6: rec.subnet6,
            store: rec.store,
            lease_ttl: rec.lease_ttl,
            peers: rec.peers,
        });
    }
}

fn sort_attachments(n: &mut Network) {
    n.attachments
        .sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
}

fn empty(name: &str, kind: NetworkKind) -> Network {
    Network {
        name: name.to_string(),
        kind,
        docker_network_id: None,
        bridge: None,
        master: None,
        subnets: Vec::new(),
        data_dir: None,
        ranges: Vec::new(),
        attachments: Vec::new(),
        published_ports: 0,
        kernel: KernelMatch {
            matches: true,
            missing: Vec::new(),
        },
        overlay: None,
    }
}

/// An attachment with nothing known of it yet.
fn unjudged(network: &str, container_id: &str, ifname: &str) -> Attachment {
    Attachment {
        network: network.to_string(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        host_veth: None,
        host_device: None,
        addresses: Vec::new(),
        ports: Vec::new(),
        in_kernel: true,
        netns: None,
        boot_id: None,
        state: Liveness::Unknown,
        reason: String::new(),
        limits: None,
    }
}

/// The network's attachment of (container, ifname), if it has one.
fn find<'a>(n: &'a mut Network, container_id: &str, ifname: &str) -> Option<&'a mut Attachment> {
    let at = n.attachments.binary_search_by(|a| {
        (a.container_id.as_str(), a.ifname.as_str()).cmp(&(container_id, ifname))
    });
    at.ok().map(|i| &mut n.attachments[i])
}

/// Fills in each attachment's rate limits from the kernel (berth-bandwidth's
/// qdiscs on its host end and its ifb): a few requests per attachment, so
/// only for the few `berth inspect` shows.
pub fn read_limits(attachments: &mut [Attachment]) -> Result<(), crate::Error> {
    let mut h = berth_kernel::Handle::new().map_err(crate::kernel)?;
    for a in attachments {
        let owner = bandwidth::Owner {
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        };
        a.limits = Some(bandwidth::applied(&mut h, &owner, a.host_veth.as_deref())?);
    }
    Ok(())
}

/// Whether the attachment's container is still there, and why berth
/// thinks so. In order: a boot ID recorded in another boot (after a reboot
/// everything is stale); the netns path recorded with its addresses; its
/// host veth, when the kernel was asked (a veth pair goes with the netns
/// its container end is in). The netns comes before the veth: a veth
/// deleted by hand while its container lives does not make the container
/// gone, and an ADD in progress has its netns before its veth.
fn judge(
    a: &Attachment,
    boot: &str,
    kernel_checked: bool,
    netns_exists: impl Fn(&str) -> bool,
) -> (Liveness, String) {
    if let Some(b) = &a.boot_id {
        if !boot.is_empty() && b != boot {
            return (
                Liveness::Stale,
                format!("its addresses were allocated in boot {b}, before this one ({boot})"),
            );
        }
    }
    if let Some(ns) = &a.netns {
        return if netns_exists(ns) {
            (Liveness::Live, format!("its netns {ns} is there"))
        } else {
            (Liveness::Stale, format!("its netns {ns} no longer exists"))
        };
    }
    match (&a.host_veth, kernel_checked) {
        (Some(veth), true) if a.in_kernel => {
            (Liveness::Live, format!("its host veth {veth} is there"))
        }
        (Some(veth), true) => (
            Liveness::Stale,
            format!("its host veth {veth} is gone, with its netns"),
        ),
        _ => (
            Liveness::Unknown,
            "no record says which netns it is in".to_string(),
        ),
    }
}

/// Whether `path` is a network namespace (a runtime's bind mount of one,
/// or a process's /proc/PID/ns/net): nsfs. A path left behind after its
/// namespace was unmounted is an ordinary file and does not count.
fn netns_exists(path: &str) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The network's attachment of (container, ifname), added if new. The
/// attachments are kept sorted by (container, ifname) so that this is a
/// binary search (1000 attachments with addresses and ports to merge).
fn attachment<'a>(n: &'a mut Network, container_id: &str, ifname: &str) -> &'a mut Attachment {
    let at = n.attachments.binary_search_by(|a| {
        (a.container_id.as_str(), a.ifname.as_str()).cmp(&(container_id, ifname))
    });
    let i = match at {
        Ok(i) => i,
        Err(i) => {
            n.attachments
                .insert(i, unjudged(&n.name, container_id, ifname));
            i
        }
    };
    &mut n.attachments[i]
}

/// Every `<dir>/<network>/ipam.db` under the data dirs, by network. A
/// network found in two data dirs is shown from the first, and the second
/// named as a problem.
fn address_stores(dirs: &[PathBuf], problems: &mut Vec<String>) -> BTreeMap<String, AddressStore> {
    let mut out: BTreeMap<String, AddressStore> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(format!("data dir {}: {e}", dir.display()));
                continue;
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(DB_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let db = dir.join(&name).join(DB_FILE);
            if let Some(first) = out.get(&name) {
                problems.push(format!(
                    "network {name:?} has address stores in {} and {}: showing the first",
                    first.data_dir.display(),
                    dir.display()
                ));
                continue;
            }
            match read_store(&db) {
                Ok(Some((allocations, ranges, sandboxes))) => {
                    out.insert(
                        name,
                        AddressStore {
                            data_dir: dir.clone(),
                            allocations,
                            ranges,
                            sandboxes,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("{}: {e}", db.display())),
            }
        }
    }
    out
}

type StoreContents = (Vec<Allocation>, Vec<RangeSetUse>, Vec<(Owner, Sandbox)>);

/// The store's contents (None: no store there yet); the error as text
/// for [`Inventory::problems`].
fn read_store(db: &Path) -> Result<Option<StoreContents>, String> {
    let text = |e: store::Error| e.to_string();
    let Some(r) = StoreReader::open(db).map_err(text)? else {
        return Ok(None);
    };
    Ok(Some((
        r.allocations().map_err(text)?,
        r.range_sets().map_err(text)?,
        r.sandboxes().map_err(text)?,
    )))
}

/// Marks what the kernel lacks: a bridge network's bridge, an
/// attachment's host veth. False if the kernel could not be asked.
fn check_kernel(networks: &mut [Network], problems: &mut Vec<String>) -> bool {
    // One dump of the links rather than a request per name: with 1000
    // attachments that is the difference between a few and some tens of
    // milliseconds.
    let links = berth_kernel::Handle::new().and_then(|mut h| h.links());
    let present: std::collections::HashSet<String> = match links {
        Ok(links) => links.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            problems.push(format!("the kernel cannot be asked (netlink): {e}"));
            for n in networks.iter_mut() {
                n.kernel.matches = false;
                n.kernel.missing.push("not checked: no netlink".into());
            }
            return false;
        }
    };
    for n in networks.iter_mut() {
        if let Some(br) = &n.bridge {
            if !present.contains(br) {
                n.kernel.missing.push(format!("bridge {br}"));
            }
        }
        if let Some(m) = &n.master {
            if !present.contains(m) {
                n.kernel.missing.push(format!("macvlan master {m}"));
            }
        }
        for a in &mut n.attachments {
            let Some(veth) = &a.host_veth else { continue };
            if !present.contains(veth) {
                a.in_kernel = false;
                n.kernel.missing.push(format!(
                    "host veth {veth} of container {} ({})",
                    a.container_id, a.ifname
                ));
            }
        }
        n.kernel.matches = n.kernel.missing.is_empty();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_merge_by_container_and_ifname() {
        let mut n = empty("n", NetworkKind::Addresses);
        attachment(&mut n, "c1", "eth0")
            .addresses
            .push("10.0.0.2".parse().unwrap());
        attachment(&mut n, "c1", "eth1");
        attachment(&mut n, "c1", "eth0")
            .addresses
            .push("fd00::2".parse().unwrap());
        attachment(&mut n, "a0", "eth0");
        assert_eq!(n.attachments.len(), 3);
        assert_eq!(n.attachments[0].container_id, "a0");
        assert_eq!(n.attachments[1].addresses.len(), 2);
        assert_eq!(n.attachments[1].network, "n");
        assert_eq!(n.attachments[2].ifname, "eth1");
    }

    #[test]
    fn the_json_schema_uses_cni_names() {
        let a = Attachment {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            host_veth: Some("bv1".into()),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            ports: vec![Port {
                protocol: "tcp".into(),
                host_ip: None,
                host_port: 8080,
                container_ip: "10.0.0.2".parse().unwrap(),
                container_port: 80,
            }],
            in_kernel: true,
            ..unjudged("n", "c", "eth0")
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["containerID"], "c");
        assert_eq!(v["hostVeth"], "bv1");
        assert_eq!(v["ports"][0]["hostPort"], 8080);
        assert_eq!(v["ports"][0]["containerIP"], "10.0.0.2");
        assert!(v["ports"][0]["hostIP"].is_null());
        assert_eq!(v["inKernel"], true);
        assert_eq!(v["state"], "unknown");
        assert!(v["bootID"].is_null());
    }

    #[test]
    fn staleness_goes_by_boot_then_netns_then_host_veth() {
        let alive = |p: &str| p == "/run/netns/alive";
        let judged = |a: &Attachment, checked| judge(a, "this-boot", checked, alive).0;
        let mut a = unjudged("n", "c", "eth0");
        assert_eq!(judged(&a, true), Liveness::Unknown);
        // Without a netns recorded, the host veth decides, when the
        // kernel said.
        a.host_veth = Some("bv1".into());
        a.in_kernel = false;
        assert_eq!(judged(&a, true), Liveness::Stale);
        assert_eq!(judged(&a, false), Liveness::Unknown);
        a.in_kernel = true;
        assert_eq!(judged(&a, true), Liveness::Live);
        // A recorded netns decides over the veth.
        a.netns = Some("/run/netns/gone".into());
        assert_eq!(judged(&a, true), Liveness::Stale);
        a.in_kernel = false;
        a.netns = Some("/run/netns/alive".into());
        assert_eq!(judged(&a, true), Liveness::Live);
        // Another boot's allocation is stale whatever else says.
        a.boot_id = Some("other-boot".into());
        let (l, why) = judge(&a, "this-boot", true, alive);
        assert_eq!(l, Liveness::Stale);
        assert!(
            why.contains("other-boot") && why.contains("this-boot"),
            "{why}"
        );
        a.boot_id = Some("this-boot".into());
        assert_eq!(judged(&a, true), Liveness::Live);
    }

    #[test]
    fn names_are_the_json_names() {
        for l in [Liveness::Live, Liveness::Stale, Liveness::Unknown] {
            assert_eq!(serde_json::to_value(l).unwrap(), l.name());
        }
        for k in [
            NetworkKind::Bridge,
            NetworkKind::Addresses,
            NetworkKind::Device,
            NetworkKind::Macvlan,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn a_netns_is_nsfs_not_a_path() {
        assert!(netns_exists("/proc/self/ns/net"));
        assert!(!netns_exists("/proc/self/status"));
        assert!(!netns_exists("/nonexistent/netns"));
    }
}
