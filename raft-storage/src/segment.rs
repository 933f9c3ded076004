//! Log segments: `log.<n>` files of a 12-byte header (magic, format version)
//! then records; reading one replays its records into a [`DurableState`]
//! with [`DurableState::try_apply`].

use std::borrow::Cow;
use std::path::Path;

use raft_core::{DurableState, DurableWrite};

use crate::record::{
    all_zero, decode_record, read_record, read_u32, Frame, Record, RECORD_HEADER_LEN,
};
use crate::StorageError;

/// The magic at the start of every log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVLOG\0\0";
/// The format version of the segments this version writes: 3, where an
/// entry carries a payload (a command, a no-op or a configuration) and a
/// snapshot boundary the configuration in force there.
pub const FORMAT_VERSION: u32 = 3;
/// An older segment format still read: 2, like 3 but a snapshot boundary
/// records no configuration. Recovery replays such a segment and starts a
/// new one in the current format before writing anything.
pub const UNRECORDED_CONFIG_FORMAT_VERSION: u32 = 2;
/// The oldest segment format still read: 1, where an entry carried only
/// command bytes (an empty command was a leader's no-op), and boundaries
/// no configuration. Recovered like version 2.
pub const LEGACY_FORMAT_VERSION: u32 = 1;
/// The length of a segment header: magic and version.
pub const SEGMENT_HEADER_LEN: usize = 12;

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("log.{seq:08}")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("log.")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

pub(crate) fn push_segment_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&SEGMENT_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
}

/// The outcome of reading one segment.
pub(crate) enum Scan {
    /// The segment's header (or opening checkpoint) is missing or torn.
    TornStart,
    /// The segment replayed.
    Valid(Replay),
}

pub(crate) struct Replay {
    pub(crate) state: DurableState,
    /// Where the records end (before a torn record, if any, and before
    /// the zeros of the preallocated space).
    pub(crate) valid_len: u64,
    /// Where a torn final record starts, to be cut off.
    pub(crate) torn_at: Option<u64>,
    /// The segment's format version.
    pub(crate) version: u32,
}

/// Reads a segment: checks its header and replays its records.
/// `needs_checkpoint`: the first record must be a checkpoint (every segment
/// but `log.1`).
pub(crate) fn scan_segment(
    path: &Path,
    bytes: &[u8],
    needs_checkpoint: bool,
) -> Result<Scan, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    // A header cut short, in any format (a crash while creating it): a
    // prefix of a header, then nothing or only zeros (the file's size
    // reached the disk, not all of its data).
    let torn_header = [
        FORMAT_VERSION,
        UNRECORDED_CONFIG_FORMAT_VERSION,
        LEGACY_FORMAT_VERSION,
    ]
    .iter()
    .any(|v| {
        let mut header = SEGMENT_MAGIC.to_vec();
        header.extend_from_slice(&v.to_le_bytes());
        let k = header.iter().zip(bytes).take_while(|(a, b)| a == b).count();
        k < SEGMENT_HEADER_LEN && all_zero(&bytes[k..])
    });
    if torn_header {
        return Ok(Scan::TornStart);
    }
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(corrupt(0, "bad segment header".into()));
    }
    if all_zero(bytes) {
        return Ok(Scan::TornStart);
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt(0, "bad segment magic".into()));
    }
    let version = read_u32(bytes, 8);
    if ![
        FORMAT_VERSION,
        UNRECORDED_CONFIG_FORMAT_VERSION,
        LEGACY_FORMAT_VERSION,
    ]
    .contains(&version)
    {
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
        let payload = match read_record(&bytes[offset..]) {
            Frame::Ok(payload) => payload,
            // The preallocated space after the last record.
            Frame::End => break,
            Frame::Torn if first && needs_checkpoint => return Ok(Scan::TornStart),
            Frame::Torn => {
                torn_at = Some(offset as u64);
                break;
            }
            Frame::Bad(reason) => return Err(corrupt(offset, reason)),
        };
        let record = decode_record(payload, version).map_err(|reason| corrupt(offset, reason))?;
        match record {
            Record::Checkpoint(checkpoint) => {
                if !first {
                    return Err(corrupt(
                        offset,
                        "checkpoint record after the start of the segment".into(),
                    ));
                }
                checkpoint
                    .check()
                    .map_err(|e| corrupt(offset, format!("checkpoint: {e}")))?;
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
                let write = DurableWrite {
                    hard_state,
                    snapshot,
                    truncate_from,
                    entries: Cow::Owned(entries),
                };
                state
                    .try_apply(write)
                    .map_err(|e| corrupt(offset, e.to_string()))?;
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
        valid_len: offset.min(bytes.len()) as u64,
        torn_at,
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
