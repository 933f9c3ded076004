//! Property tests (quickcheck) of the durable storage against a model: the
//! reference is `DurableState::apply` of every `Persist` plus the bytes of the
//! latest snapshot, kept twice: as appended, and as of the last point where
//! the storage promises durability (a `sync`, or an `append` carrying a
//! snapshot).
//!
//! A schedule is a random sequence of the writes the core emits (proposals,
//! a follower's conflicting suffix, term and vote changes, the service's
//! snapshots, a leader's InstallSnapshot, barriers), a write that does not
//! continue the log, syncs, clean reopens and crashes, applied to a real
//! `Storage` in a temporary directory the way the drivers drive it (appends,
//! then one sync; a reopen recovers).
//!
//! - `the_storage_matches_the_model_across_reopens`: between operations the
//!   storage's state is the model's and the live segment holds exactly the
//!   bytes it counts once synced; a clean reopen recovers the whole model,
//!   closing without a sync exactly what was synced;
//! - `a_crash_recovers_a_prefix_of_the_writes`: a crash in the middle of the
//!   group write of a sync (the segment cut at any byte, or zero-filled from
//!   any byte of the group on, length fields included) recovers
//!   the model as of the last whole record, never less than the last sync; a
//!   crash at any step of a snapshot write (streaming the staged file,
//!   staged but its record not durable, the record durable but the rotation
//!   not done, the old segment or the older snapshot files not yet deleted)
//!   recovers the state before it up to the record's fsync, the whole write
//!   from there on, as documented.
//!
//! Snapshot bytes are staged with a `SnapshotWriter` before the write that
//! names them is appended, as a driver does; some are staged and never
//! named (a snapshot superseded before its write). After every open the
//! only snapshot file left is the one the recovered state names, and its
//! stream reads back the model's bytes.
//!
//! Segments rotate only when a snapshot is written (there is no size limit
//! on a segment), so the snapshot operations are what exercise rotation.
//!
//! Failures print the shrunk schedule; every run is deterministic given it
//! (apart from the temporary directory's name). `QUICKCHECK_TESTS`
//! overrides the number of cases.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use raft_core::Payload;
use raft_core::{DurableState, Entry, HardState, Index, Persist, SnapshotMeta};
use raft_storage::{snapshot_file_name, Recovered, SnapshotWriter, Storage, StorageError};

/// A runner with `tests` cases, unless `QUICKCHECK_TESTS` overrides it.
fn qc(tests: u64) -> QuickCheck {
    let q = QuickCheck::new();
    if std::env::var_os("QUICKCHECK_TESTS").is_some() {
        q
    } else {
        q.tests(tests)
    }
}

// ----- operations -------------------------------------------------------------

/// The shape of a snapshot write.
#[derive(Clone, Copy, Debug)]
enum SnapshotKind {
    /// The service snapshotted at an index inside the log (`at` picks it):
    /// the entries after it stay.
    Compact { at: u8 },
    /// A leader's InstallSnapshot in a new term, at an index inside the log
    /// (with another term there) or beyond it: the log after it is dropped.
    Install { at: u8, beyond: bool },
}

/// How far a snapshot write got before the crash.
#[derive(Clone, Copy, Debug)]
enum SnapshotCrash {
    /// The writer had streamed a prefix of the file (`cut` picks how much)
    /// under its temporary name: not staged.
    Streaming { cut: u16 },
    /// The file staged; of the write's record nothing or a torn prefix
    /// (`cut` picks it) reached the old segment: the fsync that commits it
    /// did not complete.
    Staged { cut: u16 },
    /// The record durable in the old segment; of the new segment a torn
    /// prefix or nothing (`rotated` picks it).
    Logged { rotated: u16 },
    /// The new segment durable, the old one not yet deleted.
    BeforeDeletion,
    /// The rotation done, the older snapshot files not yet deleted.
    BeforeSnapshotDeletion,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// `count` entries of the current term (a leader's proposals or a
    /// follower's AppendEntries), of up to `size` command bytes.
    Append { count: u8, size: u8 },
    /// A follower's conflict: drop the log from an index (`at` picks one
    /// after the snapshot, possibly past the end), then append.
    Conflict { at: u8, count: u8 },
    /// A term change or a vote, with entries or not.
    Vote {
        new_term: bool,
        vote: Option<u8>,
        count: u8,
    },
    /// A snapshot write, with `count` entries in the same `Persist` and
    /// `data` snapshot bytes.
    Snapshot {
        kind: SnapshotKind,
        count: u8,
        data: u8,
    },
    /// A snapshot staged and never named by a write (superseded): it must
    /// change nothing, and go at the next open or once a newer snapshot is
    /// the node's.
    Abandon { kind: SnapshotKind, data: u8 },
    /// A `Persist` that changes nothing (an ordering barrier).
    Barrier,
    /// A write whose entries do not continue the log (they skip `gap`
    /// indexes, or repeat the last one if `gap` is 0): refused, no change.
    Invalid { gap: u8 },
    /// What the node does after each batch of appends.
    Sync,
    /// Sync, close and open again.
    Reopen,
    /// Close without syncing: the buffered appends are lost.
    Crash,
    /// Crash while the group of appends since the last durable point was
    /// being written: the segment keeps a prefix of it (`cut` picks where);
    /// with `zeros`, zeros from the cut up to the group's end instead (a
    /// file whose size was updated but not all of its data).
    TornCrash { cut: u16, zeros: bool },
    /// Crash during a snapshot write.
    CrashInSnapshot {
        kind: SnapshotKind,
        count: u8,
        when: SnapshotCrash,
    },
}

impl Arbitrary for SnapshotKind {
    fn arbitrary(g: &mut Gen) -> Self {
        let at = u8::arbitrary(g);
        if bool::arbitrary(g) {
            SnapshotKind::Compact { at }
        } else {
            SnapshotKind::Install {
                at,
                beyond: bool::arbitrary(g),
            }
        }
    }
}

impl Arbitrary for SnapshotCrash {
    fn arbitrary(g: &mut Gen) -> Self {
        let cut = u16::arbitrary(g);
        match u8::arbitrary(g) % 8 {
            0 => SnapshotCrash::Streaming { cut },
            1 | 2 => SnapshotCrash::Staged { cut },
            3 | 4 => SnapshotCrash::Logged {
                rotated: u16::arbitrary(g),
            },
            5 => SnapshotCrash::BeforeDeletion,
            _ => SnapshotCrash::BeforeSnapshotDeletion,
        }
    }
}

/// Where a segment's records end, walking them from the record boundary
/// `from`: at the end of the file, or at the zeros preallocated after them.
fn records_end(bytes: &[u8], mut from: usize) -> usize {
    while from + raft_storage::RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[from..from + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        from += raft_storage::RECORD_HEADER_LEN + len;
    }
    from.min(bytes.len())
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let count = u8::arbitrary(g) % 5;
        match u8::arbitrary(g) % 100 {
            0..=29 => Op::Append {
                count: 1 + count,
                size: u8::arbitrary(g) % 40,
            },
            30..=37 => Op::Conflict {
                at: u8::arbitrary(g),
                count,
            },
            38..=45 => Op::Vote {
                new_term: bool::arbitrary(g),
                vote: Option::<u8>::arbitrary(g).map(|v| v % 5),
                count,
            },
            46..=53 => Op::Snapshot {
                kind: SnapshotKind::arbitrary(g),
                count,
                data: u8::arbitrary(g),
            },
            54 => Op::Barrier,
            55 => Op::Abandon {
                kind: SnapshotKind::arbitrary(g),
                data: u8::arbitrary(g),
            },
            56..=58 => Op::Invalid {
                gap: u8::arbitrary(g) % 3,
            },
            59..=74 => Op::Sync,
            75..=80 => Op::Reopen,
            81..=85 => Op::Crash,
            86..=93 => Op::TornCrash {
                cut: u16::arbitrary(g),
                zeros: bool::arbitrary(g),
            },
            _ => Op::CrashInSnapshot {
                kind: SnapshotKind::arbitrary(g),
                count,
                when: SnapshotCrash::arbitrary(g),
            },
        }
    }
}

/// At most 40 operations: each snapshot write costs several fsyncs.
#[derive(Clone, Debug)]
struct Schedule {
    ops: Vec<Op>,
}

impl Arbitrary for Schedule {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = usize::from(u8::arbitrary(g)) % 41;
        Schedule {
            ops: (0..n).map(|_| Op::arbitrary(g)).collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.ops.shrink().map(|ops| Schedule { ops }))
    }
}

// ----- the model --------------------------------------------------------------

/// The reference: `DurableState::apply` plus the latest snapshot bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    state: DurableState,
    snapshot: Option<Vec<u8>>,
}

impl Model {
    /// Applies `p`, whose snapshot, if it names one, holds `data`.
    fn apply(&mut self, p: &Persist, data: &[u8]) {
        self.state.apply(p);
        if p.snapshot.is_some() {
            self.snapshot = Some(data.to_vec());
        }
    }

    fn applied(&self, p: &Persist, data: &[u8]) -> Model {
        let mut m = self.clone();
        m.apply(p, data);
        m
    }

    fn snapshot_index(&self) -> Option<Index> {
        self.state.snapshot.as_ref().map(|s| s.index)
    }

    fn base(&self) -> Index {
        self.state.snapshot.as_ref().map_or(0, |s| s.index)
    }

    fn last(&self) -> Index {
        self.state.last_index()
    }

    fn term(&self) -> u64 {
        self.state.hard_state.term
    }
}

/// An entry whose command names its index and term, padded to `size`.
fn entry(index: Index, term: u64, size: u8) -> Entry {
    let mut command = format!("{index}@{term}").into_bytes();
    command.resize(command.len().max(usize::from(size)), b'.');
    Entry {
        index,
        term,
        payload: Payload::Command((command).into()),
    }
}

/// A `Persist` of the given parts, plus `count` entries of `term` that
/// continue the log the parts leave behind.
fn persist(
    model: &Model,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMeta>,
    truncate_from: Option<Index>,
    count: u8,
    term: u64,
) -> Persist {
    let mut p = Persist {
        id: 0,
        hard_state,
        snapshot,
        truncate_from,
        entries: Vec::new(),
        then_send: Vec::new(),
    };
    let start = model.applied(&p, &[]).last() + 1;
    p.entries = (start..start + u64::from(count))
        .map(|i| entry(i, term, 12))
        .collect();
    p
}

/// The snapshot write `kind` on top of `model`, as the core emits it (the
/// snapshot is always newer than the stored one), and the snapshot's bytes;
/// `None` when the log holds no entry to compact.
fn snapshot_persist(
    model: &Model,
    kind: SnapshotKind,
    count: u8,
    data: u8,
) -> Option<(Persist, Vec<u8>)> {
    let (base, last) = (model.base(), model.last());
    let data: Vec<u8> = (0..data).map(|k| k.wrapping_mul(37)).collect();
    match kind {
        SnapshotKind::Compact { at } => {
            if last == base {
                return None;
            }
            let index = base + 1 + u64::from(at) % (last - base);
            let term = model.state.term_at(index).expect("a stored entry");
            let snapshot = SnapshotMeta::at(index, term);
            let p = persist(model, None, Some(snapshot), None, count, model.term());
            Some((p, data))
        }
        SnapshotKind::Install { at, beyond } => {
            let index = if beyond || last == base {
                last + 1 + u64::from(at) % 3
            } else {
                base + 1 + u64::from(at) % (last - base)
            };
            // A new leader's term: the term stored at `index` (older) differs.
            let term = model.term() + 1;
            let snapshot = SnapshotMeta::at(index, term);
            let hard_state = HardState {
                term,
                voted_for: None,
            };
            let p = persist(
                model,
                Some(hard_state),
                Some(snapshot),
                Some(index + 1),
                count,
                term,
            );
            Some((p, data))
        }
    }
}

// ----- the run ----------------------------------------------------------------

/// The storage under test and the model, with what is durable.
struct Run {
    /// Holds `data` (the storage's directory) and `aside` (saved files).
    _root: tempfile::TempDir,
    dir: PathBuf,
    aside: PathBuf,
    storage: Option<Storage>,
    /// Every write appended.
    model: Model,
    /// As of the last durable point, and the live segment's length then.
    durable: Model,
    durable_len: u64,
    /// The writes appended since: the segment length and model after each.
    pending: Vec<(u64, Model)>,
    next_id: u64,
    /// Snapshots staged and never named by a write, not yet deleted.
    strays: BTreeSet<Index>,
    /// What the run did, to tell a failure's context.
    trace: Vec<String>,
    /// The storage hands a snapshot's deletions out (`defer_cleanup`); the
    /// run does them at each sync.
    defer: bool,
    /// With `defer`: the index of the latest snapshot written whose
    /// deletions have not run.
    cleanup_bound: Option<Index>,
    /// With `defer`: the live segment was started by a snapshot write and
    /// never synced since; the length of its header and checkpoint.
    fresh_segment: Option<u64>,
}

type Check = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn open(dir: &Path) -> Result<(Storage, Recovered), String> {
    Storage::open(dir).map_err(|e| format!("open failed: {e}"))
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The names of the snapshot files in `dir` (staged, temporary, single).
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("a directory entry").file_name())
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.starts_with("snapshot"))
        .collect();
    v.sort();
    v
}

/// Streams `data` into a staged snapshot file for `meta`, in writes of at
/// most 16 bytes.
fn stage(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Check {
    let mut writer =
        SnapshotWriter::create(dir, meta, "prop").map_err(|e| format!("create a writer: {e}"))?;
    for chunk in data.chunks(16) {
        io("write snapshot data", writer.write_all(chunk))?;
    }
    writer
        .finish()
        .map_err(|e| format!("finish the snapshot: {e}"))?;
    Ok(())
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("log."))
        })
        .collect();
    v.sort();
    v
}

impl Run {
    fn new(defer: bool) -> Result<Run, String> {
        let root = io("tempdir", tempfile::tempdir())?;
        let dir = root.path().join("data");
        let aside = root.path().join("aside");
        io("mkdir", fs::create_dir(&aside))?;
        let (mut storage, recovered) = open(&dir)?;
        if defer {
            storage.defer_cleanup();
        }
        let mut run = Run {
            dir,
            aside,
            _root: root,
            storage: Some(storage),
            model: Model::default(),
            durable: Model::default(),
            durable_len: 0,
            pending: Vec::new(),
            next_id: 0,
            strays: BTreeSet::new(),
            trace: Vec::new(),
            defer,
            cleanup_bound: None,
            fresh_segment: None,
        };
        let mut recovered = recovered;
        run.check_recovered(&mut recovered, &Model::default(), None)?;
        run.durable_len = run.storage().raft_state_bytes() as u64;
        Ok(run)
    }

    fn storage(&mut self) -> &mut Storage {
        self.storage.as_mut().expect("the storage is open")
    }

    /// Stages the snapshot `p` names, if any (holding `data`), appends `p`
    /// and records it in the model; the storage's state must follow.
    fn append(&mut self, mut p: Persist, data: &[u8]) -> Check {
        p.id = self.next_id;
        self.next_id += 1;
        self.trace.push(format!("append {}", describe(&p)));
        if let Some(meta) = &p.snapshot {
            stage(&self.dir, meta, data)?;
        }
        self.storage()
            .append(&p)
            .map_err(|e| format!("append refused: {e}"))?;
        self.model.apply(&p, data);
        if let (Some(meta), true) = (&p.snapshot, self.defer) {
            // Durable on return, and a new segment started; nothing is
            // deleted until the new segment is durable.
            self.mark_durable();
            self.fresh_segment = Some(self.durable_len);
            // The write synced the segment an earlier snapshot started: its
            // deletions (only those) may be handed out now.
            let earlier = self.cleanup_bound.replace(meta.index);
            if let Some(cleanup) = self.storage().take_cleanup() {
                let Some(bound) = earlier else {
                    return Err("deletions handed out with no snapshot awaiting them".into());
                };
                self.run_cleanup(cleanup, bound)?;
            }
            let segs = segments(&self.dir);
            let live = self.storage().segment_path().to_path_buf();
            ensure(segs.len() >= 2 && segs.last() == Some(&live), || {
                format!("after a snapshot write the segments are {segs:?}, the live one {live:?}")
            })?;
            let files = snapshot_files(&self.dir);
            ensure(files.contains(&snapshot_file_name(meta.index)), || {
                format!("after a snapshot write the snapshot files are {files:?}")
            })?;
        } else if let Some(meta) = &p.snapshot {
            // Durable on return, and the log rotated: the older segment is
            // gone, and so are the older snapshot files.
            self.mark_durable();
            let segs = segments(&self.dir);
            let live = self.storage().segment_path().to_path_buf();
            ensure(segs == [live], || {
                format!("after a snapshot write the segments are {segs:?}")
            })?;
            self.strays.retain(|&i| i > meta.index);
            let mut expected: Vec<String> =
                self.strays.iter().map(|&i| snapshot_file_name(i)).collect();
            expected.push(snapshot_file_name(meta.index));
            expected.sort();
            let files = snapshot_files(&self.dir);
            ensure(files == expected, || {
                format!("after a snapshot write the snapshot files are {files:?}, expected {expected:?}")
            })?;
        } else if !p.is_barrier() {
            let len = self.storage().raft_state_bytes() as u64;
            self.pending.push((len, self.model.clone()));
        }
        self.check_state()
    }

    /// Runs the deletions of the snapshots up to index `bound`: the strays
    /// below it go too.
    fn run_cleanup(&mut self, cleanup: raft_storage::Cleanup, bound: Index) -> Check {
        cleanup
            .run()
            .map_err(|e| format!("the deletions failed: {e}"))?;
        self.strays.retain(|&i| i > bound);
        Ok(())
    }

    fn mark_durable(&mut self) {
        self.durable = self.model.clone();
        self.durable_len = self.storage().raft_state_bytes() as u64;
        self.pending.clear();
    }

    fn sync(&mut self) -> Check {
        self.trace.push("sync".into());
        self.storage()
            .sync()
            .map_err(|e| format!("sync failed: {e}"))?;
        self.mark_durable();
        self.check_state()?;
        if self.defer {
            self.fresh_segment = None;
            let cleanup = self.storage().take_cleanup();
            ensure(cleanup.is_some() == self.cleanup_bound.is_some(), || {
                format!(
                    "after a sync the deletions are {cleanup:?}, a snapshot awaiting them: {:?}",
                    self.cleanup_bound
                )
            })?;
            if let (Some(cleanup), Some(bound)) = (cleanup, self.cleanup_bound.take()) {
                self.run_cleanup(cleanup, bound)?;
            }
            // Everything older is gone.
            let segs = segments(&self.dir);
            let live = self.storage().segment_path().to_path_buf();
            ensure(segs == [live], || {
                format!("after a sync and its deletions the segments are {segs:?}")
            })?;
            let mut expected: Vec<String> =
                self.strays.iter().map(|&i| snapshot_file_name(i)).collect();
            expected.extend(self.model.snapshot_index().map(snapshot_file_name));
            expected.sort();
            let files = snapshot_files(&self.dir);
            ensure(files == expected, || {
                format!("after a sync and its deletions the snapshot files are {files:?}, expected {expected:?}")
            })?;
        }
        // The live segment holds exactly what the storage counts, then only
        // zeros: its preallocated space (a multiple of PREALLOCATE, or what
        // recovery found after the records).
        let storage = self.storage.as_ref().expect("open");
        let on_disk = io("stat", fs::metadata(storage.segment_path()))?.len();
        ensure(on_disk >= self.durable_len, || {
            format!(
                "after a sync the segment holds {on_disk} bytes, the storage counts {}",
                self.durable_len
            )
        })?;
        let mut after = vec![0u8; (on_disk - self.durable_len).min(4096) as usize];
        let file = io("open", fs::File::open(storage.segment_path()))?;
        io(
            "read",
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut after, self.durable_len),
        )?;
        ensure(after.iter().all(|&b| b == 0), || {
            "after a sync the segment's records are followed by more than zeros".into()
        })
    }

    /// The storage's idea of its state is the model's.
    fn check_state(&self) -> Check {
        let state = self.storage.as_ref().expect("open").state();
        ensure(state == &self.model.state, || {
            format!(
                "the storage's state {state:?} differs from the model's {:?}",
                self.model.state
            )
        })
    }

    /// Closes the storage (without syncing) and opens the directory again;
    /// what it recovers must be `expected`, with a torn tail cut at `torn`.
    fn reopen(&mut self, expected: Model, torn: Option<(PathBuf, u64)>) -> Check {
        self.storage = None;
        let (mut storage, mut recovered) = open(&self.dir)?;
        if self.defer {
            storage.defer_cleanup();
        }
        self.storage = Some(storage);
        self.strays.clear();
        self.cleanup_bound = None;
        self.fresh_segment = None;
        self.check_recovered(&mut recovered, &expected, torn)?;
        self.model = expected;
        self.mark_durable();
        Ok(())
    }

    /// `r` is `expected`, its snapshot's stream (taken out of `r`) reading
    /// back the model's bytes; the directory holds one segment and no
    /// snapshot file but the one the state names.
    fn check_recovered(
        &self,
        r: &mut Recovered,
        expected: &Model,
        torn: Option<(PathBuf, u64)>,
    ) -> Check {
        ensure(r.state == expected.state, || {
            format!(
                "recovered the state {:?}, expected {:?}",
                r.state, expected.state
            )
        })?;
        ensure(r.snapshot.is_some() == r.state.snapshot.is_some(), || {
            "snapshot bytes without a snapshot in the state, or the reverse".into()
        })?;
        let reader = r.snapshot.take();
        if let (Some(reader), Some(named)) = (&reader, &r.state.snapshot) {
            let meta = reader.meta();
            ensure((meta.index, meta.term) == (named.index, named.term), || {
                format!("the snapshot file holds {meta:?}, the state names {named:?}")
            })?;
        }
        let data = match reader {
            Some(reader) => Some(
                reader
                    .read_all()
                    .map_err(|e| format!("reading the snapshot: {e}"))?,
            ),
            None => None,
        };
        ensure(data == expected.snapshot, || {
            format!(
                "recovered the snapshot {data:?}, expected {:?}",
                expected.snapshot
            )
        })?;
        let files = snapshot_files(&self.dir);
        let named: Vec<String> = expected
            .snapshot_index()
            .map(snapshot_file_name)
            .into_iter()
            .collect();
        ensure(files == named, || {
            format!("after open the snapshot files are {files:?}, expected {named:?}")
        })?;
        ensure(r.truncated_torn_tail == torn, || {
            format!(
                "torn tail reported {:?}, expected {torn:?}",
                r.truncated_torn_tail
            )
        })?;
        let segs = segments(&self.dir);
        ensure(segs.len() == 1, || {
            format!("after open the segments are {segs:?}")
        })?;
        let storage = self.storage.as_ref().expect("open");
        ensure(storage.state() == &r.state, || {
            "the storage's state is not what it recovered".into()
        })?;
        ensure(storage.segment_path() == segs[0], || {
            "the live segment is not the one on disk".into()
        })?;
        // The records' bytes: the file up to its preallocated zeros, found
        // by walking the records; only zeros may follow them.
        let file = io("read", fs::read(&segs[0]))?;
        let on_disk = records_end(&file, raft_storage::SEGMENT_HEADER_LEN);
        ensure(file[on_disk..].iter().all(|&b| b == 0), || {
            "the segment's records are followed by more than zeros".into()
        })?;
        ensure(
            r.raft_state_bytes == on_disk && storage.raft_state_bytes() == on_disk,
            || {
                format!(
                    "raft_state_bytes {} (recovered) and {} (storage), the segment holds {on_disk}",
                    r.raft_state_bytes,
                    storage.raft_state_bytes()
                )
            },
        )
    }

    fn step(&mut self, op: Op) -> Check {
        let m = self.model.clone();
        let term = m.term();
        match op {
            Op::Append { count, size } => {
                let start = m.last() + 1;
                let mut p = persist(&m, None, None, None, 0, term);
                p.entries = (start..start + u64::from(count))
                    .map(|i| entry(i, term, size))
                    .collect();
                self.append(p, &[])
            }
            Op::Conflict { at, count } => {
                let from = m.base() + 1 + u64::from(at) % (m.last() - m.base() + 2);
                self.append(persist(&m, None, None, Some(from), count, term), &[])
            }
            Op::Vote {
                new_term,
                vote,
                count,
            } => {
                let hs = HardState {
                    term: term + u64::from(new_term),
                    voted_for: vote.map(u64::from),
                };
                self.append(persist(&m, Some(hs), None, None, count, hs.term), &[])
            }
            Op::Snapshot { kind, count, data } => match snapshot_persist(&m, kind, count, data) {
                Some((p, data)) => self.append(p, &data),
                None => Ok(()),
            },
            Op::Abandon { kind, data } => match snapshot_persist(&m, kind, 0, data) {
                Some((p, data)) => {
                    let meta = p.snapshot.expect("a snapshot write");
                    self.trace
                        .push(format!("stage {}@{}, never written", meta.index, meta.term));
                    stage(&self.dir, &meta, &data)?;
                    self.strays.insert(meta.index);
                    self.check_state()
                }
                None => Ok(()),
            },
            Op::Barrier => {
                let before = self.storage().raft_state_bytes();
                self.append(persist(&m, None, None, None, 0, term), &[])?;
                let after = self.storage().raft_state_bytes();
                ensure(before == after, || {
                    format!("a barrier wrote {before} -> {after}")
                })
            }
            Op::Invalid { gap } => self.invalid(gap),
            Op::Sync => self.sync(),
            Op::Reopen => {
                self.sync()?;
                self.trace.push("reopen".into());
                self.reopen(self.model.clone(), None)
            }
            Op::Crash => {
                self.trace.push("crash".into());
                self.reopen(self.durable.clone(), None)
            }
            Op::TornCrash { cut, zeros } => self.torn_crash(cut, zeros),
            Op::CrashInSnapshot { kind, count, when } => self.crash_in_snapshot(kind, count, when),
        }
    }

    /// Entries that skip an index or repeat the last one are refused with
    /// nothing written, and the storage stays usable.
    fn invalid(&mut self, gap: u8) -> Check {
        let m = self.model.clone();
        let last = m.last();
        let start = if gap > 0 || last == m.base() {
            last + 1 + u64::from(gap.max(1))
        } else {
            last
        };
        let mut p = persist(&m, None, None, None, 0, m.term());
        p.entries = vec![entry(start, m.term(), 8)];
        self.trace.push(format!("invalid {}", describe(&p)));
        let before = self.storage().raft_state_bytes();
        match self.storage().append(&p) {
            Err(StorageError::InvalidWrite(_)) => {}
            other => return Err(format!("a write of index {start} after {last}: {other:?}")),
        }
        let after = self.storage().raft_state_bytes();
        ensure(before == after, || {
            format!("a refused write changed the size {before} -> {after}")
        })?;
        self.check_state()
    }

    /// Sync, then damage the live segment inside the group just written, as
    /// a crash before the fsync completed may leave it: cut at any byte, or
    /// (with `zeros`) the file at its full size with zeros from some point
    /// on (its size reached the disk, not all its data).
    ///
    /// Zeros may start at any byte of the group, a length field included:
    /// the recovered state is the one after the last record that the zeros
    /// left whole (zeros written over zeros change nothing).
    fn torn_crash(&mut self, cut: u16, zeros: bool) -> Check {
        let path = self.storage().segment_path().to_path_buf();
        // A segment a snapshot write started and no sync made durable can
        // be cut anywhere, in its header and checkpoint too: recovery then
        // replays the older segment, which ends with the snapshot's record.
        let fresh = self.fresh_segment.take();
        let start = if fresh.is_some() { 0 } else { self.durable_len };
        let pending = std::mem::take(&mut self.pending);
        self.storage()
            .sync()
            .map_err(|e| format!("sync failed: {e}"))?;
        let end = self.storage().raft_state_bytes() as u64;
        self.storage = None;
        let len = start + u64::from(cut) % (end - start + 1);
        // The first byte the damage changes: the cut, or the first byte
        // that was not already zero from there on.
        let mut changed = len;
        if zeros {
            let original = io("read", fs::read(&path))?;
            let at = usize::try_from(len).expect("a small segment");
            changed = original[at..]
                .iter()
                .position(|&b| b != 0)
                .map_or(end, |k| len + k as u64);
        }
        // The last record the damage left whole, and the model after it.
        let (mut whole, mut expected) = (start, self.durable.clone());
        for (l, m) in &pending {
            if *l <= changed {
                (whole, expected) = (*l, m.clone());
            }
        }
        self.trace.push(format!(
            "torn crash: group {start}..{end} cut at {len}{}",
            if zeros { " and zero-filled" } else { "" }
        ));
        let file = io("open", OpenOptions::new().write(true).open(&path))?;
        io("set_len", file.set_len(len))?;
        if zeros {
            io("set_len", file.set_len(end))?;
        }
        drop(file);
        let file_len = if zeros { end } else { len };
        // Nothing but zeros from a record boundary on ends the records
        // there: nothing is torn.
        let damaged = io("read", fs::read(&path))?;
        let zeros_from = |at: u64| damaged[at as usize..].iter().all(|&b| b == 0);
        let mut torn = (file_len != whole && !zeros_from(whole)).then(|| (path.clone(), whole));
        if let Some(checkpoint_end) = fresh {
            if changed < checkpoint_end {
                // The new segment's start is torn: it is dropped whole.
                torn = None;
            } else if whole < checkpoint_end {
                // Only records after the checkpoint are torn.
                torn = (file_len != checkpoint_end && !zeros_from(checkpoint_end))
                    .then(|| (path.clone(), checkpoint_end));
            }
        }
        self.reopen(expected, torn)
    }

    /// Runs a snapshot write to the end (staging its file, then appending
    /// the write), then rebuilds the directory as a crash at the stage
    /// `when` would have left it, and reopens.
    fn crash_in_snapshot(&mut self, kind: SnapshotKind, count: u8, when: SnapshotCrash) -> Check {
        let Some((mut p, data)) = snapshot_persist(&self.model, kind, count, 40) else {
            return Ok(());
        };
        self.sync()?; // what the write's first step does anyway
        p.id = self.next_id;
        self.next_id += 1;
        self.trace
            .push(format!("crash {when:?} in the write {}", describe(&p)));
        let meta = p.snapshot.clone().expect("a snapshot write");
        let before = self.model.clone();
        let full = before.applied(&p, &data);

        let old_path = self.storage().segment_path().to_path_buf();
        let old_len = self.durable_len;
        // The snapshot files before the write: the node's and any strays.
        let mut old_files = Vec::new();
        for name in snapshot_files(&self.dir) {
            let bytes = io("read", fs::read(self.dir.join(&name)))?;
            old_files.push((name, bytes));
        }
        // A second name for the old segment keeps the record the write
        // appends to it before the rotation deletes it.
        let saved = self.aside.join("old-segment");
        let _ = fs::remove_file(&saved);
        io("hard_link", fs::hard_link(&old_path, &saved))?;
        stage(&self.dir, &meta, &data)?;
        let staged_path = self.dir.join(snapshot_file_name(meta.index));
        let staged = io("read", fs::read(&staged_path))?;
        self.storage()
            .append(&p)
            .map_err(|e| format!("append refused: {e}"))?;
        if self.defer {
            // The new segment's checkpoint is written by the next sync.
            self.storage()
                .sync()
                .map_err(|e| format!("sync failed: {e}"))?;
        }
        let new_path = self.storage().segment_path().to_path_buf();
        self.storage = None;
        let old_len = usize::try_from(old_len).expect("a small segment");
        // Both without their preallocated zeros.
        let mut old_segment = io("read", fs::read(&saved))?;
        old_segment.truncate(records_end(&old_segment, old_len));
        let mut new_segment = io("read", fs::read(&new_path))?;
        new_segment.truncate(records_end(&new_segment, raft_storage::SEGMENT_HEADER_LEN));
        if old_segment.len() <= old_len || new_path == old_path {
            return Err("the snapshot write neither appended nor rotated".into());
        }
        let record_len = old_segment.len() - old_len;

        for seg in segments(&self.dir) {
            io("remove", fs::remove_file(seg))?;
        }
        for name in snapshot_files(&self.dir) {
            io("remove", fs::remove_file(self.dir.join(name)))?;
        }
        let write = |path: &Path, bytes: &[u8]| io("write", fs::write(path, bytes));
        // Every stage comes before the older snapshot files are deleted;
        // every stage but the first has the staged file (written after
        // them: it replaces a stray of its index).
        for (name, bytes) in &old_files {
            write(&self.dir.join(name), bytes)?;
        }
        let (expected, torn) = match when {
            SnapshotCrash::Streaming { cut } => {
                write(&old_path, &old_segment[..old_len])?;
                let cut = usize::from(cut) % (staged.len() + 1);
                let tmp = format!("{}.prop.tmp", snapshot_file_name(meta.index));
                write(&self.dir.join(tmp), &staged[..cut])?;
                (before, None)
            }
            SnapshotCrash::Staged { cut } => {
                let cut = usize::from(cut) % record_len;
                write(&old_path, &old_segment[..old_len + cut])?;
                write(&staged_path, &staged)?;
                (
                    before,
                    (cut > 0).then(|| (old_path.clone(), old_len as u64)),
                )
            }
            SnapshotCrash::Logged { rotated } => {
                write(&old_path, &old_segment)?;
                // A torn start of the new segment, or none at all.
                if rotated % 4 != 0 {
                    let keep = usize::from(rotated / 4) % new_segment.len();
                    write(&new_path, &new_segment[..keep])?;
                }
                write(&staged_path, &staged)?;
                (full, None)
            }
            SnapshotCrash::BeforeDeletion => {
                write(&old_path, &old_segment)?;
                write(&new_path, &new_segment)?;
                write(&staged_path, &staged)?;
                (full, None)
            }
            SnapshotCrash::BeforeSnapshotDeletion => {
                write(&new_path, &new_segment)?;
                write(&staged_path, &staged)?;
                (full, None)
            }
        };
        self.reopen(expected, torn)
    }
}

/// A short description of a write, for the trace.
fn describe(p: &Persist) -> String {
    let mut s = format!("#{}", p.id);
    if let Some(hs) = p.hard_state {
        s += &format!(" hs={}/{:?}", hs.term, hs.voted_for);
    }
    if let Some(snap) = &p.snapshot {
        s += &format!(" snap={}@{}", snap.index, snap.term);
    }
    if let Some(t) = p.truncate_from {
        s += &format!(" trunc={t}");
    }
    if let (Some(a), Some(b)) = (p.entries.first(), p.entries.last()) {
        s += &format!(" entries={}..={}", a.index, b.index);
    }
    s
}

/// Runs `schedule` on a fresh directory and the model, then reopens once
/// more; without `crashes`, the torn and mid-snapshot crashes become plain
/// crashes (closing without a sync).
fn run_schedule(schedule: &Schedule, crashes: bool) -> TestResult {
    run_schedule_with(schedule, crashes, false)
}

fn run_schedule_with(schedule: &Schedule, crashes: bool, defer: bool) -> TestResult {
    let mut run = match Run::new(defer) {
        Ok(run) => run,
        Err(why) => return TestResult::error(why),
    };
    for (k, &op) in schedule.ops.iter().enumerate() {
        let op = match op {
            Op::TornCrash { .. } | Op::CrashInSnapshot { .. } if !crashes => Op::Crash,
            op => op,
        };
        if let Err(why) = run.step(op) {
            return TestResult::error(format!(
                "operation {k} ({op:?}): {why}\ntrace:\n  {}",
                run.trace.join("\n  ")
            ));
        }
    }
    // Whatever happened, a clean reopen at the end recovers everything.
    if let Err(why) = run.step(Op::Reopen) {
        return TestResult::error(format!(
            "the final reopen: {why}\ntrace:\n  {}",
            run.trace.join("\n  ")
        ));
    }
    TestResult::passed()
}

/// Appends, syncs, clean reopens and crashes that lose only what was never
/// synced: the storage's state is the model's after every operation; a
/// synced segment holds exactly the bytes the storage counts; a reopen
/// recovers the model (state and snapshot bytes) after a sync, and the model
/// as of the last sync or snapshot write after a crash, with no torn tail,
/// in a single segment; a refused write changes nothing.
fn prop_the_storage_matches_the_model_across_reopens(schedule: Schedule) -> TestResult {
    run_schedule(&schedule, false)
}

#[test]
fn the_storage_matches_the_model_across_reopens() {
    qc(100).quickcheck(
        prop_the_storage_matches_the_model_across_reopens as fn(Schedule) -> TestResult,
    );
}

/// The same, with crashes in the middle of a group write (the segment cut
/// at any byte of the group, or zero-filled after its last whole record)
/// and at each stage of a snapshot write, staging included: recovery gives
/// the model after a prefix of the writes (the last whole record; for a
/// snapshot write, the state before it until its record is durable, the
/// whole write after), never less than what was synced, with no snapshot
/// file but the one it names, and reports a torn tail exactly where it cut
/// one.
fn prop_a_crash_recovers_a_prefix_of_the_writes(schedule: Schedule) -> TestResult {
    run_schedule(&schedule, true)
}

#[test]
fn a_crash_recovers_a_prefix_of_the_writes() {
    qc(100).quickcheck(prop_a_crash_recovers_a_prefix_of_the_writes as fn(Schedule) -> TestResult);
}

/// Both properties again with the deletions a snapshot makes possible
/// handed out (`defer_cleanup`, as driver-tokio runs it) and done at each
/// sync: nothing is deleted before the new segment is durable, everything
/// obsolete is once the deletions ran, and a crash or a torn new segment
/// (its checkpoint included, which shares the next records' fsync) recovers
/// as before.
fn prop_deferred_deletions_match_the_model(schedule: Schedule) -> TestResult {
    run_schedule_with(&schedule, false, true)
}

#[test]
fn deferred_deletions_match_the_model_across_reopens() {
    qc(100).quickcheck(prop_deferred_deletions_match_the_model as fn(Schedule) -> TestResult);
}

fn prop_deferred_deletions_recover_a_prefix(schedule: Schedule) -> TestResult {
    run_schedule_with(&schedule, true, true)
}

#[test]
fn deferred_deletions_recover_a_prefix_of_the_writes() {
    qc(100).quickcheck(prop_deferred_deletions_recover_a_prefix as fn(Schedule) -> TestResult);
}

/// The model, the storage and the write helpers agree on a short fixed
/// schedule, so that a failure of the properties is not in the harness.
#[test]
fn the_harness_runs_a_fixed_schedule() {
    let ops = vec![
        Op::Append { count: 3, size: 5 },
        Op::Sync,
        Op::Append { count: 2, size: 30 },
        Op::TornCrash {
            cut: 3,
            zeros: false,
        },
        Op::Snapshot {
            kind: SnapshotKind::Compact { at: 1 },
            count: 1,
            data: 9,
        },
        Op::Append { count: 2, size: 0 },
        Op::CrashInSnapshot {
            kind: SnapshotKind::Install {
                at: 0,
                beyond: false,
            },
            count: 2,
            when: SnapshotCrash::Staged { cut: 7 },
        },
        Op::Abandon {
            kind: SnapshotKind::Install {
                at: 0,
                beyond: true,
            },
            data: 3,
        },
        Op::Append { count: 3, size: 1 },
        Op::CrashInSnapshot {
            kind: SnapshotKind::Compact { at: 2 },
            count: 1,
            when: SnapshotCrash::Logged { rotated: 5 },
        },
        Op::Abandon {
            kind: SnapshotKind::Install {
                at: 1,
                beyond: true,
            },
            data: 3,
        },
        Op::CrashInSnapshot {
            kind: SnapshotKind::Compact { at: 0 },
            count: 0,
            when: SnapshotCrash::BeforeSnapshotDeletion,
        },
        Op::Reopen,
    ];
    let result = run_schedule(&Schedule { ops }, true);
    assert!(!result.is_failure(), "{result:?}");
}
