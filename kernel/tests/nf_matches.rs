//! berth's compiled nft matches (nf_tables::matches) against nft 1.0.6
//! itself: for each form, in a throw-away namespace, berth commits
//! `meta nfproto ipv4|ipv6 <COND> accept` to chain `inet t a` over
//! netlink and nft adds the same rule text to chain `inet t b`; the two
//! must list as the same instructions, the same set elements and the same
//! rule text, and their anonymous sets as the same set (flags, key, size,
//! nft's user data). Run as root, with nft installed.

mod common;

use std::collections::HashMap;

use berth_kernel::nf_tables::matches::compile_matches;
use berth_kernel::nf_tables::value::nfproto_is;
use berth_kernel::nf_tables::{self, Batch, Chain, Expr, Family, Rule, Table, Verdict};
use berth_kernel::Netns;
use common::TestNs;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

const V4: &[&str] = &[
    // Addresses: values, prefixes (byte-aligned, not, /0, host bits set),
    // ranges, sets (interval or not, merged, open at the top).
    "ip saddr 10.1.2.3",
    "ip daddr != 10.1.2.3",
    "ip saddr == 10.1.2.3",
    "ip saddr 192.168.5.0/24",
    "ip saddr != 192.168.5.0/24",
    "ip daddr 10.0.0.0/20",
    "ip daddr != 10.0.0.1/12",
    "ip saddr 0.0.0.0/0",
    "ip saddr 10.0.0.1/32",
    "ip saddr 10.2.0.0-10.2.0.9",
    "ip saddr != 10.2.0.0-10.2.0.9",
    "ip daddr { 10.0.0.0/8, 172.16.1.1 }",
    "ip daddr != { 10.0.0.1, 10.0.0.2 }",
    "ip saddr {10.0.0.0/8,10.1.0.0/16,10.3.0.0-10.3.0.5,255.0.0.0/8}",
    "ip saddr { 10.0.0.0/8 }",
    "ip daddr != { 10.0.0.1 }",
    "ip daddr { 0.0.0.0/0, 1.1.1.1 }",
    // Interface names: exact, wildcard, sets.
    "iifname \"eth0\"",
    "iifname eth0",
    "iifname != \"lo\"",
    "oifname \"br*\"",
    "oifname != br-*",
    "meta iifname \"0123456789abcde\"",
    "iifname { \"eth0\", \"eth1\" }",
    "oifname != { \"br*\", veth0, \"bridge0\" }",
    "iifname { \"x\" }",
    "iifname { \"a b\", \"c\" }",
    // Protocols.
    "ip protocol tcp",
    "ip protocol != 17",
    "ip protocol { tcp, udp }",
    "ip protocol icmp",
    "ip protocol 47",
    "meta l4proto udp",
    "meta l4proto != sctp",
    "meta l4proto { tcp, udp, 200 }",
    "meta l4proto icmpv6",
    "ip protocol 6-17",
    // Ports: dependencies, ranges, sets, merges.
    "tcp dport 8080",
    "tcp dport != 8080",
    "udp sport 53",
    "sctp dport 9",
    "th dport 80",
    "th sport != 0x1",
    "tcp dport 1000-2000",
    "tcp dport != 1000-2000",
    "udp dport { 53, 1000-2000 }",
    "tcp dport { 80, 443 }",
    "tcp dport {80,80,443}",
    "tcp dport != { 1-2, 3-4, 1024-65535 }",
    "tcp dport { 1024-65535 }",
    "tcp dport { 0-10, 65535 }",
    "tcp sport 1 tcp dport 2",
    "tcp sport != 22 tcp dport != 23",
    "tcp sport 22 tcp dport != 23",
    "th sport 5 tcp dport 80",
    "tcp dport 80 meta mark 1 tcp sport 90",
    "tcp dport 80 tcp sport 90 tcp dport 81",
    "ip protocol tcp tcp dport 80",
    "meta l4proto udp udp dport 53",
    "ip protocol 200 tcp dport 80",
    "tcp dport 80 ip protocol 200 tcp sport 5",
    "ip protocol != tcp tcp dport 80",
    "ip protocol icmp th dport 80",
    "ct state established,related tcp dport 22",
    // Marks.
    "meta mark 0x10",
    "mark 16",
    "meta mark != 0x10",
    "meta mark & 0xff == 0x10",
    "meta mark & 0xff != 0",
    "meta mark & 0xff 0x10",
    "meta mark { 1, 0xffffffff }",
    // ct state.
    "ct state new",
    "ct state established,related",
    "ct state established , related",
    "ct state != new",
    "ct state == established,related",
    "ct state != established,related",
    "ct state invalid,untracked",
    // fib.
    "fib saddr type local",
    "fib daddr type != local",
    "fib daddr . iif type local",
    "fib saddr . oif type broadcast",
    "fib iif . daddr . mark type multicast",
    // The conditions of a real berth run's DNAT rule.
    "ip saddr != 192.168.5.0/24 ip daddr { 10.0.0.0/8, 172.16.1.1 } iifname \"eth0\" \
     iifname != \"lo\" oifname \"br*\" tcp dport 8080 meta mark 0x00000010 ip protocol tcp \
     ip saddr 10.2.0.0-10.2.0.9 ct state new fib saddr type local",
];

const V6: &[&str] = &[
    "ip6 saddr fd00::/8",
    "ip6 daddr != fd00::1",
    "ip6 saddr fd00::1/12",
    "ip6 saddr != fd00::1/64",
    "ip6 saddr ::/0",
    "ip6 saddr fd00::1-fd00::5",
    "ip6 saddr != fd00::1-fd00::5",
    "ip6 daddr { fd00::/8, fe80::1 }",
    "ip6 saddr { ::1, ::2 }",
    "ip6 saddr ::ffff:1.2.3.4",
    "ip6 daddr { ::/1, 8000::/1 }",
    "ip6 nexthdr tcp",
    "ip6 nexthdr { 6, 17 }",
    "ip6 nexthdr udp udp dport 53",
    "ip6 nexthdr 0 tcp dport 80",
    "meta l4proto icmpv6",
    "tcp dport 80",
    "udp sport { 53, 1000-2000 }",
    "ip6 saddr { ::1, ::2 } tcp dport { 80, 443 } iifname { a*, b }",
    "iifname eth0 ct state established fib daddr type local",
    "fib saddr . iif type != local",
    // The same run's IPv6 conditions.
    "ip6 saddr fd00::/8 ip6 daddr != fd00::1 udp sport { 53, 1000-2000 }",
];

/// What `nft --debug=netlink list chain` prints, in parts.
#[derive(Debug, Default)]
struct Listing {
    /// Anonymous (and other) sets: their element lines, sorted (a hash
    /// set lists in no fixed order).
    sets: HashMap<String, Vec<String>>,
    /// The rules' instruction lines.
    rules: Vec<Vec<String>>,
    /// The rules as nft prints them.
    text: Vec<String>,
}

impl Listing {
    fn parse(out: &str) -> Listing {
        let mut l = Listing::default();
        let mut set: Option<String> = None;
        let mut in_text = false;
        for line in out.lines() {
            if line.starts_with("table ") {
                in_text = true;
                continue;
            }
            if in_text {
                let t = line.trim();
                if !(t.is_empty() || t == "}" || t.starts_with("chain ")) {
                    l.text.push(t.to_string());
                }
            } else if let Some(name) = line.strip_prefix("inet t @") {
                set = Some(name.trim().to_string());
                l.sets.entry(name.trim().to_string()).or_default();
            } else if let (Some(s), Some(e)) = (&set, line.strip_prefix("\telement ")) {
                l.sets
                    .entry(s.clone())
                    .or_default()
                    .push(e.trim().to_string());
            } else if line.starts_with("inet t ") {
                // A rule's header: table, chain, handle, position.
                set = None;
                l.rules.push(Vec::new());
            } else if let (Some(r), true) = (l.rules.last_mut(), line.starts_with("  [")) {
                r.push(line.trim().to_string());
            }
        }
        for e in l.sets.values_mut() {
            e.sort();
        }
        l
    }

    /// The instructions, each lookup's set name replaced by its elements
    /// (the kernel numbers berth's and nft's sets apart).
    fn instructions(&self) -> Vec<Vec<String>> {
        self.rules
            .iter()
            .map(|r| {
                r.iter()
                    .map(|line| {
                        let Some(at) = line.find("set __set") else {
                            return line.clone();
                        };
                        let rest = &line[at + 4..];
                        let name = rest.split_whitespace().next().unwrap_or_default();
                        let elements = self.sets.get(name).cloned().unwrap_or_default();
                        format!(
                            "{}set {{ {} }}{}",
                            &line[..at],
                            elements.join(" | "),
                            &rest[name.len()..]
                        )
                    })
                    .collect()
            })
            .collect()
    }
}

/// A set as the kernel lists it: its attributes but the kernel's name
/// and handle for it.
type ListedSet = Vec<(u16, Vec<u8>)>;

/// The sets of `ns`'s inet tables as the kernel lists them, in the order
/// they were made (nft lists no set's user data, so it is read here).
fn listed_sets(ns: &Netns) -> Vec<ListedSet> {
    const NFT_MSG_GETSET: u16 = (10 << 8) | 10;
    const NLM_F_REQUEST_DUMP: u16 = 0x1 | 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NFTA_SET_NAME: u16 = 2;
    const NFTA_SET_HANDLE: u16 = 16;
    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
            let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            out.push((kind, b[4..len].to_vec()));
            b = &b[(len.div_ceil(4) * 4).min(b.len())..];
        }
        out
    }
    ns.run(|| {
        let mut sock = Socket::new(NETLINK_NETFILTER).expect("netfilter socket");
        sock.bind_auto().expect("bind");
        let mut req = Vec::new();
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&NFT_MSG_GETSET.to_ne_bytes());
        req.extend_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
        req.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        // nfgenmsg: the inet family.
        req.extend_from_slice(&[1, 0, 0, 0]);
        sock.send(&req, 0).expect("send");
        let mut sets = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(1 << 16);
            sock.recv(&mut buf, 0).expect("recv");
            let mut msgs = buf.as_slice();
            while msgs.len() >= 20 {
                let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
                match u16::from_ne_bytes([msgs[4], msgs[5]]) {
                    NLMSG_DONE => return sets,
                    NLMSG_ERROR => panic!("listing sets failed"),
                    _ => {}
                }
                let set: ListedSet = attrs(&msgs[20..len])
                    .into_iter()
                    .filter(|(k, _)| *k != NFTA_SET_NAME && *k != NFTA_SET_HANDLE)
                    .collect();
                sets.push(set);
                msgs = &msgs[(len.div_ceil(4) * 4).min(msgs.len())..];
            }
        }
    })
    .expect("enter the namespace")
}

fn list(ns: &TestNs, args: &[&str]) -> String {
    let (ok, out, err) = ns.exec("nft", args);
    assert!(ok, "nft {args:?}: {err}");
    out
}

/// Compares berth's rule for `cond` with nft's; Err says how they differ.
fn same_as_nft(cond: &str, v6: bool) -> Result<(), String> {
    let ns = TestNs::new();
    let netns = ns.open();
    let table = Table::new(Family::Inet, "t");
    let mut b = Batch::new();
    b.add_table(&table);
    for c in ["a", "b"] {
        b.add_chain(&Chain {
            at: table.chain(c),
            base: None,
        });
    }
    let compiled = compile_matches(cond, v6).map_err(|e| format!("refused: {e}"))?;
    let compiled_sets = compiled.sets.len();
    let mut exprs = nfproto_is(v6);
    exprs.extend(compiled.add_to(&mut b, &table));
    exprs.push(Expr::Verdict(Verdict::Accept));
    b.add_rule(Rule::new(&table.chain("a"), exprs.clone()));
    b.commit(Some(&netns), "test")
        .map_err(|e| format!("berth's batch: {e}"))?;

    let fam = if v6 { "ipv6" } else { "ipv4" };
    let add = format!("add rule inet t b meta nfproto {fam} {cond} accept");
    let (ok, _, err) = ns.exec("nft", &[&add]);
    if !ok {
        return Err(format!("nft refused what berth compiled: {err}"));
    }

    let a = Listing::parse(&list(
        &ns,
        &["--debug=netlink", "list", "chain", "inet", "t", "a"],
    ));
    let nft = Listing::parse(&list(
        &ns,
        &["--debug=netlink", "list", "chain", "inet", "t", "b"],
    ));
    if a.instructions() != nft.instructions() {
        return Err(format!(
            "instructions differ:\nberth {:#?}\nnft   {:#?}",
            a.instructions(),
            nft.instructions()
        ));
    }
    if a.text != nft.text || a.text.len() != 1 {
        return Err(format!(
            "nft lists them differently:\nberth {:?}\nnft   {:?}",
            a.text, nft.text
        ));
    }

    // berth's sets (made first) are nft's.
    let sets = listed_sets(&netns);
    let (berth, nft) = sets.split_at(sets.len() / 2);
    if berth != nft || berth.len() != compiled_sets {
        return Err(format!("sets differ:\nberth {berth:?}\nnft   {nft:?}"));
    }

    // berth reads its rule back as written (set names aside: the kernel
    // numbers them).
    let rules = nf_tables::list_chain(Some(&netns), &table.chain("a"))
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let unnamed = |e: &Expr| match e {
        Expr::Lookup {
            sreg, dreg, invert, ..
        } => Expr::Lookup {
            set: String::new(),
            sreg: *sreg,
            dreg: *dreg,
            invert: *invert,
        },
        e => e.clone(),
    };
    let read: Vec<Expr> = rules
        .first()
        .map(|r| r.exprs.iter().map(unnamed).collect())
        .unwrap_or_default();
    let written: Vec<Expr> = exprs.iter().map(unnamed).collect();
    if read != written {
        return Err(format!(
            "read back differently:\n{read:?}\nwritten\n{written:?}"
        ));
    }
    Ok(())
}

#[test]
fn compiled_matches_are_what_nft_writes() {
    let cases: Vec<(&str, bool)> = V4
        .iter()
        .map(|c| (*c, false))
        .chain(V6.iter().map(|c| (*c, true)))
        .collect();
    // Namespaces are independent: a few threads keep the run short.
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases
            .chunks(cases.len().div_ceil(8))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|(cond, v6)| {
                            let fam = if *v6 { "v6" } else { "v4" };
                            same_as_nft(cond, *v6)
                                .err()
                                .map(|e| format!("{fam} `{cond}`: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a thread panicked".into()])
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn refused_matches_name_the_token() {
    for (cond, v6, token) in [
        ("icmp type echo-request", false, "\"icmp\""),
        ("ip saddr 10.0.0.1", true, "\"ip saddr\""),
        ("tcp dport 80 udp sport 53", false, "tcp vs. udp"),
    ] {
        let e = compile_matches(cond, v6).err().unwrap_or_default();
        assert!(e.contains(token), "{cond}: {e}");
    }
}
