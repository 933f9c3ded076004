//! Opening a data directory: choosing the segment, replaying it, cutting a
//! torn tail, and fitting the snapshot file to the log (see the crate docs).

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use raft_core::{DurableState, DurableWrite, SnapshotMeta};

use crate::error::io_err;
use crate::fsutil::{list_dir, remove_segments_except, sync_dir, write_new_file};
use crate::segment::{push_segment_header, scan_segment, segment_file_name, Scan, FORMAT_VERSION};
use crate::snapshot_file::{snapshot_file_name, SnapshotReader, SNAPSHOT_FILE};
use crate::{Storage, StorageError};

/// What [`Storage::open`] found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The durable state, for `RaftNode::recover`.
    pub state: DurableState,
    /// The snapshot's file, open for streaming its data (checked against its
    /// crc as it is read), present exactly when `state.snapshot` is.
    pub snapshot: Option<SnapshotReader>,
    /// The size of the live log segment (see [`Storage::raft_state_bytes`]).
    pub raft_state_bytes: usize,
    /// The segment and offset where a torn final record was cut off.
    pub truncated_torn_tail: Option<(PathBuf, u64)>,
}

/// The file whose exclusive lock marks a data directory in use.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the data directory's exclusive lock (an advisory `flock` on
/// [`LOCK_FILE`], released when the process exits, however it exits), or
/// fails at once if another process (or another `Storage` here) holds it:
/// two writers on one log would corrupt it.
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::Io { path, source: e }),
    }
}

impl Storage {
    /// Opens (creating if needed) the data directory and recovers its
    /// contents. See the crate documentation for what is tolerated.
    pub fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let listing = list_dir(dir)?;
        let mut dir_changed = false;
        for name in &listing.snapshot_tmps {
            let tmp = dir.join(name);
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            dir_changed = true;
        }

        // Choose the segment to replay, newest first, falling back once.
        let segments = &listing.segments;
        let mut chosen = None;
        for (i, &seq) in segments.iter().enumerate().rev() {
            let path = dir.join(segment_file_name(seq));
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            match scan_segment(&path, &bytes, seq > 1)? {
                Scan::Valid(replay) => {
                    chosen = Some((seq, path, replay));
                    break;
                }
                Scan::TornStart => {
                    let newest = i + 1 == segments.len();
                    if newest && (i > 0 || seq == 1) {
                        // A crash while rotating (or while creating log.1):
                        // the segment never became live.
                        tracing::warn!(path = %path.display(), "ignoring a segment torn at its start");
                        continue;
                    }
                    return Err(StorageError::Corrupt {
                        path,
                        offset: 0,
                        reason: "segment header or opening checkpoint missing or torn".into(),
                    });
                }
            }
        }
        let snapshot_path = dir.join(SNAPSHOT_FILE);

        // A segment of the older format is replayed, then left: the store
        // rotates to a new segment in the current format before writing.
        let mut legacy = false;
        let (seq, path, mut state, valid_len, torn) = match chosen {
            Some((seq, path, replay)) => {
                legacy = replay.version != FORMAT_VERSION;
                (seq, path, replay.state, replay.valid_len, replay.torn_at)
            }
            None => {
                if listing.snapshot {
                    return Err(StorageError::Inconsistent {
                        path: snapshot_path,
                        reason: "a snapshot file but no log segment".into(),
                    });
                }
                if let Some(&index) = listing.staged.last() {
                    return Err(StorageError::Inconsistent {
                        path: dir.join(snapshot_file_name(index)),
                        reason: "a snapshot file but no log segment".into(),
                    });
                }
                let path = dir.join(segment_file_name(1));
                let mut header = Vec::new();
                push_segment_header(&mut header);
                write_new_file(&path, &header)?;
                dir_changed = true;
                (1, path, DurableState::default(), header.len() as u64, None)
            }
        };

        // Written at explicit offsets (records go where the last one ended,
        // over the preallocated zeros), so not in append mode.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let truncated_torn_tail = match torn {
            Some(offset) => {
                tracing::warn!(path = %path.display(), offset, "cutting off a torn final record");
                file.set_len(offset).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                Some((path.clone(), offset))
            }
            None => None,
        };
        // The file's size: past the records, the preallocated zeros.
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        // Older segments (an interrupted deletion) and a torn newer one.
        dir_changed |= remove_segments_except(dir, seq)?;
        if dir_changed {
            sync_dir(dir)?;
        }

        // The snapshot: the staged file the log names; or the single file
        // of the earlier formats.
        let named = state.snapshot.as_ref().map(|m| m.index);
        let mut rotate = legacy;
        let mut snapshot = None;
        if let Some(index) = named.filter(|i| listing.staged.contains(i)) {
            let path = dir.join(snapshot_file_name(index));
            let reader = SnapshotReader::open(&path)?;
            let (file, log) = (reader.meta(), state.snapshot.as_ref().expect("named"));
            if (file.index, file.term) != (log.index, log.term) {
                return Err(StorageError::Inconsistent {
                    path,
                    reason: format!(
                        "the snapshot file ends at index {} (term {}) but the log names index {} (term {})",
                        file.index, file.term, log.index, log.term
                    ),
                });
            }
            snapshot = Some(reader);
            if listing.snapshot {
                // The single file of the earlier formats, older: a crash
                // before the write that adopted this one deleted it.
                fs::remove_file(&snapshot_path).map_err(io_err(&snapshot_path))?;
                dir_changed = true;
            }
        } else if listing.snapshot {
            let reader = SnapshotReader::open(&snapshot_path)?;
            let meta = reader.meta().clone();
            let current = state.snapshot.clone();
            let position = |m: &SnapshotMeta| (m.index, m.term);
            if current.as_ref().map(position) == Some(position(&meta)) {
                // The usual case: the log recorded this snapshot. (A log
                // written before boundaries recorded configurations
                // takes the file's.)
                if let Some(c) = state.snapshot.as_mut() {
                    if c.membership.voters.is_empty() {
                        c.membership = meta.membership.clone();
                    }
                }
            } else if current.is_none() || current.as_ref().is_some_and(|c| meta.index > c.index) {
                tracing::warn!(
                    index = meta.index,
                    "the snapshot file is newer than the log: completing its write"
                );
                let write = DurableWrite {
                    hard_state: reader.hard_state,
                    snapshot: Some(meta),
                    truncate_from: reader.truncate_from,
                    entries: Cow::Borrowed(&[]),
                };
                state
                    .try_apply(write)
                    .map_err(|e| StorageError::Inconsistent {
                        path: snapshot_path.clone(),
                        reason: format!("completing the snapshot's write: {e}"),
                    })?;
                rotate = true;
            } else {
                let c = current.unwrap_or_default();
                return Err(StorageError::Inconsistent {
                    path: snapshot_path,
                    reason: format!(
                        "the snapshot file ends at index {} (term {}) but the log names index {} (term {})",
                        meta.index, meta.term, c.index, c.term
                    ),
                });
            }
            snapshot = Some(reader);
        } else if let Some(meta) = &state.snapshot {
            return Err(StorageError::Inconsistent {
                path: dir.join(snapshot_file_name(meta.index)),
                reason: format!(
                    "the log names a snapshot through index {} (term {}) but the snapshot file is missing",
                    meta.index, meta.term
                ),
            });
        }
        // Staged files the log does not name: a crash before their write
        // was durable, or older ones not yet deleted.
        let keep = snapshot.as_ref().map(|r| r.path().to_path_buf());
        for &index in &listing.staged {
            let path = dir.join(snapshot_file_name(index));
            if Some(&path) != keep.as_ref() {
                fs::remove_file(&path).map_err(io_err(&path))?;
                dir_changed = true;
            }
        }
        if dir_changed {
            sync_dir(dir)?;
        }

        let mut storage = Storage {
            dir: dir.to_path_buf(),
            seq,
            path,
            file,
            len: truncated_torn_tail.as_ref().map_or(valid_len, |t| t.1),
            allocated: file_len,
            zeroed: 0,
            dirty: false,
            unwritten: Vec::new(),
            mirror: state,
            poisoned: false,
            defer_cleanup: false,
            dir_dirty: false,
            unsynced_cleanup: None,
            ready_cleanup: None,
            _lock: lock,
        };
        if rotate {
            storage.rotate()?;
        }
        let recovered = Recovered {
            state: storage.mirror.clone(),
            snapshot,
            raft_state_bytes: storage.raft_state_bytes(),
            truncated_torn_tail,
        };
        Ok((storage, recovered))
    }
}
