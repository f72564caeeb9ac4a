//! One transaction coordinator: the transactions whose ids hash to one `__transaction_state`
//! partition (all of them on a single broker), their state machine (Kafka's
//! `TransactionMetadata` transitions) and its log.
//!
//! Each transactional id's state is one record in the log, key the id, value its
//! [`TxnMeta`] as JSON (a tombstone when the id expires). A change is applied in memory as it is
//! appended, under the coordinator's lock, so requests see changes in log order; the client is
//! answered once the change is durable (replicated, in a cluster). A coordinator that loses its
//! partition is dropped with its memory; the next leader replays the log.

use std::collections::{BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_coordinator::offsets_log::{Durable, OffsetsLog};
use strata_log::batch::BatchHeader;

/// Bytes read per step when a coordinator replays its log.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// A log holding more than this many records and twice the live ones is compacted.
const COMPACT_RECORDS_MIN: usize = 10_000;

/// A transaction's state, with Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TxnState {
    /// No transaction open (after InitProducerId).
    Empty,
    /// Partitions were added: records may be in them.
    Ongoing,
    /// Commit decided; markers being written.
    PrepareCommit,
    /// Abort decided; markers being written.
    PrepareAbort,
    /// Every commit marker written.
    CompleteCommit,
    /// Every abort marker written.
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name, as DescribeTransactions and ListTransactions give it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
        }
    }

    fn is_prepare(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }
}

/// What the coordinator knows of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnMeta {
    /// The producer id given to it.
    pub(crate) producer_id: i64,
    /// Its current epoch.
    pub(crate) producer_epoch: i16,
    /// The epoch before the last bump (-1: none), so a retried request of the producer is known.
    pub(crate) last_producer_epoch: i16,
    /// `transaction.timeout.ms` of the producer.
    pub(crate) timeout_ms: i32,
    /// Where its transaction is.
    pub(crate) state: TxnState,
    /// The partitions of the open (or ending) transaction.
    pub(crate) partitions: BTreeSet<(String, i32)>,
    /// When the transaction started (its first partition was added), or -1.
    pub(crate) start_ms: i64,
    /// When the state last changed.
    pub(crate) update_ms: i64,
}

/// Markers to write for a decided transaction, then [`TxnCoordinator::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) transactional_id: String,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) commit: bool,
    pub(crate) partitions: Vec<(String, i32)>,
}

/// The answer to InitProducerId.
pub(crate) enum InitOutcome {
    /// The producer id and epoch, once the change is durable.
    Ready {
        producer_id: i64,
        producer_epoch: i16,
        durable: Option<Durable>,
    },
    /// An open transaction of a previous producer is being aborted (fenced): the client gets
    /// CONCURRENT_TRANSACTIONS and retries; the markers are written once the decision is
    /// durable.
    Aborting(Completion, Durable),
}

/// Limits from the broker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxnConfig {
    /// `transaction.max.timeout.ms`.
    pub(crate) max_timeout_ms: i64,
    /// `transactional.id.expiration.ms`.
    pub(crate) id_expiration_ms: i64,
}

/// The producer id and epoch a request claims, and the error code of a stale epoch at the
/// request's version (PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH for older clients).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) fenced: ResponseError,
}

#[derive(Debug)]
struct Inner {
    /// `None` once closed.
    log: Option<Box<dyn OffsetsLog>>,
    txns: HashMap<String, TxnMeta>,
    /// A snapshot appended and not yet durable: `(its first offset, its last)`; what precedes it
    /// is dropped once it is durable.
    pending_snapshot: Option<(i64, i64)>,
}

/// The coordinator of the transactions of one `__transaction_state` partition.
#[derive(Debug)]
pub(crate) struct TxnCoordinator {
    /// The `__transaction_state` partition (0 on a single broker).
    pub(crate) partition: i32,
    /// The leader epoch of that partition when this coordinator loaded it: markers carry it, so a
    /// partition refuses those of a deposed coordinator.
    pub(crate) coordinator_epoch: i32,
    config: TxnConfig,
    inner: Mutex<Inner>,
}

impl TxnCoordinator {
    /// Replays `log` into a coordinator. Returns it with the transactions it must complete (they
    /// were decided before the previous coordinator stopped).
    pub(crate) fn load(
        log: Box<dyn OffsetsLog>,
        partition: i32,
        coordinator_epoch: i32,
        config: TxnConfig,
    ) -> strata_coordinator::Result<(Self, Vec<Completion>)> {
        let txns = replay(log.as_ref())?;
        let pending = txns
            .iter()
            .filter(|(_, m)| m.state.is_prepare())
            .map(|(id, m)| completion(id, m))
            .collect();
        let coordinator = Self {
            partition,
            coordinator_epoch,
            config,
            inner: Mutex::new(Inner {
                log: Some(log),
                txns,
                pending_snapshot: None,
            }),
        };
        Ok((coordinator, pending))
    }

    /// Every transactional id known, with its state.
    pub(crate) fn list(&self) -> Vec<(String, TxnMeta)> {
        let inner = self.inner.lock();
        inner
            .txns
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// The state of one transactional id.
    pub(crate) fn describe(&self, transactional_id: &str) -> Option<TxnMeta> {
        self.inner.lock().txns.get(transactional_id).cloned()
    }

    /// InitProducerId for `transactional_id`: a new producer id, or the next epoch of the known
    /// one (fencing older instances). `claim` is the producer's current id and epoch when it asks
    /// for a bump after an error (KIP-360). `allocate` gives a fresh producer id.
    pub(crate) fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        claim: Option<Claim>,
        allocate: impl FnOnce() -> Result<i64, ResponseError>,
        now_ms: i64,
    ) -> Result<InitOutcome, ResponseError> {
        if timeout_ms <= 0 || i64::from(timeout_ms) > self.config.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let mut inner = self.inner.lock();
        let Some(current) = inner.txns.get(transactional_id).cloned() else {
            let producer_id = allocate()?;
            let meta = TxnMeta {
                producer_id,
                producer_epoch: 0,
                last_producer_epoch: -1,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                update_ms: now_ms,
            };
            let durable = write(&mut inner, transactional_id, Some(meta), now_ms)?;
            return Ok(InitOutcome::Ready {
                producer_id,
                producer_epoch: 0,
                durable: Some(durable),
            });
        };
        if let Some(claim) = claim {
            let known = claim.producer_id == current.producer_id
                && (claim.producer_epoch == current.producer_epoch
                    || claim.producer_epoch == current.last_producer_epoch);
            if !known {
                return Err(claim.fenced);
            }
            if claim.producer_epoch == current.last_producer_epoch && !current.state.is_prepare() {
                // A retry of the bump that gave the current epoch.
                return Ok(InitOutcome::Ready {
                    producer_id: current.producer_id,
                    producer_epoch: current.producer_epoch,
                    durable: None,
                });
            }
        }
        match current.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {
                // A new instance of the producer: the open transaction is aborted at a bumped
                // epoch, so the old instance is fenced wherever it writes next.
                let meta = prepare_abort_fenced(&current, now_ms);
                let done = completion(transactional_id, &meta);
                let durable = write(&mut inner, transactional_id, Some(meta), now_ms)?;
                Ok(InitOutcome::Aborting(done, durable))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let (producer_id, producer_epoch, last) = if current.producer_epoch >= i16::MAX - 1
                {
                    (allocate()?, 0, -1)
                } else {
                    (
                        current.producer_id,
                        current.producer_epoch + 1,
                        current.producer_epoch,
                    )
                };
                let meta = TxnMeta {
                    producer_id,
                    producer_epoch,
                    last_producer_epoch: last,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    update_ms: now_ms,
                };
                let durable = write(&mut inner, transactional_id, Some(meta), now_ms)?;
                Ok(InitOutcome::Ready {
                    producer_id,
                    producer_epoch,
                    durable: Some(durable),
                })
            }
        }
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: adds `partitions` to the producer's transaction,
    /// opening it. `None` when they were all in it already (nothing to wait for).
    pub(crate) fn add_partitions(
        &self,
        transactional_id: &str,
        claim: Claim,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<Durable>, ResponseError> {
        let mut inner = self.inner.lock();
        let current = check_claim(&inner, transactional_id, claim)?;
        if current.state.is_prepare() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        if current.state == TxnState::Ongoing
            && partitions.iter().all(|p| current.partitions.contains(p))
        {
            return Ok(None);
        }
        let mut meta = current.clone();
        if meta.state != TxnState::Ongoing {
            meta.partitions.clear();
            meta.start_ms = now_ms;
        }
        meta.state = TxnState::Ongoing;
        meta.partitions.extend(partitions.iter().cloned());
        meta.update_ms = now_ms;
        write(&mut inner, transactional_id, Some(meta), now_ms).map(Some)
    }

    /// EndTxn: decides the producer's transaction. Returns what to wait for before answering and
    /// the markers to write after (none for a retry of a decision already made).
    pub(crate) fn end(
        &self,
        transactional_id: &str,
        claim: Claim,
        commit: bool,
        now_ms: i64,
    ) -> Result<(Option<Durable>, Option<Completion>), ResponseError> {
        let mut inner = self.inner.lock();
        let current = match check_claim(&inner, transactional_id, claim) {
            Ok(current) => current,
            // The abort of a transaction the coordinator aborted itself (timeout, fencing) at a
            // bumped epoch: the producer's own abort is then a retry of it.
            Err(e) => match inner.txns.get(transactional_id) {
                Some(m)
                    if !commit
                        && m.producer_id == claim.producer_id
                        && m.last_producer_epoch == claim.producer_epoch
                        && matches!(m.state, TxnState::PrepareAbort | TxnState::CompleteAbort) =>
                {
                    m.clone()
                }
                _ => return Err(e),
            },
        };
        match (current.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut meta = current.clone();
                meta.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                meta.update_ms = now_ms;
                let done = completion(transactional_id, &meta);
                let durable = write(&mut inner, transactional_id, Some(meta), now_ms)?;
                Ok((Some(durable), Some(done)))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok((None, None)),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Closes the log (a single broker's flushes it); later writes get
    /// COORDINATOR_NOT_AVAILABLE.
    pub(crate) fn close(&self, now_ms: i64) {
        if let Some(log) = self.inner.lock().log.take()
            && let Err(e) = log.close(now_ms)
        {
            tracing::error!(error = %e, "closing the transaction log");
        }
    }

    /// Records that every marker of `done` is written: the transaction is complete.
    pub(crate) fn finish(&self, done: &Completion, now_ms: i64) -> Result<Durable, ResponseError> {
        let mut inner = self.inner.lock();
        let Some(current) = inner.txns.get(&done.transactional_id) else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        let expected = if done.commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if current.producer_id != done.producer_id
            || current.producer_epoch != done.producer_epoch
            || current.state != expected
        {
            return Err(ResponseError::InvalidTxnState);
        }
        let mut meta = current.clone();
        meta.state = if done.commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        meta.partitions.clear();
        meta.start_ms = -1;
        meta.update_ms = now_ms;
        write(&mut inner, &done.transactional_id, Some(meta), now_ms)
    }

    /// Aborts the transactions open longer than their timeout (at a bumped epoch: the producer
    /// is fenced, as Kafka does) and forgets the ids idle longer than
    /// `transactional.id.expiration.ms`. Returns the aborts to complete.
    pub(crate) fn tick(&self, now_ms: i64) -> Vec<Completion> {
        let mut inner = self.inner.lock();
        let mut aborts = Vec::new();
        let timed_out: Vec<(String, TxnMeta)> = inner
            .txns
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing
                    && m.start_ms >= 0
                    && now_ms - m.start_ms > i64::from(m.timeout_ms)
            })
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        for (id, current) in timed_out {
            let meta = prepare_abort_fenced(&current, now_ms);
            let done = completion(&id, &meta);
            match write(&mut inner, &id, Some(meta), now_ms) {
                Ok(_) => {
                    tracing::info!(transactional_id = %id, producer_id = current.producer_id,
                        timeout_ms = current.timeout_ms, "aborting a transaction open past its timeout");
                    aborts.push(done);
                }
                Err(code) => {
                    tracing::warn!(transactional_id = %id, error = ?code, "could not abort a timed-out transaction");
                    return aborts;
                }
            }
        }
        let expired: Vec<String> = inner
            .txns
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m.state,
                    TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                ) && now_ms - m.update_ms > self.config.id_expiration_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if write(&mut inner, &id, None, now_ms).is_err() {
                break;
            }
            tracing::info!(transactional_id = %id, "forgot an expired transactional id");
        }
        compact_if_needed(&mut inner, now_ms);
        aborts
    }
}

/// The open transaction of `current` aborted at the next epoch.
fn prepare_abort_fenced(current: &TxnMeta, now_ms: i64) -> TxnMeta {
    let mut meta = current.clone();
    if meta.producer_epoch < i16::MAX {
        meta.last_producer_epoch = meta.producer_epoch;
        meta.producer_epoch += 1;
    }
    meta.state = TxnState::PrepareAbort;
    meta.update_ms = now_ms;
    meta
}

fn completion(transactional_id: &str, meta: &TxnMeta) -> Completion {
    Completion {
        transactional_id: transactional_id.to_string(),
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        commit: meta.state == TxnState::PrepareCommit,
        partitions: meta.partitions.iter().cloned().collect(),
    }
}

/// The state of `transactional_id` if `claim` names its producer at its current epoch.
fn check_claim(
    inner: &Inner,
    transactional_id: &str,
    claim: Claim,
) -> Result<TxnMeta, ResponseError> {
    let Some(current) = inner.txns.get(transactional_id) else {
        return Err(ResponseError::InvalidProducerIdMapping);
    };
    if current.producer_id != claim.producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if current.producer_epoch != claim.producer_epoch {
        return Err(claim.fenced);
    }
    Ok(current.clone())
}

/// Appends the new state of `transactional_id` (`None`: forget it) and applies it.
fn write(
    inner: &mut Inner,
    transactional_id: &str,
    meta: Option<TxnMeta>,
    now_ms: i64,
) -> Result<Durable, ResponseError> {
    let batch = encode(&[(transactional_id, meta.as_ref())], now_ms);
    // Closed at shutdown: retriable, the client finds the coordinator again.
    let log = inner
        .log
        .as_mut()
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let last = log.append(&batch, now_ms).map_err(|e| {
        tracing::warn!(transactional_id, error = %e, "writing the transaction log");
        write_error_code(&e)
    })?;
    let durable = log.durable(last);
    match meta {
        Some(meta) => inner.txns.insert(transactional_id.to_string(), meta),
        None => inner.txns.remove(transactional_id),
    };
    Ok(durable)
}

/// The code a transactional request gets when the transaction log refused a write.
pub(crate) fn write_error_code(error: &strata_coordinator::Error) -> ResponseError {
    match error {
        strata_coordinator::Error::NotCoordinator { .. } => ResponseError::NotCoordinator,
        // Retriable, as Kafka maps NOT_ENOUGH_REPLICAS and timeouts of its log.
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

/// Rewrites the live states at the log end and drops what they supersede, once the log holds
/// many more records than live ones.
/// A snapshot that is not durable yet is looked at again at the next call, and no other is
/// appended meanwhile.
fn compact_if_needed(inner: &mut Inner, now_ms: i64) {
    let live = inner.txns.len();
    let Some(log) = inner.log.as_mut() else {
        return;
    };
    let compacted = (|| -> strata_coordinator::Result<()> {
        if let Some((start, last)) = inner.pending_snapshot {
            if log.is_durable(last) {
                log.delete_before(start, now_ms)?;
                inner.pending_snapshot = None;
            }
            return Ok(());
        }
        let held = log.log_end_offset() - log.log_start_offset();
        if held < COMPACT_RECORDS_MIN.max(live * 2) as i64 || !log.wants_compaction(live) {
            return Ok(());
        }
        let start = log.log_end_offset();
        log.before_snapshot(now_ms)?;
        let records: Vec<(&String, &TxnMeta)> = inner.txns.iter().collect();
        for chunk in records.chunks(1_000) {
            let refs: Vec<(&str, Option<&TxnMeta>)> = chunk
                .iter()
                .map(|(id, m)| (id.as_str(), Some(*m)))
                .collect();
            log.append(&encode(&refs, now_ms), now_ms)?;
        }
        let last = log.log_end_offset() - 1;
        if log.is_durable(last) {
            log.delete_before(start, now_ms)?;
        } else {
            inner.pending_snapshot = Some((start, last));
        }
        Ok(())
    })();
    if let Err(e) = compacted {
        tracing::warn!(error = %e, "compacting the transaction log");
    }
}

fn encode(records: &[(&str, Option<&TxnMeta>)], now_ms: i64) -> BytesMut {
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (id, meta))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            value: meta.map(|m| Bytes::from(serde_json::to_vec(m).expect("states serialize"))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, encoded.iter(), &options).expect("in-memory encoding");
    buf
}

fn replay(log: &dyn OffsetsLog) -> strata_coordinator::Result<HashMap<String, TxnMeta>> {
    let corrupt = |offset: i64, reason: String| strata_coordinator::Error::Corrupt {
        dir: log.dir(),
        offset,
        reason,
    };
    let mut txns = HashMap::new();
    let mut offset = log.log_start_offset();
    while let Some(mut bytes) = log.read(offset, REPLAY_READ_BYTES)? {
        let before = offset;
        while let Ok(header) = BatchHeader::parse(&bytes) {
            if header.total_bytes() > bytes.len() {
                break;
            }
            let mut batch = bytes.split_to(header.total_bytes());
            let set = RecordBatchDecoder::decode(&mut batch)
                .map_err(|e| corrupt(header.base_offset, e.to_string()))?;
            for record in set.records.iter().filter(|r| r.offset >= offset) {
                let Some(key) = record
                    .key
                    .as_ref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                else {
                    continue;
                };
                match record
                    .value
                    .as_ref()
                    .map(|v| serde_json::from_slice::<TxnMeta>(v))
                {
                    Some(Ok(meta)) => {
                        txns.insert(key.to_string(), meta);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(offset = record.offset, error = %e,
                            "skipping a transaction log record that cannot be read");
                    }
                    None => {
                        txns.remove(key);
                    }
                }
            }
            offset = header.next_offset();
        }
        if offset == before {
            return Err(corrupt(offset, "no whole batch at this offset".into()));
        }
    }
    Ok(txns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_coordinator::offsets_log::LocalOffsetsLog;

    const CONFIG: TxnConfig = TxnConfig {
        max_timeout_ms: 60_000,
        id_expiration_ms: 3_600_000,
    };

    fn open(dir: &std::path::Path) -> (TxnCoordinator, Vec<Completion>) {
        let log = LocalOffsetsLog::open(dir, 0).unwrap();
        TxnCoordinator::load(Box::new(log), 0, 0, CONFIG).unwrap()
    }

    fn claim(producer_id: i64, producer_epoch: i16) -> Claim {
        Claim {
            producer_id,
            producer_epoch,
            fenced: ResponseError::ProducerFenced,
        }
    }

    fn ok<T>(r: Result<T, ResponseError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    fn err<T>(r: Result<T, ResponseError>) -> ResponseError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    /// Whether an EndTxn was a retry of a decision made: nothing to wait for or write.
    fn retried(r: Result<(Option<Durable>, Option<Completion>), ResponseError>) -> bool {
        matches!(ok(r), (None, None))
    }

    fn init(c: &TxnCoordinator, id: &str, now: i64) -> Result<(i64, i16), ResponseError> {
        match c.init_producer_id(id, 10_000, None, || Ok(100), now)? {
            InitOutcome::Ready {
                producer_id,
                producer_epoch,
                ..
            } => Ok((producer_id, producer_epoch)),
            InitOutcome::Aborting(..) => Err(ResponseError::ConcurrentTransactions),
        }
    }

    fn orders(p: i32) -> (String, i32) {
        ("orders".to_string(), p)
    }

    #[test]
    fn a_transaction_goes_from_empty_to_complete_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (c, pending) = open(dir.path());
        assert!(pending.is_empty());
        assert_eq!(init(&c, "t", 0), Ok((100, 0)));
        ok(c.add_partitions("t", claim(100, 0), &[orders(0), orders(1)], 1));
        assert!(
            ok(c.add_partitions("t", claim(100, 0), &[orders(1)], 2)).is_none(),
            "nothing new"
        );
        assert_eq!(c.describe("t").unwrap().state, TxnState::Ongoing);
        let (_, done) = ok(c.end("t", claim(100, 0), true, 3));
        let done = done.unwrap();
        assert!(done.commit);
        assert_eq!(done.partitions, vec![orders(0), orders(1)]);
        assert_eq!(
            err(c.end("t", claim(100, 0), true, 4)),
            ResponseError::ConcurrentTransactions
        );
        assert_eq!(
            err(c.end("t", claim(100, 0), false, 4)),
            ResponseError::InvalidTxnState
        );
        drop(c);
        // A new coordinator finds the decided transaction and completes it.
        let (c, pending) = open(dir.path());
        assert_eq!(pending, vec![done.clone()]);
        drop(ok(c.finish(&done, 5)));
        assert_eq!(c.describe("t").unwrap().state, TxnState::CompleteCommit);
        assert!(
            retried(c.end("t", claim(100, 0), true, 6)),
            "a retried commit"
        );
        // The next transaction needs a new AddPartitions.
        ok(c.add_partitions("t", claim(100, 0), &[orders(2)], 7));
        assert_eq!(
            c.describe("t").unwrap().partitions,
            [orders(2)].into_iter().collect()
        );
    }

    #[test]
    fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = open(dir.path());
        init(&c, "t", 0).unwrap();
        ok(c.add_partitions("t", claim(100, 0), &[orders(0)], 1));
        // The second instance: its open transaction is aborted at epoch 1.
        let InitOutcome::Aborting(done, _) =
            ok(c.init_producer_id("t", 10_000, None, || Ok(999), 2))
        else {
            panic!("expected an abort first");
        };
        assert!(!done.commit);
        assert_eq!((done.producer_id, done.producer_epoch), (100, 1));
        assert_eq!(
            init(&c, "t", 3),
            Err(ResponseError::ConcurrentTransactions),
            "until the markers are written"
        );
        drop(ok(c.finish(&done, 4)));
        assert_eq!(init(&c, "t", 5), Ok((100, 2)));
        // The old instance is fenced everywhere.
        assert_eq!(
            err(c.add_partitions("t", claim(100, 0), &[orders(0)], 6)),
            ResponseError::ProducerFenced
        );
        assert_eq!(
            err(c.end("t", claim(100, 0), true, 6)),
            ResponseError::ProducerFenced
        );
        assert_eq!(
            err(c.end("t", claim(7, 2), true, 6)),
            ResponseError::InvalidProducerIdMapping
        );
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_at_a_bumped_epoch_and_the_producer_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = open(dir.path());
        init(&c, "t", 0).unwrap();
        ok(c.add_partitions("t", claim(100, 0), &[orders(0)], 1_000));
        assert!(c.tick(5_000).is_empty());
        let aborts = c.tick(11_001);
        assert_eq!(aborts.len(), 1);
        assert_eq!(aborts[0].producer_epoch, 1);
        drop(ok(c.finish(&aborts[0], 11_002)));
        // The producer aborts too (a retry of the abort), then bumps its epoch (KIP-360).
        assert!(retried(c.end("t", claim(100, 0), false, 11_003)));
        assert_eq!(
            err(c.end("t", claim(100, 0), true, 11_003)),
            ResponseError::ProducerFenced
        );
        let again = ok(c.init_producer_id("t", 10_000, Some(claim(100, 0)), || Ok(999), 11_004));
        assert!(matches!(
            again,
            InitOutcome::Ready {
                producer_id: 100,
                producer_epoch: 1,
                ..
            }
        ));
    }

    #[test]
    fn timeouts_above_the_maximum_are_refused_and_idle_ids_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = open(dir.path());
        assert_eq!(
            err(c.init_producer_id("t", 60_001, None, || Ok(1), 0)),
            ResponseError::InvalidTransactionTimeout
        );
        init(&c, "t", 0).unwrap();
        c.tick(3_600_001);
        assert!(c.describe("t").is_none());
        drop(c);
        let (c, _) = open(dir.path());
        assert!(c.describe("t").is_none(), "the tombstone is kept");
    }
}
