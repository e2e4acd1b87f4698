//! Reading a scrape of berth's Prometheus metrics as Prometheus would:
//! Debian's promtool checks its format, and prometheus-parse reads its
//! values.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Samples by metric name and labels. A histogram counts as its number of
/// observations (its +Inf bucket).
pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// `promtool check metrics` on an exposition: it must find nothing to
/// say (no format error, no lint).
pub fn promtool_finds_nothing(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: run ./scripts/test, which installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
}

/// An exposition's samples.
pub fn samples(text: &str) -> Samples {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => return None,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(((s.metric, labels), v))
        })
        .collect()
}

/// A sample's key from its name and label pairs.
pub fn key(name: &str, labels: &[(&str, &str)]) -> (String, BTreeMap<String, String>) {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}
