//! `berth status`, `berth ls containers`, `berth inspect` and `berth
//! ports`: what berth holds on this node, from its own records and the
//! kernel ([`berth_network::inventory`]), as a table for people or JSON
//! for scripts (`-o json`; the schema is in cli/README.md). They only
//! read: no record is written and no lock taken. Records that cannot be
//! read are named on stderr with their paths, and the command then exits
//! non-zero after showing the rest.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_network::docker_records;
use berth_network::inventory::{self, Attachment, Inventory, Network, Sources};
use serde::Serialize;
use tabwriter::TabWriter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document (see cli/README.md for its schema).
    Json,
}

/// Where the records are: every command's that reads them.
#[derive(clap::Args, Debug, Clone)]
pub struct Records {
    /// A berth-ipam data dir (a config's `dataDir`) to read address stores
    /// from; repeatable. The run dirs follow BERTH_RUN_DIR, as the plugins
    /// do.
    #[arg(long = "data-dir", value_name = "dir", default_value = inventory::DEFAULT_DATA_DIR)]
    pub data_dirs: Vec<PathBuf>,
    /// berthd's state dir (its config's `state`), for the engine's
    /// networks and endpoints.
    #[arg(long = "engine-state", value_name = "dir", default_value = docker_records::DEFAULT_STATE_DIR)]
    pub engine_state: PathBuf,
}

impl Records {
    pub(crate) fn sources(&self) -> Sources {
        Sources {
            data_dirs: self.data_dirs.clone(),
            engine_state: Some(self.engine_state.clone()),
        }
    }
}

/// Where the records are and how to show them: every read command's.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// The output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub records: Records,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only this network.
    #[arg(long, value_name = "name")]
    pub network: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(subcommand)]
    pub what: LsWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum LsWhat {
    /// Every container attached to a berth network, one line per
    /// attachment.
    Containers(Common),
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A container ID, or a prefix of exactly one.
    pub container: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct PortsArgs {
    #[command(flatten)]
    pub common: Common,
}

pub(crate) fn gather(c: &Common) -> Inventory {
    inventory::gather(&c.records.sources())
}

/// Prints the inventory's problems; an error if there are any (after the
/// output, so that what could be read is still shown).
pub(crate) fn problems(inv: &Inventory) -> anyhow::Result<()> {
    for p in &inv.problems {
        eprintln!("berth: {p}");
    }
    if !inv.problems.is_empty() {
        bail!("{} record(s) could not be read", inv.problems.len());
    }
    Ok(())
}

pub(crate) fn json(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).context("writing JSON")?;
    writeln!(out).context("writing JSON")?;
    Ok(())
}

/// Writes tab-separated `rows` (the first the header) as aligned columns.
pub(crate) fn table(rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut tw = TabWriter::new(std::io::stdout().lock()).padding(2);
    for r in rows {
        writeln!(tw, "{}", r.join("\t")).context("writing the table")?;
    }
    tw.flush().context("writing the table")
}

pub(crate) fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Keeps only network `name` of `inv`, if given; an error if it has none
/// by that name.
pub(crate) fn only_network(inv: &mut Inventory, name: Option<&str>) -> anyhow::Result<()> {
    let Some(name) = name else { return Ok(()) };
    inv.networks.retain(|n| n.name == name);
    if inv.networks.is_empty() {
        problems(inv)?;
        bail!("no berth network {name:?} on this host (berth status lists them)");
    }
    Ok(())
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut inv = gather(&args.common);
    only_network(&mut inv, args.network.as_deref())?;
    match args.common.output {
        Output::Json => json(&inv)?,
        Output::Table => status_table(&inv.networks)?,
    }
    problems(&inv)
}

fn status_table(networks: &[Network]) -> anyhow::Result<()> {
    let mut rows = vec![[
        "NETWORK",
        "KIND",
        "BRIDGE/MASTER",
        "SUBNETS",
        "RANGES (USED/SIZE)",
        "ATTACHMENTS",
        "PORTS",
        "OVERLAY",
        "KERNEL",
    ]
    .map(String::from)
    .to_vec()];
    for n in networks {
        let overlay = match &n.overlay {
            None => "-".to_string(),
            Some(o) => {
                let lease = match (o.ttl_left, o.agent_running) {
                    (_, false) => ", agent gone".to_string(),
                    (Some(left), true) => format!(", lease {left}s left"),
                    (None, true) => String::new(),
                };
                format!("{} {}, {} peer(s){lease}", o.node, o.subnet, o.peers.len())
            }
        };
        let ranges: Vec<String> = n
            .ranges
            .iter()
            .map(|r| {
                let label = r.label.as_deref().unwrap_or("imported");
                match r.size {
                    Some(s) => format!("{label} {}/{s}", r.used),
                    None => format!("{label} {}/?", r.used),
                }
            })
            .collect();
        let kernel = if n.kernel.matches {
            "ok".to_string()
        } else {
            format!("missing: {}", n.kernel.missing.join("; "))
        };
        let kind = match n.docker_network_id {
            Some(_) => format!("{} (berthd)", n.kind.name()),
            None => n.kind.name().to_string(),
        };
        rows.push(vec![
            n.name.clone(),
            kind,
            n.bridge
                .clone()
                .or_else(|| n.master.clone())
                .unwrap_or_else(|| "-".into()),
            list(&n.subnets),
            list(&ranges),
            n.attachments.len().to_string(),
            n.published_ports.to_string(),
            overlay,
            kernel,
        ]);
    }
    table(&rows)
}

fn attachment_rows<'a>(attachments: impl Iterator<Item = &'a Attachment>) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "CONTAINER",
        "IFNAME",
        "NETWORK",
        "HOST VETH",
        "ADDRESSES",
        "PORTS",
        "KERNEL",
        "STATE",
    ]
    .map(String::from)
    .to_vec()];
    for a in attachments {
        let ports: Vec<String> = a.ports.iter().map(port_text).collect();
        rows.push(vec![
            a.container_id.clone(),
            a.ifname.clone(),
            a.network.clone(),
            a.host_veth.clone().unwrap_or_else(|| "-".into()),
            list(&a.addresses),
            list(&ports),
            if a.in_kernel { "ok" } else { "veth gone" }.into(),
            a.state.name().to_string(),
        ]);
    }
    rows
}

fn limits_text(l: &berth_network::bandwidth::Limits) -> String {
    let one = |what: &str, a: &Option<berth_network::bandwidth::Applied>| match a {
        None => format!("{what} none"),
        Some(a) => format!(
            "{what} {} bit/s{}{}",
            a.rate,
            a.burst
                .map(|b| format!(" burst {b} bits"))
                .unwrap_or_default(),
            if a.by_subnet { " (by subnet)" } else { "" }
        ),
    };
    format!(
        "{}, {}",
        one("ingress", &l.ingress),
        one("egress", &l.egress)
    )
}

pub(crate) fn port_text(p: &inventory::Port) -> String {
    let host = match p.host_ip {
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", p.host_port),
        Some(ip) => format!("{ip}:{}", p.host_port),
        None => p.host_port.to_string(),
    };
    format!("{host}->{}/{}", p.container_port, p.protocol)
}

#[derive(Serialize)]
struct Containers<'a> {
    containers: Vec<&'a Attachment>,
}

pub fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let LsWhat::Containers(common) = &args.what;
    let inv = gather(common);
    match common.output {
        Output::Json => json(&Containers {
            containers: inv.attachments().collect(),
        })?,
        Output::Table => table(&attachment_rows(inv.attachments()))?,
    }
    problems(&inv)
}

#[derive(Serialize)]
struct Inspected<'a> {
    #[serde(rename = "containerID")]
    container_id: &'a str,
    attachments: Vec<&'a Attachment>,
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let inv = gather(&args.common);
    let mut ids: Vec<&str> = inv
        .attachments()
        .map(|a| a.container_id.as_str())
        .filter(|id| id.starts_with(&args.container))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // An exact ID wins over longer IDs it prefixes.
    if ids.contains(&args.container.as_str()) {
        ids = vec![args.container.as_str()];
    }
    let id = match ids.as_slice() {
        [id] => *id,
        [] => {
            problems(&inv)?;
            bail!(
                "no container {:?} in berth's records (berth ls containers lists them)",
                args.container
            )
        }
        many => bail!(
            "{:?} is the start of {} containers' IDs: {}",
            args.container,
            many.len(),
            many.join(", ")
        ),
    };
    let mut attachments: Vec<Attachment> = inv
        .attachments()
        .filter(|a| a.container_id == id)
        .cloned()
        .collect();
    inventory::read_limits(&mut attachments)
        .with_context(|| format!("reading the rate limits of {id}"))?;
    match args.common.output {
        Output::Json => json(&Inspected {
            container_id: id,
            attachments: attachments.iter().collect(),
        })?,
        Output::Table => {
            table(&attachment_rows(attachments.iter()))?;
            for a in &attachments {
                if let Some(l) = a.limits.as_ref().filter(|l| !l.is_empty()) {
                    println!("{} {}: limits {}", a.network, a.ifname, limits_text(l));
                }
            }
        }
    }
    problems(&inv)
}

/// One published host port and who holds it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeldPort<'a> {
    network: &'a str,
    #[serde(rename = "containerID")]
    container_id: &'a str,
    ifname: &'a str,
    #[serde(flatten)]
    port: &'a inventory::Port,
}

#[derive(Serialize)]
struct Ports<'a> {
    ports: Vec<HeldPort<'a>>,
}

pub fn ports(args: &PortsArgs) -> anyhow::Result<()> {
    let inv = gather(&args.common);
    let mut held: Vec<HeldPort> = inv
        .attachments()
        .flat_map(|a| {
            a.ports.iter().map(move |p| HeldPort {
                network: &a.network,
                container_id: &a.container_id,
                ifname: &a.ifname,
                port: p,
            })
        })
        .collect();
    held.sort_by(|a, b| {
        (a.port.host_port, &a.port.protocol, a.port.host_ip).cmp(&(
            b.port.host_port,
            &b.port.protocol,
            b.port.host_ip,
        ))
    });
    match args.common.output {
        Output::Json => json(&Ports { ports: held })?,
        Output::Table => {
            let mut rows = vec![[
                "HOST PORT",
                "PROTOCOL",
                "HOST IP",
                "CONTAINER",
                "IFNAME",
                "NETWORK",
                "TO",
            ]
            .map(String::from)
            .to_vec()];
            for h in &held {
                rows.push(vec![
                    h.port.host_port.to_string(),
                    h.port.protocol.clone(),
                    h.port
                        .host_ip
                        .map_or_else(|| "*".to_string(), |ip| ip.to_string()),
                    h.container_id.to_string(),
                    h.ifname.to_string(),
                    h.network.to_string(),
                    format!("{}:{}", h.port.container_ip, h.port.container_port),
                ]);
            }
            table(&rows)?;
        }
    }
    problems(&inv)
}
