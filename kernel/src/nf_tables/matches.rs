//! nft match expressions compiled in the process: the `conditionsV4` /
//! `conditionsV6` text of a portmap configuration (the reference plugin
//! splices it into its nft rule) turned into the instructions nft 1.0.6
//! writes for it, so that berth needs no nft and nft lists berth's rule as
//! the one it would have made.
//!
//! Only a subset of nft's language is understood (see [`SUPPORTED`]);
//! anything else is refused by name rather than guessed at. Within the
//! subset, nft's own rewriting is reproduced, because it changes the
//! instructions: the `meta l4proto` a port match depends on, single
//! element sets turned into plain matches, interval sets merged, and
//! adjacent payload matches folded into one load (`tcp sport 1 tcp dport
//! 2` is one 4-byte compare).
//!
//! Compiling is four steps: words (`tokenize`), matches as written
//! (`parse`), nft's evaluation (dependencies, then merges) and the
//! instructions with the anonymous sets they look up ([`Compiled`]).
//!
//! The first two are nom parsers, the project's rule for parsing. Words
//! come first, as a nom parser over the text, because nft's punctuation
//! splits words even unspaced, and because a whole word (`10.0.0.0/8`,
//! `1-5`) is what the standard library's address and number parsers
//! take. The matches are a second nom parser over the words: the subset's
//! grammar is a handful of keyword sequences, each chosen by its first
//! word. Users read the refusals, so a refusal is nom's `Failure`
//! carrying berth's own message (`Refusal`), which names the word at
//! fault; nom's recoverable `Error` only means "another alternative"
//! and, as the grammar commits after a match's first word, never reaches
//! the user.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::Emitable;
use nom::branch::alt;
use nom::bytes::complete::{tag, take_till1, take_until, take_while};
use nom::character::complete::{char, one_of};
use nom::combinator::{all_consuming, cut, map, map_res, opt, value, verify};
use nom::error::{ErrorKind, FromExternalError, ParseError};
use nom::multi::{many0, separated_list1};
use nom::sequence::{pair, preceded, terminated};
use nom::IResult;

use super::value::{cmp, ct, host_u32, ifname, meta};
use super::wire::{self, Attr};
use super::{
    Batch, CmpOp, CtKey, DataType, Element, Expr, Key, MetaKey, PayloadBase, Table, FIB_F_DADDR,
    FIB_F_IIF, FIB_F_MARK, FIB_F_OIF, FIB_F_SADDR, FIB_RESULT_ADDRTYPE, REG_1,
};

/// What berth compiles; named in every refusal of a token outside it.
pub const SUPPORTED: &str = "berth compiles these nft matches without nft: \
    ip/ip6 saddr/daddr, iifname/oifname, ip protocol, ip6 nexthdr, meta l4proto, \
    tcp/udp/sctp/th sport/dport, meta mark, ct state, fib ... type";

/// IPPROTO_* numbers berth knows by name (nft's names for them).
const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("icmpv6", 58),
    ("sctp", 132),
];

/// The upper-layer protocols nft 1.0.6 has a header description for: a
/// match on one of them tells nft which transport header follows, so a
/// port match of another protocol after it is a conflict, not a new
/// dependency.
const DESCRIBED: &[(u8, &str)] = &[
    (1, "icmp"),
    (2, "igmp"),
    (6, "tcp"),
    (17, "udp"),
    (33, "dccp"),
    (50, "esp"),
    (58, "icmpv6"),
    (132, "sctp"),
    (136, "udplite"),
];

/// AH and IPComp: nft 1.0.6 aborts on a port match after them.
const NFT_ABORTS_AFTER: &[u8] = &[51, 108];

/// ct state bits (IP_CT_* as nft's ct_state type has them).
const CT_STATES: &[(&str, u32)] = &[
    ("invalid", 1),
    ("established", 2),
    ("related", 4),
    ("new", 8),
    ("untracked", 64),
];

/// RTN_* route types, as `fib ... type` names them.
const ADDR_TYPES: &[(&str, u32)] = &[
    ("unspec", 0),
    ("unicast", 1),
    ("local", 2),
    ("broadcast", 3),
    ("anycast", 4),
    ("multicast", 5),
    ("blackhole", 6),
    ("unreachable", 7),
    ("prohibit", 8),
];

/// A lookup's set name until [`Compiled::add_to`] names the set: no real
/// set name has a space.
const PLACEHOLDER: &str = "match set ";

/// Compiles nft match expressions (`conditionsV4`/`conditionsV6` text,
/// the list joined with spaces) into the instructions nft writes for them
/// in an `inet` table rule, after berth's own `meta nfproto ipv4|ipv6`
/// match. Err: the reason, naming the token berth cannot compile.
pub fn compile_matches(text: &str, v6: bool) -> Result<Compiled, String> {
    let matches = parse(&tokenize(text)?, v6)?;
    let stmts = merge_payloads(add_dependencies(matches)?);
    let mut out = Compiled::default();
    for s in stmts {
        out.linearize(s);
    }
    Ok(out)
}

/// Instructions, and the anonymous sets (nft's `{ a, b }`) their lookups
/// name by placeholder: a set must be added to the batch that adds the
/// rule, which [`Compiled::add_to`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub exprs: Vec<Expr>,
    pub sets: Vec<AnonSet>,
}

/// A constant anonymous set as nft makes it for a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnonSet {
    pub key: Key,
    /// Elements are ranges: starts, and ends flagged as such (nft makes
    /// one as soon as one element is a range, a prefix or a wildcard).
    pub interval: bool,
    /// In the order nft sends them (an interval set's ascending).
    pub elements: Vec<Element>,
    /// The key's byte order as nft records it in the set's user data (1
    /// host, 2 big-endian): the matched expression's, which for `meta
    /// l4proto` is not its type's.
    pub(super) byteorder: u32,
    /// The matched expression as nft describes it in the set's user data
    /// (NFTNL_UDATA_SET_KEY_TYPEOF), which nft lists the set by.
    pub(super) key_typeof: Vec<u8>,
}

impl Compiled {
    /// The set name a lookup of `sets[i]` carries until it is added.
    pub fn placeholder(i: usize) -> String {
        format!("{PLACEHOLDER}{i}")
    }

    /// Adds the sets to `batch` (before the rule that uses them, as nft
    /// does) and gives back the instructions with the sets' names.
    pub fn add_to(self, batch: &mut Batch, table: &Table) -> Vec<Expr> {
        let names: Vec<String> = self
            .sets
            .into_iter()
            .map(|s| batch.add_match_set(table, s))
            .collect();
        self.exprs
            .into_iter()
            .map(|e| match e {
                Expr::Lookup {
                    set,
                    sreg,
                    dreg,
                    invert,
                } => {
                    let named = set
                        .strip_prefix(PLACEHOLDER)
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| names.get(i).cloned());
                    Expr::Lookup {
                        set: named.unwrap_or(set),
                        sreg,
                        dreg,
                        invert,
                    }
                }
                e => e,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------
// Words.

/// A word of the text. nft's scanner is context dependent; these few
/// kinds are all the subset needs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    /// A double-quoted string, without its quotes.
    Quoted(String),
    Open,
    Close,
    Comma,
    Eq,
    Neq,
    Amp,
    /// A lone `.` (`fib daddr . iif`); dots inside a word are an address's.
    Dot,
}

impl Tok {
    /// As written (for errors).
    fn text(&self) -> String {
        match self {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(s) => format!("\"{s}\""),
            Tok::Open => "{".into(),
            Tok::Close => "}".into(),
            Tok::Comma => ",".into(),
            Tok::Eq => "==".into(),
            Tok::Neq => "!=".into(),
            Tok::Amp => "&".into(),
            Tok::Dot => ".".into(),
        }
    }
}

/// Why the text is refused, naming the word at fault: what the user
/// reads, so it travels in nom's errors in place of nom's error kinds.
#[derive(Debug)]
struct Refusal(String);

type PResult<I, O> = IResult<I, O, Refusal>;

const ENDS_EARLY: &str = "the nft text ends too early";

/// A refusal that ends the parse: no other alternative could take the
/// text from here.
fn refusal(why: String) -> nom::Err<Refusal> {
    nom::Err::Failure(Refusal(why))
}

// nom makes these errors for "not this alternative", and the grammar
// leaves none of them to the end: should one get there, it still names
// the word it stopped at.
impl<'a> ParseError<&'a str> for Refusal {
    fn from_error_kind(input: &'a str, _: ErrorKind) -> Self {
        Refusal(unsupported(
            input.split_whitespace().next().unwrap_or_default(),
        ))
    }

    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

impl<'a> ParseError<Toks<'a>> for Refusal {
    fn from_error_kind(input: Toks<'a>, _: ErrorKind) -> Self {
        Refusal(match input.first() {
            Some(t) => unsupported(&t.text()),
            None => ENDS_EARLY.into(),
        })
    }

    fn append(_: Toks<'a>, _: ErrorKind, other: Self) -> Self {
        other
    }
}

/// For `map_res`: the conversion's own message is the refusal.
impl<I> FromExternalError<I, String> for Refusal {
    fn from_external_error(_: I, _: ErrorKind, why: String) -> Self {
        Refusal(why)
    }
}

/// The parse's value, or the refusal's message.
fn finish<I, O>(result: PResult<I, O>) -> Result<O, String> {
    match result {
        Ok((_, out)) => Ok(out),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.0),
        // Only nom's streaming parsers ask for more; these are complete.
        Err(nom::Err::Incomplete(_)) => Err(ENDS_EARLY.into()),
    }
}

/// Splits `text` into words: punctuation stands alone even unspaced
/// (`{80,443}`), as in nft. Words come first, over the whole text, so
/// that what cannot be a word (`!`, an open quote) is refused before any
/// match is read, and an address or a range is one word for `elem`.
fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    // char::is_whitespace, not nom's multispace: Unicode spaces separate
    // words too.
    let blank = || take_while(char::is_whitespace);
    let token = alt((
        value(Tok::Open, char('{')),
        value(Tok::Close, char('}')),
        value(Tok::Comma, char(',')),
        value(Tok::Amp, char('&')),
        value(Tok::Eq, tag("==")),
        value(Tok::Neq, tag("!=")),
        lone_comparison,
        quoted,
        bare_word,
    ));
    finish(all_consuming(preceded(
        blank(),
        many0(terminated(token, blank())),
    ))(text))
}

/// A `!` or `=` that is not `!=` or `==`: nft's other comparisons.
fn lone_comparison(input: &str) -> PResult<&str, Tok> {
    let (_, c) = one_of("!=")(input)?;
    Err(refusal(format!(
        "\"{c}\": only == and != compare; {SUPPORTED}"
    )))
}

fn quoted(input: &str) -> PResult<&str, Tok> {
    let (after, _) = char('"')(input)?;
    let (rest, s) = terminated(take_until("\""), char('"'))(after)
        .map_err(|_: nom::Err<Refusal>| refusal(format!("\"{input}\": the quote is not closed")))?;
    // nft gives a backslash meaning (`"eth\*"`); berth does not guess
    // which.
    if s.contains('\\') {
        return Err(refusal(format!("\"{s}\": berth does not compile escapes")));
    }
    Ok((rest, Tok::Quoted(s.to_string())))
}

fn bare_word(input: &str) -> PResult<&str, Tok> {
    const SPECIAL: &[char] = &['{', '}', ',', '&', '!', '=', '"'];
    let (rest, w) = take_till1(|c: char| c.is_whitespace() || SPECIAL.contains(&c))(input)?;
    let tok = if w == "." {
        Tok::Dot
    } else {
        Tok::Word(w.to_string())
    };
    Ok((rest, tok))
}

// ---------------------------------------------------------------------
// Matches as written.

/// What a match compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// `ip saddr`, `ip6 daddr`...
    Addr { v6: bool, source: bool },
    /// `ip protocol` / `ip6 nexthdr`.
    NextHeader { v6: bool },
    /// `meta l4proto`.
    L4proto,
    /// `tcp|udp|sctp sport|dport`; `proto` None for `th`.
    Port { proto: Option<u8>, source: bool },
    /// `iifname` / `oifname`.
    Ifname { out: bool },
    /// `meta mark`.
    Mark,
}

/// Where a field's value comes from: a header (base, offset, length) or
/// the packet's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Payload(PayloadBase, u32, u32),
    Meta(MetaKey),
}

/// nft's proto_desc ids and template indexes (its proto.h), for a set's
/// `typeof` user data.
const DESC_UDP: u32 = 6;
const DESC_TCP: u32 = 8;
const DESC_SCTP: u32 = 10;
const DESC_TH: u32 = 11;
const DESC_IP: u32 = 12;
const DESC_IP6: u32 = 13;
const DESC_ICMPV6: u32 = 14;
/// The icmpv6 header's `type` (nft's ICMP6HDR_TYPE).
const ICMPV6_TYPE: u32 = 1;

/// nft's expression types in `typeof` user data (its enum expr_types).
const TYPEOF_PAYLOAD: u32 = 7;
const TYPEOF_META: u32 = 9;

impl Field {
    /// Bytes of the value.
    fn width(self) -> usize {
        match self {
            Field::Addr { v6: true, .. } | Field::Ifname { .. } => 16,
            Field::Addr { v6: false, .. } | Field::Mark => 4,
            Field::Port { .. } => 2,
            Field::NextHeader { .. } | Field::L4proto => 1,
        }
    }

    /// Where the value comes from.
    fn source(self) -> Source {
        match self {
            Field::Addr { v6, source } => {
                let (offset, len) = super::value::addr_field(v6, source);
                Source::Payload(PayloadBase::Network, offset, len)
            }
            Field::NextHeader { v6 } => {
                Source::Payload(PayloadBase::Network, if v6 { 6 } else { 9 }, 1)
            }
            Field::Port { source, .. } => {
                Source::Payload(PayloadBase::Transport, if source { 0 } else { 2 }, 2)
            }
            Field::L4proto => Source::Meta(MetaKey::L4proto),
            Field::Ifname { out: false } => Source::Meta(MetaKey::Iifname),
            Field::Ifname { out: true } => Source::Meta(MetaKey::Oifname),
            Field::Mark => Source::Meta(MetaKey::Mark),
        }
    }

    /// Where a header field is: (base, offset, length).
    fn payload(self) -> Option<(PayloadBase, u32, u32)> {
        match self.source() {
            Source::Payload(base, offset, len) => Some((base, offset, len)),
            Source::Meta(_) => None,
        }
    }

    /// The value into register 1.
    fn load(self) -> Expr {
        match self.source() {
            Source::Payload(base, offset, len) => Expr::Payload {
                base,
                offset,
                len,
                dreg: REG_1,
            },
            Source::Meta(key) => meta(key),
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Field::Addr { v6: false, .. } => DataType::Ipv4Addr,
            Field::Addr { v6: true, .. } => DataType::Ipv6Addr,
            Field::NextHeader { .. } | Field::L4proto => DataType::InetProto,
            Field::Port { .. } => DataType::InetService,
            Field::Ifname { .. } => DataType::Ifname,
            Field::Mark => DataType::Mark,
        }
    }

    /// Header fields are big-endian; meta values are the host's.
    fn byteorder(self) -> u32 {
        if self.payload().is_some() {
            2
        } else {
            1
        }
    }

    /// NFTNL_UDATA_SET_TYPEOF_EXPR and _DATA as nft 1.0.6 writes them for
    /// a set matched against this field: a payload's header description
    /// and template, or a meta key.
    fn key_typeof(self) -> Vec<u8> {
        let (kind, data) = match self {
            Field::Addr { v6, source } => {
                let (desc, saddr) = if v6 { (DESC_IP6, 8) } else { (DESC_IP, 11) };
                (
                    TYPEOF_PAYLOAD,
                    vec![desc, if source { saddr } else { saddr + 1 }],
                )
            }
            Field::NextHeader { v6: false } => (TYPEOF_PAYLOAD, vec![DESC_IP, 9]),
            Field::NextHeader { v6: true } => (TYPEOF_PAYLOAD, vec![DESC_IP6, 6]),
            Field::Port { proto, source } => {
                // The parser makes ports of tcp, udp, sctp and th only.
                let desc = match proto {
                    Some(6) => DESC_TCP,
                    Some(17) => DESC_UDP,
                    Some(_) => DESC_SCTP,
                    None => DESC_TH,
                };
                (TYPEOF_PAYLOAD, vec![desc, if source { 1 } else { 2 }])
            }
            Field::L4proto => (TYPEOF_META, vec![16]),
            Field::Ifname { out } => (TYPEOF_META, vec![if out { 7 } else { 6 }]),
            Field::Mark => (TYPEOF_META, vec![3]),
        };
        typeof_udata(kind, &data)
    }

    /// As nft writes it (for errors).
    fn name(self) -> String {
        let dir = |source: bool| if source { "saddr" } else { "daddr" };
        match self {
            Field::Addr { v6, source } => {
                format!("{} {}", if v6 { "ip6" } else { "ip" }, dir(source))
            }
            Field::NextHeader { v6: false } => "ip protocol".into(),
            Field::NextHeader { v6: true } => "ip6 nexthdr".into(),
            Field::L4proto => "meta l4proto".into(),
            Field::Port { proto, source } => {
                let p = proto.map_or("th", protocol_name);
                format!("{p} {}", if source { "sport" } else { "dport" })
            }
            Field::Ifname { out } => if out { "oifname" } else { "iifname" }.into(),
            Field::Mark => "meta mark".into(),
        }
    }
}

/// NFTNL_UDATA_SET_TYPEOF_EXPR `kind` and its _DATA, `data` numbered
/// from 0.
fn typeof_udata(kind: u32, data: &[u32]) -> Vec<u8> {
    let mut nested = Vec::new();
    for (i, v) in data.iter().enumerate() {
        tlv(&mut nested, i as u8, &v.to_ne_bytes());
    }
    let mut out = Vec::new();
    tlv(&mut out, 0, &kind.to_ne_bytes());
    tlv(&mut out, 1, &nested);
    out
}

/// [`Field::key_typeof`] for `icmpv6 type`: berth's own rules match it
/// against a set (nft lists the set by it), though the subset has no
/// such match.
pub(super) fn icmpv6_type_typeof() -> Vec<u8> {
    typeof_udata(TYPEOF_PAYLOAD, &[DESC_ICMPV6, ICMPV6_TYPE])
}

/// One type-length-value of nft's user data.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// One value of a match or a set, as the register holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Elem {
    Value(Vec<u8>),
    /// An address prefix: the network (host bits cleared, as nft does)
    /// and its length.
    Prefix(Vec<u8>, u32),
    /// `a-b`, both included.
    Range(Vec<u8>, Vec<u8>),
    /// `"br*"`: the name's prefix.
    Wildcard(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rhs {
    One(Elem),
    /// Two or more elements (one in braces is a plain match to nft).
    Set(Vec<Elem>),
}

/// How a ct state match compares: nft treats a bitmask type's implicit
/// match as "any of these bits", an explicit one as the whole value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagOp {
    Any,
    Eq,
    Neq,
}

/// A match (a relational statement, in nft's terms).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stmt {
    /// `FIELD [==|!=] VALUE` or `FIELD [!=] { VALUES }`.
    Field { field: Field, neq: bool, rhs: Rhs },
    /// `meta mark & MASK [==|!=] VALUE`.
    MaskedMark { mask: u32, neq: bool, value: u32 },
    /// `ct state [==|!=] STATE[,STATE]...`.
    CtState { op: FlagOp, bits: u32 },
    /// `fib saddr|daddr [. iif|oif|mark] type [!=] TYPE`.
    Fib { flags: u32, neq: bool, kind: u32 },
    /// Adjacent header fields nft folded into one compare.
    Merged {
        base: PayloadBase,
        offset: u32,
        neq: bool,
        data: Vec<u8>,
    },
}

type Toks<'a> = &'a [Tok];

/// The matches of a rule of the family `v6` says, read from its words.
fn parse(toks: &[Tok], v6: bool) -> Result<Vec<Stmt>, String> {
    finish(all_consuming(many0(statement(v6)))(toks))
}

/// One match. Its first word chooses the keyword sequence; past it the
/// match is committed (`cut`), so a mistake is refused by its own word
/// rather than tried as another match.
fn statement<'a>(v6: bool) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, Stmt> {
    alt((
        ip(v6),
        preceded(
            word("iifname"),
            cut(field_match(Field::Ifname { out: false })),
        ),
        preceded(
            word("oifname"),
            cut(field_match(Field::Ifname { out: true })),
        ),
        preceded(word("mark"), cut(mark)),
        preceded(word("meta"), cut(meta_match)),
        port,
        preceded(
            word("ct"),
            cut(preceded(keyword("ct", &["state"]), ct_state)),
        ),
        preceded(word("fib"), cut(fib)),
        unknown,
    ))
}

/// "Not this alternative".
fn not_this(input: Toks<'_>) -> nom::Err<Refusal> {
    nom::Err::Error(Refusal::from_error_kind(input, ErrorKind::Verify))
}

/// The next token, whatever it is; at the end, `what` is missing after
/// `after`.
fn need<'a, S: AsRef<str>, W: AsRef<str>>(
    after: S,
    what: W,
) -> impl Fn(Toks<'a>) -> PResult<Toks<'a>, &'a Tok> {
    move |input: Toks<'a>| match input.split_first() {
        Some((t, rest)) => Ok((rest, t)),
        None => Err(refusal(format!(
            "\"{}\": {} missing after it",
            after.as_ref(),
            what.as_ref()
        ))),
    }
}

fn token<'a>(want: Tok) -> impl Fn(Toks<'a>) -> PResult<Toks<'a>, ()> {
    move |input: Toks<'a>| match input.split_first() {
        Some((t, rest)) if *t == want => Ok((rest, ())),
        _ => Err(not_this(input)),
    }
}

fn any_word(input: Toks<'_>) -> PResult<Toks<'_>, &str> {
    match input.split_first() {
        Some((Tok::Word(w), rest)) => Ok((rest, w.as_str())),
        _ => Err(not_this(input)),
    }
}

fn word<'a>(want: &'static str) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, &'a str> {
    verify(any_word, move |w: &str| w == want)
}

fn word_in<'a>(
    known: &'static [&'static str],
) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, &'a str> {
    verify(any_word, move |w: &str| known.contains(&w))
}

/// The next word, one of `known`: after `after`, anything else is
/// outside the subset.
fn keyword<'a, S: AsRef<str>>(
    after: S,
    known: &'static [&'static str],
) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, &'a str> {
    move |input: Toks<'a>| {
        let after = after.as_ref();
        let (_, t) = need(after, known.join("|"))(input)?;
        word_in(known)(input).map_err(|_| refusal(unsupported(&format!("{after} {}", t.text()))))
    }
}

/// An optional `==` (false) or `!=` (true).
fn operator(input: Toks<'_>) -> PResult<Toks<'_>, Option<bool>> {
    opt(alt((
        value(false, token(Tok::Eq)),
        value(true, token(Tok::Neq)),
    )))(input)
}

/// Any other first word: outside the subset. The end of the text ends
/// the matches.
fn unknown(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    match input.first() {
        Some(t) => Err(refusal(unsupported(&t.text()))),
        None => Err(not_this(input)),
    }
}

/// `ip|ip6 saddr|daddr|protocol|nexthdr ...`, of the rule's family.
fn ip<'a>(rule_v6: bool) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, Stmt> {
    move |input: Toks<'a>| {
        let (input, w) = word_in(&["ip", "ip6"])(input)?;
        let v6 = w == "ip6";
        let known: &'static [&'static str] = if v6 {
            &["saddr", "daddr", "nexthdr"]
        } else {
            &["saddr", "daddr", "protocol"]
        };
        let (input, k) = keyword(w, known)(input)?;
        if v6 != rule_v6 {
            let (rule, other) = if rule_v6 {
                ("IPv6", "ip6")
            } else {
                ("IPv4", "ip")
            };
            return Err(refusal(format!(
                "\"{w} {k}\": not in an {rule} rule (use {other} there)"
            )));
        }
        let field = match k {
            "saddr" | "daddr" => Field::Addr {
                v6,
                source: k == "saddr",
            },
            _ => Field::NextHeader { v6 },
        };
        cut(field_match(field))(input)
    }
}

/// `tcp|udp|sctp|th sport|dport ...`.
fn port(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    let (input, w) = word_in(&["tcp", "udp", "sctp", "th"])(input)?;
    let (input, k) = keyword(w, &["sport", "dport"])(input)?;
    let proto = PROTOCOLS.iter().find(|p| p.0 == w).map(|p| p.1);
    cut(field_match(Field::Port {
        proto,
        source: k == "sport",
    }))(input)
}

/// What follows `meta`.
fn meta_match(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    let (input, k) = keyword("meta", &["l4proto", "mark", "iifname", "oifname"])(input)?;
    match k {
        "mark" => mark(input),
        "l4proto" => field_match(Field::L4proto)(input),
        _ => field_match(Field::Ifname {
            out: k == "oifname",
        })(input),
    }
}

/// `[==|!=] VALUE` or `[==|!=] { VALUE, ... }` for `field`.
fn field_match<'a>(field: Field) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, Stmt> {
    let rhs = alt((
        map(set(field), |mut elems| {
            if elems.len() == 1 {
                // nft turns a one-element set into a plain match.
                Rhs::One(elems.remove(0))
            } else {
                Rhs::Set(elems)
            }
        }),
        map(
            cut(map_res(need(field.name(), "a value"), move |t| {
                elem(field, t)
            })),
            Rhs::One,
        ),
    ));
    map(pair(operator, rhs), move |(neq, rhs)| Stmt::Field {
        field,
        neq: neq.unwrap_or(false),
        rhs,
    })
}

/// `{ VALUE, ... }`, a comma allowed after the last value as nft allows
/// it.
fn set<'a>(field: Field) -> impl FnMut(Toks<'a>) -> PResult<Toks<'a>, Vec<Elem>> {
    let end = move |input: Toks<'a>| match need(field.name(), "}")(input)? {
        (rest, Tok::Close) => Ok((rest, ())),
        (_, t) => Err(refusal(format!(
            "\"{}\": , or }} expected in a set",
            t.text()
        ))),
    };
    preceded(
        token(Tok::Open),
        cut(terminated(
            separated_list1(token(Tok::Comma), set_elem(field)),
            pair(opt(token(Tok::Comma)), end),
        )),
    )
}

/// A set's value. A `}` in its place is not refused here but left as the
/// end of the set (after a last comma); as the first value, its refusal
/// is the set's.
fn set_elem<'a>(field: Field) -> impl Fn(Toks<'a>) -> PResult<Toks<'a>, Elem> {
    move |input: Toks<'a>| {
        let (rest, t) = need(field.name(), "}")(input)?;
        match elem(field, t) {
            Ok(e) => Ok((rest, e)),
            Err(why) if *t == Tok::Close => Err(nom::Err::Error(Refusal(why))),
            Err(why) => Err(refusal(why)),
        }
    }
}

/// `meta mark` (or `mark`) `[& MASK] [==|!=] VALUE|{ VALUES }`.
fn mark(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    alt((masked_mark, field_match(Field::Mark)))(input)
}

/// `& MASK [==|!=] VALUE`.
fn masked_mark(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    let max = u64::from(u32::MAX);
    let (input, _) = token(Tok::Amp)(input)?;
    let (input, mask) = cut(map_res(need("&", "a mask"), |t| {
        number_tok(t, max, "a mark")
    }))(input)?;
    let (input, neq) = operator(input)?;
    let (input, t) = need("meta mark &", "a value")(input)?;
    if *t == Tok::Open {
        return Err(refusal(
            "\"meta mark & MASK { ... }\": berth compiles a masked mark against one value".into(),
        ));
    }
    let value = number_tok(t, max, "a mark").map_err(refusal)?;
    Ok((
        input,
        Stmt::MaskedMark {
            mask: mask as u32,
            neq: neq.unwrap_or(false),
            value: value as u32,
        },
    ))
}

/// `ct state [==|!=] STATE[,STATE]...`.
fn ct_state(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    let (input, op) = map(operator, |neq| match neq {
        None => FlagOp::Any,
        Some(false) => FlagOp::Eq,
        Some(true) => FlagOp::Neq,
    })(input)?;
    let state = |input| {
        let (rest, t) = need("ct state", "a state")(input)?;
        match named(CT_STATES, t) {
            Some(bit) => Ok((rest, bit)),
            None => Err(refusal(format!(
                "\"ct state {}\": berth compiles ct state with a comma list of \
                 new, established, related, invalid, untracked",
                t.text()
            ))),
        }
    };
    let (input, bits) = separated_list1(token(Tok::Comma), state)(input)?;
    Ok((
        input,
        Stmt::CtState {
            op,
            bits: bits.into_iter().fold(0, |all, bit| all | bit),
        },
    ))
}

/// `fib saddr|daddr [. iif|oif|mark]... type [==|!=] TYPE`.
fn fib(input: Toks<'_>) -> PResult<Toks<'_>, Stmt> {
    let (input, flags) = fib_flags(0, input)?;
    // What nft itself refuses.
    let addrs = flags & (FIB_F_SADDR | FIB_F_DADDR);
    if addrs == 0 || addrs == FIB_F_SADDR | FIB_F_DADDR {
        return Err(refusal("\"fib\": one of saddr and daddr is needed".into()));
    }
    if flags & (FIB_F_IIF | FIB_F_OIF) == FIB_F_IIF | FIB_F_OIF {
        return Err(refusal(
            "\"fib\": iif and oif are mutually exclusive".into(),
        ));
    }
    let (input, _) = keyword("fib ...", &["type"])(input)?;
    let (input, neq) = operator(input)?;
    let (input, t) = need("fib ... type", "an address type")(input)?;
    let Some(kind) = named(ADDR_TYPES, t) else {
        return Err(refusal(format!(
            "\"fib ... type {}\": berth compiles fib ... type with one address type \
             (local, unicast, broadcast, anycast, multicast, blackhole, unreachable, \
             prohibit, unspec)",
            t.text()
        )));
    };
    Ok((
        input,
        Stmt::Fib {
            flags,
            neq: neq.unwrap_or(false),
            kind,
        },
    ))
}

/// The keys `fib` looks up with, joined by `.`, on top of `seen`: a key
/// given twice is refused where it stands, before the keys after it are
/// read.
fn fib_flags(seen: u32, input: Toks<'_>) -> PResult<Toks<'_>, u32> {
    let (input, k) = keyword("fib", &["saddr", "daddr", "iif", "oif", "mark"])(input)?;
    let f = match k {
        "saddr" => FIB_F_SADDR,
        "daddr" => FIB_F_DADDR,
        "iif" => FIB_F_IIF,
        "oif" => FIB_F_OIF,
        _ => FIB_F_MARK,
    };
    if seen & f != 0 {
        return Err(refusal(format!("\"fib {k}\": given twice")));
    }
    match opt(token(Tok::Dot))(input)? {
        (input, Some(())) => fib_flags(seen | f, input),
        (input, None) => Ok((input, seen | f)),
    }
}

/// The value of the word `t` in `table`.
fn named(table: &[(&str, u32)], t: &Tok) -> Option<u32> {
    match t {
        Tok::Word(w) => table.iter().find(|e| e.0 == w).map(|e| e.1),
        _ => None,
    }
}

fn unsupported(tok: &str) -> String {
    format!("\"{tok}\": {SUPPORTED}")
}

fn protocol_name(p: u8) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|x| x.1 == p)
        .map_or_else(|| described(p), |x| x.0)
}

/// A decimal or 0x-prefixed hexadecimal number up to `max`.
fn number(s: &str, max: u64) -> Option<u64> {
    let n = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
        None => return None,
    };
    (n <= max).then_some(n)
}

fn number_tok(t: &Tok, max: u64, what: &str) -> Result<u64, String> {
    match t {
        Tok::Word(w) => number(w, max).ok_or_else(|| format!("\"{w}\": not {what} (0-{max})")),
        t => Err(format!("\"{}\": not {what} (0-{max})", t.text())),
    }
}

/// One value for `field`, as written in `t`.
fn elem(field: Field, t: &Tok) -> Result<Elem, String> {
    let word = || match t {
        Tok::Word(w) => Ok(w.as_str()),
        t => Err(format!("\"{}\": not a value of {}", t.text(), field.name())),
    };
    match field {
        Field::Addr { v6, .. } => addr_elem(word()?, v6),
        Field::NextHeader { .. } | Field::L4proto => {
            let one = |s: &str| -> Result<Vec<u8>, String> {
                let n = match PROTOCOLS.iter().find(|p| p.0 == s) {
                    Some(p) => p.1,
                    None => number(s, 255).ok_or_else(|| {
                        format!("\"{s}\": not a protocol (tcp, udp, sctp, icmp, icmpv6 or 0-255)")
                    })? as u8,
                };
                Ok(vec![n])
            };
            range_or_value(word()?, one)
        }
        Field::Port { .. } => {
            let one = |s: &str| -> Result<Vec<u8>, String> {
                let n = number(s, 65535)
                    .ok_or_else(|| format!("\"{s}\": not a port number (0-65535)"))?;
                Ok((n as u16).to_be_bytes().to_vec())
            };
            range_or_value(word()?, one)
        }
        Field::Ifname { .. } => {
            let name = match t {
                Tok::Word(w) | Tok::Quoted(w) => w,
                t => return Err(format!("\"{}\": not an interface name", t.text())),
            };
            let (bytes, wild) = match name.strip_suffix('*') {
                Some(prefix) => (prefix.as_bytes(), true),
                None => (name.as_bytes(), false),
            };
            if bytes.is_empty() {
                return Err(format!(
                    "\"{name}\": an empty or all-wildcard name matches nothing nft allows"
                ));
            }
            // IFNAMSIZ with its NUL.
            if bytes.len() > 15 {
                return Err(format!("\"{name}\": longer than an interface name (15)"));
            }
            Ok(if wild {
                Elem::Wildcard(bytes.to_vec())
            } else {
                Elem::Value(ifname(name))
            })
        }
        Field::Mark => {
            let w = word()?;
            let n = number(w, u64::from(u32::MAX)).ok_or_else(|| {
                format!("\"{w}\": berth compiles meta mark against numbers (0-0xffffffff)")
            })?;
            Ok(Elem::Value(host_u32(n as u32)))
        }
    }
}

/// `a-b` or `a`, each parsed by `one`.
fn range_or_value(w: &str, one: impl Fn(&str) -> Result<Vec<u8>, String>) -> Result<Elem, String> {
    match w.split_once('-') {
        Some((a, b)) => range(w, one(a)?, one(b)?),
        None => Ok(Elem::Value(one(w)?)),
    }
}

/// A range, refused when empty as nft does (big-endian bytes of equal
/// length compare as the numbers).
fn range(w: &str, a: Vec<u8>, b: Vec<u8>) -> Result<Elem, String> {
    if a > b {
        return Err(format!("\"{w}\": the range is empty"));
    }
    Ok(Elem::Range(a, b))
}

/// An address, `a/len` or `a-b` of the rule's family.
fn addr_elem(w: &str, v6: bool) -> Result<Elem, String> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let parse = |s: &str| -> Result<Vec<u8>, String> {
        let bytes = if v6 {
            s.parse::<Ipv6Addr>().map(|a| a.octets().to_vec())
        } else {
            s.parse::<Ipv4Addr>().map(|a| a.octets().to_vec())
        };
        bytes.map_err(|_| format!("\"{s}\": not an {family} address"))
    };
    if let Some((a, len)) = w.split_once('/') {
        let bytes = parse(a)?;
        let bits = bytes.len() as u32 * 8;
        let plen = number(len, u64::from(bits))
            .ok_or_else(|| format!("\"{w}\": the prefix length is not 0-{bits}"))?
            as u32;
        let mask = netmask(bytes.len(), plen);
        let net = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        return Ok(Elem::Prefix(net, plen));
    }
    if let Some((a, b)) = w.split_once('-') {
        return range(w, parse(a)?, parse(b)?);
    }
    Ok(Elem::Value(parse(w)?))
}

/// The first `plen` bits set, over `len` bytes.
fn netmask(len: usize, plen: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            let bits = plen.saturating_sub(i * 8).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------
// nft's evaluation.

/// What nft knows of the transport header from the matches so far.
#[derive(Clone, Debug, PartialEq, Eq)]
enum L4 {
    Unknown,
    Is(u8),
    /// A match after which nft refuses a port match (`meta l4proto 200`:
    /// "unknown"; a set of protocols), or aborts on one (AH, IPComp).
    Refused(String),
}

/// Adds the `meta l4proto` match nft puts before a port match when no
/// earlier match says which transport header it is, and refuses what nft
/// refuses as conflicting protocols.
fn add_dependencies(stmts: Vec<Stmt>) -> Result<Vec<Stmt>, String> {
    let mut l4 = L4::Unknown;
    let mut out = Vec::with_capacity(stmts.len() + 1);
    for s in stmts {
        match &s {
            Stmt::Field {
                field: field @ Field::Port { proto: Some(p), .. },
                ..
            } => match &l4 {
                L4::Unknown => {
                    out.push(Stmt::Field {
                        field: Field::L4proto,
                        neq: false,
                        rhs: Rhs::One(Elem::Value(vec![*p])),
                    });
                    l4 = L4::Is(*p);
                }
                L4::Is(q) if q == p => {}
                L4::Is(q) => {
                    return Err(format!(
                        "\"{}\": conflicting protocols specified: {} vs. {}",
                        field.name(),
                        described(*q),
                        protocol_name(*p)
                    ))
                }
                L4::Refused(why) => {
                    return Err(format!(
                        "\"{}\": nft refuses a port match after {why}",
                        field.name()
                    ))
                }
            },
            Stmt::Field {
                field: field @ (Field::NextHeader { .. } | Field::L4proto),
                neq: false,
                rhs,
            } => match rhs {
                Rhs::One(Elem::Value(v)) => {
                    let p = v.first().copied().unwrap_or_default();
                    if DESCRIBED.iter().any(|d| d.0 == p) {
                        l4 = L4::Is(p);
                    } else if NFT_ABORTS_AFTER.contains(&p) {
                        l4 = L4::Refused(format!("{} {p}", field.name()));
                    } else if *field == Field::L4proto {
                        l4 = L4::Refused(format!("meta l4proto {p}"));
                    }
                    // An undescribed protocol in the network header tells
                    // nft nothing: the next port match gets its dependency.
                }
                Rhs::Set(_) => l4 = L4::Refused(format!("{} {{ ... }}", field.name())),
                Rhs::One(_) => {}
            },
            _ => {}
        }
        out.push(s);
    }
    Ok(out)
}

fn described(p: u8) -> &'static str {
    DESCRIBED
        .iter()
        .find(|d| d.0 == p)
        .map_or("unknown", |d| d.1)
}

/// A header field compared with one value: what nft may merge.
fn payload_value(s: &Stmt) -> Option<(PayloadBase, u32, bool, Vec<u8>)> {
    match s {
        Stmt::Field {
            field,
            neq,
            rhs: Rhs::One(Elem::Value(v)),
        } => {
            let (base, offset, _) = field.payload()?;
            Some((base, offset, *neq, v.clone()))
        }
        Stmt::Merged {
            base,
            offset,
            neq,
            data,
        } => Some((*base, *offset, *neq, data.clone())),
        _ => None,
    }
}

/// nft 1.0.6's stmt_reduce: header fields compared with `==` or `!=` to
/// one value, taken in header order, are merged with the next adjacent
/// one when the two use the same operator and the sum still loads
/// quickly. The merge takes the place of the earlier field in the header,
/// wherever it stands in the rule. (1.0.6 also merges `!=`, which later
/// nft stopped doing; berth writes what 1.0.6 writes.)
fn merge_payloads(mut stmts: Vec<Stmt>) -> Vec<Stmt> {
    fn base_order(b: PayloadBase) -> u8 {
        match b {
            PayloadBase::Link => 0,
            PayloadBase::Network => 1,
            PayloadBase::Transport => 2,
        }
    }
    let mut order: Vec<(u8, u32, usize)> = stmts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            payload_value(s).map(|(base, offset, ..)| (base_order(base), offset, i))
        })
        .collect();
    // nft sorts with glibc's qsort, a merge sort in Debian 12's glibc
    // (stable).
    order.sort_by_key(|k| (k.0, k.1));
    let order: Vec<usize> = order.into_iter().map(|k| k.2).collect();
    let mut removed = vec![false; stmts.len()];
    let Some(&first) = order.first() else {
        return stmts;
    };
    let mut last = first;
    for &this in &order[1..] {
        let (Some(l), Some(t)) = (payload_value(&stmts[last]), payload_value(&stmts[this])) else {
            continue;
        };
        let (base, offset, neq, mut data) = l;
        let (l_len, t_len) = (data.len() as u32, t.3.len() as u32);
        let total = l_len + t_len;
        // payload_can_merge: adjacent, in one register, and not making two
        // fast 32-bit loads one slow load.
        let mergeable = base == t.0
            && offset + l_len == t.1
            && total <= 16
            && (total <= 4 || base == PayloadBase::Link || l_len > 4 || t_len > 4);
        if !mergeable || neq != t.2 {
            last = this;
            continue;
        }
        // nft keeps the later field's place instead when that one names a
        // protocol (`ip protocol`); no such field follows another in the
        // subset, so the earlier one always stays.
        data.extend_from_slice(&t.3);
        stmts[last] = Stmt::Merged {
            base,
            offset,
            neq,
            data,
        };
        removed[this] = true;
    }
    stmts
        .into_iter()
        .zip(removed)
        .filter(|(_, r)| !r)
        .map(|(s, _)| s)
        .collect()
}

// ---------------------------------------------------------------------
// Instructions.

fn op(neq: bool) -> CmpOp {
    if neq {
        CmpOp::Neq
    } else {
        CmpOp::Eq
    }
}

impl Compiled {
    fn linearize(&mut self, s: Stmt) {
        match s {
            Stmt::Field { field, neq, rhs } => match rhs {
                Rhs::One(Elem::Prefix(net, plen)) => self.prefix(field, neq, net, plen),
                Rhs::One(Elem::Value(v) | Elem::Wildcard(v)) => {
                    self.exprs.push(field.load());
                    self.exprs.push(cmp(op(neq), v));
                }
                Rhs::One(Elem::Range(a, b)) => {
                    self.exprs.push(field.load());
                    if neq {
                        self.exprs.push(range_neq(a, b));
                    } else {
                        self.exprs.push(cmp(CmpOp::Gte, a));
                        self.exprs.push(cmp(CmpOp::Lte, b));
                    }
                }
                Rhs::Set(elems) => {
                    let set = Compiled::placeholder(self.sets.len());
                    self.sets.push(anon_set(field, elems));
                    self.exprs.push(field.load());
                    self.exprs.push(Expr::Lookup {
                        set,
                        sreg: REG_1,
                        dreg: None,
                        invert: neq,
                    });
                }
            },
            Stmt::MaskedMark { mask, neq, value } => {
                self.exprs.push(meta(MetaKey::Mark));
                self.exprs.push(Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: host_u32(mask),
                    xor: host_u32(0),
                });
                self.exprs.push(cmp(op(neq), host_u32(value)));
            }
            Stmt::CtState { op: flag_op, bits } => {
                self.exprs.push(ct(CtKey::State));
                match flag_op {
                    FlagOp::Any => self.exprs.extend(super::value::bits(bits, CmpOp::Neq, 0)),
                    FlagOp::Eq => self.exprs.push(cmp(CmpOp::Eq, host_u32(bits))),
                    FlagOp::Neq => self.exprs.push(cmp(CmpOp::Neq, host_u32(bits))),
                }
            }
            Stmt::Fib { flags, neq, kind } => {
                self.exprs.push(Expr::Fib {
                    flags,
                    result: FIB_RESULT_ADDRTYPE,
                    dreg: REG_1,
                });
                self.exprs.push(cmp(op(neq), host_u32(kind)));
            }
            Stmt::Merged {
                base,
                offset,
                neq,
                data,
            } => {
                self.exprs.push(Expr::Payload {
                    base,
                    offset,
                    len: data.len() as u32,
                    dreg: REG_1,
                });
                self.exprs.push(cmp(op(neq), data));
            }
        }
    }

    /// An address prefix: a byte-aligned one loads only its bytes, any
    /// other (and /0) masks the whole address.
    fn prefix(&mut self, field: Field, neq: bool, mut net: Vec<u8>, plen: u32) {
        let mut load = field.load();
        if plen.is_multiple_of(8) && plen > 0 {
            let n = plen / 8;
            if let Expr::Payload { len, .. } = &mut load {
                *len = n;
            }
            net.truncate(n as usize);
            self.exprs.push(load);
            self.exprs.push(cmp(op(neq), net));
            return;
        }
        let mask = netmask(net.len(), plen);
        self.exprs.push(load);
        self.exprs.push(Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            xor: vec![0; mask.len()],
            mask,
        });
        self.exprs.push(cmp(op(neq), net));
    }
}

/// `[ range neq reg 1 FROM TO ]`: berth's [`Expr`] has no range
/// instruction, so it is written as its attributes, laid out as the
/// kernel lists them (its data nests without NLA_F_NESTED, where nft sets
/// it; the kernel reads both alike), so the rule reads back equal.
fn range_neq(from: Vec<u8>, to: Vec<u8>) -> Expr {
    const NFTA_RANGE_SREG: u16 = 1;
    const NFTA_RANGE_OP: u16 = 2;
    const NFTA_RANGE_FROM_DATA: u16 = 3;
    const NFTA_RANGE_TO_DATA: u16 = 4;
    const NFT_RANGE_NEQ: u32 = 1;
    let value = |kind, v| {
        let inner = [Attr::Bytes(wire::NFTA_DATA_VALUE, v)];
        let mut bytes = vec![0; inner.as_slice().buffer_len()];
        inner.as_slice().emit(&mut bytes);
        Attr::Bytes(kind, bytes)
    };
    let attrs = vec![
        Attr::u32(NFTA_RANGE_SREG, REG_1),
        Attr::u32(NFTA_RANGE_OP, NFT_RANGE_NEQ),
        value(NFTA_RANGE_FROM_DATA, from),
        value(NFTA_RANGE_TO_DATA, to),
    ];
    let mut data = vec![0; attrs.as_slice().buffer_len()];
    attrs.as_slice().emit(&mut data);
    Expr::Other {
        name: "range".into(),
        data,
    }
}

/// The set nft makes for `field { elems }`.
fn anon_set(field: Field, elems: Vec<Elem>) -> AnonSet {
    let interval = elems.iter().any(|e| !matches!(e, Elem::Value(_)));
    let elements = if interval {
        interval_elements(field.width(), &elems)
    } else {
        // Sent as written, repeats too (the kernel keeps one).
        elems
            .into_iter()
            .filter_map(|e| match e {
                Elem::Value(v) => Some(Element::key(v)),
                _ => None,
            })
            .collect()
    };
    AnonSet {
        key: Key(vec![field.data_type()]),
        interval,
        elements,
        byteorder: field.byteorder(),
        key_typeof: field.key_typeof(),
    }
}

/// An interval set's elements as nft sends them: each element as a range
/// [start, end), overlapping and adjacent ones merged, in ascending
/// order; an end at zero first unless a range starts there; no end for a
/// range that reaches the top (the kernel reads it as open).
fn interval_elements(width: usize, elems: &[Elem]) -> Vec<Element> {
    let bits = width as u32 * 8;
    let max = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let num = |b: &[u8]| b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x));
    let bytes = |n: u128| n.to_be_bytes()[16 - width..].to_vec();
    // The low `host` bits set: a prefix's or a wildcard's last value is
    // its start with them set.
    let ones = |host: u32| {
        if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        }
    };
    let mut ranges: Vec<(u128, Option<u128>)> = elems
        .iter()
        .map(|e| {
            let (start, last) = match e {
                Elem::Value(v) => (num(v), num(v)),
                Elem::Prefix(net, plen) => (num(net), num(net) | ones(bits - plen)),
                Elem::Range(a, b) => (num(a), num(b)),
                Elem::Wildcard(p) => {
                    let host = bits - p.len() as u32 * 8;
                    let start = num(p) << host;
                    (start, start | ones(host))
                }
            };
            (start, (last < max).then(|| last + 1))
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u128, Option<u128>)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(cur) if cur.1.is_none_or(|e| start <= e) => {
                cur.1 = match (cur.1, end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => merged.push((start, end)),
        }
    }
    let mut out = Vec::new();
    if merged.first().is_some_and(|r| r.0 != 0) {
        out.push(Element {
            key: bytes(0),
            end: true,
            data: None,
        });
    }
    for (start, end) in merged {
        out.push(Element::key(bytes(start)));
        if let Some(end) = end {
            out.push(Element {
                key: bytes(end),
                end: true,
                data: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str, v6: bool) -> Compiled {
        compile_matches(text, v6).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn refused(text: &str, v6: bool) -> String {
        match compile_matches(text, v6) {
            Ok(c) => panic!("{text}: compiled to {c:?}"),
            Err(e) => e,
        }
    }

    fn load(base: PayloadBase, offset: u32, len: u32) -> Expr {
        Expr::Payload {
            base,
            offset,
            len,
            dreg: REG_1,
        }
    }

    #[test]
    fn words_split_on_punctuation() {
        let t = tokenize(r#"iifname != {"a b",br*} meta mark&0xff==1 fib daddr . iif"#)
            .unwrap_or_default();
        let w = |s: &str| Tok::Word(s.into());
        assert_eq!(
            t,
            vec![
                w("iifname"),
                Tok::Neq,
                Tok::Open,
                Tok::Quoted("a b".into()),
                Tok::Comma,
                w("br*"),
                Tok::Close,
                w("meta"),
                w("mark"),
                Tok::Amp,
                w("0xff"),
                Tok::Eq,
                w("1"),
                w("fib"),
                w("daddr"),
                Tok::Dot,
                w("iif"),
            ]
        );
        assert!(tokenize("ip saddr ! 1.2.3.4").is_err());
        assert!(tokenize("iifname \"eth0").is_err());
        assert!(tokenize("iifname \"eth\\*\"").is_err());
    }

    #[test]
    fn empty_text_compiles_to_nothing() {
        assert_eq!(compile("  ", false), Compiled::default());
    }

    #[test]
    fn port_matches_get_their_dependency_once() {
        let c = compile("tcp dport 8080 th sport 1", false);
        // tcp's dependency, then the ports merged into one 4-byte compare
        // at the source port's place.
        assert_eq!(
            c.exprs,
            vec![
                meta(MetaKey::L4proto),
                cmp(CmpOp::Eq, vec![6]),
                load(PayloadBase::Transport, 0, 4),
                cmp(CmpOp::Eq, vec![0, 1, 0x1f, 0x90]),
            ]
        );
        // A protocol match says which header follows.
        let c = compile("ip6 nexthdr udp udp dport 53", true);
        assert_eq!(c.exprs[0], load(PayloadBase::Network, 6, 1));
        assert_eq!(c.exprs.len(), 4);
        // Only equal operators merge.
        let c = compile("tcp sport 22 tcp dport != 23", false);
        assert_eq!(c.exprs.len(), 6);
        let c = compile("tcp sport != 22 tcp dport != 23", false);
        assert_eq!(c.exprs[3], cmp(CmpOp::Neq, vec![0, 22, 0, 23]));
    }

    #[test]
    fn conflicting_protocols_are_refused_as_nft_refuses_them() {
        assert!(refused("tcp dport 80 udp sport 53", false).contains("tcp vs. udp"));
        assert!(refused("ip protocol icmp tcp dport 80", false).contains("icmp vs. tcp"));
        assert!(refused("meta l4proto 200 tcp dport 80", false).contains("meta l4proto 200"));
        assert!(refused("meta l4proto { tcp, udp } tcp dport 80", false).contains("{ ... }"));
        assert!(refused("ip protocol 51 tcp dport 80", false).contains("51"));
        // An undescribed protocol number leaves the dependency to come.
        assert_eq!(
            compile("ip protocol 200 tcp dport 80", false).exprs.len(),
            6
        );
    }

    #[test]
    fn addresses_as_nft_compiles_them() {
        let c = compile(
            "ip saddr != 192.168.5.0/24 ip saddr 10.2.0.0-10.2.0.9",
            false,
        );
        assert_eq!(
            c.exprs,
            vec![
                load(PayloadBase::Network, 12, 3),
                cmp(CmpOp::Neq, vec![192, 168, 5]),
                load(PayloadBase::Network, 12, 4),
                cmp(CmpOp::Gte, vec![10, 2, 0, 0]),
                cmp(CmpOp::Lte, vec![10, 2, 0, 9]),
            ]
        );
        // Host bits are cleared; /0 and unaligned prefixes are masked.
        let c = compile("ip6 saddr fd00::1/12", true);
        assert!(matches!(&c.exprs[1], Expr::Bitwise { mask, .. } if mask[..2] == [0xff, 0xf0]));
        let c = compile("ip saddr 0.0.0.0/0", false);
        assert_eq!(c.exprs.len(), 3);
        let c = compile("ip saddr != 10.0.0.1-10.0.0.5", false);
        assert!(matches!(&c.exprs[1], Expr::Other { name, .. } if name == "range"));
    }

    #[test]
    fn sets_as_nft_makes_them() {
        let c = compile("ip daddr { 10.0.0.0/8, 172.16.1.1 }", false);
        assert_eq!(c.sets.len(), 1);
        let s = &c.sets[0];
        assert!(s.interval);
        // As nft sent them in a real berth run: the end at zero first.
        let keys: Vec<(Vec<u8>, bool)> =
            s.elements.iter().map(|e| (e.key.clone(), e.end)).collect();
        assert_eq!(
            keys,
            vec![
                (vec![0, 0, 0, 0], true),
                (vec![10, 0, 0, 0], false),
                (vec![11, 0, 0, 0], true),
                (vec![172, 16, 1, 1], false),
                (vec![172, 16, 1, 2], true),
            ]
        );
        assert_eq!(
            c.exprs[1],
            Expr::Lookup {
                set: Compiled::placeholder(0),
                sreg: REG_1,
                dreg: None,
                invert: false
            }
        );
        // Adjacent ranges merge; an open last range has no end.
        let c = compile("tcp dport != { 1-2, 3-4, 1000-65535 }", false);
        let keys: Vec<(Vec<u8>, bool)> = c.sets[0]
            .elements
            .iter()
            .map(|e| (e.key.clone(), e.end))
            .collect();
        assert_eq!(
            keys,
            vec![
                (vec![0, 0], true),
                (vec![0, 1], false),
                (vec![0, 5], true),
                (vec![3, 0xe8], false),
            ]
        );
        assert!(matches!(c.exprs[3], Expr::Lookup { invert: true, .. }));
        // Plain values: not an interval set, sent as written.
        let c = compile("iifname { eth1, \"eth0\" }", false);
        assert!(!c.sets[0].interval);
        assert_eq!(c.sets[0].elements[0].key, ifname("eth1"));
        assert_eq!(c.sets[0].byteorder, 1);
        // A wildcard is the range of names it starts.
        let c = compile("oifname { \"br*\", eth0 }", false);
        assert_eq!(c.sets[0].elements[1].key, ifname("br"));
        assert_eq!(c.sets[0].elements[2].key, ifname("bs"));
        // One element is a plain match.
        let c = compile("tcp dport { 1024-65535 }", false);
        assert!(c.sets.is_empty());
        assert_eq!(c.exprs[3], cmp(CmpOp::Gte, vec![4, 0]));
    }

    #[test]
    fn set_user_data_is_what_nft_writes() {
        // Captured from nft 1.0.6 --debug=mnl.
        let t = |text: &str, v6| compile(text, v6).sets[0].key_typeof.clone();
        assert_eq!(
            t("ip daddr { 1.1.1.1, 2.2.2.2 }", false),
            [0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4, 12, 0, 0, 0]
        );
        assert_eq!(
            t("udp sport { 1, 2 }", false),
            [0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 6, 0, 0, 0, 1, 4, 1, 0, 0, 0]
        );
        assert_eq!(
            t("ip6 nexthdr { 6, 17 }", true),
            [0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 13, 0, 0, 0, 1, 4, 6, 0, 0, 0]
        );
        assert_eq!(
            t("meta l4proto { 1, 2 }", false),
            [0, 4, 9, 0, 0, 0, 1, 6, 0, 4, 16, 0, 0, 0]
        );
        assert_eq!(compile("meta l4proto { 1, 2 }", false).sets[0].byteorder, 1);
        assert_eq!(compile("ip protocol { 1, 2 }", false).sets[0].byteorder, 2);
    }

    #[test]
    fn flags_marks_and_fib() {
        let c = compile("ct state established,related", false);
        assert_eq!(c.exprs.len(), 3);
        assert_eq!(c.exprs[1], super::super::value::bits(6, CmpOp::Neq, 0)[0]);
        // An explicit operator compares the whole value.
        let c = compile("ct state != new", false);
        assert_eq!(
            c.exprs,
            vec![ct(CtKey::State), cmp(CmpOp::Neq, host_u32(8))]
        );
        let c = compile("meta mark & 0xff == 0x10 mark 16", false);
        assert_eq!(c.exprs.len(), 5);
        assert_eq!(c.exprs[4], cmp(CmpOp::Eq, host_u32(16)));
        let c = compile("fib iif . daddr type != local", true);
        assert_eq!(
            c.exprs,
            vec![
                Expr::Fib {
                    flags: FIB_F_DADDR | FIB_F_IIF,
                    result: FIB_RESULT_ADDRTYPE,
                    dreg: REG_1
                },
                cmp(CmpOp::Neq, host_u32(2)),
            ]
        );
    }

    #[test]
    fn what_berth_does_not_compile_is_refused_by_name() {
        for (text, v6, token) in [
            ("foo", false, "\"foo\""),
            ("ip saddr 1.2.3.4 icmp type echo-request", false, "\"icmp\""),
            ("ip saddr 1.2.3.4", true, "\"ip saddr\""),
            ("ip6 daddr ::1", false, "\"ip6 daddr\""),
            ("ip ttl 3", false, "\"ip ttl\""),
            ("meta skuid 0", false, "\"meta skuid\""),
            ("tcp flags syn", false, "\"tcp flags\""),
            ("ct state { new, established }", false, "\"ct state {\""),
            ("ct status dnat", false, "\"ct status\""),
            (
                "fib daddr type { local, broadcast }",
                false,
                "\"fib ... type {\"",
            ),
            ("fib daddr oif", false, "\"fib ... oif\""),
            ("meta mark 1-5", false, "\"1-5\""),
            ("meta mark & 0xff { 1, 2 }", false, "masked mark"),
            ("tcp dport ssh", false, "\"ssh\""),
            ("tcp dport 70000", false, "\"70000\""),
            ("ip protocol 300", false, "\"300\""),
            ("ip saddr 10.0.0.0/33", false, "\"10.0.0.0/33\""),
            ("ip saddr 10.0.0.5-10.0.0.1", false, "empty"),
            ("ip saddr example.com", false, "\"example.com\""),
            ("iifname \"*\"", false, "\"*\""),
            ("iifname 0123456789abcdef", false, "\"0123456789abcdef\""),
            ("tcp dport { }", false, "\"}\""),
            ("tcp dport { 80 443 }", false, "\"443\""),
            ("tcp dport", false, "\"tcp dport\""),
            ("fib daddr . saddr type local", false, "saddr and daddr"),
            ("fib daddr . iif . oif type local", false, "exclusive"),
            ("ip saddr < 1.2.3.4", false, "\"<\""),
            ("accept", false, "\"accept\""),
        ] {
            let e = refused(text, v6);
            assert!(e.contains(token), "{text}: {e}");
        }
        assert!(refused("counter", false).contains(SUPPORTED));
    }
}
