//! berth-bandwidth, and the reference `bandwidth` (Debian's
//! /usr/lib/cni/bandwidth), chained after a bridge plugin in real
//! namespaces (root), with rates measured by iperf3.
//!
//! Each test builds a private "host" namespace (the plugins run there, so
//! its bridge, veths, ifbs and qdiscs are the test's own) joined by a veth
//! to an "outside" namespace standing for another machine, with routes
//! both ways and no masquerade: the outside reaches the containers' subnet
//! through the host, containers reach the outside through their gateway.
//! iperf3 runs between a container and the outside: container to outside
//! is egress, outside to container is ingress. The outside has two
//! addresses, `.2` in the lower half of its link's /24 and `.130` in the
//! upper half, for `shapedSubnets` / `unshapedSubnets`. Deleting the
//! namespaces removes whatever a failed test left.
//!
//! Limits differ between the two directions (10 and 50 Mbit/s), so a
//! shaper that swapped them would fail. Measured rates must be within 10%
//! of the limit; TCP's goodput is about 4.5% under it (headers count
//! against the limit), UDP's about 3%.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_tests::bandwidth::*;
use berth_tests::*;
use serde_json::{json, Value};

const BW: &str = "berth-bandwidth";
const MBIT: u64 = 1_000_000;
/// The burst of every limit: 512 kbit (64 KiB), enough for TCP to keep
/// its pace at 10 and 50 Mbit/s.
const BURST: u64 = 512 * 1024;
/// What a flow no limit holds must reach: well above the highest limit
/// the tests set (50 Mbit/s). Such flows are sent at 400 Mbit/s.
const FREE: u64 = 200 * MBIT;

fn reference(name: &str) -> PathBuf {
    let p = Path::new(REFERENCE_CNI_DIR).join(name);
    assert!(
        p.is_file(),
        "{} not found: install the reference plugins (apt-get install containernetworking-plugins)",
        p.display()
    );
    p
}

/// The rate-limit plugin under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shaper {
    Berth,
    Reference,
}

impl Shaper {
    fn bin(self) -> PathBuf {
        match self {
            Shaper::Berth => bin(BW),
            Shaper::Reference => reference("bandwidth"),
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Shaper::Berth => BW,
            Shaper::Reference => "bandwidth",
        }
    }
}

/// The plugin that makes the container's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// berth-bridge with berth-ipam.
    Berth,
    /// The reference `bridge` with `host-local`.
    Reference,
}

/// `{ingressRate, ingressBurst, egressRate, egressBurst}` for the limits
/// given (in bit/s), each with [`BURST`].
fn limits(ingress: Option<u64>, egress: Option<u64>) -> Value {
    let mut v = json!({});
    if let Some(r) = ingress {
        v["ingressRate"] = json!(r);
        v["ingressBurst"] = json!(BURST);
    }
    if let Some(r) = egress {
        v["egressRate"] = json!(r);
        v["egressBurst"] = json!(BURST);
    }
    v
}

/// `base` with `extra`'s keys added (replacing).
fn merged(base: &Value, extra: &Value) -> Value {
    let mut c = base.clone();
    for (k, v) in extra.as_object().expect("extra keys are an object") {
        c[k] = v.clone();
    }
    c
}

struct Fx {
    host: TestNetns,
    outside: TestNetns,
    run: TempDir,
    data: TempDir,
    /// The network's name (the bridge plugin's and the shaper's).
    name: String,
    bridge: String,
    version: &'static str,
    link: Link,
    subnet: String,
    /// The outside's addresses: `.2` (in `near_half`) and `.130` (not).
    out_a: IpAddr,
    out_b: IpAddr,
    /// The lower /25 of the outside link's subnet: holds `out_a` only.
    near_half: String,
}

/// A container on the fixture's bridge.
struct Container {
    ns: TestNetns,
    cid: String,
    /// The bridge plugin's result.
    prev: Value,
    /// The host end of its veth.
    veth: String,
    addr: IpAddr,
}

impl Fx {
    fn new(tag: &str, version: &'static str, link: Link) -> Fx {
        require_root();
        require_tools();
        let host = TestNetns::new(&format!("{tag}h"));
        let outside = TestNetns::new(&format!("{tag}o"));
        let l = link_outside(&host, &outside);
        let (subnet, _) = unique_subnets();
        let IpAddr::V4(a) = l.out_v4 else {
            unreachable!()
        };
        let o = a.octets();
        let out_b = IpAddr::from([o[0], o[1], o[2], 130]);
        let near_half = format!("{}.{}.{}.0/25", o[0], o[1], o[2]);
        outside.sh(&format!(
            "ip addr add {out_b}/24 dev eth0 && ip route add {subnet} via {}",
            l.host_v4
        ));
        Fx {
            host,
            outside,
            run: TempDir::new(&format!("{tag}-run")),
            data: TempDir::new(&format!("{tag}-data")),
            name: format!("bwt{}-{}", std::process::id(), next_id()),
            bridge: unique_name("bwbr", IFNAMSIZ_MAX),
            version,
            link,
            subnet,
            out_a: l.out_v4,
            out_b,
            near_half,
        }
    }

    /// Runs a plugin in the host namespace for container `cid` (ifname
    /// eth0), `netns` as CNI_NETNS ("" for none).
    fn exec(
        &self,
        bin: &Path,
        command: &str,
        cid: &str,
        netns: &str,
        conf: &Value,
    ) -> PluginOutput {
        let path = format!("{}:{REFERENCE_CNI_DIR}", bin_dir().display());
        let env = [
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
            ("BERTH_RUN_DIR", self.run.path().to_str().unwrap()),
        ];
        run_plugin_in(&self.host, bin, command, &env, conf)
    }

    fn link_bin(&self) -> PathBuf {
        match self.link {
            Link::Berth => bin(BRIDGE_BIN),
            Link::Reference => reference("bridge"),
        }
    }

    fn bridge_conf(&self) -> Value {
        let data = self.data.path().to_str().unwrap();
        let (ty, ipam) = match self.link {
            Link::Berth => ("berth-bridge", "berth-ipam"),
            Link::Reference => ("bridge", "host-local"),
        };
        json!({
            "cniVersion": self.version, "name": self.name, "type": ty,
            "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": ipam, "dataDir": data,
                     "ranges": [[{"subnet": self.subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        })
    }

    /// A new container on the bridge.
    fn attach(&self, tag: &str) -> Container {
        let ns = TestNetns::new(tag);
        ns.sh("ip link set lo up");
        let cid = format!("{tag}-{}-{}", std::process::id(), next_id());
        let out = self.exec(
            &self.link_bin(),
            "ADD",
            &cid,
            ns.path_str(),
            &self.bridge_conf(),
        );
        let prev = out.expect_ok().clone();
        let veth = prev["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i.get("sandbox").is_none_or(|s| s == ""))
            .filter_map(|i| i["name"].as_str())
            .find(|n| *n != self.bridge)
            .unwrap_or_else(|| panic!("no host veth in {prev}"))
            .to_string();
        let addr = result_address(&prev, true);
        Container {
            ns,
            cid,
            prev,
            veth,
            addr,
        }
    }

    /// Pings both ways between the container and the outside's addresses:
    /// the routed path the measurements take works.
    fn assert_reachable(&self, c: &Container) {
        assert_eq!(
            self.host.sh("sysctl -n net.ipv4.ip_forward").trim(),
            "1",
            "the bridge plugin did not enable forwarding in the host namespace"
        );
        for out in [self.out_a, self.out_b] {
            assert_ping(&c.ns, &out.to_string());
            assert_ping(&self.outside, &c.addr.to_string());
        }
    }

    /// The shaper's config for this network, with `extra`'s keys.
    fn bw_conf(&self, shaper: Shaper, extra: Value) -> Value {
        merged(
            &json!({"cniVersion": self.version, "name": self.name, "type": shaper.type_name()}),
            &extra,
        )
    }

    /// Runs the shaper for container `c` with `conf` (its prevResult
    /// already in it, or none).
    fn bw(&self, shaper: Shaper, command: &str, c: &Container, conf: &Value) -> PluginOutput {
        self.exec(&shaper.bin(), command, &c.cid, c.ns.path_str(), conf)
    }

    /// ADD of the shaper with `extra` keys, prevResult the bridge's.
    fn shape(&self, shaper: Shaper, c: &Container, extra: Value) -> PluginOutput {
        let conf = with_prev_result(&self.bw_conf(shaper, extra), &c.prev);
        self.bw(shaper, "ADD", c, &conf)
    }

    /// DEL in reverse order: the shaper (prevResult its own result), then
    /// the bridge plugin.
    fn detach(&self, shaper: Shaper, c: &Container, extra: Value, bw_result: &Value) {
        let conf = with_prev_result(&self.bw_conf(shaper, extra), bw_result);
        self.bw(shaper, "DEL", c, &conf).assert_ok();
        let conf = with_prev_result(&self.bridge_conf(), &c.prev);
        self.exec(&self.link_bin(), "DEL", &c.cid, c.ns.path_str(), &conf)
            .assert_ok();
    }

    /// Measures a flow from the container to `to` (egress).
    fn egress(&self, c: &Container, to: IpAddr, flow: Flow) -> f64 {
        measure(&c.ns, &self.outside, to, &flow)
    }

    /// Measures a flow from `from` to the container (ingress).
    fn ingress(&self, c: &Container, from: IpAddr, flow: Flow) -> f64 {
        measure(&c.ns, &self.outside, from, &flow.reversed())
    }

    /// Both directions with `protos`, each within 10% of its limit.
    fn assert_limited(
        &self,
        what: &str,
        c: &Container,
        ingress: u64,
        egress: u64,
        protos: &[Proto],
    ) {
        for &p in protos {
            let r = self.ingress(c, self.out_a, Flow::limited(p, ingress));
            assert_near(r, ingress, &format!("{what}: {p} ingress"));
            let r = self.egress(c, self.out_a, Flow::limited(p, egress));
            assert_near(r, egress, &format!("{what}: {p} egress"));
        }
    }

    /// Both directions with `protos`, far above any limit.
    fn assert_unlimited(&self, what: &str, c: &Container, remote: IpAddr, protos: &[Proto]) {
        for &p in protos {
            let r = self.ingress(c, remote, Flow::unlimited(p));
            assert_above(r, FREE, &format!("{what}: {p} ingress from {remote}"));
            let r = self.egress(c, remote, Flow::unlimited(p));
            assert_above(r, FREE, &format!("{what}: {p} egress to {remote}"));
        }
    }
}

/// The ifb an ADD result adds: the result is prevResult's interfaces plus
/// one host-side interface (no sandbox), with prevResult's ips and routes.
fn added_ifb(prev: &Value, result: &Value) -> String {
    let before = prev["interfaces"].as_array().unwrap();
    let after = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no interfaces: {result}"));
    assert_eq!(
        after.len(),
        before.len() + 1,
        "one interface added: {result}"
    );
    for (a, b) in after.iter().zip(before) {
        assert_eq!(a["name"], b["name"], "{result}");
        assert_eq!(a["mac"], b["mac"], "{result}");
        assert_eq!(a.get("sandbox"), b.get("sandbox"), "{result}");
    }
    assert_eq!(result["ips"], prev["ips"], "ips passed through");
    assert_eq!(result["routes"], prev["routes"], "routes passed through");
    let ifb = after.last().unwrap();
    assert!(
        ifb.get("sandbox").is_none_or(|s| s == ""),
        "the ifb is host-side: {ifb}"
    );
    ifb["name"].as_str().unwrap().to_string()
}

/// berth's ifb name: "bw" + 12 hex digits.
fn assert_berth_ifb_name(name: &str) {
    let hex = name
        .strip_prefix("bw")
        .unwrap_or_else(|| panic!("{name} does not start with bw"));
    assert!(
        hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name} is not bw + 12 hex digits"
    );
}

/// The shaping one ADD made: a tbf of `ingress` at the root of the veth,
/// the veth's ingress redirected to `ifb`, a tbf of `egress` on the ifb.
fn assert_tbf_shaping(fx: &Fx, c: &Container, ifb: &str, ingress: u64, egress: u64) {
    assert_eq!(
        tbf_rate(&fx.host, &c.veth),
        Some(ingress),
        "{:?}",
        qdiscs(&fx.host, &c.veth)
    );
    assert_eq!(redirect_targets(&fx.host, &c.veth), vec![ifb.to_string()]);
    assert_eq!(
        tbf_rate(&fx.host, ifb),
        Some(egress),
        "{:?}",
        qdiscs(&fx.host, ifb)
    );
}

// ---------------------------------------------------------------------------
// limits measured

/// Two containers, one limited to 10 Mbit/s in and 50 out, the other the
/// other way round; TCP and UDP measured both ways on each. Then DEL
/// removes the ifbs.
fn limits_hold(shaper: Shaper, version: &'static str, tag: &str, both: bool) {
    let fx = Fx::new(tag, version, Link::Berth);
    let cases: &[(u64, u64)] = if both {
        &[(10 * MBIT, 50 * MBIT), (50 * MBIT, 10 * MBIT)]
    } else {
        &[(10 * MBIT, 50 * MBIT)]
    };
    let mut shaped = Vec::new();
    for (i, &(ingress, egress)) in cases.iter().enumerate() {
        let c = fx.attach(&format!("{tag}c{i}"));
        fx.assert_reachable(&c);
        let extra = limits(Some(ingress), Some(egress));
        let r = fx.shape(shaper, &c, extra.clone()).expect_ok().clone();
        let ifb = added_ifb(&c.prev, &r);
        if shaper == Shaper::Berth {
            assert_berth_ifb_name(&ifb);
            let alias = link_alias(&fx.host, &ifb);
            assert_eq!(
                alias,
                format!("berth-bandwidth {} {} eth0", fx.name, c.cid),
                "the ifb's alias"
            );
        }
        assert_tbf_shaping(&fx, &c, &ifb, ingress, egress);
        shaped.push((c, extra, r, ifb, ingress, egress));
    }
    assert_eq!(ifbs(&fx.host).len(), shaped.len());
    for (c, _, _, _, ingress, egress) in &shaped {
        fx.assert_limited(
            &format!("{shaper:?} in {}M out {}M", ingress / MBIT, egress / MBIT),
            c,
            *ingress,
            *egress,
            &[Proto::Tcp, Proto::Udp],
        );
    }
    for (c, extra, r, ifb, _, _) in shaped {
        fx.detach(shaper, &c, extra, &r);
        assert!(!ifbs(&fx.host).contains(&ifb), "DEL removed {ifb}");
    }
    assert!(ifbs(&fx.host).is_empty());
}

/// berth-bridge + berth-bandwidth at 10 and 50 Mbit/s, TCP and UDP, both
/// directions.
#[test]
fn berth_bandwidth_limits_tcp_and_udp_both_ways() {
    limits_hold(Shaper::Berth, "1.1.0", "bwlim", true);
}

/// berth-bridge + the reference bandwidth plugin, measured the same way:
/// the measurement itself is sound (and the two plugins interoperate).
#[test]
fn reference_bandwidth_after_berth_bridge_limits_both_ways() {
    limits_hold(Shaper::Reference, "1.0.0", "bwref", false);
}

/// The reference bridge (host-local) + berth-bandwidth: limited both ways.
#[test]
fn berth_bandwidth_after_the_reference_bridge() {
    let fx = Fx::new("bwrb", "1.0.0", Link::Reference);
    let c = fx.attach("bwrbc");
    fx.assert_reachable(&c);
    let extra = limits(Some(10 * MBIT), Some(50 * MBIT));
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifb = added_ifb(&c.prev, &r);
    assert_berth_ifb_name(&ifb);
    assert_tbf_shaping(&fx, &c, &ifb, 10 * MBIT, 50 * MBIT);
    fx.assert_limited(
        "reference bridge + berth-bandwidth",
        &c,
        10 * MBIT,
        50 * MBIT,
        &[Proto::Tcp, Proto::Udp],
    );
    fx.bw(
        Shaper::Berth,
        "CHECK",
        &c,
        &with_prev_result(&fx.bw_conf(Shaper::Berth, extra.clone()), &r),
    )
    .assert_ok();
    fx.detach(Shaper::Berth, &c, extra, &r);
    assert!(ifbs(&fx.host).is_empty());
}

/// With no rates the plugin is a pass-through: its result is prevResult,
/// nothing changes in the host namespace, and nothing holds the traffic.
#[test]
fn no_limits_is_a_pass_through() {
    let fx = Fx::new("bwnone", "1.1.0", Link::Berth);
    let c = fx.attach("bwnonec");
    fx.assert_reachable(&c);
    let before = tc_snapshot(&fx.host);
    for extra in [
        json!({}),
        json!({"ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0}),
        json!({"capabilities": {"bandwidth": true}, "runtimeConfig": {"bandwidth": {}}}),
    ] {
        let r = fx
            .shape(Shaper::Berth, &c, extra.clone())
            .expect_ok()
            .clone();
        assert_eq!(r["interfaces"], c.prev["interfaces"], "{extra}: {r}");
        assert_eq!(r["ips"], c.prev["ips"], "{extra}: {r}");
        assert_eq!(tc_snapshot(&fx.host), before, "{extra}: something was made");
    }
    assert!(ifbs(&fx.host).is_empty());
    assert_eq!(root_qdisc(&fx.host, &c.veth), None);
    fx.assert_unlimited("no limits", &c, fx.out_a, &[Proto::Tcp, Proto::Udp]);
    fx.detach(Shaper::Berth, &c, json!({}), &c.prev);
}

/// `shapedSubnets`: only traffic with the subnet's addresses is limited
/// (the source of what comes in, the destination of what goes out).
#[test]
fn shaped_subnets_limit_only_their_traffic() {
    let fx = Fx::new("bwss", "1.1.0", Link::Berth);
    let c = fx.attach("bwssc");
    fx.assert_reachable(&c);
    let mut extra = limits(Some(10 * MBIT), Some(10 * MBIT));
    extra["shapedSubnets"] = json!([fx.near_half]);
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    for dev in [c.veth.as_str(), ifb.as_str()] {
        assert_eq!(
            root_qdisc(&fx.host, dev).map(|q| q["kind"].clone()),
            Some(json!("htb")),
            "{dev}: {:?}",
            qdiscs(&fx.host, dev)
        );
        assert!(
            htb_class_rates(&fx.host, dev).contains(&(10 * MBIT)),
            "{dev}"
        );
    }
    let what = format!("shapedSubnets {}", fx.near_half);
    fx.assert_limited(&what, &c, 10 * MBIT, 10 * MBIT, &[Proto::Tcp]);
    fx.assert_unlimited(&what, &c, fx.out_b, &[Proto::Tcp]);
    fx.bw(
        Shaper::Berth,
        "CHECK",
        &c,
        &with_prev_result(&fx.bw_conf(Shaper::Berth, extra.clone()), &r),
    )
    .assert_ok();
    fx.detach(Shaper::Berth, &c, extra, &r);
    assert!(ifbs(&fx.host).is_empty());
}

/// `unshapedSubnets`: all traffic but that with the subnet's addresses is
/// limited.
#[test]
fn unshaped_subnets_limit_all_other_traffic() {
    let fx = Fx::new("bwus", "1.1.0", Link::Berth);
    let c = fx.attach("bwusc");
    fx.assert_reachable(&c);
    let mut extra = limits(Some(10 * MBIT), Some(10 * MBIT));
    extra["unshapedSubnets"] = json!([fx.near_half]);
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    let what = format!("unshapedSubnets {}", fx.near_half);
    fx.assert_unlimited(&what, &c, fx.out_a, &[Proto::Tcp]);
    let p = Proto::Tcp;
    let rate = fx.ingress(&c, fx.out_b, Flow::limited(p, 10 * MBIT));
    assert_near(
        rate,
        10 * MBIT,
        &format!("{what}: {p} ingress from {}", fx.out_b),
    );
    let rate = fx.egress(&c, fx.out_b, Flow::limited(p, 10 * MBIT));
    assert_near(
        rate,
        10 * MBIT,
        &format!("{what}: {p} egress to {}", fx.out_b),
    );
    fx.detach(Shaper::Berth, &c, extra, &r);
    assert!(!ifbs(&fx.host).contains(&ifb));
}

/// The limits as containerd sends them, in `runtimeConfig.bandwidth` with
/// Go's field names; and the conf's own keys winning over the runtime's.
#[test]
fn runtime_config_with_go_field_names() {
    let fx = Fx::new("bwrt", "1.1.0", Link::Berth);
    let c = fx.attach("bwrtc");
    fx.assert_reachable(&c);
    let extra = json!({
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {
            "IngressRate": 10 * MBIT, "IngressBurst": BURST,
            "EgressRate": 50 * MBIT, "EgressBurst": BURST}}
    });
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    assert_tbf_shaping(&fx, &c, &ifb, 10 * MBIT, 50 * MBIT);
    fx.assert_limited(
        "runtimeConfig.bandwidth",
        &c,
        10 * MBIT,
        50 * MBIT,
        &[Proto::Tcp],
    );
    fx.detach(Shaper::Berth, &c, extra, &r);

    // The conf's keys win: the runtime's are not used at all, as in the
    // reference (so no egress limit here).
    let c = fx.attach("bwrtc2");
    let mut extra = limits(Some(20 * MBIT), None);
    extra["capabilities"] = json!({"bandwidth": true});
    extra["runtimeConfig"] = json!({"bandwidth": {
        "IngressRate": 50 * MBIT, "IngressBurst": BURST,
        "EgressRate": 50 * MBIT, "EgressBurst": BURST}});
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    assert_eq!(r["interfaces"], c.prev["interfaces"], "no ifb: {r}");
    assert_eq!(tbf_rate(&fx.host, &c.veth), Some(20 * MBIT));
    let shown = inspected_limits(&fx, &c);
    assert_eq!(shown["ingress"]["rate"], 20 * MBIT, "{shown:#}");
    assert!(shown["egress"].is_null(), "{shown:#}");
    assert!(redirect_targets(&fx.host, &c.veth).is_empty());
    assert!(ifbs(&fx.host).is_empty());
    fx.detach(Shaper::Berth, &c, extra, &r);

    // containerd's burst for a pod's annotations: math.MaxUint32 bits.
    let c = fx.attach("bwrtc3");
    let extra = json!({
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {
            "IngressRate": 10 * MBIT, "IngressBurst": 4294967295u64,
            "EgressRate": 10 * MBIT, "EgressBurst": 4294967295u64}}
    });
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    assert_tbf_shaping(&fx, &c, &ifb, 10 * MBIT, 10 * MBIT);
    fx.detach(Shaper::Berth, &c, extra, &r);
    assert!(ifbs(&fx.host).is_empty());
}

/// A repeated ADD replaces the limits (the same ifb, new rates); one with
/// fewer limits removes the others, one with none removes everything.
/// `berth inspect`'s limits of `c`'s attachment: what the kernel holds.
fn inspected_limits(fx: &Fx, c: &Container) -> Value {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", fx.host.name(), "env"])
        .arg(format!("BERTH_RUN_DIR={}", fx.run.path().display()))
        .arg(bin("berth"))
        .args(["inspect", &c.cid, "-o", "json", "--data-dir"])
        .arg(fx.data.path())
        .arg("--engine-state")
        .arg(fx.run.path().join("engine"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["attachments"][0]["limits"].clone()
}

#[test]
fn a_repeated_add_replaces_the_limits() {
    let fx = Fx::new("bwre", "1.1.0", Link::Berth);
    let c = fx.attach("bwrec");
    fx.assert_reachable(&c);
    let r1 = fx
        .shape(Shaper::Berth, &c, limits(Some(10 * MBIT), Some(10 * MBIT)))
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r1);
    assert_tbf_shaping(&fx, &c, &ifb, 10 * MBIT, 10 * MBIT);
    let shown = inspected_limits(&fx, &c);
    for dir in ["ingress", "egress"] {
        assert_eq!(shown[dir]["rate"], 10 * MBIT, "{shown:#}");
        assert_eq!(shown[dir]["bySubnet"], false, "{shown:#}");
        // tbf keeps the burst in bytes: what it gives back is close.
        let burst = shown[dir]["burst"].as_u64().unwrap();
        assert!(burst.abs_diff(BURST) <= BURST / 50, "{shown:#}");
    }

    let extra = limits(Some(50 * MBIT), Some(50 * MBIT));
    let r2 = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    assert_eq!(added_ifb(&c.prev, &r2), ifb, "the same ifb");
    assert_eq!(ifbs(&fx.host), vec![ifb.clone()]);
    assert_tbf_shaping(&fx, &c, &ifb, 50 * MBIT, 50 * MBIT);
    fx.assert_limited(
        "after a repeated ADD",
        &c,
        50 * MBIT,
        50 * MBIT,
        &[Proto::Tcp],
    );
    fx.bw(
        Shaper::Berth,
        "CHECK",
        &c,
        &with_prev_result(&fx.bw_conf(Shaper::Berth, extra), &r2),
    )
    .assert_ok();

    // Ingress only: the egress limit and its ifb go.
    let r3 = fx
        .shape(Shaper::Berth, &c, limits(Some(20 * MBIT), None))
        .expect_ok()
        .clone();
    assert_eq!(r3["interfaces"], c.prev["interfaces"], "no ifb: {r3}");
    assert_eq!(tbf_rate(&fx.host, &c.veth), Some(20 * MBIT));
    let shown = inspected_limits(&fx, &c);
    assert_eq!(shown["ingress"]["rate"], 20 * MBIT, "{shown:#}");
    assert!(shown["egress"].is_null(), "{shown:#}");
    assert!(redirect_targets(&fx.host, &c.veth).is_empty());
    assert!(!has_ingress_qdisc(&fx.host, &c.veth));
    assert!(ifbs(&fx.host).is_empty());

    // Egress only: the veth's root tbf goes.
    let r4 = fx
        .shape(Shaper::Berth, &c, limits(None, Some(10 * MBIT)))
        .expect_ok()
        .clone();
    let ifb4 = added_ifb(&c.prev, &r4);
    assert_eq!(root_qdisc(&fx.host, &c.veth), None);
    assert_eq!(redirect_targets(&fx.host, &c.veth), vec![ifb4.clone()]);
    assert_eq!(tbf_rate(&fx.host, &ifb4), Some(10 * MBIT));

    // None: everything goes.
    let r5 = fx.shape(Shaper::Berth, &c, json!({})).expect_ok().clone();
    assert_eq!(r5["interfaces"], c.prev["interfaces"]);
    assert_eq!(root_qdisc(&fx.host, &c.veth), None);
    assert!(!has_ingress_qdisc(&fx.host, &c.veth));
    assert!(ifbs(&fx.host).is_empty());
    assert_eq!(
        inspected_limits(&fx, &c),
        json!({"ingress": null, "egress": null})
    );
    fx.assert_unlimited("after an ADD without limits", &c, fx.out_a, &[Proto::Tcp]);
    fx.detach(Shaper::Berth, &c, json!({}), &r5);
}

// ---------------------------------------------------------------------------
// CHECK, DEL, GC

fn assert_check_fails(fx: &Fx, c: &Container, conf: &Value, why: &str) {
    let out = fx.bw(Shaper::Berth, "CHECK", c, conf);
    assert!(!out.success(), "CHECK passed though {why}: {out}");
    assert!(
        out.error_code().is_some(),
        "CHECK failed without a CNI error: {out}"
    );
    eprintln!("bandwidth: CHECK after {why}: {:?}", out.error_msg());
}

/// CHECK passes after ADD, and fails when the config asks other rates, or
/// a qdisc or the redirect was deleted behind the plugin's back.
#[test]
fn check_passes_after_add_and_fails_when_the_shaping_is_gone() {
    let fx = Fx::new("bwck", "1.1.0", Link::Berth);
    let c = fx.attach("bwckc");
    let extra = limits(Some(10 * MBIT), Some(50 * MBIT));
    let add = |fx: &Fx| -> Value {
        let r = fx
            .shape(Shaper::Berth, &c, extra.clone())
            .expect_ok()
            .clone();
        let conf = with_prev_result(&fx.bw_conf(Shaper::Berth, extra.clone()), &r);
        fx.bw(Shaper::Berth, "CHECK", &c, &conf).assert_ok();
        conf
    };
    let conf = add(&fx);
    let ifb = added_ifb(&c.prev, &conf["prevResult"]);

    let mut other = conf.clone();
    other["ingressRate"] = json!(20 * MBIT);
    assert_check_fails(&fx, &c, &other, "a config with another ingress rate");
    let mut other = conf.clone();
    other["egressRate"] = json!(20 * MBIT);
    assert_check_fails(&fx, &c, &other, "a config with another egress rate");
    let mut other = conf.clone();
    other["egressBurst"] = json!(2 * BURST);
    assert_check_fails(&fx, &c, &other, "a config with another egress burst");

    fx.host.sh(&format!("tc qdisc del dev {} root", c.veth));
    assert_check_fails(&fx, &c, &conf, "the veth's root qdisc was deleted");
    let conf = add(&fx);
    fx.host.sh(&format!("tc qdisc del dev {ifb} root"));
    assert_check_fails(&fx, &c, &conf, "the ifb's root qdisc was deleted");
    let conf = add(&fx);
    fx.host.sh(&format!("tc qdisc del dev {} ingress", c.veth));
    assert_check_fails(&fx, &c, &conf, "the veth's ingress qdisc was deleted");
    let conf = add(&fx);
    fx.host.sh(&format!("ip link del dev {ifb}"));
    assert_check_fails(&fx, &c, &conf, "the ifb was deleted");
    let conf = add(&fx);
    let r = conf["prevResult"].clone();
    fx.detach(Shaper::Berth, &c, extra, &r);
}

/// DEL needs no netns (CNI_NETNS empty, as a runtime sends it when the
/// container is gone): it removes the ifb and the veth's qdiscs.
#[test]
fn del_without_netns_removes_the_ifb() {
    let fx = Fx::new("bwdn", "1.1.0", Link::Berth);
    let c = fx.attach("bwdnc");
    let before = tc_snapshot(&fx.host);
    let extra = limits(Some(10 * MBIT), Some(10 * MBIT));
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    assert_eq!(ifbs(&fx.host), vec![ifb.clone()]);
    let conf = with_prev_result(&fx.bw_conf(Shaper::Berth, extra), &r);
    fx.exec(&Shaper::Berth.bin(), "DEL", &c.cid, "", &conf)
        .assert_ok();
    assert!(ifbs(&fx.host).is_empty(), "DEL without netns left {ifb}");
    assert_eq!(root_qdisc(&fx.host, &c.veth), None);
    assert!(!has_ingress_qdisc(&fx.host, &c.veth));
    assert_eq!(tc_snapshot(&fx.host), before, "DEL left something");
    // Again, without netns: nothing to do.
    fx.exec(&Shaper::Berth.bin(), "DEL", &c.cid, "", &conf)
        .assert_ok();

    // The container's namespace gone first (its veth with it), then DEL
    // without netns and without prevResult.
    let c2 = fx.attach("bwdnc2");
    let r2 = fx
        .shape(Shaper::Berth, &c2, limits(None, Some(10 * MBIT)))
        .expect_ok()
        .clone();
    let ifb2 = added_ifb(&c2.prev, &r2);
    let cid2 = c2.cid.clone();
    drop(c2);
    fx.exec(
        &Shaper::Berth.bin(),
        "DEL",
        &cid2,
        "",
        &fx.bw_conf(Shaper::Berth, json!({})),
    )
    .assert_ok();
    assert!(!ifbs(&fx.host).contains(&ifb2), "DEL left {ifb2}");
    let conf = with_prev_result(&fx.bridge_conf(), &c.prev);
    fx.exec(&fx.link_bin(), "DEL", &c.cid, c.ns.path_str(), &conf)
        .assert_ok();
}

/// DEL twice is fine, also with a config the ADD would refuse (a DEL
/// after a refused ADD).
#[test]
fn del_twice_is_fine() {
    let fx = Fx::new("bwd2", "1.1.0", Link::Berth);
    let c = fx.attach("bwd2c");
    let extra = limits(Some(10 * MBIT), Some(10 * MBIT));
    let r = fx
        .shape(Shaper::Berth, &c, extra.clone())
        .expect_ok()
        .clone();
    let conf = with_prev_result(&fx.bw_conf(Shaper::Berth, extra), &r);
    for _ in 0..2 {
        fx.bw(Shaper::Berth, "DEL", &c, &conf).assert_ok();
        assert!(ifbs(&fx.host).is_empty());
    }
    let bad = fx.bw_conf(
        Shaper::Berth,
        json!({"ingressRate": -1, "shapedSubnets": ["x"]}),
    );
    fx.bw(Shaper::Berth, "DEL", &c, &bad).assert_ok();
    // Never added at all.
    let c2 = fx.attach("bwd2c2");
    fx.bw(
        Shaper::Berth,
        "DEL",
        &c2,
        &with_prev_result(&conf, &c2.prev),
    )
    .assert_ok();
    fx.detach(Shaper::Berth, &c, json!({}), &r);
    fx.detach(Shaper::Berth, &c2, json!({}), &c2.prev);
}

fn gc_conf(fx: &Fx, valid: &[&Container]) -> Value {
    let list: Vec<Value> = valid
        .iter()
        .map(|c| json!({"containerID": c.cid, "ifname": "eth0"}))
        .collect();
    json!({"cniVersion": "1.1.0", "name": fx.name, "type": BW,
           "cni.dev/valid-attachments": list})
}

/// GC with `cni.dev/valid-attachments` deletes the ifbs of this network's
/// other attachments, and keeps the listed ones' and other networks'.
#[test]
fn gc_removes_only_the_ifbs_of_unlisted_attachments() {
    let fx = Fx::new("bwgc", "1.1.0", Link::Berth);
    let egress = limits(None, Some(10 * MBIT));
    let mut shaped = Vec::new();
    for tag in ["bwgck", "bwgcd", "bwgce"] {
        let c = fx.attach(tag);
        let r = fx
            .shape(Shaper::Berth, &c, egress.clone())
            .expect_ok()
            .clone();
        let ifb = added_ifb(&c.prev, &r);
        shaped.push((c, r, ifb));
    }
    // An attachment of another network (its shaper's name differs).
    let o = fx.attach("bwgco");
    let mut other_conf = fx.bw_conf(Shaper::Berth, egress.clone());
    other_conf["name"] = json!(format!("{}-other", fx.name));
    let ro = fx
        .bw(
            Shaper::Berth,
            "ADD",
            &o,
            &with_prev_result(&other_conf, &o.prev),
        )
        .expect_ok()
        .clone();
    let other_ifb = added_ifb(&o.prev, &ro);
    assert_eq!(ifbs(&fx.host).len(), 4);

    let keep = &shaped[0];
    fx.exec(
        &Shaper::Berth.bin(),
        "GC",
        "",
        "",
        &gc_conf(&fx, &[&keep.0]),
    )
    .assert_ok();
    let mut expected = vec![keep.2.clone(), other_ifb.clone()];
    expected.sort();
    assert_eq!(
        ifbs(&fx.host),
        expected,
        "GC kept the listed and the other network's"
    );
    assert_eq!(tbf_rate(&fx.host, &keep.2), Some(10 * MBIT));
    let kconf = with_prev_result(&fx.bw_conf(Shaper::Berth, egress.clone()), &keep.1);
    fx.bw(Shaper::Berth, "CHECK", &keep.0, &kconf).assert_ok();
    // Again: nothing more to do.
    fx.exec(
        &Shaper::Berth.bin(),
        "GC",
        "",
        "",
        &gc_conf(&fx, &[&keep.0]),
    )
    .assert_ok();
    assert_eq!(ifbs(&fx.host), expected);

    for (c, r, _) in &shaped {
        fx.detach(Shaper::Berth, c, egress.clone(), r);
    }
    let oconf = with_prev_result(&other_conf, &ro);
    fx.bw(Shaper::Berth, "DEL", &o, &oconf).assert_ok();
    fx.detach(Shaper::Berth, &o, json!({}), &o.prev);
    assert!(ifbs(&fx.host).is_empty());
}

/// A host can run the reference bandwidth plugin for some containers
/// (a network being migrated): berth's GC leaves its ifbs ("bwp" + hex,
/// no alias) alone, and its containers keep their egress.
#[test]
fn gc_leaves_the_reference_plugins_ifbs_alone() {
    let fx = Fx::new("bwgr", "1.0.0", Link::Berth);
    let c = fx.attach("bwgrc");
    let extra = limits(Some(10 * MBIT), Some(10 * MBIT));
    let r = fx
        .shape(Shaper::Reference, &c, extra.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    assert_eq!(ifbs(&fx.host), vec![ifb.clone()]);
    fx.exec(&Shaper::Berth.bin(), "GC", "", "", &gc_conf(&fx, &[]))
        .assert_ok();
    assert_eq!(
        ifbs(&fx.host),
        vec![ifb.clone()],
        "berth's GC deleted the reference plugin's ifb {ifb} (its container's egress \
         is now redirected to nothing)"
    );
    assert_ping(&c.ns, &fx.out_a.to_string());
    fx.detach(Shaper::Reference, &c, extra, &r);
}

// ---------------------------------------------------------------------------
// refused input

/// Each bad input: code 7 naming the key, and nothing made (no ifb, no
/// qdisc or filter, every link of the host namespace as it was).
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let fx = Fx::new("bwbad", "1.1.0", Link::Berth);
    let c = fx.attach("bwbadc");
    let before = tc_snapshot(&fx.host);
    let good = limits(Some(10 * MBIT), Some(10 * MBIT));
    let with = |extra: Value| merged(&good, &extra);
    // (what, the key the error must name, the conf's extra keys)
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "negative rate",
            "ingressRate",
            with(json!({"ingressRate": -1})),
        ),
        (
            "negative burst",
            "egressBurst",
            with(json!({"egressBurst": -8})),
        ),
        (
            "zero rate with a burst",
            "egressRate",
            with(json!({"egressRate": 0})),
        ),
        (
            "a burst without its rate",
            "ingressRate",
            json!({"ingressBurst": BURST}),
        ),
        (
            "a rate without its burst",
            "egressBurst",
            json!({"egressRate": 10 * MBIT}),
        ),
        (
            "a rate that is not a whole number",
            "egressRate",
            with(json!({"egressRate": 1.5})),
        ),
        (
            "a burst that is not a number",
            "ingressBurst",
            with(json!({"ingressBurst": "64k"})),
        ),
        (
            "a subnet that does not parse",
            "shapedSubnets",
            with(json!({"shapedSubnets": ["10.1.0.0/33"]})),
        ),
        (
            "an unshaped subnet that does not parse",
            "unshapedSubnets",
            with(json!({"unshapedSubnets": ["10.1.0.0/16", "not-a-subnet"]})),
        ),
        (
            "shapedSubnets with unshapedSubnets",
            "shapedSubnets",
            with(json!({"shapedSubnets": ["10.1.0.0/16"], "unshapedSubnets": ["10.2.0.0/16"]})),
        ),
        (
            "a rate under a byte a second",
            "ingressRate",
            with(json!({"ingressRate": 7})),
        ),
        (
            "a burst of 4 GiB",
            "egressBurst",
            with(json!({"egressBurst": 4u64 << 33})),
        ),
        (
            "a rate whose queue overflows tbf's 32 bits",
            "ingressRate",
            with(json!({"ingressRate": 2_000_000_000_000u64})),
        ),
        (
            "a burst under the link's MTU",
            "ingressBurst",
            with(json!({"ingressBurst": 8000})),
        ),
        (
            "a subnet burst longer than htb holds",
            "egressBurst",
            with(json!({"egressRate": 8, "egressBurst": 4294967295u64,
                        "shapedSubnets": ["10.1.0.0/16"]})),
        ),
        (
            "a valid egress with a bad ingress",
            "ingressRate",
            with(json!({"ingressRate": 1})),
        ),
        (
            "a valid ingress with a bad egress",
            "egressBurst",
            with(json!({"egressBurst": 100})),
        ),
        (
            "a negative rate from the runtime",
            "runtimeConfig.bandwidth.ingressRate",
            json!({"capabilities": {"bandwidth": true},
                   "runtimeConfig": {"bandwidth": {"IngressRate": -5, "IngressBurst": BURST}}}),
        ),
        (
            "a burst without its rate from the runtime",
            "runtimeConfig.bandwidth.egressRate",
            json!({"capabilities": {"bandwidth": true},
                   "runtimeConfig": {"bandwidth": {"EgressRate": 0, "EgressBurst": BURST}}}),
        ),
    ];
    let assert_refused = |what: &str, key: &str, out: &PluginOutput| {
        out.expect_error(7);
        let msg = out.error_msg().unwrap_or_default();
        assert!(
            msg.to_lowercase().contains(&key.to_lowercase()),
            "{what}: the error does not name {key}: {out}"
        );
        assert!(ifbs(&fx.host).is_empty(), "{what}: an ifb was made");
        assert_eq!(tc_snapshot(&fx.host), before, "{what}: something changed");
        eprintln!("bandwidth: refused {what}: {msg}");
    };
    for (what, key, extra) in &cases {
        let out = fx.shape(Shaper::Berth, &c, extra.clone());
        assert_refused(what, key, &out);
    }
    // Both subnet keys named when given together.
    let out = fx.shape(Shaper::Berth, &c, cases[9].2.clone());
    assert!(
        out.error_msg()
            .unwrap_or_default()
            .contains("unshapedSubnets"),
        "{out}"
    );

    // Numbers above what a uint64 holds (JSON serde_json cannot write).
    for (key, raw) in [
        ("ingressRate", "18446744073709551616"),
        ("egressBurst", "100000000000000000000000"),
    ] {
        let mut conf = with_prev_result(&fx.bw_conf(Shaper::Berth, good.clone()), &c.prev);
        conf[key] = json!("@BIG@");
        let text = serde_json::to_string(&conf)
            .unwrap()
            .replace("\"@BIG@\"", raw);
        let path = format!("{}:{REFERENCE_CNI_DIR}", bin_dir().display());
        let env = [
            ("CNI_CONTAINERID", c.cid.as_str()),
            ("CNI_NETNS", c.ns.path_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
            ("BERTH_RUN_DIR", fx.run.path().to_str().unwrap()),
        ];
        let out = run_plugin_in_raw(&fx.host, &Shaper::Berth.bin(), "ADD", &env, text.as_bytes());
        assert_refused(&format!("{key} = {raw}"), key, &out);
    }

    // After all that, the good config works, and its DEL leaves nothing.
    let r = fx
        .shape(Shaper::Berth, &c, good.clone())
        .expect_ok()
        .clone();
    let ifb = added_ifb(&c.prev, &r);
    assert_tbf_shaping(&fx, &c, &ifb, 10 * MBIT, 10 * MBIT);
    let conf = with_prev_result(&fx.bw_conf(Shaper::Berth, good.clone()), &r);
    fx.bw(Shaper::Berth, "DEL", &c, &conf).assert_ok();
    assert_eq!(tc_snapshot(&fx.host), before);
    fx.detach(Shaper::Berth, &c, good, &r);
}

/// An ADD whose prevResult names no host-side interface (berth-host's
/// loopback-only mode; a result with only the sandbox's interface; no
/// prevResult at all) is a clear error naming prevResult, and makes
/// nothing. Without limits it passes the result through.
#[test]
fn no_host_side_interface_is_a_clear_error() {
    let fx = Fx::new("bwnh", "1.1.0", Link::Berth);
    let good = limits(Some(10 * MBIT), Some(10 * MBIT));

    // berth-host, mode none: `lo` in the container only.
    let lo_ns = TestNetns::new("bwnhlo");
    let lo_cid = format!("bwnhlo-{}-{}", std::process::id(), next_id());
    let host_conf = json!({"cniVersion": "1.1.0", "name": fx.name, "type": "berth-host",
                           "mode": "none"});
    let lo_result = fx
        .exec(
            &bin("berth-host"),
            "ADD",
            &lo_cid,
            lo_ns.path_str(),
            &host_conf,
        )
        .expect_ok()
        .clone();
    let lo = Container {
        ns: lo_ns,
        cid: lo_cid,
        prev: lo_result.clone(),
        veth: String::new(),
        addr: IpAddr::from([127, 0, 0, 1]),
    };
    let before = tc_snapshot(&fx.host);
    let out = fx.shape(Shaper::Berth, &lo, good.clone());
    out.expect_error(7);
    assert!(
        out.error_msg().unwrap_or_default().contains("prevResult"),
        "{out}"
    );
    eprintln!("bandwidth: after berth-host none: {:?}", out.error_msg());
    assert_eq!(tc_snapshot(&fx.host), before);
    let r = fx.shape(Shaper::Berth, &lo, json!({})).expect_ok().clone();
    assert_eq!(r["interfaces"], lo_result["interfaces"], "{r}");

    // A bridge result with the sandbox's interface only.
    let c = fx.attach("bwnhc");
    let before = tc_snapshot(&fx.host);
    let mut sandbox_only = c.prev.clone();
    let eth0: Vec<Value> = c.prev["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_some_and(|s| s != ""))
        .cloned()
        .collect();
    assert_eq!(eth0.len(), 1);
    sandbox_only["interfaces"] = json!(eth0);
    for ip in sandbox_only["ips"].as_array_mut().unwrap() {
        ip["interface"] = json!(0);
    }
    let conf = with_prev_result(&fx.bw_conf(Shaper::Berth, good.clone()), &sandbox_only);
    let out = fx.bw(Shaper::Berth, "ADD", &c, &conf);
    out.expect_error(7);
    assert!(
        out.error_msg().unwrap_or_default().contains("prevResult"),
        "{out}"
    );
    eprintln!("bandwidth: sandbox interface only: {:?}", out.error_msg());
    assert_eq!(tc_snapshot(&fx.host), before);

    // No prevResult at all.
    let out = fx.bw(
        Shaper::Berth,
        "ADD",
        &c,
        &fx.bw_conf(Shaper::Berth, good.clone()),
    );
    out.expect_error(7);
    assert!(
        out.error_msg().unwrap_or_default().contains("prevResult"),
        "{out}"
    );
    assert_eq!(tc_snapshot(&fx.host), before);

    fx.exec(
        &bin("berth-host"),
        "DEL",
        &lo.cid,
        lo.ns.path_str(),
        &host_conf,
    )
    .assert_ok();
    fx.detach(Shaper::Berth, &c, json!({}), &c.prev);
}
