//! Delegation: running another plugin (an IPAM plugin) found in CNI_PATH
//! with the same environment and stdin, as the reference `invoke` package
//! does.

use crate::error::{codes, Error};
use crate::result::CniResult;
use crate::skel::{Command, Request};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

/// Finds `plugin_type` in CNI_PATH. `field` names the config key that
/// chose it, for the error message.
pub fn find(plugin_type: &str, req: &Request, field: &str) -> Result<PathBuf, Error> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(Error::config(
            field,
            format!("invalid plugin type {plugin_type:?}"),
        ));
    }
    req.cni_path
        .iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = req
                .cni_path
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            Error::config(
                field,
                format!(
                    "plugin {plugin_type:?} not found in CNI_PATH [{}]",
                    dirs.join(":")
                ),
            )
        })
}

/// Runs the delegate with `command`, the request's CNI_* values and the
/// request's stdin. ADD returns the parsed result; other verbs None. A
/// delegate's own CNI error is returned unchanged.
pub fn delegate(
    plugin_type: &str,
    field: &str,
    command: Command,
    req: &Request,
) -> Result<Option<CniResult>, Error> {
    let bin = find(plugin_type, req, field)?;
    let path = std::env::join_paths(&req.cni_path).unwrap_or_default();
    let mut child = Process::new(&bin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &req.container_id)
        .env(
            "CNI_NETNS",
            req.netns
                .as_deref()
                .map(|p| p.as_os_str())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &req.ifname)
        .env("CNI_ARGS", &req.raw_args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                codes::DELEGATE,
                format!("{field}: running {}: {e}", bin.display()),
            )
        })?;
    // Configs are far below a pipe's capacity, so writing before reading
    // cannot deadlock; dropping stdin closes it so the delegate sees EOF.
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(&req.stdin) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::new(
                codes::DELEGATE,
                format!("{field}: writing config to {plugin_type}: {e}"),
            ));
        }
    }
    let out = child.wait_with_output().map_err(|e| {
        Error::new(
            codes::DELEGATE,
            format!("{field}: waiting for {plugin_type}: {e}"),
        )
    })?;
    if !out.status.success() {
        if let Ok(err) = serde_json::from_slice::<Error>(&out.stdout) {
            return Err(err);
        }
        let text = String::from_utf8_lossy(if out.stdout.is_empty() {
            &out.stderr
        } else {
            &out.stdout
        });
        return Err(Error::new(
            codes::DELEGATE,
            format!(
                "{field}: {plugin_type} {} failed ({}): {}",
                command.as_str(),
                out.status,
                text.trim()
            ),
        ));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::new(
            codes::DECODE,
            format!("{field}: {plugin_type} printed an invalid result: {e}"),
        )
    })?;
    CniResult::from_json(&v, &req.result_version()).map(Some)
}
