//! PROXY protocol version 2 (haproxy's proxy-protocol.txt, section 2.2): tells a real server
//! the client's address, which a proxy that terminates TCP would otherwise hide.

use std::net::{IpAddr, SocketAddr};

use rvs_model::Protocol;

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const VERSION_PROXY: u8 = 0x21;
const AF_INET: u8 = 0x10;
const AF_INET6: u8 = 0x20;
const STREAM: u8 = 0x01;
const DGRAM: u8 = 0x02;

/// The header for a connection from `client` to `local`. Addresses of different families
/// (an IPv4 client on an IPv6 listener) are sent as IPv6, mapping the IPv4 one.
pub fn encode_v2(protocol: Protocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let transport = match protocol {
        Protocol::Tcp => STREAM,
        Protocol::Udp => DGRAM,
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(AF_INET | transport);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(AF_INET6 | transport);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

/// A parsed PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// Bytes the header took, including TLVs.
    pub length: usize,
}

/// Parses a PROXY v2 header at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Err` when `buf` does not start with one. (Used by `rvs echo` and the tests.)
pub fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, &'static str> {
    let prefix = buf.len().min(SIGNATURE.len());
    if buf[..prefix] != SIGNATURE[..prefix] {
        return Err("not a PROXY protocol v2 header");
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    if buf[12] >> 4 != 2 {
        return Err("PROXY protocol version is not 2");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let addr =
        |ip: IpAddr, port: &[u8]| SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]));
    let (source, destination) = match buf[13] >> 4 {
        1 if len >= 12 => {
            let src: [u8; 4] = [body[0], body[1], body[2], body[3]];
            let dst: [u8; 4] = [body[4], body[5], body[6], body[7]];
            (
                addr(IpAddr::from(src), &body[8..10]),
                addr(IpAddr::from(dst), &body[10..12]),
            )
        }
        2 if len >= 36 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&body[0..16]);
            dst.copy_from_slice(&body[16..32]);
            (
                addr(IpAddr::from(src), &body[32..34]),
                addr(IpAddr::from(dst), &body[34..36]),
            )
        }
        _ => return Err("unsupported PROXY protocol address family"),
    };
    Ok(Some(ProxyHeader {
        source,
        destination,
        length: 16 + len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        let cases = [
            ("10.1.2.3:40000", "10.96.0.1:80"),
            ("[fd00::5]:1234", "[fd00::1]:443"),
        ];
        for (c, l) in cases {
            let (c, l): (SocketAddr, SocketAddr) = (c.parse().unwrap(), l.parse().unwrap());
            let h = encode_v2(Protocol::Tcp, c, l);
            let parsed = parse_v2(&h).unwrap().unwrap();
            assert_eq!(
                (parsed.source, parsed.destination, parsed.length),
                (c, l, h.len())
            );
            assert_eq!(parse_v2(&h[..h.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn mixed_families_map_to_v6_and_garbage_is_refused() {
        let h = encode_v2(
            Protocol::Udp,
            "1.2.3.4:5".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        );
        assert_eq!(h[13], AF_INET6 | DGRAM);
        assert!(parse_v2(b"GET / HTTP/1.1\r\n").is_err());
    }
}
