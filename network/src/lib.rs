//! The objects a berth container network is made of, shared by every front
//! end (the CNI plugins and berthd), so the same options make the same
//! network in the kernel whichever front end asks:
//!
//! - [`bridge::BridgeSpec`]: the Linux bridge of a network;
//! - [`port::PortSpec`]: an endpoint's veth, its host end a port of that
//!   bridge;
//! - [`gateway::GatewaySpec`]: the gateway addresses on the bridge and the
//!   forwarding they need;
//! - [`attachment::BridgeNetwork`]: a container's attachment to a bridge
//!   network (port, container side, gateway, firewall, and the records
//!   DEL and GC work from), for berth-bridge and berth-overlay alike;
//! - [`firewall`]: everything berth owns in nftables (a bridge network's
//!   rules and their record, published ports' maps and chains, the quiet
//!   chain, MAC spoof checks, berth's rule in DOCKER-USER), as batches
//!   built by pure functions and committed through berth-kernel's
//!   nf_tables layer;
//! - [`host_attachment`]: berth-host's `device` and `macvlan` attachments'
//!   records, and putting a moved device back on the host;
//! - [`container`]: the container side of an interface (addresses,
//!   routes, DAD);
//! - [`ports`]: published ports (host ports DNATed to a container), for
//!   CNI's portMappings and Docker's `-p` alike;
//! - [`overlay`]: a node of a multi-host VXLAN network (its subnet
//!   lease, datapath and agent), for berth-overlay and berthd's overlay
//!   networks alike;
//! - [`reconcile`]: puts back what berth owns in the ruleset from the
//!   records above, whenever someone else removes it;
//! - [`inventory`] and [`stale`]: the operator's view of all of it
//!   (`berth status`), and releasing what belongs to containers that are
//!   gone (`berth gc`);
//! - [`bandwidth`]: rate limits on a container's link (tbf, htb and an
//!   ifb on the host side);
//! - [`docker_records`]: berthd's records of the engine's networks and
//!   endpoints, which berthd writes and `berth status` reads;
//! - [`names`]: the names berth gives them (the kernel layer knows none).
//!
//! The bridge, port and gateway are typed specs with a pure `validate` and
//! `plan` (unit-tested without privileges) and an `apply` that is the
//! only step touching the kernel (through berth-kernel); published ports
//! and the overlay node came here from their plugins as they were and are
//! next to take that shape. Front ends translate their own input (a CNI
//! config, Docker's JSON) into these and the errors back into their own.

pub mod attachment;
pub mod bandwidth;
pub mod bridge;
pub mod container;
pub mod docker_records;
pub mod firewall;
pub mod gateway;
pub mod host_attachment;
pub mod inventory;
pub mod names;
pub mod overlay;
pub mod port;
pub mod ports;
pub mod reconcile;
pub mod stale;

/// What kind of failure an [`Error`] is: what front ends translate into
/// their protocol's codes (a CNI error code, a Docker `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The spec asks for something that cannot be; `field` names the key.
    Config,
    /// The kernel refused (netlink, sysctl).
    Kernel,
    /// nftables refused.
    Firewall,
    /// A host port is published by someone else already.
    PortTaken,
    /// A store is busy: the call may succeed if tried again.
    TryAgain,
    /// A record is unreadable or could not be written.
    Store,
    /// A file or directory could not be used.
    Io,
    /// CHECK found something missing or different.
    CheckFailed,
    /// What ADD would make is there already.
    Exists,
    /// A config or record is not the JSON it must be.
    Decode,
}

/// What can go wrong building a network object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{msg}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct Error {
    pub kind: Kind,
    /// The front end's key at fault ([`Kind::Config`]).
    pub field: Option<String>,
    pub msg: String,
}

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            field: None,
            msg: msg.into(),
        }
    }

    pub fn config(field: &str, msg: impl std::fmt::Display) -> Error {
        Error {
            kind: Kind::Config,
            field: Some(field.to_string()),
            msg: msg.to_string(),
        }
    }

    /// The kernel's refusal of `what`.
    pub fn kernel(what: impl Into<String>) -> impl FnOnce(berth_kernel::Error) -> Error {
        let what = what.into();
        move |e| Error::new(Kind::Kernel, format!("{what}: {e}"))
    }

    /// nftables' refusal.
    pub fn firewall(e: berth_kernel::Error) -> Error {
        Error::new(Kind::Firewall, format!("nftables: {e}"))
    }

    /// A store's error: a taken port, a busy store (try again), or the
    /// store failing.
    pub fn store(e: store::Error) -> Error {
        let kind = match &e {
            store::Error::PortTaken { .. } => Kind::PortTaken,
            _ if e.is_busy() => Kind::TryAgain,
            _ => Kind::Store,
        };
        Error::new(kind, e.to_string())
    }

    /// An argument refused before anything reached the kernel (the same
    /// text as berth-kernel's refusals).
    pub fn invalid(
        what: &str,
        value: impl std::fmt::Debug,
        reason: impl std::fmt::Display,
    ) -> Error {
        Error::new(Kind::Config, format!("invalid {what} {value:?}: {reason}"))
    }

    pub fn check_failed(msg: impl Into<String>) -> Error {
        Error::new(Kind::CheckFailed, msg)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The kernel's refusal, with nothing to add to what it says.
pub(crate) fn kernel(e: berth_kernel::Error) -> Error {
    Error::new(Kind::Kernel, e.to_string())
}
