//! Addresses and routes against the real kernel, inside throw-away
//! namespaces (a veth pair with both ends in the namespace gives a link
//! with carrier; no traffic leaves the namespace). Run as root.

mod common;

use std::net::IpAddr;

use berth_kernel::{AddressOptions, Handle, Route, VethOptions};
use common::TestNs;
use ipnet::IpNet;
use serde_json::Value;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace with an up veth pair va/vb; returns va's index.
fn setup(ns: &TestNs) -> (Handle, u32) {
    let netns = ns.open();
    let mut h = Handle::in_netns(&netns).unwrap();
    h.add_veth("va", "vb", &netns, &VethOptions::default())
        .unwrap();
    let a = h.link_by_name("va").unwrap().unwrap().index;
    let b = h.link_by_name("vb").unwrap().unwrap().index;
    h.set_up(a).unwrap();
    h.set_up(b).unwrap();
    (h, a)
}

fn addr_info(ns: &TestNs, dev: &str) -> Vec<Value> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"].as_array().cloned().unwrap_or_default()
}

#[test]
fn addresses_add_list_delete() {
    let ns = TestNs::new();
    let (mut h, va) = setup(&ns);
    // loopback gets 127.0.0.1/8 (scope host) when brought up
    let lo = h.link_by_name("lo").unwrap().unwrap().index;
    h.set_up(lo).unwrap();
    let v4 = net("10.1.0.2/24");
    let v6 = net("fd00:1::2/64");

    h.add_address(va, v4, &AddressOptions::default()).unwrap();
    h.add_address(va, v6, &AddressOptions { nodad: true })
        .unwrap();

    let mine = h.addresses(Some(va)).unwrap();
    assert!(mine.iter().all(|a| a.index == va));
    let got: Vec<IpNet> = mine.iter().map(|a| a.addr).collect();
    assert!(got.contains(&v4), "{mine:?}");
    assert!(got.contains(&v6), "{mine:?}");
    assert_eq!(mine.iter().find(|a| a.addr == v4).unwrap().scope, 0);
    let all = h.addresses(None).unwrap();
    assert!(all.iter().any(|a| a.addr == v4));
    let lo_addr = all
        .iter()
        .find(|a| a.index == lo && a.addr == net("127.0.0.1/8"));
    assert_eq!(lo_addr.expect("lo's address is listed too").scope, 254);

    let info = addr_info(&ns, "va");
    let a4 = info
        .iter()
        .find(|a| a["local"] == "10.1.0.2")
        .expect("v4 shown by ip");
    assert_eq!(a4["prefixlen"], 24);
    assert_eq!(a4["broadcast"], "10.1.0.255");
    let a6 = info
        .iter()
        .find(|a| a["local"] == "fd00:1::2")
        .expect("v6 shown by ip");
    assert!(a6.get("tentative").is_none(), "nodad: usable at once: {a6}");

    let err = h
        .add_address(va, v4, &AddressOptions::default())
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    // the kernel's extended ack, if any, follows in parentheses
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "add address 10.1.0.2/24 on link {va}: File exists"
        )),
        "{text}"
    );

    h.del_address(va, v4).unwrap();
    h.del_address(va, v6).unwrap();
    let got: Vec<IpNet> = h
        .addresses(Some(va))
        .unwrap()
        .iter()
        .map(|a| a.addr)
        .collect();
    assert!(!got.contains(&v4) && !got.contains(&v6), "{got:?}");
    let err = h.del_address(va, v4).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL));
}

fn find<'a>(routes: &'a [Route], dst: &str, table: Option<u32>) -> Option<&'a Route> {
    routes
        .iter()
        .find(|r| r.dst == net(dst) && r.table == table)
}

#[test]
fn routes_add_list_replace_delete() {
    let ns = TestNs::new();
    let (mut h, va) = setup(&ns);
    h.add_address(va, net("10.1.0.2/24"), &AddressOptions::default())
        .unwrap();
    h.add_address(va, net("fd00:1::2/64"), &AddressOptions { nodad: true })
        .unwrap();

    // connected routes show up (kernel-made, scope link)
    let routes = h.routes().unwrap();
    let connected = find(&routes, "10.1.0.0/24", None).expect("prefix route");
    assert_eq!(connected.oif, Some(va));
    assert_eq!(connected.gateway, None);

    // v4 via gateway, with metric and mtu/advmss
    let mut r = Route::new(net("10.2.0.0/16")).via(ip("10.1.0.1")).dev(va);
    r.priority = Some(100);
    r.mtu = Some(1400);
    r.advmss = Some(1360);
    h.add_route(&r).unwrap();
    let routes = h.routes().unwrap();
    assert_eq!(find(&routes, "10.2.0.0/16", None), Some(&r));
    let err = h.add_route(&r).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert!(
        err.to_string()
            .starts_with("add route 10.2.0.0/16 via 10.1.0.1"),
        "{err}"
    );

    // replace changes it in place
    let mut r2 = r.clone();
    r2.mtu = Some(1300);
    h.replace_route(&r2).unwrap();
    let routes = h.routes().unwrap();
    assert_eq!(find(&routes, "10.2.0.0/16", None), Some(&r2));

    // default routes, both families
    let d4 = Route::default_via(ip("10.1.0.1")).dev(va);
    let mut d6 = Route::default_via(ip("fd00:1::1")).dev(va);
    h.add_route(&d4).unwrap();
    h.add_route(&d6).unwrap();
    let routes = h.routes().unwrap();
    assert_eq!(find(&routes, "0.0.0.0/0", None), Some(&d4));
    let got6 = find(&routes, "::/0", None).expect("v6 default");
    // IPv6 routes always carry a metric (1024 by default)
    d6.priority = got6.priority;
    assert_eq!(got6, &d6);
    let shown = ns.ip_json(&["route", "show", "default"]);
    assert_eq!(shown[0]["gateway"], "10.1.0.1");
    let shown = ns.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(shown[0]["gateway"], "fd00:1::1");

    // a gateway outside every connected subnet needs onlink
    let mut off = Route::new(net("10.3.0.0/16"))
        .via(ip("192.168.99.1"))
        .dev(va);
    let err = h.add_route(&off).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    off.onlink = true;
    h.add_route(&off).unwrap();
    let routes = h.routes().unwrap();
    assert_eq!(find(&routes, "10.3.0.0/16", None), Some(&off));
    let shown = ns.ip_json(&["route", "show", "10.3.0.0/16"]);
    assert!(
        shown[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{shown}"
    );

    // device route (scope link) in another table, and a v6 route
    let mut t = Route::new(net("10.4.0.0/16")).dev(va);
    t.table = Some(1000);
    h.add_route(&t).unwrap();
    let mut v6 = Route::new(net("fd00:2::/64")).via(ip("fd00:1::1")).dev(va);
    h.add_route(&v6).unwrap();
    let routes = h.routes().unwrap();
    assert_eq!(find(&routes, "10.4.0.0/16", Some(1000)), Some(&t));
    assert!(find(&routes, "10.4.0.0/16", None).is_none());
    let got = find(&routes, "fd00:2::/64", None).expect("v6 route");
    v6.priority = got.priority;
    assert_eq!(got, &v6);
    let shown = ns.ip_json(&["route", "show", "table", "1000"]);
    assert_eq!(shown[0]["dst"], "10.4.0.0/16");
    assert_eq!(shown[0]["scope"], "link");

    // delete everything we added; a second delete says ESRCH
    for route in [&r2, &d4, &d6, &off, &t, &v6] {
        h.del_route(route).unwrap();
    }
    let err = h.del_route(&r2).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ESRCH));
    let routes = h.routes().unwrap();
    for (dst, table) in [
        ("10.2.0.0/16", None),
        ("0.0.0.0/0", None),
        ("::/0", None),
        ("10.3.0.0/16", None),
        ("10.4.0.0/16", Some(1000)),
        ("fd00:2::/64", None),
    ] {
        assert!(find(&routes, dst, table).is_none(), "{dst} still there");
    }
    // deleting by key alone (no gateway/dev) works too
    let k = Route::new(net("10.5.0.0/16")).via(ip("10.1.0.1"));
    h.add_route(&k).unwrap();
    h.del_route(&Route::new(net("10.5.0.0/16"))).unwrap();
    assert!(find(&h.routes().unwrap(), "10.5.0.0/16", None).is_none());
}
