//! berth-host's runtime state: one record per attachment that left
//! something behind in the kernel (a moved device, a macvlan child), so DEL
//! and GC can undo it without the container's namespace or the ADD result.
//!
//! ```text
//! /run/berth/host/                    flock'ed while records change
//!   <network>/<16 hex of hash(containerID, ifname)>.json
//! ```
//! A record is written before the kernel is touched and removed only once
//! what it describes is undone, so a plugin killed at any point leaves a
//! record that DEL or GC acts on.

use cni::{codes, Error};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
    hex::encode(&h.finalize()[..8])
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(codes::IO, format!("{what} {}: {e}", path.display()))
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
    pub fn lock(&self) -> Result<Lock, Error> {
        store::file::lock_dir(&self.root)
            .map(|held| Lock { _held: held })
            .map_err(|e| Error::new(codes::IO, e.to_string()))
    }

    fn path(&self, network: &str, key: &str) -> PathBuf {
        self.root.join(network).join(format!("{key}.json"))
    }

    pub fn write(&self, _lock: &Lock, network: &str, rec: &Record) -> Result<(), Error> {
        let path = self.path(network, &attachment_key(&rec.container_id, &rec.ifname));
        let dir = self.root.join(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let data = serde_json::to_vec(rec)
            .map_err(|e| Error::new(codes::IO, format!("encoding record: {e}")))?;
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
    ) -> Result<(), Error> {
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
        networks.filter_map(Result::ok).find_map(|n| {
            let network = n.file_name().to_string_lossy().into_owned();
            read_dir_records(&n.path())
                .into_iter()
                .find(|r| r.is_current() && r.device.as_ref().is_some_and(|d| d.name == name))
                .map(|r| (network, r))
        })
    }
}

fn read_dir_records(dir: &Path) -> Vec<Record> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
        .collect()
}

/// [`store::file::write_atomic`], as a CNI error.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    store::file::write_atomic(path, data).map_err(|e| Error::new(codes::IO, e.to_string()))
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
