//! Docker's VolumeDriver protocol over the `volumes` library: request and
//! response fields exactly as the engine sends and reads them
//! (shared/reference/docker-plugins.md §2). Every answer carries `Err`;
//! errors go with status 500, as go-plugins-helpers does, and the engine
//! shows the `Err` text.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use volumes::Volumes;

#[derive(Deserialize, Default)]
struct NameReq {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct CreateReq {
    #[serde(rename = "Name", default)]
    name: String,
    /// `null` when no `--opt` was given.
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct MountReq {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

/// The answer: 200 and a JSON body, or 500 with `Err`.
pub type Answer = (u16, Value);

fn err(msg: impl std::fmt::Display) -> Answer {
    (500, json!({"Err": msg.to_string()}))
}

fn ok(v: Value) -> Answer {
    (200, v)
}

/// The request body as JSON; the engine sends an empty body for some
/// calls, which is `{}`.
fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| (400, json!({"Err": format!("malformed request JSON: {e}")})))
}

fn need_name(name: &str) -> Result<(), Answer> {
    if name.is_empty() {
        return Err(err("request has no Name"));
    }
    Ok(())
}

/// Handles `/VolumeDriver.<method>`; None for an unknown method.
pub fn handle(vols: &Volumes, docker: &Path, method: &str, body: &[u8]) -> Option<Answer> {
    let answer = match method {
        "Create" => create(vols, body),
        "Remove" => with_name(body, |n| remove(vols, docker, n)),
        "Mount" => mount(vols, body),
        "Unmount" => unmount(vols, body),
        "Path" => with_name(body, |n| {
            vols.path(n).map(|p| json!({"Mountpoint": p, "Err": ""}))
        }),
        "Get" => with_name(body, |n| get(vols, n)),
        "List" => list(vols),
        "Capabilities" => ok(json!({"Capabilities": {"Scope": "local"}, "Err": ""})),
        _ => return None,
    };
    Some(answer)
}

fn with_name(body: &[u8], f: impl FnOnce(&str) -> volumes::Result<Value>) -> Answer {
    let req: NameReq = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if let Err(a) = need_name(&req.name) {
        return a;
    }
    match f(&req.name) {
        Ok(v) => ok(v),
        Err(e) => err(e),
    }
}

fn create(vols: &Volumes, body: &[u8]) -> Answer {
    let req: CreateReq = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if let Err(a) = need_name(&req.name) {
        return a;
    }
    match vols.create(&req.name, &req.opts.unwrap_or_default()) {
        Ok(()) => ok(json!({"Err": ""})),
        Err(e) => err(e),
    }
}

/// Remove; a volume still counted as mounted is reconciled with the
/// engine first: the engine only removes volumes no container references,
/// so if it confirms none does, the counts are stale (containers that died
/// with dockerd never sent Unmount) and are dropped.
fn remove(vols: &Volumes, docker: &Path, name: &str) -> volumes::Result<Value> {
    match vols.remove(name) {
        Err(volumes::Error::InUse { .. })
            if crate::docker::containers_using(docker, name) == Some(0) =>
        {
            let n = vols.clear_mounts(name)?;
            tracing::info!(
                "{name:?}: no container of the engine uses it: dropped {n} stale mount(s)"
            );
            vols.remove(name)?;
        }
        other => other?,
    }
    Ok(json!({"Err": ""}))
}

fn mount_req(body: &[u8]) -> Result<MountReq, Answer> {
    let req: MountReq = parse(body)?;
    need_name(&req.name)?;
    if req.id.is_empty() {
        return Err(err("request has no ID"));
    }
    Ok(req)
}

fn mount(vols: &Volumes, body: &[u8]) -> Answer {
    let req = match mount_req(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    match vols.mount(&req.name, &req.id) {
        Ok(p) => ok(json!({"Mountpoint": p, "Err": ""})),
        Err(e) => err(e),
    }
}

fn unmount(vols: &Volumes, body: &[u8]) -> Answer {
    let req = match mount_req(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    match vols.unmount(&req.name, &req.id) {
        Ok(()) => ok(json!({"Err": ""})),
        Err(e) => err(e),
    }
}

fn get(vols: &Volumes, name: &str) -> volumes::Result<Value> {
    let info = vols.get(name)?;
    Ok(json!({
        "Volume": {
            "Name": info.name,
            "Mountpoint": info.mountpoint,
            "CreatedAt": info.created_at,
            "Status": {
                "kind": info.kind,
                "usedBytes": info.used_bytes,
                "sizeLimit": info.size_limit,
                "mountCount": info.mount_count,
                "mountIDs": info.mount_ids,
            }
        },
        "Err": ""
    }))
}

fn list(vols: &Volumes) -> Answer {
    match vols.list() {
        Ok(names) => {
            let list: Vec<Value> = names
                .iter()
                .map(|n| json!({"Name": n, "Mountpoint": vols.data_path(n)}))
                .collect();
            ok(json!({"Volumes": list, "Err": ""}))
        }
        Err(e) => err(e),
    }
}
