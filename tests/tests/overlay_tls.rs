//! berth-overlay on a production-like etcd (root): a 3-member etcd 3.4
//! cluster with TLS on its client and peer URLs and client-certificate
//! auth (tests/src/etcd_tls.rs), members and hosts in namespaces on one
//! underlay switch (192.168.77.0/24). Hosts reach it with `https://`
//! endpoints, `caFile`, `certFile` and `keyFile`; one test turns etcd's
//! auth on and gives berth a user limited by role to its prefix. Traffic
//! stays between the test's namespaces; etcd and the agents are stopped
//! by PID.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use berth_tests::etcd_tls::{CertFiles, EtcdCluster, Pki};
use berth_tests::overlay_hosts::{first_ip, within, OverlayHost, Switch};
use berth_tests::*;
use serde_json::{json, Value};

const VNI: u32 = 42;

/// A switch, and an etcd cluster of three members in one namespace on
/// it (192.168.77.11-13).
fn cluster(tag: &str) -> (Switch, TestNetns, Pki, EtcdCluster) {
    require_root();
    let switch = Switch::new(&format!("{tag}s"));
    let etcd_ns = TestNetns::new(&format!("{tag}e"));
    let ips: Vec<IpAddr> = (11..=13).map(|n| IpAddr::from([192, 168, 77, n])).collect();
    switch.join(&etcd_ns, "pe", &ips);
    let pki = Pki::new(tag);
    let members: Vec<(&TestNetns, IpAddr)> = ips.iter().map(|ip| (&etcd_ns, *ip)).collect();
    let etcd = EtcdCluster::start(&members, &pki);
    (switch, etcd_ns, pki, etcd)
}

/// The network's conf on `host` as node `node`, reaching `etcd` with
/// `client`'s certificate; `extra` keys go into `store.etcd`.
fn conf(
    host: &OverlayHost,
    etcd: &EtcdCluster,
    client: &CertFiles,
    name: &str,
    node: &str,
    prefix: &str,
    extra: Value,
) -> Value {
    let mut e = json!({
        "endpoints": etcd.endpoints(), "prefix": prefix, "leaseTTL": 5,
        "caFile": etcd.ca_file(), "certFile": client.cert, "keyFile": client.key,
    });
    for (k, v) in extra.as_object().expect("an object") {
        e[k] = v.clone();
    }
    json!({
        "cniVersion": "1.1.0", "name": name, "type": "berth-overlay",
        "network": "10.244.0.0/16", "subnetLen": 24, "vni": VNI, "iface": "ovu",
        "node": node, "dataDir": host.data.path(), "store": {"etcd": e},
    })
}

/// The leases under `prefix` (their keys).
fn leases(etcd: &EtcdCluster, prefix: &str) -> Vec<String> {
    etcd.etcdctl_ok(&["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Two hosts lease subnets through the TLS cluster, program each other
/// and their containers ping across VXLAN. With the first endpoint's
/// member (and the leader, if that is another) stopped, an ADD still
/// works, and a host joining then is programmed on the others within a
/// second of its lease; the stopped member comes back.
#[test]
fn hosts_share_a_tls_etcd_and_ride_out_a_member_down() {
    let (switch, _etcd_ns, pki, etcd) = cluster("otc");
    let hosts: Vec<OverlayHost> = (1..=3).map(|n| switch.host("otch", n)).collect();
    let certs: Vec<CertFiles> = (1..=3).map(|n| pki.client(&format!("h{n}"))).collect();
    let confs: Vec<Value> = hosts
        .iter()
        .zip(&certs)
        .enumerate()
        .map(|(i, (h, c))| {
            conf(
                h,
                &etcd,
                c,
                "otc",
                &format!("h{}", i + 1),
                "/berth-tls",
                json!({}),
            )
        })
        .collect();
    let _a1 = hosts[0].agent(&confs[0]);
    let _a2 = hosts[1].agent(&confs[1]);
    assert!(
        within(Duration::from_secs(10), || hosts[0].peer_routes(VNI) == 1
            && hosts[1].peer_routes(VNI) == 1),
        "the two agents did not program each other over TLS"
    );
    let c1 = TestNetns::new("otcc1");
    let c2 = TestNetns::new("otcc2");
    let r1 = hosts[0]
        .exec("ADD", "c1", &c1, &confs[0])
        .expect_ok()
        .clone();
    let r2 = hosts[1]
        .exec("ADD", "c2", &c2, &confs[1])
        .expect_ok()
        .clone();
    assert_ping(&c1, &first_ip(&r2));
    assert_ping(&c2, &first_ip(&r1));

    // The first endpoint's member stopped, and the leader too if it is
    // another: a quorum (two of three, or one of three being down) stays.
    etcd.stop_member(0);
    let started = Instant::now();
    let c1b = TestNetns::new("otcc1b");
    let out = hosts[0].exec("ADD", "c1b", &c1b, &confs[0]);
    let took = started.elapsed();
    eprintln!("ADD with member 0 down: {took:?}");
    out.assert_ok();
    assert!(
        took < Duration::from_secs(3),
        "an ADD with one member down took {took:?}"
    );

    // A third host joins while the member is down.
    let prefix = "/berth-tls/otc/subnets/";
    let before = leases(&etcd, prefix).len();
    let _a3 = hosts[2].agent(&confs[2]);
    let mut leased = None;
    assert!(
        within(Duration::from_secs(10), || {
            let now = leases(&etcd, prefix).len() > before;
            if now && leased.is_none() {
                leased = Some(Instant::now());
            }
            now
        }),
        "the third host took no lease"
    );
    let leased = leased.expect("seen");
    assert!(
        within(Duration::from_secs(5), || hosts[0].peer_routes(VNI) == 2
            && hosts[1].peer_routes(VNI) == 2),
        "the joining host was not programmed on the others"
    );
    let programmed = leased.elapsed();
    eprintln!("joining host programmed {programmed:?} after its lease was seen");
    assert!(
        programmed < Duration::from_secs(1),
        "the joining host was programmed only {programmed:?} after its lease"
    );
    let c3 = TestNetns::new("otcc3");
    let r3 = hosts[2]
        .exec("ADD", "c3", &c3, &confs[2])
        .expect_ok()
        .clone();
    assert_ping(&c1, &first_ip(&r3));

    etcd.start_member(0);
    etcd.wait_healthy(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the cluster is not healthy again: {e}"));
    let c1c = TestNetns::new("otcc1c");
    hosts[0].exec("ADD", "c1c", &c1c, &confs[0]).assert_ok();
}

/// Every file under `dir` (recursively) holding `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    dir_tree(dir)
        .into_iter()
        .filter(|(_, bytes)| {
            bytes
                .as_ref()
                .is_some_and(|b| String::from_utf8_lossy(b).contains(needle))
        })
        .map(|(name, _)| name)
        .collect()
}

/// etcd's auth on, berth's user limited by role to its prefix: hosts with
/// a certificate without a CommonName (etcd's gateway refuses others once
/// auth is on) and `username` with `passwordFile` lease and program each
/// other. The token is kept in a 0600 file, and taken again once etcd no
/// longer knows it; a wrong password is code 7
/// naming `store.etcd.password` even with that token kept; a prefix
/// outside the role is code 7 naming `store.etcd.prefix`; a certificate
/// with a CommonName is code 7 naming `store.etcd.certFile`; nothing is
/// made by any of them. The password appears in no output, log, command
/// line, environment or file berth wrote.
#[test]
fn etcd_auth_keeps_berth_to_its_prefix_and_its_password_secret() {
    let (switch, _etcd_ns, pki, etcd) = cluster("ota");
    const PASSWORD: &str = "s3cret-berth-pw";
    etcd.enable_auth("berth", PASSWORD, "/berth-auth/");
    let hosts: Vec<OverlayHost> = (1..=2).map(|n| switch.host("otah", n)).collect();
    let secrets = TempDir::new("otapw");
    let pw = secrets.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("write password file");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").expect("write password file");
    let cert = pki.client_without_cn();
    let user = json!({"username": "berth", "passwordFile": pw});
    let confs: Vec<Value> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            conf(
                h,
                &etcd,
                &cert,
                "ota",
                &format!("a{}", i + 1),
                "/berth-auth",
                user.clone(),
            )
        })
        .collect();
    let mut agents = vec![hosts[0].agent(&confs[0]), hosts[1].agent(&confs[1])];
    assert!(
        within(Duration::from_secs(10), || hosts[0].peer_routes(VNI) == 1
            && hosts[1].peer_routes(VNI) == 1),
        "the agents did not program each other with etcd's auth on"
    );
    let c1 = TestNetns::new("otac1");
    let c2 = TestNetns::new("otac2");
    let mut outputs = Vec::new();
    let r1 = hosts[0].exec("ADD", "c1", &c1, &confs[0]);
    let r2 = hosts[1].exec("ADD", "c2", &c2, &confs[1]);
    assert_ping(&c1, &first_ip(r2.expect_ok()));
    assert_ping(&c2, &first_ip(r1.expect_ok()));
    outputs.extend([r1.to_string(), r2.to_string()]);

    // The token etcd gave, kept for the next ADDs: the owner's only.
    let token = hosts[0].run.path().join("ota.etcd-token");
    let mode = std::fs::metadata(&token)
        .unwrap_or_else(|e| panic!("no token file {}: {e}", token.display()))
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600, "token file mode");

    // A token etcd no longer knows (as one expired after etcd's
    // --auth-token-ttl) is replaced: the next plugin call that asks etcd
    // (STATUS always does; an ADD needs none while the agent's lease is
    // fresh) authenticates again and keeps the new one. (berth keeps each
    // token with a seal of the credentials it was given for; this one is
    // sealed like berth's.)
    let stale = "staletoken.1";
    let seal = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in ["berth", PASSWORD, stale] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    };
    std::fs::write(&token, format!("berth\n{stale}\n{seal}\n")).expect("write the stale token");
    let c3 = TestNetns::new("otac3");
    let r3 = hosts[0].exec("ADD", "c3", &c3, &confs[0]);
    r3.assert_ok();
    outputs.push(r3.to_string());
    hosts[0].exec("STATUS", "", &c3, &confs[0]).assert_ok();
    let kept = std::fs::read_to_string(&token).expect("token file");
    assert!(
        !kept.contains(stale) && kept.lines().count() == 3,
        "the stale token was not replaced: {kept}"
    );

    let bad = |label: &str, conf: Value, key: &str, outputs: &mut Vec<String>| {
        let c = TestNetns::new("otabad");
        let before = leases(&etcd, "/berth-auth/");
        let out = hosts[0].exec("ADD", &format!("bad-{label}"), &c, &conf);
        let err = out.expect_error(7);
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(key), "{label}: {msg}");
        assert_eq!(
            leases(&etcd, "/berth-auth/"),
            before,
            "{label}: leases changed"
        );
        let links = c.exec_ok(&["ip", "-br", "link"]);
        assert!(!links.contains("eth0"), "{label}: {links}");
        outputs.push(out.to_string());
    };
    let mut wrong_conf = confs[0].clone();
    wrong_conf["store"]["etcd"]["passwordFile"] = json!(wrong);
    bad("password", wrong_conf, "store.etcd.password", &mut outputs);
    let mut elsewhere = confs[0].clone();
    elsewhere["store"]["etcd"]["prefix"] = json!("/elsewhere");
    bad("prefix", elsewhere, "store.etcd.prefix", &mut outputs);
    let named = pki.client("a1");
    let mut with_cn = confs[0].clone();
    with_cn["store"]["etcd"]["certFile"] = json!(named.cert);
    with_cn["store"]["etcd"]["keyFile"] = json!(named.key);
    bad("common-name", with_cn, "store.etcd.certFile", &mut outputs);

    // The password is nowhere berth put anything.
    for agent in &agents {
        outputs.push(agent.log());
        for what in ["cmdline", "environ"] {
            let text = std::fs::read(format!("/proc/{}/{what}", agent.pid()))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            assert!(
                !text.contains(PASSWORD),
                "the password is in the agent's {what}"
            );
        }
    }
    for (i, text) in outputs.iter().enumerate() {
        assert!(
            !text.contains(PASSWORD),
            "output {i} shows the password:\n{text}"
        );
    }
    for h in &hosts {
        for dir in [h.run.path(), h.data.path()] {
            let holding = files_holding(dir, PASSWORD);
            assert!(
                holding.is_empty(),
                "files holding the password: {holding:?}"
            );
        }
    }
    for a in &mut agents {
        assert!(a.running(), "an agent exited");
    }
}
