//! `cri` part: a Kubernetes node's pod lifecycle under containerd's CRI
//! (Debian's containerd 1.6), driven over its gRPC socket as kubelet
//! drives it, berth against the reference plugins in the same run.
//!
//! Each implementation gets a private containerd (the tests' harness,
//! `berth_tests::cri`) whose CNI bin dir holds only its own binaries
//! (bridge, IPAM, portmap and the `loopback` containerd runs for every
//! pod's `lo`) and whose conf dir holds one conflist: a dual-stack bridge
//! with isGateway, ipMasq and default routes, chained with portmap. Every
//! pod publishes one hostPort, as the Kubernetes case that matters here.
//!
//! With `--cni-path-before`, berth's previous build gets a third
//! containerd the same way (subnets 10.203.2.0/24 and fd00:b203:2::/64),
//! its pods alternating with the others'.
//!
//! Per pod, in turn for berth and the reference: RunPodSandbox,
//! StopPodSandbox, RemovePodSandbox, each timed around the gRPC call, and
//! what containerd itself reports of the network's share:
//!
//! * CNI ADD: the time between containerd's `begin cni setup` and
//!   `cni result` debug log lines for the pod (loopback, then the
//!   conflist);
//! * CNI DEL: the growth of containerd's
//!   `network_plugin_operations_duration_seconds{operation_type="tear_down_pod"}`
//!   histogram sum over StopPodSandbox (the DEL with the netns), and over
//!   RemovePodSandbox (containerd 1.6 runs DEL again there, without a
//!   netns). containerd logs no start line for a teardown, so its metrics
//!   are the only record of it; the metrics are scraped between calls,
//!   outside the timed spans.
//!
//! Each node keeps one resident pod running throughout, as a node has
//! running pods: berth-bridge sets a network's firewall up with its first
//! attachment and removes it with its last, so without one every pod would
//! pay for setting up and removing the whole network. One warm-up pod per
//! implementation after that, not counted. The networks are
//! in the host's root namespace (that is where containerd runs plugins):
//! subnets 10.203.{0,1}.0/24 and fd00:b203:{0,1}::/64, bridges and network
//! names carrying the bench's pid. Everything is removed at the end:
//! containerd removes what pods are left, then the bridges, berth's
//! nftables objects of the network and the reference's iptables rules
//! naming it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use berth_tests::cri::{
    cni_setup_durations, Containerd, ContainerdOptions, CriClient, NetworkMetrics, PodSpec,
};
use berth_tests::{IptablesGuard, LinkGuard, NftNetworkGuard, TempDir};
use serde_json::{json, Value};

use crate::report::{Cri, CriSummary, CriTimes};
use crate::stats::{median, ms};

/// hostPorts of the measured pods: berth's from here, the reference's
/// from here + 1000.
const PORT_BASE: u16 = 61000;

/// A private containerd whose CNI bin dir links the plugins it needs and
/// whose conf dir holds one conflist, with a CRI client. Fields drop in
/// order: containerd first (it removes what pods are left, so DEL runs
/// while the bin dir, the network and whatever `keep` holds exist), then
/// the dirs, then `keep`.
pub(crate) struct CriNode {
    pub(crate) label: &'static str,
    cd: Containerd,
    client: CriClient,
    /// The namespace containerd runs in (its metrics listen on 127.0.0.1
    /// there); None: the bench's own.
    netns: Option<PathBuf>,
    _bin: TempDir,
    conf: TempDir,
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// One pod's figures, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    run: f64,
    stop: f64,
    remove: f64,
    cni_del_stop: f64,
    cni_del_remove: f64,
}

/// What a [`CriNode`] runs: the plugins its bin dir links (from `dir`),
/// its conflist (written as `10-<name>.conflist`), how containerd is
/// started.
pub(crate) struct CriSetup<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) binaries: &'a [&'a str],
    pub(crate) conflist: Value,
    /// [`ContainerdOptions::launcher`], and the namespace it puts
    /// containerd in (where its metrics are read).
    pub(crate) launcher: Vec<String>,
    pub(crate) netns: Option<PathBuf>,
    /// Dropped after containerd: the IPAM dir, guards.
    pub(crate) keep: Vec<Box<dyn std::any::Any>>,
}

/// (bridge, ipam, portmap) types and the binaries the bin dir links.
fn plugins(reference: bool) -> ([&'static str; 3], [&'static str; 4]) {
    if reference {
        (
            ["bridge", "host-local", "portmap"],
            ["bridge", "host-local", "portmap", "loopback"],
        )
    } else {
        (
            ["berth-bridge", "berth-ipam", "berth-portmap"],
            ["berth-bridge", "berth-ipam", "berth-portmap", "loopback"],
        )
    }
}

/// The conflist of implementation `k` (0 berth, 1 reference).
fn conflist(k: u8, types: [&str; 3], network: &str, bridge: &str, data: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {"type": types[0], "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": types[1], "dataDir": data,
                      "ranges": [[{"subnet": format!("10.203.{k}.0/24")}],
                                 [{"subnet": format!("fd00:b203:{k}::/64")}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": types[2], "capabilities": {"portMappings": true}}
        ]
    })
}

/// berth's single-node conflist of this part (berth-bridge + berth-ipam +
/// berth-portmap, dual stack), for other parts to compare with: its
/// binaries and the conflist.
pub(crate) fn berth_single_node(
    network: &str,
    bridge: &str,
    data: &Path,
) -> ([&'static str; 4], Value) {
    let (types, binaries) = plugins(false);
    (binaries, conflist(0, types, network, bridge, data))
}

/// An implementation's node in the bench's own namespace: `k` numbers
/// its subnets, host ports and bridge (0 berth, 1 the reference, 2
/// berth's previous build).
fn node(label: &'static str, k: u8, dir: &Path, reference: bool) -> Result<CriNode> {
    let (types, binaries) = plugins(reference);
    let pid = std::process::id();
    let network = format!("bench-cri-{label}-{pid}");
    let bridge = format!("bcri{k}-{}", pid % 1_000_000_000);
    let data = TempDir::new(&format!("cri-{label}-ipam"));
    let list = conflist(k, types, &network, &bridge, data.path());
    // Guards dropped after containerd.
    let keep: Vec<Box<dyn std::any::Any>> = vec![
        Box::new(data),
        Box::new(IptablesGuard::new(&network)),
        Box::new(NftNetworkGuard::new(&network)),
        Box::new(LinkGuard::new(&bridge)),
    ];
    CriNode::start(
        label,
        CriSetup {
            dir,
            binaries: &binaries,
            conflist: list,
            launcher: Vec::new(),
            netns: None,
            keep,
        },
    )
}

impl CriNode {
    /// Links the plugins, writes the conflist, starts containerd (with
    /// its metrics) and waits for its NetworkReady.
    pub(crate) fn start(label: &'static str, setup: CriSetup<'_>) -> Result<CriNode> {
        let CriSetup {
            dir,
            binaries,
            conflist,
            launcher,
            netns,
            keep,
        } = setup;
        let bin = TempDir::new(&format!("cri-{label}-bin"));
        for name in binaries {
            let src: PathBuf = dir.join(name);
            if !src.is_file() {
                bail!(
                    "{}: not found ({label} needs {binaries:?} in {})",
                    src.display(),
                    dir.display()
                );
            }
            std::os::unix::fs::symlink(&src, bin.path().join(name))
                .context("link a plugin into the bin dir")?;
        }
        let conf = TempDir::new(&format!("cri-{label}-conf"));
        let network = conflist["name"].as_str().unwrap_or(label);
        std::fs::write(
            conf.path().join(format!("10-{network}.conflist")),
            conflist.to_string(),
        )?;
        let cd = Containerd::try_start_with(
            &format!("bench-{label}"),
            ContainerdOptions::new(bin.path(), conf.path())
                .metrics(true)
                .launcher(launcher),
        )
        .map_err(|e| anyhow!("{label}: start containerd: {e}"))?;
        let mut client = CriClient::connect(&cd.socket()).map_err(|e| anyhow!("{label}: {e}"))?;
        let (ready, why) = client
            .wait_network_ready(true, std::time::Duration::from_secs(10))
            .map_err(|e| anyhow!("{label}: Status: {}", e.message()))?;
        if !ready {
            bail!("{label}: containerd's NetworkReady is false: {why}");
        }
        Ok(CriNode {
            label,
            cd,
            client,
            netns,
            _bin: bin,
            conf,
            _keep: keep,
        })
    }

    /// The CNI conf dir (the conflist in it).
    pub(crate) fn conf_dir(&self) -> &Path {
        self.conf.path()
    }

    fn metrics(&self) -> Result<NetworkMetrics> {
        let (cd, label) = (&self.cd, self.label);
        let read = || {
            cd.network_metrics()
                .map_err(|e| anyhow!("{label}: containerd's metrics: {e}"))
        };
        match &self.netns {
            None => read(),
            Some(ns) => berth_kernel::Netns::open(ns)
                .with_context(|| format!("open {}", ns.display()))?
                .run(read)
                .with_context(|| format!("enter {}", ns.display()))?,
        }
    }

    /// A pod that stays (as a node has running pods).
    pub(crate) fn resident(&mut self) -> Result<()> {
        let label = self.label;
        self.client
            .run_pod(&PodSpec::new("bench-resident"))
            .map_err(|e| anyhow!("{label}: RunPodSandbox bench-resident: {}", e.message()))?;
        Ok(())
    }

    /// One pod's Run, Stop and Remove; returns its sandbox id and figures.
    pub(crate) fn pod(&mut self, name: &str, host_port: u16) -> Result<(String, Sample)> {
        let spec = PodSpec::new(name).tcp_port(host_port, 80);
        let label = self.label;
        let cri = |call: &str, e: tonic::Status| anyhow!("{label}: {call} {name}: {}", e.message());
        let mut s = Sample::default();

        let t = Instant::now();
        let id = self
            .client
            .run_pod(&spec)
            .map_err(|e| cri("RunPodSandbox", e))?;
        s.run = ms(t.elapsed());

        let before = self.metrics()?;
        let t = Instant::now();
        self.client
            .stop_pod(&id)
            .map_err(|e| cri("StopPodSandbox", e))?;
        s.stop = ms(t.elapsed());

        let stopped = self.metrics()?;
        let t = Instant::now();
        self.client
            .remove_pod(&id)
            .map_err(|e| cri("RemovePodSandbox", e))?;
        s.remove = ms(t.elapsed());
        let removed = self.metrics()?;

        s.cni_del_stop = ms(stopped.plugin_teardown.since(&before.plugin_teardown).sum);
        s.cni_del_remove = ms(removed.plugin_teardown.since(&stopped.plugin_teardown).sum);
        Ok((id, s))
    }

    /// The medians of `samples` (pods of this node), with their CNI ADD
    /// times from containerd's log.
    pub(crate) fn summary(&self, samples: &[(String, Sample)]) -> CriSummary {
        let logged = cni_setup_durations(&self.cd.log());
        let adds: Vec<f64> = samples
            .iter()
            .filter_map(|(id, _)| logged.iter().find(|(l, _)| l == id).map(|(_, d)| ms(*d)))
            .collect();
        let only: Vec<Sample> = samples.iter().map(|(_, s)| *s).collect();
        summary(&only, &adds)
    }
}

/// Medians of one implementation's samples; `adds` are the pods' CNI ADD
/// times from containerd's log.
fn summary(samples: &[Sample], adds: &[f64]) -> CriSummary {
    let m = |f: fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
    CriSummary {
        times: CriTimes {
            run_ms: m(|s| s.run),
            stop_ms: m(|s| s.stop),
            remove_ms: m(|s| s.remove),
            total_ms: m(|s| s.run + s.stop + s.remove),
            cni_add_ms: median(adds),
            cni_del_stop_ms: m(|s| s.cni_del_stop),
            cni_del_remove_ms: m(|s| s.cni_del_remove),
        },
        pods_with_logged_add: adds.len(),
    }
}

pub fn cri(
    berth_dir: &Path,
    before_dir: Option<&Path>,
    ref_dir: &Path,
    pods: usize,
) -> Result<Cri> {
    eprintln!(
        "cri: starting a containerd for berth{} and one for the reference plugins",
        if before_dir.is_some() {
            ", one for berth (before)"
        } else {
            ""
        }
    );
    // berth, [before,] reference: pods alternate in this order.
    let mut nodes = vec![node("berth", 0, berth_dir, false)?];
    if let Some(dir) = before_dir {
        nodes.push(node("before", 2, dir, false)?);
    }
    nodes.push(node("ref", 1, ref_dir, true)?);
    let mut samples: Vec<Vec<(String, Sample)>> = vec![Vec::new(); nodes.len()];
    for node in nodes.iter_mut() {
        node.resident()?;
    }
    eprintln!(
        "cri: {pods} pods each (Run + Stop + Remove) beside a resident pod, after one warm-up pod"
    );
    for round in 0..=pods {
        for (k, node) in nodes.iter_mut().enumerate() {
            let port = PORT_BASE + 1000 * k as u16 + round as u16;
            let (id, s) = node.pod(&format!("bench-{round}"), port)?;
            if round > 0 {
                samples[k].push((id, s));
            }
        }
    }
    let containerd = containerd_version();
    let mut summaries: Vec<CriSummary> = nodes
        .iter()
        .zip(&samples)
        .map(|(n, s)| n.summary(s))
        .collect();
    let reference = summaries.pop().context("no reference figures")?;
    let before = if before_dir.is_some() {
        summaries.pop()
    } else {
        None
    };
    let berth = summaries.pop().context("no berth figures")?;
    let ratio = CriTimes::ratio(&reference.times, &berth.times);
    Ok(Cri {
        pods,
        containerd,
        network: "bridge + IPAM (IPv4 /24 + IPv6 /64, isGateway, ipMasq, default routes) + portmap, one hostPort per pod, one resident pod",
        ratio_before: before
            .as_ref()
            .map(|b| CriTimes::ratio(&b.times, &berth.times)),
        ratio_ref_over_before: before
            .as_ref()
            .map(|b| CriTimes::ratio(&reference.times, &b.times)),
        berth,
        before,
        reference,
        ratio,
    })
}

/// containerd's version (`containerd --version` prints "containerd
/// <module> <version> <revision>").
pub(crate) fn containerd_version() -> Option<String> {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_conflists_differ_only_in_types_names_and_subnets() {
        let (b, _) = plugins(false);
        let (r, _) = plugins(true);
        let cb = conflist(0, b, "n", "br", Path::new("/d"));
        let cr = conflist(1, r, "n", "br", Path::new("/d"));
        assert_eq!(cb["plugins"][0]["type"], "berth-bridge");
        assert_eq!(cr["plugins"][1]["type"], "portmap");
        assert_eq!(
            cb["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.203.0.0/24"
        );
        assert_eq!(
            cr["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
            "fd00:b203:1::/64"
        );
        let strip = |mut c: Value| {
            for p in c["plugins"].as_array_mut().unwrap() {
                p["type"] = json!("");
                if p.get("ipam").is_some() {
                    p["ipam"]["type"] = json!("");
                    p["ipam"]["ranges"] = json!([]);
                }
            }
            c
        };
        assert_eq!(strip(cb), strip(cr));
    }

    #[test]
    fn summary_takes_medians() {
        let s: Vec<Sample> = [1.0, 3.0, 2.0]
            .iter()
            .map(|&v| Sample {
                run: v,
                stop: 2.0 * v,
                remove: 1.0,
                cni_del_stop: v,
                cni_del_remove: 0.5,
            })
            .collect();
        let v = summary(&s, &[4.0, 6.0]);
        assert_eq!(v.times.run_ms, Some(2.0));
        assert_eq!(v.times.stop_ms, Some(4.0));
        assert_eq!(v.times.total_ms, Some(7.0));
        assert_eq!(v.times.cni_add_ms, Some(5.0));
        assert_eq!(v.pods_with_logged_add, 2);
        let r = CriTimes::ratio(&summary(&s[..1], &[8.0]).times, &v.times);
        assert_eq!((r.run_ms, r.cni_add_ms), (Some(0.5), Some(1.6)));
        // In the JSON as before: the times beside pods_with_logged_add.
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["run_ms"], 2.0);
        assert_eq!(j["pods_with_logged_add"], 2);
    }
}
