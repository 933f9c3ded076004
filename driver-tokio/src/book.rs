//! The address book in a node's data directory (`members.toml`): the
//! initial voters it was bootstrapped with (none for a node that joined a
//! running cluster) and the peer address of every node it has heard of.
//!
//! Raft keeps the configuration in the log and snapshots, and the service
//! keeps the member address table in its state ([`kv_core::admin`]); but
//! a node that restarts has applied nothing yet, and must reach its peers
//! before it can learn what the log says. So the driver writes down what it
//! knows whenever that changes (write a temporary file, fsync, rename, fsync
//! the directory) and starts from it: a restart needs neither `--peers` nor
//! `--join`.
//!
//! ```toml
//! bootstrap = [0, 1, 2]
//!
//! [peers]
//! 0 = "127.0.0.1:7000"
//! 3 = "127.0.0.1:7003"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "members.toml";

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressBook {
    /// The initial voters (`Config::members`); empty for a joined node.
    #[serde(default)]
    pub bootstrap: Vec<NodeId>,
    /// Every known node's peer address.
    #[serde(default, with = "id_keys")]
    pub peers: BTreeMap<NodeId, SocketAddr>,
}

/// Why the book could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// I/O on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl AddressBook {
    /// The book in `dir`, or `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<AddressBook>, BookError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BookError::Io { path, source }),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| BookError::Parse {
                path,
                reason: e.to_string(),
            })
    }

    /// Replaces the book in `dir`, durably.
    pub fn store(&self, dir: &Path) -> Result<(), BookError> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let io = |source| BookError::Io {
            path: path.clone(),
            source,
        };
        let text = toml::to_string(self).map_err(|e| BookError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// TOML tables have string keys: node ids as decimal strings.
mod id_keys {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<u64, SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, SocketAddr>, D::Error> {
        let raw = BTreeMap::<String, SocketAddr>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                k.parse()
                    .map(|id| (id, v))
                    .map_err(|_| D::Error::custom(format!("{k:?} is not a node id")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_durably_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(AddressBook::load(dir.path()).unwrap(), None);
        let book = AddressBook {
            bootstrap: vec![0, 1, 2],
            peers: [(0, "127.0.0.1:7000".parse().unwrap())].into(),
        };
        book.store(dir.path()).unwrap();
        assert_eq!(AddressBook::load(dir.path()).unwrap(), Some(book));
        std::fs::write(dir.path().join(FILE_NAME), "[peers]\nx = \"1.2.3.4:5\"\n").unwrap();
        let err = AddressBook::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("members.toml") && err.contains("node id"),
            "{err}"
        );
    }
}
