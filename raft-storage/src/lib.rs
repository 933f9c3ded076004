//! One durable store for every driver that writes a Raft node's state to
//! disk (driver-tokio's `rkv`, driver-threads' `raft-node`): the log and hard
//! state in checksummed append-only segments, the snapshot in its own file,
//! group commit, and recovery that cuts a torn tail and reports corruption.
//!
//! - [`Storage`] (`store`): [`Storage::append`], [`Storage::sync`], and
//!   [`Storage::commit`], one group commit of a batch of `Persist`s.
//! - `recovery`: [`Storage::open`] and what it found ([`Recovered`]).
//! - `owner`: [`Storage::open_owned`], which also records and checks which
//!   node of which cluster ([`Owner`]) the directory belongs to.
//! - [`segment`]: segment files and their replay; [`record`]: the record
//!   framing and how damage is told from a torn write; [`snapshot_file`]:
//!   the snapshot file.
//! - [`StorageError`]: every failure, each fatal for the node.
//!
//! The state is rebuilt with `raft_core::DurableState::try_apply`, the core's
//! own semantics of a `Persist`: storage re-derives nothing.
//!
//! # Files in the data directory
//!
//! - `log.<n>` (`n` = 1, 2, …, written zero-padded to 8 digits): log
//!   segments. Only the highest-numbered one is live; older ones exist only
//!   for the instant of a rotation and are deleted once it is durable.
//! - `snapshot.<index>` (20 digits): snapshot files, written as streams by
//!   a [`SnapshotWriter`] (the service's snapshot, on a thread of the
//!   driver's; or one arriving from a leader) and *staged*: the one a
//!   durable log record names is the node's snapshot. `snapshot.<index>.<tag>.tmp`
//!   is one being written; leftovers, and staged files the log does not
//!   name, are deleted at open.
//! - `snapshot`: the single snapshot file of formats 1 and 2, still read
//!   (and deleted once a newer snapshot is the node's).
//! - `owner` (only with [`Storage::open_owned`]): the node and cluster the
//!   directory belongs to.
//!
//! # Segment format
//!
//! All integers are little-endian.
//!
//! - Header, 12 bytes: the magic `RKVLOG\0\0` and a `u32` format version
//!   ([`FORMAT_VERSION`], 3). Two older versions are still read: 2
//!   ([`UNRECORDED_CONFIG_FORMAT_VERSION`]), whose snapshot boundaries
//!   recorded no configuration (read as none recorded: the node's initial
//!   configuration), and 1 ([`LEGACY_FORMAT_VERSION`]), whose entries also
//!   held only command bytes (an empty command for a leader's no-op).
//!   Recovery replays such a segment, then rotates to a new segment in
//!   version 3 before writing anything.
//! - Then records, each `u32 length | u32 crc32 of payload | payload`, where
//!   the payload is the postcard encoding of a record:
//!   - `Write { hard_state: Option<HardState>, snapshot: Option<SnapshotMeta>,
//!     truncate_from: Option<Index>, entries: Vec<Entry> }` (an `Entry` is
//!     `index, term, payload`, the payload a command, a no-op or a
//!     configuration): the durable
//!     content of one `Persist` (the snapshot bytes are not in the log);
//!   - `Checkpoint(DurableState)`: the whole durable state.
//! - After the records, zeros to the end of the file: the live segment's
//!   file is grown ahead of its records ([`PREALLOCATE`] at a time, a
//!   sparse extension), so that a group commit writes inside the file and
//!   its `fdatasync` has no file size to write. Zeros from a record
//!   boundary to the end of the file are where the records end (not a torn
//!   record); records are written there, over them.
//! - A payload is never empty and never longer than [`MAX_RECORD_LEN`]
//!   (64 MiB); a longer write is refused with [`StorageError::RecordTooLarge`].
//! - `log.1` starts from the empty state: its records are `Write`s. Every
//!   later segment starts with a `Checkpoint` and then holds `Write`s.
//!
//! The state is rebuilt by applying the records in order with
//! [`DurableState::try_apply`] (the semantics of `DurableState::apply`): replace the hard state; install the snapshot
//! meta (dropping the entries it covers, or all of them if it lies beyond
//! the log); drop entries from `truncate_from` on; append the entries, which
//! must continue the log.
//!
//! # Snapshot file format
//!
//! Written (version 3, [`SNAPSHOT_FORMAT_VERSION`]): `magic "RKVSNAP\0" |
//! u32 version | u32 meta length | meta | u64 data length | u32 crc32 of
//! data | u32 crc32 of everything before | data`, the meta being the
//! postcard encoding of the `SnapshotMeta`. The [`SnapshotWriter`] streams
//! the data, then fills in the length and the crcs, fsyncs the file,
//! renames it from its temporary name and fsyncs the directory. A
//! [`SnapshotReader`] streams the data back and fails at its end on a crc
//! mismatch.
//!
//! Read (versions 2 and 1, the single `snapshot` file):
//! `magic "RKVSNAP\0" | u32 version (2) | u32 header length | u32 crc32 of
//! header | header | data`, the header being the postcard encoding of
//! `{ meta: SnapshotMeta, hard_state: Option<HardState>, truncate_from:
//! Option<Index>, data_len: u64, data_crc: u32 }`. Besides the meta, the
//! header carries the hard state and `truncate_from` of the `Persist` that
//! brought the snapshot, so that recovery can complete that `Persist`
//! atomically if a crash lost its log record (see below). The meta holds
//! the configuration in force at the snapshot's last index; version 1
//! ([`LEGACY_SNAPSHOT_FORMAT_VERSION`]), whose meta held only index and
//! term, is still read (as no configuration recorded).
//!
//! # What is written and fsynced when
//!
//! - [`Storage::append`] of a `Persist` without a snapshot encodes one
//!   `Write` record into a memory buffer; nothing reaches the file yet. A
//!   `Persist` that changes nothing (a pure ordering barrier) writes nothing.
//! - [`Storage::sync`] writes the buffered records to the live segment in one
//!   `write`, then makes them durable with one `fdatasync` (group commit:
//!   append N, sync once: one write and one fsync for the whole group).
//! - [`Storage::append`] of a `Persist` with a snapshot (whose file must
//!   already be staged, durably, with a sound header naming that snapshot's
//!   index and term: it is refused otherwise, with nothing written), in
//!   this order:
//!   1. append the `Write` record (hard state, snapshot meta, truncation,
//!      entries), write everything buffered and fdatasync the live segment:
//!      from here the staged file is the node's snapshot;
//!   2. rotate: create `log.<n+1>` holding the header and a `Checkpoint` of
//!      the whole current state, fsync it, fsync the directory, delete the
//!      older segments, fsync the directory;
//!   3. delete the older snapshot files, fsync the directory.
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
//! 1. Delete leftover temporary snapshot files.
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
//!    group write, which leaves zeros from any byte of it on (zeros from
//!    the record's first byte on are the records' end instead: nothing
//!    torn, nothing cut). Any
//!    other bad record is [`StorageError::Corrupt`] with the file and the
//!    byte offset of the record: a crc mismatch followed by more data that
//!    is not all zeros, a
//!    length of zero or above [`MAX_RECORD_LEN`] (the writer never produces
//!    one, so no crash does either), an undecodable payload, a checkpoint
//!    out of place or with non-consecutive entries, a `Write` whose entries
//!    do not continue the log. A bad segment header (wrong magic or
//!    version) is `Corrupt` at offset 0 or 8.
//! 4. If the replayed state names a snapshot and its staged file exists,
//!    open it, checking its header (a mismatch is `Corrupt`; the data's crc
//!    is checked as it is read) and that its meta is the state's; delete
//!    every other staged file, and the single `snapshot` file if one is
//!    left (a crash before step 3 of the write that adopted the staged
//!    one). Otherwise, for a directory of the earlier
//!    formats, load `snapshot`, checking its header. If its meta equals
//!    the replayed state's, it is the snapshot. If it is newer (or the log names no snapshot), a
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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod fsutil;
mod owner;
pub mod record;
mod recovery;
pub mod segment;
pub mod snapshot_file;
mod store;

pub use error::StorageError;
pub use owner::{Owner, OWNER_FILE};
pub use record::{MAX_RECORD_LEN, RECORD_HEADER_LEN};
pub use recovery::{Recovered, LOCK_FILE};
pub use segment::{
    segment_file_name, FORMAT_VERSION, LEGACY_FORMAT_VERSION, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    UNRECORDED_CONFIG_FORMAT_VERSION,
};
pub use snapshot_file::{
    snapshot_file_name, SnapshotReader, SnapshotWriter, LEGACY_SNAPSHOT_FORMAT_VERSION,
    SINGLE_FILE_SNAPSHOT_FORMAT_VERSION, SNAPSHOT_FILE, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC,
    SNAPSHOT_SYNC_EVERY, SNAPSHOT_TMP_FILE,
};
pub use store::{Cleanup, Committed, Storage, PREALLOCATE, ZERO_AHEAD};

#[cfg(doc)]
use raft_core::DurableState;
