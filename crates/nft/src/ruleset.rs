//! A ruleset as data: tables of chains, maps and sets, and the nft script that moves the
//! kernel from one ruleset to another in a single transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The table rvs owns in each family; nothing else is ever touched.
pub const TABLE: &str = "rvs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    /// The nft family name, also the address expression prefix (`ip saddr`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The netfilter family number (`NFPROTO_IPV4`, `NFPROTO_IPV6`).
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `type nat hook prerouting priority dstnat` for base chains.
    pub base: Option<String>,
    pub rules: Vec<String>,
}

impl Chain {
    pub fn regular(rules: Vec<String>) -> Self {
        Chain { base: None, rules }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// `type ipv4_addr . inet_proto . inet_service : verdict`.
    pub spec: String,
    pub elements: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// `type ipv4_addr; flags dynamic,timeout; timeout 10800s`.
    pub spec: String,
    /// Static elements; dynamic sets (affinity) are filled by the kernel and never flushed.
    pub elements: BTreeSet<String>,
    /// Stale elements are harmless: incremental syncs only add (deleting makes nft load the
    /// whole set), full syncs prune.
    pub prune_on_full_sync_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub chains: BTreeMap<String, Chain>,
    pub maps: BTreeMap<String, Map>,
    pub sets: BTreeMap<String, Set>,
}

/// What rvs wants in the kernel: one table per family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: BTreeMap<Family, Table>,
}

/// The names of what exists in a table, as listed from the kernel (contents unknown).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub maps: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// What the kernel holds before a sync: a ruleset rvs applied itself (incremental sync), or
/// only names listed from the kernel (full sync: everything is rewritten).
pub enum Before<'a> {
    Applied(&'a Ruleset),
    Listed(&'a BTreeMap<Family, Existing>),
}

/// What a transaction holds for one table, in order: the kernel applies it all or nothing.
/// Written out as an `nft -f` script (`Transaction::script`) or as a netlink batch
/// (`netlink::encode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    AddTable,
    DeleteTable,
    /// `base`: the hook of a base chain (`type nat hook prerouting priority -100`).
    AddChain {
        name: &'a str,
        base: Option<&'a str>,
    },
    FlushChain(&'a str),
    DeleteChain(&'a str),
    /// The rules of chains, each emptied before if it existed (by a `FlushChain`).
    Rules(Vec<(&'a str, &'a Chain)>),
    AddSet {
        kind: SetKind,
        name: &'a str,
        spec: &'a str,
    },
    FlushSet {
        kind: SetKind,
        name: &'a str,
    },
    DeleteSet {
        kind: SetKind,
        name: &'a str,
    },
    Elements {
        verb: Verb,
        kind: SetKind,
        set: &'a str,
        spec: &'a str,
        items: Vec<Element<'a>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Set,
    Map,
}

impl SetKind {
    fn keyword(self) -> &'static str {
        match self {
            SetKind::Set => "set",
            SetKind::Map => "map",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Delete,
}

/// A set element (`10.0.0.1 . 10.0.0.1`), or a map element (key and verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// One atomic change of rvs's tables, per family in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction<'a> {
    pub tables: Vec<(Family, Vec<Op<'a>>)>,
}

impl Transaction<'_> {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The `nft -f` script of the transaction.
    pub fn script(&self) -> String {
        let mut out = String::new();
        for (family, ops) in &self.tables {
            let f = family.name();
            for op in ops {
                write_op(f, op, &mut out);
            }
        }
        out
    }
}

fn write_op(f: &str, op: &Op<'_>, out: &mut String) {
    match op {
        Op::AddTable => {
            let _ = writeln!(out, "add table {f} {TABLE}");
        }
        Op::DeleteTable => {
            let _ = writeln!(out, "delete table {f} {TABLE}");
        }
        Op::AddChain {
            name,
            base: Some(base),
        } => {
            let _ = writeln!(out, "add chain {f} {TABLE} {name} {{ {base}; }}");
        }
        Op::AddChain { name, base: None } => {
            let _ = writeln!(out, "add chain {f} {TABLE} {name}");
        }
        Op::FlushChain(name) => {
            let _ = writeln!(out, "flush chain {f} {TABLE} {name}");
        }
        Op::DeleteChain(name) => {
            let _ = writeln!(out, "delete chain {f} {TABLE} {name}");
        }
        // One `table { chain { ... } }` block rather than one `add rule TABLE CHAIN ...`
        // command each: nft parses the block ~10% faster (at 10,000 Services).
        Op::Rules(chains) => {
            let _ = writeln!(out, "table {f} {TABLE} {{");
            for (name, chain) in chains {
                let _ = writeln!(out, "\tchain {name} {{");
                for rule in &chain.rules {
                    let _ = writeln!(out, "\t\t{rule}");
                }
                out.push_str("\t}\n");
            }
            out.push_str("}\n");
        }
        Op::AddSet { kind, name, spec } => {
            let _ = writeln!(
                out,
                "add {} {f} {TABLE} {name} {{ {spec}; }}",
                kind.keyword()
            );
        }
        Op::FlushSet { kind, name } => {
            let _ = writeln!(out, "flush {} {f} {TABLE} {name}", kind.keyword());
        }
        Op::DeleteSet { kind, name } => {
            let _ = writeln!(out, "delete {} {f} {TABLE} {name}", kind.keyword());
        }
        // In batches: one huge line is slow for nft to parse and hard to read in errors.
        Op::Elements {
            verb, set, items, ..
        } => {
            let verb = match verb {
                Verb::Add => "add",
                Verb::Delete => "delete",
            };
            for batch in items.chunks(500) {
                let _ = write!(out, "{verb} element {f} {TABLE} {set} {{ ");
                for (i, item) in batch.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(item.key);
                    if let Some(value) = item.value {
                        let _ = write!(out, " : {value}");
                    }
                }
                out.push_str(" }\n");
            }
        }
    }
}

impl Ruleset {
    /// The transaction that turns `before` into `self`, atomically. Empty when nothing
    /// changes. Only changed chains are flushed and rewritten, only changed map elements
    /// touched; stale chains, maps and sets are removed last, once nothing refers to them.
    pub fn transaction<'a>(&'a self, before: Before<'a>) -> Transaction<'a> {
        static EMPTY_TABLE: Table = Table {
            chains: BTreeMap::new(),
            maps: BTreeMap::new(),
            sets: BTreeMap::new(),
        };
        static EMPTY_EXISTING: Existing = Existing {
            chains: BTreeSet::new(),
            maps: BTreeSet::new(),
            sets: BTreeSet::new(),
        };
        let mut tx = Transaction::default();
        for family in Family::ALL {
            let new = self.tables.get(&family).unwrap_or(&EMPTY_TABLE);
            let mut ops = vec![Op::AddTable];
            match before {
                Before::Applied(old) => {
                    let old = old.tables.get(&family).unwrap_or(&EMPTY_TABLE);
                    diff_table(old, new, &mut ops);
                }
                Before::Listed(listed) => {
                    let existing = listed.get(&family).unwrap_or(&EMPTY_EXISTING);
                    rewrite_table(existing, new, &mut ops);
                }
            }
            if ops.len() > 1 {
                tx.tables.push((family, ops));
            }
        }
        tx
    }

    /// The `nft -f` script of `transaction(before)`.
    pub fn script(&self, before: Before<'_>) -> String {
        self.transaction(before).script()
    }

    /// The transaction that removes rvs's tables (adding them first: deleting a table that
    /// is not there fails).
    pub fn delete_transaction(families: &[Family]) -> Transaction<'static> {
        Transaction {
            tables: families
                .iter()
                .map(|f| (*f, vec![Op::AddTable, Op::DeleteTable]))
                .collect(),
        }
    }
}

/// The rules of `chains`, replacing what they hold: chains that already exist in the kernel
/// (`existed`) are flushed first (a new chain is empty: needless flushes of 10,000 new
/// chains cost ~20% of a full sync's time in nft).
fn write_rules<'a>(
    chains: Vec<(&'a str, &'a Chain)>,
    existed: impl Fn(&str) -> bool,
    ops: &mut Vec<Op<'a>>,
) {
    if chains.is_empty() {
        return;
    }
    for (name, _) in chains.iter().filter(|(name, _)| existed(name)) {
        ops.push(Op::FlushChain(name));
    }
    ops.push(Op::Rules(chains));
}

fn add_chain<'a>(name: &'a str, chain: &'a Chain, ops: &mut Vec<Op<'a>>) {
    ops.push(Op::AddChain {
        name,
        base: chain.base.as_deref(),
    });
}

fn elements<'a>(
    verb: Verb,
    (kind, set): (SetKind, &'a str),
    spec: &'a str,
    items: Vec<Element<'a>>,
    ops: &mut Vec<Op<'a>>,
) {
    if !items.is_empty() {
        ops.push(Op::Elements {
            verb,
            kind,
            set,
            spec,
            items,
        });
    }
}

/// Empties a set or map and puts `items` in.
fn refill<'a>(
    (kind, name): (SetKind, &'a str),
    spec: &'a str,
    items: Vec<Element<'a>>,
    ops: &mut Vec<Op<'a>>,
) {
    ops.push(Op::FlushSet { kind, name });
    elements(Verb::Add, (kind, name), spec, items, ops);
}

fn keys<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<Element<'a>> {
    keys.map(|key| Element { key, value: None }).collect()
}

fn map_items<'a>(m: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<Element<'a>> {
    m.map(|(key, value)| Element {
        key,
        value: Some(value),
    })
    .collect()
}

fn diff_table<'a>(old: &'a Table, new: &'a Table, ops: &mut Vec<Op<'a>>) {
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => {
                ops.push(Op::AddSet {
                    kind: SetKind::Set,
                    name,
                    spec: &set.spec,
                });
                elements(
                    Verb::Add,
                    (SetKind::Set, name),
                    &set.spec,
                    keys(set.elements.iter()),
                    ops,
                );
            }
            Some(prev) => {
                if !set.prune_on_full_sync_only {
                    let gone = keys(prev.elements.difference(&set.elements));
                    elements(Verb::Delete, (SetKind::Set, name), &set.spec, gone, ops);
                }
                let added = keys(set.elements.difference(&prev.elements));
                elements(Verb::Add, (SetKind::Set, name), &set.spec, added, ops);
            }
        }
    }
    for (name, map) in &new.maps {
        if !old.maps.contains_key(name) {
            ops.push(Op::AddSet {
                kind: SetKind::Map,
                name,
                spec: &map.spec,
            });
        }
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            add_chain(name, chain, ops);
        }
    }
    let changed: Vec<(&str, &Chain)> = new
        .chains
        .iter()
        .filter(|(name, chain)| old.chains.get(*name) != Some(*chain))
        .map(|(name, chain)| (name.as_str(), chain))
        .collect();
    write_rules(changed, |name| old.chains.contains_key(name), ops);
    for (name, map) in &new.maps {
        let prev = old.maps.get(name);
        let gone = prev
            .map(|p| {
                keys(
                    p.elements
                        .iter()
                        .filter(|(k, v)| map.elements.get(*k) != Some(v))
                        .map(|(k, _)| k),
                )
            })
            .unwrap_or_default();
        elements(Verb::Delete, (SetKind::Map, name), &map.spec, gone, ops);
        let added = map_items(
            map.elements
                .iter()
                .filter(|(k, v)| prev.and_then(|p| p.elements.get(*k)) != Some(v)),
        );
        elements(Verb::Add, (SetKind::Map, name), &map.spec, added, ops);
    }
    let stale_chains: Vec<&str> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .map(String::as_str)
        .collect();
    remove_stale(
        &stale_chains,
        old.maps.keys().filter(|n| !new.maps.contains_key(*n)),
        old.sets.keys().filter(|n| !new.sets.contains_key(*n)),
        ops,
    );
}

fn rewrite_table<'a>(existing: &'a Existing, new: &'a Table, ops: &mut Vec<Op<'a>>) {
    for (name, set) in &new.sets {
        ops.push(Op::AddSet {
            kind: SetKind::Set,
            name,
            spec: &set.spec,
        });
        // Static sets are refilled; dynamic ones (affinity) keep what the kernel learned.
        if !set.spec.contains("dynamic") {
            refill(
                (SetKind::Set, name),
                &set.spec,
                keys(set.elements.iter()),
                ops,
            );
        }
    }
    for (name, map) in &new.maps {
        ops.push(Op::AddSet {
            kind: SetKind::Map,
            name,
            spec: &map.spec,
        });
    }
    for (name, chain) in &new.chains {
        add_chain(name, chain, ops);
    }
    let all: Vec<(&str, &Chain)> = new.chains.iter().map(|(n, c)| (n.as_str(), c)).collect();
    write_rules(all, |name| existing.chains.contains(name), ops);
    for (name, map) in &new.maps {
        refill(
            (SetKind::Map, name),
            &map.spec,
            map_items(map.elements.iter()),
            ops,
        );
    }
    let stale_chains: Vec<&str> = existing
        .chains
        .iter()
        .filter(|n| !new.chains.contains_key(*n))
        .map(String::as_str)
        .collect();
    remove_stale(
        &stale_chains,
        existing.maps.iter().filter(|n| !new.maps.contains_key(*n)),
        existing.sets.iter().filter(|n| !new.sets.contains_key(*n)),
        ops,
    );
}

/// Stale chains are flushed first (they may jump to each other), then stale maps go (their
/// elements may point at stale chains: the kernel counts those as references), then the
/// chains, then the sets they used.
fn remove_stale<'a>(
    chains: &[&'a str],
    maps: impl Iterator<Item = &'a String>,
    sets: impl Iterator<Item = &'a String>,
    ops: &mut Vec<Op<'a>>,
) {
    for name in chains {
        ops.push(Op::FlushChain(name));
    }
    for name in maps {
        ops.push(Op::DeleteSet {
            kind: SetKind::Map,
            name,
        });
    }
    for name in chains {
        ops.push(Op::DeleteChain(name));
    }
    for name in sets {
        ops.push(Op::DeleteSet {
            kind: SetKind::Set,
            name,
        });
    }
}
