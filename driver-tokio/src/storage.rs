//! Durable storage: the Raft log and hard state in checksummed append-only
//! segments, the snapshot in its own file.
//!
//! # Files in the data directory
//!
//! - `log.<n>` (`n` = 1, 2, …, written zero-padded to 8 digits): log
//!   segments. Only the highest-numbered one is live; older ones exist only
//!   for the instant of a rotation and are deleted once it is durable.
//! - `snapshot`: the latest service snapshot. `snapshot.tmp` is its
//!   replacement being written; a leftover one is deleted at open.
//!
//! # Segment format
//!
//! All integers are little-endian.
//!
//! - Header, 12 bytes: the magic `RKVLOG\0\0` and a `u32` format version (1).
//! - Then records, each `u32 length | u32 crc32 of payload | payload`, where
//!   the payload is the postcard encoding of a record:
//!   - `Write { hard_state: Option<HardState>, snapshot: Option<SnapshotMeta>,
//!     truncate_from: Option<Index>, entries: Vec<Entry> }`: the durable
//!     content of one `Persist` (the snapshot bytes are not in the log);
//!   - `Checkpoint(DurableState)`: the whole durable state.
//! - A payload is never empty and never longer than [`MAX_RECORD_LEN`]
//!   (64 MiB); a longer write is refused with [`StorageError::RecordTooLarge`].
//! - `log.1` starts from the empty state: its records are `Write`s. Every
//!   later segment starts with a `Checkpoint` and then holds `Write`s.
//!
//! The state is rebuilt by applying the records in order with the semantics
//! of [`DurableState::apply`]: replace the hard state; install the snapshot
//! meta (dropping the entries it covers, or all of them if it lies beyond
//! the log); drop entries from `truncate_from` on; append the entries, which
//! must continue the log.
//!
//! # Snapshot file format
//!
//! `magic "RKVSNAP\0" | u32 version (1) | u32 header length | u32 crc32 of
//! header | header | data`, the header being the postcard encoding of
//! `{ meta: SnapshotMeta, hard_state: Option<HardState>, truncate_from:
//! Option<Index>, data_len: u64, data_crc: u32 }`. Besides the meta, the
//! header carries the hard state and `truncate_from` of the `Persist` that
//! brought the snapshot, so that recovery can complete that `Persist`
//! atomically if a crash lost its log record (see below).
//!
//! # What is written and fsynced when
//!
//! - [`Storage::append`] of a `Persist` without a snapshot encodes one
//!   `Write` record into a memory buffer; nothing reaches the file yet. A
//!   `Persist` that changes nothing (a pure ordering barrier) writes nothing.
//! - [`Storage::sync`] writes the buffered records to the live segment in one
//!   `write`, then makes them durable with one `fdatasync` (group commit:
//!   append N, sync once: one write and one fsync for the whole group).
//! - [`Storage::append`] of a `Persist` with a snapshot, in this order:
//!   1. fdatasync the live segment (so every earlier write is durable before
//!      the new snapshot can be seen);
//!   2. write `snapshot.tmp` (header and data), fsync it, rename it to
//!      `snapshot`, fsync the directory;
//!   3. append the `Write` record (hard state, snapshot meta, truncation,
//!      entries) to the live segment (written, not yet fsynced);
//!   4. rotate: create `log.<n+1>` holding the header and a `Checkpoint` of
//!      the whole current state, fsync it, fsync the directory, delete the
//!      older segments, fsync the directory.
//!
//!   When it returns, the whole `Persist` and everything before it is
//!   durable.
//! - Creating `log.1` in a new directory: header, fsync, fsync the directory.
//! - Any I/O or fsync error is returned, and the `Storage` then refuses every
//!   further call ([`StorageError::Poisoned`]): after a failed fsync, the
//!   page cache can no longer be trusted, so the node has to stop and recover
//!   from disk.
//!
//! # Recovery ([`Storage::open`])
//!
//! 1. Delete a leftover `snapshot.tmp`.
//! 2. Pick the newest segment. If its start is torn (the file is shorter
//!    than the header, or is all zeros; or, for `log.<n>` with n > 1, the
//!    opening checkpoint is missing, cut short, or fails its crc at the end
//!    of the file) and an older segment exists, that is a crash during a
//!    rotation: delete it and fall back to the previous segment (once). A
//!    torn `log.1` header with no other segment is a crash while creating
//!    the directory: start empty. A torn start anywhere else is
//!    [`StorageError::Corrupt`]. Segments older than the chosen one are
//!    deleted.
//! 3. Replay its records. A torn final record is cut off (`set_len`, fsync)
//!    and reported in [`Recovered::truncated_torn_tail`]; torn means: fewer
//!    than 8 bytes left for the record header; a payload shorter than its
//!    length (the record runs past the end of the file); a crc mismatch on a
//!    record that ends exactly at the end of the file; a crc mismatch on a
//!    record that the file's zero-filled tail starts inside (header
//!    included): the file's size reached the disk but not all of its last
//!    group write, which leaves zeros from any byte of it on; or a zero
//!    length with nothing but zeros up to the end of the file. Any
//!    other bad record is [`StorageError::Corrupt`] with the file and the
//!    byte offset of the record: a crc mismatch followed by more data that
//!    is not all zeros, a
//!    length of zero or above [`MAX_RECORD_LEN`] (the writer never produces
//!    one, so no crash does either), an undecodable payload, a checkpoint
//!    out of place or with non-consecutive entries, a `Write` whose entries
//!    do not continue the log. A bad segment header (wrong magic or
//!    version) is `Corrupt` at offset 0 or 8.
//! 4. Load `snapshot`, checking its header and crcs (any mismatch is
//!    `Corrupt`). If its meta equals the replayed state's, it is the
//!    snapshot's bytes. If it is newer (or the log names no snapshot), a
//!    crash happened between the rename and the durable log record: its
//!    `Persist` is completed by applying the header's hard state, the
//!    snapshot meta and `truncate_from` (the entries of that `Persist`
//!    were never acknowledged and are dropped), and the log is rotated at
//!    once so that it records the result. If it is older, or missing while
//!    the log names a snapshot, the directory is
//!    [`StorageError::Inconsistent`].
//!
//! [`Recovered::snapshot`] is `Some` exactly when the recovered state names
//! a snapshot.
//!
//! A known limit of the format: the length field has no checksum of its
//! own, so damage that makes a record's length point past the end of the
//! file (but stay under the maximum) looks like a torn final record, and
//! the records after it are cut off instead of being reported.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use raft_core::{DurableState, Entry, HardState, Index, Persist, Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};

/// The magic at the start of every log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVLOG\0\0";
/// The magic at the start of the snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP\0";
/// The format version of segments and snapshot files.
pub const FORMAT_VERSION: u32 = 1;
/// The length of a segment header: magic and version.
pub const SEGMENT_HEADER_LEN: usize = 12;
/// The length of a record header: payload length and crc32.
pub const RECORD_HEADER_LEN: usize = 8;
/// The largest record payload written or accepted.
pub const MAX_RECORD_LEN: usize = 64 << 20;
/// The name of the snapshot file.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The name of the snapshot file being written.
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";

/// The fixed part of the snapshot file: magic, version, header length, crc.
const SNAPSHOT_PREFIX_LEN: usize = 20;
/// The largest snapshot header accepted (it is a few dozen bytes).
const MAX_SNAPSHOT_HEADER_LEN: usize = 4096;

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("log.{seq:08}")
}

/// A failure of durable storage. Every variant is fatal for the node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file holds bytes that no crash of this code can produce.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the bad record (or header field).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An operating-system call failed (including fsync).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The files are individually valid but do not fit together (for
    /// example the log names a snapshot and the snapshot file is missing).
    #[error("inconsistent data directory at {path}: {reason}")]
    Inconsistent {
        /// The file concerned.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A record would exceed [`MAX_RECORD_LEN`]; nothing was written.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The `Persist` does not continue the stored log (a bug in the caller);
    /// nothing was written.
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    /// An earlier write or fsync failed; the on-disk state is unknown, so
    /// the storage refuses further use. Restart and recover.
    #[error("storage refuses further use after an earlier I/O error")]
    Poisoned,
}

/// What [`Storage::open`] found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The durable state, for `RaftNode::recover`.
    pub state: DurableState,
    /// The snapshot bytes, present exactly when `state.snapshot` is.
    pub snapshot: Option<Vec<u8>>,
    /// The size of the live log segment (see [`Storage::raft_state_bytes`]).
    pub raft_state_bytes: usize,
    /// The segment and offset where a torn final record was cut off.
    pub truncated_torn_tail: Option<(PathBuf, u64)>,
}

/// The durable storage of one node. See the module documentation.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    /// The live segment's number, path and open handle (appending).
    seq: u64,
    path: PathBuf,
    file: File,
    /// The live segment's length in bytes.
    len: u64,
    /// Bytes were written to the live segment since its last fsync.
    dirty: bool,
    /// Records appended but not yet written: the whole group goes to the
    /// file in one `write` just before its fsync.
    unwritten: Vec<u8>,
    /// The durable state as the records written so far define it.
    mirror: DurableState,
    /// An I/O error happened: refuse everything.
    poisoned: bool,
}

/// A log record, as decoded.
#[derive(Deserialize)]
enum Record {
    Write {
        hard_state: Option<HardState>,
        snapshot: Option<SnapshotMeta>,
        truncate_from: Option<Index>,
        entries: Vec<Entry>,
    },
    Checkpoint(DurableState),
}

/// A log record, as encoded: the same shape as [`Record`], borrowing.
#[derive(Serialize)]
enum RecordRef<'a> {
    Write {
        hard_state: Option<HardState>,
        snapshot: Option<SnapshotMeta>,
        truncate_from: Option<Index>,
        entries: &'a [Entry],
    },
    Checkpoint(&'a DurableState),
}

/// The variable header of the snapshot file.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    data_len: u64,
    data_crc: u32,
}

/// A verified snapshot file.
struct SnapshotFile {
    header: SnapshotHeader,
    data: Vec<u8>,
}

impl Storage {
    /// Opens (creating if needed) the data directory and recovers its
    /// contents. See the module documentation for what is tolerated.
    pub fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let listing = list_dir(dir)?;
        let mut dir_changed = false;
        if listing.snapshot_tmp {
            let tmp = dir.join(SNAPSHOT_TMP_FILE);
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

        let (seq, path, mut state, valid_len, torn) = match chosen {
            Some((seq, path, replay)) => {
                (seq, path, replay.state, replay.valid_len, replay.torn_at)
            }
            None => {
                if listing.snapshot {
                    return Err(StorageError::Inconsistent {
                        path: snapshot_path,
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

        let file = OpenOptions::new()
            .append(true)
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
        // Older segments (an interrupted deletion) and a torn newer one.
        dir_changed |= remove_segments_except(dir, seq)?;
        if dir_changed {
            sync_dir(dir)?;
        }

        // The snapshot file.
        let snapshot_file = if listing.snapshot {
            Some(read_snapshot_file(&snapshot_path)?)
        } else {
            None
        };
        let mut rotate = false;
        match (&snapshot_file, state.snapshot) {
            (None, None) => {}
            (None, Some(meta)) => {
                return Err(StorageError::Inconsistent {
                    path: snapshot_path,
                    reason: format!(
                        "the log names a snapshot through index {} (term {}) but the snapshot file is missing",
                        meta.index, meta.term
                    ),
                })
            }
            (Some(f), current) => {
                let meta = f.header.meta;
                if current == Some(meta) {
                    // The usual case: the log recorded this snapshot.
                } else if current.is_none() || current.is_some_and(|c| meta.index > c.index) {
                    tracing::warn!(
                        index = meta.index,
                        "the snapshot file is newer than the log: completing its write"
                    );
                    apply_write(
                        &mut state,
                        f.header.hard_state,
                        Some(meta),
                        f.header.truncate_from,
                        std::iter::empty(),
                    );
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
            }
        }
        let snapshot = snapshot_file.map(|f| f.data);

        let mut storage = Storage {
            dir: dir.to_path_buf(),
            seq,
            path,
            file,
            len: truncated_torn_tail.as_ref().map_or(valid_len, |t| t.1),
            dirty: false,
            unwritten: Vec::new(),
            mirror: state,
            poisoned: false,
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

    /// Appends the durable content of one `Persist`. Without a snapshot it is
    /// not fsynced (call [`Storage::sync`]); with one, it and everything
    /// before it are durable on return (see the module documentation).
    pub fn append(&mut self, persist: &Persist) -> Result<(), StorageError> {
        self.usable()?;
        if persist.is_barrier() {
            return Ok(());
        }
        let snapshot_meta = persist.snapshot.as_ref().map(|s| s.meta);
        check_write(
            &self.mirror,
            snapshot_meta,
            persist.truncate_from,
            &persist.entries,
        )
        .map_err(StorageError::InvalidWrite)?;
        let mut frame = Vec::new();
        encode_frame(
            &mut frame,
            &RecordRef::Write {
                hard_state: persist.hard_state,
                snapshot: snapshot_meta,
                truncate_from: persist.truncate_from,
                entries: &persist.entries,
            },
        )?;
        // From here on a failure leaves the disk in an unknown state.
        let result = self.append_frame(persist, frame);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Makes everything appended so far durable: one `fdatasync` of the live
    /// segment (nothing if nothing was appended since the last one).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.usable()?;
        let result = self.sync_log();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Bytes of Raft state on disk now: the size of the live log segment. It
    /// shrinks to the size of one checkpoint after a snapshot.
    pub fn raft_state_bytes(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable state that the records appended so far define (durable
    /// once synced).
    pub fn state(&self) -> &DurableState {
        &self.mirror
    }

    /// The path of the live segment.
    pub fn segment_path(&self) -> &Path {
        &self.path
    }

    fn usable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn append_frame(&mut self, persist: &Persist, frame: Vec<u8>) -> Result<(), StorageError> {
        if let Some(snapshot) = &persist.snapshot {
            self.sync_log()?;
            write_snapshot_file(
                &self.dir,
                snapshot,
                persist.hard_state,
                persist.truncate_from,
            )?;
        }
        self.unwritten.extend_from_slice(&frame);
        self.len += frame.len() as u64;
        self.dirty = true;
        apply_write(
            &mut self.mirror,
            persist.hard_state,
            persist.snapshot.as_ref().map(|s| s.meta),
            persist.truncate_from,
            persist.entries.iter().cloned(),
        );
        if persist.snapshot.is_some() {
            self.write_unwritten()?;
            self.rotate()?;
        }
        Ok(())
    }

    /// Hands the buffered records to the file (not yet durable).
    fn write_unwritten(&mut self) -> Result<(), StorageError> {
        if !self.unwritten.is_empty() {
            self.file
                .write_all(&self.unwritten)
                .map_err(io_err(&self.path))?;
            self.unwritten.clear();
        }
        Ok(())
    }

    fn sync_log(&mut self) -> Result<(), StorageError> {
        self.write_unwritten()?;
        if self.dirty {
            self.file.sync_data().map_err(io_err(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Starts `log.<n+1>` with a checkpoint of the mirror, makes it durable,
    /// then deletes the older segments.
    fn rotate(&mut self) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let path = self.dir.join(segment_file_name(seq));
        let mut bytes = Vec::new();
        push_segment_header(&mut bytes);
        encode_frame(&mut bytes, &RecordRef::Checkpoint(&self.mirror))?;
        let file = write_new_file(&path, &bytes)?;
        sync_dir(&self.dir)?;
        self.seq = seq;
        self.path = path;
        self.file = file;
        self.len = bytes.len() as u64;
        self.dirty = false;
        if remove_segments_except(&self.dir, seq)? {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Creates (or replaces) `path` with `bytes`, fsynced; returns the handle,
/// positioned at the end.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(file)
}

struct Listing {
    /// Segment numbers, ascending.
    segments: Vec<u64>,
    snapshot: bool,
    snapshot_tmp: bool,
}

fn list_dir(dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing {
        segments: Vec::new(),
        snapshot: false,
        snapshot_tmp: false,
    };
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == SNAPSHOT_FILE {
            listing.snapshot = true;
        } else if name == SNAPSHOT_TMP_FILE {
            listing.snapshot_tmp = true;
        } else if let Some(seq) = parse_segment_name(name) {
            listing.segments.push(seq);
        }
    }
    listing.segments.sort_unstable();
    Ok(listing)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("log.")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// Deletes every segment but `keep`; true if any was deleted.
fn remove_segments_except(dir: &Path, keep: u64) -> Result<bool, StorageError> {
    let mut removed = false;
    for seq in list_dir(dir)?.segments {
        if seq != keep {
            let path = dir.join(segment_file_name(seq));
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
    Ok(removed)
}

fn push_segment_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&SEGMENT_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
}

/// Appends `length | crc | payload` for `record` to `buf`.
fn encode_frame(buf: &mut Vec<u8>, record: &RecordRef<'_>) -> Result<(), StorageError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    let mut out =
        postcard::to_extend(record, std::mem::take(buf)).expect("encoding into a Vec cannot fail");
    let payload = &out[start + RECORD_HEADER_LEN..];
    let len = payload.len();
    if len > MAX_RECORD_LEN {
        out.truncate(start);
        *buf = out;
        return Err(StorageError::RecordTooLarge {
            len,
            max: MAX_RECORD_LEN,
        });
    }
    let crc = crc32fast::hash(payload);
    let len = u32::try_from(len).expect("bounded by MAX_RECORD_LEN");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    *buf = out;
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The outcome of reading one segment.
enum Scan {
    /// The segment's header (or opening checkpoint) is missing or torn.
    TornStart,
    /// The segment replayed.
    Valid(Replay),
}

struct Replay {
    state: DurableState,
    /// The file length.
    valid_len: u64,
    /// Where a torn final record starts, to be cut off.
    torn_at: Option<u64>,
}

/// The outcome of reading one record frame.
enum Frame<'a> {
    Ok(&'a [u8]),
    Torn,
    Bad(String),
}

fn read_frame(rest: &[u8]) -> Frame<'_> {
    if rest.len() < RECORD_HEADER_LEN {
        return Frame::Torn;
    }
    let len = read_u32(rest, 0) as usize;
    let crc = read_u32(rest, 4);
    if len == 0 {
        if rest.iter().all(|&b| b == 0) {
            return Frame::Torn; // a zero-filled tail
        }
        return Frame::Bad("zero record length".into());
    }
    if len > MAX_RECORD_LEN {
        return Frame::Bad(format!(
            "record length {len} exceeds the maximum of {MAX_RECORD_LEN}"
        ));
    }
    let end = RECORD_HEADER_LEN + len;
    if rest.len() < end {
        return Frame::Torn; // the payload is shorter than its length
    }
    let payload = &rest[RECORD_HEADER_LEN..end];
    let actual = crc32fast::hash(payload);
    if actual != crc {
        if rest.len() == end {
            return Frame::Torn; // the final record, partly written
        }
        let zero_tail = rest.len() - rest.iter().rev().take_while(|&&b| b == 0).count();
        if zero_tail < end {
            // Zeros from inside this record to the end of the file: the
            // size of the last group write reached the disk, its data only
            // in part.
            return Frame::Torn;
        }
        return Frame::Bad(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x}) with more data after the record"
        ));
    }
    Frame::Ok(payload)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Reads a segment: checks its header and replays its records.
/// `needs_checkpoint`: the first record must be a checkpoint (every segment
/// but `log.1`).
fn scan_segment(path: &Path, bytes: &[u8], needs_checkpoint: bool) -> Result<Scan, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    push_segment_header(&mut header);
    if bytes.len() < SEGMENT_HEADER_LEN {
        if header.starts_with(bytes) || all_zero(bytes) {
            return Ok(Scan::TornStart);
        }
        return Err(corrupt(0, "bad segment header".into()));
    }
    if all_zero(bytes) {
        return Ok(Scan::TornStart);
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt(0, "bad segment magic".into()));
    }
    let version = read_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            8,
            format!("unsupported segment format version {version}"),
        ));
    }

    let mut state = DurableState::default();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut torn_at = None;
    let mut first = true;
    while offset < bytes.len() {
        let payload = match read_frame(&bytes[offset..]) {
            Frame::Ok(payload) => payload,
            Frame::Torn if first && needs_checkpoint => return Ok(Scan::TornStart),
            Frame::Torn => {
                torn_at = Some(offset as u64);
                break;
            }
            Frame::Bad(reason) => return Err(corrupt(offset, reason)),
        };
        let record = match postcard::take_from_bytes::<Record>(payload) {
            Ok((record, [])) => record,
            Ok((_, rest)) => {
                return Err(corrupt(
                    offset,
                    format!("{} undecoded bytes after the record", rest.len()),
                ))
            }
            Err(e) => return Err(corrupt(offset, format!("undecodable record: {e}"))),
        };
        match record {
            Record::Checkpoint(checkpoint) => {
                if !first {
                    return Err(corrupt(
                        offset,
                        "checkpoint record after the start of the segment".into(),
                    ));
                }
                check_consecutive(&checkpoint).map_err(|r| corrupt(offset, r))?;
                state = checkpoint;
            }
            Record::Write {
                hard_state,
                snapshot,
                truncate_from,
                entries,
            } => {
                if first && needs_checkpoint {
                    return Err(corrupt(
                        offset,
                        "segment does not start with a checkpoint".into(),
                    ));
                }
                check_write(&state, snapshot, truncate_from, &entries)
                    .map_err(|r| corrupt(offset, r))?;
                apply_write(&mut state, hard_state, snapshot, truncate_from, entries);
            }
        }
        first = false;
        offset += RECORD_HEADER_LEN + payload.len();
    }
    if first && needs_checkpoint {
        return Ok(Scan::TornStart); // header written, checkpoint not
    }
    Ok(Scan::Valid(Replay {
        state,
        valid_len: bytes.len() as u64,
        torn_at,
    }))
}

/// The index before the first stored entry.
fn base_index(state: &DurableState) -> Index {
    state.snapshot.map_or(0, |s| s.index)
}

/// The stored entries must be `base + 1, base + 2, …`.
fn check_consecutive(state: &DurableState) -> Result<(), String> {
    let base = base_index(state);
    for (k, entry) in state.entries.iter().enumerate() {
        let want = base + 1 + k as u64;
        if entry.index != want {
            return Err(format!(
                "checkpoint entry at position {k} has index {} instead of {want}",
                entry.index
            ));
        }
    }
    Ok(())
}

/// How many stored entries survive a snapshot and a truncation, and the
/// new base index (the semantics of `DurableState::apply`, on a state whose
/// entries are consecutive from the base).
fn surviving(
    state: &DurableState,
    snapshot: Option<SnapshotMeta>,
    truncate_from: Option<Index>,
) -> (Index, u64) {
    let mut base = base_index(state);
    let mut len = state.entries.len() as u64;
    if let Some(s) = snapshot {
        // The entries the snapshot covers go; if the snapshot does not end
        // inside the stored log (nor at its start), nothing survives.
        len = if s.index >= base && s.index < base + len {
            base + len - s.index
        } else {
            0
        };
        base = s.index;
    }
    if let Some(from) = truncate_from {
        len = len.min(from.saturating_sub(1).saturating_sub(base));
    }
    (base, len)
}

/// Checks that `entries` continue the log once the snapshot and the
/// truncation are applied.
fn check_write(
    state: &DurableState,
    snapshot: Option<SnapshotMeta>,
    truncate_from: Option<Index>,
    entries: &[Entry],
) -> Result<(), String> {
    let (base, len) = surviving(state, snapshot, truncate_from);
    let last = base + len;
    for (k, entry) in entries.iter().enumerate() {
        let want = last + 1 + k as u64;
        if entry.index != want {
            return Err(format!(
                "entry with index {} does not continue the log (expected index {want})",
                entry.index
            ));
        }
    }
    Ok(())
}

/// `DurableState::apply` on the parts of a write, for a write that passed
/// [`check_write`].
fn apply_write(
    state: &mut DurableState,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMeta>,
    truncate_from: Option<Index>,
    entries: impl IntoIterator<Item = Entry>,
) {
    if let Some(hs) = hard_state {
        state.hard_state = hs;
    }
    let (base, len) = surviving(state, snapshot, truncate_from);
    let old_base = base_index(state);
    let old_len = state.entries.len() as u64;
    if snapshot.is_some() {
        if len > 0 && base >= old_base && base < old_base + old_len {
            let covered = usize::try_from(base - old_base).expect("within the stored log");
            state.entries.drain(..covered);
        } else {
            state.entries.clear();
        }
        state.snapshot = snapshot;
    }
    let len = usize::try_from(len).expect("bounded by the stored log");
    state.entries.truncate(len);
    state.entries.extend(entries);
}

fn write_snapshot_file(
    dir: &Path,
    snapshot: &Snapshot,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
) -> Result<(), StorageError> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let dst = dir.join(SNAPSHOT_FILE);
    let header = SnapshotHeader {
        meta: snapshot.meta,
        hard_state,
        truncate_from,
        data_len: snapshot.data.len() as u64,
        data_crc: crc32fast::hash(&snapshot.data),
    };
    let header = postcard::to_allocvec(&header).expect("encoding into a Vec cannot fail");
    let mut prefix = Vec::with_capacity(SNAPSHOT_PREFIX_LEN + header.len());
    prefix.extend_from_slice(&SNAPSHOT_MAGIC);
    prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let header_len = u32::try_from(header.len()).expect("a small header");
    prefix.extend_from_slice(&header_len.to_le_bytes());
    prefix.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    prefix.extend_from_slice(&header);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&prefix).map_err(io_err(&tmp))?;
    file.write_all(&snapshot.data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

fn read_snapshot_file(path: &Path) -> Result<SnapshotFile, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() < SNAPSHOT_PREFIX_LEN {
        return Err(corrupt(0, "snapshot file shorter than its header".into()));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "bad snapshot magic".into()));
    }
    let version = read_u32(&bytes, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            8,
            format!("unsupported snapshot format version {version}"),
        ));
    }
    let header_len = read_u32(&bytes, 12) as usize;
    let header_crc = read_u32(&bytes, 16);
    if header_len > MAX_SNAPSHOT_HEADER_LEN || SNAPSHOT_PREFIX_LEN + header_len > bytes.len() {
        return Err(corrupt(
            12,
            format!("bad snapshot header length {header_len}"),
        ));
    }
    let data_start = SNAPSHOT_PREFIX_LEN + header_len;
    let header_bytes = &bytes[SNAPSHOT_PREFIX_LEN..data_start];
    if crc32fast::hash(header_bytes) != header_crc {
        return Err(corrupt(
            SNAPSHOT_PREFIX_LEN,
            "snapshot header checksum mismatch".into(),
        ));
    }
    let header = match postcard::take_from_bytes::<SnapshotHeader>(header_bytes) {
        Ok((header, [])) => header,
        Ok(_) => {
            return Err(corrupt(
                SNAPSHOT_PREFIX_LEN,
                "undecoded bytes after the snapshot header".into(),
            ))
        }
        Err(e) => {
            return Err(corrupt(
                SNAPSHOT_PREFIX_LEN,
                format!("undecodable snapshot header: {e}"),
            ))
        }
    };
    let data_len = (bytes.len() - data_start) as u64;
    if data_len != header.data_len {
        return Err(corrupt(
            data_start,
            format!(
                "snapshot data is {data_len} bytes, the header says {}",
                header.data_len
            ),
        ));
    }
    let data_crc = crc32fast::hash(&bytes[data_start..]);
    if data_crc != header.data_crc {
        return Err(corrupt(
            data_start,
            "snapshot data checksum mismatch".into(),
        ));
    }
    bytes.drain(..data_start);
    Ok(SnapshotFile {
        header,
        data: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::SplitMix64;

    fn entry(index: Index, term: u64) -> Entry {
        Entry {
            index,
            term,
            command: index.to_le_bytes().to_vec(),
        }
    }

    /// A random write that continues `state` (as the core would emit).
    fn random_persist(rng: &mut SplitMix64, state: &DurableState, id: u64) -> Persist {
        let base = base_index(state);
        let last = state.last_index();
        let hard_state = rng.chance(1, 3).then(|| HardState {
            term: state.hard_state.term + rng.below(2),
            voted_for: rng.chance(1, 2).then(|| rng.below(5)),
        });
        let snapshot = rng.chance(1, 6).then(|| {
            let index = match rng.below(4) {
                0 => base.saturating_sub(rng.below(3)), // older or equal
                1 => last + rng.range(1, 4),            // beyond the log
                _ => rng.range(base, last + 1),         // inside the log
            };
            Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: rng.below(9),
                },
                data: vec![7; rng.below(50) as usize],
            }
        });
        let truncate_from = rng.chance(1, 5).then(|| rng.range(0, last + 3));
        let (new_base, len) = surviving(state, snapshot.as_ref().map(|s| s.meta), truncate_from);
        let start = new_base + len + 1;
        let entries = (0..rng.below(4)).map(|k| entry(start + k, 1)).collect();
        Persist {
            id,
            hard_state,
            snapshot,
            truncate_from,
            entries,
            then_send: Vec::new(),
        }
    }

    #[test]
    fn apply_write_matches_durable_state_apply() {
        for seed in 0..200 {
            let mut rng = SplitMix64::new(seed);
            let mut reference = DurableState::default();
            let mut mine = DurableState::default();
            for id in 0..60 {
                let p = random_persist(&mut rng, &reference, id);
                let meta = p.snapshot.as_ref().map(|s| s.meta);
                check_write(&mine, meta, p.truncate_from, &p.entries).unwrap();
                reference.apply(&p);
                apply_write(
                    &mut mine,
                    p.hard_state,
                    meta,
                    p.truncate_from,
                    p.entries.iter().cloned(),
                );
                assert_eq!(mine, reference, "seed {seed} write {id}: {p:?}");
                check_consecutive(&mine).unwrap();
            }
        }
    }

    #[test]
    fn check_write_refuses_a_gap_or_overlap() {
        let mut state = DurableState::default();
        apply_write(&mut state, None, None, None, (1..=3).map(|i| entry(i, 1)));
        assert!(check_write(&state, None, None, &[entry(4, 1)]).is_ok());
        assert!(check_write(&state, None, None, &[entry(5, 1)]).is_err());
        assert!(check_write(&state, None, None, &[entry(3, 1)]).is_err());
        assert!(check_write(&state, None, Some(3), &[entry(3, 2)]).is_ok());
        let snap = SnapshotMeta { index: 10, term: 2 };
        assert!(check_write(&state, Some(snap), None, &[entry(11, 2)]).is_ok());
    }

    #[test]
    fn borrowed_and_owned_records_share_one_encoding() {
        let state = DurableState {
            hard_state: HardState {
                term: 3,
                voted_for: Some(2),
            },
            snapshot: Some(SnapshotMeta { index: 4, term: 2 }),
            entries: vec![entry(5, 3), entry(6, 3)],
        };
        let bytes = postcard::to_allocvec(&RecordRef::Checkpoint(&state)).unwrap();
        match postcard::from_bytes::<Record>(&bytes).unwrap() {
            Record::Checkpoint(s) => assert_eq!(s, state),
            Record::Write { .. } => panic!("wrong variant"),
        }
        let record = RecordRef::Write {
            hard_state: Some(state.hard_state),
            snapshot: state.snapshot,
            truncate_from: Some(5),
            entries: &state.entries,
        };
        let bytes = postcard::to_allocvec(&record).unwrap();
        match postcard::from_bytes::<Record>(&bytes).unwrap() {
            Record::Write {
                hard_state,
                snapshot,
                truncate_from,
                entries,
            } => {
                assert_eq!(hard_state, Some(state.hard_state));
                assert_eq!(snapshot, state.snapshot);
                assert_eq!(truncate_from, Some(5));
                assert_eq!(entries, state.entries);
            }
            Record::Checkpoint(_) => panic!("wrong variant"),
        }
    }

    #[test]
    fn frames_round_trip_and_classify_damage() {
        let mut buf = Vec::new();
        let state = DurableState::default();
        encode_frame(&mut buf, &RecordRef::Checkpoint(&state)).unwrap();
        assert!(matches!(read_frame(&buf), Frame::Ok(p) if p.len() + 8 == buf.len()));
        for cut in 0..buf.len() {
            assert!(matches!(read_frame(&buf[..cut]), Frame::Torn), "cut {cut}");
        }
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(read_frame(&flipped), Frame::Torn));
        flipped.push(0);
        assert!(matches!(read_frame(&flipped), Frame::Bad(_)));
        assert!(matches!(read_frame(&[0; 100]), Frame::Torn));
        let mut zero_len = vec![0; 100];
        zero_len[50] = 1;
        assert!(matches!(read_frame(&zero_len), Frame::Bad(_)));
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_frame(&huge), Frame::Bad(r) if r.contains("maximum")));
    }

    #[test]
    fn segment_names_parse() {
        assert_eq!(parse_segment_name(&segment_file_name(1)), Some(1));
        assert_eq!(parse_segment_name("log.7"), Some(7));
        assert_eq!(parse_segment_name("log.123456789"), Some(123_456_789));
        assert_eq!(parse_segment_name("log."), None);
        assert_eq!(parse_segment_name("log.0"), None);
        assert_eq!(parse_segment_name("log.1.tmp"), None);
        assert_eq!(parse_segment_name("snapshot"), None);
    }
}
