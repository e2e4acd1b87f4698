//! The implementations compared and one plugin exec, as a runtime runs it
//! (CNI env, config on stdin), timed around the exec.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// What the reports call berth's previous build (`--cni-path-before`).
pub(crate) const BEFORE: &str = "berth (before)";

#[derive(Debug, Clone)]
pub(crate) struct Impl {
    pub(crate) label: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) bridge: &'static str,
    pub(crate) ipam: &'static str,
}

impl Impl {
    pub(crate) fn berth(dir: &Path) -> Self {
        Self {
            label: "berth",
            dir: dir.into(),
            bridge: "berth-bridge",
            ipam: "berth-ipam",
        }
    }

    /// berth's previous build (`--cni-path-before`): the same plugins from
    /// another dir. Its label goes into names (networks, temp dirs);
    /// [`BEFORE`] is what the reports call it.
    pub(crate) fn before(dir: &Path) -> Self {
        Self {
            label: "before",
            ..Self::berth(dir)
        }
    }

    /// The name the reports give it.
    pub(crate) fn display(&self) -> &'static str {
        match self.label {
            "before" => BEFORE,
            "ref" => "reference",
            l => l,
        }
    }

    pub(crate) fn reference(dir: &Path) -> Self {
        Self {
            label: "ref",
            dir: dir.into(),
            bridge: "bridge",
            ipam: "host-local",
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        for b in [self.bridge, self.ipam] {
            let p = self.dir.join(b);
            if !p.is_file() {
                bail!(
                    "{} plugin {} not found{}",
                    self.label,
                    p.display(),
                    if self.label == "berth" {
                        " (build with `cargo build --workspace --bins --release` or pass --cni-path-berth)"
                    } else if self.label == "before" {
                        " (build berth's previous commit with `cargo build --release --bins` and pass its target/release)"
                    } else {
                        " (apt-get install containernetworking-plugins, or pass --cni-path-ref / --no-ref)"
                    }
                );
            }
        }
        Ok(())
    }
}

/// The same network shape for both implementations: bridge + IPAM,
/// dual-stack, gateway, masquerade, default routes.
pub(crate) fn plugin_conf(
    imp: &Impl,
    cni_version: &str,
    name: &str,
    bridge: &str,
    s4: &str,
    s6: &str,
    data_dir: &Path,
) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": name,
        "type": imp.bridge,
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": imp.ipam,
            "dataDir": data_dir.to_string_lossy(),
            "ranges": [[{"subnet": s4}], [{"subnet": s6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        }
    })
}

pub(crate) fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

pub(crate) struct Exec {
    pub(crate) elapsed: Duration,
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Exec {
    pub(crate) fn describe(&self) -> String {
        format!(
            "stdout: {} stderr: {}",
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// One exec of `imp`'s bridge plugin (see [`exec_plugin`]).
pub(crate) fn exec_cni(
    imp: &Impl,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
) -> Result<Exec> {
    exec_plugin(&imp.dir, imp.bridge, command, cid, netns, conf)
}

/// One exec of plugin `plugin` from `dir` (also its CNI_PATH), as a runtime
/// does it: environment cleared but PATH, CNI_* set, config on stdin.
/// Timed from spawn to exit.
pub(crate) fn exec_plugin(
    dir: &Path,
    plugin: &str,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
) -> Result<Exec> {
    exec_plugin_env(dir, plugin, command, cid, netns, conf, &[])
}

/// [`exec_plugin`] with `extra` variables added to the environment.
pub(crate) fn exec_plugin_env(
    dir: &Path,
    plugin: &str,
    command: &str,
    cid: &str,
    netns: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> Result<Exec> {
    let input = serde_json::to_vec(conf)?;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let bin = dir.join(plugin);
    let start = Instant::now();
    let mut child = Command::new(&bin)
        .env_clear()
        .env("PATH", path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", dir)
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("exec {}", bin.display()))?;
    {
        let mut stdin = child.stdin.take().unwrap();
        // A plugin that exits without reading stdin is its own error.
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    Ok(Exec {
        elapsed,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::Path;

    #[test]
    fn same_shape_for_both() {
        let d = Path::new("/tmp/d");
        let b = plugin_conf(
            &Impl::berth(d),
            "1.0.0",
            "n",
            "br",
            "10.200.0.0/16",
            "fd00:be:c8::/64",
            d,
        );
        let r = plugin_conf(
            &Impl::reference(d),
            "1.0.0",
            "n",
            "br",
            "10.200.0.0/16",
            "fd00:be:c8::/64",
            d,
        );
        assert_eq!(b["type"], "berth-bridge");
        assert_eq!(b["ipam"]["type"], "berth-ipam");
        assert_eq!(r["type"], "bridge");
        assert_eq!(r["ipam"]["type"], "host-local");
        let strip = |mut v: Value| {
            v["type"] = Value::Null;
            v["ipam"]["type"] = Value::Null;
            v
        };
        assert_eq!(strip(b), strip(r));
    }
}
