//! Durable state for berth: IP address allocations, and which published
//! host ports belong to whom ([`ports`]).
//!
//! [`AllocationStore`] is the interface; [`SqliteStore`] is the embedded,
//! single-host implementation (one SQLite database per network at
//! `<data_dir>/<network>/ipam.db`, WAL, `synchronous=FULL`). A cluster-scope
//! implementation (etcd) can implement the same trait later.
//!
//! The store knows nothing about CNI or configuration files: callers describe
//! what may be handed out with [`RangeSet`]s (ordered inclusive address ranges
//! plus addresses never to hand out) and ask for addresses with [`Request`]s.
//! All requests of one [`AllocationStore::allocate`] call succeed or fail
//! together (one transaction), so a dual-stack allocation never leaves half
//! behind.
//!
//! Allocation is round-robin like the reference host-local plugin: each range
//! set has a cursor (the last address reserved from it) and the search continues
//! after it, wrapping to the first range once. Finding a free address walks the
//! candidates and the ordered allocations in lockstep, costing O(k log n) where
//! k is the run of consecutive taken addresses after the cursor; nothing ever
//! loads all allocations except [`AllocationStore::retain`] (GC) and
//! [`AllocationStore::list`].

mod addr;
mod error;
pub mod file;
pub mod host;
pub mod ports;
mod sqlite;
#[cfg(test)]
mod sqlite_tests;

use std::fmt;
use std::net::IpAddr;

pub use addr::{from_key, is_v4_key, to_key};
pub use error::{Error, Result};
pub use sqlite::{validate_network_name, RangeSetUse, Sandbox, SqliteStore, StoreReader, DB_FILE};

/// Default parent directory of per-network databases.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth/networks";

/// Who holds an allocation: a container's attachment `(containerID, ifname)`.
///
/// Allocations imported from legacy host-local files that recorded only the
/// container ID have an empty `ifname`; they match any ifname of that
/// container for release, lookup and GC (as host-local does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ifname.is_empty() {
            write!(f, "container {}", self.container_id)
        } else {
            write!(
                f,
                "container {} interface {}",
                self.container_id, self.ifname
            )
        }
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn new(start: IpAddr, end: IpAddr) -> Self {
        IpRange { start, end }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// What one allocation may draw from: ordered ranges of one family, tried in
/// order (round-robin continues across them), minus `excluded` addresses
/// (gateways, network and broadcast addresses) that are never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    id: u32,
    label: String,
    /// (start key, end key), inclusive, in the caller's order.
    ranges: Vec<(u128, u128)>,
    /// Sorted, deduplicated keys.
    excluded: Vec<u128>,
}

impl RangeSet {
    /// `id` identifies the range set's round-robin cursor (host-local uses the
    /// index of the range set in the configuration). `label` names it in error
    /// messages (e.g. `10.0.0.0/24`).
    pub fn new(
        id: u32,
        label: impl Into<String>,
        ranges: &[IpRange],
        excluded: &[IpAddr],
    ) -> Result<Self> {
        let label = label.into();
        let first = ranges
            .first()
            .ok_or_else(|| Error::InvalidRequest(format!("range set {label} is empty")))?;
        let v4 = first.start.is_ipv4();
        let mut keys = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.start.is_ipv4() != v4 || r.end.is_ipv4() != v4 {
                return Err(Error::InvalidRequest(format!(
                    "range set {label} mixes address families ({r})"
                )));
            }
            let (s, e) = (to_key(r.start), to_key(r.end));
            if s > e {
                return Err(Error::InvalidRequest(format!(
                    "range {r} in range set {label} ends before it starts"
                )));
            }
            keys.push((s, e));
        }
        let mut excluded: Vec<u128> = excluded.iter().map(|ip| to_key(*ip)).collect();
        excluded.sort_unstable();
        excluded.dedup();
        Ok(RangeSet {
            id,
            label,
            ranges: keys,
            excluded,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(|(s, _)| is_v4_key(*s))
    }

    /// How many addresses the set may hand out: its ranges' addresses
    /// less the excluded ones inside them.
    pub fn size(&self) -> u128 {
        let all: u128 = self
            .ranges
            .iter()
            .map(|(s, e)| (e - s).saturating_add(1))
            .fold(0, u128::saturating_add);
        let excluded = self
            .excluded
            .iter()
            .filter(|k| self.range_index(**k).is_some())
            .count() as u128;
        all.saturating_sub(excluded)
    }

    pub fn ranges(&self) -> Vec<IpRange> {
        self.ranges
            .iter()
            .map(|(s, e)| IpRange::new(from_key(*s), from_key(*e)))
            .collect()
    }

    /// Index of the range containing `key`.
    pub(crate) fn range_index(&self, key: u128) -> Option<usize> {
        self.ranges.iter().position(|(s, e)| *s <= key && key <= *e)
    }

    pub(crate) fn is_excluded(&self, key: u128) -> bool {
        self.excluded.binary_search(&key).is_ok()
    }

    /// True if `ip` may be handed out from this set (inside a range, not excluded).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let k = to_key(ip);
        self.range_index(k).is_some() && !self.is_excluded(k)
    }

    /// The segments to search, in round-robin order, given the cursor: the rest
    /// of the cursor's range after it, the following ranges (wrapping), then the
    /// start of the cursor's range up to and including the cursor. Without a
    /// usable cursor: every range in order from the first.
    pub(crate) fn search_segments(&self, cursor: Option<u128>) -> Vec<(u128, u128)> {
        let n = self.ranges.len();
        let mut segs = Vec::with_capacity(n + 1);
        let Some((i, c)) = cursor.and_then(|c| self.range_index(c).map(|i| (i, c))) else {
            segs.extend_from_slice(&self.ranges);
            return segs;
        };
        let (s, e) = self.ranges[i];
        if c < e {
            segs.push((c + 1, e));
        }
        for k in 1..n {
            segs.push(self.ranges[(i + k) % n]);
        }
        segs.push((s, c));
        segs
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Which address a request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The next free address, round-robin.
    Next,
    /// Exactly this address (it must be allowed by the range set).
    Exact(IpAddr),
}

/// One address to allocate from one range set.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub set: &'a RangeSet,
    pub want: Want,
}

impl<'a> Request<'a> {
    pub fn next(set: &'a RangeSet) -> Self {
        Request {
            set,
            want: Want::Next,
        }
    }

    pub fn exact(set: &'a RangeSet, ip: IpAddr) -> Self {
        Request {
            set,
            want: Want::Exact(ip),
        }
    }
}

/// A stored allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    /// The range set it was drawn from; `None` for imported allocations.
    pub range_set: Option<u32>,
    pub owner: Owner,
}

/// Outcome of [`AllocationStore::import`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Allocations written.
    pub imported: usize,
    /// Allocations already present with the same owner (import is idempotent).
    pub already_present: usize,
    /// Round-robin cursors written.
    pub cursors: usize,
}

/// Durable, concurrency-safe address allocation for one network.
pub trait AllocationStore {
    /// Allocate one address per request for `owner`, atomically: either every
    /// request is satisfied and recorded, or nothing is.
    ///
    /// Fails with [`Error::Duplicate`] if `owner` (or a legacy entry of the same
    /// container without ifname) already holds an address, [`Error::Exhausted`]
    /// if a range set has no free address, [`Error::AddressTaken`] if an exact
    /// address is held, [`Error::InvalidRequest`] if an exact address is not
    /// allowed by its range set. Returns the addresses in request order.
    fn allocate(&mut self, owner: &Owner, requests: &[Request<'_>]) -> Result<Vec<IpAddr>>;

    /// Release everything `owner` holds and return it. If `owner` holds nothing,
    /// legacy entries of the same container without ifname are released.
    /// Releasing nothing is not an error.
    fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>>;

    /// The allocations of `owner` (falling back to legacy ifname-less entries of
    /// the same container, like `release`).
    fn allocations_of(&mut self, owner: &Owner) -> Result<Vec<Allocation>>;

    /// The address the next `Want::Next` request on `set` would get, without
    /// allocating it; `None` if the set is exhausted.
    fn next_free(&mut self, set: &RangeSet) -> Result<Option<IpAddr>>;

    /// Garbage collection: release every allocation whose owner is not in
    /// `valid`, and return what was released. A legacy ifname-less allocation is
    /// kept if any valid attachment has its container ID.
    fn retain(&mut self, valid: &[Owner]) -> Result<Vec<Allocation>>;

    /// Every allocation, in address order.
    fn list(&mut self) -> Result<Vec<Allocation>>;

    /// Import allocations and round-robin cursors (range set id, last reserved
    /// address) atomically. Allocations already held by the same owner are
    /// skipped; one held by a different owner fails the whole import with
    /// [`Error::ImportConflict`].
    fn import(
        &mut self,
        allocations: &[Allocation],
        cursors: &[(u32, IpAddr)],
    ) -> Result<ImportSummary>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn range_set_validation() {
        assert!(matches!(
            RangeSet::new(0, "x", &[], &[]),
            Err(Error::InvalidRequest(_))
        ));
        assert!(
            RangeSet::new(0, "x", &[IpRange::new(ip("10.0.0.5"), ip("10.0.0.1"))], &[]).is_err()
        );
        assert!(RangeSet::new(
            0,
            "x",
            &[
                IpRange::new(ip("10.0.0.1"), ip("10.0.0.5")),
                IpRange::new(ip("fd00::1"), ip("fd00::5"))
            ],
            &[]
        )
        .is_err());
        let rs = RangeSet::new(
            0,
            "x",
            &[IpRange::new(ip("10.0.0.1"), ip("10.0.0.5"))],
            &[ip("10.0.0.1")],
        )
        .unwrap();
        assert!(rs.is_ipv4());
        assert!(!rs.allows(ip("10.0.0.1")));
        assert!(rs.allows(ip("10.0.0.2")));
        assert!(!rs.allows(ip("10.0.0.6")));
    }

    #[test]
    fn segments_round_robin() {
        let rs = RangeSet::new(
            0,
            "x",
            &[
                IpRange::new(ip("10.0.0.1"), ip("10.0.0.5")),
                IpRange::new(ip("10.0.1.1"), ip("10.0.1.5")),
                IpRange::new(ip("10.0.2.1"), ip("10.0.2.5")),
            ],
            &[],
        )
        .unwrap();
        let k = |s: &str| to_key(ip(s));
        assert_eq!(
            rs.search_segments(None),
            vec![
                (k("10.0.0.1"), k("10.0.0.5")),
                (k("10.0.1.1"), k("10.0.1.5")),
                (k("10.0.2.1"), k("10.0.2.5"))
            ]
        );
        // Cursor outside every range: start over.
        assert_eq!(rs.search_segments(Some(k("10.9.9.9"))).len(), 3);
        assert_eq!(
            rs.search_segments(Some(k("10.0.1.3"))),
            vec![
                (k("10.0.1.4"), k("10.0.1.5")),
                (k("10.0.2.1"), k("10.0.2.5")),
                (k("10.0.0.1"), k("10.0.0.5")),
                (k("10.0.1.1"), k("10.0.1.3")),
            ]
        );
        // Cursor at the end of a range: the next range first, its own range last.
        assert_eq!(
            rs.search_segments(Some(k("10.0.2.5"))),
            vec![
                (k("10.0.0.1"), k("10.0.0.5")),
                (k("10.0.1.1"), k("10.0.1.5")),
                (k("10.0.2.1"), k("10.0.2.5")),
            ]
        );
    }
}
