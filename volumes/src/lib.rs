//! berth's volumes: what `berthd` serves to the Docker engine as a volume
//! driver. Library only: no protocol here.
//!
//! Layout under the root (default `/var/lib/berth/volumes`):
//!
//! ```text
//! <root>/                      flock'ed by the one process serving it
//!   <name>/volume.json         the record (kind, options, creation time,
//!                              mount counts per mount ID, boot)
//!   <name>/_data/              the mount point handed to the engine
//!   <name>/disk.img            size-limited volumes: the ext4 image
//! ```
//!
//! Crash safety: a volume is built in a `.tmp-*` directory and renamed
//! into place, so it exists whole or not at all; records are replaced by
//! write-fsync-rename. Mount counts are recorded with the boot they were
//! counted in: after a reboot (or when a backing mount has vanished)
//! nothing can still be using them, and they start from zero.

mod backing;
mod error;
pub mod kind;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;
use store::host::boot_id;

use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use kind::{Kind, Owner};

pub const DEFAULT_ROOT: &str = "/var/lib/berth/volumes";
const RECORD: &str = "volume.json";
const DATA: &str = "_data";
const IMAGE: &str = "disk.img";
const TMP_PREFIX: &str = ".tmp-";

/// What berthd's config says about volumes.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub root: PathBuf,
    /// Directories under which bind volumes may point (none: no bind
    /// volumes at all).
    pub bind_allow: Vec<PathBuf>,
}

/// A volume's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub name: String,
    pub kind: Kind,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The options as given to Create.
    pub opts: BTreeMap<String, String>,
    /// Active mounts per mount ID (the engine's), with how many times each.
    #[serde(default)]
    pub mounts: BTreeMap<String, u32>,
    /// The boot the mounts were counted in.
    #[serde(default)]
    pub boot_id: String,
}

impl Record {
    pub fn mount_count(&self) -> u32 {
        self.mounts.values().sum()
    }
}

/// What `Get` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created_at: String,
    pub kind: String,
    /// Bytes in use: the filesystem's for size-limited and tmpfs volumes
    /// while mounted (an unmounted size-limited volume's image's blocks on
    /// disk, an unmounted tmpfs's none), the files' otherwise.
    pub used_bytes: u64,
    pub size_limit: Option<u64>,
    pub mount_count: u32,
    pub mount_ids: usize,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$`: a single path component, never
/// `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= 255
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

/// RFC 3339 UTC time of `t` (no dependency for one format).
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The volumes under one root. Every operation is serialized (one mutex):
/// they are a few file operations and at most one mount each.
pub struct Volumes {
    cfg: Config,
    /// Canonical allowlist directories (those that exist).
    allow: Vec<PathBuf>,
    boot: String,
    ops: Mutex<()>,
    _root_lock: nix::fcntl::Flock<fs::File>,
}

impl Volumes {
    /// Opens (creating) the root, takes its lock (one server per root),
    /// removes half-built volumes and reconciles mount counts.
    pub fn open(cfg: Config) -> Result<Volumes> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.root)
            .map_err(Error::io("creating", &cfg.root))?;
        let lock = fs::File::open(&cfg.root).map_err(Error::io("opening", &cfg.root))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| Error::Io {
                op: "locking (is another berthd serving it?)",
                path: cfg.root.clone(),
                source: e.into(),
            })?;
        let allow = cfg
            .bind_allow
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        let v = Volumes {
            cfg,
            allow,
            boot: boot_id(),
            ops: Mutex::new(()),
            _root_lock: lock,
        };
        v.recover()?;
        Ok(v)
    }

    pub fn root(&self) -> &Path {
        &self.cfg.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.root.join(name)
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir(name).join(DATA)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, name: &str) -> Result<Record> {
        read_record(&self.cfg.root, name)
    }

    fn write(&self, dir: &Path, rec: &Record) -> Result<()> {
        let path = dir.join(RECORD);
        let text = serde_json::to_vec_pretty(rec).map_err(|e| Error::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        store::file::write_durable(&path, &text).map_err(Error::io("writing", &path))
    }

    /// Removes half-built volumes, and zeroes mount counts that cannot be
    /// true any more: counted in another boot, or of a volume whose
    /// backing mount is gone.
    fn recover(&self) -> Result<()> {
        let rd = fs::read_dir(&self.cfg.root).map_err(Error::io("listing", &self.cfg.root))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                let data = e.path().join(DATA);
                if !backing::is_mounted(&data) {
                    let _ = fs::remove_dir_all(e.path());
                }
                continue;
            }
            let Ok(mut rec) = self.read(&name) else {
                continue;
            };
            if rec.mounts.is_empty() {
                continue;
            }
            let backed = !matches!(rec.kind, Kind::Managed { .. });
            let stale = rec.boot_id != self.boot
                || (backed && !backing::is_mounted(&self.data_path(&name)));
            if stale {
                if backed && backing::is_mounted(&self.data_path(&name)) {
                    let _ = backing::unmount(&self.data_path(&name));
                }
                rec.mounts.clear();
                self.write(&self.dir(&name), &rec)?;
            }
        }
        Ok(())
    }

    /// A bind device must be an existing directory inside the allowlist,
    /// after resolving every symlink.
    fn check_bind(&self, device: &Path) -> Result<PathBuf> {
        let refuse = |why: &str| Error::BindRefused {
            path: device.to_path_buf(),
            why: why.to_string(),
        };
        if self.allow.is_empty() {
            return Err(refuse(
                "bind volumes are not allowed: berthd's config lists no bindAllow directories",
            ));
        }
        let real = device
            .canonicalize()
            .map_err(|e| refuse(&format!("cannot be resolved: {e}")))?;
        if !real.is_dir() {
            return Err(refuse("is not a directory"));
        }
        if !self.allow.iter().any(|a| real.starts_with(a)) {
            return Err(refuse(&format!(
                "resolves to {}, outside the allowed directories {:?}",
                real.display(),
                self.allow
            )));
        }
        Ok(real)
    }

    /// Creates a volume. Creating an existing volume with the same options
    /// succeeds (the engine may retry); with other options it fails.
    pub fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<()> {
        validate_name(name)?;
        let mut kind = kind::parse(opts)?;
        let _g = self.guard();
        match self.read(name) {
            Ok(existing) if existing.opts == *opts => return Ok(()),
            Ok(_) => return Err(Error::Exists(name.to_string())),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Kind::Bind { device, .. } = &mut kind {
            *device = self.check_bind(device)?;
        }
        let tmp = self
            .cfg
            .root
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let built = self.build(&tmp, name, kind, opts);
        if built.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            return built;
        }
        let dir = self.dir(name);
        fs::rename(&tmp, &dir).map_err(Error::io("renaming into place", &dir))?;
        fs::File::open(&self.cfg.root)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("syncing", &self.cfg.root))
    }

    fn build(
        &self,
        tmp: &Path,
        name: &str,
        kind: Kind,
        opts: &BTreeMap<String, String>,
    ) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(Error::io("creating", tmp))?;
        let data = tmp.join(DATA);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&data)
            .map_err(Error::io("creating", &data))?;
        match &kind {
            Kind::Managed { owner } => {
                backing::apply_owner(&data, owner).map_err(Error::io("setting owner of", &data))?
            }
            Kind::Sized { bytes, .. } => {
                let image = tmp.join(IMAGE);
                backing::make_image(&image, *bytes)
                    .map_err(Error::io("making the image", &image))?;
            }
            Kind::Bind { .. } | Kind::Tmpfs { .. } => {}
        }
        let rec = Record {
            name: name.to_string(),
            kind,
            created_at: rfc3339(SystemTime::now()),
            opts: opts.clone(),
            mounts: BTreeMap::new(),
            boot_id: self.boot.clone(),
        };
        self.write(tmp, &rec)
    }

    /// Removes a volume that nothing mounts: a managed or size-limited
    /// volume's data goes with it; a bind volume's host directory stays.
    pub fn remove(&self, name: &str) -> Result<()> {
        let _g = self.guard();
        let rec = self.read(name)?;
        if rec.mount_count() > 0 {
            return Err(Error::InUse {
                name: name.to_string(),
                mounts: rec.mount_count(),
                ids: rec.mounts.len(),
            });
        }
        let data = self.data_path(name);
        // Never delete through a mount (a bind volume's host directory).
        if backing::is_mounted(&data) {
            backing::unmount(&data).map_err(Error::io("unmounting", &data))?;
            if backing::is_mounted(&data) {
                return Err(Error::Kernel {
                    name: name.to_string(),
                    what: "remove".into(),
                    why: "still mounted".into(),
                });
            }
        }
        // Renamed away first, so a crash leaves a .tmp-* that is cleaned up
        // at the next start, never half a volume.
        let dir = self.dir(name);
        let doomed = self
            .cfg
            .root
            .join(format!("{TMP_PREFIX}rm-{name}-{}", std::process::id()));
        fs::rename(&dir, &doomed).map_err(Error::io("removing", &dir))?;
        fs::remove_dir_all(&doomed).map_err(Error::io("deleting", &doomed))
    }

    /// Mounts the volume for mount `id`: the backing mount is made by the
    /// first mount of all IDs. Returns the mount point.
    pub fn mount(&self, name: &str, id: &str) -> Result<PathBuf> {
        let _g = self.guard();
        let mut rec = self.read(name)?;
        let data = self.data_path(name);
        let first = rec.mount_count() == 0;
        if first {
            self.attach(&rec, &data)?;
        }
        *rec.mounts.entry(id.to_string()).or_insert(0) += 1;
        rec.boot_id = self.boot.clone();
        if let Err(e) = self.write(&self.dir(name), &rec) {
            if first {
                let _ = self.detach(&rec, &data);
            }
            return Err(e);
        }
        Ok(data)
    }

    /// Gives back one mount of `id`; the last mount of all IDs removes the
    /// backing mount.
    pub fn unmount(&self, name: &str, id: &str) -> Result<()> {
        let _g = self.guard();
        let mut rec = self.read(name)?;
        let Some(n) = rec.mounts.get_mut(id) else {
            return Err(Error::UnknownMountId {
                name: name.to_string(),
                id: id.to_string(),
            });
        };
        *n -= 1;
        if *n == 0 {
            rec.mounts.remove(id);
        }
        if rec.mount_count() == 0 {
            self.detach(&rec, &self.data_path(name))?;
        }
        self.write(&self.dir(name), &rec)
    }

    /// Forgets every mount of the volume and removes its backing mount:
    /// for a caller that knows no container holds it any more (the engine
    /// lost track of them, e.g. containers killed by a crash of dockerd get
    /// no Unmount). Returns how many mounts were forgotten.
    pub fn clear_mounts(&self, name: &str) -> Result<u32> {
        let _g = self.guard();
        let mut rec = self.read(name)?;
        let n = rec.mount_count();
        if n == 0 {
            return Ok(0);
        }
        self.detach(&rec, &self.data_path(name))?;
        rec.mounts.clear();
        self.write(&self.dir(name), &rec)?;
        Ok(n)
    }

    fn attach(&self, rec: &Record, data: &Path) -> Result<()> {
        let kernel = |what: &str| {
            let name = rec.name.clone();
            let what = what.to_string();
            move |e: std::io::Error| Error::Kernel {
                name,
                what,
                why: e.to_string(),
            }
        };
        match &rec.kind {
            Kind::Managed { .. } => Ok(()),
            Kind::Bind { device, ro } => {
                // Checked again: the allowlist or the directory may have
                // changed since Create.
                let real = self.check_bind(device)?;
                backing::bind(&real, data, *ro).map_err(kernel("bind mount"))
            }
            Kind::Tmpfs { size, owner } => {
                backing::tmpfs(data, *size, owner).map_err(kernel("tmpfs mount"))
            }
            Kind::Sized { owner, .. } => {
                let image = self.dir(&rec.name).join(IMAGE);
                backing::mount_image(&image, data).map_err(kernel("loop mount of disk.img"))?;
                if let Err(e) = backing::apply_owner(data, owner) {
                    let _ = backing::unmount(data);
                    return Err(kernel("setting owner")(e));
                }
                Ok(())
            }
        }
    }

    fn detach(&self, rec: &Record, data: &Path) -> Result<()> {
        if matches!(rec.kind, Kind::Managed { .. }) || !backing::is_mounted(data) {
            return Ok(());
        }
        backing::unmount(data).map_err(|e| Error::Kernel {
            name: rec.name.clone(),
            what: "unmount".into(),
            why: e.to_string(),
        })
    }

    /// The mount point (whether or not mounted: the engine asks before
    /// mounting).
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        self.read(name)?;
        Ok(self.data_path(name))
    }

    pub fn record(&self, name: &str) -> Result<Record> {
        self.read(name)
    }

    pub fn get(&self, name: &str) -> Result<Info> {
        let rec = self.read(name)?;
        Ok(info(&self.cfg.root, &rec, &self.boot))
    }

    /// Every volume's name, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        names(&self.cfg.root)
    }
}

/// Every volume's name under `root`, sorted.
fn names(root: &Path) -> Result<Vec<String>> {
    let rd = fs::read_dir(root).map_err(Error::io("listing", root))?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| validate_name(n).is_ok() && root.join(n).join(RECORD).is_file())
        .collect();
    names.sort();
    Ok(names)
}

fn read_record(root: &Path, name: &str) -> Result<Record> {
    validate_name(name)?;
    let path = root.join(name).join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(name.to_string()))
        }
        Err(e) => return Err(Error::io("reading", &path)(e)),
    };
    serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path,
        why: e.to_string(),
    })
}

/// What `Get` reports of `rec`. Mount counts of another boot count as none
/// (what [`Volumes::open`] makes of them).
fn info(root: &Path, rec: &Record, boot: &str) -> Info {
    let data = root.join(&rec.name).join(DATA);
    let mount_count = if rec.boot_id == boot {
        rec.mount_count()
    } else {
        0
    };
    // Its own filesystem's figures only while that is mounted there
    // (otherwise statvfs would answer for the root's).
    let backed = matches!(rec.kind, Kind::Sized { .. } | Kind::Tmpfs { .. });
    let mounted = backed && mount_count > 0 && backing::is_mounted(&data);
    let (used, limit) = match &rec.kind {
        Kind::Sized { bytes, .. } => (
            match mounted.then(|| fs_used(&data)).flatten() {
                Some(used) => used,
                None => image_bytes(&root.join(&rec.name).join(IMAGE)),
            },
            Some(*bytes),
        ),
        Kind::Tmpfs { size, .. } => (
            mounted.then(|| fs_used(&data)).flatten().unwrap_or(0),
            *size,
        ),
        _ => (tree_bytes(&data), None),
    };
    Info {
        name: rec.name.clone(),
        mountpoint: data,
        created_at: rec.created_at.clone(),
        kind: rec.kind.name().to_string(),
        used_bytes: used,
        size_limit: limit,
        mount_count,
        mount_ids: if mount_count > 0 { rec.mounts.len() } else { 0 },
    }
}

/// The volumes under `root` as their records say, read without the
/// root's lock, so while berthd serves it (`berth volumes`): each volume's
/// [`Info`], or why its record cannot be read. None at all when there is
/// no root.
pub fn survey(root: &Path) -> Result<Vec<(String, Result<Info>)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let boot = boot_id();
    Ok(names(root)?
        .into_iter()
        .map(|name| {
            let i = read_record(root, &name).map(|rec| info(root, &rec, &boot));
            (name, i)
        })
        .collect())
}

/// What an unmounted size-limited volume holds: its image's allocated
/// blocks on the disk under it (a sparse file: the data and the
/// filesystem's own metadata), since reading its filesystem would mean
/// mounting it.
fn image_bytes(image: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(image).map_or(0, |m| m.blocks() * 512)
}

/// Bytes used on the filesystem mounted at `data`.
fn fs_used(data: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(data).ok()?;
    Some((st.blocks() - st.blocks_free()) * st.fragment_size())
}

/// Bytes of the regular files under `dir` (not following symlinks or
/// crossing into other filesystems), at most 100000 entries.
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > 100_000 {
                return total;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != top.dev() {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "data", "web_1.cache-2", &"x".repeat(255)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-a",
            "_a",
            ".hidden",
            "a b",
            "a:b",
            &"x".repeat(256),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_survey_reads_records_and_names_the_unreadable() {
        let root = std::env::temp_dir().join(format!("berth-vol-survey-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        assert!(survey(&root).unwrap().is_empty(), "no root, no volumes");
        let rec = Record {
            name: "good".into(),
            kind: Kind::Managed {
                owner: Owner::default(),
            },
            created_at: "2026-12-03T00:00:00Z".into(),
            opts: BTreeMap::new(),
            mounts: BTreeMap::from([("m1".to_string(), 2)]),
            boot_id: "another-boot".into(),
        };
        fs::create_dir_all(root.join("good").join(DATA)).unwrap();
        fs::write(root.join("good/_data/f"), b"12345").unwrap();
        fs::write(
            root.join("good").join(RECORD),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        fs::create_dir_all(root.join("bad")).unwrap();
        fs::write(root.join("bad").join(RECORD), b"{not json").unwrap();
        let all = survey(&root).unwrap();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(all.len(), 2);
        let (name, bad) = &all[0];
        assert_eq!(name, "bad");
        assert!(
            matches!(bad, Err(Error::Corrupt { path, .. }) if path.ends_with("bad/volume.json")),
            "{bad:?}"
        );
        let good = all[1].1.as_ref().unwrap();
        assert_eq!(good.used_bytes, 5);
        assert_eq!(good.kind, "managed");
        // Counted in another boot: nothing can still be using it.
        assert_eq!(good.mount_count, 0);
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_300_000);
        assert_eq!(rfc3339(t), "2026-11-21T22:26:40Z");
    }
}
