//! Host snapshots: what a case may not leave behind. Each object is one
//! human-readable line; a snapshot is a multiset of lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::exec::{clip, have_program, ip_json, run};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    items: BTreeMap<String, usize>,
}

impl Snapshot {
    fn add(&mut self, s: String) {
        *self.items.entry(s).or_default() += 1;
    }

    /// Everything the host namespace `host` and the `state_dirs` hold.
    pub fn take(host: &str, state_dirs: &[PathBuf]) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        let mut names = BTreeMap::new();
        for l in arr(&ip_json(&["-n", host, "-d", "link", "show"])?) {
            let name = l["ifname"].as_str().unwrap_or("?").to_string();
            if let Some(i) = l["ifindex"].as_u64() {
                names.insert(i, name.clone());
            }
            let kind = l["linkinfo"]["info_kind"]
                .as_str()
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            s.add(format!("link {name}{kind}"));
        }
        for l in arr(&ip_json(&["-n", host, "addr", "show"])?) {
            let name = l["ifname"].as_str().unwrap_or("?");
            for a in arr(&l["addr_info"]) {
                if let (Some(ip), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                    if is_link_local6(ip) {
                        continue;
                    }
                    s.add(format!("address {ip}/{p} on {name}"));
                }
            }
        }
        for fam in ["-4", "-6"] {
            for r in arr(&ip_json(&[
                "-n", host, fam, "route", "show", "table", "all",
            ])?) {
                let dst = r["dst"].as_str().unwrap_or("");
                // Table local (local, broadcast, anycast, multicast routes)
                // is derived from the addresses, which are compared; whether
                // e.g. a tentative IPv6 address on a carrier-less bridge has
                // its local route yet is kernel timing.
                if r["table"].as_str() == Some("local") {
                    continue;
                }
                if fam == "-6" && (is_link_local6(dst) || dst.starts_with("ff00::")) {
                    continue;
                }
                let mut d = format!("route {}", r["dst"].as_str().unwrap_or("?"));
                if let Some(t) = r["type"].as_str() {
                    if t != "unicast" {
                        d = format!("route {t} {}", r["dst"].as_str().unwrap_or("?"));
                    }
                }
                if let Some(g) = r["gateway"].as_str() {
                    d.push_str(&format!(" via {g}"));
                }
                if let Some(dev) = r["dev"].as_str() {
                    d.push_str(&format!(" dev {dev}"));
                }
                if let Some(t) = r["table"].as_str() {
                    d.push_str(&format!(" table {t}"));
                }
                s.add(d);
            }
        }
        if have_program("nft") {
            let o = run(
                "ip",
                &["netns", "exec", host, "nft", "-j", "list", "ruleset"],
            );
            if o.ok() && !o.stdout.trim().is_empty() {
                let v: Value = serde_json::from_str(&o.stdout)
                    .context("nft -j list ruleset printed invalid JSON")?;
                for item in nft_items(&v) {
                    s.add(item);
                }
            }
        }
        for (prog, tag) in [
            ("iptables-save", "iptables"),
            ("ip6tables-save", "ip6tables"),
        ] {
            if have_program(prog) {
                let o = run("ip", &["netns", "exec", host, prog]);
                if o.ok() {
                    for item in xtables_items(tag, &o.stdout) {
                        s.add(item);
                    }
                }
            }
        }
        for d in state_dirs {
            for f in file_names(d) {
                s.add(format!("file {f}"));
            }
        }
        Ok(s)
    }

    /// What `self` (after) has more of than `before` ("leaked ...") and
    /// less of ("removed ..."), leaks first.
    pub fn diff(&self, before: &Snapshot) -> Vec<String> {
        let mut leaked = Vec::new();
        let mut removed = Vec::new();
        for (k, &n) in &self.items {
            let b = before.items.get(k).copied().unwrap_or(0);
            if n > b {
                leaked.push(format!("leaked {k}"));
            }
        }
        for (k, &b) in &before.items {
            let n = self.items.get(k).copied().unwrap_or(0);
            if b > n {
                removed.push(format!("removed {k}"));
            }
        }
        // Links first: addresses and routes of a leaked link follow from it.
        let rank = |s: &String| {
            [
                "link ",
                "iptables",
                "ip6tables",
                "nft table",
                "nft chain",
                "nft set",
                "nft map",
                "file ",
                "nft rule",
                "nft element",
                "address ",
                "route ",
            ]
            .iter()
            .position(|p| {
                s.split_once(' ')
                    .is_some_and(|(_, rest)| rest.starts_with(p))
            })
            .unwrap_or(9)
        };
        leaked.sort_by_key(rank);
        removed.sort_by_key(rank);
        leaked.extend(removed);
        leaked
    }
}

/// IPv6 link-local addresses and the fe80::/64, ff00::/8 routes are the
/// kernel's, per link; whether a carrier-less bridge has them depends on its
/// carrier history, not on what a plugin left. A leaked link is reported as
/// such.
fn is_link_local6(a: &str) -> bool {
    let a = a.to_ascii_lowercase();
    a.starts_with("fe8") || a.starts_with("fe9") || a.starts_with("fea") || a.starts_with("feb")
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Drops handles, counters' numbers, set element expiry: what changes
/// without anyone leaking anything.
fn normalize_nft(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for k in ["handle", "index", "expires", "packets", "bytes"] {
                o.remove(k);
            }
            if let Some(c) = o.get_mut("counter") {
                if c.is_object() || c.is_null() {
                    *c = Value::Null;
                }
            }
            for (_, x) in o.iter_mut() {
                normalize_nft(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_nft),
        _ => {}
    }
}

/// One line per nftables object of `nft -j list ruleset`.
pub fn nft_items(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for obj in arr(&v["nftables"]) {
        let Some((kind, body)) = obj
            .as_object()
            .and_then(|o| o.iter().next())
            .map(|(k, b)| (k.clone(), b.clone()))
        else {
            continue;
        };
        if kind == "metainfo" {
            continue;
        }
        let s = |k: &str| body[k].as_str().unwrap_or("?").to_string();
        match kind.as_str() {
            "table" => out.push(format!("nft table {} {}", s("family"), s("name"))),
            "chain" => out.push(format!(
                "nft chain {} {} {}",
                s("family"),
                s("table"),
                s("name")
            )),
            "rule" => {
                let mut e = body["expr"].clone();
                normalize_nft(&mut e);
                let comment = body["comment"]
                    .as_str()
                    .map(|c| format!(" comment {c:?}"))
                    .unwrap_or_default();
                out.push(format!(
                    "nft rule {} {} {}: {}{comment}",
                    s("family"),
                    s("table"),
                    s("chain"),
                    clip(&e.to_string(), 100)
                ));
            }
            "set" | "map" => {
                out.push(format!(
                    "nft {kind} {} {} {}",
                    s("family"),
                    s("table"),
                    s("name")
                ));
                for el in arr(&body["elem"]) {
                    let mut el = el.clone();
                    normalize_nft(&mut el);
                    out.push(format!(
                        "nft element {} {} {} {}",
                        s("family"),
                        s("table"),
                        s("name"),
                        clip(&el.to_string(), 120)
                    ));
                }
            }
            _ => {
                let mut b = body.clone();
                normalize_nft(&mut b);
                out.push(format!(
                    "nft {kind} {} {} {}",
                    s("family"),
                    s("table"),
                    s("name")
                ));
            }
        }
    }
    out
}

/// One line per chain and rule of `iptables-save` output, without the
/// comment lines and counters.
pub fn xtables_items(tag: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            out.push(format!("{tag} table {table}"));
        } else if let Some(c) = line.strip_prefix(':') {
            let mut parts = c.split_whitespace();
            let name = parts.next().unwrap_or("?");
            let policy = parts.next().unwrap_or("-");
            out.push(format!("{tag} chain {table} {name} {policy}"));
        } else {
            out.push(format!("{tag} rule {table} {line}"));
        }
    }
    out
}

/// Every path under `root` (recursively; directories end in '/').
pub fn file_names(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                out.push(format!("{}/", p.display()));
                walk(&p, out);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtables_lines_drop_counters_and_comments() {
        let t = "# Generated by iptables-save\n*nat\n:POSTROUTING ACCEPT [3:180]\n:CNI-abc - [0:0]\n-A POSTROUTING -s 10.0.0.2/32 -j CNI-abc\nCOMMIT\n";
        let v = xtables_items("iptables", t);
        assert_eq!(
            v,
            vec![
                "iptables table nat",
                "iptables chain nat POSTROUTING ACCEPT",
                "iptables chain nat CNI-abc -",
                "iptables rule nat -A POSTROUTING -s 10.0.0.2/32 -j CNI-abc",
            ]
        );
    }

    #[test]
    fn nft_items_ignore_handles_and_counters() {
        let a: Value = serde_json::from_str(r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"berth","handle":3}},{"chain":{"family":"inet","table":"berth","name":"nat-x","handle":1}},{"rule":{"family":"inet","table":"berth","chain":"nat-x","handle":9,"expr":[{"counter":{"packets":5,"bytes":300}},{"accept":null}]}}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"nftables":[{"table":{"family":"inet","name":"berth","handle":7}},{"chain":{"family":"inet","table":"berth","name":"nat-x","handle":2}},{"rule":{"family":"inet","table":"berth","chain":"nat-x","handle":4,"expr":[{"counter":{"packets":0,"bytes":0}},{"accept":null}]}}]}"#).unwrap();
        assert_eq!(nft_items(&a), nft_items(&b));
        assert_eq!(nft_items(&a)[1], "nft chain inet berth nat-x");
    }

    #[test]
    fn diff_names_leaks_and_removals() {
        let mut a = Snapshot::default();
        a.add("link br0 (bridge)".into());
        let mut b = a.clone();
        b.add("address 10.0.0.1/24 on br0".into());
        b.add("link bv1234abcd (veth)".into());
        assert_eq!(
            b.diff(&a),
            vec![
                "leaked link bv1234abcd (veth)",
                "leaked address 10.0.0.1/24 on br0"
            ]
        );
        assert_eq!(a.diff(&b)[0], "removed link bv1234abcd (veth)");
    }
}
