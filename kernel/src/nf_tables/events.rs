//! Ruleset changes as the kernel announces them: every nftables commit in
//! a namespace, whoever makes it (nft, iptables-nft, firewalld, berth), is
//! multicast to the NFNLGRP_NFTABLES group of the namespace's
//! NETLINK_NETFILTER sockets. The reconciler only needs to know *that*
//! another process changed something: it then compares the ruleset with
//! berth's records. Of the messages, only each commit's last one is read
//! (NFT_MSG_NEWGEN, naming the committing task), so that the
//! reconciler's own repairs do not wake it again.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::wire;
use crate::{Error, Result};

/// What [`RulesetEvents::wait`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No commit before the timeout.
    Nothing,
    /// Only commits of this process's own threads.
    OwnCommits,
    /// A commit of another process, or one that may have been (messages
    /// lost to a receive buffer overrun).
    Changes,
}

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

    /// Waits up to `timeout` for a commit and drains what is queued.
    pub fn wait(&mut self, timeout: Duration) -> Result<Seen> {
        // SAFETY: the fd is the socket's, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) };
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(
            &mut [PollFd::new(fd, PollFlags::POLLIN)],
            PollTimeout::from(ms),
        ) {
            Ok(0) => return Ok(Seen::Nothing),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Seen::Nothing),
            Err(e) => return Err(Error::io("nftables events: poll", e.into())),
        }
        self.drain()
    }

    /// Reads every queued message: what they tell (Nothing when none
    /// was queued).
    pub fn drain(&mut self) -> Result<Seen> {
        let mut seen = Seen::Nothing;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => seen = seen.max_with(commits(buf.get(..n).unwrap_or_default())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(seen),
                // ENOBUFS: messages were lost to an overrun (whose commits,
                // unknown); what is queued now is still to be read.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => seen = Seen::Changes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("nftables events: recv", e)),
            }
        }
    }
}

impl Seen {
    /// The more telling of the two.
    fn max_with(self, other: Seen) -> Seen {
        match (self, other) {
            (Seen::Changes, _) | (_, Seen::Changes) => Seen::Changes,
            (Seen::OwnCommits, _) | (_, Seen::OwnCommits) => Seen::OwnCommits,
            _ => Seen::Nothing,
        }
    }
}

/// What the notifications in `buf` (one datagram) tell: each commit ends
/// with NFT_MSG_NEWGEN carrying the committing task's ID (a thread's, for
/// a thread of a process).
fn commits(buf: &[u8]) -> Seen {
    let mut seen = Seen::Nothing;
    for msg in wire::messages(buf) {
        if wire::message_kind(msg) != Some(wire::NFT_MSG_NEWGEN) {
            continue;
        }
        let attrs = msg
            .get(wire::NLMSG_HDRLEN + wire::NFGENMSG_LEN..)
            .unwrap_or_default();
        let task = wire::get_u32(&wire::attrs(attrs), wire::NFTA_GEN_PROC_PID);
        if !task.is_some_and(is_own_task) {
            return Seen::Changes;
        }
        seen = Seen::OwnCommits;
    }
    seen
}

/// True if `task` is a thread of this process. The kernel gives the ID as
/// the initial PID namespace numbers it: in a PID namespace of its own,
/// no commit is recognised as this process's, and each of its repairs
/// costs one more look, as before there was this check.
fn is_own_task(task: u32) -> bool {
    task == std::process::id() || std::path::Path::new(&format!("/proc/self/task/{task}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Attr;

    fn newgen(out: &mut Vec<u8>, task: Option<u32>) {
        let attrs: Vec<Attr> = task
            .map(|t| Attr::u32(wire::NFTA_GEN_PROC_PID, t))
            .into_iter()
            .collect();
        let kind = wire::nft_type(wire::NFT_MSG_NEWGEN);
        wire::put_message(out, kind, 0, 0, 0, 0, &attrs);
    }

    #[test]
    fn own_commits_are_told_from_other_processes() {
        let own = std::process::id();
        // Not a task of this process (PIDs stop well below).
        let other = u32::MAX - 1;
        let mut buf = Vec::new();
        assert_eq!(commits(&buf), Seen::Nothing);
        // A commit's other notifications do not count, its NEWGEN does.
        let table = wire::nft_type(0);
        wire::put_message(&mut buf, table, 0, 0, 1, 0, &[]);
        assert_eq!(commits(&buf), Seen::Nothing);
        newgen(&mut buf, Some(own));
        assert_eq!(commits(&buf), Seen::OwnCommits);
        newgen(&mut buf, Some(other));
        assert_eq!(commits(&buf), Seen::Changes);
        let mut unnamed = Vec::new();
        newgen(&mut unnamed, None);
        assert_eq!(commits(&unnamed), Seen::Changes, "no task: anyone's");
        assert_eq!(Seen::OwnCommits.max_with(Seen::Nothing), Seen::OwnCommits);
        assert_eq!(Seen::Changes.max_with(Seen::OwnCommits), Seen::Changes);
    }
}
