//! `berth status`, `berth ls containers`, `berth inspect` and `berth ports`
//! after real ADDs through berth-bridge, berth-ipam and berth-portmap, in a
//! private "host" namespace (root): what they report is exactly what the
//! plugins made and recorded; a netns deleted behind berth's back shows as
//! missing from the kernel; an unreadable store is named and the rest is
//! still shown; they write no record. `berth gc` releases exactly what
//! belongs to containers whose netns is gone or whose addresses come from
//! another boot, and only when told to.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use berth_tests::metrics::{key, promtool_finds_nothing, samples, Samples};
use berth_tests::*;
use serde_json::{json, Value};

struct Fx {
    host: TestNetns,
    run: TempDir,
    data: TempDir,
}

/// What one `berth` command printed and its exit status.
struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(&self) -> Value {
        assert_eq!(self.status, 0, "{}\n{}", self.stdout, self.stderr);
        self.json()
    }
}

impl Fx {
    fn new(tag: &str) -> Fx {
        require_root();
        let host = TestNetns::new(&format!("{tag}h"));
        host.sh("ip link set lo up");
        Fx {
            host,
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
        }
    }

    fn exec(&self, plugin: &str, command: &str, cid: &str, ns: &TestNetns, conf: &Value) -> Value {
        run_cni_in(&self.host, plugin, command, cid, ns, self.run.path(), conf)
            .expect_ok()
            .clone()
    }

    fn del(&self, plugin: &str, cid: &str, ns: &TestNetns, conf: &Value) {
        run_cni_in(&self.host, plugin, "DEL", cid, ns, self.run.path(), conf).assert_ok();
    }

    fn bridge_conf(&self, name: &str, bridge: &str, v4: &str, v6: &str) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": name, "type": "berth-bridge", "bridge": bridge,
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "berth-ipam", "dataDir": self.data.path(),
                     "ranges": [[{"subnet": v4}], [{"subnet": v6}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
        })
    }

    /// Runs `berth args...` in the host namespace with the test's run dir
    /// and `--data-dir` of the test's data dir.
    fn berth(&self, args: &[&str]) -> Out {
        self.berth_answering(args, "")
    }

    /// `berth args...` in the host namespace on the test's records
    /// (`ip netns exec` and `env` exec in place: the child's PID is
    /// berth's).
    fn berth_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host.name(), "env"])
            .arg(format!("BERTH_RUN_DIR={}", self.run.path().display()))
            .arg(bin("berth"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data.path())
            // No berthd's records but this test's (none).
            .arg("--engine-state")
            .arg(self.run.path().join("engine"));
        c
    }

    /// [`Fx::berth`] with `input` on its stdin.
    fn berth_answering(&self, args: &[&str], input: &str) -> Out {
        use std::io::Write;
        let mut child = self
            .berth_command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run berth");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("run berth");
        Out {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The result's host veth (the interface without a sandbox that is not
/// the bridge).
fn host_veth(result: &Value, bridge: &str) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none_or(|s| s == ""))
        .filter_map(|i| i["name"].as_str())
        .find(|n| *n != bridge)
        .unwrap_or_else(|| panic!("no host veth in {result}"))
        .to_string()
}

/// The result's addresses without their prefix lengths, sorted as `berth`
/// sorts them.
fn addresses(result: &Value) -> Vec<String> {
    let mut v = result_addresses(result);
    v.sort();
    v.iter().map(ToString::to_string).collect()
}

/// Every file under `dir` with its contents, but SQLite's shared-memory
/// index (`-shm`), which readers write to by design.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(d: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if !p.to_string_lossy().ends_with("-shm") {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The node metrics `berth status -o json`'s `st` says there must be.
fn metrics_of_status(st: &Value) -> Samples {
    let mut want = Samples::new();
    let mut put = |name: &str, labels: &[(&str, &str)], v: f64| {
        want.insert(key(name, labels), v);
    };
    for n in st["networks"].as_array().unwrap() {
        let net = n["name"].as_str().unwrap();
        for r in n["ranges"].as_array().unwrap() {
            let set = r["rangeSet"].as_u64().map(|i| i.to_string());
            let set = set.as_deref().unwrap_or("imported");
            let range = r["label"].as_str().unwrap_or("");
            let labels = [("network", net), ("range_set", set), ("range", range)];
            put(
                "berth_range_addresses_used",
                &labels,
                r["used"].as_f64().unwrap(),
            );
            if let Some(size) = r["size"].as_f64() {
                put("berth_range_addresses_capacity", &labels, size);
            }
        }
        for state in ["live", "stale", "unknown"] {
            let count = n["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["state"] == state)
                .count();
            put(
                "berth_attachments",
                &[("network", net), ("state", state)],
                count as f64,
            );
        }
        put(
            "berth_published_ports",
            &[("network", net)],
            n["publishedPorts"].as_f64().unwrap(),
        );
        put(
            "berth_kernel_objects_missing",
            &[("network", net)],
            n["kernel"]["missing"].as_array().unwrap().len() as f64,
        );
    }
    put(
        "berth_records_unreadable",
        &[],
        st["problems"].as_array().unwrap().len() as f64,
    );
    want
}

#[test]
fn status_reports_exactly_what_the_plugins_made() {
    let fx = Fx::new("opst");
    let (a4, a6) = unique_subnets();
    let (b4, b6) = unique_subnets();
    let net_a = format!("opa{}-{}", std::process::id(), next_id());
    let net_b = format!("opb{}-{}", std::process::id(), next_id());
    let conf_a = fx.bridge_conf(&net_a, "opbra", &a4, &a6);
    let conf_b = fx.bridge_conf(&net_b, "opbrb", &b4, &b6);

    // Two containers on network A (the first publishing two ports), one
    // on network B. IDs share a prefix, as runtimes' hex IDs may.
    let ids = [
        format!("f00d{}x{}a", std::process::id(), next_id()),
        format!("f00d{}x{}b", std::process::id(), next_id()),
        format!("beef{}x{}", std::process::id(), next_id()),
    ];
    let nss: Vec<TestNetns> = ["opc1", "opc2", "opc3"]
        .iter()
        .map(|t| TestNetns::new(t))
        .collect();
    let r1 = fx.exec("berth-bridge", "ADD", &ids[0], &nss[0], &conf_a);
    let r2 = fx.exec("berth-bridge", "ADD", &ids[1], &nss[1], &conf_a);
    let r3 = fx.exec("berth-bridge", "ADD", &ids[2], &nss[2], &conf_b);
    let pm = json!({
        "cniVersion": "1.1.0", "name": net_a, "type": "berth-portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 15353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]},
        "prevResult": r1
    });
    fx.exec("berth-portmap", "ADD", &ids[0], &nss[0], &pm);
    let c1 = addresses(&r1);
    let c1_v4 = c1.iter().find(|a| !a.contains(':')).unwrap().clone();
    let c1_v6 = c1.iter().find(|a| a.contains(':')).unwrap().clone();

    let before = (files(fx.run.path()), files(fx.data.path()));
    let st = fx.berth(&["status", "-o", "json"]).ok();
    assert_eq!(st["problems"], json!([]), "{st:#}");
    let nets = st["networks"].as_array().unwrap();
    let names: Vec<&str> = nets.iter().map(|n| n["name"].as_str().unwrap()).collect();
    let mut want = vec![net_a.as_str(), net_b.as_str()];
    want.sort();
    assert_eq!(names, want, "{st:#}");
    let a = nets.iter().find(|n| n["name"] == net_a).unwrap();
    let b = nets.iter().find(|n| n["name"] == net_b).unwrap();
    assert_eq!(a["kind"], "bridge");
    assert_eq!(a["bridge"], "opbra");
    assert_eq!(b["bridge"], "opbrb");
    assert_eq!(a["dataDir"], json!(fx.data.path()));
    // The TCP port for each of the container's families, the UDP one on
    // 127.0.0.1 for IPv4 only.
    assert_eq!(a["publishedPorts"], 3);
    assert_eq!(b["publishedPorts"], 0);
    assert_eq!(
        a["kernel"],
        json!({"matches": true, "missing": []}),
        "{a:#}"
    );
    // Range sets 0 (IPv4 /24: .2-.254 hand out, .1 the gateway) and 1
    // (IPv6): two used on A, one on B.
    let ranges = a["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 2, "{a:#}");
    assert_eq!(ranges[0]["rangeSet"], 0);
    assert_eq!(ranges[0]["used"], 2);
    assert_eq!(ranges[0]["size"], 253, "{a:#}");
    assert_eq!(ranges[0]["free"], 251);
    assert_eq!(ranges[1]["rangeSet"], 1);
    assert_eq!(ranges[1]["used"], 2);
    assert!(
        ranges[1]["size"].as_f64().unwrap() > 1e18,
        "an IPv6 /64's size: {a:#}"
    );
    assert_eq!(b["ranges"][0]["used"], 1);

    // Attachments: exactly the ADDs' containers, veths and addresses.
    let att = a["attachments"].as_array().unwrap();
    assert_eq!(att.len(), 2, "{a:#}");
    for (r, id) in [(&r1, &ids[0]), (&r2, &ids[1])] {
        let x = att.iter().find(|x| x["containerID"] == **id).unwrap();
        assert_eq!(x["network"], net_a);
        assert_eq!(x["ifname"], "eth0");
        assert_eq!(x["hostVeth"], host_veth(r, "opbra"));
        assert_eq!(x["addresses"], json!(addresses(r)));
        assert_eq!(x["inKernel"], true);
    }
    let x1 = att.iter().find(|x| x["containerID"] == ids[0]).unwrap();
    assert_eq!(
        x1["ports"],
        json!([
            {"protocol": "udp", "hostIP": "127.0.0.1", "hostPort": 15353,
             "containerIP": c1_v4, "containerPort": 53},
            {"protocol": "tcp", "hostIP": null, "hostPort": 18080,
             "containerIP": c1_v4, "containerPort": 80},
            {"protocol": "tcp", "hostIP": null, "hostPort": 18080,
             "containerIP": c1_v6, "containerPort": 80},
        ])
    );
    let x3 = &b["attachments"][0];
    assert_eq!(x3["containerID"], ids[2]);
    assert_eq!(x3["addresses"], json!(addresses(&r3)));

    // The table says the same for people.
    let table = fx.berth(&["status"]);
    assert_eq!(table.status, 0, "{}", table.stderr);
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with(&net_a))
        .unwrap_or_else(|| panic!("{net_a} not in\n{}", table.stdout));
    assert!(
        line.contains("opbra") && line.contains(" 2/253") && line.contains(" ok"),
        "{line}"
    );

    // ls containers: the three; inspect by a unique prefix; an ambiguous
    // or unknown one is an error naming it.
    let ls = fx.berth(&["ls", "containers", "-o", "json"]).ok();
    let mut listed: Vec<&str> = ls["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["containerID"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.sort();
    assert_eq!(listed, all);
    let one = fx.berth(&["inspect", "beef", "-o", "json"]).ok();
    assert_eq!(one["containerID"], ids[2]);
    assert_eq!(one["attachments"][0]["network"], net_b);
    let exact = fx.berth(&["inspect", &ids[0], "-o", "json"]).ok();
    assert_eq!(exact["attachments"][0]["hostVeth"], host_veth(&r1, "opbra"));
    let amb = fx.berth(&["inspect", "f00d"]);
    assert_ne!(amb.status, 0);
    assert!(
        amb.stderr.contains(&ids[0]) && amb.stderr.contains(&ids[1]),
        "{}",
        amb.stderr
    );
    let none = fx.berth(&["inspect", "nosuch"]);
    assert_ne!(none.status, 0);
    assert!(none.stderr.contains("nosuch"), "{}", none.stderr);
    let unknown = fx.berth(&["status", "--network", "nosuchnet"]);
    assert_ne!(unknown.status, 0);
    assert!(unknown.stderr.contains("nosuchnet"), "{}", unknown.stderr);

    // ports: each mapping, with who holds it, by port.
    let ports = fx.berth(&["ports", "-o", "json"]).ok();
    assert_eq!(
        ports["ports"],
        json!([
            {"network": net_a, "containerID": ids[0], "ifname": "eth0", "protocol": "udp",
             "hostIP": "127.0.0.1", "hostPort": 15353, "containerIP": c1_v4, "containerPort": 53},
            {"network": net_a, "containerID": ids[0], "ifname": "eth0", "protocol": "tcp",
             "hostIP": null, "hostPort": 18080, "containerIP": c1_v4, "containerPort": 80},
            {"network": net_a, "containerID": ids[0], "ifname": "eth0", "protocol": "tcp",
             "hostIP": null, "hostPort": 18080, "containerIP": c1_v6, "containerPort": 80},
        ])
    );
    // None of this wrote to a record.
    assert_eq!(
        (files(fx.run.path()), files(fx.data.path())),
        before,
        "a read command changed berth's records"
    );

    // A plugin in the middle of an allocation (a write transaction open
    // on A's store) holds nothing up: status reads what is committed.
    let db = fx.data.path().join(&net_a).join("ipam.db");
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; DELETE FROM allocations;")
        .unwrap();
    let started = std::time::Instant::now();
    let st = fx
        .berth(&["status", "-o", "json", "--network", &net_a])
        .ok();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "status waited for the writer"
    );
    assert_eq!(st["networks"][0]["ranges"][0]["used"], 2, "{st:#}");
    writer.execute_batch("ROLLBACK").unwrap();
    // A corrupt row: named with its store's path, the rest still shown,
    // exit 1; the metrics count it.
    writer
        .execute(
            "UPDATE range_sets SET size = 'lots' WHERE range_set = 0",
            [],
        )
        .unwrap();
    let bad = fx.berth(&["status", "-o", "json"]);
    assert_eq!(bad.status, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains(&db.display().to_string()) && bad.stderr.contains("range set 0"),
        "{}",
        bad.stderr
    );
    let shown = bad.json();
    assert!(
        shown["networks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == net_b),
        "{shown:#}"
    );
    let m = fx.berth(&["metrics", "--volumes-root", "/nonexistent"]);
    assert!(
        m.stdout.lines().any(|l| l == "berth_records_unreadable 1"),
        "{}",
        m.stdout
    );
    let size: String = writer
        .query_row("SELECT size FROM range_sets WHERE range_set = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(size, "lots", "a read command repaired or rewrote the row");
    writer
        .execute("UPDATE range_sets SET size = '253' WHERE range_set = 0", [])
        .unwrap();
    drop(writer);

    // c2's namespace deleted behind berth's back: its veth goes with it,
    // and status says so.
    let veth2 = host_veth(&r2, "opbra");
    let mut nss = nss;
    drop(nss.remove(1));
    let gone = || {
        let st = fx
            .berth(&["status", "-o", "json", "--network", &net_a])
            .ok();
        let a = st["networks"][0].clone();
        (a["kernel"]["matches"] == false).then_some(a)
    };
    let mut a = None;
    for _ in 0..50 {
        a = gone();
        if a.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let a = a.expect("status still matches the kernel after a netns was deleted");
    assert_eq!(
        a["kernel"]["missing"],
        json!([format!("host veth {veth2} of container {} (eth0)", ids[1])])
    );
    let x2 = a["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["containerID"] == ids[1])
        .unwrap();
    assert_eq!(x2["inKernel"], false);

    // A store that is not a database: named, with its path, on stderr and
    // in `problems`, exit non-zero, and the rest still shown.
    let bad = fx.data.path().join("opbroken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("ipam.db"), b"this is not sqlite").unwrap();
    let out = fx.berth(&["status", "-o", "json"]);
    assert_ne!(out.status, 0);
    let v = out.json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    let bad_db = bad.join("ipam.db").display().to_string();
    assert!(problems[0].as_str().unwrap().contains(&bad_db), "{v:#}");
    assert!(out.stderr.contains(&bad_db), "{}", out.stderr);
    assert_eq!(v["networks"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&bad).unwrap();

    // Clean up through the plugins.
    let pm_del = {
        let mut c = pm.clone();
        c.as_object_mut().unwrap().remove("prevResult");
        c
    };
    fx.del("berth-portmap", &ids[0], &nss[0], &pm_del);
    fx.del("berth-bridge", &ids[0], &nss[0], &conf_a);
    fx.del("berth-bridge", &ids[2], &nss[1], &conf_b);
    let orphan = TestNetns::new("opgone");
    fx.del("berth-bridge", &ids[1], &orphan, &conf_a);
    let st = fx.berth(&["status", "-o", "json"]).ok();
    for n in st["networks"].as_array().unwrap() {
        assert_eq!(n["attachments"], json!([]), "{st:#}");
        assert_eq!(n["publishedPorts"], 0);
    }
}

/// The attachments of `v` (an inventory, or gc's `stale`/`released`) by
/// container ID, with their state.
fn states(attachments: &Value) -> BTreeMap<String, String> {
    attachments
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["containerID"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all_attachments(st: &Value) -> Value {
    Value::Array(
        st["networks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["attachments"].as_array().unwrap().clone())
            .collect(),
    )
}

#[test]
fn gc_releases_what_belongs_to_containers_that_are_gone() {
    let fx = Fx::new("opgc");
    // macvlan's master: a veth (this kernel has no dummy links).
    fx.host.sh(
        "ip link add opgcm0 type veth peer name opgcm1 && ip link set opgcm0 up && ip link set opgcm1 up",
    );
    let (a4, a6) = unique_subnets();
    let (m4, _) = unique_subnets();
    let net_a = format!("opgca{}-{}", std::process::id(), next_id());
    let net_m = format!("opgcm{}-{}", std::process::id(), next_id());
    let conf_a = fx.bridge_conf(&net_a, "opgcbr", &a4, &a6);
    let conf_m = json!({
        "cniVersion": "1.1.0", "name": net_m, "type": "berth-host", "mode": "macvlan",
        "master": "opgcm0",
        "ipam": {"type": "berth-ipam", "dataDir": fx.data.path(), "ranges": [[{"subnet": m4}]]}
    });
    let id = |t: &str| format!("{t}{}x{}", std::process::id(), next_id());
    // On the bridge: one whose netns will go (publishing a port), one that
    // stays, one "from before a reboot"; on macvlan: one that goes, one
    // that stays.
    let (gone, live, rebooted, mgone, mlive) = (
        id("gone"),
        id("live"),
        id("reboot"),
        id("mgone"),
        id("mlive"),
    );
    let ns_gone = TestNetns::new("opgc1");
    let ns_live = TestNetns::new("opgc2");
    let ns_rebooted = TestNetns::new("opgc3");
    let ns_mgone = TestNetns::new("opgc4");
    let ns_mlive = TestNetns::new("opgc5");
    let r_gone = fx.exec("berth-bridge", "ADD", &gone, &ns_gone, &conf_a);
    fx.exec("berth-bridge", "ADD", &live, &ns_live, &conf_a);
    let r_rebooted = fx.exec("berth-bridge", "ADD", &rebooted, &ns_rebooted, &conf_a);
    fx.exec("berth-host", "ADD", &mgone, &ns_mgone, &conf_m);
    fx.exec("berth-host", "ADD", &mlive, &ns_mlive, &conf_m);
    let pm = json!({
        "cniVersion": "1.1.0", "name": net_a, "type": "berth-portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18181, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": r_gone
    });
    fx.exec("berth-portmap", "ADD", &gone, &ns_gone, &pm);
    let ruleset = || fx.host.sh("nft list ruleset");
    assert!(ruleset().contains("18181"), "{}", ruleset());

    // Everything is live, and says where it lives.
    let st = fx.berth(&["status", "-o", "json"]).ok();
    let all = all_attachments(&st);
    assert_eq!(all.as_array().unwrap().len(), 5, "{st:#}");
    assert!(states(&all).values().all(|s| s == "live"), "{st:#}");
    let x = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["containerID"] == mgone)
        .unwrap();
    assert_eq!(x["netns"], ns_mgone.path_str(), "{x:#}");
    // The macvlan network is shown as one, with its master, from
    // berth-host's records.
    let m = status_network(&st, &net_m);
    assert_eq!(m["kind"], "macvlan", "{m:#}");
    assert_eq!(m["master"], "opgcm0", "{m:#}");
    assert_eq!(m["kernel"]["matches"], true, "{m:#}");
    let host_records = |net: &str| -> usize {
        std::fs::read_dir(fx.run.path().join(net))
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    assert_eq!(host_records(&net_m), 2);
    assert_eq!(x["bootID"], st["bootID"]);

    // Behind berth's back: two netns deleted, and one attachment's
    // addresses as a previous boot would have left them.
    let gone_path = ns_gone.path_str().to_string();
    drop(ns_gone);
    drop(ns_mgone);
    // The kernel takes a deleted netns's veth pair down in a worker, a
    // moment after the delete: wait for it, or status and the metrics
    // taken after it could see the host end in one and not the other.
    let gone_veth = host_veth(&r_gone, "opgcbr");
    let veth_gone = poll_until(
        std::time::Instant::now(),
        std::time::Duration::from_secs(10),
        || {
            !fx.host
                .sh("ip -j link show")
                .contains(&format!("\"{gone_veth}\""))
        },
    );
    assert!(veth_gone.is_some(), "{gone_veth} outlived its netns");
    let db = fx.data.path().join(&net_a).join("ipam.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    let n = c
        .execute(
            "UPDATE sandboxes SET boot_id = 'a-previous-boot' WHERE container_id = ?1",
            [&rebooted],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(c);

    let st = fx.berth(&["status", "-o", "json"]).ok();
    let all = all_attachments(&st);
    let want: BTreeMap<String, String> = [
        (&gone, "stale"),
        (&live, "live"),
        (&rebooted, "stale"),
        (&mgone, "stale"),
        (&mlive, "live"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(states(&all), want, "{st:#}");
    // The metrics say the same: per range, per state, ports, in
    // Prometheus' format as promtool reads it.
    let vols = fx.run.path().join("no-volumes");
    let m = fx.berth(&["metrics", "--volumes-root", vols.to_str().unwrap()]);
    assert_eq!(m.status, 0, "{}", m.stderr);
    promtool_finds_nothing(&m.stdout);
    assert_eq!(samples(&m.stdout), metrics_of_status(&st), "{}", m.stdout);
    let reason = |cid: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|a| a["containerID"] == cid)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason(&gone).contains(&gone_path), "{}", reason(&gone));
    assert!(
        reason(&rebooted).contains("a-previous-boot"),
        "{}",
        reason(&rebooted)
    );

    // A dry run, and a "no": they show the three and change nothing.
    let before = (files(fx.run.path()), files(fx.data.path()));
    let dry = fx.berth(&["gc", "--dry-run", "-o", "json"]).ok();
    let mut stale: Vec<String> = states(&dry["stale"]).into_keys().collect();
    stale.sort();
    let mut want_stale = vec![gone.clone(), rebooted.clone(), mgone.clone()];
    want_stale.sort();
    assert_eq!(stale, want_stale, "{dry:#}");
    assert_eq!(dry["released"], json!([]));
    let no = fx.berth_answering(&["gc"], "n\n");
    assert_eq!(no.status, 0, "{}", no.stderr);
    assert!(no.stdout.contains("nothing released"), "{}", no.stdout);
    assert!(no.stderr.contains("release these 3"), "{}", no.stderr);
    assert_eq!(
        (files(fx.run.path()), files(fx.data.path())),
        before,
        "gc without a yes changed berth's records"
    );
    assert!(ruleset().contains("18181"));

    // One network, then the rest, the second by answering yes.
    let one = fx
        .berth(&["gc", "--network", &net_m, "--yes", "-o", "json"])
        .ok();
    assert_eq!(
        states(&one["released"]).into_keys().collect::<Vec<_>>(),
        vec![mgone.clone()]
    );
    let rest = fx.berth_answering(&["gc"], "y\n");
    assert_eq!(rest.status, 0, "{}\n{}", rest.stdout, rest.stderr);
    assert!(
        rest.stdout.contains("released 2 attachment(s)"),
        "{}",
        rest.stdout
    );

    // What is left is exactly the live two: records, addresses, ports,
    // the rebooted one's veth and the port's rules are gone.
    let st = fx.berth(&["status", "-o", "json"]).ok();
    let all = all_attachments(&st);
    let left: Vec<String> = states(&all).into_keys().collect();
    let mut want_left = vec![live.clone(), mlive.clone()];
    want_left.sort();
    assert_eq!(left, want_left, "{st:#}");
    let a = status_network(&st, &net_a);
    assert_eq!(a["publishedPorts"], 0);
    assert_eq!(a["ranges"][0]["used"], 1, "{a:#}");
    assert_eq!(a["kernel"]["matches"], true, "{a:#}");
    let m = status_network(&st, &net_m);
    assert_eq!(m["ranges"][0]["used"], 1, "{m:#}");
    // The gone macvlan's berth-host record went with it; the live one's
    // stays.
    assert_eq!(host_records(&net_m), 1);
    let veth = host_veth(&r_rebooted, "opgcbr");
    let links = fx.host.sh("ip -j link show");
    assert!(!links.contains(&format!("\"{veth}\"")), "{links}");
    assert!(!ruleset().contains("18181"), "{}", ruleset());
    let again = fx.berth(&["gc", "--yes"]);
    assert_eq!(again.status, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing is stale"),
        "{}",
        again.stdout
    );

    // A network berth does not know is an error naming it.
    let unknown = fx.berth(&["gc", "--network", "nosuchnet", "--yes"]);
    assert_ne!(unknown.status, 0);
    assert!(unknown.stderr.contains("nosuchnet"), "{}", unknown.stderr);

    fx.del("berth-bridge", &live, &ns_live, &conf_a);
    fx.del("berth-host", &mlive, &ns_mlive, &conf_m);
    let st = fx.berth(&["status", "-o", "json"]).ok();
    assert_eq!(all_attachments(&st), json!([]), "{st:#}");
    drop(ns_rebooted);
}

/// Ports published for addresses no berth store knows (another IPAM's):
/// berth-portmap records the netns, so the attachment is judged by it,
/// and released by `berth gc` once the netns is gone.
#[test]
fn ports_alone_say_where_their_container_lives() {
    let fx = Fx::new("oppn");
    let net = format!("oppn{}-{}", std::process::id(), next_id());
    let cid = format!("pn{}x{}", std::process::id(), next_id());
    let ns = TestNetns::new("oppn1");
    let (v4, _) = unique_subnets();
    let ip = v4.replace(".0/24", ".5");
    let pm = json!({
        "cniVersion": "1.1.0", "name": net, "type": "berth-portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18282, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": ns.path_str()}],
            "ips": [{"address": format!("{ip}/24"), "interface": 0}]}
    });
    fx.exec("berth-portmap", "ADD", &cid, &ns, &pm);
    let st = fx.berth(&["status", "-o", "json"]).ok();
    let a = &all_attachments(&st)[0];
    assert_eq!(a["containerID"], cid, "{st:#}");
    assert_eq!(a["netns"], ns.path_str(), "{a:#}");
    assert_eq!(a["state"], "live", "{a:#}");
    assert_eq!(a["ports"][0]["hostPort"], 18282);

    let path = ns.path_str().to_string();
    drop(ns);
    let st = fx.berth(&["status", "-o", "json"]).ok();
    let a = &all_attachments(&st)[0];
    assert_eq!(a["state"], "stale", "{a:#}");
    assert!(a["reason"].as_str().unwrap().contains(&path), "{a:#}");
    let gc = fx.berth(&["gc", "--yes", "-o", "json"]).ok();
    assert_eq!(gc["released"].as_array().unwrap().len(), 1, "{gc:#}");
    let st = fx.berth(&["status", "-o", "json"]).ok();
    assert_eq!(all_attachments(&st), json!([]), "{st:#}");
    let ruleset = fx.host.sh("nft list ruleset");
    assert!(!ruleset.contains("18282"), "{ruleset}");
}

/// A `berth watch` started for a test, stopped by its PID on drop.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_serves_the_metrics_and_counts_its_repairs() {
    let fx = Fx::new("opmw");
    let (a4, a6) = unique_subnets();
    let net = format!("opmw{}-{}", std::process::id(), next_id());
    let conf = fx.bridge_conf(&net, "opmwbr", &a4, &a6);
    let ns = TestNetns::new("opmw1");
    let cid = format!("mw{}x{}", std::process::id(), next_id());
    fx.exec("berth-bridge", "ADD", &cid, &ns, &conf);
    let vols = fx.run.path().join("no-volumes");
    let log = fx.run.path().join("watch.log");
    // The address is the test's host namespace's own loopback.
    let url = "http://127.0.0.1:9473/metrics";
    let _watch = Watch(
        fx.berth_command(&["watch", "--metrics-address", "127.0.0.1:9473"])
            .arg("--volumes-root")
            .arg(&vols)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start berth watch"),
    );
    let scrape = |url: &str| {
        let out = fx.host.exec(&["busybox", "wget", "-qO-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let wait_for = |what: &str, ok: &dyn Fn(&Samples) -> bool| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(text) = scrape(url) {
                if ok(&samples(&text)) {
                    return text;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within 15 s; berth watch's log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let counter = |s: &Samples, name: &str| s.get(&key(name, &[])).copied().unwrap_or(-1.0);
    let text = wait_for("a first pass", &|s| {
        counter(s, "berth_reconciler_passes_total") >= 1.0
    });
    promtool_finds_nothing(&text);
    let served = samples(&text);
    assert_eq!(counter(&served, "berth_reconciler_repairs_total"), 0.0);
    assert_eq!(counter(&served, "berth_reconciler_failures_total"), 0.0);
    // The node's part is what `berth metrics` prints, and what `berth
    // status` says.
    let once = fx.berth(&["metrics", "--volumes-root", vols.to_str().unwrap()]);
    assert_eq!(once.status, 0, "{}", once.stderr);
    let node = samples(&once.stdout);
    let st = fx.berth(&["status", "-o", "json"]).ok();
    assert_eq!(node, metrics_of_status(&st), "{}", once.stdout);
    for (k, v) in &node {
        assert_eq!(served.get(k), Some(v), "{k:?} in {text}");
    }
    let at = |name: &str, state: &str| node[&key(name, &[("network", &net), ("state", state)])];
    assert_eq!(at("berth_attachments", "live"), 1.0, "{}", once.stdout);

    // A firewall reload (here: the host namespace's ruleset flushed) is
    // repaired, and counted.
    fx.host.sh("nft flush ruleset");
    wait_for("the repair counted", &|s| {
        counter(s, "berth_reconciler_repairs_total") >= 1.0
    });
    assert!(
        scrape("http://127.0.0.1:9473/other").is_none(),
        "a path other than /metrics is served"
    );

    // --textfile: the same exposition, in a file replaced whole.
    let prom = fx.run.path().join("berth.prom");
    let out = fx.berth(&[
        "metrics",
        "--volumes-root",
        vols.to_str().unwrap(),
        "--textfile",
        prom.to_str().unwrap(),
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let written = std::fs::read_to_string(&prom).unwrap();
    promtool_finds_nothing(&written);
    assert_eq!(samples(&written), node);
    fx.del("berth-bridge", &cid, &ns, &conf);
}
