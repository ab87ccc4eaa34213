//! The kernel's connection tracking table over ctnetlink: counting a real server's
//! connections, and deleting stale entries as kube-proxy does.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::netlink;

/// ActiveConn / InActConn per (original destination, real server), IPVS style: established
/// TCP connections are active, every other entry (other TCP states, UDP) inactive.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnCounts {
    pub by_pair: HashMap<(SocketAddr, SocketAddr), (u64, u64)>,
}

/// One connection tracking entry: its protocol, original and reply tuples, TCP state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub protocol: u8,
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
    pub tcp_state: Option<u8>,
    pub zone: Option<u16>,
    /// The zone of the original direction, when zones are per direction.
    pub orig_zone: Option<u16>,
    /// The kernel's id of the entry: a delete names it, so that an entry made anew for the
    /// same tuple since the table was read is left alone.
    pub id: Option<u32>,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_ZONE: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// Counts `e` in ActiveConn (established TCP) or InActConn (the rest) of its (original
/// destination, real server), IPVS style.
fn count(counts: &mut ConnCounts, e: &Entry) {
    let entry = counts
        .by_pair
        .entry((e.orig_dst, e.reply_src))
        .or_insert((0, 0));
    if e.tcp_state == Some(TCP_CONNTRACK_ESTABLISHED) {
        entry.0 += 1;
    } else {
        entry.1 += 1;
    }
}

/// A frontend whose entries from before its rules are stale: protocol, address (None for a
/// NodePort: any local address) and port.
pub(crate) type Frontend = (rvs_model::Protocol, Option<IpAddr>, u16);

fn protocol_number(p: rvs_model::Protocol) -> u8 {
    match p {
        rvs_model::Protocol::Tcp => IPPROTO_TCP,
        rvs_model::Protocol::Udp => IPPROTO_UDP,
    }
}

/// Whether to delete `e`, as kube-proxy does: a UDP entry answered by a server that is gone
/// (the client's next datagram is scheduled afresh instead of following a dead pod), or an
/// entry to a new frontend that was never DNATed (created before its rules, or while it had
/// no endpoint: it would keep that client away from the endpoints).
pub(crate) fn is_stale(
    e: &Entry,
    gone_servers: &BTreeSet<SocketAddr>,
    new_frontends: &[Frontend],
) -> bool {
    let answered_by_gone = e.protocol == IPPROTO_UDP && gone_servers.contains(&e.reply_src);
    // Never DNATed: the reply comes from where the original went.
    let undnated = e.reply_src == e.orig_dst;
    let to_new_frontend = undnated
        && new_frontends.iter().any(|(protocol, vip, port)| {
            protocol_number(*protocol) == e.protocol
                && e.orig_dst.port() == *port
                && vip.is_none_or(|vip| vip == e.orig_dst.ip())
        });
    answered_by_gone || to_new_frontend
}

/// Deletions go out this many to a message buffer (one sendto, ~20 KiB for IPv4).
const DELETES_PER_SEND: usize = 256;

/// The connection tracking table of rvs's network namespace, over its own netlink socket
/// (ctnetlink), as kube-proxy reads and cleans it.
pub(crate) struct Conntrack {
    socket: netlink::Socket,
}

impl Conntrack {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<Conntrack> {
        Ok(Conntrack {
            socket: netlink::Socket::open()?,
        })
    }

    /// Hands every TCP and UDP entry, both families, to `each` (nothing of the table is
    /// kept: it may hold a million entries).
    fn for_each(&self, mut each: impl FnMut(Entry)) -> std::io::Result<()> {
        let mut request = netlink::Requests::default();
        // AF_UNSPEC: every family.
        request.push(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_GET,
            0,
            netlink::NLM_F_DUMP,
            |_| {},
        );
        self.socket.dump(&mut request.buf, |_, attrs| {
            if let Some(entry) = parse_entry(attrs) {
                each(entry);
            }
        })
    }

    /// ActiveConn / InActConn per (original destination, real server).
    pub fn counts(&self) -> std::io::Result<ConnCounts> {
        let mut counts = ConnCounts::default();
        self.for_each(|e| count(&mut counts, &e))?;
        Ok(counts)
    }

    /// Deletes the stale entries (`is_stale`); returns how many went.
    pub fn delete_stale(
        &self,
        gone_servers: &BTreeSet<SocketAddr>,
        new_frontends: &[Frontend],
    ) -> std::io::Result<usize> {
        let mut stale = Vec::new();
        self.for_each(|e| {
            if is_stale(&e, gone_servers, new_frontends) {
                stale.push(e);
            }
        })?;
        let mut deleted = 0;
        for chunk in stale.chunks(DELETES_PER_SEND) {
            deleted += self.delete(chunk)?;
        }
        Ok(deleted)
    }

    /// Deletes `entries` (those gone meanwhile are no error); returns how many it deleted.
    fn delete(&self, entries: &[Entry]) -> std::io::Result<usize> {
        let mut requests = netlink::Requests::default();
        for e in entries {
            let family = if e.orig_src.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            requests.push(
                NFNL_SUBSYS_CTNETLINK,
                IPCTNL_MSG_CT_DELETE,
                family as u8,
                0,
                |b| {
                    netlink::nested(b, CTA_TUPLE_ORIG, |b| {
                        netlink::nested(b, CTA_TUPLE_IP, |b| {
                            match (e.orig_src.ip(), e.orig_dst.ip()) {
                                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                                    netlink::attr(b, CTA_IP_V4_SRC, &src.octets());
                                    netlink::attr(b, CTA_IP_V4_DST, &dst.octets());
                                }
                                (src, dst) => {
                                    netlink::attr(b, CTA_IP_V6_SRC, &v6_octets(src));
                                    netlink::attr(b, CTA_IP_V6_DST, &v6_octets(dst));
                                }
                            }
                        });
                        netlink::nested(b, CTA_TUPLE_PROTO, |b| {
                            netlink::attr(b, CTA_PROTO_NUM, &[e.protocol]);
                            netlink::attr(b, CTA_PROTO_SRC_PORT, &e.orig_src.port().to_be_bytes());
                            netlink::attr(b, CTA_PROTO_DST_PORT, &e.orig_dst.port().to_be_bytes());
                        });
                        if let Some(zone) = e.orig_zone {
                            netlink::attr(b, CTA_TUPLE_ZONE, &zone.to_be_bytes());
                        }
                    });
                    if let Some(zone) = e.zone {
                        netlink::attr(b, CTA_ZONE, &zone.to_be_bytes());
                    }
                    if let Some(id) = e.id {
                        netlink::attr(b, CTA_ID, &id.to_be_bytes());
                    }
                },
            );
        }
        if requests.is_empty() {
            return Ok(0);
        }
        let errors = self.socket.send(&mut requests.buf)?;
        // ENOENT: the entry expired, or was made anew, meanwhile; ENOBUFS: answers (such
        // ENOENTs) were lost.
        if let Some((_, errno)) = errors
            .iter()
            .find(|(_, errno)| !matches!(*errno, libc::ENOENT | libc::ENOBUFS))
        {
            return Err(std::io::Error::from_raw_os_error(*errno));
        }
        Ok(entries.len().saturating_sub(errors.len()))
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A tuple's source and destination, from its `CTA_TUPLE_*` nest.
fn parse_tuple(data: &[u8]) -> Option<(u8, SocketAddr, SocketAddr, Option<u16>)> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, None, None);
    let mut zone = None;
    for (kind, payload) in netlink::attributes(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, addr) in netlink::attributes(payload) {
                    let ip = match addr.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
                        _ => continue,
                    };
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => {
                if let [a, b] = payload {
                    zone = Some(u16::from_be_bytes([*a, *b]));
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in netlink::attributes(payload) {
                    match (kind, value) {
                        (CTA_PROTO_NUM, [p]) => protocol = Some(*p),
                        (CTA_PROTO_SRC_PORT, [a, b]) => sport = Some(u16::from_be_bytes([*a, *b])),
                        (CTA_PROTO_DST_PORT, [a, b]) => dport = Some(u16::from_be_bytes([*a, *b])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        protocol?,
        SocketAddr::new(src?, sport?),
        SocketAddr::new(dst?, dport?),
        zone,
    ))
}

/// An entry from a ctnetlink answer's attributes; None for protocols without ports.
fn parse_entry(attrs: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply, mut tcp_state, mut zone, mut id) = (None, None, None, None, None);
    for (kind, payload) in netlink::attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(payload),
            CTA_TUPLE_REPLY => reply = parse_tuple(payload),
            CTA_ZONE => {
                if let [a, b] = payload {
                    zone = Some(u16::from_be_bytes([*a, *b]));
                }
            }
            CTA_ID => {
                if let [a, b, c, d] = payload {
                    id = Some(u32::from_be_bytes([*a, *b, *c, *d]));
                }
            }
            CTA_PROTOINFO => {
                for (kind, tcp) in netlink::attributes(payload) {
                    if kind != CTA_PROTOINFO_TCP {
                        continue;
                    }
                    for (kind, value) in netlink::attributes(tcp) {
                        if let (CTA_PROTOINFO_TCP_STATE, [state]) = (kind, value) {
                            tcp_state = Some(*state);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let (protocol, orig_src, orig_dst, orig_zone) = orig?;
    let (_, reply_src, reply_dst, _) = reply?;
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP).then_some(Entry {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
        tcp_state,
        zone,
        orig_zone,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocol: u8, orig: (&str, &str), reply: (&str, &str), state: Option<u8>) -> Entry {
        Entry {
            protocol,
            orig_src: orig.0.parse().unwrap(),
            orig_dst: orig.1.parse().unwrap(),
            reply_src: reply.0.parse().unwrap(),
            reply_dst: reply.1.parse().unwrap(),
            tcp_state: state,
            zone: None,
            orig_zone: None,
            id: None,
        }
    }

    #[test]
    fn counts_established_as_active_and_the_rest_inactive() {
        let entries = [
            entry(
                6,
                ("10.244.1.10:40000", "10.96.0.10:80"),
                ("10.244.2.11:8080", "10.244.1.10:40000"),
                Some(3),
            ),
            entry(
                6,
                ("10.244.1.10:40001", "10.96.0.10:80"),
                ("10.244.2.11:8080", "10.244.1.10:40001"),
                Some(7),
            ),
            entry(
                17,
                ("10.244.1.10:5000", "10.96.0.12:53"),
                ("10.244.1.11:5353", "10.244.1.10:5000"),
                None,
            ),
        ];
        let mut c = ConnCounts::default();
        for e in &entries {
            count(&mut c, e);
        }
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

    #[test]
    fn stale_entries_are_udp_to_gone_servers_and_undnated_ones_to_new_frontends() {
        let udp_to_gone = entry(
            17,
            ("10.244.1.10:5000", "10.96.0.12:53"),
            ("10.244.1.11:5353", "10.244.1.10:5000"),
            None,
        );
        let tcp_to_gone = entry(
            6,
            ("10.244.1.10:5001", "10.96.0.12:53"),
            ("10.244.1.11:5353", "10.244.1.10:5001"),
            Some(3),
        );
        let udp_to_kept = entry(
            17,
            ("10.244.1.10:5002", "10.96.0.12:53"),
            ("10.244.1.12:5353", "10.244.1.10:5002"),
            None,
        );
        let undnated_to_new = entry(
            17,
            ("10.244.1.10:5003", "10.96.0.20:53"),
            ("10.96.0.20:53", "10.244.1.10:5003"),
            None,
        );
        let dnated_to_new = entry(
            17,
            ("10.244.1.10:5004", "10.96.0.20:53"),
            ("10.244.2.10:53", "10.244.1.10:5004"),
            None,
        );
        let to_node_port = entry(
            6,
            ("192.0.2.1:6000", "10.200.0.1:30080"),
            ("10.200.0.1:30080", "192.0.2.1:6000"),
            Some(2),
        );
        let other_port = entry(
            6,
            ("192.0.2.1:6001", "10.200.0.1:30081"),
            ("10.200.0.1:30081", "192.0.2.1:6001"),
            Some(2),
        );
        // Undnated, the new frontend's port, but another address or protocol.
        let other_vip = entry(
            17,
            ("10.244.1.10:5005", "10.96.0.21:53"),
            ("10.96.0.21:53", "10.244.1.10:5005"),
            None,
        );
        let other_protocol = entry(
            6,
            ("10.244.1.10:5006", "10.96.0.20:53"),
            ("10.96.0.20:53", "10.244.1.10:5006"),
            Some(2),
        );
        let entries = [
            udp_to_gone,
            tcp_to_gone,
            udp_to_kept,
            undnated_to_new,
            dnated_to_new,
            other_vip,
            other_protocol,
            to_node_port,
            other_port,
        ];
        let gone = BTreeSet::from(["10.244.1.11:5353".parse().unwrap()]);
        let new = [
            (
                rvs_model::Protocol::Udp,
                Some("10.96.0.20".parse().unwrap()),
                53,
            ),
            (rvs_model::Protocol::Tcp, None, 30080),
        ];
        let picked: Vec<u16> = entries
            .iter()
            .filter(|e| is_stale(e, &gone, &new))
            .map(|e| e.orig_src.port())
            .collect();
        assert_eq!(picked, [5000, 5003, 6000]);
    }

    #[test]
    fn entries_are_read_from_ctnetlink_attributes() {
        let tuple =
            |b: &mut Vec<u8>, kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
                netlink::nested(b, kind, |b| {
                    netlink::nested(b, CTA_TUPLE_IP, |b| {
                        netlink::attr(b, CTA_IP_V4_SRC, &src);
                        netlink::attr(b, CTA_IP_V4_DST, &dst);
                    });
                    netlink::nested(b, CTA_TUPLE_PROTO, |b| {
                        netlink::attr(b, CTA_PROTO_NUM, &[6]);
                        netlink::attr(b, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                        netlink::attr(b, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
                    });
                });
            };
        let mut attrs = Vec::new();
        tuple(
            &mut attrs,
            CTA_TUPLE_ORIG,
            [10, 244, 1, 10],
            [10, 96, 0, 10],
            40000,
            80,
        );
        tuple(
            &mut attrs,
            CTA_TUPLE_REPLY,
            [10, 244, 2, 11],
            [10, 244, 1, 10],
            8080,
            40000,
        );
        netlink::nested(&mut attrs, CTA_PROTOINFO, |b| {
            netlink::nested(b, CTA_PROTOINFO_TCP, |b| {
                netlink::attr(b, CTA_PROTOINFO_TCP_STATE, &[3])
            });
        });
        netlink::attr(&mut attrs, CTA_ID, &0x0102_0304u32.to_be_bytes());
        netlink::attr(&mut attrs, CTA_ZONE, &7u16.to_be_bytes());
        let parsed = parse_entry(&attrs).unwrap();
        let mut want = entry(
            6,
            ("10.244.1.10:40000", "10.96.0.10:80"),
            ("10.244.2.11:8080", "10.244.1.10:40000"),
            Some(3),
        );
        want.id = Some(0x0102_0304);
        want.zone = Some(7);
        assert_eq!(parsed, want);
        // Truncated input is no entry, never a panic.
        for cut in 0..attrs.len() {
            let _ = parse_entry(&attrs[..cut]);
        }
    }
}
