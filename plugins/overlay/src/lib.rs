//! berth-overlay: the CNI plugin of berth's multi-host VXLAN networks. The
//! node side (lease, datapath, agent) is the network core's
//! (`berth_network::overlay`, shared with berthd's overlay networks); this
//! crate is the CNI front end: each container goes on the node's bridge,
//! through berth-bridge's code with a config derived from the overlay's.

mod plugin;

pub use berth_network::overlay::run_agent;
pub use plugin::OverlayPlugin;
