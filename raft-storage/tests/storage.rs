//! Durable storage: round trips against `DurableState::apply`, group commit,
//! torn tails, corruption, crashes during a rotation, snapshot files.

use std::fs;
use std::path::{Path, PathBuf};

use raft_core::{
    DurableState, Entry, HardState, Index, Persist, Snapshot, SnapshotMeta, SplitMix64,
};
use raft_core::{Membership, Payload};
use raft_storage::{
    segment_file_name, Recovered, Storage, StorageError, MAX_RECORD_LEN, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE,
};

fn entry(index: Index, term: u64, size: usize) -> Entry {
    let mut command = index.to_le_bytes().to_vec();
    command.resize(size.max(8), 0xAB);
    Entry {
        index,
        term,
        payload: Payload::Command(command),
    }
}

/// A write: optional hard state, snapshot, truncation, entries `from..to`.
fn write(
    hard_state: Option<(u64, Option<u64>)>,
    snapshot: Option<(Index, u64, &[u8])>,
    truncate_from: Option<Index>,
    entries: std::ops::Range<Index>,
    term: u64,
) -> Persist {
    Persist {
        id: 0,
        hard_state: hard_state.map(|(term, voted_for)| HardState { term, voted_for }),
        snapshot: snapshot.map(|(index, term, data)| Snapshot {
            meta: SnapshotMeta::at(index, term),
            data: data.to_vec(),
        }),
        truncate_from,
        entries: entries.map(|i| entry(i, term, 8)).collect(),
        then_send: Vec::new(),
    }
}

/// The reference: `DurableState::apply` plus the latest snapshot bytes.
#[derive(Clone, Default)]
struct Reference {
    state: DurableState,
    snapshot: Option<Vec<u8>>,
}

impl Reference {
    fn apply(&mut self, p: &Persist) {
        if let Some(data) = self.state.apply(p) {
            self.snapshot = Some(data);
        }
    }

    fn check(&self, r: &Recovered) {
        assert_eq!(r.state, self.state);
        assert_eq!(r.snapshot, self.snapshot);
        assert_eq!(r.snapshot.is_some(), r.state.snapshot.is_some());
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

/// A random write that continues `state`, shaped like the core's: hard
/// state changes, appends, truncations, snapshots taken inside the log or
/// installed beyond it.
fn random_persist(rng: &mut SplitMix64, state: &DurableState, id: u64) -> Persist {
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
        let data = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect();
        p.snapshot = Some(Snapshot {
            meta: SnapshotMeta {
                index,
                term: snap_term,
                membership: Membership::with_voters([1, 2, 3]),
            },
            data,
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
    p
}

#[test]
fn a_new_directory_recovers_the_empty_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let (storage, r) = open(&dir);
    assert_eq!(r.state, DurableState::default());
    assert_eq!(r.snapshot, None);
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
            snapshots += usize::from(p.snapshot.is_some());
            storage.append(&p).unwrap();
            storage.sync().unwrap();
            reference.apply(&p);
            assert_eq!(storage.state(), &reference.state);
            let bytes = storage.raft_state_bytes();
            drop(storage);
            let (s, r) = open(dir);
            reference.check(&r);
            assert_eq!(r.truncated_torn_tail, None);
            assert_eq!(r.raft_state_bytes, bytes);
            assert_eq!(s.raft_state_bytes(), bytes);
            only_segment(dir);
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
            storage.append(&p).unwrap();
            reference.apply(&p);
        }
        storage.sync().unwrap();
        storage.sync().unwrap(); // nothing new: a no-op
        drop(storage);
        let (s, r) = open(dir);
        reference.check(&r);
        storage = s;
    }
}

#[test]
fn a_barrier_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    storage.append(&write(None, None, None, 1..3, 1)).unwrap();
    let before = storage.raft_state_bytes();
    storage.append(&write(None, None, None, 3..3, 1)).unwrap();
    storage.sync().unwrap();
    assert_eq!(storage.raft_state_bytes(), before);
}

/// A directory whose only segment is `log.1` (or `log.2` after a snapshot
/// when `rotated`) holding several writes; returns the references before
/// and after the last write.
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
        storage.append(p).unwrap();
        reference.apply(p);
    }
    // The last write replaces the last entry and adds two.
    let last = reference.state.last_index();
    let p = write(Some((4, Some(3))), None, Some(last), last..last + 3, 4);
    let before = reference.clone();
    storage.append(&p).unwrap();
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
        let bytes = fs::read(&seg).unwrap();
        let last = *record_offsets(&bytes).last().unwrap();
        for cut in last..=bytes.len() {
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(src.path(), tmp.path());
            let path = tmp.path().join(&name);
            fs::write(&path, &bytes[..cut]).unwrap();
            let (storage, r) = open(tmp.path());
            if cut == bytes.len() {
                after.check(&r);
                assert_eq!(r.truncated_torn_tail, None);
                continue;
            }
            before.check(&r);
            if cut == last {
                assert_eq!(r.truncated_torn_tail, None);
            } else {
                assert_eq!(r.truncated_torn_tail, Some((path.clone(), last as u64)));
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64);
            assert_eq!(r.raft_state_bytes, last);
            drop(storage);
            let (_, r) = open(tmp.path());
            before.check(&r);
            assert_eq!(r.truncated_torn_tail, None);
        }
    }
}

#[test]
fn a_final_record_with_a_bad_checksum_or_a_zero_filled_tail_is_torn() {
    let src = tempfile::tempdir().unwrap();
    let (before, after) = build(src.path(), false);
    let seg = only_segment(src.path());
    let bytes = fs::read(&seg).unwrap();
    let last = *record_offsets(&bytes).last().unwrap();

    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    fs::write(&seg, &flipped).unwrap();
    let (storage, r) = open(src.path());
    before.check(&r);
    assert_eq!(r.truncated_torn_tail, Some((seg.clone(), last as u64)));
    drop(storage);

    let mut zeros = bytes.clone();
    zeros.extend_from_slice(&[0; 4096]);
    fs::write(&seg, &zeros).unwrap();
    let (storage, r) = open(src.path());
    after.check(&r);
    assert_eq!(
        r.truncated_torn_tail,
        Some((seg.clone(), bytes.len() as u64))
    );
    drop(storage);
    assert_eq!(fs::read(&seg).unwrap(), bytes);
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
    let bytes = fs::read(&seg).unwrap();
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
            assert_eq!(fs::read(&path).unwrap(), &bytes[..at]);
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
        let bytes = fs::read(&seg).unwrap();
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
                assert_eq!(fs::read(&path).unwrap(), damaged);
            }
        }
    }
}

#[test]
fn an_oversized_length_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), false);
    let seg = only_segment(src.path());
    let bytes = fs::read(&seg).unwrap();
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
    let mut bytes = fs::read(&seg).unwrap();
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
    let mut bytes = fs::read(&seg).unwrap();
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
    let bytes = fs::read(&seg).unwrap();
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
        storage.append(&write(None, None, None, 1..3, 1)).unwrap();
        storage.sync().unwrap();
        drop(storage);
        let (_, r) = open(tmp.path());
        assert_eq!(r.state.last_index(), 2);
    }
}

/// Writes before a snapshot, the saved `log.1` from before it, and the
/// directory after the snapshot write (whose rotation produced `log.2`).
struct RotationCase {
    dir: tempfile::TempDir,
    log1: Vec<u8>,
    log2: Vec<u8>,
    after: Reference,
}

fn rotation_case() -> RotationCase {
    let dir = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(dir.path());
    let mut reference = Reference::default();
    for p in [
        write(Some((1, Some(1))), None, None, 1..8, 1),
        write(Some((2, Some(2))), None, None, 8..11, 2),
    ] {
        storage.append(&p).unwrap();
        reference.apply(&p);
    }
    storage.sync().unwrap();
    let log1 = fs::read(dir.path().join(segment_file_name(1))).unwrap();
    // As an InstallSnapshot from a new leader would: new term, a snapshot
    // inside the log whose term differs, the rest of the log dropped.
    let p = write(
        Some((5, None)),
        Some((6, 4, b"snapshot six")),
        Some(7),
        7..7,
        0,
    );
    storage.append(&p).unwrap();
    reference.apply(&p);
    assert_eq!(reference.state.entries, vec![]);
    assert_eq!(
        only_segment(dir.path()),
        dir.path().join(segment_file_name(2))
    );
    let log2 = fs::read(dir.path().join(segment_file_name(2))).unwrap();
    RotationCase {
        dir,
        log1,
        log2,
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
    let variants: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("empty", case.log1.clone(), vec![]),
        ("half header", case.log1.clone(), case.log2[..5].to_vec()),
        (
            "header only",
            case.log1.clone(),
            case.log2[..SEGMENT_HEADER_LEN].to_vec(),
        ),
        (
            "half checkpoint",
            case.log1.clone(),
            case.log2[..case.log2.len() / 2 + 6].to_vec(),
        ),
        ("checkpoint crc", case.log1.clone(), flipped),
        ("zeros", case.log1.clone(), zeros),
        ("complete", case.log1.clone(), case.log2.clone()),
    ];
    for (what, log1, log2) in variants {
        let tmp = tempfile::tempdir().unwrap();
        fs::copy(
            case.dir.path().join(SNAPSHOT_FILE),
            tmp.path().join(SNAPSHOT_FILE),
        )
        .unwrap();
        fs::write(tmp.path().join(segment_file_name(1)), &log1).unwrap();
        fs::write(tmp.path().join(segment_file_name(2)), &log2).unwrap();
        let (mut storage, r) = open(tmp.path());
        case.after.check(&r);
        assert_eq!(r.truncated_torn_tail, None, "{what}");
        // The log now records the snapshot in a fresh log.2.
        let seg = only_segment(tmp.path());
        assert_eq!(seg, tmp.path().join(segment_file_name(2)), "{what}");
        assert_eq!(fs::read(&seg).unwrap(), case.log2, "{what}");
        // Later writes are not undone by the snapshot's write on reopen.
        let mut reference = case.after.clone();
        let p = write(Some((6, Some(3))), None, None, 7..9, 6);
        storage.append(&p).unwrap();
        storage.sync().unwrap();
        reference.apply(&p);
        drop(storage);
        let (_, r) = open(tmp.path());
        reference.check(&r);
    }
}

#[test]
fn a_torn_tail_in_the_previous_segment_is_cut_during_the_fallback() {
    let case = rotation_case();
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        case.dir.path().join(SNAPSHOT_FILE),
        tmp.path().join(SNAPSHOT_FILE),
    )
    .unwrap();
    let mut log1 = case.log1.clone();
    log1.extend_from_slice(&[40, 0, 0]);
    fs::write(tmp.path().join(segment_file_name(1)), &log1).unwrap();
    fs::write(
        tmp.path().join(segment_file_name(2)),
        &case.log2[..SEGMENT_HEADER_LEN + 3],
    )
    .unwrap();
    let (_, r) = open(tmp.path());
    case.after.check(&r);
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

#[test]
fn a_snapshot_newer_than_the_log_is_applied() {
    let case = rotation_case();
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        case.dir.path().join(SNAPSHOT_FILE),
        tmp.path().join(SNAPSHOT_FILE),
    )
    .unwrap();
    // The snapshot was renamed into place, the log record never made it.
    fs::write(tmp.path().join(segment_file_name(1)), &case.log1).unwrap();
    let (_, r) = open(tmp.path());
    case.after.check(&r);
    assert_eq!(
        only_segment(tmp.path()),
        tmp.path().join(segment_file_name(2))
    );

    // And a second snapshot over a rotated log.
    let (mut storage, _) = open(tmp.path());
    let mut reference = case.after.clone();
    let p = write(None, None, None, 7..12, 5);
    storage.append(&p).unwrap();
    storage.sync().unwrap();
    reference.apply(&p);
    let saved = fs::read(storage.segment_path()).unwrap();
    let saved_path = storage.segment_path().to_path_buf();
    let p = write(Some((7, Some(1))), Some((9, 5, b"nine")), None, 12..13, 7);
    storage.append(&p).unwrap();
    reference.apply(&p);
    drop(storage);
    for seg in segments(tmp.path()) {
        fs::remove_file(seg).unwrap();
    }
    fs::write(&saved_path, &saved).unwrap();
    let mut expected = reference.clone();
    expected.state.entries.retain(|e| e.index < 12); // never acknowledged
    let (_, r) = open(tmp.path());
    expected.check(&r);
}

#[test]
fn a_leftover_snapshot_tmp_is_ignored_and_deleted() {
    let src = tempfile::tempdir().unwrap();
    let (_, after) = build(src.path(), true);
    let tmp_file = src.path().join(SNAPSHOT_TMP_FILE);
    fs::write(&tmp_file, b"half a snapshot").unwrap();
    let (_, r) = open(src.path());
    after.check(&r);
    assert!(!tmp_file.exists());
}

#[test]
fn a_damaged_snapshot_file_is_corruption() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), true);
    let path = src.path().join(SNAPSHOT_FILE);
    let bytes = fs::read(&path).unwrap();
    let data_at = bytes.len() - b"snap".len();

    let mut damaged = bytes.clone();
    *damaged.last_mut().unwrap() ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &path, data_at as u64, "checksum");

    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_corrupt(open_err(src.path()), &path, data_at as u64, "header says");

    let mut damaged = bytes.clone();
    damaged[0] ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &path, 0, "magic");

    let mut damaged = bytes.clone();
    damaged[21] ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt(open_err(src.path()), &path, 20, "header checksum");
}

#[test]
fn a_missing_snapshot_file_is_inconsistent() {
    let src = tempfile::tempdir().unwrap();
    build(src.path(), true);
    fs::remove_file(src.path().join(SNAPSHOT_FILE)).unwrap();
    match open_err(src.path()) {
        StorageError::Inconsistent { path, .. } => {
            assert_eq!(path, src.path().join(SNAPSHOT_FILE))
        }
        other => panic!("expected Inconsistent, got {other:?}"),
    }
}

#[test]
fn raft_state_bytes_shrink_after_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    for i in 0..200 {
        let p = Persist {
            entries: vec![entry(i + 1, 1, 100)],
            ..write(None, None, None, 0..0, 1)
        };
        storage.append(&p).unwrap();
    }
    storage.sync().unwrap();
    let big = storage.raft_state_bytes();
    assert!(big > 200 * 100, "{big}");
    storage
        .append(&write(None, Some((195, 1, b"state")), None, 0..0, 1))
        .unwrap();
    let small = storage.raft_state_bytes();
    assert!(small < 5 * 150, "{small}");
    assert_eq!(storage.state().entries.len(), 5);
    drop(storage);
    let (storage, r) = open(tmp.path());
    assert_eq!(r.raft_state_bytes, small);
    assert_eq!(storage.raft_state_bytes(), small);
    assert_eq!(r.snapshot.as_deref(), Some(&b"state"[..]));
}

#[test]
fn a_write_that_does_not_continue_the_log_is_refused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut storage, _) = open(tmp.path());
    storage.append(&write(None, None, None, 1..4, 1)).unwrap();
    let bytes = storage.raft_state_bytes();
    let err = storage
        .append(&write(None, None, None, 5..6, 1))
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidWrite(_)), "{err}");
    assert_eq!(storage.raft_state_bytes(), bytes);
    storage.append(&write(None, None, None, 4..6, 1)).unwrap();
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
        ..write(None, None, None, 0..0, 1)
    };
    let err = storage.append(&p).unwrap_err();
    assert!(matches!(err, StorageError::RecordTooLarge { .. }), "{err}");
    assert_eq!(storage.raft_state_bytes(), SEGMENT_HEADER_LEN);
    storage.append(&write(None, None, None, 1..2, 1)).unwrap();
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
                payload: Payload::Command(vec![id as u8]),
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
    let live = fs::read(storage.segment_path()).unwrap();
    assert_eq!(
        live[8..12],
        raft_storage::FORMAT_VERSION.to_le_bytes(),
        "the store continues in a new segment of the current format"
    );
    assert_ne!(
        storage.segment_path(),
        tmp.path().join(segment_file_name(1))
    );
    storage.append(&write(None, None, None, 3..4, 2)).unwrap();
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
