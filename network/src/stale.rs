//! Releasing what belongs to attachments whose container is gone
//! (`berth gc`), for runtimes that never send CNI GC: what
//! [`inventory`](crate::inventory) judged stale, released the way the
//! plugins' own DEL and GC release it: the host veth, its spoof check and
//! record, the network's rules once no attachment is left, the published
//! ports, the bandwidth ifb, berth-host's record (a moved device put back
//! on the host as it was), and last the addresses (so an address is
//! handed out again only once nothing else refers to it).

use std::collections::HashSet;

use store::{AllocationStore, Owner, SqliteStore};

use crate::inventory::{Attachment, Inventory, Liveness, NetworkKind};
use crate::{attachment, bandwidth, host_attachment, kernel, ports};

/// What one [`release`] did.
#[derive(Debug, Default)]
pub struct Released {
    /// The attachments released, each fully.
    pub attachments: Vec<Attachment>,
    /// What could not be released, naming the network and the attachment
    /// or record at fault (what was, stays released).
    pub errors: Vec<String>,
}

/// Releases every stale attachment of `inv` that `pick` picks (the
/// caller's `--network`), of the CNI plugins' networks (berthd's endpoints
/// are the engine's to delete). Each network's part is tried whatever an
/// earlier one gave.
pub fn release(inv: &Inventory, pick: impl Fn(&Attachment) -> bool) -> Released {
    let mut out = Released::default();
    for n in inv
        .networks
        .iter()
        .filter(|n| n.docker_network_id.is_none())
    {
        let stale: Vec<&Attachment> = n
            .attachments
            .iter()
            .filter(|a| a.state == Liveness::Stale && pick(a))
            .collect();
        if stale.is_empty() {
            continue;
        }
        let keys: HashSet<(&str, &str)> = stale
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let is_stale = |cid: &str, ifname: &str| keys.contains(&(cid, ifname));
        let mut failed: HashSet<(String, String)> = HashSet::new();
        let mut fail = |what: String, a: Option<&Attachment>, out: &mut Released| {
            out.errors.push(format!("network {:?}: {what}", n.name));
            match a {
                Some(a) => {
                    failed.insert((a.container_id.clone(), a.ifname.clone()));
                }
                None => failed.extend(
                    stale
                        .iter()
                        .map(|a| (a.container_id.clone(), a.ifname.clone())),
                ),
            }
        };

        let veths: Vec<&str> = stale
            .iter()
            .filter_map(|a| a.host_veth.as_deref())
            .collect();
        if !veths.is_empty() {
            if let Err(e) = attachment::remove_by_host_veth(&n.name, &veths) {
                fail(
                    format!("removing host veths and records: {e}"),
                    None,
                    &mut out,
                );
            }
        }
        if stale.iter().any(|a| !a.ports.is_empty()) {
            if let Err(e) = ports::gc(&n.name, |o| !is_stale(&o.container_id, &o.ifname)) {
                fail(format!("unpublishing ports: {e}"), None, &mut out);
            }
        }
        let ifbs = berth_kernel::Handle::new()
            .map_err(kernel)
            .and_then(|mut h| {
                bandwidth::gc(&mut h, &n.name, |o| !is_stale(&o.container_id, &o.ifname))
            });
        if let Err(e) = ifbs {
            fail(format!("removing bandwidth ifbs: {e}"), None, &mut out);
        }
        if matches!(n.kind, NetworkKind::Device | NetworkKind::Macvlan) {
            let host = host_attachment::State::from_env();
            for a in &stale {
                let Some(rec) = host.read(&n.name, &a.container_id, &a.ifname) else {
                    continue;
                };
                if let Err(e) = host_attachment::release_gone(&host, &n.name, &rec) {
                    fail(
                        format!("releasing the {} of {}: {e}", rec.mode, a.container_id),
                        Some(a),
                        &mut out,
                    );
                }
            }
        }
        if let Some(dir) = &n.data_dir {
            match SqliteStore::open_existing(dir, &n.name) {
                Ok(Some(mut st)) => {
                    for a in &stale {
                        if a.addresses.is_empty() {
                            continue;
                        }
                        if let Err(e) = st.release(&Owner::new(&a.container_id, &a.ifname)) {
                            fail(
                                format!("releasing the addresses of {}: {e}", a.container_id),
                                Some(a),
                                &mut out,
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => fail(format!("opening its address store: {e}"), None, &mut out),
            }
        }
        out.attachments.extend(
            stale
                .into_iter()
                .filter(|a| !failed.contains(&(a.container_id.clone(), a.ifname.clone())))
                .cloned(),
        );
    }
    out
}
