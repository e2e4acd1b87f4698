//! berth's Prometheus metrics, in Prometheus' text exposition format
//! (0.0.4), encoded by prometheus-client:
//!
//! - [`node`]: what berth holds on this node, read from its records at
//!   each scrape, as `berth status` reads them (address ranges, attachments,
//!   published ports, volumes);
//! - [`Activity`]: what a long-running process did since it started (the
//!   reconciler's passes and repairs, berthd's calls and their durations);
//! - [`serve`]: `GET /metrics` over HTTP (hyper), on the address a
//!   daemon's config gives.
//!
//! `berth metrics` prints the node's once (node_exporter's textfile
//! collector); berthd and `berth watch` serve them with their activity.

mod activity;
mod node;
mod serve;

pub use activity::Activity;
pub use node::{render, NodeSources};
pub use serve::{serve, serve_with_probes, Probe};

/// What can go wrong producing or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metrics address {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving metrics: {0}")]
    Serve(std::io::Error),
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
