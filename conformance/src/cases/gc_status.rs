//! GC (valid-attachments and legacy attachments) and STATUS (plain, with
//! the range exhausted, with the IPAM binary missing).

use anyhow::{ensure, Context, Result};
use serde_json::{json, Map};

use super::ipam::{one_address_conf, path_without_ipam};
use super::{
    add, assert_released, conf_bytes, del, first_v4, na, need_check, need_ipam, need_v11, pass,
    pass_note, step, Outcome,
};
use crate::runtime::Suite;

pub(super) fn status_exhausted(s: &Suite) -> Result<Outcome> {
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

pub(super) fn gc_valid(s: &Suite) -> Result<Outcome> {
    gc_with_key(s, "cni.dev/valid-attachments")
}

pub(super) fn gc_legacy(s: &Suite) -> Result<Outcome> {
    gc_with_key(s, "cni.dev/attachments")
}

pub(super) fn status(s: &Suite) -> Result<Outcome> {
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

pub(super) fn status_ipam_missing(s: &Suite) -> Result<Outcome> {
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
