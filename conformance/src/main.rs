//! berth-conformance: black-box CNI conformance checks against any plugin
//! directory.
//!
//! ```text
//! berth-conformance --cni-path DIR --conf FILE.conflist [--format text|markdown]
//!                   [--state-dir DIR]... [--env K=V]... [--case ID]...
//!                   [--host-setup SCRIPT] [--ifname NAME] [--shared-netns]
//! ```
//!
//! `--shared-netns`: every attachment's CNI_NETNS names the suite's host
//! namespace itself, for plugins that give a container the host's network
//! (cases that need a namespace of the container's own are n/a).
//!
//! Every plugin runs inside a private "host" network namespace
//! (`bc-<pid>-host`) the suite creates, containers are further namespaces
//! (`bc-<pid>-<n>`); the real host's links, routes and firewall are never
//! touched. After every case the host namespace (links, addresses, routes,
//! nftables, iptables) and the file names under the state dirs are compared
//! with a baseline taken after one warm-up ADD+DEL; anything left behind
//! fails the case.

mod cases;
mod exec;
mod runtime;
mod snapshot;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use cases::Outcome;
use exec::Netns;
use runtime::Suite;
use snapshot::Snapshot;

const USAGE: &str = "usage: berth-conformance --cni-path DIR --conf FILE.conflist \
[--format text|markdown] [--state-dir DIR]... [--env K=V]... [--case ID]... \
[--host-setup SCRIPT] [--ifname NAME] [--shared-netns] [--list]";

struct Args {
    cni_path: String,
    conf: PathBuf,
    markdown: bool,
    state_dirs: Vec<PathBuf>,
    env: Vec<(String, String)>,
    only: Vec<String>,
    /// `sh -c` script run in the private host namespace before the
    /// baseline and again before every case, for plugins that need host
    /// links (a macvlan master, a device to move, which a case may have
    /// consumed). It must be idempotent.
    host_setup: Option<String>,
    /// CNI_IFNAME (default eth0; `lo` for a loopback plugin).
    ifname: String,
    shared_netns: bool,
}

fn parse_args() -> Result<Option<Args>> {
    let mut it = std::env::args().skip(1);
    let (mut cni_path, mut conf, mut markdown) = (None, None, false);
    let (mut state_dirs, mut env, mut only) = (Vec::new(), Vec::new(), Vec::new());
    let mut host_setup = None;
    let mut ifname = "eth0".to_string();
    let mut shared_netns = false;
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--cni-path" => cni_path = Some(val("--cni-path")?),
            "--conf" => conf = Some(PathBuf::from(val("--conf")?)),
            "--format" => match val("--format")?.as_str() {
                "text" => markdown = false,
                "markdown" => markdown = true,
                f => bail!("unknown format {f:?} (text or markdown)"),
            },
            "--state-dir" => state_dirs.push(PathBuf::from(val("--state-dir")?)),
            "--env" => {
                let kv = val("--env")?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?}: expected K=V"))?;
                env.push((k.to_string(), v.to_string()));
            }
            "--case" => only.push(val("--case")?),
            "--host-setup" => host_setup = Some(val("--host-setup")?),
            "--ifname" => ifname = val("--ifname")?,
            "--shared-netns" => shared_netns = true,
            "--list" => {
                for c in cases::all() {
                    println!("{}  {}", c.id, c.desc);
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            _ => bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    let known: Vec<&str> = cases::all().iter().map(|c| c.id).collect();
    for o in &only {
        if !known.contains(&o.as_str()) {
            bail!("unknown case {o:?} (see --list)");
        }
    }
    Ok(Some(Args {
        cni_path: cni_path.with_context(|| format!("--cni-path is required\n{USAGE}"))?,
        conf: conf.with_context(|| format!("--conf is required\n{USAGE}"))?,
        markdown,
        state_dirs,
        env,
        only,
        host_setup,
        ifname,
        shared_netns,
    }))
}

struct Row {
    id: &'static str,
    desc: &'static str,
    result: &'static str,
    detail: String,
}

/// Removes the suite's temp root on drop.
struct TmpRoot(PathBuf);

impl Drop for TmpRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Takes snapshots until the diff against `base` is empty or ~5 s passed
/// (namespace teardown is asynchronous in the kernel).
fn settle(s: &Suite, base: &Snapshot) -> Result<(Snapshot, Vec<String>)> {
    let t = Instant::now();
    loop {
        let now = Snapshot::take(&s.host.name, &s.state_dirs)?;
        let d = now.diff(base);
        if d.is_empty() || t.elapsed() > Duration::from_secs(5) {
            return Ok((now, d));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn summarize(d: &[String]) -> String {
    let mut s: Vec<String> = d.iter().take(6).cloned().collect();
    if d.len() > 6 {
        s.push(format!("and {} more", d.len() - 6));
    }
    s.join(", ")
}

fn run_suite(args: &Args, pid: u32) -> Result<(Vec<Row>, Option<String>)> {
    let tmp = TmpRoot(std::env::temp_dir().join(format!("bc-{pid}-state")));
    std::fs::create_dir_all(&tmp.0)?;
    let mut conf = runtime::load_conflist(&args.conf)?;
    // Private IPAM state for every plugin with an ipam section.
    if let Some(ps) = conf["plugins"].as_array_mut() {
        for (i, p) in ps.iter_mut().enumerate() {
            if let Some(ipam) = p.get_mut("ipam").and_then(Value::as_object_mut) {
                let d = tmp.0.join(format!("ipam{i}"));
                std::fs::create_dir_all(&d)?;
                ipam.insert("dataDir".into(), json!(d));
            }
        }
    }
    let mut state_dirs = args.state_dirs.clone();
    state_dirs.push(tmp.0.clone());
    let host = Netns::create(&format!("bc-{pid}-host"))?;
    let host_setup = |host: &Netns| -> Result<()> {
        if let Some(script) = &args.host_setup {
            let o = exec::run("ip", &["netns", "exec", &host.name, "sh", "-c", script]);
            if !o.ok() {
                bail!("--host-setup failed: {}", o.brief());
            }
        }
        Ok(())
    };
    host_setup(&host)?;
    let mut s = Suite::new(
        pid,
        host,
        args.cni_path.clone(),
        args.env.clone(),
        conf,
        state_dirs,
        args.ifname.clone(),
    )?;
    s.shared_netns = args.shared_netns;

    // Warm-up: plugins may leave a bridge or an empty base chain the first
    // time; that is the baseline.
    let warm = (|| -> Result<()> {
        let mut a = s.att()?;
        s.add(&mut a, &[])
            .map_err(|(t, o)| anyhow::anyhow!("{t}: {}", o.brief()))?;
        s.del_done(&mut a, &[], true)
            .map_err(|(t, o)| anyhow::anyhow!("DEL {t}: {}", o.brief()))?;
        Ok(())
    })();
    let warm_err = warm.err().map(|e| format!("warm-up ADD+DEL failed: {e:#}"));
    let mut base = Snapshot::take(&s.host.name, &s.state_dirs)?;

    let mut rows = Vec::new();
    for c in cases::all() {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == c.id) {
            continue;
        }
        if args.host_setup.is_some() {
            host_setup(&s.host)?;
            // What the setup re-created (a device a case consumed) is not
            // the next case's doing.
            base = Snapshot::take(&s.host.name, &s.state_dirs)?;
        }
        let res = catch_unwind(AssertUnwindSafe(|| (c.run)(&s)));
        let (mut result, mut detail) = match res {
            Ok(Ok(Outcome::Pass(n))) => ("PASS", n.unwrap_or_default()),
            Ok(Ok(Outcome::Na(r))) => ("N/A", r),
            Ok(Err(e)) => ("FAIL", format!("{e:#}")),
            Err(p) => {
                let m = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                ("FAIL", format!("panicked: {m}"))
            }
        };
        let (now, d) = settle(&s, &base)?;
        if !d.is_empty() {
            let leak = summarize(&d);
            detail = if result == "FAIL" {
                format!("{detail}; {leak}")
            } else {
                leak
            };
            result = "FAIL";
            // Don't blame the next cases for this one's leftovers.
            base = now;
        }
        rows.push(Row {
            id: c.id,
            desc: c.desc,
            result,
            detail,
        });
    }
    Ok((rows, warm_err))
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("berth-conformance: {e:#}");
            std::process::exit(2);
        }
    };
    let pid = std::process::id();
    let res = catch_unwind(AssertUnwindSafe(|| run_suite(&args, pid)));
    // Final cleanup, also after an error or panic: every namespace of ours.
    exec::delete_all_netns(pid);
    let (rows, warm_err) = match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("berth-conformance: {e:#}");
            std::process::exit(2);
        }
        Err(_) => {
            eprintln!("berth-conformance: internal error (panic)");
            std::process::exit(2);
        }
    };
    let passed = rows.iter().filter(|r| r.result == "PASS").count();
    let failed =
        rows.iter().filter(|r| r.result == "FAIL").count() + usize::from(warm_err.is_some());
    let na = rows.iter().filter(|r| r.result == "N/A").count();
    if let Some(w) = &warm_err {
        println!("FAIL  warm-up ADD+DEL before the baseline — {w}");
    }
    if args.markdown {
        println!("| case | result | detail |");
        println!("|---|---|---|");
        for r in &rows {
            println!(
                "| `{}` {} | {} | {} |",
                r.id,
                md_escape(r.desc),
                if r.result == "N/A" { "n/a" } else { r.result },
                md_escape(&exec::clip(&r.detail, 320))
            );
        }
        println!();
    } else {
        for r in &rows {
            let d = if r.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", r.detail)
            };
            println!("{:<4}  {} {}{d}", r.result, r.id, r.desc);
        }
    }
    println!("{na} not applicable");
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
