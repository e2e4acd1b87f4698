//! VERSION: every plugin's answer, and VERSION with garbage on stdin.

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::{pass, pass_note, Outcome};
use crate::runtime::{Suite, KNOWN_VERSIONS};

pub(super) fn version(s: &Suite) -> Result<Outcome> {
    let mut notes = Vec::new();
    for t in s.supported.keys() {
        let o = s.exec(t, Some("VERSION"), &[], b"");
        ensure!(o.ok(), "{t}: VERSION failed: {}", o.brief());
        let j = o
            .json
            .as_ref()
            .with_context(|| format!("{t}: VERSION printed no JSON: {}", o.brief()))?;
        ensure!(j["cniVersion"].is_string(), "{t}: no cniVersion in {j}");
        let sv = j["supportedVersions"]
            .as_array()
            .with_context(|| format!("{t}: no supportedVersions in {j}"))?;
        ensure!(!sv.is_empty(), "{t}: empty supportedVersions");
        for v in sv {
            let v = v.as_str().unwrap_or("");
            ensure!(
                KNOWN_VERSIONS.contains(&v),
                "{t}: unknown version {v:?} in supportedVersions"
            );
        }
        notes.push(format!(
            "{t}: {}",
            sv.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    pass_note(notes.join("; "))
}

pub(super) fn version_garbage(s: &Suite) -> Result<Outcome> {
    let mut types = vec![s.main_type()];
    types.extend(s.ipam_type());
    for t in types {
        let o = s.exec(&t, Some("VERSION"), &[], b"{bad");
        ensure!(o.ok(), "{t}: {}", o.brief());
        ensure!(
            o.json
                .as_ref()
                .is_some_and(|j| j["supportedVersions"].is_array()),
            "{t}: no supportedVersions: {}",
            o.brief()
        );
    }
    pass()
}
