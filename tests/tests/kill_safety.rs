//! Kill safety (root): berth-bridge (with macspoofchk) and berth-portmap,
//! chained as a runtime chains them, are SIGKILLed at random instants of
//! ADD, DEL and GC over hundreds of rounds. After each kill the test does
//! what a runtime does next: DEL for an ADD that failed, DEL again for a
//! DEL that failed; now and then it forgets a container altogether and
//! leaves it to GC, and a GC itself is killed too.
//!
//! Whenever the runtime holds nothing on the network, and at the end, the
//! host namespace must be as it was before the first round: no ruleset at all (neither `inet berth` nor `bridge berth`), the
//! same links and addresses, no `::1` proxy, nothing in the run dir, no
//! allocation and no claimed port. The plugins run in a private "host"
//! namespace with private run and data dirs, so nothing of the machine's
//! own is touched.
//!
//! The instants come from a seeded generator: BERTH_KILL_SEED replays a
//! run (the seed is printed).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use berth_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use store::{AllocationStore, SqliteStore};

const ROUNDS: usize = 300;
/// Containers that may be up at once: some rounds make a network's first
/// attachment or remove its last (its firewall comes and goes), others
/// not.
const SLOTS: usize = 3;
/// A kill instant is drawn from 0 up to one of these, so that it lands
/// anywhere in the fastest verb (an ADD after the first, ~3 ms) as often
/// as in the slowest (the last DEL, which also removes the network's
/// rules, ~90 ms).
const KILL_WITHIN_US: [u64; 4] = [3_000, 12_000, 40_000, 100_000];

struct Fx {
    host: TestNetns,
    run: TempDir,
    data: TempDir,
    name: String,
    bridge: String,
    v4: String,
    v6: String,
}

/// One verb of the chain, as the runtime ran it.
#[derive(Default)]
struct Tally {
    runs: usize,
    kills: usize,
}

impl Fx {
    fn new() -> Fx {
        require_root();
        let (v4, v6) = unique_subnets();
        Fx {
            host: TestNetns::new("kill"),
            run: TempDir::new("kill-run"),
            data: TempDir::new("kill-data"),
            name: format!("kill{}-{}", std::process::id(), next_id()),
            bridge: unique_name("bk", 15),
            v4,
            v6,
        }
    }

    /// The network's conflist as a runtime reads it.
    fn conflist(&self) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": self.name,
            "plugins": [
                {"type": "berth-bridge", "bridge": self.bridge, "isGateway": true,
                 "ipMasq": true, "hairpinMode": true, "macspoofchk": true,
                 "ipam": {"type": "berth-ipam", "dataDir": self.data.path(),
                          "ranges": [[{"subnet": self.v4}], [{"subnet": self.v6}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
                {"type": "berth-portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    /// Plugin `idx`'s stdin, with the runtime's portMappings on host port
    /// `port` (TCP and UDP; the runtime passes them on DEL too). Each
    /// container has its own port: one the runtime forgot holds its port
    /// until GC.
    fn conf(&self, idx: usize, port: u16, prev: Option<&Value>) -> Value {
        let mut c = plugin_conf(&self.conflist(), idx, prev);
        if idx == 1 {
            c["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": port, "containerPort": 53, "protocol": "udp"}]});
        }
        c
    }

    fn plugin(&self, idx: usize) -> &'static str {
        ["berth-bridge", "berth-portmap"][idx]
    }

    /// Runs one plugin for container `cid` in `ns`, SIGKILLed after
    /// `kill` if given.
    fn exec(
        &self,
        idx: usize,
        command: &str,
        cid: &str,
        ns: &str,
        conf: &Value,
        kill: Option<Duration>,
    ) -> (bool, PluginOutput) {
        let path = bin_dir();
        // GC has no container: its variables are left unset.
        let env: Vec<(&str, &str)> = [
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", ns),
            ("CNI_IFNAME", if cid.is_empty() { "" } else { "eth0" }),
            ("CNI_PATH", path.to_str().unwrap_or_default()),
            (
                "BERTH_RUN_DIR",
                self.run.path().to_str().unwrap_or_default(),
            ),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        let bin = bin(self.plugin(idx));
        match kill {
            Some(after) => run_plugin_in_killed(&self.host, &bin, command, &env, conf, after),
            None => (false, run_plugin_in(&self.host, &bin, command, &env, conf)),
        }
    }

    /// GC of both plugins, keeping `valid` (container IDs, ifname eth0).
    fn gc_conf(&self, idx: usize, valid: &[String]) -> Value {
        let mut c = plugin_conf(&self.conflist(), idx, None);
        c["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        c
    }

    /// What the host namespace and the state dirs hold, for comparing.
    fn snapshot(&self) -> Snapshot {
        let links = self
            .host
            .ip_json(&["link", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            // (Not the operational state: the kernel updates a bridge's
            // carrier lazily after its last port goes.)
            .map(|l| {
                format!(
                    "{} master={}",
                    l["ifname"].as_str().unwrap_or("?"),
                    l["master"].as_str().unwrap_or("-")
                )
            })
            .collect();
        let addresses = self
            .host
            .ip_json(&["addr", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|l| {
                let name = l["ifname"].as_str().unwrap_or("?").to_string();
                l["addr_info"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| a["scope"] != "link")
                    .map(move |a| format!("{name} {}/{}", a["local"], a["prefixlen"]))
            })
            .collect();
        // The ports store is SQLite: its bytes change with every use, what
        // it holds is read below.
        let mut run_dir = dir_tree(self.run.path());
        run_dir.retain(|path, _| !path.starts_with("ports.db"));
        Snapshot {
            ruleset: self.host.exec_ok(&["nft", "list", "ruleset"]),
            links,
            addresses,
            run_dir,
            proxies: proxies_in(&self.host),
            allocations: self.allocations(),
            published: self.published(),
        }
    }

    fn allocations(&self) -> Vec<String> {
        let Some(mut st) = SqliteStore::open_existing(self.data.path(), &self.name)
            .unwrap_or_else(|e| panic!("open ipam store of {}: {e}", self.name))
        else {
            return Vec::new();
        };
        st.list()
            .unwrap_or_else(|e| panic!("list ipam store of {}: {e}", self.name))
            .into_iter()
            .map(|a| format!("{} {}", a.ip, a.owner.container_id))
            .collect()
    }

    /// The ports store's attachments (their owners).
    fn published(&self) -> Vec<String> {
        let db = self.run.path().join("ports.db");
        if !db.exists() {
            return Vec::new();
        }
        let st = store::ports::PortStore::open(&db, &store::host::boot_id())
            .unwrap_or_else(|e| panic!("open the ports store: {e}"));
        st.all_attachments()
            .unwrap_or_else(|e| panic!("list the ports store: {e}"))
            .iter()
            .map(|p| p.owner.to_string())
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    ruleset: String,
    links: Vec<String>,
    addresses: Vec<String>,
    run_dir: BTreeMap<String, Option<Vec<u8>>>,
    proxies: Vec<String>,
    allocations: Vec<String>,
    published: Vec<String>,
}

/// The command lines of berth-portmap's `::1` proxies running in `ns`.
fn proxies_in(ns: &TestNetns) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    // A named netns and a process's ns/net stat as the same nsfs inode.
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let want = inode(ns.path());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("proxy")
            && inode(Path::new(&format!("/proc/{pid}/ns/net"))) == want
        {
            found.push(args.join(" "));
        }
    }
    found.sort();
    found
}

/// A container slot: its netns and, while the runtime thinks a
/// container is up in it, the container's ID and host port.
struct Slot {
    ns: TestNetns,
    up: Option<(String, u16)>,
}

#[test]
fn plugins_killed_at_random_instants_leave_nothing_behind() {
    let fx = Fx::new();
    let seed = std::env::var("BERTH_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("kill safety: BERTH_KILL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    fx.host.sh("ip link set lo up");

    // A first container up and down unkilled: what berth keeps between
    // containers (the bridge, its gateway addresses) is in the baseline,
    // and a network with nothing attached has no rules at all.
    let warm = TestNetns::new("killw");
    let (_, out) = fx.exec(
        0,
        "ADD",
        "warm",
        warm.path_str(),
        &fx.conf(0, 19999, None),
        None,
    );
    let prev = out.expect_ok().clone();
    fx.exec(
        1,
        "ADD",
        "warm",
        warm.path_str(),
        &fx.conf(1, 19999, Some(&prev)),
        None,
    )
    .1
    .assert_ok();
    for idx in [1, 0] {
        fx.exec(
            idx,
            "DEL",
            "warm",
            warm.path_str(),
            &fx.conf(idx, 19999, None),
            None,
        )
        .1
        .assert_ok();
    }
    let baseline = fx.snapshot();
    assert_eq!(baseline.ruleset.trim(), "", "rules left after the last DEL");
    assert_eq!(baseline.proxies, Vec::<String>::new());

    let mut slots: Vec<Slot> = (0..SLOTS)
        .map(|i| Slot {
            ns: TestNetns::new(&format!("kill{i}")),
            up: None,
        })
        .collect();
    // Containers the runtime forgot (their netns kept until GC is done).
    let mut forgotten: Vec<TestNetns> = Vec::new();
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut idle_checks = 0;
    let kill = |rng: &mut StdRng| {
        rng.random_bool(0.6).then(|| {
            let within = KILL_WITHIN_US[rng.random_range(0..KILL_WITHIN_US.len())];
            Duration::from_micros(rng.random_range(0..within))
        })
    };
    let count = |tally: &mut BTreeMap<&str, Tally>, what, killed: bool| {
        let t = tally.entry(what).or_default();
        t.runs += 1;
        t.kills += usize::from(killed);
    };

    for round in 0..ROUNDS {
        let s = rng.random_range(0..SLOTS);
        let ns = slots[s].ns.path_str().to_string();
        match slots[s].up.clone() {
            None => {
                let (id, port) = (format!("k{round}"), 20000 + round as u16);
                // ADD bridge, then portmap with its result; a kill or a
                // failure anywhere gets the runtime's DEL of the chain.
                let (killed, out) =
                    fx.exec(0, "ADD", &id, &ns, &fx.conf(0, port, None), kill(&mut rng));
                count(&mut tally, "bridge ADD", killed);
                let mut ok = !killed;
                if !killed {
                    let prev = out.expect_ok().clone();
                    let (killed, out) = fx.exec(
                        1,
                        "ADD",
                        &id,
                        &ns,
                        &fx.conf(1, port, Some(&prev)),
                        kill(&mut rng),
                    );
                    count(&mut tally, "portmap ADD", killed);
                    if !killed {
                        out.assert_ok();
                    }
                    ok = !killed;
                }
                if ok {
                    slots[s].up = Some((id, port));
                } else if rng.random_bool(0.1) {
                    // The runtime lost track of it: only GC will tell.
                    let fresh = TestNetns::new(&format!("kill{s}"));
                    forgotten.push(std::mem::replace(&mut slots[s].ns, fresh));
                } else {
                    for idx in [1, 0] {
                        fx.exec(idx, "DEL", &id, &ns, &fx.conf(idx, port, None), None)
                            .1
                            .assert_ok();
                    }
                }
            }
            Some((id, port)) => {
                // DEL portmap, then bridge; a killed DEL is retried.
                for (idx, what) in [(1, "portmap DEL"), (0, "bridge DEL")] {
                    let conf = fx.conf(idx, port, None);
                    let (killed, out) = fx.exec(idx, "DEL", &id, &ns, &conf, kill(&mut rng));
                    count(&mut tally, what, killed);
                    if killed {
                        fx.exec(idx, "DEL", &id, &ns, &conf, None).1.assert_ok();
                    } else {
                        out.assert_ok();
                    }
                }
                slots[s].up = None;
            }
        }
        if round % 50 == 49 {
            // A GC keeping what the runtime knows is up, killed or not;
            // killed, it is run again.
            let valid: Vec<String> = slots
                .iter()
                .filter_map(|s| s.up.as_ref().map(|u| u.0.clone()))
                .collect();
            for (idx, what) in [(1, "portmap GC"), (0, "bridge GC")] {
                let conf = fx.gc_conf(idx, &valid);
                let (killed, out) = fx.exec(idx, "GC", "", "", &conf, kill(&mut rng));
                count(&mut tally, what, killed);
                if killed {
                    fx.exec(idx, "GC", "", "", &conf, None).1.assert_ok();
                } else {
                    out.assert_ok();
                }
            }
            forgotten.clear();
        }
        // Whenever the runtime holds nothing on the network, the host must
        // be as before: a leak a later ADD would paper over shows here.
        if forgotten.is_empty() && slots.iter().all(|s| s.up.is_none()) {
            idle_checks += 1;
            let now = fx.snapshot();
            assert_eq!(now, baseline, "after round {round}, BERTH_KILL_SEED={seed}");
        }
    }
    // At least a few times (a round with every slot empty is common).
    assert!(
        idle_checks >= 5,
        "the network was idle only {idle_checks} times"
    );
    // The end: every container the runtime knows is DELed, then a GC
    // with none valid takes what it forgot.
    for slot in &mut slots {
        if let Some((id, port)) = slot.up.take() {
            for idx in [1, 0] {
                let ns = slot.ns.path_str().to_string();
                fx.exec(idx, "DEL", &id, &ns, &fx.conf(idx, port, None), None)
                    .1
                    .assert_ok();
            }
        }
    }
    for idx in [1, 0] {
        fx.exec(idx, "GC", "", "", &fx.gc_conf(idx, &[]), None)
            .1
            .assert_ok();
    }
    drop(forgotten);

    let kills: usize = tally.values().map(|t| t.kills).sum();
    for (what, t) in &tally {
        eprintln!("kill safety: {what}: {} runs, {} killed", t.runs, t.kills);
    }
    let after = fx.snapshot();
    assert_eq!(after, baseline, "BERTH_KILL_SEED={seed}");
    // Killing must really have happened, on every verb.
    assert!(kills >= ROUNDS / 3, "only {kills} kills in {ROUNDS} rounds");
    for what in ["bridge ADD", "portmap ADD", "portmap DEL", "bridge DEL"] {
        assert!(
            tally.get(what).is_some_and(|t| t.kills > 0),
            "{what} was never killed"
        );
    }
}
