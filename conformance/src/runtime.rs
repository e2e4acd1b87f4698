//! The runtime side: a conflist executed the way libcni executes it, every
//! plugin run inside the suite's private "host" namespace.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::exec::{run_cmd, Netns, Out};

/// Every cniVersion the spec knows, oldest first.
pub const KNOWN_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Orders versions "a.b.c" numerically; unparseable ones sort first.
pub fn vkey(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

pub fn vge(a: &str, b: &str) -> bool {
    vkey(a) >= vkey(b)
}

/// Environment overrides for one call: `Some(v)` sets, `None` unsets.
pub type Ov<'a> = &'a [(&'a str, Option<&'a str>)];

/// One container attachment as the runtime remembers it. Dropping it runs
/// the runtime's DEL (when an ADD was attempted and no DEL succeeded), then
/// deletes its namespace: the guard that keeps a failing case from leaking.
pub struct Att<'s> {
    suite: &'s Suite,
    pub cid: String,
    pub ifname: String,
    pub ns: Netns,
    /// CNI_ARGS for every verb.
    pub cni_args: Option<String>,
    /// Capability args (libcni's runtimeConfig, filtered per plugin).
    pub caps: Map<String, Value>,
    /// `args` put into every plugin's config.
    pub args: Option<Value>,
    /// Conflist to use instead of the suite's (rewritten ranges).
    pub conf: Option<Value>,
    /// The cached result of the last successful ADD.
    pub result: Option<Value>,
    /// An ADD was attempted and no DEL has succeeded since.
    pub live: bool,
}

impl Att<'_> {
    /// The conflist this attachment uses.
    pub fn conflist(&self) -> &Value {
        self.conf.as_ref().unwrap_or(&self.suite.conf)
    }

    /// The result's IP addresses (CIDR strings), any version's shape.
    pub fn ips(&self) -> Vec<String> {
        self.result.as_ref().map(result_ips).unwrap_or_default()
    }

    /// Forget the attachment: the drop guard won't DEL it.
    pub fn forget(&mut self) {
        self.live = false;
    }
}

impl Drop for Att<'_> {
    fn drop(&mut self) {
        if self.live {
            let _ = self.suite.del(self, &[], true);
        }
        self.ns.delete();
    }
}

/// The addresses of a result of any version (CIDR strings).
pub fn result_ips(r: &Value) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(ips) = r.get("ips").and_then(Value::as_array) {
        for ip in ips {
            if let Some(a) = ip.get("address").and_then(Value::as_str) {
                v.push(a.to_string());
            }
        }
    }
    for k in ["ip4", "ip6"] {
        if let Some(a) = r.get(k).and_then(|x| x.get("ip")).and_then(Value::as_str) {
            v.push(a.to_string());
        }
    }
    v
}

pub struct Suite {
    pub pid: u32,
    /// The private host namespace every plugin runs in.
    pub host: Netns,
    pub cni_path: String,
    pub extra_env: Vec<(String, String)>,
    /// The conflist (after the suite's rewrites).
    pub conf: Value,
    /// The version the runtime uses for the conflist.
    pub version: String,
    /// Index of the interface plugin under test (the first with `ipam`,
    /// else the first plugin).
    pub main: usize,
    /// supportedVersions per plugin type (VERSION output; empty if VERSION
    /// failed).
    pub supported: std::collections::BTreeMap<String, Vec<String>>,
    pub state_dirs: Vec<PathBuf>,
    /// CNI_IFNAME of every attachment (`eth0`; `lo` for a loopback plugin).
    pub ifname: String,
    /// Every attachment's CNI_NETNS names the host namespace itself (a
    /// plugin for containers sharing the host's network).
    pub shared_netns: bool,
    counter: AtomicU64,
}

impl Suite {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pid: u32,
        host: Netns,
        cni_path: String,
        extra_env: Vec<(String, String)>,
        conf: Value,
        state_dirs: Vec<PathBuf>,
        ifname: String,
    ) -> Result<Suite> {
        let plugins = conf
            .get("plugins")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow!("the conflist has no `plugins`"))?;
        let main = plugins
            .iter()
            .position(|p| p.get("ipam").is_some_and(Value::is_object))
            .unwrap_or(0);
        let version = conflist_version(&conf);
        let mut s = Suite {
            pid,
            host,
            cni_path,
            extra_env,
            conf,
            version,
            main,
            supported: Default::default(),
            state_dirs,
            ifname,
            shared_netns: false,
            counter: AtomicU64::new(0),
        };
        let mut types: Vec<String> = s
            .plugins()
            .iter()
            .filter_map(|p| p["type"].as_str().map(String::from))
            .collect();
        if let Some(t) = s.ipam_type() {
            types.push(t);
        }
        for t in types {
            let o = s.exec(&t, Some("VERSION"), &[], b"{}");
            let v = o
                .json
                .as_ref()
                .and_then(|j| j.get("supportedVersions"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            s.supported.insert(t, v);
        }
        Ok(s)
    }

    pub fn plugins(&self) -> &Vec<Value> {
        // Checked to be an array when the suite was made.
        static EMPTY: Vec<Value> = Vec::new();
        self.conf["plugins"].as_array().unwrap_or(&EMPTY)
    }

    pub fn main_plugin(&self) -> &Value {
        &self.plugins()[self.main]
    }

    pub fn main_type(&self) -> String {
        self.main_plugin()["type"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn ipam_type(&self) -> Option<String> {
        self.main_plugin()
            .get("ipam")?
            .get("type")?
            .as_str()
            .map(String::from)
    }

    pub fn main_supports(&self, v: &str) -> bool {
        self.supported
            .get(&self.main_type())
            .is_some_and(|s| s.iter().any(|x| x == v))
    }

    /// Every plugin of the list supports `v`.
    pub fn all_support(&self, v: &str) -> bool {
        self.plugins().iter().all(|p| {
            let t = p["type"].as_str().unwrap_or("");
            self.supported
                .get(t)
                .is_some_and(|s| s.iter().any(|x| x == v))
        })
    }

    /// The plugin under test configures loopback (CNI_IFNAME `lo`): its
    /// ADD is idempotent and its interface cannot be deleted.
    pub fn is_loopback(&self) -> bool {
        self.ifname == "lo" && !self.shared_netns
    }

    pub fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh attachment in a fresh namespace `bc-<pid>-<n>`.
    pub fn att(&self) -> Result<Att<'_>> {
        let n = self.next();
        let name = format!("bc-{}-{n}", self.pid);
        let ns = if self.shared_netns {
            Netns::alias(&name, &self.host)?
        } else {
            Netns::create(&name)?
        };
        Ok(Att {
            suite: self,
            cid: format!("bc{}c{n}", self.pid),
            ifname: self.ifname.clone(),
            ns,
            cni_args: None,
            caps: Map::new(),
            args: None,
            conf: None,
            result: None,
            live: false,
        })
    }

    /// A private directory under the suite's temp root (not a state dir
    /// unless the root is).
    pub fn scratch_dir(&self, tag: &str) -> Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("bc-{}-{tag}-{}", self.pid, self.next()));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// The plugin binary `typ` in CNI_PATH `path`.
    pub fn find_plugin(path: &str, typ: &str) -> Option<PathBuf> {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(typ))
            .find(|p| p.is_file())
    }

    /// Executes plugin `typ` inside the host namespace with a cleared
    /// environment: PATH, the `--env` extras, CNI_COMMAND (if given), `env`.
    /// The binary is looked up in CNI_PATH of `env` (else the suite's).
    pub fn exec(
        &self,
        typ: &str,
        command: Option<&str>,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Out {
        let path = env
            .iter()
            .find(|(k, _)| k == "CNI_PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.cni_path.clone());
        let bin = Self::find_plugin(&path, typ).or_else(|| Self::find_plugin(&self.cni_path, typ));
        let Some(bin) = bin else {
            return Out {
                status: -2,
                stdout: String::new(),
                stderr: format!("plugin {typ} not found in {}", self.cni_path),
                json: None,
            };
        };
        let host = match std::fs::File::open(&self.host.path) {
            Ok(f) => f,
            Err(e) => {
                return Out {
                    status: -2,
                    stdout: String::new(),
                    stderr: format!("open {}: {e}", self.host.path),
                    json: None,
                }
            }
        };
        let mut c = Command::new(bin);
        c.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .envs(command.map(|cmd| ("CNI_COMMAND", cmd)))
            .envs(env.iter().map(|(k, v)| (k, v)));
        // The plugin runs in the suite's host namespace: the child enters
        // it between fork and exec (setns is async-signal-safe).
        // SAFETY: the closure only calls setns(2) on an fd opened above.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        run_cmd(c, stdin)
    }

    /// The standard env of an attachment with overrides applied.
    pub fn env_for(&self, att: &Att, ov: Ov) -> Vec<(String, String)> {
        let mut env: Vec<(String, Option<String>)> = vec![
            ("CNI_CONTAINERID".into(), Some(att.cid.clone())),
            ("CNI_NETNS".into(), Some(att.ns.path.clone())),
            ("CNI_IFNAME".into(), Some(att.ifname.clone())),
            ("CNI_PATH".into(), Some(self.cni_path.clone())),
            ("CNI_ARGS".into(), att.cni_args.clone()),
        ];
        for (k, v) in ov {
            if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
                e.1 = v.map(String::from);
            } else {
                env.push((k.to_string(), v.map(String::from)));
            }
        }
        env.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// libcni's buildOneConfig: plugin `i` of `list` with name, cniVersion,
    /// prevResult and the capability args it declares.
    pub fn plugin_conf(
        list: &Value,
        i: usize,
        version: &str,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
        args: Option<&Value>,
    ) -> Value {
        let mut p = list["plugins"][i].clone();
        let o = p.as_object_mut().expect("plugin object");
        if !list["name"].is_null() {
            o.insert("name".into(), list["name"].clone());
        }
        o.insert("cniVersion".into(), json!(version));
        if let Some(prev) = prev {
            o.insert("prevResult".into(), prev.clone());
        }
        let declared = o.get("capabilities").cloned().unwrap_or(Value::Null);
        let mut rc = Map::new();
        for (k, v) in caps {
            if declared.get(k).and_then(Value::as_bool) == Some(true) {
                rc.insert(k.clone(), v.clone());
            }
        }
        if !rc.is_empty() {
            o.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(a) = args {
            o.insert("args".into(), a.clone());
        }
        p
    }

    fn version_of(&self, list: &Value) -> String {
        if std::ptr::eq(list, &self.conf) {
            self.version.clone()
        } else {
            conflist_version(list)
        }
    }

    /// ADD through the whole list; caches the final result. On failure
    /// returns which plugin failed and its output (the attachment stays
    /// live: the runtime DELs after a failed ADD).
    pub fn add(&self, att: &mut Att, ov: Ov) -> Result<Value, (String, Out)> {
        let list = att.conflist().clone();
        let v = self.version_of(&list);
        let env = self.env_for(att, ov);
        att.live = true;
        let mut prev: Option<Value> = None;
        for i in 0..list["plugins"].as_array().map_or(0, Vec::len) {
            let typ = list["plugins"][i]["type"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let c = Self::plugin_conf(&list, i, &v, prev.as_ref(), &att.caps, att.args.as_ref());
            let o = self.exec(&typ, Some("ADD"), &env, c.to_string().as_bytes());
            if !o.ok() {
                return Err((typ, o));
            }
            match o.json.clone() {
                Some(j) => prev = Some(j),
                None => return Err((typ, o)),
            }
        }
        let r = prev.unwrap_or(Value::Null);
        att.result = Some(r.clone());
        Ok(r)
    }

    /// DEL in reverse order, each plugin with the cached result as
    /// prevResult (≥ 0.4.0, when `with_prev` and a result is cached).
    pub fn del(&self, att: &Att, ov: Ov, with_prev: bool) -> Result<(), (String, Out)> {
        let list = att.conflist().clone();
        let v = self.version_of(&list);
        let env = self.env_for(att, ov);
        let prev = if with_prev && vge(&v, "0.4.0") {
            att.result.as_ref()
        } else {
            None
        };
        let n = list["plugins"].as_array().map_or(0, Vec::len);
        for i in (0..n).rev() {
            let typ = list["plugins"][i]["type"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let c = Self::plugin_conf(&list, i, &v, prev, &att.caps, att.args.as_ref());
            let o = self.exec(&typ, Some("DEL"), &env, c.to_string().as_bytes());
            if !o.ok() {
                return Err((typ, o));
            }
        }
        Ok(())
    }

    /// [`del`](Self::del) that marks the attachment gone on success.
    pub fn del_done(&self, att: &mut Att, ov: Ov, with_prev: bool) -> Result<(), (String, Out)> {
        self.del(att, ov, with_prev)?;
        att.live = false;
        Ok(())
    }

    /// CHECK in list order with the cached result as prevResult (or none).
    pub fn check(&self, att: &Att, ov: Ov, with_prev: bool) -> Result<Vec<Out>, (String, Out)> {
        let list = att.conflist().clone();
        let v = self.version_of(&list);
        let env = self.env_for(att, ov);
        let prev = if with_prev { att.result.as_ref() } else { None };
        let mut outs = Vec::new();
        for i in 0..list["plugins"].as_array().map_or(0, Vec::len) {
            let typ = list["plugins"][i]["type"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let c = Self::plugin_conf(&list, i, &v, prev, &att.caps, att.args.as_ref());
            let o = self.exec(&typ, Some("CHECK"), &env, c.to_string().as_bytes());
            if !o.ok() {
                return Err((typ, o));
            }
            outs.push(o);
        }
        Ok(outs)
    }

    /// STATUS or GC to every plugin of the list (GC continues past errors),
    /// each config extended with `extra`; returns every plugin's output.
    pub fn verb_all(
        &self,
        verb: &str,
        extra: &Map<String, Value>,
        cni_path: Option<&str>,
    ) -> Vec<(String, Out)> {
        let v = self.version.clone();
        let env = vec![(
            "CNI_PATH".to_string(),
            cni_path.unwrap_or(&self.cni_path).to_string(),
        )];
        let mut outs = Vec::new();
        for i in 0..self.plugins().len() {
            let typ = self.plugins()[i]["type"].as_str().unwrap_or("").to_string();
            let mut c = Self::plugin_conf(&self.conf, i, &v, None, &Map::new(), None);
            for (k, x) in extra {
                c[k] = x.clone();
            }
            let o = self.exec(&typ, Some(verb), &env, c.to_string().as_bytes());
            let stop = verb == "STATUS" && !o.ok();
            outs.push((typ, o));
            if stop {
                break;
            }
        }
        outs
    }

    /// The interface plugin's config alone (name + cniVersion injected).
    pub fn single_conf(&self, version: Option<&str>) -> Value {
        let mut c = Self::plugin_conf(
            &self.conf,
            self.main,
            &self.version,
            None,
            &Map::new(),
            None,
        );
        match version {
            Some(v) => c["cniVersion"] = json!(v),
            None => {
                if let Some(o) = c.as_object_mut() {
                    o.remove("cniVersion");
                }
            }
        }
        c
    }

    /// Runs the interface plugin alone for `att` with a raw stdin.
    pub fn exec_main(&self, att: &Att, command: Option<&str>, ov: Ov, stdin: &[u8]) -> Out {
        let env = self.env_for(att, ov);
        self.exec(&self.main_type(), command, &env, stdin)
    }

    /// A copy of the conflist whose interface plugin's IPAM uses `ranges`
    /// (legacy single-range keys removed) and data dir `data_dir`.
    pub fn conf_with_ranges(&self, ranges: Value, data_dir: &Path) -> Result<Value> {
        let mut c = self.conf.clone();
        let ipam = c["plugins"][self.main]
            .get_mut("ipam")
            .and_then(Value::as_object_mut)
            .context("no ipam section")?;
        for k in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
            ipam.remove(k);
        }
        ipam.insert("ranges".into(), ranges);
        ipam.insert("dataDir".into(), json!(data_dir));
        Ok(c)
    }

    /// The interface plugin's IPAM ranges as (subnet, rangeStart, rangeEnd,
    /// gateway) strings, legacy form included.
    pub fn ranges(&self) -> Vec<[Option<String>; 4]> {
        let Some(ipam) = self.main_plugin().get("ipam") else {
            return vec![];
        };
        let get = |r: &Value| -> [Option<String>; 4] {
            ["subnet", "rangeStart", "rangeEnd", "gateway"]
                .map(|k| r.get(k).and_then(Value::as_str).map(String::from))
        };
        let mut out = Vec::new();
        if let Some(sets) = ipam.get("ranges").and_then(Value::as_array) {
            for set in sets {
                for r in set.as_array().into_iter().flatten() {
                    out.push(get(r));
                }
            }
        } else if ipam.get("subnet").is_some() {
            out.push(get(ipam));
        }
        out
    }
}

/// libcni's choice: the highest of cniVersion ∪ cniVersions that is ≤ 1.1.0
/// (missing: 0.1.0).
pub fn conflist_version(conf: &Value) -> String {
    let mut vs: Vec<String> = Vec::new();
    if let Some(v) = conf.get("cniVersion").and_then(Value::as_str) {
        vs.push(v.into());
    }
    for v in conf
        .get("cniVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = v.as_str() {
            vs.push(s.into());
        }
    }
    vs.into_iter()
        .filter(|v| vkey(v) <= vkey("1.1.0"))
        .max_by_key(|v| vkey(v))
        .unwrap_or_else(|| "0.1.0".into())
}

/// Loads a conflist file (a single-plugin .conf is wrapped as a list).
pub fn load_conflist(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if v.get("plugins").is_none() {
        if v.get("type").is_none() {
            bail!("{}: neither `plugins` nor `type`", path.display());
        }
        let mut p = v.clone();
        let po = p.as_object_mut().unwrap();
        po.remove("name");
        po.remove("cniVersion");
        v = json!({"cniVersion": v.get("cniVersion").cloned().unwrap_or(json!("0.1.0")),
                   "name": v.get("name").cloned().unwrap_or(json!("")), "plugins": [p]});
    }
    if !v.get("name").is_some_and(Value::is_string) {
        bail!("{}: no network `name`", path.display());
    }
    Ok(v)
}
