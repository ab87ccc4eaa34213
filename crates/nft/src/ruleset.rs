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

impl Ruleset {
    /// The `nft -f` script that turns `before` into `self`, atomically. Empty when nothing
    /// changes. Only changed chains are flushed and rewritten, only changed map elements
    /// touched; stale chains, maps and sets are removed last, once nothing refers to them.
    pub fn script(&self, before: Before<'_>) -> String {
        let empty_table = Table::default();
        let empty_existing = Existing::default();
        let mut out = String::new();
        for family in Family::ALL {
            let new = self.tables.get(&family).unwrap_or(&empty_table);
            let f = family.name();
            let mut body = String::new();
            match before {
                Before::Applied(old) => {
                    let old = old.tables.get(&family).unwrap_or(&empty_table);
                    diff_table(f, old, new, &mut body);
                }
                Before::Listed(listed) => {
                    let existing = listed.get(&family).unwrap_or(&empty_existing);
                    rewrite_table(f, existing, new, &mut body);
                }
            }
            if !body.is_empty() {
                let _ = writeln!(out, "add table {f} {TABLE}");
                out.push_str(&body);
            }
        }
        out
    }

    /// The script that removes rvs's tables.
    pub fn delete_script(families: &[Family]) -> String {
        families
            .iter()
            .map(|f| {
                format!(
                    "add table {0} {TABLE}\ndelete table {0} {TABLE}\n",
                    f.name()
                )
            })
            .collect()
    }
}

fn add_chain(f: &str, name: &str, chain: &Chain, out: &mut String) {
    match &chain.base {
        Some(base) => {
            let _ = writeln!(out, "add chain {f} {TABLE} {name} {{ {base}; }}");
        }
        None => {
            let _ = writeln!(out, "add chain {f} {TABLE} {name}");
        }
    }
}

/// The rules of `chains`, replacing what they hold: chains that already exist in the kernel
/// (`existed`) are flushed first; a new chain is empty. The rules go in one `table { chain
/// { ... } }` block rather than one `add rule TABLE CHAIN ...` command each: nft parses the
/// block ~10% faster (at 10,000 Services), and skipping needless flushes saves ~20% more.
fn write_rules<'a>(
    f: &str,
    chains: &[(&'a String, &'a Chain)],
    existed: impl Fn(&str) -> bool,
    out: &mut String,
) {
    if chains.is_empty() {
        return;
    }
    for (name, _) in chains.iter().filter(|(name, _)| existed(name)) {
        let _ = writeln!(out, "flush chain {f} {TABLE} {name}");
    }
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

fn add_map(f: &str, name: &str, map: &Map, out: &mut String) {
    let _ = writeln!(out, "add map {f} {TABLE} {name} {{ {}; }}", map.spec);
}

fn add_set(f: &str, name: &str, set: &Set, out: &mut String) {
    let _ = writeln!(out, "add set {f} {TABLE} {name} {{ {}; }}", set.spec);
}

/// Elements in batches: one huge line is slow for nft to parse and hard to read in errors.
fn elements(f: &str, verb: &str, name: &str, items: &[String], out: &mut String) {
    for batch in items.chunks(500) {
        let _ = writeln!(
            out,
            "{verb} element {f} {TABLE} {name} {{ {} }}",
            batch.join(", ")
        );
    }
}

fn map_items<'a>(m: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    m.map(|(k, v)| format!("{k} : {v}")).collect()
}

fn diff_table(f: &str, old: &Table, new: &Table, out: &mut String) {
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => {
                add_set(f, name, set, out);
                let items: Vec<String> = set.elements.iter().cloned().collect();
                elements(f, "add", name, &items, out);
            }
            Some(prev) => {
                let added: Vec<String> = set.elements.difference(&prev.elements).cloned().collect();
                if !set.prune_on_full_sync_only {
                    let gone: Vec<String> =
                        prev.elements.difference(&set.elements).cloned().collect();
                    elements(f, "delete", name, &gone, out);
                }
                elements(f, "add", name, &added, out);
            }
        }
    }
    for (name, map) in &new.maps {
        if !old.maps.contains_key(name) {
            add_map(f, name, map, out);
        }
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            add_chain(f, name, chain, out);
        }
    }
    let changed: Vec<(&String, &Chain)> = new
        .chains
        .iter()
        .filter(|(name, chain)| old.chains.get(*name) != Some(*chain))
        .collect();
    write_rules(f, &changed, |name| old.chains.contains_key(name), out);
    for (name, map) in &new.maps {
        let prev = old.maps.get(name);
        let gone: Vec<String> = prev
            .map(|p| {
                p.elements
                    .iter()
                    .filter(|(k, v)| map.elements.get(*k) != Some(v))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        elements(f, "delete", name, &gone, out);
        let added = map_items(
            map.elements
                .iter()
                .filter(|(k, v)| prev.and_then(|p| p.elements.get(*k)) != Some(v)),
        );
        elements(f, "add", name, &added, out);
    }
    let stale_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    remove_stale(
        f,
        &stale_chains,
        old.maps.keys().filter(|n| !new.maps.contains_key(*n)),
        old.sets.keys().filter(|n| !new.sets.contains_key(*n)),
        out,
    );
}

fn rewrite_table(f: &str, existing: &Existing, new: &Table, out: &mut String) {
    for (name, set) in &new.sets {
        add_set(f, name, set, out);
        // Static sets are refilled; dynamic ones (affinity) keep what the kernel learned.
        if !set.spec.contains("dynamic") {
            let _ = writeln!(out, "flush set {f} {TABLE} {name}");
            let items: Vec<String> = set.elements.iter().cloned().collect();
            elements(f, "add", name, &items, out);
        }
    }
    for (name, map) in &new.maps {
        add_map(f, name, map, out);
    }
    for (name, chain) in &new.chains {
        add_chain(f, name, chain, out);
    }
    let all: Vec<(&String, &Chain)> = new.chains.iter().collect();
    write_rules(f, &all, |name| existing.chains.contains(name), out);
    for (name, map) in &new.maps {
        let _ = writeln!(out, "flush map {f} {TABLE} {name}");
        elements(f, "add", name, &map_items(map.elements.iter()), out);
    }
    let stale_chains: Vec<&String> = existing
        .chains
        .iter()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    remove_stale(
        f,
        &stale_chains,
        existing.maps.iter().filter(|n| !new.maps.contains_key(*n)),
        existing.sets.iter().filter(|n| !new.sets.contains_key(*n)),
        out,
    );
}

/// Stale chains are flushed first (they may jump to each other), then stale maps go (their
/// elements may point at stale chains: the kernel counts those as references), then the
/// chains, then the sets they used.
fn remove_stale<'a>(
    f: &str,
    chains: &[&String],
    maps: impl Iterator<Item = &'a String>,
    sets: impl Iterator<Item = &'a String>,
    out: &mut String,
) {
    for name in chains {
        let _ = writeln!(out, "flush chain {f} {TABLE} {name}");
    }
    for name in maps {
        let _ = writeln!(out, "delete map {f} {TABLE} {name}");
    }
    for name in chains {
        let _ = writeln!(out, "delete chain {f} {TABLE} {name}");
    }
    for name in sets {
        let _ = writeln!(out, "delete set {f} {TABLE} {name}");
    }
}
