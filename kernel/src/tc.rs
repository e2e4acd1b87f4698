//! Traffic control over rtnetlink: a link's root shaper (tbf, or htb with
//! subnet filters), an ingress qdisc whose one u32 filter redirects
//! everything to another link (mirred), and ifb links to shape that
//! redirected traffic on.
//!
//! netlink-packet-route types the u32 filter and the mirred action; tbf's
//! and htb's options it does not know, so they are built here as the
//! kernel's structs (linux/pkt_sched.h) in nested attributes. Rates are
//! given with `linklayer` set to Ethernet, which tells the kernel to
//! compute transmission times itself, so no rate tables are sent.

use netlink_packet_core::{DefaultNla, Nla, NlasIterator, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::handle::check_ifname;
use crate::{Error, Handle, Result};

/// The handle of the root shaper: `1:`.
const ROOT_MAJOR: u16 = 1;
/// htb's class for shaped traffic (`1:30`, as in the reference's
/// reverted subnets change).
pub const SHAPED_CLASS: u16 = 30;
/// htb's class for traffic left alone (`1:1`).
pub const UNSHAPED_CLASS: u16 = 1;
/// The unshaped class's rate: 100 Gbit/s, more than a veth carries.
const UNSHAPED_RATE: u64 = 12_500_000_000;
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_MAJOR: u16 = 0xffff;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// TC_LINKLAYER_ETHERNET: the kernel computes packet times itself.
const LINKLAYER_ETHERNET: u8 = 1;
/// psched ticks are 64 ns (PSCHED_SHIFT 6).
const PSCHED_SHIFT: u32 = 6;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Filter priorities: one protocol per priority, as the kernel wants.
const PRIO_REDIRECT: u16 = 1;
const PRIO_V4: u16 = 16;
const PRIO_V6: u16 = 15;

/// A token bucket in bytes: what a tbf or an htb class is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Bytes per second, more than 0.
    pub rate: u64,
    /// Bytes, more than 0.
    pub burst: u32,
}

impl TokenBucket {
    /// The burst as psched ticks at the rate (what the kernel keeps).
    fn ticks(&self) -> u32 {
        let ns = self.burst as u128 * 1_000_000_000 / self.rate as u128;
        u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
    }

    /// Whether a rate and burst read back from the kernel are this
    /// bucket's: the rate exactly, the burst within what the kernel's
    /// conversion to ticks and back loses (under 1%, or any burst when
    /// the kernel's 32-bit tick count saturated).
    pub fn close_to(&self, rate: u64, burst: u32) -> bool {
        if rate != self.rate {
            return false;
        }
        if self.ticks() == u32::MAX {
            return true;
        }
        let (a, b) = (self.burst as u64, burst as u64);
        a.abs_diff(b) * 100 <= a.max(1)
    }
}

/// Which address of a packet a subnet is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrField {
    Source,
    Destination,
}

/// Which packets a shaper limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subnets {
    /// Every packet: a tbf.
    All,
    /// Only packets whose `field` address is in one of `nets` (htb).
    Only {
        field: AddrField,
        nets: Vec<ipnet::IpNet>,
    },
    /// Every packet but those (htb).
    Except {
        field: AddrField,
        nets: Vec<ipnet::IpNet>,
    },
}

/// A root shaper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaper {
    pub bucket: TokenBucket,
    /// A tbf's queue, in bytes.
    pub limit: u32,
    pub subnets: Subnets,
}

/// A link's root qdisc as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootQdisc {
    /// The kernel's default (noqueue, pfifo_fast...: handle 0).
    None,
    Tbf {
        rate: u64,
        burst: u32,
        limit: u32,
    },
    Htb {
        default_class: u32,
        classes: Vec<HtbClass>,
        filters: usize,
    },
    /// Another kind, named.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbClass {
    pub minor: u16,
    pub rate: u64,
    pub ceil: u64,
}

/// `struct tc_ratespec` for a rate in bytes per second.
fn ratespec(rate: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.push(0); // cell_log
    b.push(LINKLAYER_ETHERNET);
    b.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    b.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    b.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    b.extend_from_slice(&(rate.min(u32::MAX as u64) as u32).to_ne_bytes());
    b
}

fn u32s(vals: &[u32]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn nla(kind: u16, value: Vec<u8>) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value))
}

/// The value bytes of an attribute the crate left undecoded.
fn value_of(n: &DefaultNla) -> (u16, Vec<u8>) {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    (n.kind() & 0x3fff, v)
}

/// The options of a qdisc or class kind the crate does not know, as
/// (attribute, value) pairs: it keeps TCA_OPTIONS whole for those.
fn raw_options(attrs: &[TcAttribute]) -> Vec<(u16, Vec<u8>)> {
    const TCA_OPTIONS: u16 = 2;
    let mut out = Vec::new();
    for o in options_of(attrs) {
        let TcOption::Other(n) = o else { continue };
        let (kind, value) = value_of(n);
        if kind != TCA_OPTIONS {
            out.push((kind, value));
            continue;
        }
        for nla in NlasIterator::new(value.as_slice()).flatten() {
            out.push((nla.kind() & 0x3fff, nla.value().to_vec()));
        }
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?))
}

/// A reply the kernel should not have given.
fn bad_reply(op: String, why: impl Into<String>) -> Error {
    Error::invalid("rtnetlink reply", op, why)
}

fn handle(major: u16, minor: u16) -> TcHandle {
    TcHandle { major, minor }
}

fn tc_msg(ifindex: u32, parent: TcHandle, handle: TcHandle) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = parent;
    m.header.handle = handle;
    m
}

fn kind_of(attrs: &[TcAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn options_of(attrs: &[TcAttribute]) -> &[TcOption] {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Options(o) => Some(o.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

/// The u32 keys matching `net` in the `field` address of an IPv4 or IPv6
/// header (offsets from the network header; one key per 32-bit word the
/// prefix covers, none for a /0).
fn subnet_keys(net: &ipnet::IpNet, field: AddrField) -> Vec<TcU32Key> {
    let (addr, prefix, base): (Vec<u8>, u8, i32) = match net {
        ipnet::IpNet::V4(n) => (
            n.network().octets().to_vec(),
            n.prefix_len(),
            if field == AddrField::Source { 12 } else { 16 },
        ),
        ipnet::IpNet::V6(n) => (
            n.network().octets().to_vec(),
            n.prefix_len(),
            if field == AddrField::Source { 8 } else { 24 },
        ),
    };
    let mut keys = Vec::new();
    for (i, word) in addr.chunks(4).enumerate() {
        let bits = (prefix as i32 - 32 * i as i32).clamp(0, 32) as u32;
        if bits == 0 {
            break;
        }
        let mask = if bits == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> bits)
        };
        let val = u32::from_be_bytes(word.try_into().expect("4 bytes")) & mask;
        keys.push(u32_key(mask, val, base + 4 * i as i32));
    }
    keys
}

fn u32_key(mask: u32, val: u32, off: i32) -> TcU32Key {
    let mut k = TcU32Key::default();
    k.mask = mask;
    k.val = val;
    k.off = off;
    k
}

fn selector(keys: Vec<TcU32Key>) -> TcU32Selector {
    let mut s = TcU32Selector::default();
    s.flags = TcU32SelectorFlags::Terminal;
    s.nkeys = keys.len() as u8;
    s.keys = keys;
    s
}

/// mirred: redirect to the egress of `ifindex`, the packet taken from
/// where it was (TC_ACT_STOLEN).
fn redirect_to(ifindex: u32) -> TcAction {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut parms = TcMirror::default();
    parms.generic = generic;
    parms.eaction = TcMirrorActionType::EgressRedir;
    parms.ifindex = ifindex;
    let mut a = TcAction::default();
    a.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            parms,
        ))]),
    ];
    a
}

impl Handle {
    /// Makes `shaper` the root qdisc of `ifindex` (handle `1:`), replacing
    /// whatever is there.
    pub fn set_root_shaper(&mut self, ifindex: u32, shaper: &Shaper) -> Result<()> {
        let current = self.root_qdisc(ifindex)?;
        match (&shaper.subnets, &current) {
            // A tbf over a tbf is changed in place: no moment unshaped.
            (Subnets::All, RootQdisc::Tbf { .. } | RootQdisc::None) => {}
            // The kernel changes a qdisc only into one of its own kind.
            _ => {
                self.clear_root_qdisc(ifindex)?;
            }
        }
        match &shaper.subnets {
            Subnets::All => self.tbf(ifindex, shaper),
            Subnets::Only { field, nets } => self.htb(ifindex, shaper, *field, nets, false),
            Subnets::Except { field, nets } => self.htb(ifindex, shaper, *field, nets, true),
        }
    }

    fn tbf(&mut self, ifindex: u32, s: &Shaper) -> Result<()> {
        let b = s.bucket;
        let mut parms = ratespec(b.rate);
        parms.extend(vec![0u8; 12]); // peakrate: none
        parms.extend(u32s(&[s.limit, b.ticks(), 0]));
        let mut opts = vec![nla(TCA_TBF_PARMS, parms)];
        if b.rate > u32::MAX as u64 {
            opts.push(nla(TCA_TBF_RATE64, b.rate.to_ne_bytes().to_vec()));
        }
        opts.push(nla(TCA_TBF_BURST, b.burst.to_ne_bytes().to_vec()));
        let mut m = tc_msg(ifindex, TcHandle::ROOT, handle(ROOT_MAJOR, 0));
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(opts));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| e.context(format!("tbf on link {ifindex}")))
    }

    fn htb(
        &mut self,
        ifindex: u32,
        s: &Shaper,
        field: AddrField,
        nets: &[ipnet::IpNet],
        except: bool,
    ) -> Result<()> {
        let (default, matched) = if except {
            (SHAPED_CLASS, UNSHAPED_CLASS)
        } else {
            (UNSHAPED_CLASS, SHAPED_CLASS)
        };
        let mut m = tc_msg(ifindex, TcHandle::ROOT, handle(ROOT_MAJOR, 0));
        m.attributes.push(TcAttribute::Kind("htb".into()));
        // version 3, rate2quantum 10 (iproute2's), the default class.
        m.attributes.push(TcAttribute::Options(vec![nla(
            TCA_HTB_INIT,
            u32s(&[3, 10, default as u32, 0, 0]),
        )]));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| e.context(format!("htb on link {ifindex}")))?;
        let unshaped = TokenBucket {
            rate: UNSHAPED_RATE,
            // 64 KiB at 100 Gbit/s: a GSO packet fits.
            burst: 1 << 16,
        };
        for (minor, bucket) in [(SHAPED_CLASS, s.bucket), (UNSHAPED_CLASS, unshaped)] {
            let mut parms = ratespec(bucket.rate);
            parms.extend(ratespec(bucket.rate)); // ceil: the rate itself
            parms.extend(u32s(&[bucket.ticks(), bucket.ticks(), 0, 0, 0]));
            let mut opts = vec![nla(TCA_HTB_PARMS, parms)];
            if bucket.rate > u32::MAX as u64 {
                opts.push(nla(TCA_HTB_RATE64, bucket.rate.to_ne_bytes().to_vec()));
                opts.push(nla(TCA_HTB_CEIL64, bucket.rate.to_ne_bytes().to_vec()));
            }
            let mut c = tc_msg(ifindex, handle(ROOT_MAJOR, 0), handle(ROOT_MAJOR, minor));
            c.attributes.push(TcAttribute::Kind("htb".into()));
            c.attributes.push(TcAttribute::Options(opts));
            self.sock
                .request(
                    RouteNetlinkMessage::NewTrafficClass(c),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(|e| e.context(format!("htb class 1:{minor} on link {ifindex}")))?;
        }
        for net in nets {
            let (proto, prio) = match net {
                ipnet::IpNet::V4(_) => (ETH_P_IP, PRIO_V4),
                ipnet::IpNet::V6(_) => (ETH_P_IPV6, PRIO_V6),
            };
            let mut f = tc_msg(ifindex, handle(ROOT_MAJOR, 0), TcHandle::UNSPEC);
            f.header.info = ((prio as u32) << 16) | proto.to_be() as u32;
            f.attributes.push(TcAttribute::Kind("u32".into()));
            f.attributes.push(TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::ClassId(handle(ROOT_MAJOR, matched))),
                TcOption::U32(TcFilterU32Option::Selector(selector(subnet_keys(
                    net, field,
                )))),
            ]));
            self.sock
                .request(
                    RouteNetlinkMessage::NewTrafficFilter(f),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(|e| e.context(format!("htb filter for {net} on link {ifindex}")))?;
        }
        Ok(())
    }

    /// Deletes the root qdisc unless it is the kernel's default.
    /// Ok(false): nothing to delete.
    pub fn clear_root_qdisc(&mut self, ifindex: u32) -> Result<bool> {
        let m = tc_msg(ifindex, TcHandle::ROOT, TcHandle::UNSPEC);
        match self
            .sock
            .request(RouteNetlinkMessage::DelQueueDiscipline(m), 0)
        {
            Ok(()) => Ok(true),
            // ENOENT: the default qdisc (handle 0), which cannot go.
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(false),
            Err(e) => Err(e.context(format!("delete root qdisc of link {ifindex}"))),
        }
    }

    /// The root qdisc of `ifindex`.
    pub fn root_qdisc(&mut self, ifindex: u32) -> Result<RootQdisc> {
        let op = || format!("root qdisc of link {ifindex}");
        // A GET, not a dump: the kernel ignores a qdisc dump's ifindex, so
        // a dump reads every qdisc of the host (an ADD beside 1000 shaped
        // containers took 9 times as long). The kernel does not show a
        // link's default qdisc: its GET is refused with EINVAL.
        let m = tc_msg(ifindex, TcHandle::ROOT, TcHandle::UNSPEC);
        let reply = match self
            .sock
            .get_echo(RouteNetlinkMessage::GetQueueDiscipline(m))
        {
            Ok(Some(RouteNetlinkMessage::NewQueueDiscipline(q))) => Some(q),
            Ok(Some(other)) => return Err(bad_reply(op(), format!("not a qdisc: {other:?}"))),
            Ok(None) => None,
            Err(e) if e.errno() == Some(libc::EINVAL) => None,
            Err(e) => return Err(e.context(op())),
        };
        let Some(reply) = reply else {
            return Ok(RootQdisc::None);
        };
        if reply.header.handle == TcHandle::UNSPEC {
            return Ok(RootQdisc::None);
        }
        let kind = kind_of(&reply.attributes).unwrap_or_default().to_string();
        let opts = raw_options(&reply.attributes);
        let opt = |k: u16| opts.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v);
        match kind.as_str() {
            "tbf" => {
                let bad = || bad_reply(op(), "tbf without its parameters");
                let parms = opt(TCA_TBF_PARMS).ok_or_else(bad)?;
                let rate32 = u32_at(parms, 8).ok_or_else(bad)? as u64;
                let rate = opt(TCA_TBF_RATE64)
                    .and_then(|v| u64_of(v))
                    .unwrap_or(rate32);
                let limit = u32_at(parms, 24).ok_or_else(bad)?;
                let ticks = u32_at(parms, 28).ok_or_else(bad)?;
                let burst = (((ticks as u128) << PSCHED_SHIFT) * rate as u128 / 1_000_000_000)
                    .min(u32::MAX as u128) as u32;
                Ok(RootQdisc::Tbf { rate, burst, limit })
            }
            "htb" => {
                let default_class = opt(TCA_HTB_INIT)
                    .and_then(|v| u32_at(v, 8))
                    .unwrap_or_default();
                let classes = self.htb_classes(ifindex)?;
                let filters = self.filters(ifindex, handle(ROOT_MAJOR, 0))?.len();
                Ok(RootQdisc::Htb {
                    default_class,
                    classes,
                    filters,
                })
            }
            _ => Ok(RootQdisc::Other(kind)),
        }
    }

    fn htb_classes(&mut self, ifindex: u32) -> Result<Vec<HtbClass>> {
        let m = tc_msg(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let msgs = self
            .sock
            .dump(RouteNetlinkMessage::GetTrafficClass(m))
            .map_err(|e| e.context(format!("classes of link {ifindex}")))?;
        let mut out = Vec::new();
        for msg in msgs {
            let RouteNetlinkMessage::NewTrafficClass(c) = msg else {
                continue;
            };
            if c.header.index != ifindex as i32 || kind_of(&c.attributes) != Some("htb") {
                continue;
            }
            let mut rate = None;
            let mut ceil = None;
            let (mut rate64, mut ceil64) = (None, None);
            for (kind, v) in raw_options(&c.attributes) {
                match kind {
                    TCA_HTB_PARMS => {
                        rate = u32_at(&v, 8).map(u64::from);
                        ceil = u32_at(&v, 20).map(u64::from);
                    }
                    TCA_HTB_RATE64 => rate64 = u64_of(&v),
                    TCA_HTB_CEIL64 => ceil64 = u64_of(&v),
                    _ => {}
                }
            }
            out.push(HtbClass {
                minor: c.header.handle.minor,
                rate: rate64.or(rate).unwrap_or_default(),
                ceil: ceil64.or(ceil).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// The filters under `parent` of `ifindex`, each with its options.
    fn filters(&mut self, ifindex: u32, parent: TcHandle) -> Result<Vec<Vec<TcOption>>> {
        let m = tc_msg(ifindex, parent, TcHandle::UNSPEC);
        let msgs = self
            .sock
            .dump(RouteNetlinkMessage::GetTrafficFilter(m))
            .map_err(|e| e.context(format!("filters of link {ifindex}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|msg| match msg {
                RouteNetlinkMessage::NewTrafficFilter(f)
                    if f.header.index == ifindex as i32
                        // Each u32 filter is dumped with its hash table
                        // (no handle minor) first: count the rules.
                        && f.header.handle.minor != 0 =>
                {
                    Some(options_of(&f.attributes).to_vec())
                }
                _ => None,
            })
            .collect())
    }

    /// An ingress qdisc on `ifindex` whose one filter redirects every
    /// packet to `to`, replacing any earlier one.
    pub fn set_ingress_redirect(&mut self, ifindex: u32, to: u32) -> Result<()> {
        self.clear_ingress_qdisc(ifindex)?;
        let mut q = tc_msg(ifindex, TcHandle::INGRESS, handle(INGRESS_MAJOR, 0));
        q.attributes.push(TcAttribute::Kind("ingress".into()));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(q),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| e.context(format!("ingress qdisc on link {ifindex}")))?;
        let mirred = redirect_to(to);
        let mut f = tc_msg(ifindex, handle(INGRESS_MAJOR, 0), TcHandle::UNSPEC);
        f.header.info = ((PRIO_REDIRECT as u32) << 16) | ETH_P_ALL.to_be() as u32;
        f.attributes.push(TcAttribute::Kind("u32".into()));
        f.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(handle(ROOT_MAJOR, 1))),
            // One key matching anything: u32 needs a selector.
            TcOption::U32(TcFilterU32Option::Selector(selector(vec![u32_key(
                0, 0, 0,
            )]))),
            TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
        ]));
        self.sock
            .request(
                RouteNetlinkMessage::NewTrafficFilter(f),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| e.context(format!("redirect of link {ifindex} to link {to}")))
    }

    /// Deletes the ingress qdisc of `ifindex` and its filters.
    /// Ok(false): there was none.
    pub fn clear_ingress_qdisc(&mut self, ifindex: u32) -> Result<bool> {
        let m = tc_msg(ifindex, TcHandle::INGRESS, handle(INGRESS_MAJOR, 0));
        match self
            .sock
            .request(RouteNetlinkMessage::DelQueueDiscipline(m), 0)
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(false),
            Err(e) => Err(e.context(format!("delete ingress qdisc of link {ifindex}"))),
        }
    }

    /// The link the ingress redirect of `ifindex` sends to, if any.
    pub fn ingress_redirect(&mut self, ifindex: u32) -> Result<Option<u32>> {
        let filters = match self.filters(ifindex, handle(INGRESS_MAJOR, 0)) {
            Ok(f) => f,
            // No ingress qdisc.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        for opts in filters {
            for o in opts {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                    continue;
                };
                for a in actions {
                    for attr in a.attributes {
                        let TcActionAttribute::Options(aopts) = attr else {
                            continue;
                        };
                        for ao in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao {
                                if p.eaction == TcMirrorActionType::EgressRedir {
                                    return Ok(Some(p.ifindex));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Creates an ifb link, up, with `mtu` and `alias`; returns its index.
    /// An existing link of that name is an error whose
    /// [`Error::is_exists`] is true.
    pub fn add_ifb(&mut self, name: &str, mtu: u32, alias: &str) -> Result<u32> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        // Flags in a create request are applied to the new device.
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| e.context(format!("create ifb {name}")))?;
        let link = self
            .link_by_name(name)?
            .ok_or_else(|| bad_reply(format!("create ifb {name}"), "gone once made"))?;
        // The kernel takes no alias at creation.
        self.set_alias(link.index, alias)?;
        Ok(link.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_cover_the_prefix_word_by_word() {
        let k = subnet_keys(&"10.1.2.3/16".parse().unwrap(), AddrField::Source);
        assert_eq!(k.len(), 1);
        assert_eq!(
            (k[0].mask, k[0].val, k[0].off),
            (0xffff_0000, 0x0a01_0000, 12)
        );
        let k = subnet_keys(&"10.1.2.0/24".parse().unwrap(), AddrField::Destination);
        assert_eq!(
            (k[0].mask, k[0].val, k[0].off),
            (0xffff_ff00, 0x0a01_0200, 16)
        );
        assert!(subnet_keys(&"0.0.0.0/0".parse().unwrap(), AddrField::Source).is_empty());
        let k = subnet_keys(&"fd00:1:2:3::/64".parse().unwrap(), AddrField::Destination);
        assert_eq!(k.len(), 2);
        assert_eq!((k[0].mask, k[0].val, k[0].off), (u32::MAX, 0xfd00_0001, 24));
        assert_eq!((k[1].mask, k[1].val, k[1].off), (u32::MAX, 0x0002_0003, 28));
        let k = subnet_keys(&"fd00::/12".parse().unwrap(), AddrField::Source);
        assert_eq!(
            (k[0].mask, k[0].val, k[0].off),
            (0xfff0_0000, 0xfd00_0000, 8)
        );
    }

    #[test]
    fn structs_have_the_kernels_sizes() {
        assert_eq!(ratespec(1).len(), 12);
        let b = TokenBucket {
            rate: 1_250_000,
            burst: 125_000,
        };
        // 0.1 s in 64 ns ticks.
        assert_eq!(b.ticks(), 100_000_000 >> 6);
        assert!(b.close_to(1_250_000, 124_000));
        assert!(!b.close_to(1_250_000, 120_000));
        assert!(!b.close_to(1_250_001, 125_000));
    }
}
