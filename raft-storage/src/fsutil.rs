//! Directory and file operations, each fsynced where the crash guarantees
//! need it.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use crate::error::io_err;
use crate::segment::{parse_segment_name, segment_file_name};
use crate::snapshot_file::{
    is_snapshot_tmp_name, parse_snapshot_name, snapshot_file_name, SNAPSHOT_FILE,
};
use crate::StorageError;

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Creates (or replaces) `path` with `bytes`, fsynced; returns the handle,
/// positioned at the end.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<File, StorageError> {
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

pub(crate) struct Listing {
    /// Segment numbers, ascending.
    pub(crate) segments: Vec<u64>,
    /// The single `snapshot` file of formats 1 and 2.
    pub(crate) snapshot: bool,
    /// Temporary snapshot files (a writer that never finished).
    pub(crate) snapshot_tmps: Vec<String>,
    /// Staged snapshot files, by index, ascending.
    pub(crate) staged: Vec<u64>,
}

pub(crate) fn list_dir(dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing {
        segments: Vec::new(),
        snapshot: false,
        snapshot_tmps: Vec::new(),
        staged: Vec::new(),
    };
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == SNAPSHOT_FILE {
            listing.snapshot = true;
        } else if is_snapshot_tmp_name(name) {
            listing.snapshot_tmps.push(name.to_string());
        } else if let Some(index) = parse_snapshot_name(name) {
            listing.staged.push(index);
        } else if let Some(seq) = parse_segment_name(name) {
            listing.segments.push(seq);
        }
    }
    listing.segments.sort_unstable();
    listing.staged.sort_unstable();
    Ok(listing)
}

/// Deletes every snapshot file older than `index` (the staged ones below
/// it and the single file of the earlier formats); true if any was.
pub(crate) fn remove_snapshots_before(dir: &Path, index: u64) -> Result<bool, StorageError> {
    let listing = list_dir(dir)?;
    let mut names: Vec<String> = listing
        .staged
        .iter()
        .filter(|&&i| i < index)
        .map(|&i| snapshot_file_name(i))
        .collect();
    if listing.snapshot {
        names.push(SNAPSHOT_FILE.to_string());
    }
    let mut removed = false;
    for name in names {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(removed)
}

/// Deletes every segment numbered below `first`; true if any was deleted.
pub(crate) fn remove_segments_before(dir: &Path, first: u64) -> Result<bool, StorageError> {
    remove_segments_where(dir, |seq| seq < first)
}

/// Deletes every segment but `keep`; true if any was deleted.
pub(crate) fn remove_segments_except(dir: &Path, keep: u64) -> Result<bool, StorageError> {
    remove_segments_where(dir, |seq| seq != keep)
}

fn remove_segments_where(dir: &Path, doomed: impl Fn(u64) -> bool) -> Result<bool, StorageError> {
    let mut removed = false;
    for seq in list_dir(dir)?.segments {
        if doomed(seq) {
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
