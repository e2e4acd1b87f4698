//! `host` part: berth-host's modes against the reference plugins doing the
//! same job, each ADD and DEL one exec:
//!
//! * `none` vs `loopback`;
//! * `macvlan` (+ berth-ipam) vs `macvlan` (+ host-local), children of a
//!   veth the bench makes as the uplink (no address, no traffic);
//! * `device` (+ berth-ipam) vs `host-device` (+ host-local), each
//!   container getting one end of its own veth pair the bench makes.
//!
//! As in `compare`: R containers, each in a fresh netns (made outside the
//! timing), are ADDed one after the other, then DELed. berth and the
//! reference alternate container by container, so background kernel work
//! weighs on both alike. One extra container of each is a warm-up.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::exec::{exec_plugin, with_prev_result};
use crate::report::{AddDel, HostRow, RefAddDel};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, LinkGuard, Netns, TempDir};

/// One implementation of a mode: its plugin and how its config looks for
/// container `i`.
struct Side {
    plugin: &'static str,
    dir: std::path::PathBuf,
    ipam: Option<&'static str>,
    conf: Box<dyn Fn(usize) -> Value>,
}

/// A container of one side: its netns, ID, config and ADD result.
struct Container {
    ns: Netns,
    cid: String,
    conf: Value,
    result: Value,
}

impl Side {
    fn conf_for(&self, i: usize, network: &str, data: &Path) -> Value {
        let mut conf = (self.conf)(i);
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(network);
        conf["type"] = json!(self.plugin);
        if let Some(ipam) = self.ipam {
            conf["ipam"] =
                json!({"type": ipam, "dataDir": data, "ranges": [[{"subnet": "10.254.0.0/16"}]]});
        }
        conf
    }

    fn add(&self, i: usize, network: &str, data: &Path) -> Result<(Container, f64)> {
        let ns = Netns::new(format!("bbh-{}-{}", std::process::id(), sys::next_id()))?;
        let cid = format!("bbh{}c{i}", std::process::id());
        let conf = self.conf_for(i, network, data);
        let add = exec_plugin(&self.dir, self.plugin, "ADD", &cid, &ns.path, &conf)?;
        if !add.ok {
            bail!("{} ADD: {}", self.plugin, add.describe());
        }
        let result = serde_json::from_str(&add.stdout).context("ADD result")?;
        Ok((
            Container {
                ns,
                cid,
                conf,
                result,
            },
            ms(add.elapsed),
        ))
    }

    fn del(&self, c: &Container) -> Result<f64> {
        let del = exec_plugin(
            &self.dir,
            self.plugin,
            "DEL",
            &c.cid,
            &c.ns.path,
            &with_prev_result(&c.conf, &c.result),
        )?;
        if !del.ok {
            bail!("{} DEL: {}", self.plugin, del.describe());
        }
        Ok(ms(del.elapsed))
    }
}

/// Medians [berth ADD, berth DEL, ref ADD, ref DEL] over `reps`
/// containers per side, after one warm-up container each.
fn time_sides(berth: &Side, reference: &Side, reps: usize) -> Result<[Option<f64>; 4]> {
    let sides = [berth, reference];
    let data = [TempDir::new("host-berth")?, TempDir::new("host-ref")?];
    let networks = [0, 1].map(|_| format!("bbh-{}-{}", std::process::id(), sys::next_id()));
    let mut samples: [Vec<f64>; 4] = Default::default();
    let mut containers: [Vec<Container>; 2] = Default::default();
    for i in 0..=reps {
        for s in 0..2 {
            let (c, t) = sides[s].add(i, &networks[s], data[s].path())?;
            if i > 0 {
                samples[2 * s].push(t);
            }
            containers[s].push(c);
        }
    }
    let [berth_containers, ref_containers] = &containers;
    for (i, pair) in berth_containers.iter().zip(ref_containers).enumerate() {
        for (s, c) in [pair.0, pair.1].into_iter().enumerate() {
            let t = sides[s].del(c)?;
            if i > 0 {
                samples[2 * s + 1].push(t);
            }
        }
    }
    Ok(samples.map(|v| median(&v)))
}

/// A veth pair with both ends in the bench's namespace, up, deleted on drop.
fn veth_pair(prefix: &str) -> Result<(String, LinkGuard)> {
    let name = sys::unique_ifname(prefix);
    // '_' is not a base-36 digit: no other unique name can be this peer's.
    let peer = format!("{name}_");
    let mut h = sys::host()?;
    let here = berth_kernel::Netns::current().context("own netns")?;
    h.add_veth(&name, &peer, &here, &berth_kernel::VethOptions::default())
        .with_context(|| format!("create veth {name}"))?;
    let guard = LinkGuard(name.clone());
    for n in [&name, &peer] {
        let l = h
            .link_by_name(n)?
            .with_context(|| format!("{n} vanished"))?;
        h.set_up(l.index)?;
    }
    Ok((name, guard))
}

pub fn host_modes(berth_dir: &Path, ref_dir: &Path, reps: usize) -> Result<Vec<HostRow>> {
    let (uplink, _uplink_guard) = veth_pair("bbu")?;
    // One device per container and side (the warm-up's included).
    let mut devices = Vec::new();
    let mut guards = Vec::new();
    for _ in 0..2 * (reps + 1) {
        let (d, g) = veth_pair("bbd")?;
        devices.push(d);
        guards.push(g);
    }
    let (berth_devs, ref_devs) = devices.split_at(reps + 1);
    let (berth_devs, ref_devs) = (berth_devs.to_vec(), ref_devs.to_vec());
    let side = |plugin, dir: &Path, ipam, conf: Box<dyn Fn(usize) -> Value>| Side {
        plugin,
        dir: dir.into(),
        ipam,
        conf,
    };
    let up = uplink.clone();
    let modes = [
        (
            "none",
            side(
                "berth-host",
                berth_dir,
                None,
                Box::new(|_| json!({"mode": "none"})),
            ),
            side("loopback", ref_dir, None, Box::new(|_| json!({}))),
        ),
        (
            "macvlan",
            side(
                "berth-host",
                berth_dir,
                Some("berth-ipam"),
                Box::new(move |_| json!({"mode": "macvlan", "master": uplink})),
            ),
            side(
                "macvlan",
                ref_dir,
                Some("host-local"),
                Box::new(move |_| json!({"master": up})),
            ),
        ),
        (
            "device",
            side(
                "berth-host",
                berth_dir,
                Some("berth-ipam"),
                Box::new(move |i| json!({"mode": "device", "device": berth_devs[i]})),
            ),
            side(
                "host-device",
                ref_dir,
                Some("host-local"),
                Box::new(move |i| json!({"device": ref_devs[i]})),
            ),
        ),
    ];
    let mut rows = Vec::new();
    for (mode, berth, reference) in modes {
        eprintln!("host: {mode}, {reps} containers each");
        let [b_add, b_del, r_add, r_del] = time_sides(&berth, &reference, reps)?;
        rows.push(HostRow {
            mode,
            berth: AddDel {
                add_ms: b_add,
                del_ms: b_del,
            },
            reference: RefAddDel {
                plugin: reference.plugin,
                add_ms: r_add,
                del_ms: r_del,
            },
            add_ratio: ratio(r_add, b_add),
            del_ratio: ratio(r_del, b_del),
        });
    }
    drop(guards);
    Ok(rows)
}
