//! DEL: twice, after the netns is gone, with an empty or no CNI_NETNS, of a
//! container never added, without prevResult.

use anyhow::{Context, Result};

use super::{
    add, assert_released, ensure_released, first_v4, na, need_ipam, need_own_netns, pass, step,
    Outcome,
};
use crate::runtime::{vge, Suite};

pub(super) fn add_del_del(s: &Suite) -> Result<Outcome> {
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

pub(super) fn del_netns_gone(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    add(s, &mut a)?;
    a.ns.delete();
    s.del_done(&mut a, &[], true).map_err(step).context("DEL")?;
    if let (None, Some(ip)) = (need_ipam(s), first_v4(&a)) {
        assert_released(s, &ip)?;
    }
    pass()
}

pub(super) fn del_empty_netns(s: &Suite) -> Result<Outcome> {
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

pub(super) fn del_no_netns(s: &Suite) -> Result<Outcome> {
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

pub(super) fn del_never_added(s: &Suite) -> Result<Outcome> {
    let mut a = s.att()?;
    s.del_done(&mut a, &[], true).map_err(step).context("DEL")?;
    pass()
}

pub(super) fn del_no_prev(s: &Suite) -> Result<Outcome> {
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
