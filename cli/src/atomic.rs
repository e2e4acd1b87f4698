//! Crash-safe file replacement, as a node's runtime needs it.
//!
//! A file is written to a temporary name in the target directory (so the
//! same filesystem), given its mode, fsynced, and renamed over the final
//! name. rename(2) swaps the directory entry in one step: a reader (or a
//! runtime exec'ing a plugin) sees the whole old file or the whole new one,
//! never a torn mix, and a process already running the old binary keeps its
//! inode. The caller fsyncs the directory once it has renamed everything.
//!
//! Temporary names start with a dot and carry [`TMP_MARK`], so neither a CNI
//! runtime (it execs plugins by type name and loads only `*.conf`,
//! `*.conflist`, `*.json`) nor a second installer mistakes them for real
//! files. The writer holds an exclusive flock on its temporary file; one
//! left by a killed installer has no holder, and [`remove_stale_temps`]
//! deletes it on the next run.
//!
//! The lock is held on a read-only handle, and the handle written through
//! is closed before the rename: the kernel refuses to exec a file that a
//! process has open for writing (ETXTBSY), and a runtime exec'ing the
//! plugin just swapped in must not meet that.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// Part of every temporary file name this module makes.
pub const TMP_MARK: &str = ".berth-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name for `name`: `.NAME.berth-tmp.PID.N`.
fn temp_name(name: &OsStr) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(format!("{TMP_MARK}{}.{n}", std::process::id()));
    PathBuf::from(s)
}

/// A temporary file that is unlinked on drop unless it was renamed into
/// place, so no error path leaves one behind. It is locked (on a handle
/// of its own, read-only) for as long as it lives.
struct TempFile {
    path: PathBuf,
    _lock: Flock<File>,
    persisted: bool,
}

impl TempFile {
    /// The temporary file and the handle to write it through, which the
    /// caller closes before renaming (see the module doc).
    fn create(dir: &Path, name: &OsStr, mode: u32) -> io::Result<(TempFile, File)> {
        let path = dir.join(temp_name(name));
        let writer = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        let locked = File::open(&path).and_then(|f| {
            Flock::lock(f, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, errno)| io::Error::from(errno))
        });
        match locked {
            Ok(lock) => Ok((
                TempFile {
                    path,
                    _lock: lock,
                    persisted: false,
                },
                writer,
            )),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Replaces (or creates) `dir/name` with the bytes of `src` and the
/// permission bits `mode`, atomically: temporary file, fchmod (the umask
/// does not apply), fsync, rename. Does not fsync `dir`: see [`sync_dir`].
pub fn replace(dir: &Path, name: &OsStr, src: &mut impl Read, mode: u32) -> io::Result<()> {
    let (mut tmp, mut writer) = TempFile::create(dir, name, mode)?;
    io::copy(src, &mut writer)?;
    writer.set_permissions(fs::Permissions::from_mode(mode))?;
    writer.sync_all()?;
    // No handle open for writing may reach the new name: see the module doc.
    drop(writer);
    fs::rename(&tmp.path, dir.join(name))?;
    tmp.persisted = true;
    Ok(())
}

/// Makes renames and creations in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True if `b` is a file with exactly the bytes of `a` (false if `b` does
/// not exist).
pub fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let mut fb = match File::open(b) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut fa = File::open(a)?;
    let (ma, mb) = (fa.metadata()?, fb.metadata()?);
    if !mb.is_file() || ma.len() != mb.len() {
        return Ok(false);
    }
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How old an unlocked temporary file must be before [`remove_stale_temps`]
/// takes it for abandoned. A writer locks its file right after creating it;
/// the age closes that gap of a few microseconds.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Deletes temporary files in `dir` that an installer killed mid-write left
/// behind: ours by name, not locked by a live writer, and last modified
/// [`STALE_AFTER`] ago or more. Returns the paths removed. A missing `dir`
/// has none.
pub fn remove_stale_temps(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !bytes.starts_with(b".") || !contains(bytes, TMP_MARK.as_bytes()) {
            continue;
        }
        if !entry.file_type()?.is_file() {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // Holding the lock while unlinking: a live writer holds it from
        // (just after) creation to rename, so this never removes a file
        // being written.
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            let age = lock.metadata()?.modified()?.elapsed().unwrap_or_default();
            if age < STALE_AFTER {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_and_marked() {
        let a = temp_name(OsStr::new("loopback"));
        let b = temp_name(OsStr::new("loopback"));
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert!(s.starts_with(".loopback.berth-tmp."), "{s}");
        assert!(!s.ends_with(".conflist") && !s.ends_with(".conf") && !s.ends_with(".json"));
    }

    /// A runtime exec'ing a plugin while `replace` swaps it in never meets
    /// ETXTBSY ("text file busy"): no handle open for writing is left on
    /// the new file when it takes the plugin's name. (containerd 1.6's
    /// retry on that error re-runs a used command and fails the pod.) The
    /// runtime is a shell loop of its own: a child forked by this process
    /// would hold our handles until its exec, which no runtime does.
    #[test]
    fn a_plugin_swapped_in_is_never_busy_for_exec() {
        let dir = std::env::temp_dir().join(format!("berth-atomic-exec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let name = OsStr::new("plugin");
        let versions = [
            &b"#!/bin/sh\nexit 0\n"[..],
            &b"#!/bin/sh\n# v2\nexit 0\n"[..],
        ];
        replace(&dir, name, &mut { versions[0] }, 0o755).unwrap();
        // Exit status 126: the shell could not exec the plugin.
        let runtime = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "ran=0 busy=0; while [ ! -e stop ]; do ./plugin 2>/dev/null; \
                 if [ $? = 126 ]; then busy=$((busy+1)); else ran=$((ran+1)); fi; done; \
                 echo $ran $busy",
            )
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for i in 0..600 {
            replace(&dir, name, &mut { versions[i % 2] }, 0o755).unwrap();
        }
        fs::write(dir.join("stop"), "").unwrap();
        let out = runtime.wait_with_output().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let counts: Vec<u64> = said
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(counts[0] > 0, "{said}");
        assert_eq!(
            counts[1], 0,
            "execs that found the plugin busy (ran, busy): {said}"
        );
    }

    #[test]
    fn contains_finds_the_mark() {
        assert!(contains(b".x.berth-tmp.1.0", TMP_MARK.as_bytes()));
        assert!(!contains(b".x", TMP_MARK.as_bytes()));
    }
}
