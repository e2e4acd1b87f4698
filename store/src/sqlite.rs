//! The embedded store: one SQLite database per network.

use std::collections::HashSet;
use std::fs::{DirBuilder, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::addr::{bytes_key, from_key, key_bytes, to_key};
use crate::{
    Allocation, AllocationStore, Error, ImportSummary, Owner, RangeSet, Request, Result, Want,
};

/// File name of the database inside `<data_dir>/<network>/`.
pub const DB_FILE: &str = "ipam.db";
/// Lock file serialising first-time initialisation of a database.
const INIT_LOCK_FILE: &str = "ipam.lock";
const SCHEMA_VERSION: i64 = 1;
/// How long a writer waits for another process's transaction. Transactions take
/// about a millisecond, so this only matters under heavy contention.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS allocations (
    ip           BLOB    NOT NULL PRIMARY KEY CHECK (length(ip) = 16),
    range_set    INTEGER,
    container_id TEXT    NOT NULL,
    ifname       TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS allocations_owner ON allocations (container_id, ifname);
CREATE TABLE IF NOT EXISTS cursors (
    range_set INTEGER NOT NULL PRIMARY KEY,
    last_ip   BLOB    NOT NULL
);
PRAGMA user_version = 1;
";

/// What each range set may hand out, for the operator's view of free
/// addresses (`berth status`): written by every allocation, since only the
/// plugin's config knows the ranges. The size is decimal text: an IPv6
/// set's exceeds SQLite's 64-bit integers. Added to schema 1 without a
/// new version, so an older berth-ipam still opens the database (it never
/// reads the table); a database from before it gets the table with its
/// next allocation.
const RANGE_SETS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS range_sets (
    range_set INTEGER NOT NULL PRIMARY KEY,
    label     TEXT    NOT NULL,
    size      TEXT    NOT NULL
);";

/// Which network namespace each owner's addresses were allocated for, and
/// in which boot: what lets `berth gc` tell an allocation whose container
/// is gone (its netns no longer exists, or it was made before a reboot)
/// from a live one, for runtimes that never send CNI GC. Additive to
/// schema 1 like [`RANGE_SETS_TABLE`]; a row goes with its owner's last
/// allocation.
const SANDBOXES_TABLE: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    netns        TEXT NOT NULL,
    boot_id      TEXT NOT NULL,
    PRIMARY KEY (container_id, ifname)
) WITHOUT ROWID;";

/// Where an owner's container lived when its addresses were allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The network namespace's path (CNI_NETNS); empty when not given.
    pub netns: String,
    /// The kernel's boot ID at allocation ([`crate::host::boot_id`]).
    pub boot_id: String,
}

/// How one range set of a network is used, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSetUse {
    /// None: allocations recorded without a range set (imported ones).
    pub range_set: Option<u32>,
    /// The set's label (its ranges, as the config gives them); None for
    /// allocations of a set no allocation has described yet (made before
    /// berth recorded range sets, or imported).
    pub label: Option<String>,
    /// Addresses the set may hand out; None as for `label`.
    pub size: Option<u128>,
    /// Addresses allocated from it.
    pub used: u64,
}

/// [`AllocationStore`] on SQLite (WAL, `synchronous=NORMAL`, `BEGIN IMMEDIATE`
/// write transactions, 10 s busy timeout). Safe to use from many processes at
/// once; each process opens its own `SqliteStore`.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

pub(crate) fn sql_err<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl Fn(rusqlite::Error) -> Error + 'a {
    move |source| Error::Sqlite {
        context,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn io_err<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl Fn(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// Per-connection settings every berth database uses (busy timeout,
/// synchronous=NORMAL under WAL, no checkpoint on close).
pub(crate) fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_err(path, "setting busy timeout"))?;
    // In WAL mode, NORMAL commits without an fsync; the WAL is synced at
    // checkpoints. A process killed at any point still leaves the
    // database consistent and every committed allocation in it (the OS
    // has the writes); only a power loss can drop the last commits —
    // and it also kills every container they belonged to. This takes
    // five fsyncs off each ADD and DEL.
    conn.execute_batch("PRAGMA synchronous = NORMAL;")
        .map_err(sql_err(path, "setting synchronous"))?;
    // Each plugin process is usually the database's only connection, and
    // the last connection to close would checkpoint (and fsync) the WAL
    // and delete it, so the next process must recreate it. Instead, a
    // closing connection checkpoints only once the WAL has grown (see
    // `Drop`).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(sql_err(path, "disabling checkpoint on close"))?;
    Ok(())
}

/// Reject names that are not a single, ordinary path component.
pub fn validate_network_name(network: &str) -> Result<()> {
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
    {
        return Err(Error::InvalidNetworkName(network.to_string()));
    }
    Ok(())
}

impl SqliteStore {
    /// `<data_dir>/<network>`.
    pub fn network_dir(data_dir: &Path, network: &str) -> Result<PathBuf> {
        validate_network_name(network)?;
        Ok(data_dir.join(network))
    }

    /// `<data_dir>/<network>/ipam.db`.
    pub fn db_path(data_dir: &Path, network: &str) -> Result<PathBuf> {
        Ok(Self::network_dir(data_dir, network)?.join(DB_FILE))
    }

    /// Open (creating directories with mode 0700 and the database as needed) the
    /// store of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = Self::network_dir(data_dir, network)?;
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir, "creating directory"))?;
        }
        Self::open_path(&dir.join(DB_FILE))
    }

    /// Open the store of `network` only if its database exists; `Ok(None)`
    /// otherwise. Read-only and release paths use this so they never create
    /// state for networks that have none.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Self>> {
        let path = Self::db_path(data_dir, network)?;
        match path.try_exists() {
            Ok(true) => Self::open_path(&path).map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(io_err(&path, "checking")(e)),
        }
    }

    /// Open (creating if needed) the database at `path`; its directory must exist.
    pub fn open_path(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "opening"))?;
        configure(&conn, path)?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
        };
        let version = store.user_version()?;
        if version != SCHEMA_VERSION {
            store.initialize(version)?;
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`AllocationStore::allocate`], recording also where the owner's
    /// container lives ([`SANDBOXES_TABLE`]) in the same transaction.
    pub fn allocate_in(
        &mut self,
        owner: &Owner,
        requests: &[Request<'_>],
        sandbox: Option<&Sandbox>,
    ) -> Result<Vec<IpAddr>> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "beginning allocation"))?;
        let mut held = select_owner(&tx, path, &owner.container_id, &owner.ifname)?;
        if !owner.ifname.is_empty() {
            held.extend(select_owner(&tx, path, &owner.container_id, "")?);
        }
        if !held.is_empty() {
            return Err(Error::Duplicate {
                owner: owner.clone(),
                ips: held.into_iter().map(|a| a.ip).collect(),
            });
        }

        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let set = req.set;
            let key = match req.want {
                Want::Exact(ip) => {
                    let k = to_key(ip);
                    if set.range_index(k).is_none() {
                        return Err(Error::InvalidRequest(format!(
                            "requested IP address {ip} is not in range set {}",
                            set.label()
                        )));
                    }
                    if set.is_excluded(k) {
                        return Err(Error::InvalidRequest(format!(
                            "requested IP address {ip} is reserved (gateway, network or broadcast address) in range set {}",
                            set.label()
                        )));
                    }
                    if let Some(holder) = holder_of(&tx, path, k)? {
                        return Err(Error::AddressTaken { ip, holder });
                    }
                    k
                }
                Want::Next => find_free(&tx, path, set)?.ok_or_else(|| Error::Exhausted {
                    range_set: set.id(),
                    label: set.label().to_string(),
                })?,
            };
            insert(&tx, path, key, Some(set.id()), owner)?;
            set_cursor(&tx, path, set.id(), key)?;
            out.push(from_key(key));
        }
        describe_range_sets(&tx, path, requests)?;
        if let Some(sb) = sandbox {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sandboxes (container_id, ifname, netns, boot_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    owner.container_id,
                    owner.ifname,
                    sb.netns,
                    sb.boot_id
                ])
            })
            .map_err(sql_err(path, "recording the sandbox"))?;
        }
        tx.commit()
            .map_err(sql_err(path, "committing allocation"))?;
        Ok(out)
    }

    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql_err(&self.path, "reading schema version"))
    }

    /// Create the schema and switch to WAL (persistent), once, under a file lock
    /// so concurrent first openers don't race.
    fn initialize(&mut self, seen: i64) -> Result<()> {
        if seen > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path: self.path.clone(),
                found: seen,
                supported: SCHEMA_VERSION,
            });
        }
        let lock_path = self.path.with_file_name(INIT_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening lock file"))?;
        let _guard = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(&lock_path, "locking")(errno.into()))?;

        let version = self.user_version()?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let path = &self.path;
        // journal_mode=WAL is persistent; a filesystem without shared memory
        // support keeps the rollback journal, which is slower but still correct.
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql_err(path, "enabling WAL"))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "beginning schema creation"))?;
        tx.execute_batch(SCHEMA)
            .map_err(sql_err(path, "creating schema"))?;
        tx.commit().map_err(sql_err(path, "committing schema"))?;
        // SQLite gives the -wal and -shm files the database file's mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path, "restricting permissions of"))?;
        Ok(())
    }
}

/// WAL size past which a closing connection checkpoints it. A process that
/// opens the database as its only connection rebuilds the WAL index by
/// reading the whole WAL, so the WAL must stay small for opens to stay
/// cheap; one checkpoint (two fsyncs) every few dozen operations does that.
const WAL_CHECKPOINT_BYTES: u64 = 256 * 1024;

impl Drop for SqliteStore {
    fn drop(&mut self) {
        checkpoint_if_big(&self.conn, &self.path);
    }
}

/// Checkpoints the WAL once it has grown past [`WAL_CHECKPOINT_BYTES`].
/// Best effort: a checkpoint that is busy or fails leaves the WAL for the
/// next closer; the data is safe either way.
pub(crate) fn checkpoint_if_big(conn: &Connection, path: &Path) {
    let mut wal = path.to_path_buf().into_os_string();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_CHECKPOINT_BYTES) {
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

// ---- helpers over a connection (or transaction, which derefs to one) ----

fn decode_key(path: &Path, blob: &[u8]) -> Result<u128> {
    bytes_key(blob).ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        msg: format!("address key of {} bytes, expected 16", blob.len()),
    })
}

fn cursor_of(conn: &Connection, path: &Path, set: u32) -> Result<Option<u128>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT last_ip FROM cursors WHERE range_set = ?1")
        .and_then(|mut s| s.query_row([set], |r| r.get(0)).optional())
        .map_err(sql_err(path, "reading cursor"))?;
    // A malformed cursor only costs round-robin position; ignore it.
    Ok(blob.and_then(|b| bytes_key(&b)))
}

fn set_cursor(conn: &Connection, path: &Path, set: u32, key: u128) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cursors (range_set, last_ip) VALUES (?1, ?2)
         ON CONFLICT (range_set) DO UPDATE SET last_ip = excluded.last_ip",
    )
    .and_then(|mut s| s.execute(params![set, &key_bytes(key)[..]]))
    .map_err(sql_err(path, "writing cursor"))?;
    Ok(())
}

fn holder_of(conn: &Connection, path: &Path, key: u128) -> Result<Option<Owner>> {
    conn.prepare_cached("SELECT container_id, ifname FROM allocations WHERE ip = ?1")
        .and_then(|mut s| {
            s.query_row([&key_bytes(key)[..]], |r| {
                Ok(Owner {
                    container_id: r.get(0)?,
                    ifname: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(sql_err(path, "looking up address"))
}

fn insert(
    conn: &Connection,
    path: &Path,
    key: u128,
    set: Option<u32>,
    owner: &Owner,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO allocations (ip, range_set, container_id, ifname) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            &key_bytes(key)[..],
            set,
            owner.container_id,
            owner.ifname
        ])
    })
    .map_err(sql_err(path, "recording allocation"))?;
    Ok(())
}

/// Creates the tables added to schema 1 where they are missing, in a write
/// transaction.
fn additive_tables(conn: &Connection, path: &Path) -> Result<()> {
    conn.prepare_cached(RANGE_SETS_TABLE)
        .and_then(|mut s| s.execute([]))
        .and_then(|_| conn.prepare_cached(SANDBOXES_TABLE))
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(sql_err(path, "creating the tables of schema 1's additions"))
}

/// Forgets where `(container_id, ifname)` lived, with its last address.
fn forget_sandbox(conn: &Connection, path: &Path, container_id: &str, ifname: &str) -> Result<()> {
    additive_tables(conn, path)?;
    conn.prepare_cached("DELETE FROM sandboxes WHERE container_id = ?1 AND ifname = ?2")
        .and_then(|mut s| s.execute(params![container_id, ifname]))
        .map(|_| ())
        .map_err(sql_err(path, "forgetting the sandbox"))
}

/// Records each requested range set's label and size (see
/// [`RANGE_SETS_TABLE`]), in the allocation's transaction. The row
/// changes only when the config's ranges did.
fn describe_range_sets(conn: &Connection, path: &Path, requests: &[Request<'_>]) -> Result<()> {
    additive_tables(conn, path)?;
    for req in requests {
        let set = req.set;
        conn.prepare_cached(
            "INSERT INTO range_sets (range_set, label, size) VALUES (?1, ?2, ?3)
             ON CONFLICT (range_set) DO UPDATE SET label = excluded.label, size = excluded.size
             WHERE label != excluded.label OR size != excluded.size",
        )
        .and_then(|mut s| s.execute(params![set.id(), set.label(), set.size().to_string()]))
        .map_err(sql_err(path, "describing the range set"))?;
    }
    Ok(())
}

/// A network's store opened read-only, for the operator's view: it takes
/// no lock a plugin waits on (WAL readers never block the writer), writes
/// nothing, and reads each answer in one snapshot.
#[derive(Debug)]
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl StoreReader {
    /// Opens `path` read-only; None if there is no database there.
    pub fn open(path: &Path) -> Result<Option<StoreReader>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "opening read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_err(path, "setting busy timeout"))?;
        let r = StoreReader {
            conn,
            path: path.to_path_buf(),
        };
        let version: i64 = r
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql_err(path, "reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            // Created but never initialised (a plugin killed at its first
            // open): nothing allocated.
            return Ok(None);
        }
        Ok(Some(r))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every allocation, in address order.
    pub fn allocations(&self) -> Result<Vec<Allocation>> {
        all_allocations(&self.conn, &self.path)
    }

    /// Whether the database has `table` (the additions to schema 1 come
    /// with the first write of a berth that knows them).
    fn has_table(&self, table: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(sql_err(&self.path, "reading the schema"))
    }

    /// Where each owner's container lived when its addresses were
    /// allocated (owners allocated by a berth-ipam before it recorded
    /// this have none).
    pub fn sandboxes(&self) -> Result<Vec<(Owner, Sandbox)>> {
        if !self.has_table("sandboxes")? {
            return Ok(Vec::new());
        }
        self.conn
            .prepare("SELECT container_id, ifname, netns, boot_id FROM sandboxes")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        Owner::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        Sandbox {
                            netns: r.get(2)?,
                            boot_id: r.get(3)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql_err(&self.path, "reading sandboxes"))
    }

    /// How each range set is used: every described set (used or not) and
    /// every set allocations name, by id.
    pub fn range_sets(&self) -> Result<Vec<RangeSetUse>> {
        let path = &self.path;
        let described = self.has_table("range_sets")?;
        let mut out: std::collections::BTreeMap<Option<u32>, RangeSetUse> = Default::default();
        if described {
            let rows = self
                .conn
                .prepare("SELECT range_set, label, size FROM range_sets")
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql_err(path, "reading range sets"))?;
            for (id, label, size) in rows {
                let size = size.parse::<u128>().map_err(|_| Error::Corrupt {
                    path: path.to_path_buf(),
                    msg: format!("range set {id} has size {size:?}, not a number"),
                })?;
                out.insert(
                    Some(id),
                    RangeSetUse {
                        range_set: Some(id),
                        label: Some(label),
                        size: Some(size),
                        used: 0,
                    },
                );
            }
        }
        let counts = self
            .conn
            .prepare("SELECT range_set, count(*) FROM allocations GROUP BY range_set")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((r.get::<_, Option<u32>>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql_err(path, "counting allocations"))?;
        for (id, used) in counts {
            out.entry(id)
                .or_insert(RangeSetUse {
                    range_set: id,
                    label: None,
                    size: None,
                    used: 0,
                })
                .used = used.unsigned_abs();
        }
        Ok(out.into_values().collect())
    }
}

type RawAllocation = (Vec<u8>, Option<u32>, String, String);

/// Every allocation of the store on `conn` (at `path`), in address
/// order: the writer's and the operator's reader's.
fn all_allocations(conn: &Connection, path: &Path) -> Result<Vec<Allocation>> {
    let raws = conn
        .prepare("SELECT ip, range_set, container_id, ifname FROM allocations ORDER BY ip")
        .and_then(|mut s| {
            s.query_map([], raw_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err(path, "listing allocations"))?;
    raws.into_iter().map(|r| to_allocation(path, r)).collect()
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAllocation> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_allocation(path: &Path, raw: RawAllocation) -> Result<Allocation> {
    let (blob, range_set, container_id, ifname) = raw;
    Ok(Allocation {
        ip: from_key(decode_key(path, &blob)?),
        range_set,
        owner: Owner {
            container_id,
            ifname,
        },
    })
}

/// Allocations of exactly (container_id, ifname).
fn select_owner(
    conn: &Connection,
    path: &Path,
    cid: &str,
    ifname: &str,
) -> Result<Vec<Allocation>> {
    let raws = conn
        .prepare_cached(
            "SELECT ip, range_set, container_id, ifname FROM allocations
             WHERE container_id = ?1 AND ifname = ?2 ORDER BY ip",
        )
        .and_then(|mut s| {
            s.query_map([cid, ifname], raw_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err(path, "looking up allocations"))?;
    raws.into_iter().map(|r| to_allocation(path, r)).collect()
}

/// Delete the allocations of exactly (container_id, ifname), returning them.
fn delete_owner(conn: &Connection, path: &Path, cid: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let blobs = conn
        .prepare_cached(
            "DELETE FROM allocations WHERE container_id = ?1 AND ifname = ?2 RETURNING ip",
        )
        .and_then(|mut s| {
            s.query_map([cid, ifname], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_err(path, "releasing allocations"))?;
    let mut ips = blobs
        .iter()
        .map(|b| decode_key(path, b))
        .collect::<Result<Vec<_>>>()?;
    ips.sort_unstable();
    Ok(ips.into_iter().map(from_key).collect())
}

/// First address in `[a, b]` that is neither allocated nor excluded. Walks the
/// candidates and the ordered allocations in `[a, b]` in lockstep: one index
/// seek, then one step per consecutive taken address.
fn first_free_in(
    conn: &Connection,
    path: &Path,
    set: &RangeSet,
    a: u128,
    b: u128,
) -> Result<Option<u128>> {
    let e = sql_err(path, "searching free address");
    let mut stmt = conn
        .prepare_cached("SELECT ip FROM allocations WHERE ip >= ?1 AND ip <= ?2 ORDER BY ip")
        .map_err(&e)?;
    let mut rows = stmt
        .query([&key_bytes(a)[..], &key_bytes(b)[..]])
        .map_err(&e)?;
    let mut next_row = || -> Result<Option<u128>> {
        match rows.next().map_err(&e)? {
            Some(row) => {
                let blob = row
                    .get_ref(0)
                    .map_err(&e)?
                    .as_blob()
                    .map_err(|err| Error::Corrupt {
                        path: path.to_path_buf(),
                        msg: format!("address key is not a blob: {err}"),
                    })?;
                decode_key(path, blob).map(Some)
            }
            None => Ok(None),
        }
    };
    let mut taken = next_row()?;
    let mut c = a;
    loop {
        while set.is_excluded(c) {
            match c.checked_add(1) {
                Some(n) if n <= b => c = n,
                _ => return Ok(None),
            }
        }
        while let Some(t) = taken {
            if t < c {
                taken = next_row()?;
            } else {
                break;
            }
        }
        if taken != Some(c) {
            return Ok(Some(c));
        }
        match c.checked_add(1) {
            Some(n) if n <= b => c = n,
            _ => return Ok(None),
        }
    }
}

/// The next free address of `set` in round-robin order.
fn find_free(conn: &Connection, path: &Path, set: &RangeSet) -> Result<Option<u128>> {
    let cursor = cursor_of(conn, path, set.id())?;
    for (a, b) in set.search_segments(cursor) {
        if let Some(k) = first_free_in(conn, path, set, a, b)? {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

impl AllocationStore for SqliteStore {
    fn allocate(&mut self, owner: &Owner, requests: &[Request<'_>]) -> Result<Vec<IpAddr>> {
        self.allocate_in(owner, requests, None)
    }

    fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "beginning release"))?;
        let mut released = delete_owner(&tx, path, &owner.container_id, &owner.ifname)?;
        if released.is_empty() && !owner.ifname.is_empty() {
            released = delete_owner(&tx, path, &owner.container_id, "")?;
        }
        if !released.is_empty() {
            forget_sandbox(&tx, path, &owner.container_id, &owner.ifname)?;
        }
        tx.commit().map_err(sql_err(path, "committing release"))?;
        Ok(released)
    }

    fn allocations_of(&mut self, owner: &Owner) -> Result<Vec<Allocation>> {
        let path = &self.path;
        let mut found = select_owner(&self.conn, path, &owner.container_id, &owner.ifname)?;
        if found.is_empty() && !owner.ifname.is_empty() {
            found = select_owner(&self.conn, path, &owner.container_id, "")?;
        }
        Ok(found)
    }

    fn next_free(&mut self, set: &RangeSet) -> Result<Option<IpAddr>> {
        let path = &self.path;
        // A read transaction so cursor and allocations come from one snapshot.
        let tx = self
            .conn
            .transaction()
            .map_err(sql_err(path, "beginning read"))?;
        let found = find_free(&tx, path, set)?;
        tx.finish().map_err(sql_err(path, "ending read"))?;
        Ok(found.map(from_key))
    }

    fn retain(&mut self, valid: &[Owner]) -> Result<Vec<Allocation>> {
        let path = &self.path;
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|o| (o.container_id.as_str(), o.ifname.as_str()))
            .collect();
        let keep_cid: HashSet<&str> = valid.iter().map(|o| o.container_id.as_str()).collect();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "beginning garbage collection"))?;
        let raws = tx
            .prepare("SELECT ip, range_set, container_id, ifname FROM allocations ORDER BY ip")
            .and_then(|mut s| {
                s.query_map([], raw_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql_err(path, "listing allocations"))?;
        let mut removed = Vec::new();
        {
            let mut del = tx
                .prepare_cached("DELETE FROM allocations WHERE ip = ?1")
                .map_err(sql_err(path, "releasing allocation"))?;
            for raw in raws {
                let (cid, ifname) = (raw.2.as_str(), raw.3.as_str());
                let kept = if ifname.is_empty() {
                    keep_cid.contains(cid)
                } else {
                    keep.contains(&(cid, ifname))
                };
                if kept {
                    continue;
                }
                del.execute([&raw.0[..]])
                    .map_err(sql_err(path, "releasing allocation"))?;
                removed.push(to_allocation(path, raw)?);
            }
        }
        // Every sandbox whose owner holds nothing now (also those an older
        // berth-ipam's release left behind).
        additive_tables(&tx, path)?;
        tx.execute_batch(
            "DELETE FROM sandboxes WHERE NOT EXISTS (SELECT 1 FROM allocations a
             WHERE a.container_id = sandboxes.container_id AND a.ifname = sandboxes.ifname)",
        )
        .map_err(sql_err(path, "forgetting sandboxes"))?;
        tx.commit()
            .map_err(sql_err(path, "committing garbage collection"))?;
        Ok(removed)
    }

    fn list(&mut self) -> Result<Vec<Allocation>> {
        all_allocations(&self.conn, &self.path)
    }

    fn import(
        &mut self,
        allocations: &[Allocation],
        cursors: &[(u32, IpAddr)],
    ) -> Result<ImportSummary> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(path, "beginning import"))?;
        let mut summary = ImportSummary::default();
        for a in allocations {
            let k = to_key(a.ip);
            match holder_of(&tx, path, k)? {
                Some(h) if h == a.owner => summary.already_present += 1,
                Some(h) => {
                    return Err(Error::ImportConflict {
                        ip: a.ip,
                        existing: h,
                        incoming: a.owner.clone(),
                    })
                }
                None => {
                    insert(&tx, path, k, a.range_set, &a.owner)?;
                    summary.imported += 1;
                }
            }
        }
        for (set, ip) in cursors {
            set_cursor(&tx, path, *set, to_key(*ip))?;
            summary.cursors += 1;
        }
        tx.commit().map_err(sql_err(path, "committing import"))?;
        Ok(summary)
    }
}
