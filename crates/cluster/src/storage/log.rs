//! The Raft log and vote: openraft's `RaftLogStorage`, on an append-only journal file.
//!
//! The journal is a sequence of records `[u32 length][u32 crc32c][JSON]` (little endian), each an
//! append, a truncation or a purge; replaying them in order gives the log. Every write is fsynced
//! before openraft hears it is done. A record cut short by a crash is the torn tail of an
//! unacknowledged write and is cut off at open; a bad record before the end is damage and an error.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Durability, blocking, read_optional, replace_file, storage_error, sync_dir};
use crate::error::{Error, Result};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

const JOURNAL_FILE: &str = "raft-log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";

/// Bytes before a record's JSON: length and checksum.
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record: one append batch of metadata commands is kilobytes; this only bounds what a
/// damaged length field can make us allocate.
const RECORD_BYTES_MAX: usize = 64 << 20;
/// The journal is rewritten once it holds this many more records than twice the live entries
/// (the snapshot policy purges about 1000 entries at a time).
const JOURNAL_SLACK_RECORDS: usize = 2000;

/// One journal record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Record {
    /// Entries appended (they replace any entry at the same index).
    Append(Vec<Entry>),
    /// Entries from `since` on removed (a new leader overwrote them).
    Truncate { since: u64 },
    /// Entries up to `upto` removed (they are in a snapshot).
    Purge { upto: LogId },
}

/// The log as openraft sees it, in memory; the journal makes it durable.
#[derive(Default)]
struct Log {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

impl Log {
    fn replay(&mut self, record: Record) {
        match record {
            Record::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry);
                }
            }
            Record::Truncate { since } => {
                self.entries.split_off(&since);
            }
            Record::Purge { upto } => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                if self.last_purged.is_none_or(|p| p < upto) {
                    self.last_purged = Some(upto);
                }
            }
        }
    }

    /// The records that rebuild this log from nothing.
    fn as_records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .last_purged
            .map(|upto| Record::Purge { upto })
            .into_iter()
            .collect();
        if !self.entries.is_empty() {
            records.push(Record::Append(self.entries.values().cloned().collect()));
        }
        records
    }
}

/// The open journal file.
struct Journal {
    path: PathBuf,
    file: File,
    records: usize,
    /// Set when a write or fsync failed: the file's content is then unknown (a later fsync may
    /// report success for pages the kernel already dropped), so nothing more is written.
    poisoned: bool,
}

impl Journal {
    fn write(&mut self, bytes: &[u8], records: usize) -> Result<()> {
        if self.poisoned {
            return Err(Error::io(
                format!("{} had a failed write", self.path.display()),
                std::io::Error::other("journal poisoned"),
            ));
        }
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            self.poisoned = true;
            return Err(Error::io(format!("append to {}", self.path.display()), e));
        }
        self.records += records;
        Ok(())
    }

    /// Rewrites the journal as `records` (write, fsync, rename, fsync the folder).
    fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        let bytes = encode_records(records)?;
        replace_file(&self.path, &bytes, Durability::Synced)?;
        self.file = open_append(&self.path)?;
        self.records = records.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))
}

fn encode_records(records: &[Record]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for record in records {
        let json = serde_json::to_vec(record)
            .map_err(|e| Error::Raft(format!("encode log record: {e}")))?;
        assert!(
            json.len() <= RECORD_BYTES_MAX,
            "log record of {} bytes",
            json.len()
        );
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        out.extend_from_slice(&json);
    }
    Ok(out)
}

/// What a journal's bytes hold.
#[derive(Debug, PartialEq)]
struct Decoded {
    records: Vec<Record>,
    /// Bytes of whole, valid records; past them is a torn tail.
    valid_bytes: usize,
}

/// Decodes journal bytes. Pure: no I/O.
fn decode_records(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        // A record that would reach the end of the file and is not whole (or does not check) is
        // the torn tail of a write that never completed, so never acknowledged.
        let torn = Decoded {
            records: Vec::new(),
            valid_bytes: pos,
        };
        if rest.len() < RECORD_HEADER_BYTES {
            return Ok(Decoded { records, ..torn });
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let end = RECORD_HEADER_BYTES.saturating_add(len);
        if end > rest.len() {
            return Ok(Decoded { records, ..torn });
        }
        let json = &rest[RECORD_HEADER_BYTES..end];
        if crc32c::crc32c(json) != crc {
            if end == rest.len() {
                return Ok(Decoded { records, ..torn });
            }
            return Err(format!("record at byte {pos}: checksum mismatch"));
        }
        if len > RECORD_BYTES_MAX {
            return Err(format!("record at byte {pos}: {len} bytes"));
        }
        let record =
            serde_json::from_slice(json).map_err(|e| format!("record at byte {pos}: {e}"))?;
        records.push(record);
        pos += end;
    }
    Ok(Decoded {
        records,
        valid_bytes: pos,
    })
}

struct Inner {
    dir: PathBuf,
    log: Mutex<Log>,
    /// Only locked on blocking threads; openraft serialises log writes, so it is uncontended.
    journal: Arc<Mutex<Journal>>,
}

/// The Raft log store of one voter. Clones share the log (the clone is the log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, replaying the journal and cutting a torn tail.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(JOURNAL_FILE);
        let mut log = Log::default();
        let bytes = read_optional(&path)?.unwrap_or_default();
        let decoded = decode_records(&bytes).map_err(|reason| Error::Corrupt {
            path: path.clone(),
            reason,
        })?;
        let records = decoded.records.len();
        for record in decoded.records {
            log.replay(record);
        }
        let file = open_append(&path)?;
        if decoded.valid_bytes < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                torn_bytes = bytes.len() - decoded.valid_bytes,
                "cutting the torn tail of the raft log"
            );
            file.set_len(decoded.valid_bytes as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("truncate {}", path.display()), e))?;
        }
        sync_dir(&path)?;
        if let Some(bytes) = read_optional(&dir.join(VOTE_FILE))? {
            let vote = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: dir.join(VOTE_FILE),
                reason: e.to_string(),
            })?;
            log.vote = Some(vote);
        }
        // Written without fsync, so possibly torn by a crash: unreadable means unknown.
        log.committed = read_optional(&dir.join(COMMITTED_FILE))?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .flatten();
        let journal = Journal {
            path,
            file,
            records,
            poisoned: false,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                log: Mutex::new(log),
                journal: Arc::new(Mutex::new(journal)),
            }),
        })
    }

    /// Writes `record` to the journal and fsyncs it, off the async threads. When the journal has
    /// grown well past the live log, rewrites it from `compact_to` instead.
    async fn persist(&self, record: Record) -> Result<()> {
        let bytes = encode_records(std::slice::from_ref(&record))?;
        let compacted = {
            let log = self.inner.log.lock();
            let live = log.entries.len();
            let journal_records = self.inner.journal.lock().records;
            (journal_records > 2 * live + JOURNAL_SLACK_RECORDS).then(|| log.as_records())
        };
        let journal = Arc::clone(&self.inner.journal);
        blocking(move || {
            let mut journal = journal.lock();
            match compacted {
                Some(records) => journal.rewrite(&records),
                None => journal.write(&bytes, 1),
            }
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let log = self.inner.log.lock();
        Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let log = self.inner.log.lock();
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(log.last_purged);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> std::result::Result<(), StorageError> {
        let path = self.inner.dir.join(VOTE_FILE);
        let bytes = serde_json::to_vec(vote).map_err(|e| Error::Raft(format!("encode vote: {e}")));
        let write =
            async move { blocking(move || replace_file(&path, &bytes?, Durability::Synced)).await };
        write
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        self.inner.log.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.log.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError> {
        let path = self.inner.dir.join(COMMITTED_FILE);
        let bytes = serde_json::to_vec(&committed).expect("a log id encodes");
        blocking(move || replace_file(&path, &bytes, Durability::Buffered))
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.inner.log.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(self.inner.log.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let record = Record::Append(entries.clone());
        self.inner.log.lock().replay(Record::Append(entries));
        let result = self.persist(record).await;
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let record = Record::Truncate {
            since: log_id.index,
        };
        self.inner.log.lock().replay(record.clone());
        self.persist(record)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        let record = Record::Purge { upto: log_id };
        self.inner.log.lock().replay(record.clone());
        self.persist(record)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::state::Command;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::FenceBroker { id: index as i32 }),
        }
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.inner.log.lock().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn reopen_recovers_entries_vote_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store
                .blocking_append((1..=5).map(|i| entry(1, i)))
                .await
                .unwrap();
            store
                .truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
                .await
                .unwrap();
            store.blocking_append([entry(2, 4)]).await.unwrap();
            store
                .purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
                .await
                .unwrap();
            store.save_vote(&Vote::new(2, 3)).await.unwrap();
            store
                .save_committed(Some(entry(2, 4).log_id))
                .await
                .unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![3, 4]);
        let entries = store.try_get_log_entries(3..5).await.unwrap();
        assert_eq!(entries[1].log_id, entry(2, 4).log_id);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id, Some(entry(2, 4).log_id));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
        assert_eq!(
            store.read_committed().await.unwrap(),
            Some(entry(2, 4).log_id)
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            for i in 1..=3 {
                store.blocking_append([entry(1, i)]).await.unwrap();
            }
        }
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last record is a torn tail: the first two entries survive.
        let last_start = {
            let decoded = decode_records(&whole).unwrap();
            assert_eq!(decoded.records.len(), 3);
            whole.len() - encode_records(&decoded.records[2..]).unwrap().len()
        };
        for cut in last_start..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let store = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&store), vec![1, 2], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
        }
        // A flipped byte in the last record: torn too.
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()), vec![1, 2]);
        // A flipped byte in the first record, with records after it: damage.
        let mut damaged = whole.clone();
        damaged[RECORD_HEADER_BYTES + 2] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            LogStore::open(dir.path()),
            Err(Error::Corrupt { .. })
        ));
        // A bad vote file is an error too.
        std::fs::write(&path, &whole).unwrap();
        std::fs::write(dir.path().join(VOTE_FILE), b"{").unwrap();
        assert!(matches!(
            LogStore::open(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn the_journal_is_rewritten_once_purged_records_dominate() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let total = (JOURNAL_SLACK_RECORDS + 100) as u64;
        for i in 1..=total {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        store.purge(entry(1, total - 10).log_id).await.unwrap();
        store.blocking_append([entry(1, total + 1)]).await.unwrap();
        assert!(
            store.inner.journal.lock().records < 10,
            "journal not rewritten"
        );
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), (total - 9..=total + 1).collect::<Vec<_>>());
        assert_eq!(
            store.inner.log.lock().last_purged,
            Some(entry(1, total - 10).log_id)
        );
    }
}
