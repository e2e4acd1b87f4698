//! `berth watch`, the reconciler (root): whatever removes berth's nftables
//! objects behind its back (`nft flush ruleset` from a firewall reload,
//! `nft -f` of a file that starts with `flush ruleset`, a deleted table,
//! a deleted map element, Docker's DOCKER-USER chain flushed), berth puts
//! them back from its records within a second, leaves everything else
//! alone, never brings back what a DEL removed, and keeps going when a
//! record names something that is gone.
//!
//! Each test builds a private "host" namespace (the plugins and the
//! watcher run there, so its bridges, its `inet berth` and `bridge berth`
//! tables and its iptables chains are the test's own) joined by a veth to
//! an "outside" namespace standing for another machine, as
//! tests/tests/portmap.rs does. Every `nft` and `iptables` command runs
//! inside that host namespace; all traffic goes between namespaces the
//! test made. The watcher is killed by its PID when a test ends (its log
//! is printed when the test fails), and deleting the namespaces removes
//! whatever a failed test left.
//!
//! What the tests rely on of `berth watch`: it is started as
//! `berth watch --interval SECS` with `BERTH_RUN_DIR` (the plugins' run
//! dir) and `BERTH_LOG=info`, runs until killed, logs a line containing
//! `watching` once its first check is done and a line containing
//! `repaired` for every repair.
//!
//! Every disruption is first made with no watcher running, to show that it
//! really breaks the published port (and that nothing else repairs it),
//! and only then with the watcher, which must undo it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_network::firewall::DOCKER_USER_COMMENT;
use berth_tests::*;
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

/// What `berth watch` must repair within.
const REPAIR_WITHIN: Duration = Duration::from_secs(1);
/// The watcher's periodic re-check (`--interval`), short so that a
/// resurrection by the periodic check would show within a test.
const INTERVAL_SECS: u64 = 2;
/// How long the watcher may take to print its `watching` line.
const STARTUP: Duration = Duration::from_secs(10);
/// A probe's connect timeout: a dropped SYN is not waited for (the next
/// probe, 20 ms later, is a new connection).
const PROBE_CONNECT: Duration = Duration::from_millis(200);
/// How long a connection that must fail (isolation) is given.
const BLOCKED_CONNECT: Duration = Duration::from_secs(1);
/// The TCP and UDP port of the service in the outside namespace, which
/// containers reach through the host's masquerade.
const FAR_PORT: u16 = 7070;

// ---------------------------------------------------------------------------
// fixture

struct Fx {
    host: TestNetns,
    outside: TestNetns,
    run: TempDir,
    data: TempDir,
    /// The host's and the outside's addresses on the link between them.
    host_v4: IpAddr,
    host_v6: IpAddr,
    out_v4: IpAddr,
    out_v6: IpAddr,
}

/// One berth-bridge network in the host namespace.
struct Net {
    name: String,
    bridge: String,
    v4: String,
    v6: String,
}

impl Net {
    fn gateway_v4(&self) -> IpAddr {
        subnet_host(&self.v4, 1)
    }
}

/// A container attached to a network: its namespace and berth-bridge's
/// result.
struct Container {
    cid: String,
    ns: TestNetns,
    result: Value,
}

impl Container {
    fn v4(&self) -> IpAddr {
        result_address(&self.result, true)
    }
}

impl Fx {
    fn new(tag: &str) -> Fx {
        require_root();
        let host = TestNetns::new(&format!("{tag}h"));
        let outside = TestNetns::new(&format!("{tag}o"));
        let OutsideLink {
            host_v4,
            host_v6,
            out_v4,
            out_v6,
        } = link_outside(&host, &outside);
        Fx {
            host,
            outside,
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
            host_v4,
            host_v6,
            out_v4,
            out_v6,
        }
    }

    /// A new network on bridge `bridge` (names in the host namespace are
    /// the test's own), with unique name and subnets.
    fn network(&self, bridge: &str) -> Net {
        let (v4, v6) = unique_subnets();
        Net {
            name: format!("rc{}-{}", std::process::id(), next_id()),
            bridge: bridge.to_string(),
            v4,
            v6,
        }
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        cid: &str,
        ns: &TestNetns,
        conf: &Value,
    ) -> PluginOutput {
        run_cni_in(&self.host, plugin, command, cid, ns, self.run.path(), conf)
    }

    /// Everything berth puts in the ruleset for a network: masquerade,
    /// forward marks, isolation (the default), hairpin, MAC spoof checks
    /// (table `bridge berth`), dual-stack addresses with default routes.
    fn bridge_conf(&self, net: &Net) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": net.name, "type": "berth-bridge",
            "bridge": net.bridge, "isGateway": true, "ipMasq": true,
            "hairpinMode": true, "macspoofchk": true,
            "ipam": {"type": "berth-ipam", "dataDir": self.data.path(),
                     "ranges": [[{"subnet": net.v4}], [{"subnet": net.v6}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
        })
    }

    fn portmap_conf(&self, net: &Net, mappings: Value, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": net.name, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings}
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// berth-bridge's ADD of container `cid` on `net`.
    fn attach(&self, net: &Net, cid: &str) -> Container {
        let ns = TestNetns::new(cid);
        ns.sh("ip link set lo up");
        let result = self
            .exec("berth-bridge", "ADD", cid, &ns, &self.bridge_conf(net))
            .expect_ok()
            .clone();
        Container {
            cid: cid.to_string(),
            ns,
            result,
        }
    }

    /// berth-portmap's ADD after the bridge's, publishing `mappings`.
    fn publish(&self, net: &Net, c: &Container, mappings: Value) {
        let conf = self.portmap_conf(net, mappings, Some(&c.result));
        self.exec("berth-portmap", "ADD", &c.cid, &c.ns, &conf)
            .assert_ok();
    }

    /// The runtime's DEL of the chain: portmap, then bridge. Returns both
    /// outputs (in that order) for the caller to judge.
    fn detach(&self, net: &Net, c: &Container) -> [PluginOutput; 2] {
        let pm = self.exec(
            "berth-portmap",
            "DEL",
            &c.cid,
            &c.ns,
            &self.portmap_conf(net, json!([]), None),
        );
        let br = self.exec("berth-bridge", "DEL", &c.cid, &c.ns, &self.bridge_conf(net));
        [pm, br]
    }

    /// Starts `berth watch` in the host namespace (see [`Watcher`]).
    fn watch(&self) -> Watcher {
        Watcher::start(&self.host, self.run.path())
    }

    /// Which of berth's tables the host namespace has.
    fn berth_tables(&self) -> Vec<String> {
        self.host
            .exec_ok(&["nft", "list", "tables"])
            .lines()
            .map(str::trim)
            .filter(|l| *l == "table inet berth" || *l == "table bridge berth")
            .map(String::from)
            .collect()
    }

    fn ruleset(&self) -> String {
        self.host.exec_ok(&["nft", "list", "ruleset"])
    }

    /// berth's rules in the host namespace's DOCKER-USER chain, as
    /// `iptables -S` prints them.
    fn docker_user_rules(&self) -> Vec<String> {
        self.host
            .exec_ok(&["iptables", "-S", "DOCKER-USER"])
            .lines()
            .filter(|l| l.contains(DOCKER_USER_COMMENT))
            .map(String::from)
            .collect()
    }

    /// A TCP request to the host's IPv4 address on `port`, from outside.
    fn published_v4(&self, port: u16) -> Result<String, String> {
        tcp_probe(&self.outside, at(self.host_v4, port), PROBE_CONNECT)
    }

    /// Polls the published `port` from outside until it answers; panics
    /// unless it does within [`REPAIR_WITHIN`] of `since`. Returns the time
    /// it took.
    fn assert_port_back(&self, port: u16, since: Instant, what: &str) -> Duration {
        let want = echo_peer(self.out_v4);
        let took = poll_until(since, REPAIR_WITHIN, || self.published_v4(port) == want);
        eprintln!("{what}: {}:{port} answered after {took:?}", self.host_v4);
        match took {
            Some(t) if t < REPAIR_WITHIN => t,
            _ => panic!(
                "{what}: {}:{port} did not answer within {REPAIR_WITHIN:?} (answered after \
                 {took:?}; now: {:?})\n{}",
                self.host_v4,
                self.published_v4(port),
                self.ruleset()
            ),
        }
    }

    /// Polls berth's tables until they are `baseline` again; panics unless
    /// they are within [`REPAIR_WITHIN`] of `since`.
    fn assert_objects_back(&self, baseline: &[String], since: Instant, what: &str) {
        let took = poll_until(since, REPAIR_WITHIN, || {
            berth_objects(&self.host) == baseline
        });
        eprintln!("{what}: berth's tables complete again after {took:?}");
        if matches!(took, Some(t) if t < REPAIR_WITHIN) {
            return;
        }
        let now: BTreeSet<String> = berth_objects(&self.host).into_iter().collect();
        let then: BTreeSet<String> = baseline.iter().cloned().collect();
        panic!(
            "{what}: berth's tables are not what they were within {REPAIR_WITHIN:?} \
             (took {took:?})\nmissing:\n{}\nnot there before:\n{}",
            then.difference(&now)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            now.difference(&then)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
}

/// Removes the numbers nft counts with (a counter's packets and bytes),
/// which change as traffic passes, not with what is installed.
fn strip_counts(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "packets" || k == "bytes" {
                    *x = Value::Null;
                } else {
                    strip_counts(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_counts),
        _ => {}
    }
}

/// berth's tables in `ns` (`inet berth`, `bridge berth`) as sorted lines:
/// each table, chain, set, map and rule without its handle, and each
/// element of a set or map on a line of its own. What is compared is what
/// is installed, not the order it was installed in (a rebuild from the
/// records may add a shared chain's rules or a set's elements in another
/// order than the ADDs did) nor the handles the kernel gave it.
fn berth_objects(ns: &TestNetns) -> Vec<String> {
    let out = ns.exec_ok(&["nft", "-j", "list", "ruleset"]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nft -j printed invalid JSON ({e}): {out}"));
    let mut lines = Vec::new();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let table = if kind == "table" {
            &body["name"]
        } else {
            &body["table"]
        };
        if table.as_str() != Some("berth") {
            continue;
        }
        let mut body = body.clone();
        let Some(fields) = body.as_object_mut() else {
            continue;
        };
        fields.remove("handle");
        let elems = fields.remove("elem");
        strip_counts(&mut body);
        for e in elems
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            lines.push(format!(
                "element of {} {}: {e}",
                body["family"].as_str().unwrap_or("?"),
                body["name"].as_str().unwrap_or("?")
            ));
        }
        lines.push(format!("{kind} {body}"));
    }
    lines.sort();
    lines
}

// ---------------------------------------------------------------------------
// the watcher

/// `berth watch` running in a test's host namespace, killed by its PID on
/// drop (its log is printed then if the test is failing).
struct Watcher {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Watcher {
    /// Starts it and waits (up to [`STARTUP`]) for its `watching` line:
    /// only then has it done its first check, and may the test disrupt
    /// anything.
    fn start(host: &TestNetns, run: &Path) -> Watcher {
        // `ip netns exec` and `env` exec in place: the child's PID is the
        // watcher's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", host.name(), "env", "-i"])
            .arg(format!(
                "PATH={}",
                std::env::var("PATH").unwrap_or_default()
            ))
            .arg(format!("BERTH_RUN_DIR={}", run.display()))
            .arg("BERTH_LOG=info")
            .arg(bin("berth"))
            .args(["watch", "--interval", &INTERVAL_SECS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {}: {e}", host.name()));
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("stderr"), log.clone());
        // (It logs on stderr; stdout is kept too, so nothing it says is lost.)
        collect(child.stdout.take().expect("stdout"), log.clone());
        let mut w = Watcher { child, log };
        let started = Instant::now();
        while !w.log().contains("watching") {
            if let Some(status) = w.child.try_wait().expect("wait for berth watch") {
                panic!("berth watch exited ({status}) before it was watching (log below)");
            }
            assert!(
                started.elapsed() < STARTUP,
                "berth watch printed no `watching` line within {STARTUP:?} (log below)"
            );
            std::thread::sleep(POLL);
        }
        eprintln!(
            "berth watch (pid {}) watching after {:?}",
            w.child.id(),
            started.elapsed()
        );
        w
    }

    /// Everything it printed so far.
    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many repairs it has logged.
    fn repairs(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("repaired"))
            .count()
    }

    /// Polls until it logs a repair after the `before`th one.
    fn assert_logs_a_repair(&self, before: usize, since: Instant, what: &str) {
        let took = poll_until(since, 2 * REPAIR_WITHIN, || self.repairs() > before);
        assert!(took.is_some(), "{what}: no `repaired` line was logged");
    }

    fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("wait for berth watch")
            .is_none()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- berth watch (pid {}) log ---\n{}--- end of log ---",
                self.child.id(),
                self.log()
            );
        }
    }
}

/// Appends what `pipe` carries to `log`, line by line, on a thread (which
/// ends when the watcher does).
fn collect(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    });
}

// ---------------------------------------------------------------------------
// disruptions

/// The ways test 1 takes berth's rules away.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// `nft flush ruleset`, as nftables.service's reload does.
    Flush,
    /// `nft delete table inet berth`.
    DeleteTable,
    /// `nft -f` of the user's own ruleset file, which starts with `flush
    /// ruleset`, as most /etc/nftables.conf do.
    LoadUserFile,
    /// One published port's element deleted from its map.
    DeleteElement,
}

/// Makes `d` happen in the host namespace. With `verify` (no watcher
/// running, so nothing can race the listing) it also checks a deleted
/// element is gone.
fn disrupt(fx: &Fx, d: Disruption, user_file: &Path, verify: bool) {
    match d {
        Disruption::Flush => {
            fx.host.exec_ok(&["nft", "flush", "ruleset"]);
        }
        Disruption::DeleteTable => {
            fx.host
                .exec_ok(&["nft", "delete", "table", "inet", "berth"]);
        }
        Disruption::LoadUserFile => {
            fx.host
                .exec_ok(&["nft", "-f", user_file.to_str().expect("UTF-8 path")]);
        }
        Disruption::DeleteElement => {
            let key = "tcp . 8080";
            // The IPv4 one (`pm4-<profile>`, see network/src/firewall/portmap.rs).
            let map = berth_maps_holding(Some(&fx.host), key)
                .into_iter()
                .find(|m| m.starts_with("pm4-"))
                .expect("the IPv4 map of port 8080");
            fx.host.exec_ok(&[
                "nft",
                "delete",
                "element",
                "inet",
                "berth",
                &map,
                &format!("{{ {key} }}"),
            ]);
            if verify {
                let listing = fx
                    .host
                    .exec_ok(&["nft", "list", "map", "inet", "berth", &map]);
                assert!(
                    !listing.contains(key),
                    "{key} is still in {map}:\n{listing}"
                );
            }
        }
    }
}

/// Everything that must work on test 1's networks: the published ports
/// over TCP and UDP, IPv4 and IPv6 from outside and via 127.0.0.1 on the
/// host; c2 reaching c1 on their bridge; c1's connections out masqueraded
/// to the host's address; c3 (another network) unable to reach c1.
fn assert_everything_works(
    fx: &Fx,
    a: &Net,
    c1: &Container,
    c2: &Container,
    c3: &Container,
    what: &str,
) {
    for (host, out) in [(fx.host_v4, fx.out_v4), (fx.host_v6, fx.out_v6)] {
        assert_eq!(
            tcp_ask(&fx.outside, at(host, 8080)),
            echo_peer(out),
            "{what}: tcp to {host}:8080 from outside"
        );
        assert_eq!(
            udp_ask(&fx.outside, at(host, 5353)).map(|r| r.0),
            echo_peer(out),
            "{what}: udp to {host}:5353 from outside"
        );
    }
    // Via loopback the source is masqueraded to the bridge's address.
    assert_eq!(
        tcp_ask(&fx.host, at("127.0.0.1".parse().unwrap(), 8080)),
        echo_peer(a.gateway_v4()),
        "{what}: tcp to 127.0.0.1:8080 on the host"
    );
    assert_eq!(
        tcp_ask(&c2.ns, at(c1.v4(), 80)),
        echo_peer(c2.v4()),
        "{what}: c2 to c1 on their bridge"
    );
    // The outside has no route to the containers' subnets: only the
    // masquerade lets a connection out and its replies back.
    for (host, out) in [(fx.host_v4, fx.out_v4), (fx.host_v6, fx.out_v6)] {
        assert_eq!(
            tcp_ask(&c1.ns, at(out, FAR_PORT)),
            echo_peer(host),
            "{what}: c1 to {out}:{FAR_PORT} outside, masqueraded"
        );
    }
    let across = tcp_probe(&c3.ns, at(c1.v4(), 80), BLOCKED_CONNECT);
    assert!(
        across.is_err(),
        "{what}: c3 on another network reached c1 directly (isolation): {across:?}"
    );
}

// ---------------------------------------------------------------------------
// tests

/// Each way of taking berth's rules away (a flush, the table deleted, the
/// user's own ruleset file loaded, one published port's element deleted)
/// breaks the published port while no watcher runs; `berth watch` repairs
/// it when it starts, and again within a second when it is running:
/// berth's two tables are again what the ADDs made, and everything works
/// as before (ports over both protocols and families, loopback, the
/// bridge, masquerade, isolation). The user's table loaded with the file
/// is left exactly as nft makes it without berth. A DEL of every container
/// removes berth's tables for good: the watcher does not bring back
/// networks that are gone.
#[test]
fn rules_come_back_within_a_second() {
    let fx = Fx::new("rcback");
    let a = fx.network("rcbra");
    let b = fx.network("rcbrb");
    let c1 = fx.attach(&a, "rcc1");
    let c2 = fx.attach(&a, "rcc2");
    let c3 = fx.attach(&b, "rcc3");
    fx.publish(
        &a,
        &c1,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]),
    );
    let _svc = PeerEcho::start(&c1.ns, 80, 53);
    let _far = PeerEcho::start(&fx.outside, FAR_PORT, FAR_PORT);
    assert_everything_works(&fx, &a, &c1, &c2, &c3, "after the ADDs");
    let baseline = berth_objects(&fx.host);
    let mut tables = fx.berth_tables();
    tables.sort();
    assert_eq!(
        tables,
        ["table bridge berth", "table inet berth"],
        "the ADDs made both of berth's tables"
    );

    let files = TempDir::new("rcuser");
    let user_file: PathBuf = files.path().join("user.nft");
    std::fs::write(&user_file, USER_RULESET).expect("write the user's ruleset file");
    // What the file makes where berth is not: the user's table as it must
    // stay in the host namespace.
    let scratch = TestNetns::new("rcscratch");
    scratch.exec_ok(&["nft", "-f", user_file.to_str().unwrap()]);
    let user_table = scratch.exec_ok(&["nft", "list", "table", "inet", "user"]);

    let mut watcher: Option<Watcher> = None;
    for d in [
        Disruption::Flush,
        Disruption::DeleteTable,
        Disruption::LoadUserFile,
        Disruption::DeleteElement,
    ] {
        // Without a watcher the disruption breaks the port, and nothing
        // else puts it back.
        drop(watcher.take());
        disrupt(&fx, d, &user_file, true);
        let dead = fx.published_v4(8080);
        assert!(
            dead.is_err(),
            "{d:?} without a watcher: the published port still answers: {dead:?}"
        );

        // The first check of a watcher started now repairs it.
        let w = watcher.insert(fx.watch());
        let started = Instant::now();
        fx.assert_port_back(8080, started, &format!("{d:?} before the watcher started"));
        fx.assert_objects_back(
            &baseline,
            started,
            &format!("{d:?} before the watcher started"),
        );

        // With the watcher running: back within a second.
        let before = w.repairs();
        disrupt(&fx, d, &user_file, false);
        let since = Instant::now();
        fx.assert_port_back(8080, since, &format!("{d:?} with the watcher running"));
        fx.assert_objects_back(&baseline, since, &format!("{d:?} with the watcher running"));
        w.assert_logs_a_repair(before, since, &format!("{d:?}"));
        assert_everything_works(&fx, &a, &c1, &c2, &c3, &format!("after {d:?}"));
        if matches!(d, Disruption::LoadUserFile) {
            assert_eq!(
                fx.host.exec_ok(&["nft", "list", "table", "inet", "user"]),
                user_table,
                "the watcher changed the user's own table"
            );
        }
    }
    let mut w = watcher.expect("the last watcher");

    for (net, c) in [(&a, &c1), (&a, &c2), (&b, &c3)] {
        for out in fx.detach(net, c) {
            out.assert_ok();
        }
    }
    let gone = poll_until(Instant::now(), 2 * REPAIR_WITHIN, || {
        fx.berth_tables().is_empty()
    });
    assert!(
        gone.is_some(),
        "berth's tables are still there after the last DEL:\n{}",
        fx.ruleset()
    );
    // Past the watcher's periodic check too: nothing comes back.
    std::thread::sleep(Duration::from_millis(INTERVAL_SECS * 1000 + 500));
    assert_eq!(
        fx.berth_tables(),
        Vec::<String>::new(),
        "the watcher brought back removed networks:\n{}",
        fx.ruleset()
    );
    for net in [&a, &b] {
        assert!(
            !fx.run.path().join(&net.name).exists(),
            "records of {} left: {:?}",
            net.name,
            dir_tree(fx.run.path()).keys().collect::<Vec<_>>()
        );
    }
    assert!(w.running(), "berth watch exited");
}

/// On a host where Docker set iptables' FORWARD policy to DROP, berth's
/// exception in DOCKER-USER is all that lets its containers' traffic
/// through. Flushing DOCKER-USER cuts the published port and the
/// container's way out while no watcher runs; the watcher puts berth's
/// rule back (once, not twice) when it starts and within a second of the
/// next flush, and both work again.
#[test]
fn docker_user_exception_comes_back() {
    let fx = Fx::new("rcdock");
    // Docker's setup, before berth's first ADD (iptables is the nft
    // backend on Debian, so these are nftables changes the watcher sees).
    fx.host
        .sh("iptables -N DOCKER-USER && iptables -P FORWARD DROP && \
         iptables -A FORWARD -j DOCKER-USER");
    let a = fx.network("rcbra");
    let c1 = fx.attach(&a, "rcd1");
    fx.publish(
        &a,
        &c1,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let _svc = PeerEcho::start(&c1.ns, 80, 53);
    let _far = PeerEcho::start(&fx.outside, FAR_PORT, FAR_PORT);
    let rules = fx.docker_user_rules();
    assert_eq!(
        rules.len(),
        1,
        "the first ADD adds berth's exception: {rules:?}"
    );
    // It accepts berth's forward mark, and nothing else.
    assert!(
        rules[0].contains("--mark 0x40000000/0x40000000") && rules[0].ends_with("-j ACCEPT"),
        "{rules:?}"
    );
    let out = at(fx.out_v4, FAR_PORT);
    assert_eq!(
        fx.published_v4(8080),
        echo_peer(fx.out_v4),
        "published port"
    );
    assert_eq!(
        tcp_ask(&c1.ns, out),
        echo_peer(fx.host_v4),
        "c1 to the outside"
    );

    fx.host.exec_ok(&["iptables", "-F", "DOCKER-USER"]);
    let dead = fx.published_v4(8080);
    assert!(
        dead.is_err(),
        "answering without berth's exception: {dead:?}"
    );
    let cut = tcp_probe(&c1.ns, out, PROBE_CONNECT);
    assert!(
        cut.is_err(),
        "c1 got out without berth's exception: {cut:?}"
    );

    let w = fx.watch();
    let started = Instant::now();
    fx.assert_port_back(
        8080,
        started,
        "DOCKER-USER flushed before the watcher started",
    );
    assert_eq!(
        fx.docker_user_rules().len(),
        1,
        "{:?}",
        fx.docker_user_rules()
    );

    let before = w.repairs();
    fx.host.exec_ok(&["iptables", "-F", "DOCKER-USER"]);
    let since = Instant::now();
    let back = poll_until(since, REPAIR_WITHIN, || !fx.docker_user_rules().is_empty());
    eprintln!("DOCKER-USER flushed: berth's rule back after {back:?}");
    assert!(
        matches!(back, Some(t) if t < REPAIR_WITHIN),
        "berth's rule is not back in DOCKER-USER within {REPAIR_WITHIN:?} ({back:?}):\n{}",
        fx.host.exec_ok(&["iptables", "-S"])
    );
    fx.assert_port_back(8080, since, "DOCKER-USER flushed with the watcher running");
    w.assert_logs_a_repair(before, since, "DOCKER-USER flushed");
    assert_eq!(
        tcp_ask(&c1.ns, out),
        echo_peer(fx.host_v4),
        "c1 to the outside"
    );
    assert_eq!(
        fx.docker_user_rules().len(),
        1,
        "{:?}",
        fx.docker_user_rules()
    );
}

/// A container's DEL (portmap, then bridge: the network's last
/// attachment, so its rules and both of berth's tables go) while a flush
/// makes the watcher rebuild the ruleset from the records at the same
/// instant, 20 times, the flush landing at a different point of the DEL
/// each time. Every DEL succeeds, and what it removed never comes back:
/// no table, no record, no address, no published port — whereas before
/// each DEL a flush is repaired, so the watcher is at work throughout.
#[test]
fn a_del_racing_the_reconciler_leaves_nothing() {
    let fx = Fx::new("rcrace");
    let a = fx.network("rcbra");
    let mut w = fx.watch();
    for round in 0..20u16 {
        let cid = format!("rcr{round}");
        let port = 9000 + round;
        let c = fx.attach(&a, &cid);
        fx.publish(
            &a,
            &c,
            json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]),
        );
        let svc = PeerEcho::start(&c.ns, 80, 53);
        fx.host.exec_ok(&["nft", "flush", "ruleset"]);
        fx.assert_port_back(port, Instant::now(), &format!("round {round}: flushed"));

        // The flush starts 0 to 36 ms into the DEL (the portmap DEL takes
        // a few ms, the bridge's last DEL tens).
        let delay = Duration::from_millis(4 * u64::from(round % 10));
        let (flush, [pm, br]) = std::thread::scope(|s| {
            let flush = s.spawn(|| {
                std::thread::sleep(delay);
                fx.host.exec(&["nft", "flush", "ruleset"])
            });
            let dels = fx.detach(&a, &c);
            (flush.join().expect("flush thread"), dels)
        });
        assert!(
            flush.status.success(),
            "round {round}: nft flush ruleset: {}",
            String::from_utf8_lossy(&flush.stderr)
        );
        pm.assert_ok();
        br.assert_ok();
        drop(svc);
        let gone = poll_until(Instant::now(), 2 * REPAIR_WITHIN, || {
            fx.berth_tables().is_empty()
        });
        assert!(
            gone.is_some(),
            "round {round}: berth's tables are back after the network's last DEL:\n{}",
            fx.ruleset()
        );
    }

    // Past the watcher's periodic check: still nothing.
    std::thread::sleep(Duration::from_millis(INTERVAL_SECS * 1000 + 500));
    assert_eq!(
        fx.berth_tables(),
        Vec::<String>::new(),
        "berth's tables came back:\n{}",
        fx.ruleset()
    );
    let tree = dir_tree(fx.run.path());
    let records: Vec<&String> = tree
        .keys()
        .filter(|k| *k == &a.name || k.starts_with(&format!("{}/", a.name)))
        .collect();
    assert_eq!(records, Vec::<&String>::new(), "records of {} left", a.name);
    let allocations: Vec<String> = SqliteStore::open_existing(fx.data.path(), &a.name)
        .unwrap_or_else(|e| panic!("open ipam store of {}: {e}", a.name))
        .map(|mut st| {
            st.list()
                .unwrap_or_else(|e| panic!("list ipam store of {}: {e}", a.name))
                .into_iter()
                .map(|al| format!("{} {}", al.ip, al.owner.container_id))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        allocations,
        Vec::<String>::new(),
        "berth-ipam allocations left"
    );
    let db = fx.run.path().join("ports.db");
    if db.exists() {
        let st = store::ports::PortStore::open(&db, &store::host::boot_id())
            .unwrap_or_else(|e| panic!("open the ports store: {e}"));
        let published: Vec<String> = st
            .all_attachments()
            .unwrap_or_else(|e| panic!("list the ports store: {e}"))
            .iter()
            .map(|p| p.owner.to_string())
            .collect();
        assert_eq!(published, Vec::<String>::new(), "published ports left");
    }
    assert!(w.running(), "berth watch exited");
}

/// A record naming a bridge that is gone (network B's bridge deleted by
/// hand) does not stop the watcher: after a flush it is still running
/// seconds later, network A's published port is back within a second, the
/// log names B, and the next flush is repaired too.
#[test]
fn bad_state_is_logged_and_the_watcher_keeps_going() {
    let fx = Fx::new("rcbad");
    let a = fx.network("rcbra");
    let b = fx.network("rcbrb");
    let ca = fx.attach(&a, "rcba");
    let cb = fx.attach(&b, "rcbb");
    fx.publish(
        &a,
        &ca,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    fx.publish(
        &b,
        &cb,
        json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]),
    );
    let _sa = PeerEcho::start(&ca.ns, 80, 53);
    let _sb = PeerEcho::start(&cb.ns, 80, 53);
    assert_eq!(
        fx.published_v4(8080),
        echo_peer(fx.out_v4),
        "A's published port"
    );
    assert_eq!(
        fx.published_v4(8081),
        echo_peer(fx.out_v4),
        "B's published port"
    );

    let mut w = fx.watch();
    fx.host.exec_ok(&["ip", "link", "del", &b.bridge]);
    let mark = w.log().len();
    fx.host.exec_ok(&["nft", "flush", "ruleset"]);
    let since = Instant::now();
    fx.assert_port_back(8080, since, "flushed with B's bridge gone");
    std::thread::sleep((since + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    assert!(w.running(), "berth watch exited on B's missing bridge");
    let said = w.log()[mark..].to_string();
    assert!(
        said.contains(&b.name) || said.contains(&b.bridge),
        "the log does not mention network {} or its bridge {}:\n{said}",
        b.name,
        b.bridge
    );

    fx.host.exec_ok(&["nft", "flush", "ruleset"]);
    fx.assert_port_back(8080, Instant::now(), "flushed again");
    assert!(w.running(), "berth watch exited");
}

/// The sysctls berth turned on, as (key, value) in the host namespace.
fn sysctls(fx: &Fx, keys: &[String]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| {
            let v = fx.host.exec_ok(&["sysctl", "-n", k]);
            (k.clone(), v.trim().to_string())
        })
        .collect()
}

/// The sysctls berth turned on for a network (forwarding of both families
/// for its gateways; route_localnet on the link of a port published on
/// 127.0.0.1) are turned on again when someone turns them off: they raise
/// no ruleset event, so the watcher's periodic check finds them, and the
/// published port answers again from outside and from 127.0.0.1.
#[test]
fn sysctls_berth_set_come_back() {
    let fx = Fx::new("rcsys");
    let a = fx.network("rcbra");
    let c1 = fx.attach(&a, "rcs1");
    fx.publish(
        &a,
        &c1,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let _svc = PeerEcho::start(&c1.ns, 80, 53);
    let keys = [
        "net.ipv4.ip_forward".to_string(),
        "net.ipv6.conf.all.forwarding".to_string(),
        // (A connection DNATed from 127.0.0.1 is routed out of the bridge.)
        format!("net.ipv4.conf.{}.route_localnet", a.bridge),
    ];
    let on: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), "1".into())).collect();
    assert_eq!(sysctls(&fx, &keys), on, "the ADDs turned them on");
    let loopback = at("127.0.0.1".parse().unwrap(), 8080);
    let turn_off = || {
        for k in &keys {
            fx.host.exec_ok(&["sysctl", "-q", "-w", &format!("{k}=0")]);
        }
    };

    // Without a watcher, the port is dead from outside and from loopback.
    turn_off();
    let dead = fx.published_v4(8080);
    assert!(dead.is_err(), "forwarding off, yet: {dead:?}");
    let dead = tcp_probe(&fx.host, loopback, PROBE_CONNECT);
    assert!(dead.is_err(), "route_localnet off, yet: {dead:?}");

    // A watcher's first check turns them on.
    let w = fx.watch();
    assert_eq!(sysctls(&fx, &keys), on, "after the watcher's first check");
    fx.assert_port_back(8080, Instant::now(), "sysctls off before the watcher");

    // With the watcher running: back by its next periodic check.
    let before = w.repairs();
    turn_off();
    let since = Instant::now();
    let limit = Duration::from_secs(INTERVAL_SECS) + REPAIR_WITHIN;
    let back = poll_until(since, limit, || sysctls(&fx, &keys) == on);
    eprintln!("sysctls turned off: on again after {back:?}");
    assert!(
        back.is_some(),
        "not on again within {limit:?}: {:?}",
        sysctls(&fx, &keys)
    );
    w.assert_logs_a_repair(before, since, "sysctls turned off");
    assert!(
        w.log().contains("sysctl net.ipv4.ip_forward"),
        "the log does not name the sysctl:\n{}",
        w.log()
    );
    assert_eq!(
        fx.published_v4(8080),
        echo_peer(fx.out_v4),
        "published port from outside"
    );
    assert_eq!(
        tcp_ask(&fx.host, loopback),
        echo_peer(a.gateway_v4()),
        "published port from 127.0.0.1"
    );
}

/// Someone else's table named `inet berth` (loaded after a flush, with a
/// set of berth's name but of another type) stops berth's network rules
/// from going back in: the watcher says so, naming the table, repairs what
/// does not conflict (`bridge berth`: the MAC spoof check and the quiet
/// chain) and keeps running; once that table is gone, everything is back
/// within a second.
#[test]
fn a_foreign_table_named_like_berths_is_reported() {
    let fx = Fx::new("rcfor");
    let a = fx.network("rcbra");
    let c1 = fx.attach(&a, "rcf1");
    fx.publish(
        &a,
        &c1,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let _svc = PeerEcho::start(&c1.ns, 80, 53);
    let baseline = berth_objects(&fx.host);
    let mut w = fx.watch();

    let files = TempDir::new("rcforeign");
    let file = files.path().join("theirs.nft");
    std::fs::write(
        &file,
        "flush ruleset\n\
         table inet berth {\n\
         \tset berth-bridges {\n\
         \t\ttype ipv4_addr\n\
         \t}\n\
         \tchain theirs {\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t}\n\
         }\n",
    )
    .expect("write the foreign ruleset");
    let mark = w.log().len();
    fx.host
        .exec_ok(&["nft", "-f", file.to_str().expect("UTF-8 path")]);
    let since = Instant::now();
    // What does not conflict is put back.
    let bridge_back = poll_until(since, REPAIR_WITHIN, || {
        fx.berth_tables()
            .contains(&"table bridge berth".to_string())
    });
    assert!(
        bridge_back.is_some(),
        "table bridge berth is not back:\n{}",
        fx.ruleset()
    );
    let named = poll_until(since, 2 * REPAIR_WITHIN, || {
        let said = w.log()[mark..].to_string();
        said.contains("inet berth") && said.contains(&a.name)
    });
    assert!(
        named.is_some(),
        "the log does not say that table inet berth stops network {}:\n{}",
        a.name,
        &w.log()[mark..]
    );
    // A repair that keeps failing is tried again about once a second,
    // not in a loop of its own attempts' ruleset events.
    let tries = |w: &Watcher| w.log().matches("could not be put back").count();
    let before = tries(&w);
    std::thread::sleep(Duration::from_secs(INTERVAL_SECS) + Duration::from_millis(500));
    let retried = tries(&w) - before;
    assert!(
        (1..=INTERVAL_SECS as usize + 2).contains(&retried),
        "{retried} attempts in {INTERVAL_SECS}.5 s"
    );
    assert!(w.running(), "berth watch exited on the foreign table");
    let theirs = fx
        .host
        .exec_ok(&["nft", "list", "set", "inet", "berth", "berth-bridges"]);
    assert!(
        theirs.contains("type ipv4_addr"),
        "their set was changed:\n{theirs}"
    );

    // Their table gone, berth's comes back whole.
    fx.host
        .exec_ok(&["nft", "delete", "table", "inet", "berth"]);
    let since = Instant::now();
    fx.assert_port_back(8080, since, "the foreign table deleted");
    fx.assert_objects_back(&baseline, since, "the foreign table deleted");
    assert!(w.running(), "berth watch exited");
}

/// A bind mount making a path read-only, undone on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(path: &Path) -> ReadOnly {
        let p = path.to_str().expect("UTF-8 path");
        run_ok("mount", &["--bind", p, p]);
        let guard = ReadOnly(path.to_path_buf());
        run_ok("mount", &["-o", "remount,bind,ro", p]);
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = run("umount", &[self.0.to_str().unwrap_or_default()]);
    }
}

/// With the plugins' run directory read-only (as /run can be), the
/// watcher still repairs everything from the records, which it only
/// reads: a flush before it starts and one while it runs are undone
/// within a second, it says that it could not note the rebuild, and the
/// directory is exactly as the ADDs left it.
#[test]
fn a_read_only_run_dir_is_still_repaired() {
    let fx = Fx::new("rcro");
    let a = fx.network("rcbra");
    let c1 = fx.attach(&a, "rcr1");
    fx.publish(
        &a,
        &c1,
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]),
    );
    let _svc = PeerEcho::start(&c1.ns, 80, 53);
    let baseline = berth_objects(&fx.host);
    let tree = dir_tree(fx.run.path());
    let ro = ReadOnly::mount(fx.run.path());
    let probe = fx.run.path().join("probe");
    assert!(
        std::fs::write(&probe, b"").is_err(),
        "the run dir is still writable"
    );

    fx.host.exec_ok(&["nft", "flush", "ruleset"]);
    assert!(fx.published_v4(8080).is_err(), "flushed, yet answering");
    let mut w = fx.watch();
    let started = Instant::now();
    fx.assert_port_back(8080, started, "flushed before the watcher, /run read-only");
    fx.assert_objects_back(
        &baseline,
        started,
        "flushed before the watcher, /run read-only",
    );

    let before = w.repairs();
    fx.host.exec_ok(&["nft", "flush", "ruleset"]);
    let since = Instant::now();
    fx.assert_port_back(
        8080,
        since,
        "flushed with the watcher running, /run read-only",
    );
    fx.assert_objects_back(
        &baseline,
        since,
        "flushed with the watcher running, /run read-only",
    );
    w.assert_logs_a_repair(before, since, "flushed, /run read-only");
    assert_eq!(
        udp_ask(&fx.outside, at(fx.host_v4, 5353)).map(|r| r.0),
        echo_peer(fx.out_v4),
        "udp to the published port"
    );
    let log = w.log().to_lowercase();
    assert!(
        log.contains("without noting it") && log.contains("readonly"),
        "the log does not say the store could not be written:\n{}",
        w.log()
    );
    assert!(w.running(), "berth watch exited");
    drop(ro);
    assert_eq!(
        dir_tree(fx.run.path()),
        tree,
        "the run dir changed under the watcher"
    );
}
