//! CHECK: after ADD, prevResult versions, without prevResult, after DEL,
//! and after the interface, an address or a route was removed by hand.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{add, conf_bytes, del, na, need_check, need_own_netns, pass, pass_note, step, Outcome};
use crate::runtime::{vge, Att, Suite};

pub(super) fn check_after_add(s: &Suite) -> Result<Outcome> {
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
pub(super) fn prev_result_version(s: &Suite) -> Result<Outcome> {
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

pub(super) fn check_no_prev(s: &Suite) -> Result<Outcome> {
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

pub(super) fn check_after_del(s: &Suite) -> Result<Outcome> {
    require!(need_own_netns(s));
    require!(need_check(s));
    let mut a = s.att()?;
    add(s, &mut a)?;
    del(s, &mut a)?;
    let n = check_fails(s, &a)?;
    pass_note(n)
}

pub(super) fn check_iface_removed(s: &Suite) -> Result<Outcome> {
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

pub(super) fn check_addr_removed(s: &Suite) -> Result<Outcome> {
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

pub(super) fn check_route_removed(s: &Suite) -> Result<Outcome> {
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
