//! berth-overlay: the CNI plugin of berth's multi-host VXLAN networks. The
//! node side (lease, datapath, agent) is the network core's
//! (`berth_network::overlay`, shared with berthd's overlay networks); this
//! crate is the CNI front end: each container goes on the node's bridge
//! network, the core's bridge attachment
//! (`berth_network::attachment`), with berth-ipam's addresses from the
//! node's subnets.

mod plugin;

pub use berth_network::overlay::run_agent;
pub use plugin::OverlayPlugin;
