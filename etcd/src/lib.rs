//! berth's etcd v3 client: the overlay's cluster store.
//!
//! It speaks to etcd's JSON gateway (`POST /v3/...`, base64 keys and
//! values) over HTTP/1.1 with ureq, and over TLS with rustls: no gRPC
//! stack and no protoc, and one small request per call, which suits a CNI
//! plugin that lives for one ADD as well as the long-running node agent.
//!
//! - **TLS**: `https://` endpoints, trusting `caFile` or the system's
//!   roots, with a client certificate (`certFile`, `keyFile`) when etcd
//!   asks for one (kubeadm's does).
//! - **Auth**: `username` and `password`: a token from
//!   `/v3/auth/authenticate`, sent with every request, taken again when
//!   etcd says it expired; kept between processes in a 0600 file when the
//!   caller names one, since etcd's password check is slow on purpose.
//! - **Failover**: each call goes to the endpoint that last answered, and
//!   on to the others when it cannot: refused, unreachable within the dial
//!   timeout, or a member without a leader.
//! - **Rotation**: the CA, certificate and key files are checked before
//!   each call, and read again when they changed on disk, so a long-running
//!   client follows a renewed certificate without a restart.
//!
//! Secrets never reach an error, a log line or a `Debug` output.

mod client;
mod options;
mod tls;

pub use client::{Client, Kv, Range};
pub use options::{Options, Secret, DEFAULT_DIAL_TIMEOUT};

/// What went wrong, for the caller to map to its own codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong or refused: `key` names it (`endpoints`,
    /// `caFile`, `certFile`, `keyFile`, `username`, `password`,
    /// `passwordFile`, `dialTimeout`, or `prefix` for a permission etcd
    /// denies). Trying again will not help.
    #[error("{key}: {msg}")]
    Config { key: &'static str, msg: String },
    /// No endpoint could answer: each one's reason (connection, TLS,
    /// no leader). Trying again later may help.
    #[error("etcd unreachable: {0}")]
    Unavailable(String),
}

impl Error {
    fn config(key: &'static str, msg: impl Into<String>) -> Error {
        Error::Config {
            key,
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
