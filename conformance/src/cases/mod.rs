//! The cases (cni-contract.md section 5, for an interface plugin with IPAM).
//!
//! A case returns `Ok(Pass)`, `Ok(Na(reason))` or an error (FAIL). The
//! attachments it makes are guards: whatever it leaves live is DELeted the
//! way a runtime would, and its namespaces deleted, before the runner diffs
//! the host against the baseline.
//!
//! This module holds the [`Case`] table and the helpers the cases share;
//! the cases themselves live in one module per topic.

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::exec::Out;
use crate::runtime::{result_ips, vge, Att, Suite};

// Defined before the `mod` lines below so the topic modules can use it
// (macro_rules! scoping is textual).
macro_rules! require {
    ($e:expr) => {
        if let Some(r) = $e {
            return na(r);
        }
    };
}

mod add;
mod chained;
mod check;
mod del;
mod env;
mod gc_status;
mod ipam;
mod verify;
mod version;

use self::add::{
    add_duplicate, add_netns_missing, add_own_netns, add_result, add_versions, parallel_add, ping,
};
use self::chained::{chained_no_prev, chained_nothing_to_do, portmap_bad_port};
use self::check::{
    check_addr_removed, check_after_add, check_after_del, check_iface_removed, check_no_prev,
    check_route_removed, prev_result_version,
};
use self::del::{
    add_del_del, del_empty_netns, del_netns_gone, del_never_added, del_no_netns, del_no_prev,
};
use self::env::{
    add_bad_version, add_missing_cni_path, add_missing_env, bad_container_id, bad_ifname, bad_json,
    bad_name, check_bad_version, no_command, status_gc_old, unknown_command,
};
use self::gc_status::{gc_legacy, gc_valid, status, status_exhausted, status_ipam_missing};
use self::ipam::{
    args_cni_ips, cni_args_ignore, cni_args_ip, cni_args_unknown, ip_gateway, ip_outside_range,
    ipam_missing, range_exhaustion, runtimeconfig_ips, subnet_31,
};
use self::version::{version, version_garbage};

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
    "chained-nothing-to-do" chained_nothing_to_do "chained plugin ADD with nothing to do (its conf only names capabilities, none given): stdout is the prevResult, same cniVersion";
    "portmap-bad-port" portmap_bad_port "portmap with hostPort 0: ADD error, nothing left after DEL";
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

/// With `--shared-netns` the container has no namespace, interface or
/// address of its own: cases that duplicate, delete or expect to lose them
/// don't apply.
fn need_own_netns(s: &Suite) -> Option<String> {
    s.shared_netns.then(|| {
        "--shared-netns: the container uses the host's namespace and interfaces, not its own"
            .to_string()
    })
}

fn addr_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
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
