//! Transactions written by rvs itself as nfnetlink batches, sent over a netlink socket: no
//! nft parser in between.
//!
//! Why: at 10,000 Services nft spent ~0.75 s parsing and evaluating the 8 MB script and
//! grew to 300 MB doing it (the kernel zeroing those pages was a third of the time); the
//! kernel's own commit is about a third of the full sync. The renderer's text stays the one
//! description of the ruleset (readable, and what the nft tool loads when this path is off):
//! this module compiles that text, the closed subset of nft's language the renderer writes,
//! into the expressions nft 1.0 would send (`nft --debug=netlink` shows the same bytecode;
//! the kernel test compares both listings), and refuses anything else by name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::ruleset::{Element, Family, Op, SetKind, Transaction, Verb, TABLE};

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_DUMP: u16 = 0x300;

// Attribute numbers of linux/netfilter/nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
pub(crate) const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;

pub(crate) const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_REG_VERDICT: u32 = 0;
pub(crate) const NFT_REG_1: u32 = 1;
pub(crate) const NFT_REG_2: u32 = 2;
const NFT_REG32_00: u32 = 8;

/// nft's set key datatypes (its `TYPE_*`), which the kernel stores for listings.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// Element lists are split before a netlink attribute's 64 KiB length limit.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 48 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what}: {reason}")]
pub struct EncodeError {
    pub what: String,
    pub reason: String,
}

fn refuse(what: impl fmt::Display, reason: impl fmt::Display) -> EncodeError {
    EncodeError {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// What a message of the batch does, for the kernel's errors.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    Table(Family),
    Chain(Family, &'a str),
    Rule(Family, &'a str, &'a str),
    Set(Family, &'a str),
    Elements(Family, &'a str),
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Table(family) => write!(f, "table {} {TABLE}", family.name()),
            Origin::Chain(family, name) => write!(f, "chain {} {TABLE} {name}", family.name()),
            Origin::Rule(family, chain, rule) => {
                write!(f, "rule in chain {} {TABLE} {chain}: {rule}", family.name())
            }
            Origin::Set(family, name) => write!(f, "set {} {TABLE} {name}", family.name()),
            Origin::Elements(family, name) => {
                write!(f, "elements of set {} {TABLE} {name}", family.name())
            }
        }
    }
}

/// A batch ready to send, and what each of its messages does.
pub struct Batch<'a> {
    buf: Vec<u8>,
    /// By sequence number minus `FIRST_SEQ` (the batch's own numbers; `Socket::send`
    /// shifts them on the wire and back).
    origins: Vec<Origin<'a>>,
    next_set_id: u32,
}

const FIRST_SEQ: u32 = 2;

impl<'a> Batch<'a> {
    fn new() -> Self {
        let mut batch = Batch {
            buf: Vec::with_capacity(4096),
            origins: Vec::new(),
            next_set_id: 1,
        };
        batch.control(NFNL_MSG_BATCH_BEGIN, FIRST_SEQ - 1);
        batch
    }

    fn control(&mut self, kind: u16, seq: u32) {
        let start = self.header(kind, 0, NLM_F_REQUEST, seq);
        self.end(start);
    }

    fn header(&mut self, kind: u16, family: u8, flags: u16, seq: u32) -> usize {
        // The resource id of batch messages is the subsystem.
        let res_id = if family == 0 { NFNL_SUBSYS_NFTABLES } else { 0 };
        header(&mut self.buf, kind, flags, seq, family, res_id)
    }

    fn begin(&mut self, msg: u16, family: Family, flags: u16, origin: Origin<'a>) -> usize {
        let seq = FIRST_SEQ + self.origins.len() as u32;
        self.origins.push(origin);
        self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            family.nfproto(),
            NLM_F_REQUEST | flags,
            seq,
        )
    }

    fn end(&mut self, start: usize) {
        end(&mut self.buf, start);
    }

    fn finish(mut self) -> Self {
        let seq = FIRST_SEQ + self.origins.len() as u32;
        self.control(NFNL_MSG_BATCH_END, seq);
        self
    }

    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The bytes to send; the batch keeps what its messages did, for `refusal`.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The kernel's errors, (sequence number, errno), as messages naming what failed.
    pub fn refusal(&self, errors: &[(u32, i32)]) -> String {
        let mut lines: Vec<String> = errors
            .iter()
            .take(5)
            .map(|(seq, errno)| {
                let what = self.origin(*seq).unwrap_or_else(|| "the batch".into());
                format!(
                    "{what}: {}",
                    explain(&std::io::Error::from_raw_os_error(*errno))
                )
            })
            .collect();
        if errors.len() > 5 {
            lines.push(format!("and {} more errors", errors.len() - 5));
        }
        lines.join("\n")
    }

    /// What the message with sequence number `seq` did.
    fn origin(&self, seq: u32) -> Option<String> {
        let index = seq.checked_sub(FIRST_SEQ)? as usize;
        self.origins.get(index).map(ToString::to_string)
    }
}

/// Starts a message: nlmsghdr (length patched by `end`), then nfgenmsg (family, version 0,
/// resource id). Returns where it starts.
fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

/// Ends the message started at `start`: its length.
fn end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A message received from the kernel: its header fields and what follows the header.
struct Message<'d> {
    kind: u16,
    flags: u16,
    seq: u32,
    body: &'d [u8],
}

impl Message<'_> {
    /// The errno of an NLMSG_ERROR or NLMSG_DONE (0: none).
    fn error(&self) -> i32 {
        match self.body.get(..4) {
            Some(code) => -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]),
            None => 0,
        }
    }
}

/// The messages of a datagram; stops at anything malformed.
fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        let word =
            |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        if data.len() < 16 {
            return None;
        }
        let len = word(0) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        let message = Message {
            kind: u16::from_ne_bytes([data[4], data[5]]),
            flags: u16::from_ne_bytes([data[6], data[7]]),
            seq: word(8),
            body: &data[16..len],
        };
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some(message)
    })
}

// Netlink attributes, written in place.
pub(crate) fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    // Bounded by construction: names of at most 256 bytes, element lists split at 48 KiB.
    debug_assert!(len <= usize::from(u16::MAX), "attribute of {len} bytes");
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

pub(crate) fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

pub(crate) fn attr_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let len = 4 + s.len() + 1;
    debug_assert!(len <= usize::from(u16::MAX), "attribute of {len} bytes");
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    pad(buf);
}

pub(crate) fn attr_u32(buf: &mut Vec<u8>, kind: u16, value: u32) {
    attr(buf, kind, &value.to_be_bytes());
}

fn nest_start(buf: &mut Vec<u8>, kind: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    debug_assert!(
        buf.len() - start <= usize::from(u16::MAX),
        "nest of {} bytes",
        buf.len() - start
    );
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

pub(crate) fn nested(buf: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = nest_start(buf, kind);
    body(buf);
    nest_end(buf, start);
}

fn data_value(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    nested(buf, kind, |b| attr(b, NFTA_DATA_VALUE, value));
}

fn verdict_data(buf: &mut Vec<u8>, kind: u16, verdict: &Verdict<'_>) {
    nested(buf, kind, |b| {
        nested(b, NFTA_DATA_VERDICT, |b| {
            attr_u32(b, NFTA_VERDICT_CODE, verdict.code as u32);
            if let Some(chain) = verdict.chain {
                attr_str(b, NFTA_VERDICT_CHAIN, chain);
            }
        })
    });
}

/// Encodes `tx` as one batch.
pub fn encode<'a>(tx: &Transaction<'a>) -> Result<Batch<'a>, EncodeError> {
    let mut batch = Batch::new();
    let mut scratch = Vec::new();
    for (family, ops) in &tx.tables {
        let family = *family;
        for op in ops {
            encode_op(&mut batch, family, op, &mut scratch)?;
        }
    }
    Ok(batch.finish())
}

fn table_attr(buf: &mut Vec<u8>, kind: u16) {
    attr_str(buf, kind, TABLE);
}

fn encode_op<'a>(
    batch: &mut Batch<'a>,
    family: Family,
    op: &Op<'a>,
    scratch: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match op {
        Op::AddTable | Op::DeleteTable => {
            let (msg, flags) = match op {
                Op::AddTable => (NFT_MSG_NEWTABLE, NLM_F_CREATE),
                _ => (NFT_MSG_DELTABLE, 0),
            };
            let start = batch.begin(msg, family, flags, Origin::Table(family));
            table_attr(&mut batch.buf, NFTA_TABLE_NAME);
            if msg == NFT_MSG_NEWTABLE {
                attr_u32(&mut batch.buf, NFTA_TABLE_FLAGS, 0);
            }
            batch.end(start);
        }
        Op::AddChain { name, base } => {
            let hook = base.map(|b| parse_hook(b).ok_or_else(|| refuse(name, b)));
            let hook = hook.transpose()?;
            let start = batch.begin(
                NFT_MSG_NEWCHAIN,
                family,
                NLM_F_CREATE,
                Origin::Chain(family, name),
            );
            let buf = &mut batch.buf;
            table_attr(buf, NFTA_CHAIN_TABLE);
            attr_str(buf, NFTA_CHAIN_NAME, name);
            if let Some(hook) = hook {
                nested(buf, NFTA_CHAIN_HOOK, |b| {
                    attr_u32(b, NFTA_HOOK_HOOKNUM, hook.number);
                    attr_u32(b, NFTA_HOOK_PRIORITY, hook.priority as u32);
                });
                attr_str(buf, NFTA_CHAIN_TYPE, hook.kind);
            }
            batch.end(start);
        }
        // Flushing a chain is deleting its rules.
        Op::FlushChain(name) | Op::DeleteChain(name) => {
            let (msg, table, chain) = match op {
                Op::FlushChain(_) => (NFT_MSG_DELRULE, NFTA_RULE_TABLE, NFTA_RULE_CHAIN),
                _ => (NFT_MSG_DELCHAIN, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME),
            };
            let start = batch.begin(msg, family, 0, Origin::Chain(family, name));
            table_attr(&mut batch.buf, table);
            attr_str(&mut batch.buf, chain, name);
            batch.end(start);
        }
        Op::Rules(chains) => {
            for (chain, rules) in chains {
                for rule in &rules.rules {
                    encode_rule(batch, family, chain, rule, scratch)?;
                }
            }
        }
        Op::AddSet { name, spec, kind } => {
            let spec = SetSpec::parse(spec, *kind).map_err(|e| refuse(name, e))?;
            let id = batch.next_set_id;
            batch.next_set_id += 1;
            let start = batch.begin(
                NFT_MSG_NEWSET,
                family,
                NLM_F_CREATE,
                Origin::Set(family, name),
            );
            let buf = &mut batch.buf;
            table_attr(buf, NFTA_SET_TABLE);
            attr_str(buf, NFTA_SET_NAME, name);
            spec.write(buf, id);
            batch.end(start);
        }
        Op::FlushSet { name, .. } => {
            let start = batch.begin(
                NFT_MSG_DELSETELEM,
                family,
                0,
                Origin::Elements(family, name),
            );
            table_attr(&mut batch.buf, NFTA_SET_ELEM_LIST_TABLE);
            attr_str(&mut batch.buf, NFTA_SET_ELEM_LIST_SET, name);
            batch.end(start);
        }
        Op::DeleteSet { name, .. } => {
            let start = batch.begin(NFT_MSG_DELSET, family, 0, Origin::Set(family, name));
            table_attr(&mut batch.buf, NFTA_SET_TABLE);
            attr_str(&mut batch.buf, NFTA_SET_NAME, name);
            batch.end(start);
        }
        Op::Elements {
            verb,
            kind,
            set,
            spec,
            items,
        } => {
            let spec = SetSpec::parse(spec, *kind).map_err(|e| refuse(set, e))?;
            let elements = set_elements(&spec, *verb, items).map_err(|e| refuse(set, e))?;
            let (msg, flags) = match verb {
                Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                Verb::Delete => (NFT_MSG_DELSETELEM, 0),
            };
            write_elements(batch, family, msg, flags, set, None, &elements);
        }
    }
    Ok(())
}

/// Elements in as many messages as their size needs.
fn write_elements<'a>(
    batch: &mut Batch<'a>,
    family: Family,
    msg: u16,
    flags: u16,
    set: &'a str,
    anonymous_id: Option<u32>,
    elements: &[SetElement<'_>],
) {
    let mut rest = elements;
    while !rest.is_empty() {
        let start = batch.begin(msg, family, flags, Origin::Elements(family, set));
        let buf = &mut batch.buf;
        table_attr(buf, NFTA_SET_ELEM_LIST_TABLE);
        attr_str(buf, NFTA_SET_ELEM_LIST_SET, set);
        if let Some(id) = anonymous_id {
            attr_u32(buf, NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        let list = nest_start(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        let mut written = 0;
        for element in rest {
            nested(buf, NFTA_LIST_ELEM, |b| {
                if element.interval_end {
                    attr_u32(b, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                data_value(b, NFTA_SET_ELEM_KEY, &element.key);
                if let Some(verdict) = &element.verdict {
                    verdict_data(b, NFTA_SET_ELEM_DATA, verdict);
                }
            });
            written += 1;
            if buf.len() - list > ELEMENTS_PER_MESSAGE_BYTES {
                break;
            }
        }
        nest_end(buf, list);
        batch.end(start);
        rest = &rest[written..];
    }
}

struct Hook {
    kind: &'static str,
    number: u32,
    priority: i32,
}

/// `type nat hook prerouting priority -100`.
fn parse_hook(spec: &str) -> Option<Hook> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let ["type", kind, "hook", hook, "priority", priority] = words.as_slice() else {
        return None;
    };
    let kind = match *kind {
        "nat" => "nat",
        "filter" => "filter",
        _ => return None,
    };
    let number = match *hook {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        "postrouting" => 4,
        _ => return None,
    };
    Some(Hook {
        kind,
        number,
        priority: priority.parse().ok()?,
    })
}

/// A datatype of a set key field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Ipv4,
    Ipv6,
    Proto,
    Service,
    /// `typeof numgen ...`: a host-endian 32-bit integer.
    Integer,
}

impl FieldType {
    fn parse(name: &str) -> Option<FieldType> {
        Some(match name {
            "ipv4_addr" => FieldType::Ipv4,
            "ipv6_addr" => FieldType::Ipv6,
            "inet_proto" => FieldType::Proto,
            "inet_service" => FieldType::Service,
            _ => return None,
        })
    }

    fn id(self) -> u32 {
        match self {
            FieldType::Ipv4 => TYPE_IPADDR,
            FieldType::Ipv6 => TYPE_IP6ADDR,
            FieldType::Proto => TYPE_INET_PROTOCOL,
            FieldType::Service => TYPE_INET_SERVICE,
            FieldType::Integer => TYPE_INTEGER,
        }
    }

    fn len(self) -> usize {
        match self {
            FieldType::Ipv4 | FieldType::Integer => 4,
            FieldType::Ipv6 => 16,
            FieldType::Proto => 1,
            FieldType::Service => 2,
        }
    }

    /// One value of this type, as the kernel compares it.
    fn value(self, text: &str) -> Option<Vec<u8>> {
        Some(match self {
            FieldType::Ipv4 => text.parse::<Ipv4Addr>().ok()?.octets().to_vec(),
            FieldType::Ipv6 => text.parse::<Ipv6Addr>().ok()?.octets().to_vec(),
            FieldType::Proto => vec![proto_number(text)?],
            FieldType::Service => text.parse::<u16>().ok()?.to_be_bytes().to_vec(),
            FieldType::Integer => text.parse::<u32>().ok()?.to_ne_bytes().to_vec(),
        })
    }
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

/// A set or map declaration, from the renderer's spec text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetSpec {
    fields: Vec<FieldType>,
    /// `typeof numgen inc mod N`: the modulus (for nft's listing).
    numgen_modulus: Option<u32>,
    map: bool,
    interval: bool,
    dynamic: bool,
    timeout_ms: Option<u64>,
    /// `{ a, b }` in a rule: constant, and its intervals merged.
    anonymous: bool,
}

impl SetSpec {
    fn anonymous_interval(field: FieldType) -> SetSpec {
        SetSpec {
            fields: vec![field],
            numgen_modulus: None,
            map: false,
            interval: true,
            dynamic: false,
            timeout_ms: None,
            anonymous: true,
        }
    }

    fn parse(spec: &str, kind: SetKind) -> Result<SetSpec, String> {
        let unsupported = || format!("set declaration {spec:?} is not one rvs writes");
        let mut parts = spec.split(';').map(str::trim);
        let declaration = parts.next().unwrap_or_default();
        let (key, data) = match declaration.split_once(" : ") {
            Some((key, data)) => (key, Some(data)),
            None => (declaration, None),
        };
        let map = match (kind, data) {
            (SetKind::Map, Some("verdict")) => true,
            (SetKind::Set, None) => false,
            _ => return Err(unsupported()),
        };
        let mut spec_out = SetSpec {
            fields: Vec::new(),
            numgen_modulus: None,
            map,
            interval: false,
            dynamic: false,
            timeout_ms: None,
            anonymous: false,
        };
        if let Some(rest) = key.strip_prefix("typeof numgen inc mod ") {
            spec_out.fields.push(FieldType::Integer);
            spec_out.numgen_modulus = Some(rest.parse().map_err(|_| unsupported())?);
        } else if let Some(types) = key.strip_prefix("type ") {
            for name in types.split(" . ") {
                spec_out
                    .fields
                    .push(FieldType::parse(name).ok_or_else(unsupported)?);
            }
        } else {
            return Err(unsupported());
        }
        for part in parts.filter(|p| !p.is_empty()) {
            if let Some(flags) = part.strip_prefix("flags ") {
                for flag in flags.split(',') {
                    match flag.trim() {
                        "interval" => spec_out.interval = true,
                        "dynamic" => spec_out.dynamic = true,
                        "timeout" => {}
                        _ => return Err(unsupported()),
                    }
                }
            } else if let Some(timeout) = part.strip_prefix("timeout ") {
                let seconds: u64 = timeout
                    .strip_suffix('s')
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(unsupported)?;
                spec_out.timeout_ms = Some(seconds.checked_mul(1000).ok_or_else(unsupported)?);
            } else {
                return Err(unsupported());
            }
        }
        Ok(spec_out)
    }

    fn concat(&self) -> bool {
        self.fields.len() > 1
    }

    fn key_len(&self) -> usize {
        if self.concat() {
            self.fields
                .iter()
                .map(|f| f.len().next_multiple_of(4))
                .sum()
        } else {
            self.fields.iter().map(|f| f.len()).sum()
        }
    }

    fn key_type(&self) -> u32 {
        self.fields.iter().fold(0, |acc, f| (acc << 6) | f.id())
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.anonymous {
            flags |= NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
        }
        if self.map {
            flags |= NFT_SET_MAP;
        }
        if self.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if self.dynamic {
            flags |= NFT_SET_EVAL;
        }
        if self.timeout_ms.is_some() {
            flags |= NFT_SET_TIMEOUT;
        }
        flags
    }

    fn write(&self, buf: &mut Vec<u8>, id: u32) {
        attr_u32(buf, NFTA_SET_FLAGS, self.flags());
        attr_u32(buf, NFTA_SET_KEY_TYPE, self.key_type());
        attr_u32(buf, NFTA_SET_KEY_LEN, self.key_len() as u32);
        if self.map {
            attr_u32(buf, NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            attr_u32(buf, NFTA_SET_DATA_LEN, 0);
        }
        attr_u32(buf, NFTA_SET_ID, id);
        if let Some(ms) = self.timeout_ms {
            attr(buf, NFTA_SET_TIMEOUT, &ms.to_be_bytes());
        }
        attr(buf, NFTA_SET_USERDATA, &self.userdata());
    }

    /// nft's own annotations of a set (libnftnl's `NFTNL_UDATA_SET_*`, as nft 1.0 writes
    /// them): without them `nft list` would print keys in the wrong byte order and lose the
    /// `typeof`.
    fn userdata(&self) -> Vec<u8> {
        const KEYBYTEORDER: u8 = 0;
        const DATABYTEORDER: u8 = 1;
        const MERGE_ELEMENTS: u8 = 2;
        const KEY_TYPEOF: u8 = 3;
        const DATA_TYPEOF: u8 = 4;
        const DATA_INTERVAL: u8 = 6;
        const BIG_ENDIAN: u32 = 2;
        const HOST_ENDIAN: u32 = 1;
        const EXPR_CONCAT: u32 = 13;
        const EXPR_NUMGEN: u32 = 0x17;
        const EXPR_VERDICT: u32 = 1;
        fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
            out.push(kind);
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        fn typeof_expr(expr: u32, data: &[u8]) -> Vec<u8> {
            let mut v = Vec::new();
            tlv(&mut v, 0, &expr.to_ne_bytes());
            tlv(&mut v, 1, data);
            v
        }
        let mut out = Vec::new();
        let key_order = match (self.numgen_modulus, self.concat()) {
            (Some(_), _) => HOST_ENDIAN,
            (None, true) => 0,
            (None, false) => BIG_ENDIAN,
        };
        tlv(&mut out, KEYBYTEORDER, &key_order.to_ne_bytes());
        if self.map {
            tlv(&mut out, DATABYTEORDER, &0u32.to_ne_bytes());
        }
        if self.anonymous {
            tlv(&mut out, MERGE_ELEMENTS, &1u32.to_ne_bytes());
        }
        if let Some(modulus) = self.numgen_modulus {
            let mut numgen = Vec::new();
            tlv(&mut numgen, 0, &0u32.to_ne_bytes()); // inc
            tlv(&mut numgen, 1, &modulus.to_ne_bytes());
            tlv(&mut numgen, 2, &0u32.to_ne_bytes()); // offset
            tlv(&mut out, KEY_TYPEOF, &typeof_expr(EXPR_NUMGEN, &numgen));
            tlv(&mut out, DATA_TYPEOF, &typeof_expr(EXPR_VERDICT, &[]));
        } else if self.concat() {
            tlv(&mut out, KEY_TYPEOF, &typeof_expr(EXPR_CONCAT, &[]));
        }
        if self.map {
            tlv(&mut out, DATA_INTERVAL, &0u32.to_ne_bytes());
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict<'a> {
    code: i32,
    chain: Option<&'a str>,
}

impl<'a> Verdict<'a> {
    /// `drop`, `accept`, `return`, or `jump`/`goto` and a chain.
    fn of(word: &str, chain: Option<&'a str>) -> Option<Verdict<'a>> {
        let code = match (word, chain) {
            ("drop", None) => NF_DROP,
            ("accept", None) => NF_ACCEPT,
            ("return", None) => NFT_RETURN,
            ("jump", Some(_)) => NFT_JUMP,
            ("goto", Some(_)) => NFT_GOTO,
            _ => return None,
        };
        Some(Verdict { code, chain })
    }
}

fn parse_verdict(text: &str) -> Option<Verdict<'_>> {
    let mut words = text.split_whitespace();
    let verdict = Verdict::of(words.next()?, words.next())?;
    words.next().is_none().then_some(verdict)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SetElement<'a> {
    key: Vec<u8>,
    interval_end: bool,
    verdict: Option<Verdict<'a>>,
}

/// The elements to add (keys and verdicts) or delete (keys alone, as nft sends them).
fn set_elements<'a>(
    spec: &SetSpec,
    verb: Verb,
    items: &[Element<'a>],
) -> Result<Vec<SetElement<'a>>, String> {
    if spec.interval {
        let [field] = spec.fields.as_slice() else {
            return Err("intervals of concatenations are not written by rvs".into());
        };
        // nft splits intervals to delete parts of them; rvs never does (the set changes
        // only with the options, by a full rewrite) and leaves it to nft.
        if verb == Verb::Delete {
            return Err("deleting intervals is left to nft".into());
        }
        let ranges = items
            .iter()
            .map(|i| range_of(*field, i.key).map(|(first, last, _)| (first, last)))
            .collect::<Result<Vec<_>, _>>()?;
        return interval_elements(*field, ranges, Intervals::Named);
    }
    items
        .iter()
        .map(|item| {
            let fields: Vec<&str> = item.key.split(" . ").collect();
            if fields.len() != spec.fields.len() {
                return Err(format!(
                    "element {:?} does not fit the set's type",
                    item.key
                ));
            }
            let mut key = Vec::with_capacity(spec.key_len());
            for (text, field) in fields.iter().zip(&spec.fields) {
                let value = field.value(text).ok_or_else(|| {
                    format!("element {:?}: {text:?} is not a {field:?}", item.key)
                })?;
                key.extend_from_slice(&value);
                if spec.concat() {
                    pad(&mut key);
                }
            }
            let verdict = match (item.value, spec.map, verb) {
                (Some(v), true, Verb::Add) => {
                    Some(parse_verdict(v).ok_or_else(|| format!("{v:?} is not a verdict"))?)
                }
                (None, false, _) | (None, true, Verb::Delete) => None,
                _ => {
                    return Err(format!(
                        "element {:?} does not fit the set's kind",
                        item.key
                    ))
                }
            };
            Ok(SetElement {
                key,
                interval_end: false,
                verdict,
            })
        })
        .collect()
}

/// An address or prefix as the first and last address it covers, and its prefix length.
fn range_of(field: FieldType, text: &str) -> Result<(u128, u128, u32), String> {
    let bad = || format!("{text:?} is not an address or prefix of the set's family");
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u32>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let (value, bits) = match (field, addr.parse::<IpAddr>().map_err(|_| bad())?) {
        (FieldType::Ipv4, IpAddr::V4(a)) => (u128::from(u32::from(a)), 32),
        (FieldType::Ipv6, IpAddr::V6(a)) => (u128::from(a), 128),
        _ => return Err(bad()),
    };
    let prefix = prefix.unwrap_or(bits);
    if prefix > bits {
        return Err(bad());
    }
    let host_bits = bits - prefix;
    let host_mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    Ok((value & !host_mask, value | host_mask, prefix))
}

/// Whose intervals: a named set's are written as they are (overlaps refused, as nft does
/// without auto-merge), an anonymous set's merged and led by an end element at zero (as nft
/// writes `{ a, b }` in a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intervals {
    Named,
    Anonymous,
}

/// Intervals as the kernel's rbtree sets hold them (as nft writes them): in order, a start
/// element and an end element (flagged) just past each range.
fn interval_elements<'a>(
    field: FieldType,
    mut ranges: Vec<(u128, u128)>,
    whose: Intervals,
) -> Result<Vec<SetElement<'a>>, String> {
    ranges.sort_unstable();
    ranges.dedup();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (first, last) in ranges {
        match merged.last_mut() {
            Some((_, prev_last)) if first <= *prev_last && whose == Intervals::Named => {
                return Err("overlapping intervals".into());
            }
            Some((_, prev_last))
                if whose == Intervals::Anonymous && first <= prev_last.saturating_add(1) =>
            {
                *prev_last = (*prev_last).max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    let max = match field {
        FieldType::Ipv4 => u128::from(u32::MAX),
        _ => u128::MAX,
    };
    let bytes = |v: u128| -> Vec<u8> {
        match field {
            FieldType::Ipv4 => (v as u32).to_be_bytes().to_vec(),
            _ => v.to_be_bytes().to_vec(),
        }
    };
    let element = |v: u128, end: bool| SetElement {
        key: bytes(v),
        interval_end: end,
        verdict: None,
    };
    let mut out = Vec::new();
    if whose == Intervals::Anonymous && merged.first().is_some_and(|(first, _)| *first != 0) {
        out.push(element(0, true));
    }
    for (first, last) in merged {
        out.push(element(first, false));
        if last != max {
            out.push(element(last + 1, true));
        }
    }
    Ok(out)
}

/// A value loaded into registers by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    Payload { base: u32, offset: u32, len: u32 },
    Meta { key: u32, len: u32 },
}

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;

impl Selector {
    fn len(self) -> u32 {
        match self {
            Selector::Payload { len, .. } | Selector::Meta { len, .. } => len,
        }
    }
}

/// What a compiled rule needs declared before it: its anonymous sets (field and items).
struct RuleCode<'r> {
    anonymous_sets: Vec<(FieldType, Vec<&'r str>)>,
}

fn encode_rule<'a>(
    batch: &mut Batch<'a>,
    family: Family,
    chain: &'a str,
    rule: &'a str,
    scratch: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    scratch.clear();
    let first_set_id = batch.next_set_id;
    let code = compile_rule(rule, family, first_set_id, scratch)
        .map_err(|e| refuse(Origin::Rule(family, chain, rule), e))?;
    for (i, (field, items)) in code.anonymous_sets.iter().enumerate() {
        let id = first_set_id + i as u32;
        let origin = Origin::Rule(family, chain, rule);
        let elements = items
            .iter()
            .map(|i| range_of(*field, i).map(|(first, last, _)| (first, last)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|ranges| interval_elements(*field, ranges, Intervals::Anonymous))
            .map_err(|e| refuse(origin, e))?;
        let start = batch.begin(NFT_MSG_NEWSET, family, NLM_F_CREATE, origin);
        let buf = &mut batch.buf;
        table_attr(buf, NFTA_SET_TABLE);
        attr_str(buf, NFTA_SET_NAME, "__set%d");
        SetSpec::anonymous_interval(*field).write(buf, id);
        batch.end(start);
        write_elements(
            batch,
            family,
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            "__set%d",
            Some(id),
            &elements,
        );
    }
    batch.next_set_id += code.anonymous_sets.len() as u32;
    let start = batch.begin(
        NFT_MSG_NEWRULE,
        family,
        NLM_F_CREATE | NLM_F_APPEND,
        Origin::Rule(family, chain, rule),
    );
    let buf = &mut batch.buf;
    table_attr(buf, NFTA_RULE_TABLE);
    attr_str(buf, NFTA_RULE_CHAIN, chain);
    nested(buf, NFTA_RULE_EXPRESSIONS, |b| b.extend_from_slice(scratch));
    batch.end(start);
    Ok(())
}

/// The register of 32-bit word `word` of the register file, as nft numbers it (a 128-bit
/// register when aligned to one).
fn register(word: u32) -> u32 {
    if word.is_multiple_of(4) {
        NFT_REG_1 + word / 4
    } else {
        NFT_REG32_00 + word
    }
}

struct Expressions<'b> {
    buf: &'b mut Vec<u8>,
}

impl Expressions<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
        nested(self.buf, NFTA_LIST_ELEM, |b| {
            attr_str(b, NFTA_EXPR_NAME, name);
            nested(b, NFTA_EXPR_DATA, body);
        });
    }

    fn load(&mut self, selector: Selector, dreg: u32) {
        match selector {
            Selector::Payload { base, offset, len } => self.expr("payload", |b| {
                attr_u32(b, 1, dreg); // NFTA_PAYLOAD_DREG
                attr_u32(b, 2, base);
                attr_u32(b, 3, offset);
                attr_u32(b, 4, len);
            }),
            Selector::Meta { key, .. } => self.expr("meta", |b| {
                attr_u32(b, 1, dreg); // NFTA_META_DREG
                attr_u32(b, 2, key);
            }),
        }
    }

    /// Loads a concatenation from word `base` on; returns its length in register space.
    fn load_key(&mut self, key: &[(Selector, FieldType)], base: u32) -> u32 {
        let mut word = base;
        for (selector, _) in key {
            self.load(*selector, register(word));
            word += selector.len().div_ceil(4);
        }
        (word - base) * 4
    }

    fn cmp(&mut self, op: u32, sreg: u32, value: &[u8]) {
        self.expr("cmp", |b| {
            attr_u32(b, 1, sreg); // NFTA_CMP_SREG
            attr_u32(b, 2, op);
            data_value(b, 3, value);
        });
    }

    fn bitwise(&mut self, len: u32, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            attr_u32(b, 1, NFT_REG_1); // NFTA_BITWISE_SREG
            attr_u32(b, 2, NFT_REG_1);
            attr_u32(b, 3, len);
            data_value(b, 4, mask);
            data_value(b, 5, xor);
        });
    }

    /// `flag` set in a 32-bit host-endian value loaded by `load`.
    fn flag_set(&mut self, flag: u32) {
        self.bitwise(4, &flag.to_ne_bytes(), &[0; 4]);
        self.cmp(NFT_CMP_NEQ, NFT_REG_1, &[0; 4]);
    }

    fn immediate_verdict(&mut self, verdict: &Verdict<'_>) {
        self.expr("immediate", |b| {
            attr_u32(b, 1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
            verdict_data(b, 2, verdict);
        });
    }

    fn immediate_value(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            attr_u32(b, 1, dreg);
            data_value(b, 2, value);
        });
    }

    fn lookup(&mut self, set: &str, set_id: Option<u32>, verdict_map: bool, inverted: bool) {
        self.expr("lookup", |b| {
            attr_str(b, 1, set); // NFTA_LOOKUP_SET
            attr_u32(b, 2, NFT_REG_1);
            if verdict_map {
                attr_u32(b, 3, NFT_REG_VERDICT);
            }
            if let Some(id) = set_id {
                attr_u32(b, 4, id);
            }
            if inverted {
                attr_u32(b, 5, 1); // NFT_LOOKUP_F_INV
            }
        });
    }
}

const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LT: u32 = 2;

/// The renderer's rule text as a cursor over its words (sets `{ a, b }` split off).
struct Words<'r> {
    words: Vec<&'r str>,
    at: usize,
}

impl<'r> Words<'r> {
    fn new(rule: &'r str) -> Self {
        Words {
            words: rule
                .split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .collect(),
            at: 0,
        }
    }

    fn peek(&self) -> Option<&'r str> {
        self.words.get(self.at).copied()
    }

    fn peek2(&self) -> Option<&'r str> {
        self.words.get(self.at + 1).copied()
    }

    fn next(&mut self) -> Result<&'r str, String> {
        let word = self.peek().ok_or("the rule ends early")?;
        self.at += 1;
        Ok(word)
    }

    fn expect(&mut self, expected: &str) -> Result<(), String> {
        match self.next()? {
            w if w == expected => Ok(()),
            w => Err(format!("{w:?} where {expected:?} was expected")),
        }
    }

    fn eat(&mut self, word: &str) -> bool {
        let yes = self.peek() == Some(word);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn number(&mut self) -> Result<u32, String> {
        let w = self.next()?;
        let parsed = match w.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => w.parse(),
        };
        parsed.map_err(|_| format!("{w:?} is not a number"))
    }

    /// `{ a, b }`: the items.
    fn braced(&mut self) -> Result<Vec<&'r str>, String> {
        self.expect("{")?;
        let mut items = Vec::new();
        loop {
            match self.next()? {
                "}" => return Ok(items),
                item => items.push(item),
            }
        }
    }

    /// A selector (`ip saddr`, `meta l4proto`, `th dport`), if one is next.
    fn selector(&mut self, family: Family) -> Result<Option<(Selector, FieldType)>, String> {
        let (first, second) = (self.peek(), self.peek2());
        let network = |offset, len| Selector::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
        };
        let transport = |offset| Selector::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset,
            len: 2,
        };
        let found = match (first, second) {
            (Some("ip"), Some("saddr")) if family == Family::Ip => {
                (network(12, 4), FieldType::Ipv4)
            }
            (Some("ip"), Some("daddr")) if family == Family::Ip => {
                (network(16, 4), FieldType::Ipv4)
            }
            (Some("ip6"), Some("saddr")) if family == Family::Ip6 => {
                (network(8, 16), FieldType::Ipv6)
            }
            (Some("ip6"), Some("daddr")) if family == Family::Ip6 => {
                (network(24, 16), FieldType::Ipv6)
            }
            (Some("th"), Some("sport")) => (transport(0), FieldType::Service),
            (Some("th"), Some("dport")) => (transport(2), FieldType::Service),
            (Some("meta"), Some("l4proto")) => (
                Selector::Meta {
                    key: NFT_META_L4PROTO,
                    len: 1,
                },
                FieldType::Proto,
            ),
            (Some("ip" | "ip6"), Some("saddr" | "daddr")) => {
                return Err("an address of the other family".into())
            }
            _ => return Ok(None),
        };
        self.at += 2;
        Ok(Some(found))
    }

    /// A concatenation of selectors (`ip daddr . meta l4proto . th dport`).
    fn key(&mut self, family: Family) -> Result<Option<Vec<(Selector, FieldType)>>, String> {
        let Some(first) = self.selector(family)? else {
            return Ok(None);
        };
        let mut key = vec![first];
        while self.eat(".") {
            key.push(self.selector(family)?.ok_or("a concatenation ends early")?);
        }
        Ok(Some(key))
    }

    fn set_name(&mut self) -> Result<&'r str, String> {
        let w = self.next()?;
        w.strip_prefix('@')
            .ok_or_else(|| format!("{w:?} is not a set reference"))
    }
}

/// Compiles one rule of the renderer into `out` (the contents of NFTA_RULE_EXPRESSIONS);
/// anonymous sets get ids from `first_set_id` on.
fn compile_rule<'r>(
    rule: &'r str,
    family: Family,
    first_set_id: u32,
    out: &mut Vec<u8>,
) -> Result<RuleCode<'r>, String> {
    let mut words = Words::new(rule);
    let mut e = Expressions { buf: out };
    let mut code = RuleCode {
        anonymous_sets: Vec::new(),
    };
    while let Some(word) = words.peek() {
        if let Some(key) = words.key(family)? {
            match words.peek() {
                Some("vmap") => {
                    words.next()?;
                    let set = words.set_name()?;
                    e.load_key(&key, 0);
                    e.lookup(set, None, true, false);
                }
                Some(w) if w.starts_with('@') => {
                    let set = words.set_name()?;
                    e.load_key(&key, 0);
                    e.lookup(set, None, false, false);
                }
                _ => {
                    let inverted = words.eat("!=");
                    let [(selector, field)] = key.as_slice() else {
                        return Err("a concatenation compared with a value".into());
                    };
                    if words.peek() == Some("{") {
                        let items = words.braced()?;
                        e.load(*selector, NFT_REG_1);
                        let id = first_set_id + code.anonymous_sets.len() as u32;
                        e.lookup("__set%d", Some(id), false, inverted);
                        code.anonymous_sets.push((*field, items));
                    } else {
                        let value = words.next()?;
                        compare(&mut e, *selector, *field, value, inverted)?;
                    }
                }
            }
            continue;
        }
        words.next()?;
        match word {
            "ct" => {
                let (key, flag) = match (words.next()?, words.next()?) {
                    ("state", "new") => (0, 0x8),    // NFT_CT_STATE, NF_CT_STATE_NEW_BIT
                    ("status", "dnat") => (2, 0x20), // NFT_CT_STATUS, IPS_DST_NAT
                    (a, b) => return Err(format!("ct {a} {b}")),
                };
                e.expr("ct", |b| {
                    attr_u32(b, 1, NFT_REG_1); // NFTA_CT_DREG
                    attr_u32(b, 2, key);
                });
                e.flag_set(flag);
            }
            "fib" => {
                let flags = match words.next()? {
                    "saddr" => 1, // NFTA_FIB_F_SADDR
                    "daddr" => 2,
                    w => return Err(format!("fib {w}")),
                };
                words.expect("type")?;
                words.expect("local")?;
                e.expr("fib", |b| {
                    attr_u32(b, 1, NFT_REG_1); // NFTA_FIB_DREG
                    attr_u32(b, 2, 3); // NFT_FIB_RESULT_ADDRTYPE
                    attr_u32(b, 3, flags);
                });
                e.cmp(NFT_CMP_EQ, NFT_REG_1, &2u32.to_ne_bytes()); // RTN_LOCAL
            }
            "meta" => {
                words.expect("mark")?;
                let load_mark = |e: &mut Expressions<'_>| {
                    e.load(
                        Selector::Meta {
                            key: NFT_META_MARK,
                            len: 4,
                        },
                        NFT_REG_1,
                    )
                };
                if words.eat("&") {
                    let mask = words.number()?;
                    words.expect("==")?;
                    let value = words.number()?;
                    load_mark(&mut e);
                    e.bitwise(4, &mask.to_ne_bytes(), &[0; 4]);
                    e.cmp(NFT_CMP_EQ, NFT_REG_1, &value.to_ne_bytes());
                } else {
                    words.expect("set")?;
                    words.expect("meta")?;
                    words.expect("mark")?;
                    let op = words.next()?;
                    let bits = words.number()?;
                    let (mask, xor) = match op {
                        "^" => (u32::MAX, bits),
                        "|" => (!bits, bits),
                        w => return Err(format!("meta mark set with {w:?}")),
                    };
                    load_mark(&mut e);
                    e.bitwise(4, &mask.to_ne_bytes(), &xor.to_ne_bytes());
                    e.expr("meta", |b| {
                        attr_u32(b, 2, NFT_META_MARK); // NFTA_META_KEY
                        attr_u32(b, 3, NFT_REG_1); // NFTA_META_SREG
                    });
                }
            }
            "numgen" => {
                let kind = match words.next()? {
                    "inc" => 0,
                    "random" => 1,
                    w => return Err(format!("numgen {w}")),
                };
                words.expect("mod")?;
                let modulus = words.number()?;
                e.expr("numgen", |b| {
                    attr_u32(b, 1, NFT_REG_1); // NFTA_NG_DREG
                    attr_u32(b, 2, modulus);
                    attr_u32(b, 3, kind);
                });
                match words.next()? {
                    "==" => {
                        let value = words.number()?;
                        e.cmp(NFT_CMP_EQ, NFT_REG_1, &value.to_ne_bytes());
                    }
                    // Ordered comparisons are of big-endian values in the kernel.
                    "<" => {
                        let value = words.number()?;
                        e.expr("byteorder", |b| {
                            attr_u32(b, 1, NFT_REG_1);
                            attr_u32(b, 2, NFT_REG_1);
                            attr_u32(b, 3, 1); // NFT_BYTEORDER_HTON
                            attr_u32(b, 4, 4);
                            attr_u32(b, 5, 4);
                        });
                        e.cmp(NFT_CMP_LT, NFT_REG_1, &value.to_be_bytes());
                    }
                    w => return Err(format!("numgen compared with {w:?}")),
                }
            }
            "jhash" => {
                let key = words.key(family)?.ok_or("jhash of nothing")?;
                words.expect("mod")?;
                let modulus = words.number()?;
                words.expect("seed")?;
                let seed = words.number()?;
                words.expect("vmap")?;
                let set = words.set_name()?;
                // The key from the second 128-bit register on, the hash into the first.
                let len = e.load_key(&key, 4);
                e.expr("hash", |b| {
                    attr_u32(b, 1, NFT_REG_2); // NFTA_HASH_SREG
                    attr_u32(b, 2, NFT_REG_1);
                    attr_u32(b, 3, len);
                    attr_u32(b, 4, modulus);
                    attr_u32(b, 5, seed);
                    attr_u32(b, 7, 0); // NFT_HASH_JENKINS
                });
                e.lookup(set, None, true, false);
            }
            "update" => {
                let set = words.set_name()?;
                words.expect("{")?;
                let key = words.key(family)?.ok_or("update with no key")?;
                words.expect("}")?;
                e.load_key(&key, 0);
                e.expr("dynset", |b| {
                    attr_str(b, 1, set); // NFTA_DYNSET_SET_NAME
                    attr_u32(b, 3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
                    attr_u32(b, 4, NFT_REG_1); // NFTA_DYNSET_SREG_KEY
                });
            }
            "counter" => e.expr("counter", |_| {}),
            "dnat" => {
                words.expect("to")?;
                let target = words.next()?;
                let (addr, port) = parse_target(target, family)
                    .ok_or_else(|| format!("{target:?} is not an address and port"))?;
                e.immediate_value(NFT_REG_1, &addr);
                e.immediate_value(NFT_REG_2, &port.to_be_bytes());
                e.expr("nat", |b| {
                    attr_u32(b, 1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
                    attr_u32(b, 2, u32::from(family.nfproto()));
                    attr_u32(b, 3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
                    attr_u32(b, 5, NFT_REG_2); // NFTA_NAT_REG_PROTO_MIN
                    attr_u32(b, 7, 0x2); // NF_NAT_RANGE_PROTO_SPECIFIED
                });
            }
            "masquerade" => {
                let fully_random = words.eat("fully-random");
                e.expr("masq", |b| {
                    if fully_random {
                        attr_u32(b, 1, 0x10); // NF_NAT_RANGE_PROTO_RANDOM_FULLY
                    }
                });
            }
            "reject" => {
                let (kind, code) = if words.eat("with") {
                    words.expect("tcp")?;
                    words.expect("reset")?;
                    (1, 0) // NFT_REJECT_TCP_RST
                } else {
                    // ICMP(v6) port unreachable.
                    (0, if family == Family::Ip { 3 } else { 4 })
                };
                e.expr("reject", |b| {
                    attr_u32(b, 1, kind); // NFTA_REJECT_TYPE
                    attr(b, 2, &[code]);
                });
            }
            "drop" | "accept" | "return" | "jump" | "goto" => {
                let chain = if matches!(word, "jump" | "goto") {
                    Some(words.next()?)
                } else {
                    None
                };
                let verdict = Verdict::of(word, chain).ok_or("a verdict")?;
                e.immediate_verdict(&verdict);
            }
            other => return Err(format!("{other:?} is not a statement rvs writes")),
        }
    }
    Ok(code)
}

/// `selector [!=] value`: an address, a prefix (compared on its whole bytes, or masked), or
/// a protocol name.
fn compare(
    e: &mut Expressions<'_>,
    selector: Selector,
    field: FieldType,
    value: &str,
    inverted: bool,
) -> Result<(), String> {
    let op = if inverted { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    if field == FieldType::Proto {
        e.load(selector, NFT_REG_1);
        let number = proto_number(value).ok_or_else(|| format!("{value:?} is not a protocol"))?;
        e.cmp(op, NFT_REG_1, &[number]);
        return Ok(());
    }
    let Selector::Payload { base, offset, len } = selector else {
        return Err(format!("{value:?} compared with a meta value"));
    };
    let (first, _, prefix) = range_of(field, value)?;
    let full = match field {
        FieldType::Ipv4 => (first as u32).to_be_bytes().to_vec(),
        _ => first.to_be_bytes().to_vec(),
    };
    if prefix.is_multiple_of(8) && prefix > 0 {
        // Whole bytes: load only those (nft does the same).
        let bytes = prefix / 8;
        e.load(
            Selector::Payload {
                base,
                offset,
                len: bytes,
            },
            NFT_REG_1,
        );
        e.cmp(op, NFT_REG_1, &full[..bytes as usize]);
    } else {
        let mut mask = vec![0u8; len as usize];
        for bit in 0..prefix as usize {
            mask[bit / 8] |= 0x80 >> (bit % 8);
        }
        e.load(selector, NFT_REG_1);
        e.bitwise(len, &mask, &vec![0; len as usize]);
        e.cmp(op, NFT_REG_1, &full);
    }
    Ok(())
}

/// `10.0.0.1:8080` or `[fd00::1]:8080`.
fn parse_target(target: &str, family: Family) -> Option<(Vec<u8>, u16)> {
    let addr: std::net::SocketAddr = target.parse().ok()?;
    let bytes = match (addr.ip(), family) {
        (IpAddr::V4(a), Family::Ip) => a.octets().to_vec(),
        (IpAddr::V6(a), Family::Ip6) => a.octets().to_vec(),
        _ => return None,
    };
    Some((bytes, addr.port()))
}

/// An error of a netlink call, with the likely cause when the kernel says EPERM.
pub fn explain(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::EPERM) {
        format!("{e} (rvs needs CAP_NET_ADMIN in its network namespace: run it as root or grant the capability)")
    } else {
        e.to_string()
    }
}

/// Plain netlink requests (not an nftables batch), numbered from 1 like a batch's messages.
#[derive(Default)]
pub(crate) struct Requests {
    pub buf: Vec<u8>,
    count: u32,
}

impl Requests {
    /// Appends one request of `subsystem`'s `kind` for address family `family` (AF_*).
    pub fn push(
        &mut self,
        subsystem: u16,
        kind: u16,
        family: u8,
        flags: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        self.count += 1;
        let start = header(
            &mut self.buf,
            (subsystem << 8) | kind,
            NLM_F_REQUEST | flags,
            self.count,
            family,
            0,
        );
        body(&mut self.buf);
        end(&mut self.buf, start);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The attributes of a netlink message body or nest: (type without flags, payload).
pub(crate) fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((kind, payload))
    })
}

/// A netlink socket to nftables, in the network namespace of the thread that opened it.
/// One batch at a time: its errors are read back by sequence number.
pub struct Socket {
    fd: OwnedFd,
    state: Mutex<SocketState>,
}

struct SocketState {
    /// Sequence numbers grow from batch to batch, so an answer left over from an earlier
    /// batch is never taken for one of this batch's.
    next_seq: u32,
    send_buffer: usize,
    receive_buffer: usize,
}

/// Error answers take about this much of the receive buffer each (the kernel's accounting).
const RECEIVE_BYTES_PER_MESSAGE: usize = 1024;
/// The receive buffer asked for at most: a batch failing in more messages than this holds
/// answers is refused all the same (the answers beyond are lost, and counted as an error).
const MAX_RECEIVE_BUFFER: usize = 16 << 20;

impl Socket {
    pub fn open() -> std::io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = Socket {
            fd,
            state: Mutex::new(SocketState {
                next_seq: 1,
                send_buffer: 0,
                receive_buffer: 0,
            }),
        };
        // Errors without the whole failed message echoed back.
        socket.set_option(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        // A dump the kernel stops answering ends in an error, not a hung thread.
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: timeout is a live timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                socket.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a zeroed sockaddr_nl is valid; the kernel picks the port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let bound = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn set_option(&self, level: i32, name: i32, value: i32) -> std::io::Result<()> {
        // SAFETY: value is a live c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Grows a socket buffer to `size`: beyond the system's limit where rvs may (the
    /// `FORCE` option needs CAP_NET_ADMIN in the initial user namespace), else up to that
    /// limit, as nft does.
    fn grow_buffer(&self, current: &mut usize, size: usize, force: i32, plain: i32) {
        if size <= *current {
            return;
        }
        let value = i32::try_from(size).unwrap_or(i32::MAX);
        if self.set_option(libc::SOL_SOCKET, force, value).is_err() {
            let _ = self.set_option(libc::SOL_SOCKET, plain, value);
        }
        *current = size;
    }

    /// Reads every answer queued on the socket: the (sequence number, errno) of errors, and
    /// whether answers were lost (the receive buffer overflowed).
    fn drain(&self, errors: &mut Vec<(u32, i32)>) -> std::io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut lost = false;
        loop {
            let n = match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(lost),
                    // Answers were dropped; the rest is still queued.
                    Some(libc::ENOBUFS) => {
                        lost = true;
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            parse_errors(&buf[..n], errors);
        }
    }

    /// Sends `batch` (as `encode` made it, or `Requests`: sequence numbers from 1) and
    /// returns the kernel's errors, by the batch's own sequence numbers; empty when the kernel
    /// committed it. The kernel processes messages while sendto runs, so its answers are
    /// queued when the call returns: messages ask for no acknowledgement, and any answer is an
    /// error.
    pub fn send(&self, batch: &mut [u8]) -> std::io::Result<Vec<(u32, i32)>> {
        let (mut state, base, messages) = self.start(batch)?;
        let SocketState {
            send_buffer,
            receive_buffer,
            ..
        } = &mut *state;
        // The whole batch goes in one message; the send buffer must hold it.
        self.grow_buffer(
            send_buffer,
            batch.len() + 4096,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
        );
        let answers = (messages as usize * RECEIVE_BYTES_PER_MESSAGE).min(MAX_RECEIVE_BUFFER);
        self.grow_buffer(
            receive_buffer,
            answers,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
        );
        self.send_to_kernel(batch)?;
        let mut answers = Vec::new();
        let lost = self.drain(&mut answers)?;
        let mut errors: Vec<(u32, i32)> = answers
            .into_iter()
            .filter_map(|(seq, errno)| {
                let own = seq.wrapping_sub(base.wrapping_sub(1));
                (own >= 1 && own <= messages).then_some((own, errno))
            })
            .collect();
        if lost {
            errors.push((0, libc::ENOBUFS));
        }
        Ok(errors)
    }

    /// Sends one dump request and hands each answer's address family and attributes to
    /// `each`, until the kernel's end of dump.
    pub fn dump(&self, request: &mut [u8], mut each: impl FnMut(u8, &[u8])) -> std::io::Result<()> {
        let (_state, seq, _) = self.start(request)?;
        self.send_to_kernel(request)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut interrupted = false;
        loop {
            // MSG_TRUNC: the real length, to tell a cut datagram.
            let n = self.recv(&mut buf, libc::MSG_TRUNC)?;
            if n > buf.len() {
                return Err(std::io::Error::other(
                    "netlink answer larger than the buffer",
                ));
            }
            for message in messages(&buf[..n]).filter(|m| m.seq == seq) {
                // NLM_F_DUMP_INTR: the table changed during the dump, which may have skipped
                // or repeated objects.
                interrupted |= message.flags & 0x10 != 0;
                match message.kind {
                    // A dump cut short says why in its end.
                    NLMSG_DONE | NLMSG_ERROR if message.error() != 0 => {
                        return Err(std::io::Error::from_raw_os_error(message.error()));
                    }
                    NLMSG_DONE if interrupted => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::Interrupted,
                            "the table changed during the dump",
                        ));
                    }
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {}
                    // nfgenmsg (family first), then attributes.
                    _ => {
                        if let Some((head, attrs)) = message.body.split_at_checked(4) {
                            each(head[0], attrs);
                        }
                    }
                }
            }
        }
    }

    /// One datagram from the kernel into `buf` (its length), retried when interrupted.
    fn recv(&self, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// Takes the socket for one exchange: answers left over are read and dropped, and
    /// `messages` (numbered from 1) get the next sequence numbers. Returns the first one and
    /// how many there are.
    fn start(
        &self,
        messages: &mut [u8],
    ) -> std::io::Result<(MutexGuard<'_, SocketState>, u32, u32)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.drain(&mut Vec::new())?;
        let base = state.next_seq;
        let count = rebase_sequence_numbers(messages, base.wrapping_sub(1));
        state.next_seq = base.wrapping_add(count);
        Ok((state, base, count))
    }

    fn send_to_kernel(&self, messages: &[u8]) -> std::io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: messages and kernel are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                messages.as_ptr().cast(),
                messages.len(),
                0,
                std::ptr::addr_of!(kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EMSGSIZE) => std::io::Error::other(format!(
                    "{} bytes of netlink messages do not fit the socket's send buffer (raise \
                     net.core.wmem_max)",
                    messages.len()
                )),
                _ => err,
            });
        }
        Ok(())
    }
}

/// Adds `offset` to the sequence number of every message in `batch`; returns how many
/// there are.
fn rebase_sequence_numbers(batch: &mut [u8], offset: u32) -> u32 {
    let mut at = 0;
    let mut count = 0;
    while at + 16 <= batch.len() {
        let len = u32::from_ne_bytes([batch[at], batch[at + 1], batch[at + 2], batch[at + 3]]);
        let seq_at = at + 8;
        let seq = u32::from_ne_bytes([
            batch[seq_at],
            batch[seq_at + 1],
            batch[seq_at + 2],
            batch[seq_at + 3],
        ]);
        batch[seq_at..seq_at + 4].copy_from_slice(&seq.wrapping_add(offset).to_ne_bytes());
        count += 1;
        if len < 16 {
            break;
        }
        at += (len as usize).next_multiple_of(4);
    }
    count
}

/// (sequence number, errno) of each error in a datagram of netlink messages.
fn parse_errors(data: &[u8], errors: &mut Vec<(u32, i32)>) {
    for message in messages(data) {
        if message.kind == NLMSG_ERROR && message.error() != 0 {
            errors.push((message.seq, message.error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_specs_as_nft_declares_them() {
        let spec = SetSpec::parse(
            "type ipv4_addr . inet_proto . inet_service : verdict",
            SetKind::Map,
        )
        .unwrap();
        assert_eq!(spec.key_type(), 0x730d);
        assert_eq!(spec.key_len(), 12);
        assert_eq!(spec.flags(), NFT_SET_MAP);
        // nft 1.0.6's userdata of this map, byte for byte.
        assert_eq!(
            spec.userdata(),
            [0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0]
        );
        let hash = SetSpec::parse("typeof numgen inc mod 3 : verdict", SetKind::Map).unwrap();
        assert_eq!(
            hash.userdata(),
            [
                0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 0x1a, 0, 4, 0x17, 0, 0, 0, 1, 0x12, 0, 4, 0,
                0, 0, 0, 1, 4, 3, 0, 0, 0, 2, 4, 0, 0, 0, 0, 4, 8, 0, 4, 1, 0, 0, 0, 1, 0, 6, 4, 0,
                0, 0, 0
            ]
        );
        let affinity = SetSpec::parse(
            "type ipv6_addr; flags dynamic,timeout; timeout 600s",
            SetKind::Set,
        )
        .unwrap();
        assert_eq!(affinity.flags(), NFT_SET_EVAL | NFT_SET_TIMEOUT);
        assert_eq!(affinity.timeout_ms, Some(600_000));
        assert_eq!(affinity.key_len(), 16);
        assert!(SetSpec::parse("type ether_addr", SetKind::Set).is_err());
        assert!(SetSpec::parse("type ipv4_addr : verdict", SetKind::Set).is_err());
    }

    #[test]
    fn intervals_merge_and_end_past_their_last_address() {
        let ranges = [
            "10.2.0.0/16",
            "10.1.0.0/16",
            "10.1.5.0/24",
            "255.255.255.0/24",
        ]
        .iter()
        .map(|r| {
            range_of(FieldType::Ipv4, r)
                .map(|(a, b, _)| (a, b))
                .unwrap()
        })
        .collect::<Vec<_>>();
        let elements =
            interval_elements(FieldType::Ipv4, ranges.clone(), Intervals::Anonymous).unwrap();
        let shown: Vec<(String, bool)> = elements
            .iter()
            .map(|e| {
                let ip = Ipv4Addr::new(e.key[0], e.key[1], e.key[2], e.key[3]);
                (ip.to_string(), e.interval_end)
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("0.0.0.0".to_string(), true),
                ("10.1.0.0".into(), false),
                ("10.3.0.0".into(), true),
                ("255.255.255.0".into(), false),
            ]
        );
        // A named set's are written as given: overlaps are refused, as nft refuses them.
        assert!(interval_elements(FieldType::Ipv4, ranges, Intervals::Named).is_err());
        let named = interval_elements(
            FieldType::Ipv4,
            vec![(0x0a00_0005, 0x0a00_0005), (0x0a00_0006, 0x0a00_0007)],
            Intervals::Named,
        )
        .unwrap();
        let ends: Vec<bool> = named.iter().map(|e| e.interval_end).collect();
        assert_eq!(ends, [false, true, false, true]);
        assert!(range_of(FieldType::Ipv4, "fd00::/8").is_err());
        assert!(range_of(FieldType::Ipv4, "10.0.0.0/33").is_err());
    }

    #[test]
    fn rules_outside_the_renderers_language_are_refused_by_name() {
        let mut out = Vec::new();
        for rule in [
            "tcp dport 80 accept",
            "ip6 saddr ::1 drop",
            "numgen inc mod 3 > 1 drop",
            "meta l4proto icmp drop",
            "dnat to [::1]:80",
            "ip saddr . ip daddr 10.0.0.1 drop",
        ] {
            out.clear();
            assert!(
                compile_rule(rule, Family::Ip, 1, &mut out).is_err(),
                "{rule} accepted"
            );
        }
        let code = compile_rule(
            "ip saddr != { 10.0.0.0/8, 192.168.0.0/16 } jump mark-for-masquerade",
            Family::Ip,
            7,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            code.anonymous_sets,
            [(FieldType::Ipv4, vec!["10.0.0.0/8", "192.168.0.0/16"])]
        );
    }

    #[test]
    fn batches_are_numbered_from_one_and_shifted_on_the_wire() {
        let tx = Transaction {
            tables: vec![(Family::Ip, vec![Op::AddTable, Op::FlushChain("services")])],
        };
        let mut batch = encode(&tx).unwrap();
        let mut bytes = batch.take_bytes();
        let seqs = |bytes: &[u8]| {
            let mut at = 0;
            let mut out = Vec::new();
            while at < bytes.len() {
                let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                out.push(u32::from_ne_bytes(
                    bytes[at + 8..at + 12].try_into().unwrap(),
                ));
                at += len;
            }
            out
        };
        // Batch begin, two messages, batch end.
        assert_eq!(seqs(&bytes), [1, 2, 3, 4]);
        assert_eq!(rebase_sequence_numbers(&mut bytes, 100), 4);
        assert_eq!(seqs(&bytes), [101, 102, 103, 104]);
        // Errors come back by the batch's own numbers and name what failed.
        let refusal = batch.refusal(&[(3, libc::ENOENT)]);
        assert!(refusal.starts_with("chain ip rvs services: "), "{refusal}");
    }

    #[test]
    fn error_answers_are_read_by_sequence_number() {
        let mut data = Vec::new();
        for (seq, code) in [(5u32, 0i32), (9, -2)] {
            data.extend_from_slice(&36u32.to_ne_bytes());
            data.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            data.extend_from_slice(&0u16.to_ne_bytes());
            data.extend_from_slice(&seq.to_ne_bytes());
            data.extend_from_slice(&0u32.to_ne_bytes());
            data.extend_from_slice(&code.to_ne_bytes());
            data.extend_from_slice(&[0; 16]);
        }
        let mut errors = Vec::new();
        parse_errors(&data, &mut errors);
        assert_eq!(errors, [(9, 2)]);
    }

    const VOCABULARY: &[&str] = &[
        "ip",
        "ip6",
        "saddr",
        "daddr",
        "th",
        "sport",
        "dport",
        "meta",
        "l4proto",
        "mark",
        "set",
        "&",
        "|",
        "^",
        "==",
        "<",
        "!=",
        "0x4000",
        "0",
        "5",
        "tcp",
        "udp",
        "icmp",
        "{",
        "}",
        "10.0.0.0/8,",
        "fd00::/8",
        "10.0.0.1:80",
        "[fd00::1]:80",
        "vmap",
        "@m",
        "@",
        "numgen",
        "inc",
        "random",
        "mod",
        "jhash",
        "seed",
        "update",
        "counter",
        "dnat",
        "to",
        "masquerade",
        "fully-random",
        "reject",
        "with",
        "reset",
        "ct",
        "state",
        "new",
        "status",
        "fib",
        "type",
        "local",
        "jump",
        "goto",
        "drop",
        "return",
        "accept",
        ".",
        "c",
        "10.0.0.0/33",
        "4294967295",
        "99999999999",
        "::1",
        "127.0.0.0/8",
    ];

    proptest::proptest! {
        /// Whatever the words, a rule is compiled or refused: never a panic.
        #[test]
        fn any_rule_text_is_compiled_or_refused(
            words in proptest::collection::vec(proptest::sample::select(VOCABULARY), 0..14),
            v6 in proptest::prelude::any::<bool>()
        ) {
            let family = if v6 { Family::Ip6 } else { Family::Ip };
            let mut out = Vec::new();
            let _ = compile_rule(&words.join(" "), family, 1, &mut out);
        }

        /// Intervals come out in order, starts and ends alternating, whatever the ranges.
        #[test]
        fn intervals_are_ordered(
            ranges in proptest::collection::vec((0u32..64, 0u32..8), 0..8),
            anonymous in proptest::prelude::any::<bool>()
        ) {
            let ranges: Vec<(u128, u128)> = ranges
                .iter()
                .map(|(first, len)| (u128::from(*first), u128::from(first + len)))
                .collect();
            let whose = if anonymous { Intervals::Anonymous } else { Intervals::Named };
            if let Ok(elements) = interval_elements(FieldType::Ipv4, ranges, whose) {
                let keys: Vec<u32> = elements
                    .iter()
                    .map(|e| u32::from_be_bytes(e.key[..4].try_into().unwrap()))
                    .collect();
                proptest::prop_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{:?}", keys);
                let starts = elements.iter().skip(usize::from(anonymous && keys.first() == Some(&0) && elements[0].interval_end));
                for (i, e) in starts.enumerate() {
                    proptest::prop_assert_eq!(e.interval_end, i % 2 == 1);
                }
            }
        }
    }
}
