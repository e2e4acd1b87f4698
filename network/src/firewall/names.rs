//! Names of the per-network nftables objects.
//!
//! Scheme (stable: these names outlive the process that created them, so a
//! later version must compute the same ones to find and delete them):
//!
//! ```text
//! nat-<short>-<hash>    nat chain (postrouting, srcnat)
//! fwd-<short>-<hash>    filter chain (forward, priority filter)
//! masq4-<short>-<hash>  ipv4_addr interval set of masqueraded subnets
//! masq6-<short>-<hash>  ipv6_addr interval set of masqueraded subnets
//! ```
//!
//! `<short>` is the CNI network name cut to 32 bytes with every character
//! outside `[A-Za-z0-9_-]` replaced by `_`, so the names stay readable in
//! `nft list` and valid as nft identifiers. `<hash>` is 8 lowercase hex
//! digits of the 32-bit FNV-1a hash of the *full, unmodified* network name,
//! which keeps networks apart when their short forms collide ("a.b" vs
//! "a_b", or two long names sharing a prefix). Longest name: 6 + 32 + 1 + 8
//! = 47 bytes, far below nft's 256.

const SHORT_MAX: usize = 32;

/// The nftables object names owned by one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainNames {
    pub nat: String,
    pub forward: String,
    pub set_v4: String,
    pub set_v6: String,
}

/// The names of `network`'s chains and sets (see the module docs).
pub fn chain_names(network: &str) -> ChainNames {
    let suffix = format!(
        "{}-{:08x}",
        short_form(network),
        fnv1a32(network.as_bytes())
    );
    ChainNames {
        nat: format!("nat-{suffix}"),
        forward: format!("fwd-{suffix}"),
        set_v4: format!("masq4-{suffix}"),
        set_v6: format!("masq6-{suffix}"),
    }
}

fn short_form(network: &str) -> String {
    network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(SHORT_MAX)
        .collect()
}

/// FNV-1a, 32 bits: tiny, dependency-free and fixed forever by its spec,
/// which is what a name that must be recomputed years later needs.
pub(crate) fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // from the FNV test suite
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn names_are_stable_and_safe() {
        let n = chain_names("mynet");
        assert_eq!(n.nat, format!("nat-mynet-{:08x}", fnv1a32(b"mynet")));
        assert!(n.forward.starts_with("fwd-mynet-"));
        assert!(n.set_v4.starts_with("masq4-mynet-"));
        assert!(n.set_v6.starts_with("masq6-mynet-"));

        let odd = chain_names("weird name/with.dots\"and'quotes;{}ünï");
        for name in [&odd.nat, &odd.forward, &odd.set_v4, &odd.set_v6] {
            assert!(name.len() <= 47, "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }

    #[test]
    fn colliding_short_forms_differ() {
        assert_ne!(chain_names("a.b").nat, chain_names("a_b").nat);
        let long_a = format!("{}a", "x".repeat(40));
        let long_b = format!("{}b", "x".repeat(40));
        assert_ne!(chain_names(&long_a).nat, chain_names(&long_b).nat);
    }
}
