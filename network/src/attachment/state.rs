//! The runtime state of bridge attachments (berth-bridge's and
//! berth-overlay's) under /run/berth/bridge. /run is usually a
//! tmpfs that vanishes at reboot together with the veths and nftables rules
//! described here; where it is not, the rules marker carries the boot ID.
//!
//! ```text
//! /run/berth/bridge/                 flock'ed while records or rules change
//!   <network>/attachments.log        one JSON line per change:
//!                                    {"op":"add","hostVeth",
//!                                     "containerID","ifname","bridge"}
//!                                    or {"op":"del","hostVeth"}
//!   <network>/rules.json             what the network's nftables rules cover
//!                                    (and in which boot)
//!   <network>/attachments/<hostveth> records of berth before the log, read
//!                                    until their attachments go
//! ```
//! An attachment record is written before anything is created for it, so a
//! plugin killed at any point leaves a record that DEL or GC acts on. The
//! network's nftables rules are installed by the first ADD (one nft call)
//! and removed by the DEL or GC that removes the last record.
//!
//! A writer killed mid-line leaves part of a line: readers skip it and the
//! next writer cuts it off.
//!
//! Records are lines appended to one file rather than a file each: an ADD
//! then writes to a file that exists instead of creating one. Creating a
//! file costs an inode allocation, which on a disk-backed /run (ext4
//! without a journal skips every recently freed inode) grew with the files
//! deleted in the last minutes and made ADDs slower as containers came and
//! went. The log is rewritten without its dead lines once they outnumber
//! the live ones.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, Kind, Result};

pub const DEFAULT_RUN_DIR: &str = "/run/berth/bridge";
/// Locked (as a directory) around every change of records and rules.
const LOG: &str = "attachments.log";
/// Records of berth versions before the log: one file per attachment.
const LEGACY_DIR: &str = "attachments";
/// The log is compacted when its dead lines exceed the live ones by this.
const COMPACT_SLACK: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub bridge: String,
}

/// One line of the attachments log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Change {
    Add {
        #[serde(rename = "hostVeth")]
        host_veth: String,
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
        bridge: String,
    },
    Del {
        #[serde(rename = "hostVeth")]
        host_veth: String,
    },
    /// The MAC a port's spoof check lets through (macspoofchk), written
    /// once the check is in: what the reconciler puts the check back
    /// from. Versions without it skip the line.
    Mac {
        #[serde(rename = "hostVeth")]
        host_veth: String,
        mac: String,
    },
}

/// A live record: its log line (parsed only when the record is asked
/// for), or a legacy file's content (None if unreadable).
enum Entry {
    Logged(String),
    Legacy(Option<Record>),
}

impl Entry {
    fn record(self) -> Option<Record> {
        match self {
            Entry::Logged(line) => match serde_json::from_str(&line) {
                Ok(Change::Add {
                    container_id,
                    ifname,
                    bridge,
                    ..
                }) => Some(Record {
                    container_id,
                    ifname,
                    bridge,
                }),
                _ => None,
            },
            Entry::Legacy(rec) => rec,
        }
    }
}

/// A network's records as the log and the legacy files give them.
struct Records {
    live: BTreeMap<String, Entry>,
    /// The spoof-check MACs of live records: their `mac` lines.
    macs: BTreeMap<String, String>,
    /// Complete lines in the log.
    log_lines: usize,
}

/// Whether a log line adds or removes, and the host veth it names. The
/// lines this module writes are read without a JSON parser (serde writes
/// the tag, then the fields in order; interface names need no escaping),
/// so a DEL's replay of a log of 1000 containers costs well under a
/// millisecond; any other line goes through serde.
fn line_head(line: &str) -> Option<(bool, String)> {
    // A line of ours ends with its object; a torn one goes to serde and fails.
    let ours = |prefix: &str| {
        let rest = line.strip_prefix(prefix).filter(|_| line.ends_with('}'))?;
        rest.find('"').map(|end| rest[..end].to_string())
    };
    if let Some(host_veth) = ours(r#"{"op":"add","hostVeth":""#) {
        return Some((true, host_veth));
    }
    if let Some(host_veth) = ours(r#"{"op":"del","hostVeth":""#) {
        return Some((false, host_veth));
    }
    match serde_json::from_str::<Change>(line).ok()? {
        Change::Add { host_veth, .. } => Some((true, host_veth)),
        Change::Del { host_veth } => Some((false, host_veth)),
        Change::Mac { .. } => None,
    }
}

/// What the network's installed nftables rules cover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesMarker {
    pub bridge: String,
    pub subnets: Vec<IpNet>,
    /// The kernel boot the rules were installed in. nftables rules die with
    /// a reboot; the run dir does too when it is a tmpfs, but not on hosts
    /// where /run is a plain directory, so a marker from another boot must
    /// not vouch for rules.
    #[serde(default)]
    pub boot_id: String,
    /// Whether the rules isolate the network (markers written before the
    /// key existed had no isolation rules).
    #[serde(default)]
    pub isolation: bool,
    /// The links whose connections into the bridge are accepted.
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// No forwarding off the bridge (berthd's `--internal` networks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Written before the rules are applied, cleared once they are: a
    /// process killed in between leaves a marker the last DEL or GC acts
    /// on (removing what may have been installed), and that no ADD takes
    /// as a promise that the rules are there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

pub use store::host::boot_id;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{what} {}: {e}", path.display()))
}

pub struct State {
    root: PathBuf,
}

/// Held while records or rules change; released on drop (closing the fd).
pub struct Lock {
    _held: nix::fcntl::Flock<fs::File>,
}

impl State {
    pub fn new(root: impl Into<PathBuf>) -> State {
        State { root: root.into() }
    }

    /// The run dir, overridable with BERTH_RUN_DIR (tests use private ones).
    pub fn from_env() -> State {
        State::new(
            std::env::var_os("BERTH_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        )
    }

    /// One lock for all networks and all berth processes on the host: the
    /// nftables tables it guards are host-wide, whatever run dir a process
    /// uses. The sections it guards are a few file operations, plus nft
    /// calls on a network's first ADD and last DEL. Locking a directory
    /// leaves no lock file behind.
    pub fn lock(&self) -> Result<Lock> {
        fs::create_dir_all(&self.root).map_err(|e| io_err("creating", &self.root, e))?;
        store::host::lock()
            .map(|held| Lock { _held: held })
            .map_err(|e| Error::new(Kind::Io, e.to_string()))
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.root.join(network)
    }

    fn log_path(&self, network: &str) -> PathBuf {
        self.network_dir(network).join(LOG)
    }

    fn legacy_dir(&self, network: &str) -> PathBuf {
        self.network_dir(network).join(LEGACY_DIR)
    }

    /// Replays the log over the legacy files. A last line without its
    /// newline (a writer killed mid-line) is ignored, as are lines that
    /// don't parse.
    fn load(&self, network: &str) -> Records {
        let mut live = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.legacy_dir(network)) {
            for name in rd
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
            {
                if name.starts_with('.') {
                    continue;
                }
                let rec = fs::read(self.legacy_dir(network).join(&name))
                    .ok()
                    .and_then(|d| serde_json::from_slice(&d).ok());
                live.insert(name, Entry::Legacy(rec));
            }
        }
        let text = fs::read_to_string(self.log_path(network)).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut log_lines = 0;
        let mut macs = BTreeMap::new();
        for line in complete.split('\n').filter(|l| !l.is_empty()) {
            log_lines += 1;
            // MAC lines first: parsed once here, not again by line_head.
            if line.starts_with(r#"{"op":"mac""#) {
                if let Ok(Change::Mac { host_veth, mac }) = serde_json::from_str(line) {
                    if live.contains_key(&host_veth) {
                        macs.insert(host_veth, mac);
                    }
                }
                continue;
            }
            match line_head(line) {
                Some((true, host_veth)) => {
                    // A new attachment: its check, if any, is logged anew.
                    macs.remove(&host_veth);
                    live.insert(host_veth, Entry::Logged(line.to_string()));
                }
                Some((false, host_veth)) => {
                    macs.remove(&host_veth);
                    live.remove(&host_veth);
                }
                None => {}
            }
        }
        Records {
            live,
            macs,
            log_lines,
        }
    }

    /// Appends one change to the log (callers hold the lock, so there is
    /// one writer at a time).
    fn append(&self, network: &str, change: &Change) -> Result<()> {
        let dir = self.network_dir(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        let path = self.log_path(network);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        let mut line = serde_json::to_vec(change)
            .map_err(|e| Error::new(Kind::Io, format!("encoding a record: {e}")))?;
        line.push(b'\n');
        // A writer killed mid-line left part of a line: cut it off, or
        // this change would be glued to it.
        let len = f.metadata().map_err(|e| io_err("reading", &path, e))?.len();
        let complete = end_of_last_line(&f, len).map_err(|e| io_err("reading", &path, e))?;
        if complete < len {
            f.set_len(complete)
                .map_err(|e| io_err("truncating", &path, e))?;
        }
        f.write_all(&line).map_err(|e| io_err("writing", &path, e))
    }

    pub fn write_record(
        &self,
        _lock: &Lock,
        network: &str,
        host_veth: &str,
        rec: &Record,
    ) -> Result<()> {
        let change = Change::Add {
            host_veth: host_veth.to_string(),
            container_id: rec.container_id.clone(),
            ifname: rec.ifname.clone(),
            bridge: rec.bridge.clone(),
        };
        self.append(network, &change)
    }

    /// Records the MAC `host_veth`'s spoof check lets through.
    pub fn write_spoof_mac(
        &self,
        _lock: &Lock,
        network: &str,
        host_veth: &str,
        mac: &str,
    ) -> Result<()> {
        self.append(
            network,
            &Change::Mac {
                host_veth: host_veth.to_string(),
                mac: mac.to_string(),
            },
        )
    }

    /// The spoof-check MACs of the network's attachments: (host veth,
    /// MAC), those written with [`State::write_spoof_mac`].
    pub fn spoof_macs(&self, network: &str) -> Vec<(String, String)> {
        self.load(network).macs.into_iter().collect()
    }

    pub fn read_record(&self, network: &str, host_veth: &str) -> Option<Record> {
        self.load(network).live.remove(host_veth)?.record()
    }

    /// True if `host_veth` has a record (readable or not).
    pub fn has_record(&self, network: &str, host_veth: &str) -> bool {
        self.load(network).live.contains_key(host_veth)
    }

    pub fn remove_record(&self, _lock: &Lock, network: &str, host_veth: &str) -> Result<()> {
        remove_if_present(&self.legacy_dir(network).join(host_veth))?;
        if !self.log_path(network).exists() {
            return Ok(()); // nothing logged, nothing to cancel
        }
        self.append(
            network,
            &Change::Del {
                host_veth: host_veth.to_string(),
            },
        )?;
        let records = self.load(network);
        if records.log_lines > 2 * records.live.len() + COMPACT_SLACK {
            self.compact(network, &records)?;
        }
        Ok(())
    }

    /// Rewrites the log with one line per live record (legacy records stay
    /// in their files).
    fn compact(&self, network: &str, records: &Records) -> Result<()> {
        let mut text = String::new();
        for entry in records.live.values() {
            if let Entry::Logged(line) = entry {
                text.push_str(line);
                text.push('\n');
            }
        }
        for (host_veth, mac) in &records.macs {
            let line = serde_json::to_string(&Change::Mac {
                host_veth: host_veth.clone(),
                mac: mac.clone(),
            })
            .map_err(|e| Error::new(Kind::Io, format!("encoding a record: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(&self.log_path(network), text.as_bytes())
    }

    /// All records of a network: (host veth name, record; None if a legacy
    /// record file could not be read).
    pub fn records(&self, network: &str) -> Vec<(String, Option<Record>)> {
        self.load(network)
            .live
            .into_iter()
            .map(|(host_veth, entry)| (host_veth, entry.record()))
            .collect()
    }

    /// True if the network still has an attachment.
    pub fn has_records(&self, network: &str) -> bool {
        !self.load(network).live.is_empty()
    }

    /// True if a network other than `network` has rules on `bridge`.
    pub fn bridge_used_by_others(&self, network: &str, bridge: &str) -> bool {
        self.networks()
            .iter()
            .any(|(n, m)| n != network && m.bridge == bridge)
    }

    /// Every network with a rules marker of this boot (pending ones
    /// included), by name.
    pub fn networks(&self) -> Vec<(String, RulesMarker)> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<(String, RulesMarker)> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| self.rules_marker(&n).map(|m| (n, m)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The network's marker, if it was written in this boot.
    pub fn rules_marker(&self, network: &str) -> Option<RulesMarker> {
        let data = fs::read(self.network_dir(network).join("rules.json")).ok()?;
        let m: RulesMarker = serde_json::from_slice(&data).ok()?;
        (m.boot_id == boot_id()).then_some(m)
    }

    pub fn write_rules_marker(&self, _lock: &Lock, network: &str, m: &RulesMarker) -> Result<()> {
        let dir = self.network_dir(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
        write_atomic(
            &dir.join("rules.json"),
            &serde_json::to_vec(m).unwrap_or_default(),
        )
    }

    /// Removes the marker and the network's directories once they are empty.
    pub fn forget_network(&self, _lock: &Lock, network: &str) -> Result<()> {
        let dir = self.network_dir(network);
        // What writers killed mid-write left (callers hold the lock, so
        // no writer is live).
        for path in [dir.join("rules.json"), self.log_path(network)] {
            store::file::remove_stale_temps(&path).map_err(|e| io_err("cleaning", &path, e))?;
        }
        remove_if_present(&dir.join("rules.json"))?;
        // Callers hold the lock and found no records, so the log holds
        // only dead lines.
        remove_if_present(&self.log_path(network))?;
        // Fail harmlessly if not empty.
        let _ = fs::remove_dir(self.legacy_dir(network));
        let _ = fs::remove_dir(&dir);
        Ok(())
    }
}

/// Removes a file; one that is already gone is fine.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path, e)),
    }
}

/// The length of `f` (of `len` bytes) up to and including its last
/// newline.
fn end_of_last_line(f: &fs::File, len: u64) -> std::io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut end = len;
    while end > 0 {
        let n = end.min(buf.len() as u64);
        let chunk = &mut buf[..n as usize];
        f.read_exact_at(chunk, end - n)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(end - n + i as u64 + 1);
        }
        end -= n;
    }
    Ok(0)
}

/// [`store::file::write_atomic`], as a CNI error.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    store::file::write_atomic(path, data).map_err(|e| Error::new(Kind::Io, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u32) -> Record {
        Record {
            container_id: format!("c{n}"),
            ifname: "eth0".into(),
            bridge: "b0".into(),
        }
    }

    /// The state of a test, under a fresh root (the lock is the host's
    /// /run/berth, as in the plugin).
    fn test_state(tag: &str) -> (State, PathBuf) {
        let root = std::env::temp_dir().join(format!("berth-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        (State::new(&root), root)
    }

    #[test]
    fn records_are_log_lines_and_the_log_is_compacted() {
        let (state, root) = test_state("log");
        let lock = state.lock().unwrap();
        for n in 0..200 {
            state
                .write_record(&lock, "n1", &format!("bv{n}"), &rec(n))
                .unwrap();
        }
        assert_eq!(state.read_record("n1", "bv7"), Some(rec(7)));
        for n in 0..190 {
            state.remove_record(&lock, "n1", &format!("bv{n}")).unwrap();
        }
        let left: Vec<String> = state.records("n1").into_iter().map(|(v, _)| v).collect();
        assert_eq!(
            left,
            (190..200).map(|n| format!("bv{n}")).collect::<Vec<_>>()
        );
        // 200 adds and 190 dels were written; compaction keeps the log
        // within the live records plus the slack.
        let lines = fs::read_to_string(root.join("n1").join(LOG))
            .unwrap()
            .lines()
            .count();
        assert!(
            lines <= 2 * 10 + COMPACT_SLACK + 1,
            "{lines} lines for 10 records"
        );
        assert_eq!(state.read_record("n1", "bv195"), Some(rec(195)));
        for n in 190..200 {
            state.remove_record(&lock, "n1", &format!("bv{n}")).unwrap();
        }
        assert!(!state.has_records("n1"));
        state.forget_network(&lock, "n1").unwrap();
        assert!(!root.join("n1").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn written_lines_take_the_fast_path_and_others_still_parse() {
        let add = Change::Add {
            host_veth: "bv12ab".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            bridge: "b0".into(),
        };
        let line = serde_json::to_string(&add).unwrap();
        assert!(
            line.starts_with(r#"{"op":"add","hostVeth":"bv12ab","#),
            "{line}"
        );
        assert_eq!(line_head(&line), Some((true, "bv12ab".to_string())));
        let del = serde_json::to_string(&Change::Del {
            host_veth: "bv12ab".into(),
        })
        .unwrap();
        assert_eq!(del, r#"{"op":"del","hostVeth":"bv12ab"}"#);
        assert_eq!(line_head(&del), Some((false, "bv12ab".to_string())));
        // Same content, another field order: serde's way.
        assert_eq!(
            line_head(r#"{"hostVeth":"bv9","op":"del"}"#),
            Some((false, "bv9".to_string()))
        );
        assert_eq!(line_head("garbage"), None);
    }

    #[test]
    fn a_line_cut_short_is_ignored_and_not_glued_to_the_next() {
        let (state, root) = test_state("cut");
        let lock = state.lock().unwrap();
        state.write_record(&lock, "n1", "bv1", &rec(1)).unwrap();
        // A writer killed mid-line.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("n1").join(LOG))
            .unwrap();
        f.write_all(br#"{"op":"add","hostVeth":"bv2","contai"#)
            .unwrap();
        assert_eq!(state.records("n1"), vec![("bv1".to_string(), Some(rec(1)))]);
        state.write_record(&lock, "n1", "bv3", &rec(3)).unwrap();
        assert_eq!(
            state.records("n1"),
            vec![
                ("bv1".to_string(), Some(rec(1))),
                ("bv3".to_string(), Some(rec(3)))
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn records_of_older_versions_count_until_removed() {
        let (state, root) = test_state("legacy");
        let lock = state.lock().unwrap();
        let legacy = root.join("n1").join(LEGACY_DIR);
        fs::create_dir_all(&legacy).unwrap();
        fs::write(legacy.join("bv1"), serde_json::to_vec(&rec(1)).unwrap()).unwrap();
        fs::write(legacy.join(".bv9.123"), b"temp file of a killed writer").unwrap();
        state.write_record(&lock, "n1", "bv2", &rec(2)).unwrap();
        assert_eq!(
            state.records("n1"),
            vec![
                ("bv1".to_string(), Some(rec(1))),
                ("bv2".to_string(), Some(rec(2)))
            ]
        );
        state.remove_record(&lock, "n1", "bv1").unwrap();
        assert!(!legacy.join("bv1").exists());
        assert!(state.has_record("n1", "bv2") && !state.has_record("n1", "bv1"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn spoof_macs_follow_their_records() {
        let (state, root) = test_state("macs");
        let lock = state.lock().unwrap();
        for n in 0..3 {
            let veth = format!("bv{n}");
            state.write_record(&lock, "n1", &veth, &rec(n)).unwrap();
            state
                .write_spoof_mac(&lock, "n1", &veth, &format!("02:00:00:00:00:0{n}"))
                .unwrap();
        }
        state.remove_record(&lock, "n1", "bv1").unwrap();
        // A re-ADD of bv2 has no check until it logs one again.
        state.write_record(&lock, "n1", "bv2", &rec(2)).unwrap();
        let want = vec![("bv0".to_string(), "02:00:00:00:00:00".to_string())];
        assert_eq!(state.spoof_macs("n1"), want);
        // Compaction keeps the MAC lines of live records.
        let records = state.load("n1");
        state.compact("n1", &records).unwrap();
        assert_eq!(state.spoof_macs("n1"), want);
        assert_eq!(state.records("n1").len(), 2);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_marker_from_another_boot_vouches_for_nothing() {
        let root = std::env::temp_dir().join(format!("berth-state-test-{}", std::process::id()));
        let state = State::new(&root);
        let net: IpNet = "10.9.0.0/24".parse().unwrap();
        let marker = |boot: String| RulesMarker {
            bridge: "b0".into(),
            subnets: vec![net],
            boot_id: boot,
            isolation: true,
            ..RulesMarker::default()
        };
        // Written directly: the lock only serialises writers, it doesn't
        // change what is read back.
        let dir = root.join("n1");
        fs::create_dir_all(&dir).unwrap();
        let write = |m: &RulesMarker| {
            fs::write(dir.join("rules.json"), serde_json::to_vec(m).unwrap()).unwrap()
        };

        write(&marker(boot_id()));
        assert_eq!(state.rules_marker("n1"), Some(marker(boot_id())));
        write(&marker("another-boot".into()));
        assert_eq!(state.rules_marker("n1"), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
