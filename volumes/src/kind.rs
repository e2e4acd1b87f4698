//! What `--opt` makes of a volume: its kind and that kind's settings.
//!
//! The keys of Docker's `local` driver keep their meaning where they
//! overlap (`type`, `device`, `o`, `size`); berth adds `uid`, `gid`,
//! `mode` and `ro`. Anything else is refused, naming the option.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Ownership and permissions of a volume's root directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    /// A directory under berth's root.
    Managed { owner: Owner },
    /// An ext4 filesystem in a sparse image file of `bytes`, loop-mounted
    /// while in use: writes past the size fail with ENOSPC on any backing
    /// filesystem.
    Sized { bytes: u64, owner: Owner },
    /// An existing host directory (inside the configured allowlist),
    /// bind-mounted while in use.
    Bind { device: PathBuf, ro: bool },
    /// A tmpfs mounted while in use (its content goes with the last
    /// unmount, as with the local driver).
    Tmpfs { size: Option<u64>, owner: Owner },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Managed { .. } => "managed",
            Kind::Sized { .. } => "size-limited",
            Kind::Bind { .. } => "bind",
            Kind::Tmpfs { .. } => "tmpfs",
        }
    }
}

/// `N`, `Nk`, `NM`, `NG`, `NT` (binary units, any case, optional `b`/`iB`),
/// as Docker's `RAMInBytes`.
pub fn parse_size(opt: &str, v: &str) -> Result<u64> {
    let t = v.trim();
    let lower = t.to_ascii_lowercase();
    let digits: String = lower.chars().take_while(|c| c.is_ascii_digit()).collect();
    let unit = lower[digits.len()..]
        .trim_end_matches("ib")
        .trim_end_matches('b');
    let n: u64 = digits
        .parse()
        .map_err(|_| Error::option(opt, v, "not a size (e.g. 512M, 1G)"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(Error::option(opt, v, "not a size (e.g. 512M, 1G)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| Error::option(opt, v, "too large"))?;
    if bytes == 0 {
        return Err(Error::option(opt, v, "must be more than 0"));
    }
    Ok(bytes)
}

fn parse_id(opt: &str, v: &str) -> Result<u32> {
    v.parse()
        .map_err(|_| Error::option(opt, v, "not a numeric id"))
}

fn parse_mode(opt: &str, v: &str) -> Result<u32> {
    match u32::from_str_radix(v, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(Error::option(opt, v, "not an octal mode (e.g. 0755)")),
    }
}

/// The smallest size-limited volume: ext4 needs room for its metadata.
pub const MIN_SIZED_BYTES: u64 = 4 << 20;

/// Parses a Create's options.
pub fn parse(opts: &BTreeMap<String, String>) -> Result<Kind> {
    let mut owner = Owner::default();
    let mut size = None;
    let mut ro = false;
    let mut kind_type: Option<String> = None;
    let mut device: Option<String> = None;
    let mut o_words: Vec<(String, String)> = Vec::new();
    for (k, v) in opts {
        match k.as_str() {
            "type" => kind_type = Some(v.to_ascii_lowercase()),
            "device" => device = Some(v.clone()),
            "o" => {
                for w in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let (key, val) = w.split_once('=').unwrap_or((w, ""));
                    o_words.push((key.to_string(), val.to_string()));
                }
            }
            "size" => size = Some(parse_size("size", v)?),
            "uid" => owner.uid = Some(parse_id("uid", v)?),
            "gid" => owner.gid = Some(parse_id("gid", v)?),
            "mode" => owner.mode = Some(parse_mode("mode", v)?),
            "ro" => ro = matches!(v.to_ascii_lowercase().as_str(), "" | "true" | "1" | "yes"),
            other => {
                return Err(Error::option(
                    other,
                    v,
                    "unknown option (known: type, device, o, size, uid, gid, mode, ro)",
                ))
            }
        }
    }
    // `o` words: bind flags for bind volumes, tmpfs options for tmpfs.
    let mut bind_flag = false;
    for (key, val) in &o_words {
        match key.as_str() {
            "bind" | "rbind" => bind_flag = true,
            "ro" => ro = true,
            "rw" => ro = false,
            "size" => size = Some(parse_size("o=size", val)?),
            "uid" => owner.uid = Some(parse_id("o=uid", val)?),
            "gid" => owner.gid = Some(parse_id("o=gid", val)?),
            "mode" => owner.mode = Some(parse_mode("o=mode", val)?),
            other => {
                return Err(Error::option(
                    "o",
                    other,
                    "unsupported mount option (bind, rbind, ro, rw, size, uid, gid, mode)",
                ))
            }
        }
    }
    let t = match kind_type.as_deref() {
        None | Some("") if bind_flag => "bind",
        None | Some("") => "",
        Some("none") if bind_flag => "bind",
        Some(t) => t,
    };
    match t {
        "" => {
            if device.is_some() {
                return Err(Error::option(
                    "device",
                    device.as_deref().unwrap_or(""),
                    "needs type (bind or tmpfs)",
                ));
            }
            if ro {
                return Err(Error::option("ro", "true", "only for bind volumes"));
            }
            match size {
                Some(bytes) if bytes < MIN_SIZED_BYTES => Err(Error::option(
                    "size",
                    &bytes.to_string(),
                    "at least 4M (ext4 needs room for its metadata)",
                )),
                Some(bytes) => Ok(Kind::Sized { bytes, owner }),
                None => Ok(Kind::Managed { owner }),
            }
        }
        "bind" => {
            let device =
                device.ok_or_else(|| Error::option("device", "", "required for type=bind"))?;
            if size.is_some() || owner != Owner::default() {
                return Err(Error::option(
                    "type",
                    "bind",
                    "takes no size, uid, gid or mode (the host directory keeps its own)",
                ));
            }
            let path = PathBuf::from(&device);
            if !path.is_absolute() {
                return Err(Error::option("device", &device, "must be an absolute path"));
            }
            Ok(Kind::Bind { device: path, ro })
        }
        "tmpfs" => {
            if device.as_deref().is_some_and(|d| d != "tmpfs") {
                return Err(Error::option(
                    "device",
                    device.as_deref().unwrap_or(""),
                    "must be tmpfs (or unset) for type=tmpfs",
                ));
            }
            if ro {
                return Err(Error::option("ro", "true", "only for bind volumes"));
            }
            Ok(Kind::Tmpfs { size, owner })
        }
        other => Err(Error::option(
            "type",
            other,
            "unsupported (managed when unset, bind, tmpfs)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kinds() {
        assert_eq!(
            parse(&opts(&[])).unwrap(),
            Kind::Managed {
                owner: Owner::default()
            }
        );
        assert_eq!(
            parse(&opts(&[("size", "1G"), ("uid", "1000"), ("mode", "0750")])).unwrap(),
            Kind::Sized {
                bytes: 1 << 30,
                owner: Owner {
                    uid: Some(1000),
                    gid: None,
                    mode: Some(0o750)
                }
            }
        );
        assert_eq!(
            parse(&opts(&[
                ("type", "bind"),
                ("device", "/srv/data"),
                ("ro", "true")
            ]))
            .unwrap(),
            Kind::Bind {
                device: "/srv/data".into(),
                ro: true
            }
        );
        // the local driver's spelling
        assert_eq!(
            parse(&opts(&[
                ("type", "none"),
                ("o", "bind,ro"),
                ("device", "/srv/data")
            ]))
            .unwrap(),
            Kind::Bind {
                device: "/srv/data".into(),
                ro: true
            }
        );
        assert_eq!(
            parse(&opts(&[
                ("type", "tmpfs"),
                ("device", "tmpfs"),
                ("o", "size=100m,uid=1000")
            ]))
            .unwrap(),
            Kind::Tmpfs {
                size: Some(100 << 20),
                owner: Owner {
                    uid: Some(1000),
                    gid: None,
                    mode: None
                }
            }
        );
    }

    #[test]
    fn bad_options_name_the_option() {
        for (o, word) in [
            (opts(&[("colour", "red")]), "colour"),
            (opts(&[("size", "12Q")]), "size"),
            (opts(&[("size", "1k")]), "size"),
            (opts(&[("size", "0")]), "size"),
            (opts(&[("type", "nfs")]), "type"),
            (opts(&[("type", "bind")]), "device"),
            (
                opts(&[("type", "bind"), ("device", "relative/dir")]),
                "device",
            ),
            (opts(&[("type", "tmpfs"), ("o", "noexec")]), "noexec"),
            (opts(&[("mode", "999")]), "mode"),
            (opts(&[("uid", "root")]), "uid"),
        ] {
            let e = parse(&o).unwrap_err().to_string();
            assert!(e.contains(word), "{o:?}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("size", "512").unwrap(), 512);
        assert_eq!(parse_size("size", "10k").unwrap(), 10 << 10);
        assert_eq!(parse_size("size", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("size", "2gb").unwrap(), 2 << 30);
        assert!(parse_size("size", "").is_err());
        assert!(parse_size("size", "99999999999T").is_err());
    }
}
