//! The host modes' attachments (berth-host's `device` and `macvlan`):
//! one record per attachment that left something behind in the kernel (a
//! moved device, a macvlan child), so DEL, GC and `berth gc` can undo it
//! without the container's namespace or the ADD result, and `berth status`
//! can show it; and putting a moved device back on the host as it was.
//!
//! ```text
//! /run/berth/host/                    flock'ed while records change
//!   <network>/<16 hex of hash(containerID, ifname)>.json
//! ```
//! A record is written before the kernel is touched and removed only once
//! what it describes is undone, so a plugin killed at any point leaves a
//! record that DEL or GC acts on.

use berth_kernel::{AddressOptions, Handle, Link, Netns};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{kernel, Error, Kind, Result};

pub const DEFAULT_RUN_DIR: &str = "/run/berth/host";

/// What a device looked like on the host before ADD moved it, so DEL can
/// put it back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    pub name: String,
    /// Its ifindex, kept across moves unless taken in the other namespace.
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
    /// Its alias before berth used the alias to carry `name`.
    pub alias: Option<String>,
    /// Its addresses (moving a link to another namespace drops them).
    pub addresses: Vec<IpNet>,
    /// Routes of the main table through it (they go with the addresses).
    #[serde(default)]
    pub routes: Vec<SavedRoute>,
    /// A virtual link (veth, macvlan, ...) dies with a deleted namespace; a
    /// physical one returns to the host.
    #[serde(default)]
    pub virtual_link: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// "device" or "macvlan".
    pub mode: String,
    /// A macvlan's master (records of a berth before it kept it: None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// The kernel boot this record describes: where /run outlives a reboot
    /// (it is ext4 on some hosts), a record from another boot is stale.
    pub boot_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<SavedDevice>,
}

impl Record {
    pub fn is_current(&self) -> bool {
        self.boot_id == boot_id()
    }
}

pub use store::host::boot_id;

/// The record's file name: fixed length whatever the IDs, and distinct for
/// distinct (container ID, ifname) pairs.
pub fn attachment_key(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{what} {}: {e}", path.display()))
}

pub struct State {
    root: PathBuf,
}

/// Held while records change; released on drop.
pub struct Lock {
    _held: nix::fcntl::Flock<fs::File>,
}

impl State {
    /// The run dir, overridable with BERTH_RUN_DIR (tests use private ones).
    pub fn from_env() -> State {
        State {
            root: std::env::var_os("BERTH_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        }
    }

    /// Serialises changes of records across processes: two ADDs that claim
    /// the same device see each other's record.
    pub fn lock(&self) -> Result<Lock> {
        store::file::lock_dir(&self.root)
            .map(|held| Lock { _held: held })
            .map_err(|e| Error::new(Kind::Io, e.to_string()))
    }

    fn path(&self, network: &str, key: &str) -> PathBuf {
        self.root.join(network).join(format!("{key}.json"))
    }

    pub fn write(&self, _lock: &Lock, network: &str, rec: &Record) -> Result<()> {
        let path = self.path(network, &attachment_key(&rec.container_id, &rec.ifname));
        let dir = self.root.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let data = serde_json::to_vec(rec)
            .map_err(|e| Error::new(Kind::Io, format!("encoding record: {e}")))?;
        write_atomic(&path, &data)
    }

    pub fn read(&self, network: &str, container_id: &str, ifname: &str) -> Option<Record> {
        let data = fs::read(self.path(network, &attachment_key(container_id, ifname))).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Removes the record, and the network's directory once it is empty.
    pub fn remove(
        &self,
        _lock: &Lock,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<()> {
        let p = self.path(network, &attachment_key(container_id, ifname));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &p, e)),
        }
        // Fails harmlessly while other records remain.
        let _ = fs::remove_dir(self.root.join(network));
        Ok(())
    }

    /// All readable records of one network.
    pub fn records(&self, network: &str) -> Vec<Record> {
        read_dir_records(&self.root.join(network))
    }

    /// The current record, in any network, of an attachment that holds the
    /// host device `name`.
    pub fn device_holder(&self, name: &str) -> Option<(String, Record)> {
        let networks = fs::read_dir(&self.root).ok()?;
        networks.flatten().find_map(|n| {
            let network = n.file_name().to_string_lossy().into_owned();
            read_dir_records(&n.path())
                .into_iter()
                .find(|r| r.is_current() && r.device.as_ref().is_some_and(|d| d.name == name))
                .map(|r| (network, r))
        })
    }

    /// Every network's records, each read or what is wrong with it
    /// (naming the file): the operator's view. Only record files count
    /// (`<16 hex>.json`): where BERTH_RUN_DIR puts the bridge attachments'
    /// state in the same dir, their files are not these.
    pub fn all(&self) -> Vec<(String, Vec<Result<Record>>)> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vec<Result<Record>>)> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let network = e.file_name().into_string().ok()?;
                let mut files: Vec<PathBuf> = fs::read_dir(e.path())
                    .ok()?
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| is_record_file(p))
                    .collect();
                files.sort();
                let recs: Vec<Result<Record>> = files
                    .iter()
                    .map(|p| {
                        let data = fs::read(p).map_err(|e| io_err("reading", p, e))?;
                        serde_json::from_slice(&data)
                            .map_err(|e| Error::new(Kind::Decode, format!("{}: {e}", p.display())))
                    })
                    .collect();
                (!recs.is_empty()).then_some((network, recs))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn is_record_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `berth gc`'s release of an attachment whose netns is gone: a moved
/// device that came back to the host is put back as it was (a virtual one
/// died with the namespace), a macvlan child died with it; then the record
/// goes.
pub fn release_gone(state: &State, network: &str, rec: &Record) -> Result<()> {
    if rec.is_current() {
        if let Some(saved) = &rec.device {
            restore_device(saved, &rec.ifname, None)?;
        }
    }
    let lock = state.lock()?;
    state.remove(&lock, network, &rec.container_id, &rec.ifname)
}

fn read_dir_records(dir: &Path) -> Vec<Record> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
        .collect()
}

/// [`store::file::write_atomic`], as the core's error.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    store::file::write_atomic(path, data).map_err(|e| Error::new(Kind::Io, e.to_string()))
}

/// Puts a device ADD moved into a container back on the host as `saved`
/// describes it: from the container's namespace `ns` if it still exists,
/// else where the kernel returned it (a virtual link that died with its
/// namespace leaves nothing to restore).
pub fn restore_device(saved: &SavedDevice, ifname: &str, ns: Option<&Netns>) -> Result<()> {
    let mut host = Handle::new().map_err(kernel)?;
    let mut moved_back = false;
    if let Some(ns) = ns {
        let mut cont = Handle::in_netns(ns).map_err(kernel)?;
        let ours = |l: &Link| l.alias.as_deref() == Some(saved.name.as_str());
        // By CNI_IFNAME, or by alias if the rename after the move failed.
        let link = match cont.link_by_name(ifname).map_err(kernel)?.filter(ours) {
            Some(l) => Some(l),
            None => cont.links().map_err(kernel)?.into_iter().find(ours),
        };
        if let Some(link) = link {
            let host_ns = Netns::current().map_err(kernel)?;
            let alias = saved.alias.as_deref().unwrap_or("");
            cont.move_link(link.index, &host_ns, &saved.name, Some(alias))
                .map_err(|e| {
                    Error::new(
                        Kind::Kernel,
                        format!("moving {ifname} back to the host as {:?}: {e}", saved.name),
                    )
                })?;
            moved_back = true;
        }
    }
    let on_host = if moved_back {
        host.link_by_name(&saved.name).map_err(kernel)?
    } else {
        find_returned(&mut host, saved)?
    };
    let Some(link) = on_host else {
        // A virtual link that died with its namespace: nothing to restore.
        return Ok(());
    };
    if link.name != saved.name {
        host.set_down(link.index).map_err(kernel)?;
        host.set_name(link.index, &saved.name).map_err(|e| {
            Error::new(
                Kind::Kernel,
                format!("renaming {} back to {:?}: {e}", link.name, saved.name),
            )
        })?;
    }
    if link.alias.as_deref() == Some(saved.name.as_str()) {
        host.set_alias(link.index, saved.alias.as_deref().unwrap_or(""))
            .map_err(kernel)?;
    }
    if link.mtu != saved.mtu {
        host.set_mtu(link.index, saved.mtu).map_err(kernel)?;
    }
    for addr in &saved.addresses {
        match host.add_address(link.index, *addr, &AddressOptions::default()) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    if saved.up && !link.admin_up {
        host.set_up(link.index).map_err(kernel)?;
    }
    // Best effort: the device is back whatever happens to a route (one
    // whose gateway is unreachable now must not make every DEL fail), and
    // routes the kernel derives from the addresses already exist.
    for r in &saved.routes {
        let mut route = berth_kernel::Route::new(r.dst);
        route.gateway = r.gateway;
        route.priority = r.metric;
        route.oif = Some(link.index);
        let _ = host.add_route(&route);
    }
    Ok(())
}

/// How long DEL waits for the kernel to return a physical link from a
/// deleted namespace: the namespace is torn down by a kernel worker after
/// its last reference goes, usually within milliseconds.
const RETURN_WAIT: Duration = Duration::from_secs(5);

/// The device on the host when DEL did not move it back itself: returned
/// by the kernel under its container name or dev<N> with the alias intact,
/// or moved back by a DEL that stopped before the end. None for a virtual
/// link that is nowhere: it died with its namespace. A physical one is
/// waited for, and is an error (the record stays) if it does not come back.
fn find_returned(host: &mut Handle, saved: &SavedDevice) -> Result<Option<Link>> {
    let deadline = Instant::now() + RETURN_WAIT;
    loop {
        let found = host.links().map_err(kernel)?.into_iter().find(|l| {
            l.alias.as_deref() == Some(saved.name.as_str())
                || (l.name == saved.name && l.index == saved.index)
        });
        if found.is_some() || saved.virtual_link {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                Kind::TryAgain,
                format!(
                    "physical device {:?} is neither in the container nor back on the host yet",
                    saved.name
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_length_and_distinct() {
        let a = attachment_key("c1", "eth0");
        assert_eq!(a.len(), 16);
        assert_eq!(a, attachment_key("c1", "eth0"));
        assert_ne!(a, attachment_key("c1", "eth1"));
        assert_ne!(attachment_key("c1e", "th0"), a);
    }

    #[test]
    fn records_round_trip_and_find_their_device_holder() {
        let root = std::env::temp_dir().join(format!("berth-host-state-{}", std::process::id()));
        let state = State { root: root.clone() };
        let lock = state.lock().unwrap();
        let dev = SavedDevice {
            name: "uplink1".into(),
            index: 7,
            mtu: 1400,
            up: true,
            alias: None,
            addresses: vec!["10.1.0.1/24".parse().unwrap()],
            routes: vec![],
            virtual_link: true,
        };
        let rec = Record {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            mode: "device".into(),
            master: None,
            boot_id: boot_id(),
            device: Some(dev),
        };
        state.write(&lock, "n1", &rec).unwrap();
        assert_eq!(state.read("n1", "c1", "eth0"), Some(rec.clone()));
        assert_eq!(state.records("n1"), vec![rec.clone()]);
        assert_eq!(
            state.device_holder("uplink1"),
            Some(("n1".to_string(), rec.clone()))
        );
        assert_eq!(state.device_holder("uplink2"), None);
        // A record from another boot holds nothing.
        let stale = Record {
            boot_id: "another-boot".into(),
            ..rec.clone()
        };
        state.write(&lock, "n1", &stale).unwrap();
        assert_eq!(state.device_holder("uplink1"), None);
        state.remove(&lock, "n1", "c1", "eth0").unwrap();
        assert_eq!(state.read("n1", "c1", "eth0"), None);
        assert!(!root.join("n1").exists());
        drop(lock);
        fs::remove_dir_all(&root).unwrap();
    }
}
