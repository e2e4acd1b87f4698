//! `berth gc`: releases what belongs to containers that are gone (their
//! netns no longer exists, or their addresses were allocated before the
//! last reboot), for runtimes that never send CNI GC. It shows what it
//! would release and asks first, unless `--yes`; `--dry-run` only shows.
//!
//! An attachment is released only if it is stale in two looks at the
//! records at least [`SETTLE`] apart: an ADD in progress has written its
//! record before its veth exists, and must not be taken for a leftover.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_network::inventory::{Attachment, Inventory, Liveness};
use berth_network::stale;
use serde::Serialize;

use crate::status::{self, Common, Output};

/// How long an attachment must stay stale before it is released.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only this network.
    #[arg(long, value_name = "name")]
    pub network: Option<String>,
    /// Show what would be released, and release nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Release without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `berth gc -o json`: what was found stale, and what was released.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    #[serde(rename = "bootID")]
    boot_id: &'a str,
    stale: Vec<&'a Attachment>,
    /// Attachments no record says the netns of: never released.
    unknown: usize,
    released: Vec<Attachment>,
    errors: Vec<String>,
}

type Key = (String, String, String);

fn key(a: &Attachment) -> Key {
    (a.network.clone(), a.container_id.clone(), a.ifname.clone())
}

fn look(args: &GcArgs) -> anyhow::Result<Inventory> {
    let mut inv = status::gather(&args.common);
    status::only_network(&mut inv, args.network.as_deref())?;
    Ok(inv)
}

pub fn run(args: &GcArgs) -> anyhow::Result<()> {
    let first_look = Instant::now();
    let inv = look(args)?;
    let stale: Vec<&Attachment> = inv.releasable().collect();
    let unknown = inv
        .attachments()
        .filter(|a| a.state == Liveness::Unknown)
        .count();
    if args.common.output == Output::Table {
        show(&stale, unknown)?;
    }
    let mut released = stale::Released::default();
    let release = !stale.is_empty() && !args.dry_run && (args.yes || confirm(stale.len())?);
    if release {
        // The second look: only what is still stale after SETTLE.
        std::thread::sleep(SETTLE.saturating_sub(first_look.elapsed()));
        let again = look(args)?;
        let seen: HashSet<Key> = stale.iter().map(|a| key(a)).collect();
        released = stale::release(&again, |a| seen.contains(&key(a)));
    }
    match args.common.output {
        Output::Json => status::json(&Report {
            boot_id: &inv.boot_id,
            stale: stale.clone(),
            unknown,
            released: released.attachments.clone(),
            errors: released.errors.clone(),
        })?,
        Output::Table if release => {
            println!("released {} attachment(s)", released.attachments.len())
        }
        Output::Table if !stale.is_empty() => println!("nothing released"),
        Output::Table => {}
    }
    for e in &released.errors {
        eprintln!("berth: {e}");
    }
    status::problems(&inv)?;
    if !released.errors.is_empty() {
        bail!(
            "{} of {} stale attachment(s) could not be released",
            stale.len() - released.attachments.len(),
            stale.len()
        );
    }
    Ok(())
}

fn show(stale: &[&Attachment], unknown: usize) -> anyhow::Result<()> {
    if stale.is_empty() {
        println!("nothing is stale");
    } else {
        let mut rows = vec![[
            "CONTAINER",
            "IFNAME",
            "NETWORK",
            "ADDRESSES",
            "PORTS",
            "WHY",
        ]
        .map(String::from)
        .to_vec()];
        for a in stale {
            let ports: Vec<String> = a.ports.iter().map(status::port_text).collect();
            rows.push(vec![
                a.container_id.clone(),
                a.ifname.clone(),
                a.network.clone(),
                status::list(&a.addresses),
                status::list(&ports),
                a.reason.clone(),
            ]);
        }
        status::table(&rows)?;
    }
    if unknown > 0 {
        println!(
            "{unknown} attachment(s) have no record of their netns and are left alone \
             (berth ls containers shows them as unknown)"
        );
    }
    Ok(())
}

/// Asks on the terminal; no answer (end of input) is no.
fn confirm(n: usize) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "release these {n} stale attachment(s)? [y/N] ").context("asking")?;
    err.flush().context("asking")?;
    let stdin = std::io::stdin();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !stdin.is_terminal() {
        // Echo a piped answer, so a log shows what was decided.
        writeln!(err, "{}", answer.trim()).context("asking")?;
    }
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
