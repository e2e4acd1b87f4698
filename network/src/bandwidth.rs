//! Rate limits on a container's link, shaped on the host side so that
//! nothing in the container can lift them, and so DEL and GC work without
//! the container's namespace:
//!
//! - towards the container (CNI's "ingress"): the root qdisc of the host
//!   end of its link;
//! - from the container ("egress"): the host end's ingress is redirected
//!   to an `ifb` device of the attachment's own, whose root qdisc shapes
//!   it. (A host link's ingress cannot queue, so it cannot be shaped in
//!   place.)
//!
//! Each is a tbf when every packet is limited, or an htb with a shaped and
//! an unshaped class when only some subnets are (or all but some). The
//! units are CNI's and Kubernetes': bits per second and bits. The queue a
//! tbf holds is 25 ms at the rate plus the burst, as the reference
//! bandwidth plugin gives it.
//!
//! The ifb's name is a hash of the attachment (network, container ID,
//! ifname), so DEL finds it from the attachment alone; its alias names the
//! attachment in clear, so GC can tell whose each one is. ADD, DEL and GC
//! run under berth's host-wide lock, so GC never takes an ifb an ADD is
//! still making.

use berth_kernel::tc::{AddrField, RootQdisc, Shaper, Subnets as TcSubnets, TokenBucket};
use berth_kernel::{Handle, Link};
use ipnet::IpNet;

use crate::{kernel, names, Error, Kind, Result};

/// How long a tbf may queue at its rate, on top of the burst (the
/// reference bandwidth plugin's latency).
const QUEUE_LATENCY_MS: u64 = 25;
/// htb keeps a class's burst as a time, in 32-bit psched ticks of 64 ns.
const HTB_MAX_BURST_NS: u128 = (u32::MAX as u128) << 6;
/// How an ifb's alias starts: `berth-bandwidth <network> <container> <ifname>`.
const ALIAS_TAG: &str = "berth-bandwidth";

/// One direction's limit, in CNI's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bits that may pass at once above the rate.
    pub burst: u64,
}

/// Which traffic the limits apply to, by the remote address (the source
/// of traffic towards the container, the destination of traffic from it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subnets {
    #[default]
    All,
    /// Only traffic with these subnets (`shapedSubnets`).
    Only(Vec<IpNet>),
    /// All traffic but that with these subnets (`unshapedSubnets`).
    Except(Vec<IpNet>),
}

/// The limits of one attachment. Field names in errors are CNI's keys
/// (`ingressRate`...), the reference plugin's, which are the only
/// spelling any front end takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BandwidthSpec {
    /// Towards the container.
    pub ingress: Option<Limit>,
    /// From the container.
    pub egress: Option<Limit>,
    pub subnets: Subnets,
}

/// The attachment limits belong to (CNI's key for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    /// The attachment's ifb: [`names::BANDWIDTH_IFB_PREFIX`] and a hash.
    pub fn ifb_name(&self) -> String {
        names::bandwidth_ifb(&self.network, &self.container_id, &self.ifname)
    }

    fn alias(&self) -> String {
        format!(
            "{ALIAS_TAG} {} {} {}",
            self.network, self.container_id, self.ifname
        )
    }

    /// The owner an ifb's alias names, if it is one of berth's.
    fn from_alias(alias: &str) -> Option<Owner> {
        let mut words = alias.split(' ');
        if words.next() != Some(ALIAS_TAG) {
            return None;
        }
        let (network, container_id, ifname) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        Some(Owner {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
    }
}

/// A rate and burst pair as the front end read it (0 is "not given", as
/// in the reference): both or neither.
pub fn limit(
    (rate_key, rate): (&str, u64),
    (burst_key, burst): (&str, u64),
) -> Result<Option<Limit>> {
    match (rate, burst) {
        (0, 0) => Ok(None),
        (0, b) => Err(Error::config(
            rate_key,
            format!("missing or 0, but {burst_key} is {b}: a burst needs its rate"),
        )),
        (r, 0) => Err(Error::config(
            burst_key,
            format!("missing or 0, but {rate_key} is {r}: a rate needs its burst"),
        )),
        (rate, burst) => Ok(Some(Limit { rate, burst })),
    }
}

/// The kernel's shaper for one direction: checks that the kernel can
/// express it on a link of `mtu` and turns bits into bytes.
fn shaper(dir: &str, l: Limit, subnets: &Subnets, field: AddrField, mtu: u32) -> Result<Shaper> {
    let (rate_key, burst_key) = (format!("{dir}Rate"), format!("{dir}Burst"));
    let rate = l.rate / 8;
    if rate == 0 {
        return Err(Error::config(
            &rate_key,
            format!(
                "{} bit/s is less than a byte a second, the least the kernel's tbf can pace",
                l.rate
            ),
        ));
    }
    // The reference refuses the same ("burst cannot be more than 4GB"):
    // tbf takes the burst as a 32-bit byte count.
    let burst = match u32::try_from(l.burst / 8) {
        Ok(b) if b < u32::MAX => b,
        _ => {
            return Err(Error::config(
                &burst_key,
                format!(
                    "{} bits is more than the kernel's tbf can hold (less than 4 GiB, {} bits)",
                    l.burst,
                    u32::MAX as u64 * 8
                ),
            ))
        }
    };
    if burst < mtu {
        // tbf drops a packet larger than its bucket outright: every
        // full-size packet would be lost.
        return Err(Error::config(
            &burst_key,
            format!(
                "{} bits ({burst} bytes) is less than the link's MTU ({mtu} bytes): \
                 every full-size packet would be dropped",
                l.burst
            ),
        ));
    }
    let queued = rate as u128 * QUEUE_LATENCY_MS as u128 / 1000 + burst as u128;
    let Ok(limit) = u32::try_from(queued) else {
        return Err(Error::config(
            &rate_key,
            format!(
                "{} bit/s is more than the kernel's tbf can queue {QUEUE_LATENCY_MS} ms of \
                 (its queue is a 32-bit byte count)",
                l.rate
            ),
        ));
    };
    let subnets = match subnets {
        Subnets::All => TcSubnets::All,
        Subnets::Only(nets) | Subnets::Except(nets) => {
            let ns = burst as u128 * 1_000_000_000 / rate as u128;
            if ns > HTB_MAX_BURST_NS {
                return Err(Error::config(
                    &burst_key,
                    format!(
                        "{} bits at {} bit/s lasts {} s; with shapedSubnets or unshapedSubnets \
                         the kernel's htb holds a burst of at most {} s",
                        l.burst,
                        l.rate,
                        ns / 1_000_000_000,
                        HTB_MAX_BURST_NS / 1_000_000_000
                    ),
                ));
            }
            let nets = nets.clone();
            if matches!(subnets, Subnets::Only(_)) {
                TcSubnets::Only { field, nets }
            } else {
                TcSubnets::Except { field, nets }
            }
        }
    };
    Ok(Shaper {
        bucket: TokenBucket { rate, burst },
        limit,
        subnets,
    })
}

/// What a spec asks of the kernel on a host link of `mtu`.
#[derive(Debug)]
struct Plan {
    /// The host link's root qdisc.
    ingress: Option<Shaper>,
    /// The ifb's root qdisc.
    egress: Option<Shaper>,
}

impl BandwidthSpec {
    fn plan(&self, mtu: u32) -> Result<Plan> {
        // The remote end of traffic towards the container is its source.
        let ingress = self
            .ingress
            .map(|l| shaper("ingress", l, &self.subnets, AddrField::Source, mtu))
            .transpose()?;
        let egress = self
            .egress
            .map(|l| shaper("egress", l, &self.subnets, AddrField::Destination, mtu))
            .transpose()?;
        Ok(Plan { ingress, egress })
    }

    /// Checks the spec against the kernel's limits for a link of `mtu`,
    /// without touching anything.
    pub fn validate(&self, mtu: u32) -> Result<()> {
        self.plan(mtu).map(|_| ())
    }

    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

/// The ifb ADD made, for the front end's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ifb {
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

/// One direction's limit as the kernel holds it, in CNI's units.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Bits per second.
    pub rate: u64,
    /// Bits (a tbf's; None for an htb's shaped class).
    pub burst: Option<u64>,
    /// True when only some traffic is shaped (`shapedSubnets` or
    /// `unshapedSubnets`: an htb).
    pub by_subnet: bool,
}

/// An attachment's limits as the kernel holds them (the operator's view).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Towards the container: the host end's root qdisc.
    pub ingress: Option<Applied>,
    /// From the container: the root qdisc of the attachment's ifb.
    pub egress: Option<Applied>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }
}

fn applied_of(q: &RootQdisc) -> Option<Applied> {
    match q {
        RootQdisc::Tbf { rate, burst, .. } => Some(Applied {
            rate: rate * 8,
            burst: Some(u64::from(*burst) * 8),
            by_subnet: false,
        }),
        RootQdisc::Htb { classes, .. } => classes
            .iter()
            .find(|c| c.minor == berth_kernel::tc::SHAPED_CLASS)
            .map(|c| Applied {
                rate: c.rate * 8,
                burst: None,
                by_subnet: true,
            }),
        RootQdisc::None | RootQdisc::Other(_) => None,
    }
}

/// What shapes `owner`'s traffic now: the tbf or htb on its host end
/// `link` (if known), and on its ifb. Only reads.
pub fn applied(host: &mut Handle, owner: &Owner, link: Option<&str>) -> Result<Limits> {
    let mut out = Limits::default();
    if let Some(link) = link {
        if let Some(l) = host.link_by_name(link).map_err(kernel)? {
            out.ingress = applied_of(&host.root_qdisc(l.index).map_err(kernel)?);
        }
    }
    if let Some(ifb) = host.link_by_name(&owner.ifb_name()).map_err(kernel)? {
        out.egress = applied_of(&host.root_qdisc(ifb.index).map_err(kernel)?);
    }
    Ok(out)
}

fn host_link(host: &mut Handle, name: &str) -> Result<Link> {
    host.link_by_name(name)
        .map_err(kernel)?
        .ok_or_else(|| Error::new(Kind::Kernel, format!("the host link {name} does not exist")))
}

fn lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    store::host::lock().map_err(|e| {
        Error::new(
            Kind::Io,
            format!("berth's host lock {}: {e}", store::host::LOCK_DIR),
        )
    })
}

/// Shapes `link` (the host end of the attachment's link) as `spec` says,
/// replacing whatever limits an earlier ADD gave it. Nothing is made when
/// the spec is refused; a kernel failure halfway undoes what was made.
pub fn apply(
    host: &mut Handle,
    owner: &Owner,
    link: &str,
    spec: &BandwidthSpec,
) -> Result<Option<Ifb>> {
    let _lock = lock()?;
    let veth = host_link(host, link)?;
    let plan = spec.plan(veth.mtu)?;
    let made = shape(host, owner, &veth, &plan);
    if made.is_err() {
        let _ = unshape(host, owner, Some(&veth));
    }
    made
}

fn shape(host: &mut Handle, owner: &Owner, veth: &Link, plan: &Plan) -> Result<Option<Ifb>> {
    let ifb_name = owner.ifb_name();
    let ifb = match &plan.egress {
        Some(shaper) => {
            let ifb = match host.link_by_name(&ifb_name).map_err(kernel)? {
                Some(l) if l.kind.as_deref() == Some("ifb") => l,
                Some(l) => {
                    return Err(Error::new(
                        Kind::Exists,
                        format!(
                            "{ifb_name} exists and is a {} link, not berth's ifb",
                            l.kind.as_deref().unwrap_or("physical")
                        ),
                    ))
                }
                None => {
                    let index = host
                        .add_ifb(&ifb_name, veth.mtu, &owner.alias())
                        .map_err(Error::kernel(format!("creating the ifb {ifb_name}")))?;
                    host.link_by_index(index)
                        .map_err(kernel)?
                        .ok_or_else(|| Error::new(Kind::Kernel, format!("{ifb_name} vanished")))?
                }
            };
            host.set_root_shaper(ifb.index, shaper)
                .map_err(Error::kernel(format!("shaping {ifb_name}")))?;
            host.set_ingress_redirect(veth.index, ifb.index)
                .map_err(Error::kernel(format!(
                    "redirecting {}'s ingress to {ifb_name}",
                    veth.name
                )))?;
            Some(Ifb {
                name: ifb.name,
                mac: ifb.mac,
            })
        }
        None => {
            // A repeated ADD without an egress limit: the redirect goes
            // first, or packets would be sent to a deleted device. An
            // ingress qdisc that is not ours (no redirect to our ifb) stays.
            if let Some(ifb) = host.link_by_name(&ifb_name).map_err(kernel)? {
                if host.ingress_redirect(veth.index).map_err(kernel)? == Some(ifb.index) {
                    host.clear_ingress_qdisc(veth.index).map_err(kernel)?;
                }
                host.delete_link(ifb.index).map_err(kernel)?;
            }
            None
        }
    };
    match &plan.ingress {
        Some(shaper) => host
            .set_root_shaper(veth.index, shaper)
            .map_err(Error::kernel(format!("shaping {}", veth.name)))?,
        None => clear_our_root(host, veth.index)?,
    }
    Ok(ifb)
}

/// Removes the root qdisc of `index` when it is a shaper (berth's kind);
/// a link's default or another kind is left alone.
fn clear_our_root(host: &mut Handle, index: u32) -> Result<()> {
    if matches!(
        host.root_qdisc(index).map_err(kernel)?,
        RootQdisc::Tbf { .. } | RootQdisc::Htb { .. }
    ) {
        host.clear_root_qdisc(index).map_err(kernel)?;
    }
    Ok(())
}

fn unshape(host: &mut Handle, owner: &Owner, veth: Option<&Link>) -> Result<()> {
    if let Some(veth) = veth {
        host.clear_ingress_qdisc(veth.index).map_err(kernel)?;
        clear_our_root(host, veth.index)?;
    }
    host.delete_link_by_name(&owner.ifb_name())
        .map_err(kernel)?;
    Ok(())
}

/// Removes the attachment's limits: its ifb, and when the host link is
/// known and still there, the qdiscs on it. Needs no container namespace;
/// removing what is not there is fine.
pub fn remove(host: &mut Handle, owner: &Owner, link: Option<&str>) -> Result<()> {
    let _lock = lock()?;
    let veth = match link {
        Some(name) => host.link_by_name(name).map_err(kernel)?,
        None => None,
    };
    unshape(host, owner, veth.as_ref())
}

/// What CHECK says: the qdiscs on `link` and the ifb are the spec's.
pub fn check(host: &mut Handle, owner: &Owner, link: &str, spec: &BandwidthSpec) -> Result<()> {
    let veth = host_link(host, link)?;
    let plan = spec.plan(veth.mtu)?;
    let ifb_name = owner.ifb_name();
    let ifb = host.link_by_name(&ifb_name).map_err(kernel)?;
    match (&plan.egress, &ifb) {
        (Some(want), Some(ifb)) => {
            let to = host.ingress_redirect(veth.index).map_err(kernel)?;
            if to != Some(ifb.index) {
                return Err(Error::check_failed(format!(
                    "{}'s ingress is not redirected to {ifb_name}",
                    veth.name
                )));
            }
            same_shaper(
                &ifb_name,
                &host.root_qdisc(ifb.index).map_err(kernel)?,
                want,
            )?;
        }
        (Some(_), None) => {
            return Err(Error::check_failed(format!(
                "the egress limit's ifb {ifb_name} is missing"
            )))
        }
        (None, Some(_)) => {
            return Err(Error::check_failed(format!(
                "{ifb_name} is there but the config has no egress limit"
            )))
        }
        (None, None) => {}
    }
    let root = host.root_qdisc(veth.index).map_err(kernel)?;
    match &plan.ingress {
        Some(want) => same_shaper(&veth.name, &root, want),
        None if matches!(root, RootQdisc::Tbf { .. } | RootQdisc::Htb { .. }) => {
            Err(Error::check_failed(format!(
                "{} is shaped but the config has no ingress limit",
                veth.name
            )))
        }
        None => Ok(()),
    }
}

fn same_shaper(link: &str, got: &RootQdisc, want: &Shaper) -> Result<()> {
    let differs = |what: String| {
        Err(Error::check_failed(format!(
            "{link}: {what}, not the config's rate {} bit/s and burst {} bits",
            want.bucket.rate * 8,
            want.bucket.burst as u64 * 8
        )))
    };
    match (got, &want.subnets) {
        (RootQdisc::Tbf { rate, burst, limit }, TcSubnets::All) => {
            if !want.bucket.close_to(*rate, *burst) || *limit != want.limit {
                return differs(format!(
                    "tbf at {} bit/s with a burst of {} bits and a queue of {limit} bytes",
                    rate * 8,
                    *burst as u64 * 8
                ));
            }
            Ok(())
        }
        (RootQdisc::Htb { classes, .. }, TcSubnets::Only { .. } | TcSubnets::Except { .. }) => {
            let shaped = classes
                .iter()
                .find(|c| c.minor == berth_kernel::tc::SHAPED_CLASS);
            match shaped {
                Some(c) if c.rate == want.bucket.rate && c.ceil == want.bucket.rate => Ok(()),
                Some(c) => differs(format!("htb's shaped class at {} bit/s", c.rate * 8)),
                None => differs("htb without its shaped class".into()),
            }
        }
        (RootQdisc::None, _) => differs("no qdisc".into()),
        (RootQdisc::Tbf { .. }, _) => {
            differs("a tbf, where the config's subnets need an htb".into())
        }
        (RootQdisc::Htb { .. }, _) => differs("an htb, where the config needs a tbf".into()),
        (RootQdisc::Other(kind), _) => differs(format!("a {kind} qdisc")),
    }
}

/// Removes the ifbs of `network`'s attachments that `keep` does not name,
/// and any of berth's ifbs whose alias names no attachment (an ADD killed
/// between making one and naming it: the lock says no ADD is running).
pub fn gc(host: &mut Handle, network: &str, keep: impl Fn(&Owner) -> bool) -> Result<Vec<String>> {
    let _lock = lock()?;
    let mut removed = Vec::new();
    for link in host.links().map_err(kernel)? {
        if link.kind.as_deref() != Some("ifb") || !names::is_bandwidth_ifb(&link.name) {
            continue;
        }
        let stale = match link.alias.as_deref().map(Owner::from_alias) {
            Some(Some(o)) => o.network == network && o.ifb_name() == link.name && !keep(&o),
            Some(None) => false,
            None => true,
        };
        if stale {
            host.delete_link(link.index).map_err(kernel)?;
            removed.push(link.name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ingress: Option<(u64, u64)>, egress: Option<(u64, u64)>) -> BandwidthSpec {
        let l = |(rate, burst)| Limit { rate, burst };
        BandwidthSpec {
            ingress: ingress.map(l),
            egress: egress.map(l),
            subnets: Subnets::All,
        }
    }

    fn field(e: Error) -> String {
        assert_eq!(e.kind, Kind::Config, "{e}");
        e.field.unwrap()
    }

    #[test]
    fn rates_and_bursts_come_in_pairs() {
        assert_eq!(limit(("r", 0), ("b", 0)).unwrap(), None);
        assert_eq!(field(limit(("r", 0), ("b", 5)).unwrap_err()), "r");
        assert_eq!(field(limit(("r", 5), ("b", 0)).unwrap_err()), "b");
        assert_eq!(
            limit(("r", 8), ("b", 16)).unwrap(),
            Some(Limit { rate: 8, burst: 16 })
        );
    }

    #[test]
    fn a_plan_is_in_bytes_with_the_references_queue() {
        let p = spec(Some((10_000_000, 1_000_000)), None)
            .plan(1500)
            .unwrap();
        let s = p.ingress.unwrap();
        assert_eq!(s.bucket.rate, 1_250_000);
        assert_eq!(s.bucket.burst, 125_000);
        // 25 ms at 1.25 MB/s, plus the burst.
        assert_eq!(s.limit, 31_250 + 125_000);
        assert!(p.egress.is_none());
    }

    #[test]
    fn what_the_kernel_cannot_express_is_refused_by_key() {
        let f = |s: BandwidthSpec| field(s.plan(1500).unwrap_err());
        assert_eq!(f(spec(Some((7, 100_000)), None)), "ingressRate");
        assert_eq!(f(spec(None, Some((1_000, 8 * 1000)))), "egressBurst");
        assert_eq!(
            f(spec(Some((1_000_000, 8 * u32::MAX as u64 + 8)), None)),
            "ingressBurst"
        );
        // 25 ms of 2 Tbit/s does not fit tbf's 32-bit queue.
        assert_eq!(
            f(spec(None, Some((2_000_000_000_000, 100_000)))),
            "egressRate"
        );
        // Kubernetes' burst (math.MaxUint32 bits) is fine for tbf...
        spec(Some((1_000_000, u32::MAX as u64)), None)
            .plan(1500)
            .unwrap();
        // ...but lasts too long for htb at a low rate.
        let mut s = spec(Some((1_000_000, u32::MAX as u64)), None);
        s.subnets = Subnets::Only(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(f(s), "ingressBurst");
    }

    #[test]
    fn subnets_match_the_remote_end() {
        let mut s = spec(Some((8_000_000, 800_000)), Some((8_000_000, 800_000)));
        let nets: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        s.subnets = Subnets::Except(nets.clone());
        let p = s.plan(1500).unwrap();
        assert_eq!(
            p.ingress.unwrap().subnets,
            TcSubnets::Except {
                field: AddrField::Source,
                nets: nets.clone()
            }
        );
        assert_eq!(
            p.egress.unwrap().subnets,
            TcSubnets::Except {
                field: AddrField::Destination,
                nets
            }
        );
    }

    #[test]
    fn ifb_aliases_name_their_attachment() {
        let o = Owner {
            network: "net-1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(Owner::from_alias(&o.alias()), Some(o.clone()));
        assert_eq!(Owner::from_alias("berth-bandwidth a b"), None);
        assert_eq!(Owner::from_alias("someone else's"), None);
        assert!(berth_kernel::check_ifname(&o.ifb_name()).is_ok());
    }
}
