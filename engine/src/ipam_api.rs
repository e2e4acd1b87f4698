//! Docker's IpamDriver protocol (errors in `Error`, not `Err`), on
//! berth's allocation store: each pool is one SQLite store of the same kind
//! berth-ipam uses (`<state>/ipam/<pool id>/ipam.db`), and each address is
//! held by the owner ("docker", address), since the engine names none.
//!
//! Pools are recorded (`<state>/ipam/pools.json`) with a reference count:
//! an identical RequestPool returns the same pool, as the protocol
//! requires, and ReleasePool frees it at zero.
//!
//! The pool of a berthd overlay network is the cluster CIDR; once the
//! node holds its subnet lease, the pool is narrowed to that subnet
//! (`narrow`): containers get addresses from it, with its prefix length,
//! and its first address (the node's gateway) is never handed out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{AllocationStore, IpRange, Owner, RangeSet, SqliteStore};

/// The engine's gateway request.
const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// Where pools are taken from when the user gives no `--subnet`.
const AUTO_POOL_SPACE: &str = "10.211.0.0/16";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pool {
    pool: IpNet,
    refs: u32,
    /// Overlay networks: the node's subnet of the pool, where addresses
    /// come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<IpNet>,
}

pub struct Ipam {
    dir: PathBuf,
    pools: Mutex<()>,
}

pub type Answer = (u16, Value);

fn fail(msg: impl std::fmt::Display) -> Answer {
    (500, json!({"Error": msg.to_string()}))
}

#[derive(Deserialize, Default)]
struct PoolReq {
    #[serde(rename = "Pool", default)]
    pool: String,
    #[serde(rename = "SubPool", default)]
    sub_pool: String,
    #[serde(rename = "V6", default)]
    v6: bool,
}

#[derive(Deserialize, Default)]
struct AddrReq {
    #[serde(rename = "PoolID", default)]
    pool_id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Options", default)]
    options: Option<BTreeMap<String, String>>,
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        // 4xx answers are read by the engine's plugin client as {"Err"}.
        let msg = format!("malformed request JSON: {e}");
        (400, json!({"Err": msg, "Error": msg}))
    })
}

/// The pool's ID: its network in a form usable as a file name.
fn pool_id(net: &IpNet) -> String {
    net.to_string().replace(['/', ':'], "_")
}

/// Hosts of `net`: everything but the network address (and IPv4's
/// broadcast address).
fn range_set(net: &IpNet) -> Result<RangeSet, String> {
    let hosts: Vec<IpAddr> = match net {
        IpNet::V4(n) if n.prefix_len() >= 31 => {
            return Err(format!("pool {net} has no room for hosts"))
        }
        IpNet::V4(n) => vec![IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())],
        IpNet::V6(n) if n.prefix_len() >= 127 => {
            return Err(format!("pool {net} has no room for hosts"))
        }
        IpNet::V6(n) => vec![IpAddr::V6(n.network())],
    };
    RangeSet::new(
        0,
        net.to_string(),
        &[IpRange::new(net.network(), net.broadcast())],
        &hosts,
    )
    .map_err(|e| e.to_string())
}

impl Ipam {
    pub fn new(state: &Path) -> Ipam {
        Ipam {
            dir: state.join("ipam"),
            pools: Mutex::new(()),
        }
    }

    fn pools_path(&self) -> PathBuf {
        self.dir.join("pools.json")
    }

    fn load(&self) -> Result<BTreeMap<String, Pool>, String> {
        match std::fs::read(self.pools_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: {e}", self.pools_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("{}: {e}", self.pools_path().display())),
        }
    }

    fn save(&self, pools: &BTreeMap<String, Pool>) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let text = serde_json::to_vec_pretty(pools).map_err(|e| e.to_string())?;
        store::file::write_durable(&self.pools_path(), &text).map_err(|e| e.to_string())
    }

    /// True if `net` is one of the pools (berthd's overlay networks need
    /// their pool from this driver).
    pub fn has_pool(&self, net: &IpNet) -> bool {
        let _g = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        self.load()
            .is_ok_and(|pools| pools.contains_key(&pool_id(&net.trunc())))
    }

    /// From now on pool `net` hands out addresses of `node` only (an
    /// overlay network's node subnet).
    pub fn narrow(&self, net: &IpNet, node: &IpNet) -> Result<(), String> {
        let _g = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut pools = self.load()?;
        let p = pools
            .get_mut(&pool_id(&net.trunc()))
            .ok_or_else(|| format!("unknown pool {net}"))?;
        if !p.pool.contains(&node.network()) {
            return Err(format!("{node} is not inside the pool {net}"));
        }
        node_range_set(node)?;
        p.node = Some(*node);
        self.save(&pools)
    }

    /// The pool's store, the range addresses are handed out from, and its
    /// prefix length.
    fn open(&self, id: &str) -> Result<(SqliteStore, RangeSet, IpNet), String> {
        let pools = self.load()?;
        let p = pools
            .get(id)
            .ok_or_else(|| format!("unknown pool {id:?}"))?;
        let (set, from) = match p.node {
            Some(node) => (node_range_set(&node)?, node),
            None => (range_set(&p.pool)?, p.pool),
        };
        let st = SqliteStore::open(&self.dir, id).map_err(|e| e.to_string())?;
        Ok((st, set, from))
    }

    pub fn handle(&self, method: &str, body: &[u8]) -> Option<Answer> {
        let _g = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let a = match method {
            "GetCapabilities" => (
                200,
                json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}),
            ),
            "GetDefaultAddressSpaces" => (
                200,
                json!({"LocalDefaultAddressSpace": "berth-local", "GlobalDefaultAddressSpace": "berth-global"}),
            ),
            "RequestPool" => self.request_pool(body).unwrap_or_else(|a| a),
            "ReleasePool" => self.release_pool(body).unwrap_or_else(|a| a),
            "RequestAddress" => self.request_address(body).unwrap_or_else(|a| a),
            "ReleaseAddress" => self.release_address(body).unwrap_or_else(|a| a),
            _ => return None,
        };
        Some(a)
    }

    fn request_pool(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: PoolReq = parse(body)?;
        if !req.sub_pool.is_empty() && req.pool.is_empty() {
            return Err(fail("SubPool without Pool"));
        }
        if !req.sub_pool.is_empty() {
            return Err(fail(
                "SubPool (--ip-range) is not supported by berth's IPAM yet",
            ));
        }
        let mut pools = self.load().map_err(fail)?;
        let net: IpNet = if req.pool.is_empty() {
            if req.v6 {
                return Err(fail("IPv6 needs an explicit --subnet"));
            }
            let space: ipnet::Ipv4Net = AUTO_POOL_SPACE.parse().map_err(fail)?;
            let free = space.subnets(24).map_err(fail)?.map(IpNet::V4).find(|n| {
                !pools
                    .values()
                    .any(|p| p.pool.contains(&n.network()) || n.contains(&p.pool.network()))
            });
            free.ok_or_else(|| fail(format!("no free /24 left in {AUTO_POOL_SPACE}")))?
        } else {
            let n: IpNet = req
                .pool
                .parse()
                .map_err(|_| fail(format!("Pool {:?} is not a CIDR", req.pool)))?;
            n.trunc()
        };
        range_set(&net).map_err(fail)?;
        let id = pool_id(&net);
        match pools.get_mut(&id) {
            Some(p) => p.refs += 1,
            None => {
                if let Some(o) = pools
                    .values()
                    .find(|p| p.pool.contains(&net.network()) || net.contains(&p.pool.network()))
                {
                    return Err(fail(format!("pool {net} overlaps pool {} in use", o.pool)));
                }
                pools.insert(
                    id.clone(),
                    Pool {
                        pool: net,
                        refs: 1,
                        node: None,
                    },
                );
            }
        }
        self.save(&pools).map_err(fail)?;
        Ok((
            200,
            json!({"PoolID": id, "Pool": net.to_string(), "Data": {}}),
        ))
    }

    fn release_pool(&self, body: &[u8]) -> Result<Answer, Answer> {
        #[derive(Deserialize, Default)]
        struct Req {
            #[serde(rename = "PoolID", default)]
            pool_id: String,
        }
        let req: Req = parse(body)?;
        let mut pools = self.load().map_err(fail)?;
        let Some(p) = pools.get_mut(&req.pool_id) else {
            return Ok((200, json!({})));
        };
        p.refs = p.refs.saturating_sub(1);
        if p.refs == 0 {
            pools.remove(&req.pool_id);
            let _ = std::fs::remove_dir_all(self.dir.join(&req.pool_id));
        }
        self.save(&pools).map_err(fail)?;
        Ok((200, json!({})))
    }

    fn request_address(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: AddrReq = parse(body)?;
        let (mut st, set, net) = self.open(&req.pool_id).map_err(fail)?;
        let gateway = req
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_TYPE);
        let ip: IpAddr = if !req.address.is_empty() {
            req.address
                .parse()
                .map_err(|_| fail(format!("Address {:?} is not an IP address", req.address)))?
        } else if gateway {
            // The first host address, as the engine's own IPAM picks it.
            first_host(&net)
        } else {
            st.next_free(&set)
                .map_err(fail)?
                .ok_or_else(|| fail(format!("no free address left in {net}")))?
        };
        let owner = Owner::new("docker", ip.to_string());
        st.allocate(&owner, &[store::Request::exact(&set, ip)])
            .map_err(fail)?;
        Ok((
            200,
            json!({"Address": format!("{ip}/{}", net.prefix_len()), "Data": {}}),
        ))
    }

    fn release_address(&self, body: &[u8]) -> Result<Answer, Answer> {
        let req: AddrReq = parse(body)?;
        let (mut st, _, _) = self.open(&req.pool_id).map_err(fail)?;
        let ip: IpAddr = req
            .address
            .parse()
            .map_err(|_| fail(format!("Address {:?} is not an IP address", req.address)))?;
        st.release(&Owner::new("docker", ip.to_string()))
            .map_err(fail)?;
        Ok((200, json!({})))
    }
}

/// An overlay node subnet's hosts: as `range_set`, and not its first
/// address either (the node's gateway, on its bridge).
fn node_range_set(net: &IpNet) -> Result<RangeSet, String> {
    let mut reserved = vec![net.network(), first_host(net)];
    if let IpNet::V4(n) = net {
        reserved.push(IpAddr::V4(n.broadcast()));
    }
    if net.prefix_len() >= net.max_prefix_len() - 1 {
        return Err(format!("node subnet {net} has no room for hosts"));
    }
    RangeSet::new(
        0,
        net.to_string(),
        &[IpRange::new(net.network(), net.broadcast())],
        &reserved,
    )
    .map_err(|e| e.to_string())
}

fn first_host(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_exclude_network_and_broadcast() {
        let n: IpNet = "10.1.2.0/24".parse().unwrap();
        let s = range_set(&n).unwrap();
        assert!(!s.allows("10.1.2.0".parse().unwrap()));
        assert!(!s.allows("10.1.2.255".parse().unwrap()));
        assert!(s.allows("10.1.2.1".parse().unwrap()));
        assert!(range_set(&"10.1.2.0/31".parse().unwrap()).is_err());
        assert_eq!(first_host(&n), "10.1.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(pool_id(&"fd00::/64".parse().unwrap()), "fd00___64");
        let node = node_range_set(&n).unwrap();
        assert!(
            !node.allows("10.1.2.1".parse().unwrap()),
            "the node's gateway is handed out"
        );
        assert!(node.allows("10.1.2.2".parse().unwrap()));
    }
}
