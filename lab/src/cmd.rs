//! The commands the lab tests submit to Raft, and their encoding in log
//! entries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A lab command: the Go tests use ints, and strings in the byte test.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cmd {
    /// An integer command.
    Int(i64),
    /// A string command.
    Str(String),
}

impl Cmd {
    /// The bytes a log entry carries.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("commands encode")
    }

    /// The command in a log entry; panics on bytes no tester wrote.
    pub fn decode(bytes: &[u8]) -> Cmd {
        postcard::from_bytes(bytes).expect("commands decode")
    }
}

impl From<i64> for Cmd {
    fn from(v: i64) -> Self {
        Cmd::Int(v)
    }
}
impl From<String> for Cmd {
    fn from(v: String) -> Self {
        Cmd::Str(v)
    }
}
impl From<&str> for Cmd {
    fn from(v: &str) -> Self {
        Cmd::Str(v.to_string())
    }
}
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::Int(v) => write!(f, "{v}"),
            Cmd::Str(s) if s.len() > 20 => write!(f, "{}…", &s[..20]),
            Cmd::Str(s) => write!(f, "{s}"),
        }
    }
}
