//! A writer killed inside an open transaction leaves nothing behind and
//! doesn't block the next one.
//!
//! This is the only test in its binary on purpose: it fork()s, and a child
//! forked while another test thread holds SQLite's or malloc's lock would
//! deadlock before it ever got to write.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult};
use std::net::IpAddr;
use std::time::Instant;
use store::{AllocationStore, IpRange, Owner, RangeSet, Request, SqliteStore};

#[test]
fn killed_mid_transaction_leaves_nothing() {
    let data = std::env::temp_dir().join(format!("berth-store-killed-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    drop(SqliteStore::open(&data, "n").unwrap());
    let db = SqliteStore::db_path(&data, "n").unwrap();
    // SAFETY: this binary runs no other thread that could hold a lock at
    // the fork; the child opens its own connection, writes without
    // committing and kills itself, never returning into the harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            if let Ok(c) = rusqlite::Connection::open(&db) {
                let _ = c.execute_batch(
                    "BEGIN IMMEDIATE;
                     INSERT INTO allocations VALUES (x'00000000000000000000ffff0a000002', 0, 'dead', 'eth0');",
                );
            }
            let _ = kill(getpid(), Signal::SIGKILL);
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            let st = waitpid(child, None).unwrap();
            assert!(
                matches!(st, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
                "{st:?}"
            );
        }
    }
    let mut s = SqliteStore::open(&data, "n").unwrap();
    assert!(
        s.list().unwrap().is_empty(),
        "the uncommitted insert must not survive"
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let set = RangeSet::new(
        0,
        "10.0.0.1-10.0.0.254",
        &[IpRange::new(ip("10.0.0.1"), ip("10.0.0.254"))],
        &[ip("10.0.0.1")],
    )
    .unwrap();
    let start = Instant::now();
    let got = s
        .allocate(&Owner::new("c1", "eth0"), &[Request::next(&set)])
        .unwrap();
    assert_eq!(got, vec![ip("10.0.0.2")]);
    assert!(
        start.elapsed().as_secs() < 2,
        "the killed writer's lock was not released"
    );
    drop(s);
    std::fs::remove_dir_all(&data).unwrap();
}
