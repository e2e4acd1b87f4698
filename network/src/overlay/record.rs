//! What a node agent last knew of its network: the node's subnets, its
//! lease and the peers the store lists. The agent writes it (whole, by
//! rename, `<name>.node.json` in the overlay's run dir) whenever it changes
//! and at each renewal of the lease, and removes it when it stops; `berth
//! status` and the metrics read it without asking etcd or the agent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::config::{OverlayConf, Peer};
use super::lease::run_dir;
use crate::{Error, Kind, Result};

const SUFFIX: &str = ".node.json";

/// One agent's view of its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The overlay's name (the CNI network's, or berthd's `name` option).
    pub network: String,
    pub node: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    /// `etcd` or `static`.
    pub store: String,
    /// The etcd lease's TTL in seconds (etcd only).
    #[serde(rename = "leaseTTL")]
    pub lease_ttl: Option<u64>,
    /// When the lease was last renewed, in seconds since the epoch.
    pub renewed_at: Option<u64>,
    /// Which store the lease is in, as [`store_key`]: a plugin uses the
    /// agent's word for the lease only with the same store settings.
    #[serde(default)]
    pub store_key: Option<String>,
    pub peers: Vec<RecordedPeer>,
    /// The agent's process (berthd's, for its networks).
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedPeer {
    pub node: String,
    pub underlay: IpAddr,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
}

impl From<&Peer> for RecordedPeer {
    fn from(p: &Peer) -> RecordedPeer {
        RecordedPeer {
            node: p.node.clone(),
            underlay: p.underlay,
            subnet: p.subnet,
            subnet6: p.subnet6,
        }
    }
}

/// Who a config reaches its etcd store as and where its leases are: the
/// client's fingerprint (the password in it unrecoverable) and the prefix.
pub fn store_key(e: &super::config::EtcdConf) -> String {
    format!("{}{}", e.client.fingerprint(), e.prefix)
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NodeRecord {
    /// The record of `conf` (resolved: its subnet and peers filled in),
    /// its lease last renewed at `renewed_at`.
    pub fn of(conf: &OverlayConf, renewed_at: Option<u64>) -> NodeRecord {
        NodeRecord {
            network: conf.name.clone(),
            node: conf.node.clone(),
            vni: conf.vni,
            subnet: conf.subnet,
            subnet6: conf.subnet6(),
            store: if conf.etcd.is_some() {
                "etcd"
            } else {
                "static"
            }
            .to_string(),
            lease_ttl: conf
                .etcd
                .as_ref()
                .and_then(|e| u64::try_from(e.lease_ttl).ok()),
            renewed_at,
            store_key: conf.etcd.as_ref().map(store_key),
            peers: conf.peers.iter().map(RecordedPeer::from).collect(),
            pid: std::process::id(),
        }
    }

    /// Seconds since the lease was renewed (etcd only).
    pub fn lease_age(&self, now: u64) -> Option<u64> {
        self.renewed_at.map(|at| now.saturating_sub(at))
    }

    /// Seconds the lease has left, as of its last renewal (etcd only): 0
    /// once expired.
    pub fn ttl_left(&self, now: u64) -> Option<u64> {
        Some(self.lease_ttl?.saturating_sub(self.lease_age(now)?))
    }

    /// Whether the process that wrote it is still there.
    pub fn agent_running(&self) -> bool {
        i32::try_from(self.pid)
            .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
    }

    fn path(network: &str) -> PathBuf {
        run_dir().join(format!("{network}{SUFFIX}"))
    }

    /// Replaces the network's record.
    pub fn write(&self) -> Result<()> {
        let path = Self::path(&self.network);
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| Error::new(Kind::Decode, e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", dir.display())))?;
        }
        store::file::write_atomic(&path, &text)
            .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", path.display())))
    }

    /// The network's record, if there is one that reads.
    pub fn read(network: &str) -> Option<NodeRecord> {
        let bytes = std::fs::read(Self::path(network)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes the network's record (gone already is fine).
    pub fn remove(network: &str) {
        let _ = std::fs::remove_file(Self::path(network));
    }

    /// Every record in the run dir, each read or its error naming the
    /// file.
    pub fn all() -> Vec<Result<NodeRecord>> {
        let Ok(rd) = std::fs::read_dir(run_dir()) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(SUFFIX))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p)
                    .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", p.display())))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::new(Kind::Decode, format!("{}: {e}", p.display())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_left_counts_down_from_the_renewal() {
        let r = NodeRecord {
            network: "n".into(),
            node: "h1".into(),
            vni: 1,
            subnet: "10.244.1.0/24".parse().unwrap(),
            subnet6: None,
            store: "etcd".into(),
            lease_ttl: Some(60),
            renewed_at: Some(1000),
            store_key: None,
            peers: Vec::new(),
            pid: std::process::id(),
        };
        assert_eq!(r.ttl_left(1010), Some(50));
        assert_eq!(r.lease_age(1010), Some(10));
        assert_eq!(r.ttl_left(2000), Some(0));
        assert!(r.agent_running());
        let static_store = NodeRecord {
            lease_ttl: None,
            renewed_at: None,
            ..r
        };
        assert_eq!(static_store.ttl_left(1010), None);
        let v = serde_json::to_value(&static_store).unwrap();
        assert!(v["leaseTTL"].is_null() && v["renewedAt"].is_null(), "{v}");
    }
}
