//! berth-bandwidth's configuration: the reference bandwidth plugin's keys,
//! with its units (bits per second, bits) and its rule for where they come
//! from, plus `shapedSubnets` / `unshapedSubnets`.
//!
//! The limits are the conf's own `ingressRate`, `ingressBurst`,
//! `egressRate`, `egressBurst` when any of the four is there, else
//! `runtimeConfig.bandwidth` (capability `bandwidth`: what Kubernetes'
//! pod annotations become). containerd sends the latter with Go's field
//! names (`IngressRate`...), so keys are matched as Go matches them.
//! The subnets are the conf's when it has them, else the runtime's: an
//! operator who puts `unshapedSubnets` in a conflist still wants the
//! pods' own rates (in the reference's reverted subnets change, the conf's
//! subnets would have hidden them).

use berth_network::bandwidth::{self, BandwidthSpec, Subnets};
use cni::{Error, GoObject, Request};
use ipnet::IpNet;
use serde_json::Value;

const RATE_KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// Where the limits were read from, to name a key at fault as the user
/// wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Conf,
    Runtime,
}

impl Source {
    pub fn key(self, key: &str) -> String {
        match self {
            Source::Conf => key.to_string(),
            Source::Runtime => format!("runtimeConfig.bandwidth.{key}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthConf {
    pub spec: BandwidthSpec,
    /// Where the rates came from (errors from checks against the kernel
    /// name keys through it).
    pub rates_from: Source,
}

impl BandwidthConf {
    /// The limits of an ADD or CHECK, checked for shape and consistency
    /// (what the kernel can express on the link is the core's to check).
    pub fn parse(req: &Request) -> Result<BandwidthConf, Error> {
        let runtime = req.conf.runtime("bandwidth");
        if let Some(v) = runtime.filter(|v| !v.is_object()) {
            return Err(Error::config(
                "runtimeConfig.bandwidth",
                format!("expected an object, got {v}"),
            ));
        }
        let conf = &req.conf.raw;
        let (rates, rates_from) = match RATE_KEYS.iter().any(|k| conf.go_get(k).is_some()) {
            true => (Some(conf), Source::Conf),
            false => (runtime, Source::Runtime),
        };
        let num = |key: &str| -> Result<u64, Error> {
            rates
                .and_then(|o| o.go_get(key))
                .map(|v| bits(&rates_from.key(key), v))
                .unwrap_or(Ok(0))
        };
        let pair = |dir: &str| -> Result<Option<bandwidth::Limit>, Error> {
            let (rate, burst) = (format!("{dir}Rate"), format!("{dir}Burst"));
            bandwidth::limit(
                (&rates_from.key(&rate), num(&rate)?),
                (&rates_from.key(&burst), num(&burst)?),
            )
            .map_err(ifconf::core_error)
        };
        let ingress = pair("ingress")?;
        let egress = pair("egress")?;
        let subnets = subnets(conf, runtime)?;
        Ok(BandwidthConf {
            spec: BandwidthSpec {
                ingress,
                egress,
                subnets,
            },
            rates_from,
        })
    }

    /// A core error about a rate or burst key, named as the user wrote it.
    pub fn name_key(&self, mut e: berth_network::Error) -> Error {
        if let Some(f) = &e.field {
            if RATE_KEYS.contains(&f.as_str()) {
                e.field = Some(self.rates_from.key(f));
            }
        }
        ifconf::core_error(e)
    }
}

/// A count in bits (or bits per second) the way Go decodes a `uint64`: a
/// whole JSON number from 0 to 2^64-1, nothing else.
fn bits(key: &str, v: &Value) -> Result<u64, Error> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    let why = match v {
        Value::Number(n) if n.as_i64().is_some() => "is negative",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > 0.0) => {
            "is more than 18446744073709551615, the most a uint64 holds"
        }
        Value::Number(_) => "is not a whole number",
        _ => "is not a number",
    };
    Err(Error::config(key, format!("{v} {why}")))
}

/// `shapedSubnets` / `unshapedSubnets`: the conf's if it names either,
/// else the runtime's; at most one of the two may be non-empty.
fn subnets(conf: &Value, runtime: Option<&Value>) -> Result<Subnets, Error> {
    let in_conf = ["shapedSubnets", "unshapedSubnets"]
        .iter()
        .any(|k| conf.go_get(k).is_some());
    let (from, source) = match (in_conf, runtime) {
        (true, _) | (false, None) => (conf, Source::Conf),
        (false, Some(r)) => (r, Source::Runtime),
    };
    let shaped = cidrs(&source.key("shapedSubnets"), from.go_get("shapedSubnets"))?;
    let unshaped = cidrs(
        &source.key("unshapedSubnets"),
        from.go_get("unshapedSubnets"),
    )?;
    match (shaped.is_empty(), unshaped.is_empty()) {
        (true, true) => Ok(Subnets::All),
        (false, true) => Ok(Subnets::Only(shaped)),
        (true, false) => Ok(Subnets::Except(unshaped)),
        (false, false) => Err(Error::config(
            &source.key("shapedSubnets"),
            "cannot be given together with unshapedSubnets: one says what is limited, \
             the other what is not",
        )),
    }
}

/// A list of CIDRs as Go's `net.ParseCIDR` reads them (an address with
/// host bits set stands for its network).
fn cidrs(key: &str, v: Option<&Value>) -> Result<Vec<IpNet>, Error> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(Error::config(key, format!("expected a list, got {other}"))),
    };
    let mut out: Vec<IpNet> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let s = item
            .as_str()
            .ok_or_else(|| Error::config(&at, format!("{item} is not a string")))?;
        let net: IpNet = s.parse().map_err(|_| {
            Error::config(
                &at,
                format!("{s:?} is not a subnet (an address and a prefix length, e.g. 10.0.0.0/8)"),
            )
        })?;
        let net = net.trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_network::bandwidth::Limit;
    use cni::skel::Command;
    use serde_json::json;

    fn req(conf: Value) -> Request {
        let mut c = json!({"cniVersion": "1.0.0", "name": "n", "type": "berth-bandwidth"});
        c.as_object_mut()
            .unwrap()
            .extend(conf.as_object().unwrap().clone());
        Request::from_parts(
            Command::Add,
            "c1",
            "eth0",
            serde_json::to_string(&c).unwrap().as_bytes(),
            "",
        )
        .unwrap()
    }

    fn parse(conf: Value) -> Result<BandwidthConf, Error> {
        BandwidthConf::parse(&req(conf))
    }

    fn refused(conf: Value) -> String {
        let e = parse(conf.clone()).expect_err(&conf.to_string());
        assert_eq!(e.code, cni::codes::INVALID_CONFIG, "{e:?}");
        e.msg
    }

    #[test]
    fn the_confs_keys_win_over_the_runtimes() {
        let c = parse(json!({
            "ingressRate": 8000, "ingressBurst": 16000,
            "runtimeConfig": {"bandwidth": {"egressRate": 1, "egressBurst": 2}}
        }))
        .unwrap();
        assert_eq!(c.rates_from, Source::Conf);
        assert_eq!(
            c.spec.ingress,
            Some(Limit {
                rate: 8000,
                burst: 16000
            })
        );
        assert_eq!(c.spec.egress, None);
    }

    #[test]
    fn containerds_go_field_names_are_read() {
        // What containerd's CRI sends for the pod annotations
        // (burst math.MaxUint32, as it sets it).
        let c = parse(json!({"runtimeConfig": {"bandwidth": {
            "IngressRate": 10_000_000u64, "IngressBurst": 4294967295u64,
            "EgressRate": 50_000_000u64, "EgressBurst": 4294967295u64
        }}}))
        .unwrap();
        assert_eq!(c.rates_from, Source::Runtime);
        assert_eq!(c.spec.ingress.unwrap().rate, 10_000_000);
        assert_eq!(c.spec.egress.unwrap().burst, 4294967295);
        assert_eq!(c.spec.subnets, Subnets::All);
    }

    #[test]
    fn no_limits_is_an_empty_spec() {
        assert!(parse(json!({})).unwrap().spec.is_empty());
        assert!(parse(json!({"ingressRate": 0, "ingressBurst": 0}))
            .unwrap()
            .spec
            .is_empty());
        assert!(parse(json!({"runtimeConfig": {"bandwidth": {}}}))
            .unwrap()
            .spec
            .is_empty());
    }

    #[test]
    fn bad_numbers_name_their_key() {
        for (conf, key, why) in [
            (
                json!({"ingressRate": -1, "ingressBurst": 8}),
                "ingressRate",
                "negative",
            ),
            (
                json!({"egressRate": 1.5, "egressBurst": 8}),
                "egressRate",
                "whole",
            ),
            (
                json!({"egressRate": 8, "egressBurst": 1e30}),
                "egressBurst",
                "uint64",
            ),
            (
                json!({"ingressRate": "10M", "ingressBurst": 8}),
                "ingressRate",
                "number",
            ),
            (
                json!({"ingressBurst": 8000}),
                "ingressRate",
                "burst needs its rate",
            ),
            (
                json!({"egressRate": 8000}),
                "egressBurst",
                "rate needs its burst",
            ),
            (
                json!({"runtimeConfig": {"bandwidth": {"IngressRate": 0, "IngressBurst": 5}}}),
                "runtimeConfig.bandwidth.ingressRate",
                "burst needs",
            ),
        ] {
            let msg = refused(conf.clone());
            assert!(msg.starts_with(&format!("{key}: ")), "{conf}: {msg}");
            assert!(msg.contains(why), "{conf}: {msg}");
        }
    }

    #[test]
    fn subnets_parse_as_go_reads_cidrs() {
        let c =
            parse(json!({"shapedSubnets": ["10.1.2.3/16", "fd00::/64", "10.1.0.0/16"]})).unwrap();
        assert_eq!(
            c.spec.subnets,
            Subnets::Only(vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00::/64".parse().unwrap()
            ])
        );
        let c = parse(json!({"unshapedSubnets": ["0.0.0.0/0"], "shapedSubnets": []})).unwrap();
        assert_eq!(
            c.spec.subnets,
            Subnets::Except(vec!["0.0.0.0/0".parse().unwrap()])
        );
        let msg = refused(json!({"unshapedSubnets": ["10.0.0.0/8", "10.0.0.1"]}));
        assert!(msg.starts_with("unshapedSubnets[1]: "), "{msg}");
        let msg = refused(json!({"shapedSubnets": "10.0.0.0/8"}));
        assert!(msg.starts_with("shapedSubnets: "), "{msg}");
        let msg = refused(json!({"shapedSubnets": ["10.0.0.0/8"], "unshapedSubnets": ["::/0"]}));
        assert!(
            msg.starts_with("shapedSubnets: ") && msg.contains("together"),
            "{msg}"
        );
    }

    #[test]
    fn the_confs_subnets_go_with_the_runtimes_rates() {
        let c = parse(json!({
            "unshapedSubnets": ["10.0.0.0/8"],
            "capabilities": {"bandwidth": true},
            "runtimeConfig": {"bandwidth": {"ingressRate": 8000, "ingressBurst": 16000}}
        }))
        .unwrap();
        assert_eq!(c.rates_from, Source::Runtime);
        assert!(c.spec.ingress.is_some());
        assert_eq!(
            c.spec.subnets,
            Subnets::Except(vec!["10.0.0.0/8".parse().unwrap()])
        );
    }

    #[test]
    fn a_runtime_bandwidth_that_is_not_an_object_is_refused() {
        let msg = refused(json!({"runtimeConfig": {"bandwidth": [1]}}));
        assert!(msg.starts_with("runtimeConfig.bandwidth: "), "{msg}");
    }
}
