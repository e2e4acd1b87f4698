//! berthd's records of the engine's networks and endpoints: what berthd
//! writes (`<state>/networks/<short id>.json`, `<state>/endpoints/<short
//! id>.json`) and `berth status` reads, one schema for both.
//!
//! The engine never re-sends CreateNetwork after a restart, so berthd
//! records a network before its kernel objects exist and forgets it after
//! they are gone; the operator's view reads the same files without
//! berthd's lock (each is written whole, durably, by rename).

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::docker_short_id;
use crate::{Error, Kind, Result};

/// berthd's state dir when its config names none.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth/engine";

/// The ifname an endpoint's published ports are recorded under (the
/// engine names the container's interface itself, after Join).
pub const DOCKER_IFNAME: &str = "docker";

/// One network the engine created on berthd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerNetwork {
    /// The engine's network ID (64 hex digits).
    pub id: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub masquerade: bool,
    pub isolation: bool,
    /// `docker network create --internal`: no traffic to or from outside.
    #[serde(default)]
    pub internal: bool,
    /// "ip/len" gateways, from the engine's IPv4Data/IPv6Data (overlay:
    /// the node subnet's first address).
    pub gateways: Vec<IpNet>,
    /// mode=overlay: the berth-overlay config object. Written without its
    /// etcd password: berthd's config holds that, not its state.
    #[serde(default, serialize_with = "serialize_without_secrets")]
    pub overlay: Option<Value>,
    /// `-o multicast_snooping=true`: the kernel's (and Docker's bridge
    /// driver's) default; berth's bridges have it off.
    #[serde(default)]
    pub multicast_snooping: bool,
}

impl DockerNetwork {
    /// The name the network's rules carry in `inet berth`, and the
    /// network its published ports are recorded under.
    pub fn rules_name(&self) -> String {
        format!("docker-{}", docker_short_id(&self.id))
    }
}

/// One endpoint of a [`DockerNetwork`]: a veth whose host end is a port of
/// the network's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerEndpoint {
    /// The engine's endpoint ID (records of a berthd before it kept it:
    /// the short ID of the file's name).
    #[serde(default)]
    pub id: String,
    /// The engine's network ID.
    pub network: String,
    pub host_veth: String,
    pub peer: String,
    /// The engine's addresses for it (CreateEndpoint's Interface).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The container's netns, as Join names it (its SandboxKey); None
    /// before Join, and in records of a berthd before it kept them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_key: Option<String>,
}

/// `conf` as it may be written to disk: without an etcd password.
pub fn without_secrets(conf: &Value) -> Value {
    let mut c = conf.clone();
    if let Some(etcd) = c
        .get_mut("store")
        .and_then(|s| s.get_mut("etcd"))
        .and_then(Value::as_object_mut)
    {
        etcd.remove("password");
    }
    c
}

fn serialize_without_secrets<S: serde::Serializer>(
    conf: &Option<Value>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    conf.as_ref().map(without_secrets).serialize(s)
}

/// berthd's state dir, as its records are laid out in it.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(state: &Path) -> Records {
        Records {
            dir: state.to_path_buf(),
        }
    }

    pub fn network_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("networks")
            .join(format!("{}.json", docker_short_id(id)))
    }

    pub fn endpoint_path(&self, id: &str) -> PathBuf {
        self.dir
            .join("endpoints")
            .join(format!("{}.json", docker_short_id(id)))
    }

    /// Where berthd's IPAM keeps its pools, one address store each.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The network of `id`, if recorded and readable.
    pub fn network(&self, id: &str) -> Option<DockerNetwork> {
        read(&self.network_path(id)).ok()
    }

    /// The endpoint of `id`, if recorded and readable.
    pub fn endpoint(&self, id: &str) -> Option<DockerEndpoint> {
        read(&self.endpoint_path(id)).ok()
    }

    /// Every network record, each read or its error naming the file.
    pub fn networks(&self) -> Vec<Result<DockerNetwork>> {
        self.all("networks")
    }

    /// Every endpoint record, each read or its error naming the file.
    pub fn endpoints(&self) -> Vec<Result<DockerEndpoint>> {
        self.files("endpoints")
            .iter()
            .map(|p| {
                let mut ep: DockerEndpoint = read(p)?;
                if ep.id.is_empty() {
                    ep.id = stem(p);
                }
                Ok(ep)
            })
            .collect()
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, sub: &str) -> Vec<Result<T>> {
        self.files(sub).iter().map(|p| read(p)).collect()
    }

    fn files(&self, sub: &str) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.dir.join(sub)) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One record, or what is wrong with it (naming the file).
fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::new(Kind::Io, format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(Kind::Decode, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_password_never_reaches_the_record() {
        let n = DockerNetwork {
            id: "a".repeat(64),
            bridge: "bd1".into(),
            mtu: None,
            masquerade: true,
            isolation: true,
            internal: false,
            gateways: vec!["10.5.0.1/24".parse().unwrap()],
            overlay: Some(json!({"store": {"etcd": {"username": "u", "password": "p"}}})),
            multicast_snooping: false,
        };
        let text = serde_json::to_string(&n).unwrap();
        assert!(!text.contains("\"password\""), "{text}");
        let back: DockerNetwork = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.overlay.as_ref().unwrap()["store"]["etcd"]["username"],
            "u"
        );
        assert_eq!(back.rules_name(), format!("docker-{}", "a".repeat(12)));
    }

    #[test]
    fn unreadable_records_name_their_file() {
        let dir = std::env::temp_dir().join(format!("berth-drec-{}", std::process::id()));
        let r = Records::new(&dir);
        std::fs::create_dir_all(dir.join("endpoints")).unwrap();
        std::fs::write(dir.join("endpoints/x.json"), b"{not json").unwrap();
        std::fs::write(
            dir.join("endpoints/y.json"),
            br#"{"network":"n","hostVeth":"h","peer":"p"}"#,
        )
        .unwrap();
        let eps = r.endpoints();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(eps.len(), 2);
        let e = eps[0].as_ref().unwrap_err();
        assert!(e.msg.contains("x.json"), "{e}");
        let y = eps[1].as_ref().unwrap();
        assert_eq!(y.sandbox_key, None);
        assert_eq!(y.id, "y", "an old record's ID is its file's");
        assert!(y.addresses.is_empty());
    }
}
