//! Who a data directory belongs to: the `owner` file, written when a node
//! first opens the directory with [`Storage::open_owned`] and checked on
//! every later open, so that a directory is never recovered by another node
//! or another cluster (a mix-up of `--data-dir` would otherwise hand one
//! node another's votes and log).
//!
//! Format: `magic "RKVOWNER" | u32 version (1) | u64 node id | u64 cluster id
//! | u32 crc32 of the preceding 28 bytes`, little-endian, 32 bytes. Written
//! to `owner.tmp`, fsynced, renamed, the directory fsynced.

use std::fs;
use std::path::Path;

use raft_core::NodeId;

use crate::error::io_err;
use crate::fsutil::{sync_dir, write_new_file};
use crate::record::read_u32;
use crate::{Recovered, Storage, StorageError};

/// The name of the owner file.
pub const OWNER_FILE: &str = "owner";
const OWNER_TMP_FILE: &str = "owner.tmp";
const OWNER_MAGIC: [u8; 8] = *b"RKVOWNER";
const OWNER_VERSION: u32 = 1;
const OWNER_LEN: usize = 32;

/// Who a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The node's id.
    pub node_id: NodeId,
    /// Its cluster's id.
    pub cluster_id: u64,
}

impl Owner {
    fn encode(self) -> [u8; OWNER_LEN] {
        let mut out = [0; OWNER_LEN];
        out[..8].copy_from_slice(&OWNER_MAGIC);
        out[8..12].copy_from_slice(&OWNER_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.node_id.to_le_bytes());
        out[20..28].copy_from_slice(&self.cluster_id.to_le_bytes());
        let crc = crc32fast::hash(&out[..28]);
        out[28..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Owner, StorageError> {
        let corrupt = |offset: u64, reason: &str| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.to_string(),
        };
        if bytes.len() != OWNER_LEN {
            return Err(corrupt(0, "the owner file is not 32 bytes long"));
        }
        if bytes[..8] != OWNER_MAGIC {
            return Err(corrupt(0, "bad owner magic"));
        }
        if read_u32(bytes, 8) != OWNER_VERSION {
            return Err(corrupt(8, "unsupported owner format version"));
        }
        if crc32fast::hash(&bytes[..28]) != read_u32(bytes, 28) {
            return Err(corrupt(28, "owner checksum mismatch"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Owner {
            node_id: u64_at(12),
            cluster_id: u64_at(20),
        })
    }
}

impl Storage {
    /// [`Storage::open`] for `owner` only: the first open records the owner
    /// in the directory, later ones refuse the directory
    /// ([`StorageError::WrongOwner`]) if it belongs to another node or
    /// cluster, before anything in it is touched.
    pub fn open_owned(dir: &Path, owner: Owner) -> Result<(Storage, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(OWNER_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let found = Owner::decode(&path, &bytes)?;
                if found != owner {
                    return Err(StorageError::WrongOwner {
                        dir: dir.to_path_buf(),
                        found,
                        expected: owner,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = dir.join(OWNER_TMP_FILE);
                drop(write_new_file(&tmp, &owner.encode())?);
                fs::rename(&tmp, &path).map_err(io_err(&path))?;
                sync_dir(dir)?;
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        Storage::open(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_refused_to_another_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let me = Owner {
            node_id: 1,
            cluster_id: 7,
        };
        drop(Storage::open_owned(tmp.path(), me).unwrap());
        drop(Storage::open_owned(tmp.path(), me).unwrap());
        for other in [
            Owner {
                node_id: 2,
                cluster_id: 7,
            },
            Owner {
                node_id: 1,
                cluster_id: 8,
            },
        ] {
            let err = Storage::open_owned(tmp.path(), other).unwrap_err();
            assert!(
                matches!(err, StorageError::WrongOwner { found, .. } if found == me),
                "{err}"
            );
        }
        let mut bytes = fs::read(tmp.path().join(OWNER_FILE)).unwrap();
        bytes[13] ^= 1;
        fs::write(tmp.path().join(OWNER_FILE), bytes).unwrap();
        let err = Storage::open_owned(tmp.path(), me).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
