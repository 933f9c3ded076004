//! The JSON-lines key/value histories the lab tests export with
//! `HISTORY_DIR=<dir>` (`lab::History::export`): one object
//! per line,
//!
//! ```text
//! {"client":0,"call":1000,"return":1002,"op":"put","key":"k","value":"1","output":""}
//! ```
//!
//! with `op` one of `get`, `put`, `append`, times in nanoseconds, and
//! `output` the value a get returned. A small hand parser for this flat
//! shape (string and unsigned integer members, any order, JSON escapes and
//! whitespace), so the crate needs no JSON library. Unknown members are
//! refused, so a change of the format is noticed.

use super::kv::{KvInput, KvOutput};
use super::model::Operation;
use super::parse::{KvHistory, ParseError};

/// A member's value.
enum Value {
    Number(u64),
    Text(String),
}

/// Parses an exported history. Blank lines are skipped; `value` and
/// `output` may be left out (empty).
pub fn parse_history_jsonl(text: &str) -> Result<KvHistory, ParseError> {
    let mut history = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| ParseError {
            line: i + 1,
            message,
        };
        let members = parse_object(line).map_err(fail)?;
        history.push(operation(members).map_err(fail)?);
    }
    Ok(history)
}

fn operation(members: Vec<(String, Value)>) -> Result<Operation<KvInput, KvOutput>, String> {
    let (mut client, mut call, mut ret) = (None, None, None);
    let (mut op, mut key, mut value, mut output) = (None, None, String::new(), String::new());
    for (name, v) in members {
        match (name.as_str(), v) {
            ("client", Value::Number(n)) => client = Some(n),
            ("call", Value::Number(n)) => call = Some(n),
            ("return", Value::Number(n)) => ret = Some(n),
            ("op", Value::Text(s)) => op = Some(s),
            ("key", Value::Text(s)) => key = Some(s),
            ("value", Value::Text(s)) => value = s,
            ("output", Value::Text(s)) => output = s,
            (
                "client" | "call" | "return" | "op" | "key" | "value" | "output",
                Value::Number(_) | Value::Text(_),
            ) => return Err(format!("member {name:?} has the wrong type")),
            _ => return Err(format!("unknown member {name:?}")),
        }
    }
    let missing = |what: &str| format!("missing member {what:?}");
    let (client, call, ret) = (
        client.ok_or_else(|| missing("client"))?,
        call.ok_or_else(|| missing("call"))?,
        ret.ok_or_else(|| missing("return"))?,
    );
    if ret < call {
        return Err(format!("returns ({ret}) before its call ({call})"));
    }
    let key = key.ok_or_else(|| missing("key"))?;
    let (input, output) = match op.ok_or_else(|| missing("op"))?.as_str() {
        "get" => (KvInput::get(key), output),
        "put" => (KvInput::put(key, value), String::new()),
        "append" => (KvInput::append(key, value), String::new()),
        other => return Err(format!("unknown op {other:?}")),
    };
    Ok(Operation {
        client,
        call,
        ret,
        input,
        output: KvOutput::Value(output),
    })
}

/// A cursor over one line.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl Reader<'_> {
    fn skip_space(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.skip_space();
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            Ok(())
        } else {
            Err(format!("expected {c:?} at column {}", self.at + 1))
        }
    }

    fn number(&mut self) -> Result<u64, String> {
        let rest = &self.text[self.at..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = rest[..digits]
            .parse()
            .map_err(|_| format!("expected an unsigned integer at column {}", self.at + 1))?;
        self.at += digits;
        Ok(n)
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let hex = self
            .text
            .get(self.at..self.at + 4)
            .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("bad \\u escape at column {}", self.at + 1))?;
        self.at += 4;
        Ok(u32::from_str_radix(hex, 16).expect("four hex digits"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.at += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or("unterminated string")?;
                    self.at += e.len_utf8();
                    out.push(match e {
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => self.unicode_escape()?,
                        other => return Err(format!("bad escape \\{other}")),
                    });
                }
                c if u32::from(c) < 0x20 => return Err("control character in a string".into()),
                c => out.push(c),
            }
        }
    }

    /// After `\u`: one code point, from a surrogate pair if need be.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&high) {
            if !self.text[self.at..].starts_with("\\u") {
                return Err("lone surrogate in a \\u escape".into());
            }
            self.at += 2;
            let low = self.hex4()?;
            if !(0xdc00..0xe000).contains(&low) {
                return Err("bad surrogate pair in a \\u escape".into());
            }
            0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
        } else {
            high
        };
        char::from_u32(code).ok_or_else(|| "bad code point in a \\u escape".into())
    }
}

/// A flat object of string and unsigned integer members.
fn parse_object(line: &str) -> Result<Vec<(String, Value)>, String> {
    let mut r = Reader { text: line, at: 0 };
    r.expect('{')?;
    let mut members = Vec::new();
    r.skip_space();
    if r.peek() == Some('}') {
        r.at += 1;
    } else {
        loop {
            let name = r.string()?;
            r.expect(':')?;
            r.skip_space();
            let value = match r.peek() {
                Some('"') => Value::Text(r.string()?),
                Some(c) if c.is_ascii_digit() => Value::Number(r.number()?),
                _ => return Err(format!("member {name:?}: expected a string or a number")),
            };
            members.push((name, value));
            r.skip_space();
            match r.peek() {
                Some(',') => r.at += 1,
                Some('}') => {
                    r.at += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or '}}' at column {}", r.at + 1)),
            }
        }
    }
    r.skip_space();
    if r.at != line.len() {
        return Err(format!("text after the object at column {}", r.at + 1));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exported_format() {
        let text = concat!(
            r#"{"client":0,"call":1000,"return":1002,"op":"put","key":"k","value":"1","output":""}"#,
            "\n\n",
            r#"{ "output" : "1 \"x\"\u00e9\ud83d\ude00\n", "op":"get", "key":"k", "value":"", "client":3, "call":1001, "return":1003 }"#,
            "\n",
            r#"{"client":1,"call":5,"return":9,"op":"append","key":"k2","value":"x 1 0 y","output":""}"#,
        );
        let h = parse_history_jsonl(text).expect("parses");
        assert_eq!(h.len(), 3);
        assert_eq!((h[0].client, h[0].call, h[0].ret), (0, 1000, 1002));
        assert_eq!(h[0].input, KvInput::put("k", "1"));
        assert_eq!(h[1].input, KvInput::get("k"));
        assert_eq!(h[1].output, KvOutput::Value("1 \"x\"é😀\n".into()));
        assert_eq!(h[2].input, KvInput::append("k2", "x 1 0 y"));
        assert_eq!(h[2].output, KvOutput::Value(String::new()));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let bad = [
            (
                r#"{"client":0,"call":1,"return":2,"op":"cas","key":"k"}"#,
                "unknown op",
            ),
            (
                r#"{"client":0,"call":1,"op":"get","key":"k"}"#,
                "missing member \"return\"",
            ),
            (
                r#"{"client":0,"call":3,"return":2,"op":"get","key":"k"}"#,
                "before its call",
            ),
            (
                r#"{"client":"0","call":1,"return":2,"op":"get","key":"k"}"#,
                "wrong type",
            ),
            (
                r#"{"client":0,"call":1,"return":2,"op":"get","key":"k","x":1}"#,
                "unknown member",
            ),
            (r#"{"client":-1}"#, "expected a string or a number"),
            (r#"{"client":0"#, "expected ','"),
            (r#"{"key":"a\qb"}"#, "bad escape"),
            (r#"{"key":"a"} x"#, "text after"),
        ];
        for (line, want) in bad {
            let e = parse_history_jsonl(&format!("\n{line}")).expect_err(line);
            assert_eq!(e.line, 2, "{line}");
            assert!(e.message.contains(want), "{line}: {e}");
        }
    }
}
