//! Published ports (berth-portmap) in the `inet berth` table.
//!
//! Every packet to a local address does one map lookup per family; every
//! container's ADD and DEL is one `nft -f -` transaction that adds or
//! deletes exactly that container's elements, whatever else is installed:
//!
//! ```text
//! chain pm-prerouting  nat/prerouting/dstnat: fib daddr type local jump pm-<profile>
//! chain pm-output      nat/output/dstnat:     the same, for the host's own connections
//!                      (except to ::1, which a userspace proxy serves)
//! chain pm-<profile>   meta nfproto ipv4 <conditionsV4> dnat ip to
//!                          ip daddr . meta l4proto . th dport map @pm4a-<profile>   (hostIP given)
//!                      meta nfproto ipv4 <conditionsV4> dnat ip to
//!                          meta l4proto . th dport map @pm4-<profile>               (any address)
//!                      (and the ipv6 pair on pm6a-/pm6-)
//! chain pm-forward     filter/forward/-1, connections DNATed to a member of:
//!                      @pm-hairpin4 (ip daddr . iifname): from the container's own
//!                          host-side link (hairpin): meta mark |= HAIRPIN_MARK
//!                      @pm-ip4 (ip daddr): meta mark |= FORWARD_MARK, accept
//! chain pm-postrouting nat/postrouting/srcnat-1, DNATed connections:
//!                      with HAIRPIN_MARK: masquerade
//!                      to @pm-local4 (ip daddr) from 127.0.0.0/8: masquerade
//!                          (IPv4 only: the kernel never routes ::1 off the loopback)
//!                      to @pm-all4 (ip daddr): masquerade (masqAll)
//! ```
//!
//! A *profile* is one pair of `conditionsV4`/`conditionsV6` lists: the
//! mappings of every config with the same conditions share its maps and
//! chain, so conditions apply to exactly the mappings they came with.
//!
//! The batches are in nft's own syntax, not JSON: nft 1.0.6 (Debian 12)
//! crashes (SIGSEGV) parsing a JSON map declaration whose data is a
//! concatenation (`ipv4_addr . inet_service`). Every value written into
//! the text is a parsed address, a number, a protocol from a closed list,
//! an interface name checked by [`check_ifname`] or a name generated here;
//! conditions are the administrator's nft expressions, as with the
//! reference portmap's nftables backend, and are refused if they could end
//! the statement they sit in.
//!
//! Cost: an ADD that only adds elements commits in about 2 ms, whatever
//! is installed; a transaction that touches a table, chain or set
//! definition, flushes a chain or deletes anything waits for RCU grace
//! periods (about 16 ms on this kernel). So the common ADD adds its
//! elements and nothing else ([`add_elements_in`]); the structure is built
//! by [`rebuild_in`] when the caller's record says it is not there (first
//! ADD, new profile) or the fast path finds it gone. A DEL must delete
//! ([`remove_elements_in`]).
//!
//! Idempotence without listing the ruleset: `add` of an existing table,
//! chain, set or map is a no-op; base chains are flushed and refilled by
//! a rebuild (a few rules, whatever the number of containers); an element
//! is removed by "add it, then delete it", which succeeds whether or not it
//! was there (nft 1.0.6 has no `destroy`).

use std::fmt::Write as _;
use std::net::IpAddr;

use super::listing::TableListing;
use super::names::fnv1a32;
use super::nft;
use super::rules::{FORWARD_MARK, TABLE};
use crate::handle::check_ifname;
use crate::{Error, Netns, Result};

/// Base chain names (fixed: a later version must find them to delete them).
pub const PM_PREROUTING: &str = "pm-prerouting";
pub const PM_OUTPUT: &str = "pm-output";
pub const PM_POSTROUTING: &str = "pm-postrouting";
pub const PM_FORWARD: &str = "pm-forward";
/// The packet mark bit pm-forward sets on a hairpin connection's first
/// packet for pm-postrouting to masquerade (the input link, which tells a
/// hairpin, is not known in postrouting). Bit 13 (0x2000), the reference
/// portmap's default `markMasqBit`, which means the same there.
pub const HAIRPIN_MARK: u32 = 1 << 13;
/// Just before other srcnat chains (berth-bridge's masquerade, Docker's
/// POSTROUTING), as the reference puts its rule first in POSTROUTING.
const PRIO_SRCNAT: i32 = 99;
const PRIO_DSTNAT: i32 = -100;
const PRIO_FORWARD: i32 = -1;

/// Transport protocols a mapping can forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Case-insensitive, as runtimes send "TCP" or "tcp".
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One forwarded port: (host address or any, protocol, host port) to
/// (container address, container port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: Protocol,
    /// None: any local address of the container address's family.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// Extra match expressions (nft syntax) every mapping of a profile must
/// also satisfy, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Conditions {
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

impl Conditions {
    /// Short stable name of the profile: "d" without conditions, otherwise
    /// 8 hex digits of a hash of both lists.
    pub fn id(&self) -> String {
        if self.v4.is_empty() && self.v6.is_empty() {
            return "d".to_string();
        }
        let mut text = String::new();
        for (family, list) in [("4", &self.v4), ("6", &self.v6)] {
            text.push_str(family);
            for c in list {
                text.push('\u{1}');
                text.push_str(c);
            }
            text.push('\u{2}');
        }
        format!("{:08x}", fnv1a32(text.as_bytes()))
    }

    /// Refuses a condition that could end or escape the rule it is
    /// spliced into (the text goes into nft's own syntax).
    pub fn validate(&self) -> Result<()> {
        for (key, list) in [("conditionsV4", &self.v4), ("conditionsV6", &self.v6)] {
            for c in list {
                if c.trim().is_empty() {
                    return Err(Error::invalid(key, c, "empty condition"));
                }
                if c.chars()
                    .any(|ch| matches!(ch, ';' | '#' | '\n' | '\r' | '\0'))
                {
                    return Err(Error::invalid(key, c, "contains ';', '#' or a line break"));
                }
                let opens = c.matches('{').count();
                if opens != c.matches('}').count() || c.matches('"').count() % 2 != 0 {
                    return Err(Error::invalid(key, c, "unbalanced braces or quotes"));
                }
            }
        }
        Ok(())
    }
}

/// Everything one attachment owns in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedPorts {
    pub conditions: Conditions,
    pub mappings: Vec<PortMapping>,
    /// Container addresses that DNATed connections may be forwarded to.
    pub container_ips: Vec<IpAddr>,
    /// (container address, its host-side link): connections arriving from
    /// that link are masqueraded (hairpin; `snat`).
    pub hairpin: Vec<(IpAddr, String)>,
    /// IPv4 container addresses whose connections from the host's
    /// loopback address are masqueraded (`snat`).
    pub localhost: Vec<IpAddr>,
    /// Container addresses all of whose published-port connections are
    /// masqueraded (`masqAll`).
    pub masq_all: Vec<IpAddr>,
}

fn fam(ip: &IpAddr) -> char {
    if ip.is_ipv4() {
        '4'
    } else {
        '6'
    }
}

/// One element as (object name, key, data).
type Elem = (String, String, Option<String>);

impl PublishedPorts {
    pub fn validate(&self) -> Result<()> {
        self.conditions.validate()?;
        for (_, link) in &self.hairpin {
            check_ifname(link)?;
            if link.contains('"') || link.contains('\\') {
                return Err(Error::invalid(
                    "interface name",
                    link,
                    "contains a quote or backslash",
                ));
            }
        }
        for m in &self.mappings {
            if let Some(h) = m.host_ip {
                if h.is_ipv4() != m.container_ip.is_ipv4() {
                    return Err(Error::invalid(
                        "hostIP",
                        h.to_string(),
                        "is not of the container address's family",
                    ));
                }
            }
        }
        Ok(())
    }

    fn elements(&self) -> Vec<Elem> {
        let p = self.conditions.id();
        let mut out: Vec<Elem> = Vec::new();
        for m in &self.mappings {
            let f = fam(&m.container_ip);
            let data = format!("{} . {}", m.container_ip, m.container_port);
            let (map, key) = match m.host_ip {
                Some(h) => (
                    format!("pm{f}a-{p}"),
                    format!("{h} . {} . {}", m.protocol.name(), m.host_port),
                ),
                None => (
                    format!("pm{f}-{p}"),
                    format!("{} . {}", m.protocol.name(), m.host_port),
                ),
            };
            out.push((map, key, Some(data)));
        }
        for ip in &self.container_ips {
            out.push((format!("pm-ip{}", fam(ip)), ip.to_string(), None));
        }
        for (ip, link) in &self.hairpin {
            out.push((
                format!("pm-hairpin{}", fam(ip)),
                format!("{ip} . \"{link}\""),
                None,
            ));
        }
        for ip in &self.localhost {
            out.push((format!("pm-local{}", fam(ip)), ip.to_string(), None));
        }
        for ip in &self.masq_all {
            out.push((format!("pm-all{}", fam(ip)), ip.to_string(), None));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Builds one nft script (a single transaction).
struct Script(String);

impl Script {
    fn new() -> Script {
        Script(String::new())
    }

    fn table(&mut self) {
        self.line(format_args!("add table inet {TABLE}"));
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        let _ = self.0.write_fmt(args);
        self.0.push('\n');
    }

    /// The sets every profile shares (no-ops when they exist).
    fn global_sets(&mut self) {
        for f in ['4', '6'] {
            let addr = if f == '4' { "ipv4_addr" } else { "ipv6_addr" };
            for (name, kind) in [
                ("ip", addr.to_string()),
                ("hairpin", format!("{addr} . ifname")),
                ("all", addr.to_string()),
            ] {
                self.line(format_args!(
                    "add set inet {TABLE} pm-{name}{f} {{ type {kind}; }}"
                ));
            }
        }
        // IPv4 only: the kernel never routes ::1 off the loopback (IPv6 has
        // no route_localnet), so a DNAT of it could not leave the host.
        self.line(format_args!(
            "add set inet {TABLE} pm-local4 {{ type ipv4_addr; }}"
        ));
    }

    fn profile_maps(&mut self, id: &str) {
        for f in ['4', '6'] {
            let addr = if f == '4' { "ipv4_addr" } else { "ipv6_addr" };
            let data = format!("{addr} . inet_service");
            self.line(format_args!(
                "add map inet {TABLE} pm{f}-{id} {{ type inet_proto . inet_service : {data}; }}"
            ));
            self.line(format_args!(
                "add map inet {TABLE} pm{f}a-{id} {{ type {addr} . inet_proto . inet_service : {data}; }}"
            ));
        }
    }

    fn base_chains(&mut self) {
        for (name, kind, hook, prio) in [
            (PM_PREROUTING, "nat", "prerouting", PRIO_DSTNAT),
            (PM_OUTPUT, "nat", "output", PRIO_DSTNAT),
            (PM_POSTROUTING, "nat", "postrouting", PRIO_SRCNAT),
            (PM_FORWARD, "filter", "forward", PRIO_FORWARD),
        ] {
            self.line(format_args!(
                "add chain inet {TABLE} {name} {{ type {kind} hook {hook} priority {prio}; policy accept; }}"
            ));
            self.line(format_args!("flush chain inet {TABLE} {name}"));
        }
    }

    /// Flushes and refills the base chains and every profile's chain:
    /// the whole rule set, whose size depends only on the profiles.
    fn rules(&mut self, profiles: &[&Conditions]) {
        self.global_sets();
        self.base_chains();
        // ::1 is never DNATed: such a connection could not leave the host
        // (no route_localnet for IPv6); berth-portmap's proxy answers it.
        self.line(format_args!(
            "add rule inet {TABLE} {PM_OUTPUT} ip6 daddr ::1 return"
        ));
        for c in profiles {
            let id = c.id();
            self.profile_maps(&id);
            let chain = format!("pm-{id}");
            self.line(format_args!("add chain inet {TABLE} {chain}"));
            self.line(format_args!("flush chain inet {TABLE} {chain}"));
            for (f, ip, conds) in [('4', "ip", &c.v4), ('6', "ip6", &c.v6)] {
                let nfproto = if f == '4' { "ipv4" } else { "ipv6" };
                let cond = conds.join(" ");
                self.line(format_args!(
                    "add rule inet {TABLE} {chain} meta nfproto {nfproto} {cond} dnat {ip} to {ip} daddr . meta l4proto . th dport map @pm{f}a-{id}"
                ));
                self.line(format_args!(
                    "add rule inet {TABLE} {chain} meta nfproto {nfproto} {cond} dnat {ip} to meta l4proto . th dport map @pm{f}-{id}"
                ));
            }
            for base in [PM_PREROUTING, PM_OUTPUT] {
                self.line(format_args!(
                    "add rule inet {TABLE} {base} fib daddr type local jump {chain}"
                ));
            }
        }
        let (post, fwd) = (PM_POSTROUTING, PM_FORWARD);
        let hp = HAIRPIN_MARK;
        self.line(format_args!(
            "add rule inet {TABLE} {post} ct status dnat meta mark & {hp:#x} == {hp:#x} masquerade"
        ));
        self.line(format_args!(
            "add rule inet {TABLE} {post} ct status dnat ip saddr 127.0.0.0/8 ip daddr @pm-local4 masquerade"
        ));
        for (f, ip) in [('4', "ip"), ('6', "ip6")] {
            self.line(format_args!(
                "add rule inet {TABLE} {post} ct status dnat {ip} daddr @pm-all{f} masquerade"
            ));
            // The input link is known in forward, not in postrouting.
            self.line(format_args!(
                "add rule inet {TABLE} {fwd} ct status dnat {ip} daddr . iifname @pm-hairpin{f} meta mark set meta mark | {hp:#x}"
            ));
            self.line(format_args!(
                "add rule inet {TABLE} {fwd} ct status dnat {ip} daddr @pm-ip{f} meta mark set meta mark | {FORWARD_MARK:#x} accept"
            ));
        }
    }

    fn add_elements(&mut self, elems: &[Elem]) {
        for (obj, key, data) in elems {
            match data {
                Some(d) => self.line(format_args!(
                    "add element inet {TABLE} {obj} {{ {key} : {d} }}"
                )),
                None => self.line(format_args!("add element inet {TABLE} {obj} {{ {key} }}")),
            }
        }
    }

    /// Removes `elems` whether or not they are there.
    fn remove_elements(&mut self, elems: &[Elem]) {
        self.add_elements(elems);
        for (obj, key, _) in elems {
            self.line(format_args!(
                "delete element inet {TABLE} {obj} {{ {key} }}"
            ));
        }
    }

    /// Drops a profile's chain and maps (its jumps must be gone already:
    /// the base chains were flushed earlier in the same script).
    fn drop_profile(&mut self, id: &str) {
        self.profile_maps(id);
        let chain = format!("pm-{id}");
        self.line(format_args!("add chain inet {TABLE} {chain}"));
        self.line(format_args!("flush chain inet {TABLE} {chain}"));
        self.line(format_args!("delete chain inet {TABLE} {chain}"));
        for f in ['4', '6'] {
            self.line(format_args!("delete map inet {TABLE} pm{f}-{id}"));
            self.line(format_args!("delete map inet {TABLE} pm{f}a-{id}"));
        }
    }

    fn drop_globals(&mut self) {
        for name in [PM_PREROUTING, PM_OUTPUT, PM_POSTROUTING, PM_FORWARD] {
            self.line(format_args!("delete chain inet {TABLE} {name}"));
        }
        for f in ['4', '6'] {
            for name in ["ip", "hairpin", "all"] {
                self.line(format_args!("delete set inet {TABLE} pm-{name}{f}"));
            }
        }
        self.line(format_args!("delete set inet {TABLE} pm-local4"));
    }

    fn run(self, ns: Option<&Netns>, op: &str) -> Result<()> {
        nft::run(ns, &["-f", "-"], Some(&self.0), op).map(|_| ())
    }
}

fn distinct<'a>(profiles: impl IntoIterator<Item = &'a Conditions>) -> Vec<&'a Conditions> {
    let mut out: Vec<&Conditions> = Vec::new();
    for p in profiles {
        if !out.iter().any(|q| q.id() == p.id()) {
            out.push(p);
        }
    }
    out
}

/// True for nft's answer when a table, chain, set or map is missing: the
/// structure the fast paths assume is gone (a flushed ruleset, say).
pub fn is_missing_object(e: &Error) -> bool {
    matches!(e, Error::Nft { msg, .. } if msg.contains("No such file or directory"))
}

/// The common ADD: adds `ports`' elements (after removing those of
/// `replaced` that it no longer has, for a repeated ADD), touching nothing
/// else. Element additions are the one kind of nftables transaction the
/// kernel commits without waiting for an RCU grace period (about 2 ms
/// here against 16 for anything that touches a table, chain or set
/// definition, or deletes), whatever the number of elements installed.
/// Fails with an error [`is_missing_object`] recognises if the structure
/// (see [`rebuild_in`]) is not there.
pub fn add_elements_in(
    ns: Option<&Netns>,
    replaced: Option<&PublishedPorts>,
    ports: &PublishedPorts,
) -> Result<()> {
    ports.validate()?;
    let mut s = Script::new();
    if let Some(old) = replaced {
        let new = ports.elements();
        let gone: Vec<Elem> = old
            .elements()
            .into_iter()
            .filter(|e| !new.contains(e))
            .collect();
        s.remove_elements(&gone);
    }
    s.add_elements(&ports.elements());
    s.run(ns, "publish ports")
}

/// Makes the whole structure exist for `profiles` (table, sets, each
/// profile's maps and chain, the base chains with their rules flushed and
/// rewritten) and adds the elements of every attachment in `attachments`,
/// in one transaction. For the first ADD, a new profile, and recovery
/// after the table was removed behind berth's back (then `attachments` is
/// every recorded one). `replaced`'s elements are removed first.
pub fn rebuild_in(
    ns: Option<&Netns>,
    profiles: &[&Conditions],
    replaced: Option<&PublishedPorts>,
    attachments: &[&PublishedPorts],
) -> Result<()> {
    for a in attachments {
        a.validate()?;
    }
    let profiles = distinct(
        profiles
            .iter()
            .copied()
            .chain(attachments.iter().map(|a| &a.conditions)),
    );
    let mut s = Script::new();
    s.table();
    s.rules(&profiles);
    if let Some(old) = replaced {
        if !profiles.iter().any(|p| p.id() == old.conditions.id()) {
            s.profile_maps(&old.conditions.id());
        }
        s.remove_elements(&old.elements());
    }
    for a in attachments {
        s.add_elements(&a.elements());
    }
    s.run(ns, "publish ports")
}

/// The common DEL: removes `ports`' elements and nothing else (an element
/// already gone is fine). Fails with an error [`is_missing_object`]
/// recognises if a set or map is gone; [`unpublish_in`] copes with that.
pub fn remove_elements_in(ns: Option<&Netns>, ports: &PublishedPorts) -> Result<()> {
    let mut s = Script::new();
    s.remove_elements(&ports.elements());
    s.run(ns, "unpublish ports")
}

/// Removes `ports`' elements in one transaction, whatever exists. `others`
/// are the profiles still in use by other attachments: the rules are
/// rebuilt for them, the profile of `ports` is dropped if none uses it any
/// more, and with no other attachment left every portmap object goes.
pub fn unpublish_in(
    ns: Option<&Netns>,
    others: &[&Conditions],
    ports: &PublishedPorts,
) -> Result<()> {
    let profiles = distinct(others.iter().copied());
    let id = ports.conditions.id();
    let mut s = Script::new();
    s.table();
    if profiles.is_empty() {
        // The last attachment: every portmap object goes, elements and all
        // (the base chains are made to exist and emptied first, so
        // deleting them cannot fail).
        s.global_sets();
        s.base_chains();
        s.drop_profile(&id);
        s.drop_globals();
    } else {
        s.rules(&profiles);
        s.profile_maps(&id);
        s.remove_elements(&ports.elements());
        if !profiles.iter().any(|p| p.id() == id) {
            s.drop_profile(&id);
        }
    }
    s.run(ns, "unpublish ports")
}

/// Rules each chain of the structure must hold for `profiles`: (chain,
/// number of rules).
fn expected_rules(profiles: &[&Conditions]) -> Vec<(String, usize)> {
    let mut v = vec![
        (PM_PREROUTING.to_string(), profiles.len()),
        (PM_OUTPUT.to_string(), profiles.len()),
        (PM_POSTROUTING.to_string(), 4),
        (PM_FORWARD.to_string(), 4),
    ];
    for p in profiles {
        v.push((format!("pm-{}", p.id()), 4));
    }
    v
}

/// For CHECK: what is missing of the structure `profiles` need (a chain,
/// or rules in it), or None.
pub fn structure_missing_in(
    ns: Option<&Netns>,
    profiles: &[&Conditions],
) -> Result<Option<String>> {
    let profiles = distinct(profiles.iter().copied());
    for (chain, want) in expected_rules(&profiles) {
        let cmd = format!("list chain inet {TABLE} {chain}");
        let listing = match nft::run(ns, &["-f", "-"], Some(&cmd), "check published ports") {
            Ok(out) => out,
            Err(e) if is_missing_object(&e) => {
                return Ok(Some(format!(
                    "chain {chain} is missing from table inet {TABLE}"
                )))
            }
            Err(e) => return Err(e),
        };
        // A rule is a line inside the chain's braces other than its
        // "type ... hook ..." header.
        let rules = listing
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("table ")
                    && !l.starts_with("chain ")
                    && !l.starts_with("type ")
                    && *l != "}"
            })
            .count();
        if rules < want {
            return Ok(Some(format!(
                "chain {chain} in table inet {TABLE} has {rules} rules, {want} expected"
            )));
        }
    }
    Ok(None)
}

/// For the reconciler: the first thing `listing` (of `inet berth`) lacks
/// of the structure `profiles` need and of `attachments`' elements, as
/// text, or None. Works from one listing, where [`structure_missing_in`]
/// and [`missing_in`] ask nft per object.
pub fn missing_from_listing(
    listing: &TableListing,
    profiles: &[&Conditions],
    attachments: &[&PublishedPorts],
) -> Option<String> {
    let profiles = distinct(
        profiles
            .iter()
            .copied()
            .chain(attachments.iter().map(|a| &a.conditions)),
    );
    for (chain, want) in expected_rules(&profiles) {
        match listing.chain_rules(&chain) {
            None => return Some(format!("chain {chain}")),
            Some(rules) if rules.len() < want => {
                return Some(format!(
                    "rules of chain {chain} ({} of {want})",
                    rules.len()
                ))
            }
            Some(_) => {}
        }
    }
    for a in attachments {
        for (object, key, data) in a.elements() {
            let element = match data {
                Some(d) => format!("{key} : {d}"),
                None => key,
            };
            if !listing.has_element(&object, &element) {
                return Some(format!("element {{ {element} }} of {object}"));
            }
        }
    }
    None
}

/// For CHECK: the first of `ports`' elements missing from the kernel, as
/// text naming the set or map, or None when all are there.
pub fn missing_in(ns: Option<&Netns>, ports: &PublishedPorts) -> Result<Option<String>> {
    let elems = ports.elements();
    let mut objects: Vec<&str> = elems.iter().map(|e| e.0.as_str()).collect();
    objects.dedup();
    for obj in objects {
        let mine: Vec<&Elem> = elems.iter().filter(|e| e.0 == obj).collect();
        let keys: Vec<&str> = mine.iter().map(|e| e.1.as_str()).collect();
        let cmd = format!("get element inet {TABLE} {obj} {{ {} }}", keys.join(", "));
        let listing = match nft::run(ns, &["-f", "-"], Some(&cmd), "check published ports") {
            Ok(out) => out,
            Err(e) if is_missing_object(&e) => {
                return Ok(Some(format!(
                    "{obj} in table inet {TABLE} lacks some of {{ {} }}",
                    keys.join(", ")
                )))
            }
            Err(e) => return Err(e),
        };
        let flat = listing.split_whitespace().collect::<Vec<_>>().join(" ");
        for (_, key, data) in mine {
            let want = match data {
                Some(d) => format!("{key} : {d}"),
                None => key.clone(),
            };
            if !flat.contains(&want) {
                return Ok(Some(format!(
                    "{obj} in table inet {TABLE} lacks element {want}"
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> PublishedPorts {
        let c: IpAddr = "10.88.0.5".parse().unwrap();
        PublishedPorts {
            conditions: Conditions::default(),
            mappings: vec![
                PortMapping {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    container_ip: c,
                    container_port: 80,
                },
                PortMapping {
                    protocol: Protocol::Udp,
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                    host_port: 53,
                    container_ip: c,
                    container_port: 5353,
                },
            ],
            container_ips: vec![c],
            hairpin: vec![(c, "berth0".into())],
            localhost: vec![c],
            masq_all: vec![],
        }
    }

    #[test]
    fn elements_name_their_maps() {
        let e = ports().elements();
        assert!(e.contains(&(
            "pm4-d".into(),
            "tcp . 8080".into(),
            Some("10.88.0.5 . 80".into())
        )));
        assert!(e.contains(&(
            "pm4a-d".into(),
            "192.0.2.1 . udp . 53".into(),
            Some("10.88.0.5 . 5353".into())
        )));
        assert!(e.contains(&("pm-hairpin4".into(), "10.88.0.5 . \"berth0\"".into(), None)));
        assert!(e.contains(&("pm-local4".into(), "10.88.0.5".into(), None)));
        assert_eq!(e.len(), 5);
    }

    #[test]
    fn profile_ids() {
        assert_eq!(Conditions::default().id(), "d");
        let a = Conditions {
            v4: vec!["ip saddr 10.0.0.0/8".into()],
            v6: vec![],
        };
        let b = Conditions {
            v4: vec![],
            v6: vec!["ip saddr 10.0.0.0/8".into()],
        };
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 8);
    }

    #[test]
    fn conditions_cannot_escape_the_rule() {
        for bad in [
            "ip saddr 1.2.3.4; flush ruleset",
            "x\nflush ruleset",
            "ip saddr { 1.2.3.4",
            "# c",
            "",
        ] {
            let c = Conditions {
                v4: vec![bad.into()],
                v6: vec![],
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        let ok = Conditions {
            v4: vec!["ip saddr { 10.0.0.0/8, 192.168.0.0/16 }".into()],
            v6: vec![],
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn family_mismatch_refused() {
        let mut p = ports();
        p.mappings[1].host_ip = Some("2001:db8::1".parse().unwrap());
        assert!(p.validate().is_err());
    }

    #[test]
    fn unpublish_last_drops_everything() {
        let mut s = Script::new();
        s.drop_globals();
        assert!(!s.0.contains("add table"));
        assert!(s.0.contains("delete chain inet berth pm-prerouting"));
        assert!(s.0.contains("delete set inet berth pm-hairpin6"));
        assert!(s.0.contains("delete set inet berth pm-local4"));
    }
}
