//! Golden files of the kernel state berth's firewall code makes (root).
//!
//! For every scenario the real front ends (berth-bridge, berth-portmap,
//! `berth watch`, berthd) run inside a private "host" network namespace,
//! and after each interesting step the test takes `nft list ruleset` there,
//! normalises it ([`normalise`]) and compares it with the step's section
//! of `tests/golden/firewall/<scenario>.nft`. The goldens were recorded
//! with the `nft`-binary implementation of kernel/src/firewall (now network/src/firewall); any other
//! implementation (nf_tables netlink, say) must leave the very same
//! ruleset behind, step by step.
//!
//! Everything that reaches the ruleset is fixed inside each scenario's
//! own namespace: network, bridge and container names (so the host veths
//! `bv<hash>`), subnets, MACs, host addresses, berthd's network IDs. Only
//! the run, data and state directories are per run, and they never
//! appear in the ruleset.
//!
//! `BERTH_BLESS_GOLDEN=1` writes the goldens instead of comparing them
//! (one file per scenario, one `# --- step: ... ---` section per step);
//! without it, a missing golden fails the test.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_tests::*;
use serde_json::{json, Value};

/// Set to 1 to (re)write the goldens from what the code makes now.
const BLESS_ENV: &str = "BERTH_BLESS_GOLDEN";
/// Starts each step's section in a golden file.
const STEP_MARK: &str = "# --- step: ";
const STEP_END: &str = " ---";

// ---------------------------------------------------------------------------
// normalising and comparing

/// `nft list ruleset` made comparable across runs and implementations:
/// - `# handle N` comments dropped (handles count every object ever made);
/// - counters' values dropped (`counter packets N bytes M` -> `counter`);
/// - the elements of each set and map sorted, one a line, and those of
///   anonymous sets in rules (`icmpv6 type { ... }`) sorted in place: a
///   set has no order, and nft prints a set in the order of the backend
///   the kernel picked for it (hash buckets, bitmap bits);
/// - trailing blanks removed.
///
/// Everything else (tables, chains, sets and maps in the kernel's order,
/// rules in their chain's order) is kept as nft prints it.
fn normalise(listing: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut lines = listing.lines().map(clean_line);
    while let Some(line) = lines.next() {
        let Some(at) = line.find("elements = {") else {
            out.push(sort_inline_sets(&line));
            continue;
        };
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        let mut text = line[at + "elements = {".len()..].to_string();
        while !balanced_close(&text) {
            match lines.next() {
                Some(more) => {
                    text.push(' ');
                    text.push_str(more.trim());
                }
                None => panic!("unterminated elements block in nft's listing:\n{listing}"),
            }
        }
        let body = text.trim_end();
        let body = body.strip_suffix('}').unwrap_or(body);
        let mut elems: Vec<String> = split_top_level(body)
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        elems.sort();
        out.push(format!("{indent}elements = {{"));
        for e in elems {
            out.push(format!("{indent}\t{e},"));
        }
        out.push(format!("{indent}}}"));
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// One line without a handle comment, counter values or trailing blanks.
fn clean_line(line: &str) -> String {
    let mut l = match line.find(" # handle ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    };
    while let Some(i) = l.find("counter packets ") {
        // "counter packets N bytes M" -> "counter"
        let rest = &l[i + "counter packets ".len()..];
        let words: Vec<&str> = rest.splitn(4, ' ').collect();
        let tail = match words.as_slice() {
            [_, "bytes", _, tail] => format!(" {tail}"),
            [_, "bytes", _] => String::new(),
            _ => break,
        };
        l = format!("{}counter{tail}", &l[..i]);
    }
    l.trim_end().to_string()
}

/// `line` with the items of each `{ ... }` it opens and closes (an
/// anonymous set or map in a rule) sorted. Lines opening a block (`chain
/// x {`) have none.
fn sort_inline_sets(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = unquoted_find(rest, '{') {
        let inner = &rest[open + 1..];
        let Some(close) = unquoted_find(inner, '}') else {
            break;
        };
        if unquoted_find(&inner[..close], '{').is_some() {
            // Nested braces: not an anonymous set of plain items.
            break;
        }
        let mut items: Vec<String> = split_top_level(&inner[..close])
            .into_iter()
            .map(|i| i.trim().to_string())
            .collect();
        items.sort();
        out.push_str(&rest[..open]);
        out.push_str(&format!("{{ {} }}", items.join(", ")));
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The byte offset of the first `c` in `text` outside double quotes.
fn unquoted_find(text: &str, c: char) -> Option<usize> {
    let mut quoted = false;
    for (i, ch) in text.char_indices() {
        if ch == '"' {
            quoted = !quoted;
        } else if ch == c && !quoted {
            return Some(i);
        }
    }
    None
}

/// True once `text` (what follows `elements = {`) holds the block's
/// closing brace: more `}` than `{` outside quotes.
fn balanced_close(text: &str) -> bool {
    let mut depth = 0i32;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => {
                if depth == 0 {
                    return true;
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    false
}

/// `text` split at the commas outside quotes and braces.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
}

/// A normalised ruleset with its tables in name order (each table's
/// content as it is): for comparing states whose tables were made in
/// another order.
fn tables_sorted(ruleset: &str) -> String {
    let mut tables: Vec<String> = Vec::new();
    for line in ruleset.lines() {
        if line.starts_with("table ") || tables.is_empty() {
            tables.push(String::new());
        }
        let t = tables.last_mut().expect("a table");
        t.push_str(line);
        t.push('\n');
    }
    tables.sort();
    tables.concat()
}

/// A line diff of `want` and `got` (longest common subsequence): `-` only
/// in the golden, `+` only in the kernel, two spaces in both.
fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

fn golden_path(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/firewall")
        .join(format!("{scenario}.nft"))
}

fn blessing() -> bool {
    std::env::var(BLESS_ENV).is_ok_and(|v| v == "1")
}

/// The sections of a golden file: (step, normalised ruleset).
fn parse_golden(text: &str) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(step) = line
            .strip_prefix(STEP_MARK)
            .and_then(|r| r.strip_suffix(STEP_END))
        {
            steps.push((step.to_string(), String::new()));
        } else if let Some((_, body)) = steps.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (_, body) in &mut steps {
        let trimmed = body.trim_end_matches('\n').to_string();
        *body = if trimmed.is_empty() {
            String::new()
        } else {
            trimmed + "\n"
        };
    }
    steps
}

/// One scenario's golden file: each [`step`](Golden::step) compares the
/// host namespace's ruleset with the file's next section (or records it,
/// when blessing); [`finish`](Golden::finish) checks every section was
/// met (or writes the file).
struct Golden {
    scenario: &'static str,
    bless: bool,
    /// The file's sections (empty when blessing).
    want: Vec<(String, String)>,
    /// What this run saw, step by step.
    seen: Vec<(String, String)>,
}

impl Golden {
    fn new(scenario: &'static str) -> Golden {
        let bless = blessing();
        let path = golden_path(scenario);
        let want = if bless {
            Vec::new()
        } else {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "golden file {} cannot be read ({e}); record it with \
                     {BLESS_ENV}=1 ./scripts/test -p berth-tests --test firewall_golden",
                    path.display()
                )
            });
            parse_golden(&text)
        };
        Golden {
            scenario,
            bless,
            want,
            seen: Vec::new(),
        }
    }

    /// The ruleset of `host` now, normalised.
    fn ruleset(host: &TestNetns) -> String {
        normalise(&host.exec_ok(&["nft", "list", "ruleset"]))
    }

    /// Compares `host`'s ruleset with the next section, `step`.
    fn step(&mut self, host: &TestNetns, step: &str) {
        let got = Self::ruleset(host);
        self.record(step, got);
    }

    fn record(&mut self, step: &str, got: String) {
        assert!(
            !step.contains('\n') && !self.seen.iter().any(|(s, _)| s == step),
            "step names are single lines and unique: {step:?}"
        );
        if !self.bless {
            let idx = self.seen.len();
            let Some((want_step, want)) = self.want.get(idx) else {
                panic!(
                    "{}: step {idx} ({step:?}) is not in golden file {} (it has {} steps); \
                     re-record with {BLESS_ENV}=1\n--- the kernel has ---\n{got}",
                    self.scenario,
                    golden_path(self.scenario).display(),
                    self.want.len()
                );
            };
            assert_eq!(
                want_step,
                step,
                "{}: step {idx} of golden file {} is another step; re-record with {BLESS_ENV}=1",
                self.scenario,
                golden_path(self.scenario).display()
            );
            if *want != got {
                panic!(
                    "{}: the ruleset after step {step:?} differs from golden file {}\n\
                     --- golden ---\n{want}--- kernel (normalised) ---\n{got}\
                     --- diff (- golden, + kernel) ---\n{}",
                    self.scenario,
                    golden_path(self.scenario).display(),
                    diff(want, &got)
                );
            }
        }
        self.seen.push((step.to_string(), got));
    }

    /// The normalised ruleset recorded at an earlier `step` of this run.
    fn seen_at(&self, step: &str) -> &str {
        self.seen
            .iter()
            .find(|(s, _)| s == step)
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("no step {step:?} recorded yet"))
    }

    /// Compares `got` (normalised), the ruleset at `what`, with the
    /// golden of the earlier step `step` (what this run recorded there,
    /// when blessing).
    fn again(&self, step: &str, got: &str, what: &str) {
        let want = if self.bless {
            self.seen_at(step)
        } else {
            self.want
                .iter()
                .find(|(s, _)| s == step)
                .map(|(_, r)| r.as_str())
                .unwrap_or_else(|| panic!("golden file has no step {step:?}"))
        };
        if want != got {
            panic!(
                "{}: the ruleset {what} differs from the golden of step {step:?} in {}\n\
                 --- golden ---\n{want}--- kernel (normalised) ---\n{got}\
                 --- diff (- golden, + kernel) ---\n{}",
                self.scenario,
                golden_path(self.scenario).display(),
                diff(want, got)
            );
        }
    }

    /// Checks every section of the file was compared, or writes it.
    fn finish(self) {
        let path = golden_path(self.scenario);
        if self.bless {
            let mut text = format!(
                "# berth firewall golden: {}. `nft list ruleset` in the scenario's host namespace,\n\
                 # normalised, after each step (tests/tests/firewall_golden.rs).\n\
                 # Re-record with {BLESS_ENV}=1 ./scripts/test -p berth-tests --test firewall_golden\n",
                self.scenario
            );
            for (step, body) in &self.seen {
                text.push_str(&format!("{STEP_MARK}{step}{STEP_END}\n{body}"));
            }
            std::fs::create_dir_all(path.parent().expect("golden dir"))
                .expect("create tests/golden/firewall");
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            eprintln!("blessed {}", path.display());
        } else {
            assert_eq!(
                self.seen.len(),
                self.want.len(),
                "{}: golden file {} has steps this run never reached: {:?}",
                self.scenario,
                path.display(),
                self.want
                    .iter()
                    .skip(self.seen.len())
                    .map(|(s, _)| s)
                    .collect::<Vec<_>>()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// fixture

/// Fixed host addresses for `hostIP` mappings (on a veth pair inside the
/// host namespace).
const HOST_V4: &str = "10.200.0.1";
const HOST_V6: &str = "fd00:200::1";

/// A private host namespace with its own run and data dirs.
struct Host {
    ns: TestNetns,
    run: TempDir,
    data: TempDir,
}

/// A container: its fixed ID, its namespace and berth-bridge's result.
struct Container {
    cid: &'static str,
    ns: TestNetns,
    result: Value,
}

impl Host {
    fn new(tag: &str) -> Host {
        require_root();
        let ns = TestNetns::new(&format!("{tag}h"));
        ns.sh("ip link set lo up");
        Host {
            ns,
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
        }
    }

    /// Gives the host [`HOST_V4`] and [`HOST_V6`] (on one end of a veth
    /// pair of its own).
    fn with_addresses(self) -> Host {
        self.ns.sh(&format!(
            "ip link add gup0 type veth peer name gup1 && \
             ip addr add {HOST_V4}/24 dev gup0 && ip addr add {HOST_V6}/64 dev gup0 nodad && \
             ip link set gup0 up && ip link set gup1 up"
        ));
        self
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        cid: &str,
        ns: &TestNetns,
        conf: &Value,
    ) -> PluginOutput {
        run_cni_in(&self.ns, plugin, command, cid, ns, self.run.path(), conf)
    }

    /// A berth-bridge config: `extra` keys over a dual-stack gateway
    /// network (no masquerade unless `extra` says so).
    fn bridge_conf(&self, name: &str, bridge: &str, subnets: &[&str], extra: Value) -> Value {
        let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
        let mut c = json!({
            "cniVersion": "1.1.0", "name": name, "type": "berth-bridge", "bridge": bridge,
            "isGateway": true,
            "ipam": {"type": "berth-ipam", "dataDir": self.data.path(), "ranges": ranges,
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
        });
        for (k, v) in extra.as_object().expect("extra keys") {
            c[k] = v.clone();
        }
        c
    }

    /// berth-bridge's ADD of container `cid` (MAC `mac`) with `conf`.
    fn attach(&self, conf: &Value, cid: &'static str, mac: &str) -> Container {
        let ns = TestNetns::new(cid);
        ns.sh("ip link set lo up");
        let mut conf = conf.clone();
        conf["runtimeConfig"] = json!({"mac": mac});
        let result = self
            .exec("berth-bridge", "ADD", cid, &ns, &conf)
            .expect_ok()
            .clone();
        Container { cid, ns, result }
    }

    fn detach(&self, conf: &Value, c: &Container) {
        self.exec(
            "berth-bridge",
            "DEL",
            c.cid,
            &c.ns,
            &with_prev_result(conf, &c.result),
        )
        .assert_ok();
    }

    fn portmap_conf(&self, name: &str, mappings: Value, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": name, "type": "berth-portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings}
        });
        for (k, v) in extra.as_object().expect("extra keys") {
            c[k] = v.clone();
        }
        c
    }

    fn publish(&self, conf: &Value, c: &Container) {
        self.exec(
            "berth-portmap",
            "ADD",
            c.cid,
            &c.ns,
            &with_prev_result(conf, &c.result),
        )
        .expect_ok();
    }

    fn unpublish(&self, conf: &Value, c: &Container) {
        self.exec(
            "berth-portmap",
            "DEL",
            c.cid,
            &c.ns,
            &with_prev_result(conf, &c.result),
        )
        .assert_ok();
    }
}

// ---------------------------------------------------------------------------
// 1. one bridge network's containers come and go

/// A masquerading gateway network (dual stack): its first container makes
/// the network's objects (masquerade sets and chain, forward chain with
/// isolation, `berth-bridges`, the quiet chain of `bridge berth`), the
/// second changes nothing, and the last DEL removes every table.
#[test]
fn bridge_network_first_second_last() {
    let host = Host::new("gfbr");
    let mut g = Golden::new("bridge_network");
    let conf = host.bridge_conf(
        "gold-web",
        "gbr0",
        &["10.201.1.0/24", "fd00:201:1::/64"],
        json!({"ipMasq": true}),
    );
    g.step(&host.ns, "empty host");
    let c1 = host.attach(&conf, "gold-web-c1", "02:42:0a:c9:01:02");
    g.step(&host.ns, "after the first ADD");
    let c2 = host.attach(&conf, "gold-web-c2", "02:42:0a:c9:01:03");
    g.step(&host.ns, "after the second ADD");
    assert_eq!(
        g.seen_at("after the first ADD"),
        g.seen_at("after the second ADD"),
        "a second container changes nothing in the ruleset"
    );
    host.detach(&conf, &c1);
    g.step(&host.ns, "after the first DEL");
    host.detach(&conf, &c2);
    g.step(&host.ns, "after the last DEL");
    g.finish();
}

// ---------------------------------------------------------------------------
// 2. two networks side by side

/// Two networks on one host: `gold-iso` (isolation, the default, with
/// masquerade) and `gold-open` (`isolation: false`, no masquerade, an
/// uplink), each with its chains and both bridges in `berth-bridges`;
/// then the isolated one's last DEL takes only its objects (and its
/// bridge out of the set), and the other's the rest.
#[test]
fn two_networks_isolated_and_open() {
    let host = Host::new("gf2n");
    let mut g = Golden::new("two_networks");
    let iso = host.bridge_conf(
        "gold-iso",
        "gbriso",
        &["10.201.2.0/24", "fd00:201:2::/64"],
        json!({"ipMasq": true}),
    );
    let open = host.bridge_conf(
        "gold-open",
        "gbropen",
        &["10.201.3.0/24"],
        json!({"isolation": false, "uplinks": ["gvx0"]}),
    );
    let a = host.attach(&iso, "gold-iso-c1", "02:42:0a:c9:02:02");
    g.step(&host.ns, "after the isolated network's ADD");
    let b = host.attach(&open, "gold-open-c1", "02:42:0a:c9:03:02");
    g.step(&host.ns, "after the open network's ADD");
    host.detach(&iso, &a);
    g.step(&host.ns, "after the isolated network's last DEL");
    host.detach(&open, &b);
    g.step(&host.ns, "after the open network's last DEL");
    g.finish();
}

// ---------------------------------------------------------------------------
// 3. published ports

/// The mappings of the first container: TCP and UDP, any address of both
/// families, one family's any address (0.0.0.0), a hostIP of each
/// family, and SCTP.
fn pm_mappings_c1() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 8081, "containerPort": 81, "protocol": "tcp", "hostIP": "0.0.0.0"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": HOST_V4},
        {"hostPort": 8444, "containerPort": 443, "protocol": "TCP", "hostIP": HOST_V6},
        {"hostPort": 9132, "containerPort": 9132, "protocol": "sctp"}
    ])
}

/// berth-portmap after berth-bridge, dual stack, hairpin on: the first
/// container publishes with the defaults (`snat` on) and makes the
/// structure (base chains, the default profile's maps and chain); the
/// second publishes under another profile (`conditionsV4`/`conditionsV6`)
/// with `snat: false`, `masqAll` and `markMasqBit`; each DEL removes its
/// own, a repeated ADD replaces the container's elements, the last
/// mapping's DEL removes every portmap object, and the bridge DELs the
/// rest.
#[test]
fn published_ports_add_and_del() {
    let host = Host::new("gfpm").with_addresses();
    let mut g = Golden::new("published_ports");
    let net = "gold-pm";
    let br = host.bridge_conf(
        net,
        "gbrpm",
        &["10.201.4.0/24", "fd00:201:4::/64"],
        json!({"ipMasq": true, "hairpinMode": true}),
    );
    let c1 = host.attach(&br, "gold-pm-c1", "02:42:0a:c9:04:02");
    let c2 = host.attach(&br, "gold-pm-c2", "02:42:0a:c9:04:03");
    g.step(&host.ns, "after the bridge ADDs");
    let pm1 = host.portmap_conf(net, pm_mappings_c1(), json!({}));
    host.publish(&pm1, &c1);
    g.step(&host.ns, "after the first container's portmap ADD");
    let pm2 = host.portmap_conf(
        net,
        json!([
            {"hostPort": 9090, "containerPort": 90, "protocol": "tcp"},
            {"hostPort": 9091, "containerPort": 91, "protocol": "udp", "hostIP": "::"}
        ]),
        json!({
            "snat": false, "masqAll": true, "markMasqBit": 14,
            "conditionsV4": ["ip saddr != 10.98.0.0/16"],
            "conditionsV6": ["ip6 saddr != fd98::/64", "meta l4proto { tcp, udp }"]
        }),
    );
    host.publish(&pm2, &c2);
    g.step(
        &host.ns,
        "after the second container's portmap ADD (another profile)",
    );
    host.unpublish(&pm2, &c2);
    g.step(&host.ns, "after the second container's portmap DEL");
    assert_eq!(
        g.seen_at("after the first container's portmap ADD"),
        g.seen_at("after the second container's portmap DEL"),
        "the second profile's DEL undoes exactly its ADD"
    );
    // A repeated ADD of the first container with other mappings: its old
    // elements out, the new ones in (8443 on the host address stays).
    // The ports relayed on ::1 are new ones: berth-portmap SIGKILLs the
    // old relay without waiting for it to exit, so the new relay can find
    // a port it keeps still bound (EADDRINUSE, code 103).
    let pm1b = host.portmap_conf(
        net,
        json!([
            {"hostPort": 8082, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5354, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": HOST_V4}
        ]),
        json!({}),
    );
    host.publish(&pm1b, &c1);
    g.step(
        &host.ns,
        "after the first container's repeated portmap ADD with other mappings",
    );
    host.unpublish(&pm1b, &c1);
    g.step(&host.ns, "after the last mapping's portmap DEL");
    assert_eq!(
        g.seen_at("after the bridge ADDs"),
        g.seen_at("after the last mapping's portmap DEL"),
        "the last mapping's DEL removes every portmap object"
    );
    host.detach(&br, &c1);
    host.detach(&br, &c2);
    g.step(&host.ns, "after the bridge DELs");
    g.finish();
}

/// berth-portmap alone (after a plugin that is not berth-bridge: a
/// result naming an address and nothing of berth's): `inet berth` holds
/// only the portmap objects, and the last mapping's DEL drops the table.
#[test]
fn published_ports_without_a_berth_bridge() {
    let host = Host::new("gfpa");
    let mut g = Golden::new("published_ports_alone");
    let c = Container {
        cid: "gold-pma-c1",
        ns: TestNetns::new("gold-pma-c1"),
        result: json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/gold-pma"}],
            "ips": [{"address": "10.201.5.2/24", "interface": 0},
                    {"address": "fd00:201:5::2/64", "interface": 0}]
        }),
    };
    let conf = host.portmap_conf(
        "gold-pma",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"},
               {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "::"}]),
        json!({"snat": true}),
    );
    host.publish(&conf, &c);
    g.step(&host.ns, "after the portmap ADD");
    host.unpublish(&conf, &c);
    g.step(&host.ns, "after the portmap DEL");
    g.finish();
}

// ---------------------------------------------------------------------------
// 4. macspoofchk

/// `macspoofchk`: each container's port gets its chain in `bridge berth`
/// and an element in the verdict map (MACs fixed by runtimeConfig.mac);
/// each DEL removes its own, the last one the table.
#[test]
fn macspoofchk_add_and_del() {
    let host = Host::new("gfsp");
    let mut g = Golden::new("macspoofchk");
    let conf = host.bridge_conf(
        "gold-spoof",
        "gbrsp",
        &["10.201.6.0/24"],
        json!({"macspoofchk": true, "ipMasq": true}),
    );
    let c1 = host.attach(&conf, "gold-spoof-c1", "02:42:0a:c9:06:02");
    g.step(&host.ns, "after the first ADD");
    let c2 = host.attach(&conf, "gold-spoof-c2", "02:42:0a:c9:06:03");
    g.step(&host.ns, "after the second ADD");
    host.detach(&conf, &c1);
    g.step(&host.ns, "after the first DEL");
    host.detach(&conf, &c2);
    g.step(&host.ns, "after the last DEL");
    g.finish();
}

// ---------------------------------------------------------------------------
// 5. the quiet chain

/// The quiet chain (`bridge berth` `quiet_ingress`, one rule per port name
/// prefix of berth's front ends) comes with every berth-bridge network,
/// even one with nothing but its forward rules (no gateway, no
/// masquerade); on a host with the forward chain `quiet` of earlier
/// versions, the first ADD removes that chain; the last DEL drops the
/// quiet chain and the table.
#[test]
fn quiet_chain_and_its_upgrade() {
    let host = Host::new("gfqt");
    let mut g = Golden::new("quiet_chain");
    // What an earlier berth left: the quiet rules at the forward hook.
    host.ns.sh(
        "nft -f - <<'EOF'\n\
         table bridge berth {\n\
         \tchain quiet {\n\
         \t\ttype filter hook forward priority -200; policy accept;\n\
         \t\tiifname \"bv*\" icmpv6 type { nd-router-solicit, mld-listener-report, mld2-listener-report } drop\n\
         \t}\n\
         }\n\
         EOF",
    );
    g.step(&host.ns, "an earlier version's quiet chain");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "gold-quiet", "type": "berth-bridge", "bridge": "gbrq",
        "ipam": {"type": "berth-ipam", "dataDir": host.data.path(),
                 "ranges": [[{"subnet": "10.201.7.0/24"}]]}
    });
    let c = host.attach(&conf, "gold-quiet-c1", "02:42:0a:c9:07:02");
    g.step(
        &host.ns,
        "after the ADD of a network without gateway or masquerade",
    );
    host.detach(&conf, &c);
    g.step(&host.ns, "after the last DEL");
    g.finish();
}

// ---------------------------------------------------------------------------
// 6. Docker's DOCKER-USER chain

/// Docker's filter state as iptables-nft makes it (FORWARD policy drop,
/// FORWARD -> DOCKER-USER -> return), for IPv4 and IPv6.
const DOCKER_FILTER: &str = "\
table ip filter {
\tchain DOCKER-USER {
\t\tcounter return
\t}
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter jump DOCKER-USER
\t}
}
table ip6 filter {
\tchain DOCKER-USER {
\t\tcounter return
\t}
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter jump DOCKER-USER
\t}
}
";

/// On a host with Docker's DOCKER-USER chains, a network's first ADD
/// inserts berth's accept rule into both (ip and ip6); when Docker makes
/// its tables anew, `berth watch` inserts it again (the same tables as
/// after the ADD, listed in another order: a golden step of its own); the
/// last DEL removes it, leaving Docker's tables as they were.
#[test]
fn docker_user_rule() {
    let host = Host::new("gfdu");
    let mut g = Golden::new("docker_user");
    let files = TempDir::new("gfdu-files");
    let file = files.path().join("docker.nft");
    std::fs::write(&file, DOCKER_FILTER).expect("write Docker's filter tables");
    host.ns
        .exec_ok(&["nft", "-f", file.to_str().expect("UTF-8 path")]);
    g.step(&host.ns, "Docker's filter tables");
    let conf = host.bridge_conf(
        "gold-docker",
        "gbrdk",
        &["10.201.8.0/24", "fd00:201:8::/64"],
        json!({"ipMasq": true}),
    );
    let c = host.attach(&conf, "gold-docker-c1", "02:42:0a:c9:08:02");
    g.step(&host.ns, "after the ADD");

    // Docker restarting: its tables made anew (one transaction), without
    // berth's rule, which `berth watch` puts back.
    let w = Watcher::start(&host);
    let n = w.repairs();
    let restart = files.path().join("restart.nft");
    std::fs::write(
        &restart,
        format!("delete table ip filter\ndelete table ip6 filter\n{DOCKER_FILTER}"),
    )
    .expect("write Docker's restart");
    host.ns
        .exec_ok(&["nft", "-f", restart.to_str().expect("UTF-8 path")]);
    let repaired = repaired_ruleset(&host, &w, n, "after Docker's tables were made anew");
    drop(w);
    // Docker's tables now come after berth's in the listing (tables are
    // listed in the order they were made); otherwise all is as after the
    // ADD.
    assert_eq!(
        tables_sorted(&repaired),
        tables_sorted(g.seen_at("after the ADD")),
        "berth watch's repair differs from the ADD's DOCKER-USER rule"
    );
    g.record(
        "after Docker made its tables anew and berth watch repaired them",
        repaired,
    );

    host.detach(&conf, &c);
    g.step(&host.ns, "after the last DEL");
    assert_eq!(
        g.seen_at("Docker's filter tables"),
        g.seen_at("after the last DEL"),
        "the last DEL leaves Docker's tables as they were"
    );
    g.finish();
}

// ---------------------------------------------------------------------------
// 7. the reconciler's repairs

/// What `berth watch` is given to be watching within.
const WATCH_STARTUP: Duration = Duration::from_secs(10);
/// How long a repair may take.
const REPAIR_WITHIN: Duration = Duration::from_secs(3);
/// How long the ruleset must stay the same to count as settled.
const SETTLED: Duration = Duration::from_millis(400);

/// `berth watch` in a host namespace, killed by its PID on drop.
struct Watcher {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(host: &Host) -> Watcher {
        // `ip netns exec` and `env` exec in place: the child's PID is the
        // watcher's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", host.ns.name(), "env", "-i"])
            .arg(format!(
                "PATH={}",
                std::env::var("PATH").unwrap_or_default()
            ))
            .arg(format!("BERTH_RUN_DIR={}", host.run.path().display()))
            .arg("BERTH_LOG=info")
            .arg(bin("berth"))
            .args(["watch", "--interval", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth watch");
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("stderr"), log.clone());
        collect(child.stdout.take().expect("stdout"), log.clone());
        let mut w = Watcher { child, log };
        let started = Instant::now();
        while !w.log().contains("watching") {
            if let Some(status) = w.child.try_wait().expect("wait for berth watch") {
                panic!("berth watch exited ({status}):\n{}", w.log());
            }
            assert!(
                started.elapsed() < WATCH_STARTUP,
                "berth watch is not watching after {WATCH_STARTUP:?}:\n{}",
                w.log()
            );
            std::thread::sleep(POLL);
        }
        w
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn repairs(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("repaired"))
            .count()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- berth watch log ---\n{}--- end ---", self.log());
        }
    }
}

/// Appends what `pipe` carries to `log`, on a thread that ends with it.
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

/// Waits until `w` has logged a repair after its `before`th one and the
/// ruleset has then stayed the same for [`SETTLED`]; returns it.
fn repaired_ruleset(host: &Host, w: &Watcher, before: usize, what: &str) -> String {
    let since = Instant::now();
    let logged = poll_until(since, REPAIR_WITHIN, || w.repairs() > before);
    assert!(
        logged.is_some(),
        "{what}: berth watch logged no repair within {REPAIR_WITHIN:?}:\n{}",
        w.log()
    );
    let mut last = Golden::ruleset(&host.ns);
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < SETTLED {
        assert!(
            since.elapsed() < REPAIR_WITHIN + SETTLED * 4,
            "{what}: the ruleset does not settle after the repair"
        );
        std::thread::sleep(POLL);
        let now = Golden::ruleset(&host.ns);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// Containers with published ports (two profiles), MAC spoof checks and
/// two networks; `nft flush ruleset` in the host namespace, then
/// `berth watch` puts everything back from berth's records: the same
/// ruleset as before the flush (compared with that step's golden). Then
/// `nft delete table inet berth` (the bridge table stays), repaired to
/// the same ruleset too.
#[test]
fn reconciler_repairs_a_flush() {
    let host = Host::new("gfrc").with_addresses();
    let mut g = Golden::new("reconciler");
    let a = host.bridge_conf(
        "gold-rca",
        "gbrrca",
        &["10.201.9.0/24", "fd00:201:9::/64"],
        json!({"ipMasq": true, "hairpinMode": true, "macspoofchk": true}),
    );
    let b = host.bridge_conf(
        "gold-rcb",
        "gbrrcb",
        &["10.201.10.0/24"],
        json!({"isolation": false}),
    );
    let c1 = host.attach(&a, "gold-rc-c1", "02:42:0a:c9:09:02");
    let c2 = host.attach(&a, "gold-rc-c2", "02:42:0a:c9:09:03");
    let c3 = host.attach(&b, "gold-rc-c3", "02:42:0a:c9:0a:02");
    host.publish(
        &host.portmap_conf("gold-rca", pm_mappings_c1(), json!({})),
        &c1,
    );
    host.publish(
        &host.portmap_conf(
            "gold-rca",
            json!([{"hostPort": 9090, "containerPort": 90, "protocol": "udp"}]),
            json!({"masqAll": true, "conditionsV4": ["ip saddr != 10.98.0.0/16"]}),
        ),
        &c2,
    );
    host.publish(
        &host.portmap_conf(
            "gold-rcb",
            json!([{"hostPort": 7070, "containerPort": 70, "protocol": "tcp"}]),
            json!({"snat": false}),
        ),
        &c3,
    );
    g.step(&host.ns, "before the flush");
    let before = g.seen_at("before the flush").to_string();

    let w = Watcher::start(&host);
    assert_eq!(
        Golden::ruleset(&host.ns),
        before,
        "berth watch changed a complete ruleset"
    );
    let n = w.repairs();
    host.ns.exec_ok(&["nft", "flush", "ruleset"]);
    let repaired = repaired_ruleset(&host, &w, n, "after nft flush ruleset");
    g.again(
        "before the flush",
        &repaired,
        "repaired after nft flush ruleset",
    );

    let n = w.repairs();
    host.ns
        .exec_ok(&["nft", "delete", "table", "inet", "berth"]);
    let repaired = repaired_ruleset(&host, &w, n, "after nft delete table inet berth");
    g.again(
        "before the flush",
        &repaired,
        "repaired after nft delete table inet berth",
    );
    drop(w);
    g.finish();
}

// ---------------------------------------------------------------------------
// 8. berthd's networks (Docker's NetworkDriver)

/// berthd serving on a socket in a temp dir, running inside a host
/// namespace (its bridges and rules land there), killed by PID on drop.
struct Berthd {
    dir: TempDir,
    child: Child,
}

impl Berthd {
    fn start(host: &Host) -> Berthd {
        let dir = TempDir::new("gfbd");
        let socket = dir.path().join("berth.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", host.ns.name(), "env", "-i"])
            .arg(format!(
                "PATH={}",
                std::env::var("PATH").unwrap_or_default()
            ))
            .arg(format!("BERTH_RUN_DIR={}", host.run.path().display()))
            .arg("BERTH_LOG=warn")
            .arg(bin("berthd"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start berthd");
        let d = Berthd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "berthd did not listen");
            std::thread::sleep(POLL);
        }
        d
    }

    /// POST /<method> with `body`; the answer, which must be a success.
    fn ok(&self, method: &str, body: Value) -> Value {
        let socket = self.dir.path().join("berth.sock");
        let body = format!("{body}\n");
        let (code, v) = plugin_post(&socket, method, body.as_bytes(), Duration::from_secs(60));
        assert!(
            code == 200 && v["Err"].as_str().unwrap_or("").is_empty(),
            "{method} {body}: {code} {v}"
        );
        v
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// berthd's CreateNetwork and DeleteNetwork: a Docker `--internal` network
/// (no forwarding off its bridge, no masquerade: the one way to the
/// `internal` rules) and an ordinary one beside it (masquerade,
/// isolation), with fixed network IDs.
#[test]
fn berthd_internal_and_default_networks() {
    let host = Host::new("gfbd");
    let mut g = Golden::new("berthd_networks");
    let d = Berthd::start(&host);
    let internal = format!("1a{}", "0".repeat(62));
    let default = format!("2b{}", "0".repeat(62));
    d.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": internal,
               "Options": {"com.docker.network.internal": true,
                           "com.docker.network.generic": {"bridge": "gbrdi"}},
               "IPv4Data": [{"AddressSpace": "berth-local", "Pool": "10.201.11.0/24",
                             "Gateway": "10.201.11.1/24"}],
               "IPv6Data": []}),
    );
    g.step(&host.ns, "after CreateNetwork of an internal network");
    d.ok(
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": default,
               "Options": {"com.docker.network.generic": {"bridge": "gbrdd"}},
               "IPv4Data": [{"AddressSpace": "berth-local", "Pool": "10.201.12.0/24",
                             "Gateway": "10.201.12.1/24"}],
               "IPv6Data": [{"AddressSpace": "berth-local", "Pool": "fd00:201:12::/64",
                             "Gateway": "fd00:201:12::1/64"}]}),
    );
    g.step(&host.ns, "after CreateNetwork of a default network");
    d.ok(
        "NetworkDriver.DeleteNetwork",
        json!({"NetworkID": internal}),
    );
    g.step(&host.ns, "after DeleteNetwork of the internal network");
    d.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": default}));
    g.step(&host.ns, "after DeleteNetwork of the default network");
    g.finish();
}

// ---------------------------------------------------------------------------
// the normaliser itself (no root needed)

#[test]
fn normaliser_drops_handles_and_counts_and_sorts_elements() {
    let raw = "table inet berth { # handle 7\n\
               \tset s { # handle 3\n\
               \t\ttype ifname\n\
               \t\telements = { \"b\",\n\
               \t\t\t     \"a\" }\n\
               \t}\n\
               \tchain c { # handle 1\n\
               \t\tcounter packets 12 bytes 3400 accept comment \"x, y\" # handle 9\n\
               \t\tcounter packets 0 bytes 0\n\
               \t}\n\
               }\n\n";
    assert_eq!(
        normalise(raw),
        "table inet berth {\n\
         \tset s {\n\
         \t\ttype ifname\n\
         \t\telements = {\n\
         \t\t\t\"a\",\n\
         \t\t\t\"b\",\n\
         \t\t}\n\
         \t}\n\
         \tchain c {\n\
         \t\tcounter accept comment \"x, y\"\n\
         \t\tcounter\n\
         \t}\n\
         }\n"
    );
    assert_eq!(normalise(""), "");
    assert_eq!(
        normalise(
            "\t\tiifname \"b{*\" icmpv6 type { nd-router-solicit, mld-listener-report } drop\n"
        ),
        "\t\tiifname \"b{*\" icmpv6 type { mld-listener-report, nd-router-solicit } drop\n"
    );
    let one_line = "\t\telements = { tcp . 80 : 10.0.0.2 . 8080, \"bv1\" : jump spoof-bv1 }";
    assert_eq!(
        normalise(one_line),
        "\t\telements = {\n\t\t\t\"bv1\" : jump spoof-bv1,\n\t\t\ttcp . 80 : 10.0.0.2 . 8080,\n\t\t}\n"
    );
    assert_eq!(diff("a\nb\nc\n", "a\nc\nd\n"), "  a\n- b\n  c\n+ d\n");
    assert_eq!(
        tables_sorted("table ip b {\n}\ntable inet a {\n\tchain c {\n\t}\n}\n"),
        "table inet a {\n\tchain c {\n\t}\n}\ntable ip b {\n}\n"
    );
    let steps = parse_golden("# header\n# --- step: one ---\nx\n\n# --- step: two ---\n");
    assert_eq!(
        steps,
        vec![
            ("one".to_string(), "x\n".to_string()),
            ("two".to_string(), String::new())
        ]
    );
}
