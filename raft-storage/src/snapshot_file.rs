//! Snapshot files, written and read as streams.
//!
//! Version 3 (written): `magic "RKVSNAP\0" | u32 version | u32 meta length |
//! meta (postcard SnapshotMeta) | u64 data length | u32 crc32 of data |
//! u32 crc32 of every byte before it | data`. A [`SnapshotWriter`] writes
//! the data as it comes (computing its crc), then fills in the length and
//! the crcs, fsyncs, renames the file from its temporary name to
//! [`snapshot_file_name`] and fsyncs the directory. Such a file is *staged*:
//! it becomes the node's snapshot when a `Persist` naming its index is
//! durable in the log ([`crate::Storage::append`]).
//!
//! Versions 1 and 2 (read): the single file `snapshot`, `magic | u32
//! version | u32 header length | u32 crc32 of header | header | data`,
//! whose header also holds the data's length and crc and the hard state
//! and truncation of the `Persist` that brought it (see the crate docs).
//!
//! A [`SnapshotReader`] streams a file's data in either format and fails
//! at the end of the data if its crc does not match.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use raft_core::{HardState, Index, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::fsutil::sync_dir;
/// The snapshot file format written: 3, a staged file per index whose
/// length and crcs follow the configuration (see the module docs).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The format of the single `snapshot` file of earlier versions: 2, whose
/// header records the configuration in force at the snapshot's last index.
pub const SINGLE_FILE_SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The older snapshot format still read: 1, whose header recorded no
/// configuration (read as none recorded: the node's initial one applies).
pub const LEGACY_SNAPSHOT_FORMAT_VERSION: u32 = 1;
use crate::StorageError;

/// The magic at the start of the snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP\0";
/// The name of the single snapshot file of formats 1 and 2 (still read).
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The name of that file while it was written (deleted at open).
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";

/// The fixed part of a format 1 or 2 file: magic, version, header length, crc.
const SNAPSHOT_PREFIX_LEN: usize = 20;
/// The largest snapshot header accepted (it is a few dozen bytes, plus the
/// configuration).
const MAX_SNAPSHOT_HEADER_LEN: usize = 1 << 20;

/// The name of the staged snapshot file through `index`:
/// `snapshot.<index, 20 digits>`.
pub fn snapshot_file_name(index: Index) -> String {
    format!("snapshot.{index:020}")
}

/// The index a staged snapshot file's name gives, if it is one.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<Index> {
    let digits = name.strip_prefix("snapshot.")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// True for a temporary file of a snapshot being written.
pub(crate) fn is_snapshot_tmp_name(name: &str) -> bool {
    name == SNAPSHOT_TMP_FILE || (name.starts_with("snapshot.") && name.ends_with(".tmp"))
}

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

/// Writes a staged snapshot file as a stream (see the module docs): create
/// it, write the service's bytes (any number of `write`s), then
/// [`SnapshotWriter::finish`]. Dropped unfinished, it leaves a temporary
/// file that the next open deletes.
#[derive(Debug)]
pub struct SnapshotWriter {
    file: io::BufWriter<File>,
    tmp: PathBuf,
    dst: PathBuf,
    dir: PathBuf,
    /// Where the data length field is.
    len_at: u64,
    /// The bytes before the length field (for the header crc).
    prefix: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    /// Bytes handed to the file since its last `fdatasync`.
    unsynced: u64,
    index: Index,
}

/// How much a [`SnapshotWriter`] writes between two `fdatasync`s of its
/// file. Without them the whole snapshot would sit in the page cache until
/// `finish` and then go to the disk at once, and every fsync of the log
/// meanwhile waits behind it: the log's writes queue behind tens of MB of
/// writeback, and its flush of the disk's write cache covers that data too
/// (on ext4 with a journal, the journal commit an fsync forces can also
/// wait for the data of every file in it). Flushed as it goes, a log fsync
/// finds at most this much in front of it.
pub const SNAPSHOT_SYNC_EVERY: u64 = 1 << 20;

impl SnapshotWriter {
    /// Starts the staged file for the snapshot `meta` in `dir`, under a
    /// temporary name unique to `tag` (writers of one index with different
    /// tags do not collide; the later rename wins).
    pub fn create(dir: &Path, meta: &SnapshotMeta, tag: &str) -> Result<Self, StorageError> {
        let dst = dir.join(snapshot_file_name(meta.index));
        let tmp = dir.join(format!("{}.{tag}.tmp", snapshot_file_name(meta.index)));
        let meta_bytes = postcard::to_allocvec(meta).expect("encoding into a Vec cannot fail");
        let mut prefix = Vec::with_capacity(16 + meta_bytes.len());
        prefix.extend_from_slice(&SNAPSHOT_MAGIC);
        prefix.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        let meta_len = u32::try_from(meta_bytes.len()).expect("a configuration under 4 GiB");
        prefix.extend_from_slice(&meta_len.to_le_bytes());
        prefix.extend_from_slice(&meta_bytes);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&prefix).map_err(io_err(&tmp))?;
        // Length and crcs, filled in by `finish`.
        file.write_all(&[0; 16]).map_err(io_err(&tmp))?;
        Ok(SnapshotWriter {
            file,
            len_at: prefix.len() as u64,
            prefix,
            tmp,
            dst,
            dir: dir.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            unsynced: 0,
            index: meta.index,
        })
    }

    /// Bytes of data written so far.
    pub fn data_len(&self) -> u64 {
        self.len
    }

    /// The crc32 of the data written so far.
    pub fn data_crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Fills in the length and crcs, fsyncs the file, renames it into
    /// place and fsyncs the directory: the snapshot is staged, durably.
    /// Returns its path.
    pub fn finish(self) -> Result<PathBuf, StorageError> {
        let SnapshotWriter {
            file,
            tmp,
            dst,
            dir,
            len_at,
            mut prefix,
            crc,
            len,
            ..
        } = self;
        let mut file = file
            .into_inner()
            .map_err(|e| io_err(&tmp)(e.into_error()))?;
        let mut tail = Vec::with_capacity(16);
        tail.extend_from_slice(&len.to_le_bytes());
        tail.extend_from_slice(&crc.finalize().to_le_bytes());
        prefix.extend_from_slice(&tail);
        tail.extend_from_slice(&crc32fast::hash(&prefix).to_le_bytes());
        file.seek(SeekFrom::Start(len_at)).map_err(io_err(&tmp))?;
        file.write_all(&tail[..16]).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(&dir)?;
        Ok(dst)
    }

    /// Gives up: deletes the temporary file (a transfer that broke).
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = fs::remove_file(tmp);
    }

    /// The index of the snapshot being written.
    pub fn index(&self) -> Index {
        self.index
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_EVERY {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A snapshot file's data as a stream, in any format, checked against its
/// crc: the read that reaches the end fails (`InvalidData`) on a mismatch,
/// and so does a file shorter than its header says.
#[derive(Debug)]
pub struct SnapshotReader {
    data: io::Take<BufReader<File>>,
    path: PathBuf,
    meta: SnapshotMeta,
    len: u64,
    expected_crc: u32,
    crc: crc32fast::Hasher,
    pub(crate) hard_state: Option<HardState>,
    pub(crate) truncate_from: Option<Index>,
}

impl SnapshotReader {
    /// Opens the snapshot file at `path` and checks its header.
    pub fn open(path: &Path) -> Result<SnapshotReader, StorageError> {
        let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut fixed = [0u8; 12];
        r.read_exact(&mut fixed)
            .map_err(|_| corrupt(0, "snapshot file shorter than its header".into()))?;
        if fixed[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt(0, "bad snapshot magic".into()));
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        let mut word = [0u8; 4];
        let mut read_u32 = |r: &mut BufReader<File>, at: u64| -> Result<u32, StorageError> {
            r.read_exact(&mut word)
                .map_err(|_| corrupt(at, "snapshot file shorter than its header".into()))?;
            Ok(u32::from_le_bytes(word))
        };
        let (header, data_start) = match version {
            SNAPSHOT_FORMAT_VERSION => {
                let meta_len = read_u32(&mut r, 12)? as usize;
                if meta_len > MAX_SNAPSHOT_HEADER_LEN {
                    return Err(corrupt(12, format!("bad snapshot meta length {meta_len}")));
                }
                let mut rest = vec![0; meta_len + 16];
                r.read_exact(&mut rest)
                    .map_err(|_| corrupt(16, "snapshot file shorter than its header".into()))?;
                let mut prefix = fixed.to_vec();
                prefix.extend_from_slice(&(meta_len as u32).to_le_bytes());
                prefix.extend_from_slice(&rest[..meta_len + 12]);
                let header_crc =
                    u32::from_le_bytes(rest[meta_len + 12..].try_into().expect("4 bytes"));
                if crc32fast::hash(&prefix) != header_crc {
                    return Err(corrupt(16, "snapshot header checksum mismatch".into()));
                }
                let meta: SnapshotMeta = match postcard::take_from_bytes(&rest[..meta_len]) {
                    Ok((meta, [])) => meta,
                    Ok(_) => return Err(corrupt(16, "undecoded bytes after the meta".into())),
                    Err(e) => return Err(corrupt(16, format!("undecodable snapshot meta: {e}"))),
                };
                let tail = &rest[meta_len..];
                let data_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
                let data_crc = u32::from_le_bytes(tail[8..12].try_into().expect("4 bytes"));
                let header = SnapshotHeader {
                    meta,
                    hard_state: None,
                    truncate_from: None,
                    data_len,
                    data_crc,
                };
                (header, 16 + meta_len as u64 + 16)
            }
            SINGLE_FILE_SNAPSHOT_FORMAT_VERSION | LEGACY_SNAPSHOT_FORMAT_VERSION => {
                let header_len = read_u32(&mut r, 12)? as usize;
                let header_crc = read_u32(&mut r, 16)?;
                if header_len > MAX_SNAPSHOT_HEADER_LEN {
                    return Err(corrupt(
                        12,
                        format!("bad snapshot header length {header_len}"),
                    ));
                }
                let mut bytes = vec![0; header_len];
                r.read_exact(&mut bytes)
                    .map_err(|_| corrupt(12, format!("bad snapshot header length {header_len}")))?;
                if crc32fast::hash(&bytes) != header_crc {
                    return Err(corrupt(
                        SNAPSHOT_PREFIX_LEN as u64,
                        "snapshot header checksum mismatch".into(),
                    ));
                }
                let decoded = if version == LEGACY_SNAPSHOT_FORMAT_VERSION {
                    postcard::take_from_bytes::<LegacySnapshotHeader>(&bytes)
                        .map(|(h, rest)| (SnapshotHeader::from(h), rest))
                } else {
                    postcard::take_from_bytes::<SnapshotHeader>(&bytes)
                };
                let header = match decoded {
                    Ok((header, [])) => header,
                    Ok(_) => {
                        return Err(corrupt(
                            SNAPSHOT_PREFIX_LEN as u64,
                            "undecoded bytes after the snapshot header".into(),
                        ))
                    }
                    Err(e) => {
                        return Err(corrupt(
                            SNAPSHOT_PREFIX_LEN as u64,
                            format!("undecodable snapshot header: {e}"),
                        ))
                    }
                };
                (header, (SNAPSHOT_PREFIX_LEN + header_len) as u64)
            }
            other => {
                return Err(corrupt(
                    8,
                    format!("unsupported snapshot format version {other}"),
                ));
            }
        };
        if file_len.checked_sub(data_start) != Some(header.data_len) {
            return Err(corrupt(
                data_start,
                format!(
                    "snapshot data is {} bytes, the header says {}",
                    file_len.saturating_sub(data_start),
                    header.data_len
                ),
            ));
        }
        Ok(SnapshotReader {
            data: r.take(header.data_len),
            path: path.to_path_buf(),
            meta: header.meta,
            len: header.data_len,
            expected_crc: header.data_crc,
            crc: crc32fast::Hasher::new(),
            hard_state: header.hard_state,
            truncate_from: header.truncate_from,
        })
    }

    /// Where the snapshot ends in the log, and its configuration.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The data's length in bytes.
    pub fn data_len(&self) -> u64 {
        self.len
    }

    /// The crc32 of the whole data, as recorded.
    pub fn data_crc(&self) -> u32 {
        self.expected_crc
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole data into memory, checked (tests, small snapshots).
    pub fn read_all(mut self) -> Result<Vec<u8>, StorageError> {
        let mut data = Vec::new();
        self.read_to_end(&mut data)
            .map_err(|e| io_err(&self.path)(e))?;
        Ok(data)
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        self.crc.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            if self.data.limit() != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: snapshot data cut short", self.path.display()),
                ));
            }
            if self.crc.clone().finalize() != self.expected_crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: snapshot data checksum mismatch", self.path.display()),
                ));
            }
        }
        Ok(n)
    }
}
