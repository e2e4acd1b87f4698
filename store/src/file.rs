//! Small state files (attachment records, markers) that plugins keep next
//! to the kernel objects they describe.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` through a temporary name in the same directory
/// and a rename, so readers see the old content or the new, never a torn
/// file. No fsync: these files describe kernel state that a power loss
/// takes away anyway. Errors name the file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_replacing(path, data, false)
}

/// Removes the temporary files [`write_atomic`] and [`write_durable`]
/// leave beside `path` when their process is killed before the rename
/// (`.<name>.<pid>`). Only for a caller that holds the lock serialising
/// every writer of `path`: a live writer's file would go too.
pub fn remove_stale_temps(path: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match fs::remove_file(e.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// [`write_atomic`] that also survives a power loss: the new content is
/// fsynced before the rename and the directory after it. For records of
/// durable state (volumes), not of kernel state.
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    write_replacing(path, data, true)
}

fn write_replacing(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let named = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    let mut f = fs::File::create(&tmp).map_err(|e| named("creating", &tmp, e))?;
    f.write_all(data).map_err(|e| named("writing", &tmp, e))?;
    if durable {
        f.sync_all().map_err(|e| named("syncing", &tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| named("renaming", &tmp, e))?;
    if durable {
        if let Some(dir) = path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| named("syncing", dir, e))?;
        }
    }
    Ok(())
}

/// An exclusive flock on directory `dir` (created if missing), held until
/// the returned value is dropped. Locking a directory leaves no lock file
/// behind.
pub fn lock_dir(dir: &Path) -> io::Result<nix::fcntl::Flock<fs::File>> {
    let named = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", dir.display()))
    };
    fs::create_dir_all(dir).map_err(|e| named("creating", e))?;
    let f = fs::File::open(dir).map_err(|e| named("opening", e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| named("locking", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_one_file_are_removed() {
        let dir = std::env::temp_dir().join(format!("berth-store-stale-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in [
            "rec.json",
            ".rec.json.123",
            ".rec.json.9",
            ".other.json.1",
            ".rec.jsonx",
        ] {
            fs::write(dir.join(name), b"").unwrap();
        }
        remove_stale_temps(&dir.join("rec.json")).unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other.json.1", ".rec.jsonx", "rec.json"]);
        remove_stale_temps(&dir.join("gone/rec.json")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("berth-store-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rec.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let e = write_atomic(&dir.join("missing/rec.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
