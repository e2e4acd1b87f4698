//! Reading back what a network has in `inet berth` (for CNI CHECK).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::names::ChainNames;

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

/// Extracts `names`' objects from `nft -j list table inet berth` output.
pub(crate) fn parse(json: &str, names: &ChainNames) -> Result<NetworkState, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("bad nft JSON: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON without an \"nftables\" array")?;
    let mut st = NetworkState::default();
    for item in items {
        if let Some(chain) = item.get("chain") {
            match chain.get("name").and_then(Value::as_str) {
                Some(n) if n == names.nat => st.nat_chain = true,
                Some(n) if n == names.forward => st.forward_chain = true,
                _ => {}
            }
        } else if let Some(rule) = item.get("rule") {
            match rule.get("chain").and_then(Value::as_str) {
                Some(n) if n == names.nat => st.nat_rules += 1,
                Some(n) if n == names.forward => st.forward_rules += 1,
                _ => {}
            }
        } else if let Some(set) = item.get("set") {
            let name = set.get("name").and_then(Value::as_str);
            if name == Some(names.set_v4.as_str()) || name == Some(names.set_v6.as_str()) {
                let elems = match set.get("elem") {
                    Some(Value::Array(a)) => a.clone(),
                    Some(v) => vec![v.clone()],
                    None => Vec::new(),
                };
                st.masquerade.extend(elems.iter().filter_map(element_net));
            }
        }
    }
    Ok(st)
}

/// How many chains and sets in `nft -j list table inet berth` output
/// belong to something other than `names` (another network, or another
/// berth plugin).
pub(crate) fn foreign_objects(json: &str, names: &ChainNames) -> Result<usize, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("bad nft JSON: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON without an \"nftables\" array")?;
    let own = [&names.nat, &names.forward, &names.set_v4, &names.set_v6];
    Ok(items
        .iter()
        .filter_map(|i| {
            i.get("chain")
                .or_else(|| i.get("set"))
                .or_else(|| i.get("map"))
        })
        .filter_map(|o| o.get("name").and_then(Value::as_str))
        // The shared set of bridges belongs to whichever network is left.
        .filter(|n| *n != super::rules::BRIDGES_SET && !own.iter().any(|o| o.as_str() == *n))
        .count())
}

/// One set element: "10.0.0.1", {"prefix": {...}}, or either wrapped in
/// {"elem": {"val": ...}}. Ranges that are not prefixes are skipped: berth
/// only ever adds prefixes.
fn element_net(v: &Value) -> Option<IpNet> {
    match v {
        Value::String(s) => {
            let ip: IpAddr = s.parse().ok()?;
            Some(IpNet::from(ip))
        }
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let ip: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                IpNet::new(ip, len).ok()
            } else {
                element_net(o.get("elem")?.get("val")?)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::chain_names;

    #[test]
    fn parses_listing() {
        let n = chain_names("net1");
        let json = format!(
            r#"{{"nftables": [
              {{"metainfo": {{"version": "1.0.6"}}}},
              {{"table": {{"family": "inet", "name": "berth", "handle": 1}}}},
              {{"chain": {{"family": "inet", "table": "berth", "name": "{nat}", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}},
              {{"chain": {{"family": "inet", "table": "berth", "name": "nat-other-00000000", "handle": 2}}}},
              {{"set": {{"family": "inet", "name": "{s4}", "table": "berth", "type": "ipv4_addr", "handle": 3, "flags": ["interval"], "elem": [{{"prefix": {{"addr": "10.88.0.0", "len": 16}}}}, "10.99.0.1"]}}}},
              {{"set": {{"family": "inet", "name": "{s6}", "table": "berth", "type": "ipv6_addr", "handle": 4, "flags": ["interval"], "elem": [{{"elem": {{"val": {{"prefix": {{"addr": "fd00::", "len": 64}}}}, "comment": "x"}}}}]}}}},
              {{"rule": {{"family": "inet", "table": "berth", "chain": "{nat}", "handle": 5, "expr": []}}}},
              {{"rule": {{"family": "inet", "table": "berth", "chain": "nat-other-00000000", "handle": 6, "expr": []}}}}
            ]}}"#,
            nat = n.nat,
            s4 = n.set_v4,
            s6 = n.set_v6
        );
        let st = parse(&json, &n).unwrap();
        assert!(st.nat_chain);
        assert_eq!(st.nat_rules, 1);
        assert!(!st.forward_chain);
        assert_eq!(st.forward_rules, 0);
        assert_eq!(
            st.masquerade,
            vec![
                "10.88.0.0/16".parse::<IpNet>().unwrap(),
                "10.99.0.1/32".parse().unwrap(),
                "fd00::/64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("not json", &chain_names("x")).is_err());
        assert!(parse("{}", &chain_names("x")).is_err());
    }
}
