//! What berth holds on this node, as metrics: read from the records at
//! each scrape through the same reader `berth status` uses, so the two
//! always agree, and lock-free, so a scrape never holds up a plugin.

use std::path::PathBuf;

use berth_network::inventory::{self, Inventory, Liveness, Sources};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::{Activity, Result};

/// Where the node's records are.
#[derive(Debug, Clone, Default)]
pub struct NodeSources {
    pub inventory: Sources,
    /// berthd's volume root (None: no volume metrics).
    pub volumes_root: Option<PathBuf>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RangeLabels {
    network: String,
    /// The range set's index in the config ("imported": none).
    range_set: String,
    /// Its ranges, as `berth status` labels them.
    range: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    network: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
    kind: String,
}

/// An IPv6 range's size passes 2^63: a float gauge.
type Big = Gauge<f64, AtomicU64>;

/// The node's metrics, and `activity`'s if given, as one exposition. What
/// could not be read counts in `berth_records_unreadable` (and is logged),
/// and the rest is still reported.
pub fn render(sources: &NodeSources, activity: Option<&Activity>) -> Result<String> {
    let mut reg = Registry::default();
    let inv = inventory::gather(&sources.inventory);
    let mut unreadable = inv.problems.len();
    for p in &inv.problems {
        tracing::warn!("metrics: {p}");
    }
    register_networks(&mut reg, &inv);
    if let Some(root) = &sources.volumes_root {
        unreadable += register_volumes(&mut reg, root);
    }
    let problems: Gauge = Gauge::default();
    problems.set(unreadable as i64);
    reg.register(
        "berth_records_unreadable",
        "Records (files, stores, volume records) that could not be read at this scrape",
        problems,
    );
    if let Some(a) = activity {
        a.register(&mut reg);
    }
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?;
    Ok(out)
}

/// The networks' gauges. Every network has an attachments sample for each
/// state, zeros included, so that an alert on stale attachments sees 0
/// rather than nothing.
fn register_networks(reg: &mut Registry, inv: &Inventory) {
    let used = Family::<RangeLabels, Big>::default();
    let capacity = Family::<RangeLabels, Big>::default();
    let attachments = Family::<StateLabels, Gauge>::default();
    let ports = Family::<NetworkLabels, Gauge>::default();
    let missing = Family::<NetworkLabels, Gauge>::default();
    let peers = Family::<NetworkLabels, Gauge>::default();
    let lease_age = Family::<NetworkLabels, Gauge>::default();
    let ttl_left = Family::<NetworkLabels, Gauge>::default();
    let seconds = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    for n in &inv.networks {
        for r in &n.ranges {
            let labels = RangeLabels {
                network: n.name.clone(),
                range_set: r
                    .range_set
                    .map_or_else(|| "imported".to_string(), |i| i.to_string()),
                range: r.label.clone().unwrap_or_default(),
            };
            used.get_or_create(&labels).set(r.used as f64);
            if let Some(size) = r.size {
                capacity.get_or_create(&labels).set(size as f64);
            }
        }
        for state in [Liveness::Live, Liveness::Stale, Liveness::Unknown] {
            let count = n.attachments.iter().filter(|a| a.state == state).count();
            attachments
                .get_or_create(&StateLabels {
                    network: n.name.clone(),
                    state: state.name().to_string(),
                })
                .set(count as i64);
        }
        let labels = NetworkLabels {
            network: n.name.clone(),
        };
        ports.get_or_create(&labels).set(n.published_ports as i64);
        missing
            .get_or_create(&labels)
            .set(n.kernel.missing.len() as i64);
        if let Some(o) = &n.overlay {
            peers.get_or_create(&labels).set(o.peers.len() as i64);
            if let (Some(age), Some(left)) = (o.lease_age, o.ttl_left) {
                lease_age.get_or_create(&labels).set(seconds(age));
                ttl_left.get_or_create(&labels).set(seconds(left));
            }
        }
    }
    reg.register(
        "berth_range_addresses_used",
        "Addresses allocated from a range set of a network",
        used,
    );
    reg.register(
        "berth_range_addresses_capacity",
        "Addresses a range set of a network may hand out (its ranges less gateways and reserved addresses)",
        capacity,
    );
    reg.register(
        "berth_attachments",
        "Attachments (container and interface) of a network, by state: live, stale (its container is gone) or unknown",
        attachments,
    );
    reg.register(
        "berth_published_ports",
        "Host port mappings installed for a network's containers",
        ports,
    );
    reg.register(
        "berth_kernel_objects_missing",
        "Objects a network's records name that the kernel lacks (its bridge, host veths)",
        missing,
    );
    reg.register(
        "berth_overlay_peers",
        "Other nodes of an overlay network, as this node's agent last read them from the store",
        peers,
    );
    reg.register(
        "berth_overlay_lease_age_seconds",
        "Seconds since this node's agent last renewed its subnet lease (etcd store)",
        lease_age,
    );
    reg.register(
        "berth_overlay_lease_ttl_left_seconds",
        "Seconds this node's subnet lease has left as of its last renewal (etcd store)",
        ttl_left,
    );
}

/// berthd's volumes' gauges; the number of records that could not be
/// read.
fn register_volumes(reg: &mut Registry, root: &std::path::Path) -> usize {
    let count = Family::<KindLabels, Gauge>::default();
    let used = Family::<VolumeLabels, Gauge>::default();
    let limit = Family::<VolumeLabels, Gauge>::default();
    let mounts = Family::<VolumeLabels, Gauge>::default();
    let mut unreadable = 0;
    let survey = match volumes::survey(root) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("metrics: volume root {}: {e}", root.display());
            unreadable += 1;
            Vec::new()
        }
    };
    for (name, info) in survey {
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("metrics: volume {name}: {e}");
                unreadable += 1;
                continue;
            }
        };
        count
            .get_or_create(&KindLabels {
                kind: info.kind.clone(),
            })
            .inc();
        let labels = VolumeLabels {
            volume: name,
            kind: info.kind.clone(),
        };
        used.get_or_create(&labels)
            .set(i64::try_from(info.used_bytes).unwrap_or(i64::MAX));
        if let Some(l) = info.size_limit {
            limit
                .get_or_create(&labels)
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
        mounts
            .get_or_create(&labels)
            .set(i64::from(info.mount_count));
    }
    reg.register("berth_volumes", "berthd's volumes, by kind", count);
    reg.register(
        "berth_volume_used_bytes",
        "Bytes a volume holds (its filesystem's, its image's or its files')",
        used,
    );
    reg.register(
        "berth_volume_size_limit_bytes",
        "A size-limited or tmpfs volume's limit",
        limit,
    );
    reg.register(
        "berth_volume_mounts",
        "Containers that have a volume mounted now",
        mounts,
    );
    unreadable
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_network::inventory::{Attachment, KernelMatch, Network, NetworkKind, RangeUse};

    fn encode(inv: &Inventory) -> String {
        let mut reg = Registry::default();
        register_networks(&mut reg, inv);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn ranges_attachments_and_ports_per_network() {
        let attachment = |cid: &str, state| Attachment {
            network: "pods".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_veth: None,
            host_device: None,
            addresses: Vec::new(),
            ports: Vec::new(),
            in_kernel: true,
            netns: None,
            boot_id: None,
            state,
            reason: String::new(),
            limits: None,
        };
        let inv = Inventory {
            boot_id: "b".into(),
            networks: vec![Network {
                name: "pods".into(),
                kind: NetworkKind::Bridge,
                docker_network_id: None,
                bridge: Some("berth0".into()),
                master: None,
                subnets: Vec::new(),
                data_dir: None,
                ranges: vec![
                    RangeUse {
                        range_set: Some(0),
                        label: Some("10.88.0.0/16".into()),
                        used: 2,
                        size: Some(65533),
                        free: Some(65531),
                    },
                    RangeUse {
                        range_set: Some(1),
                        label: Some("fd00::/64".into()),
                        used: 1,
                        size: Some(1 << 64),
                        free: None,
                    },
                    RangeUse {
                        range_set: None,
                        label: None,
                        used: 3,
                        size: None,
                        free: None,
                    },
                ],
                attachments: vec![
                    attachment("a", Liveness::Live),
                    attachment("b", Liveness::Stale),
                ],
                published_ports: 4,
                kernel: KernelMatch {
                    matches: false,
                    missing: vec!["host veth x".into()],
                },
                overlay: None,
            }],
            problems: Vec::new(),
        };
        let t = encode(&inv);
        for line in [
            r#"berth_range_addresses_used{network="pods",range_set="0",range="10.88.0.0/16"} 2.0"#,
            r#"berth_range_addresses_capacity{network="pods",range_set="0",range="10.88.0.0/16"} 65533.0"#,
            r#"berth_range_addresses_used{network="pods",range_set="imported",range=""} 3.0"#,
            r#"berth_attachments{network="pods",state="live"} 1"#,
            r#"berth_attachments{network="pods",state="stale"} 1"#,
            r#"berth_attachments{network="pods",state="unknown"} 0"#,
            r#"berth_published_ports{network="pods"} 4"#,
            r#"berth_kernel_objects_missing{network="pods"} 1"#,
        ] {
            assert!(t.lines().any(|l| l == line), "no {line} in\n{t}");
        }
        // An IPv6 set's size, past 2^63, as a float.
        let v6 = t
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"berth_range_addresses_capacity{network="pods",range_set="1",range="fd00::/64"} "#,
                )
            })
            .unwrap_or_else(|| panic!("no IPv6 capacity in\n{t}"));
        assert_eq!(v6.parse::<f64>().unwrap(), 2f64.powi(64));
        // A set without a size has no capacity sample.
        assert!(
            !t.contains(r#"berth_range_addresses_capacity{network="pods",range_set="imported""#)
        );
    }
}
