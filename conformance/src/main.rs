//! berth-conformance: black-box CNI conformance checks against any plugin
//! directory.
//!
//! ```text
//! berth-conformance --cni-path DIR --conf FILE.conflist [--format text|markdown]
//!                   [--state-dir DIR]... [--env K=V]... [--case ID]...
//!                   [--host-setup SCRIPT] [--ifname NAME] [--shared-netns]
//! berth-conformance --list
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

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::{json, Value};

use cases::Outcome;
use exec::Netns;
use runtime::Suite;
use snapshot::Snapshot;

/// berth-conformance's command line, as clap reads it; [`Args`] is what
/// the suite uses.
#[derive(Debug, Parser)]
#[command(
    name = "berth-conformance",
    bin_name = "berth-conformance",
    about = "berth-conformance: black-box CNI conformance checks against any plugin directory",
    long_about = "berth-conformance: black-box CNI conformance checks against any plugin \
                  directory.\n\n\
                  Every plugin runs inside a private \"host\" network namespace the suite \
                  creates, containers are further namespaces; the real host is never touched. \
                  After every case the host namespace and the file names under the state dirs \
                  are compared with a baseline taken after one warm-up ADD+DEL; anything left \
                  behind fails the case. Exit status: 0 when no case failed, 1 when one did, \
                  2 on a usage or setup error.",
    override_usage = "berth-conformance --cni-path DIR --conf FILE.conflist [OPTIONS]\n       \
                      berth-conformance --list",
    // As before clap: the last of a repeated single-valued flag wins.
    args_override_self = true
)]
struct Cli {
    /// CNI_PATH: the directory (or `:`-separated directories) of the plugins
    #[arg(long, value_name = "DIR", required_unless_present = "list")]
    cni_path: Option<String>,
    /// The network configuration list to judge
    #[arg(long, value_name = "FILE.conflist", required_unless_present = "list")]
    conf: Option<PathBuf>,
    /// Report format
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    format: Format,
    /// A directory where the plugins keep state, compared after every case
    /// (repeatable)
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dirs: Vec<PathBuf>,
    /// An extra environment variable for every plugin run (repeatable)
    #[arg(long, value_name = "K=V", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Runs only this case (repeatable; see --list)
    #[arg(long = "case", value_name = "ID", value_parser = case_id)]
    only: Vec<String>,
    /// `sh -c` script run in the private host namespace before the baseline
    /// and again before every case, for plugins that need host links (a
    /// macvlan master, a device to move); it must be idempotent
    #[arg(long, value_name = "SCRIPT", allow_hyphen_values = true)]
    host_setup: Option<String>,
    /// CNI_IFNAME (`lo` for a loopback plugin)
    #[arg(long, value_name = "NAME", default_value = "eth0")]
    ifname: String,
    /// Every attachment's CNI_NETNS names the suite's host namespace itself,
    /// for plugins that give a container the host's network (cases that
    /// need a namespace of the container's own are n/a)
    #[arg(long)]
    shared_netns: bool,
    /// Lists the cases (ID and description) and exits
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Markdown,
}

/// `--env K=V`.
fn key_value(kv: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = kv.split_once('=').ok_or("expected K=V")?;
    Ok((k.to_string(), v.to_string()))
}

/// `--case ID`: one of [`cases::all`].
fn case_id(id: &str) -> std::result::Result<String, String> {
    if cases::all().iter().any(|c| c.id == id) {
        Ok(id.to_string())
    } else {
        Err(format!("unknown case {id:?} (see --list)"))
    }
}

#[derive(Debug)]
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

/// Parses `argv` (the program name first). `Ok(None)`: `--list` was
/// given (the caller prints the cases). `--help` is an error of kind
/// `DisplayHelp` (`exit()` prints it and exits 0); usage errors exit 2.
fn parse_args<I, T>(argv: I) -> std::result::Result<Option<Args>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(argv)?;
    if cli.list {
        return Ok(None);
    }
    let (Some(cni_path), Some(conf)) = (cli.cni_path, cli.conf) else {
        unreachable!("clap requires --cni-path and --conf without --list")
    };
    Ok(Some(Args {
        cni_path,
        conf,
        markdown: cli.format == Format::Markdown,
        state_dirs: cli.state_dirs,
        env: cli.env,
        only: cli.only,
        host_setup: cli.host_setup,
        ifname: cli.ifname,
        shared_netns: cli.shared_netns,
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
    // --help: the help on stdout, status 0; a usage error: status 2.
    let args = match parse_args(std::env::args_os()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            for c in cases::all() {
                println!("{}  {}", c.id, c.desc);
            }
            return;
        }
        Err(e) => e.exit(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    fn parse(args: &[&str]) -> std::result::Result<Option<Args>, clap::Error> {
        parse_args(std::iter::once("berth-conformance").chain(args.iter().copied()))
    }

    #[test]
    fn flags() {
        Cli::command().debug_assert();
        let a = parse(&["--cni-path", "/b", "--conf", "/n.conflist"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.cni_path.as_str(), a.conf.as_path()),
            ("/b", Path::new("/n.conflist"))
        );
        assert!(!a.markdown && !a.shared_netns && a.host_setup.is_none());
        assert_eq!(a.ifname, "eth0");
        assert!(a.state_dirs.is_empty() && a.env.is_empty() && a.only.is_empty());
        let id = cases::all()[0].id;
        let a = parse(&[
            "--cni-path",
            "/b",
            "--conf",
            "/n.conflist",
            "--format",
            "markdown",
            "--state-dir",
            "/s1",
            "--state-dir",
            "/s2",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--case",
            id,
            "--host-setup",
            "ip link add up0 type veth",
            "--ifname",
            "lo",
            "--shared-netns",
        ])
        .unwrap()
        .unwrap();
        assert!(a.markdown && a.shared_netns);
        assert_eq!(a.state_dirs, [PathBuf::from("/s1"), PathBuf::from("/s2")]);
        assert_eq!(
            a.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(a.only, [id]);
        assert_eq!(a.host_setup.as_deref(), Some("ip link add up0 type veth"));
        assert_eq!(a.ifname, "lo");
        // --list needs nothing else.
        assert!(parse(&["--list"]).unwrap().is_none());
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(help.exit_code(), 0);
        for (args, flag) in [
            (&["--conf", "/n"][..], "--cni-path"),
            (&["--cni-path", "/b"], "--conf"),
            (
                &["--cni-path", "/b", "--conf", "/n", "--format", "html"],
                "--format",
            ),
            (&["--cni-path", "/b", "--conf", "/n", "--env", "A"], "--env"),
            (
                &["--cni-path", "/b", "--conf", "/n", "--case", "no-such-case"],
                "--case",
            ),
            (&["--cni-path", "/b", "--conf"], "--conf"),
            (&["--cni-path", "/b", "--conf", "/n", "--bogus"], "--bogus"),
        ] {
            let e = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }
}
