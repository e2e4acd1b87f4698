//! VXLAN devices with static FDB, neighbour and onlink route entries (the
//! overlay's per-peer state), between two "hosts" (namespaces) joined by a
//! veth underlay. Run as root; traffic stays between the two namespaces.

mod common;

use std::net::IpAddr;

use berth_kernel::{AddressOptions, Handle, Route, VethOptions, VxlanOptions};
use common::TestNs;
use ipnet::IpNet;

struct Host {
    ns: TestNs,
    h: Handle,
    vx: u32,
}

const MAC_A: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0xb];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Underlay address `under` on `uplink`, VXLAN `vx0` (vni 42, learning
/// off, fixed MAC) with the overlay address `overlay`/32.
fn host(ns: TestNs, uplink: &str, under: &str, overlay: &str, mac: [u8; 6]) -> Host {
    let mut h = Handle::in_netns(&ns.open()).unwrap();
    let up = h.link_by_name(uplink).unwrap().expect("uplink");
    h.add_address(
        up.index,
        format!("{under}/24").parse().unwrap(),
        &AddressOptions::default(),
    )
    .unwrap();
    h.set_up(up.index).unwrap();
    let lo = h.link_by_name("lo").unwrap().unwrap();
    h.set_up(lo.index).unwrap();
    let opts = VxlanOptions {
        vni: 42,
        underlay: Some(up.index),
        local: Some(ip(under)),
        mac: Some(mac),
        mtu: Some(1450),
        ..Default::default()
    };
    h.add_vxlan("vx0", &opts).unwrap();
    let vx = h.link_by_name("vx0").unwrap().expect("vx0");
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, 1450);
    h.add_address(
        vx.index,
        format!("{overlay}/32").parse().unwrap(),
        &AddressOptions::default(),
    )
    .unwrap();
    h.set_up(vx.index).unwrap();
    Host {
        ns,
        h,
        vx: vx.index,
    }
}

/// The per-peer state: FDB (peer VTEP MAC at its underlay address),
/// neighbour (peer overlay address at that MAC), onlink route to its
/// subnet.
fn add_peer(me: &mut Host, mac: [u8; 6], under: &str, overlay: &str, subnet: &str) {
    me.h.set_fdb(me.vx, mac, ip(under)).unwrap();
    me.h.set_neighbour(me.vx, ip(overlay), mac).unwrap();
    let mut r = Route::new(subnet.parse::<IpNet>().unwrap())
        .via(ip(overlay))
        .dev(me.vx);
    r.onlink = true;
    me.h.replace_route(&r).unwrap();
}

fn ping(from: &Host, to: &str) -> bool {
    from.ns
        .exec("busybox", &["ping", "-c", "1", "-W", "2", to])
        .0
}

#[test]
fn static_peers_reach_each_other_over_vxlan() {
    let (a, b) = (TestNs::new(), TestNs::new());
    let mut ha = Handle::in_netns(&a.open()).unwrap();
    ha.add_veth("ua", "ub", &b.open(), &VethOptions::default())
        .unwrap();
    drop(ha);
    let mut a = host(a, "ua", "192.168.250.1", "10.244.1.0", MAC_A);
    let mut b = host(b, "ub", "192.168.250.2", "10.244.2.0", MAC_B);

    // Learning is off: nothing reaches the peer before its entries exist.
    assert!(
        !ping(&a, "10.244.2.0"),
        "reached the peer without FDB/neighbour entries"
    );

    add_peer(
        &mut a,
        MAC_B,
        "192.168.250.2",
        "10.244.2.0",
        "10.244.2.0/24",
    );
    add_peer(
        &mut b,
        MAC_A,
        "192.168.250.1",
        "10.244.1.0",
        "10.244.1.0/24",
    );
    assert!(
        ping(&a, "10.244.2.0"),
        "A cannot reach B's VTEP over the overlay"
    );
    assert!(
        ping(&b, "10.244.1.0"),
        "B cannot reach A's VTEP over the overlay"
    );
    // Replacing an entry is idempotent.
    add_peer(
        &mut a,
        MAC_B,
        "192.168.250.2",
        "10.244.2.0",
        "10.244.2.0/24",
    );
    let fdb = a.ns.exec("bridge", &["fdb", "show", "dev", "vx0"]).1;
    assert!(
        fdb.contains("02:be:00:00:00:0b dst 192.168.250.2") && fdb.contains("permanent"),
        "{fdb}"
    );

    // The peer leaves: its entries go (twice: missing is fine), and with
    // them the reachability.
    for _ in 0..2 {
        a.h.del_neighbour(a.vx, ip("10.244.2.0")).unwrap();
        a.h.del_fdb(a.vx, MAC_B).unwrap();
    }
    assert!(
        !ping(&a, "10.244.2.0"),
        "B still reachable after its entries were removed"
    );

    assert!(a
        .h
        .add_vxlan(
            "vx9",
            &VxlanOptions {
                vni: 0,
                ..Default::default()
            }
        )
        .is_err());
    assert!(a
        .h
        .add_vxlan(
            "vx9",
            &VxlanOptions {
                vni: 1 << 24,
                ..Default::default()
            }
        )
        .is_err());
}
