//! What rvs's tables hold, read over netlink: the names in them (a full sync rewrites what it
//! finds) and the DNAT rules' counters (`rvs ls`). Through nft, listing the whole table took
//! 1.5 s and 300 MB at 10,000 Services for the counters alone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::netlink::{
    self, Requests, Socket, NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE,
    NFTA_DATA_VALUE, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_TABLE, NFTA_SET_FLAGS, NFTA_SET_NAME, NFTA_SET_TABLE, NFT_REG_1, NFT_REG_2,
    NFT_SET_ANONYMOUS, NFT_SET_MAP,
};
use crate::ruleset::{Existing, Family, TABLE};

const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

/// A string attribute (NUL-terminated).
fn text(payload: &[u8]) -> Option<&str> {
    std::str::from_utf8(payload.split(|b| *b == 0).next()?).ok()
}

fn be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// Runs `read` again when the table changed during its dump (nft does the same), a few
/// times at most.
fn consistent<T>(mut read: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut attempts = 0;
    loop {
        match read() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && attempts < 3 => attempts += 1,
            other => return other,
        }
    }
}

/// One dump of `kind` in `family`, filtered to rvs's table where the kernel can.
fn dump(
    socket: &Socket,
    family: Family,
    kind: u16,
    table_attribute: Option<u16>,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut request = Requests::default();
    request.push(
        NFNL_SUBSYS_NFTABLES,
        kind,
        family.nfproto(),
        netlink::NLM_F_DUMP,
        |b| {
            if let Some(attribute) = table_attribute {
                netlink::attr_str(b, attribute, TABLE);
            }
        },
    );
    match socket.dump(&mut request.buf, |_, attrs| each(attrs)) {
        // No table yet.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The names of the chains, sets and maps in rvs's table of `family`.
pub(crate) fn existing(socket: &Socket, family: Family) -> std::io::Result<Existing> {
    consistent(|| existing_once(socket, family))
}

fn existing_once(socket: &Socket, family: Family) -> std::io::Result<Existing> {
    let mut existing = Existing::default();
    dump(socket, family, NFT_MSG_GETCHAIN, None, |attrs| {
        let (mut table, mut name) = (None, None);
        for (kind, payload) in netlink::attributes(attrs) {
            match kind {
                NFTA_CHAIN_TABLE => table = text(payload),
                NFTA_CHAIN_NAME => name = text(payload),
                _ => {}
            }
        }
        if let (Some(TABLE), Some(name)) = (table, name) {
            existing.chains.insert(name.to_string());
        }
    })?;
    dump(
        socket,
        family,
        NFT_MSG_GETSET,
        Some(NFTA_SET_TABLE),
        |attrs| {
            let (mut table, mut name, mut flags) = (None, None, 0);
            for (kind, payload) in netlink::attributes(attrs) {
                match kind {
                    NFTA_SET_TABLE => table = text(payload),
                    NFTA_SET_NAME => name = text(payload),
                    NFTA_SET_FLAGS => flags = be32(payload).unwrap_or(0),
                    _ => {}
                }
            }
            // Anonymous sets belong to their rules and go with them.
            if let (Some(TABLE), Some(name)) = (table, name) {
                if flags & NFT_SET_ANONYMOUS == 0 {
                    let names = if flags & NFT_SET_MAP != 0 {
                        &mut existing.maps
                    } else {
                        &mut existing.sets
                    };
                    names.insert(name.to_string());
                }
            }
        },
    )?;
    Ok(existing)
}

/// Adds the packets counted by each DNAT rule of rvs's table of `family`, by (chain,
/// target): one packet per connection, since NAT chains see only the first of each.
pub(crate) fn dnat_counters(
    socket: &Socket,
    family: Family,
    into: &mut HashMap<(String, SocketAddr), u64>,
) -> std::io::Result<()> {
    let counted = consistent(|| {
        let mut counted: HashMap<(String, SocketAddr), u64> = HashMap::new();
        dump(
            socket,
            family,
            NFT_MSG_GETRULE,
            Some(NFTA_RULE_TABLE),
            |attrs| {
                let (mut table, mut chain, mut expressions) = (None, None, None);
                for (kind, payload) in netlink::attributes(attrs) {
                    match kind {
                        NFTA_RULE_TABLE => table = text(payload),
                        NFTA_RULE_CHAIN => chain = text(payload),
                        NFTA_RULE_EXPRESSIONS => expressions = Some(payload),
                        _ => {}
                    }
                }
                if let (Some(TABLE), Some(chain), Some(expressions)) = (table, chain, expressions) {
                    if let Some((target, packets)) = dnat_rule(expressions) {
                        *counted.entry((chain.to_string(), target)).or_insert(0) += packets;
                    }
                }
            },
        )?;
        Ok(counted)
    })?;
    for (key, packets) in counted {
        *into.entry(key).or_insert(0) += packets;
    }
    Ok(())
}

/// A rule's DNAT target and counter, as rvs writes them: `counter`, the address into
/// register 1 and the port into register 2, then `nat`.
fn dnat_rule(expressions: &[u8]) -> Option<(SocketAddr, u64)> {
    let (mut packets, mut addr, mut port, mut nat) = (None, None, None, false);
    for (_, element) in netlink::attributes(expressions) {
        let (mut name, mut data) = (None, &[][..]);
        for (kind, payload) in netlink::attributes(element) {
            match kind {
                NFTA_EXPR_NAME => name = text(payload),
                NFTA_EXPR_DATA => data = payload,
                _ => {}
            }
        }
        match name {
            Some("counter") => {
                packets = netlink::attributes(data)
                    .find(|(kind, _)| *kind == NFTA_COUNTER_PACKETS)
                    .and_then(|(_, p)| Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?)));
            }
            Some("immediate") => {
                let (mut register, mut value) = (None, None);
                for (kind, payload) in netlink::attributes(data) {
                    match kind {
                        NFTA_IMMEDIATE_DREG => register = be32(payload),
                        NFTA_IMMEDIATE_DATA => {
                            value = netlink::attributes(payload)
                                .find(|(kind, _)| *kind == NFTA_DATA_VALUE)
                                .map(|(_, v)| v);
                        }
                        _ => {}
                    }
                }
                match (register, value) {
                    (Some(NFT_REG_1), Some(v)) => {
                        addr = match v.len() {
                            4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
                            16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
                            _ => None,
                        }
                    }
                    (Some(NFT_REG_2), Some([a, b, ..])) => {
                        port = Some(u16::from_be_bytes([*a, *b]))
                    }
                    _ => {}
                }
            }
            Some("nat") => nat = true,
            _ => {}
        }
    }
    nat.then_some(())?;
    Some((SocketAddr::new(addr?, port?), packets?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule's expressions as the kernel lists `meta l4proto tcp counter dnat to ADDR:PORT`.
    fn listed_dnat_rule(addr: &[u8], port: u16, packets: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let expr = |out: &mut Vec<u8>, name: &str, body: &dyn Fn(&mut Vec<u8>)| {
            netlink::nested(out, 1, |b| {
                netlink::attr_str(b, NFTA_EXPR_NAME, name);
                netlink::nested(b, NFTA_EXPR_DATA, |b| body(b));
            });
        };
        expr(&mut out, "meta", &|b| {
            netlink::attr_u32(b, 2, 16);
            netlink::attr_u32(b, 1, NFT_REG_1);
        });
        expr(&mut out, "cmp", &|b| netlink::attr_u32(b, 1, NFT_REG_1));
        expr(&mut out, "counter", &|b| {
            netlink::attr(b, 1, &(packets * 60).to_be_bytes());
            netlink::attr(b, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        });
        for (register, value) in [(NFT_REG_1, addr), (NFT_REG_2, &port.to_be_bytes()[..])] {
            expr(&mut out, "immediate", &|b| {
                netlink::attr_u32(b, NFTA_IMMEDIATE_DREG, register);
                netlink::nested(b, NFTA_IMMEDIATE_DATA, |b| {
                    netlink::attr(b, NFTA_DATA_VALUE, value)
                });
            });
        }
        expr(&mut out, "nat", &|b| netlink::attr_u32(b, 1, 1));
        out
    }

    #[test]
    fn dnat_rules_are_read_in_both_families() {
        let v4 = listed_dnat_rule(&[10, 244, 1, 10], 8080, 7);
        assert_eq!(
            dnat_rule(&v4),
            Some(("10.244.1.10:8080".parse().unwrap(), 7))
        );
        let ip: std::net::Ipv6Addr = "fd00:244:0:1::a".parse().unwrap();
        let v6 = listed_dnat_rule(&ip.octets(), 8080, 3);
        assert_eq!(
            dnat_rule(&v6),
            Some(("[fd00:244:0:1::a]:8080".parse().unwrap(), 3))
        );
        // A rule without nat is no DNAT rule; cut short, it is nothing, never a panic.
        let no_nat = &v4[..v4.len() - 24];
        assert_eq!(dnat_rule(no_nat), None);
        for cut in 0..v4.len() {
            let _ = dnat_rule(&v4[..cut]);
        }
    }

    proptest::proptest! {
        /// Whatever the kernel sends, reading a rule never panics.
        #[test]
        fn any_bytes_read_as_a_rule_or_nothing(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = dnat_rule(&bytes);
        }
    }
}
