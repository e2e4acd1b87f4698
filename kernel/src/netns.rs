//! Network namespace handles.
//!
//! A namespace is entered only by short-lived threads created for that
//! purpose ([`Netns::run`]): namespace membership is per thread, so entering
//! one on a thread that the caller keeps using (or on a runtime worker)
//! would silently move every later socket and /proc/sys access of that
//! thread into the container.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::{Error, Result};

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of /proc/*/ns/* files
/// and of their bind mounts (/run/netns/NAME).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` = _IO(0xb7, 0x3) from linux/nsfs.h.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace (owns the file descriptor).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the network namespace at `path` (e.g. `/var/run/netns/cni-…`
    /// or `/proc/PID/ns/net`). Fails with errno ENOENT if the path is
    /// missing and with [`Error::NotNetns`] if it is some other file or
    /// another kind of namespace.
    pub fn open(path: &Path) -> Result<Netns> {
        let op = || format!("open netns {}", path.display());
        let file = File::open(path).map_err(|e| Error::io(op(), e))?;
        // fstatfs rules out plain files (e.g. an unmounted /run/netns entry),
        // NS_GET_NSTYPE rules out mount/pid/... namespaces.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| Error::io(op(), e.into()))?;
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(Error::NotNetns { path: path.into() });
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTTY) {
                return Err(Error::NotNetns { path: path.into() });
            }
            return Err(Error::io(op(), e));
        }
        if nstype != libc::CLONE_NEWNET {
            return Err(Error::NotNetns { path: path.into() });
        }
        Ok(Netns {
            file,
            path: path.into(),
        })
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Netns> {
        // thread-self, not self: a thread of this process may have been
        // moved, and the namespace that matters is the caller's own.
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The path this namespace was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (st_dev, st_ino) of the namespace: two handles refer to the same
    /// namespace exactly when their identities are equal.
    pub fn identity(&self) -> Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(&self.file)
            .map_err(|e| Error::io(format!("stat netns {}", self.path.display()), e.into()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Runs `f` on a new thread that has joined this namespace and returns
    /// its result. Use it for things that resolve against the caller's
    /// namespace at open time (files under /proc/sys/net, sockets, spawned
    /// processes); the calling thread itself never changes namespace.
    ///
    /// A panic inside `f` is propagated to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_fd();
        let path = &self.path;
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new()
                .name("berth-netns".into())
                .spawn_scoped(s, move || -> Result<T> {
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(format!("enter netns {}", path.display()), e.into())
                    })?;
                    Ok(f())
                })
                .map_err(|e| Error::io(format!("spawn thread for netns {}", path.display()), e))?;
            match thread.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
