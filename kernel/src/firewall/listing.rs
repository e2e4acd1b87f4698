//! A table as `nft list table` prints it, read once to compare with what
//! berth's records say should be there (the reconciler: one listing for
//! every network and attachment, where CHECK asks nft per object).
//!
//! The text form rather than JSON: nft prints a map's elements in the
//! same syntax berth writes them in (`tcp . 8080 : 10.88.0.5 . 80`), so
//! an element is found by comparing text. The layout parsed is nft's own
//! and regular: one `table` block, `chain`/`set`/`map` blocks inside it,
//! one rule per line in a chain, a set's elements in one `elements = {
//! ... }` that nft wraps after commas.

use std::collections::{HashMap, HashSet};

use super::nft;
use crate::{Error, Netns, Result};

/// The chains (their rules) and sets and maps (their elements) of a table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableListing {
    chains: HashMap<String, Vec<String>>,
    elements: HashMap<String, HashSet<String>>,
}

/// Whitespace runs as one space, so wrapped lines compare equal.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl TableListing {
    /// Parses `nft list table FAMILY NAME` output.
    pub fn parse(text: &str) -> TableListing {
        enum In {
            Table,
            Chain(String),
            Set(String),
        }
        let mut out = TableListing::default();
        let mut at = In::Table;
        // An `elements = { ...` still open (wrapped over lines).
        let mut open: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if let Some(buf) = &mut open {
                buf.push(' ');
                buf.push_str(line);
            } else if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                out.chains.entry(name.to_string()).or_default();
                at = In::Chain(name.to_string());
                continue;
            } else if let Some(name) = line
                .strip_prefix("set ")
                .or_else(|| line.strip_prefix("map "))
                .and_then(|r| r.strip_suffix(" {"))
            {
                out.elements.entry(name.to_string()).or_default();
                at = In::Set(name.to_string());
                continue;
            } else if line == "}" {
                at = In::Table;
                continue;
            } else if let Some(rest) = line.strip_prefix("elements = {") {
                open = Some(rest.to_string());
            } else {
                if let In::Chain(name) = &at {
                    if !line.is_empty() && !line.starts_with("type ") {
                        out.chains
                            .entry(name.clone())
                            .or_default()
                            .push(line.to_string());
                    }
                }
                continue;
            }
            // Inside an elements list: complete once it ends with its brace.
            let Some(buf) = open.take_if(|b| b.trim_end().ends_with('}')) else {
                continue;
            };
            if let In::Set(name) = &at {
                let list = buf.trim_end().trim_end_matches('}');
                let set = out.elements.entry(name.clone()).or_default();
                set.extend(list.split(',').map(squeeze).filter(|e| !e.is_empty()));
            }
        }
        out
    }

    /// The rules of chain `name`, None if there is no such chain.
    pub fn chain_rules(&self, name: &str) -> Option<&[String]> {
        self.chains.get(name).map(Vec::as_slice)
    }

    /// True if set or map `object` holds `element` (`key` or `key : data`,
    /// in nft's syntax).
    pub fn has_element(&self, object: &str, element: &str) -> bool {
        self.elements
            .get(object)
            .is_some_and(|set| set.contains(&squeeze(element)))
    }

    /// True if there is a set or map named `object`.
    pub fn has_set(&self, object: &str) -> bool {
        self.elements.contains_key(object)
    }
}

/// `nft list table FAMILY NAME`, parsed; None if there is no such table.
pub fn list_table_in(ns: Option<&Netns>, family: &str, name: &str) -> Result<Option<TableListing>> {
    let op = format!("list table {family} {name}");
    match nft::run(ns, &["list", "table", family, name], None, &op) {
        Ok(out) => Ok(Some(TableListing::parse(&out))),
        // nft reports a missing table as ENOENT on stderr.
        Err(Error::Nft { msg, .. }) if msg.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As nft 1.0.6 prints berth's table (trimmed), a long element list
    /// wrapped.
    const LISTING: &str = r#"table inet berth {
	set berth-bridges {
		type ifname
		elements = { "bk00ora5", "cni0" }
	}

	set masq4-n1-ecc621d0 {
		type ipv4_addr
		flags interval
		elements = { 10.217.0.0/24 }
	}

	map pm4-d {
		type inet_proto . inet_service : ipv4_addr . inet_service
		elements = { tcp . 8080 : 10.217.0.2 . 80, udp . 5353 : 10.217.0.2 . 53,
			     tcp . 8081 : 10.217.0.3 . 80 }
	}

	set pm-ip4 {
		type ipv4_addr
	}

	chain nat-n1-ecc621d0 {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr @masq4-n1-ecc621d0 ip daddr != @masq4-n1-ecc621d0 masquerade
	}

	chain fwd-n1-ecc621d0 {
		type filter hook forward priority filter - 1; policy accept;
		iifname "bk00ora5" oifname != "bk00ora5" oifname @berth-bridges ct status dnat accept
		iifname "bk00ora5" meta mark set meta mark | 0x40000000 accept
	}
}
"#;

    #[test]
    fn chains_sets_and_wrapped_elements() {
        let l = TableListing::parse(LISTING);
        assert_eq!(l.chain_rules("nat-n1-ecc621d0").map(<[_]>::len), Some(1));
        assert_eq!(l.chain_rules("fwd-n1-ecc621d0").map(<[_]>::len), Some(2));
        assert_eq!(l.chain_rules("nope"), None);
        assert!(l.has_element("berth-bridges", "\"bk00ora5\""));
        assert!(l.has_element("masq4-n1-ecc621d0", "10.217.0.0/24"));
        assert!(l.has_element("pm4-d", "tcp . 8080 : 10.217.0.2 . 80"));
        assert!(l.has_element("pm4-d", "tcp  .  8081 : 10.217.0.3 . 80"));
        assert!(!l.has_element("pm4-d", "tcp . 808 : 10.217.0.2 . 80"));
        assert!(!l.has_element("pm4-d", "tcp . 8080"));
        assert!(l.has_set("pm-ip4") && !l.has_element("pm-ip4", "10.217.0.2"));
        assert!(!l.has_set("pm6-d"));
    }

    #[test]
    fn an_empty_table() {
        let l = TableListing::parse("table bridge berth {\n}\n");
        assert_eq!(l, TableListing::default());
    }
}
