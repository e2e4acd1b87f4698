//! `floor`: the kernel's own veth deletion cost, the floor under any DEL,
//! and berth's DEL against deleting the same veth by hand; and a
//! network's first ADD and last DEL against the usual ones
//! ([`first_last`]).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::args::Args;
use crate::compare::Network;
use crate::etcd::quantile;
use crate::exec::{exec_cni, exec_plugin_env, plugin_conf, with_prev_result, Impl};
use crate::report::{DelInPlace, FirstLast, FirstLastRow, Floor, Spread};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, TempDir};

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
pub(crate) fn del_in_place(args: &Args, imp: &Impl, taken: &mut Vec<u8>) -> Result<DelInPlace> {
    let net = Network::new(imp, &args.cni_version, taken)?;
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
        build: imp.display(),
        containers: n,
        kernel_veth_del_ms: k,
        berth_del_ms: b,
        berth_over_kernel: ratio(b, k),
    })
}

/// Containers per network of [`first_last`]: the first, the usual ones,
/// the last.
pub(crate) const FIRST_LAST_CONTAINERS: usize = 5;
/// Issue 30's target: a network's first ADD and last DEL no more than this
/// above a usual ADD and DEL.
pub(crate) const FIRST_LAST_TARGET_MS: f64 = 2.0;
/// What else the host namespace holds, per case of [`first_last`].
pub(crate) const FIRST_LAST_CASES: [&str; 2] =
    ["another berth network", "nothing (a fresh namespace)"];

/// A private host namespace the plugins run in, with a run dir of its own
/// (`BERTH_RUN_DIR`: berth's records and lock).
struct PluginHost {
    ns: Netns,
    run: TempDir,
    /// The resident network's container and IPAM dir, if any.
    _resident: Option<(Netns, TempDir)>,
}

impl PluginHost {
    fn new() -> Result<PluginHost> {
        let ns = Netns::new(format!("bfl-{}-{}", std::process::id(), sys::next_id()))?;
        sys::lo_up(&ns)?;
        Ok(PluginHost {
            ns,
            run: TempDir::new("fl-run")?,
            _resident: None,
        })
    }

    /// One exec of `imp`'s bridge plugin in this host; its time in ms and
    /// (for ADD) its result.
    fn exec(
        &self,
        imp: &Impl,
        command: &str,
        cid: &str,
        container: &Netns,
        conf: &Value,
    ) -> Result<(f64, Value)> {
        let run_dir = self.run.path().display().to_string();
        let env = [("BERTH_RUN_DIR", run_dir.as_str())];
        let out = self.ns.run(|| {
            exec_plugin_env(
                &imp.dir,
                imp.bridge,
                command,
                cid,
                &container.path,
                conf,
                &env,
            )
        })?;
        if !out.ok {
            bail!("{} {command} {cid}: {}", imp.bridge, out.describe());
        }
        let result = if command == "ADD" {
            serde_json::from_str(&out.stdout)
                .with_context(|| format!("{} ADD {cid}: result {:?}", imp.bridge, out.stdout))?
        } else {
            Value::Null
        };
        Ok((ms(out.elapsed), result))
    }

    /// A host with another berth network holding one container for good.
    fn with_resident(imp: &Impl, cni_version: &str) -> Result<PluginHost> {
        let mut host = PluginHost::new()?;
        let data = TempDir::new("fl-res-ipam")?;
        let conf = plugin_conf(
            imp,
            cni_version,
            "bench-fl-res",
            "bflres0",
            "10.211.255.0/24",
            "fd00:b211:ff::/64",
            data.path(),
        );
        let c = Netns::new(format!("bflc-{}-{}", std::process::id(), sys::next_id()))?;
        host.exec(imp, "ADD", "resident", &c, &conf)?;
        host._resident = Some((c, data));
        Ok(host)
    }
}

/// Network `k`'s name, bridge and subnets.
fn first_last_network(k: usize) -> (String, String, String, String) {
    let k = k % 250;
    (
        format!("bench-fl-{k}"),
        format!("bfl{k}"),
        format!("10.211.{k}.0/24"),
        format!("fd00:b211:{k:x}::/64"),
    )
}

/// One network's life in `host`: its first ADD, the usual ADDs, the usual
/// DELs (the last container first), its last DEL. (first ADD, usual ADDs,
/// usual DELs, last DEL), in ms.
fn network_life(
    host: &PluginHost,
    imp: &Impl,
    cni_version: &str,
    k: usize,
) -> Result<(f64, Vec<f64>, Vec<f64>, f64)> {
    let (name, bridge, s4, s6) = first_last_network(k);
    let data = TempDir::new("fl-ipam")?;
    let conf = plugin_conf(imp, cni_version, &name, &bridge, &s4, &s6, data.path());
    let nss = (0..FIRST_LAST_CONTAINERS)
        .map(|_| Netns::new(format!("bflc-{}-{}", std::process::id(), sys::next_id())))
        .collect::<Result<Vec<_>>>()?;
    let mut adds = Vec::new();
    let mut results = Vec::new();
    for (i, c) in nss.iter().enumerate() {
        let (t, r) = host.exec(imp, "ADD", &format!("{name}-{i}"), c, &conf)?;
        adds.push(t);
        results.push(r);
    }
    let mut dels = Vec::new();
    for (i, c) in nss.iter().enumerate().rev() {
        let conf = with_prev_result(&conf, &results[i]);
        let (t, _) = host.exec(imp, "DEL", &format!("{name}-{i}"), c, &conf)?;
        dels.push(t);
    }
    let first = adds.remove(0);
    let last = dels.pop().context("no DEL")?;
    Ok((first, adds, dels, last))
}

fn spread(v: &[f64]) -> Spread {
    Spread {
        median_ms: median(v),
        p90_ms: quantile(v, 0.9),
        growth: None,
    }
}

/// The samples of one build in one case: first ADDs, usual ADDs, usual
/// DELs, last DELs.
#[derive(Debug, Default, Clone)]
pub(crate) struct FirstLastSamples([Vec<f64>; 4]);

impl FirstLastSamples {
    pub(crate) fn row(&self, build: &'static str, case: &'static str) -> FirstLastRow {
        let [first, adds, dels, last] = &self.0;
        let (first_add, usual_add) = (spread(first), spread(adds));
        let (last_del, usual_del) = (spread(last), spread(dels));
        let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        FirstLastRow {
            build,
            case,
            add_over_usual_ms: minus(first_add.median_ms, usual_add.median_ms),
            del_over_usual_ms: minus(last_del.median_ms, usual_del.median_ms),
            first_add,
            usual_add,
            last_del,
            usual_del,
        }
    }
}

/// A network's first ADD (which makes the network's bridge and firewall
/// rules) and last DEL (which removes the rules) against the usual ADDs
/// and DELs between them: berth-bridge + berth-ipam (the same network
/// shape as `compare`), `reps` networks of [`FIRST_LAST_CONTAINERS`]
/// containers per build and case, builds alternating network by network
/// (after one warm-up network each, not counted), each in private host
/// namespaces: one holding another berth network with a container for the
/// whole part, and a fresh one per network with nothing in it (the first
/// container on a host).
pub(crate) fn first_last(args: &Args, reps: usize) -> Result<FirstLast> {
    let mut imps = vec![Impl::berth(&args.berth_dir)];
    if let Some(dir) = &args.before_dir {
        imps.push(Impl::before(dir));
    }
    for imp in &imps {
        imp.check()?;
    }
    let residents = imps
        .iter()
        .map(|imp| PluginHost::with_resident(imp, &args.cni_version))
        .collect::<Result<Vec<_>>>()?;
    let mut samples = vec![[FirstLastSamples::default(), FirstLastSamples::default()]; imps.len()];
    for rep in 0..=reps {
        for (i, imp) in imps.iter().enumerate() {
            for case in 0..FIRST_LAST_CASES.len() {
                let fresh;
                let host = if case == 0 {
                    &residents[i]
                } else {
                    fresh = PluginHost::new()?;
                    &fresh
                };
                let (first, adds, dels, last) = network_life(host, imp, &args.cni_version, rep)
                    .with_context(|| format!("{}, {}", imp.display(), FIRST_LAST_CASES[case]))?;
                if rep > 0 {
                    let s = &mut samples[i][case].0;
                    s[0].push(first);
                    s[1].extend(adds);
                    s[2].extend(dels);
                    s[3].push(last);
                }
            }
        }
        eprint!("\r  floor: {rep} of {reps} networks per build and case");
    }
    eprintln!();
    let mut rows = Vec::new();
    for case in 0..FIRST_LAST_CASES.len() {
        for (imp, s) in imps.iter().zip(&samples) {
            rows.push(s[case].row(imp.display(), FIRST_LAST_CASES[case]));
        }
    }
    Ok(FirstLast {
        networks: reps,
        containers: FIRST_LAST_CONTAINERS,
        rows,
        target_ms: FIRST_LAST_TARGET_MS,
    })
}

/// Samples for the tests (here and markdown.rs's): first ADDs 10-12,
/// usual ADDs median 2.25, usual DELs median 16, one last DEL of 40.
#[cfg(test)]
pub(crate) fn tests_samples() -> FirstLastSamples {
    FirstLastSamples([
        vec![10.0, 12.0, 11.0],
        vec![2.0, 3.0, 2.5, 2.0],
        vec![16.0, 17.0, 15.0],
        vec![40.0],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_last_rows() {
        let s = tests_samples();
        let r = s.row("berth", FIRST_LAST_CASES[0]);
        assert_eq!(r.first_add.median_ms, Some(11.0));
        assert_eq!(r.usual_add.median_ms, Some(2.25));
        assert_eq!(r.add_over_usual_ms, Some(8.75));
        assert_eq!(r.del_over_usual_ms, Some(24.0));
        assert!(!r.pass(2.0));
        assert!(r.pass(24.0));
        let empty = FirstLastSamples::default().row("berth", FIRST_LAST_CASES[1]);
        assert_eq!(empty.add_over_usual_ms, None);
        assert!(!empty.pass(2.0));
    }

    #[test]
    fn first_last_networks_differ() {
        let (n0, b0, s0, v0) = first_last_network(0);
        let (n1, b1, s1, v1) = first_last_network(11);
        assert_eq!((n0.as_str(), b0.as_str()), ("bench-fl-0", "bfl0"));
        assert_eq!(
            (s1.as_str(), v1.as_str()),
            ("10.211.11.0/24", "fd00:b211:b::/64")
        );
        assert!(n0 != n1 && b0 != b1 && s0 != s1 && v0 != v1);
        assert!(first_last_network(249).1.len() <= 15);
    }
}
