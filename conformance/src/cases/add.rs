//! ADD: results at every version, duplicates, bad CNI_NETNS, parallel ADDs
//! and traffic between containers.

use std::collections::HashSet;
use std::net::IpAddr;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::verify::{container_addrs, verify_result};
use super::{
    add, add_must_fail, addr_of, conf_bytes, del, ensure_released, main_raw, na, need_check,
    need_own_netns, pass, pass_note, step, Outcome,
};
use crate::exec::{have_program, Out};
use crate::runtime::{result_ips, Att, Suite, KNOWN_VERSIONS};

pub(super) fn add_versions(s: &Suite) -> Result<Outcome> {
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

pub(super) fn add_result(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let r = add(s, &mut a)?;
    verify_result(s, &a, &r, &s.version)?;
    del(s, &mut a)?;
    ensure_released(s, &a)?;
    pass()
}

pub(super) fn add_duplicate(s: &Suite) -> Result<Outcome> {
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

pub(super) fn add_netns_missing(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let p = format!("/run/netns/bc-{}-nonexistent", s.pid);
    let (t, _, c) = add_must_fail(s, &mut a, &[("CNI_NETNS", Some(&p))])?;
    s.del_done(&mut a, &[("CNI_NETNS", Some(&p))], true)
        .map_err(step)
        .context("the runtime's DEL after the failed ADD")?;
    pass_note(format!("{t}: error {c}"))
}

pub(super) fn add_own_netns(s: &Suite) -> Result<Outcome> {
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

pub(super) fn parallel_add(s: &Suite) -> Result<Outcome> {
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

pub(super) fn ping(s: &Suite) -> Result<Outcome> {
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
