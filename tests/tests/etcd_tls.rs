//! The etcd-over-TLS test infrastructure itself (`berth_tests::etcd_tls`):
//! the openssl PKI, and a 3-member etcd 3.4 cluster with TLS and client
//! certificate auth on client and peer URLs, in namespaces of the tests'
//! own. Traffic stays in those namespaces.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_tests::etcd_tls::*;
use berth_tests::overlay_hosts::within;
use berth_tests::*;
use serde_json::{json, Value};

/// A namespace with `lo` up and a veth pair `e0`/`e1` inside it, `e0`
/// holding three addresses of a unique 10.x/24: all members in one
/// namespace, on one link.
fn one_namespace(tag: &str) -> (TestNetns, Vec<IpAddr>) {
    let ns = TestNetns::new(tag);
    let (v4, _) = unique_subnets();
    let ips: Vec<IpAddr> = (1..=3).map(|n| subnet_host(&v4, n)).collect();
    ns.sh(&format!(
        "ip link set lo up && ip link add e0 type veth peer name e1 && \
         ip addr add {}/24 dev e0 && ip addr add {}/24 dev e0 && ip addr add {}/24 dev e0 && \
         ip link set e1 up && ip link set e0 up",
        ips[0], ips[1], ips[2]
    ));
    (ns, ips)
}

/// A host namespace on the underlay switch (bridge `sw0` in `switch`), on
/// 192.168.77.<n>/24 via a veth, as `tests/overlay.rs` builds them.
fn switched_host(tag: &str, switch: &TestNetns, n: u8) -> (TestNetns, IpAddr) {
    let host = TestNetns::new(&format!("{tag}{n}"));
    switch.sh(&format!(
        "ip link add p{n} type veth peer name ovu netns {} && ip link set p{n} master sw0 up",
        host.name()
    ));
    host.sh(&format!(
        "ip link set lo up && ip addr add 192.168.77.{n}/24 dev ovu && ip link set ovu up"
    ));
    (host, IpAddr::from([192, 168, 77, n]))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// From inside `ns`: a plain-HTTP `GET /version` to `addr`; what came back
/// (Err: could not connect).
fn plain_http(ns: &TestNetns, addr: SocketAddr) -> Result<Vec<u8>, String> {
    ns.run(|| {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET /version HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // A reset or timeout after partial data still shows what came.
        let _ = s.read_to_end(&mut buf);
        Ok(buf)
    })
}

/// `client` (None: no certificate) gets nothing from member 0: etcdctl
/// fails without the value, curl gets no HTTP answer, and the member logs
/// the TLS rejection with `reason`.
fn assert_refused(cluster: &EtcdCluster, client: Option<&CertFiles>, what: &str, reason: &str) {
    let before = cluster.log(0).matches(reason).count();
    let t = Instant::now();
    let out = cluster.etcdctl_at(
        0,
        client,
        &[
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "get",
            "foo",
            "--print-value-only",
        ],
    );
    assert!(
        !out.status.success() && !stdout(&out).contains("bar"),
        "{what}: etcdctl got an answer: {}",
        text(&out)
    );
    eprintln!(
        "{what}: etcdctl refused in {:?}: {}",
        t.elapsed(),
        text(&out).lines().last().unwrap_or_default()
    );
    let r = cluster.gateway(0, client, "/v3/kv/range", r#"{"key":"Zm9v"}"#, &[]);
    assert_eq!(r.status, None, "{what}: the gateway answered: {r}");
    eprintln!("{what}: curl: {r}");
    assert!(
        within(Duration::from_secs(3), || cluster
            .log(0)
            .matches(reason)
            .count()
            > before),
        "{what}: m0 did not log a rejection with {reason:?}:\n{}",
        cluster.log_tail(0, 10)
    );
}

fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The public key of a certificate or a private key, PEM.
fn pubkey_of_cert(cert: &Path) -> String {
    run_ok(
        "openssl",
        &["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()],
    )
}

fn pubkey_of_key(key: &Path) -> String {
    run_ok(
        "openssl",
        &["pkey", "-pubout", "-in", key.to_str().unwrap()],
    )
}

fn cert_text(cert: &Path) -> String {
    run_ok(
        "openssl",
        &["x509", "-noout", "-text", "-in", cert.to_str().unwrap()],
    )
}

/// The PKI alone (no root needed): what each kind of certificate holds.
#[test]
fn pki_issues_what_etcd_needs() {
    let t0 = Instant::now();
    let pki = Pki::new("etpki");
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let server = pki.server("m0", &[ip]);
    let client = pki.client("alice");
    let nocn = pki.client_without_cn();
    let expired = pki.expired_client("alice");
    let foreign = pki.foreign_client("alice");
    use std::os::unix::fs::PermissionsExt;
    for c in [pki.ca(), &server, &client, &nocn, &expired, &foreign] {
        assert_eq!(first_line(&c.key), "-----BEGIN PRIVATE KEY-----", "{c:?}");
        let mode = std::fs::metadata(&c.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", c.key.display());
        assert_eq!(first_line(&c.cert), "-----BEGIN CERTIFICATE-----");
        assert_eq!(pubkey_of_cert(&c.cert), pubkey_of_key(&c.key));
    }
    for c in [&server, &client, &nocn] {
        assert!(cert_verifies(pki.ca_file(), &c.cert), "{c:?}");
        assert!(!cert_expired(&c.cert));
    }
    let st = cert_text(&server.cert);
    assert!(st.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    assert!(
        st.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:10.1.2.3"),
        "{st}"
    );
    assert_eq!(cert_subject(&server.cert), "CN = m0");
    let ct = cert_text(&client.cert);
    assert!(ct.contains("TLS Web Client Authentication") && !ct.contains("Server Authentication"));
    assert!(!ct.contains("Subject Alternative Name"), "{ct}");
    assert_eq!(cert_subject(&client.cert), "CN = alice");
    assert_eq!(cert_subject(&nocn.cert), "O = berth-tests");
    // Expired: right CA and signature, dates in 2020.
    assert!(cert_expired(&expired.cert));
    assert!(!cert_verifies(pki.ca_file(), &expired.cert));
    let et = cert_text(&expired.cert);
    assert!(et.contains("Not After : Jan  2 00:00:00 2020 GMT"), "{et}");
    assert!(et.contains("TLS Web Client Authentication"));
    assert!(run_ok(
        "openssl",
        &[
            "verify",
            "-no_check_time",
            "-CAfile",
            pki.ca_file().to_str().unwrap(),
            expired.cert.to_str().unwrap(),
        ],
    )
    .contains("OK"));
    // Foreign: another CA.
    assert!(!cert_verifies(pki.ca_file(), &foreign.cert));
    assert!(cert_verifies(pki.foreign_ca_file(), &foreign.cert));
    assert_ne!(pki.foreign_ca_file(), pki.ca_file());
    // Reissue: same paths, a new certificate for the same key.
    let before = cert_fingerprint(&client.cert);
    let key_before = std::fs::read(&client.key).unwrap();
    pki.reissue_client(&client, "alice");
    assert_ne!(cert_fingerprint(&client.cert), before);
    assert_eq!(std::fs::read(&client.key).unwrap(), key_before);
    assert!(cert_verifies(pki.ca_file(), &client.cert));
    // Rekey: a new key too, still matching.
    pki.rekey_client(&client, "alice");
    assert_ne!(std::fs::read(&client.key).unwrap(), key_before);
    assert_eq!(pubkey_of_cert(&client.cert), pubkey_of_key(&client.key));
    let mode = std::fs::metadata(&client.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // And an expired one in place.
    pki.reissue_expired_client(&client, "alice");
    assert!(cert_expired(&client.cert));
    assert_eq!(pubkey_of_cert(&client.cert), pubkey_of_key(&client.key));
    // No temp files left behind.
    let stray: Vec<String> = std::fs::read_dir(pki.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with("ca-db"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    eprintln!("pki test took {:?}", t0.elapsed());
}

/// Three members in one namespace on one link: etcdctl over TLS with a
/// client certificate works on every member; plain HTTP gets no answer, no
/// loopback listener; certificates of another CA, expired ones and none
/// are refused in the handshake.
#[test]
fn three_members_in_one_namespace() {
    require_root();
    let t0 = Instant::now();
    let (ns, ips) = one_namespace("etls1");
    let pki = Pki::new("etls1");
    let members: Vec<(&TestNetns, IpAddr)> = ips.iter().map(|ip| (&ns, *ip)).collect();
    let cluster = EtcdCluster::start(&members, &pki);
    eprintln!("cluster of 3 healthy in {:?}", cluster.started_in());
    assert_eq!(cluster.len(), 3);
    assert_eq!(
        cluster.endpoints(),
        ips.iter()
            .map(|ip| format!("https://{ip}:2379"))
            .collect::<Vec<_>>()
    );
    for i in 0..3 {
        let pid = cluster.pid(i).expect("running");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "etcd", "member {i}'s PID is not etcd's");
    }
    let members_out = cluster.etcdctl_ok(&["member", "list"]);
    assert_eq!(members_out.lines().count(), 3, "{members_out}");
    for ip in &ips {
        assert!(members_out.contains(&format!("https://{ip}:2379")));
        assert!(members_out.contains(&format!("https://{ip}:2380")));
    }

    cluster.etcdctl_ok(&["put", "foo", "bar"]);
    let alice = pki.client("alice");
    for i in 0..3 {
        let out = cluster.etcdctl_at(i, Some(&alice), &["get", "foo", "--print-value-only"]);
        assert!(out.status.success(), "member {i}: {}", text(&out));
        assert_eq!(stdout(&out), "bar\n", "member {i}");
    }
    let out = cluster.etcdctl_as(Some(&alice), &["put", "foo2", "baz"]);
    assert!(out.status.success(), "{}", text(&out));

    // Plain HTTP: the connection is taken (TLS port) but nothing answers.
    for ip in &ips {
        let got = plain_http(&ns, SocketAddr::new(*ip, 2379)).expect("connect");
        let got = String::from_utf8_lossy(&got);
        assert!(
            !got.starts_with("HTTP/") && !got.contains("etcdserver"),
            "plain HTTP to {ip} got an answer: {got:?}"
        );
        eprintln!("plain http://{ip}:2379/version got {got:?}");
    }
    let lo = plain_http(&ns, SocketAddr::from(([127, 0, 0, 1], 2379)))
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    assert!(lo.is_err(), "something listens on 127.0.0.1:2379: {lo:?}");

    assert_refused(
        &cluster,
        Some(&pki.foreign_client("alice")),
        "other CA",
        "certificate signed by unknown authority",
    );
    assert_refused(
        &cluster,
        Some(&pki.expired_client("alice")),
        "expired",
        "certificate has expired",
    );
    assert_refused(&cluster, None, "no cert", "didn't provide a certificate");
    eprintln!("test took {:?}", t0.elapsed());
}

/// Members in separate namespaces on an underlay switch: the leader is
/// killed, puts go on through the other two; without quorum they fail; the
/// members come back on their data and the cluster is healthy again, the
/// restarted members holding what was written while they were down.
#[test]
fn members_stop_and_come_back() {
    require_root();
    let t0 = Instant::now();
    let switch = TestNetns::new("etls2s");
    switch.sh("ip link add sw0 type bridge && ip link set sw0 up");
    let hosts: Vec<(TestNetns, IpAddr)> = (1..=3)
        .map(|n| switched_host("etls2h", &switch, n))
        .collect();
    let pki = Pki::new("etls2");
    let members: Vec<(&TestNetns, IpAddr)> = hosts.iter().map(|(h, ip)| (h, *ip)).collect();
    let cluster = EtcdCluster::start(&members, &pki);
    eprintln!(
        "cluster of 3 (separate namespaces) healthy in {:?}",
        cluster.started_in()
    );
    cluster.etcdctl_ok(&["put", "k0", "v0"]);

    let leader = cluster.leader().expect("a leader");
    eprintln!("leader: m{leader}");
    cluster.stop_member(leader);
    assert!(!cluster.is_running(leader));
    let t = Instant::now();
    let mut last = String::new();
    let put_ok = within(Duration::from_secs(15), || {
        let out = cluster.etcdctl(&["--command-timeout=2s", "put", "k1", "v1"]);
        last = text(&out);
        out.status.success()
    });
    assert!(put_ok, "no put through the other two members: {last}");
    eprintln!("put without the leader ok after {:?}", t.elapsed());
    let out = cluster.etcdctl(&["--command-timeout=2s", "endpoint", "health", "--cluster"]);
    assert!(
        !out.status.success(),
        "health with a member down: {}",
        text(&out)
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &others {
        let out = cluster.etcdctl_at(
            i,
            Some(cluster.root_cert()),
            &["get", "k1", "--print-value-only"],
        );
        assert_eq!(stdout(&out), "v1\n", "m{i}: {}", text(&out));
    }

    let t = Instant::now();
    cluster.start_member(leader);
    eprintln!("m{leader} back (healthy endpoint) in {:?}", t.elapsed());
    cluster
        .wait_healthy(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("not healthy after restart: {e}"));
    let got = within(Duration::from_secs(3), || {
        let out = cluster.etcdctl_at(
            leader,
            Some(cluster.root_cert()),
            &["get", "k1", "--consistency=s", "--print-value-only"],
        );
        stdout(&out) == "v1\n"
    });
    assert!(got, "m{leader} lacks what was written while it was down");

    // Two down: no quorum, writes fail.
    let (a, b) = (others[0], others[1]);
    cluster.stop_member(a);
    cluster.stop_member(b);
    let out = cluster.etcdctl(&["--command-timeout=2s", "put", "k2", "v2"]);
    assert!(!out.status.success(), "put without quorum: {}", text(&out));
    cluster.start_member(a);
    cluster.start_member(b);
    cluster
        .wait_healthy(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("not healthy after restarts: {e}"));
    cluster.etcdctl_ok(&["put", "k3", "v3"]);
    assert_eq!(
        cluster.etcdctl_ok(&["get", "k0", "--print-value-only"]),
        "v0\n"
    );
    eprintln!("test took {:?}", t0.elapsed());
}

/// `enable_auth`: the user with its password reads and writes under its
/// prefix only; a wrong password fails; the root certificate stays admin;
/// a certificate's CN is the user name when no password is given.
#[test]
fn auth_limits_a_user_to_its_prefix() {
    require_root();
    let (ns, ips) = one_namespace("etls3");
    let pki = Pki::new("etls3");
    let members: Vec<(&TestNetns, IpAddr)> = ips.iter().map(|ip| (&ns, *ip)).collect();
    let cluster = EtcdCluster::start(&members, &pki);
    cluster.etcdctl_ok(&["put", "/other/x", "before-auth"]);
    cluster.enable_auth("alice", "s3cret", "/berth/");
    let nocn = pki.client_without_cn();
    let as_alice = |args: &[&str]| {
        let mut full = vec!["--user=alice", "--password=s3cret"];
        full.extend_from_slice(args);
        cluster.etcdctl_as(Some(&nocn), &full)
    };
    let out = as_alice(&["put", "/berth/a", "1"]);
    assert!(
        out.status.success(),
        "alice under her prefix: {}",
        text(&out)
    );
    let out = as_alice(&["get", "/berth/a", "--print-value-only"]);
    assert_eq!(stdout(&out), "1\n", "{}", text(&out));
    let out = as_alice(&["put", "/other/y", "1"]);
    assert!(
        !out.status.success(),
        "alice outside her prefix: {}",
        text(&out)
    );
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    let out = as_alice(&["get", "/other/x"]);
    assert!(!out.status.success() && text(&out).contains("permission denied"));

    let out = cluster.etcdctl_as(
        Some(&nocn),
        &["--user=alice", "--password=wrong", "put", "/berth/a", "2"],
    );
    assert!(!out.status.success(), "wrong password: {}", text(&out));
    assert!(
        text(&out).contains("authentication failed, invalid user ID or password"),
        "{}",
        text(&out)
    );
    // Neither user nor CN.
    let out = cluster.etcdctl_as(Some(&nocn), &["put", "/berth/a", "3"]);
    assert!(!out.status.success(), "no identity: {}", text(&out));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));

    // The root certificate is still admin.
    let users = cluster.etcdctl_ok(&["user", "list"]);
    assert_eq!(users, "alice\nroot\n");
    cluster.etcdctl_ok(&["put", "/other/z", "root"]);
    assert_eq!(
        cluster.etcdctl_ok(&["get", "/berth/a", "--print-value-only"]),
        "1\n"
    );

    // CN = user name.
    let alice_cert = pki.client("alice");
    let out = cluster.etcdctl_as(Some(&alice_cert), &["put", "/berth/b", "cn"]);
    assert!(out.status.success(), "CN=alice: {}", text(&out));
    let out = cluster.etcdctl_as(Some(&alice_cert), &["put", "/other/b", "cn"]);
    assert!(!out.status.success() && text(&out).contains("permission denied"));
    let out = cluster.etcdctl_as(Some(&pki.client("mallory")), &["get", "/berth/b"]);
    assert!(!out.status.success() && text(&out).contains("permission denied"));

    // A second user on another prefix, auth already on.
    cluster.enable_auth("bob", "pw2", "/bob/");
    let out = cluster.etcdctl_as(
        Some(&nocn),
        &["--user=bob", "--password=pw2", "put", "/bob/k", "1"],
    );
    assert!(out.status.success(), "bob: {}", text(&out));
    let out = cluster.etcdctl_as(
        Some(&nocn),
        &["--user=bob", "--password=pw2", "get", "/berth/a"],
    );
    assert!(!out.status.success() && text(&out).contains("permission denied"));
}

fn code_and_error(r: &HttpReply) -> (Option<u64>, String) {
    let v = r.json().unwrap_or(Value::Null);
    (
        v["code"].as_u64(),
        v["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// The JSON gateway over TLS: with a client certificate before auth; then,
/// with auth on, by token (`/v3/auth/authenticate`, then `Authorization:
/// <token>`) with a certificate without CN; and what its errors look like.
#[test]
fn json_gateway_over_tls() {
    require_root();
    assert!(
        run("sh", &["-c", "command -v curl"]).status.success(),
        "this test observes the gateway with curl: install it"
    );
    let (ns, ips) = one_namespace("etls4");
    let pki = Pki::new("etls4");
    let members: Vec<(&TestNetns, IpAddr)> = ips.iter().map(|ip| (&ns, *ip)).collect();
    let cluster = EtcdCluster::start(&members, &pki);
    let alice_cn = pki.client("alice");
    let nocn = pki.client_without_cn();
    let kv = |k: &str, v: &str| {
        json!({"key": b64(k.as_bytes()), "value": b64(v.as_bytes())}).to_string()
    };
    let key = |k: &str| json!({"key": b64(k.as_bytes())}).to_string();
    let value_of = |r: &HttpReply| -> Option<String> {
        let v = r.json()?;
        let b = v["kvs"][0]["value"].as_str()?;
        String::from_utf8(unb64(b)?).ok()
    };

    // Before auth: any certificate of the CA, CN or not.
    let r = cluster.gateway(0, Some(&alice_cn), "/v3/kv/put", &kv("foo", "bar"), &[]);
    assert_eq!(r.status, Some(200), "{r}");
    assert!(r.json().unwrap()["header"]["revision"].is_string(), "{r}");
    let r = cluster.gateway(1, Some(&nocn), "/v3/kv/range", r#"{"key":"Zm9v"}"#, &[]);
    assert_eq!(r.status, Some(200), "{r}");
    assert_eq!(value_of(&r).as_deref(), Some("bar"), "{r}");
    eprintln!("range (no auth, cert without CN): {r}");
    let r = cluster.gateway(2, Some(&alice_cn), "/v3/kv/range", &key("nope"), &[]);
    assert_eq!(r.status, Some(200), "{r}");
    assert!(r.json().unwrap()["kvs"].is_null(), "{r}");

    cluster.enable_auth("alice", "s3cret", "/berth/");
    cluster.etcdctl_ok(&["put", "/berth/x", "1"]);

    // A certificate with a CN: refused on /v3/, token or not.
    let r = cluster.gateway(0, Some(&alice_cn), "/v3/kv/range", &key("/berth/x"), &[]);
    eprintln!("range with a CN cert, auth on: {r}");
    assert_eq!(r.status, Some(400), "{r}");
    assert!(r
        .body
        .contains("CommonName of client sending a request against gateway will be ignored"));
    let r = cluster.gateway(
        0,
        Some(&alice_cn),
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"s3cret"}"#,
        &[],
    );
    assert_eq!(r.status, Some(400), "authenticate with a CN cert: {r}");

    // No token.
    let r = cluster.gateway(0, Some(&nocn), "/v3/kv/range", &key("/berth/x"), &[]);
    eprintln!("range without token: {r}");
    assert_eq!(r.status, Some(400), "{r}");
    assert_eq!(
        code_and_error(&r),
        (Some(3), "etcdserver: user name is empty".into())
    );

    // Wrong password.
    let r = cluster
        .gateway_token(0, Some(&nocn), "alice", "wrong")
        .expect_err("token for a wrong password");
    eprintln!("authenticate with a wrong password: {r}");
    assert_eq!(r.status, Some(400), "{r}");
    assert_eq!(
        code_and_error(&r),
        (
            Some(3),
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );
    let r = cluster
        .gateway_token(0, Some(&nocn), "nobody", "x")
        .expect_err("token for no such user");
    assert_eq!(code_and_error(&r).0, Some(3), "{r}");

    // The token.
    let token = cluster
        .gateway_token(0, Some(&nocn), "alice", "s3cret")
        .unwrap_or_else(|r| panic!("authenticate: {r}"));
    eprintln!("token: {token}");
    let auth = [("Authorization", token.as_str())];
    let r = cluster.gateway(0, Some(&nocn), "/v3/kv/range", &key("/berth/x"), &auth);
    assert_eq!(r.status, Some(200), "{r}");
    assert_eq!(value_of(&r).as_deref(), Some("1"), "{r}");
    let r = cluster.gateway(0, Some(&nocn), "/v3/kv/put", &kv("/berth/g", "gw"), &auth);
    assert_eq!(r.status, Some(200), "{r}");
    assert_eq!(
        cluster.etcdctl_ok(&["get", "/berth/g", "--print-value-only"]),
        "gw\n"
    );
    // The same token on another member; the v3beta alias.
    let r = cluster.gateway(2, Some(&nocn), "/v3/kv/range", &key("/berth/g"), &auth);
    assert_eq!(value_of(&r).as_deref(), Some("gw"), "token on m2: {r}");
    let r = cluster.gateway(1, Some(&nocn), "/v3beta/kv/range", &key("/berth/g"), &auth);
    assert_eq!(value_of(&r).as_deref(), Some("gw"), "v3beta: {r}");
    // A prefix range (range_end = prefix + 1).
    let r = cluster.gateway(
        0,
        Some(&nocn),
        "/v3/kv/range",
        &json!({"key": b64(b"/berth/"), "range_end": b64(b"/berth0"), "keys_only": true})
            .to_string(),
        &auth,
    );
    assert_eq!(r.json().unwrap()["count"], "2", "{r}");

    // Permission denied.
    let r = cluster.gateway(0, Some(&nocn), "/v3/kv/put", &kv("/other/g", "gw"), &auth);
    eprintln!("put outside the prefix: {r}");
    assert_eq!(r.status, Some(403), "{r}");
    assert_eq!(
        code_and_error(&r),
        (Some(7), "etcdserver: permission denied".into())
    );
    let r = cluster.gateway(0, Some(&nocn), "/v3/kv/range", &key("/other/g"), &auth);
    assert_eq!(r.status, Some(403), "{r}");

    // Invalid token, and the token as a bearer token.
    let r = cluster.gateway(
        0,
        Some(&nocn),
        "/v3/kv/range",
        &key("/berth/x"),
        &[("Authorization", "bogus.1")],
    );
    eprintln!("range with an invalid token: {r}");
    assert_eq!(r.status, Some(401), "{r}");
    assert_eq!(
        code_and_error(&r),
        (Some(16), "etcdserver: invalid auth token".into())
    );
    let bearer = format!("Bearer {token}");
    let r = cluster.gateway(
        0,
        Some(&nocn),
        "/v3/kv/range",
        &key("/berth/x"),
        &[("Authorization", &bearer)],
    );
    eprintln!("range with `Authorization: Bearer <token>`: {r}");
    assert_eq!(r.status, Some(401), "{r}");

    // No client certificate at all: no answer.
    let r = cluster.gateway(0, None, "/v3/kv/range", &key("/berth/x"), &auth);
    assert_eq!(r.status, None, "{r}");
}
