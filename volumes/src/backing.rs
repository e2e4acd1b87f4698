//! The kernel side of a volume: the mount that backs it while it is in use
//! (bind, tmpfs, loop-mounted ext4) and the image file of a size-limited
//! volume. Everything through system calls (mount(2), umount2(2), loop
//! ioctls), except formatting the image, which runs mkfs.ext4.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::kind::Owner;

/// Is `dir` a mount point? (Its device differs from its parent's, or it is
/// listed in /proc/self/mountinfo — a bind mount of a directory of the same
/// filesystem keeps the device.)
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

pub fn bind(source: &Path, target: &Path, ro: bool) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if ro {
        // A bind mount takes the read-only flag only on a remount.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(e.into());
        }
    }
    Ok(())
}

fn owner_data(size: Option<u64>, owner: &Owner) -> String {
    let mut data = Vec::new();
    if let Some(s) = size {
        data.push(format!("size={s}"));
    }
    data.push(format!("mode={:o}", owner.mode.unwrap_or(0o755)));
    if let Some(u) = owner.uid {
        data.push(format!("uid={u}"));
    }
    if let Some(g) = owner.gid {
        data.push(format!("gid={g}"));
    }
    data.join(",")
}

pub fn tmpfs(target: &Path, size: Option<u64>, owner: &Owner) -> io::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    Ok(mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags,
        Some(owner_data(size, owner).as_str()),
    )?)
}

pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Busy (a process still has a file open there): detach it, the
        // kernel finishes when the last user goes.
        Err(nix::errno::Errno::EBUSY) => Ok(umount2(target, MntFlags::MNT_DETACH)?),
        Err(nix::errno::Errno::EINVAL) if !is_mounted(target) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates a sparse image of `bytes` and formats it ext4 (no reserved
/// blocks: the whole size is the volume's). The file is the volume's only
/// storage; it grows as data is written, up to `bytes`.
pub fn make_image(image: &Path, bytes: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)?;
    f.set_len(bytes)?;
    f.sync_all()?;
    let out = Command::new(mkfs())
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(image)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// mkfs.ext4, also where $PATH of a minimal environment misses it.
fn mkfs() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "mkfs.ext4".into())
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
/// Detach the loop device by itself when its last user (the mount) goes.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, LOOP_CONFIGURE since 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `image` to a free loop device (autoclear) and returns it open.
fn attach_loop(image: &File) -> io::Result<File> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device between the two calls;
    // then ask again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/loop{n}"))?;
        // SAFETY: all-zero is a valid loop_config; the fields set below are
        // plain integers.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = image.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config we own.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok(dev);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::other("no free loop device after 16 tries"))
}

/// The loop device already backed by `image`, open, if there is one.
///
/// An unmount on the host does not always end the filesystem: a
/// container's mount namespace that is not gone yet still holds a bind of
/// it, and with it the loop device. A second loop device on the same image
/// would be a second ext4 mounted on the same blocks, each overwriting
/// what the other wrote (the reader sees checksum errors, EBADMSG).
/// Mounting the same device again gives the kernel's existing superblock
/// instead: one filesystem, however many mounts.
fn loop_of(image: &File) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let meta = image.metadata().ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") || !entry.path().join("loop").exists() {
            continue;
        }
        let Ok(dev) = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/{name}"))
        else {
            continue;
        };
        // SAFETY: all-zero is a valid loop_info64 for the kernel to fill.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        // SAFETY: LOOP_GET_STATUS64 writes a struct loop_info64 we own.
        let r = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_GET_STATUS64,
                &mut info as *mut LoopInfo64,
            )
        };
        if r == 0 && info.inode == meta.ino() && info.device == meta.dev() {
            return Some(dev);
        }
    }
    None
}

/// Loop-mounts the ext4 `image` on `target`. The loop device detaches
/// itself at unmount (autoclear), so unmount is all a teardown needs.
pub fn mount_image(image: &Path, target: &Path) -> io::Result<()> {
    let img = OpenOptions::new().read(true).write(true).open(image)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mount_dev = |dev: &File| -> io::Result<()> {
        let real = std::fs::read_link(format!("/proc/self/fd/{}", dev.as_raw_fd()))?;
        Ok(mount(
            Some(real.as_path()),
            target,
            Some("ext4"),
            flags,
            None::<&str>,
        )?)
    };
    if let Some(dev) = loop_of(&img) {
        // The device may be detaching itself as its last mount goes
        // (autoclear); then a new one is made below.
        if mount_dev(&dev).is_ok() {
            return Ok(());
        }
    }
    let dev = attach_loop(&img)?;
    mount_dev(&dev)?;
    // Our fds go now; the mount keeps the loop device, autoclear frees it
    // with the unmount.
    drop(dev);
    Ok(())
}

/// Applies `owner` to a directory (the volume's root).
pub fn apply_owner(dir: &Path, owner: &Owner) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if owner.uid.is_some() || owner.gid.is_some() {
        std::os::unix::fs::chown(dir, owner.uid, owner.gid)?;
    }
    if let Some(m) = owner.mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_match_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn tmpfs_options() {
        let o = Owner {
            uid: Some(1000),
            gid: None,
            mode: Some(0o700),
        };
        assert_eq!(owner_data(Some(1024), &o), "size=1024,mode=700,uid=1000");
        assert_eq!(owner_data(None, &Owner::default()), "mode=755");
    }
}
