//! The lab itself: the cluster network the kernel-engine tests rely on routes as a cluster
//! does, and leaves nothing behind.

#[path = "../../../tests/lab/mod.rs"]
mod lab;

use lab::Lab;

#[test]
fn lab_routes_pods_across_nodes_and_cleans_up() {
    if let Some(why) = Lab::unavailable() {
        println!("SKIPPED lab test: {why}");
        return;
    }
    let prefix;
    {
        let lab = Lab::build(2, 2).expect("build the lab");
        prefix = lab.prefix.clone();
        let from = &lab.nodes[0].pods[0];
        for to in lab.pods().filter(|p| p.name != from.name) {
            for target in [to.ip.to_string(), to.ip6.to_string()] {
                let out = lab.exec(&from.ns, "ping", &["-c1", "-W2", &target]);
                assert!(
                    out.status.success(),
                    "{} -> {} ({target}): {}",
                    from.name,
                    to.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let ext = lab.exec(
            &lab.ext_ns,
            "ping",
            &["-c1", "-W2", &lab.nodes[1].ip.to_string()],
        );
        assert!(ext.status.success(), "external client reaches node2");
    }
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&prefix),
        "namespaces removed"
    );
}
