//! Parsers for the reference histories in `../shared/linearizability/`: the
//! Jepsen etcd logs (one register) and the EDN key/value histories.
//!
//! Times are line numbers (no two events share one). Invocations and
//! completions are paired by process. An operation with no completion, or
//! completed with `:info`, is open: `ret` is [`UNKNOWN_RETURN`] and its
//! output is the model's `Unknown`. Reads (gets) that never return a value
//! constrain nothing and are left out, as are operations that `:fail`ed,
//! except a failed compare-and-set, which says the register did not hold
//! the expected value.

use std::collections::BTreeMap;
use std::fmt;

use super::kv::{KvInput, KvOp, KvOutput};
use super::model::{Operation, UNKNOWN_RETURN};
use super::register::{RegisterInput, RegisterOutput};

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A register history, as [`parse_etcd_log`] returns it.
pub type RegisterHistory = Vec<Operation<RegisterInput, RegisterOutput>>;
/// A key/value history, as [`parse_kv_edn`] returns it.
pub type KvHistory = Vec<Operation<KvInput, KvOutput>>;

/// The kind of a Jepsen event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl EventType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            ":invoke" => EventType::Invoke,
            ":ok" => EventType::Ok,
            ":fail" => EventType::Fail,
            ":info" => EventType::Info,
            _ => return None,
        })
    }
}

/// Pairs invocations with completions by process, building operations in
/// invocation order. Each completion is handed the pending operation.
struct Pairing<I, O> {
    ops: Vec<Option<Operation<I, O>>>,
    pending: BTreeMap<u64, usize>,
}

impl<I, O> Pairing<I, O> {
    fn new() -> Self {
        Pairing {
            ops: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    fn invoke(&mut self, line: usize, process: u64, input: I, open: O) -> Result<(), ParseError> {
        if self.pending.contains_key(&process) {
            return Err(err(
                line,
                format!("process {process} invokes while an operation is pending"),
            ));
        }
        self.pending.insert(process, self.ops.len());
        self.ops.push(Some(Operation {
            client: process,
            call: line as u64,
            ret: UNKNOWN_RETURN,
            input,
            output: open,
        }));
        Ok(())
    }

    /// The pending operation of `process`, no longer pending.
    fn complete(
        &mut self,
        line: usize,
        process: u64,
    ) -> Result<&mut Option<Operation<I, O>>, ParseError> {
        let i = self.pending.remove(&process).ok_or_else(|| {
            err(
                line,
                format!("process {process} completes with nothing pending"),
            )
        })?;
        Ok(&mut self.ops[i])
    }

    fn finish(self) -> Vec<Operation<I, O>> {
        self.ops.into_iter().flatten().collect()
    }
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// The four fields of a Jepsen log line after its marker: process, type and
/// function separated by any run of whitespace (tabs in Jepsen's own logs,
/// spaces in copies of them; porcupine accepts both), then the value, which
/// may hold spaces itself (`[4 5]`).
fn jepsen_fields(rest: &str) -> Option<[&str; 4]> {
    let mut rest = rest.trim();
    let mut field = || {
        let end = rest.find(char::is_whitespace)?;
        let (word, after) = rest.split_at(end);
        rest = after.trim_start();
        Some(word)
    };
    let (process, kind, f) = (field()?, field()?, field()?);
    (!rest.is_empty()).then_some([process, kind, f, rest])
}

/// Parses a Jepsen etcd log (`INFO  jepsen.util - <process>\t<type>\t<f>\t<value>`
/// per line, the fields separated by tabs or any run of whitespace) into a
/// register history. Lines without the `jepsen.util - `
/// marker and blank lines are skipped.
///
/// * `:ok :read v` gives a read of `v` (`nil` is `None`);
/// * `:ok :write` / `:ok :cas` give [`RegisterOutput::Ok`];
/// * `:fail :cas` gives [`RegisterOutput::Failed`];
/// * `:fail :read` / `:fail :write` drop the operation (no effect);
/// * `:info`, or no completion, leaves a write or cas open
///   ([`RegisterOutput::Unknown`]) and drops a read.
pub fn parse_etcd_log(text: &str) -> Result<RegisterHistory, ParseError> {
    const MARKER: &str = "jepsen.util - ";
    let mut pairing = Pairing::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let Some(at) = raw.find(MARKER) else {
            continue;
        };
        let Some([process, kind, f, value]) = jepsen_fields(&raw[at + MARKER.len()..]) else {
            return Err(err(
                line,
                format!("expected 4 whitespace-separated fields: {raw:?}"),
            ));
        };
        let process: u64 = process
            .parse()
            .map_err(|_| err(line, format!("bad process {process:?}")))?;
        let kind = EventType::parse(kind).ok_or_else(|| err(line, format!("bad type {kind:?}")))?;
        match kind {
            EventType::Invoke => {
                let input = match f {
                    ":read" => RegisterInput::Read,
                    ":write" => RegisterInput::Write(parse_int(line, value)?),
                    ":cas" => {
                        let (from, to) = parse_pair(line, value)?;
                        RegisterInput::Cas { from, to }
                    }
                    _ => return Err(err(line, format!("bad function {f:?}"))),
                };
                pairing.invoke(line, process, input, RegisterOutput::Unknown)?;
            }
            EventType::Ok | EventType::Fail | EventType::Info => {
                let slot = pairing.complete(line, process)?;
                let Some(op) = slot.as_mut() else {
                    unreachable!("pending operations are never dropped");
                };
                let function_matches = matches!(
                    (f, op.input),
                    (":read", RegisterInput::Read)
                        | (":write", RegisterInput::Write(_))
                        | (":cas", RegisterInput::Cas { .. })
                );
                if !function_matches {
                    return Err(err(line, format!("{f} completes a {:?}", op.input)));
                }
                match (kind, op.input) {
                    (EventType::Ok, RegisterInput::Read) => {
                        op.output = RegisterOutput::Read(parse_nil_or_int(line, value)?);
                        op.ret = line as u64;
                    }
                    (EventType::Ok, _) => {
                        op.output = RegisterOutput::Ok;
                        op.ret = line as u64;
                    }
                    (EventType::Fail, RegisterInput::Cas { .. }) => {
                        op.output = RegisterOutput::Failed;
                        op.ret = line as u64;
                    }
                    (EventType::Fail, _) | (EventType::Info, RegisterInput::Read) => *slot = None,
                    (EventType::Info, _) => {}
                    (EventType::Invoke, _) => unreachable!("handled above"),
                }
            }
        }
    }
    let mut ops = pairing.finish();
    ops.retain(|op| !(op.input == RegisterInput::Read && op.is_open()));
    Ok(ops)
}

fn parse_int(line: usize, s: &str) -> Result<i64, ParseError> {
    s.parse()
        .map_err(|_| err(line, format!("expected an integer, got {s:?}")))
}

fn parse_nil_or_int(line: usize, s: &str) -> Result<Option<i64>, ParseError> {
    if s == "nil" {
        Ok(None)
    } else {
        parse_int(line, s).map(Some)
    }
}

/// `[a b]`.
fn parse_pair(line: usize, s: &str) -> Result<(i64, i64), ParseError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| err(line, format!("expected [a b], got {s:?}")))?;
    let mut parts = inner.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Ok((parse_int(line, a)?, parse_int(line, b)?)),
        _ => Err(err(line, format!("expected [a b], got {s:?}"))),
    }
}

/// An EDN scalar as it appears in the histories.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Edn {
    Keyword(String),
    Str(String),
    Int(i64),
    Nil,
}

/// Parses a key/value history in Jepsen's EDN notation, one map per line:
/// `{:process P, :type :invoke|:ok|:fail|:info, :f :get|:put|:append, :key "K", :value "V"|nil}`.
/// Blank lines are skipped.
///
/// * `:ok` completes the operation; a get's output is the `:value` of the
///   `:ok` line (`nil` reads as the empty string);
/// * `:fail` drops the operation (no effect);
/// * `:info`, or no completion, leaves a put or append open
///   ([`KvOutput::Unknown`]) and drops a get.
pub fn parse_kv_edn(text: &str) -> Result<KvHistory, ParseError> {
    let mut pairing = Pairing::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let map = parse_edn_map(line, raw)?;
        let field = |name: &str| {
            map.get(name)
                .ok_or_else(|| err(line, format!("missing :{name}")))
        };
        let keyword = |name: &str| match field(name)? {
            Edn::Keyword(k) => Ok(k.as_str()),
            other => Err(err(line, format!(":{name} is {other:?}, not a keyword"))),
        };
        let process = match field("process")? {
            Edn::Int(p) if *p >= 0 => *p as u64,
            other => return Err(err(line, format!("bad :process {other:?}"))),
        };
        let kind = EventType::parse(&format!(":{}", keyword("type")?))
            .ok_or_else(|| err(line, "bad :type"))?;
        let op = match keyword("f")? {
            "get" => KvOp::Get,
            "put" => KvOp::Put,
            "append" => KvOp::Append,
            other => return Err(err(line, format!("bad :f {other:?}"))),
        };
        let key = match field("key")? {
            Edn::Str(k) => k.clone(),
            Edn::Int(k) => k.to_string(),
            other => return Err(err(line, format!("bad :key {other:?}"))),
        };
        let value = match map.get("value") {
            Some(Edn::Str(v)) => v.clone(),
            Some(Edn::Nil) | None => String::new(),
            Some(Edn::Int(v)) => v.to_string(),
            Some(other) => return Err(err(line, format!("bad :value {other:?}"))),
        };
        match kind {
            EventType::Invoke => {
                let input = KvInput {
                    op,
                    key,
                    value,
                    expected: None,
                };
                pairing.invoke(line, process, input, KvOutput::Unknown)?;
            }
            EventType::Ok | EventType::Fail | EventType::Info => {
                let slot = pairing.complete(line, process)?;
                let Some(pending) = slot.as_mut() else {
                    unreachable!("pending operations are never dropped");
                };
                if pending.input.op != op || pending.input.key != key {
                    return Err(err(
                        line,
                        format!("completion does not match {:?}", pending.input),
                    ));
                }
                match kind {
                    EventType::Ok => {
                        pending.ret = line as u64;
                        pending.output = KvOutput::Value(if op == KvOp::Get {
                            value
                        } else {
                            String::new()
                        });
                    }
                    EventType::Fail => *slot = None,
                    _ if op == KvOp::Get => *slot = None,
                    _ => {}
                }
            }
        }
    }
    let mut ops = pairing.finish();
    ops.retain(|op| !(op.input.op == KvOp::Get && op.is_open()));
    Ok(ops)
}

/// One line's `{:k v, :k v, ...}`.
fn parse_edn_map(line: usize, raw: &str) -> Result<BTreeMap<String, Edn>, ParseError> {
    let mut tokens = EdnTokens {
        line,
        rest: raw.trim(),
    };
    tokens.expect('{')?;
    let mut map = BTreeMap::new();
    loop {
        if tokens.eat('}') {
            break;
        }
        let Edn::Keyword(name) = tokens.scalar()? else {
            return Err(err(line, "map keys must be keywords"));
        };
        let value = tokens.scalar()?;
        map.insert(name, value);
    }
    if !tokens.rest.trim().is_empty() {
        return Err(err(line, format!("trailing text {:?}", tokens.rest)));
    }
    Ok(map)
}

/// A cursor over one line of EDN; commas count as whitespace, as in EDN.
struct EdnTokens<'a> {
    line: usize,
    rest: &'a str,
}

impl<'a> EdnTokens<'a> {
    fn skip_space(&mut self) {
        self.rest = self
            .rest
            .trim_start_matches(|c: char| c.is_whitespace() || c == ',');
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(err(self.line, format!("expected {c:?} at {:?}", self.rest)))
        }
    }

    fn scalar(&mut self) -> Result<Edn, ParseError> {
        self.skip_space();
        if let Some(rest) = self.rest.strip_prefix('"') {
            return self.string(rest);
        }
        let end = self
            .rest
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | '{' | '"'))
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        if let Some(name) = word.strip_prefix(':').filter(|n| !n.is_empty()) {
            Ok(Edn::Keyword(name.to_string()))
        } else if word == "nil" {
            Ok(Edn::Nil)
        } else if let Ok(i) = word.parse() {
            Ok(Edn::Int(i))
        } else {
            Err(err(self.line, format!("unexpected token {word:?}")))
        }
    }

    /// A string body after its opening quote, with `\"`, `\\`, `\n`, `\t`
    /// escapes.
    fn string(&mut self, body: &'a str) -> Result<Edn, ParseError> {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &body[i + 1..];
                    return Ok(Edn::Str(out));
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    other => {
                        return Err(err(self.line, format!("bad escape {other:?}")));
                    }
                },
                c => out.push(c),
            }
        }
        Err(err(self.line, "unterminated string"))
    }
}
