//! Which published host ports belong to which attachment (berth-portmap).
//!
//! One SQLite database for the whole host (host ports are a host-wide
//! resource, whatever the network): a row per claimed (family, protocol,
//! host port, host address) naming its owner, and a row per attachment
//! holding what it installed, as opaque text the plugin wrote (so a DEL
//! removes exactly that, without the config or the ruleset). Claims are
//! checked and taken in one transaction.
//!
//! The kernel state it describes dies at reboot, so the database lives in
//! a runtime directory and remembers the boot it was written in: opened in
//! another boot, it starts empty.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::sqlite::{checkpoint_if_big, configure, sql_err};
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    family       INTEGER NOT NULL,
    protocol     TEXT    NOT NULL,
    host_port    INTEGER NOT NULL,
    host_ip      TEXT    NOT NULL,  -- '' = every address of the family
    network      TEXT    NOT NULL,
    container_id TEXT    NOT NULL,
    ifname       TEXT    NOT NULL,
    PRIMARY KEY (family, protocol, host_port, host_ip)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_owner ON claims (network, container_id, ifname);
CREATE TABLE IF NOT EXISTS attachments (
    network      TEXT NOT NULL,
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    profile      TEXT NOT NULL,
    installed    TEXT NOT NULL,
    PRIMARY KEY (network, container_id, ifname)
) WITHOUT ROWID;
-- One row per profile in use: how many attachments use it, and one
-- attachment's record (the plugin reads the profile's definition there).
-- Where each attachment's container lives (its CNI_NETNS, the engine's
-- SandboxKey), for the operator's view: added later, so older stores
-- lack it until a plugin opens them.
CREATE TABLE IF NOT EXISTS sandboxes (
    network      TEXT NOT NULL,
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    netns        TEXT NOT NULL,
    PRIMARY KEY (network, container_id, ifname)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    profile   TEXT    NOT NULL PRIMARY KEY,
    users     INTEGER NOT NULL,
    installed TEXT    NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// meta key of the plugin's note of what kernel structure it installed.
const STRUCTURE_KEY: &str = "structure";

/// The attachment publishing ports: (network, containerID, ifname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortOwner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl fmt::Display for PortOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container {} (ifname {}, network {:?})",
            self.container_id, self.ifname, self.network
        )
    }
}

/// One host port an attachment publishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortClaim {
    /// 4 or 6.
    pub family: u8,
    pub protocol: String,
    pub host_port: u16,
    /// None: every address of the family.
    pub host_ip: Option<IpAddr>,
}

impl fmt::Display for PortClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "{}/[{ip}]:{}", self.protocol, self.host_port),
            Some(ip) => write!(f, "{}/{ip}:{}", self.protocol, self.host_port),
            None if self.family == 4 => write!(f, "{}/0.0.0.0:{}", self.protocol, self.host_port),
            None => write!(f, "{}/[::]:{}", self.protocol, self.host_port),
        }
    }
}

/// What an attachment installed: `profile` groups attachments that share
/// kernel objects; `installed` is the plugin's own description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub owner: PortOwner,
    pub profile: String,
    pub installed: String,
}

/// The host-wide database of published ports.
#[derive(Debug)]
pub struct PortStore {
    conn: Connection,
    path: PathBuf,
}

impl PortStore {
    /// Opens (creating) the database at `path`, whose directory must exist.
    /// If it was written in a boot other than `boot_id`, it is emptied
    /// first: what it described is gone with that boot.
    pub fn open(path: &Path, boot_id: &str) -> Result<PortStore> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "opening"))?;
        configure(&conn, path)?;
        let mut store = PortStore {
            conn,
            path: path.to_path_buf(),
        };
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err(path, "reading schema version"))?;
        if version > 1 {
            return Err(Error::SchemaTooNew {
                path: path.to_path_buf(),
                found: version,
                supported: 1,
            });
        }
        if version == 0 {
            let _mode: String = store
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(sql_err(path, "enabling WAL"))?;
        }
        store.start_boot(boot_id)?;
        Ok(store)
    }

    fn start_boot(&mut self, boot_id: &str) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "beginning transaction"))?;
        tx.execute_batch(SCHEMA)
            .map_err(sql_err(&path, "creating schema"))?;
        let seen: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql_err(&path, "reading boot id"))?;
        if seen.as_deref() != Some(boot_id) {
            tx.execute_batch("DELETE FROM claims; DELETE FROM attachments; DELETE FROM sandboxes; DELETE FROM profiles; DELETE FROM meta;")
                .map_err(sql_err(&path, "forgetting an earlier boot"))?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('boot_id', ?1)",
                [boot_id],
            )
            .map_err(sql_err(&path, "recording boot id"))?;
        }
        tx.commit().map_err(sql_err(&path, "committing"))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `published` and takes `claims` for its owner, replacing what
    /// the owner held before (a repeated ADD), which is returned. Fails
    /// with [`Error::PortTaken`], changing nothing, if another owner holds
    /// one of the ports on an overlapping address (the same address, or
    /// either side meaning every address).
    pub fn claim(
        &mut self,
        published: &Published,
        claims: &[PortClaim],
    ) -> Result<Option<Published>> {
        self.claim_in(published, claims, None)
    }

    /// [`PortStore::claim`], recording too the netns its container lives
    /// in (None: not known).
    pub fn claim_in(
        &mut self,
        published: &Published,
        claims: &[PortClaim],
        netns: Option<&str>,
    ) -> Result<Option<Published>> {
        let path = self.path.clone();
        let o = &published.owner;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "beginning transaction"))?;
        for c in claims {
            let ip = c.host_ip.map(|i| i.to_string()).unwrap_or_default();
            let holder = tx
                .prepare_cached(
                    "SELECT host_ip, network, container_id, ifname FROM claims
                     WHERE family = ?1 AND protocol = ?2 AND host_port = ?3
                       AND (host_ip = ?4 OR host_ip = '' OR ?4 = '')
                       AND NOT (network = ?5 AND container_id = ?6 AND ifname = ?7)
                     LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            c.family,
                            c.protocol,
                            c.host_port,
                            ip,
                            o.network,
                            o.container_id,
                            o.ifname
                        ],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                PortOwner {
                                    network: r.get(1)?,
                                    container_id: r.get(2)?,
                                    ifname: r.get(3)?,
                                },
                            ))
                        },
                    )
                    .optional()
                })
                .map_err(sql_err(&path, "looking for a port's holder"))?;
            if let Some((held_ip, holder)) = holder {
                let held = PortClaim {
                    host_ip: held_ip.parse().ok(),
                    ..c.clone()
                };
                return Err(Error::PortTaken {
                    wanted: c.to_string(),
                    held: held.to_string(),
                    holder,
                });
            }
        }
        let previous = attachment_in(&tx, &path, o)?;
        forget_in(&tx, &path, o)?;
        for c in claims {
            let ip = c.host_ip.map(|i| i.to_string()).unwrap_or_default();
            tx.prepare_cached(
                "INSERT OR REPLACE INTO claims (family, protocol, host_port, host_ip, network, container_id, ifname)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(params![c.family, c.protocol, c.host_port, ip, o.network, o.container_id, o.ifname]))
            .map_err(sql_err(&path, "recording a claim"))?;
        }
        tx.prepare_cached(
            "INSERT INTO attachments (network, container_id, ifname, profile, installed) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![o.network, o.container_id, o.ifname, published.profile, published.installed]))
        .map_err(sql_err(&path, "recording an attachment"))?;
        if let Some(ns) = netns {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sandboxes (network, container_id, ifname, netns) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![o.network, o.container_id, o.ifname, ns]))
            .map_err(sql_err(&path, "recording a netns"))?;
        }
        tx.prepare_cached(
            "INSERT INTO profiles (profile, users, installed) VALUES (?1, 1, ?2)
             ON CONFLICT (profile) DO UPDATE SET users = users + 1",
        )
        .and_then(|mut s| s.execute(params![published.profile, published.installed]))
        .map_err(sql_err(&path, "counting a profile's users"))?;
        tx.commit().map_err(sql_err(&path, "committing"))?;
        Ok(previous)
    }

    /// What `owner` installed, if anything.
    pub fn attachment(&self, owner: &PortOwner) -> Result<Option<Published>> {
        attachment_in(&self.conn, &self.path, owner)
    }

    /// Forgets `owner`'s claims and record. Nothing to forget is fine.
    pub fn release(&mut self, owner: &PortOwner) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path, "beginning transaction"))?;
        forget_in(&tx, &path, owner)?;
        tx.commit().map_err(sql_err(&path, "committing"))
    }

    /// Every attachment of `network` (for GC).
    pub fn attachments(&self, network: &str) -> Result<Vec<Published>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT container_id, ifname, profile, installed FROM attachments WHERE network = ?1
                 ORDER BY container_id, ifname",
            )
            .map_err(sql_err(&self.path, "listing attachments"))?;
        let rows = stmt
            .query_map([network], |r| {
                Ok(Published {
                    owner: PortOwner {
                        network: network.to_string(),
                        container_id: r.get(0)?,
                        ifname: r.get(1)?,
                    },
                    profile: r.get(2)?,
                    installed: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.path, "listing attachments"))?;
        Ok(rows)
    }

    /// The profiles in use by attachments other than `except`, each with
    /// one user's record (`installed`): what the shared rules must be
    /// built for. Costs O(profiles), not O(attachments).
    pub fn profiles_except(&self, except: &PortOwner) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.profile, p.installed FROM profiles p
                 WHERE p.users > (SELECT COUNT(*) FROM attachments a
                                  WHERE a.network = ?1 AND a.container_id = ?2 AND a.ifname = ?3
                                    AND a.profile = p.profile)
                 ORDER BY p.profile",
            )
            .map_err(sql_err(&self.path, "listing profiles"))?;
        let rows = stmt
            .query_map(
                params![except.network, except.container_id, except.ifname],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.path, "listing profiles"))?;
        Ok(rows)
    }

    /// Every attachment of every network (to reinstall the kernel state
    /// after it was removed behind the plugin's back).
    pub fn all_attachments(&self) -> Result<Vec<Published>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT network, container_id, ifname, profile, installed FROM attachments",
            )
            .map_err(sql_err(&self.path, "listing attachments"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Published {
                    owner: PortOwner {
                        network: r.get(0)?,
                        container_id: r.get(1)?,
                        ifname: r.get(2)?,
                    },
                    profile: r.get(3)?,
                    installed: r.get(4)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.path, "listing attachments"))?;
        Ok(rows)
    }

    /// The plugin's note of the kernel structure it installed in this boot
    /// (None: none, or not known to be there).
    pub fn structure(&self) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([STRUCTURE_KEY], |r| r.get(0)).optional())
            .map_err(sql_err(&self.path, "reading the structure note"))
    }

    /// Records (Some) or forgets (None) the note [`PortStore::structure`] returns.
    pub fn set_structure(&mut self, note: Option<&str>) -> Result<()> {
        let r = match note {
            Some(n) => self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![STRUCTURE_KEY, n],
            ),
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = ?1", [STRUCTURE_KEY]),
        };
        r.map(|_| ())
            .map_err(sql_err(&self.path, "recording the structure note"))
    }
}

/// The store at `path` opened read-only, if it records boot `boot_id`:
/// a store of another boot records nothing of this one; a store without
/// the schema yet, nothing at all (None in both cases).
fn open_read_only(path: &Path, boot_id: &str) -> Result<Option<PortStore>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(path, "opening read-only"))?;
    conn.busy_timeout(crate::sqlite::BUSY_TIMEOUT)
        .map_err(sql_err(path, "setting busy timeout"))?;
    let store = PortStore {
        conn,
        path: path.to_path_buf(),
    };
    if !store.has_table("meta")? {
        return Ok(None);
    }
    let seen: Option<String> = store
        .conn
        .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql_err(path, "reading boot id"))?;
    Ok((seen.as_deref() == Some(boot_id)).then_some(store))
}

impl PortStore {
    fn has_table(&self, name: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(sql_err(&self.path, "reading the schema"))
    }

    /// Every attachment's recorded netns.
    fn sandboxes(&self) -> Result<Sandboxes> {
        if !self.has_table("sandboxes")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT network, container_id, ifname, netns FROM sandboxes")
            .map_err(sql_err(&self.path, "listing netns"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    PortOwner {
                        network: r.get(0)?,
                        container_id: r.get(1)?,
                        ifname: r.get(2)?,
                    },
                    r.get(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.path, "listing netns"))?;
        Ok(rows)
    }
}

/// Every attachment the store at `path` records for boot `boot_id`,
/// read without writing anything: the reconciler's view, which must work
/// on a read-only /run.
pub fn read_attachments(path: &Path, boot_id: &str) -> Result<Vec<Published>> {
    match open_read_only(path, boot_id)? {
        Some(store) => store.all_attachments(),
        None => Ok(Vec::new()),
    }
}

/// Each attachment's recorded netns.
pub type Sandboxes = Vec<(PortOwner, String)>;

/// [`read_attachments`] and the netns recorded for each (the operator's
/// view), read in one transaction.
pub fn read_attachments_and_netns(
    path: &Path,
    boot_id: &str,
) -> Result<(Vec<Published>, Sandboxes)> {
    let Some(store) = open_read_only(path, boot_id)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    store
        .conn
        .execute_batch("BEGIN")
        .map_err(sql_err(path, "beginning a read"))?;
    let read = store
        .all_attachments()
        .and_then(|a| Ok((a, store.sandboxes()?)));
    let _ = store.conn.execute_batch("COMMIT");
    read
}

impl Drop for PortStore {
    fn drop(&mut self) {
        checkpoint_if_big(&self.conn, &self.path);
    }
}

fn attachment_in(conn: &Connection, path: &Path, o: &PortOwner) -> Result<Option<Published>> {
    conn.prepare_cached(
        "SELECT profile, installed FROM attachments WHERE network = ?1 AND container_id = ?2 AND ifname = ?3",
    )
    .and_then(|mut s| {
        s.query_row(params![o.network, o.container_id, o.ifname], |r| {
            Ok(Published { owner: o.clone(), profile: r.get(0)?, installed: r.get(1)? })
        })
        .optional()
    })
    .map_err(sql_err(path, "reading an attachment"))
}

fn forget_in(conn: &Connection, path: &Path, o: &PortOwner) -> Result<()> {
    if let Some(old) = attachment_in(conn, path, o)? {
        for sql in [
            "UPDATE profiles SET users = users - 1 WHERE profile = ?1",
            "DELETE FROM profiles WHERE profile = ?1 AND users <= 0",
        ] {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute([&old.profile]))
                .map_err(sql_err(path, "counting a profile's users"))?;
        }
    }
    for sql in [
        "DELETE FROM claims WHERE network = ?1 AND container_id = ?2 AND ifname = ?3",
        "DELETE FROM attachments WHERE network = ?1 AND container_id = ?2 AND ifname = ?3",
        "DELETE FROM sandboxes WHERE network = ?1 AND container_id = ?2 AND ifname = ?3",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![o.network, o.container_id, o.ifname]))
            .map_err(sql_err(path, "forgetting an attachment"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp() -> Tmp {
        let d = std::env::temp_dir().join(format!(
            "berth-ports-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn owner(id: &str) -> PortOwner {
        PortOwner {
            network: "net".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn published(id: &str) -> Published {
        Published {
            owner: owner(id),
            profile: "d".into(),
            installed: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    fn claim(port: u16, ip: Option<&str>) -> PortClaim {
        PortClaim {
            family: 4,
            protocol: "tcp".into(),
            host_port: port,
            host_ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn the_netns_is_recorded_with_the_claims_and_goes_with_them() {
        let t = tmp();
        let db = t.0.join("p.db");
        let mut s = PortStore::open(&db, "boot1").unwrap();
        s.claim_in(&published("a"), &[claim(8080, None)], Some("/run/netns/a"))
            .unwrap();
        s.claim(&published("b"), &[claim(8081, None)]).unwrap();
        let (all, netns) = read_attachments_and_netns(&db, "boot1").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(netns, vec![(owner("a"), "/run/netns/a".to_string())]);
        // Another boot's store records nothing of this one.
        assert_eq!(
            read_attachments_and_netns(&db, "boot2").unwrap(),
            (Vec::new(), Vec::new())
        );
        s.release(&owner("a")).unwrap();
        assert_eq!(read_attachments_and_netns(&db, "boot1").unwrap().1, vec![]);
        // A store made before the table existed reads as none recorded.
        drop(s);
        let c = Connection::open(&db).unwrap();
        c.execute_batch("DROP TABLE sandboxes").unwrap();
        drop(c);
        let (all, netns) = read_attachments_and_netns(&db, "boot1").unwrap();
        assert_eq!((all.len(), netns.len()), (1, 0));
    }

    #[test]
    fn conflicts_name_the_holder_and_change_nothing() {
        let t = tmp();
        let mut s = PortStore::open(&t.0.join("p.db"), "boot1").unwrap();
        s.claim(&published("a"), &[claim(8080, None)]).unwrap();
        // any address overlaps a specific one, both ways
        let e = s
            .claim(
                &published("b"),
                &[claim(9090, None), claim(8080, Some("192.0.2.1"))],
            )
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("container a") && msg.contains("tcp/192.0.2.1:8080"),
            "{msg}"
        );
        assert!(s.attachment(&owner("b")).unwrap().is_none());
        // the rejected request's other claim was not taken either
        s.claim(&published("c"), &[claim(9090, None)]).unwrap();
        // other protocol, other family: no conflict
        let mut udp = claim(8080, None);
        udp.protocol = "udp".into();
        let mut v6 = claim(8080, None);
        v6.family = 6;
        s.claim(&published("d"), &[udp, v6]).unwrap();
        // two specific addresses do not overlap
        s.claim(&published("e"), &[claim(7070, Some("192.0.2.1"))])
            .unwrap();
        s.claim(&published("f"), &[claim(7070, Some("192.0.2.2"))])
            .unwrap();
        assert!(s.claim(&published("g"), &[claim(7070, None)]).is_err());
    }

    #[test]
    fn read_only_reading_sees_this_boots_records_and_writes_nothing() {
        let t = tmp();
        let db = t.0.join("p.db");
        std::fs::write(t.0.join("empty.db"), b"").unwrap();
        assert!(read_attachments(&t.0.join("empty.db"), "boot1")
            .unwrap()
            .is_empty());
        {
            let mut s = PortStore::open(&db, "boot1").unwrap();
            s.claim(&published("a"), &[claim(8080, None)]).unwrap();
        }
        let before = std::fs::read(&db).unwrap();
        let got = read_attachments(&db, "boot1").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].owner, owner("a"));
        // Another boot's store holds nothing of this one, and is not
        // emptied by the reading.
        assert!(read_attachments(&db, "boot2").unwrap().is_empty());
        assert_eq!(std::fs::read(&db).unwrap(), before);
        assert_eq!(read_attachments(&db, "boot1").unwrap().len(), 1);
        assert!(read_attachments(&t.0.join("missing.db"), "boot1").is_err());
    }

    #[test]
    fn repeated_claim_replaces_and_release_frees() {
        let t = tmp();
        let mut s = PortStore::open(&t.0.join("p.db"), "boot1").unwrap();
        assert!(s
            .claim(&published("a"), &[claim(8080, None)])
            .unwrap()
            .is_none());
        let prev = s.claim(&published("a"), &[claim(8081, None)]).unwrap();
        assert_eq!(prev, Some(published("a")));
        s.claim(&published("b"), &[claim(8080, None)]).unwrap();
        s.release(&owner("a")).unwrap();
        s.release(&owner("a")).unwrap();
        s.claim(&published("c"), &[claim(8081, None)]).unwrap();
        assert_eq!(s.attachments("net").unwrap().len(), 2);
        // b and c share profile "d": it is in use by others than b.
        assert_eq!(s.profiles_except(&owner("b")).unwrap().len(), 1);
        s.release(&owner("c")).unwrap();
        assert!(s.profiles_except(&owner("b")).unwrap().is_empty());
        let mut other = published("x");
        other.profile = "p2".into();
        s.claim(&other, &[claim(1000, None)]).unwrap();
        let p = s.profiles_except(&owner("b")).unwrap();
        assert_eq!(p, vec![("p2".to_string(), other.installed.clone())]);
        assert_eq!(s.all_attachments().unwrap().len(), 2);
    }

    #[test]
    fn another_boot_starts_empty() {
        let t = tmp();
        let p = t.0.join("p.db");
        PortStore::open(&p, "boot1")
            .unwrap()
            .claim(&published("a"), &[claim(8080, None)])
            .unwrap();
        assert!(PortStore::open(&p, "boot1")
            .unwrap()
            .attachment(&owner("a"))
            .unwrap()
            .is_some());
        PortStore::open(&p, "boot1")
            .unwrap()
            .set_structure(Some("d"))
            .unwrap();
        assert_eq!(
            PortStore::open(&p, "boot1")
                .unwrap()
                .structure()
                .unwrap()
                .as_deref(),
            Some("d")
        );
        let mut s = PortStore::open(&p, "boot2").unwrap();
        assert!(s.attachment(&owner("a")).unwrap().is_none());
        assert_eq!(s.structure().unwrap(), None);
        s.claim(&published("b"), &[claim(8080, None)]).unwrap();
    }
}
