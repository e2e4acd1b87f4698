//! Bad or missing input: CNI_COMMAND, CNI_CONTAINERID / CNI_NETNS /
//! CNI_IFNAME, CNI_PATH, bad JSON, bad network names and unsupported
//! cniVersions.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::{add_must_fail, conf_bytes, main_raw, na, need_ipam, pass, pass_note, Outcome};
use crate::runtime::Suite;

pub(super) fn no_command(s: &Suite) -> Result<Outcome> {
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

pub(super) fn unknown_command(s: &Suite) -> Result<Outcome> {
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

pub(super) fn add_missing_env(s: &Suite) -> Result<Outcome> {
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

pub(super) fn add_missing_cni_path(s: &Suite) -> Result<Outcome> {
    require!(need_ipam(s));
    let mut a = s.att()?;
    let (t, _, code) = add_must_fail(s, &mut a, &[("CNI_PATH", None)])?;
    pass_note(format!("{t}: error {code}"))
}

pub(super) fn bad_container_id(s: &Suite) -> Result<Outcome> {
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

pub(super) fn bad_ifname(s: &Suite) -> Result<Outcome> {
    let conf = conf_bytes(&s.single_conf(Some(&s.version)));
    for name in ["abcdefghijklmnop", ".", "a/b", "a:b", "a b"] {
        let mut a = s.att()?;
        let o = main_raw(s, &mut a, Some("ADD"), &[("CNI_IFNAME", Some(name))], &conf);
        o.expect_code(4)
            .with_context(|| format!("CNI_IFNAME {name:?}"))?;
    }
    pass()
}

pub(super) fn bad_json(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    let o = main_raw(s, &mut a, Some("ADD"), &[], b"{bad");
    o.expect_code(6)?;
    pass()
}

pub(super) fn bad_name(s: &Suite) -> Result<Outcome> {
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

pub(super) fn add_bad_version(s: &Suite) -> Result<Outcome> {
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

pub(super) fn check_bad_version(s: &Suite) -> Result<Outcome> {
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

pub(super) fn status_gc_old(s: &Suite) -> Result<Outcome> {
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
