//! `berth volumes`: berthd's volumes as their records say, with kind, size
//! limit, bytes used and mount count. It reads the records without the
//! volume root's lock (berthd holds that while it serves), and writes
//! nothing.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use crate::status::{self, Output};

#[derive(clap::Args, Debug)]
pub struct VolumesArgs {
    /// The output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// berthd's volume root (its `--root`, or `root` in its config).
    #[arg(long, value_name = "dir", default_value = ::volumes::DEFAULT_ROOT)]
    pub root: PathBuf,
}

/// One volume in `berth volumes -o json` (cli/README.md).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    kind: String,
    size_limit: Option<u64>,
    used_bytes: u64,
    mount_count: u32,
    mountpoint: PathBuf,
    created_at: String,
}

#[derive(Serialize)]
struct Report {
    root: PathBuf,
    volumes: Vec<Volume>,
    problems: Vec<String>,
}

fn survey(root: &Path) -> Report {
    let mut r = Report {
        root: root.to_path_buf(),
        volumes: Vec::new(),
        problems: Vec::new(),
    };
    match ::volumes::survey(root) {
        Ok(all) => {
            for (name, info) in all {
                match info {
                    Ok(i) => r.volumes.push(Volume {
                        name: i.name,
                        kind: i.kind,
                        size_limit: i.size_limit,
                        used_bytes: i.used_bytes,
                        mount_count: i.mount_count,
                        mountpoint: i.mountpoint,
                        created_at: i.created_at,
                    }),
                    Err(e) => r.problems.push(format!("volume {name:?}: {e}")),
                }
            }
        }
        Err(e) => r.problems.push(e.to_string()),
    }
    r
}

/// Binary units, as Docker prints sizes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn run(args: &VolumesArgs) -> anyhow::Result<()> {
    let r = survey(&args.root);
    match args.output {
        Output::Json => status::json(&r)?,
        Output::Table => {
            let mut rows = vec![[
                "VOLUME",
                "KIND",
                "SIZE LIMIT",
                "USED",
                "MOUNTS",
                "MOUNTPOINT",
            ]
            .map(String::from)
            .to_vec()];
            for v in &r.volumes {
                rows.push(vec![
                    v.name.clone(),
                    v.kind.clone(),
                    v.size_limit.map_or_else(|| "-".into(), bytes),
                    bytes(v.used_bytes),
                    v.mount_count.to_string(),
                    v.mountpoint.display().to_string(),
                ]);
            }
            status::table(&rows)?;
        }
    }
    for p in &r.problems {
        eprintln!("berth: {p}");
    }
    if !r.problems.is_empty() {
        bail!("{} volume record(s) could not be read", r.problems.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_docker_prints_them() {
        assert_eq!(super::bytes(512), "512B");
        assert_eq!(super::bytes(8 << 20), "8.0MiB");
        assert_eq!(super::bytes(1536), "1.5KiB");
    }
}
