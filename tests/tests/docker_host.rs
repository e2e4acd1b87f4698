//! berth-bridge on a host where Docker runs: Docker sets iptables' FORWARD
//! policy to DROP (iptables-nft, as on Debian 12) and loads br_netfilter,
//! which drops the traffic of every bridge it doesn't know. berth must work
//! there without a second plugin and without opening anything but its own
//! bridges.
//!
//! The "Docker host" is a network namespace of the test's own with
//! Docker's filter state (FORWARD policy DROP, FORWARD -> DOCKER-USER ->
//! RETURN, bridge-nf-call-iptables=1); berth-bridge runs inside it, so the
//! real host's ruleset and links are never touched. An "outside" namespace
//! on a second link has no route back to the containers, so a reply from it
//! proves masquerading.

use berth_tests::{bin, require_root, run, run_plugin_in, PluginOutput, TempDir, TestNetns};
use serde_json::{json, Value};
use std::process::Command;

const OUTSIDE: &str = "198.51.100.2";

fn ping(from: &TestNetns, addr: &str) -> bool {
    from.exec(&["busybox", "ping", "-c", "1", "-W", "2", addr])
        .status
        .success()
}

/// Runs berth-bridge inside `host` (so that namespace is its "host") as a
/// runtime would: cleared environment, CNI_* variables, config on stdin.
fn plugin_in(
    host: &TestNetns,
    command: &str,
    container: &TestNetns,
    dirs: &Dirs,
    conf: &Value,
) -> PluginOutput {
    named_plugin_in("berth-bridge", host, command, container, dirs, conf)
}

/// [`plugin_in`] for any plugin.
fn named_plugin_in(
    plugin: &str,
    host: &TestNetns,
    command: &str,
    container: &TestNetns,
    dirs: &Dirs,
    conf: &Value,
) -> PluginOutput {
    let env = [
        ("CNI_CONTAINERID", container.name()),
        ("CNI_NETNS", container.path_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", dirs.cni_path.as_str()),
        ("BERTH_RUN_DIR", &dirs.run.path().display().to_string()),
    ];
    run_plugin_in(host, &bin(plugin), command, &env, conf)
}

struct Dirs {
    cni_path: String,
    run: TempDir,
    _ipam: TempDir,
    conf: Value,
}

fn dirs() -> Dirs {
    let run = TempDir::new("docker-run");
    let ipam = TempDir::new("docker-ipam");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "dockerhost", "type": "berth-bridge",
        "bridge": "berthdk0", "isGateway": true, "ipMasq": true,
        "ipam": {"type": "berth-ipam", "dataDir": ipam.path(),
                 "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let cni_path = bin("berth-bridge").parent().unwrap().display().to_string();
    Dirs {
        cni_path,
        run,
        _ipam: ipam,
        conf,
    }
}

/// Docker's filter state as dockerd 20.10 leaves it with iptables-nft.
fn make_docker_host() -> TestNetns {
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let _ = run("modprobe", &["br_netfilter"]);
    }
    assert!(
        std::path::Path::new("/proc/sys/net/bridge").exists(),
        "br_netfilter is not available (modprobe br_netfilter)"
    );
    let host = TestNetns::new("dockerhost");
    host.sh("ip link set lo up && \
         sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 && \
         iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN && \
         iptables -P FORWARD DROP && iptables -I FORWARD -j DOCKER-USER");
    host
}

/// An "outside" namespace on its own link to the host, without a route to
/// the containers' subnet.
fn connect_outside(host: &TestNetns) -> TestNetns {
    let outside = TestNetns::new("outside");
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            "h2o",
            "netns",
            host.name(),
            "type",
            "veth",
            "peer",
            "name",
            "o2h",
            "netns",
            outside.name(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.sh("ip addr add 198.51.100.1/24 dev h2o && ip link set h2o up");
    outside.sh(&format!(
        "ip addr add {OUTSIDE}/24 dev o2h && ip link set o2h up && ip link set lo up"
    ));
    outside
}

fn berth_rule_handle(host: &TestNetns) -> Option<String> {
    let listing = host.sh("nft -a list chain ip filter DOCKER-USER");
    listing
        .lines()
        .find(|l| l.contains("berth: accept traffic of berth bridges"))
        .and_then(|l| l.rsplit("handle ").next())
        .map(|h| h.trim().to_string())
}

#[test]
fn containers_talk_and_masquerade_under_dockers_drop_policy() {
    require_root();
    let host = make_docker_host();
    let outside = connect_outside(&host);
    let (a, b) = (TestNetns::new("dk-a"), TestNetns::new("dk-b"));
    let d = dirs();

    let ra = plugin_in(&host, "ADD", &a, &d, &d.conf);
    let result_a = ra.expect_ok().clone();
    plugin_in(&host, "ADD", &b, &d, &d.conf).expect_ok();
    let ip_b = "10.77.0.3";

    // berth's exception is in DOCKER-USER, in a form iptables-nft (and so
    // Docker) still reads.
    let rules = host.sh("iptables -S DOCKER-USER");
    assert!(
        rules.contains("-m mark --mark 0x40000000/0x40000000") && rules.contains("-j ACCEPT"),
        "DOCKER-USER: {rules}"
    );
    assert!(host.sh("iptables-save").contains("DOCKER-USER"));

    assert!(ping(&a, ip_b), "container to container over the bridge");
    assert!(ping(&a, "10.77.0.1"), "container to its gateway");
    assert!(ping(&a, OUTSIDE), "container to the outside, masqueraded");

    // Control: the same setup without berth's exception is dropped by
    // Docker's policy, so the pings above passed because of it.
    let handle = berth_rule_handle(&host).expect("berth's rule in DOCKER-USER");
    host.sh(&format!(
        "nft delete rule ip filter DOCKER-USER handle {handle}"
    ));
    assert!(
        !ping(&a, ip_b),
        "without the exception br_netfilter + DROP must drop bridged traffic"
    );
    assert!(
        !ping(&a, OUTSIDE),
        "without the exception DROP must drop routed traffic"
    );

    // CHECK notices the missing exception (e.g. Docker started later).
    let mut check_conf = d.conf.clone();
    check_conf["prevResult"] = result_a;
    let chk = plugin_in(&host, "CHECK", &a, &d, &check_conf);
    chk.expect_error(107);
    assert!(
        chk.error_msg().unwrap_or_default().contains("DOCKER-USER"),
        "{chk}"
    );

    // DEL of both containers removes everything of berth's, and only that.
    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    plugin_in(&host, "DEL", &b, &d, &d.conf).assert_ok();
    assert!(berth_rule_handle(&host).is_none());
    let tables = host.sh("nft list tables");
    assert!(!tables.contains("inet berth"), "{tables}");
    assert!(host
        .sh("iptables -S DOCKER-USER")
        .contains("-A DOCKER-USER -j RETURN"));
    assert!(host.sh("iptables -S FORWARD").contains("-P FORWARD DROP"));
    drop(outside);
}

#[test]
fn exception_is_added_once_and_removed_with_the_last_network() {
    require_root();
    let host = make_docker_host();
    let (a, b) = (TestNetns::new("dk-c"), TestNetns::new("dk-d"));
    let d = dirs();
    let mut other = d.conf.clone();
    other["name"] = json!("dockerhost2");
    other["bridge"] = json!("berthdk1");
    other["ipam"]["ranges"] = json!([[{"subnet": "10.78.0.0/24"}]]);

    plugin_in(&host, "ADD", &a, &d, &d.conf).expect_ok();
    plugin_in(&host, "ADD", &b, &d, &other).expect_ok();
    let count = host
        .sh("iptables -S DOCKER-USER")
        .matches("berth: accept")
        .count();
    assert_eq!(count, 1, "one exception for all berth networks");

    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    assert!(
        berth_rule_handle(&host).is_some(),
        "still needed by the second network"
    );
    plugin_in(&host, "DEL", &b, &d, &other).assert_ok();
    assert!(berth_rule_handle(&host).is_none());
}

/// A port published by berth-portmap answers from outside under Docker's
/// drop policy and beside Docker's own NAT chains (berth's mark is what
/// lets it through: without the DOCKER-USER exception it is dropped), and
/// berth's DEL leaves Docker's rules as they were.
#[test]
fn published_port_works_beside_dockers_rules() {
    use berth_tests::{tcp_ask, PeerEcho};
    require_root();
    let host = make_docker_host();
    host.sh("iptables -t nat -N DOCKER && \
         iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER && \
         iptables -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER && \
         iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE && \
         iptables -t nat -A DOCKER -p tcp --dport 9999 -j DNAT --to-destination 172.17.0.2:80");
    let docker_nat = host.sh("iptables -t nat -S");
    let outside = connect_outside(&host);
    let a = TestNetns::new("dk-pm");
    let d = dirs();
    let result = plugin_in(&host, "ADD", &a, &d, &d.conf).expect_ok().clone();
    let _svc = PeerEcho::start(&a, 80, 53);
    let pm = json!({
        "cniVersion": "1.1.0", "name": "dockerhost", "type": "berth-portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
        "prevResult": result,
    });
    named_plugin_in("berth-portmap", &host, "ADD", &a, &d, &pm).assert_ok();
    let target: std::net::SocketAddr = "198.51.100.1:8080".parse().unwrap();
    assert_eq!(tcp_ask(&outside, target), Ok(format!("peer={OUTSIDE}")));

    let handle = berth_rule_handle(&host).expect("berth's rule in DOCKER-USER");
    host.sh(&format!(
        "nft delete rule ip filter DOCKER-USER handle {handle}"
    ));
    assert!(
        tcp_ask(&outside, target).is_err(),
        "Docker's drop policy let a published port through without the exception"
    );

    named_plugin_in("berth-portmap", &host, "DEL", &a, &d, &pm).assert_ok();
    plugin_in(&host, "DEL", &a, &d, &d.conf).assert_ok();
    assert_eq!(
        host.sh("iptables -t nat -S"),
        docker_nat,
        "Docker's NAT rules changed"
    );
    assert!(!host.sh("nft list tables").contains("inet berth"));
}
