//! The report: one typed struct per part, as `--json` prints it, the
//! tables for people (print.rs) and the Markdown tables (markdown.rs) read
//! it.
//!
//! The JSON keeps the shape the report had as a `serde_json::Value`: a part
//! that ran has its key (`compare`, `floor`, ...), a part that failed has
//! `<key>_error` instead, and a part that did not run has neither. Figures
//! that could not be measured (no sample, a zero divisor) are `null`.
//! Objects print with their keys sorted, as before (see [`Report::to_json`]).

use std::path::PathBuf;

use serde::Serialize;

use crate::stats::ratio;

/// A part's result as the report's two fields: the figures, or why it
/// failed (the `<key>_error` of the JSON, the whole error chain).
pub(crate) fn split<T>(r: anyhow::Result<T>) -> (Option<T>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) config: Config,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) compare: Option<Vec<CompareRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) floor: Option<Floor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) floor_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_in_place: Option<DelInPlace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_in_place_error: Option<String>,
    /// The same for berth's previous build (`--cni-path-before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_in_place_before: Option<DelInPlace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_in_place_before_error: Option<String>,
    /// A network's first ADD and last DEL (run with `floor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_last: Option<FirstLast>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrent: Option<Concurrent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrent_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) host: Option<Vec<HostRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) host_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) portmap: Option<Vec<PortmapRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) portmap_error: Option<String>,
    /// The `engine` part (its key is older than the part's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) volumes: Option<Engine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) volumes_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) overlay: Option<Overlay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) overlay_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cri: Option<Cri>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cri_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reconcile: Option<Reconcile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reconcile_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etcd: Option<Etcd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etcd_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bandwidth: Option<Bandwidth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bandwidth_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<Cluster>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_error: Option<String>,
    /// Every part that ran succeeded (see main.rs).
    pub(crate) ok: bool,
}

impl Report {
    /// No part run yet.
    pub(crate) fn new(config: Config) -> Report {
        Report {
            config,
            compare: None,
            floor: None,
            floor_error: None,
            del_in_place: None,
            del_in_place_error: None,
            del_in_place_before: None,
            del_in_place_before_error: None,
            first_last: None,
            first_last_error: None,
            concurrent: None,
            concurrent_error: None,
            host: None,
            host_error: None,
            portmap: None,
            portmap_error: None,
            volumes: None,
            volumes_error: None,
            overlay: None,
            overlay_error: None,
            cri: None,
            cri_error: None,
            reconcile: None,
            reconcile_error: None,
            etcd: None,
            etcd_error: None,
            bandwidth: None,
            bandwidth_error: None,
            cluster: None,
            cluster_error: None,
            ok: true,
        }
    }

    /// The report as pretty JSON. Through a `serde_json::Value`, whose
    /// objects are sorted maps: the keys come out sorted, as they did when
    /// the report was built as a `Value` (and NaN is `null` either way).
    pub(crate) fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(&serde_json::to_value(self)?)
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Config {
    pub(crate) cni_path_berth: PathBuf,
    /// `null` with `--no-ref`.
    pub(crate) cni_path_ref: Option<PathBuf>,
    pub(crate) n: Vec<usize>,
    pub(crate) cni_version: String,
    pub(crate) network: &'static str,
    pub(crate) warmup: &'static str,
}

// ---------------------------------------------------------------------------
// compare

/// One N of `compare`.
#[derive(Debug, Serialize)]
pub(crate) struct CompareRow {
    pub(crate) n: usize,
    pub(crate) berth: SeriesReport,
    /// berth's previous build (`--cni-path-before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before: Option<SeriesReport>,
    /// `null` with `--no-ref`.
    #[serde(rename = "ref")]
    pub(crate) reference: Option<SeriesReport>,
    pub(crate) add_ratio_ref_over_berth: Option<f64>,
    pub(crate) del_ratio_ref_over_berth: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) add_ratio_before_over_berth: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_ratio_before_over_berth: Option<f64>,
}

impl CompareRow {
    /// Every series without an error.
    pub(crate) fn ok(&self) -> bool {
        self.series().all(|(_, s)| s.error.is_none())
    }

    /// The series, labelled as the report labels them.
    pub(crate) fn series(&self) -> impl Iterator<Item = (&'static str, &SeriesReport)> {
        std::iter::once(("berth", &self.berth))
            .chain(self.before.iter().map(|s| (crate::exec::BEFORE, s)))
            .chain(self.reference.iter().map(|r| ("ref", r)))
    }
}

/// One implementation's N containers.
#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct SeriesReport {
    pub(crate) adds: usize,
    pub(crate) dels: usize,
    pub(crate) add_median_ms: Option<f64>,
    pub(crate) del_median_ms: Option<f64>,
    /// Only for N ≥ 200.
    pub(crate) add_first100_median_ms: Option<f64>,
    pub(crate) add_last100_median_ms: Option<f64>,
    pub(crate) error: Option<String>,
}

impl SeriesReport {
    /// The last 100 ADDs' median over the first 100's.
    pub(crate) fn add_growth(&self) -> Option<f64> {
        ratio(self.add_last100_median_ms, self.add_first100_median_ms)
    }
}

// ---------------------------------------------------------------------------
// floor

#[derive(Debug, Serialize)]
pub(crate) struct Floor {
    pub(crate) reps: usize,
    pub(crate) what: &'static str,
    pub(crate) bridge_ports: usize,
    pub(crate) veth_del_same_netns_ms: Option<f64>,
    pub(crate) veth_del_peer_in_other_netns_ms: Option<f64>,
    pub(crate) veth_del_bridge_port_ms: Option<f64>,
}

/// berth's DEL against the kernel deleting the same veth (run with
/// `floor`).
#[derive(Debug, Serialize)]
pub(crate) struct DelInPlace {
    /// Whose DEL: `berth` or `berth (before)`.
    #[serde(skip_serializing_if = "is_berth")]
    pub(crate) build: &'static str,
    pub(crate) containers: usize,
    pub(crate) kernel_veth_del_ms: Option<f64>,
    pub(crate) berth_del_ms: Option<f64>,
    pub(crate) berth_over_kernel: Option<f64>,
}

fn is_berth(build: &&'static str) -> bool {
    *build == "berth"
}

/// A network's first ADD and last DEL against the usual ones (run with
/// `floor`; see floor.rs), per build and case.
#[derive(Debug, Serialize)]
pub(crate) struct FirstLast {
    /// Networks per build and case.
    pub(crate) networks: usize,
    /// Containers per network (the first and last included).
    pub(crate) containers: usize,
    pub(crate) rows: Vec<FirstLastRow>,
    /// Issue 30's target: first ADD - usual ADD and last DEL - usual DEL.
    pub(crate) target_ms: f64,
}

/// One build in one case, medians over the networks (first and last) and
/// over every usual ADD and DEL.
#[derive(Debug, Serialize)]
pub(crate) struct FirstLastRow {
    pub(crate) build: &'static str,
    /// What else the host namespace holds.
    pub(crate) case: &'static str,
    pub(crate) first_add: Spread,
    pub(crate) usual_add: Spread,
    pub(crate) last_del: Spread,
    pub(crate) usual_del: Spread,
    /// Median first ADD - median usual ADD.
    pub(crate) add_over_usual_ms: Option<f64>,
    pub(crate) del_over_usual_ms: Option<f64>,
}

impl FirstLastRow {
    /// Both differences within the target.
    pub(crate) fn pass(&self, target_ms: f64) -> bool {
        [self.add_over_usual_ms, self.del_over_usual_ms]
            .iter()
            .all(|d| d.is_some_and(|d| d <= target_ms))
    }
}

// ---------------------------------------------------------------------------
// concurrent

#[derive(Debug, Serialize)]
pub(crate) struct Concurrent {
    pub(crate) containers: usize,
    /// Every ADD and DEL succeeded and no address was given twice.
    pub(crate) ok: bool,
    pub(crate) add_succeeded: usize,
    pub(crate) add_failures: Vec<String>,
    pub(crate) distinct_addresses: usize,
    pub(crate) duplicate_addresses: Vec<String>,
    pub(crate) add_wall_ms: f64,
    pub(crate) add_median_ms: Option<f64>,
    pub(crate) add_max_ms: Option<f64>,
    pub(crate) del_succeeded: usize,
    pub(crate) del_failures: Vec<String>,
    pub(crate) del_wall_ms: f64,
    pub(crate) del_median_ms: Option<f64>,
    pub(crate) del_max_ms: Option<f64>,
}

// ---------------------------------------------------------------------------
// host

/// One mode of berth-host against its reference plugin.
#[derive(Debug, Serialize)]
pub(crate) struct HostRow {
    pub(crate) mode: &'static str,
    pub(crate) berth: AddDel,
    #[serde(rename = "ref")]
    pub(crate) reference: RefAddDel,
    pub(crate) add_ratio: Option<f64>,
    pub(crate) del_ratio: Option<f64>,
}

/// Median ADD and DEL, in ms.
#[derive(Debug, Serialize)]
pub(crate) struct AddDel {
    pub(crate) add_ms: Option<f64>,
    pub(crate) del_ms: Option<f64>,
}

/// The same for a reference plugin, named.
#[derive(Debug, Serialize)]
pub(crate) struct RefAddDel {
    pub(crate) plugin: &'static str,
    pub(crate) add_ms: Option<f64>,
    pub(crate) del_ms: Option<f64>,
}

// ---------------------------------------------------------------------------
// portmap

/// One level of installed mappings.
#[derive(Debug, Serialize)]
pub(crate) struct PortmapRow {
    pub(crate) installed_mappings: usize,
    pub(crate) berth: PortmapSide,
    /// berth's previous build (`--cni-path-before`), in the same rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before: Option<PortmapSide>,
    #[serde(rename = "ref")]
    pub(crate) reference: PortmapRefSide,
    /// ref / berth, medians.
    pub(crate) add_ratio: Option<f64>,
    pub(crate) del_ratio: Option<f64>,
    /// before / berth, medians (with `--cni-path-before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) add_ratio_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) del_ratio_before: Option<f64>,
    /// The current code's firewall part, timed in process.
    pub(crate) firewall: FirewallPart,
}

/// The firewall part of berth-portmap's ADD and DEL, the current code's,
/// timed in process at a level (see portmap.rs): the one nf_tables batch
/// of the common ADD and of the common DEL, and with nothing published
/// (level 0 only) the first ADD's and the last DEL's.
#[derive(Debug, Serialize)]
pub(crate) struct FirewallPart {
    pub(crate) add: Spread,
    pub(crate) del: Spread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_add: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_del: Option<Spread>,
    /// Issue 30's target for the common ADD's and DEL's medians.
    pub(crate) target_ms: f64,
}

impl FirewallPart {
    /// Both medians under the target.
    pub(crate) fn pass(&self) -> bool {
        [self.add.median_ms, self.del.median_ms]
            .iter()
            .all(|m| m.is_some_and(|m| m < self.target_ms))
    }
}

/// Medians in ms, and their growth: the cost at this level over the cost
/// with nothing installed.
#[derive(Debug, Serialize)]
pub(crate) struct PortmapSide {
    pub(crate) add_ms: Option<f64>,
    pub(crate) del_ms: Option<f64>,
    pub(crate) add_growth: Option<f64>,
    pub(crate) del_growth: Option<f64>,
}

/// The same for the reference, named.
#[derive(Debug, Serialize)]
pub(crate) struct PortmapRefSide {
    pub(crate) plugin: &'static str,
    pub(crate) add_ms: Option<f64>,
    pub(crate) del_ms: Option<f64>,
    pub(crate) add_growth: Option<f64>,
    pub(crate) del_growth: Option<f64>,
}

// ---------------------------------------------------------------------------
// engine (the report's `volumes`)

#[derive(Debug, Serialize)]
pub(crate) struct Engine {
    pub(crate) round_trip: RoundTrip,
    pub(crate) docker: DockerVolumes,
    pub(crate) network: DockerNetwork,
}

/// Create + Mount + Unmount + Remove over berthd's socket.
#[derive(Debug, Serialize)]
pub(crate) struct RoundTrip {
    pub(crate) volumes: usize,
    pub(crate) managed_median_ms: Option<f64>,
    pub(crate) managed_p99_ms: Option<f64>,
    pub(crate) sized_median_ms: Option<f64>,
    pub(crate) sized_p99_ms: Option<f64>,
}

/// `docker volume create` + `docker run --rm -v`, medians.
#[derive(Debug, Serialize)]
pub(crate) struct DockerVolumes {
    pub(crate) volumes: usize,
    pub(crate) berth_ms: Option<f64>,
    pub(crate) local_ms: Option<f64>,
    pub(crate) berth_over_local: Option<f64>,
}

/// `docker run --rm` on a network, medians.
#[derive(Debug, Serialize)]
pub(crate) struct DockerNetwork {
    pub(crate) runs: usize,
    pub(crate) berth_ms: Option<f64>,
    pub(crate) bridge_driver_ms: Option<f64>,
    pub(crate) berth_over_bridge: Option<f64>,
}

// ---------------------------------------------------------------------------
// overlay

/// Both halves; an error in one is reported next to the other's figures.
#[derive(Debug, Serialize)]
pub(crate) struct Overlay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) convergence: Option<Convergence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) convergence_error: Option<String>,
}

impl Overlay {
    /// Whether the part ran without errors and the agent's FDB was right
    /// (the targets are reported, not enforced, like the other parts').
    pub(crate) fn ok(&self) -> bool {
        self.throughput_error.is_none()
            && self.convergence_error.is_none()
            && self
                .convergence
                .as_ref()
                .is_some_and(|c| c.fdb_matches_live_nodes)
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    pub(crate) iperf_secs: u64,
    pub(crate) runs_per_path: usize,
    pub(crate) mtu: Mtu,
    pub(crate) target_ratio: f64,
    pub(crate) berth_over_hand_container: Option<f64>,
    pub(crate) ratio_pass: bool,
    pub(crate) berth_over_raw_vxlan: Option<f64>,
    pub(crate) no_fragmentation: bool,
    pub(crate) berth: FlowReport,
    pub(crate) hand_container: FlowReport,
    pub(crate) raw_vxlan: FlowReport,
}

impl Throughput {
    /// The three paths, in the order they ran.
    pub(crate) fn paths(&self) -> [FlowRow<'_>; 3] {
        [
            FlowRow {
                label: "berth",
                what: "container -> container over berth-overlay",
                flow: &self.berth,
            },
            FlowRow {
                label: "hand",
                what: "container -> container, built by hand",
                flow: &self.hand_container,
            },
            FlowRow {
                label: "raw",
                what: "host -> host over a raw VXLAN",
                flow: &self.raw_vxlan,
            },
        ]
    }
}

/// A path of [`Throughput`] for the tables: short label, what it is, its
/// figures.
pub(crate) struct FlowRow<'a> {
    pub(crate) label: &'static str,
    pub(crate) what: &'static str,
    pub(crate) flow: &'a FlowReport,
}

/// The MTUs on the paths (on host 1 and its containers).
#[derive(Debug, Serialize)]
pub(crate) struct Mtu {
    pub(crate) underlay: u32,
    pub(crate) berth_eth0: u32,
    pub(crate) berth_bridge: u32,
    pub(crate) berth_vxlan: u32,
    pub(crate) hand_eth0: u32,
    pub(crate) hand_bridge: u32,
    pub(crate) hand_vxlan: u32,
    pub(crate) raw_vxlan: u32,
}

/// One path's iperf3 runs.
#[derive(Debug, Serialize)]
pub(crate) struct FlowReport {
    pub(crate) path: String,
    pub(crate) gbps: Vec<f64>,
    pub(crate) median_gbps: Option<f64>,
    pub(crate) retransmits: Vec<u64>,
    /// FragCreates and ReasmReqds added during its runs.
    pub(crate) frag_creates: u64,
    pub(crate) reasm_reqds: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Convergence {
    pub(crate) nodes: usize,
    pub(crate) records_put_ms: f64,
    pub(crate) agent_vtep_address: Option<String>,
    pub(crate) initial_ms: f64,
    pub(crate) join_ms: Vec<f64>,
    pub(crate) join_median_ms: Option<f64>,
    pub(crate) join_max_ms: Option<f64>,
    pub(crate) leave_ms: Vec<f64>,
    pub(crate) leave_median_ms: Option<f64>,
    pub(crate) leave_max_ms: Option<f64>,
    pub(crate) target_ms: f64,
    pub(crate) initial_pass: bool,
    pub(crate) join_pass: bool,
    pub(crate) leave_pass: bool,
    pub(crate) live_nodes: usize,
    pub(crate) fdb_entries_with_dst: usize,
    pub(crate) onlink_routes: usize,
    pub(crate) fdb_matches_live_nodes: bool,
}

impl Convergence {
    /// Join and leave, for the tables.
    pub(crate) fn churn(&self) -> [Churn<'_>; 2] {
        [
            Churn {
                label: "join:  record put -> its route     ",
                samples: &self.join_ms,
                median: self.join_median_ms,
                max: self.join_max_ms,
                pass: self.join_pass,
            },
            Churn {
                label: "leave: record deleted -> route gone",
                samples: &self.leave_ms,
                median: self.leave_median_ms,
                max: self.leave_max_ms,
                pass: self.leave_pass,
            },
        ]
    }
}

/// Joins or leaves of [`Convergence`]: label (padded for the tables for
/// people), the samples, their median and max, whether all were under the
/// target.
pub(crate) struct Churn<'a> {
    pub(crate) label: &'static str,
    pub(crate) samples: &'a [f64],
    pub(crate) median: Option<f64>,
    pub(crate) max: Option<f64>,
    pub(crate) pass: bool,
}

// ---------------------------------------------------------------------------
// cri

#[derive(Debug, Serialize)]
pub(crate) struct Cri {
    pub(crate) pods: usize,
    /// containerd's version, `null` if `containerd --version` said none.
    pub(crate) containerd: Option<String>,
    pub(crate) network: &'static str,
    pub(crate) berth: CriSummary,
    /// berth's previous build (`--cni-path-before`), pods alternating with
    /// the others'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before: Option<CriSummary>,
    #[serde(rename = "ref")]
    pub(crate) reference: CriSummary,
    /// ref / berth of each figure.
    pub(crate) ratio: CriTimes,
    /// before / berth of each figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_before: Option<CriTimes>,
    /// ref / before of each figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_ref_over_before: Option<CriTimes>,
}

/// One implementation's medians.
#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct CriSummary {
    #[serde(flatten)]
    pub(crate) times: CriTimes,
    pub(crate) pods_with_logged_add: usize,
}

/// Per pod, in ms (or, as [`Cri::ratio`], ref / berth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct CriTimes {
    pub(crate) run_ms: Option<f64>,
    pub(crate) stop_ms: Option<f64>,
    pub(crate) remove_ms: Option<f64>,
    pub(crate) total_ms: Option<f64>,
    pub(crate) cni_add_ms: Option<f64>,
    pub(crate) cni_del_stop_ms: Option<f64>,
    pub(crate) cni_del_remove_ms: Option<f64>,
}

/// One figure of [`CriTimes`].
pub(crate) type CriFigure = fn(&CriTimes) -> Option<f64>;

impl CriTimes {
    /// The rows of the tables: name for people, figure.
    pub(crate) const ROWS: [(&'static str, CriFigure); 7] = [
        ("RunPodSandbox", |t| t.run_ms),
        ("  CNI ADD (containerd's log)", |t| t.cni_add_ms),
        ("StopPodSandbox", |t| t.stop_ms),
        ("  CNI DEL (containerd's metrics)", |t| t.cni_del_stop_ms),
        ("RemovePodSandbox", |t| t.remove_ms),
        ("  CNI DEL again, no netns (metrics)", |t| {
            t.cni_del_remove_ms
        }),
        ("Run + Stop + Remove", |t| t.total_ms),
    ];

    /// Figure by figure, `num / den`.
    pub(crate) fn ratio(num: &CriTimes, den: &CriTimes) -> CriTimes {
        CriTimes {
            run_ms: ratio(num.run_ms, den.run_ms),
            stop_ms: ratio(num.stop_ms, den.stop_ms),
            remove_ms: ratio(num.remove_ms, den.remove_ms),
            total_ms: ratio(num.total_ms, den.total_ms),
            cni_add_ms: ratio(num.cni_add_ms, den.cni_add_ms),
            cni_del_stop_ms: ratio(num.cni_del_stop_ms, den.cni_del_stop_ms),
            cni_del_remove_ms: ratio(num.cni_del_remove_ms, den.cni_del_remove_ms),
        }
    }
}

// ---------------------------------------------------------------------------
// reconcile

/// `berth watch` putting berth's rules back after `nft flush ruleset`
/// (see reconcile.rs). Times in ms, CPU as a percentage of one core.
#[derive(Debug, Serialize)]
pub(crate) struct Reconcile {
    pub(crate) containers: usize,
    /// Published ports installed: a TCP and a UDP one per container.
    pub(crate) mappings: usize,
    /// Installing them (namespaces, berth-bridge and berth-portmap ADDs).
    pub(crate) setup_secs: f64,
    /// `berth status -o json` over them, each run (the operator's view,
    /// one process start included).
    pub(crate) status_ms: Vec<f64>,
    pub(crate) status_median_ms: Option<f64>,
    pub(crate) status_max_ms: Option<f64>,
    /// `berth metrics` over them (the node's Prometheus text), each run.
    pub(crate) metrics_ms: Vec<f64>,
    pub(crate) metrics_median_ms: Option<f64>,
    pub(crate) metrics_max_ms: Option<f64>,
    /// `berth watch` started -> its `watching` line: its first pass, with
    /// nothing to repair.
    pub(crate) first_pass_ms: f64,
    pub(crate) flushes: usize,
    /// Per measured flush: `nft flush ruleset` returned -> the published
    /// port answered again from outside.
    pub(crate) answer_ms: Vec<f64>,
    pub(crate) answer_median_ms: Option<f64>,
    pub(crate) answer_max_ms: Option<f64>,
    /// Per flush, the watcher's own figure from its log: the change seen
    /// -> the end of the pass that put the rules back (which goes on a
    /// little after they are in, so it can exceed `answer_ms`).
    pub(crate) logged_ms: Vec<f64>,
    pub(crate) logged_median_ms: Option<f64>,
    pub(crate) logged_max_ms: Option<f64>,
    pub(crate) idle_secs: f64,
    pub(crate) idle_cpu_percent: f64,
    pub(crate) storm_flushes: usize,
    /// The first flush of the storm to the last one's return.
    pub(crate) storm_secs: f64,
    /// From the storm's first flush until the port answered after its last.
    pub(crate) storm_cpu_percent: f64,
    /// Passes that put the published ports back during the storm.
    pub(crate) storm_port_repairs: usize,
    /// The storm's last flush returned -> the port answered again.
    pub(crate) after_storm_answer_ms: Option<f64>,
    pub(crate) after_storm_limit_ms: f64,
    pub(crate) after_storm_pass: bool,
    /// Flushes that could not be measured, a storm the port did not
    /// come back from.
    pub(crate) errors: Vec<String>,
    /// berth's previous build (`--cni-path-before`): the same figures, its
    /// own host namespace and watcher, flushes alternating with berth's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before: Option<Box<Reconcile>>,
}

impl Reconcile {
    /// Every flush measured and the port back in time after the storm
    /// (berth's; the previous build's figures are reported, not judged).
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty() && self.after_storm_pass
    }
}

// ---------------------------------------------------------------------------
// etcd

/// What berth-etcd adds to a berth-overlay ADD and DEL (see etcd.rs).
/// Times in ms.
#[derive(Debug, Serialize)]
pub(crate) struct Etcd {
    /// Containers per store.
    pub(crate) containers: usize,
    /// `etcd --version`'s, `null` if it said none.
    pub(crate) etcd_version: Option<String>,
    /// The ADD median each etcd store must stay under.
    pub(crate) target_ms: f64,
    /// berth-overlay's CNI VERSION: the process start alone.
    pub(crate) process_start_ms: Option<f64>,
    pub(crate) process_start_p90_ms: Option<f64>,
    /// static, http, https+cert, https+cert+auth.
    pub(crate) stores: Vec<EtcdStore>,
    /// ADD medians: http - static.
    pub(crate) etcd_adds_ms: Option<f64>,
    /// https+cert - http.
    pub(crate) tls_adds_ms: Option<f64>,
    /// https+cert+auth (token cached) - https+cert.
    pub(crate) auth_adds_ms: Option<f64>,
    pub(crate) cold_auth: ColdAuth,
    /// In process: a fresh berth_etcd client's first call, and the next.
    pub(crate) client: Vec<ClientCalls>,
    /// The part's run time, setup and cleanup but the last DELs included.
    pub(crate) secs: f64,
}

impl Etcd {
    /// Every etcd store's ADD median under the target.
    pub(crate) fn pass(&self) -> bool {
        self.stores.iter().all(|s| s.add_pass != Some(false))
    }
}

/// One store's network: N containers, medians and p90s.
#[derive(Debug, Serialize)]
pub(crate) struct EtcdStore {
    pub(crate) store: &'static str,
    pub(crate) what: &'static str,
    /// The network's first ADD (not counted): the lease claimed, the
    /// datapath made (and with auth the first token taken).
    pub(crate) first_add_ms: f64,
    pub(crate) adds: usize,
    pub(crate) dels: usize,
    pub(crate) add_median_ms: Option<f64>,
    pub(crate) add_p90_ms: Option<f64>,
    pub(crate) del_median_ms: Option<f64>,
    pub(crate) del_p90_ms: Option<f64>,
    /// CNI STATUS: no kernel work.
    pub(crate) status_median_ms: Option<f64>,
    pub(crate) status_p90_ms: Option<f64>,
    /// This median - static's (`null` for static).
    pub(crate) add_over_static_ms: Option<f64>,
    pub(crate) del_over_static_ms: Option<f64>,
    pub(crate) status_over_static_ms: Option<f64>,
    /// ADD median under the target; `null` for static (the baseline).
    pub(crate) add_pass: Option<bool>,
}

/// ADDs on the auth network with no cached token: authenticate first.
#[derive(Debug, Serialize)]
pub(crate) struct ColdAuth {
    pub(crate) adds_ms: Vec<f64>,
    pub(crate) median_ms: Option<f64>,
    /// This median - the cached-token ADD median: the password check.
    pub(crate) over_cached_ms: Option<f64>,
}

/// One store, in process, each after a pause: `Client::new`, a first
/// `get_prefix` on it (connection, TLS handshake, request), the same call
/// again at once (the connection reused, etcd busy), and once more after
/// another pause (the connection reused, etcd idle).
#[derive(Debug, Serialize)]
pub(crate) struct ClientCalls {
    pub(crate) store: &'static str,
    pub(crate) calls: usize,
    /// The pause before the first call and before the last.
    pub(crate) pause_ms: f64,
    pub(crate) new_median_ms: Option<f64>,
    pub(crate) first_call_median_ms: Option<f64>,
    pub(crate) first_call_p90_ms: Option<f64>,
    pub(crate) reused_call_median_ms: Option<f64>,
    pub(crate) reused_call_p90_ms: Option<f64>,
    pub(crate) paused_call_median_ms: Option<f64>,
    pub(crate) paused_call_p90_ms: Option<f64>,
    /// First - paused medians (both after a pause): setting up the
    /// connection (TCP, and TLS's handshake).
    pub(crate) setup_ms: Option<f64>,
    /// Paused - reused medians: what the pause costs the request.
    pub(crate) wake_ms: Option<f64>,
}

// ---------------------------------------------------------------------------
// bandwidth

/// berth-bridge + berth-bandwidth against bridge + bandwidth (see
/// bandwidth.rs). Times in ms, rates in bit/s.
#[derive(Debug, Serialize)]
pub(crate) struct Bandwidth {
    /// Measured rounds per level (after one warm-up round).
    pub(crate) reps: usize,
    pub(crate) cni_version: String,
    /// Every limit's burst, in bits.
    pub(crate) burst_bits: u64,
    /// iperf3's `-t` and `-O`.
    pub(crate) iperf_secs: u64,
    pub(crate) omit_secs: u64,
    /// The level the rates were measured at (shaped containers beside).
    pub(crate) rates_at_shaped: usize,
    pub(crate) levels: Vec<BandwidthLevel>,
    pub(crate) rates: Vec<RateRow>,
    /// The part's run time, installing the levels and cleanup included.
    pub(crate) secs: f64,
}

impl Bandwidth {
    /// Every rate measured (the rates are reported, not judged).
    pub(crate) fn ok(&self) -> bool {
        self.rates
            .iter()
            .all(|r| r.berth.error.is_none() && r.reference.error.is_none())
    }
}

/// One level: `shaped` containers already shaped on each host namespace.
#[derive(Debug, Serialize)]
pub(crate) struct BandwidthLevel {
    pub(crate) shaped: usize,
    /// Installing this level's containers on top of the previous level's
    /// (netns, chain ADD each), in seconds.
    pub(crate) berth_fill_secs: f64,
    pub(crate) ref_fill_secs: f64,
    /// berth's previous build's (with `--cni-path-before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before_fill_secs: Option<f64>,
    /// In the order of [`ChainStep::NAMES`].
    pub(crate) steps: Vec<ChainStep>,
}

/// One step of the chain (or the chain's sum) at one level.
#[derive(Debug, Serialize)]
pub(crate) struct ChainStep {
    pub(crate) step: &'static str,
    pub(crate) berth: Spread,
    /// berth's previous build (`--cni-path-before`), in the same rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) before: Option<Spread>,
    #[serde(rename = "ref")]
    pub(crate) reference: Spread,
    /// ref / berth, medians.
    pub(crate) ratio: Option<f64>,
    /// before / berth, medians.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_before: Option<f64>,
}

impl ChainStep {
    pub(crate) const NAMES: [&'static str; 6] = [
        "bridge ADD",
        "shaper ADD",
        "chain ADD",
        "shaper DEL",
        "bridge DEL",
        "chain DEL",
    ];
}

/// A step's median and p90, and its median over the first level's.
#[derive(Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) median_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) growth: Option<f64>,
}

/// One limit, protocol and direction, both implementations.
#[derive(Debug, Serialize)]
pub(crate) struct RateRow {
    pub(crate) limit_bps: u64,
    pub(crate) proto: &'static str,
    /// `ingress` (outside → container) or `egress`.
    pub(crate) direction: &'static str,
    /// UDP's sending rate (twice the limit); `null` for TCP, as fast as
    /// it goes.
    pub(crate) send_bps: Option<u64>,
    pub(crate) berth: Rate,
    #[serde(rename = "ref")]
    pub(crate) reference: Rate,
}

/// What the receiver counted, or why there is nothing.
#[derive(Debug, Serialize)]
pub(crate) struct Rate {
    pub(crate) received_bps: Option<f64>,
    pub(crate) percent_of_limit: Option<f64>,
    pub(crate) error: Option<String>,
}

impl Rate {
    /// For progress lines and the tables: `9.56 Mbit/s (95.6%)`.
    pub(crate) fn describe(&self) -> String {
        match (self.received_bps, self.percent_of_limit, &self.error) {
            (Some(b), Some(p), _) => format!("{:.2} Mbit/s ({p:.1}%)", b / 1e6),
            (_, _, Some(e)) => format!("failed: {e}"),
            _ => "-".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// cluster

/// berth as a Kubernetes cluster network (see cluster.rs): each
/// measurement, or why it failed, next to the others.
#[derive(Debug, Serialize)]
pub(crate) struct Cluster {
    /// The machine's 1-minute load average when the part started and
    /// when it ended.
    pub(crate) load_average: [Option<f64>; 2],
    /// etcd's version, `null` if `etcd --version` said none.
    pub(crate) etcd: Option<String>,
    /// deploy/kubernetes/berth.yaml's conflist, as the ConfigMap holds it
    /// (each node's has its store's endpoint, TLS files and prefix, its
    /// name and dataDir patched in).
    pub(crate) conflist: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput: Option<ClusterThroughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cri: Option<ClusterCri>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cri_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) join: Option<Join>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) join_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) footprint: Option<Footprint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) footprint_error: Option<String>,
}

impl Cluster {
    /// Whether every measurement ran (the targets are reported, not
    /// enforced, like the other parts').
    pub(crate) fn ok(&self) -> bool {
        self.throughput_error.is_none()
            && self.cri_error.is_none()
            && self.join_error.is_none()
            && self.footprint_error.is_none()
    }
}

/// Pod to pod across two nodes against the other paths, Gbit/s.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterThroughput {
    pub(crate) iperf_secs: u64,
    pub(crate) runs_per_path: usize,
    pub(crate) underlay_mtu: u32,
    pub(crate) vxlan_mtu: u32,
    pub(crate) pod_mtu: u32,
    pub(crate) target_ratio: f64,
    pub(crate) cross_over_hand: Option<f64>,
    pub(crate) ratio_pass: bool,
    pub(crate) cross_over_same_node: Option<f64>,
    pub(crate) cross_over_underlay: Option<f64>,
    pub(crate) no_fragmentation: bool,
    pub(crate) cross_node: FlowReport,
    pub(crate) same_node: FlowReport,
    pub(crate) hand_vxlan: FlowReport,
    pub(crate) underlay: FlowReport,
}

impl ClusterThroughput {
    /// The four paths, in the order they ran.
    pub(crate) fn paths(&self) -> [FlowRow<'_>; 4] {
        [
            FlowRow {
                label: "cross",
                what: "pod -> pod across two nodes (berth-overlay)",
                flow: &self.cross_node,
            },
            FlowRow {
                label: "same",
                what: "pod -> pod on one node",
                flow: &self.same_node,
            },
            FlowRow {
                label: "hand",
                what: "container -> container, VXLAN built by hand",
                flow: &self.hand_vxlan,
            },
            FlowRow {
                label: "under",
                what: "node -> node on the underlay",
                flow: &self.underlay,
            },
        ]
    }
}

/// Pods under containerd's CRI on the cluster conflist (with `berth node`)
/// and on the single-node one, in the same run.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterCri {
    pub(crate) pods: usize,
    pub(crate) containerd: Option<String>,
    pub(crate) cluster: CriSummary,
    pub(crate) single: CriSummary,
    /// cluster / single of each figure.
    pub(crate) ratio: CriTimes,
    pub(crate) target_add_ratio: f64,
    pub(crate) add_pass: bool,
    /// berth's figures in docs/results/bench-cri.md.
    pub(crate) doc_cni_add_ms: f64,
    pub(crate) doc_run_ms: f64,
    /// Pods attached by running each conflist's plugins straight in the
    /// same node namespaces (no containerd, no loopback), alternating.
    pub(crate) straight_adds: usize,
    pub(crate) cluster_chain: ChainTimes,
    pub(crate) single_chain: ChainTimes,
}

/// A conflist's ADD plugin by plugin, one exec each, in ms.
#[derive(Debug, Serialize)]
pub(crate) struct ChainTimes {
    pub(crate) plugins: Vec<String>,
    /// Each plugin's median, in the order of `plugins`.
    pub(crate) median_ms: Vec<Option<f64>>,
    /// The median of the pods' sums.
    pub(crate) total_median_ms: Option<f64>,
}

impl ChainTimes {
    /// `plugin 1.23 ms + plugin 4.56 ms = 5.79 ms`.
    pub(crate) fn describe(&self) -> String {
        let steps: Vec<String> = self
            .plugins
            .iter()
            .zip(&self.median_ms)
            .map(|(p, m)| format!("{p} {}", m.map_or("-".into(), |m| format!("{m:.2} ms"))))
            .collect();
        format!(
            "{} = {}",
            steps.join(" + "),
            self.total_median_ms
                .map_or("-".into(), |m| format!("{m:.2} ms"))
        )
    }
}

/// New nodes joining, one after the other: from `berth node` starting.
#[derive(Debug, Serialize)]
pub(crate) struct Join {
    pub(crate) joins: usize,
    /// ... to the new node's pod answering a ping from a pod on another
    /// node.
    pub(crate) answer_ms: Vec<f64>,
    pub(crate) answer_median_ms: Option<f64>,
    pub(crate) answer_max_ms: Option<f64>,
    /// ... to the pod's ADD returning (started right after the agent).
    pub(crate) add_ms: Vec<f64>,
    pub(crate) add_median_ms: Option<f64>,
    /// ... to the agent's /readyz answering 200.
    pub(crate) ready_ms: Vec<f64>,
    pub(crate) ready_median_ms: Option<f64>,
    pub(crate) target_ms: f64,
    pub(crate) pass: bool,
}

/// `berth node`'s resident set (MiB) and CPU (share of one core).
#[derive(Debug, Serialize)]
pub(crate) struct Footprint {
    /// Simulated nodes' leases, and pods on the node.
    pub(crate) nodes: usize,
    pub(crate) pods: usize,
    /// Leases put, the agent ready, the pods' ADDs.
    pub(crate) setup_secs: f64,
    /// The pods' ADDs, plugin by plugin (with the agent running).
    pub(crate) chain: ChainTimes,
    /// berth's nftables tables on the node, which the storm flushes.
    pub(crate) tables: Vec<String>,
    pub(crate) idle_secs: f64,
    pub(crate) idle_cpu_percent: f64,
    /// The largest VmRSS read (every second) while idle.
    pub(crate) idle_rss_mib: f64,
    pub(crate) storm_flushes: usize,
    /// The first flush of the storm to the last one's return.
    pub(crate) storm_secs: f64,
    /// From the storm's first flush until the tables were back after the
    /// last.
    pub(crate) storm_cpu_percent: f64,
    /// The largest VmRSS read (after each flush) during the storm.
    pub(crate) storm_rss_mib: f64,
    /// The storm's last flush returned -> berth's tables back.
    pub(crate) rules_back_ms: f64,
    /// berth_reconciler_repairs_total's growth over the storm.
    pub(crate) storm_repairs: Option<u64>,
    /// VmHWM at the end (or a larger VmRSS read): the most it was ever
    /// resident.
    pub(crate) peak_rss_mib: f64,
    pub(crate) rss_target_mib: f64,
    pub(crate) idle_cpu_target_percent: f64,
    pub(crate) rss_pass: bool,
    pub(crate) idle_cpu_pass: bool,
}
