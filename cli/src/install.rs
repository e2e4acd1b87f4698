//! `berth install`: put the plugins and a conflist on a node, the way a
//! Kubernetes CNI DaemonSet's init container does.
//!
//! Order matters to runtimes: containerd and CRI-O report the network
//! "ready" as soon as a conf file appears in the conf dir, so
//!
//! 1. everything is checked first (every source plugin present, the
//!    conflist valid and naming only plugins that will be there) and
//!    nothing is written if anything is wrong;
//! 2. each plugin is replaced atomically (see [`crate::atomic`]), identical
//!    ones (same bytes, same mode) left untouched, and the bin dir fsynced;
//! 3. the conflist goes last, the same way, then the conf dir is fsynced.
//!
//! Running it again is an upgrade: changed files are swapped in by rename,
//! so a plugin executing at that moment keeps running its old inode.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::atomic;

/// The plugin binaries `berth install` copies, all from one source dir.
pub const PLUGINS: [&str; 7] = [
    "berth-bridge",
    "berth-host",
    "berth-ipam",
    "berth-portmap",
    "berth-bandwidth",
    "berth-overlay",
    "loopback",
];

/// Mode of an installed plugin.
const PLUGIN_MODE: u32 = 0o755;
/// Mode of an installed conflist.
const CONFLIST_MODE: u32 = 0o644;
/// Mode of the etcd client files: only root reads a key.
const ETCD_FILE_MODE: u32 = 0o600;
/// The directory of the conf dir a conflist template goes to (containerd's
/// `conf_template = "/etc/cni/net.d/berth/10-berth.conflist.template"`):
/// runtimes read only the conf dir's own files as networks.
pub const TEMPLATE_SUBDIR: &str = "berth";
/// The directory of the conf dir the etcd client files go to (the
/// conflist names them there: `/etc/cni/net.d/berth-etcd/ca.crt`...).
pub const ETCD_TLS_SUBDIR: &str = "berth-etcd";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the runtime looks for CNI plugins.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the runtime looks for network configurations.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// A conflist to install into the conf dir under its own file name
    /// (which must end in .conflist); without it only the plugins are
    /// installed.
    #[arg(long, value_name = "FILE")]
    pub conflist: Option<PathBuf>,
    /// Where the plugin binaries are taken from [default: the directory
    /// this `berth` binary is in].
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// A conflist template for containerd's `conf_template`, rendered by
    /// containerd with the node's podCIDRs once kubelet hands them over:
    /// installed as `berth/<its name>` in the conf dir (where the runtime
    /// does not read it as a network), instead of a conflist.
    #[arg(long, value_name = "FILE", conflicts_with = "conflist")]
    pub conf_template: Option<PathBuf>,
    /// A directory of etcd client files (a mounted Secret: ca.crt,
    /// tls.crt, tls.key) to copy into the conf dir's `berth-etcd/`
    /// (mode 0600), where the plugins on the host read them, before the
    /// conflist that names them.
    #[arg(long, value_name = "DIR")]
    pub etcd_tls_dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let source_dir = match &args.source_dir {
        Some(d) => d.clone(),
        None => {
            let exe = std::env::current_exe().context("finding the berth binary's directory")?;
            exe.parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        }
    };
    let opts = Options {
        source_dir,
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        conflist: args.conflist.clone(),
        conf_template: args.conf_template.clone(),
        etcd_tls_dir: args.etcd_tls_dir.clone(),
    };
    let report = install(&opts)?;
    for (path, outcome) in &report.files {
        println!("{outcome:<9} {}", path.display());
    }
    for path in &report.stale_removed {
        println!(
            "{:<9} {} (left by an interrupted install)",
            "removed",
            path.display()
        );
    }
    Ok(())
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Options {
    pub source_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conflist: Option<PathBuf>,
    pub conf_template: Option<PathBuf>,
    pub etcd_tls_dir: Option<PathBuf>,
}

/// What happened to one target file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Installed,
    /// It existed with other bytes or another mode and was replaced.
    Upgraded,
    /// It was identical and was not touched.
    Unchanged,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment flags apply.
        f.pad(match self {
            Outcome::Installed => "installed",
            Outcome::Upgraded => "upgraded",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// Every target file, in the order it was handled (conflist last), and
/// the abandoned temporary files cleaned up.
#[derive(Debug, Default)]
pub struct Report {
    pub files: Vec<(PathBuf, Outcome)>,
    pub stale_removed: Vec<PathBuf>,
}

pub fn install(opts: &Options) -> anyhow::Result<Report> {
    // 1. Check everything; write nothing yet.
    let sources = PLUGINS
        .iter()
        .map(|p| {
            let src = opts.source_dir.join(p);
            match fs::metadata(&src) {
                Ok(m) if m.is_file() => Ok((*p, src)),
                Ok(_) => bail!("source plugin {} is not a regular file", src.display()),
                Err(e) => Err(anyhow!(
                    "source plugin {p} not found in {} ({e}); the plugins ship beside the berth binary, \
                     or pass --source-dir",
                    opts.source_dir.display()
                )),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let conflist = match &opts.conflist {
        Some(path) => {
            let name = conflist_name(path)?;
            let bytes =
                fs::read(path).with_context(|| format!("reading conflist {}", path.display()))?;
            let will_exist =
                |ty: &str| PLUGINS.contains(&ty) || is_executable_file(&opts.bin_dir.join(ty));
            validate_conflist(&bytes, &opts.bin_dir, &will_exist)
                .with_context(|| format!("invalid conflist {}", path.display()))?;
            Some((path.as_path(), name))
        }
        None => None,
    };
    let template = match &opts.conf_template {
        Some(path) => {
            let name = path
                .file_name()
                .ok_or_else(|| anyhow!("conf template {}: not a file name", path.display()))?;
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading conf template {}", path.display()))?;
            if !text.contains("PodCIDR") {
                bail!(
                    "conf template {}: it uses neither {{{{.PodCIDR}}}} nor {{{{.PodCIDRRanges}}}}, \
                     so every node would get the same network: install it with --conflist instead",
                    path.display()
                );
            }
            Some((path.as_path(), name))
        }
        None => None,
    };
    let etcd_files = match &opts.etcd_tls_dir {
        Some(dir) => secret_files(dir)?,
        None => Vec::new(),
    };

    // 2. The plugins, each atomically; then make the renames durable.
    let mut report = Report::default();
    fs::create_dir_all(&opts.bin_dir)
        .with_context(|| format!("creating {}", opts.bin_dir.display()))?;
    report.stale_removed.extend(
        atomic::remove_stale_temps(&opts.bin_dir)
            .with_context(|| format!("cleaning temporary files in {}", opts.bin_dir.display()))?,
    );
    for (name, src) in &sources {
        let outcome = install_file(src, &opts.bin_dir, OsStr::new(name), PLUGIN_MODE)?;
        report.files.push((opts.bin_dir.join(name), outcome));
    }
    atomic::sync_dir(&opts.bin_dir)
        .with_context(|| format!("syncing {}", opts.bin_dir.display()))?;

    // 3. The etcd client files the conflist names, then the conflist
    // last: its appearance means "network ready".
    if !etcd_files.is_empty() {
        let dir = opts.conf_dir.join(ETCD_TLS_SUBDIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} root's only", dir.display()))?;
        report.stale_removed.extend(
            atomic::remove_stale_temps(&dir)
                .with_context(|| format!("cleaning temporary files in {}", dir.display()))?,
        );
        for (name, src) in &etcd_files {
            let outcome = install_file(src, &dir, name, ETCD_FILE_MODE)?;
            report.files.push((dir.join(name), outcome));
        }
        atomic::sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
    }
    if let Some((src, name)) = template {
        let dir = opts.conf_dir.join(TEMPLATE_SUBDIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let outcome = install_file(src, &dir, name, CONFLIST_MODE)?;
        atomic::sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        report.files.push((dir.join(name), outcome));
    }
    if let Some((src, name)) = conflist {
        fs::create_dir_all(&opts.conf_dir)
            .with_context(|| format!("creating {}", opts.conf_dir.display()))?;
        report.stale_removed.extend(
            atomic::remove_stale_temps(&opts.conf_dir).with_context(|| {
                format!("cleaning temporary files in {}", opts.conf_dir.display())
            })?,
        );
        let outcome = install_file(src, &opts.conf_dir, name, CONFLIST_MODE)?;
        atomic::sync_dir(&opts.conf_dir)
            .with_context(|| format!("syncing {}", opts.conf_dir.display()))?;
        report.files.push((opts.conf_dir.join(name), outcome));
    }
    Ok(report)
}

/// The files of a mounted Secret or ConfigMap: every entry whose name does
/// not start with a dot (the kubelet's `..data` and its timestamped
/// directory), followed through the symlinks the kubelet makes. An empty
/// or unreadable directory is an error naming it.
fn secret_files(dir: &Path) -> anyhow::Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let entries = fs::read_dir(dir).with_context(|| format!("--etcd-tls-dir {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("--etcd-tls-dir {}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push((name, path)),
            Ok(_) => bail!(
                "--etcd-tls-dir {}: {} is not a file",
                dir.display(),
                path.display()
            ),
            Err(e) => bail!("--etcd-tls-dir {}: {}: {e}", dir.display(), path.display()),
        }
    }
    if files.is_empty() {
        bail!(
            "--etcd-tls-dir {}: no files (the Secret's ca.crt, tls.crt, tls.key)",
            dir.display()
        );
    }
    files.sort();
    Ok(files)
}

/// Copies `src` to `dir/name` with `mode` unless it is already there,
/// byte for byte and with that mode.
fn install_file(src: &Path, dir: &Path, name: &OsStr, mode: u32) -> anyhow::Result<Outcome> {
    let target = dir.join(name);
    let context = || format!("installing {} as {}", src.display(), target.display());
    let existing = match fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(context),
    };
    if let Some(m) = &existing {
        if m.is_file()
            && m.permissions().mode() & 0o7777 == mode
            && atomic::same_content(src, &target).with_context(context)?
        {
            return Ok(Outcome::Unchanged);
        }
    }
    let mut input = File::open(src).with_context(context)?;
    atomic::replace(dir, name, &mut input, mode).with_context(context)?;
    Ok(if existing.is_some() {
        Outcome::Upgraded
    } else {
        Outcome::Installed
    })
}

/// The installed conflist's name: the given file's own, which must end in
/// `.conflist` (libcni reads network lists only from those).
fn conflist_name(path: &Path) -> anyhow::Result<&OsStr> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("conflist {}: not a file name", path.display()))?;
    if !name.to_string_lossy().ends_with(".conflist") || name.len() <= ".conflist".len() {
        bail!(
            "conflist {}: the file name must end in .conflist (runtimes load network lists only from *.conflist), \
             e.g. 10-berth.conflist",
            path.display()
        );
    }
    Ok(name)
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks what a runtime (libcni) needs of a conflist before it runs any
/// plugin: JSON, a `name`, a supported `cniVersion`, a non-empty `plugins`
/// list, and every `type` (also an `ipam.type`) a plugin that `will_exist`
/// in the bin dir. Errors name the field at fault. Keys are exact, as
/// libcni reads them.
pub fn validate_conflist(
    bytes: &[u8],
    bin_dir: &Path,
    will_exist: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(bytes).context("not valid JSON")?;
    let top = v.as_object().ok_or_else(|| anyhow!("not a JSON object"))?;
    match top.get("name") {
        None => bail!("field `name` is missing"),
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(other) => bail!("field `name` must be a non-empty string, not {other}"),
    }
    match top.get("cniVersion") {
        None => bail!("field `cniVersion` is missing"),
        Some(Value::String(s)) if cni::version::SUPPORTED.contains(&s.as_str()) => {}
        Some(Value::String(s)) => bail!(
            "field `cniVersion`: {s:?} is not supported ({})",
            cni::version::supported_list()
        ),
        Some(other) => bail!("field `cniVersion` must be a string, not {other}"),
    }
    let plugins = match top.get("plugins") {
        None => bail!("field `plugins` is missing"),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => bail!("field `plugins` must not be empty"),
        Some(other) => bail!("field `plugins` must be a list, not {other}"),
    };
    let mut seen = BTreeSet::new();
    for (i, p) in plugins.iter().enumerate() {
        let obj = p
            .as_object()
            .ok_or_else(|| anyhow!("field `plugins[{i}]` must be an object, not {p}"))?;
        check_type(
            obj.get("type"),
            &format!("plugins[{i}].type"),
            bin_dir,
            will_exist,
            &mut seen,
        )?;
        if let Some(ipam) = obj.get("ipam") {
            let ipam = ipam.as_object().ok_or_else(|| {
                anyhow!("field `plugins[{i}].ipam` must be an object, not {ipam}")
            })?;
            // An ipam section without a type is the plugin's business
            // (some take none); one with a type names a binary to exec.
            if ipam.contains_key("type") {
                check_type(
                    ipam.get("type"),
                    &format!("plugins[{i}].ipam.type"),
                    bin_dir,
                    will_exist,
                    &mut seen,
                )?;
            }
        }
    }
    Ok(())
}

fn check_type(
    ty: Option<&Value>,
    field: &str,
    bin_dir: &Path,
    will_exist: &dyn Fn(&str) -> bool,
    seen: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let ty = match ty {
        None => bail!("field `{field}` is missing"),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => bail!("field `{field}` must be a non-empty string, not {other}"),
    };
    if ty.contains('/') || ty == "." || ty == ".." {
        bail!("field `{field}`: {ty:?} must be a plugin name, not a path");
    }
    if !seen.contains(ty) && !will_exist(ty) {
        bail!(
            "field `{field}`: plugin {ty:?} is neither installed in {} nor one berth installs ({})",
            bin_dir.display(),
            PLUGINS.join(", ")
        );
    }
    seen.insert(ty.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "berth-cli-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TestDir(p)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const GOOD: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "berth",
        "plugins": [
            {"type": "berth-bridge", "bridge": "berth0", "ipam": {"type": "berth-ipam", "ranges": [[{"subnet": "10.22.0.0/16"}]]}},
            {"type": "berth-portmap", "capabilities": {"portMappings": true}}
        ]
    }"#;

    /// A source dir with fake plugins ("#!/bin/sh" + a version line) and a
    /// conflist; bin and conf dirs that do not exist yet.
    struct Fixture {
        root: TestDir,
        opts: Options,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let root = TestDir::new(tag);
            let src = root.0.join("src");
            fs::create_dir_all(&src).unwrap();
            for p in PLUGINS {
                write_plugin(&src.join(p), &format!("{p} v1"));
            }
            fs::write(root.0.join("10-berth.conflist"), GOOD).unwrap();
            let opts = Options {
                source_dir: src,
                bin_dir: root.0.join("host/opt/cni/bin"),
                conf_dir: root.0.join("host/etc/cni/net.d"),
                conflist: Some(root.0.join("10-berth.conflist")),
                conf_template: None,
                etcd_tls_dir: None,
            };
            Fixture { root, opts }
        }

        fn conflist(&self, text: &str) {
            fs::write(self.opts.conflist.as_ref().unwrap(), text).unwrap();
        }

        fn installed_conflist(&self) -> PathBuf {
            self.opts.conf_dir.join("10-berth.conflist")
        }

        /// Everything under the fake host root: (relative path, inode, mtime).
        fn host_files(&self) -> Vec<(String, u64, i64, i64)> {
            let mut out = Vec::new();
            walk(&self.root.0.join("host"), &self.root.0, &mut out);
            out.sort();
            out
        }
    }

    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, u64, i64, i64)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.push((rel, m.ino(), m.mtime(), m.mtime_nsec()));
            if m.is_dir() {
                walk(&e.path(), root, out);
            }
        }
    }

    fn write_plugin(path: &Path, version: &str) {
        fs::write(path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn no_temps(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(atomic::TMP_MARK),
                    "temporary file left behind: {}/{name}",
                    dir.display()
                );
            }
        }
    }

    fn err_text(r: anyhow::Result<Report>) -> String {
        format!("{:#}", r.expect_err("install should have failed"))
    }

    #[test]
    fn fresh_install_copies_plugins_and_conflist() {
        let f = Fixture::new("fresh");
        let report = install(&f.opts).unwrap();
        assert_eq!(report.files.len(), PLUGINS.len() + 1);
        assert!(
            report.files.iter().all(|(_, o)| *o == Outcome::Installed),
            "{report:?}"
        );
        assert_eq!(
            report.files.last().unwrap().0,
            f.installed_conflist(),
            "conflist goes last"
        );
        for p in PLUGINS {
            let dst = f.opts.bin_dir.join(p);
            assert_eq!(
                fs::read(&dst).unwrap(),
                fs::read(f.opts.source_dir.join(p)).unwrap(),
                "{p}"
            );
            assert_eq!(
                fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
                0o755,
                "{p}"
            );
        }
        assert_eq!(fs::read_to_string(f.installed_conflist()).unwrap(), GOOD);
        assert_eq!(
            fs::metadata(f.installed_conflist())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        no_temps(&f.opts.bin_dir);
        no_temps(&f.opts.conf_dir);
        // Nothing else was created.
        assert_eq!(
            fs::read_dir(&f.opts.bin_dir).unwrap().count(),
            PLUGINS.len()
        );
        assert_eq!(fs::read_dir(&f.opts.conf_dir).unwrap().count(), 1);
    }

    #[test]
    fn rerun_with_identical_files_touches_nothing() {
        let f = Fixture::new("idem");
        install(&f.opts).unwrap();
        let before = f.host_files();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let report = install(&f.opts).unwrap();
        assert!(
            report.files.iter().all(|(_, o)| *o == Outcome::Unchanged),
            "{report:?}"
        );
        assert_eq!(f.host_files(), before, "inodes and mtimes must not change");
    }

    #[test]
    fn upgrade_replaces_changed_files_atomically() {
        let f = Fixture::new("upgrade");
        install(&f.opts).unwrap();
        let bridge = f.opts.bin_dir.join("berth-bridge");
        let old_ino = fs::metadata(&bridge).unwrap().ino();
        let ipam_ino = fs::metadata(f.opts.bin_dir.join("berth-ipam"))
            .unwrap()
            .ino();
        // A process still has the old binary open (as a running plugin has).
        let mut old = File::open(&bridge).unwrap();

        write_plugin(&f.opts.source_dir.join("berth-bridge"), "berth-bridge v2");
        f.conflist(&GOOD.replace("berth0", "berth1"));
        let report = install(&f.opts).unwrap();
        for (path, outcome) in &report.files {
            let expect = if path.ends_with("berth-bridge") || path.ends_with("10-berth.conflist") {
                Outcome::Upgraded
            } else {
                Outcome::Unchanged
            };
            assert_eq!(*outcome, expect, "{}", path.display());
        }
        let new_meta = fs::metadata(&bridge).unwrap();
        assert_ne!(
            new_meta.ino(),
            old_ino,
            "replaced by rename, not rewritten in place"
        );
        assert_eq!(new_meta.permissions().mode() & 0o7777, 0o755);
        assert!(fs::read_to_string(&bridge).unwrap().contains("v2"));
        let mut s = String::new();
        old.read_to_string(&mut s).unwrap();
        assert!(
            s.contains("berth-bridge v1"),
            "the old inode still reads the old content: {s}"
        );
        assert_eq!(
            fs::metadata(f.opts.bin_dir.join("berth-ipam"))
                .unwrap()
                .ino(),
            ipam_ino
        );
        assert!(fs::read_to_string(f.installed_conflist())
            .unwrap()
            .contains("berth1"));
        no_temps(&f.opts.bin_dir);
        no_temps(&f.opts.conf_dir);
    }

    #[test]
    fn wrong_mode_is_an_upgrade() {
        let f = Fixture::new("mode");
        install(&f.opts).unwrap();
        let host = f.opts.bin_dir.join("berth-host");
        fs::set_permissions(&host, fs::Permissions::from_mode(0o600)).unwrap();
        let report = install(&f.opts).unwrap();
        assert!(
            report.files.contains(&(host.clone(), Outcome::Upgraded)),
            "{report:?}"
        );
        assert_eq!(
            fs::metadata(&host).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn bad_conflist_writes_nothing() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "not valid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"loopback"}]}"#,
                "`name` is missing",
            ),
            (
                r#"{"name":"","cniVersion":"1.0.0","plugins":[{"type":"loopback"}]}"#,
                "`name` must be",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"loopback"}]}"#,
                "`cniVersion` is missing",
            ),
            (
                r#"{"name":"n","cniVersion":"9.9.9","plugins":[{"type":"loopback"}]}"#,
                "`cniVersion`: \"9.9.9\"",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0"}"#,
                "`plugins` is missing",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
                "`plugins` must not be empty",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":{"type":"loopback"}}"#,
                "`plugins` must be a list",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"loopback"},{}]}"#,
                "`plugins[1].type` is missing",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"tuning"}]}"#,
                "`plugins[0].type`: plugin \"tuning\"",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../../bin/sh"}]}"#,
                "`plugins[0].type`",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"berth-bridge","ipam":{"type":"host-local"}}]}"#,
                "`plugins[0].ipam.type`: plugin \"host-local\"",
            ),
        ];
        for (text, want) in cases {
            let f = Fixture::new("bad");
            f.conflist(text);
            let msg = err_text(install(&f.opts));
            assert!(
                msg.contains(want),
                "conflist {text}: message {msg:?} lacks {want:?}"
            );
            assert!(
                msg.contains("10-berth.conflist"),
                "the message names the file: {msg}"
            );
            assert!(
                f.host_files().is_empty(),
                "conflist {text}: something was written: {:?}",
                f.host_files()
            );
        }
    }

    #[test]
    fn bad_conflist_leaves_an_existing_install_alone() {
        let f = Fixture::new("bad-upgrade");
        install(&f.opts).unwrap();
        let before = f.host_files();
        write_plugin(&f.opts.source_dir.join("berth-bridge"), "berth-bridge v2");
        f.conflist(r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#);
        err_text(install(&f.opts));
        assert_eq!(f.host_files(), before);
    }

    #[test]
    fn conflist_may_name_plugins_already_in_the_bin_dir() {
        let f = Fixture::new("extra");
        fs::create_dir_all(&f.opts.bin_dir).unwrap();
        let tuning = f.opts.bin_dir.join("tuning");
        write_plugin(&tuning, "tuning");
        f.conflist(r#"{"name":"n","cniVersion":"1.1.0","plugins":[{"type":"berth-bridge"},{"type":"tuning"}]}"#);
        // Present but not executable: not a plugin a runtime can run.
        let msg = err_text(install(&f.opts));
        assert!(msg.contains("`plugins[1].type`"), "{msg}");
        fs::set_permissions(&tuning, fs::Permissions::from_mode(0o755)).unwrap();
        install(&f.opts).unwrap();
        assert!(f.installed_conflist().is_file());
    }

    #[test]
    fn conflist_file_name_must_end_in_conflist() {
        let f = Fixture::new("name");
        let other = f.root.0.join("berth.json");
        fs::write(&other, GOOD).unwrap();
        let opts = Options {
            conflist: Some(other),
            ..f.opts.clone()
        };
        let msg = err_text(install(&opts));
        assert!(msg.contains(".conflist"), "{msg}");
        assert!(f.host_files().is_empty());
    }

    #[test]
    fn missing_source_plugin_writes_nothing() {
        let f = Fixture::new("missing");
        fs::remove_file(f.opts.source_dir.join("loopback")).unwrap();
        let msg = err_text(install(&f.opts));
        assert!(
            msg.contains("loopback") && msg.contains("--source-dir"),
            "{msg}"
        );
        assert!(f.host_files().is_empty(), "{:?}", f.host_files());
    }

    /// A Secret's volume as the kubelet lays it out: the files in a
    /// timestamped directory, `..data` pointing at it, and a symlink per key.
    fn secret_volume(root: &Path, files: &[(&str, &str)]) -> PathBuf {
        let vol = root.join("secret");
        let data = vol.join("..2026_12_07_18_00_00.1");
        fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink("..2026_12_07_18_00_00.1", vol.join("..data")).unwrap();
        for (k, v) in files {
            fs::write(data.join(k), v).unwrap();
            std::os::unix::fs::symlink(format!("..data/{k}"), vol.join(k)).unwrap();
        }
        vol
    }

    #[test]
    fn etcd_client_files_go_before_the_conflist_root_only() {
        let f = Fixture::new("etcd");
        let vol = secret_volume(
            &f.root.0,
            &[("ca.crt", "CA"), ("tls.crt", "CERT"), ("tls.key", "KEY")],
        );
        let opts = Options {
            etcd_tls_dir: Some(vol),
            ..f.opts.clone()
        };
        let report = install(&opts).unwrap();
        let dir = opts.conf_dir.join(ETCD_TLS_SUBDIR);
        for (k, v) in [("ca.crt", "CA"), ("tls.crt", "CERT"), ("tls.key", "KEY")] {
            assert_eq!(fs::read_to_string(dir.join(k)).unwrap(), v);
            let m = fs::symlink_metadata(dir.join(k)).unwrap();
            assert!(m.is_file(), "{k} is a copy, not a link");
            assert_eq!(m.permissions().mode() & 0o7777, ETCD_FILE_MODE);
        }
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // The conflist is the last file written, after the etcd files.
        let names: Vec<String> = report
            .files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.last().unwrap(), "10-berth.conflist");
        assert_eq!(
            names[names.len() - 4..names.len() - 1],
            ["ca.crt", "tls.crt", "tls.key"]
        );
        // Again: nothing changes.
        let again = install(&opts).unwrap();
        assert!(again.files.iter().all(|(_, o)| *o == Outcome::Unchanged));
    }

    #[test]
    fn a_conf_template_goes_where_the_runtime_does_not_read_networks() {
        let f = Fixture::new("template");
        let t = f.root.0.join("10-berth.conflist.template");
        fs::write(
            &t,
            r#"{"podCIDRs": [{{range $i, $r := .PodCIDRRanges}}"{{$r}}"{{end}}]}"#,
        )
        .unwrap();
        let opts = Options {
            conflist: None,
            conf_template: Some(t.clone()),
            ..f.opts.clone()
        };
        install(&opts).unwrap();
        let installed = opts
            .conf_dir
            .join(TEMPLATE_SUBDIR)
            .join("10-berth.conflist.template");
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&t).unwrap());
        assert!(!f.installed_conflist().exists());
        // One without the podCIDR is every node's same network: refused.
        fs::write(&t, "{}").unwrap();
        let f2 = Fixture::new("template-bad");
        let msg = err_text(install(&Options {
            conf_template: Some(t),
            conflist: None,
            ..f2.opts.clone()
        }));
        assert!(msg.contains("PodCIDR"), "{msg}");
        assert!(f2.host_files().is_empty());
    }

    #[test]
    fn an_empty_or_missing_etcd_dir_writes_nothing() {
        let f = Fixture::new("etcd-bad");
        let empty = f.root.0.join("empty");
        fs::create_dir_all(&empty).unwrap();
        for dir in [empty, f.root.0.join("absent")] {
            let opts = Options {
                etcd_tls_dir: Some(dir.clone()),
                ..f.opts.clone()
            };
            let msg = err_text(install(&opts));
            assert!(
                msg.contains("--etcd-tls-dir") && msg.contains(&dir.display().to_string()),
                "{msg}"
            );
            assert!(f.host_files().is_empty(), "{:?}", f.host_files());
        }
    }

    #[test]
    fn without_a_conflist_only_plugins_are_installed() {
        let f = Fixture::new("noconf");
        let opts = Options {
            conflist: None,
            ..f.opts.clone()
        };
        let report = install(&opts).unwrap();
        assert_eq!(report.files.len(), PLUGINS.len());
        assert!(!opts.conf_dir.exists());
    }

    #[test]
    fn failure_midway_leaves_no_temporary_files_and_no_conflist() {
        let f = Fixture::new("midway");
        // A directory where a plugin goes: its rename fails.
        fs::create_dir_all(f.opts.bin_dir.join("berth-portmap")).unwrap();
        let msg = err_text(install(&f.opts));
        assert!(msg.contains("berth-portmap"), "{msg}");
        no_temps(&f.opts.bin_dir);
        assert!(
            !f.opts.conf_dir.exists(),
            "no conflist when a plugin failed"
        );
    }

    #[test]
    fn abandoned_temporary_files_are_removed_and_live_ones_kept() {
        let f = Fixture::new("stale");
        fs::create_dir_all(&f.opts.bin_dir).unwrap();
        let old = std::time::SystemTime::now() - atomic::STALE_AFTER * 2;
        let stale = f.opts.bin_dir.join(".loopback.berth-tmp.4242.0");
        File::create(&stale).unwrap().set_modified(old).unwrap();
        // Being written by another installer: locked.
        let live = f.opts.bin_dir.join(".berth-ipam.berth-tmp.4243.0");
        let file = File::create(&live).unwrap();
        file.set_modified(old).unwrap();
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        // Fresh: maybe created an instant ago and not locked yet.
        let fresh = f.opts.bin_dir.join(".berth-host.berth-tmp.4244.0");
        File::create(&fresh).unwrap();
        // Not ours.
        let other = f.opts.bin_dir.join(".keep");
        File::create(&other).unwrap();

        let report = install(&f.opts).unwrap();
        assert_eq!(report.stale_removed, vec![stale.clone()]);
        assert!(!stale.exists() && live.exists() && fresh.exists() && other.exists());
    }
}
