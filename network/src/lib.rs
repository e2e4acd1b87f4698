//! The objects a berth container network is made of, shared by every front
//! end (the CNI plugins and berthd), so the same options make the same
//! network in the kernel whichever front end asks:
//!
//! - [`bridge::BridgeSpec`]: the Linux bridge of a network;
//! - [`port::PortSpec`]: an endpoint's veth, its host end a port of that
//!   bridge;
//! - [`gateway::GatewaySpec`]: the gateway addresses on the bridge and the
//!   forwarding they need;
//! - [`names`]: the names berth gives them (the kernel layer knows none).
//!
//! Each is a typed spec with a pure `validate` and `plan` (unit-tested
//! without privileges) and an `apply` that is the only step touching the
//! kernel (through `net`). Front ends translate their own input (a CNI
//! config, Docker's JSON) into specs and the errors back into their own.

pub mod bridge;
pub mod gateway;
pub mod names;
pub mod port;

/// What can go wrong building a network object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for something that cannot be: `field` names the
    /// front end's key at fault.
    #[error("{field}: {msg}")]
    Config { field: &'static str, msg: String },
    /// The kernel refused.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: net::Error,
    },
}

impl Error {
    fn config(field: &'static str, msg: impl Into<String>) -> Error {
        Error::Config {
            field,
            msg: msg.into(),
        }
    }

    fn kernel(what: impl Into<String>) -> impl FnOnce(net::Error) -> Error {
        let what = what.into();
        move |source| Error::Kernel { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
