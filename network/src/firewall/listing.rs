//! A table as the kernel lists it, read once to compare with what berth's
//! records say should be there (the reconciler: one listing for every
//! network and attachment, where CHECK asks per object).

use std::collections::{HashMap, HashSet};

use crate::{Error, Result};
use berth_kernel::nf_tables::{self, Element, Family, Listing, Table};
use berth_kernel::Netns;

/// The chains (how many rules each holds) and sets and maps (their
/// elements) of a table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableListing {
    chains: HashMap<String, usize>,
    elements: HashMap<String, HashSet<Element>>,
    listing: Listing,
}

impl From<Listing> for TableListing {
    fn from(listing: Listing) -> TableListing {
        let mut chains: HashMap<String, usize> = listing
            .chains
            .iter()
            .map(|c| (c.at.name.clone(), 0))
            .collect();
        for r in &listing.rules {
            *chains.entry(r.chain.name.clone()).or_default() += 1;
        }
        let mut elements: HashMap<String, HashSet<Element>> = listing
            .sets
            .iter()
            .map(|(s, e)| (s.name.clone(), e.iter().cloned().collect()))
            .collect();
        for name in &listing.other_sets {
            elements.entry(name.clone()).or_default();
        }
        TableListing {
            chains,
            elements,
            listing,
        }
    }
}

impl TableListing {
    /// How many rules chain `name` holds, None if there is no such chain.
    pub fn chain_rules(&self, name: &str) -> Option<usize> {
        self.chains.get(name).copied()
    }

    /// True if set or map `object` holds `element` (a map's with the same
    /// value).
    pub fn has_element(&self, object: &str, element: &Element) -> bool {
        self.elements
            .get(object)
            .is_some_and(|set| set.contains(element))
    }

    /// True if there is a set or map named `object`.
    pub fn has_set(&self, object: &str) -> bool {
        self.elements.contains_key(object)
    }

    /// The listing it was made from.
    pub fn listing(&self) -> &Listing {
        &self.listing
    }
}

/// The table `family name`, listed; None if there is no such table.
pub fn list_table_in(ns: Option<&Netns>, family: &str, name: &str) -> Result<Option<TableListing>> {
    let family = match family {
        "inet" => Family::Inet,
        "ip" => Family::Ip,
        "ip6" => Family::Ip6,
        "bridge" => Family::Bridge,
        "netdev" => Family::Netdev,
        "arp" => Family::Arp,
        other => {
            return Err(Error::invalid(
                "nftables family",
                other,
                "not inet, ip, ip6, bridge, netdev or arp",
            ))
        }
    };
    Ok(nf_tables::list_table(ns, &Table::new(family, name))
        .map_err(Error::firewall)?
        .map(TableListing::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_kernel::nf_tables::value::ifname;
    use berth_kernel::nf_tables::{Chain, DataType, Expr, Key, Rule, Set};

    #[test]
    fn chains_count_rules_and_sets_hold_elements() {
        let t = Table::new(Family::Inet, "berth");
        let listing = Listing {
            chains: vec![
                Chain {
                    at: t.chain("fwd"),
                    base: None,
                },
                Chain {
                    at: t.chain("empty"),
                    base: None,
                },
            ],
            sets: vec![(
                Set {
                    table: t.clone(),
                    name: "berth-bridges".into(),
                    key: Key(vec![DataType::Ifname]),
                    data: None,
                    interval: false,
                },
                vec![Element::key(ifname("br0"))],
            )],
            other_sets: vec!["__set0".into()],
            rules: vec![
                Rule::new(&t.chain("fwd"), vec![Expr::Masquerade]),
                Rule::new(&t.chain("fwd"), vec![Expr::Counter]),
            ],
        };
        let l = TableListing::from(listing);
        assert_eq!(l.chain_rules("fwd"), Some(2));
        assert_eq!(l.chain_rules("empty"), Some(0));
        assert_eq!(l.chain_rules("nope"), None);
        assert!(l.has_element("berth-bridges", &Element::key(ifname("br0"))));
        assert!(!l.has_element("berth-bridges", &Element::key(ifname("br1"))));
        assert!(l.has_set("__set0") && !l.has_set("pm-ip4"));
    }
}
