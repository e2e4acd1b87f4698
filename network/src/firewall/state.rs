//! Reading back what a network has in `inet berth` (for CNI CHECK).

use ipnet::IpNet;

use super::names::ChainNames;
use berth_kernel::nf_tables::value::interval_prefixes;
use berth_kernel::nf_tables::Listing;

/// What the kernel holds for one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkState {
    pub nat_chain: bool,
    pub nat_rules: usize,
    pub forward_chain: bool,
    pub forward_rules: usize,
    /// Elements of the network's masquerade sets (both families).
    pub masquerade: Vec<IpNet>,
}

/// Extracts `names`' objects from a listing of `inet berth`.
pub(crate) fn parse(listing: &Listing, names: &ChainNames) -> NetworkState {
    let mut st = NetworkState {
        nat_chain: listing.chain(&names.nat).is_some(),
        forward_chain: listing.chain(&names.forward).is_some(),
        nat_rules: listing.rules_of(&names.nat).count(),
        forward_rules: listing.rules_of(&names.forward).count(),
        masquerade: Vec::new(),
    };
    for set in [&names.set_v4, &names.set_v6] {
        if let Some((_, elements)) = listing.set(set) {
            st.masquerade.extend(interval_prefixes(elements));
        }
    }
    st
}

/// How many chains and sets in a listing of `inet berth` belong to
/// something other than `names` (another network, or another berth
/// plugin).
pub(crate) fn foreign_objects(listing: &Listing, names: &ChainNames) -> usize {
    let own = [&names.nat, &names.forward, &names.set_v4, &names.set_v6];
    let chains = listing.chains.iter().map(|c| c.at.name.as_str());
    let sets = listing
        .sets
        .iter()
        .map(|(s, _)| s.name.as_str())
        .chain(listing.other_sets.iter().map(String::as_str));
    chains
        .chain(sets)
        // The shared set of bridges belongs to whichever network is left.
        .filter(|n| *n != super::rules::BRIDGES_SET && !own.iter().any(|o| o.as_str() == *n))
        .count()
}

#[cfg(test)]
mod tests {
    use super::super::chain_names;
    use super::*;
    use berth_kernel::nf_tables::{Chain, DataType, Element, Expr, Key, Rule, Set, Table};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn listing(n: &ChainNames) -> Listing {
        let t = Table::new(berth_kernel::nf_tables::Family::Inet, "berth");
        let chain = |name: &str| Chain {
            at: t.chain(name),
            base: None,
        };
        let set = |name: &str, kind| Set {
            table: t.clone(),
            name: name.to_string(),
            key: Key(vec![kind]),
            data: None,
            interval: true,
        };
        Listing {
            chains: vec![chain(&n.nat), chain("nat-other-00000000")],
            sets: vec![
                (
                    set(&n.set_v4, DataType::Ipv4Addr),
                    Element::intervals(&[net("10.88.0.0/16"), net("10.99.0.1/32")]),
                ),
                (
                    set(&n.set_v6, DataType::Ipv6Addr),
                    Element::intervals(&[net("fd00::/64")]),
                ),
            ],
            other_sets: vec!["__set0".into()],
            rules: vec![
                Rule::new(&t.chain(&n.nat), vec![Expr::Masquerade]),
                Rule::new(&t.chain("nat-other-00000000"), vec![Expr::Masquerade]),
            ],
        }
    }

    #[test]
    fn parses_listing() {
        let n = chain_names("net1");
        let st = parse(&listing(&n), &n);
        assert!(st.nat_chain);
        assert_eq!(st.nat_rules, 1);
        assert!(!st.forward_chain);
        assert_eq!(st.forward_rules, 0);
        assert_eq!(
            st.masquerade,
            vec![net("10.88.0.0/16"), net("10.99.0.1/32"), net("fd00::/64")]
        );
    }

    #[test]
    fn counts_what_is_not_the_networks() {
        let n = chain_names("net1");
        // The other network's chain and the anonymous set.
        assert_eq!(foreign_objects(&listing(&n), &n), 2);
        assert_eq!(parse(&Listing::default(), &n), NetworkState::default());
    }
}
