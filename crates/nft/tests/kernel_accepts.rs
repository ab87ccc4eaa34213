//! The rendered rulesets, loaded into a real kernel (a network namespace of the test's own):
//! nft accepts the full script, every incremental step, and the removal.

use std::io::Write;
use std::process::{Command, Stdio};

use rvs_model::{BuildOptions, ObjectSet, Snapshot, Sourced};
use rvs_nft::{render, Before, Existing, Family, RenderOptions, Ruleset};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns() -> Option<Netns> {
    let name = format!("rvs-nft-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
        return None;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIPPED: nft (Debian package nftables) is not installed");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        return None;
    }
    Some(Netns(name))
}

fn nft(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn list(ns: &Netns) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn snapshot(yaml: &str) -> Snapshot {
    let mut objects = ObjectSet::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        let origin = Default::default();
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => objects.services.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).unwrap()),
            }),
            Some("EndpointSlice") => objects.endpoint_slices.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).unwrap()),
            }),
            _ => {}
        }
    }
    let options = BuildOptions {
        node_name: Some("node1".into()),
        ..Default::default()
    };
    let (snapshot, problems) = Snapshot::build(&objects, &options, None);
    assert!(problems.is_empty(), "{problems:?}");
    snapshot
}

use serde::Deserialize;

const RICH: &str = include_str!("fixtures/rich.yaml");

#[test]
fn kernel_accepts_full_incremental_and_removal_scripts() {
    let Some(ns) = netns() else { return };
    let options = RenderOptions {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        ..Default::default()
    };
    let first = render(&snapshot(RICH), &options);
    let full = first.script(Before::Listed(&Default::default()));
    nft(&ns, &full).unwrap_or_else(|e| panic!("full script refused: {e}\n{full}"));
    let listed = list(&ns);
    for expected in [
        "table ip rvs",
        "table ip6 rvs",
        "numgen inc mod 2",
        "jhash ip saddr mod 4093 seed 0x72767321",
        "masquerade",
        "reject with tcp reset",
    ] {
        assert!(
            listed.contains(expected),
            "{expected:?} missing from:\n{listed}"
        );
    }

    // Scale web down to one endpoint and drop the sticky Service.
    let second_yaml = RICH.replace("  - addresses: [10.244.2.11]\n    nodeName: node2\n", "");
    let second_yaml = second_yaml
        .split("# --- sticky")
        .next()
        .unwrap()
        .to_string();
    let second = render(&snapshot(&second_yaml), &options);
    let step = second.script(Before::Applied(&first));
    assert!(
        !step.contains("service-ips {") || step.len() < full.len() / 2,
        "incremental, not a rewrite"
    );
    nft(&ns, &step).unwrap_or_else(|e| panic!("incremental script refused: {e}\n{step}"));
    assert!(
        !list(&ns).contains("sticky"),
        "stale chains and sets removed"
    );

    // A full resync against what the kernel lists is accepted too, and idempotent.
    let mut existing = std::collections::BTreeMap::new();
    existing.insert(Family::Ip, Existing::default());
    let again = second.script(Before::Listed(&existing));
    nft(&ns, &again).unwrap_or_else(|e| panic!("resync refused: {e}"));
    assert_eq!(
        second.script(Before::Applied(&second)),
        "",
        "no change, no script"
    );

    // A hashing Service switched to rr, then removed: its Maglev map points at endpoint
    // chains, so the map must go before the chains (the kernel counts its references).
    let switched_yaml = second_yaml.replace(
        "annotations: {rvs.io/scheduler: mh}",
        "annotations: {rvs.io/scheduler: rr}",
    );
    let third = render(&snapshot(&switched_yaml), &options);
    let step = third.script(Before::Applied(&second));
    nft(&ns, &step).unwrap_or_else(|e| panic!("mh -> rr refused: {e}\n{step}"));
    assert!(!list(&ns).contains("hash-4093"), "Maglev map removed");
    let back = render(&snapshot(&second_yaml), &options);
    nft(&ns, &back.script(Before::Applied(&third))).unwrap();
    let without_local: String = second_yaml
        .split("---")
        .filter(|d| !d.contains("name: local"))
        .collect::<Vec<_>>()
        .join("---");
    let fourth = render(&snapshot(&without_local), &options);
    let step = fourth.script(Before::Applied(&back));
    nft(&ns, &step).unwrap_or_else(|e| panic!("removing an mh Service refused: {e}\n{step}"));
    // And a full resync over what the kernel has (names only) is accepted as well.
    nft(&ns, &fourth.script(Before::Listed(&Default::default()))).unwrap();

    nft(&ns, &Ruleset::delete_script(&Family::ALL)).unwrap();
    assert!(!list(&ns).contains("rvs"));
}
