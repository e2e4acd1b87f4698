//! berth's kernel layer: network namespaces, rtnetlink (links, bridges,
//! veths, addresses, routes, traffic control), sysctls, conntrack and
//! nf_tables, as typed objects with no berth name or policy in them.
//!
//! Everything here is synchronous on purpose: a CNI plugin does a handful
//! of kernel round trips per invocation, and a blocking netlink socket is
//! both the fastest and the simplest way to do them (no runtime start-up,
//! no background tasks). A [`Handle`] is bound to the network namespace it
//! was opened in for its whole life, so container-side work never needs to
//! move the calling thread between namespaces.

mod addr;
mod bridge;
pub mod conntrack;
mod error;
mod handle;
mod link;
mod mac;
mod netns;
pub mod nf_tables;
mod nl;
mod route;
pub mod sysctl;
pub mod tc;
mod vxlan;

pub use addr::{Address, AddressOptions};
pub use bridge::{BridgePortOptions, BridgeVlan};
pub use error::Error;
pub use handle::{check_ifname, Handle};
pub use link::{
    eui64_link_local, BridgeOptions, Ipv6Settings, Link, MacvlanMode, MacvlanOptions, VethOptions,
};
pub use mac::{mac_text, parse_mac};
pub use netns::Netns;
pub use route::Route;
pub use vxlan::{VxlanOptions, VXLAN_PORT};

/// The result type of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;
