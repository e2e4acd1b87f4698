//! Tables, chains, sets and maps, their elements, and rules: what they
//! hold, how each is written as nf_tables attributes and read back.

use ipnet::IpNet;

use super::expr::{Expr, Verdict};
use super::wire::{self, Attr};

/// An nftables address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Arp,
    Bridge,
    Netdev,
}

impl Family {
    pub(super) fn code(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ip6 => 10,
        }
    }

    pub(super) fn from_code(c: u8) -> Option<Family> {
        Some(match c {
            1 => Family::Inet,
            2 => Family::Ip,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ip6,
            _ => return None,
        })
    }

    /// As nft writes it (`inet`, `ip`, `bridge`...).
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Arp => "arp",
            Family::Bridge => "bridge",
            Family::Netdev => "netdev",
        }
    }
}

/// A table: where chains and sets live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Table {
    pub family: Family,
    pub name: String,
}

impl Table {
    pub fn new(family: Family, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
        }
    }

    pub(super) fn attrs(&self) -> Vec<Attr> {
        vec![Attr::str(wire::NFTA_TABLE_NAME, &self.name)]
    }

    /// The same table's chain `name`.
    pub fn chain(&self, name: &str) -> ChainRef {
        ChainRef {
            table: self.clone(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family.name(), self.name)
    }
}

/// A chain by name (for flushes, deletes and rules).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChainRef {
    pub table: Table,
    pub name: String,
}

impl std::fmt::Display for ChainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.name)
    }
}

/// Netfilter hooks (the numbers are the same in every family berth uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn code(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }

    fn from_code(c: u32) -> Option<Hook> {
        Some(match c {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// What makes a chain a base chain: the hook it is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    /// The policy: true accepts, false drops.
    pub accept: bool,
}

/// A chain; `base` None for a regular chain (reached by jumps).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    pub at: ChainRef,
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A base chain at `at` with an accept policy.
    pub fn base(at: ChainRef, kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain {
            at,
            base: Some(BaseChain {
                kind,
                hook,
                priority,
                accept: true,
            }),
        }
    }

    /// A regular chain (reached by jumps).
    pub fn regular(at: ChainRef) -> Chain {
        Chain { at, base: None }
    }

    pub(super) fn attrs(&self) -> Vec<Attr> {
        let mut v = vec![
            Attr::str(wire::NFTA_CHAIN_TABLE, &self.at.table.name),
            Attr::str(wire::NFTA_CHAIN_NAME, &self.at.name),
        ];
        if let Some(b) = &self.base {
            v.push(Attr::str(wire::NFTA_CHAIN_TYPE, b.kind.name()));
            v.push(Attr::u32(wire::NFTA_CHAIN_POLICY, u32::from(b.accept)));
            v.push(Attr::Nested(
                wire::NFTA_CHAIN_HOOK,
                vec![
                    Attr::u32(wire::NFTA_HOOK_HOOKNUM, b.hook.code()),
                    Attr::u32(wire::NFTA_HOOK_PRIORITY, b.priority as u32),
                ],
            ));
        }
        v
    }

    pub(super) fn decode(family: Family, attrs: &[(u16, &[u8])]) -> Option<Chain> {
        let table = Table::new(family, &wire::get_str(attrs, wire::NFTA_CHAIN_TABLE)?);
        let name = wire::get_str(attrs, wire::NFTA_CHAIN_NAME)?;
        let base = match wire::find(attrs, wire::NFTA_CHAIN_HOOK) {
            None => None,
            Some(hook) => {
                let h = wire::attrs(hook);
                Some(BaseChain {
                    kind: match wire::get_str(attrs, wire::NFTA_CHAIN_TYPE)?.as_str() {
                        "nat" => ChainType::Nat,
                        "route" => ChainType::Route,
                        _ => ChainType::Filter,
                    },
                    hook: Hook::from_code(wire::get_u32(&h, wire::NFTA_HOOK_HOOKNUM)?)?,
                    priority: wire::get_u32(&h, wire::NFTA_HOOK_PRIORITY)? as i32,
                    accept: wire::get_u32(attrs, wire::NFTA_CHAIN_POLICY) != Some(0),
                })
            }
        };
        Some(Chain {
            at: ChainRef { table, name },
            base,
        })
    }
}

/// nft's data types (enum datatypes in nft's datatype.h): the kernel keeps
/// a set's key type as these numbers, and nft prints elements by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    EtherAddr,
    InetProto,
    InetService,
    Mark,
    Icmpv6Type,
    Ifname,
}

impl DataType {
    fn id(self) -> u32 {
        match self {
            DataType::Ipv4Addr => 7,
            DataType::Ipv6Addr => 8,
            DataType::EtherAddr => 9,
            DataType::InetProto => 12,
            DataType::InetService => 13,
            DataType::Mark => 19,
            DataType::Icmpv6Type => 29,
            DataType::Ifname => 41,
        }
    }

    /// Bytes a value takes.
    pub fn size(self) -> usize {
        match self {
            DataType::Ipv4Addr | DataType::Mark => 4,
            DataType::Ipv6Addr | DataType::Ifname => 16,
            DataType::EtherAddr => 6,
            DataType::InetProto | DataType::Icmpv6Type => 1,
            DataType::InetService => 2,
        }
    }

    /// nft's byte order code for the type (1 host, 2 big-endian).
    fn byteorder(self) -> u32 {
        match self {
            DataType::Mark | DataType::Ifname => 1,
            _ => 2,
        }
    }

    fn from_id(id: u32) -> Option<DataType> {
        [
            DataType::Ipv4Addr,
            DataType::Ipv6Addr,
            DataType::EtherAddr,
            DataType::InetProto,
            DataType::InetService,
            DataType::Mark,
            DataType::Icmpv6Type,
            DataType::Ifname,
        ]
        .into_iter()
        .find(|t| t.id() == id)
    }
}

/// A set's key or a map's value: one type or a concatenation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(pub Vec<DataType>);

/// nft's TYPE_BITS: a concatenation's type is its types' numbers, six
/// bits each.
const TYPE_BITS: u32 = 6;
/// NFT_DATA_VERDICT: a verdict map's value type.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

impl Key {
    fn type_id(&self) -> u32 {
        self.0.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t.id())
    }

    /// Bytes of a value: a concatenation's fields are 32-bit aligned.
    pub fn len(&self) -> usize {
        match self.0.as_slice() {
            [one] => one.size(),
            many => many.iter().map(|t| t.size().div_ceil(4) * 4).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn from_id(mut id: u32) -> Option<Key> {
        let mut v = Vec::new();
        while id != 0 {
            v.push(DataType::from_id(id & ((1 << TYPE_BITS) - 1))?);
            id >>= TYPE_BITS;
        }
        v.reverse();
        Some(Key(v))
    }
}

/// A map's values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MapData {
    Value(Key),
    Verdict,
}

/// A set, or with `data` a map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Set {
    pub table: Table,
    pub name: String,
    pub key: Key,
    pub data: Option<MapData>,
    /// Elements are ranges (`flags interval`).
    pub interval: bool,
}

/// nft's set user data (NFTNL_UDATA_SET_*): how nft prints the set. Laid
/// out as nft 1.0.6 writes it for `type` declarations, so nft lists
/// berth's sets as it lists its own.
fn set_userdata(key: &Key, data: &Option<MapData>) -> Vec<u8> {
    // What nft writes for a concatenation's type, the same for every one.
    const CONCAT_TYPEOF: [u8; 8] = [0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00];
    fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
        out.push(kind);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }
    let order = |k: &Key| match k.0.as_slice() {
        [one] => one.byteorder(),
        _ => 0,
    };
    let mut out = Vec::new();
    tlv(&mut out, 0, &order(key).to_ne_bytes());
    if let Some(d) = data {
        let data_order = match d {
            MapData::Value(k) => order(k),
            MapData::Verdict => 0,
        };
        tlv(&mut out, 1, &data_order.to_ne_bytes());
    }
    if key.0.len() > 1 {
        tlv(&mut out, 3, &CONCAT_TYPEOF);
    }
    if let Some(d) = data {
        if matches!(d, MapData::Value(k) if k.0.len() > 1) {
            tlv(&mut out, 4, &CONCAT_TYPEOF);
        }
        tlv(&mut out, 6, &0u32.to_ne_bytes());
    }
    out
}

/// How nft makes an anonymous set for a match's `{ ... }` beyond its key
/// and elements (see [`super::matches::AnonSet`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SetForm {
    /// Elements are ranges.
    pub(super) interval: bool,
    pub(super) userdata: Vec<u8>,
}

impl SetForm {
    /// nft 1.0.6's user data for a match's set: the key's byte order as
    /// the matched expression has it, for an interval set that nft merged
    /// its elements (NFTNL_UDATA_SET_MERGE_ELEMENTS), and the expression
    /// (NFTNL_UDATA_SET_KEY_TYPEOF).
    pub(super) fn for_match(interval: bool, byteorder: u32, key_typeof: &[u8]) -> SetForm {
        let mut udata = vec![0, 4];
        udata.extend_from_slice(&byteorder.to_ne_bytes());
        if interval {
            udata.extend_from_slice(&[2, 4]);
            udata.extend_from_slice(&1u32.to_ne_bytes());
        }
        udata.push(3);
        udata.push(key_typeof.len() as u8);
        udata.extend_from_slice(key_typeof);
        SetForm {
            interval,
            userdata: udata,
        }
    }
}

/// NFTA_SET_ELEM_USERDATA, and in it NFTNL_UDATA_SET_ELEM_FLAGS with
/// NFTNL_SET_ELEM_F_INTERVAL_OPEN: nft's mark on a range without an end.
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];

/// An anonymous interval set's elements (ascending) as nft sends them:
/// the last, if it starts a range that reaches the top, marked open.
pub(super) fn interval_element_attrs(elements: &[Element]) -> Vec<Attr> {
    let mut out: Vec<Attr> = elements.iter().map(Element::attr).collect();
    if let (Some(last), Some(Attr::Nested(_, attrs))) = (elements.last(), out.last_mut()) {
        if !last.end {
            attrs.push(Attr::Bytes(NFTA_SET_ELEM_USERDATA, INTERVAL_OPEN.to_vec()));
        }
    }
    out
}

/// A constant anonymous set of `size` elements (flags, key, nft's user
/// data); the kernel names it from the template.
pub(super) fn anonymous_set_attrs(table: &Table, key: &Key, size: usize, id: u32) -> Vec<Attr> {
    let mut udata = set_userdata(key, &None);
    // nft describes the key by the expression matched against the set
    // (NFTNL_UDATA_SET_KEY_TYPEOF), which for this key is `icmpv6 type`.
    if key.0 == [DataType::Icmpv6Type] {
        let key_typeof = super::matches::icmpv6_type_typeof();
        udata.push(3);
        udata.push(key_typeof.len() as u8);
        udata.extend_from_slice(&key_typeof);
    }
    let form = SetForm {
        interval: false,
        userdata: udata,
    };
    set_attrs_as(table, key, size, id, &form)
}

/// The same in the form nft gives a match's set, holding `elements`: nft
/// counts the end an open last range does not send in the set's size.
pub(super) fn anonymous_set_attrs_as(
    table: &Table,
    key: &Key,
    elements: &[Element],
    id: u32,
    form: &SetForm,
) -> Vec<Attr> {
    let open = form.interval && elements.last().is_some_and(|e| !e.end);
    let size = elements.len() + usize::from(open);
    set_attrs_as(table, key, size, id, form)
}

fn set_attrs_as(table: &Table, key: &Key, size: usize, id: u32, form: &SetForm) -> Vec<Attr> {
    let mut flags = wire::NFT_SET_ANONYMOUS | wire::NFT_SET_CONSTANT;
    if form.interval {
        flags |= wire::NFT_SET_INTERVAL;
    }
    let udata = form.userdata.clone();
    vec![
        Attr::str(wire::NFTA_SET_TABLE, &table.name),
        Attr::str(wire::NFTA_SET_NAME, super::ANON_SET),
        Attr::u32(wire::NFTA_SET_FLAGS, flags),
        Attr::u32(wire::NFTA_SET_KEY_TYPE, key.type_id()),
        Attr::u32(wire::NFTA_SET_KEY_LEN, key.len() as u32),
        Attr::u32(wire::NFTA_SET_ID, id),
        Attr::Nested(
            wire::NFTA_SET_DESC,
            vec![Attr::u32(wire::NFTA_SET_DESC_SIZE, size as u32)],
        ),
        Attr::Bytes(wire::NFTA_SET_USERDATA, udata),
    ]
}

impl Set {
    pub(super) fn attrs(&self, id: u32) -> Vec<Attr> {
        let mut flags = 0;
        if self.interval {
            flags |= wire::NFT_SET_INTERVAL;
        }
        if self.data.is_some() {
            flags |= wire::NFT_SET_MAP;
        }
        let mut v = vec![
            Attr::str(wire::NFTA_SET_TABLE, &self.table.name),
            Attr::str(wire::NFTA_SET_NAME, &self.name),
            Attr::u32(wire::NFTA_SET_FLAGS, flags),
            Attr::u32(wire::NFTA_SET_KEY_TYPE, self.key.type_id()),
            Attr::u32(wire::NFTA_SET_KEY_LEN, self.key.len() as u32),
        ];
        match &self.data {
            Some(MapData::Value(k)) => {
                v.push(Attr::u32(wire::NFTA_SET_DATA_TYPE, k.type_id()));
                v.push(Attr::u32(wire::NFTA_SET_DATA_LEN, k.len() as u32));
            }
            Some(MapData::Verdict) => {
                v.push(Attr::u32(wire::NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT));
                v.push(Attr::u32(wire::NFTA_SET_DATA_LEN, 0));
            }
            None => {}
        }
        v.push(Attr::u32(wire::NFTA_SET_ID, id));
        v.push(Attr::Bytes(
            wire::NFTA_SET_USERDATA,
            set_userdata(&self.key, &self.data),
        ));
        v
    }

    /// The set as listed; None for one berth does not describe (an
    /// anonymous set, a type berth does not write).
    pub(super) fn decode(family: Family, attrs: &[(u16, &[u8])]) -> Option<Set> {
        let flags = wire::get_u32(attrs, wire::NFTA_SET_FLAGS).unwrap_or(0);
        let data = if flags & wire::NFT_SET_MAP != 0 {
            Some(match wire::get_u32(attrs, wire::NFTA_SET_DATA_TYPE)? {
                NFT_DATA_VERDICT => MapData::Verdict,
                id => MapData::Value(Key::from_id(id)?),
            })
        } else {
            None
        };
        Some(Set {
            table: Table::new(family, &wire::get_str(attrs, wire::NFTA_SET_TABLE)?),
            name: wire::get_str(attrs, wire::NFTA_SET_NAME)?,
            key: Key::from_id(wire::get_u32(attrs, wire::NFTA_SET_KEY_TYPE)?)?,
            data,
            interval: flags & wire::NFT_SET_INTERVAL != 0,
        })
    }
}

/// A map element's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementData {
    Value(Vec<u8>),
    Verdict(VerdictKey),
}

/// A verdict, ordered (for sorting elements).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerdictKey {
    Jump(String),
    Goto(String),
    Accept,
    Drop,
    Return,
}

impl VerdictKey {
    fn verdict(&self) -> Verdict {
        match self {
            VerdictKey::Jump(c) => Verdict::Jump(c.clone()),
            VerdictKey::Goto(c) => Verdict::Goto(c.clone()),
            VerdictKey::Accept => Verdict::Accept,
            VerdictKey::Drop => Verdict::Drop,
            VerdictKey::Return => Verdict::Return,
        }
    }

    fn of(v: Verdict) -> Option<VerdictKey> {
        Some(match v {
            Verdict::Jump(c) => VerdictKey::Jump(c),
            Verdict::Goto(c) => VerdictKey::Goto(c),
            Verdict::Accept => VerdictKey::Accept,
            Verdict::Drop => VerdictKey::Drop,
            Verdict::Return => VerdictKey::Return,
            Verdict::Continue => return None,
        })
    }
}

/// One element: a key (for an interval set, a range's start, or with
/// `end` the first value after it) and, in a map, its value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<u8>,
    pub end: bool,
    pub data: Option<ElementData>,
}

impl Element {
    pub fn key(key: Vec<u8>) -> Element {
        Element {
            key,
            end: false,
            data: None,
        }
    }

    pub fn mapping(key: Vec<u8>, value: Vec<u8>) -> Element {
        Element {
            key,
            end: false,
            data: Some(ElementData::Value(value)),
        }
    }

    pub fn verdict(key: Vec<u8>, v: Verdict) -> Element {
        Element {
            key,
            end: false,
            data: VerdictKey::of(v).map(ElementData::Verdict),
        }
    }

    /// The elements of `prefixes` in an interval set: each prefix's start
    /// and the end after it. (nft also sends an end at zero when it adds
    /// to a set it has just created; the kernel treats values below the
    /// first start as outside the set either way, and berth's batches
    /// made with nft's JSON never had it.)
    pub fn intervals(prefixes: &[IpNet]) -> Vec<Element> {
        let mut nets: Vec<IpNet> = prefixes.iter().map(IpNet::trunc).collect();
        nets.sort();
        nets.dedup();
        let mut out = Vec::new();
        for net in &nets {
            out.push(Element::key(addr_bytes(&net.network())));
            // The first address after the range; none when it reaches the
            // top of the address space.
            if let Some(after) = increment(addr_bytes(&net.broadcast())) {
                out.push(Element {
                    key: after,
                    end: true,
                    data: None,
                });
            }
        }
        out
    }

    pub(super) fn attr(&self) -> Attr {
        let mut v = Vec::new();
        if self.end {
            v.push(Attr::u32(
                wire::NFTA_SET_ELEM_FLAGS,
                wire::NFT_SET_ELEM_INTERVAL_END,
            ));
        }
        v.push(Attr::Nested(
            wire::NFTA_SET_ELEM_KEY,
            vec![Attr::Bytes(wire::NFTA_DATA_VALUE, self.key.clone())],
        ));
        match &self.data {
            Some(ElementData::Value(d)) => v.push(Attr::Nested(
                wire::NFTA_SET_ELEM_DATA,
                vec![Attr::Bytes(wire::NFTA_DATA_VALUE, d.clone())],
            )),
            Some(ElementData::Verdict(vk)) => {
                v.push(vk.verdict().attr(wire::NFTA_SET_ELEM_DATA));
            }
            None => {}
        }
        Attr::Nested(wire::NFTA_LIST_ELEM, v)
    }

    pub(super) fn decode(elem: &[u8]) -> Option<Element> {
        let a = wire::attrs(elem);
        let key = wire::attrs(wire::find(&a, wire::NFTA_SET_ELEM_KEY)?);
        let key = wire::find(&key, wire::NFTA_DATA_VALUE)?.to_vec();
        let end = wire::get_u32(&a, wire::NFTA_SET_ELEM_FLAGS)
            .is_some_and(|f| f & wire::NFT_SET_ELEM_INTERVAL_END != 0);
        let data = match wire::find(&a, wire::NFTA_SET_ELEM_DATA) {
            None => None,
            Some(d) => {
                let d = wire::attrs(d);
                if let Some(v) = wire::find(&d, wire::NFTA_DATA_VALUE) {
                    Some(ElementData::Value(v.to_vec()))
                } else {
                    let v = wire::attrs(wire::find(&d, wire::NFTA_DATA_VERDICT)?);
                    VerdictKey::of(Verdict::decode(&v)?).map(ElementData::Verdict)
                }
            }
        };
        Some(Element { key, end, data })
    }
}

fn addr_bytes(ip: &std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `bytes` + 1 as a big-endian number; None on overflow.
fn increment(mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    for b in bytes.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return Some(bytes);
        }
    }
    None
}

/// A rule: what it does, in which chain, with nft's comment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub chain: ChainRef,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
    /// The kernel's handle (listed rules; ignored when writing).
    pub handle: Option<u64>,
}

/// NFTNL_UDATA_RULE_COMMENT.
const UDATA_RULE_COMMENT: u8 = 0;

impl Rule {
    pub fn new(chain: &ChainRef, exprs: Vec<Expr>) -> Rule {
        Rule {
            chain: chain.clone(),
            exprs,
            comment: None,
            handle: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }

    /// The same rule, whatever its handle.
    pub fn same_as(&self, other: &Rule) -> bool {
        self.chain == other.chain && self.exprs == other.exprs && self.comment == other.comment
    }

    pub(super) fn attrs(&self, set_id: &dyn Fn(&str) -> Option<u32>) -> Vec<Attr> {
        let mut v = vec![
            Attr::str(wire::NFTA_RULE_TABLE, &self.chain.table.name),
            Attr::str(wire::NFTA_RULE_CHAIN, &self.chain.name),
            Attr::Nested(
                wire::NFTA_RULE_EXPRESSIONS,
                self.exprs.iter().map(|e| e.attr(set_id)).collect(),
            ),
        ];
        if let Some(c) = &self.comment {
            let mut u = vec![UDATA_RULE_COMMENT, (c.len() + 1) as u8];
            u.extend_from_slice(c.as_bytes());
            u.push(0);
            v.push(Attr::Bytes(wire::NFTA_RULE_USERDATA, u));
        }
        v
    }

    pub(super) fn decode(family: Family, attrs: &[(u16, &[u8])]) -> Option<Rule> {
        let table = Table::new(family, &wire::get_str(attrs, wire::NFTA_RULE_TABLE)?);
        let chain = ChainRef {
            table,
            name: wire::get_str(attrs, wire::NFTA_RULE_CHAIN)?,
        };
        let exprs = wire::attrs(wire::find(attrs, wire::NFTA_RULE_EXPRESSIONS).unwrap_or_default())
            .into_iter()
            .filter(|(k, _)| *k == wire::NFTA_LIST_ELEM)
            .map(|(_, e)| Expr::decode(e))
            .collect();
        let comment = wire::find(attrs, wire::NFTA_RULE_USERDATA).and_then(rule_comment);
        Some(Rule {
            chain,
            exprs,
            comment,
            handle: wire::get_u64(attrs, wire::NFTA_RULE_HANDLE),
        })
    }
}

/// The comment in a rule's user data (TLVs of one-byte type and length).
fn rule_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if kind == UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &udata[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_types_pack_six_bits_each() {
        let k = Key(vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ]);
        assert_eq!(k.type_id(), 0x730d);
        assert_eq!(k.len(), 12);
        assert_eq!(Key::from_id(0x730d), Some(k));
        assert_eq!(Key(vec![DataType::Ifname]).len(), 16);
    }

    #[test]
    fn set_userdata_is_what_nft_writes() {
        // Captured from nft 1.0.6 --debug=mnl.
        let plain = set_userdata(&Key(vec![DataType::Ipv4Addr]), &None);
        assert_eq!(plain, [0, 4, 2, 0, 0, 0]);
        let ifname = set_userdata(&Key(vec![DataType::Ifname]), &None);
        assert_eq!(ifname, [0, 4, 1, 0, 0, 0]);
        let map = set_userdata(
            &Key(vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
            ]),
            &Some(MapData::Value(Key(vec![
                DataType::Ipv4Addr,
                DataType::InetService,
            ]))),
        );
        let want: Vec<u8> = [
            "000400000000",
            "010400000000",
            "030800040d0000000100",
            "040800040d0000000100",
            "060400000000",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap_or("00"), 16).unwrap_or(0))
        .collect();
        assert_eq!(map, want);
        let vmap = set_userdata(&Key(vec![DataType::Ifname]), &Some(MapData::Verdict));
        assert_eq!(vmap, [0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn icmpv6_type_sets_describe_their_key_as_nft_does() {
        // What nft 1.0.6 writes for `icmpv6 type { ... }`, once a
        // hard-coded copy here.
        const NFT: [u8; 20] = [
            0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0e, 0x00, 0x00, 0x00,
            0x01, 0x04, 0x01, 0x00, 0x00, 0x00,
        ];
        assert_eq!(super::super::matches::icmpv6_type_typeof(), NFT);
    }

    #[test]
    fn intervals_as_nft_writes_them() {
        let e = Element::intervals(&["fd77::/64".parse().unwrap_or_else(|_| unreachable!())]);
        assert_eq!(e.len(), 2);
        assert!(!e[0].end && e[0].key[..2] == [0xfd, 0x77]);
        assert!(e[1].end && e[1].key[7] == 1);
        let all = Element::intervals(&["0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!())]);
        assert_eq!(all, vec![Element::key(vec![0; 4])]);
    }

    #[test]
    fn rule_comments_round_trip() {
        let r = Rule::new(
            &Table::new(Family::Inet, "t").chain("c"),
            vec![Expr::Masquerade],
        )
        .with_comment("berth network devnet");
        let attrs: Vec<Attr> = r.attrs(&|_| None);
        let Some(Attr::Bytes(_, u)) = attrs.last() else {
            unreachable!()
        };
        assert_eq!(&u[..2], &[0, 21]);
        assert_eq!(rule_comment(u).as_deref(), Some("berth network devnet"));
    }
}
