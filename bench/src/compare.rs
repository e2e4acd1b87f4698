//! `compare`: per-container ADD and DEL of berth-bridge + berth-ipam
//! against the reference bridge + host-local, for each N, each
//! implementation on a network of its own (see main.rs).

use anyhow::Result;
use serde_json::Value;

use crate::args::Args;
use crate::exec::{exec_cni, plugin_conf, with_prev_result, Impl};
use crate::report::{CompareRow, SeriesReport};
use crate::stats::{median, ms, ratio};
use crate::sys::{self, Netns, TempDir};

/// A network under test: its bridge is deleted and its dataDir removed on
/// drop (after the namespaces, which are dropped first).
pub(crate) struct Network {
    pub(crate) imp: Impl,
    pub(crate) conf: Value,
    pub(crate) _data: TempDir,
    pub(crate) _bridge: sys::LinkGuard,
    pub(crate) name: String,
}

impl Network {
    pub(crate) fn new(imp: &Impl, cni_version: &str, taken: &mut Vec<u8>) -> Result<Self> {
        let data = TempDir::new(&format!("{}-ipam", imp.label))?;
        let (s4, s6) = sys::free_subnets(taken)?;
        let bridge = sys::unique_ifname("bbr");
        let name = format!("bench-{}-{}", imp.label, bridge);
        let conf = plugin_conf(imp, cni_version, &name, &bridge, &s4, &s6, data.path());
        Ok(Self {
            imp: imp.clone(),
            conf,
            _data: data,
            _bridge: sys::LinkGuard(bridge),
            name,
        })
    }

    pub(crate) fn make_netns(&self, n: usize) -> Result<Vec<Netns>> {
        (0..n)
            .map(|i| {
                Netns::new(format!(
                    "bb-{}-{}-{}",
                    std::process::id(),
                    self._bridge.0,
                    i
                ))
            })
            .collect()
    }

    pub(crate) fn cid(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Series {
    pub(crate) add_ms: Vec<f64>,
    pub(crate) del_ms: Vec<f64>,
    pub(crate) error: Option<String>,
}

impl Series {
    pub(crate) fn report(&self, n: usize) -> SeriesReport {
        let (first, last) = if n >= 200 && self.add_ms.len() >= 200 {
            (
                median(&self.add_ms[..100]),
                median(&self.add_ms[self.add_ms.len() - 100..]),
            )
        } else {
            (None, None)
        };
        SeriesReport {
            adds: self.add_ms.len(),
            dels: self.del_ms.len(),
            add_median_ms: median(&self.add_ms),
            del_median_ms: median(&self.del_ms),
            add_first100_median_ms: first,
            add_last100_median_ms: last,
            error: self.error.clone(),
        }
    }
}

/// N containers on a fresh network: N timed ADDs, then N timed DELs.
pub(crate) fn run_series(imp: &Impl, n: usize, args: &Args, taken: &mut Vec<u8>) -> Series {
    let mut s = Series::default();
    let net = match Network::new(imp, &args.cni_version, taken) {
        Ok(net) => net,
        Err(e) => {
            s.error = Some(format!("{e:#}"));
            return s;
        }
    };
    let nss = match net.make_netns(n) {
        Ok(v) => v,
        Err(e) => {
            s.error = Some(format!("creating namespaces: {e:#}"));
            return s;
        }
    };
    let mut results: Vec<Value> = Vec::with_capacity(n);
    for (i, ns) in nss.iter().enumerate() {
        match exec_cni(&net.imp, "ADD", &net.cid(i), &ns.path, &net.conf) {
            Ok(x) if x.ok => {
                s.add_ms.push(ms(x.elapsed));
                results.push(serde_json::from_str(&x.stdout).unwrap_or(Value::Null));
            }
            Ok(x) => {
                s.error = Some(format!("ADD #{i} failed: {}", x.describe()));
                // a runtime DELs a container whose ADD failed
                let _ = exec_cni(&net.imp, "DEL", &net.cid(i), &ns.path, &net.conf);
                break;
            }
            Err(e) => {
                s.error = Some(format!("ADD #{i}: {e:#}"));
                break;
            }
        }
        if (i + 1) % 100 == 0 {
            eprint!("\r  {} N={n}: {} ADDs", imp.label, i + 1);
        }
    }
    for (i, prev) in results.iter().enumerate() {
        let conf = with_prev_result(&net.conf, prev);
        match exec_cni(&net.imp, "DEL", &net.cid(i), &nss[i].path, &conf) {
            Ok(x) if x.ok => s.del_ms.push(ms(x.elapsed)),
            Ok(x) => {
                s.error
                    .get_or_insert_with(|| format!("DEL #{i} failed: {}", x.describe()));
            }
            Err(e) => {
                s.error.get_or_insert_with(|| format!("DEL #{i}: {e:#}"));
            }
        }
    }
    if n >= 100 {
        eprintln!();
    }
    drop(nss); // namespaces first, then the bridge and dataDir with berth-kernel
    drop(net);
    s
}

pub(crate) fn compare(args: &Args, taken: &mut Vec<u8>) -> Vec<CompareRow> {
    let berth = Impl::berth(&args.berth_dir);
    let reference = Impl::reference(&args.ref_dir);
    // Warm-up, not counted: the first network a process sets up pays
    // one-time costs (page cache, firewall tables, sysctls) that would
    // otherwise land on whichever implementation runs first.
    eprintln!("compare: warm-up (1 container per implementation, not counted)");
    let before = args.before_dir.as_deref().map(Impl::before);
    let _ = run_series(&berth, 1, args, taken);
    if let Some(old) = &before {
        let _ = run_series(old, 1, args, taken);
    }
    if !args.no_ref {
        let _ = run_series(&reference, 1, args, taken);
    }
    let mut rows = Vec::new();
    for &n in &args.ns {
        eprintln!("compare: N={n} berth");
        let b = run_series(&berth, n, args, taken);
        let o = before.as_ref().map(|old| {
            eprintln!("compare: N={n} {}", old.display());
            run_series(old, n, args, taken)
        });
        let r = if args.no_ref {
            None
        } else {
            eprintln!("compare: N={n} ref");
            Some(run_series(&reference, n, args, taken))
        };
        let add_ratio = r
            .as_ref()
            .and_then(|r| ratio(median(&r.add_ms), median(&b.add_ms)));
        let del_ratio = r
            .as_ref()
            .and_then(|r| ratio(median(&r.del_ms), median(&b.del_ms)));
        rows.push(CompareRow {
            n,
            add_ratio_before_over_berth: o
                .as_ref()
                .and_then(|o| ratio(median(&o.add_ms), median(&b.add_ms))),
            del_ratio_before_over_berth: o
                .as_ref()
                .and_then(|o| ratio(median(&o.del_ms), median(&b.del_ms))),
            before: o.as_ref().map(|o| o.report(n)),
            berth: b.report(n),
            reference: r.as_ref().map(|r| r.report(n)),
            add_ratio_ref_over_berth: add_ratio,
            del_ratio_ref_over_berth: del_ratio,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_growth_only_from_200() {
        let s = Series {
            add_ms: (0..300).map(f64::from).collect(),
            del_ms: vec![1.0],
            error: None,
        };
        let j = s.report(300);
        assert_eq!(j.add_first100_median_ms, Some(49.5));
        assert_eq!(j.add_last100_median_ms, Some(249.5));
        assert_eq!(j.add_growth(), Some(249.5 / 49.5));
        let j = Series {
            add_ms: vec![1.0; 100],
            ..Default::default()
        }
        .report(100);
        assert_eq!(j.add_first100_median_ms, None);
        assert_eq!(j.add_growth(), None);
    }
}
