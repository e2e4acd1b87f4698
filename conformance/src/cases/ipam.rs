//! IPAM: the IPAM binary missing, CNI_ARGS, requested addresses (CNI_ARGS
//! IP, args.cni.ips, runtimeConfig.ips), addresses outside the range or the
//! gateway, a /31 subnet and a one-address range.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::verify::verify_result;
use super::{add, add_must_fail, addr_of, del, na, need_ipam, pass, pass_note, step, Outcome};
use crate::runtime::{result_ips, Att, Suite};

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

/// A CNI_PATH dir with copies of every plugin of the list but the IPAM.
pub(super) fn path_without_ipam(s: &Suite) -> Result<std::path::PathBuf> {
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

pub(super) fn ipam_missing(s: &Suite) -> Result<Outcome> {
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

pub(super) fn cni_args_unknown(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let mut a = s.att()?;
    a.cni_args = Some("FOO=bar".into());
    let (t, _, c) = add_must_fail(s, &mut a, &[])?;
    a.cni_args = None;
    pass_note(format!("{t}: error {c}"))
}

pub(super) fn cni_args_ignore(s: &Suite) -> Result<Outcome> {
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

pub(super) fn cni_args_ip(s: &Suite) -> Result<Outcome> {
    // Runtimes pass IgnoreUnknown=1: every plugin of the list sees CNI_ARGS.
    requested(s, 57, |a, ip| {
        a.cni_args = Some(format!("IgnoreUnknown=1;IP={ip}"))
    })
}

pub(super) fn args_cni_ips(s: &Suite) -> Result<Outcome> {
    requested(s, 58, |a, ip| a.args = Some(json!({"cni": {"ips": [ip]}})))
}

pub(super) fn runtimeconfig_ips(s: &Suite) -> Result<Outcome> {
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

pub(super) fn ip_outside_range(s: &Suite) -> Result<Outcome> {
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

pub(super) fn ip_gateway(s: &Suite) -> Result<Outcome> {
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
pub(super) fn one_address_conf(s: &Suite) -> Result<Option<(Value, std::path::PathBuf)>> {
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

pub(super) fn subnet_31(s: &Suite) -> Result<Outcome> {
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

pub(super) fn range_exhaustion(s: &Suite) -> Result<Outcome> {
    exhaust(s, || Ok(String::new()))
}
