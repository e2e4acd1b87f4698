//! Rule expressions as the kernel runs them: loads into registers,
//! comparisons, lookups, verdicts, NAT. These are nf_tables' own
//! instructions, not nft's language: `iifname "br0"` is a meta load into
//! a register followed by a comparison with the name's bytes. Decoding
//! gives back the same values, so a rule read from the kernel compares
//! equal to the one that was written.

use super::wire::{self, Attr};
use super::Family;

/// The verdict register.
pub const REG_VERDICT: u32 = 0;
/// The first 128-bit data register.
pub const REG_1: u32 = 1;

/// The register that holds the 32-bit word `word` of the data area, named
/// as nft names it: a 128-bit register when the word starts one, a 32-bit
/// register otherwise (concatenations put each field in the next word).
pub fn reg_at_word(word: u32) -> u32 {
    const NFT_REG32_00: u32 = 8;
    if word.is_multiple_of(4) {
        REG_1 + word / 4
    } else {
        NFT_REG32_00 + word
    }
}

/// Where a payload load starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    Link,
    Network,
    Transport,
}

impl PayloadBase {
    fn code(self) -> u32 {
        match self {
            PayloadBase::Link => 0,
            PayloadBase::Network => 1,
            PayloadBase::Transport => 2,
        }
    }

    fn from_code(c: u32) -> Option<PayloadBase> {
        Some(match c {
            0 => PayloadBase::Link,
            1 => PayloadBase::Network,
            2 => PayloadBase::Transport,
            _ => return None,
        })
    }
}

/// Packet metadata (enum nft_meta_keys); the numbers are the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaKey {
    Protocol,
    Mark,
    Iifname,
    Oifname,
    Nfproto,
    L4proto,
    Other(u32),
}

impl MetaKey {
    fn code(self) -> u32 {
        match self {
            MetaKey::Protocol => 1,
            MetaKey::Mark => 3,
            MetaKey::Iifname => 6,
            MetaKey::Oifname => 7,
            MetaKey::Nfproto => 15,
            MetaKey::L4proto => 16,
            MetaKey::Other(c) => c,
        }
    }

    fn from_code(c: u32) -> MetaKey {
        match c {
            1 => MetaKey::Protocol,
            3 => MetaKey::Mark,
            6 => MetaKey::Iifname,
            7 => MetaKey::Oifname,
            15 => MetaKey::Nfproto,
            16 => MetaKey::L4proto,
            c => MetaKey::Other(c),
        }
    }
}

/// Connection tracking keys (enum nft_ct_keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtKey {
    State,
    Status,
    Other(u32),
}

impl CtKey {
    fn code(self) -> u32 {
        match self {
            CtKey::State => 0,
            CtKey::Status => 2,
            CtKey::Other(c) => c,
        }
    }

    fn from_code(c: u32) -> CtKey {
        match c {
            0 => CtKey::State,
            2 => CtKey::Status,
            c => CtKey::Other(c),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn code(self) -> u32 {
        self as u32
    }

    fn from_code(c: u32) -> Option<CmpOp> {
        Some(match c {
            0 => CmpOp::Eq,
            1 => CmpOp::Neq,
            2 => CmpOp::Lt,
            3 => CmpOp::Lte,
            4 => CmpOp::Gt,
            5 => CmpOp::Gte,
            _ => return None,
        })
    }
}

/// A rule's or a verdict map element's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    pub(super) fn attr(&self, kind: u16) -> Attr {
        let (code, chain): (i32, Option<&str>) = match self {
            Verdict::Drop => (0, None),
            Verdict::Accept => (1, None),
            Verdict::Continue => (-1, None),
            Verdict::Return => (-5, None),
            Verdict::Jump(c) => (-3, Some(c)),
            Verdict::Goto(c) => (-4, Some(c)),
        };
        let mut v = vec![Attr::u32(wire::NFTA_VERDICT_CODE, code as u32)];
        if let Some(c) = chain {
            v.push(Attr::str(wire::NFTA_VERDICT_CHAIN, c));
        }
        Attr::Nested(kind, vec![Attr::Nested(wire::NFTA_DATA_VERDICT, v)])
    }

    /// From an NFTA_DATA_VERDICT's attributes.
    pub(super) fn decode(attrs: &[(u16, &[u8])]) -> Option<Verdict> {
        let code = wire::get_u32(attrs, wire::NFTA_VERDICT_CODE)? as i32;
        let chain = || wire::get_str(attrs, wire::NFTA_VERDICT_CHAIN);
        Some(match code {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            -1 => Verdict::Continue,
            -5 => Verdict::Return,
            -3 => Verdict::Jump(chain()?),
            -4 => Verdict::Goto(chain()?),
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    Snat,
    Dnat,
}

/// NF_NAT_RANGE_MAP_IPS: the NAT sets the address.
pub const NAT_MAP_IPS: u32 = 0x1;
/// NF_NAT_RANGE_PROTO_SPECIFIED: the NAT sets the port.
pub const NAT_PROTO_SPECIFIED: u32 = 0x2;

/// What `fib` looks up (enum nft_fib_result): the route type of the
/// address, as `fib ... type` compares it.
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
/// NFTA_FIB_F_* flags of [`Expr::Fib`] (or-ed): what the route is looked
/// up by. `fib saddr`: the packet's source address; exactly one of this
/// and [`FIB_F_DADDR`] (nft refuses both and neither).
pub const FIB_F_SADDR: u32 = 0x1;
/// `fib daddr`: the packet's destination address.
pub const FIB_F_DADDR: u32 = 0x2;
/// `fib ... . mark`: the packet's mark as the routing mark.
pub const FIB_F_MARK: u32 = 0x4;
/// `fib ... . iif`: only routes through the input interface.
pub const FIB_F_IIF: u32 = 0x8;
/// `fib ... . oif`: only routes through the output interface (nft
/// refuses it together with [`FIB_F_IIF`]).
pub const FIB_F_OIF: u32 = 0x10;

/// One instruction of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    Ct {
        key: CtKey,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Membership in a set (or, with `dreg`, a map's value into it).
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// A map's verdict (`vmap`): a lookup whose value is the verdict.
    Verdict(Verdict),
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Nat {
        kind: NatKind,
        family: Family,
        addr: Option<u32>,
        proto: Option<u32>,
        flags: u32,
    },
    Masquerade,
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Counter,
    /// An expression berth does not write, kept as the kernel gave it.
    Other {
        name: String,
        data: Vec<u8>,
    },
}

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;

fn value(kind: u16, data: &[u8]) -> Attr {
    Attr::Nested(
        kind,
        vec![Attr::Bytes(wire::NFTA_DATA_VALUE, data.to_vec())],
    )
}

/// The bytes of a nested NFTA_DATA_VALUE.
fn get_value(attrs: &[(u16, &[u8])], kind: u16) -> Option<Vec<u8>> {
    let inner = wire::attrs(wire::find(attrs, kind)?);
    wire::find(&inner, wire::NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

impl Expr {
    /// The expression as an NFTA_LIST_ELEM; `set_id` gives the batch ID of
    /// a set created in the same batch.
    pub(super) fn attr(&self, set_id: &dyn Fn(&str) -> Option<u32>) -> Attr {
        let (name, data): (&str, Vec<Attr>) = match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => (
                "payload",
                vec![
                    Attr::u32(NFTA_PAYLOAD_DREG, *dreg),
                    Attr::u32(NFTA_PAYLOAD_BASE, base.code()),
                    Attr::u32(NFTA_PAYLOAD_OFFSET, *offset),
                    Attr::u32(NFTA_PAYLOAD_LEN, *len),
                ],
            ),
            Expr::Meta { key, dreg } => (
                "meta",
                vec![
                    Attr::u32(NFTA_META_KEY, key.code()),
                    Attr::u32(NFTA_META_DREG, *dreg),
                ],
            ),
            Expr::MetaSet { key, sreg } => (
                "meta",
                vec![
                    Attr::u32(NFTA_META_KEY, key.code()),
                    Attr::u32(NFTA_META_SREG, *sreg),
                ],
            ),
            Expr::Ct { key, dreg } => (
                "ct",
                vec![
                    Attr::u32(NFTA_CT_KEY, key.code()),
                    Attr::u32(NFTA_CT_DREG, *dreg),
                ],
            ),
            Expr::Cmp { sreg, op, data } => (
                "cmp",
                vec![
                    Attr::u32(NFTA_CMP_SREG, *sreg),
                    Attr::u32(NFTA_CMP_OP, op.code()),
                    value(NFTA_CMP_DATA, data),
                ],
            ),
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => (
                "bitwise",
                vec![
                    Attr::u32(NFTA_BITWISE_SREG, *sreg),
                    Attr::u32(NFTA_BITWISE_DREG, *dreg),
                    Attr::u32(NFTA_BITWISE_LEN, mask.len() as u32),
                    value(NFTA_BITWISE_MASK, mask),
                    value(NFTA_BITWISE_XOR, xor),
                ],
            ),
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                let mut v = vec![
                    Attr::u32(NFTA_LOOKUP_SREG, *sreg),
                    Attr::str(NFTA_LOOKUP_SET, super::wire_set_name(set)),
                ];
                if let Some(id) = set_id(set) {
                    v.push(Attr::u32(NFTA_LOOKUP_SET_ID, id));
                }
                if let Some(d) = dreg {
                    v.push(Attr::u32(NFTA_LOOKUP_DREG, *d));
                }
                if *invert {
                    v.push(Attr::u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV));
                }
                ("lookup", v)
            }
            Expr::Verdict(verdict) => (
                "immediate",
                vec![
                    Attr::u32(NFTA_IMMEDIATE_DREG, REG_VERDICT),
                    verdict.attr(NFTA_IMMEDIATE_DATA),
                ],
            ),
            Expr::Immediate { dreg, data } => (
                "immediate",
                vec![
                    Attr::u32(NFTA_IMMEDIATE_DREG, *dreg),
                    value(NFTA_IMMEDIATE_DATA, data),
                ],
            ),
            Expr::Nat {
                kind,
                family,
                addr,
                proto,
                flags,
            } => {
                let mut v = vec![
                    Attr::u32(
                        NFTA_NAT_TYPE,
                        match kind {
                            NatKind::Snat => 0,
                            NatKind::Dnat => 1,
                        },
                    ),
                    Attr::u32(NFTA_NAT_FAMILY, u32::from(family.code())),
                ];
                if let Some(r) = addr {
                    v.push(Attr::u32(NFTA_NAT_REG_ADDR_MIN, *r));
                    v.push(Attr::u32(NFTA_NAT_REG_ADDR_MAX, *r));
                }
                if let Some(r) = proto {
                    v.push(Attr::u32(NFTA_NAT_REG_PROTO_MIN, *r));
                    v.push(Attr::u32(NFTA_NAT_REG_PROTO_MAX, *r));
                }
                if *flags != 0 {
                    v.push(Attr::u32(NFTA_NAT_FLAGS, *flags));
                }
                ("nat", v)
            }
            Expr::Masquerade => ("masq", Vec::new()),
            Expr::Fib {
                flags,
                result,
                dreg,
            } => (
                "fib",
                vec![
                    Attr::u32(NFTA_FIB_FLAGS, *flags),
                    Attr::u32(NFTA_FIB_RESULT, *result),
                    Attr::u32(NFTA_FIB_DREG, *dreg),
                ],
            ),
            Expr::Counter => ("counter", Vec::new()),
            Expr::Other { name, data } => {
                return Attr::Nested(
                    wire::NFTA_LIST_ELEM,
                    vec![
                        Attr::str(wire::NFTA_EXPR_NAME, name),
                        Attr::Bytes(
                            wire::NFTA_EXPR_DATA | netlink_packet_core::NLA_F_NESTED,
                            data.clone(),
                        ),
                    ],
                )
            }
        };
        Attr::Nested(
            wire::NFTA_LIST_ELEM,
            vec![
                Attr::str(wire::NFTA_EXPR_NAME, name),
                Attr::Nested(wire::NFTA_EXPR_DATA, data),
            ],
        )
    }

    /// One NFTA_LIST_ELEM's value, as the kernel lists it.
    pub(super) fn decode(elem: &[u8]) -> Expr {
        let attrs = wire::attrs(elem);
        let name = wire::get_str(&attrs, wire::NFTA_EXPR_NAME).unwrap_or_default();
        let raw = wire::find(&attrs, wire::NFTA_EXPR_DATA).unwrap_or_default();
        Expr::decode_data(&name, raw).unwrap_or_else(|| Expr::Other {
            name,
            data: raw.to_vec(),
        })
    }

    fn decode_data(name: &str, raw: &[u8]) -> Option<Expr> {
        let a = wire::attrs(raw);
        let u = |k| wire::get_u32(&a, k);
        Some(match name {
            "payload" => Expr::Payload {
                base: PayloadBase::from_code(u(NFTA_PAYLOAD_BASE)?)?,
                offset: u(NFTA_PAYLOAD_OFFSET)?,
                len: u(NFTA_PAYLOAD_LEN)?,
                dreg: u(NFTA_PAYLOAD_DREG)?,
            },
            "meta" => {
                let key = MetaKey::from_code(u(NFTA_META_KEY)?);
                match (u(NFTA_META_DREG), u(NFTA_META_SREG)) {
                    (Some(dreg), None) => Expr::Meta { key, dreg },
                    (None, Some(sreg)) => Expr::MetaSet { key, sreg },
                    _ => return None,
                }
            }
            // A ct with a direction or a source register is not one berth
            // writes: kept whole.
            "ct" if a.len() == 2 => Expr::Ct {
                key: CtKey::from_code(u(NFTA_CT_KEY)?),
                dreg: u(NFTA_CT_DREG)?,
            },
            "cmp" => Expr::Cmp {
                sreg: u(NFTA_CMP_SREG)?,
                op: CmpOp::from_code(u(NFTA_CMP_OP)?)?,
                data: get_value(&a, NFTA_CMP_DATA)?,
            },
            "bitwise" => {
                // Only the boolean form (no shift).
                if u(6).is_some_and(|op| op != 0) {
                    return None;
                }
                Expr::Bitwise {
                    sreg: u(NFTA_BITWISE_SREG)?,
                    dreg: u(NFTA_BITWISE_DREG)?,
                    mask: get_value(&a, NFTA_BITWISE_MASK)?,
                    xor: get_value(&a, NFTA_BITWISE_XOR)?,
                }
            }
            "lookup" => Expr::Lookup {
                set: wire::get_str(&a, NFTA_LOOKUP_SET)?,
                sreg: u(NFTA_LOOKUP_SREG)?,
                dreg: u(NFTA_LOOKUP_DREG),
                invert: u(NFTA_LOOKUP_FLAGS).is_some_and(|f| f & NFT_LOOKUP_F_INV != 0),
            },
            "immediate" => {
                let dreg = u(NFTA_IMMEDIATE_DREG)?;
                let data = wire::attrs(wire::find(&a, NFTA_IMMEDIATE_DATA)?);
                if dreg == REG_VERDICT {
                    let v = wire::attrs(wire::find(&data, wire::NFTA_DATA_VERDICT)?);
                    Expr::Verdict(Verdict::decode(&v)?)
                } else {
                    Expr::Immediate {
                        dreg,
                        data: wire::find(&data, wire::NFTA_DATA_VALUE)?.to_vec(),
                    }
                }
            }
            "nat" => Expr::Nat {
                kind: match u(NFTA_NAT_TYPE)? {
                    0 => NatKind::Snat,
                    1 => NatKind::Dnat,
                    _ => return None,
                },
                family: Family::from_code(u8::try_from(u(NFTA_NAT_FAMILY)?).ok()?)?,
                addr: u(NFTA_NAT_REG_ADDR_MIN),
                proto: u(NFTA_NAT_REG_PROTO_MIN),
                flags: u(NFTA_NAT_FLAGS).unwrap_or(0),
            },
            "masq" if a.is_empty() => Expr::Masquerade,
            "fib" => Expr::Fib {
                flags: u(NFTA_FIB_FLAGS)?,
                result: u(NFTA_FIB_RESULT)?,
                dreg: u(NFTA_FIB_DREG)?,
            },
            // Counters' values change; a counter is a counter.
            "counter" => Expr::Counter,
            _ => return None,
        })
    }
}
