//! Durable storage: round trips against `DurableState::apply`, group commit,
//! torn tails, corruption, crashes during a rotation, staged snapshot files
//! and crashes at each step of their adoption, the single snapshot file of
//! the earlier formats, snapshots streamed in and out.

use std::fs;
use std::io::{ErrorKind, Read, Write as _};
use std::path::{Path, PathBuf};

use raft_core::{DurableState, Entry, HardState, Index, Persist, SnapshotMeta, SplitMix64};
use raft_core::{Membership, Payload};
use raft_storage::{
    segment_file_name, snapshot_file_name, Recovered, SnapshotReader, SnapshotWriter, Storage,
    StorageError, MAX_RECORD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
    SINGLE_FILE_SNAPSHOT_FORMAT_VERSION, SNAPSHOT_FILE, SNAPSHOT_MAGIC, SNAPSHOT_TMP_FILE,
};

fn entry(index: Index, term: u64, size: usize) -> Entry {
    let mut command = index.to_le_bytes().to_vec();
    command.resize(size.max(8), 0xAB);
    Entry {
        index,
        term,
        payload: Payload::Command((command).into()),
    }
}

/// A write, and the bytes of the snapshot it names: a driver stages them
/// (`SnapshotWriter`) before it appends the write.
#[derive(Clone, Debug)]
struct Step {
    persist: Persist,
    data: Option<Vec<u8>>,
}

/// A write: optional hard state, snapshot, truncation, entries `from..to`.
fn write(
    hard_state: Option<(u64, Option<u64>)>,
    snapshot: Option<(Index, u64, &[u8])>,
    truncate_from: Option<Index>,
    entries: std::ops::Range<Index>,
    term: u64,
) -> Step {
    Step {
        persist: Persist {
            id: 0,
            hard_state: hard_state.map(|(term, voted_for)| HardState { term, voted_for }),
            snapshot: snapshot.map(|(index, term, _)| SnapshotMeta::at(index, term)),
            truncate_from,
            entries: entries.map(|i| entry(i, term, 8)).collect(),
            then_send: Vec::new(),
        },
        data: snapshot.map(|(_, _, data)| data.to_vec()),
    }
}

/// Stages `data` as the snapshot `meta` in `dir`, streamed in writes of at
/// most 7 bytes; returns the staged file.
fn stage(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> PathBuf {
    let mut writer = SnapshotWriter::create(dir, meta, "test").expect("create a snapshot writer");
    assert_eq!(writer.index(), meta.index);
    for chunk in data.chunks(7) {
        writer.write_all(chunk).expect("write snapshot data");
    }
    assert_eq!(writer.data_len(), data.len() as u64);
    assert_eq!(writer.data_crc(), crc32fast::hash(data));
    let path = writer.finish().expect("finish the snapshot");
    assert_eq!(path, dir.join(snapshot_file_name(meta.index)));
    path
}

/// What a driver does with a step: stage its snapshot, if it names one,
/// then append it.
fn append(storage: &mut Storage, step: &Step) {
    if let (Some(meta), Some(data)) = (&step.persist.snapshot, &step.data) {
        stage(storage.dir(), meta, data);
    }
    storage
        .append(&step.persist)
        .unwrap_or_else(|e| panic!("append failed: {e}"));
}

/// The reference: `DurableState::apply` plus the latest snapshot bytes.
#[derive(Clone, Debug, Default)]
struct Reference {
    state: DurableState,
    snapshot: Option<Vec<u8>>,
}

impl Reference {
    fn apply(&mut self, step: &Step) {
        self.state.apply(&step.persist);
        if step.persist.snapshot.is_some() {
            self.snapshot = step.data.clone();
        }
    }

    /// `r` recovered this state and this snapshot, whose stream (taken out
    /// of `r`) it reads to its end, checked against its crc.
    fn check(&self, r: &mut Recovered) {
        assert_eq!(r.state, self.state);
        assert_eq!(r.snapshot.is_some(), r.state.snapshot.is_some());
        let reader = r.snapshot.take();
        if let Some(reader) = &reader {
            let named = r.state.snapshot.as_ref().expect("a snapshot in the state");
            let meta = reader.meta();
            assert_eq!((meta.index, meta.term), (named.index, named.term));
        }
        let data = reader.map(|s| s.read_all().expect("read the snapshot"));
        assert_eq!(data, self.snapshot);
    }

    fn snapshot_index(&self) -> Option<Index> {
        self.state.snapshot.as_ref().map(|s| s.index)
    }
}

fn open(dir: &Path) -> (Storage, Recovered) {
    Storage::open(dir).unwrap_or_else(|e| panic!("open failed: {e}"))
}

fn open_err(dir: &Path) -> StorageError {
    match Storage::open(dir) {
        Ok(_) => panic!("open succeeded on a damaged directory"),
        Err(e) => e,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("log."))
        .collect();
    v.sort();
    v
}

fn only_segment(dir: &Path) -> PathBuf {
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "segments: {segs:?}");
    segs.into_iter().next().unwrap()
}

/// The names of the snapshot files in `dir` (staged, single, temporary).
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("snapshot"))
        .collect();
    v.sort();
    v
}

/// The only snapshot file left in `dir` is the staged one at `index`
/// (none at all for `None`).
fn assert_only_snapshot(dir: &Path, index: Option<Index>) {
    let expected: Vec<String> = index.map(snapshot_file_name).into_iter().collect();
    assert_eq!(snapshot_files(dir), expected);
}

/// A file's bytes; a segment's only up to where its records end, without
/// the zeros the store preallocates after them (`raft_storage::PREALLOCATE`).
fn read_log(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    let mut bytes = fs::read(path)?;
    if bytes.len() >= SEGMENT_HEADER_LEN && bytes.starts_with(&raft_storage::SEGMENT_MAGIC) {
        let mut at = SEGMENT_HEADER_LEN;
        while at + RECORD_HEADER_LEN <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            at = (at + RECORD_HEADER_LEN + len).min(bytes.len());
        }
        if bytes[at..].iter().all(|&b| b == 0) {
            bytes.truncate(at);
        }
    }
    Ok(bytes)
}

/// The byte offsets of the records of a segment.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += RECORD_HEADER_LEN + len;
    }
    assert_eq!(at, bytes.len());
    offsets
}

fn copy_dir(src: &Path, dst: &Path) {
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn assert_corrupt(err: StorageError, path: &Path, offset: u64, reason_has: &str) {
    let msg = err.to_string();
    match err {
        StorageError::Corrupt {
            path: p,
            offset: o,
            reason,
        } => {
            assert_eq!(p, path, "{msg}");
            assert_eq!(o, offset, "{msg}");
            assert!(reason.contains(reason_has), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("offset {offset}")), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn assert_inconsistent(err: StorageError, path: &Path) {
    match err {
        StorageError::Inconsistent { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected Inconsistent, got {other:?}"),
    }
}

/// A random write that continues `state`, shaped like the core's: hard
/// state changes, appends, truncations, snapshots taken inside the log or
/// installed beyond it.
fn random_persist(rng: &mut SplitMix64, state: &DurableState, id: u64) -> Step {
    let base = state.snapshot.as_ref().map_or(0, |s| s.index);
    let last = state.last_index();
    let term = state.hard_state.term;
    let mut p = Persist {
        id,
        hard_state: None,
        snapshot: None,
        truncate_from: None,
        entries: Vec::new(),
        then_send: Vec::new(),
    };
    let mut data = None;
    if rng.chance(1, 4) {
        p.hard_state = Some(HardState {
            term: term + rng.below(2),
            voted_for: rng.chance(1, 2).then(|| rng.below(5)),
        });
    }
    if rng.chance(1, 8) {
        let (index, snap_term) = if last > base && rng.chance(2, 3) {
            let index = rng.range(base + 1, last + 1);
            (index, state.term_at(index).unwrap())
        } else {
            (last + rng.range(1, 5), term)
        };
        data = Some((0..rng.below(300)).map(|_| rng.below(256) as u8).collect());
        p.snapshot = Some(SnapshotMeta {
            index,
            term: snap_term,
            membership: Membership::with_voters([1, 2, 3]),
        });
    }
    let mut after = state.clone();
    after.apply(&p);
    let after_base = after.snapshot.as_ref().map_or(0, |s| s.index);
    if after.last_index() > after_base && rng.chance(1, 5) {
        p.truncate_from = Some(rng.range(after_base + 1, after.last_index() + 1));
        after = state.clone();
        after.apply(&p);
    }
    let start = after.last_index() + 1;
    let n = rng.below(6);
    p.entries = (start..start + n)
        .map(|i| entry(i, term, rng.below(40) as usize))
        .collect();
    Step { persist: p, data }
}

#[test]
fn a_new_directory_recovers_the_empty_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let (storage, r) = open(&dir);
    assert_eq!(r.state, DurableState::default());
    assert!(r.snapshot.is_none());
    assert_eq!(r.truncated_torn_tail, None);
    assert_eq!(r.raft_state_bytes, SEGMENT_HEADER_LEN);
    assert_eq!(storage.dir(), dir);
    assert_eq!(only_segment(&dir), dir.join(segment_file_name(1)));
    drop(storage);
    let (_, r) = open(&dir);
    assert_eq!(r.state, DurableState::default());
}

#[test]
fn random_writes_round_trip_reopening_after_each_step() {
    for seed in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut rng = SplitMix64::new(seed);
        let mut reference = Reference::default();
        let (mut storage, _) = open(dir);
        let mut snapshots = 0;
        for id in 0..100 {
            let p = random_persist(&mut rng, &reference.state, id);
            snapshots += usize::from(p.persist.snapshot.is_some());
            append(&mut storage, &p);
            storage.sync().unwrap();
            reference.apply(&p);
            assert_eq!(storage.state(), &reference.state);
            // Adopting a snapshot deleted the older one.
            assert_only_snapshot(dir, reference.snapshot_index());
            let bytes = storage.raft_state_bytes();
            drop(storage);
            let (s, mut r) = open(dir);
            reference.check(&mut r);
            assert_eq!(r.truncated_torn_tail, None);
            assert_eq!(r.raft_state_bytes, bytes);
            assert_eq!(s.raft_state_bytes(), bytes);
            only_segment(dir);
            assert_only_snapshot(dir, reference.snapshot_index());
            storage = s;
        }
        assert!(snapshots > 5, "seed {seed}: only {snapshots} snapshots");
    }
}

#[test]
fn a_group_of_appends_is_made_durable_by_one_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = SplitMix64::new(99);
    let mut reference = Reference::default();
    let (mut storage, _) = open(dir);
    for round in 0..10 {
        for id in 0..25 {
            let p = random_persist(&mut rng, &reference.state, round * 100 + id);
            append(&mut storage, &p);
            reference.apply(&p);
        }
        storage.sync().unwrap();
        storage.sync().unwrap(); // nothing new: a no-op
        drop(storage);
        let (s, mut r) = open(dir);
        reference.check(&mut r);
        storage = s;
    }
}

#[test]
fn a_barrier_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    append(&mut storage, &write(None, None, None, 1..3, 1));
    let before = storage.raft_state_bytes();
    append(&mut storage, &write(None, None, None, 3..3, 1));
    storage.sync().unwrap();
    assert_eq!(storage.raft_state_bytes(), before);
}

/// A directory whose only segment is `log.1` (or `log.2` after a snapshot
/// through 6 when `rotated`) holding several writes; returns the references
/// before and after the last write.
fn build(dir: &Path, rotated: bool) -> (Reference, Reference) {
    let (mut storage, _) = open(dir);
    let mut reference = Reference::default();
    let mut writes = vec![
        write(Some((1, Some(1))), None, None, 1..4, 1),
        write(None, None, None, 4..6, 1),
        write(Some((2, None)), None, Some(5), 5..9, 2),
    ];
    if rotated {
        writes.push(write(None, Some((6, 2, b"snap")), None, 9..10, 2));
        writes.push(write(Some((3, Some(2))), None, None, 10..12, 3));
    }
    for p in &writes {
        append(&mut storage, p);
        reference.apply(p);
    }
    // The last write replaces the last entry and adds two.
    let last = reference.state.last_index();
    let p = write(Some((4, Some(3))), None, Some(last), last..last + 3, 4);
    let before = reference.clone();
    append(&mut storage, &p);
    reference.apply(&p);
    storage.sync().unwrap();
    let expected = if rotated { 2 } else { 1 };
    assert_eq!(only_segment(dir), dir.join(segment_file_name(expected)));
    (before, reference)
}

#[test]
fn a_torn_final_record_is_cut_off_at_every_byte() {
    for rotated in [false, true] {
        let src = tempfile::tempdir().unwrap();
        let (before, after) = build(src.path(), rotated);
        let seg = only_segment(src.path());
        let name = seg.file_name().unwrap().to_owned();
        let bytes = read_log(&seg).unwrap();
        let last = *record_offsets(&bytes).last().unwrap();
        for cut in last..=bytes.len() {
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(src.path(), tmp.path());
            let path = tmp.path().join(&name);
            fs::write(&path, &bytes[..cut]).unwrap();
            let (storage, mut r) = open(tmp.path());
            if cut == bytes.len() {
                after.check(&mut r);
                assert_eq!(r.truncated_torn_tail, None);
                continue;
            }
            before.check(&mut r);
            if cut == last {
                assert_eq!(r.truncated_torn_tail, None);
            } else {
                assert_eq!(r.truncated_torn_tail, Some((path.clone(), last as u64)));
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64);
            assert_eq!(r.raft_state_bytes, last);
            drop(storage);
            let (_, mut r) = open(tmp.path());
            before.check(&mut r);
            assert_eq!(r.truncated_torn_tail, None);
        }
    }
}

#[test]
fn a_final_record_with_a_bad_checksum_is_torn_and_a_zero_filled_tail_ends_the_records() {
    let src = tempfile::tempdir().unwrap();
    let (before, after) = build(src.path(), false);
    let seg = only_segment(src.path());
    let bytes = read_log(&seg).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();

    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    fs::write(&seg, &flipped).unwrap();
    let (storage, mut r) = open(src.path());
    before.check(&mut r);
    assert_eq!(r.truncated_torn_tail, Some((seg.clone(), last as u64)));
    drop(storage);

    // Zeros after the last whole record (the preallocated space, or a
    // group write of which only the file's size reached the disk): the
    // records end there; nothing is torn, and the file is left as it is.
    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0; 4096]);
    fs::write(&seg, &zeros).unwrap();
    let (storage, mut r) = open(src.path());
    after.check(&mut r);
    assert_eq!(r.truncated_torn_tail, None);
    drop(storage);
    assert_eq!(fs::read(&seg).unwrap(), zeros);
}

/// The live segment grows ahead of its records, in steps of
/// `PREALLOCATE`, and a reopened store writes after its last record, over
/// the zeros: every record survives any number of reopenings.
#[test]
fn the_segment_is_preallocated_and_reopening_continues_after_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = Reference::default();
    let mut index = 1;
    for round in 0..3u64 {
        let (mut storage, mut r) = open(dir.path());
        reference.check(&mut r);
        assert_eq!(r.truncated_torn_tail, None, "round {round}");
        for _ in 0..20 {
            let step = write(
                Some((round + 1, None)),
                None,
                None,
                index..index + 3,
                round + 1,
            );
            index += 3;
            append(&mut storage, &step);
            reference.apply(&step);
        }
        storage.sync().unwrap();
        let seg = storage.segment_path().to_path_buf();
        let size = fs::metadata(&seg).unwrap().len();
        let records = storage.raft_state_bytes() as u64;
        assert!(size >= records, "round {round}: {size} < {records}");
        assert_eq!(size % raft_storage::PREALLOCATE, 0, "round {round}: {size}");
        assert!(
            fs::read(&seg).unwrap()[records as usize..]
                .iter()
                .all(|&b| b == 0),
            "round {round}: only zeros after the records"
        );
        drop(storage);
    }
    let (_storage, mut r) = open(dir.path());
    reference.check(&mut r);
    assert_eq!(r.state.entries.len(), 180);
}

/// A crash that kept the file's size but not all of its last group write
/// leaves zeros from any byte on, even inside an earlier record of the group
/// or inside a length field: the record they start in is torn, and recovery
/// keeps everything before it (found by the storage property test).
#[test]
fn zeros_from_inside_any_record_are_a_torn_tail() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let name = seg.file_name().unwrap().to_owned();
    let bytes = read_log(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    // The state after each whole record: replay the records before `at`.
    let state_before = |at: usize| {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(src.path(), tmp.path());
        let path = tmp.path().join(&name);
        fs::write(&path, &bytes[..at]).unwrap();
        let (_, r) = open(tmp.path());
        r.state
    };
    for (k, &at) in offsets.iter().enumerate() {
        let expected = state_before(at);
        let end = offsets.get(k + 1).copied().unwrap_or(bytes.len());
        for zero_from in [at + 1, at + 5, at + RECORD_HEADER_LEN + 1, end - 1] {
            // Zeros over zeros change nothing: the damage starts at the
            // first byte that was not zero, which must lie in this record.
            match bytes[zero_from..].iter().position(|&b| b != 0) {
                Some(k) if zero_from + k < end => {}
                _ => continue,
            }
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(src.path(), tmp.path());
            let path = tmp.path().join(&name);
            let mut damaged = bytes.clone();
            damaged[zero_from..].fill(0);
            fs::write(&path, &damaged).unwrap();
            let (storage, r) = open(tmp.path());
            assert_eq!(r.state, expected, "zeros from {zero_from} (record at {at})");
            assert_eq!(r.truncated_torn_tail, Some((path.clone(), at as u64)));
            drop(storage);
            assert_eq!(read_log(&path).unwrap(), &bytes[..at]);
        }
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_record_is_corruption_at_its_offset() {
    for rotated in [false, true] {
        let src = tempfile::tempdir().unwrap();
        build(src.path(), rotated);
        let seg = only_segment(src.path());
        let name = seg.file_name().unwrap().to_owned();
        let bytes = read_log(&seg).unwrap();
        let offsets = record_offsets(&bytes);
        for &at in &offsets[..offsets.len() - 1] {
            for delta in [RECORD_HEADER_LEN, RECORD_HEADER_LEN + 3, 4] {
                let tmp = tempfile::tempdir().unwrap();
                copy_dir(src.path(), tmp.path());
                let path = tmp.path().join(&name);
                let mut damaged = bytes.clone();
                damaged[at + delta] ^= 0x01;
                fs::write(&path, &damaged).unwrap();
                assert_corrupt(open_err(tmp.path()), &path, at as u64, "checksum");
                // Nothing was changed on disk.
                assert_eq!(read_log(&path).unwrap(), damaged);
            }
        }
    }
}

#[test]
fn an_oversized_length_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let bytes = read_log(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    for at in [offsets[1], *offsets.last().unwrap()] {
        let mut damaged = bytes.clone();
        damaged[at..at + 4].copy_from_slice(&(MAX_RECORD_LEN as u32 + 1).to_le_bytes());
        fs::write(&seg, &damaged).unwrap();
        assert_corrupt(open_err(src.path()), &seg, at as u64, "maximum");
    }
    // A zero length followed by non-zero bytes.
    let mut damaged = bytes.clone();
    damaged[offsets[1]..offsets[1] + 4].copy_from_slice(&0u32.to_le_bytes());
    fs::write(&seg, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &seg, offsets[1] as u64, "zero");
}

#[test]
fn an_undecodable_record_with_a_good_checksum_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let mut bytes = read_log(&seg).unwrap();
    let at = bytes.len();
    bytes.extend_from_slice(&frame(&[0xFF; 7]));
    fs::write(&seg, &bytes).unwrap();
    assert_corrupt(open_err(src.path()), &seg, at as u64, "undecodable");
}

#[test]
fn a_record_that_does_not_continue_the_log_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let mut bytes = read_log(&seg).unwrap();
    let offsets = record_offsets(&bytes);
    // Replay the second record (entries 4..6) again at the end.
    let second = bytes[offsets[1]..offsets[2]].to_vec();
    let at = bytes.len();
    bytes.extend_from_slice(&second);
    fs::write(&seg, &bytes).unwrap();
    assert_corrupt(open_err(src.path()), &seg, at as u64, "does not continue");
}

#[test]
fn a_bad_segment_header_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let bytes = read_log(&seg).unwrap();
    let mut damaged = bytes.clone();
    damaged[0] = b'X';
    fs::write(&seg, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &seg, 0, "magic");
    let mut damaged = bytes.clone();
    damaged[8] = 9;
    fs::write(&seg, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &seg, 8, "version");
}

#[test]
fn a_torn_first_segment_header_starts_empty() {
    // Either format's header (version 2 now, 1 before), cut short.
    let headers = [&b"RKVLOG\0\0\x02\0\0\0"[..], &b"RKVLOG\0\0\x01\0\0\0"[..]];
    for (header, len) in headers
        .iter()
        .flat_map(|h| [0, 5, 9, SEGMENT_HEADER_LEN - 1].map(|len| (h, len)))
    {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(segment_file_name(1));
        fs::write(&path, &header[..len]).unwrap();
        let (mut storage, r) = open(tmp.path());
        assert_eq!(r.state, DurableState::default());
        storage
            .append(&write(None, None, None, 1..3, 1).persist)
            .unwrap();
        storage.sync().unwrap();
        drop(storage);
        let (_, r) = open(tmp.path());
        assert_eq!(r.state.last_index(), 2);
    }
}

/// Writes, then a snapshot write as an InstallSnapshot from a new leader
/// would make it (new term, a snapshot inside the log whose term differs,
/// the rest of the log dropped), whose rotation produced `log.2`.
struct RotationCase {
    dir: tempfile::TempDir,
    /// `log.1` before the snapshot write.
    log1_before: Vec<u8>,
    /// `log.1` once the write's record was durable in it, before the
    /// rotation deleted it.
    log1: Vec<u8>,
    log2: Vec<u8>,
    /// The staged snapshot file the write made the node's, and its bytes.
    staged: String,
    staged_bytes: Vec<u8>,
    step: Step,
    before: Reference,
    after: Reference,
}

fn rotation_case() -> RotationCase {
    let dir = tempfile::tempdir().unwrap();
    let aside = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(dir.path());
    let mut reference = Reference::default();
    for p in [
        write(Some((1, Some(1))), None, None, 1..8, 1),
        write(Some((2, Some(2))), None, None, 8..11, 2),
    ] {
        append(&mut storage, &p);
        reference.apply(&p);
    }
    storage.sync().unwrap();
    let log1_path = dir.path().join(segment_file_name(1));
    let log1_before = read_log(&log1_path).unwrap();
    // A second name keeps log.1 as the write's record left it once the
    // rotation has deleted it.
    let saved = aside.path().join("log.1");
    fs::hard_link(&log1_path, &saved).unwrap();
    let before = reference.clone();
    let step = write(
        Some((5, None)),
        Some((6, 4, b"snapshot six")),
        Some(7),
        7..7,
        0,
    );
    append(&mut storage, &step);
    reference.apply(&step);
    assert_eq!(reference.state.entries, vec![]);
    assert_eq!(
        only_segment(dir.path()),
        dir.path().join(segment_file_name(2))
    );
    drop(storage);
    let log1 = read_log(&saved).unwrap();
    assert!(log1.len() > log1_before.len());
    assert_eq!(log1[..log1_before.len()], log1_before[..]);
    let log2 = read_log(dir.path().join(segment_file_name(2))).unwrap();
    let staged = snapshot_file_name(6);
    let staged_bytes = read_log(dir.path().join(&staged)).unwrap();
    RotationCase {
        dir,
        log1_before,
        log1,
        log2,
        staged,
        staged_bytes,
        step,
        before,
        after: reference,
    }
}

#[test]
fn a_crash_during_rotation_falls_back_to_the_previous_segment() {
    let case = rotation_case();
    // All zeros: a file whose blocks were never written.
    let zeros = vec![0; case.log2.len()];
    let mut flipped = case.log2.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("half header", case.log2[..5].to_vec()),
        ("header only", case.log2[..SEGMENT_HEADER_LEN].to_vec()),
        (
            "half checkpoint",
            case.log2[..case.log2.len() / 2 + 6].to_vec(),
        ),
        ("checkpoint crc", flipped),
        ("zeros", zeros),
        ("complete", case.log2.clone()),
    ];
    for (what, log2) in variants {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(&case.staged), &case.staged_bytes).unwrap();
        fs::write(tmp.path().join(segment_file_name(1)), &case.log1).unwrap();
        fs::write(tmp.path().join(segment_file_name(2)), &log2).unwrap();
        let (mut storage, mut r) = open(tmp.path());
        case.after.check(&mut r);
        assert_eq!(r.truncated_torn_tail, None, "{what}");
        // The log already recorded the snapshot: a torn log.2 is deleted
        // and log.1 stays live; a whole one replaces log.1.
        let (live, bytes) = if what == "complete" {
            (2, &case.log2)
        } else {
            (1, &case.log1)
        };
        let seg = only_segment(tmp.path());
        assert_eq!(seg, tmp.path().join(segment_file_name(live)), "{what}");
        assert_eq!(&read_log(&seg).unwrap(), bytes, "{what}");
        assert_only_snapshot(tmp.path(), Some(6));
        // Later writes are not undone on reopen.
        let mut reference = case.after.clone();
        let p = write(Some((6, Some(3))), None, None, 7..9, 6);
        append(&mut storage, &p);
        storage.sync().unwrap();
        reference.apply(&p);
        drop(storage);
        let (_, mut r) = open(tmp.path());
        reference.check(&mut r);
    }
}

#[test]
fn a_torn_tail_in_the_previous_segment_is_cut_during_the_fallback() {
    let case = rotation_case();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(&case.staged), &case.staged_bytes).unwrap();
    let mut log1 = case.log1.clone();
    log1.extend_from_slice(&[40, 0, 0]);
    fs::write(tmp.path().join(segment_file_name(1)), &log1).unwrap();
    fs::write(
        tmp.path().join(segment_file_name(2)),
        &case.log2[..SEGMENT_HEADER_LEN + 3],
    )
    .unwrap();
    let (_, mut r) = open(tmp.path());
    case.after.check(&mut r);
    assert_eq!(
        r.truncated_torn_tail,
        Some((
            tmp.path().join(segment_file_name(1)),
            case.log1.len() as u64
        ))
    );
}

#[test]
fn a_torn_segment_with_nothing_to_fall_back_to_is_corruption() {
    let case = rotation_case();
    let seg = case.dir.path().join(segment_file_name(2));
    fs::write(&seg, &case.log2[..SEGMENT_HEADER_LEN + 2]).unwrap();
    assert_corrupt(open_err(case.dir.path()), &seg, 0, "checkpoint");
}

/// (a) A crash after the snapshot was staged but before its write was
/// durable in the log (none of the record, or a torn prefix of it): the
/// node keeps its previous snapshot (here none), the staged file is
/// deleted, and the same write can be made again.
#[test]
fn a_staged_snapshot_whose_write_never_reached_the_log_is_deleted() {
    let case = rotation_case();
    let old_len = case.log1_before.len();
    let record_len = case.log1.len() - old_len;
    for cut in [0, 1, RECORD_HEADER_LEN, record_len / 2, record_len - 1] {
        let tmp = tempfile::tempdir().unwrap();
        let log1 = tmp.path().join(segment_file_name(1));
        fs::write(tmp.path().join(&case.staged), &case.staged_bytes).unwrap();
        fs::write(&log1, &case.log1[..old_len + cut]).unwrap();
        let (mut storage, mut r) = open(tmp.path());
        case.before.check(&mut r);
        let torn = (cut > 0).then(|| (log1.clone(), old_len as u64));
        assert_eq!(r.truncated_torn_tail, torn, "cut {cut}");
        assert_only_snapshot(tmp.path(), None);
        assert_eq!(read_log(&log1).unwrap(), case.log1_before, "cut {cut}");
        // Still usable: stage and write the snapshot again.
        append(&mut storage, &case.step);
        drop(storage);
        let (_, mut r) = open(tmp.path());
        case.after.check(&mut r);
        assert_only_snapshot(tmp.path(), Some(6));
    }
}

/// (a) again, with an older snapshot: it stays the node's.
#[test]
fn a_staged_snapshot_never_written_leaves_the_older_snapshot_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, after) = build(tmp.path(), true);
    let term = after.state.term_at(12).unwrap();
    stage(tmp.path(), &SnapshotMeta::at(12, term), b"never written");
    assert_eq!(
        snapshot_files(tmp.path()),
        [snapshot_file_name(6), snapshot_file_name(12)]
    );
    let (_, mut r) = open(tmp.path());
    after.check(&mut r);
    assert_eq!(r.truncated_torn_tail, None);
    assert_only_snapshot(tmp.path(), Some(6));
}

/// (b) A crash once the write's record was durable, at each later step:
/// before the rotation started, during it, before the old segment was
/// deleted, before the older snapshot files were. The new snapshot is the
/// node's, with the whole write; every older snapshot file is deleted at
/// open.
#[test]
fn a_crash_after_the_log_record_adopts_the_new_snapshot() {
    let src = tempfile::tempdir().unwrap();
    let aside = tempfile::tempdir().unwrap();
    let dir = src.path();
    let (_, mut reference) = build(dir, true);
    let (mut storage, _) = open(dir);
    // An older staged file that never became the node's.
    stage(dir, &SnapshotMeta::at(4, 1), b"four");
    let old_files: Vec<(String, Vec<u8>)> = snapshot_files(dir)
        .into_iter()
        .map(|n| {
            let bytes = read_log(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    assert_eq!(old_files.len(), 2);
    let old_path = storage.segment_path().to_path_buf();
    fs::hard_link(&old_path, aside.path().join("old")).unwrap();
    let term = reference.state.term_at(12).unwrap();
    let last = reference.state.last_index();
    let step = write(
        Some((5, Some(1))),
        Some((12, term, b"twelve")),
        None,
        last + 1..last + 3,
        4,
    );
    append(&mut storage, &step);
    reference.apply(&step);
    let new_path = storage.segment_path().to_path_buf();
    assert_ne!(new_path, old_path);
    drop(storage);
    assert_only_snapshot(dir, Some(12));
    let old_segment = read_log(aside.path().join("old")).unwrap();
    let new_segment = read_log(&new_path).unwrap();
    let staged = read_log(dir.join(snapshot_file_name(12))).unwrap();

    // The old segment and the new one, as the crash left them.
    type Segments<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
    let variants: [(&str, Segments, bool); 5] = [
        ("before the rotation", (Some(&old_segment), None), true),
        (
            "during the rotation",
            (
                Some(&old_segment),
                Some(&new_segment[..SEGMENT_HEADER_LEN + 5]),
            ),
            true,
        ),
        (
            "before the segment deletion",
            (Some(&old_segment), Some(&new_segment)),
            true,
        ),
        (
            "before the snapshot deletion",
            (None, Some(&new_segment)),
            true,
        ),
        ("done", (None, Some(&new_segment)), false),
    ];
    for (what, (old, new), old_snapshots) in variants {
        let tmp = tempfile::tempdir().unwrap();
        let at = |p: &Path| tmp.path().join(p.file_name().unwrap());
        if let Some(bytes) = old {
            fs::write(at(&old_path), bytes).unwrap();
        }
        if let Some(bytes) = new {
            fs::write(at(&new_path), bytes).unwrap();
        }
        fs::write(tmp.path().join(snapshot_file_name(12)), &staged).unwrap();
        if old_snapshots {
            for (name, bytes) in &old_files {
                fs::write(tmp.path().join(name), bytes).unwrap();
            }
        }
        let (_, mut r) = open(tmp.path());
        reference.check(&mut r);
        assert_eq!(r.truncated_torn_tail, None, "{what}");
        assert_only_snapshot(tmp.path(), Some(12));
        only_segment(tmp.path());
        let (_, mut r) = open(tmp.path());
        reference.check(&mut r);
    }
}

/// (c) Temporary files of writers that never finished (the single-file
/// format's `snapshot.tmp`, a staged file's `snapshot.<index>.<tag>.tmp`,
/// and one left by a writer dropped halfway) are deleted at open and change
/// nothing.
#[test]
fn leftover_temporary_snapshot_files_are_ignored_and_deleted() {
    let src = tempfile::tempdir().unwrap();
    let (_, after) = build(src.path(), true);
    fs::write(src.path().join(SNAPSHOT_TMP_FILE), b"half a snapshot").unwrap();
    let tagged = format!("{}.other.tmp", snapshot_file_name(6));
    fs::write(src.path().join(&tagged), b"half").unwrap();
    let mut writer =
        SnapshotWriter::create(src.path(), &SnapshotMeta::at(9, 3), "dropped").unwrap();
    writer.write_all(&[7; 10_000]).unwrap();
    drop(writer);
    let leftovers = snapshot_files(src.path());
    assert_eq!(leftovers.len(), 4, "{leftovers:?}");
    assert!(leftovers.contains(&SNAPSHOT_TMP_FILE.to_string()));
    assert!(leftovers.contains(&tagged));
    assert!(leftovers.contains(&format!("{}.dropped.tmp", snapshot_file_name(9))));
    let (_, mut r) = open(src.path());
    after.check(&mut r);
    assert_only_snapshot(src.path(), Some(6));
}

/// (d) A staged file with a damaged data byte opens (its header is fine),
/// and reading its data fails at the end with `InvalidData`; damage to the
/// header, or a file cut short, is `Corrupt` at open.
#[test]
fn a_damaged_snapshot_file_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), true);
    let path = src.path().join(snapshot_file_name(6));
    let bytes = read_log(&path).unwrap();
    let data_at = bytes.len() - b"snap".len();
    assert_eq!(&bytes[data_at..], b"snap");

    for at in data_at..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1;
        fs::write(&path, &damaged).unwrap();
        let (_, r) = open(src.path());
        let mut reader = r.snapshot.expect("the header is fine");
        let mut buf = [0; 3];
        let mut read = Vec::new();
        let err = loop {
            match reader.read(&mut buf) {
                Ok(0) => panic!("damaged data read to its end without an error"),
                Ok(n) => read.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        // The error came at the end, after all of the data.
        assert_eq!(read, &damaged[data_at..]);
        // `read_all` reports it as an I/O error on the file.
        let (_, r) = open(src.path());
        match r.snapshot.unwrap().read_all() {
            Err(StorageError::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), ErrorKind::InvalidData);
            }
            other => panic!("expected an InvalidData I/O error, got {other:?}"),
        }
    }

    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_corrupt(open_err(src.path()), &path, data_at as u64, "header says");
    let mut longer = bytes.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert_corrupt(open_err(src.path()), &path, data_at as u64, "header says");

    let mut damaged = bytes.clone();
    damaged[0] ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &path, 0, "magic");

    let mut damaged = bytes.clone();
    damaged[8] = 9;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &path, 8, "version");

    // Every byte of the meta, the data length and the data crc is covered
    // by the header crc (the crc itself, last, too).
    for at in 16..data_at {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert_corrupt(open_err(src.path()), &path, 16, "header checksum");
        // Nothing was deleted or changed by the failed open.
        assert_eq!(read_log(&path).unwrap(), damaged);
    }
}

#[test]
fn a_missing_snapshot_file_is_inconsistent() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), true);
    let path = src.path().join(snapshot_file_name(6));
    fs::remove_file(&path).unwrap();
    assert_inconsistent(open_err(src.path()), &path);
}

/// A staged file whose header names another snapshot than the log's (same
/// index, another term) does not fit the log.
#[test]
fn a_snapshot_file_of_another_term_is_inconsistent() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), true);
    let path = src.path().join(snapshot_file_name(6));
    fs::remove_file(&path).unwrap();
    stage(src.path(), &SnapshotMeta::at(6, 1), b"snap");
    assert_inconsistent(open_err(src.path()), &path);
}

/// (e) A write naming a snapshot that was never staged is refused with
/// nothing written: same state, same bytes on disk, the same snapshot; the
/// storage stays usable and the write succeeds once the snapshot is staged.
#[test]
fn a_write_naming_an_unstaged_snapshot_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, mut reference) = build(dir, true);
    let (mut storage, _) = open(dir);
    // Buffered, not yet synced: the refusal must not write it either.
    let last = reference.state.last_index();
    let pending = write(None, None, None, last + 1..last + 2, 4);
    append(&mut storage, &pending);
    let seg = storage.segment_path().to_path_buf();
    let seg_bytes = read_log(&seg).unwrap();
    let size = storage.raft_state_bytes();
    let mut expected = reference.clone();
    expected.apply(&pending);
    let term = reference.state.term_at(10).unwrap();
    let step = write(Some((5, None)), Some((10, term, b"ten")), None, 0..0, 5);
    let err = storage.append(&step.persist).unwrap_err();
    let text = err.to_string();
    assert_inconsistent(err, &dir.join(snapshot_file_name(10)));
    assert!(text.contains("never staged"), "{text}");
    assert_eq!(storage.state(), &expected.state);
    assert_eq!(storage.raft_state_bytes(), size);
    assert_eq!(read_log(&seg).unwrap(), seg_bytes);
    assert_eq!(only_segment(dir), seg);
    assert_only_snapshot(dir, Some(6));

    // Usable: the pending write syncs, and the snapshot once staged.
    storage.sync().unwrap();
    reference.apply(&pending);
    append(&mut storage, &step);
    reference.apply(&step);
    drop(storage);
    let (_, mut r) = open(dir);
    reference.check(&mut r);
    assert_only_snapshot(dir, Some(10));
}

/// A staged file that does not hold the snapshot the write names (another
/// term at that index) or whose header is damaged is refused too: accepted,
/// the write would leave a directory that no longer opens.
#[test]
fn a_write_naming_a_staged_file_that_does_not_fit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, mut reference) = build(dir, true);
    let (mut storage, _) = open(dir);
    let size = storage.raft_state_bytes();
    let term = reference.state.term_at(10).unwrap();
    let step = write(None, Some((10, term, b"ten")), None, 0..0, 4);
    let path = stage(dir, &SnapshotMeta::at(10, term + 7), b"ten");
    assert_inconsistent(storage.append(&step.persist).unwrap_err(), &path);
    assert_eq!(storage.state(), &reference.state);
    assert_eq!(storage.raft_state_bytes(), size);

    stage(dir, &SnapshotMeta::at(10, term), b"ten");
    let mut bytes = read_log(&path).unwrap();
    bytes[16] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert_corrupt(
        storage.append(&step.persist).unwrap_err(),
        &path,
        16,
        "header checksum",
    );
    assert_eq!(storage.state(), &reference.state);
    assert_eq!(storage.raft_state_bytes(), size);

    append(&mut storage, &step);
    reference.apply(&step);
    drop(storage);
    let (_, mut r) = open(dir);
    reference.check(&mut r);
}

/// The single `snapshot` file of format 2, as the previous version wrote
/// it (the layout in `snapshot_file`'s module docs): magic, version, header
/// length, header crc, header (meta, hard state, truncation, data length
/// and crc), data.
fn single_file_snapshot(
    meta: &SnapshotMeta,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    data: &[u8],
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Header<'a> {
        meta: &'a SnapshotMeta,
        hard_state: Option<HardState>,
        truncate_from: Option<Index>,
        data_len: u64,
        data_crc: u32,
    }
    let header = postcard::to_allocvec(&Header {
        meta,
        hard_state,
        truncate_from,
        data_len: data.len() as u64,
        data_crc: crc32fast::hash(data),
    })
    .unwrap();
    let mut file = SNAPSHOT_MAGIC.to_vec();
    file.extend_from_slice(&SINGLE_FILE_SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(header.len() as u32).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(data);
    file
}

/// `build(dir, true)` as the previous version left it: the log names the
/// snapshot through 6, held in the single `snapshot` file (format 2).
fn build_single_file(dir: &Path) -> Reference {
    let (_, mut after) = build(dir, true);
    let meta = after.state.snapshot.clone().unwrap();
    fs::remove_file(dir.join(snapshot_file_name(6))).unwrap();
    let data = b"single file";
    fs::write(
        dir.join(SNAPSHOT_FILE),
        single_file_snapshot(&meta, None, None, data),
    )
    .unwrap();
    after.snapshot = Some(data.to_vec());
    after
}

/// (f) A directory of the previous format still opens, its snapshot read
/// from the single file; once a newer snapshot is the node's, the single
/// file is gone, also after a crash before its deletion.
#[test]
fn a_single_file_snapshot_directory_opens_and_the_file_goes_once_a_newer_one_is_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut reference = build_single_file(dir);
    let (mut storage, mut r) = open(dir);
    let reader = r.snapshot.as_ref().unwrap();
    assert_eq!(reader.path(), dir.join(SNAPSHOT_FILE));
    reference.check(&mut r);
    assert_eq!(snapshot_files(dir), [SNAPSHOT_FILE]);
    drop(storage);
    // Reopening changes nothing.
    let (s, mut r) = open(dir);
    reference.check(&mut r);
    assert_eq!(snapshot_files(dir), [SNAPSHOT_FILE]);
    storage = s;
    let single = read_log(dir.join(SNAPSHOT_FILE)).unwrap();

    let term = reference.state.term_at(12).unwrap();
    let last = reference.state.last_index();
    let step = write(
        None,
        Some((12, term, b"twelve")),
        None,
        last + 1..last + 2,
        4,
    );
    append(&mut storage, &step);
    reference.apply(&step);
    assert_only_snapshot(dir, Some(12));
    drop(storage);
    let (storage, mut r) = open(dir);
    reference.check(&mut r);
    assert_only_snapshot(dir, Some(12));
    drop(storage);

    // A crash before the single file was deleted: the log names the new
    // snapshot, the single file goes at open.
    fs::write(dir.join(SNAPSHOT_FILE), &single).unwrap();
    let (_, mut r) = open(dir);
    reference.check(&mut r);
    assert_only_snapshot(dir, Some(12));
}

/// The single file's data is checked as it is streamed too.
#[test]
fn a_single_file_snapshot_with_a_damaged_data_byte_fails_at_the_end_of_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build_single_file(dir);
    let path = dir.join(SNAPSHOT_FILE);
    let mut bytes = read_log(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (_, r) = open(dir);
    match r.snapshot.unwrap().read_all() {
        Err(StorageError::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), ErrorKind::InvalidData);
        }
        other => panic!("expected an InvalidData I/O error, got {other:?}"),
    }
    // A damaged header is corruption at open.
    bytes[21] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert_corrupt(open_err(dir), &path, 20, "header checksum");
}

/// The previous format renamed the single file into place before the log
/// recorded its write; a crash in between left a `snapshot` newer than the
/// log. Its `Persist` is completed from the header's hard state and
/// truncation (its entries were never acknowledged), the log is rotated to
/// record it, and later writes survive.
#[test]
fn a_single_file_snapshot_newer_than_the_log_completes_its_write() {
    let case = rotation_case();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let meta = case.step.persist.snapshot.clone().unwrap();
    let data = b"snapshot six";
    let hard_state = case.step.persist.hard_state;
    fs::write(
        dir.join(SNAPSHOT_FILE),
        single_file_snapshot(&meta, hard_state, Some(7), data),
    )
    .unwrap();
    fs::write(dir.join(segment_file_name(1)), &case.log1_before).unwrap();
    let (mut storage, mut r) = open(dir);
    case.after.check(&mut r);
    assert_eq!(only_segment(dir), dir.join(segment_file_name(2)));

    // Later writes, then a second such crash over the rotated log.
    let mut reference = case.after.clone();
    let p = write(None, None, None, 7..12, 5);
    append(&mut storage, &p);
    storage.sync().unwrap();
    reference.apply(&p);
    drop(storage);
    let (storage, mut r) = open(dir);
    reference.check(&mut r);
    drop(storage);
    let nine = SnapshotMeta::at(9, 5);
    let hard_state = HardState {
        term: 7,
        voted_for: Some(1),
    };
    fs::write(
        dir.join(SNAPSHOT_FILE),
        single_file_snapshot(&nine, Some(hard_state), None, b"nine"),
    )
    .unwrap();
    // The entries of that write (12 on) were never acknowledged.
    let completed = write(Some((7, Some(1))), Some((9, 5, b"nine")), None, 12..12, 7);
    reference.apply(&completed);
    let (_, mut r) = open(dir);
    reference.check(&mut r);
    assert_eq!(only_segment(dir), dir.join(segment_file_name(3)));
}

/// (g) Two writers of one index with different tags write different
/// temporary files; the later `finish` wins, whole. A writer dropped
/// unfinished leaves the other's staged file intact.
#[test]
fn two_writers_of_one_index_with_different_tags_do_not_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut storage, _) = open(dir);
    let mut reference = Reference::default();
    let p = write(Some((1, None)), None, None, 1..8, 1);
    append(&mut storage, &p);
    reference.apply(&p);

    let meta = SnapshotMeta::at(4, 1);
    let mut a = SnapshotWriter::create(dir, &meta, "a").unwrap();
    let mut b = SnapshotWriter::create(dir, &meta, "b").unwrap();
    let (mut data_a, mut data_b) = (Vec::new(), Vec::new());
    for round in 0..50u32 {
        let chunk_a = format!("a{round};").repeat(100).into_bytes();
        let chunk_b = format!("bb{round},").repeat(77).into_bytes();
        a.write_all(&chunk_a).unwrap();
        b.write_all(&chunk_b).unwrap();
        data_a.extend_from_slice(&chunk_a);
        data_b.extend_from_slice(&chunk_b);
    }
    let tmp_name = |index, tag: &str| format!("{}.{tag}.tmp", snapshot_file_name(index));
    assert_eq!(snapshot_files(dir), [tmp_name(4, "a"), tmp_name(4, "b")]);
    let staged = a.finish().unwrap();
    assert_eq!(
        SnapshotReader::open(&staged).unwrap().read_all().unwrap(),
        data_a
    );
    assert_eq!(b.finish().unwrap(), staged);
    let reader = SnapshotReader::open(&staged).unwrap();
    assert_eq!(reader.data_len(), data_b.len() as u64);
    assert_eq!(reader.data_crc(), crc32fast::hash(&data_b));
    assert_eq!(reader.read_all().unwrap(), data_b);
    assert_only_snapshot(dir, Some(4));
    let step = Step {
        persist: write(None, Some((4, 1, b"")), None, 8..9, 1).persist,
        data: Some(data_b),
    };
    storage.append(&step.persist).unwrap();
    reference.apply(&step);

    // One finishes, the other is dropped halfway (a crash of its thread).
    let meta = SnapshotMeta::at(6, 1);
    let mut c = SnapshotWriter::create(dir, &meta, "c").unwrap();
    let mut d = SnapshotWriter::create(dir, &meta, "d").unwrap();
    c.write_all(b"from c").unwrap();
    d.write_all(b"from d, unfinished").unwrap();
    c.finish().unwrap();
    drop(d);
    let step = Step {
        persist: write(None, Some((6, 1, b"")), None, 9..9, 1).persist,
        data: Some(b"from c".to_vec()),
    };
    storage.append(&step.persist).unwrap();
    reference.apply(&step);
    assert_eq!(
        snapshot_files(dir),
        [snapshot_file_name(6), tmp_name(6, "d")]
    );
    drop(storage);
    let (_, mut r) = open(dir);
    reference.check(&mut r);
    assert_only_snapshot(dir, Some(6));
}

/// Fills `buf` with the bytes of a deterministic stream from offset `at`
/// (each byte a function of its offset, so any chunking compares).
fn pattern(at: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        let offset = at + k as u64;
        let word = SplitMix64::new(offset / 8).next_u64();
        *b = word.to_le_bytes()[(offset % 8) as usize];
    }
}

/// (h) A 50 MiB snapshot streamed in 1 MiB writes from a generator, made
/// the node's, and streamed back through a 1000-byte buffer: every byte,
/// the length and the crc match, and neither side held it whole.
#[test]
fn a_large_snapshot_streams_in_and_out() {
    const MIB: usize = 1 << 20;
    const LEN: u64 = 50 * MIB as u64;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut storage, _) = open(dir);
    append(&mut storage, &write(Some((1, None)), None, None, 1..4, 1));
    let meta = SnapshotMeta::at(3, 1);
    let mut writer = SnapshotWriter::create(dir, &meta, "big").unwrap();
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0; MIB];
    for k in 0..50 {
        pattern(k * MIB as u64, &mut chunk);
        writer.write_all(&chunk).unwrap();
        crc.update(&chunk);
    }
    let crc = crc.finalize();
    assert_eq!(writer.data_len(), LEN);
    assert_eq!(writer.data_crc(), crc);
    let staged = writer.finish().unwrap();
    assert!(fs::metadata(&staged).unwrap().len() > LEN);
    storage
        .append(&write(None, Some((3, 1, b"")), None, 0..0, 1).persist)
        .unwrap();
    drop(storage);

    let (_, r) = open(dir);
    let mut reader = r.snapshot.expect("the snapshot");
    assert_eq!(reader.meta(), &meta);
    assert_eq!(reader.data_len(), LEN);
    assert_eq!(reader.data_crc(), crc);
    let mut buf = [0; 1000];
    let mut expected = [0; 1000];
    let mut at = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        pattern(at, &mut expected[..n]);
        assert!(
            buf[..n] == expected[..n],
            "data differs at {at}..{}",
            at + n as u64
        );
        at += n as u64;
    }
    assert_eq!(at, LEN);
    // The end stays the end.
    assert_eq!(reader.read(&mut buf).unwrap(), 0);
}

#[test]
fn raft_state_bytes_shrink_after_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    for i in 0..200 {
        let p = Persist {
            entries: vec![entry(i + 1, 1, 100)],
            ..write(None, None, None, 0..0, 1).persist
        };
        storage.append(&p).unwrap();
    }
    storage.sync().unwrap();
    let big = storage.raft_state_bytes();
    assert!(big > 200 * 100, "{big}");
    append(
        &mut storage,
        &write(None, Some((195, 1, b"state")), None, 0..0, 1),
    );
    let small = storage.raft_state_bytes();
    assert!(small < 5 * 150, "{small}");
    assert_eq!(storage.state().entries.len(), 5);
    drop(storage);
    let (storage, r) = open(tmp.path());
    assert_eq!(r.raft_state_bytes, small);
    assert_eq!(storage.raft_state_bytes(), small);
    assert_eq!(r.snapshot.unwrap().read_all().unwrap(), b"state");
}

#[test]
fn a_write_that_does_not_continue_the_log_is_refused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    storage
        .append(&write(None, None, None, 1..4, 1).persist)
        .unwrap();
    let bytes = storage.raft_state_bytes();
    let err = storage
        .append(&write(None, None, None, 5..6, 1).persist)
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidWrite(_)), "{err}");
    assert_eq!(storage.raft_state_bytes(), bytes);
    storage
        .append(&write(None, None, None, 4..6, 1).persist)
        .unwrap();
    storage.sync().unwrap();
    drop(storage);
    let (_, r) = open(tmp.path());
    assert_eq!(r.state.last_index(), 5);
}

#[test]
fn a_record_over_the_maximum_is_refused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    let p = Persist {
        entries: vec![entry(1, 1, MAX_RECORD_LEN + 1)],
        ..write(None, None, None, 0..0, 1).persist
    };
    let err = storage.append(&p).unwrap_err();
    assert!(matches!(err, StorageError::RecordTooLarge { .. }), "{err}");
    assert_eq!(storage.raft_state_bytes(), SEGMENT_HEADER_LEN);
    storage
        .append(&write(None, None, None, 1..2, 1).persist)
        .unwrap();
}

#[test]
fn commit_makes_a_batch_durable_and_hands_back_what_waited() {
    use raft_core::{Message, RequestVote};
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = Storage::open(tmp.path()).unwrap();
    assert_eq!(storage.commit(Vec::new()).unwrap(), None);
    let vote = |term| {
        Message::RequestVote(RequestVote {
            term,
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        })
    };
    let batch: Vec<Persist> = (1..=3)
        .map(|id| Persist {
            id,
            hard_state: Some(HardState {
                term: id,
                voted_for: None,
            }),
            snapshot: None,
            truncate_from: None,
            entries: vec![Entry {
                index: id,
                term: id,
                payload: Payload::Command((vec![id as u8]).into()),
            }],
            then_send: vec![(id, vote(id))],
        })
        .collect();
    let mut expected = DurableState::default();
    for p in &batch {
        expected.apply(p);
    }
    let committed = storage.commit(batch).unwrap().expect("a batch");
    assert_eq!(committed.upto, 3);
    assert_eq!(
        committed.then_send,
        vec![(1, vote(1)), (2, vote(2)), (3, vote(3))]
    );
    drop(storage);
    let (_, recovered) = Storage::open(tmp.path()).unwrap();
    assert_eq!(recovered.state, expected);
}

/// Segment format 1 (entries of command bytes only, an empty command a
/// leader's no-op) is still read: a directory written by the previous
/// version opens with its entries as commands and no-ops, and the store
/// then writes a new segment in the current format (2) before anything
/// else, so no file mixes the two.
#[test]
fn a_version_1_directory_is_read_and_continued_in_version_2() {
    #[derive(serde::Serialize)]
    struct V1Entry {
        index: Index,
        term: u64,
        command: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    enum V1Record {
        Write {
            hard_state: Option<HardState>,
            snapshot: Option<SnapshotMeta>,
            truncate_from: Option<Index>,
            entries: Vec<V1Entry>,
        },
    }
    let record = V1Record::Write {
        hard_state: Some(HardState {
            term: 2,
            voted_for: Some(1),
        }),
        snapshot: None,
        truncate_from: None,
        entries: vec![
            V1Entry {
                index: 1,
                term: 2,
                command: Vec::new(),
            },
            V1Entry {
                index: 2,
                term: 2,
                command: b"put x".to_vec(),
            },
        ],
    };
    let payload = postcard::to_allocvec(&record).unwrap();
    let mut file = b"RKVLOG\0\0\x01\0\0\0".to_vec();
    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    file.extend_from_slice(&payload);
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(segment_file_name(1)), &file).unwrap();

    let (mut storage, r) = open(tmp.path());
    let expected = vec![
        Entry {
            index: 1,
            term: 2,
            payload: Payload::Noop,
        },
        Entry::new(2, 2, b"put x".to_vec()),
    ];
    assert_eq!(r.state.entries, expected);
    assert_eq!(r.state.hard_state.term, 2);
    let live = read_log(storage.segment_path()).unwrap();
    assert_eq!(
        live[8..12],
        raft_storage::FORMAT_VERSION.to_le_bytes(),
        "the store continues in a new segment of the current format"
    );
    assert_ne!(
        storage.segment_path(),
        tmp.path().join(segment_file_name(1))
    );
    storage
        .append(&write(None, None, None, 3..4, 2).persist)
        .unwrap();
    storage.sync().unwrap();
    drop(storage);
    let (_, r) = open(tmp.path());
    assert_eq!(&r.state.entries[..2], &expected[..]);
    assert_eq!(r.state.last_index(), 3);
    assert!(
        !tmp.path().join(segment_file_name(1)).exists(),
        "the old segment is gone"
    );
}

/// A data directory is used by one `Storage` at a time: a second open while
/// the first lives fails at once, naming the lock; once the first is
/// dropped (or its process exits) the directory opens again.
#[test]
fn a_second_open_of_a_data_directory_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, _) = Storage::open(tmp.path()).unwrap();
    match Storage::open(tmp.path()) {
        Err(e @ StorageError::Locked { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("in use") && text.contains(raft_storage::LOCK_FILE),
                "{text}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("two Storages opened the same directory"),
    }
    drop(first);
    Storage::open(tmp.path()).expect("reopens once the first is gone");
}

/// With `defer_cleanup`, a snapshot write deletes nothing: its record is
/// durable on return, the new segment and its checkpoint with the next
/// sync, and only then are the deletions handed out, to run on any thread.
/// A crash before that sync recovers the write from the older segment; one
/// before the deletions ran leaves files that the next open deletes.
#[test]
fn deferred_deletions_wait_for_the_new_segment_and_run_on_any_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut storage, _) = open(dir);
    storage.defer_cleanup();
    let mut reference = Reference::default();
    let steps = [
        write(Some((1, Some(1))), None, None, 1..6, 1),
        write(None, Some((3, 1, b"first")), None, 6..8, 1),
    ];
    for step in &steps {
        append(&mut storage, step);
        reference.apply(step);
    }
    // The snapshot's record is durable; the new segment is not yet.
    assert_eq!(segments(dir).len(), 2);
    assert!(storage.take_cleanup().is_none());
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir, crashed.path());
    storage.sync().unwrap();
    let cleanup = storage
        .take_cleanup()
        .expect("deletions once the segment is durable");
    assert!(storage.take_cleanup().is_none(), "handed out once");
    assert_eq!(segments(dir).len(), 2, "nothing deleted inside the write");

    // A second snapshot before the first one's deletions ran.
    let third = write(None, Some((7, 1, b"second")), None, 8..9, 1);
    append(&mut storage, &third);
    reference.apply(&third);
    storage.sync().unwrap();
    let newer = storage
        .take_cleanup()
        .expect("the second snapshot's deletions");
    assert_eq!(segments(dir).len(), 3);
    assert_eq!(snapshot_files(dir).len(), 2);
    // The newer deletions first, on another thread; then the older ones,
    // which find nothing of theirs left and touch nothing newer.
    std::thread::spawn(move || newer.run())
        .join()
        .unwrap()
        .unwrap();
    cleanup.run().unwrap();
    assert_eq!(segments(dir), vec![storage.segment_path().to_path_buf()]);
    assert_only_snapshot(dir, Some(7));
    drop(storage);
    let (_, mut r) = open(dir);
    reference.check(&mut r);

    // The copy taken before the first sync: the new segment never reached
    // the disk, so the older one, ending with the snapshot's record, is
    // replayed; the empty segment and the older files go at open.
    let mut before_sync = Reference::default();
    for step in &steps {
        before_sync.apply(step);
    }
    let (storage, mut r) = open(crashed.path());
    before_sync.check(&mut r);
    assert_eq!(
        segments(crashed.path()),
        vec![storage.segment_path().to_path_buf()]
    );
    assert_only_snapshot(crashed.path(), Some(3));
}

/// `zero_ahead` writes zeros (data, not a hole) ahead of the records once
/// fewer than half of `ZERO_AHEAD` are left, and nothing otherwise; records
/// then go over them, and every reopening (after rotations by snapshots
/// too) recovers what was written, the zeros read as the end of the records.
#[test]
fn zeros_written_ahead_hold_the_next_records_and_read_as_the_end() {
    use std::os::unix::fs::MetadataExt as _;
    for seed in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut rng = SplitMix64::new(seed + 40);
        let mut reference = Reference::default();
        let (mut storage, _) = open(dir);
        let (mut wrote, mut skipped) = (0, 0);
        for id in 0..100 {
            let p = random_persist(&mut rng, &reference.state, id);
            append(&mut storage, &p);
            // Records appended but not written (a snapshot's write is
            // synced by `append` itself): it waits.
            if !p.persist.is_barrier() && p.persist.snapshot.is_none() {
                assert!(!storage.zero_ahead().unwrap(), "seed {seed} step {id}");
            }
            storage.sync().unwrap();
            reference.apply(&p);
            let records = storage.raft_state_bytes() as u64;
            if storage.zero_ahead().unwrap() {
                wrote += 1;
                let seg = storage.segment_path().to_path_buf();
                let meta = fs::metadata(&seg).unwrap();
                assert!(meta.len() >= records + raft_storage::ZERO_AHEAD);
                // Allocated on disk: data blocks, not a hole.
                assert!(meta.blocks() * 512 >= records + raft_storage::ZERO_AHEAD);
                assert!(fs::read(&seg).unwrap()[records as usize..]
                    .iter()
                    .all(|&b| b == 0));
                // Due again only after half of them are used.
                assert!(!storage.zero_ahead().unwrap());
            } else {
                skipped += 1;
            }
            drop(storage);
            let (s, mut r) = open(dir);
            reference.check(&mut r);
            assert_eq!(r.truncated_torn_tail, None);
            assert_eq!(s.raft_state_bytes() as u64, records);
            storage = s;
        }
        // A reopened store knows of no zeros ahead: the first call after
        // each reopening writes them.
        assert_eq!((wrote, skipped), (100, 0), "seed {seed}");
    }
    // Without reopening, the zeros are written once per half of ZERO_AHEAD.
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    let mut reference = Reference::default();
    let mut index = 1;
    let mut wrote = 0;
    for _ in 0..400 {
        let step = Step {
            persist: Persist {
                entries: (index..index + 4).map(|i| entry(i, 1, 1000)).collect(),
                ..write(Some((1, None)), None, None, 0..0, 1).persist
            },
            data: None,
        };
        index += 4;
        append(&mut storage, &step);
        storage.sync().unwrap();
        reference.apply(&step);
        wrote += usize::from(storage.zero_ahead().unwrap());
    }
    let records = storage.raft_state_bytes() as u64;
    let expected = records / (raft_storage::ZERO_AHEAD / 2);
    assert!(
        (expected as usize..=expected as usize + 1).contains(&wrote),
        "{wrote} zero fills for {records} bytes of records"
    );
    drop(storage);
    let (_s, mut r) = open(tmp.path());
    reference.check(&mut r);
    assert_eq!(r.state.entries.len(), 1600);
}
