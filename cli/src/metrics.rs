//! `berth metrics`: the node's metrics (berth_metrics) once, in
//! Prometheus' text format, for node_exporter's textfile collector: on
//! stdout, or replacing a file atomically (`--textfile`), so the
//! collector never reads half of one. Records that cannot be read are
//! logged and counted in `berth_records_unreadable`; the rest is still
//! reported.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::status::Records;

/// Where the node's metrics are read from (`berth metrics`, `berth
/// watch`).
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub records: Records,
    /// berthd's volume root (its `--root`, or `root` in its config).
    #[arg(long = "volumes-root", value_name = "dir", default_value = ::volumes::DEFAULT_ROOT)]
    pub volumes_root: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Write to this file (replaced atomically: a `.prom` file in the
    /// textfile collector's directory) instead of stdout.
    #[arg(long, value_name = "file")]
    pub textfile: Option<PathBuf>,
}

impl NodeArgs {
    pub(crate) fn sources(&self) -> berth_metrics::NodeSources {
        berth_metrics::NodeSources {
            inventory: self.records.sources(),
            volumes_root: Some(self.volumes_root.clone()),
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cni::skel::init_daemon_logging();
    let text = berth_metrics::render(&args.node.sources(), None)?;
    let Some(path) = &args.textfile else {
        print!("{text}");
        return Ok(());
    };
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => anyhow::bail!("--textfile {}: not a file path", path.display()),
    };
    crate::atomic::replace(dir, name, &mut text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))
}
