//! Tests of the test-support library itself: the netns/link guards really
//! clean up (root), and `run_plugin` runs a plugin the way a runtime does.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use berth_tests::*;
use serde_json::json;

#[test]
fn netns_is_created_and_removed_on_drop() {
    require_root();
    let ns = TestNetns::new("support");
    let name = ns.name().to_string();
    assert!(name.starts_with(&format!("berth-t-{}-", std::process::id())));
    assert_eq!(ns.path(), PathBuf::from("/run/netns").join(&name));
    assert!(netns_exists(&name));
    assert!(run_ok("ip", &["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name.as_str())));

    // A fresh namespace has only lo.
    let links = ns.ip_json(&["link", "show"]);
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lo"]);
    assert!(ns.exec_ok(&["ip", "link", "show", "lo"]).contains("lo"));
    assert!(!ns.exec(&["false"]).status.success());

    drop(ns);
    assert!(!netns_exists(&name), "{name} still exists after drop");
    assert!(!run_ok("ip", &["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name.as_str())));
}

#[test]
fn netns_is_removed_when_the_test_panics() {
    require_root();
    let mut name = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = TestNetns::new("panic");
        name = ns.name().to_string();
        assert!(netns_exists(&name));
        panic!("deliberate");
    }));
    assert!(r.is_err());
    assert!(!name.is_empty());
    assert!(!netns_exists(&name), "{name} survived a panic");
}

#[test]
fn parallel_netns_names_do_not_collide() {
    require_root();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let v: Vec<TestNetns> = (0..3).map(|_| TestNetns::new("par")).collect();
                v.iter().map(|n| n.name().to_string()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = std::collections::HashSet::new();
    for h in handles {
        for n in h.join().unwrap() {
            assert!(!netns_exists(&n));
            assert!(all.insert(n));
        }
    }
    assert_eq!(all.len(), 12);
}

#[test]
fn link_guard_deletes_the_link() {
    require_root();
    let name = unique_name("bt", IFNAMSIZ_MAX);
    {
        let guard = LinkGuard::new(&name);
        run_ok(
            "ip",
            &["link", "add", "name", guard.name(), "type", "bridge"],
        );
        assert!(link_exists(&name));
        let j = ip_json(&["link", "show", "dev", &name]);
        assert_eq!(j[0]["ifname"], name.as_str());
    }
    assert!(!link_exists(&name), "{name} still exists after drop");
    // Dropping a guard for a link that is already gone is fine.
    drop(LinkGuard::new(&name));
}

/// A shell-script "plugin" that echoes what it was given.
fn fake_plugin(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("fake-plugin");
    std::fs::write(
        &path,
        r#"#!/bin/sh
input=$(cat)
if [ "$CNI_COMMAND" = FAIL ]; then
    echo "something broke" >&2
    printf '{"cniVersion":"1.1.0","code":7,"msg":"bad config","details":"x"}\n'
    exit 1
fi
printf '{"command":"%s","containerid":"%s","netns":"%s","ifname":"%s","path":"%s","home":"%s","nvars":%s,"stdin":%s}\n' \
  "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "${HOME:-}" \
  "$(env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' -e '^BERTH_LOG=' | wc -l)" "$input"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn run_plugin_uses_a_cleared_environment() {
    let dir = TempDir::new("fake");
    let bin = fake_plugin(&dir);
    let out = run_plugin(
        &bin,
        "ADD",
        &[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/p"),
        ],
        &json!({"cniVersion": "1.1.0", "name": "n", "type": "fake"}),
    );
    let j = out.expect_ok();
    assert_eq!(j["command"], "ADD");
    assert_eq!(j["containerid"], "c1");
    assert_eq!(j["netns"], "/run/netns/x");
    assert_eq!(j["ifname"], "eth0");
    assert_eq!(j["path"], "/p");
    assert_eq!(j["home"], "", "HOME leaked into the plugin's environment");
    // PATH + CNI_COMMAND + the 4 given vars
    assert_eq!(j["nvars"], 6);
    assert_eq!(j["stdin"]["name"], "n");
}

#[test]
fn run_plugin_reports_cni_errors() {
    let dir = TempDir::new("fake");
    let bin = fake_plugin(&dir);
    let out = run_plugin(&bin, "FAIL", &[], &json!({}));
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("something broke"));
    out.expect_error(7);
    assert_eq!(out.error_msg(), Some("bad config"));
}

#[test]
fn cni_builder_passes_container_env() {
    let dir = TempDir::new("fake");
    fake_plugin(&dir);
    let cni = Cni::in_dir(dir.path(), "fake-plugin")
        .containerid("abc")
        .netns_path("/run/netns/zzz")
        .ifname("net1")
        .cni_path("/a:/b");
    let conf = json!({"cniVersion": "1.1.0", "name": "n"});
    for (cmd, out) in [
        ("ADD", cni.add(&conf)),
        ("DEL", cni.del(&conf)),
        ("CHECK", cni.check(&conf)),
    ] {
        let j = out.expect_ok();
        assert_eq!(j["command"], cmd);
        assert_eq!(j["containerid"], "abc");
        assert_eq!(j["netns"], "/run/netns/zzz");
        assert_eq!(j["ifname"], "net1");
        assert_eq!(j["path"], "/a:/b");
    }
}

#[test]
fn plugins_are_built() {
    // ./scripts/test builds the workspace's binaries before the tests.
    let dir = bin_dir();
    assert!(dir.join(BRIDGE_BIN).is_file());
    assert!(
        dir.join(IPAM_BIN).is_file(),
        "{} missing in {}",
        IPAM_BIN,
        dir.display()
    );
}
