//! Durable storage for one node in a directory: the hard state, the log and
//! the latest snapshot, written so that a crash never loses a `Persist`
//! whose `Persisted` was reported.
//!
//! # Files
//!
//! - `state`: the node's whole [`DurableState`] (hard state, snapshot
//!   boundary, the log after it), and the node and cluster ids it belongs to.
//! - `snapshot-<index>-<term>`: the snapshot that `state` names, if any.
//! - `*.tmp`: a replacement being written; deleted when the directory is
//!   opened (it was never renamed into place, so nothing reported depends on
//!   it).
//!
//! Both kinds of file are `magic (8 bytes) | u32 format version | u64 payload
//! length | u32 crc32 of payload | payload`, integers little-endian, the
//! payload being postcard.
//!
//! # How a write becomes durable
//!
//! [`FilePersister::write`] takes every `Persist` waiting (one group commit)
//! and folds them into the in-memory image with [`DurableState::apply`].
//! If they brought a snapshot, its file is written under a temporary name,
//! fsynced, renamed into place and the directory fsynced. Then the new
//! `state` is written the same way (temporary file, fsync, rename, directory
//! fsync). Only after that does the caller report `Persisted` and send the
//! messages that waited. A crash before the rename of `state` leaves the old
//! `state`, which still names a snapshot file that exists (old snapshot files
//! are deleted only once the new `state` is durable); a crash after it leaves
//! the new one. Either way `state` is one whole version, so every write is
//! atomic, and writes become durable in order.
//!
//! # Cost
//!
//! Each group commit rewrites the whole log since the last snapshot and pays
//! two fsyncs (three with a snapshot). That is fine for this driver and for a
//! service that snapshots every few hundred entries, and far slower than
//! driver-tokio's segmented, checksummed append-only log (one `fdatasync` per
//! group commit, appends only). Do not use it for a large log.
//!
//! # Recovery
//!
//! [`FilePersister::open`] creates the directory if it is missing (and
//! fsyncs its parent, so that the directory itself survives a crash),
//! deletes leftover temporary files, reads `state` (none: a fresh node),
//! checks its magic, version, length, checksum and owner, loads the snapshot
//! it names, deletes any other snapshot file, and returns what
//! [`raft_core::RaftNode::recover`] takes. Anything damaged or inconsistent
//! is an error naming the file: nothing is guessed.
#![warn(missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use raft_core::{DurableState, NodeId, Persist, SnapshotMeta};
use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state";
const STATE_MAGIC: &[u8; 8] = b"RTSTATE\0";
const SNAPSHOT_MAGIC: &[u8; 8] = b"RTSNAPS\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Who a data directory belongs to. A directory written by one node is
/// refused to any other node or cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node's id.
    pub node_id: NodeId,
    /// Its cluster's id.
    pub cluster_id: u64,
}

/// Why storage could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file is damaged or does not fit the rest of the directory.
    #[error("{}: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The directory holds another node's state.
    #[error(
        "{} belongs to node {} of cluster {}, not node {} of cluster {}",
        dir.display(), found.node_id, found.cluster_id, expected.node_id, expected.cluster_id
    )]
    WrongOwner {
        /// The data directory.
        dir: PathBuf,
        /// Who the state belongs to.
        found: Owner,
        /// Who opened it.
        expected: Owner,
    },
}

/// What [`FilePersister::open`] found: the arguments of
/// [`raft_core::RaftNode::recover`] after the config and seed.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The durable image.
    pub state: DurableState,
    /// The bytes of the snapshot it names.
    pub snapshot: Option<Vec<u8>>,
}

/// The `state` file's payload.
#[derive(Serialize, Deserialize)]
struct StateFile {
    owner: Owner,
    state: DurableState,
}

/// A snapshot file's payload.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    owner: Owner,
    meta: SnapshotMeta,
    #[serde(with = "raft_core::bytes")]
    data: Vec<u8>,
}

/// A node's durable storage in one directory. See the module docs for the
/// format and the crash guarantees.
#[derive(Debug)]
pub struct FilePersister {
    dir: PathBuf,
    owner: Owner,
    /// The image as of the last successful write.
    state: DurableState,
}

impl FilePersister {
    /// Opens (creating it if needed) the data directory of `owner`, and
    /// returns what was stored there.
    pub fn open(dir: &Path, owner: Owner) -> Result<(FilePersister, Recovered), PersistError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
            // Make the new directory's own entry durable, or a crash could
            // lose the directory with every write reported inside it.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let entries = fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
        let mut snapshot_files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(io_err("cannot remove", &entry.path()))?;
            } else if name.starts_with("snapshot-") {
                snapshot_files.push(entry.path());
            }
        }
        let state_path = dir.join(STATE_FILE);
        let mut recovered = Recovered::default();
        if state_path.exists() {
            let file: StateFile = read_checked(&state_path, STATE_MAGIC)?;
            if file.owner != owner {
                return Err(PersistError::WrongOwner {
                    dir: dir.to_path_buf(),
                    found: file.owner,
                    expected: owner,
                });
            }
            if let Some(meta) = file.state.snapshot {
                let path = dir.join(snapshot_name(meta));
                if !path.exists() {
                    return Err(PersistError::Corrupt {
                        path,
                        why: "missing: the state file names this snapshot".into(),
                    });
                }
                let snap: SnapshotFile = read_checked(&path, SNAPSHOT_MAGIC)?;
                if snap.owner != owner || snap.meta != meta {
                    return Err(PersistError::Corrupt {
                        path,
                        why: format!(
                            "holds {:?} of {:?}, the state file expects {meta:?} of {owner:?}",
                            snap.meta, snap.owner
                        ),
                    });
                }
                recovered.snapshot = Some(snap.data);
            }
            recovered.state = file.state;
        }
        let persister = FilePersister {
            dir: dir.to_path_buf(),
            owner,
            state: recovered.state.clone(),
        };
        // Snapshots the state does not name were superseded (or written by a
        // write that never completed): nothing reported depends on them.
        persister.remove_snapshots_except(&snapshot_files, persister.state.snapshot)?;
        Ok((persister, recovered))
    }

    /// The image as of the last successful write.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// Makes `batch` durable, atomically and in order, before returning.
    /// On error nothing may be assumed about the batch (the node must stop);
    /// what an earlier call made durable stays durable.
    pub fn write(&mut self, batch: &[Persist]) -> Result<(), PersistError> {
        if batch.iter().all(Persist::is_barrier) {
            return Ok(()); // nothing changes: every earlier write is already durable
        }
        let mut state = self.state.clone();
        let mut snapshot = None;
        for persist in batch {
            if let Some(data) = state.apply(persist) {
                snapshot = Some(data);
            }
        }
        if let (Some(data), Some(meta)) = (snapshot, state.snapshot) {
            let file = SnapshotFile {
                owner: self.owner,
                meta,
                data,
            };
            self.write_atomically(&snapshot_name(meta), SNAPSHOT_MAGIC, &file)?;
        }
        let file = StateFile {
            owner: self.owner,
            state,
        };
        self.write_atomically(STATE_FILE, STATE_MAGIC, &file)?;
        let old = self.state.snapshot;
        self.state = file.state;
        if old != self.state.snapshot {
            if let Some(old) = old {
                let path = self.dir.join(snapshot_name(old));
                self.remove_snapshots_except(&[path], self.state.snapshot)?;
            }
        }
        Ok(())
    }

    fn remove_snapshots_except(
        &self,
        files: &[PathBuf],
        keep: Option<SnapshotMeta>,
    ) -> Result<(), PersistError> {
        let keep = keep.map(|meta| self.dir.join(snapshot_name(meta)));
        for path in files {
            if Some(path) != keep.as_ref() {
                fs::remove_file(path).map_err(io_err("cannot remove", path))?;
            }
        }
        Ok(())
    }

    /// Temporary file, fsync, rename, directory fsync.
    fn write_atomically<T: Serialize>(
        &self,
        name: &str,
        magic: &[u8; 8],
        value: &T,
    ) -> Result<(), PersistError> {
        let payload = postcard::to_allocvec(value).expect("storage types encode");
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(magic);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        file.write_all(&bytes)
            .map_err(io_err("cannot write", &tmp))?;
        file.sync_all().map_err(io_err("cannot fsync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("cannot rename into place", &path))?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync directory", dir))
}

fn snapshot_name(meta: SnapshotMeta) -> String {
    format!("snapshot-{}-{}", meta.index, meta.term)
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |source| PersistError::Io { what, path, source }
}

/// Reads a file written by `write_atomically`, checking everything.
fn read_checked<T: for<'de> Deserialize<'de>>(
    path: &Path,
    magic: &[u8; 8],
) -> Result<T, PersistError> {
    let bytes = fs::read(path).map_err(io_err("cannot read", path))?;
    let corrupt = |why: String| PersistError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != magic {
        return Err(corrupt("not a file of this driver (bad magic)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "payload of {} bytes, the header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("undecodable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Entry, HardState, Snapshot};

    const OWNER: Owner = Owner {
        node_id: 1,
        cluster_id: 9,
    };

    fn persist(id: u64, term: u64, entries: std::ops::Range<u64>) -> Persist {
        Persist {
            id,
            hard_state: Some(HardState {
                term,
                voted_for: Some(1),
            }),
            snapshot: None,
            truncate_from: None,
            entries: entries
                .map(|index| Entry {
                    index,
                    term,
                    command: vec![index as u8],
                })
                .collect(),
            then_send: Vec::new(),
        }
    }

    #[test]
    fn writes_survive_reopen_with_snapshot_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, rec) = FilePersister::open(dir.path(), OWNER).unwrap();
        assert_eq!(rec.state, DurableState::default());
        assert!(rec.snapshot.is_none());
        p.write(&[persist(1, 1, 1..4), persist(2, 2, 4..6)])
            .unwrap();
        let mut truncating = persist(3, 3, 4..5);
        truncating.truncate_from = Some(4);
        p.write(&[truncating]).unwrap();
        let mut snap = persist(4, 3, 5..5);
        snap.hard_state = None;
        snap.snapshot = Some(Snapshot {
            meta: SnapshotMeta { index: 2, term: 1 },
            data: b"two".to_vec(),
        });
        p.write(&[snap]).unwrap();
        let expected = p.state().clone();
        assert_eq!(expected.last_index(), 4);
        assert_eq!(expected.entries.first().map(|e| e.index), Some(3));
        drop(p);

        let (p, rec) = FilePersister::open(dir.path(), OWNER).unwrap();
        assert_eq!(rec.state, expected);
        assert_eq!(rec.snapshot.as_deref(), Some(&b"two"[..]));
        assert_eq!(p.state(), &expected);
        // A newer snapshot replaces the old file.
        let mut p = p;
        let mut snap = persist(5, 3, 5..5);
        snap.snapshot = Some(Snapshot {
            meta: SnapshotMeta { index: 4, term: 3 },
            data: b"four".to_vec(),
        });
        p.write(&[snap]).unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snapshot-"))
            .collect();
        assert_eq!(names, vec!["snapshot-4-3".to_string()]);
        raft_core::RaftNode::recover(
            raft_core::Config::new(1, vec![0, 1, 2]),
            7,
            rec.state,
            rec.snapshot,
        )
        .unwrap();
    }

    #[test]
    fn refuses_another_owner_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = FilePersister::open(dir.path(), OWNER).unwrap();
        p.write(&[persist(1, 1, 1..3)]).unwrap();
        let other = Owner {
            node_id: 2,
            cluster_id: 9,
        };
        let err = FilePersister::open(dir.path(), other).unwrap_err();
        assert!(
            err.to_string().contains("belongs to node 1 of cluster 9"),
            "{err}"
        );
        let path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = FilePersister::open(dir.path(), OWNER).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = FilePersister::open(dir.path(), OWNER).unwrap();
        p.write(&[persist(1, 1, 1..3)]).unwrap();
        let expected = p.state().clone();
        drop(p);
        // A crash mid-write leaves a temporary file and perhaps a snapshot
        // that the state does not name yet.
        fs::write(dir.path().join("state.tmp"), b"half a file").unwrap();
        fs::write(dir.path().join("snapshot-9-9"), b"orphan").unwrap();
        let (_, rec) = FilePersister::open(dir.path(), OWNER).unwrap();
        assert_eq!(rec.state, expected);
        assert!(!dir.path().join("state.tmp").exists());
        assert!(!dir.path().join("snapshot-9-9").exists());
    }
}
