//! `berth-ipam import --from <dir> --network <name> [--data-dir D]`, run when
//! CNI_COMMAND is not set.

use std::path::PathBuf;

pub const USAGE: &str =
    "usage: berth-ipam import --from <host-local dir> --network <name> [--data-dir <dir>]\n\
  Imports a host-local state directory (e.g. /var/lib/cni/networks/<name>) into\n\
  berth-ipam's store at <data-dir>/<name>/ipam.db (default data dir /var/lib/berth/networks).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportArgs {
    pub from: PathBuf,
    pub network: String,
    pub data_dir: PathBuf,
}

/// Parse the arguments after `import`.
pub fn parse_import_args(args: &[String]) -> Result<ImportArgs, String> {
    let (mut from, mut network, mut data_dir) = (None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "--from" => &mut from,
            "--network" => &mut network,
            "--data-dir" => &mut data_dir,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        *slot = Some(value);
    }
    Ok(ImportArgs {
        from: PathBuf::from(from.ok_or("--from is required")?),
        network: network.ok_or("--network is required")?,
        data_dir: PathBuf::from(data_dir.unwrap_or_else(|| store::DEFAULT_DATA_DIR.to_string())),
    })
}

/// Run `import`; returns the process exit status.
pub fn run_import(args: &[String]) -> i32 {
    let parsed = match parse_import_args(args) {
        Ok(a) => a,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return 0;
            }
            eprintln!("berth-ipam import: {msg}\n{USAGE}");
            return 2;
        }
    };
    if let Err(e) = cni::conf::validate_network_name(&parsed.network) {
        eprintln!("berth-ipam import: --network: {}", e.msg);
        return 2;
    }
    match crate::import::import_host_local(&parsed.from, &parsed.network, &parsed.data_dir) {
        Ok(report) => {
            println!(
                "imported {} allocation(s) ({} already present) and {} cursor(s) from {} into {}",
                report.summary.imported,
                report.summary.already_present,
                report.summary.cursors,
                parsed.from.display(),
                report.db.display()
            );
            for s in &report.skipped {
                eprintln!("skipped {s}");
            }
            0
        }
        Err(e) => {
            eprintln!("berth-ipam import: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags() {
        let a =
            parse_import_args(&s(&["--from", "/a", "--network=n", "--data-dir", "/d"])).unwrap();
        assert_eq!(
            a,
            ImportArgs {
                from: "/a".into(),
                network: "n".into(),
                data_dir: "/d".into()
            }
        );
        let a = parse_import_args(&s(&["--network", "n", "--from=/a"])).unwrap();
        assert_eq!(a.data_dir, PathBuf::from(store::DEFAULT_DATA_DIR));
        assert!(parse_import_args(&s(&["--from", "/a"])).is_err());
        assert!(parse_import_args(&s(&["--from"])).is_err());
        assert!(parse_import_args(&s(&["--bogus", "x"])).is_err());
    }
}
