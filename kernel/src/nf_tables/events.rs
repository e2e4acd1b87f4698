//! Ruleset changes as the kernel announces them: every nftables commit in
//! a namespace, whoever makes it (nft, iptables-nft, firewalld, berth), is
//! multicast to the NFNLGRP_NFTABLES group of the namespace's
//! NETLINK_NETFILTER sockets. The reconciler only needs to know *that*
//! something changed: it then compares the ruleset with berth's records,
//! so the messages themselves are drained unread.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{Error, Result};

/// A subscription to the ruleset changes of the caller's namespace.
pub struct RulesetEvents {
    socket: Socket,
}

impl RulesetEvents {
    /// Subscribes in the namespace of the calling thread.
    pub fn subscribe() -> Result<RulesetEvents> {
        fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
            move |e| Error::io(format!("nftables events: {what}"), e)
        }
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .add_membership(libc::NFNLGRP_NFTABLES as u32)
            .map_err(io("join NFNLGRP_NFTABLES"))?;
        socket.set_non_blocking(true).map_err(io("non-blocking"))?;
        Ok(RulesetEvents { socket })
    }

    /// Waits up to `timeout` for a change and drains what is queued. True
    /// if anything changed, or may have: a receive buffer overrun (a
    /// burst of commits) loses messages, not the fact that there were
    /// some.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        // SAFETY: the fd is the socket's, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) };
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(
            &mut [PollFd::new(fd, PollFlags::POLLIN)],
            PollTimeout::from(ms),
        ) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(false),
            Err(e) => return Err(Error::io("nftables events: poll", e.into())),
        }
        self.drain()?;
        Ok(true)
    }

    /// Reads and drops every queued message.
    pub fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                // ENOBUFS: messages were lost to an overrun; what is queued
                // now is still to be read.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("nftables events: recv", e)),
            }
        }
    }
}
