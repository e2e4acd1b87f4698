//! Values as registers and set keys hold them, and the few instruction
//! sequences nft compiles its common matches to (so that nft lists
//! berth's rules in its own words).

use std::net::IpAddr;

use ipnet::IpNet;

use super::expr::{CmpOp, CtKey, Expr, MetaKey, PayloadBase, REG_1};
use super::objects::Element;

/// IFNAMSIZ: an interface name's register width.
const IFNAMSIZ: usize = 16;

/// An interface name as a key or an exact match: NUL-padded to 16 bytes.
pub fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

pub fn ip(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A port (inet_service): network byte order.
pub fn port(p: u16) -> Vec<u8> {
    p.to_be_bytes().to_vec()
}

/// A 32-bit value in host byte order (marks, ct state and status bits,
/// fib's address type).
pub fn host_u32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A concatenation: each field padded to 32 bits.
pub fn concat(fields: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
    out
}

/// NFPROTO_IPV4 / NFPROTO_IPV6: what `meta nfproto` holds.
pub fn nfproto(v6: bool) -> Vec<u8> {
    vec![if v6 { 10 } else { 2 }]
}

/// `meta KEY` into register 1.
pub fn meta(key: MetaKey) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

/// `ct KEY` into register 1.
pub fn ct(key: CtKey) -> Expr {
    Expr::Ct { key, dreg: REG_1 }
}

pub fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        op,
        data,
    }
}

/// `meta KEY OP value`.
pub fn meta_cmp(key: MetaKey, op: CmpOp, data: Vec<u8>) -> Vec<Expr> {
    vec![meta(key), cmp(op, data)]
}

/// `meta nfproto ipv4|ipv6`: nft's implicit guard before an `ip`/`ip6`
/// match in an inet table.
pub fn nfproto_is(v6: bool) -> Vec<Expr> {
    meta_cmp(MetaKey::Nfproto, CmpOp::Eq, nfproto(v6))
}

/// Where an address lives in the network header: (offset, length).
pub fn addr_field(v6: bool, source: bool) -> (u32, u32) {
    match (v6, source) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    }
}

/// `ip[6] saddr|daddr` into register `dreg`.
pub fn addr_load(v6: bool, source: bool, dreg: u32) -> Expr {
    let (offset, len) = addr_field(v6, source);
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
        dreg,
    }
}

/// `ip[6] saddr|daddr OP prefix` as nft compiles it: a byte-aligned prefix
/// loads just its bytes, any other a masked whole address.
pub fn addr_prefix_cmp(v6: bool, source: bool, op: CmpOp, net: &IpNet) -> Vec<Expr> {
    let net = net.trunc();
    let (offset, len) = addr_field(v6, source);
    let bytes = ip(&net.addr());
    let plen = u32::from(net.prefix_len());
    if plen % 8 == 0 {
        let n = (plen / 8) as usize;
        return vec![
            Expr::Payload {
                base: PayloadBase::Network,
                offset,
                len: n as u32,
                dreg: REG_1,
            },
            cmp(op, bytes[..n].to_vec()),
        ];
    }
    let mask = ip(&net.netmask());
    vec![
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            xor: vec![0; mask.len()],
            mask,
        },
        cmp(op, bytes),
    ]
}

/// `SOURCE & bits OP 0|bits` on a 32-bit host-order value in register 1
/// (`ct status & dnat != dnat`, `ct state established,related`).
pub fn bits(mask: u32, op: CmpOp, against: u32) -> Vec<Expr> {
    vec![
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: host_u32(mask),
            xor: host_u32(0),
        },
        cmp(op, host_u32(against)),
    ]
}

/// `meta mark set meta mark | bit`.
pub fn set_mark_bit(bit: u32) -> Vec<Expr> {
    vec![
        meta(MetaKey::Mark),
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: host_u32(!bit),
            xor: host_u32(bit),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: REG_1,
        },
    ]
}

/// The prefixes an interval set's elements cover (ranges that are not a
/// prefix are left out: berth writes only prefixes).
pub fn interval_prefixes(elements: &[Element]) -> Vec<IpNet> {
    let mut sorted: Vec<&Element> = elements.iter().collect();
    // By key, an end before a start at the same key (adjacent ranges).
    sorted.sort_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
    let mut out = Vec::new();
    for (i, e) in sorted.iter().enumerate() {
        if e.end {
            continue;
        }
        let end = sorted.get(i + 1).filter(|n| n.end).map(|n| n.key.clone());
        if let Some(net) = range_prefix(&e.key, end.as_deref()) {
            out.push(net);
        }
    }
    out
}

/// The prefix [start, end) is, if it is one; no end means the top of the
/// address space.
fn range_prefix(start: &[u8], end: Option<&[u8]>) -> Option<IpNet> {
    let to_u128 = |b: &[u8]| b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x));
    let bits = (start.len() * 8) as u32;
    let s = to_u128(start);
    // Size of the range, modulo 2^bits (0 means all of it).
    let size = match end {
        Some(e) => to_u128(e).wrapping_sub(s),
        None => {
            let top = if bits == 128 { 0 } else { 1u128 << bits };
            top.wrapping_sub(s)
        }
    };
    let host_bits = if size == 0 {
        bits
    } else {
        if !size.is_power_of_two() {
            return None;
        }
        size.trailing_zeros()
    };
    if host_bits > bits || (host_bits < 128 && s & ((1u128 << host_bits) - 1) != 0) {
        return None;
    }
    let plen = (bits - host_bits) as u8;
    let addr: IpAddr = match start.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(start).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(start).ok()?),
        _ => return None,
    };
    IpNet::new(addr, plen).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn prefixes_back_from_intervals() {
        for nets in [
            vec![net("10.77.0.0/24")],
            vec![net("10.0.0.0/8"), net("192.168.1.0/24")],
            vec![net("fd77::/64")],
            vec![net("0.0.0.0/0")],
            vec![net("255.255.255.0/24")],
        ] {
            let mut e = Element::intervals(&nets);
            e.reverse();
            assert_eq!(interval_prefixes(&e), nets);
        }
    }

    #[test]
    fn prefix_matches_as_nft_compiles_them() {
        let mc = addr_prefix_cmp(false, false, CmpOp::Neq, &net("224.0.0.0/4"));
        assert_eq!(mc.len(), 3);
        let lo = addr_prefix_cmp(false, true, CmpOp::Eq, &net("127.0.0.0/8"));
        assert_eq!(
            lo[0],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 12,
                len: 1,
                dreg: REG_1
            }
        );
        assert_eq!(lo[1], cmp(CmpOp::Eq, vec![127]));
    }

    #[test]
    fn concatenations_are_word_aligned() {
        assert_eq!(
            concat(&[vec![6], port(8080)]),
            vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
        assert_eq!(ifname("br0").len(), 16);
    }
}
