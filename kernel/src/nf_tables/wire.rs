//! nf_tables' wire format: netlink attributes (emitted and walked with
//! netlink-packet-core's NLA types), the nfnetlink header, and the
//! constants of linux/netfilter/nf_tables.h that the rest of the module
//! uses. Numbers are the kernel's uapi values; attributes holding integers
//! are big-endian, as the kernel reads them.

use netlink_packet_core::{
    Emitable, NetlinkBuffer, Nla, NlaBuffer, NlasIterator, NLA_F_NESTED, NLA_HEADER_SIZE,
    NLA_TYPE_MASK,
};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFT_MSG_NEWSET: u16 = 9;
pub(super) const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_DELSET: u16 = 11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
pub(super) const NFT_MSG_NEWGEN: u16 = 15;
pub(super) const NFT_MSG_GETGEN: u16 = 16;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NFGENMSG_LEN: usize = 4;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;

pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;

pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;

pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
pub(super) const NFTA_SET_DATA_TYPE: u16 = 6;
pub(super) const NFTA_SET_DATA_LEN: u16 = 7;
pub(super) const NFTA_SET_DESC: u16 = 9;
pub(super) const NFTA_SET_ID: u16 = 10;
pub(super) const NFTA_SET_USERDATA: u16 = 13;
pub(super) const NFTA_SET_DESC_SIZE: u16 = 1;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;

pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;

pub(super) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(super) const NFT_SET_CONSTANT: u32 = 0x2;
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

pub(super) const NFTA_GEN_ID: u16 = 1;
pub(super) const NFTA_GEN_PROC_PID: u16 = 2;

/// One attribute: a value, or attributes nested in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    pub(super) fn str(kind: u16, s: &str) -> Attr {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Attr::Bytes(kind, v)
    }

    pub(super) fn u32(kind: u16, v: u32) -> Attr {
        Attr::Bytes(kind, v.to_be_bytes().to_vec())
    }

    pub(super) fn u64(kind: u16, v: u64) -> Attr {
        Attr::Bytes(kind, v.to_be_bytes().to_vec())
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, v) => v.len(),
            Attr::Nested(_, attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(k, _) => *k,
            Attr::Nested(k, _) => *k | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, v) => buffer[..v.len()].copy_from_slice(v),
            Attr::Nested(_, attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// Appends one nfnetlink message (header, nfgenmsg, attributes) to `out`.
pub(super) fn put_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[Attr],
) {
    let body = attrs.buffer_len();
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + body;
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id big-endian.
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.resize(start + len, 0);
    attrs.emit(&mut out[start + NLMSG_HDRLEN + NFGENMSG_LEN..]);
}

/// The message type of an nf_tables command.
pub(super) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The message of `batch` (messages back to back, as sent) with sequence
/// number `seq`, header included.
pub(super) fn message_with_seq(batch: &[u8], seq: u32) -> Option<&[u8]> {
    messages(batch).find(|m| NetlinkBuffer::new(*m).sequence_number() == seq)
}

/// The messages of `buf` (back to back, as sent or received), headers
/// included; stops at the first malformed one.
pub(super) fn messages(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = NetlinkBuffer::new_checked(rest).ok()?.length() as usize;
        let msg = rest.get(..len)?;
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some(msg)
    })
}

/// The nf_tables command (NFT_MSG_*) of a message, header included.
pub(super) fn message_kind(message: &[u8]) -> Option<u16> {
    let kind = NetlinkBuffer::new_checked(message).ok()?.message_type();
    (kind >> 8 == NFNL_SUBSYS_NFTABLES).then_some(kind & 0xff)
}

/// Attributes of `data` as (type without flags, value); stops at the
/// first malformed one.
pub(super) fn attrs(data: &[u8]) -> Vec<(u16, &[u8])> {
    NlasIterator::new(data)
        .map_while(|a| a.ok())
        .map(|a: NlaBuffer<&[u8]>| {
            let (kind, len) = (a.kind() & NLA_TYPE_MASK, usize::from(a.length()));
            (kind, &a.into_inner()[NLA_HEADER_SIZE..len])
        })
        .collect()
}

/// The attribute of `data` whose bytes (header included) hold offset
/// `at` of `data`: (type, value, the value's offset in `data`).
pub(super) fn attr_holding(data: &[u8], at: usize) -> Option<(u16, &[u8], usize)> {
    attrs(data).into_iter().find_map(|(kind, value)| {
        let start = value.as_ptr() as usize - data.as_ptr() as usize;
        (start - NLA_HEADER_SIZE <= at && at < start + value.len()).then_some((kind, value, start))
    })
}

pub(super) fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|a| a.0 == kind).map(|a| a.1)
}

pub(super) fn get_str(attrs: &[(u16, &[u8])], kind: u16) -> Option<String> {
    let v = find(attrs, kind)?;
    let v = v.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(v).into_owned())
}

pub(super) fn get_u32(attrs: &[(u16, &[u8])], kind: u16) -> Option<u32> {
    let v = find(attrs, kind)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub(super) fn get_u64(attrs: &[(u16, &[u8])], kind: u16) -> Option<u64> {
    let v = find(attrs, kind)?;
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_padded_and_flagged() {
        let a = Attr::Nested(4, vec![Attr::str(1, "ab"), Attr::u32(2, 7)]);
        let mut out = Vec::new();
        put_message(&mut out, nft_type(NFT_MSG_NEWRULE), 1, 9, 1, 0, &[a]);
        assert_eq!(out.len(), 16 + 4 + 4 + 8 + 8);
        // The nested attribute's header: length 20, type 4 | NLA_F_NESTED.
        assert_eq!(&out[20..24], &[20, 0, 4, 0x80]);
        let walked = attrs(&out[20..]);
        assert_eq!(walked.len(), 1);
        let inner = attrs(walked[0].1);
        assert_eq!(get_str(&inner, 1).as_deref(), Some("ab"));
        assert_eq!(get_u32(&inner, 2), Some(7));
    }
}
