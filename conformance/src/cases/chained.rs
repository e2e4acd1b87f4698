//! Chained plugins after the interface plugin: meta plugins without
//! prevResult, a chained ADD with nothing to do, portmap with a bad port.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{add_must_fail, conf_bytes, del, na, pass, pass_note, Outcome};
use crate::runtime::Suite;

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

pub(super) fn chained_no_prev(s: &Suite) -> Result<Outcome> {
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

/// Keys of a plugin's conf that ask it for no work of its own: a plugin
/// with only these does its work from capability args (portmap's
/// portMappings, bandwidth's bandwidth), and with none given has nothing
/// to do. One with more (bandwidth's `ingressRate`) has work to do.
const NO_WORK_KEYS: [&str; 4] = ["type", "capabilities", "name", "cniVersion"];

pub(super) fn chained_nothing_to_do(s: &Suite) -> Result<Outcome> {
    let all = chained(s);
    if all.is_empty() {
        return na("the conflist has no chained plugin");
    }
    let plugins: Vec<(usize, String)> = all
        .into_iter()
        .filter(|(i, _)| {
            s.plugins()[*i]
                .as_object()
                .is_some_and(|o| o.keys().all(|k| NO_WORK_KEYS.contains(&k.as_str())))
        })
        .collect();
    if plugins.is_empty() {
        return na("every chained plugin's conf asks it for work of its own");
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

pub(super) fn portmap_bad_port(s: &Suite) -> Result<Outcome> {
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
