//! Netns handles and sysctls inside namespaces. Run as root.

mod common;

use std::path::Path;

use berth_kernel::{sysctl, Error, Handle, Netns};
use common::TestNs;

#[test]
fn open_rejects_missing_and_non_netns_paths() {
    let err = Netns::open(Path::new("/run/netns/berth-does-not-exist")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("berth-does-not-exist"), "{err}");

    // a plain file
    let err = Netns::open(Path::new("/proc/self/status")).unwrap_err();
    assert!(matches!(err, Error::NotNetns { .. }), "{err:?}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");

    // a namespace of another kind
    let err = Netns::open(Path::new("/proc/self/ns/mnt")).unwrap_err();
    assert!(matches!(err, Error::NotNetns { .. }), "{err:?}");
}

#[test]
fn identity_compares_namespaces() {
    let ns = TestNs::new();
    let a = ns.open();
    let b = Netns::open(&ns.path()).unwrap();
    assert_eq!(a.identity().unwrap(), b.identity().unwrap());

    let here = Netns::current().unwrap();
    assert_ne!(here.identity().unwrap(), a.identity().unwrap());
    let proc_self = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
    assert_eq!(here.identity().unwrap(), proc_self.identity().unwrap());

    // a thread inside the namespace sees it as its current one
    let inside = a
        .run(|| Netns::current().and_then(|n| n.identity()))
        .unwrap()
        .unwrap();
    assert_eq!(inside, a.identity().unwrap());
    // and the caller's thread did not move
    assert_eq!(
        Netns::current().unwrap().identity().unwrap(),
        here.identity().unwrap()
    );
}

#[test]
fn handle_in_netns_sees_only_that_namespace() {
    let ns = TestNs::new();
    let mut h = Handle::in_netns(&ns.open()).unwrap();
    let links = h.links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
}

#[test]
fn sysctl_inside_a_namespace() {
    let ns = TestNs::new();
    let netns = ns.open();
    // A harmless, per-namespace key: had the write gone to the host by
    // mistake, nothing would break.
    const KEY: &str = "net.ipv4.tcp_keepalive_probes";
    let host_before = sysctl::read(KEY).unwrap();

    let before = netns.run(|| sysctl::read(KEY)).unwrap().unwrap();
    let new = if before == "7" { "8" } else { "7" };
    netns
        .run(|| sysctl::write("net/ipv4/tcp_keepalive_probes", new))
        .unwrap()
        .unwrap();
    // writing the same value again is a no-op that succeeds
    netns.run(|| sysctl::write(KEY, new)).unwrap().unwrap();
    assert_eq!(netns.run(|| sysctl::read(KEY)).unwrap().unwrap(), new);
    let (ok, out, _) = ns.exec("cat", &["/proc/sys/net/ipv4/tcp_keepalive_probes"]);
    assert!(ok);
    assert_eq!(out.trim(), new);

    // the host was not touched
    assert_eq!(sysctl::read(KEY).unwrap(), host_before);

    let err = netns
        .run(|| sysctl::read("net.ipv4.no_such_key"))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("net.ipv4.no_such_key"), "{err}");
}

#[test]
fn run_propagates_panics() {
    let ns = TestNs::new();
    let netns = ns.open();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = netns.run(|| panic!("boom"));
    }));
    assert!(r.is_err());
}
