//! The CNI contract (spec 1.1): configuration, results in every cniVersion,
//! error codes, CNI_ARGS, IPAM delegation and the dispatcher ("skel") that
//! every berth plugin's `main()` calls.
//!
//! Nothing in here touches the kernel: this crate turns env + stdin into a
//! typed [`Request`], and a plugin's typed answer back into the bytes a
//! runtime expects.

pub mod args;
pub mod conf;
pub mod error;
pub mod gojson;
pub mod invoke;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use conf::{Attachment, NetConf};
pub use error::{codes, Error};
pub use gojson::GoObject;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Command, Plugin, Request};
pub use version::Version;
