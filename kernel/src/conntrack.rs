//! Connection tracking entries over ctnetlink (NETLINK_NETFILTER).
//!
//! Only what publishing a UDP port needs: a datagram that reached a host
//! port before it was published created a conntrack entry without NAT,
//! and every later datagram of that flow follows the entry, not the new
//! DNAT rule, until it times out, so the published port looks dead to that
//! client. [`delete_udp_to_ports`] removes such entries, as the reference
//! portmap does after installing its rules.
//!
//! The entries are found with a dump (the kernel has no delete-by-port),
//! and each is deleted by sending back its original tuple exactly as the
//! dump gave it, so no address or zone has to be re-encoded. A dump walks
//! every bucket of the host's conntrack hash table whatever it holds
//! (about 10 ms for 262144 buckets here), so there is one per call, for
//! all ports, and none when the namespace tracks no connection at all.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::{Error, Result};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
const HEADER: usize = 16;
const NFGENMSG: usize = 4;

fn nl_err(op: &str, e: io::Error) -> Error {
    Error::io(op.to_string(), e)
}

/// Netlink attributes of `data`: (type without flags, whole attribute
/// including its header, payload).
fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[..len], &data[4..len]));
        let padded = (len + 3) & !3;
        data = &data[padded.min(data.len())..];
    }
    out
}

fn find<'a>(attrs: &[(u16, &'a [u8], &'a [u8])], kind: u16) -> Option<(&'a [u8], &'a [u8])> {
    attrs.iter().find(|a| a.0 == kind).map(|a| (a.1, a.2))
}

/// For one dumped entry (the attributes after nfgenmsg): the attributes
/// that identify it for a delete (its original tuple and zone) if it is a
/// UDP flow to one of `ports`.
fn matching_entry(payload: &[u8], ports: &[u16]) -> Option<Vec<u8>> {
    let attrs = attributes(payload);
    let (orig_whole, orig) = find(&attrs, CTA_TUPLE_ORIG)?;
    let tuple = attributes(orig);
    let (_, proto) = find(&tuple, CTA_TUPLE_PROTO)?;
    let proto = attributes(proto);
    let num = find(&proto, CTA_PROTO_NUM)?.1.first().copied()?;
    let dport = find(&proto, CTA_PROTO_DST_PORT)?.1;
    if num != IPPROTO_UDP
        || dport.len() < 2
        || !ports.contains(&u16::from_be_bytes([dport[0], dport[1]]))
    {
        return None;
    }
    let mut key = pad(orig_whole);
    if let Some((zone, _)) = find(&attrs, CTA_ZONE) {
        key.extend_from_slice(&pad(zone));
    }
    Some(key)
}

fn pad(attr: &[u8]) -> Vec<u8> {
    let mut v = attr.to_vec();
    v.resize((v.len() + 3) & !3, 0);
    v
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = HEADER + NFGENMSG + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// Netlink messages in one datagram: (type, errno if an error, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, i32, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < HEADER || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[HEADER..len];
        let errno = if kind == NLMSG_ERROR && body.len() >= 4 {
            -i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
        } else {
            0
        };
        out.push((kind, errno, body));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// True if the caller's network namespace tracks at least one connection
/// (or the count can't be read).
fn tracks_anything() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .map(|c| c.trim() != "0")
        .unwrap_or(true)
}

/// Deletes every conntrack entry of a UDP flow to one of `ports` (any
/// address) of the family (`v4`: IPv4, else IPv6) in the caller's network
/// namespace. Returns how many were deleted; an entry that vanished
/// meanwhile is fine.
pub fn delete_udp_to_ports(v4: bool, ports: &[u16]) -> Result<usize> {
    if ports.is_empty() || !tracks_anything() {
        return Ok(0);
    }
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let op = format!("delete conntrack entries of udp ports {ports:?}");
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| nl_err(&op, e))?;
    sock.bind_auto().map_err(|e| nl_err(&op, e))?;
    sock.send(
        &message(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family,
            &[],
        ),
        0,
    )
    .map_err(|e| nl_err(&op, e))?;
    let mut found = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    'dump: loop {
        buf.clear();
        sock.recv(&mut buf, 0).map_err(|e| nl_err(&op, e))?;
        for (kind, errno, body) in messages(&buf) {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR if errno != 0 => {
                    return Err(Error::Netlink {
                        op,
                        errno,
                        ext: None,
                    });
                }
                NLMSG_ERROR => {}
                _ if body.len() >= NFGENMSG => {
                    if let Some(key) = matching_entry(&body[NFGENMSG..], ports) {
                        found.push(key);
                    }
                }
                _ => {}
            }
        }
    }
    let mut deleted = 0;
    for (i, key) in found.iter().enumerate() {
        let seq = 2 + i as u32;
        sock.send(
            &message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                family,
                key,
            ),
            0,
        )
        .map_err(|e| nl_err(&op, e))?;
        buf.clear();
        sock.recv(&mut buf, 0).map_err(|e| nl_err(&op, e))?;
        match messages(&buf).first() {
            Some((NLMSG_ERROR, 0, _)) => deleted += 1,
            Some((NLMSG_ERROR, errno, _)) if *errno == libc::ENOENT => {}
            Some((NLMSG_ERROR, errno, _)) => {
                return Err(Error::Netlink {
                    op,
                    errno: *errno,
                    ext: None,
                })
            }
            _ => {}
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        pad(&v)
    }

    fn entry(proto: u8, dport: u16) -> Vec<u8> {
        let ip = attr(1 | 0x8000, &attr(1, &[10, 0, 0, 1]));
        let p = attr(
            CTA_TUPLE_PROTO | 0x8000,
            &[
                attr(CTA_PROTO_NUM, &[proto]),
                attr(2, &5000u16.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
            ]
            .concat(),
        );
        let orig = attr(CTA_TUPLE_ORIG | 0x8000, &[ip, p].concat());
        [
            orig,
            attr(CTA_ZONE, &0u16.to_be_bytes()),
            attr(3, &[1, 2, 3, 4]),
        ]
        .concat()
    }

    #[test]
    fn matches_udp_flows_to_the_port_only() {
        let key = matching_entry(&entry(IPPROTO_UDP, 5353), &[53, 5353]).expect("match");
        // The original tuple and the zone, as dumped.
        let attrs = attributes(&key);
        assert_eq!(
            attrs.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![CTA_TUPLE_ORIG, CTA_ZONE]
        );
        assert!(matching_entry(&entry(IPPROTO_UDP, 53), &[5353]).is_none());
        assert!(matching_entry(&entry(6, 5353), &[5353]).is_none());
        assert!(matching_entry(&[1, 2, 3], &[5353]).is_none());
    }

    #[test]
    fn message_layout() {
        let m = message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            2,
            &[9, 9, 9, 9],
        );
        assert_eq!(m.len(), 24);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 24);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0102);
        assert_eq!(m[16], 2);
        let parsed = messages(&m);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, 0x0102);
    }
}
