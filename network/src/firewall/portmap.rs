//! Published ports (berth-portmap) in the `inet berth` table.
//!
//! Every packet to a local address does one map lookup per family; every
//! container's ADD and DEL is one nf_tables batch that adds or deletes
//! exactly that container's elements, whatever else is installed:
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
//! Conditions are the administrator's nft match expressions, as with the
//! reference portmap's nftables backend; berth compiles the forms it knows
//! into the same instructions nft would (nf_tables::matches) and refuses
//! the others by name.
//!
//! Cost: a transaction commits in well under a millisecond, whatever is
//! installed. What a commit removes (a deleted element, a flushed chain's
//! rules) the kernel frees after an RCU grace period, and closing a
//! netfilter socket meanwhile waits for it (about 15 ms here; berth keeps
//! its socket open, so a plugin waits at exit, for what is left of it).
//! So the common ADD adds its elements and removes nothing
//! ([`add_elements_in`]); the structure, whose base chains are flushed
//! and refilled, is built by [`rebuild_in`] when the caller's record says
//! it is not there (first ADD, new profile) or the fast path finds it
//! gone. A DEL must delete ([`remove_elements_in`]).
//!
//! Idempotence without listing the ruleset: `add` of an existing table,
//! chain, set or map is a no-op; base chains are flushed and refilled by
//! a rebuild (a few rules, whatever the number of containers); an element
//! is removed by "add it, then delete it", which succeeds whether or not it
//! was there (kernels before 6.3 have no `destroy`).
//!
//! The objects are made in the order nft made them from the scripts of
//! earlier versions, so that `nft list` shows the same table.

use std::net::IpAddr;

use super::check_ifname;
use super::listing::TableListing;
use super::names::fnv1a32;
use super::rules::{table, CT_STATUS_DNAT, FORWARD_MARK, TABLE};
use crate::{Error, Result};
use berth_kernel::nf_tables::matches::compile_matches;
use berth_kernel::nf_tables::value::{
    addr_load, addr_prefix_cmp, bits, concat, ct, ifname, ip, meta, nfproto_is, port, set_mark_bit,
};
use berth_kernel::nf_tables::{
    self, reg_at_word, Batch, Chain, ChainType, CmpOp, CtKey, DataType, Element, Expr, Family,
    Hook, Key, MapData, MetaKey, NatKind, PayloadBase, Rule, Set, Verdict, FIB_F_DADDR,
    FIB_RESULT_ADDRTYPE, NAT_MAP_IPS, NAT_PROTO_SPECIFIED, REG_1,
};
use berth_kernel::Netns;

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

    /// The IP protocol number (what `meta l4proto` holds).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
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
            if !list.is_empty() {
                let text = list.join(" ");
                compile_conditions(&mut Batch::new(), &text, key == "conditionsV6")
                    .map_err(|reason| Error::invalid(key, text, reason))?;
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

/// One element: (set or map name, the element, how nft prints it).
type Elem = (String, Element, String);

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
            let data = concat(&[ip(&m.container_ip), port(m.container_port)]);
            let data_text = format!("{} . {}", m.container_ip, m.container_port);
            let proto = vec![m.protocol.number()];
            let (map, key, key_text) = match m.host_ip {
                Some(h) => (
                    format!("pm{f}a-{p}"),
                    concat(&[ip(&h), proto, port(m.host_port)]),
                    format!("{h} . {} . {}", m.protocol.name(), m.host_port),
                ),
                None => (
                    format!("pm{f}-{p}"),
                    concat(&[proto, port(m.host_port)]),
                    format!("{} . {}", m.protocol.name(), m.host_port),
                ),
            };
            out.push((
                map,
                Element::mapping(key, data),
                format!("{key_text} : {data_text}"),
            ));
        }
        let plain = |set: String, ip_: &IpAddr| (set, Element::key(ip(ip_)), ip_.to_string());
        for a in &self.container_ips {
            out.push(plain(format!("pm-ip{}", fam(a)), a));
        }
        for (a, link) in &self.hairpin {
            out.push((
                format!("pm-hairpin{}", fam(a)),
                Element::key(concat(&[ip(a), ifname(link)])),
                format!("{a} . \"{link}\""),
            ));
        }
        for a in &self.localhost {
            out.push(plain(format!("pm-local{}", fam(a)), a));
        }
        for a in &self.masq_all {
            out.push(plain(format!("pm-all{}", fam(a)), a));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A profile's conditions as the instructions nft would write for them
/// (their anonymous sets added to `b`).
fn compile_conditions(
    b: &mut Batch,
    text: &str,
    v6: bool,
) -> std::result::Result<Vec<Expr>, String> {
    compile_matches(text, v6).map(|c| c.add_to(b, &table()))
}

fn addr_type(v6: bool) -> DataType {
    if v6 {
        DataType::Ipv6Addr
    } else {
        DataType::Ipv4Addr
    }
}

fn set(name: &str, key: Vec<DataType>, data: Option<Vec<DataType>>) -> Set {
    Set {
        table: table(),
        name: name.to_string(),
        key: Key(key),
        data: data.map(|d| MapData::Value(Key(d))),
        interval: false,
    }
}

/// The sets every profile shares: (name, key), in the order they are made.
fn global_sets() -> Vec<Set> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        let f = if v6 { '6' } else { '4' };
        let addr = addr_type(v6);
        v.push(set(&format!("pm-ip{f}"), vec![addr], None));
        v.push(set(
            &format!("pm-hairpin{f}"),
            vec![addr, DataType::Ifname],
            None,
        ));
        v.push(set(&format!("pm-all{f}"), vec![addr], None));
    }
    // IPv4 only: the kernel never routes ::1 off the loopback (IPv6 has
    // no route_localnet), so a DNAT of it could not leave the host.
    v.push(set("pm-local4", vec![DataType::Ipv4Addr], None));
    v
}

/// A profile's four maps: (proto, port) and (address, proto, port) to
/// (address, port), per family.
fn profile_maps(id: &str) -> Vec<Set> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        let f = if v6 { '6' } else { '4' };
        let addr = addr_type(v6);
        let data = Some(vec![addr, DataType::InetService]);
        v.push(set(
            &format!("pm{f}-{id}"),
            vec![DataType::InetProto, DataType::InetService],
            data.clone(),
        ));
        v.push(set(
            &format!("pm{f}a-{id}"),
            vec![addr, DataType::InetProto, DataType::InetService],
            data,
        ));
    }
    v
}

fn base_chain(name: &str, kind: ChainType, hook: Hook, priority: i32) -> Chain {
    Chain::base(table().chain(name), kind, hook, priority)
}

fn base_chains() -> [Chain; 4] {
    [
        base_chain(PM_PREROUTING, ChainType::Nat, Hook::Prerouting, PRIO_DSTNAT),
        base_chain(PM_OUTPUT, ChainType::Nat, Hook::Output, PRIO_DSTNAT),
        base_chain(
            PM_POSTROUTING,
            ChainType::Nat,
            Hook::Postrouting,
            PRIO_SRCNAT,
        ),
        base_chain(PM_FORWARD, ChainType::Filter, Hook::Forward, PRIO_FORWARD),
    ]
}

fn profile_chain(id: &str) -> Chain {
    Chain::regular(table().chain(&format!("pm-{id}")))
}

/// `ct status dnat`.
fn dnatted() -> Vec<Expr> {
    let mut e = vec![ct(CtKey::Status)];
    e.extend(bits(CT_STATUS_DNAT, CmpOp::Neq, 0));
    e
}

fn lookup(set: &str, sreg: u32, dreg: Option<u32>) -> Expr {
    Expr::Lookup {
        set: set.to_string(),
        sreg,
        dreg,
        invert: false,
    }
}

/// `fib daddr type local jump CHAIN`.
fn jump_if_local(chain: &str) -> Vec<Expr> {
    const RTN_LOCAL: u32 = 2;
    vec![
        Expr::Fib {
            flags: FIB_F_DADDR,
            result: FIB_RESULT_ADDRTYPE,
            dreg: REG_1,
        },
        berth_kernel::nf_tables::value::cmp(CmpOp::Eq, RTN_LOCAL.to_ne_bytes().to_vec()),
        Expr::Verdict(Verdict::Jump(chain.to_string())),
    ]
}

/// A profile's DNAT rule: `meta nfproto F <conditions> dnat F to` the
/// map's value for `[F daddr .] meta l4proto . th dport`.
fn dnat_rule(id: &str, v6: bool, with_addr: bool, conditions: &[Expr]) -> Rule {
    let f = if v6 { '6' } else { '4' };
    let map = format!("pm{f}{}-{id}", if with_addr { "a" } else { "" });
    let mut e = nfproto_is(v6);
    e.extend_from_slice(conditions);
    // The key's fields, each in the register after the last one's.
    let mut word = 0;
    if with_addr {
        e.push(addr_load(v6, false, reg_at_word(0)));
        word = if v6 { 4 } else { 1 };
    }
    e.push(Expr::Meta {
        key: MetaKey::L4proto,
        dreg: reg_at_word(word),
    });
    e.push(Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg: reg_at_word(word + 1),
    });
    e.push(lookup(&map, REG_1, Some(REG_1)));
    // The value: the address in register 1, the port in the word after it.
    e.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: if v6 { Family::Ip6 } else { Family::Ip },
        addr: Some(REG_1),
        proto: Some(reg_at_word(if v6 { 4 } else { 1 })),
        flags: NAT_MAP_IPS | NAT_PROTO_SPECIFIED,
    });
    Rule::new(&profile_chain(id).at, e)
}

/// Adds the table, the shared sets and the base chains, flushed.
fn structure(b: &mut Batch) {
    for s in global_sets() {
        b.add_set(&s);
    }
    for c in base_chains() {
        b.add_chain(&c).flush_chain(&c.at);
    }
}

/// Flushes and refills the base chains and every profile's chain: the
/// whole rule set, whose size depends only on the profiles.
fn rules(b: &mut Batch, profiles: &[&Conditions]) -> Result<()> {
    structure(b);
    let output = table().chain(PM_OUTPUT);
    // ::1 is never DNATed: such a connection could not leave the host
    // (no route_localnet for IPv6); berth-portmap's proxy answers it.
    let mut e = nfproto_is(true);
    e.extend(addr_prefix_cmp(
        true,
        false,
        CmpOp::Eq,
        &ipnet::IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ));
    e.push(Expr::Verdict(Verdict::Return));
    b.add_rule(Rule::new(&output, e));
    for c in profiles {
        let id = c.id();
        for m in profile_maps(&id) {
            b.add_set(&m);
        }
        let chain = profile_chain(&id);
        b.add_chain(&chain).flush_chain(&chain.at);
        for (v6, conds) in [(false, &c.v4), (true, &c.v6)] {
            // Each rule its own anonymous sets: the kernel binds such a
            // set to one rule.
            for with_addr in [true, false] {
                let exprs = if conds.is_empty() {
                    Vec::new()
                } else {
                    let key = if v6 { "conditionsV6" } else { "conditionsV4" };
                    let text = conds.join(" ");
                    compile_conditions(b, &text, v6)
                        .map_err(|reason| Error::invalid(key, text.clone(), reason))?
                };
                b.add_rule(dnat_rule(&id, v6, with_addr, &exprs));
            }
        }
        for base in [PM_PREROUTING, PM_OUTPUT] {
            b.add_rule(Rule::new(
                &table().chain(base),
                jump_if_local(&chain.at.name),
            ));
        }
    }
    let post = table().chain(PM_POSTROUTING);
    let fwd = table().chain(PM_FORWARD);
    // ct status dnat meta mark & HAIRPIN_MARK == HAIRPIN_MARK masquerade
    let mut e = dnatted();
    e.push(meta(MetaKey::Mark));
    e.extend(bits(HAIRPIN_MARK, CmpOp::Eq, HAIRPIN_MARK));
    e.push(Expr::Masquerade);
    b.add_rule(Rule::new(&post, e));
    // ct status dnat ip saddr 127.0.0.0/8 ip daddr @pm-local4 masquerade
    let mut e = dnatted();
    e.extend(nfproto_is(false));
    e.extend(addr_prefix_cmp(
        false,
        true,
        CmpOp::Eq,
        &ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
            std::net::Ipv4Addr::new(127, 0, 0, 0),
            8,
        )),
    ));
    e.push(addr_load(false, false, REG_1));
    e.push(lookup("pm-local4", REG_1, None));
    e.push(Expr::Masquerade);
    b.add_rule(Rule::new(&post, e));
    for v6 in [false, true] {
        let f = if v6 { '6' } else { '4' };
        let daddr_in = |set: String| {
            let mut e = dnatted();
            e.extend(nfproto_is(v6));
            e.push(addr_load(v6, false, REG_1));
            e.push(lookup(&set, REG_1, None));
            e
        };
        // ct status dnat F daddr @pm-allF masquerade
        let mut e = daddr_in(format!("pm-all{f}"));
        e.push(Expr::Masquerade);
        b.add_rule(Rule::new(&post, e));
        // The input link is known in forward, not in postrouting:
        // ct status dnat F daddr . iifname @pm-hairpinF
        //   meta mark set meta mark | HAIRPIN_MARK
        let mut e = dnatted();
        e.extend(nfproto_is(v6));
        e.push(addr_load(v6, false, REG_1));
        e.push(Expr::Meta {
            key: MetaKey::Iifname,
            dreg: reg_at_word(if v6 { 4 } else { 1 }),
        });
        e.push(lookup(&format!("pm-hairpin{f}"), REG_1, None));
        e.extend(set_mark_bit(HAIRPIN_MARK));
        b.add_rule(Rule::new(&fwd, e));
        // ct status dnat F daddr @pm-ipF
        //   meta mark set meta mark | FORWARD_MARK accept
        let mut e = daddr_in(format!("pm-ip{f}"));
        e.extend(set_mark_bit(FORWARD_MARK));
        e.push(Expr::Verdict(Verdict::Accept));
        b.add_rule(Rule::new(&fwd, e));
    }
    Ok(())
}

/// Adds `elems`, grouped per set in one command each.
fn add_elements(b: &mut Batch, elems: &[Elem]) {
    for (set, group) in grouped(elems) {
        b.add_elements(&table(), set, group);
    }
}

/// Removes `elems` whether or not they are there.
fn remove_elements(b: &mut Batch, elems: &[Elem]) {
    add_elements(b, elems);
    for (set, group) in grouped(elems) {
        b.delete_elements(&table(), set, group);
    }
}

/// `elems` (sorted by set) as (set, its elements).
fn grouped(elems: &[Elem]) -> Vec<(&str, Vec<Element>)> {
    let mut out: Vec<(&str, Vec<Element>)> = Vec::new();
    for (set, e, _) in elems {
        match out.last_mut() {
            Some((s, v)) if *s == set.as_str() => v.push(e.clone()),
            _ => out.push((set.as_str(), vec![e.clone()])),
        }
    }
    out
}

/// Drops a profile's chain and maps (its jumps must be gone already: the
/// base chains were flushed earlier in the same batch).
fn drop_profile(b: &mut Batch, id: &str) {
    let maps = profile_maps(id);
    for m in &maps {
        b.add_set(m);
    }
    let chain = profile_chain(id);
    b.add_chain(&chain)
        .flush_chain(&chain.at)
        .delete_chain(&chain.at);
    for m in &maps {
        b.delete_set(&table(), &m.name);
    }
}

fn drop_globals(b: &mut Batch) {
    for c in base_chains() {
        b.delete_chain(&c.at);
    }
    for s in global_sets() {
        b.delete_set(&table(), &s.name);
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

/// Commits `b`; Ok(false) when the kernel answers that a table, chain,
/// set or map is missing: the structure the fast paths assume is gone (a
/// flushed ruleset, say), and nothing of `b` was applied.
fn commit_unless_missing(b: &Batch, ns: Option<&Netns>, op: &str) -> Result<bool> {
    match b.commit(ns, op) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::firewall(e)),
    }
}

/// The common ADD: adds `ports`' elements (after removing those of
/// `replaced` that it no longer has, for a repeated ADD), touching nothing
/// else: removing nothing, it leaves the kernel no grace period to wait
/// for (see the module's cost note). Ok(false), with nothing changed, if
/// the structure (see [`rebuild_in`]) is not there.
pub fn add_elements_in(
    ns: Option<&Netns>,
    replaced: Option<&PublishedPorts>,
    ports: &PublishedPorts,
) -> Result<bool> {
    ports.validate()?;
    let mut b = Batch::new();
    if let Some(old) = replaced {
        let new = ports.elements();
        let gone: Vec<Elem> = old
            .elements()
            .into_iter()
            .filter(|e| !new.contains(e))
            .collect();
        remove_elements(&mut b, &gone);
    }
    add_elements(&mut b, &ports.elements());
    commit_unless_missing(&b, ns, "publish ports")
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
    rebuild_batch(profiles, replaced, attachments)?
        .commit(ns, "publish ports")
        .map_err(Error::firewall)
}

/// What [`rebuild_in`] commits.
pub fn rebuild_batch(
    profiles: &[&Conditions],
    replaced: Option<&PublishedPorts>,
    attachments: &[&PublishedPorts],
) -> Result<Batch> {
    for a in attachments {
        a.validate()?;
    }
    let profiles = distinct(
        profiles
            .iter()
            .copied()
            .chain(attachments.iter().map(|a| &a.conditions)),
    );
    let mut b = Batch::new();
    b.add_table(&table());
    rules(&mut b, &profiles)?;
    if let Some(old) = replaced {
        if !profiles.iter().any(|p| p.id() == old.conditions.id()) {
            for m in profile_maps(&old.conditions.id()) {
                b.add_set(&m);
            }
        }
        remove_elements(&mut b, &old.elements());
    }
    // One command per set for all of them, not one per attachment.
    let mut all: Vec<Elem> = attachments.iter().flat_map(|a| a.elements()).collect();
    all.sort();
    all.dedup();
    add_elements(&mut b, &all);
    Ok(b)
}

/// The common DEL: removes `ports`' elements and nothing else (an element
/// already gone is fine). Ok(false), with nothing changed, if a set or
/// map is gone; [`unpublish_in`] copes with that.
pub fn remove_elements_in(ns: Option<&Netns>, ports: &PublishedPorts) -> Result<bool> {
    let mut b = Batch::new();
    remove_elements(&mut b, &ports.elements());
    commit_unless_missing(&b, ns, "unpublish ports")
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
    let mut b = Batch::new();
    b.add_table(&table());
    if profiles.is_empty() {
        // The last attachment: every portmap object goes, elements and all
        // (the base chains are made to exist and emptied first, so
        // deleting them cannot fail).
        structure(&mut b);
        drop_profile(&mut b, &id);
        drop_globals(&mut b);
    } else {
        rules(&mut b, &profiles)?;
        for m in profile_maps(&id) {
            b.add_set(&m);
        }
        remove_elements(&mut b, &ports.elements());
        if !profiles.iter().any(|p| p.id() == id) {
            drop_profile(&mut b, &id);
        }
    }
    b.commit(ns, "unpublish ports").map_err(Error::firewall)
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
    let Some(listing) = nf_tables::list_table(ns, &table()).map_err(Error::firewall)? else {
        return Ok(Some(format!("table inet {TABLE} is missing")));
    };
    let listing = TableListing::from(listing);
    for (chain, want) in expected_rules(&profiles) {
        match listing.chain_rules(&chain) {
            None => {
                return Ok(Some(format!(
                    "chain {chain} is missing from table inet {TABLE}"
                )))
            }
            Some(rules) if rules < want => {
                return Ok(Some(format!(
                    "chain {chain} in table inet {TABLE} has {rules} rules, {want} expected"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(None)
}

/// For the reconciler: the first thing `listing` (of `inet berth`) lacks
/// of the structure `profiles` need and of `attachments`' elements, as
/// text, or None. Works from one listing.
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
            Some(rules) if rules < want => {
                return Some(format!("rules of chain {chain} ({rules} of {want})"))
            }
            Some(_) => {}
        }
    }
    for a in attachments {
        for (object, element, text) in a.elements() {
            if !listing.has_element(&object, &element) {
                return Some(format!("element {{ {text} }} of {object}"));
            }
        }
    }
    None
}

/// For CHECK: the first of `ports`' elements missing from the kernel, as
/// text naming the set or map, or None when all are there.
pub fn missing_in(ns: Option<&Netns>, ports: &PublishedPorts) -> Result<Option<String>> {
    let elems = ports.elements();
    let listing = nf_tables::list_table(ns, &table())
        .map_err(Error::firewall)?
        .map(TableListing::from);
    for (object, element, text) in elems {
        let there = listing
            .as_ref()
            .is_some_and(|l| l.has_element(&object, &element));
        if !there {
            return Ok(Some(format!(
                "{object} in table inet {TABLE} lacks element {text}"
            )));
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
        let text = |set: &str| {
            e.iter()
                .filter(|x| x.0 == set)
                .map(|x| x.2.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(text("pm4-d"), ["tcp . 8080 : 10.88.0.5 . 80"]);
        assert_eq!(text("pm4a-d"), ["192.0.2.1 . udp . 53 : 10.88.0.5 . 5353"]);
        assert_eq!(text("pm-hairpin4"), ["10.88.0.5 . \"berth0\""]);
        assert_eq!(text("pm-local4"), ["10.88.0.5"]);
        assert_eq!(e.len(), 5);
        let tcp = e.iter().find(|x| x.0 == "pm4-d").map(|x| x.1.clone());
        assert_eq!(
            tcp,
            Some(Element::mapping(
                vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0],
                vec![10, 88, 0, 5, 0, 80, 0, 0]
            ))
        );
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
        let mut b = Batch::new();
        drop_globals(&mut b);
        let c = b.describe();
        assert!(!c.iter().any(|c| c.starts_with("add table")));
        for want in [
            "delete chain inet berth pm-prerouting",
            "delete set inet berth pm-hairpin6",
            "delete set inet berth pm-local4",
        ] {
            assert!(c.contains(&want.to_string()), "{want}: {c:?}");
        }
    }

    #[test]
    fn rules_are_made_in_the_order_of_the_old_scripts() {
        let mut b = Batch::new();
        let d = Conditions::default();
        assert!(rules(&mut b, &[&d]).is_ok());
        let chains: Vec<String> = b.rules().map(|r| r.chain.name.clone()).collect();
        assert_eq!(
            chains,
            [
                "pm-output",
                "pm-d",
                "pm-d",
                "pm-d",
                "pm-d",
                "pm-prerouting",
                "pm-output",
                "pm-postrouting",
                "pm-postrouting",
                "pm-postrouting",
                "pm-forward",
                "pm-forward",
                "pm-postrouting",
                "pm-forward",
                "pm-forward",
            ]
        );
    }
}
