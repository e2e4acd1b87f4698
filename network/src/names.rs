//! The names berth gives kernel objects: policy of the front ends, kept
//! here so the kernel layer (berth-kernel) knows none of them and every front end
//! agrees on them (the quiet chain matches ports by these prefixes).

use sha2::{Digest, Sha256};

/// Host ends of berth-bridge's (and berth-overlay's) veths.
pub const CNI_PORT_PREFIX: &str = "bv";
/// Host ends of berthd's endpoint veths.
pub const DOCKER_PORT_PREFIX: &str = "bh";
/// The peers berthd hands the engine (moved into the container).
pub const DOCKER_PEER_PREFIX: &str = "bp";

/// The ifb devices berth-bandwidth shapes a container's egress on.
pub const BANDWIDTH_IFB_PREFIX: &str = "bw";

/// Every prefix berth's bridge ports are named with.
pub fn port_prefixes() -> Vec<String> {
    vec![CNI_PORT_PREFIX.to_string(), DOCKER_PORT_PREFIX.to_string()]
}

/// The host end of a CNI attachment's veth: "bv" + 8 hex digits of a hash
/// of (container ID, ifname). Deterministic, so DEL and GC find it
/// without the netns.
pub fn cni_host_veth(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{CNI_PORT_PREFIX}{hex}")
}

/// The ifb of a CNI attachment's egress limit: "bw" + 12 hex digits of a
/// hash of (network, container ID, ifname), so DEL finds it from the
/// attachment alone, and two networks' attachments of one container never
/// share one.
pub fn bandwidth_ifb(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    for part in [network, container_id, ifname] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{BANDWIDTH_IFB_PREFIX}{hex}")
}

/// Whether `name` has the shape of [`bandwidth_ifb`]'s names ("bw" and
/// 12 lowercase hex digits), so GC leaves anyone else's ifb alone.
pub fn is_bandwidth_ifb(name: &str) -> bool {
    name.strip_prefix(BANDWIDTH_IFB_PREFIX).is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The first 12 alphanumeric characters of a Docker ID (what `docker`
/// shows).
pub fn docker_short_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

/// berthd's host end and peer of an endpoint's veth.
pub fn docker_endpoint_veths(endpoint_id: &str) -> (String, String) {
    let s = docker_short_id(endpoint_id);
    (
        format!("{DOCKER_PORT_PREFIX}{s}"),
        format!("{DOCKER_PEER_PREFIX}{s}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_names_are_stable() {
        // Fixed: the names outlive the process that made them (DEL, GC
        // and upgrades must compute the same).
        let n = cni_host_veth("c1", "eth0");
        assert_eq!(n.len(), 10);
        assert!(n.starts_with("bv"));
        assert_eq!(n, cni_host_veth("c1", "eth0"));
        assert_ne!(n, cni_host_veth("c1", "eth1"));
        assert_ne!(cni_host_veth("ab", "c"), cni_host_veth("a", "bc"));
        assert!(berth_kernel::check_ifname(&n).is_ok());
    }

    #[test]
    fn bandwidth_ifbs_are_per_attachment() {
        let n = bandwidth_ifb("net", "c1", "eth0");
        assert_eq!(n.len(), 14);
        assert!(n.starts_with(BANDWIDTH_IFB_PREFIX));
        assert_eq!(n, bandwidth_ifb("net", "c1", "eth0"));
        assert_ne!(n, bandwidth_ifb("net2", "c1", "eth0"));
        assert_ne!(n, bandwidth_ifb("net", "c1", "eth1"));
        assert_ne!(bandwidth_ifb("ab", "c", "x"), bandwidth_ifb("a", "bc", "x"));
        assert!(berth_kernel::check_ifname(&n).is_ok());
        assert!(is_bandwidth_ifb(&n));
        assert!(!is_bandwidth_ifb("bwfoo") && !is_bandwidth_ifb("ifb0"));
        assert!(!is_bandwidth_ifb("bw0123456789AB"));
        // Not taken for a bridge port by the quiet chain's prefixes.
        assert!(!port_prefixes().iter().any(|p| n.starts_with(p.as_str())));
    }

    #[test]
    fn docker_names_fit_the_kernel() {
        let (h, p) = docker_endpoint_veths(&"f".repeat(64));
        assert_eq!(
            (h.as_str(), p.as_str()),
            ("bhffffffffffff", "bpffffffffffff")
        );
        assert!(berth_kernel::check_ifname(&h).is_ok());
        assert!(port_prefixes().iter().any(|p| h.starts_with(p.as_str())));
        assert!(port_prefixes()
            .iter()
            .any(|p| cni_host_veth("x", "eth0").starts_with(p.as_str())));
    }
}
