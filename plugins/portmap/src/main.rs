//! `berth-portmap`: the CNI plugin, or with `proxy ...` one relay of a
//! published port on ::1 (started by the plugin itself, see `proxy`).
//! Without arguments it is the plugin, and clap is not consulted.

use clap::{Parser, Subcommand};

/// berth-portmap's command line (only parsed when there are arguments).
#[derive(Debug, Parser)]
#[command(
    name = "berth-portmap",
    bin_name = "berth-portmap",
    about = "berth-portmap: published ports CNI plugin (run without arguments by a CNI \
             runtime)",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relays an attachment's published ports on ::1 (the plugin starts it)
    #[command(long_about = "Relays an attachment's published ports on ::1 (the \
        plugin starts it). Prints `ready` on stdout once it listens on every \
        port, or `error: ...` and exits 1. The command line must be exactly \
        `proxy --owner KEY SPEC...`: DEL and GC find the proxies of an \
        attachment by it in /proc/*/cmdline.")]
    Proxy {
        /// The attachment's tag (must come first)
        #[arg(long, value_name = "KEY")]
        owner: String,
        /// One relayed port: tcp|udp:LISTEN=TARGET (e.g. tcp:[::1]:8080=[fd00::2]:80)
        #[arg(value_name = "SPEC", required = true)]
        specs: Vec<String>,
    },
}

fn main() {
    let argv = std::env::args_os();
    if argv.len() > 1 {
        let cmdline: Vec<std::ffi::OsString> = argv.collect();
        match Cli::try_parse_from(&cmdline) {
            // The proxy checks the exact shape `--owner KEY SPEC...` and the
            // specs itself.
            Ok(Cli {
                command: Command::Proxy { .. },
            }) => {
                let rest: Vec<String> = cmdline[2..]
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                berth_portmap::proxy::run(&rest)
            }
            Err(e) if e.exit_code() != 0 && cmdline[1] == "proxy" => {
                // The spawner reads only stdout (stderr is /dev/null): the
                // proxy reports the usage error there and exits 1.
                let _ = e.print();
                berth_portmap::proxy::run(&[])
            }
            Err(e) => e.exit(),
        }
    }
    cni::skel::run(&berth_portmap::PortmapPlugin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth-portmap").chain(args.iter().copied()))
    }

    #[test]
    fn proxy_args() {
        Cli::command().debug_assert();
        let Command::Proxy { owner, specs } = parse(&[
            "proxy",
            "--owner",
            "pm0123456789abcdef",
            "tcp:[::1]:8080=[fd00::2]:80",
            "udp:[::1]:53=[fd00::2]:53",
        ])
        .unwrap()
        .command;
        assert_eq!(owner, "pm0123456789abcdef");
        assert_eq!(
            specs,
            ["tcp:[::1]:8080=[fd00::2]:80", "udp:[::1]:53=[fd00::2]:53"]
        );
        assert!(parse(&["proxy", "--owner", "k"]).is_err());
        assert!(parse(&["proxy", "tcp:[::1]:1=[::2]:1"]).is_err());
        assert!(parse(&["proxy", "--owner"]).is_err());
        assert!(parse(&["bogus"]).is_err());
        assert_eq!(parse(&["proxy", "--help"]).unwrap_err().exit_code(), 0);
    }
}
