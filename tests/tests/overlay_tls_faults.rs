//! berth-overlay against a production-like etcd (3 members, TLS and
//! client-certificate auth, `berth_tests::etcd_tls`), when things go wrong:
//! a client certificate renewed or expired under a running agent, TLS
//! settings that cannot work, and an etcd that is untrusted, refuses the
//! client certificate or is not there at all.
//!
//! Everything runs in namespaces of the test's own: an underlay "switch"
//! (bridge `sw0`, 192.168.77.0/24), the etcd members in one namespace on it
//! (.11 .12 .13) and hosts on it (.1 .2 .3). The root namespace is not
//! touched.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_tests::etcd_tls::*;
use berth_tests::overlay_hosts::{first_ip, within, OverlayHost, Switch};
use berth_tests::*;
use serde_json::{json, Value};

/// The overlay's VNI here: its devices are `berth.42` and `bov42`.
const VNI: u32 = 42;

/// Extra environment variables of a plugin run.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Words a message must hold.
type Words<'a> = &'a [&'a str];

/// An address of the underlay subnet with no host behind it: ARP for it
/// fails, so a connection to it times out (nothing refuses it).
const NOBODY: &str = "192.168.77.250";

/// The underlay switch, a namespace on it holding the three etcd members'
/// addresses (192.168.77.11-13 on one link), and hosts 1..=`hosts`.
struct Underlay {
    switch: Switch,
    etcd_ns: TestNetns,
    hosts: Vec<OverlayHost>,
}

fn underlay(tag: &str, hosts: u8) -> Underlay {
    require_root();
    let switch = Switch::new(&format!("{tag}s"));
    let etcd_ns = TestNetns::new(&format!("{tag}e"));
    let ips: Vec<IpAddr> = (11..=13).map(|n| IpAddr::from([192, 168, 77, n])).collect();
    switch.join(&etcd_ns, "p11", &ips);
    let hosts = (1..=hosts).map(|n| switch.host(tag, n)).collect();
    Underlay {
        switch,
        etcd_ns,
        hosts,
    }
}

impl Underlay {
    fn member_ips(&self) -> Vec<IpAddr> {
        (11..=13).map(|n| IpAddr::from([192, 168, 77, n])).collect()
    }

    /// The 3-member TLS cluster in the etcd namespace.
    fn cluster(&self, pki: &Pki) -> EtcdCluster {
        let ips = self.member_ips();
        let members: Vec<(&TestNetns, IpAddr)> =
            ips.iter().map(|ip| (&self.etcd_ns, *ip)).collect();
        let cluster = EtcdCluster::start(&members, pki);
        eprintln!(
            "etcd cluster of 3 (TLS, client-cert-auth) healthy in {:?} (switch {})",
            cluster.started_in(),
            self.switch.ns.name()
        );
        cluster
    }
}

/// The plugin's config for host `h`, node `node`, network `name`, with
/// `store.etcd` = `etcd`.
fn overlay_conf(h: &OverlayHost, name: &str, node: &str, etcd: Value) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": name, "type": "berth-overlay",
        "network": "10.244.0.0/16", "subnetLen": 24, "vni": VNI, "iface": "ovu",
        "dataDir": h.data.path(), "node": node,
        "store": {"etcd": etcd}
    })
}

/// `store.etcd` for the cluster over TLS with client certificate `cert`.
fn tls_etcd(cluster: &EtcdCluster, pki: &Pki, cert: &CertFiles, prefix: &str) -> Value {
    json!({
        "endpoints": cluster.endpoints(), "prefix": prefix,
        "caFile": pki.ca_file(), "certFile": cert.cert, "keyFile": cert.key,
    })
}

/// `base` with the keys of `changes` set (a null value removes the key).
fn with(base: &Value, changes: Value) -> Value {
    let mut v = base.clone();
    for (k, val) in changes.as_object().expect("changes is an object") {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v
}

fn routes(h: &OverlayHost) -> String {
    String::from_utf8_lossy(
        &h.ns
            .exec(&["ip", "route", "show", "dev", &format!("berth.{VNI}")])
            .stdout,
    )
    .into_owned()
}

/// The subnet the node of network `name` on `h` holds (its cache file),
/// "" until it holds one.
fn held_subnet(h: &OverlayHost, name: &str) -> String {
    fs::read_to_string(h.run.path().join(format!("{name}.subnet")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The keys under `prefix` in etcd.
fn keys_under(cluster: &EtcdCluster, prefix: &str) -> Vec<String> {
    cluster
        .etcdctl_ok(&["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Lines of an agent's log that say a round failed.
fn failing_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("trying again"))
        .map(str::to_string)
        .collect()
}

/// Nothing of the overlay was made by a refused ADD: no VXLAN device nor
/// bridge on the host, nothing but `lo` in the container, no key under
/// the prefix in etcd, no address allocated.
fn assert_nothing_made(
    what: &str,
    h: &OverlayHost,
    c: &TestNetns,
    cluster: &EtcdCluster,
    prefix: &str,
) {
    let links = h.ns.exec_ok(&["ip", "-br", "link"]);
    assert!(
        !links.contains(&format!("berth.{VNI}")) && !links.contains(&format!("bov{VNI}")),
        "{what}: the host has overlay links:\n{links}"
    );
    let inside: Vec<String> = c
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    assert_eq!(inside, ["lo"], "{what}: the container has links");
    let keys = keys_under(cluster, prefix);
    assert!(keys.is_empty(), "{what}: keys in etcd: {keys:?}");
    let data = dir_tree(h.data.path());
    assert!(
        data.is_empty(),
        "{what}: IPAM data written: {:?}",
        data.keys()
    );
}

/// `busybox ping` from `c` to `addr` once, waiting a second at most.
fn ping_once(c: &TestNetns, addr: &str) -> bool {
    c.exec(&["busybox", "ping", "-c1", "-W1", addr])
        .status
        .success()
}

/// A renewed client certificate is picked up by a running agent; an
/// expired one leaves the datapath as it is, is said once in the log
/// (naming the endpoints and the certificate), and once a valid one is
/// back the agent works again by itself and catches up with what it
/// missed.
#[test]
fn a_renewed_client_certificate_is_used_without_a_restart_and_an_expired_one_is_survived() {
    let t0 = Instant::now();
    let u = underlay("otfa", 3);
    let pki = Pki::new("otfa");
    let cluster = u.cluster(&pki);
    let (name, prefix) = ("otfa", "/berth-otfa");
    let certs: Vec<CertFiles> = ["h1", "h2", "h3"].iter().map(|cn| pki.client(cn)).collect();
    // leaseTTL 15: renewed every 5 s, so h1's own lease outlives the ~6 s
    // its certificate is expired below (h2 keeps h1 as a peer meanwhile).
    let confs: Vec<Value> = (0..3)
        .map(|i| {
            let mut e = tls_etcd(&cluster, &pki, &certs[i], prefix);
            e["leaseTTL"] = json!(15);
            e["dialTimeout"] = json!("1s");
            overlay_conf(&u.hosts[i], name, &format!("h{}", i + 1), e)
        })
        .collect();
    let (h1, h2, h3) = (&u.hosts[0], &u.hosts[1], &u.hosts[2]);
    let mut a1 = h1.agent(&confs[0]);
    let _a2 = h2.agent(&confs[1]);

    let ten = Duration::from_secs(10);
    assert!(
        within(ten, || !held_subnet(h1, name).is_empty()
            && !held_subnet(h2, name).is_empty()),
        "the agents took no subnets"
    );
    let (s1, s2) = (held_subnet(h1, name), held_subnet(h2, name));
    assert_ne!(s1, s2);
    assert!(
        within(ten, || h1.routes(&s2) && h2.routes(&s1)),
        "the agents did not program each other: h1 {s1}: {} / h2 {s2}: {}",
        routes(h1),
        routes(h2)
    );
    let route = h1.ns.exec_ok(&["ip", "route", "show", &s2]);
    assert!(route.contains(&format!("dev berth.{VNI}")), "{route}");
    eprintln!(
        "h1 holds {s1}, h2 {s2}; programmed after {:?}",
        t0.elapsed()
    );

    let (c1, c2) = (TestNetns::new("otfac1"), TestNetns::new("otfac2"));
    let r1 = h1
        .exec_env("ADD", "c1", &c1, &confs[0], &[])
        .expect_ok()
        .clone();
    let r2 = h2
        .exec_env("ADD", "c2", &c2, &confs[1], &[])
        .expect_ok()
        .clone();
    let (ip1, ip2) = (first_ip(&r1), first_ip(&r2));
    assert_ping(&c1, &ip2);
    assert_ping(&c2, &ip1);
    eprintln!("containers {ip1} (h1) and {ip2} (h2) talk over VXLAN");

    // Renewal on disk (same paths, same key, a new certificate).
    let before = cert_fingerprint(&certs[0].cert);
    let mark = a1.log().len();
    pki.reissue_client(&certs[0], "h1");
    let after = cert_fingerprint(&certs[0].cert);
    assert_ne!(before, after, "the certificate did not change on disk");
    assert!(!cert_expired(&certs[0].cert));
    assert!(
        within(Duration::from_secs(5), || a1
            .log_since(mark)
            .contains("TLS files changed")),
        "h1's agent did not read its renewed certificate:\n{}",
        a1.log_since(mark)
    );
    // h3 joins: h1 (on its renewed certificate) learns it within 2 s.
    let mut a3 = h3.agent(&confs[2]);
    assert!(
        within(ten, || !held_subnet(h3, name).is_empty()),
        "h3 took no subnet:\n{}",
        a3.log()
    );
    let s3 = held_subnet(h3, name);
    let leased = Instant::now();
    assert!(
        within(Duration::from_secs(2), || h1.routes(&s3)),
        "h1 did not program h3 ({s3}) within 2 s of its lease, after the renewal: {}",
        routes(h1)
    );
    eprintln!(
        "after the renewal ({before} -> {after}) h1 programmed h3 ({s3}) {:?} after its lease",
        leased.elapsed()
    );
    let renewed_log = a1.log_since(mark);
    assert!(
        failing_lines(&renewed_log).is_empty(),
        "h1's agent complained after a valid renewal:\n{renewed_log}"
    );

    // Expired in place: h1 cannot reach etcd any more.
    let mark = a1.log().len();
    pki.reissue_expired_client(&certs[0], "h1");
    let expired_at = Instant::now();
    assert!(cert_expired(&certs[0].cert));
    assert!(
        within(Duration::from_secs(5), || !failing_lines(
            &a1.log_since(mark)
        )
        .is_empty()),
        "h1's agent said nothing about its expired certificate:\n{}",
        a1.log_since(mark)
    );
    let said = failing_lines(&a1.log_since(mark))[0].clone();
    eprintln!(
        "{:?} after the expired certificate, h1's agent says: {said}",
        expired_at.elapsed()
    );
    for ep in cluster.endpoints() {
        assert!(
            said.contains(&ep),
            "the log line does not name {ep}: {said}"
        );
    }
    assert!(
        said.contains("certificate"),
        "the log line does not say the certificate is refused: {said}"
    );
    assert!(
        said.contains("the datapath stays as it is"),
        "the log line does not say the datapath stays: {said}"
    );

    // h3 leaves cleanly meanwhile: its lease is deleted; h2 sees it, h1
    // cannot.
    a3.terminate();
    let key3 = format!("{prefix}/{name}/subnets/{}", s3.replace('/', "-"));
    let keys = keys_under(&cluster, prefix);
    assert!(
        !keys.contains(&key3),
        "h3's lease outlived its clean stop: {keys:?}"
    );
    assert!(
        within(Duration::from_secs(3), || !h2.routes(&s3)),
        "h2 did not forget h3 after its clean stop: {}",
        routes(h2)
    );
    // For the next 3 s h1's datapath stays: routes to h2 and h3, and the
    // containers on h1 and h2 keep talking.
    let watch_from = Instant::now();
    let mut pings = 0;
    while watch_from.elapsed() < Duration::from_secs(3) {
        assert!(
            h1.routes(&s2) && h1.routes(&s3),
            "{:?} into the expired certificate, h1's datapath changed: {}",
            expired_at.elapsed(),
            routes(h1)
        );
        assert!(
            ping_once(&c1, &ip2) && ping_once(&c2, &ip1),
            "{:?} into the expired certificate, h1 <-> h2 containers do not talk",
            expired_at.elapsed()
        );
        pings += 2;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a1.running(), "h1's agent exited:\n{}", a1.log());
    let expired_log = a1.log_since(mark);
    let lines = failing_lines(&expired_log);
    eprintln!(
        "{} warning line(s) in {:?} with the expired certificate, {pings} pings fine",
        lines.len(),
        expired_at.elapsed()
    );
    // Checked at the end, so the recovery below is looked at too.
    let repeated = (lines.len() > 3).then(|| {
        format!(
            "h1's agent repeats itself while its certificate stays expired ({} lines in {:?}; \
             at most 3 wanted):\n{}",
            lines.len(),
            expired_at.elapsed(),
            lines.join("\n")
        )
    });

    // A valid certificate again: the agent goes on by itself and forgets
    // h3, which left while it could not see.
    let mark = a1.log().len();
    pki.reissue_client(&certs[0], "h1");
    let restored = Instant::now();
    assert!(
        within(Duration::from_secs(3), || a1
            .log_since(mark)
            .contains("working again")),
        "h1's agent did not say it works again within 3 s:\n{}",
        a1.log_since(mark)
    );
    assert!(
        within(
            Duration::from_secs(3).saturating_sub(restored.elapsed()),
            || !h1.routes(&s3)
        ),
        "h1 still has h3's route 3 s after its certificate was valid again: {}",
        routes(h1)
    );
    eprintln!(
        "valid again: h1 works again and forgot h3 {:?} later",
        restored.elapsed()
    );
    assert!(h1.routes(&s2), "h1 lost h2: {}", routes(h1));
    assert_ping(&c1, &ip2);
    assert_ping(&c2, &ip1);
    assert!(a1.running(), "h1's agent exited:\n{}", a1.log());
    let keys = keys_under(&cluster, prefix);
    assert_eq!(keys.len(), 2, "leases of h1 and h2 only: {keys:?}");
    eprintln!("test took {:?}", t0.elapsed());
    if let Some(repeated) = repeated {
        panic!("{repeated}");
    }
}

/// Each `store.etcd` TLS setting that cannot work is code 7 naming its key,
/// before anything is made or leased; the good settings then work.
#[test]
fn bad_tls_settings_are_refused_before_anything_is_made() {
    let t0 = Instant::now();
    let u = underlay("otfb", 1);
    let pki = Pki::new("otfb");
    let cluster = u.cluster(&pki);
    let h = &u.hosts[0];
    let (name, prefix) = ("otfb", "/berth-otfb");
    let good = pki.client("h1");
    let other = pki.client("other");
    let files = TempDir::new("otfb-files");
    let not_pem = files.path().join("ca.txt");
    fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let missing = files.path().join("no-such-ca.pem");
    let pw_dir = files.path().join("password.d");
    fs::create_dir(&pw_dir).unwrap();
    let no_pw = files.path().join("no-such-password");
    let base = tls_etcd(&cluster, &pki, &good, prefix);
    let http: Vec<String> = u
        .member_ips()
        .iter()
        .map(|ip| format!("http://{ip}:2379"))
        .collect();
    let no_roots = [
        ("SSL_CERT_FILE", "/nonexistent"),
        ("SSL_CERT_DIR", "/nonexistent"),
    ];
    let p = |p: &Path| json!(p);
    // (what, store.etcd, extra environment, the key named)
    let cases: Vec<(&str, Value, Env, &str)> = vec![
        (
            "caFile not PEM",
            with(&base, json!({"caFile": p(&not_pem)})),
            &[],
            "caFile",
        ),
        (
            "caFile missing",
            with(&base, json!({"caFile": p(&missing)})),
            &[],
            "caFile",
        ),
        (
            "keyFile of another certificate",
            with(&base, json!({"keyFile": p(&other.key)})),
            &[],
            "keyFile",
        ),
        (
            "certFile without keyFile",
            with(&base, json!({"keyFile": null})),
            &[],
            "keyFile",
        ),
        (
            "https without caFile, no system roots",
            with(&base, json!({"caFile": null})),
            &no_roots,
            "caFile",
        ),
        (
            "passwordFile missing",
            with(
                &base,
                json!({"username": "berth", "passwordFile": p(&no_pw)}),
            ),
            &[],
            "passwordFile",
        ),
        (
            "passwordFile a directory",
            with(
                &base,
                json!({"username": "berth", "passwordFile": p(&pw_dir)}),
            ),
            &[],
            "passwordFile",
        ),
        (
            "endpoints http and https",
            with(
                &base,
                json!({"endpoints": [cluster.endpoint(0), http[1].clone()], "caFile": null, "certFile": null, "keyFile": null}),
            ),
            &[],
            "endpoints",
        ),
        (
            "caFile with http endpoints",
            with(
                &base,
                json!({"endpoints": http.clone(), "certFile": null, "keyFile": null}),
            ),
            &[],
            "caFile",
        ),
        (
            "dialTimeout soon",
            with(&base, json!({"dialTimeout": "soon"})),
            &[],
            "dialTimeout",
        ),
    ];
    for (what, etcd, env, key) in &cases {
        let c = TestNetns::new("otfbc");
        let conf = overlay_conf(h, name, "h1", etcd.clone());
        let started = Instant::now();
        let out = h.exec_env("ADD", "c1", &c, &conf, env);
        let took = started.elapsed();
        assert_eq!(
            out.error_code(),
            Some(7),
            "{what}: not code 7 ({etcd}):\n{out}"
        );
        let msg = out.error_msg().unwrap_or_default().to_string();
        let field = format!("store.etcd.{key}");
        assert!(
            msg.contains(&field),
            "{what}: the message does not name {field}: {msg}"
        );
        assert_nothing_made(what, h, &c, &cluster, prefix);
        let run = dir_tree(h.run.path());
        assert!(
            run.is_empty(),
            "{what}: files written in the run dir: {:?}",
            run.keys()
        );
        eprintln!("{what}: code 7 in {took:?}: {msg}");
    }

    // The good settings work (the cases above failed for what they
    // changed), without system roots too.
    let c = TestNetns::new("otfbok");
    let conf = overlay_conf(h, name, "h1", base.clone());
    let r = h
        .exec_env("ADD", "c1", &c, &conf, &no_roots)
        .expect_ok()
        .clone();
    assert!(first_ip(&r).starts_with("10.244."), "{r}");
    assert_eq!(keys_under(&cluster, prefix).len(), 1);
    h.exec_env("DEL", "c1", &c, &conf, &no_roots).assert_ok();
    eprintln!("test took {:?}", t0.elapsed());
}

/// An etcd that cannot be trusted, that refuses the client certificate, or
/// that does not answer at all: code 11 (try again) within the dial
/// timeout, naming the endpoint and the reason, and nothing made.
#[test]
fn an_untrusted_or_unreachable_etcd_is_code_11_within_the_dial_timeout() {
    let t0 = Instant::now();
    let u = underlay("otfc", 1);
    let pki = Pki::new("otfc");
    let cluster = u.cluster(&pki);
    let h = &u.hosts[0];
    let (name, prefix) = ("otfc", "/berth-otfc");
    let good = pki.client("h1");
    let foreign = pki.foreign_client("h1");
    let base = tls_etcd(&cluster, &pki, &good, prefix);
    let nobody = format!("https://{NOBODY}:2379");
    let all = cluster.endpoints();
    // (what, store.etcd, limit, endpoints named, what the reason says)
    let cases: Vec<(&str, Value, Duration, Vec<String>, Words)> = vec![
        (
            "caFile of another CA",
            with(
                &base,
                json!({"caFile": pki.foreign_ca_file(), "dialTimeout": "1s"}),
            ),
            Duration::from_millis(2500),
            all.clone(),
            &["UnknownIssuer"],
        ),
        (
            "nobody at the address",
            with(
                &base,
                json!({"endpoints": [nobody.clone()], "dialTimeout": "700ms"}),
            ),
            Duration::from_secs(2),
            vec![nobody.clone()],
            &["timeout"],
        ),
        (
            "client certificate of another CA",
            with(
                &base,
                json!({"certFile": foreign.cert, "keyFile": foreign.key, "dialTimeout": "1s"}),
            ),
            Duration::from_millis(2500),
            all.clone(),
            &["refused", "client certificate"],
        ),
    ];
    for (what, etcd, limit, named, reason) in &cases {
        let c = TestNetns::new("otfcc");
        let conf = overlay_conf(h, name, "h1", etcd.clone());
        let started = Instant::now();
        let out = h.exec_env("ADD", "c1", &c, &conf, &[]);
        let took = started.elapsed();
        let msg = out.error_msg().unwrap_or_default().to_string();
        eprintln!("{what}: code {:?} in {took:?}: {msg}", out.error_code());
        assert_eq!(
            out.error_code(),
            Some(11),
            "{what}: not code 11 ({etcd}):\n{out}"
        );
        assert!(
            took < *limit,
            "{what}: answered in {took:?}, not within {limit:?}"
        );
        for ep in named {
            assert!(
                msg.contains(ep),
                "{what}: the message does not name {ep}: {msg}"
            );
        }
        for r in *reason {
            assert!(
                msg.contains(r),
                "{what}: the message does not say {r:?}: {msg}"
            );
        }
        assert_nothing_made(what, h, &c, &cluster, prefix);
    }

    // The same host with the right settings works.
    let c = TestNetns::new("otfcok");
    let conf = overlay_conf(h, name, "h1", base);
    h.exec_env("ADD", "c1", &c, &conf, &[]).expect_ok();
    assert_eq!(keys_under(&cluster, prefix).len(), 1);
    h.exec_env("DEL", "c1", &c, &conf, &[]).assert_ok();
    eprintln!("test took {:?}", t0.elapsed());
}
