//! Checking an ADD result against what is really in the container and on
//! the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::runtime::{vge, Att, Suite};

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
pub(super) fn container_addrs(a: &Att, dev: &str) -> Result<Vec<(IpAddr, u32)>> {
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
pub(super) fn verify_result(s: &Suite, a: &Att, r: &Value, v: &str) -> Result<()> {
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
