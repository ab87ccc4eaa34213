//! deploy/ stays true to the binary: every argument the manifests pass is one rvs accepts,
//! and the RBAC grants what the API source watches. (CI also validates the manifests
//! against the Kubernetes 1.33 schemas with kubernetes-validate, strict.)

mod common;

use std::process::Command;

use common::*;
use serde_yaml::Value;

fn manifests() -> Vec<Value> {
    let dir = repo_root().join("deploy");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

use serde::Deserialize;

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn every_container_argument_is_accepted_by_rvs() {
    let docs = manifests();
    let mut checked = 0;
    for workload in of_kind(&docs, "DaemonSet")
        .into_iter()
        .chain(of_kind(&docs, "Deployment"))
    {
        let containers = workload["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        for container in containers {
            let args: Vec<String> = container["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            // Clap reports an unknown or malformed argument before it prints the help.
            let out = Command::new(RVS)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "the DaemonSet and the webhook Deployment");
}

#[test]
fn the_daemonset_probes_and_ports_match_its_arguments() {
    let docs = manifests();
    let ds = of_kind(&docs, "DaemonSet")[0];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let rvs = &pod["containers"][0];
    let args = serde_yaml::to_string(&rvs["args"]).unwrap();
    assert!(args.contains("--admin=0.0.0.0:10254"), "{args}");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(rvs[probe]["httpGet"]["port"], 10254, "{probe}");
    }
    assert_eq!(rvs["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(rvs["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The gateway drains for worker-shutdown-timeout (240 s) before the kubelet kills it.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 240);
}
