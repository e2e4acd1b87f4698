//! The dispatcher every plugin's `main()` calls: reads env and stdin,
//! validates them in the reference skel's order, calls the plugin, prints
//! the result or the error JSON on stdout and sets the exit status.

use crate::args::CniArgs;
use crate::conf::NetConf;
use crate::error::{codes, Error};
use crate::result::CniResult;
use crate::version::{self, Version, SUPPORTED};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "CHECK" => Command::Check,
            "DEL" => Command::Del,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// One invocation, validated.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// Empty for STATUS and GC.
    pub container_id: String,
    /// None when CNI_NETNS is unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub cni_path: Vec<PathBuf>,
    pub args: CniArgs,
    /// The raw CNI_ARGS value, passed on to delegates unchanged.
    pub raw_args: String,
    pub conf: NetConf,
    /// stdin as received, passed on to delegates unchanged.
    pub stdin: Vec<u8>,
    pub version: Version,
}

impl Request {
    /// A request from its parts rather than the process environment, for
    /// code that runs a plugin's logic in-process, and for tests: the config
    /// parsed as the dispatcher parses it, no namespace, no CNI_PATH.
    pub fn from_parts(
        command: Command,
        container_id: &str,
        ifname: &str,
        stdin: &[u8],
        cni_args: &str,
    ) -> Result<Request, Error> {
        let conf = NetConf::parse(stdin)?;
        let version = Version::parse(if conf.cni_version.is_empty() {
            "0.1.0"
        } else {
            &conf.cni_version
        })?;
        Ok(Request {
            command,
            container_id: container_id.to_string(),
            netns: None,
            ifname: ifname.to_string(),
            cni_path: Vec::new(),
            args: CniArgs::parse(cni_args)?,
            raw_args: cni_args.to_string(),
            conf,
            stdin: stdin.to_vec(),
            version,
        })
    }

    /// The version results are printed in: the config's, or 0.1.0 when the
    /// config has none (spec).
    pub fn result_version(&self) -> String {
        if self.conf.cni_version.is_empty() {
            "0.1.0".to_string()
        } else {
            self.conf.cni_version.clone()
        }
    }

    /// The parsed `prevResult`, if any. A prevResult without cniVersion
    /// takes the config's; one from another result family is refused, as
    /// the reference's `ParsePrevResult` does.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        let Some(raw) = &self.conf.prev_result else {
            return Ok(None);
        };
        let r = CniResult::from_json(raw, &self.result_version())
            .map_err(|e| Error::new(e.code, format!("prevResult: {}", e.msg)))?;
        let prev_version = Version::parse(&r.cni_version)?;
        if prev_version.family() != self.version.family() {
            return Err(Error::new(
                codes::INCOMPATIBLE_VERSION,
                format!(
                    "prevResult: cniVersion {} cannot be used with config cniVersion {}",
                    r.cni_version,
                    self.result_version()
                ),
            ));
        }
        Ok(Some(r))
    }
}

pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error>;
    fn check(&self, req: &Request) -> Result<(), Error>;
    fn del(&self, req: &Request) -> Result<(), Error>;
    fn status(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
    fn gc(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
    fn supported_versions(&self) -> &'static [&'static str] {
        &SUPPORTED
    }
    /// Printed on stderr when CNI_COMMAND is unset.
    fn about(&self) -> String;
    /// True if the plugin itself decides which namespaces CNI_NETNS may
    /// name. Otherwise the dispatcher refuses the plugin's own namespace
    /// (code 8, as the reference skel does) before the plugin runs.
    fn judges_netns_itself(&self) -> bool {
        false
    }
}

/// What an invocation printed and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the plugin against the process environment and stdin, then exits.
pub fn run(plugin: &dyn Plugin) -> ! {
    init_logging();
    let env = |k: &str| std::env::var(k).ok();
    let mut stdin = std::io::stdin().lock();
    let out = dispatch(plugin, &env, &mut stdin);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(out.status)
}

/// Leveled logs on stderr: warnings by default (what a plugin has to say
/// besides its result), or what `BERTH_LOG` asks for (`debug`, `off`, a
/// tracing filter).
fn init_logging() {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time();
    let _ = match std::env::var("BERTH_LOG") {
        Ok(filter) => builder
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init(),
        Err(_) => builder.with_max_level(tracing::Level::WARN).try_init(),
    };
}

/// Leveled logs on stderr for berth's long-running processes (berthd,
/// the overlay agent, `berth watch`): info by default, or what
/// `BERTH_LOG` asks for. Unlike a plugin's, each line has a time: a
/// daemon's log is read later.
pub fn init_daemon_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

fn failure(err: &Error, cni_version: &str) -> Outcome {
    let version = if Version::is_supported_str(cni_version) {
        cni_version
    } else {
        version::CURRENT
    };
    Outcome {
        status: 1,
        stdout: format!("{}\n", err.to_json(version)),
        stderr: String::new(),
    }
}

/// Container IDs as the reference skel accepts them.
fn valid_container_id(id: &str) -> bool {
    let mut b = id.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// CNI_IFNAME by the kernel's rule (berth-kernel's, berth's only one).
fn check_ifname(name: &str) -> Result<(), Error> {
    berth_kernel::check_ifname(name).map_err(|e| Error::env("CNI_IFNAME", e.to_string()))
}

/// True when `path` is the network namespace this process runs in; such a
/// request would reconfigure the host itself.
fn is_own_netns(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The testable core of [`run`].
pub fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Outcome {
    match prepare(plugin, env, stdin) {
        Ok(Prepared::About) => Outcome {
            status: 0,
            stdout: String::new(),
            stderr: format!("{}\n", plugin.about()),
        },
        Ok(Prepared::Version) => {
            let v = serde_json::json!({"cniVersion": version::CURRENT, "supportedVersions": plugin.supported_versions()});
            Outcome {
                status: 0,
                stdout: format!("{v}\n"),
                stderr: String::new(),
            }
        }
        Ok(Prepared::Run(req)) => execute(plugin, &req),
        Err((err, v)) => failure(&err, &v),
    }
}

enum Prepared {
    About,
    Version,
    Run(Box<Request>),
}

fn prepare(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<Prepared, (Error, String)> {
    let fail = |e: Error| (e, String::new());
    let get = |k: &str| env(k).unwrap_or_default();
    let command_str = get("CNI_COMMAND");
    let container_id = get("CNI_CONTAINERID");
    let netns = get("CNI_NETNS");
    let ifname = get("CNI_IFNAME");
    let raw_args = get("CNI_ARGS");
    let path = get("CNI_PATH");

    if command_str.is_empty() {
        return Ok(Prepared::About);
    }
    let Some(command) = Command::parse(&command_str) else {
        return Err(fail(Error::env(
            "CNI_COMMAND",
            format!(
                "unknown command {command_str:?}; expected ADD, CHECK, DEL, VERSION, STATUS or GC"
            ),
        )));
    };
    if command == Command::Version {
        return Ok(Prepared::Version);
    }

    // Values are validated first, then presence, like the reference skel.
    let needs_attachment = matches!(command, Command::Add | Command::Check | Command::Del);
    if needs_attachment {
        if !container_id.is_empty() && !valid_container_id(&container_id) {
            return Err(fail(Error::env(
                "CNI_CONTAINERID",
                format!("invalid container ID {container_id:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            )));
        }
        if !ifname.is_empty() {
            check_ifname(&ifname).map_err(fail)?;
        }
        let mut missing = Vec::new();
        if container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if netns.is_empty() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
        if ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if path.is_empty() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(fail(Error::new(
                codes::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            )));
        }
    } else if command == Command::Gc && path.is_empty() {
        return Err(fail(Error::env("CNI_PATH", "required for GC")));
    }

    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(|e| {
        fail(Error::new(
            codes::IO,
            format!("reading network config from stdin: {e}"),
        ))
    })?;
    let conf = NetConf::parse(&buf).map_err(fail)?;
    let cv = conf.cni_version.clone();
    let err_v = |e: Error| (e, cv.clone());

    let version = match command {
        Command::Add | Command::Del => {
            let effective = if cv.is_empty() { "0.1.0" } else { cv.as_str() };
            if !plugin.supported_versions().contains(&effective) {
                return Err(err_v(incompatible(&cv, plugin)));
            }
            Version::parse(effective).map_err(err_v)?
        }
        _ => {
            let v = Version::parse(&cv).map_err(err_v)?;
            let min = match command {
                Command::Check => Version::V0_4_0,
                _ => Version::V1_1_0,
            };
            if v < min || !plugin.supported_versions().contains(&cv.as_str()) {
                let mut e = incompatible(&cv, plugin);
                if v < min {
                    e.msg = format!(
                        "{} requires cniVersion {min} or later, config has {cv:?}",
                        command.as_str()
                    );
                }
                return Err(err_v(e));
            }
            v
        }
    };

    let args = CniArgs::parse(&raw_args).map_err(err_v)?;
    let netns = (!netns.is_empty()).then(|| PathBuf::from(&netns));
    if let Some(ns) = &netns {
        let overridden = matches!(
            get("CNI_NETNS_OVERRIDE").as_str(),
            "1" | "true" | "TRUE" | "True"
        );
        if needs_attachment && !overridden && !plugin.judges_netns_itself() && is_own_netns(ns) {
            return Err(err_v(Error::new(
                codes::INVALID_NETNS,
                format!(
                    "CNI_NETNS: {} is the plugin's own network namespace",
                    ns.display()
                ),
            )));
        }
    }
    Ok(Prepared::Run(Box::new(Request {
        command,
        container_id,
        netns,
        ifname,
        cni_path: std::env::split_paths(&path)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        args,
        raw_args,
        conf,
        stdin: buf,
        version,
    })))
}

fn incompatible(cv: &str, plugin: &dyn Plugin) -> Error {
    Error::new(
        codes::INCOMPATIBLE_VERSION,
        format!("incompatible CNI versions: config is {cv:?}"),
    )
    .with_details(format!(
        "supported versions: {}",
        plugin.supported_versions().join(", ")
    ))
}

fn execute(plugin: &dyn Plugin, req: &Request) -> Outcome {
    let v = req.result_version();
    let done = |r: Result<(), Error>| match r {
        Ok(()) => Outcome {
            status: 0,
            stdout: String::new(),
            stderr: String::new(),
        },
        Err(e) => failure(&e, &v),
    };
    match req.command {
        Command::Add => match plugin.add(req).and_then(|r| r.to_json(&v)) {
            Ok(json) => Outcome {
                status: 0,
                stdout: format!("{json}\n"),
                stderr: String::new(),
            },
            Err(e) => failure(&e, &v),
        },
        Command::Check => done(plugin.check(req)),
        Command::Del => done(plugin.del(req)),
        Command::Status => done(plugin.status(req)),
        Command::Gc => done(plugin.gc(req)),
        // VERSION is answered in `dispatch` before a Request exists.
        Command::Version => done(Ok(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::collections::HashMap;

    struct Fake;
    impl Plugin for Fake {
        fn add(&self, req: &Request) -> Result<CniResult, Error> {
            if req.ifname == "fail0" {
                return Err(Error::new(101, "exists"));
            }
            Ok(CniResult {
                cni_version: req.result_version(),
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn check(&self, _: &Request) -> Result<(), Error> {
            Ok(())
        }
        fn del(&self, _: &Request) -> Result<(), Error> {
            Ok(())
        }
        fn about(&self) -> String {
            "fake plugin".into()
        }
    }

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        dispatch(&Fake, &env, &mut stdin.as_bytes())
    }

    fn code(o: &Outcome) -> u64 {
        assert_eq!(o.status, 1, "expected failure, got {o:?}");
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert!(v["msg"].is_string());
        v["code"].as_u64().unwrap()
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/does-not-matter"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"n","type":"fake"}"#;

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .collect();
        v.extend(over.iter().copied().filter(|(_, val)| !val.is_empty()));
        v
    }

    #[test]
    fn version_needs_only_command_and_ignores_stdin() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], "{garbage");
        assert_eq!(o.status, 0);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn no_command_prints_about() {
        let o = run_with(&[], "");
        assert_eq!(o.status, 0);
        assert!(o.stderr.contains("fake plugin"));
    }

    #[test]
    fn env_errors() {
        assert_eq!(code(&run_with(&with(&[("CNI_COMMAND", "FOO")]), CONF)), 4);
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let o = run_with(&with(&[(var, "")]), CONF);
            assert_eq!(code(&o), 4);
            assert!(o.stdout.contains(var), "{o:?}");
        }
        assert_eq!(
            code(&run_with(&with(&[("CNI_CONTAINERID", "-bad id")]), CONF)),
            4
        );
        for bad in ["abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b"] {
            let v = with(&[("CNI_IFNAME", bad)]);
            assert_eq!(code(&run_with(&v, CONF)), 4, "{bad}");
        }
        assert_eq!(code(&run_with(&with(&[("CNI_ARGS", "A")]), CONF)), 4);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let o = run_with(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]), CONF);
        assert_eq!(o.status, 0, "{o:?}");
        assert!(o.stdout.is_empty());
    }

    #[test]
    fn config_errors() {
        assert_eq!(code(&run_with(&FULL, "{bad")), 6);
        assert_eq!(code(&run_with(&FULL, r#"{"cniVersion":"1.0.0"}"#)), 7);
        assert_eq!(
            code(&run_with(
                &FULL,
                r#"{"cniVersion":"1.0.0","name":"bad name!"}"#
            )),
            7
        );
        let o = run_with(&FULL, r#"{"cniVersion":"9.9.9","name":"n"}"#);
        assert_eq!(code(&o), 1);
        assert!(o.stdout.contains("1.1.0"), "details list versions: {o:?}");
    }

    #[test]
    fn check_status_gc_version_floors() {
        let chk = with(&[("CNI_COMMAND", "CHECK")]);
        assert_eq!(
            code(&run_with(&chk, r#"{"cniVersion":"0.3.1","name":"n"}"#)),
            1
        );
        assert_eq!(
            code(&run_with(&chk, r#"{"cniVersion":"abc","name":"n"}"#)),
            6
        );
        for cmd in ["STATUS", "GC"] {
            let o = run_with(
                &[("CNI_COMMAND", cmd), ("CNI_PATH", "/x")],
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
            );
            assert_eq!(code(&o), 1);
            let o = run_with(&[("CNI_COMMAND", cmd), ("CNI_PATH", "/x")], CONF);
            assert_eq!(o.status, 0, "{o:?}");
        }
    }

    #[test]
    fn add_prints_result_in_requested_version() {
        for v in SUPPORTED {
            let conf = format!(r#"{{"cniVersion":"{v}","name":"n"}}"#);
            let o = run_with(&FULL, &conf);
            assert_eq!(o.status, 0, "{o:?}");
            let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            assert_eq!(j["cniVersion"], v);
        }
        let o = run_with(&FULL, r#"{"name":"n"}"#);
        let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(j["cniVersion"], "0.1.0");
        assert!(j.get("ip4").is_some());
    }

    #[test]
    fn plugin_errors_keep_their_code() {
        assert_eq!(
            code(&run_with(&with(&[("CNI_IFNAME", "fail0")]), CONF)),
            101
        );
    }

    #[test]
    fn own_netns_reaches_a_plugin_that_judges_netns_itself() {
        struct Judge;
        impl Plugin for Judge {
            fn add(&self, req: &Request) -> Result<CniResult, Error> {
                Ok(CniResult {
                    cni_version: req.result_version(),
                    ..Default::default()
                })
            }
            fn check(&self, _: &Request) -> Result<(), Error> {
                Ok(())
            }
            fn del(&self, _: &Request) -> Result<(), Error> {
                Ok(())
            }
            fn about(&self) -> String {
                "judge".into()
            }
            fn judges_netns_itself(&self) -> bool {
                true
            }
        }
        let own = with(&[("CNI_NETNS", "/proc/self/ns/net")]);
        let env = |k: &str| {
            own.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let out = dispatch(&Judge, &env, &mut CONF.as_bytes());
        assert_eq!(out.status, 0, "{}", out.stdout);
    }

    #[test]
    fn own_netns_is_refused_unless_overridden() {
        let own = with(&[("CNI_NETNS", "/proc/self/ns/net")]);
        assert_eq!(code(&run_with(&own, CONF)), 8);
        let mut ov = own.clone();
        ov.push(("CNI_NETNS_OVERRIDE", "1"));
        assert_eq!(run_with(&ov, CONF).status, 0);
    }

    #[test]
    fn prev_result_family_must_match() {
        let req = |conf: &str| Request {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            cni_path: vec![],
            args: CniArgs::default(),
            raw_args: String::new(),
            conf: NetConf::parse(conf.as_bytes()).unwrap(),
            stdin: vec![],
            version: Version::parse(&NetConf::parse(conf.as_bytes()).unwrap().cni_version).unwrap(),
        };
        let r = req(
            r#"{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"0.3.1","ips":[]}}"#,
        );
        assert_eq!(r.prev_result().unwrap_err().code, 1);
        let r = req(
            r#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"10.0.0.2/24"}]}}"#,
        );
        assert_eq!(r.prev_result().unwrap().unwrap().cni_version, "1.0.0");
        let r = req(r#"{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.0.0"}}"#);
        assert!(r.prev_result().unwrap().is_some());
    }
}
