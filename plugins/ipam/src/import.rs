//! Importing a host-local data directory (`/var/lib/cni/networks/<name>/`) so an
//! upgrade keeps live addresses: one file per address, named by the address,
//! holding `containerID\r\nifname` (or, written by old versions, just the
//! container ID), plus `last_reserved_ip.<index>` cursors and a `lock` file.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni::{codes, Error};
use nix::fcntl::{Flock, FlockArg};
use store::{Allocation, AllocationStore, ImportSummary, Owner, SqliteStore};

const LAST_IP_PREFIX: &str = "last_reserved_ip.";

/// What a host-local directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLocalState {
    pub allocations: Vec<Allocation>,
    /// (range set index, last reserved address).
    pub cursors: Vec<(u32, IpAddr)>,
    /// Entries that were not understood, with the reason.
    pub skipped: Vec<String>,
}

/// Result of [`import_host_local`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub summary: ImportSummary,
    pub skipped: Vec<String>,
    /// The database written.
    pub db: PathBuf,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(codes::IO, format!("{what} {}: {e}", path.display()))
}

/// Parse an address file's content: `id\r\nifname` or a bare legacy `id`.
fn parse_owner(content: &str) -> Option<Owner> {
    let (id, ifname) = match content.split_once('\n') {
        Some((id, rest)) => (id, rest),
        None => (content, ""),
    };
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    Some(Owner::new(id, ifname.trim()))
}

/// Read a host-local directory without changing it.
pub fn read_host_local_dir(dir: &Path) -> Result<HostLocalState, Error> {
    let mut state = HostLocalState::default();
    let entries =
        std::fs::read_dir(dir).map_err(|e| io(dir, "cannot read host-local directory", e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, "cannot read host-local directory", e))?;
        names.push(entry.file_name());
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            state
                .skipped
                .push(format!("{}: name is not UTF-8", path.display()));
            continue;
        };
        if name == "lock" || !path.is_file() {
            continue;
        }
        if let Some(idx) = name.strip_prefix(LAST_IP_PREFIX) {
            let content =
                std::fs::read_to_string(&path).map_err(|e| io(&path, "cannot read", e))?;
            match (idx.parse::<u32>(), content.trim().parse::<IpAddr>()) {
                (Ok(i), Ok(ip)) => state.cursors.push((i, ip)),
                _ => state.skipped.push(format!(
                    "{name}: not a range index and an address ({:?})",
                    content.trim()
                )),
            }
            continue;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            state.skipped.push(format!("{name}: not an address file"));
            continue;
        };
        let content = std::fs::read_to_string(&path).map_err(|e| io(&path, "cannot read", e))?;
        match parse_owner(&content) {
            Some(owner) => state.allocations.push(Allocation {
                ip,
                range_set: None,
                owner,
            }),
            None => state
                .skipped
                .push(format!("{name}: no container ID in the file")),
        }
    }
    Ok(state)
}

/// Import the host-local directory `from` into the store of `network` under
/// `data_dir` (created if needed). Holds host-local's `lock` (if present) so
/// host-local cannot change the directory meanwhile. Idempotent; fails without
/// importing anything if an address is already held by someone else.
pub fn import_host_local(
    from: &Path,
    network: &str,
    data_dir: &Path,
) -> Result<ImportReport, Error> {
    let lock_path = from.join("lock");
    let _lock = match File::open(&lock_path) {
        Ok(f) => Some(
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io(&lock_path, "cannot lock", errno.into()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&lock_path, "cannot open", e)),
    };
    let state = read_host_local_dir(from)?;
    let mut store = SqliteStore::open(data_dir, network).map_err(crate::store_error)?;
    let summary = store
        .import(&state.allocations, &state.cursors)
        .map_err(crate::store_error)?;
    Ok(ImportReport {
        summary,
        skipped: state.skipped,
        db: store.path().to_path_buf(),
    })
}
