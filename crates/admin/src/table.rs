//! `rvs ls`: the live table printed like `ipvsadm -Ln --stats`.

use std::fmt::Write;

use rvs_model::status::{ConnectionStatus, ServerDisplayState, ServiceTable, VirtualServiceStatus};

/// ipvsadm's width for `RemoteAddress:Port`; longer addresses widen the column.
const MIN_ADDRESS_WIDTH: usize = 28;

pub(crate) fn state_name(state: ServerDisplayState) -> &'static str {
    match state {
        ServerDisplayState::Ready => "ready",
        ServerDisplayState::Terminating => "terminating",
        ServerDisplayState::Quiesced => "quiesced",
        ServerDisplayState::Removed => "removed",
    }
}

/// Prints the table like `ipvsadm -Ln --stats`: one line per virtual service (protocol,
/// address, scheduler, its flags in parentheses, persistence, Kubernetes service) and one
/// aligned line per real server (weight, active and inactive connections, connections
/// scheduled, bytes in and out in ipvsadm's K/M/G, state).
pub fn format_table(table: &ServiceTable) -> String {
    let engine = if table.engine.is_empty() {
        "unknown"
    } else {
        table.engine.as_str()
    };
    let width = table
        .services
        .iter()
        .flat_map(|vs| vs.real_servers.iter().map(|rs| rs.address.chars().count()))
        .fold(MIN_ADDRESS_WIDTH, usize::max);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "rvs {engine} engine, config version {}",
        table.config_version
    );
    let _ = writeln!(out, "Prot LocalAddress:Port Scheduler Flags");
    write_row(
        &mut out,
        width,
        ["RemoteAddress:Port", "Weight", "ActiveConn", "InActConn"],
        ["Conns", "InBytes", "OutBytes"],
        "State",
    );
    for vs in &table.services {
        let _ = writeln!(out, "{}", service_line(vs));
        for rs in &vs.real_servers {
            write_row(
                &mut out,
                width,
                [
                    &rs.address,
                    &rs.weight.to_string(),
                    &rs.active_conns.to_string(),
                    &rs.inactive_conns.to_string(),
                ],
                [
                    &rs.connections.to_string(),
                    &human_bytes(rs.bytes_in),
                    &human_bytes(rs.bytes_out),
                ],
                state_name(rs.state),
            );
        }
    }
    out
}

fn service_line(vs: &VirtualServiceStatus) -> String {
    // `Protocol`'s Display ignores width, so pad its string.
    let protocol = vs.protocol.to_string();
    let mut line = format!("{protocol:<4} {} {}", vs.address, vs.scheduler);
    if !vs.scheduler_flags.is_empty() {
        let _ = write!(line, " ({})", vs.scheduler_flags.join(","));
    }
    if let Some(timeout) = vs.persistence_seconds {
        let _ = write!(line, " persistent {timeout}");
    }
    if !vs.service.is_empty() {
        let _ = write!(line, "   {}", vs.service);
    }
    line
}

/// Left-aligned address, weight and connection gauges (as ipvsadm), right-aligned counters.
fn write_row(out: &mut String, width: usize, left: [&str; 4], right: [&str; 3], state: &str) {
    let [address, weight, active, inactive] = left;
    let [conns, bytes_in, bytes_out] = right;
    let _ = writeln!(
        out,
        "  -> {address:<width$} {weight:<6} {active:<10} {inactive:<9} {conns:>10} {bytes_in:>9} {bytes_out:>9} {state}"
    );
}

/// Byte counts as ipvsadm abbreviates them: exact below 1000, then K, M, G, T, P, E in
/// powers of 1000, with one decimal below 10 of the unit (`1.2K`, `34K`, `567M`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if n < 1000 {
        return n.to_string();
    }
    let mut value = n as f64;
    for unit in UNITS {
        value /= 1000.0;
        // Rounded as printed; 999.7 would print as "1000", so it goes to the next unit.
        if value < 9.95 {
            return format!("{value:.1}{unit}");
        }
        if value < 999.5 {
            return format!("{value:.0}{unit}");
        }
    }
    format!("{value:.0}E")
}

/// Prints the connection table like `ipvsadm -Lnc`.
pub fn format_connections(conns: &[ConnectionStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rvs connection entries: {}", conns.len());
    let _ = writeln!(
        out,
        "pro  {:<11} {:>8}  {:<28} {:<28} destination",
        "state", "age", "source", "virtual"
    );
    for c in conns {
        let _ = writeln!(
            out,
            "{:<4} {:<11} {:>7}s  {:<28} {:<28} {}",
            c.protocol, c.state, c.age_seconds, c.client, c.virtual_address, c.real_server
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use rvs_model::status::{RealServerStatus, VirtualServiceStatus};
    use rvs_model::{FrontendKind, Protocol};

    use super::*;

    fn rs(address: &str, weight: u32, state: ServerDisplayState) -> RealServerStatus {
        RealServerStatus {
            address: address.to_string(),
            weight,
            active_conns: 0,
            inactive_conns: 0,
            connections: 0,
            bytes_in: 0,
            bytes_out: 0,
            state,
        }
    }

    #[test]
    fn sample_table() {
        let table = ServiceTable {
            engine: "userspace".to_string(),
            config_version: 3,
            services: vec![
                VirtualServiceStatus {
                    protocol: Protocol::Tcp,
                    address: "127.10.0.1:8080".to_string(),
                    kind: FrontendKind::ClusterIp,
                    service: "default/web:http".to_string(),
                    scheduler: "rr".to_string(),
                    scheduler_flags: vec![],
                    persistence_seconds: Some(10800),
                    real_servers: vec![
                        RealServerStatus {
                            active_conns: 2,
                            inactive_conns: 1,
                            connections: 12,
                            bytes_in: 1234,
                            bytes_out: 5321,
                            ..rs("127.0.0.1:18081", 1, ServerDisplayState::Ready)
                        },
                        rs("127.0.0.1:18082", 0, ServerDisplayState::Terminating),
                    ],
                },
                VirtualServiceStatus {
                    protocol: Protocol::Udp,
                    address: "[fd00::10]:53".to_string(),
                    kind: FrontendKind::ClusterIp,
                    service: "kube-system/dns:dns".to_string(),
                    scheduler: "mh".to_string(),
                    scheduler_flags: vec!["mh-fallback".to_string(), "mh-port".to_string()],
                    persistence_seconds: None,
                    real_servers: vec![RealServerStatus {
                        connections: 123_456_789,
                        bytes_in: 45_600_000,
                        bytes_out: 7_890_000_000_000,
                        ..rs(
                            "[fd00:1234:5678:9abc::53]:5353",
                            100,
                            ServerDisplayState::Removed,
                        )
                    }],
                },
            ],
            retired: Default::default(),
        };
        let expected = "\
rvs userspace engine, config version 3
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port             Weight ActiveConn InActConn      Conns   InBytes  OutBytes State
TCP  127.10.0.1:8080 rr persistent 10800   default/web:http
  -> 127.0.0.1:18081                1      2          1                 12      1.2K      5.3K ready
  -> 127.0.0.1:18082                0      0          0                  0         0         0 terminating
UDP  [fd00::10]:53 mh (mh-fallback,mh-port)   kube-system/dns:dns
  -> [fd00:1234:5678:9abc::53]:5353 100    0          0          123456789       46M      7.9T removed
";
        assert_eq!(format_table(&table), expected);
    }

    #[test]
    fn header_matches_ipvsadm_when_addresses_are_short() {
        let table = ServiceTable::default();
        let out = format_table(&table);
        assert_eq!(
            out,
            "rvs unknown engine, config version 0\n\
             Prot LocalAddress:Port Scheduler Flags\n  \
             -> RemoteAddress:Port           Weight ActiveConn InActConn      Conns   InBytes  OutBytes State\n"
        );
    }

    #[test]
    fn human_bytes_like_ipvsadm() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(999), "999");
        assert_eq!(human_bytes(1000), "1.0K");
        assert_eq!(human_bytes(1234), "1.2K");
        assert_eq!(human_bytes(9_949), "9.9K");
        assert_eq!(human_bytes(9_960), "10K");
        assert_eq!(human_bytes(999_499), "999K");
        assert_eq!(human_bytes(999_700), "1.0M");
        assert_eq!(human_bytes(45_600_000), "46M");
        assert_eq!(human_bytes(3_000_000_000), "3.0G");
        assert_eq!(human_bytes(u64::MAX), "18E");
    }
}
