//! `berth-ipam import --from <dir> --network <name> [--data-dir D]`, run when
//! CNI_COMMAND is not set and there are arguments (parsed with clap; the
//! CNI plugin path never gets here).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The import's usage, part of the plugin's about text (CNI_COMMAND unset,
/// no arguments).
pub const USAGE: &str =
    "usage: berth-ipam import --from <host-local dir> --network <name> [--data-dir <dir>]\n\
  Imports a host-local state directory (e.g. /var/lib/cni/networks/<name>) into\n\
  berth-ipam's store at <data-dir>/<name>/ipam.db (default data dir /var/lib/berth/networks).";

/// berth-ipam's command line when it is not run as a CNI plugin.
#[derive(Debug, Parser)]
#[command(
    name = "berth-ipam",
    bin_name = "berth-ipam",
    about = "berth-ipam: host-local compatible IP address management (CNI 0.1.0-1.1.0)",
    long_about = "berth-ipam: host-local compatible IP address management (CNI 0.1.0-1.1.0).\n\
                  Run by a CNI runtime (CNI_COMMAND set) it is the IPAM plugin; \
                  its subcommands are run by hand.",
    version,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Imports a host-local state directory into berth-ipam's store
    #[command(long_about = "Imports a host-local state directory (e.g. \
        /var/lib/cni/networks/<name>) into berth-ipam's store at \
        <data-dir>/<name>/ipam.db, so running containers keep their addresses. \
        Idempotent; the host-local directory is left untouched.")]
    Import(ImportArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ImportArgs {
    /// The host-local state directory (e.g. /var/lib/cni/networks/<name>)
    #[arg(long, value_name = "host-local dir")]
    pub from: PathBuf,
    /// The network's name (the store is <data-dir>/<name>/ipam.db)
    #[arg(long, value_name = "name", value_parser = network_name)]
    pub network: String,
    /// berth-ipam's data dir (the config's dataDir)
    #[arg(long, value_name = "dir", default_value = store::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// A network name as a config's `name` must be.
fn network_name(s: &str) -> Result<String, String> {
    cni::conf::validate_network_name(s).map_err(|e| {
        // The message names the config's field; clap names the flag.
        match e.msg.strip_prefix("name: ") {
            Some(m) => m.to_string(),
            None => e.msg,
        }
    })?;
    Ok(s.to_string())
}

/// Parse the arguments after `import`.
pub fn parse_import_args(args: &[String]) -> Result<ImportArgs, clap::Error> {
    let argv = ["berth-ipam", "import"]
        .into_iter()
        .map(String::from)
        .chain(args.iter().cloned());
    match Cli::try_parse_from(argv)?.command {
        Command::Import(a) => Ok(a),
    }
}

/// Parses `argv` (with the program name first) and runs the subcommand;
/// returns the process exit status (0 for `--help`, 2 for a usage error).
pub fn run(argv: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> i32 {
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Import(a),
        }) => import(&a),
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    }
}

/// Run `import` with the arguments after it; returns the process exit
/// status.
pub fn run_import(args: &[String]) -> i32 {
    match parse_import_args(args) {
        Ok(a) => import(&a),
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    }
}

fn import(parsed: &ImportArgs) -> i32 {
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
        // The last of a repeated flag wins.
        let a = parse_import_args(&s(&["--network", "m", "--from=/a", "--network", "n"])).unwrap();
        assert_eq!(a.network, "n");
        assert!(parse_import_args(&s(&["--from", "/a"])).is_err());
        assert!(parse_import_args(&s(&["--from"])).is_err());
        assert!(parse_import_args(&s(&["--from", "", "--network", "n"])).is_err());
        assert!(parse_import_args(&s(&["--from", "/a", "--network="])).is_err());
        assert!(parse_import_args(&s(&["--bogus", "x"])).is_err());
        let e = parse_import_args(&s(&["--from", "/a", "--network", "bad name"])).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--network"), "{e}");
        let e = parse_import_args(&s(&["--help"])).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
    }

    #[test]
    fn top_level() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let code = |argv: &[&str]| match Cli::try_parse_from(argv) {
            Ok(_) => 0,
            Err(e) => e.exit_code(),
        };
        assert_eq!(code(&["berth-ipam", "--help"]), 0);
        assert_eq!(code(&["berth-ipam", "bogus"]), 2);
        assert_eq!(code(&["berth-ipam", "import"]), 2);
        assert_eq!(
            code(&["berth-ipam", "import", "--from", "/a", "--network", "n"]),
            0
        );
    }
}
