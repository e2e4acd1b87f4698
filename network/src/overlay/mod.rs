//! A node of a berth overlay network: containers on different hosts reach
//! each other by address over VXLAN, flannel's L3 model. Each node owns
//! one subnet of the cluster network; its containers sit on a local bridge
//! (the bridge network's, see berth-overlay); one VXLAN device
//! `berth.<vni>` carries traffic to the other nodes, with exactly one FDB
//! entry, one neighbour entry and one onlink route per remote node.
//! Learning is off: nothing is flooded or learnt.
//!
//! Peers come from the static store (`store.static`: this node's subnet
//! and the others', the same list on every node) or from subnet leases in
//! etcd (`store.etcd`, see [`lease::resolve`]); the agent
//! ([`agent::run_agent`]) keeps the datapath equal to them. A node's VTEP
//! MAC is derived from its underlay address (02:bf and its last four
//! bytes), so peers know it without exchanging it, and its VTEP addresses
//! are its subnets' network addresses (as flannel's).
//!
//! Used by the berth-overlay CNI plugin and by berthd's overlay networks,
//! both with berth-overlay's config keys ([`config::OverlayConf`]).

pub mod agent;
pub mod config;
pub mod datapath;
pub mod lease;
pub mod node;
pub mod record;

pub use agent::{run_agent, run_agent_on, run_agent_with, AgentHealth, AgentOptions, HealthState};
pub use config::{OverlayConf, Peer};
pub use datapath::{bridge_name, mac_text, vtep_mac, vxlan_name};
pub use lease::resolve;
pub use node::{held_or_resolved, join_node, leave_node, parse_conf, remove_node};
