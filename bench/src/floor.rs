//! `floor`: the kernel's own veth deletion cost, the floor under any DEL,
//! and berth's DEL against deleting the same veth by hand.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::args::Args;
use crate::compare::Network;
use crate::exec::{exec_cni, with_prev_result, Impl};
use crate::report::{DelInPlace, Floor};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns};

/// Wall time of deleting `name` through `h`: one RTM_DELLINK and its ack,
/// i.e. the kernel's cost plus one netlink round trip.
pub(crate) fn time_del(h: &mut berth_kernel::Handle, name: &str) -> Result<f64> {
    let start = Instant::now();
    let existed = h
        .delete_link_by_name(name)
        .with_context(|| format!("delete {name}"))?;
    let t = ms(start.elapsed());
    if !existed {
        bail!("{name} did not exist");
    }
    Ok(t)
}

/// Other ports on the bridge for the "bridge port" floor: the scale at
/// which the DEL target is judged (N=100).
pub(crate) const FLOOR_BRIDGE_PORTS: usize = 100;

pub(crate) fn floor(reps: usize) -> Result<Floor> {
    let pid = std::process::id();
    let h = Netns::new(format!("bb-{pid}-floor-h"))?;
    let c = Netns::new(format!("bb-{pid}-floor-c"))?;
    let (hn, cn) = (
        berth_kernel::Netns::open(std::path::Path::new(&h.path))?,
        berth_kernel::Netns::open(std::path::Path::new(&c.path))?,
    );
    let mut hh = sys::handle_in(&h)?;
    let mut ch = sys::handle_in(&c)?;
    let veth =
        |hh: &mut berth_kernel::Handle, peer: &str, peer_ns: &berth_kernel::Netns| -> Result<u32> {
            hh.add_veth("vfa", peer, peer_ns, &berth_kernel::VethOptions::default())?;
            Ok(hh.link_by_name("vfa")?.context("vfa vanished")?.index)
        };
    // What a bridge plugin's DEL really deletes: a veth that is a port of a
    // bridge with other ports, its peer up in another netns.
    hh.add_bridge("bfl0", &berth_kernel::BridgeOptions::default())?;
    let br = hh.link_by_name("bfl0")?.context("bfl0 vanished")?.index;
    hh.set_up(br)?;
    for i in 0..FLOOR_BRIDGE_PORTS {
        let (a, b) = (format!("vp{i}a"), format!("vp{i}b"));
        hh.add_veth(&a, &b, &hn, &berth_kernel::VethOptions::default())?;
        for (name, master) in [(&a, Some(br)), (&b, None)] {
            let idx = hh.link_by_name(name)?.context("port vanished")?.index;
            if let Some(m) = master {
                hh.set_master(idx, m)?;
            }
            hh.set_up(idx)?;
        }
    }
    let (mut same, mut cross, mut port) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        veth(&mut hh, "vfb", &hn)?;
        same.push(time_del(&mut hh, "vfa")?);

        veth(&mut hh, "eth0", &cn)?;
        cross.push(time_del(&mut hh, "vfa")?);

        let idx = veth(&mut hh, "eth0", &cn)?;
        hh.set_master(idx, br)?;
        hh.set_up(idx)?;
        let peer = ch.link_by_name("eth0")?.context("eth0 vanished")?.index;
        ch.set_up(peer)?;
        port.push(time_del(&mut hh, "vfa")?);
    }
    Ok(Floor {
        reps,
        what: "median time of one RTM_DELLINK of a veth (netlink round trip included)",
        bridge_ports: FLOOR_BRIDGE_PORTS,
        veth_del_same_netns_ms: median(&same),
        veth_del_peer_in_other_netns_ms: median(&cross),
        veth_del_bridge_port_ms: median(&port),
    })
}

/// berth's DEL against the kernel's cost of deleting the very veth it
/// deletes, in the same state: FLOOR_BRIDGE_PORTS berth containers on one
/// network; for every other container one RTM_DELLINK of its host veth is
/// timed and an untimed DEL then releases its address;
/// for the rest berth's whole DEL (process start included) is timed. Both
/// halves see the bridge shrink alike.
pub(crate) fn del_in_place(args: &Args, taken: &mut Vec<u8>) -> Result<DelInPlace> {
    let imp = Impl::berth(&args.berth_dir);
    let net = Network::new(&imp, &args.cni_version, taken)?;
    let n = FLOOR_BRIDGE_PORTS;
    let nss = net.make_netns(n)?;
    let mut results = Vec::with_capacity(n);
    for (i, ns) in nss.iter().enumerate() {
        let x = exec_cni(&net.imp, "ADD", &net.cid(i), &ns.path, &net.conf)?;
        if !x.ok {
            bail!("ADD #{i} failed: {}", x.describe());
        }
        results.push(serde_json::from_str::<Value>(&x.stdout)?);
    }
    let mut host = sys::host()?;
    let (mut kernel, mut berth) = (Vec::new(), Vec::new());
    for (i, r) in results.iter().enumerate() {
        let conf = with_prev_result(&net.conf, r);
        if i % 2 == 0 {
            let hv = r["interfaces"][1]["name"]
                .as_str()
                .context("ADD result without a host interface")?;
            kernel.push(time_del(&mut host, hv)?);
            let x = exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf)?;
            if !x.ok {
                bail!("DEL #{i} failed: {}", x.describe());
            }
        } else {
            let x = exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf)?;
            if !x.ok {
                bail!("DEL #{i} failed: {}", x.describe());
            }
            berth.push(ms(x.elapsed));
        }
    }
    let (k, b) = (median(&kernel), median(&berth));
    Ok(DelInPlace {
        containers: n,
        kernel_veth_del_ms: k,
        berth_del_ms: b,
        berth_over_kernel: ratio(b, k),
    })
}
