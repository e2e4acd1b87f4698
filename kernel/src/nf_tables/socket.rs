//! The NETLINK_NETFILTER socket nf_tables is spoken over: sending a batch
//! and collecting its answers, and the dumps a listing is made of.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as NlSocket};

use super::objects::{Chain, ChainRef, Element, Rule, Set, Table};
use super::wire::{self, Attr};
use super::Listing;
use crate::nl::{NlError, NlResult};
use crate::{Error, Netns, Result};

/// A dump is read again when the ruleset changed under it, at most this
/// many times.
const LIST_RETRIES: usize = 5;
const RX_BUF: usize = 64 * 1024;
/// NLMSGERR_ATTR_MSG: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// NLMSGERR_ATTR_OFFS: where in the refused message the attribute at
/// fault starts.
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// NLM_F_CAPPED and NLM_F_ACK_TLVS, on an error message.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;

/// The kernel's answer to the first command of a batch it refused.
pub(super) struct Refusal {
    pub(super) seq: u32,
    pub(super) errno: i32,
    /// The extended ack's text.
    pub(super) ext: Option<String>,
    /// Where the attribute at fault starts, from the start of the
    /// refused message's header.
    pub(super) offset: Option<u32>,
}

pub(super) struct Socket {
    sock: NlSocket,
    seq: u32,
    rx: Vec<u8>,
}

/// Opens a socket in `ns` (None: the caller's namespace); it stays there
/// whatever the thread does next.
pub(super) fn open(ns: Option<&Netns>, op: &str) -> Result<Socket> {
    let make = || -> io::Result<NlSocket> {
        let mut sock = NlSocket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // The kernel's reason for an error, and errors without an echo of
        // the whole request (best effort: older kernels ignore both).
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(sock)
    };
    let sock = match ns {
        Some(ns) => ns.run(make)?,
        None => make(),
    }
    .map_err(|e| match e.raw_os_error() {
        // A kernel built without nfnetlink has no such socket family.
        Some(libc::EPROTONOSUPPORT) => Error::Unsupported {
            op: op.to_string(),
            feature: "netfilter netlink (nfnetlink)".into(),
        },
        _ => Error::io(format!("{op}: open a netfilter netlink socket"), e),
    })?;
    Ok(Socket {
        sock,
        seq: std::process::id().wrapping_mul(7919) | 1,
        rx: vec![0; RX_BUF],
    })
}

std::thread_local! {
    /// This thread's socket in its own namespace (with that namespace's
    /// ID), kept for the next call. Closing a netfilter socket while the
    /// kernel still has objects of a commit to free (any commit that
    /// deleted something) makes the close wait for that RCU grace period
    /// (about 15 ms here): a process that keeps its socket pays that at
    /// most once, at exit, and only for what has not passed by then.
    static CACHED: RefCell<Option<(NetnsId, Socket)>> = const { RefCell::new(None) };
}

/// A network namespace's identity: its nsfs inode (device, inode).
type NetnsId = (u64, u64);

/// The namespace the calling thread is in; None if it cannot be told.
fn current_netns() -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some((m.dev(), m.ino()))
}

/// Runs `f` on a socket in `ns` (None: the caller's namespace). In the
/// caller's namespace the thread's socket is reused and kept if `f`
/// succeeds; a failure may leave answers unread, so that socket is closed.
pub(super) fn with<T>(
    ns: Option<&Netns>,
    op: &str,
    f: impl FnOnce(&mut Socket) -> Result<T>,
) -> Result<T> {
    if ns.is_some() {
        return f(&mut open(ns, op)?);
    }
    let here = current_netns();
    let cached = CACHED
        .with(|c| c.borrow_mut().take())
        .filter(|(id, _)| Some(*id) == here)
        .map(|(_, s)| s);
    let mut sock = match cached {
        Some(s) => s,
        None => open(None, op)?,
    };
    let out = f(&mut sock)?;
    if let Some(id) = here {
        CACHED.with(|c| *c.borrow_mut() = Some((id, sock)));
    }
    Ok(out)
}

/// One received message: (type, flags, seq, payload after the header).
type Message = (u16, u16, u32, Vec<u8>);

impl Socket {
    /// Reserves `n` consecutive sequence numbers; returns the first.
    pub(super) fn next_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n).max(1);
        first
    }

    fn send(&mut self, bytes: &[u8]) -> NlResult<()> {
        // A big batch (thousands of elements) can exceed the default send
        // buffer; netlink refuses a message larger than it.
        if bytes.len() > 128 * 1024 {
            let size = (bytes.len() * 2) as libc::c_int;
            // SAFETY: setsockopt on our own socket with a valid int.
            unsafe {
                libc::setsockopt(
                    self.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let sent = self.sock.send(bytes, 0).map_err(NlError::Os)?;
        if sent != bytes.len() {
            return Err(NlError::Decode(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    fn recv(&mut self) -> NlResult<Vec<Message>> {
        let n = loop {
            match self.sock.recv(&mut &mut self.rx[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::Os(e)),
            }
        };
        let mut out = Vec::new();
        let mut at = 0;
        while at + wire::NLMSG_HDRLEN <= n {
            let buf = NetlinkBuffer::new(&self.rx[at..n]);
            let len = buf.length() as usize;
            if len < wire::NLMSG_HDRLEN || at + len > n {
                return Err(NlError::Decode(format!(
                    "truncated netlink message ({len})"
                )));
            }
            out.push((
                buf.message_type(),
                buf.flags(),
                buf.sequence_number(),
                self.rx[at + wire::NLMSG_HDRLEN..at + len].to_vec(),
            ));
            at += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Sends a batch whose commands carry sequence numbers `first` to
    /// `first + n - 1`, the last asking for an ack, and reads the answers:
    /// None when the last command was acked with no error before it, or
    /// the first failure. The kernel
    /// processes the whole batch inside the send, so every answer is
    /// queued by then.
    pub(super) fn transact(
        &mut self,
        bytes: &[u8],
        first: u32,
        n: usize,
    ) -> NlResult<Option<Refusal>> {
        self.send(bytes)?;
        let last = first + n as u32 - 1;
        loop {
            for (kind, flags, seq, payload) in self.recv()? {
                if kind != wire::NLMSG_ERROR {
                    continue;
                }
                let (errno, ext, offset) = error_of(flags, &payload)?;
                if errno != 0 {
                    return Ok(Some(Refusal {
                        seq,
                        errno,
                        ext,
                        offset,
                    }));
                }
                if seq == last {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends one request and collects what it answers: every message of
    /// a dump, or the one reply of a get.
    fn request(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[Attr],
    ) -> NlResult<Vec<(u8, Vec<u8>)>> {
        let seq = self.next_seqs(1);
        let mut bytes = Vec::new();
        wire::put_message(
            &mut bytes,
            wire::nft_type(msg),
            wire::NLM_F_REQUEST | wire::NLM_F_ACK | flags,
            seq,
            family,
            0,
            attrs,
        );
        self.send(&bytes)?;
        let mut out = Vec::new();
        loop {
            for (kind, eflags, s, payload) in self.recv()? {
                if s != seq {
                    continue;
                }
                match kind {
                    wire::NLMSG_DONE => return Ok(out),
                    wire::NLMSG_ERROR => {
                        let (errno, ext, _) = error_of(eflags, &payload)?;
                        if errno != 0 {
                            return Err(NlError::Kernel { errno, ext });
                        }
                        return Ok(out);
                    }
                    _ if payload.len() >= wire::NFGENMSG_LEN => {
                        out.push((payload[0], payload[wire::NFGENMSG_LEN..].to_vec()));
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn generation(&mut self) -> NlResult<u32> {
        let reply = match self.request(wire::NFT_MSG_GETGEN, 0, 0, &[]) {
            // nfnetlink's answer to a message for a subsystem it does not
            // have (nf_tables not built, its module not loadable); the
            // query itself cannot be invalid.
            Err(NlError::Kernel { errno, .. }) if errno == libc::EINVAL => {
                return Err(NlError::Unsupported("nf_tables".into()))
            }
            r => r?,
        };
        reply
            .first()
            .and_then(|(_, attrs)| wire::get_u32(&wire::attrs(attrs), wire::NFTA_GEN_ID))
            .ok_or_else(|| NlError::Decode("no generation in the answer".into()))
    }

    pub(super) fn list_table(&mut self, table: &Table) -> NlResult<Option<Listing>> {
        for _ in 0..LIST_RETRIES {
            let before = self.generation()?;
            let listing = match self.read_table(table) {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(None),
                // A set or chain went between the dumps (another process
                // committed meanwhile): read the whole table again.
                Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => continue,
                Err(e) => return Err(e),
            };
            if self.generation()? == before {
                return Ok(Some(listing));
            }
        }
        Err(NlError::Kernel {
            errno: libc::EINTR,
            ext: Some(format!(
                "the ruleset changed while it was read, {LIST_RETRIES} times"
            )),
        })
    }

    pub(super) fn list_chain(&mut self, chain: &ChainRef) -> NlResult<Option<Vec<Rule>>> {
        let family = chain.table.family.code();
        let name = [
            Attr::str(wire::NFTA_CHAIN_TABLE, &chain.table.name),
            Attr::str(wire::NFTA_CHAIN_NAME, &chain.name),
        ];
        let filter = [
            Attr::str(wire::NFTA_RULE_TABLE, &chain.table.name),
            Attr::str(wire::NFTA_RULE_CHAIN, &chain.name),
        ];
        for _ in 0..LIST_RETRIES {
            let before = self.generation()?;
            match self.request(wire::NFT_MSG_GETCHAIN, 0, family, &name) {
                Ok(_) => {}
                Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
                Err(e) => return Err(e),
            }
            let dumped =
                match self.request(wire::NFT_MSG_GETRULE, wire::NLM_F_DUMP, family, &filter) {
                    Ok(d) => d,
                    // The chain went since it was asked for: ask again.
                    Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => continue,
                    Err(e) => return Err(e),
                };
            let rules = dumped
                .into_iter()
                .filter_map(|(_, attrs)| Rule::decode(chain.table.family, &wire::attrs(&attrs)))
                .filter(|r| r.chain == *chain)
                .collect();
            if self.generation()? == before {
                return Ok(Some(rules));
            }
        }
        Err(NlError::Kernel {
            errno: libc::EINTR,
            ext: Some(format!(
                "the ruleset changed while it was read, {LIST_RETRIES} times"
            )),
        })
    }

    fn read_table(&mut self, table: &Table) -> NlResult<Option<Listing>> {
        let family = table.family.code();
        match self.request(wire::NFT_MSG_GETTABLE, 0, family, &table.attrs()) {
            Ok(_) => {}
            Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut listing = Listing::default();
        // Chains cannot be dumped for one table: the family's, filtered.
        for (_, attrs) in self.request(wire::NFT_MSG_GETCHAIN, wire::NLM_F_DUMP, family, &[])? {
            let a = wire::attrs(&attrs);
            if let Some(c) = Chain::decode(table.family, &a) {
                if c.at.table == *table {
                    listing.chains.push(c);
                }
            }
        }
        let name = [Attr::str(wire::NFTA_SET_TABLE, &table.name)];
        for (_, attrs) in self.request(wire::NFT_MSG_GETSET, wire::NLM_F_DUMP, family, &name)? {
            let a = wire::attrs(&attrs);
            let set_name = wire::get_str(&a, wire::NFTA_SET_NAME).unwrap_or_default();
            if wire::get_str(&a, wire::NFTA_SET_TABLE).as_deref() != Some(&table.name) {
                continue;
            }
            match Set::decode(table.family, &a) {
                Some(set) if !set_name.starts_with("__") => {
                    let elements = self.elements(table, &set_name)?;
                    listing.sets.push((set, elements));
                }
                _ => listing.other_sets.push(set_name),
            }
        }
        let name = [Attr::str(wire::NFTA_RULE_TABLE, &table.name)];
        for (_, attrs) in self.request(wire::NFT_MSG_GETRULE, wire::NLM_F_DUMP, family, &name)? {
            let a = wire::attrs(&attrs);
            if let Some(r) = Rule::decode(table.family, &a) {
                if r.chain.table == *table {
                    listing.rules.push(r);
                }
            }
        }
        Ok(Some(listing))
    }

    fn elements(&mut self, table: &Table, set: &str) -> NlResult<Vec<Element>> {
        let attrs = [
            Attr::str(wire::NFTA_SET_ELEM_LIST_TABLE, &table.name),
            Attr::str(wire::NFTA_SET_ELEM_LIST_SET, set),
        ];
        let mut out = Vec::new();
        for (_, msg) in self.request(
            wire::NFT_MSG_GETSETELEM,
            wire::NLM_F_DUMP,
            table.family.code(),
            &attrs,
        )? {
            let a = wire::attrs(&msg);
            let Some(list) = wire::find(&a, wire::NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            out.extend(
                wire::attrs(list)
                    .into_iter()
                    .filter(|(k, _)| *k == wire::NFTA_LIST_ELEM)
                    .filter_map(|(_, e)| Element::decode(e)),
            );
        }
        Ok(out)
    }
}

/// An NLMSG_ERROR's errno (0 for an ack), extended ack text and the
/// offset of the attribute at fault.
fn error_of(flags: u16, payload: &[u8]) -> NlResult<(i32, Option<String>, Option<u32>)> {
    let code = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| NlError::Decode("short error message".into()))?;
    let (mut ext, mut offset) = (None, None);
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the errno: the request's header (capped) or the whole
        // request, then the TLVs.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            wire::NLMSG_HDRLEN
        } else {
            payload
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .unwrap_or(0) as usize
        };
        if let Some(tlvs) = payload.get(4 + ((echoed + 3) & !3)..) {
            let tlvs = wire::attrs(tlvs);
            ext = wire::get_str(&tlvs, NLMSGERR_ATTR_MSG);
            // Host byte order, unlike nf_tables' own attributes.
            offset = wire::find(&tlvs, NLMSGERR_ATTR_OFFS)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes);
        }
    }
    Ok((code.abs(), ext, offset))
}
