//! Running `nft`.
//!
//! The nftables crate's helper leaves nft's stderr attached to ours and so
//! loses the reason for a failure; this runner captures it for the error
//! message (a CNI plugin must report what went wrong in its JSON error) and
//! finds nft outside $PATH too, since container runtimes often exec plugins
//! with a minimal environment.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nftables::batch::Batch;

use crate::{Error, Netns, Result};

/// Environment variable naming the nft binary to use instead of the one
/// found on $PATH or in the sbin directories.
pub const NFT_ENV: &str = "BERTH_NFT";

fn nft_binary() -> &'static PathBuf {
    static NFT: OnceLock<PathBuf> = OnceLock::new();
    NFT.get_or_init(|| {
        if let Some(p) = std::env::var_os(NFT_ENV) {
            return PathBuf::from(p);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("nft"))
    })
}

/// True if an nft binary was found (for CNI STATUS).
pub fn nft_available() -> bool {
    nft_binary().is_file()
}

/// Runs `nft ARGS` (feeding `input` on stdin), in `ns` if given, and
/// returns its stdout. A process inherits the namespaces of the thread
/// that spawns it, so running the spawn inside [`Netns::run`] is enough.
pub(crate) fn run(
    ns: Option<&Netns>,
    args: &[&str],
    input: Option<&str>,
    op: &str,
) -> Result<String> {
    match ns {
        Some(ns) => ns.run(|| run_here(args, input, op))?,
        None => run_here(args, input, op),
    }
}

fn run_here(args: &[&str], input: Option<&str>, op: &str) -> Result<String> {
    let nft = nft_binary();
    let mut cmd = Command::new(nft);
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe. nft dies with the
    // process that runs it: a plugin killed mid-ADD (a runtime's timeout)
    // must not leave an nft behind that commits its batch after the
    // runtime's DEL has looked at the ruleset and released berth's lock,
    // which would put back rules no record describes. (The kernel
    // serialises nftables commits, so a batch already sent is committed
    // before any later listing sees the ruleset.)
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before the line above.
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{op}: run {}", nft.display()), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error (EPIPE if nft died early) is reported through nft's
        // exit status and stderr below, which say more.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("{op}: wait for nft"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr.trim();
        return Err(Error::Nft {
            op: op.to_string(),
            msg: if msg.is_empty() {
                format!("nft failed ({})", out.status)
            } else {
                msg.to_string()
            },
        });
    }
    String::from_utf8(out.stdout).map_err(|e| Error::Nft {
        op: op.to_string(),
        msg: format!("nft printed invalid UTF-8: {e}"),
    })
}

/// Applies `batch` as one transaction (`nft -j -f -`), in `ns` if given.
pub fn run_batch(ns: Option<&Netns>, batch: Batch<'_>, op: &str) -> Result<()> {
    let json = serde_json::to_string(&batch.to_nftables()).map_err(|e| Error::Nft {
        op: op.to_string(),
        msg: format!("serialize ruleset: {e}"),
    })?;
    run(ns, &["-j", "-f", "-"], Some(&json), op).map(|_| ())
}
