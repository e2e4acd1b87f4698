//! Running things: commands with a timeout, network namespaces the suite
//! owns, and CNI plugins executed exactly as a runtime executes them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How long one plugin (or helper command) may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What a command produced.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit status; -1 when killed by a signal or timed out, -2 when it
    /// could not be started.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status == 0
    }

    pub fn msg(&self) -> &str {
        self.json
            .as_ref()
            .and_then(|j| j.get("msg"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// msg + details of a CNI error.
    pub fn msg_details(&self) -> String {
        let d = self
            .json
            .as_ref()
            .and_then(|j| j.get("details"))
            .and_then(Value::as_str)
            .unwrap_or("");
        format!("{} {}", self.msg(), d)
    }

    /// A one-line description for reports.
    pub fn brief(&self) -> String {
        let mut s = format!("exit {}", self.status);
        let so = self.stdout.trim();
        if !so.is_empty() {
            s.push_str(&format!(", stdout {}", clip(so, 220)));
        }
        let se = self.stderr.trim();
        if !se.is_empty() {
            s.push_str(&format!(", stderr {}", clip(se, 160)));
        }
        s
    }

    /// A failed run that printed a well-formed CNI error on stdout
    /// (`{"code": uint, "msg": string, ...}`); returns its code.
    pub fn cni_error(&self) -> Result<u64> {
        if self.ok() {
            bail!("expected an error, plugin succeeded ({})", self.brief());
        }
        if self.status < 0 {
            bail!("plugin was killed or not run ({})", self.brief());
        }
        let Some(j) = &self.json else {
            bail!("failure without a JSON error on stdout ({})", self.brief());
        };
        let Some(code) = j.get("code").and_then(Value::as_u64) else {
            bail!("error JSON without an unsigned `code` ({})", self.brief());
        };
        if !j.get("msg").is_some_and(Value::is_string) {
            bail!("error JSON without a string `msg` ({})", self.brief());
        }
        Ok(code)
    }

    /// A failure with CNI error `code`.
    pub fn expect_code(&self, code: u64) -> Result<()> {
        let got = self.cni_error()?;
        if got != code {
            bail!("expected error code {code}, got {got} ({})", self.brief());
        }
        Ok(())
    }
}

/// At most `n` chars of `s` (with "…" when cut), on one line.
pub fn clip(s: &str, n: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        one
    } else {
        let mut c: String = one.chars().take(n).collect();
        c.push('…');
        c
    }
}

/// Runs `cmd` with `stdin`, killing it after [`TIMEOUT`].
pub fn run_cmd(mut cmd: Command, stdin: &[u8]) -> Out {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Out {
                status: -2,
                stdout: String::new(),
                stderr: format!("cannot start {:?}: {e}", cmd.get_program()),
                json: None,
            }
        }
    };
    let pid = child.id();
    let Some(mut sin) = child.stdin.take() else {
        let _ = child.kill();
        return Out {
            status: -2,
            stdout: String::new(),
            stderr: "no stdin pipe".into(),
            json: None,
        };
    };
    let input = stdin.to_vec();
    // A plugin may exit without reading stdin (VERSION): ignore EPIPE.
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let res = match rx.recv_timeout(TIMEOUT) {
        Ok(r) => r,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            match rx.recv() {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other("lost the child")),
            }
        }
    };
    let _ = writer.join();
    match res {
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            Out {
                status: o.status.code().unwrap_or(-1),
                json: serde_json::from_str(stdout.trim()).ok(),
                stdout,
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }
        }
        Err(e) => Out {
            status: -1,
            stdout: String::new(),
            stderr: e.to_string(),
            json: None,
        },
    }
}

/// Runs a helper program (ip, nft, ...) without stdin.
pub fn run(program: &str, args: &[&str]) -> Out {
    let mut c = Command::new(program);
    c.args(args);
    run_cmd(c, b"")
}

/// Like [`run`] but it must succeed; returns stdout.
pub fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let o = run(program, args);
    if !o.ok() {
        bail!("`{program} {}` failed: {}", args.join(" "), o.brief());
    }
    Ok(o.stdout)
}

/// `ip -j <args>` as JSON (empty output = []).
pub fn ip_json(args: &[&str]) -> Result<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run_ok("ip", &full)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_str(&out)
        .with_context(|| format!("ip -j {} printed invalid JSON", args.join(" ")))
}

/// Whether `name` is an executable file somewhere on PATH (or a path).
pub fn have_program(name: &str) -> bool {
    if name.contains('/') {
        return std::path::Path::new(name).is_file();
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(name).is_file())
}

/// A named network namespace the suite created (`ip netns add`), deleted
/// on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub path: String,
    deleted: bool,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        run_ok("ip", &["netns", "add", name])
            .context("creating a network namespace (needs root)")?;
        let ns = Netns {
            name: name.to_string(),
            path: format!("/run/netns/{name}"),
            deleted: false,
        };
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A second name for `of`'s namespace (a bind mount of its namespace
    /// file, as `ip netns attach` makes): CNI_NETNS naming the host's own
    /// namespace, as a runtime passes for a container that shares it.
    /// Deleting the alias removes only the name.
    pub fn alias(name: &str, of: &Netns) -> Result<Netns> {
        let path = format!("/run/netns/{name}");
        std::fs::File::create(&path).with_context(|| format!("create {path}"))?;
        let ns = Netns {
            name: name.to_string(),
            path,
            deleted: false,
        };
        nix::mount::mount(
            Some(of.path.as_str()),
            ns.path.as_str(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind {} to {}", of.path, ns.path))?;
        Ok(ns)
    }

    /// Deletes it now (the file under /run/netns goes away).
    pub fn delete(&mut self) {
        if !self.deleted {
            let o = run("ip", &["netns", "del", &self.name]);
            if !o.ok() && std::path::Path::new(&self.path).exists() {
                eprintln!("warning: ip netns del {}: {}", self.name, o.brief());
            }
            self.deleted = true;
        }
    }

    /// `ip -n <ns> -j <args>`.
    pub fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip_json(&full)
    }

    /// `ip netns exec <ns> <cmd...>`.
    pub fn exec(&self, cmd: &[&str]) -> Out {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Deletes every namespace `bc-<pid>-*` (final cleanup, also after a
/// panic).
pub fn delete_all_netns(pid: u32) {
    let prefix = format!("bc-{pid}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                let _ = run("ip", &["netns", "del", &n]);
            }
        }
    }
}
