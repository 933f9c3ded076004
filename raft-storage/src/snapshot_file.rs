//! The snapshot file: `magic "RKVSNAP\0" | u32 version | u32 header length |
//! u32 crc32 of header | header | data`, written to a temporary name,
//! fsynced, renamed into place and the directory fsynced.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use raft_core::{HardState, Index, Snapshot, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::fsutil::sync_dir;
use crate::record::read_u32;
/// The snapshot file's format version: 2, whose header records the
/// configuration in force at the snapshot's last index.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The older snapshot format still read: 1, whose header recorded no
/// configuration (read as none recorded: the node's initial one applies).
pub const LEGACY_SNAPSHOT_FORMAT_VERSION: u32 = 1;
use crate::StorageError;

/// The magic at the start of the snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP\0";
/// The name of the snapshot file.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The name of the snapshot file being written.
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";

/// The fixed part of the snapshot file: magic, version, header length, crc.
const SNAPSHOT_PREFIX_LEN: usize = 20;
/// The largest snapshot header accepted (it is a few dozen bytes).
const MAX_SNAPSHOT_HEADER_LEN: usize = 4096;

/// The variable header of the snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) meta: SnapshotMeta,
    pub(crate) hard_state: Option<HardState>,
    pub(crate) truncate_from: Option<Index>,
    data_len: u64,
    data_crc: u32,
}

/// The header as snapshot format version 1 stored it.
#[derive(Deserialize)]
struct LegacySnapshotHeader {
    index: Index,
    term: u64,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    data_len: u64,
    data_crc: u32,
}

impl From<LegacySnapshotHeader> for SnapshotHeader {
    fn from(h: LegacySnapshotHeader) -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta::at(h.index, h.term),
            hard_state: h.hard_state,
            truncate_from: h.truncate_from,
            data_len: h.data_len,
            data_crc: h.data_crc,
        }
    }
}

/// A verified snapshot file.
pub(crate) struct SnapshotFile {
    pub(crate) header: SnapshotHeader,
    pub(crate) data: Vec<u8>,
}

pub(crate) fn write_snapshot_file(
    dir: &Path,
    snapshot: &Snapshot,
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
) -> Result<(), StorageError> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let dst = dir.join(SNAPSHOT_FILE);
    let header = SnapshotHeader {
        meta: snapshot.meta.clone(),
        hard_state,
        truncate_from,
        data_len: snapshot.data.len() as u64,
        data_crc: crc32fast::hash(&snapshot.data),
    };
    let header = postcard::to_allocvec(&header).expect("encoding into a Vec cannot fail");
    let mut prefix = Vec::with_capacity(SNAPSHOT_PREFIX_LEN + header.len());
    prefix.extend_from_slice(&SNAPSHOT_MAGIC);
    prefix.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
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

pub(crate) fn read_snapshot_file(path: &Path) -> Result<SnapshotFile, StorageError> {
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
    if version != SNAPSHOT_FORMAT_VERSION && version != LEGACY_SNAPSHOT_FORMAT_VERSION {
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
    let decoded = if version == LEGACY_SNAPSHOT_FORMAT_VERSION {
        postcard::take_from_bytes::<LegacySnapshotHeader>(header_bytes)
            .map(|(h, rest)| (SnapshotHeader::from(h), rest))
    } else {
        postcard::take_from_bytes::<SnapshotHeader>(header_bytes)
    };
    let header = match decoded {
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
