//! nf_tables over netlink, in the process: typed tables, chains, sets,
//! elements and rules; batches committed as one kernel transaction; and
//! listings read back as the same types. No `nft` process and nothing of
//! nft's on the host.
//!
//! A [`Batch`] is what `nft -f` sends for a script: BEGIN, the commands,
//! END, in one sendmsg. The kernel applies all of it or none of it, and
//! answers each command with an ack or an error, which names the command
//! at fault here. The kernel processes the batch inside that sendmsg, so
//! the answers are waiting when it returns.
//!
//! This module knows nf_tables, not berth: which tables and rules berth
//! owns is decided by its callers.

mod events;
mod expr;
pub mod matches;
mod objects;
mod socket;
pub mod value;
mod wire;

use std::collections::HashMap;

pub use events::{RulesetEvents, Seen};
pub use expr::{
    reg_at_word, CmpOp, CtKey, Expr, MetaKey, NatKind, PayloadBase, Verdict, FIB_F_DADDR,
    FIB_F_IIF, FIB_F_MARK, FIB_F_OIF, FIB_F_SADDR, FIB_RESULT_ADDRTYPE, NAT_MAP_IPS,
    NAT_PROTO_SPECIFIED, REG_1, REG_VERDICT,
};
pub use objects::{
    BaseChain, Chain, ChainRef, ChainType, DataType, Element, ElementData, Family, Hook, Key,
    MapData, Rule, Set, Table, VerdictKey,
};

use crate::{Error, Netns, Result};
use netlink_packet_core::Nla;
use wire::Attr;

/// One command of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Command {
    AddTable(Table),
    DeleteTable(Table),
    AddChain(Chain),
    FlushChain(ChainRef),
    DeleteChain(ChainRef),
    AddSet(Set),
    /// A constant anonymous set with its elements (nft's `{ a, b }`), by
    /// the name [`Batch::add_anonymous_set`] gave it; in a match's form
    /// when [`Batch::add_match_set`] added it.
    AddAnonymousSet(Table, String, Key, Vec<Element>, Option<objects::SetForm>),
    /// An anonymous interval set's elements, as nft sends them.
    AddIntervalElements(Table, String, Vec<Element>),
    FlushSet(Table, String),
    DeleteSet(Table, String),
    AddElements(Table, String, Vec<Element>),
    DeleteElements(Table, String, Vec<Element>),
    AddRule(Rule),
    InsertRule(Rule),
    DeleteRule(ChainRef, u64),
}

/// Elements per NEWSETELEM/DELSETELEM message: the element list is one
/// netlink attribute, at most 64 KiB, and an element of berth's widest
/// map (an IPv6 address, protocol and port to an IPv6 address and port)
/// takes under 100 bytes.
const ELEMENTS_PER_MESSAGE: usize = 500;

/// The name nft gives the kernel for an anonymous set: the kernel puts a
/// number in place of `%d`.
const ANON_SET: &str = "__set%d";

/// A set's name as sent: an anonymous set's batch-local name is the
/// kernel's template (the set ID tells them apart).
fn wire_set_name(name: &str) -> &str {
    match name.split_once('/') {
        Some((ANON_SET, _)) => ANON_SET,
        _ => name,
    }
}

impl Command {
    /// The messages the command is sent as: an anonymous set is created,
    /// then filled, in two.
    fn expand(&self) -> Vec<Command> {
        match self {
            Command::AddAnonymousSet(t, name, _, e, form) => {
                let (t, name, e) = (t.clone(), name.clone(), e.clone());
                let fill = match form {
                    Some(f) if f.interval => Command::AddIntervalElements(t, name, e),
                    _ => Command::AddElements(t, name, e),
                };
                vec![self.clone(), fill]
            }
            // An attribute holds at most 64 KiB: many elements go in
            // several messages (of one batch, so still one transaction).
            Command::AddElements(t, name, e) if e.len() > ELEMENTS_PER_MESSAGE => e
                .chunks(ELEMENTS_PER_MESSAGE)
                .map(|c| Command::AddElements(t.clone(), name.clone(), c.to_vec()))
                .collect(),
            Command::DeleteElements(t, name, e) if e.len() > ELEMENTS_PER_MESSAGE => e
                .chunks(ELEMENTS_PER_MESSAGE)
                .map(|c| Command::DeleteElements(t.clone(), name.clone(), c.to_vec()))
                .collect(),
            c => vec![c.clone()],
        }
    }

    /// What the command does, as nft would say it (for errors).
    fn describe(&self) -> String {
        match self {
            Command::AddTable(t) => format!("add table {t}"),
            Command::DeleteTable(t) => format!("delete table {t}"),
            Command::AddChain(c) => format!("add chain {}", c.at),
            Command::FlushChain(c) => format!("flush chain {c}"),
            Command::DeleteChain(c) => format!("delete chain {c}"),
            Command::AddSet(s) => format!("add set {} {}", s.table, s.name),
            Command::AddAnonymousSet(t, ..) => format!("add anonymous set to {t}"),
            Command::FlushSet(t, s) => format!("flush set {t} {s}"),
            Command::DeleteSet(t, s) => format!("delete set {t} {s}"),
            Command::AddElements(t, s, e) | Command::AddIntervalElements(t, s, e) => {
                format!("add {} element(s) to {t} {s}", e.len())
            }
            Command::DeleteElements(t, s, e) => {
                format!("delete {} element(s) from {t} {s}", e.len())
            }
            Command::AddRule(r) | Command::InsertRule(r) => format!("add rule to {}", r.chain),
            Command::DeleteRule(c, h) => format!("delete rule {c} handle {h}"),
        }
    }
}

/// Commands applied as one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    commands: Vec<Command>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Adds `table`; a no-op if it exists.
    pub fn add_table(&mut self, table: &Table) -> &mut Batch {
        self.push(Command::AddTable(table.clone()))
    }

    pub fn delete_table(&mut self, table: &Table) -> &mut Batch {
        self.push(Command::DeleteTable(table.clone()))
    }

    /// Adds `chain`; a no-op if it exists as it is.
    pub fn add_chain(&mut self, chain: &Chain) -> &mut Batch {
        self.push(Command::AddChain(chain.clone()))
    }

    /// Removes every rule of `chain`.
    pub fn flush_chain(&mut self, chain: &ChainRef) -> &mut Batch {
        self.push(Command::FlushChain(chain.clone()))
    }

    pub fn delete_chain(&mut self, chain: &ChainRef) -> &mut Batch {
        self.push(Command::DeleteChain(chain.clone()))
    }

    /// Adds `set`; a no-op if it exists as it is.
    pub fn add_set(&mut self, set: &Set) -> &mut Batch {
        self.push(Command::AddSet(set.clone()))
    }

    /// Adds a constant anonymous set holding `elements`, for the rules
    /// added after it in this batch; returns the name a rule's lookup
    /// uses for it. The kernel names it (`__set0`...) and removes it with
    /// the rule.
    pub fn add_anonymous_set(&mut self, table: &Table, key: Key, elements: Vec<Element>) -> String {
        self.push_anonymous(table, key, elements, None)
    }

    /// Adds a constant anonymous set as nft makes one for a match's
    /// `{ ... }` (an interval set if need be, with the user data nft lists
    /// it by); returns the name a rule's lookup uses for it.
    pub fn add_match_set(&mut self, table: &Table, set: matches::AnonSet) -> String {
        let form = objects::SetForm::for_match(set.interval, set.byteorder, &set.key_typeof);
        self.push_anonymous(table, set.key, set.elements, Some(form))
    }

    fn push_anonymous(
        &mut self,
        table: &Table,
        key: Key,
        elements: Vec<Element>,
        form: Option<objects::SetForm>,
    ) -> String {
        let name = format!("{ANON_SET}/{}", self.anonymous_sets());
        self.push(Command::AddAnonymousSet(
            table.clone(),
            name.clone(),
            key,
            elements,
            form,
        ));
        name
    }

    /// Removes every element of a set or map.
    pub fn flush_set(&mut self, table: &Table, set: &str) -> &mut Batch {
        self.push(Command::FlushSet(table.clone(), set.to_string()))
    }

    pub fn delete_set(&mut self, table: &Table, set: &str) -> &mut Batch {
        self.push(Command::DeleteSet(table.clone(), set.to_string()))
    }

    /// Adds elements; ones already there stay as they are.
    pub fn add_elements(&mut self, table: &Table, set: &str, elements: Vec<Element>) -> &mut Batch {
        if elements.is_empty() {
            return self;
        }
        self.push(Command::AddElements(
            table.clone(),
            set.to_string(),
            elements,
        ))
    }

    /// Deletes elements; each must be there.
    pub fn delete_elements(
        &mut self,
        table: &Table,
        set: &str,
        elements: Vec<Element>,
    ) -> &mut Batch {
        if elements.is_empty() {
            return self;
        }
        self.push(Command::DeleteElements(
            table.clone(),
            set.to_string(),
            elements,
        ))
    }

    /// Appends `rule` to its chain.
    pub fn add_rule(&mut self, rule: Rule) -> &mut Batch {
        self.push(Command::AddRule(rule))
    }

    /// Puts `rule` first in its chain.
    pub fn insert_rule(&mut self, rule: Rule) -> &mut Batch {
        self.push(Command::InsertRule(rule))
    }

    pub fn delete_rule(&mut self, chain: &ChainRef, handle: u64) -> &mut Batch {
        self.push(Command::DeleteRule(chain.clone(), handle))
    }

    /// Each command as nft would say it, in order (for tests and logs).
    pub fn describe(&self) -> Vec<String> {
        self.commands.iter().map(Command::describe).collect()
    }

    /// The rules the batch adds, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.commands.iter().filter_map(|c| match c {
            Command::AddRule(r) | Command::InsertRule(r) => Some(r),
            _ => None,
        })
    }

    /// The elements the batch adds to `set`.
    pub fn added_elements(&self, set: &str) -> Vec<&Element> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Command::AddElements(_, s, e) if s == set => Some(e),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Appends another batch's commands (its anonymous sets renamed
    /// after this batch's, so that each rule still looks up its own).
    pub fn extend(&mut self, other: Batch) -> &mut Batch {
        let offset = self.anonymous_sets();
        let renumber = |name: &mut String| {
            let n = match name.split_once('/') {
                Some((ANON_SET, n)) => n.parse::<usize>().ok(),
                _ => None,
            };
            if let Some(n) = n {
                *name = format!("{ANON_SET}/{}", n + offset);
            }
        };
        for mut c in other.commands {
            match &mut c {
                Command::AddAnonymousSet(_, name, ..)
                | Command::AddIntervalElements(_, name, _)
                | Command::AddElements(_, name, _) => renumber(name),
                Command::AddRule(r) | Command::InsertRule(r) => {
                    for e in &mut r.exprs {
                        if let Expr::Lookup { set, .. } = e {
                            renumber(set);
                        }
                    }
                }
                _ => {}
            }
            self.commands.push(c);
        }
        self
    }

    fn anonymous_sets(&self) -> usize {
        self.commands
            .iter()
            .filter(|c| matches!(c, Command::AddAnonymousSet(..)))
            .count()
    }

    fn push(&mut self, c: Command) -> &mut Batch {
        self.commands.push(c);
        self
    }

    /// The messages of the batch, BEGIN to END, with sequence numbers from
    /// `first_seq` (BEGIN's); the last command asks for an ack.
    fn encode(&self, first_seq: u32) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(256 * (self.commands.len() + 2));
        wire::put_message(
            &mut out,
            wire::NFNL_MSG_BATCH_BEGIN,
            wire::NLM_F_REQUEST,
            first_seq,
            0,
            wire::NFNL_SUBSYS_NFTABLES,
            &[],
        );
        // Sets created in this batch are also named by their batch ID, as
        // nft does.
        let mut ids: HashMap<(Family, String, String), u32> = HashMap::new();
        for c in &self.commands {
            let (table, name) = match c {
                Command::AddSet(s) => (&s.table, &s.name),
                Command::AddAnonymousSet(t, name, ..) => (t, name),
                _ => continue,
            };
            let next = ids.len() as u32 + 1;
            ids.entry((table.family, table.name.clone(), name.clone()))
                .or_insert(next);
        }
        let mut seq = first_seq;
        let sent: Vec<Command> = self.commands.iter().flat_map(Command::expand).collect();
        for (i, c) in sent.iter().enumerate() {
            seq += 1;
            let (kind, flags, family, attrs) = command_message(c, &ids);
            // An attribute's length is 16 bits: refuse what cannot be
            // said rather than emit a truncated message.
            if attrs
                .iter()
                .any(|a| a.value_len() + 4 > usize::from(u16::MAX))
            {
                return Err(format!(
                    "{}: too large for one netlink attribute",
                    c.describe()
                ));
            }
            // Errors are always answered; of the successes only the last
            // command's: an ack per command would overrun the socket's
            // receive buffer with thousands of commands (a rebuild).
            let ack = if i + 1 == sent.len() {
                wire::NLM_F_ACK
            } else {
                0
            };
            wire::put_message(
                &mut out,
                wire::nft_type(kind),
                wire::NLM_F_REQUEST | ack | flags,
                seq,
                family.code(),
                0,
                &attrs,
            );
        }
        wire::put_message(
            &mut out,
            wire::NFNL_MSG_BATCH_END,
            wire::NLM_F_REQUEST,
            seq + 1,
            0,
            wire::NFNL_SUBSYS_NFTABLES,
            &[],
        );
        Ok(out)
    }

    /// Applies the batch in `ns` (None: the caller's namespace) as one
    /// transaction. `op` says what for, in errors.
    pub fn commit(&self, ns: Option<&Netns>, op: &str) -> Result<()> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let sent: Vec<Command> = self.commands.iter().flat_map(Command::expand).collect();
        socket::with(ns, op, |sock| {
            let first = sock.next_seqs(sent.len() as u32 + 2);
            let bytes = self.encode(first).map_err(|msg| Error::Protocol {
                op: op.to_string(),
                msg,
            })?;
            let failed = sock
                .transact(&bytes, first + 1, sent.len())
                .map_err(|e| e.context(op))?;
            let Some(refused) = failed else {
                return Ok(());
            };
            if let Some(feature) = missing_feature(&refused, &bytes, first) {
                return Err(Error::Unsupported {
                    op: op.to_string(),
                    feature,
                });
            }
            let what = refused
                .seq
                .checked_sub(first + 1)
                .and_then(|i| sent.get(i as usize))
                .map(Command::describe)
                .unwrap_or_else(|| "the batch".to_string());
            Err(Error::NfTables {
                op: op.to_string(),
                object: what,
                errno: refused.errno,
                ext: refused.ext,
            })
        })
    }
}

/// What the kernel lacks, when that is why it refused `batch` (sent with
/// its BEGIN at sequence number `first`): nf_tables itself (nfnetlink
/// answers a batch for a subsystem it does not have with EOPNOTSUPP), or
/// the expression or chain type the attribute at fault names (its module
/// could not be loaded: ENOENT, or EOPNOTSUPP).
fn missing_feature(refused: &socket::Refusal, batch: &[u8], first: u32) -> Option<String> {
    if !matches!(refused.errno, libc::ENOENT | libc::EOPNOTSUPP) {
        return None;
    }
    if refused.seq == first {
        return (refused.errno == libc::EOPNOTSUPP).then(|| "nf_tables".to_string());
    }
    let msg = wire::message_with_seq(batch, refused.seq)?;
    let at = refused.offset? as usize;
    let body = msg.get(wire::NLMSG_HDRLEN + wire::NFGENMSG_LEN..)?;
    let at = at.checked_sub(wire::NLMSG_HDRLEN + wire::NFGENMSG_LEN)?;
    let (kind, value, start) = wire::attr_holding(body, at)?;
    match (wire::message_kind(msg)?, kind) {
        (wire::NFT_MSG_NEWRULE, wire::NFTA_RULE_EXPRESSIONS) => {
            let (_, expr, _) = wire::attr_holding(value, at.checked_sub(start)?)?;
            let name = wire::get_str(&wire::attrs(expr), wire::NFTA_EXPR_NAME)?;
            Some(format!("nf_tables expression {name:?}"))
        }
        (wire::NFT_MSG_NEWCHAIN, wire::NFTA_CHAIN_TYPE) => {
            let name = wire::get_str(&[(kind, value)], kind)?;
            Some(format!("nf_tables chain type {name:?}"))
        }
        _ => None,
    }
}

fn command_message(
    c: &Command,
    ids: &HashMap<(Family, String, String), u32>,
) -> (u16, u16, Family, Vec<Attr>) {
    let set_id = |t: &Table| {
        let t = t.clone();
        move |name: &str| {
            ids.get(&(t.family, t.name.clone(), name.to_string()))
                .copied()
        }
    };
    let elements = |t: &Table, set: &str, e: &[Element]| {
        let mut v = vec![
            Attr::str(wire::NFTA_SET_ELEM_LIST_TABLE, &t.name),
            Attr::str(wire::NFTA_SET_ELEM_LIST_SET, wire_set_name(set)),
        ];
        if let Some(id) = set_id(t)(set) {
            v.push(Attr::u32(wire::NFTA_SET_ELEM_LIST_SET_ID, id));
        }
        if !e.is_empty() {
            v.push(Attr::Nested(
                wire::NFTA_SET_ELEM_LIST_ELEMENTS,
                e.iter().map(Element::attr).collect(),
            ));
        }
        v
    };
    let chain_attrs = |c: &ChainRef| {
        vec![
            Attr::str(wire::NFTA_CHAIN_TABLE, &c.table.name),
            Attr::str(wire::NFTA_CHAIN_NAME, &c.name),
        ]
    };
    let set_attrs = |t: &Table, s: &str| {
        vec![
            Attr::str(wire::NFTA_SET_TABLE, &t.name),
            Attr::str(wire::NFTA_SET_NAME, s),
        ]
    };
    match c {
        Command::AddTable(t) => (
            wire::NFT_MSG_NEWTABLE,
            wire::NLM_F_CREATE,
            t.family,
            [t.attrs(), vec![Attr::u32(wire::NFTA_TABLE_FLAGS, 0)]].concat(),
        ),
        Command::DeleteTable(t) => (wire::NFT_MSG_DELTABLE, 0, t.family, t.attrs()),
        Command::AddChain(ch) => (
            wire::NFT_MSG_NEWCHAIN,
            wire::NLM_F_CREATE,
            ch.at.table.family,
            ch.attrs(),
        ),
        Command::FlushChain(ch) => (
            wire::NFT_MSG_DELRULE,
            0,
            ch.table.family,
            vec![
                Attr::str(wire::NFTA_RULE_TABLE, &ch.table.name),
                Attr::str(wire::NFTA_RULE_CHAIN, &ch.name),
            ],
        ),
        Command::DeleteChain(ch) => (wire::NFT_MSG_DELCHAIN, 0, ch.table.family, chain_attrs(ch)),
        Command::AddSet(s) => {
            let id = set_id(&s.table)(&s.name).unwrap_or(0);
            (
                wire::NFT_MSG_NEWSET,
                wire::NLM_F_CREATE,
                s.table.family,
                s.attrs(id),
            )
        }
        Command::AddAnonymousSet(t, name, key, e, form) => {
            let id = set_id(t)(name).unwrap_or(0);
            let attrs = match form {
                Some(f) => objects::anonymous_set_attrs_as(t, key, e, id, f),
                None => objects::anonymous_set_attrs(t, key, e.len(), id),
            };
            (wire::NFT_MSG_NEWSET, wire::NLM_F_CREATE, t.family, attrs)
        }
        Command::FlushSet(t, s) => (wire::NFT_MSG_DELSETELEM, 0, t.family, elements(t, s, &[])),
        Command::DeleteSet(t, s) => (wire::NFT_MSG_DELSET, 0, t.family, set_attrs(t, s)),
        Command::AddElements(t, s, e) => (
            wire::NFT_MSG_NEWSETELEM,
            wire::NLM_F_CREATE,
            t.family,
            elements(t, s, e),
        ),
        Command::AddIntervalElements(t, s, e) => {
            let mut attrs = elements(t, s, &[]);
            attrs.push(Attr::Nested(
                wire::NFTA_SET_ELEM_LIST_ELEMENTS,
                objects::interval_element_attrs(e),
            ));
            (
                wire::NFT_MSG_NEWSETELEM,
                wire::NLM_F_CREATE,
                t.family,
                attrs,
            )
        }
        Command::DeleteElements(t, s, e) => {
            (wire::NFT_MSG_DELSETELEM, 0, t.family, elements(t, s, e))
        }
        Command::AddRule(r) => (
            wire::NFT_MSG_NEWRULE,
            wire::NLM_F_CREATE | wire::NLM_F_APPEND,
            r.chain.table.family,
            r.attrs(&set_id(&r.chain.table)),
        ),
        Command::InsertRule(r) => (
            wire::NFT_MSG_NEWRULE,
            wire::NLM_F_CREATE,
            r.chain.table.family,
            r.attrs(&set_id(&r.chain.table)),
        ),
        Command::DeleteRule(ch, handle) => (
            wire::NFT_MSG_DELRULE,
            0,
            ch.table.family,
            vec![
                Attr::str(wire::NFTA_RULE_TABLE, &ch.table.name),
                Attr::str(wire::NFTA_RULE_CHAIN, &ch.name),
                Attr::u64(wire::NFTA_RULE_HANDLE, *handle),
            ],
        ),
    }
}

/// A table's contents as the kernel lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub chains: Vec<Chain>,
    /// Named sets and maps berth can describe, with their elements.
    pub sets: Vec<(Set, Vec<Element>)>,
    /// Sets the kernel listed that [`Set`] cannot describe (anonymous
    /// ones, types berth does not write), by name.
    pub other_sets: Vec<String>,
    pub rules: Vec<Rule>,
}

impl Listing {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.at.name == name)
    }

    /// The rules of chain `name`, in order.
    pub fn rules_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain.name == name)
    }

    pub fn set(&self, name: &str) -> Option<&(Set, Vec<Element>)> {
        self.sets.iter().find(|(s, _)| s.name == name)
    }

    pub fn has_set(&self, name: &str) -> bool {
        self.set(name).is_some() || self.other_sets.iter().any(|s| s == name)
    }
}

/// Lists `table` in `ns`: None if there is no such table. The listing is
/// of one ruleset generation: if the ruleset changed while it was read,
/// it is read again.
pub fn list_table(ns: Option<&Netns>, table: &Table) -> Result<Option<Listing>> {
    let op = format!("list table {table}");
    socket::with(ns, &op, |sock| {
        sock.list_table(table).map_err(|e| e.context(&op))
    })
}

/// The rules of `chain` in `ns`, in order; None if there is no such
/// chain (or table).
pub fn list_chain(ns: Option<&Netns>, chain: &ChainRef) -> Result<Option<Vec<Rule>>> {
    let op = format!("list chain {chain}");
    socket::with(ns, &op, |sock| {
        sock.list_chain(chain).map_err(|e| e.context(&op))
    })
}

/// True if the kernel has nf_tables in `ns` (the module loaded or
/// loadable): a generation query answers.
pub fn available(ns: Option<&Netns>) -> Result<()> {
    let op = "ask nf_tables for its ruleset generation";
    socket::with(ns, op, |sock| {
        sock.generation().map(|_| ()).map_err(|e| e.context(op))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(seq: u32, errno: i32, offset: Option<u32>) -> socket::Refusal {
        socket::Refusal {
            seq,
            errno,
            ext: None,
            offset,
        }
    }

    /// Where `needle` starts in the message of `batch` with `seq`, as the
    /// kernel counts an attribute's offset (from the message header, at
    /// the attribute's own header).
    fn offset_of(batch: &[u8], seq: u32, needle: &[u8]) -> Option<u32> {
        let msg = wire::message_with_seq(batch, seq)?;
        let at = msg.windows(needle.len()).position(|w| w == needle)?;
        Some((at - 4) as u32)
    }

    fn base_chain() -> Chain {
        Chain::base(
            Table::new(Family::Inet, "t").chain("c"),
            ChainType::Nat,
            Hook::Postrouting,
            100,
        )
    }

    #[test]
    fn extending_keeps_each_rules_anonymous_set() {
        let table = Table::new(Family::Inet, "t");
        let chain = table.chain("c");
        let one = |b: &mut Batch, v: u8| {
            let set = b.add_anonymous_set(
                &table,
                Key(vec![DataType::InetProto]),
                vec![Element::key(vec![v])],
            );
            b.add_rule(Rule::new(
                &chain,
                vec![Expr::Lookup {
                    set,
                    sreg: REG_1,
                    dreg: None,
                    invert: false,
                }],
            ));
        };
        let mut a = Batch::new();
        one(&mut a, 6);
        let mut b = Batch::new();
        one(&mut b, 17);
        one(&mut b, 1);
        a.extend(b);
        let looked_up: Vec<String> = a
            .rules()
            .flat_map(|r| r.exprs.iter())
            .filter_map(|e| match e {
                Expr::Lookup { set, .. } => Some(set.clone()),
                _ => None,
            })
            .collect();
        let made: Vec<&String> = a
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::AddAnonymousSet(_, name, _, e, _) => Some((name, e)),
                _ => None,
            })
            .map(|(name, _)| name)
            .collect();
        assert_eq!(looked_up, ["__set%d/0", "__set%d/1", "__set%d/2"]);
        assert_eq!(made, looked_up.iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_refused_batch_names_what_the_kernel_lacks() {
        let table = Table::new(Family::Inet, "t");
        let chain = base_chain();
        let mut b = Batch::new();
        b.add_table(&table).add_chain(&chain).add_rule(Rule::new(
            &chain.at,
            vec![Expr::Other {
                name: "berthnosuch".into(),
                data: vec![],
            }],
        ));
        let bytes = b.encode(10).unwrap_or_default();
        // BEGIN is 10, the table 11, the chain 12, the rule 13.
        let rule_at = offset_of(&bytes, 13, b"berthnosuch");
        assert!(rule_at.is_some());
        assert_eq!(
            missing_feature(&refused(13, libc::ENOENT, rule_at), &bytes, 10).as_deref(),
            Some("nf_tables expression \"berthnosuch\"")
        );
        let type_at = offset_of(&bytes, 12, b"nat\0");
        assert_eq!(
            missing_feature(&refused(12, libc::ENOENT, type_at), &bytes, 10).as_deref(),
            Some("nf_tables chain type \"nat\"")
        );
        assert_eq!(
            missing_feature(&refused(10, libc::EOPNOTSUPP, None), &bytes, 10).as_deref(),
            Some("nf_tables")
        );
        // A missing object is not a missing feature: no offset into a
        // module's name, or another errno.
        assert_eq!(
            missing_feature(&refused(13, libc::ENOENT, None), &bytes, 10),
            None
        );
        assert_eq!(
            missing_feature(&refused(13, libc::EEXIST, rule_at), &bytes, 10),
            None
        );
        assert_eq!(
            missing_feature(&refused(10, libc::ENOENT, None), &bytes, 10),
            None
        );
    }
}
