//! The kernel's connection tracking table, through the `conntrack` tool (conntrack-tools,
//! which speaks ctnetlink): counting a real server's connections, and deleting stale UDP
//! entries as kube-proxy does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use tokio::process::Command;

/// ActiveConn / InActConn per (original destination, real server), IPVS style: established
/// TCP connections are active, every other entry (other TCP states, UDP) inactive.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnCounts {
    pub by_pair: HashMap<(SocketAddr, SocketAddr), (u64, u64)>,
}

/// Parses `conntrack -L` lines such as
/// `tcp 6 431999 ESTABLISHED src=10.244.1.10 dst=10.96.0.10 sport=40000 dport=80 src=10.244.2.11 dst=10.244.1.10 sport=8080 dport=40000 [ASSURED] mark=0 use=1`.
pub(crate) fn parse(listing: &str) -> ConnCounts {
    let mut counts = ConnCounts::default();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(proto) = fields.first() else {
            continue;
        };
        let established = *proto == "tcp" && fields.get(3) == Some(&"ESTABLISHED");
        let values = |key: &str| -> Vec<&str> {
            fields.iter().filter_map(|f| f.strip_prefix(key)).collect()
        };
        let (dst, dport, src, sport) = (
            values("dst="),
            values("dport="),
            values("src="),
            values("sport="),
        );
        // Original tuple first, reply tuple second.
        let (Some(orig_dst), Some(orig_dport), Some(reply_src), Some(reply_sport)) =
            (dst.first(), dport.first(), src.get(1), sport.get(1))
        else {
            continue;
        };
        let pair = (|| {
            let vip = SocketAddr::new(orig_dst.parse::<IpAddr>().ok()?, orig_dport.parse().ok()?);
            let server =
                SocketAddr::new(reply_src.parse::<IpAddr>().ok()?, reply_sport.parse().ok()?);
            Some((vip, server))
        })();
        if let Some(pair) = pair {
            let entry = counts.by_pair.entry(pair).or_insert((0, 0));
            if established {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    counts
}

pub(crate) async fn list() -> Option<ConnCounts> {
    let mut all = String::new();
    for family in ["ipv4", "ipv6"] {
        let out = Command::new("conntrack")
            .args(["-L", "-f", family])
            .output()
            .await
            .ok()?;
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Some(parse(&all))
}

/// Deletes UDP entries answered by `server`: the client's next datagram is scheduled afresh
/// instead of following a dead pod.
pub(crate) async fn delete_udp_to_server(server: SocketAddr) {
    let ip = server.ip().to_string();
    let port = server.port().to_string();
    let family = if server.is_ipv4() { "ipv4" } else { "ipv6" };
    run(&[
        "-D",
        "-f",
        family,
        "-p",
        "udp",
        "--reply-src",
        &ip,
        "--reply-port-src",
        &port,
    ])
    .await;
}

/// Deletes entries to a service port that were never DNATed (created before its rules or
/// while it had no endpoint): they would keep those clients away from its endpoints.
pub(crate) async fn delete_to_service(
    protocol: rvs_model::Protocol,
    vip: Option<IpAddr>,
    port: u16,
) {
    let port = port.to_string();
    let proto = match protocol {
        rvs_model::Protocol::Tcp => "tcp",
        rvs_model::Protocol::Udp => "udp",
    };
    match vip {
        Some(vip) => {
            let ip = vip.to_string();
            let family = if vip.is_ipv4() { "ipv4" } else { "ipv6" };
            run(&[
                "-D",
                "-f",
                family,
                "-p",
                proto,
                "--orig-dst",
                &ip,
                "--orig-port-dst",
                &port,
            ])
            .await;
        }
        // A NodePort: any node address, both families (conntrack defaults to IPv4 only).
        None => {
            for family in ["ipv4", "ipv6"] {
                run(&["-D", "-f", family, "-p", proto, "--orig-port-dst", &port]).await;
            }
        }
    }
}

async fn run(args: &[&str]) {
    // Exit status 1 only means nothing matched.
    match Command::new("conntrack").args(args).output().await {
        Ok(out) => {
            tracing::debug!(?args, deleted = %String::from_utf8_lossy(&out.stderr).trim(), "conntrack")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run conntrack (conntrack-tools): stale UDP entries stay until they time out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_as_active_and_the_rest_inactive() {
        let listing = "\
tcp      6 431999 ESTABLISHED src=10.244.1.10 dst=10.96.0.10 sport=40000 dport=80 src=10.244.2.11 dst=10.244.1.10 sport=8080 dport=40000 [ASSURED] mark=0 use=1
tcp      6 119 TIME_WAIT src=10.244.1.10 dst=10.96.0.10 sport=40001 dport=80 src=10.244.2.11 dst=10.244.1.10 sport=8080 dport=40001 [ASSURED] mark=0 use=1
udp      17 29 src=10.244.1.10 dst=10.96.0.12 sport=5000 dport=53 src=10.244.1.11 dst=10.244.1.10 sport=5353 dport=5000 mark=0 use=1
garbage line
";
        let c = parse(listing);
        let web = (
            "10.96.0.10:80".parse().unwrap(),
            "10.244.2.11:8080".parse().unwrap(),
        );
        let dns = (
            "10.96.0.12:53".parse().unwrap(),
            "10.244.1.11:5353".parse().unwrap(),
        );
        assert_eq!(c.by_pair[&web], (1, 1));
        assert_eq!(c.by_pair[&dns], (0, 1));
    }
}
