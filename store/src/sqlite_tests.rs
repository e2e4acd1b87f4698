//! Tests of the SQLite store.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use crate::*;

/// A directory under /tmp removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = PathBuf::from(format!(
            "/tmp/berth-store-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn owner(n: usize) -> Owner {
    Owner::new(format!("c{n}"), "eth0")
}

/// 10.0.0.0/24-like set: range .1-.254, gateway .1 and network/broadcast excluded.
fn v4_set(id: u32, start: &str, end: &str, excluded: &[&str]) -> RangeSet {
    let ex: Vec<IpAddr> = excluded.iter().map(|s| ip(s)).collect();
    RangeSet::new(
        id,
        format!("{start}-{end}"),
        &[IpRange::new(ip(start), ip(end))],
        &ex,
    )
    .unwrap()
}

#[test]
fn open_creates_private_dirs_and_schema() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("open");
    let data = t.path().join("a/b");
    assert!(SqliteStore::open_existing(&data, "net1").unwrap().is_none());
    let s = SqliteStore::open(&data, "net1").unwrap();
    assert_eq!(s.path(), data.join("net1/ipam.db"));
    let mode = std::fs::metadata(data.join("net1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(s);
    let mut s = SqliteStore::open_existing(&data, "net1").unwrap().unwrap();
    assert!(s.list().unwrap().is_empty());
    let mode: String = s
        .conn_for_tests()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for bad in ["", ".", "..", "a/b"] {
        assert!(matches!(
            SqliteStore::open(&data, bad),
            Err(Error::InvalidNetworkName(_))
        ));
    }
}

#[test]
fn round_robin_wraps_and_skips_excluded() {
    let t = TempDir::new("rr");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let set = v4_set(
        0,
        "10.0.0.1",
        "10.0.0.6",
        &["10.0.0.0", "10.0.0.1", "10.0.0.7"],
    );
    let got: Vec<IpAddr> = (0..5)
        .map(|i| s.allocate(&owner(i), &[Request::next(&set)]).unwrap()[0])
        .collect();
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
            .iter()
            .map(|x| ip(x))
            .collect::<Vec<_>>()
    );
    match s.allocate(&owner(5), &[Request::next(&set)]) {
        Err(Error::Exhausted { label, .. }) => assert_eq!(label, "10.0.0.1-10.0.0.6"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.next_free(&set).unwrap(), None);
    // Release .3: round robin continues after the cursor (.6), wraps, finds .3.
    assert_eq!(s.release(&owner(1)).unwrap(), vec![ip("10.0.0.3")]);
    assert_eq!(s.next_free(&set).unwrap(), Some(ip("10.0.0.3")));
    assert_eq!(
        s.allocate(&owner(6), &[Request::next(&set)]).unwrap(),
        vec![ip("10.0.0.3")]
    );
    // Release .2 and .5: the cursor is .3 now, so .5 comes before .2.
    s.release(&owner(0)).unwrap();
    s.release(&owner(3)).unwrap();
    assert_eq!(
        s.allocate(&owner(7), &[Request::next(&set)]).unwrap(),
        vec![ip("10.0.0.5")]
    );
    assert_eq!(
        s.allocate(&owner(8), &[Request::next(&set)]).unwrap(),
        vec![ip("10.0.0.2")]
    );
}

#[test]
fn round_robin_does_not_reuse_released_immediately() {
    let t = TempDir::new("rr2");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let set = v4_set(0, "10.0.0.1", "10.0.0.254", &["10.0.0.1"]);
    let a = s.allocate(&owner(0), &[Request::next(&set)]).unwrap();
    s.release(&owner(0)).unwrap();
    let b = s.allocate(&owner(0), &[Request::next(&set)]).unwrap();
    assert_eq!(a, vec![ip("10.0.0.2")]);
    assert_eq!(b, vec![ip("10.0.0.3")]);
}

#[test]
fn multi_range_set_and_v6() {
    let t = TempDir::new("multi");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let set = RangeSet::new(
        0,
        "two",
        &[
            IpRange::new(ip("10.0.0.2"), ip("10.0.0.3")),
            IpRange::new(ip("10.0.5.2"), ip("10.0.5.3")),
        ],
        &[],
    )
    .unwrap();
    let got: Vec<IpAddr> = (0..4)
        .map(|i| s.allocate(&owner(i), &[Request::next(&set)]).unwrap()[0])
        .collect();
    assert_eq!(
        got,
        vec![
            ip("10.0.0.2"),
            ip("10.0.0.3"),
            ip("10.0.5.2"),
            ip("10.0.5.3")
        ]
    );
    let v6 = RangeSet::new(
        1,
        "fd00::/120",
        &[IpRange::new(ip("fd00::1"), ip("fd00::ff"))],
        &[ip("fd00::"), ip("fd00::1")],
    )
    .unwrap();
    assert_eq!(
        s.allocate(&owner(10), &[Request::next(&v6)]).unwrap(),
        vec![ip("fd00::2")]
    );
    // The top of the v6 space: no overflow at u128::MAX.
    let top = RangeSet::new(
        2,
        "top",
        &[IpRange::new(
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        )],
        &[],
    )
    .unwrap();
    assert!(s.allocate(&owner(11), &[Request::next(&top)]).is_ok());
    assert!(s.allocate(&owner(12), &[Request::next(&top)]).is_ok());
    assert!(matches!(
        s.allocate(&owner(13), &[Request::next(&top)]),
        Err(Error::Exhausted { .. })
    ));
}

#[test]
fn dual_stack_is_one_transaction() {
    let t = TempDir::new("dual");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let v4 = v4_set(0, "10.0.0.2", "10.0.0.2", &[]);
    let v6 = RangeSet::new(
        1,
        "fd00::/64",
        &[IpRange::new(ip("fd00::2"), ip("fd00::ffff"))],
        &[],
    )
    .unwrap();
    let got = s
        .allocate(&owner(0), &[Request::next(&v4), Request::next(&v6)])
        .unwrap();
    assert_eq!(got, vec![ip("10.0.0.2"), ip("fd00::2")]);
    // v4 is now full: v6 must not be allocated either.
    let err = s
        .allocate(&owner(1), &[Request::next(&v6), Request::next(&v4)])
        .unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { range_set: 0, .. }),
        "{err}"
    );
    assert!(s.allocations_of(&owner(1)).unwrap().is_empty());
    assert_eq!(s.list().unwrap().len(), 2);
    // The failed attempt did not move the v6 cursor either.
    assert_eq!(s.next_free(&v6).unwrap(), Some(ip("fd00::3")));
}

#[test]
fn duplicate_exact_and_taken() {
    let t = TempDir::new("dup");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let set = v4_set(
        0,
        "10.0.0.1",
        "10.0.0.254",
        &["10.0.0.1", "10.0.0.0", "10.0.0.255"],
    );
    s.allocate(&owner(0), &[Request::exact(&set, ip("10.0.0.77"))])
        .unwrap();
    match s.allocate(&owner(0), &[Request::next(&set)]) {
        Err(Error::Duplicate { ips, .. }) => assert_eq!(ips, vec![ip("10.0.0.77")]),
        other => panic!("{other:?}"),
    }
    // Same container, other ifname: fine.
    s.allocate(&Owner::new("c0", "eth1"), &[Request::next(&set)])
        .unwrap();
    match s.allocate(&owner(1), &[Request::exact(&set, ip("10.0.0.77"))]) {
        Err(Error::AddressTaken { ip: i, holder }) => {
            assert_eq!(i, ip("10.0.0.77"));
            assert_eq!(holder, owner(0));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.allocate(&owner(1), &[Request::exact(&set, ip("10.0.0.1"))]),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        s.allocate(&owner(1), &[Request::exact(&set, ip("10.0.1.1"))]),
        Err(Error::InvalidRequest(_))
    ));
    assert!(s.allocations_of(&owner(1)).unwrap().is_empty());
    // The exact request moved the cursor like host-local's Reserve does; the
    // eth1 allocation got .78.
    assert_eq!(
        s.allocations_of(&Owner::new("c0", "eth1")).unwrap()[0].ip,
        ip("10.0.0.78")
    );
}

#[test]
fn release_is_idempotent_and_legacy_fallback() {
    let t = TempDir::new("rel");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    assert!(s.release(&owner(0)).unwrap().is_empty());
    s.import(
        &[Allocation {
            ip: ip("10.0.0.9"),
            range_set: None,
            owner: Owner::new("legacy", ""),
        }],
        &[],
    )
    .unwrap();
    let o = Owner::new("legacy", "eth0");
    assert_eq!(s.allocations_of(&o).unwrap().len(), 1);
    let set = v4_set(0, "10.0.0.2", "10.0.0.20", &[]);
    assert!(matches!(
        s.allocate(&o, &[Request::next(&set)]),
        Err(Error::Duplicate { .. })
    ));
    assert_eq!(s.release(&o).unwrap(), vec![ip("10.0.0.9")]);
    assert!(s.release(&o).unwrap().is_empty());
}

#[test]
fn gc_retains_only_valid() {
    let t = TempDir::new("gc");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let set = v4_set(0, "10.0.0.2", "10.0.0.100", &[]);
    for i in 0..5 {
        s.allocate(&owner(i), &[Request::next(&set)]).unwrap();
    }
    s.import(
        &[
            Allocation {
                ip: ip("10.0.0.200"),
                range_set: None,
                owner: Owner::new("c1", ""),
            },
            Allocation {
                ip: ip("10.0.0.201"),
                range_set: None,
                owner: Owner::new("gone", ""),
            },
        ],
        &[],
    )
    .unwrap();
    let removed = s.retain(&[owner(1), owner(3)]).unwrap();
    let mut removed_ips: Vec<IpAddr> = removed.iter().map(|a| a.ip).collect();
    removed_ips.sort();
    assert_eq!(
        removed_ips,
        vec![
            ip("10.0.0.2"),
            ip("10.0.0.4"),
            ip("10.0.0.6"),
            ip("10.0.0.201")
        ]
    );
    let left: Vec<IpAddr> = s.list().unwrap().iter().map(|a| a.ip).collect();
    assert_eq!(left, vec![ip("10.0.0.3"), ip("10.0.0.5"), ip("10.0.0.200")]);
    assert_eq!(s.retain(&[]).unwrap().len(), 3);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn import_is_atomic_and_idempotent() {
    let t = TempDir::new("imp");
    let mut s = SqliteStore::open(t.path(), "n").unwrap();
    let a = |i: &str, c: &str| Allocation {
        ip: ip(i),
        range_set: None,
        owner: Owner::new(c, "eth0"),
    };
    let sum = s
        .import(
            &[a("10.0.0.5", "x"), a("10.0.0.6", "y")],
            &[(0, ip("10.0.0.6"))],
        )
        .unwrap();
    assert_eq!(
        sum,
        ImportSummary {
            imported: 2,
            already_present: 0,
            cursors: 1
        }
    );
    let sum = s.import(&[a("10.0.0.5", "x")], &[]).unwrap();
    assert_eq!(sum.already_present, 1);
    assert!(matches!(
        s.import(&[a("10.0.0.7", "z"), a("10.0.0.5", "other")], &[]),
        Err(Error::ImportConflict { .. })
    ));
    assert_eq!(s.list().unwrap().len(), 2);
    let set = v4_set(0, "10.0.0.2", "10.0.0.100", &[]);
    // The imported cursor is honoured.
    assert_eq!(s.next_free(&set).unwrap(), Some(ip("10.0.0.7")));
}

#[test]
fn concurrent_64_threads_distinct() {
    let t = TempDir::new("conc");
    let data = Arc::new(t.path().to_path_buf());
    let n = 64;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let data = Arc::clone(&data);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<Vec<IpAddr>> {
                let set = v4_set(
                    0,
                    "10.0.0.1",
                    "10.0.0.254",
                    &["10.0.0.0", "10.0.0.1", "10.0.0.255"],
                );
                let v6 = RangeSet::new(
                    1,
                    "fd00::/64",
                    &[IpRange::new(ip("fd00::1"), ip("fd00::ffff"))],
                    &[ip("fd00::1")],
                )?;
                barrier.wait();
                // Each thread opens its own connection on a fresh database, like
                // separate plugin processes.
                let mut s = SqliteStore::open(&data, "net")?;
                s.allocate(&owner(i), &[Request::next(&set), Request::next(&v6)])
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let got = h.join().unwrap().unwrap();
        assert_eq!(got.len(), 2);
        all.extend(got);
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "duplicate addresses handed out");
    assert_eq!(total, 2 * n);
    let mut s = SqliteStore::open(&data, "net").unwrap();
    assert_eq!(s.list().unwrap().len(), 2 * n);
}

fn mean_us(f: &mut dyn FnMut(usize), iters: usize) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / iters as f64
}

/// Prints (does not assert) the mean cost of allocate+release with an empty
/// network and with 5000 existing allocations, with a persistent connection and
/// with a fresh open per operation (as a plugin process does).
#[test]
fn measure_allocate_release_is_flat() {
    let t = TempDir::new("perf");
    let set = RangeSet::new(
        0,
        "10.0.0.0/16",
        &[IpRange::new(ip("10.0.0.1"), ip("10.0.255.254"))],
        &[ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.255.255")],
    )
    .unwrap();
    let data = t.path().to_path_buf();
    let iters = 200;
    let mut report = Vec::new();
    for existing in [0usize, 5000] {
        let net = format!("perf{existing}");
        {
            let mut s = SqliteStore::open(&data, &net).unwrap();
            let allocs: Vec<Allocation> = (0..existing)
                .map(|i| Allocation {
                    ip: from_key(to_key(ip("10.0.0.2")) + i as u128),
                    range_set: Some(0),
                    owner: Owner::new(format!("pre{i}"), "eth0"),
                })
                .collect();
            let cursor: Vec<(u32, IpAddr)> = allocs.last().map(|a| (0, a.ip)).into_iter().collect();
            s.import(&allocs, &cursor).unwrap();
        }
        let mut s = SqliteStore::open(&data, &net).unwrap();
        let warm = mean_us(
            &mut |i| {
                let o = Owner::new(format!("w{i}"), "eth0");
                s.allocate(&o, &[Request::next(&set)]).unwrap();
                s.release(&o).unwrap();
            },
            iters,
        );
        drop(s);
        let cold = mean_us(
            &mut |i| {
                let o = Owner::new(format!("o{i}"), "eth0");
                let mut s = SqliteStore::open(&data, &net).unwrap();
                s.allocate(&o, &[Request::next(&set)]).unwrap();
                drop(s);
                let mut s = SqliteStore::open(&data, &net).unwrap();
                s.release(&o).unwrap();
            },
            iters,
        );
        report.push(format!(
            "existing={existing:5}: allocate+release {warm:8.1} us (open connection), {cold:8.1} us (open per op)"
        ));
    }
    for line in report {
        println!("[measure] {line}");
    }
}

#[test]
fn range_set_size_counts_ranges_less_their_excluded_addresses() {
    let set = v4_set(0, "10.0.0.1", "10.0.0.254", &["10.0.0.1", "10.0.0.255"]);
    // .255 is outside the range: only the gateway counts against it.
    assert_eq!(set.size(), 253);
    let two = RangeSet::new(
        1,
        "two",
        &[
            IpRange::new(ip("10.1.0.10"), ip("10.1.0.19")),
            IpRange::new(ip("10.2.0.0"), ip("10.2.0.4")),
        ],
        &[ip("10.2.0.0")],
    )
    .unwrap();
    assert_eq!(two.size(), 14);
    let v6 = RangeSet::new(
        2,
        "fd00::/64",
        &[IpRange::new(ip("fd00::1"), ip("fd00::ffff:ffff:ffff:ffff"))],
        &[ip("fd00::1")],
    )
    .unwrap();
    assert_eq!(v6.size(), (1u128 << 64) - 2);
}

#[test]
fn reader_reports_allocations_and_range_set_use_without_writing() {
    let dir = TempDir::new("reader");
    assert!(
        StoreReader::open(&dir.path().join("n/ipam.db"))
            .unwrap()
            .is_none(),
        "no database, no reader"
    );
    let mut st = SqliteStore::open(dir.path(), "n").unwrap();
    let a = v4_set(0, "10.0.0.1", "10.0.0.254", &["10.0.0.1"]);
    let b = v4_set(1, "10.9.0.1", "10.9.0.10", &[]);
    st.allocate(&owner(1), &[Request::next(&a), Request::next(&b)])
        .unwrap();
    st.allocate(&owner(2), &[Request::next(&a)]).unwrap();
    // An imported allocation carries no range set.
    st.import(
        &[Allocation {
            ip: ip("10.0.0.77"),
            range_set: None,
            owner: owner(3),
        }],
        &[],
    )
    .unwrap();
    let db = st.path().to_path_buf();
    let r = StoreReader::open(&db).unwrap().expect("a reader");
    let all = r.allocations().unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].owner, owner(1));
    let sets = r.range_sets().unwrap();
    assert_eq!(
        sets,
        vec![
            RangeSetUse {
                range_set: None,
                label: None,
                size: None,
                used: 1
            },
            RangeSetUse {
                range_set: Some(0),
                label: Some("10.0.0.1-10.0.0.254".into()),
                size: Some(253),
                used: 2
            },
            RangeSetUse {
                range_set: Some(1),
                label: Some("10.9.0.1-10.9.0.10".into()),
                size: Some(10),
                used: 1
            },
        ]
    );
    // Released addresses leave the set described, with nothing used.
    st.release(&owner(1)).unwrap();
    let sets = r.range_sets().unwrap();
    assert_eq!(sets[2].used, 0);
    assert_eq!(sets[2].size, Some(10));
    drop(r);
    drop(st);
    // The reader wrote nothing of its own (the writer's checkpoint may
    // have changed the file: compare a reader-only open instead).
    let before_reader = std::fs::read(&db).unwrap();
    let r = StoreReader::open(&db).unwrap().unwrap();
    r.range_sets().unwrap();
    drop(r);
    assert_eq!(std::fs::read(&db).unwrap(), before_reader);
}

#[test]
fn sandboxes_are_recorded_with_the_allocation_and_go_with_it() {
    let dir = TempDir::new("sandboxes");
    let mut st = SqliteStore::open(dir.path(), "n").unwrap();
    let a = v4_set(0, "10.0.0.1", "10.0.0.254", &[]);
    let sb = |n: &str| Sandbox {
        netns: format!("/run/netns/{n}"),
        boot_id: "b00t".into(),
    };
    st.allocate_in(&owner(1), &[Request::next(&a)], Some(&sb("one")))
        .unwrap();
    st.allocate_in(&owner(2), &[Request::next(&a)], Some(&sb("two")))
        .unwrap();
    // Without a sandbox (the trait's allocate): no row.
    st.allocate(&owner(3), &[Request::next(&a)]).unwrap();
    // A refused allocation records nothing.
    assert!(st
        .allocate_in(&owner(1), &[Request::next(&a)], Some(&sb("again")))
        .is_err());
    let db = st.path().to_path_buf();
    let read = || {
        let mut v = StoreReader::open(&db)
            .unwrap()
            .unwrap()
            .sandboxes()
            .unwrap();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert_eq!(read(), vec![(owner(1), sb("one")), (owner(2), sb("two"))]);
    st.release(&owner(1)).unwrap();
    assert_eq!(read(), vec![(owner(2), sb("two"))]);
    st.retain(&[owner(3)]).unwrap();
    assert_eq!(read(), vec![]);
}

#[test]
fn a_database_without_the_additions_reads_as_having_none() {
    let dir = TempDir::new("noadditions");
    let mut st = SqliteStore::open(dir.path(), "n").unwrap();
    let db = st.path().to_path_buf();
    let r = StoreReader::open(&db).unwrap().unwrap();
    assert_eq!(r.sandboxes().unwrap(), vec![]);
    assert_eq!(r.range_sets().unwrap(), vec![]);
    // Releasing nothing from it writes no table either.
    st.release(&owner(9)).unwrap();
    assert_eq!(r.sandboxes().unwrap(), vec![]);
}
