//! The `rvs` binary as a user runs it: real processes, real sockets on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn quickstart_serves_two_backends_and_shows_the_table() {
    let root = repo_root();
    let _a = spawn(&[
        "echo",
        "--name",
        "hello-a",
        "--listen",
        "127.0.0.1:18081",
        "--udp",
        "127.0.0.1:18091",
    ]);
    let _b = spawn(&[
        "echo",
        "--name",
        "hello-b",
        "--listen",
        "127.0.0.1:18082",
        "--udp",
        "127.0.0.1:18092",
    ]);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway_tls = format!("127.0.0.1:{}", free_port());
    let dir = root.join("examples/quickstart");
    let _rvs = spawn(&[
        "run",
        "-f",
        dir.to_str().unwrap(),
        "--admin",
        &admin.to_string(),
        "--nodeport-addresses",
        "127.0.0.1/32",
        "--http-listen",
        &gateway.to_string(),
        "--https-listen",
        &gateway_tls,
        "--access-log",
        "off",
    ]);
    wait_ready(admin);
    let vip: SocketAddr = "127.10.0.1:8080".parse().unwrap();
    eventually("echo backends up", Duration::from_secs(10), || {
        who(vip).is_some()
    });
    let mut seen: Vec<String> = (0..6).filter_map(|_| who(vip)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        vec!["hello-a", "hello-b"],
        "answers from both backends"
    );
    assert!(
        who("127.0.0.1:30080".parse().unwrap()).is_some(),
        "NodePort answers"
    );

    let sticky: SocketAddr = "127.10.0.2:8080".parse().unwrap();
    let first = who(sticky).unwrap();
    for _ in 0..4 {
        assert_eq!(who(sticky).unwrap(), first, "session affinity holds");
    }

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp.send_to(b"q", "127.10.0.3:5353").unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("hello-"),
        "UDP answered"
    );

    let ls = rvs_ls(admin, &[]);
    assert!(ls.status.success());
    let text = String::from_utf8_lossy(&ls.stdout);
    for expected in [
        "TCP  127.10.0.1:8080 rr",
        "default/hello:http",
        "-> 127.0.0.1:18081",
        "-> 127.0.0.1:18082",
        "UDP  127.10.0.3:5353",
        "wlc",
        "persistent 60",
    ] {
        assert!(
            text.contains(expected),
            "rvs ls shows {expected:?}:\n{text}"
        );
    }
    let json = rvs_ls(admin, &["--json"]);
    let table: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(table["services"].as_array().unwrap().len(), 4);

    // The L7 gateway serves the quickstart's Ingress (host hello.local) on the same pods.
    eventually("gateway up", Duration::from_secs(10), || {
        http_get_host(gateway, "/x", "hello.local").is_some_and(|(s, _)| s == 200)
    });
    let mut seen: Vec<String> = (0..6)
        .filter_map(|_| http_get_host(gateway, "/x", "hello.local"))
        .filter_map(|(_, body)| body.split_whitespace().next().map(str::to_string))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["hello-a", "hello-b"], "gateway: both pods");
    assert_eq!(
        http_get_host(gateway, "/x", "other.local").map(|(s, _)| s),
        Some(404),
        "unknown host"
    );

    let (status, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("nginx_ingress_controller_requests{controller_namespace=\"\",controller_class=\"rvs.io/ingress-controller\",controller_pod=\"\",host=\"hello.local\",status=\"200\",method=\"GET\",path=\"/\",namespace=\"default\",ingress=\"hello\",service=\"hello\",canary=\"\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("node_ipvs_backend_connections_active{local_address=\"127.10.0.1\",local_port=\"8080\",remote_address=\"127.0.0.1\",remote_port=\"18081\",proto=\"TCP\",local_mark=\"\"}"), "{metrics}");
    assert!(metrics.contains("rvs_config_last_reload_successful 1"));
}

#[test]
fn check_reports_each_problem_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {rvs.io/scheduler: fastest}}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.7
  ports: [{port: 70000}]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "kind: Service\n  bad: [indent\n",
    )
    .unwrap();
    let out = Command::new(RVS)
        .args(["check", "-f", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let bad = dir.path().join("bad.yaml");
    let bad = bad.display();
    let expected = [
        format!("{bad}: Service shop/web: metadata.annotations[rvs.io/scheduler]: \"fastest\" is not an IPVS scheduler"),
        format!("{bad}: Service shop/web: spec.clusterIP: \"10.96.0.300\" is not an IP address"),
        format!("{bad} (document 2): Service shop/api: spec.ports[0].port: 70000 is not a port number (1-65535)"),
    ];
    for e in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(e.as_str())),
            "missing {e:?} in:\n{text}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("broken.yaml") && l.contains("not valid YAML")),
        "{text}"
    );

    let good = Command::new(RVS)
        .args([
            "check",
            "-f",
            repo_root().join("examples/quickstart").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 127.30.0.1
  ports: [{name: http, port: 8080, targetPort: web}]
"#;

fn slice(name: &str, port: u16, ready: bool, serving: bool, terminating: bool) -> String {
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
  - addresses: [127.0.0.1]
    conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}
"#
    )
}

/// Writes a file atomically, as editors and kubectl-like tools do, so the watcher never sees
/// half a file.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn edits_apply_live_and_bad_edits_keep_the_last_good_configuration() {
    let (pa, pb) = (free_port(), free_port());
    let _a = echo_backend("pod-a", &format!("127.0.0.1:{pa}"));
    let _b = echo_backend("pod-b", &format!("127.0.0.1:{pb}"));
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("svc.yaml");
    let eps = dir.path().join("eps.yaml");
    write_file(&svc, SERVICE);
    write_file(&eps, &slice("web-1", pa, true, true, false));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut rvs = spawn(&[
        "run",
        "-f",
        dir.path().to_str().unwrap(),
        "--admin",
        &admin.to_string(),
    ]);
    wait_ready(admin);
    let vip: SocketAddr = "127.30.0.1:8080".parse().unwrap();
    eventually("pod-a serves", Duration::from_secs(10), || {
        who(vip).as_deref() == Some("pod-a")
    });

    // Scale up: the new endpoint takes connections within moments.
    write_file(
        &eps,
        &(slice("web-1", pa, true, true, false) + "---" + &slice("web-2", pb, true, true, false)),
    );
    eventually("pod-b added", Duration::from_secs(10), || {
        who(vip).as_deref() == Some("pod-b")
    });

    // Broken YAML: the file's last good objects keep serving, and the problem is reported.
    write_file(&eps, "endpoints: [unclosed\n");
    eventually("problem reported", Duration::from_secs(10), || {
        http_get(admin, "/api/v1/config")
            .is_some_and(|(_, b)| b.contains("eps.yaml") && b.contains("not valid YAML"))
    });
    let mut names: Vec<String> = (0..4).filter_map(|_| who(vip)).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        vec!["pod-a", "pod-b"],
        "still serving the last good endpoints"
    );

    // A Service edited to an invalid address is refused; its last good version stays.
    write_file(&svc, &SERVICE.replace("127.30.0.1", "127.30.0.999"));
    eventually("bad service reported", Duration::from_secs(10), || {
        http_get(admin, "/api/v1/config").is_some_and(|(_, b)| {
            b.contains(
                "Service default/web: spec.clusterIP: \\\"127.30.0.999\\\" is not an IP address",
            )
        })
    });
    assert!(who(vip).is_some(), "the last good Service keeps serving");

    // Terminating fallback: only terminating-but-serving endpoints left, they still serve.
    write_file(&svc, SERVICE);
    write_file(
        &eps,
        &(slice("web-1", pa, false, true, true) + "---" + &slice("web-2", pb, false, false, true)),
    );
    eventually(
        "fallback to serving terminating pod-a",
        Duration::from_secs(10),
        || {
            (0..4).filter_map(|_| who(vip)).all(|n| n == "pod-a")
                && String::from_utf8_lossy(&rvs_ls(admin, &[]).stdout).contains("terminating")
        },
    );

    // The log names the problems.
    rvs.0.kill().unwrap();
    let mut stderr = String::new();
    rvs.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("eps.yaml: not valid YAML"), "{stderr}");
}

#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("svc.yaml"),
        &SERVICE.replace("127.30.0.1", "127.30.1.1"),
    );
    write_file(
        &dir.path().join("eps.yaml"),
        &slice("web-1", port, true, true, false),
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut rvs = spawn(&[
        "run",
        "-f",
        dir.path().to_str().unwrap(),
        "--admin",
        &admin.to_string(),
        "--shutdown-grace",
        "10s",
    ]);
    wait_ready(admin);
    let vip: SocketAddr = "127.30.1.1:8080".parse().unwrap();
    // The backend keeps the first connection and closes any other at once: probes made
    // while rvs is stopping must not hold it up.
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = Some(first_tx);
        while let Ok((stream, _)) = backend.accept() {
            match first.take() {
                Some(tx) => {
                    let _ = tx.send(stream);
                }
                None => drop(stream),
            }
        }
    });
    let mut client = TcpStream::connect(vip).unwrap();
    let mut server_side = first_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let pid = rvs.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    eventually("listener closed", Duration::from_secs(5), || {
        TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_err()
    });
    // The open connection still carries data both ways.
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server_side.read_exact(&mut buf).unwrap();
    server_side.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    drop(client);
    drop(server_side);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rvs.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "rvs exits once its connections are done"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command and says whether it worked.
fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `--manage-vips`: rvs adds the VIP to the interface, serves it, and removes it when the
/// Service goes and when it stops. Runs in a network namespace of its own (needs root).
#[test]
fn manage_vips_adds_and_removes_addresses_in_a_namespace() {
    let ns = format!("rvs-test-{}", std::process::id());
    if !sh(&["ip", "netns", "add", &ns]) {
        println!(
            "SKIPPED manage_vips test: cannot create a network namespace (needs root and iproute2)"
        );
        return;
    }
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            sh(&["ip", "netns", "del", &self.0]);
        }
    }
    let _guard = Netns(ns.clone());
    assert!(sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]));
    let exec = |args: &[&str]| -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).args(args);
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let svc = SERVICE.replace("127.30.0.1", "10.77.0.1");
    write_file(&dir.path().join("svc.yaml"), &svc);
    write_file(
        &dir.path().join("eps.yaml"),
        &slice("web-1", 18500, true, true, false),
    );
    let _echo = Proc(
        exec(&[
            RVS,
            "echo",
            "--name",
            "pod-ns",
            "--listen",
            "127.0.0.1:18500",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut rvs = Proc(
        exec(&[
            RVS,
            "run",
            "-f",
            dir.path().to_str().unwrap(),
            "--admin",
            "127.0.0.1:9099",
            "--manage-vips",
            "lo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let addrs = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-n", &ns, "addr", "show", "dev", "lo"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    eventually("VIP added to lo", Duration::from_secs(15), || {
        addrs().contains("10.77.0.1/32")
    });
    // Traffic inside the namespace the test made: curl-like GET through the VIP.
    let fetch = || {
        let out = exec(&[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.77.0.1/8080; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ])
        .output()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    eventually(
        "served through the managed VIP",
        Duration::from_secs(10),
        || fetch().contains("pod-ns"),
    );

    // The Service goes: so does its address.
    std::fs::remove_file(dir.path().join("svc.yaml")).unwrap();
    eventually(
        "VIP removed with its Service",
        Duration::from_secs(10),
        || !addrs().contains("10.77.0.1"),
    );

    // Back again, then SIGTERM: rvs cleans up after itself.
    write_file(&dir.path().join("svc.yaml"), &svc);
    eventually("VIP re-added", Duration::from_secs(10), || {
        addrs().contains("10.77.0.1/32")
    });
    assert!(sh(&["kill", "-TERM", &rvs.0.id().to_string()]));
    let _ = rvs.0.wait();
    assert!(!addrs().contains("10.77.0.1"), "VIP removed on shutdown");
}

fn ingress(paths: &[(&str, &str)], annotations: &str) -> String {
    let mut yaml = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: rvs}}
spec: {{controller: rvs.io/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: default
  annotations: {{{annotations}}}
spec:
  ingressClassName: rvs
  rules:
    - host: shop.example.com
      http:
        paths:
"#
    );
    for (path, service) in paths {
        yaml.push_str(&format!(
            "          - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {{name: http}}}}}}}}\n"
        ));
    }
    yaml
}

fn web_service(name: &str, ip: &str, port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: web}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
  - addresses: [127.0.0.1]
"#
    )
}

/// `rvs run` with Ingresses: routes follow edits of the files, a bad edit keeps the last good
/// version, SIGHUP reopens the access log, SIGTERM drains.
#[test]
fn gateway_follows_edits_and_rotates_its_log() {
    let (pa, pb) = (free_port(), free_port());
    let _a = echo_backend("shop-a", &format!("127.0.0.1:{pa}"));
    let _b = echo_backend("cart-b", &format!("127.0.0.1:{pb}"));
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    write_file(
        &dir.path().join("svc.yaml"),
        &format!(
            "{}---{}",
            web_service("shop", "10.96.7.1", pa),
            web_service("cart", "10.96.7.2", pb)
        ),
    );
    let ing = dir.path().join("ingress.yaml");
    write_file(&ing, &ingress(&[("/", "shop")], ""));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut rvs = spawn(&[
        "run",
        "-f",
        dir.path().to_str().unwrap(),
        "--admin",
        &admin.to_string(),
        "--http-listen",
        &gateway.to_string(),
        "--https-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--access-log",
        log.to_str().unwrap(),
    ]);
    wait_ready(admin);
    let first_word = |path: &str| {
        http_get_host(gateway, path, "shop.example.com")
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, body)| body.split_whitespace().next().map(str::to_string))
    };
    eventually("gateway serves /", Duration::from_secs(10), || {
        first_word("/cart/1").as_deref() == Some("shop-a")
    });

    // A new path to another Service.
    write_file(&ing, &ingress(&[("/", "shop"), ("/cart", "cart")], ""));
    eventually("/cart goes to cart", Duration::from_secs(10), || {
        first_word("/cart/1").as_deref() == Some("cart-b")
    });
    assert_eq!(first_word("/").as_deref(), Some("shop-a"));

    // A bad value is refused; the last good version keeps serving both paths.
    write_file(
        &ing,
        &ingress(
            &[("/", "cart")],
            r#"nginx.ingress.kubernetes.io/proxy-read-timeout: "3x""#,
        ),
    );
    eventually("the refusal is reported", Duration::from_secs(10), || {
        http_get(admin, "/api/v1/config")
            .is_some_and(|(_, body)| body.contains("proxy-read-timeout") && body.contains("3x"))
    });
    assert_eq!(first_word("/").as_deref(), Some("shop-a"));
    assert_eq!(first_word("/cart/1").as_deref(), Some("cart-b"));
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("nginx_ingress_controller_config_last_reload_successful{")
            && l.ends_with("} 0")),
        "{metrics}"
    );

    // Rotation: move the log away, SIGHUP, and new lines go to a new file.
    eventually("access log written", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 3)
    });
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = rvs.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually(
        "a new log file after SIGHUP",
        Duration::from_secs(10),
        || {
            let _ = first_word("/after-rotation");
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/after-rotation"))
        },
    );
    let line = std::fs::read_to_string(&log).unwrap();
    let record: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(record["ingress"], "shop");
    assert_eq!(record["host"], "shop.example.com");
    assert_eq!(record["status"], 200);
    assert_eq!(record["request_id"].as_str().unwrap().len(), 32);

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while rvs.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "rvs exits on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gateway port already taken is reported (once in the log, and in /api/v1/config) while
/// the L4 side serves; it is retried on every poll.
#[test]
fn gateway_port_taken_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let port = free_port();
    let _backend = echo_backend("shop-a", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("svc.yaml"),
        &web_service("shop", "10.96.8.1", port),
    );
    write_file(
        &dir.path().join("ingress.yaml"),
        &ingress(&[("/", "shop")], ""),
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _rvs = spawn(&[
        "run",
        "-f",
        dir.path().to_str().unwrap(),
        "--admin",
        &admin.to_string(),
        "--http-listen",
        &taken_addr.to_string(),
        "--https-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    wait_ready(admin);
    eventually(
        "the taken port is reported",
        Duration::from_secs(10),
        || {
            http_get(admin, "/api/v1/config")
                .is_some_and(|(_, body)| body.contains(&format!("cannot listen on {taken_addr}")))
        },
    );
    drop(taken);
}
