//! One broker per data folder: an exclusive advisory lock on `<data_dir>/.lock`, as Kafka's
//! `.lock` file, holding the pid of the broker that owns the folder.
//!
//! The lock is `flock(2)` (through `File::try_lock`), so the kernel drops it when the process dies,
//! however it dies: a crashed broker never leaves a stale lock behind. The pid written into the
//! file is only for the message a second broker prints; a file left by a dead broker keeps its old
//! pid until the next broker that takes the lock overwrites it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside the data folder (Kafka's name).
const LOCK_FILE: &str = ".lock";

/// The data folder's lock, held while this value lives.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    /// Kept open: closing the file releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks it for this process, writing our pid into the lock
    /// file. Fails with [`Error::DataDirInUse`] when another broker holds it.
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            what: format!("creating the data folder {}", data_dir.display()),
            source,
        })?;
        let path = lock_path(data_dir);
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| Error::Io { what, source }
        };
        // Not truncated on open: until we hold the lock, the pid in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::DataDirInUse {
                    path: data_dir.to_path_buf(),
                    pid: holder_pid(&mut file),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io("locking")(source)),
        }
        file.set_len(0).map_err(io("truncating"))?;
        file.rewind().map_err(io("rewinding"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing our pid into"))?;
        Ok(Self { _file: file })
    }
}

/// The pid the holder wrote, if it has written it yet (it writes just after locking).
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    // A pid is at most 10 digits; a longer file is not one we wrote.
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The lock file of a data folder.
fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        let written = std::fs::read_to_string(lock_path(&data)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        match DataDirLock::acquire(&data) {
            Err(Error::DataDirInUse { path, pid }) => {
                assert_eq!(path, data);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected DataDirInUse, got {other:?}"),
        }
        // Refused without touching the holder's pid.
        assert_eq!(std::fs::read_to_string(lock_path(&data)).unwrap(), written);
        drop(first);
        let _again = DataDirLock::acquire(&data).unwrap();
    }

    #[test]
    fn a_stale_pid_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(lock_path(dir.path()), "4294967295 and more\n").unwrap();
        let _lock = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(lock_path(dir.path())).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
