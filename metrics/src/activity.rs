//! What a long-running process (berthd, `berth watch`) did since it
//! started: counters it updates as it works, encoded with the node's
//! metrics at each scrape.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

type Durations = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// berthd's calls take from tens of microseconds (a volume's Path) to
/// seconds (an overlay network joining etcd): 50 µs to ~6.5 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The counters. Clones share them (prometheus-client's metrics are
/// handles on atomics).
#[derive(Clone)]
pub struct Activity {
    passes: Counter,
    repairs: Counter,
    failures: Counter,
    /// Only berthd serves calls; `berth watch` has none to count.
    calls: Option<(Family<CallLabels, Counter>, Durations)>,
}

impl Activity {
    /// A reconciler's counters (`berth watch`).
    pub fn reconciler() -> Activity {
        Activity {
            passes: Counter::default(),
            repairs: Counter::default(),
            failures: Counter::default(),
            calls: None,
        }
    }

    /// A reconciler's and the calls' of a plugin daemon (berthd).
    pub fn daemon() -> Activity {
        Activity {
            calls: Some((
                Family::default(),
                Family::new_with_constructor(call_histogram as fn() -> Histogram),
            )),
            ..Activity::reconciler()
        }
    }

    /// One reconciler pass: what it put back, and what it could not.
    pub fn reconciled(&self, repaired: usize, failed: usize) {
        self.passes.inc();
        self.repairs.inc_by(repaired as u64);
        self.failures.inc_by(failed as u64);
    }

    /// One call answered: its method (a known one: the caller maps the
    /// rest to one name, so that no request can grow the label set), and
    /// whether it succeeded.
    pub fn called(&self, method: &str, ok: bool, took: Duration) {
        let Some((calls, durations)) = &self.calls else {
            return;
        };
        calls
            .get_or_create(&CallLabels {
                method: method.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
        durations
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn register(&self, reg: &mut Registry) {
        reg.register(
            "berth_reconciler_passes",
            "Passes of the reconciler comparing the ruleset with berth's records",
            self.passes.clone(),
        );
        reg.register(
            "berth_reconciler_repairs",
            "Objects the reconciler found missing and put back (rules, map elements, sysctls)",
            self.repairs.clone(),
        );
        reg.register(
            "berth_reconciler_failures",
            "Objects the reconciler found missing and could not put back",
            self.failures.clone(),
        );
        if let Some((calls, durations)) = &self.calls {
            reg.register(
                "berthd_calls",
                "Calls of the Docker engine's plugin protocols answered, by method and outcome",
                calls.clone(),
            );
            reg.register(
                "berthd_call_duration_seconds",
                "How long berthd took to answer a call, by method",
                durations.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Activity) -> String {
        let mut reg = Registry::default();
        a.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn passes_repairs_and_calls_are_counted() {
        let a = Activity::daemon();
        a.reconciled(2, 0);
        a.clone().reconciled(1, 1);
        a.called("VolumeDriver.Create", true, Duration::from_millis(3));
        a.called("VolumeDriver.Create", false, Duration::from_micros(10));
        let t = text(&a);
        assert!(t.contains("berth_reconciler_passes_total 2\n"), "{t}");
        assert!(t.contains("berth_reconciler_repairs_total 3\n"), "{t}");
        assert!(t.contains("berth_reconciler_failures_total 1\n"), "{t}");
        assert!(
            t.contains(r#"berthd_calls_total{method="VolumeDriver.Create",outcome="ok"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"berthd_calls_total{method="VolumeDriver.Create",outcome="error"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"berthd_call_duration_seconds_count{method="VolumeDriver.Create"} 2"#),
            "{t}"
        );
    }

    #[test]
    fn a_reconciler_has_no_calls() {
        let a = Activity::reconciler();
        a.called("x", true, Duration::ZERO);
        assert!(!text(&a).contains("berthd_"), "{}", text(&a));
    }
}
