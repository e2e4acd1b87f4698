//! berth-bridge's runtime state under /run/berth/bridge. /run is usually a
//! tmpfs that vanishes at reboot together with the veths and nftables rules
//! described here; where it is not, the rules marker carries the boot ID.
//!
//! ```text
//! /run/berth/bridge/                 flock'ed while records or rules change
//!   <network>/attachments/<hostveth> {"containerID","ifname","bridge"}
//!   <network>/rules.json             what the network's nftables rules cover
//!                                    (and in which boot)
//! ```
//! An attachment record is written before anything is created for it, so a
//! plugin killed at any point leaves a record that DEL or GC acts on. The
//! network's nftables rules are installed by the first ADD (one nft call)
//! and removed by the DEL or GC that removes the last record.

use cni::{codes, Error};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const DEFAULT_RUN_DIR: &str = "/run/berth/bridge";
/// Locked (as a directory) around every change of records and rules.
const LOCK_DIR: &str = "/run/berth";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub bridge: String,
}

/// What the network's installed nftables rules cover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesMarker {
    pub bridge: String,
    pub subnets: Vec<IpNet>,
    /// The kernel boot the rules were installed in. nftables rules die with
    /// a reboot; the run dir does too when it is a tmpfs, but not on hosts
    /// where /run is a plain directory, so a marker from another boot must
    /// not vouch for rules.
    #[serde(default)]
    pub boot_id: String,
    /// Whether the rules isolate the network (markers written before the
    /// key existed had no isolation rules).
    #[serde(default)]
    pub isolation: bool,
    /// The links whose connections into the bridge are accepted.
    #[serde(default)]
    pub uplinks: Vec<String>,
}

/// This boot's ID (random per boot, from the kernel).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(codes::IO, format!("{what} {}: {e}", path.display()))
}

pub struct State {
    root: PathBuf,
}

/// Held while records or rules change; released on drop (closing the fd).
pub struct Lock {
    _held: nix::fcntl::Flock<fs::File>,
}

impl State {
    pub fn new(root: impl Into<PathBuf>) -> State {
        State { root: root.into() }
    }

    /// The run dir, overridable with BERTH_RUN_DIR (tests use private ones).
    pub fn from_env() -> State {
        State::new(std::env::var_os("BERTH_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_RUN_DIR.into()))
    }

    /// One lock for all networks and all berth processes on the host: the
    /// nftables tables it guards are host-wide, whatever run dir a process
    /// uses. The sections it guards are a few file operations, plus nft
    /// calls on a network's first ADD and last DEL. Locking a directory
    /// leaves no lock file behind.
    pub fn lock(&self) -> Result<Lock, Error> {
        fs::create_dir_all(&self.root).map_err(|e| io_err("creating", &self.root, e))?;
        store::file::lock_dir(Path::new(LOCK_DIR))
            .map(|held| Lock { _held: held })
            .map_err(|e| Error::new(codes::IO, e.to_string()))
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.root.join(network)
    }

    fn records_dir(&self, network: &str) -> PathBuf {
        self.network_dir(network).join("attachments")
    }

    pub fn write_record(&self, _lock: &Lock, network: &str, host_veth: &str, rec: &Record) -> Result<(), Error> {
        let dir = self.records_dir(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        write_atomic(&dir.join(host_veth), &serde_json::to_vec(rec).unwrap_or_default())
    }

    pub fn read_record(&self, network: &str, host_veth: &str) -> Option<Record> {
        let data = fs::read(self.records_dir(network).join(host_veth)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// True if `host_veth` has a record (readable or not).
    pub fn has_record(&self, network: &str, host_veth: &str) -> bool {
        self.records_dir(network).join(host_veth).exists()
    }

    pub fn remove_record(&self, _lock: &Lock, network: &str, host_veth: &str) -> Result<(), Error> {
        let p = self.records_dir(network).join(host_veth);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &p, e)),
        }
    }

    /// All records of a network: (host veth name, record).
    pub fn records(&self, network: &str) -> Vec<(String, Option<Record>)> {
        let Ok(rd) = fs::read_dir(self.records_dir(network)) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .map(|n| {
                let r = self.read_record(network, &n);
                (n, r)
            })
            .collect()
    }

    /// True if the network still has an attachment. Stops at the first
    /// entry, so the cost doesn't grow with the number of containers.
    pub fn has_records(&self, network: &str) -> bool {
        fs::read_dir(self.records_dir(network))
            .map(|mut rd| rd.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))))
            .unwrap_or(false)
    }

    /// The network's marker, if it was written in this boot.
    /// True if a network other than `network` has rules on `bridge`.
    pub fn bridge_used_by_others(&self, network: &str, bridge: &str) -> bool {
        let Ok(rd) = fs::read_dir(&self.root) else { return false };
        rd.flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != network)
            .any(|n| self.rules_marker(&n).is_some_and(|m| m.bridge == bridge))
    }

    pub fn rules_marker(&self, network: &str) -> Option<RulesMarker> {
        let data = fs::read(self.network_dir(network).join("rules.json")).ok()?;
        let m: RulesMarker = serde_json::from_slice(&data).ok()?;
        (m.boot_id == boot_id()).then_some(m)
    }

    pub fn write_rules_marker(&self, _lock: &Lock, network: &str, m: &RulesMarker) -> Result<(), Error> {
        let dir = self.network_dir(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        write_atomic(&dir.join("rules.json"), &serde_json::to_vec(m).unwrap_or_default())
    }

    /// Removes the marker and the network's directories once they are empty.
    pub fn forget_network(&self, _lock: &Lock, network: &str) -> Result<(), Error> {
        let dir = self.network_dir(network);
        let marker = dir.join("rules.json");
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &marker, e)),
        }
        // Fails harmlessly if an attachment appeared meanwhile.
        let _ = fs::remove_dir(self.records_dir(network));
        let _ = fs::remove_dir(&dir);
        Ok(())
    }
}

/// [`store::file::write_atomic`], as a CNI error.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    store::file::write_atomic(path, data).map_err(|e| Error::new(codes::IO, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_from_another_boot_vouches_for_nothing() {
        let root = std::env::temp_dir().join(format!("berth-state-test-{}", std::process::id()));
        let state = State::new(&root);
        let net: IpNet = "10.9.0.0/24".parse().unwrap();
        let marker = |boot: String| RulesMarker { bridge: "b0".into(), subnets: vec![net], boot_id: boot, isolation: true, uplinks: Vec::new() };
        // Written directly: the lock only serialises writers, it doesn't
        // change what is read back.
        let dir = root.join("n1");
        fs::create_dir_all(&dir).unwrap();
        let write = |m: &RulesMarker| fs::write(dir.join("rules.json"), serde_json::to_vec(m).unwrap()).unwrap();

        write(&marker(boot_id()));
        assert_eq!(state.rules_marker("n1"), Some(marker(boot_id())));
        write(&marker("another-boot".into()));
        assert_eq!(state.rules_marker("n1"), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
