//! Log records: `u32 length | u32 crc32 of payload | payload`, the payload
//! being the postcard encoding of a record (a `Write` or a `Checkpoint`),
//! and how a damaged one is told apart from one a crash tore.

use raft_core::{DurableState, Entry, HardState, Index, Payload, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// The length of a record header: payload length and crc32.
pub const RECORD_HEADER_LEN: usize = 8;
/// The largest record payload written or accepted.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// A log record, as decoded.
#[derive(Deserialize)]
pub(crate) enum Record {
    Write {
        hard_state: Option<HardState>,
        snapshot: Option<SnapshotMeta>,
        truncate_from: Option<Index>,
        entries: Vec<Entry>,
    },
    Checkpoint(DurableState),
}

/// A snapshot boundary as format versions 1 and 2 stored it: no
/// configuration (it decodes as none recorded, so the node's initial
/// configuration applies).
#[derive(Deserialize)]
struct LegacyMeta {
    index: Index,
    term: u64,
}

impl From<LegacyMeta> for SnapshotMeta {
    fn from(m: LegacyMeta) -> SnapshotMeta {
        SnapshotMeta::at(m.index, m.term)
    }
}

/// An entry as format version 1 stored it: command bytes only.
#[derive(Deserialize)]
struct LegacyEntry {
    index: Index,
    term: u64,
    #[serde(with = "raft_core::bytes")]
    command: Vec<u8>,
}

impl From<LegacyEntry> for Entry {
    /// In version 1 an empty command was a leader's no-op (no service
    /// proposes an empty command).
    fn from(e: LegacyEntry) -> Entry {
        let payload = if e.command.is_empty() {
            Payload::Noop
        } else {
            Payload::Command(e.command.into())
        };
        Entry {
            index: e.index,
            term: e.term,
            payload,
        }
    }
}

/// A durable state as format versions 1 (`E = LegacyEntry`) and 2
/// (`E = Entry`) stored it.
#[derive(Deserialize)]
struct LegacyDurableState<E> {
    hard_state: HardState,
    snapshot: Option<LegacyMeta>,
    entries: Vec<E>,
}

/// A log record as format versions 1 (`E = LegacyEntry`) and 2
/// (`E = Entry`) stored it.
#[derive(Deserialize)]
enum LegacyRecord<E> {
    Write {
        hard_state: Option<HardState>,
        snapshot: Option<LegacyMeta>,
        truncate_from: Option<Index>,
        entries: Vec<E>,
    },
    Checkpoint(LegacyDurableState<E>),
}

impl<E: Into<Entry>> From<LegacyRecord<E>> for Record {
    fn from(r: LegacyRecord<E>) -> Record {
        let entries = |v: Vec<E>| v.into_iter().map(Into::into).collect();
        match r {
            LegacyRecord::Write {
                hard_state,
                snapshot,
                truncate_from,
                entries: e,
            } => Record::Write {
                hard_state,
                snapshot: snapshot.map(SnapshotMeta::from),
                truncate_from,
                entries: entries(e),
            },
            LegacyRecord::Checkpoint(s) => Record::Checkpoint(DurableState {
                hard_state: s.hard_state,
                snapshot: s.snapshot.map(SnapshotMeta::from),
                entries: entries(s.entries),
            }),
        }
    }
}

/// Decodes one record's payload written in segment format `version`
/// (1, 2 or 3); the reason it does not decode otherwise.
pub(crate) fn decode_record(payload: &[u8], version: u32) -> Result<Record, String> {
    fn whole<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
        match postcard::take_from_bytes::<T>(payload) {
            Ok((record, [])) => Ok(record),
            Ok((_, rest)) => Err(format!("{} undecoded bytes after the record", rest.len())),
            Err(e) => Err(format!("undecodable record: {e}")),
        }
    }
    if version == crate::segment::LEGACY_FORMAT_VERSION {
        whole::<LegacyRecord<LegacyEntry>>(payload).map(Record::from)
    } else if version == crate::segment::UNRECORDED_CONFIG_FORMAT_VERSION {
        whole::<LegacyRecord<Entry>>(payload).map(Record::from)
    } else {
        whole::<Record>(payload)
    }
}

/// A log record, as encoded: the same shape as [`Record`], borrowing.
#[derive(Serialize)]
pub(crate) enum RecordRef<'a> {
    Write {
        hard_state: Option<HardState>,
        snapshot: Option<SnapshotMeta>,
        truncate_from: Option<Index>,
        entries: &'a [Entry],
    },
    Checkpoint(&'a DurableState),
}

/// Appends `length | crc | payload` for `record` to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, record: &RecordRef<'_>) -> Result<(), StorageError> {
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

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The outcome of reading one record frame.
pub(crate) enum Frame<'a> {
    Ok(&'a [u8]),
    /// The records end here: zeros to the end of the file.
    End,
    Torn,
    Bad(String),
}

pub(crate) fn read_record(rest: &[u8]) -> Frame<'_> {
    // Nothing but zeros to the end of the file, from a record boundary: the
    // segment's preallocated space (or a group write of which only the
    // file's new size reached the disk; nothing acknowledged it). (A record
    // never starts with a zero length, so only then is the tail scanned.)
    if rest.len() < RECORD_HEADER_LEN {
        return if all_zero(rest) {
            Frame::End
        } else {
            Frame::Torn
        };
    }
    let len = read_u32(rest, 0) as usize;
    let crc = read_u32(rest, 4);
    if len == 0 {
        if all_zero(rest) {
            return Frame::End;
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

pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::Payload;

    fn entry(index: Index, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Command((index.to_le_bytes().to_vec()).into()),
        }
    }

    #[test]
    fn borrowed_and_owned_records_share_one_encoding() {
        let state = DurableState {
            hard_state: HardState {
                term: 3,
                voted_for: Some(2),
            },
            snapshot: Some(SnapshotMeta::at(4, 2)),
            entries: vec![entry(5, 3), entry(6, 3)],
        };
        let bytes = postcard::to_allocvec(&RecordRef::Checkpoint(&state)).unwrap();
        match postcard::from_bytes::<Record>(&bytes).unwrap() {
            Record::Checkpoint(s) => assert_eq!(s, state),
            Record::Write { .. } => panic!("wrong variant"),
        }
        let record = RecordRef::Write {
            hard_state: Some(state.hard_state),
            snapshot: state.snapshot.clone(),
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
        encode_record(&mut buf, &RecordRef::Checkpoint(&state)).unwrap();
        assert!(matches!(read_record(&buf), Frame::Ok(p) if p.len() + 8 == buf.len()));
        assert!(matches!(read_record(&[]), Frame::End));
        for cut in 1..buf.len() {
            assert!(matches!(read_record(&buf[..cut]), Frame::Torn), "cut {cut}");
        }
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(read_record(&flipped), Frame::Torn));
        flipped.push(0);
        assert!(matches!(read_record(&flipped), Frame::Bad(_)));
        // Zeros to the end: where the records end (preallocated space).
        assert!(matches!(read_record(&[0; 100]), Frame::End));
        assert!(matches!(read_record(&[0; 3]), Frame::End));
        let mut zero_len = vec![0; 100];
        zero_len[50] = 1;
        assert!(matches!(read_record(&zero_len), Frame::Bad(_)));
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_record(&huge), Frame::Bad(r) if r.contains("maximum")));
    }
}
