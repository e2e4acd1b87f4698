//! The cases (cni-contract.md section 5, for an interface plugin with IPAM).
//!
//! A case returns `Ok(Pass)`, `Ok(Na(reason))` or an error (FAIL). The
//! attachments it makes are guards: whatever it leaves live is DELeted the
//! way a runtime would, and its namespaces deleted, before the runner diffs
//! the host against the baseline.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use crate::exec::{have_program, Out};
use crate::runtime::{result_ips, vge, Att, Suite, KNOWN_VERSIONS};

pub enum Outcome {
    Pass(Option<String>),
    Na(String),
}

pub struct Case {
    pub id: &'static str,
    pub desc: &'static str,
    pub run: fn(&Suite) -> Result<Outcome>,
}

fn pass() -> Result<Outcome> {
    Ok(Outcome::Pass(None))
}

fn pass_note(s: impl Into<String>) -> Result<Outcome> {
    Ok(Outcome::Pass(Some(s.into())))
}

fn na(s: impl Into<String>) -> Result<Outcome> {
    Ok(Outcome::Na(s.into()))
}

macro_rules! cases {
    ($($id:literal $f:ident $desc:literal;)*) => {
        pub fn all() -> Vec<Case> {
            vec![$(Case { id: $id, desc: $desc, run: $f },)*]
        }
    };
}

cases! {
    "version" version "VERSION with only CNI_COMMAND: cniVersion and known supportedVersions (every plugin)";
    "version-garbage-stdin" version_garbage "VERSION ignores garbage on stdin";
    "no-command" no_command "no CNI_COMMAND: exit 0 with about text on stderr, or error 4";
    "unknown-command" unknown_command "CNI_COMMAND=FOO: error 4";
    "add-missing-env" add_missing_env "ADD without CNI_CONTAINERID / CNI_NETNS / CNI_IFNAME: error 4 naming the variable";
    "add-missing-cni-path" add_missing_cni_path "ADD without CNI_PATH (IPAM cannot be found): a CNI error";
    "bad-container-id" bad_container_id "CNI_CONTAINERID \"-bad id\": error 4";
    "bad-ifname" bad_ifname "CNI_IFNAME 16 chars, \".\", \"a/b\", \"a:b\", \"a b\": error 4";
    "bad-json" bad_json "stdin `{bad`: error 6";
    "bad-name" bad_name "network name missing or \"bad name!\": error 7";
    "add-bad-version" add_bad_version "ADD cniVersion 9.9.9: error 1 naming the supported versions";
    "check-bad-version" check_bad_version "CHECK cniVersion 0.3.1: error 1; \"abc\": error 6";
    "status-gc-old-version" status_gc_old "STATUS and GC with cniVersion 1.0.0: error 1";
    "add-versions" add_versions "ADD at every supported version: result cniVersion and shape of that version";
    "add-result" add_result "ADD result: valid interface indexes, sandbox, addresses and routes really there";
    "add-duplicate" add_duplicate "second ADD of the same container/ifname fails and changes nothing (lo: succeeds, same result)";
    "add-del-del" add_del_del "ADD, DEL, DEL: both DELs succeed, interface gone, address reusable";
    "del-netns-gone" del_netns_gone "DEL after the netns was deleted: exit 0, address released";
    "del-empty-netns" del_empty_netns "DEL with empty CNI_NETNS: exit 0, address released";
    "del-no-netns" del_no_netns "DEL without CNI_NETNS: exit 0, address released";
    "del-never-added" del_never_added "DEL of a container never added: exit 0";
    "del-no-prevresult" del_no_prev "DEL without prevResult: exit 0, everything released";
    "check-after-add" check_after_add "CHECK right after ADD (cached result as prevResult): exit 0, no output";
    "check-no-prevresult" check_no_prev "CHECK without prevResult: error";
    "check-after-del" check_after_del "CHECK after DEL: error";
    "check-iface-removed" check_iface_removed "CHECK after the container interface was deleted by hand (lo: set down): error";
    "check-addr-removed" check_addr_removed "CHECK after the container address was deleted by hand: error";
    "check-route-removed" check_route_removed "CHECK after a result route was deleted by hand: error";
    "prev-result-version" prev_result_version "prevResult of another result family than the config: error; prevResult without cniVersion: accepted";
    "add-netns-missing" add_netns_missing "ADD with a nonexistent CNI_NETNS: error";
    "add-own-netns" add_own_netns "ADD with CNI_NETNS = the plugin's own netns: error";
    "ipam-missing" ipam_missing "IPAM binary missing from CNI_PATH: ADD fails, the following DEL cleans up";
    "cni-args-unknown" cni_args_unknown "CNI_ARGS FOO=bar: error";
    "cni-args-ignore-unknown" cni_args_ignore "CNI_ARGS IgnoreUnknown=1;FOO=bar: ADD succeeds";
    "cni-args-ip" cni_args_ip "CNI_ARGS IgnoreUnknown=1;IP=<addr>: exactly that address";
    "args-cni-ips" args_cni_ips "args.cni.ips: exactly that address";
    "runtimeconfig-ips" runtimeconfig_ips "runtimeConfig.ips (capability ips): exactly that address";
    "ip-outside-range" ip_outside_range "requested address outside the ranges: error";
    "ip-gateway" ip_gateway "requested address = the gateway: error";
    "subnet-31" subnet_31 "IPv4 /31 subnet: ADD error";
    "range-exhaustion" range_exhaustion "range of one address: one ADD succeeds, the next fails, a DEL frees the address";
    "status-exhausted" status_exhausted "STATUS with the range exhausted: error 50";
    "parallel-add" parallel_add "20 parallel ADDs: all succeed with unique addresses; parallel DELs clean up";
    "gc-valid-attachments" gc_valid "GC with cni.dev/valid-attachments: unlisted attachment released, listed kept";
    "gc-attachments-legacy" gc_legacy "GC with legacy cni.dev/attachments: unlisted attachment released";
    "status" status "STATUS: exit 0, no output (every plugin)";
    "status-ipam-missing" status_ipam_missing "STATUS with the IPAM binary missing: error (STATUS is forwarded)";
    "ping" ping "traffic: container to container and to the gateway (busybox ping)";
    "chained-no-prevresult" chained_no_prev "chained meta plugin (portmap, tuning, ...) ADD without prevResult: error";
    "chained-nothing-to-do" chained_nothing_to_do "chained plugin ADD with nothing to do: stdout is the prevResult, same cniVersion";
    "portmap-bad-port" portmap_bad_port "portmap with hostPort 0: ADD error, nothing left after DEL";
}

/// The plugins after the interface plugin: (index, type).
fn chained(s: &Suite) -> Vec<(usize, String)> {
    s.plugins()
        .iter()
        .enumerate()
        .skip(s.main + 1)
        .map(|(i, p)| (i, p["type"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Meta plugins: they only change what an earlier plugin made, so they
/// need its result (unlike e.g. `loopback`, which also works alone).
const META_PLUGINS: [&str; 5] = ["portmap", "tuning", "firewall", "bandwidth", "sbr"];

fn chained_no_prev(s: &Suite) -> Result<Outcome> {
    let plugins: Vec<(usize, String)> = chained(s)
        .into_iter()
        .filter(|(_, t)| META_PLUGINS.iter().any(|m| t.contains(m)))
        .collect();
    if plugins.is_empty() {
        return na(
            "the conflist has no chained meta plugin (portmap, tuning, firewall, bandwidth, sbr)",
        );
    }
    let a = s.att()?;
    let env = s.env_for(&a, &[]);
    let mut notes = Vec::new();
    for (i, typ) in plugins {
        let c = Suite::plugin_conf(&s.conf, i, &s.version, None, &a.caps, None);
        let o = s.exec(&typ, Some("ADD"), &env, &conf_bytes(&c));
        let code = o
            .cni_error()
            .with_context(|| format!("{typ} ADD without prevResult"))?;
        notes.push(format!("{typ}: error {code}"));
    }
    pass_note(notes.join("; "))
}

fn chained_nothing_to_do(s: &Suite) -> Result<Outcome> {
    let plugins = chained(s);
    if plugins.is_empty() {
        return na("the conflist has no chained plugin");
    }
    let mut a = s.att()?;
    let env = s.env_for(&a, &[]);
    a.live = true;
    let c = Suite::plugin_conf(&s.conf, s.main, &s.version, None, &a.caps, None);
    let o = s.exec(&s.main_type(), Some("ADD"), &env, &conf_bytes(&c));
    let mut prev = o
        .json
        .clone()
        .filter(|_| o.ok())
        .with_context(|| format!("{} ADD: {}", s.main_type(), o.brief()))?;
    a.result = Some(prev.clone());
    for (i, typ) in plugins {
        let c = Suite::plugin_conf(&s.conf, i, &s.version, Some(&prev), &a.caps, None);
        let o = s.exec(&typ, Some("ADD"), &env, &conf_bytes(&c));
        let out = o
            .json
            .clone()
            .filter(|_| o.ok())
            .with_context(|| format!("{typ} ADD: {}", o.brief()))?;
        if out != prev {
            bail!(
                "{typ} changed the result with nothing to do:\nprevResult {prev}\nstdout     {out}"
            );
        }
        prev = out;
    }
    del(s, &mut a)?;
    pass()
}

fn portmap_bad_port(s: &Suite) -> Result<Outcome> {
    let Some((_, typ)) = chained(s).into_iter().find(|(_, t)| t.contains("portmap")) else {
        return na("the conflist has no portmap plugin");
    };
    let mut a = s.att()?;
    a.caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]),
    );
    let (failed, o, code) = add_must_fail(s, &mut a, &[])?;
    if failed != typ {
        bail!(
            "expected {typ} to refuse hostPort 0, but {failed} failed: {}",
            o.brief()
        );
    }
    del(s, &mut a)?;
    pass_note(format!("{typ}: error {code}"))
}

// ---------------------------------------------------------------------------
// helpers

/// "<plugin>: <output>" for a failed chain step.
fn step((typ, o): (String, Out)) -> anyhow::Error {
    anyhow!("{typ}: {}", o.brief())
}

fn add(s: &Suite, a: &mut Att) -> Result<Value> {
    s.add(a, &[]).map_err(|e| step(e).context("ADD failed"))
}

fn del(s: &Suite, a: &mut Att) -> Result<()> {
    s.del_done(a, &[], true)
        .map_err(|e| step(e).context("DEL failed"))
}

/// Reasons cases need something, `None` when it's there.
fn need_ipam(s: &Suite) -> Option<String> {
    match s.ipam_type() {
        None => Some(format!("plugin {} has no ipam section", s.main_type())),
        Some(_) => None,
    }
}

fn need_check(s: &Suite) -> Option<String> {
    if !vge(&s.version, "0.4.0") {
        return Some(format!(
            "conf cniVersion {} < 0.4.0 has no CHECK",
            s.version
        ));
    }
    if s.conf
        .get("disableCheck")
        .is_some_and(|v| v == &json!(true) || v == &json!("true"))
    {
        return Some("conf sets disableCheck".into());
    }
    None
}

fn need_v11(s: &Suite, verb: &str) -> Option<String> {
    if !vge(&s.version, "1.1.0") {
        return Some(format!(
            "conf cniVersion {} < 1.1.0 has no {verb}",
            s.version
        ));
    }
    if !s.all_support("1.1.0") {
        return Some(format!(
            "not every plugin lists 1.1.0 in supportedVersions, so no {verb}"
        ));
    }
    if verb == "GC"
        && s.conf
            .get("disableGC")
            .is_some_and(|v| v == &json!(true) || v == &json!("true"))
    {
        return Some("conf sets disableGC".into());
    }
    None
}

macro_rules! require {
    ($e:expr) => {
        if let Some(r) = $e {
            return na(r);
        }
    };
}

/// With `--shared-netns` the container has no namespace, interface or
/// address of its own: cases that duplicate, delete or expect to lose them
/// don't apply.
fn need_own_netns(s: &Suite) -> Option<String> {
    s.shared_netns.then(|| {
        "--shared-netns: the container uses the host's namespace and interfaces, not its own"
            .to_string()
    })
}

/// The first IPv4 range of the interface plugin's IPAM.
struct V4Range {
    net: u32,
    prefix: u32,
    start: u32,
    end: u32,
    gw: u32,
}

fn parse_cidr4(s: &str) -> Option<(u32, u32)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u32 = p.parse().ok()?;
    if p > 32 {
        return None;
    }
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some((u32::from(a) & mask, p))
}

fn v4_range(s: &Suite) -> Option<V4Range> {
    for [subnet, start, end, gw] in s.ranges() {
        let Some((net, prefix)) = subnet.as_deref().and_then(parse_cidr4) else {
            continue;
        };
        let bcast = net | if prefix == 32 { 0 } else { u32::MAX >> prefix };
        let ip = |x: &Option<String>| {
            x.as_deref()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .map(u32::from)
        };
        let gw = ip(&gw).unwrap_or(net + 1);
        return Some(V4Range {
            net,
            prefix,
            start: ip(&start).unwrap_or(net + 1),
            end: ip(&end).unwrap_or(bcast.saturating_sub(1)),
            gw,
        });
    }
    None
}

/// An address of the first IPv4 range, `k` steps in (skipping the
/// gateway), if the range has that many.
fn pick_v4(s: &Suite, k: u32) -> Option<String> {
    let r = v4_range(s)?;
    let mut a = r.start + 10 + k;
    if a == r.gw {
        a += 1;
    }
    (a <= r.end).then(|| Ipv4Addr::from(a).to_string())
}

fn addr_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

fn parse_net(s: &str, v6: bool) -> Option<(IpAddr, u32)> {
    if s == "default" {
        return Some(if v6 {
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
        } else {
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        });
    }
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, p.parse().ok()?),
        None => (s, if s.contains(':') { 128 } else { 32 }),
    };
    Some((a.parse().ok()?, p))
}

/// The cidrs on `dev` in the container.
fn container_addrs(a: &Att, dev: &str) -> Result<Vec<(IpAddr, u32)>> {
    let v = a.ns.ip_json(&["addr", "show", "dev", dev])?;
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for ai in l["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(p)) = (ai["local"].as_str(), ai["prefixlen"].as_u64()) {
                if let Ok(ip) = ip.parse() {
                    out.push((ip, p as u32));
                }
            }
        }
    }
    Ok(out)
}

fn container_routes(a: &Att) -> Result<Vec<(IpAddr, u32)>> {
    let mut out = Vec::new();
    for (fam, v6) in [("-4", false), ("-6", true)] {
        for r in
            a.ns.ip_json(&[fam, "route", "show", "table", "all"])?
                .as_array()
                .into_iter()
                .flatten()
        {
            if let Some(n) = r["dst"].as_str().and_then(|d| parse_net(d, v6)) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Checks an ADD result against the container and the host (contract
/// 16-18) for the version `v` it was requested at.
fn verify_result(s: &Suite, a: &Att, r: &Value, v: &str) -> Result<()> {
    let got_v = r.get("cniVersion").and_then(Value::as_str);
    ensure!(
        got_v == Some(v),
        "result cniVersion {got_v:?}, requested {v:?}"
    );
    if !vge(v, "0.3.0") {
        ensure!(
            r.get("ips").is_none(),
            "{v} result has `ips` (0.1.0/0.2.0 use ip4/ip6)"
        );
        let ip4 = r
            .get("ip4")
            .and_then(|x| x.get("ip"))
            .and_then(Value::as_str);
        let ip6 = r
            .get("ip6")
            .and_then(|x| x.get("ip"))
            .and_then(Value::as_str);
        ensure!(
            ip4.is_some() || ip6.is_some(),
            "{v} result without ip4.ip / ip6.ip: {r}"
        );
        let have = container_addrs(a, &a.ifname)?;
        for c in [ip4, ip6].into_iter().flatten() {
            let n = parse_net(c, c.contains(':')).context("bad address in result")?;
            ensure!(
                have.contains(&n),
                "address {c} of the result is not on {} in the container",
                a.ifname
            );
        }
        return Ok(());
    }
    let ips = r
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ensure!(!ips.is_empty(), "result has no ips: {r}");
    let ifaces = r
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for ip in &ips {
        let has_version = ip.get("version").is_some();
        if vge(v, "1.0.0") {
            ensure!(!has_version, "{v} result has ips[].version: {ip}");
        } else {
            let want = if ip["address"].as_str().unwrap_or("").contains(':') {
                "6"
            } else {
                "4"
            };
            ensure!(
                ip["version"].as_str() == Some(want),
                "{v} result needs ips[].version {want:?}: {ip}"
            );
        }
        if let Some(i) = ip.get("interface") {
            let i = i
                .as_u64()
                .context("ips[].interface is not an unsigned integer")?;
            ensure!(
                (i as usize) < ifaces.len(),
                "ips[].interface {i} out of range ({} interfaces)",
                ifaces.len()
            );
        }
    }
    // The container interface.
    let cont = ifaces.iter().position(|i| {
        i["name"].as_str() == Some(a.ifname.as_str())
            && i["sandbox"].as_str().is_some_and(|x| !x.is_empty())
    });
    let ci = cont.with_context(|| {
        format!(
            "no interface {} with a sandbox in the result: {r}",
            a.ifname
        )
    })?;
    let sb = ifaces[ci]["sandbox"].as_str().unwrap_or("");
    ensure!(
        sb == a.ns.path,
        "container interface sandbox {sb:?}, CNI_NETNS was {:?}",
        a.ns.path
    );
    let have = container_addrs(a, &a.ifname)?;
    for ip in &ips {
        let c = ip["address"].as_str().context("ips[].address missing")?;
        let n = parse_net(c, c.contains(':')).with_context(|| format!("bad address {c}"))?;
        if ip.get("interface").and_then(Value::as_u64) == Some(ci as u64) {
            ensure!(
                have.contains(&n),
                "address {c} of the result is not on {} in the container",
                a.ifname
            );
        }
    }
    let routes = container_routes(a)?;
    for rt in r
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let d = rt["dst"].as_str().context("routes[].dst missing")?;
        let n = parse_net(d, d.contains(':')).with_context(|| format!("bad route dst {d}"))?;
        let n = (n.0, n.1);
        ensure!(
            routes.contains(&n),
            "route {d} of the result is not in the container"
        );
    }
    // Host-side interfaces exist in the host namespace.
    for i in &ifaces {
        if i["sandbox"].as_str().unwrap_or("").is_empty() {
            let name = i["name"].as_str().unwrap_or("");
            let o = crate::exec::run("ip", &["-n", &s.host.name, "link", "show", "dev", name]);
            ensure!(
                o.ok(),
                "host interface {name} of the result does not exist on the host"
            );
        }
    }
    Ok(())
}

/// A new attachment requesting `ip` (CNI_ARGS IP) gets it: the address was
/// released.
fn assert_released(s: &Suite, cidr: &str) -> Result<()> {
    let ip = addr_of(cidr);
    if ip.contains(':') {
        return Ok(());
    }
    let mut b = s.att()?;
    b.cni_args = Some(format!("IgnoreUnknown=1;IP={ip}"));
    let r = s
        .add(&mut b, &[])
        .map_err(step)
        .with_context(|| format!("address {ip} was not released: requesting it again failed"))?;
    ensure!(
        result_ips(&r).iter().any(|c| addr_of(c) == ip),
        "requested the released {ip} again, got {:?}",
        result_ips(&r)
    );
    del(s, &mut b)
}

fn first_v4(a: &Att) -> Option<String> {
    a.ips().into_iter().find(|c| !c.contains(':'))
}

/// An ADD expected to fail with a well-formed CNI error (the attachment
/// stays live, so the guard DELs it as a runtime would); returns its code.
fn add_must_fail(s: &Suite, a: &mut Att, ov: crate::runtime::Ov) -> Result<(String, Out, u64)> {
    match s.add(a, ov) {
        Ok(r) => bail!("ADD succeeded: {}", crate::exec::clip(&r.to_string(), 200)),
        Err((t, o)) => {
            let c = o.cni_error().with_context(|| t.to_string())?;
            Ok((t, o, c))
        }
    }
}

/// Runs the interface plugin alone; a runtime would DEL afterwards.
fn main_raw(
    s: &Suite,
    a: &mut Att,
    cmd: Option<&str>,
    ov: crate::runtime::Ov,
    stdin: &[u8],
) -> Out {
    a.live = true;
    s.exec_main(a, cmd, ov, stdin)
}

fn conf_bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

// ---------------------------------------------------------------------------
// cases

fn version(s: &Suite) -> Result<Outcome> {
    let mut notes = Vec::new();
    for t in s.supported.keys() {
        let o = s.exec(t, Some("VERSION"), &[], b"");
        ensure!(o.ok(), "{t}: VERSION failed: {}", o.brief());
        let j = o
            .json
            .as_ref()
            .with_context(|| format!("{t}: VERSION printed no JSON: {}", o.brief()))?;
        ensure!(j["cniVersion"].is_string(), "{t}: no cniVersion in {j}");
        let sv = j["supportedVersions"]
            .as_array()
            .with_context(|| format!("{t}: no supportedVersions in {j}"))?;
        ensure!(!sv.is_empty(), "{t}: empty supportedVersions");
        for v in sv {
            let v = v.as_str().unwrap_or("");
            ensure!(
                KNOWN_VERSIONS.contains(&v),
                "{t}: unknown version {v:?} in supportedVersions"
            );
        }
        notes.push(format!(
            "{t}: {}",
            sv.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    pass_note(notes.join("; "))
}

fn version_garbage(s: &Suite) -> Result<Outcome> {
    let mut types = vec![s.main_type()];
    types.extend(s.ipam_type());
    for t in types {
        let o = s.exec(&t, Some("VERSION"), &[], b"{bad");
        ensure!(o.ok(), "{t}: {}", o.brief());
        ensure!(
            o.json
                .as_ref()
                .is_some_and(|j| j["supportedVersions"].is_array()),
            "{t}: no supportedVersions: {}",
            o.brief()
        );
    }
    pass()
}

fn no_command(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(
        s,
        &mut a,
        None,
        &[],
        &conf_bytes(&s.single_conf(Some(&s.version))),
    );
    if o.ok() {
        ensure!(
            !o.stderr.trim().is_empty(),
            "exit 0 without about text on stderr"
        );
        ensure!(
            o.stdout.trim().is_empty(),
            "exit 0 but printed on stdout: {}",
            o.brief()
        );
        return pass_note("about text");
    }
    o.expect_code(4)?;
    pass_note("error 4")
}

fn unknown_command(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(
        s,
        &mut a,
        Some("FOO"),
        &[],
        &conf_bytes(&s.single_conf(Some(&s.version))),
    );
    o.expect_code(4)?;
    pass()
}

fn add_missing_env(s: &Suite) -> Result<Outcome> {
    let conf = conf_bytes(&s.single_conf(Some(&s.version)));
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let mut a = s.att()?;
        let o = main_raw(s, &mut a, Some("ADD"), &[(var, None)], &conf);
        o.expect_code(4).with_context(|| format!("without {var}"))?;
        ensure!(
            o.msg_details().contains(var),
            "error for missing {var} does not name it: {}",
            o.brief()
        );
    }
    pass()
}

fn add_missing_cni_path(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let mut a = s.att()?;
    let (t, _, code) = add_must_fail(s, &mut a, &[("CNI_PATH", None)])?;
    pass_note(format!("{t}: error {code}"))
}

fn bad_container_id(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(
        s,
        &mut a,
        Some("ADD"),
        &[("CNI_CONTAINERID", Some("-bad id"))],
        &conf_bytes(&s.single_conf(Some(&s.version))),
    );
    o.expect_code(4)?;
    // The runtime's DEL uses the same (bad) ID; it must not fail weirdly,
    // but the guard's DEL with a good ID is what cleans up.
    pass()
}

fn bad_ifname(s: &Suite) -> Result<Outcome> {
    let conf = conf_bytes(&s.single_conf(Some(&s.version)));
    for name in ["abcdefghijklmnop", ".", "a/b", "a:b", "a b"] {
        let mut a = s.att()?;
        let o = main_raw(s, &mut a, Some("ADD"), &[("CNI_IFNAME", Some(name))], &conf);
        o.expect_code(4)
            .with_context(|| format!("CNI_IFNAME {name:?}"))?;
    }
    pass()
}

fn bad_json(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(s, &mut a, Some("ADD"), &[], b"{bad");
    o.expect_code(6)?;
    pass()
}

fn bad_name(s: &Suite) -> Result<Outcome> {
    for (what, name) in [
        ("missing name", Value::Null),
        ("name \"bad name!\"", json!("bad name!")),
    ] {
        let mut list = s.conf.clone();
        if name.is_null() {
            if let Some(o) = list.as_object_mut() {
                o.remove("name");
            }
        } else {
            list["name"] = name;
        }
        let mut a = s.att()?;
        a.conf = Some(list);
        let (_, o, _) = add_must_fail(s, &mut a, &[]).with_context(|| what.to_string())?;
        o.expect_code(7).with_context(|| what.to_string())?;
        // The runtime's DEL for this attachment would carry the same bad
        // config; clean up with the good one.
        a.conf = None;
    }
    pass()
}

fn add_bad_version(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(
        s,
        &mut a,
        Some("ADD"),
        &[],
        &conf_bytes(&s.single_conf(Some("9.9.9"))),
    );
    o.expect_code(1)?;
    let sup = s.supported.get(&s.main_type()).cloned().unwrap_or_default();
    let md = o.msg_details();
    ensure!(
        sup.iter().any(|v| md.contains(v.as_str())),
        "error 1 does not name the supported versions: {}",
        o.brief()
    );
    pass()
}

fn check_bad_version(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(
        s,
        &mut a,
        Some("CHECK"),
        &[],
        &conf_bytes(&s.single_conf(Some("0.3.1"))),
    );
    o.expect_code(1).context("CHECK with 0.3.1")?;
    let o = main_raw(
        s,
        &mut a,
        Some("CHECK"),
        &[],
        &conf_bytes(&s.single_conf(Some("abc"))),
    );
    o.expect_code(6).context("CHECK with \"abc\"")?;
    pass()
}

fn status_gc_old(s: &Suite) -> Result<Outcome> {
    if !s.main_supports("1.1.0") {
        return na(format!(
            "{} does not list 1.1.0 (no STATUS/GC)",
            s.main_type()
        ));
    }
    let env = vec![("CNI_PATH".to_string(), s.cni_path.clone())];
    let conf = s.single_conf(Some("1.0.0"));
    let o = s.exec(&s.main_type(), Some("STATUS"), &env, &conf_bytes(&conf));
    o.expect_code(1).context("STATUS")?;
    let mut g = conf.clone();
    g["cni.dev/valid-attachments"] = json!([]);
    let o = s.exec(&s.main_type(), Some("GC"), &env, &conf_bytes(&g));
    o.expect_code(1).context("GC")?;
    pass()
}

fn add_versions(s: &Suite) -> Result<Outcome> {
    let sup = s.supported.get(&s.main_type()).cloned().unwrap_or_default();
    let mut tested = Vec::new();
    for v in KNOWN_VERSIONS {
        if !sup.iter().any(|x| x == v) {
            continue;
        }
        let mut a = s.att()?;
        a.conf =
            Some(json!({"cniVersion": v, "name": s.conf["name"], "plugins": [s.main_plugin()]}));
        let r = add(s, &mut a).with_context(|| format!("cniVersion {v}"))?;
        verify_result(s, &a, &r, v).with_context(|| format!("cniVersion {v}"))?;
        del(s, &mut a).with_context(|| format!("cniVersion {v}"))?;
        tested.push(v);
    }
    ensure!(
        !tested.is_empty(),
        "no known version in supportedVersions {sup:?}"
    );
    if sup.iter().any(|x| x == "0.1.0") {
        // No cniVersion at all means 0.1.0.
        let mut a = s.att()?;
        let o = main_raw(
            s,
            &mut a,
            Some("ADD"),
            &[],
            &conf_bytes(&s.single_conf(None)),
        );
        ensure!(o.ok(), "ADD without cniVersion: {}", o.brief());
        let mut r = o
            .json
            .clone()
            .context("ADD without cniVersion printed no JSON")?;
        if r.get("cniVersion").is_none() {
            r["cniVersion"] = json!("0.1.0");
        }
        verify_result(s, &a, &r, "0.1.0").context("ADD without cniVersion")?;
        tested.push("none");
    }
    pass_note(tested.join(","))
}

/// After DEL the container interface is gone; loopback, which cannot go,
/// is down; with `--shared-netns` the host's interfaces are untouched.
fn ensure_released(s: &Suite, a: &Att) -> Result<()> {
    if s.shared_netns {
        let o = a.ns.exec(&["ip", "-j", "link", "show", "dev", &a.ifname]);
        ensure!(
            o.ok() && o.stdout.contains("\"UP\""),
            "DEL took the host's {} away or down: {}",
            a.ifname,
            o.brief()
        );
        return Ok(());
    }
    if s.is_loopback() {
        let o = a.ns.exec(&["ip", "-j", "link", "show", "dev", &a.ifname]);
        ensure!(o.ok(), "lo is missing from the container: {}", o.brief());
        ensure!(!o.stdout.contains("\"UP\""), "lo still up after DEL");
        return Ok(());
    }
    let o = a.ns.exec(&["ip", "link", "show", "dev", &a.ifname]);
    ensure!(!o.ok(), "{} still in the container after DEL", a.ifname);
    Ok(())
}

fn add_result(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let r = add(s, &mut a)?;
    verify_result(s, &a, &r, &s.version)?;
    del(s, &mut a)?;
    ensure_released(s, &a)?;
    pass()
}

fn add_duplicate(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    if s.is_loopback() {
        return add_duplicate_loopback(s);
    }
    let mut a = s.att()?;
    add(s, &mut a)?;
    let before = crate::snapshot::Snapshot::take(&s.host.name, &s.state_dirs)?;
    let addrs = container_addrs(&a, &a.ifname)?;
    let first = a.result.clone();
    let (t, _, code) = add_must_fail(s, &mut a, &[])?;
    a.result = first;
    let after = crate::snapshot::Snapshot::take(&s.host.name, &s.state_dirs)?;
    let d = after.diff(&before);
    ensure!(
        d.is_empty(),
        "the failed duplicate ADD changed the host: {}",
        d.join(", ")
    );
    let addrs2 = container_addrs(&a, &a.ifname)?;
    ensure!(
        addrs == addrs2,
        "the container's addresses changed: {addrs:?} -> {addrs2:?}"
    );
    if need_check(s).is_none() {
        s.check(&a, &[], true)
            .map_err(step)
            .context("CHECK of the first attachment after the failed duplicate")?;
    }
    del(s, &mut a)?;
    pass_note(format!("{t}: error {code}"))
}

/// Loopback: `lo` exists in every namespace, so a second ADD (a runtime's
/// retry) finds it up and succeeds with the same result, changing nothing.
fn add_duplicate_loopback(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let first = add(s, &mut a)?;
    let before = crate::snapshot::Snapshot::take(&s.host.name, &s.state_dirs)?;
    let addrs = container_addrs(&a, &a.ifname)?;
    let second = add(s, &mut a).context("second ADD on lo")?;
    ensure!(
        second == first,
        "the second ADD's result differs from the first:\nfirst  {first}\nsecond {second}"
    );
    let after = crate::snapshot::Snapshot::take(&s.host.name, &s.state_dirs)?;
    let d = after.diff(&before);
    ensure!(
        d.is_empty(),
        "the second ADD changed the host: {}",
        d.join(", ")
    );
    let addrs2 = container_addrs(&a, &a.ifname)?;
    ensure!(
        addrs == addrs2,
        "the container's addresses changed: {addrs:?} -> {addrs2:?}"
    );
    if need_check(s).is_none() {
        s.check(&a, &[], true)
            .map_err(step)
            .context("CHECK after the second ADD")?;
    }
    del(s, &mut a)?;
    ensure_released(s, &a)?;
    pass_note("CNI_IFNAME lo: the second ADD succeeds with the same result")
}

fn add_del_del(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    s.del(&a, &[], true).map_err(step).context("first DEL")?;
    s.del_done(&mut a, &[], true)
        .map_err(step)
        .context("second DEL")?;
    ensure_released(s, &a)?;
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

fn del_netns_gone(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    add(s, &mut a)?;
    a.ns.delete();
    s.del_done(&mut a, &[], true).map_err(step).context("DEL")?;
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

fn del_empty_netns(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    add(s, &mut a)?;
    s.del_done(&mut a, &[("CNI_NETNS", Some(""))], true)
        .map_err(step)
        .context("DEL")?;
    a.ns.delete();
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

fn del_no_netns(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    add(s, &mut a)?;
    s.del_done(&mut a, &[("CNI_NETNS", None)], true)
        .map_err(step)
        .context("DEL")?;
    a.ns.delete();
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

fn del_never_added(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    s.del_done(&mut a, &[], true).map_err(step).context("DEL")?;
    pass()
}

fn del_no_prev(s: &Suite) -> Result<Outcome> {
    if !vge(&s.version, "0.4.0") {
        return na(format!(
            "conf cniVersion {} < 0.4.0: DEL never gets a prevResult",
            s.version
        ));
    }
    let mut a = s.att()?;
    add(s, &mut a)?;
    s.del_done(&mut a, &[], false)
        .map_err(step)
        .context("DEL")?;
    ensure_released(s, &a)?;
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

fn check_after_add(s: &Suite) -> Result<Outcome> {
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    let outs = s.check(&a, &[], true).map_err(step).context("CHECK")?;
    for o in outs {
        ensure!(
            o.stdout.trim().is_empty(),
            "CHECK printed on stdout: {}",
            o.brief()
        );
    }
    del(s, &mut a)?;
    pass()
}

/// Contract case 31, on CHECK (the verb an interface plugin reads
/// prevResult in): a prevResult whose cniVersion is of another result
/// family than the config's must be refused; one without cniVersion takes
/// the config's and is accepted.
fn prev_result_version(s: &Suite) -> Result<Outcome> {
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    let cached = a.result.clone().context("ADD left no cached result")?;
    let other = if vge(&s.version, "1.0.0") {
        "0.3.1"
    } else {
        "1.0.0"
    };
    let mut conf = s.single_conf(Some(&s.version));

    let mut foreign = cached.clone();
    foreign["cniVersion"] = json!(other);
    conf["prevResult"] = foreign;
    let o = s.exec_main(&a, Some("CHECK"), &[], &conf_bytes(&conf));
    let code = o.cni_error().with_context(|| {
        format!(
            "CHECK with config {} and a prevResult of cniVersion {other}",
            s.version
        )
    })?;

    let mut bare = cached;
    if let Some(m) = bare.as_object_mut() {
        m.remove("cniVersion");
    }
    conf["prevResult"] = bare;
    let o = s.exec_main(&a, Some("CHECK"), &[], &conf_bytes(&conf));
    ensure!(
        o.ok(),
        "CHECK with a prevResult without cniVersion failed: {}",
        o.brief()
    );
    del(s, &mut a)?;
    pass_note(format!(
        "prevResult {other} with config {}: error {code}",
        s.version
    ))
}

fn check_no_prev(s: &Suite) -> Result<Outcome> {
    require!(need_check(s));
    if s.is_loopback() {
        return na("CNI_IFNAME lo: lo's expected state needs nothing from the ADD result; the reference loopback CHECKs it without prevResult");
    }
    let mut a = s.att()?;
    add(s, &mut a)?;
    let o = s.exec_main(
        &a,
        Some("CHECK"),
        &[],
        &conf_bytes(&s.single_conf(Some(&s.version))),
    );
    let code = o.cni_error().context("CHECK without prevResult")?;
    del(s, &mut a)?;
    pass_note(format!("error {code}"))
}

/// CHECK (with the cached result) must fail; returns a note.
fn check_fails(s: &Suite, a: &Att) -> Result<String> {
    match s.check(a, &[], true) {
        Ok(_) => bail!("CHECK succeeded"),
        Err((t, o)) => {
            let c = o.cni_error().with_context(|| t.to_string())?;
            Ok(format!(
                "{t}: error {c}: {}",
                crate::exec::clip(o.msg(), 80)
            ))
        }
    }
}

fn check_after_del(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    del(s, &mut a)?;
    let n = check_fails(s, &a)?;
    pass_note(n)
}

fn check_iface_removed(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    if s.is_loopback() {
        // lo cannot be deleted; set down by hand, it is as good as gone.
        let o = a.ns.exec(&["ip", "link", "set", "dev", &a.ifname, "down"]);
        ensure!(o.ok(), "cannot set {} down: {}", a.ifname, o.brief());
        let n = check_fails(s, &a)?;
        del(s, &mut a)?;
        return pass_note(format!("lo set down by hand; {n}"));
    }
    let o = a.ns.exec(&["ip", "link", "del", "dev", &a.ifname]);
    ensure!(o.ok(), "cannot delete {}: {}", a.ifname, o.brief());
    let n = check_fails(s, &a)?;
    del(s, &mut a)?;
    pass_note(n)
}

fn check_addr_removed(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    let ip = a
        .ips()
        .into_iter()
        .next()
        .context("result without addresses")?;
    let o = a.ns.exec(&["ip", "addr", "del", &ip, "dev", &a.ifname]);
    ensure!(o.ok(), "cannot delete {ip}: {}", o.brief());
    let n = check_fails(s, &a)?;
    del(s, &mut a)?;
    pass_note(format!("removed {ip}; {n}"))
}

fn check_route_removed(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    require!(need_check(s));
    let mut a = s.att()?;
    let r = add(s, &mut a)?;
    let Some(rt) = r
        .get("routes")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
        .cloned()
    else {
        return na("the ADD result has no routes");
    };
    let dst = rt["dst"].as_str().unwrap_or("").to_string();
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    let o = a.ns.exec(&["ip", fam, "route", "del", &dst]);
    ensure!(o.ok(), "cannot delete route {dst}: {}", o.brief());
    let n = check_fails(s, &a)?;
    del(s, &mut a)?;
    pass_note(format!("removed route {dst}; {n}"))
}

fn add_netns_missing(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let p = format!("/run/netns/bc-{}-nonexistent", s.pid);
    let (t, _, c) = add_must_fail(s, &mut a, &[("CNI_NETNS", Some(&p))])?;
    s.del_done(&mut a, &[("CNI_NETNS", Some(&p))], true)
        .map_err(step)
        .context("the runtime's DEL after the failed ADD")?;
    pass_note(format!("{t}: error {c}"))
}

fn add_own_netns(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    let mut a = s.att()?;
    let p = s.host.path.clone();
    let res = add_must_fail(s, &mut a, &[("CNI_NETNS", Some(&p))]);
    // The runtime's DEL carries the same CNI_NETNS; the reference skel
    // answers it with 8 too, so only a crash-free answer is required. The
    // guard's DEL (container netns) and the host diff judge the cleanup.
    let del = s.del(&a, &[("CNI_NETNS", Some(&p))], true);
    let (t, _, c) = res?;
    if let Err((dt, o)) = del {
        o.cni_error()
            .with_context(|| format!("the runtime's DEL after the failed ADD: {dt}"))?;
    }
    pass_note(format!(
        "{t}: error {c}{}",
        if c == 8 {
            ""
        } else {
            " (reference skel ≥ 1.2: 8)"
        }
    ))
}

/// A CNI_PATH dir with copies of every plugin of the list but the IPAM.
fn path_without_ipam(s: &Suite) -> Result<std::path::PathBuf> {
    let ipam = s.ipam_type().unwrap_or_default();
    let dir = s.scratch_dir("noipam")?;
    for p in s.plugins() {
        let t = p["type"].as_str().unwrap_or("");
        if t == ipam {
            continue;
        }
        let src =
            Suite::find_plugin(&s.cni_path, t).with_context(|| format!("{t} not in CNI_PATH"))?;
        std::fs::copy(&src, dir.join(t)).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(dir)
}

fn ipam_missing(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some(ipam) = s.ipam_type() else {
        return na("the network has no IPAM plugin");
    };
    if s.plugins()
        .iter()
        .any(|p| p["type"].as_str() == Some(ipam.as_str()))
    {
        return na("the IPAM plugin is also a plugin of the list");
    }
    let dir = path_without_ipam(s)?;
    let res = (|| -> Result<String> {
        let mut a = s.att()?;
        let d = dir.display().to_string();
        let (t, _, c) = add_must_fail(s, &mut a, &[("CNI_PATH", Some(&d))])?;
        // The installation is fixed, then the runtime's DEL runs.
        s.del_done(&mut a, &[], true)
            .map_err(step)
            .context("DEL after the failed ADD")?;
        Ok(format!("{t}: error {c}"))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    pass_note(res?)
}

fn cni_args_unknown(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let mut a = s.att()?;
    a.cni_args = Some("FOO=bar".into());
    let (t, _, c) = add_must_fail(s, &mut a, &[])?;
    a.cni_args = None;
    pass_note(format!("{t}: error {c}"))
}

fn cni_args_ignore(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let mut a = s.att()?;
    a.cni_args = Some("IgnoreUnknown=1;FOO=bar".into());
    add(s, &mut a)?;
    del(s, &mut a)?;
    pass()
}

/// ADD with a requested address (set up by `prep`) gets exactly it.
fn requested(s: &Suite, k: u32, prep: impl Fn(&mut Att, &str)) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some(ip) = pick_v4(s, k) else {
        return na("no IPv4 range with room for a requested address");
    };
    let mut a = s.att()?;
    prep(&mut a, &ip);
    let r = add(s, &mut a)?;
    let got = result_ips(&r);
    ensure!(
        got.iter().any(|c| addr_of(c) == ip),
        "requested {ip}, got {got:?}"
    );
    verify_result(s, &a, &r, &s.version)?;
    del(s, &mut a)?;
    pass_note(format!("got {ip}"))
}

fn cni_args_ip(s: &Suite) -> Result<Outcome> {
    // Runtimes pass IgnoreUnknown=1: every plugin of the list sees CNI_ARGS.
    requested(s, 57, |a, ip| {
        a.cni_args = Some(format!("IgnoreUnknown=1;IP={ip}"))
    })
}

fn args_cni_ips(s: &Suite) -> Result<Outcome> {
    requested(s, 58, |a, ip| a.args = Some(json!({"cni": {"ips": [ip]}})))
}

fn runtimeconfig_ips(s: &Suite) -> Result<Outcome> {
    if s.main_plugin()["capabilities"]["ips"].as_bool() != Some(true) {
        return na(format!(
            "plugin {} does not declare capability `ips` in the conf",
            s.main_type()
        ));
    }
    requested(s, 59, |a, ip| {
        a.caps.insert("ips".into(), json!([ip]));
    })
}

fn ip_outside_range(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some(r) = v4_range(s) else {
        return na("no IPv4 range");
    };
    let mut out = u32::from(Ipv4Addr::new(192, 0, 2, 77));
    let mask = if r.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - r.prefix)
    };
    if out & mask == r.net {
        out = u32::from(Ipv4Addr::new(198, 51, 100, 77));
    }
    let ip = Ipv4Addr::from(out).to_string();
    let mut a = s.att()?;
    a.cni_args = Some(format!("IgnoreUnknown=1;IP={ip}"));
    let (t, _, c) = add_must_fail(s, &mut a, &[])?;
    pass_note(format!("{ip}: {t}: error {c}"))
}

fn ip_gateway(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some(r) = v4_range(s) else {
        return na("no IPv4 range");
    };
    let ip = Ipv4Addr::from(r.gw).to_string();
    let mut a = s.att()?;
    a.cni_args = Some(format!("IgnoreUnknown=1;IP={ip}"));
    let (t, _, c) = add_must_fail(s, &mut a, &[])?;
    pass_note(format!("{ip}: {t}: error {c}"))
}

/// The conflist with a single IPv4 range `<first v4 network>/<prefix>` and
/// a fresh IPAM data dir (removed by the caller).
fn small_conf(s: &Suite, prefix: u32) -> Result<Option<(Value, std::path::PathBuf)>> {
    let Some(r) = v4_range(s) else {
        return Ok(None);
    };
    let subnet = format!("{}/{prefix}", Ipv4Addr::from(r.net));
    let dir = s.scratch_dir("ipam")?;
    let c = s.conf_with_ranges(json!([[{"subnet": subnet}]]), &dir)?;
    Ok(Some((c, dir)))
}

/// The conflist with the first IPv4 range cut down to one usable address
/// (same subnet and gateway, so a bridge keeps its gateway address; other
/// ranges dropped) and a fresh IPAM data dir (removed by the caller).
fn one_address_conf(s: &Suite) -> Result<Option<(Value, std::path::PathBuf)>> {
    let Some(r) = v4_range(s) else {
        return Ok(None);
    };
    let mut a = r.start.max(r.net + 1);
    if a == r.gw {
        a += 1;
    }
    if a > r.end {
        return Ok(None);
    }
    let subnet = format!("{}/{}", Ipv4Addr::from(r.net), r.prefix);
    let ip = Ipv4Addr::from(a).to_string();
    let dir = s.scratch_dir("ipam")?;
    let c = s.conf_with_ranges(
        json!([[{"subnet": subnet, "rangeStart": ip, "rangeEnd": ip, "gateway": Ipv4Addr::from(r.gw).to_string()}]]),
        &dir,
    )?;
    Ok(Some((c, dir)))
}

fn subnet_31(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some((conf, dir)) = small_conf(s, 31)? else {
        return na("no IPv4 range");
    };
    let res = (|| -> Result<String> {
        let mut a = s.att()?;
        a.conf = Some(conf);
        let (t, _, c) = add_must_fail(s, &mut a, &[])?;
        // The runtime's DEL carries the same invalid config: a CNI error is
        // acceptable there; the host diff judges what the ADD left.
        let mut note = format!("{t}: error {c}");
        match s.del(&a, &[], true) {
            Ok(()) => {}
            Err((dt, o)) => {
                let dc = o
                    .cni_error()
                    .with_context(|| format!("DEL after the failed ADD: {dt}"))?;
                note.push_str(&format!("; DEL with that config: error {dc}"));
            }
        }
        a.forget();
        Ok(note)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    pass_note(res?)
}

/// One-address range: ADD a (gets the only address), ADD b fails; `mid` runs then;
/// DEL a, ADD c succeeds.
fn exhaust(s: &Suite, mid: impl Fn() -> Result<String>) -> Result<Outcome> {
    require!(need_ipam(s));
    let Some((conf, dir)) = one_address_conf(s)? else {
        return na("no IPv4 range");
    };
    let res = (|| -> Result<String> {
        let mut a = s.att()?;
        a.conf = Some(conf.clone());
        add(s, &mut a).context("first ADD in a one-address range")?;
        let mut b = s.att()?;
        b.conf = Some(conf.clone());
        let (t, _, c) =
            add_must_fail(s, &mut b, &[]).context("second ADD in a one-address range")?;
        s.del_done(&mut b, &[], true)
            .map_err(step)
            .context("DEL after the failed ADD")?;
        let note = mid()?;
        del(s, &mut a)?;
        let mut c2 = s.att()?;
        c2.conf = Some(conf.clone());
        add(s, &mut c2).context("ADD after the DEL freed the address")?;
        del(s, &mut c2)?;
        Ok(if note.is_empty() {
            format!("{t}: error {c}")
        } else {
            note
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    pass_note(res?)
}

fn range_exhaustion(s: &Suite) -> Result<Outcome> {
    exhaust(s, || Ok(String::new()))
}

fn status_exhausted(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    require!(need_v11(s, "STATUS"));
    status_on_exhausted(s)
}

fn status_on_exhausted(s: &Suite) -> Result<Outcome> {
    let Some((conf, dir)) = one_address_conf(s)? else {
        return na("no IPv4 range");
    };
    let res = (|| -> Result<String> {
        let mut a = s.att()?;
        a.conf = Some(conf.clone());
        add(s, &mut a).context("ADD in a one-address range")?;
        let env = vec![("CNI_PATH".to_string(), s.cni_path.clone())];
        let c =
            crate::runtime::Suite::plugin_conf(&conf, s.main, &s.version, None, &Map::new(), None);
        let o = s.exec(&s.main_type(), Some("STATUS"), &env, &conf_bytes(&c));
        o.expect_code(50)
            .context("STATUS with the only address taken")?;
        del(s, &mut a)?;
        let o = s.exec(&s.main_type(), Some("STATUS"), &env, &conf_bytes(&c));
        ensure!(o.ok(), "STATUS after the address was freed: {}", o.brief());
        Ok(String::new())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res?;
    pass()
}

fn parallel_add(s: &Suite) -> Result<Outcome> {
    const N: usize = 20;
    let mut atts = Vec::new();
    for _ in 0..N {
        atts.push(s.att()?);
    }
    let results: Vec<Result<Value, (String, Out)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = atts
            .iter_mut()
            .map(|a| sc.spawn(move || s.add(a, &[])))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut seen = HashSet::new();
    let mut errs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(r) => {
                // Loopback addresses exist once per namespace.
                let is_loopback =
                    |ip: &String| addr_of(ip).parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
                for ip in result_ips(&r).into_iter().filter(|ip| !is_loopback(ip)) {
                    if !seen.insert(addr_of(&ip).to_string()) {
                        errs.push(format!("address {ip} given twice"));
                    }
                }
            }
            Err(e) => errs.push(format!("ADD {i}: {}", step(e))),
        }
    }
    let dels: Vec<Result<(), (String, Out)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = atts
            .iter_mut()
            .map(|a| sc.spawn(move || s.del_done(a, &[], true)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (i, d) in dels.into_iter().enumerate() {
        if let Err(e) = d {
            errs.push(format!("DEL {i}: {}", step(e)));
        }
    }
    if !errs.is_empty() {
        bail!("{} problem(s): {}", errs.len(), errs.join("; "));
    }
    pass_note(format!("{} distinct addresses", seen.len()))
}

fn gc_with_key(s: &Suite, key: &str) -> Result<Outcome> {
    require!(need_ipam(s));
    require!(need_v11(s, "GC"));
    let mut a = s.att()?;
    add(s, &mut a).context("ADD a")?;
    let mut b = s.att()?;
    add(s, &mut b).context("ADD b")?;
    let b_ip = first_v4(&b);
    let mut extra = Map::new();
    extra.insert(
        key.into(),
        json!([{"containerID": a.cid, "ifname": a.ifname}]),
    );
    for (t, o) in s.verb_all("GC", &extra, None) {
        ensure!(o.ok(), "GC {t}: {}", o.brief());
        ensure!(
            o.stdout.trim().is_empty(),
            "GC {t} printed on stdout: {}",
            o.brief()
        );
    }
    // The runtime forgot b; its namespace goes away without a DEL. What GC
    // didn't release shows up in the host diff.
    b.forget();
    b.ns.delete();
    if let Some(ip) = b_ip {
        assert_released(s, &ip).context("after GC")?;
    }
    if need_check(s).is_none() {
        s.check(&a, &[], true)
            .map_err(step)
            .context("CHECK of the listed attachment after GC")?;
    }
    del(s, &mut a)?;
    pass()
}

fn gc_valid(s: &Suite) -> Result<Outcome> {
    gc_with_key(s, "cni.dev/valid-attachments")
}

fn gc_legacy(s: &Suite) -> Result<Outcome> {
    gc_with_key(s, "cni.dev/attachments")
}

fn status(s: &Suite) -> Result<Outcome> {
    require!(need_v11(s, "STATUS"));
    for (t, o) in s.verb_all("STATUS", &Map::new(), None) {
        ensure!(o.ok(), "STATUS {t}: {}", o.brief());
        ensure!(
            o.stdout.trim().is_empty(),
            "STATUS {t} printed on stdout: {}",
            o.brief()
        );
    }
    pass()
}

fn status_ipam_missing(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    require!(need_v11(s, "STATUS"));
    let dir = path_without_ipam(s)?;
    let d = dir.display().to_string();
    let env = vec![("CNI_PATH".to_string(), d)];
    let c = s.single_conf(Some(&s.version));
    let o = s.exec(&s.main_type(), Some("STATUS"), &env, &conf_bytes(&c));
    let _ = std::fs::remove_dir_all(&dir);
    let code = o.cni_error()?;
    pass_note(format!("error {code}"))
}

fn ping_ok(a: &Att, addr: &str) -> Result<()> {
    let mut last = String::new();
    for i in 0..5 {
        let o = a.ns.exec(&["busybox", "ping", "-c1", "-W2", addr]);
        if o.ok() {
            return Ok(());
        }
        last = o.brief();
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    bail!("ping {addr} from {} failed: {last}", a.ns.name)
}

fn ping(s: &Suite) -> Result<Outcome> {
    if !have_program("busybox") {
        return na("busybox is not installed");
    }
    let mut a = s.att()?;
    let ra = add(s, &mut a)?;
    let mut b = s.att()?;
    add(s, &mut b)?;
    let mut done = Vec::new();
    for ip in b.ips() {
        ping_ok(&a, addr_of(&ip))?;
        done.push(addr_of(&ip).to_string());
    }
    for ip in ra
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(g) = ip.get("gateway").and_then(Value::as_str) {
            ping_ok(&a, g)?;
            done.push(format!("gw {g}"));
        }
    }
    ensure!(
        !done.is_empty(),
        "nothing to ping: no addresses in the results"
    );
    del(s, &mut a)?;
    del(s, &mut b)?;
    pass_note(done.join(", "))
}
