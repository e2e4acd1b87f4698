use std::net::IpAddr;
use std::path::PathBuf;

use crate::Owner;

/// The one error type of the `store` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The attachment already holds addresses on this network (duplicate ADD).
    #[error("{owner} already has {} allocated ({}); duplicate allocation is not allowed", plural(.ips.len()), join_ips(.ips))]
    Duplicate { owner: Owner, ips: Vec<IpAddr> },

    /// No free address is left in a range set.
    #[error("no IP addresses available in range set {label}")]
    Exhausted { range_set: u32, label: String },

    /// A specifically requested address is held by someone.
    #[error("requested IP address {ip} is already allocated to {holder}")]
    AddressTaken { ip: IpAddr, holder: Owner },

    /// A request the store cannot honour as given (address outside the range set, an
    /// excluded address, mixed families, an empty range set...).
    #[error("{0}")]
    InvalidRequest(String),

    /// A host port another attachment already publishes on an overlapping
    /// address.
    #[error("host port {wanted} is already published ({held}) by {holder}")]
    PortTaken {
        wanted: String,
        held: String,
        holder: crate::ports::PortOwner,
    },

    /// A network name that cannot be used as a directory name.
    #[error("invalid network name {0:?}: must be non-empty, not \".\" or \"..\", and contain no '/' or NUL")]
    InvalidNetworkName(String),

    /// Importing would overwrite an allocation held by a different attachment.
    #[error("cannot import {ip} for {incoming}: already allocated to {existing}")]
    ImportConflict {
        ip: IpAddr,
        existing: Owner,
        incoming: Owner,
    },

    /// The database holds something we cannot interpret.
    #[error("corrupt store {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },

    /// The database was written by a newer, incompatible version.
    #[error("store {path} has schema version {found}, this build supports up to {supported}")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("sqlite error on {path} while {context}: {source}")]
    Sqlite {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl Error {
    /// True when the failure is lock contention that outlasted the busy timeout;
    /// retrying later may succeed.
    pub fn is_busy(&self) -> bool {
        match self {
            Error::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "an address"
    } else {
        "addresses"
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
