//! A blocking NETLINK_ROUTE socket: send one request, read until its
//! answer. No runtime, no background reader: a plugin does a few strictly
//! sequential round trips, so the simplest transport is also the fastest.
//!
//! Replies are matched by sequence number; anything carrying another
//! sequence number (leftovers of an earlier request that was abandoned on
//! error) is skipped without being decoded.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket as NlSocket, SocketAddr};

use crate::Error;

/// How many times a dump is retried when the kernel flags it as
/// inconsistent (NLM_F_DUMP_INTR: the table changed while it was read).
const DUMP_RETRIES: usize = 5;
/// Kernel dump messages are at most 32 KiB; start with room for two.
const RX_BUF: usize = 64 * 1024;
/// NLMSGERR_ATTR_MSG from linux/netlink.h: the extended ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// A failure below the operation level; [`NlError::context`] turns it into
/// a crate [`Error`] naming the operation.
#[derive(Debug)]
pub(crate) enum NlError {
    Os(io::Error),
    Kernel {
        errno: i32,
        ext: Option<String>,
    },
    Decode(String),
    /// The kernel lacks this feature (not built in, no module loadable).
    Unsupported(String),
}

impl NlError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Os(e) => e.raw_os_error(),
            NlError::Kernel { errno, .. } => Some(*errno),
            NlError::Decode(_) | NlError::Unsupported(_) => None,
        }
    }

    pub(crate) fn context(self, op: impl Into<String>) -> Error {
        let op = op.into();
        match self {
            NlError::Os(source) => Error::Io { op, source },
            NlError::Kernel { errno, ext } => Error::Netlink { op, errno, ext },
            NlError::Decode(msg) => Error::Protocol { op, msg },
            NlError::Unsupported(feature) => Error::Unsupported { op, feature },
        }
    }
}

pub(crate) type NlResult<T> = std::result::Result<T, NlError>;

pub(crate) struct Socket {
    sock: NlSocket,
    seq: u32,
    rx: Vec<u8>,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace; it stays
    /// bound to that namespace whatever the thread does afterwards.
    pub(crate) fn open() -> io::Result<Socket> {
        let mut sock = NlSocket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        // Extended acks give the kernel's reason for EINVAL & co; capped
        // acks keep error replies small (no echo of our request). Strict
        // checking makes the kernel filter address/route dumps by the
        // header fields we set instead of sending everything. All three
        // are best effort: older kernels simply ignore them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Socket {
            sock,
            // Start away from 0 so a stray reply to seq 0 is never ours.
            seq: 1,
            rx: Vec::with_capacity(RX_BUF),
        })
    }

    /// Sends a request that is answered by an ACK or an error.
    pub(crate) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            for m in self.recv(seq)? {
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(kernel_error(code.get(), m.header.flags, &e.header)),
                    };
                }
                // Anything else (e.g. an echo) is not the answer; keep reading.
            }
        }
    }

    /// Sends a GET request answered by exactly one message.
    pub(crate) fn get(&mut self, msg: RouteNetlinkMessage) -> NlResult<RouteNetlinkMessage> {
        let seq = self.send(msg, NLM_F_REQUEST)?;
        loop {
            for m in self.recv(seq)? {
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => return Ok(inner),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(kernel_error(code.get(), m.header.flags, &e.header)),
                            None => Err(NlError::Decode("ACK instead of a reply".into())),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends a GET request the kernel answers as a notification (tc's
    /// qdisc and class GETs): that goes to the asker only with NLM_F_ECHO,
    /// so it is asked for, and the ACK marks the end (None if no message
    /// came before it).
    pub(crate) fn get_echo(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> NlResult<Option<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO)?;
        let mut reply = None;
        loop {
            for m in self.recv(seq)? {
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => reply = reply.or(Some(inner)),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(kernel_error(code.get(), m.header.flags, &e.header)),
                            None => Ok(reply),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Runs a dump to completion, restarting it when the kernel reports
    /// that the table changed underneath it.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage) -> NlResult<Vec<RouteNetlinkMessage>> {
        for _ in 0..=DUMP_RETRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'reading: loop {
                for m in self.recv(seq)? {
                    if m.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.payload {
                        NetlinkPayload::InnerMessage(inner) => out.push(inner),
                        NetlinkPayload::Done(d) => {
                            if d.code != 0 {
                                return Err(NlError::Kernel {
                                    errno: d.code.abs(),
                                    ext: ext_message(&d.extended_ack),
                                });
                            }
                            break 'reading;
                        }
                        NetlinkPayload::Error(e) => match e.code {
                            Some(code) => {
                                return Err(kernel_error(code.get(), m.header.flags, &e.header))
                            }
                            None => break 'reading,
                        },
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(NlError::Kernel {
            errno: libc::EINTR,
            ext: Some(format!(
                "dump interrupted by concurrent changes {} times",
                DUMP_RETRIES + 1
            )),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> NlResult<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(&buf, &kernel, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::Os(e)),
            }
        }
    }

    /// Reads one datagram and decodes the messages in it that belong to
    /// request `seq`.
    fn recv(&mut self, seq: u32) -> NlResult<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let len = self.recv_datagram()?;
        let data = &self.rx[..len];
        let mut out = Vec::new();
        let mut off = 0;
        while off + NLMSG_HDRLEN <= data.len() {
            let buf = NetlinkBuffer::new_checked(&data[off..])
                .map_err(|e| NlError::Decode(e.to_string()))?;
            let msg_len = buf.length() as usize;
            if msg_len < NLMSG_HDRLEN || off + msg_len > data.len() {
                return Err(NlError::Decode(format!("bad message length {msg_len}")));
            }
            if buf.sequence_number() == seq {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..off + msg_len])
                        .map_err(|e| NlError::Decode(format!("{e:#}")))?;
                out.push(msg);
            }
            off += align4(msg_len);
        }
        Ok(out)
    }

    /// Receives a whole datagram into `self.rx`, growing it if the kernel
    /// has a bigger one queued (peeking first, as a truncated netlink
    /// datagram cannot be read again).
    fn recv_datagram(&mut self) -> NlResult<usize> {
        let fd = self.sock.as_raw_fd();
        self.rx.clear();
        loop {
            // SAFETY: a zero-length read into a valid pointer; with
            // MSG_PEEK|MSG_TRUNC netlink returns the datagram's real size
            // and leaves it queued.
            let peeked = unsafe {
                libc::recv(
                    fd,
                    self.rx.as_mut_ptr().cast(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if peeked < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NlError::Os(e));
            }
            let want = peeked as usize;
            if want > self.rx.capacity() {
                self.rx.reserve(want);
            }
            // SAFETY: as above; the kernel writes at most capacity bytes
            // and we only expose the `got` bytes it wrote.
            let got = unsafe { libc::recv(fd, self.rx.as_mut_ptr().cast(), self.rx.capacity(), 0) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NlError::Os(e));
            }
            let got = got as usize;
            // SAFETY: the kernel initialised the first `got` bytes.
            unsafe { self.rx.set_len(got) };
            return Ok(got);
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds the error for a negative NLMSG_ERROR code, extracting the
/// extended ack text that follows the (possibly capped) echoed request.
fn kernel_error(code: i32, flags: u16, payload: &[u8]) -> NlError {
    let errno = code.abs();
    let mut ext = None;
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= NLMSG_HDRLEN {
        let skip = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            let orig = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
            align4(orig as usize)
        };
        if skip <= payload.len() {
            ext = ext_message(&payload[skip..]);
        }
    }
    NlError::Kernel { errno, ext }
}

fn ext_message(tlvs: &[u8]) -> Option<String> {
    for nla in NlasIterator::new(tlvs) {
        let Ok(nla) = nla else { break };
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let text = nla.value();
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            let s = String::from_utf8_lossy(&text[..end]).trim().to_string();
            if !s.is_empty() {
                return Some(s);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_text_is_found() {
        // capped echo: 16-byte header, then NLMSGERR_ATTR_MSG "bad gw\0"
        let mut payload = vec![0u8; 16];
        let text = b"bad gw\0";
        let nla_len = (4 + text.len()) as u16;
        payload.extend_from_slice(&nla_len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.push(0); // pad to 4
        match kernel_error(-libc::EINVAL, NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload) {
            NlError::Kernel { errno, ext } => {
                assert_eq!(errno, libc::EINVAL);
                assert_eq!(ext.as_deref(), Some("bad gw"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_tlvs_no_text() {
        match kernel_error(-libc::EEXIST, 0, &[0u8; 16]) {
            NlError::Kernel { errno, ext } => {
                assert_eq!(errno, libc::EEXIST);
                assert!(ext.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
