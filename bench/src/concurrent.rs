//! `concurrent`: K ADDs at once on one berth network (no address twice),
//! then K DELs at once.

use std::collections::HashMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::args::Args;
use crate::compare::Network;
use crate::exec::{exec_cni, with_prev_result, Exec, Impl};
use crate::report::Concurrent;
use crate::stats::{median, ms};

pub(crate) fn concurrent(args: &Args, taken: &mut Vec<u8>) -> Result<Concurrent> {
    let k = args.concurrency;
    let imp = Impl::berth(&args.berth_dir);
    let net = Network::new(&imp, &args.cni_version, taken)?;
    let nss = net.make_netns(k)?;

    // Run the bridge plugin once per container, all released at once.
    let run_all = |command: &str, confs: &[Value]| -> (Duration, Vec<Result<Exec>>) {
        let barrier = Barrier::new(k);
        let start = Instant::now();
        let out = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let (barrier, net, nss) = (&barrier, &net, &nss);
                    let conf = &confs[i];
                    scope.spawn(move || {
                        barrier.wait();
                        exec_cni(&net.imp, command, &net.cid(i), &nss[i].path, conf)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        (start.elapsed(), out)
    };

    eprintln!("concurrent: {k} ADDs at once on one berth network");
    let add_confs = vec![net.conf.clone(); k];
    let (add_wall, adds) = run_all("ADD", &add_confs);
    let mut failures = Vec::new();
    let mut add_ms = Vec::new();
    let mut results = Vec::new();
    let mut owners: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in adds.iter().enumerate() {
        match r {
            Ok(x) if x.ok => {
                add_ms.push(ms(x.elapsed));
                let v: Value = serde_json::from_str(&x.stdout).unwrap_or(Value::Null);
                for ip in v["ips"].as_array().into_iter().flatten() {
                    if let Some(a) = ip["address"].as_str() {
                        let addr = a.split('/').next().unwrap_or(a).to_string();
                        owners.entry(addr).or_default().push(i);
                    }
                }
                results.push(v);
            }
            Ok(x) => {
                failures.push(format!("ADD #{i}: {}", x.describe()));
                results.push(Value::Null);
            }
            Err(e) => {
                failures.push(format!("ADD #{i}: {e:#}"));
                results.push(Value::Null);
            }
        }
    }
    let mut duplicates: Vec<String> = owners
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(a, v)| format!("{a} given to containers {v:?}"))
        .collect();
    duplicates.sort();
    let addresses = owners.len();

    eprintln!("concurrent: {k} DELs at once");
    let del_confs: Vec<Value> = results
        .iter()
        .map(|r| {
            if r.is_null() {
                net.conf.clone()
            } else {
                with_prev_result(&net.conf, r)
            }
        })
        .collect();
    let (del_wall, dels) = run_all("DEL", &del_confs);
    let mut del_ms = Vec::new();
    let mut del_failures = Vec::new();
    for (i, r) in dels.iter().enumerate() {
        match r {
            Ok(x) if x.ok => del_ms.push(ms(x.elapsed)),
            Ok(x) => del_failures.push(format!("DEL #{i}: {}", x.describe())),
            Err(e) => del_failures.push(format!("DEL #{i}: {e:#}")),
        }
    }
    drop(nss);
    drop(net);

    let max = |v: &[f64]| {
        v.iter()
            .cloned()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let ok = failures.is_empty() && duplicates.is_empty() && del_failures.is_empty();
    Ok(Concurrent {
        containers: k,
        ok,
        add_succeeded: add_ms.len(),
        add_failures: failures,
        distinct_addresses: addresses,
        duplicate_addresses: duplicates,
        add_wall_ms: ms(add_wall),
        add_median_ms: median(&add_ms),
        add_max_ms: max(&add_ms),
        del_succeeded: del_ms.len(),
        del_failures,
        del_wall_ms: ms(del_wall),
        del_median_ms: median(&del_ms),
        del_max_ms: max(&del_ms),
    })
}
