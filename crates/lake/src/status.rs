//! Why a partition's offload is failing, as the broker last saw it: a small JSON file beside the
//! partition's segments while uploads fail, removed once one succeeds. `strata lake ls` reads it
//! from the data folder alone (object storage may be down), so an operator sees a stuck offload,
//! and which segment is corrupt when bit rot is the cause, without reading the broker's log.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name, in the partition's folder.
pub const OFFLOAD_ERROR_FILE: &str = "offload-error.json";

/// The last failure of a partition's offload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadError {
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last attempt's error.
    pub error: String,
    /// When the first of these failures happened (ms since the epoch).
    pub since_ms: i64,
    /// When the next attempt is due (ms since the epoch).
    pub retry_at_ms: i64,
    /// The segment that cannot be converted, when corrupt bytes on disk are the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_segment: Option<CorruptSegment>,
}

/// A local segment whose bytes are corrupt: it stays on disk, with the partition's later segments,
/// until an operator repairs or removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptSegment {
    /// The segment's file name in the partition's folder.
    pub segment: String,
    /// Base offset of the batch that cannot be read.
    pub offset: i64,
    /// Where that batch starts in the file.
    pub position: u64,
}

impl OffloadError {
    /// Writes the file in `dir` (replacing it atomically).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let temporary = dir.join(format!("{OFFLOAD_ERROR_FILE}.tmp"));
        std::fs::write(
            &temporary,
            serde_json::to_vec(self).map_err(io::Error::other)?,
        )?;
        std::fs::rename(&temporary, dir.join(OFFLOAD_ERROR_FILE))
    }

    /// Removes the file from `dir`, if there is one.
    pub fn clear(dir: &Path) -> io::Result<()> {
        match std::fs::remove_file(dir.join(OFFLOAD_ERROR_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file in `dir`, `None` when there is none or it cannot be read.
    pub fn read(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(OFFLOAD_ERROR_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(OffloadError::read(dir.path()), None);
        let e = OffloadError {
            failures: 3,
            error: "connection refused".into(),
            since_ms: 1,
            retry_at_ms: 9,
            corrupt_segment: None,
        };
        e.write(dir.path()).unwrap();
        assert_eq!(OffloadError::read(dir.path()), Some(e));
        // A file written before the field existed still reads.
        std::fs::write(
            dir.path().join(OFFLOAD_ERROR_FILE),
            r#"{"failures":1,"error":"x","since_ms":1,"retry_at_ms":2}"#,
        )
        .unwrap();
        assert_eq!(
            OffloadError::read(dir.path()).unwrap().corrupt_segment,
            None
        );
        let corrupt = OffloadError {
            corrupt_segment: Some(CorruptSegment {
                segment: "00000000000000000000.log".into(),
                offset: 7,
                position: 300,
            }),
            ..OffloadError::read(dir.path()).unwrap()
        };
        corrupt.write(dir.path()).unwrap();
        assert_eq!(OffloadError::read(dir.path()), Some(corrupt));
        OffloadError::clear(dir.path()).unwrap();
        assert_eq!(OffloadError::read(dir.path()), None);
        OffloadError::clear(dir.path()).unwrap();
    }
}
