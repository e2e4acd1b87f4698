//! The `ipam` section, host-local compatible: `ranges` (or the legacy
//! top-level `subnet`/`rangeStart`/`rangeEnd`/`gateway`), `routes`, `dataDir`,
//! `resolvConf`, plus requested addresses from CNI_ARGS `IP`, `args.cni.ips`
//! and `runtimeConfig.ips`, and `runtimeConfig.ipRanges`.
//!
//! Every error is code 7 (or 4 for unknown CNI_ARGS keys) and names the field.

use std::net::IpAddr;
use std::path::PathBuf;

use cni::{codes, Error, GoObject, Route};
use ipnet::IpNet;
use serde_json::Value;
use store::{from_key, is_v4_key, to_key};

/// One range: addresses `range_start..=range_end` of `subnet`, handed out with
/// `gateway` as their gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The network (host bits clear).
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: IpAddr,
    /// Whether `rangeStart`/`rangeEnd` were given (only affects labels).
    bounded: bool,
}

impl Range {
    /// Builds and validates a range the way host-local canonicalizes one, plus
    /// berth's stricter checks. `field` names the range object in errors.
    pub fn new(
        subnet: IpNet,
        range_start: Option<IpAddr>,
        range_end: Option<IpAddr>,
        gateway: Option<IpAddr>,
        field: &str,
    ) -> Result<Range, Error> {
        let sf = format!("{field}.subnet");
        if subnet.trunc() != subnet {
            return Err(Error::config(
                &sf,
                format!(
                    "{subnet} has host bits set; the network address for /{} is {}",
                    subnet.prefix_len(),
                    subnet.network()
                ),
            ));
        }
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(Error::config(
                &sf,
                format!(
                    "network {subnet} too small to allocate from (at most /{} for {})",
                    subnet.max_prefix_len() - 2,
                    if subnet.addr().is_ipv4() {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                ),
            ));
        }
        let net = to_key(subnet.network());
        let last = to_key(subnet.broadcast());
        if subnet.addr().is_ipv6()
            && (is_v4_key(net) || is_v4_key(last) || (net <= V4_MAPPED_LO && last >= V4_MAPPED_HI))
        {
            return Err(Error::config(
                &sf,
                format!(
                    "{subnet} overlaps the IPv4-mapped range ::ffff:0:0/96, which is not supported"
                ),
            ));
        }
        let in_subnet =
            |ip: IpAddr| ip.is_ipv4() == subnet.addr().is_ipv4() && subnet.contains(&ip);
        let check = |ip: Option<IpAddr>, key: &str| -> Result<(), Error> {
            match ip {
                Some(ip) if !in_subnet(ip) => Err(Error::config(
                    &format!("{field}.{key}"),
                    format!("{ip} is not in network {subnet}"),
                )),
                _ => Ok(()),
            }
        };
        check(gateway, "gateway")?;
        check(range_start, "rangeStart")?;
        check(range_end, "rangeEnd")?;

        let first_host = from_key(net + 1);
        let gateway = gateway.unwrap_or(first_host);
        if to_key(gateway) == net || (subnet.addr().is_ipv4() && to_key(gateway) == last) {
            return Err(Error::config(
                &format!("{field}.gateway"),
                format!("{gateway} is the network or broadcast address of {subnet}"),
            ));
        }
        let bounded = range_start.is_some() || range_end.is_some();
        let range_start = range_start.unwrap_or(first_host);
        let range_end = range_end.unwrap_or_else(|| {
            if subnet.addr().is_ipv4() {
                from_key(last - 1)
            } else {
                from_key(last)
            }
        });
        if to_key(range_start) > to_key(range_end) {
            return Err(Error::config(
                &format!("{field}.rangeStart"),
                format!("{range_start} is after rangeEnd {range_end}"),
            ));
        }
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
            bounded,
        })
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    /// In `rangeStart..=rangeEnd` (and of the same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && to_key(self.range_start) <= to_key(ip)
            && to_key(ip) <= to_key(self.range_end)
    }

    /// Addresses of this range never handed out: gateway, network and (IPv4)
    /// broadcast.
    pub fn reserved(&self) -> Vec<IpAddr> {
        let mut v = vec![self.gateway, self.subnet.network()];
        if self.is_ipv4() {
            v.push(self.subnet.broadcast());
        }
        v
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && to_key(self.range_start) <= to_key(other.range_end)
            && to_key(other.range_start) <= to_key(self.range_end)
    }

    fn label(&self) -> String {
        if self.bounded {
            format!("{} ({}-{})", self.subnet, self.range_start, self.range_end)
        } else {
            self.subnet.to_string()
        }
    }
}

const V4_MAPPED_LO: u128 = 0xffff_u128 << 32;
const V4_MAPPED_HI: u128 = (0xffff_u128 << 32) | 0xffff_ffff;

/// Ranges of one family; an ADD takes one address from each range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(Range::is_ipv4)
    }

    /// The range holding `ip` between its rangeStart and rangeEnd.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Every address never handed out from this set.
    pub fn reserved(&self) -> Vec<IpAddr> {
        self.ranges.iter().flat_map(Range::reserved).collect()
    }

    /// `10.0.0.0/24` or `10.0.0.0/24 (10.0.0.10-10.0.0.20), 10.1.0.0/24`.
    pub fn label(&self) -> String {
        self.ranges
            .iter()
            .map(Range::label)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The store's view of this set, with `id` = its index.
    pub fn to_store(&self, id: u32) -> Result<store::RangeSet, Error> {
        let ranges: Vec<store::IpRange> = self
            .ranges
            .iter()
            .map(|r| store::IpRange::new(r.range_start, r.range_end))
            .collect();
        store::RangeSet::new(id, self.label(), &ranges, &self.reserved())
            .map_err(|e| Error::new(codes::INVALID_CONFIG, e.to_string()))
    }

    /// True if no address of the set can ever be handed out (every address
    /// in its ranges is reserved).
    pub fn has_no_addresses(&self) -> bool {
        let reserved = self.reserved();
        self.ranges.iter().all(|r| {
            let (s, e) = (to_key(r.range_start), to_key(r.range_end));
            let mut excl: Vec<u128> = reserved
                .iter()
                .map(|ip| to_key(*ip))
                .filter(|k| s <= *k && *k <= e)
                .collect();
            excl.sort_unstable();
            excl.dedup();
            // e - s + 1 addresses; all reserved means the count matches.
            (e - s) < excl.len() as u128
        })
    }
}

/// The parsed `ipam` section plus requested addresses.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// The network name (`name` of the network config).
    pub name: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses, assigned to range sets: `requested[i]` is the
    /// address wanted from `range_sets[i]`, if any.
    pub requested: Vec<Option<IpAddr>>,
}

fn cfg(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(field, msg)
}

fn opt_str<'a>(obj: &'a Value, key: &str, field: &str) -> Result<Option<&'a str>, Error> {
    match obj.go_get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(cfg(
            &format!("{field}.{key}"),
            format!("expected a string, got {other}"),
        )),
    }
}

fn opt_ip(obj: &Value, key: &str, field: &str) -> Result<Option<IpAddr>, Error> {
    match opt_str(obj, key, field)? {
        None => Ok(None),
        Some(s) => s.parse::<IpAddr>().map(Some).map_err(|_| {
            cfg(
                &format!("{field}.{key}"),
                format!("{s:?} is not an IP address"),
            )
        }),
    }
}

fn parse_range(v: &Value, field: &str) -> Result<Range, Error> {
    if !v.is_object() {
        return Err(cfg(
            field,
            "expected an object with subnet, rangeStart, rangeEnd, gateway",
        ));
    }
    let subnet_s =
        opt_str(v, "subnet", field)?.ok_or_else(|| cfg(&format!("{field}.subnet"), "missing"))?;
    let subnet: IpNet = subnet_s.parse().map_err(|_| {
        cfg(
            &format!("{field}.subnet"),
            format!("{subnet_s:?} is not a CIDR"),
        )
    })?;
    Range::new(
        subnet,
        opt_ip(v, "rangeStart", field)?,
        opt_ip(v, "rangeEnd", field)?,
        opt_ip(v, "gateway", field)?,
        field,
    )
}

fn parse_range_set(v: &Value, field: &str) -> Result<RangeSet, Error> {
    let arr = v
        .as_array()
        .ok_or_else(|| cfg(field, "expected a list of ranges"))?;
    if arr.is_empty() {
        return Err(cfg(field, "empty range set"));
    }
    let ranges = arr
        .iter()
        .enumerate()
        .map(|(j, r)| parse_range(r, &format!("{field}[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let v4 = ranges[0].is_ipv4();
    for (j, r) in ranges.iter().enumerate() {
        if r.is_ipv4() != v4 {
            return Err(cfg(
                &format!("{field}[{j}]"),
                "mixed address families in one range set",
            ));
        }
    }
    for (a, ra) in ranges.iter().enumerate() {
        for (b, rb) in ranges.iter().enumerate().skip(a + 1) {
            if ra.overlaps(rb) {
                return Err(cfg(
                    &format!("{field}[{b}]"),
                    format!(
                        "range {}-{} overlaps {field}[{a}] {}-{}",
                        rb.range_start, rb.range_end, ra.range_start, ra.range_end
                    ),
                ));
            }
        }
    }
    Ok(RangeSet { ranges })
}

fn parse_range_sets(v: &Value, field: &str) -> Result<Vec<(String, RangeSet)>, Error> {
    let arr = v
        .as_array()
        .ok_or_else(|| cfg(field, "expected a list of range sets (lists of ranges)"))?;
    arr.iter()
        .enumerate()
        .map(|(i, s)| {
            let f = format!("{field}[{i}]");
            parse_range_set(s, &f).map(|rs| (f, rs))
        })
        .collect()
}

/// "10.0.0.5" or "10.0.0.5/24" (the prefix is ignored, as host-local does).
fn parse_requested(s: &str, field: &str) -> Result<IpAddr, Error> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.trim()
        .parse::<IpAddr>()
        .map_err(|_| cfg(field, format!("{s:?} is not an IP address")))
}

/// A requested address and where it came from (`CNI_ARGS IP`,
/// `args.cni.ips[0]`, `runtimeConfig.ips[1]`...), for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedIp {
    pub ip: IpAddr,
    pub source: String,
}

impl RequestedIp {
    pub fn new(ip: IpAddr, source: impl Into<String>) -> Self {
        RequestedIp {
            ip,
            source: source.into(),
        }
    }
}

/// The addresses a request asks for: CNI_ARGS IP, args.cni.ips,
/// runtimeConfig.ips.
fn requested_ips(req: &cni::Request) -> Result<Vec<RequestedIp>, Error> {
    let mut requested = Vec::new();
    if let Some(ip) = req.args.get("IP").filter(|s| !s.is_empty()) {
        requested.push(RequestedIp::new(
            parse_requested(ip, "CNI_ARGS IP")?,
            "CNI_ARGS IP",
        ));
    }
    requested.extend(requested_list(req.conf.args_cni("ips"), "args.cni.ips")?);
    requested.extend(requested_list(
        req.conf.runtime("ips"),
        "runtimeConfig.ips",
    )?);
    Ok(requested)
}

fn requested_list(v: Option<&Value>, field: &str) -> Result<Vec<RequestedIp>, Error> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let f = format!("{field}[{i}]");
                x.as_str()
                    .ok_or_else(|| cfg(&f, "expected an address string"))
                    .and_then(|s| parse_requested(s, &f))
                    .map(|ip| RequestedIp::new(ip, f))
            })
            .collect(),
        Some(_) => Err(cfg(field, "expected a list of addresses")),
    }
}

/// Parse `dataDir` only (DEL and GC need nothing else).
pub fn data_dir_of(raw: &Value) -> PathBuf {
    raw.go_get("ipam")
        .and_then(|i| i.go_get("dataDir"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(store::DEFAULT_DATA_DIR), PathBuf::from)
}

impl IpamConfig {
    /// Parse and validate everything an ADD, CHECK or STATUS needs.
    pub fn from_request(req: &cni::Request) -> Result<IpamConfig, Error> {
        req.args.check_known(&["IP"])?;
        let requested = requested_ips(req)?;
        Self::parse(
            &req.conf.raw,
            &req.conf.name,
            &req.conf.cni_version,
            req.conf.runtime("ipRanges"),
            &requested,
        )
    }

    /// For a network whose range sets the caller decides (berth-overlay:
    /// the node's subnets, a range each), with the routes it gives and
    /// the addresses the request asks for; no resolvConf.
    pub fn for_range_sets(
        req: &cni::Request,
        range_sets: Vec<RangeSet>,
        routes: Vec<Route>,
        data_dir: PathBuf,
    ) -> Result<IpamConfig, Error> {
        let requested = assign_requested(&range_sets, &requested_ips(req)?)?;
        Ok(IpamConfig {
            name: req.conf.name.clone(),
            range_sets,
            routes,
            data_dir,
            resolv_conf: None,
            requested,
        })
    }

    /// The testable core: `raw` is the whole network config.
    pub fn parse(
        raw: &Value,
        name: &str,
        cni_version: &str,
        ip_ranges: Option<&Value>,
        requested: &[RequestedIp],
    ) -> Result<IpamConfig, Error> {
        let ipam = raw.go_get("ipam").ok_or_else(|| cfg("ipam", "missing"))?;
        if !ipam.is_object() {
            return Err(cfg("ipam", "expected an object"));
        }

        // runtimeConfig.ipRanges (same shape as `ranges`) replaces the
        // configured ranges when it is given and non-empty.
        let runtime_sets = match ip_ranges {
            Some(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                Some(parse_range_sets(v, "runtimeConfig.ipRanges")?)
            }
            Some(v) if !v.is_array() => {
                return Err(cfg(
                    "runtimeConfig.ipRanges",
                    "expected a list of range sets",
                ))
            }
            _ => None,
        };
        let sets = match runtime_sets {
            Some(s) => s,
            None => {
                let mut sets = Vec::new();
                if opt_str(ipam, "subnet", "ipam")?.is_some() {
                    sets.push((
                        "ipam".to_string(),
                        RangeSet {
                            ranges: vec![parse_range(ipam, "ipam")?],
                        },
                    ));
                }
                if let Some(r) = ipam.go_get("ranges") {
                    sets.extend(parse_range_sets(r, "ipam.ranges")?);
                }
                sets
            }
        };
        if sets.is_empty() {
            return Err(cfg(
                "ipam.ranges",
                "no IP ranges specified (set ipam.ranges or ipam.subnet)",
            ));
        }

        // Before 0.3.0 a result holds one address per family.
        let old = cni::Version::parse(if cni_version.is_empty() {
            "0.1.0"
        } else {
            cni_version
        })
        .map(|v| v < cni::Version::V0_3_0)
        .unwrap_or(false);
        if old {
            let v4 = sets.iter().filter(|(_, s)| s.is_ipv4()).count();
            if v4 > 1 || sets.len() - v4 > 1 {
                return Err(cfg(
                    "ipam.ranges",
                    format!("cniVersion {cni_version} does not support more than one address per family"),
                ));
            }
        }

        for (a, (fa, sa)) in sets.iter().enumerate() {
            for (fb, sb) in sets.iter().skip(a + 1) {
                if sa
                    .ranges
                    .iter()
                    .any(|ra| sb.ranges.iter().any(|rb| ra.overlaps(rb)))
                {
                    return Err(cfg(fb, format!("range set overlaps {fa} ({})", sa.label())));
                }
            }
        }

        let routes = match ipam.go_get("routes") {
            None => Vec::new(),
            Some(v) => cni::result::parse_routes(v, "ipam.routes")
                .map_err(|e| Error::new(codes::INVALID_CONFIG, e.msg))?,
        };
        let data_dir = opt_str(ipam, "dataDir", "ipam")?
            .map_or_else(|| PathBuf::from(store::DEFAULT_DATA_DIR), PathBuf::from);
        let resolv_conf = opt_str(ipam, "resolvConf", "ipam")?.map(PathBuf::from);

        let range_sets: Vec<RangeSet> = sets.into_iter().map(|(_, s)| s).collect();
        let requested = assign_requested(&range_sets, requested)?;
        Ok(IpamConfig {
            name: name.to_string(),
            range_sets,
            routes,
            data_dir,
            resolv_conf,
            requested,
        })
    }
}

/// Give each requested address to the range set that contains it; every
/// request must be used, at most one per range set, none reserved.
fn assign_requested(
    sets: &[RangeSet],
    requested: &[RequestedIp],
) -> Result<Vec<Option<IpAddr>>, Error> {
    let mut out: Vec<Option<IpAddr>> = vec![None; sets.len()];
    let mut seen: Vec<IpAddr> = Vec::new();
    for req in requested {
        let ip = req.ip;
        if seen.contains(&ip) {
            continue;
        }
        seen.push(ip);
        let field = req.source.as_str();
        let Some((i, range)) = sets
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.range_for(ip).map(|r| (i, r)))
        else {
            let all = sets
                .iter()
                .map(RangeSet::label)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(cfg(
                field,
                format!("requested IP address {ip} is not in any range set ({all})"),
            ));
        };
        if ip == range.gateway {
            return Err(cfg(
                field,
                format!(
                    "requested IP address {ip} is the gateway of {}",
                    range.subnet
                ),
            ));
        }
        if sets[i].reserved().contains(&ip) {
            return Err(cfg(
                field,
                format!(
                    "requested IP address {ip} is a reserved (gateway, network or broadcast) address of range set {}",
                    sets[i].label()
                ),
            ));
        }
        if let Some(prev) = out[i] {
            return Err(cfg(
                field,
                format!(
                    "requested IP addresses {prev} and {ip} are both in range set {}; one address per range set",
                    sets[i].label()
                ),
            ));
        }
        out[i] = Some(ip);
    }
    Ok(out)
}
