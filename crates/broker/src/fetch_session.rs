//! Incremental fetch sessions (KIP-227), as Kafka's `FetchSession.scala` keeps them.
//!
//! A fetcher that reads many partitions sends them all once, in a full fetch (session epoch 0);
//! the broker keeps the list, per partition the fetch offset and max bytes the fetcher asked for
//! and the high watermark, last stable offset and log start offset it was last told, and answers
//! with a session id. From then on the fetcher sends only what changed (partitions added or
//! whose offset moved, and `forgotten_topics_data`), with the session epoch counting up; the
//! broker reads every partition of the session and answers only those with news: records, a
//! moved high watermark, last stable offset or log start offset, or an error.
//!
//! | session id | epoch | meaning                                                         |
//! |------------|-------|-----------------------------------------------------------------|
//! | 0          | -1    | a full fetch without a session (and every Fetch below v7)      |
//! | 0          | 0     | a full fetch that creates a session when the cache has room     |
//! | id         | 0     | closes session id, then as above                                |
//! | id         | -1    | closes session id; a full fetch without a session               |
//! | id         | n > 0 | an incremental fetch in session id, whose epoch must be n       |
//!
//! The cache holds `max.incremental.fetch.session.cache.slots` sessions. When it is full, a new
//! session may take the place of (as Kafka's `FetchSessionCache.tryEvict`): first a session
//! unused for [`EVICTION_MS`]; else, for a replica's (privileged) session, any consumer
//! session, and for anyone, a session older than [`EVICTION_MS`] that is less valuable, by
//! (privileged, partition count). A fetcher whose session was evicted gets
//! FETCH_SESSION_ID_NOT_FOUND and starts over with a full fetch.
//!
//! Everything here is logic on request and answer fields: no I/O, the clock passed in.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{FetchRequest, TopicName};
use parking_lot::Mutex;
use uuid::Uuid;

/// The session id of an answer that belongs to no session.
pub(crate) const INVALID_SESSION_ID: i32 = 0;
/// The epoch of a full fetch that creates a session.
const INITIAL_EPOCH: i32 = 0;
/// The epoch of a full fetch that wants no session.
const FINAL_EPOCH: i32 = -1;
/// First version with sessions.
const SESSION_VERSION: i16 = 7;
/// First version that names topics by id.
const TOPIC_ID_VERSION: i16 = 13;
/// A session unused for this long is evicted first, and only sessions older than this may be
/// evicted for one with more partitions (Kafka's `MIN_INCREMENTAL_FETCH_SESSION_EVICTION_MS`).
pub(crate) const EVICTION_MS: i64 = 120_000;

/// The epoch after `epoch`, as Kafka's `FetchMetadata.nextEpoch`: it wraps to 1, never to 0.
fn next_epoch(epoch: i32) -> i32 {
    match epoch {
        e if e < 0 => FINAL_EPOCH,
        i32::MAX => 1,
        e => e + 1,
    }
}

/// A topic as a session knows it: by name up to Fetch v12, by id from v13.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TopicKey {
    Name(TopicName),
    Id(Uuid),
}

impl TopicKey {
    fn of(uses_topic_ids: bool, name: &TopicName, id: Uuid) -> Self {
        if uses_topic_ids {
            TopicKey::Id(id)
        } else {
            TopicKey::Name(name.clone())
        }
    }
}

type PartitionKey = (TopicKey, i32);

/// One partition of a session: what the fetcher asked last, and what it was told last.
#[derive(Debug, Clone)]
struct CachedPartition {
    /// The fetcher's parameters, partition index included.
    wanted: FetchPartition,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// Set while an answer is cut when the partition returned records: it moves to the end of
    /// the session's order, so partitions share `max_bytes` in turn.
    had_records: bool,
}

impl CachedPartition {
    fn new(wanted: FetchPartition) -> Self {
        // -1: never told, so the first answer carries the partition.
        Self {
            wanted,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            had_records: false,
        }
    }

    /// Whether an incremental answer must carry this partition (Kafka's
    /// `maybeUpdateResponseData`), remembering what it tells.
    fn must_respond(&mut self, data: &PartitionData, record_bytes: usize) -> bool {
        let mut must = record_bytes > 0;
        self.had_records = must;
        if self.high_watermark != data.high_watermark {
            self.high_watermark = data.high_watermark;
            must = true;
        }
        if self.last_stable_offset != data.last_stable_offset {
            self.last_stable_offset = data.last_stable_offset;
            must = true;
        }
        if self.log_start_offset != data.log_start_offset {
            self.log_start_offset = data.log_start_offset;
            must = true;
        }
        if data.error_code != 0 {
            // Told again once the error is gone, whatever the offsets then.
            self.high_watermark = -1;
            must = true;
        }
        must || data.preferred_read_replica.0 >= 0 || data.diverging_epoch.epoch >= 0
    }

    /// Remembers what a full answer told.
    fn told(&mut self, data: &PartitionData) {
        self.high_watermark = if data.error_code == 0 {
            data.high_watermark
        } else {
            -1
        };
        self.last_stable_offset = data.last_stable_offset;
        self.log_start_offset = data.log_start_offset;
    }
}

/// One fetcher's session.
#[derive(Debug)]
pub(crate) struct Session {
    id: i32,
    /// The epoch the next request must carry.
    epoch: i32,
    uses_topic_ids: bool,
    partitions: HashMap<PartitionKey, CachedPartition>,
    /// The partitions in the order they are read: the ones that last returned records last.
    order: Vec<PartitionKey>,
}

impl Session {
    fn new(uses_topic_ids: bool) -> Self {
        Self {
            id: INVALID_SESSION_ID,
            epoch: INITIAL_EPOCH,
            uses_topic_ids,
            partitions: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Adds or updates the partitions `topics` name (later mentions win).
    fn upsert(&mut self, topics: &[FetchTopic]) {
        for topic in topics {
            let key = TopicKey::of(self.uses_topic_ids, &topic.topic, topic.topic_id);
            for wanted in &topic.partitions {
                let key = (key.clone(), wanted.partition);
                match self.partitions.get_mut(&key) {
                    Some(cached) => cached.wanted = wanted.clone(),
                    None => {
                        self.order.push(key.clone());
                        self.partitions
                            .insert(key, CachedPartition::new(wanted.clone()));
                    }
                }
            }
        }
    }

    /// Drops the partitions of `forgotten_topics_data`.
    fn forget(&mut self, request: &FetchRequest) {
        let before = self.partitions.len();
        for topic in &request.forgotten_topics_data {
            let key = TopicKey::of(self.uses_topic_ids, &topic.topic, topic.topic_id);
            for &partition in &topic.partitions {
                self.partitions.remove(&(key.clone(), partition));
            }
        }
        if self.partitions.len() != before {
            let partitions = &self.partitions;
            self.order.retain(|k| partitions.contains_key(k));
        }
    }

    /// Every partition of the session as fetch topics, in read order (a topic whose
    /// partitions are not consecutive in that order appears more than once).
    fn topics(&self) -> Vec<FetchTopic> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for key @ (topic, _) in &self.order {
            let wanted = self.partitions[key].wanted.clone();
            let same = topics.last().is_some_and(|last| match topic {
                TopicKey::Name(name) => last.topic == *name,
                TopicKey::Id(id) => last.topic_id == *id,
            });
            if same {
                topics.last_mut().expect("checked").partitions.push(wanted);
                continue;
            }
            let mut fetch_topic = FetchTopic::default().with_partitions(vec![wanted]);
            match topic {
                TopicKey::Name(name) => fetch_topic.topic = name.clone(),
                TopicKey::Id(id) => fetch_topic.topic_id = *id,
            }
            topics.push(fetch_topic);
        }
        topics
    }

    /// Moves the partitions that returned records to the end of the order, keeping the
    /// relative order of both groups (as Kafka re-appends each in turn).
    fn rotate(&mut self) {
        let partitions = &mut self.partitions;
        let (mut quiet, busy): (Vec<_>, Vec<_>) = self
            .order
            .drain(..)
            .partition(|k| !partitions.get(k).is_some_and(|p| p.had_records));
        quiet.extend(busy);
        self.order = quiet;
        for p in partitions.values_mut() {
            p.had_records = false;
        }
    }
}

/// An answer the session cuts: its partitions, each with its topic, fields and record bytes.
pub(crate) trait SessionAnswer {
    /// Calls `keep` on every partition, in order, with its topic name (empty when only an id
    /// named it), topic id (nil below v13), fields and record bytes, and drops the partitions
    /// for which it returns false.
    fn retain_partitions(
        &mut self,
        keep: &mut dyn FnMut(&TopicName, Uuid, &PartitionData, usize) -> bool,
    );
}

/// How one fetch request is served.
#[derive(Debug)]
pub(crate) enum SessionFetch {
    /// No session: the request's partitions, answered in full, session id 0.
    Sessionless,
    /// A full fetch, answered in full, that creates this session if the cache has room.
    Full { session: Session, privileged: bool },
    /// An incremental fetch: the request's topics were replaced by every partition of the
    /// session; the answer carries those with news.
    Incremental {
        session: Arc<Mutex<Session>>,
        /// The session's epoch once this request was accepted: another request with this
        /// session meanwhile makes this answer INVALID_FETCH_SESSION_EPOCH.
        epoch: i32,
    },
}

/// A cached session and what eviction weighs.
#[derive(Debug)]
struct Entry {
    session: Arc<Mutex<Session>>,
    /// A replica's session (replica id >= 0), kept over consumers'.
    privileged: bool,
    created_ms: i64,
    last_used_ms: i64,
    /// Partitions at the last use.
    size: usize,
}

/// The sessions of a broker, bounded by `max.incremental.fetch.session.cache.slots`.
#[derive(Debug)]
pub(crate) struct FetchSessionCache {
    slots: usize,
    entries: Mutex<HashMap<i32, Entry>>,
}

impl FetchSessionCache {
    /// A cache of at most `slots` sessions; 0 keeps none (every fetch is full).
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions cached now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Decides how `request` is served, closing, checking and updating its session. For an
    /// incremental fetch, `request.topics` becomes every partition of the session with the
    /// offsets it holds. A session error is the whole answer, with session id 0.
    pub(crate) fn open(
        &self,
        version: i16,
        request: &mut FetchRequest,
        now_ms: i64,
    ) -> Result<SessionFetch, ResponseError> {
        if version < SESSION_VERSION {
            return Ok(SessionFetch::Sessionless);
        }
        let uses_topic_ids = version >= TOPIC_ID_VERSION;
        let epoch = request.session_epoch;
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            if request.session_id != INVALID_SESSION_ID {
                self.entries.lock().remove(&request.session_id);
            }
            if epoch == FINAL_EPOCH || self.slots == 0 {
                return Ok(SessionFetch::Sessionless);
            }
            let mut session = Session::new(uses_topic_ids);
            session.upsert(&request.topics);
            let privileged = request.replica_id.0 >= 0;
            return Ok(SessionFetch::Full {
                session,
                privileged,
            });
        }
        self.incremental(uses_topic_ids, request, now_ms)
    }

    fn incremental(
        &self,
        uses_topic_ids: bool,
        request: &mut FetchRequest,
        now_ms: i64,
    ) -> Result<SessionFetch, ResponseError> {
        let mut entries = self.entries.lock();
        let entry = entries
            .get_mut(&request.session_id)
            .ok_or(ResponseError::FetchSessionIdNotFound)?;
        let shared = Arc::clone(&entry.session);
        let mut session = shared.lock();
        if session.epoch != request.session_epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        if session.uses_topic_ids != uses_topic_ids {
            return Err(ResponseError::FetchSessionTopicIdError);
        }
        session.upsert(&request.topics);
        session.forget(request);
        if session.partitions.is_empty() {
            // Nothing left to follow: the session ends, this request is answered on its own.
            drop(session);
            entries.remove(&request.session_id);
            return Ok(SessionFetch::Sessionless);
        }
        session.epoch = next_epoch(session.epoch);
        entry.last_used_ms = now_ms;
        entry.size = session.partitions.len();
        request.topics = session.topics();
        let epoch = session.epoch;
        drop(session);
        Ok(SessionFetch::Incremental {
            session: shared,
            epoch,
        })
    }

    /// Cuts `answer` to what the session must carry and returns the session id it names, or
    /// the error that replaces the answer (with the session id it names).
    pub(crate) fn finish(
        &self,
        fetch: SessionFetch,
        answer: &mut dyn SessionAnswer,
        now_ms: i64,
    ) -> Result<i32, (ResponseError, i32)> {
        match fetch {
            SessionFetch::Sessionless => Ok(INVALID_SESSION_ID),
            SessionFetch::Full {
                mut session,
                privileged,
            } => {
                let uses_topic_ids = session.uses_topic_ids;
                answer.retain_partitions(&mut |name, id, data, _| {
                    let key = (TopicKey::of(uses_topic_ids, name, id), data.partition_index);
                    if let Some(cached) = session.partitions.get_mut(&key) {
                        cached.told(data);
                    }
                    true
                });
                Ok(self.insert(session, privileged, now_ms))
            }
            SessionFetch::Incremental { session, epoch } => {
                let mut session = session.lock();
                if session.epoch != epoch {
                    // A request with the same epoch was accepted meanwhile (a resend).
                    return Err((ResponseError::InvalidFetchSessionEpoch, session.id));
                }
                let uses_topic_ids = session.uses_topic_ids;
                let partitions = &mut session.partitions;
                answer.retain_partitions(&mut |name, id, data, record_bytes| {
                    let key = (TopicKey::of(uses_topic_ids, name, id), data.partition_index);
                    partitions
                        .get_mut(&key)
                        .is_none_or(|cached| cached.must_respond(data, record_bytes))
                });
                session.rotate();
                Ok(session.id)
            }
        }
    }

    /// Caches a new session when there is room or one can be evicted; its id, or 0.
    fn insert(&self, mut session: Session, privileged: bool, now_ms: i64) -> i32 {
        let size = session.partitions.len();
        let mut entries = self.entries.lock();
        if entries.len() >= self.slots && !evict(&mut entries, privileged, size, now_ms) {
            return INVALID_SESSION_ID;
        }
        let id = loop {
            // Random, positive and unused, as Kafka's `newSessionId`.
            let id = (Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32;
            if id != INVALID_SESSION_ID && !entries.contains_key(&id) {
                break id;
            }
        };
        session.id = id;
        session.epoch = next_epoch(INITIAL_EPOCH);
        entries.insert(
            id,
            Entry {
                session: Arc::new(Mutex::new(session)),
                privileged,
                created_ms: now_ms,
                last_used_ms: now_ms,
                size,
            },
        );
        id
    }
}

/// Makes room for a new session of `size` partitions (Kafka's `tryEvict`): the least recently
/// used session when unused for [`EVICTION_MS`]; else the least valuable session it may
/// evict, by (privileged, size, id), when the new one is worth at least as much. A privileged
/// session may evict any consumer's; a session younger than [`EVICTION_MS`] is otherwise kept.
fn evict(entries: &mut HashMap<i32, Entry>, privileged: bool, size: usize, now_ms: i64) -> bool {
    let stale = entries
        .iter()
        .min_by_key(|(id, e)| (e.last_used_ms, **id))
        .filter(|(_, e)| now_ms - e.last_used_ms > EVICTION_MS)
        .map(|(id, _)| *id);
    let victim = stale.or_else(|| {
        entries
            .iter()
            .filter(|(_, e)| {
                let old = now_ms - e.created_ms > EVICTION_MS;
                old || (privileged && !e.privileged)
            })
            .min_by_key(|(id, e)| (e.privileged, e.size, **id))
            .filter(|(_, e)| (privileged, size) >= (e.privileged, e.size))
            .map(|(id, _)| *id)
    });
    match victim {
        Some(id) => {
            entries.remove(&id);
            true
        }
        None => false,
    }
}

/// The fetcher's side of a session with one leader (Kafka's `FetchSessionHandler`): the first
/// fetch is full and asks for a session; once the leader gives one, each fetch names only the
/// partitions added or whose parameters (offset, epoch, log start) moved, and forgets those no
/// longer wanted. Any error, or a lost connection, starts over with a full fetch.
#[derive(Debug, Default)]
pub(crate) struct FetchSessionHandler {
    /// The session, 0 while there is none.
    session_id: i32,
    /// The next request's epoch: 0 for a full fetch.
    epoch: i32,
    /// What the session holds: the partitions as last sent, by topic and index.
    partitions: HashMap<(TopicName, i32), FetchPartition>,
}

impl FetchSessionHandler {
    /// Sets the session fields, topics and forgotten topics of `request` to fetch `wanted`.
    pub(crate) fn prepare(&mut self, request: &mut FetchRequest, wanted: Vec<FetchTopic>) {
        request.session_id = self.session_id;
        request.session_epoch = self.epoch;
        let previous = std::mem::take(&mut self.partitions);
        for topic in &wanted {
            for p in &topic.partitions {
                self.partitions
                    .insert((topic.topic.clone(), p.partition), p.clone());
            }
        }
        if self.epoch == INITIAL_EPOCH {
            request.topics = wanted;
            request.forgotten_topics_data = Vec::new();
            return;
        }
        request.topics = wanted
            .into_iter()
            .filter_map(|mut topic| {
                topic
                    .partitions
                    .retain(|p| previous.get(&(topic.topic.clone(), p.partition)) != Some(p));
                (!topic.partitions.is_empty()).then_some(topic)
            })
            .collect();
        let mut forgotten: Vec<kafka_protocol::messages::fetch_request::ForgottenTopic> =
            Vec::new();
        for (topic, partition) in previous.keys() {
            if self.partitions.contains_key(&(topic.clone(), *partition)) {
                continue;
            }
            match forgotten.iter_mut().find(|f| f.topic == *topic) {
                Some(f) => f.partitions.push(*partition),
                None => forgotten.push(
                    kafka_protocol::messages::fetch_request::ForgottenTopic::default()
                        .with_topic(topic.clone())
                        .with_partitions(vec![*partition]),
                ),
            }
        }
        request.forgotten_topics_data = forgotten;
    }

    /// Learns from the answer's top-level error and session id; false when the answer is a
    /// session error (nothing in it; the next fetch is full and replaces the session).
    pub(crate) fn answered(&mut self, error_code: i16, session_id: i32) -> bool {
        if error_code != 0 {
            self.lost();
            return false;
        }
        if self.epoch == INITIAL_EPOCH {
            // A full fetch: a session when the leader had room, else full fetches go on.
            self.session_id = session_id;
            self.epoch = if session_id == INVALID_SESSION_ID {
                INITIAL_EPOCH
            } else {
                next_epoch(INITIAL_EPOCH)
            };
        } else {
            self.epoch = next_epoch(self.epoch);
        }
        true
    }

    /// The session can no longer be trusted (an error, a lost connection): the next fetch is
    /// full and closes it at the leader (its id with epoch 0).
    pub(crate) fn lost(&mut self) {
        self.epoch = INITIAL_EPOCH;
        self.partitions.clear();
    }

    /// Whether the next fetch is incremental.
    #[cfg(test)]
    fn in_session(&self) -> bool {
        self.epoch != INITIAL_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::protocol::StrBytes;

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.to_string()))
    }

    fn wanted(partition: i32, fetch_offset: i64) -> FetchPartition {
        FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(fetch_offset)
            .with_partition_max_bytes(1 << 20)
    }

    fn topic(t: &str, partitions: &[(i32, i64)]) -> FetchTopic {
        FetchTopic::default()
            .with_topic(name(t))
            .with_partitions(partitions.iter().map(|&(p, o)| wanted(p, o)).collect())
    }

    fn request(session_id: i32, epoch: i32, topics: Vec<FetchTopic>) -> FetchRequest {
        FetchRequest::default()
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    /// A fake answer: `(topic, id, fields, record bytes)` per partition.
    #[derive(Debug, Default)]
    struct Answer(Vec<(TopicName, Uuid, PartitionData, usize)>);

    impl SessionAnswer for Answer {
        fn retain_partitions(
            &mut self,
            keep: &mut dyn FnMut(&TopicName, Uuid, &PartitionData, usize) -> bool,
        ) {
            self.0.retain(|(n, id, d, len)| keep(n, *id, d, *len));
        }
    }

    impl Answer {
        /// What the broker would answer for `topics`: `hw` as every high watermark, records
        /// for the partitions in `with_records`.
        fn of(topics: &[FetchTopic], hw: i64, with_records: &[(&str, i32)]) -> Self {
            let mut answer = Answer::default();
            for t in topics {
                for p in &t.partitions {
                    let records = with_records
                        .iter()
                        .any(|&(n, i)| t.topic.as_str() == n && i == p.partition);
                    let data = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(0);
                    answer.0.push((
                        t.topic.clone(),
                        t.topic_id,
                        data,
                        if records { 100 } else { 0 },
                    ));
                }
            }
            answer
        }

        fn partitions(&self) -> Vec<(String, i32)> {
            self.0
                .iter()
                .map(|(n, _, d, _)| (n.as_str().to_string(), d.partition_index))
                .collect()
        }
    }

    /// A fetch's outcome: the session id, the partitions answered, the topics read.
    type Fetched = (i32, Vec<(String, i32)>, Vec<FetchTopic>);

    /// Opens `request`, answers it as [`Answer::of`] would, and finishes: the session id and
    /// the partitions answered.
    fn fetch(
        cache: &FetchSessionCache,
        version: i16,
        mut request: FetchRequest,
        hw: i64,
        with_records: &[(&str, i32)],
        now_ms: i64,
    ) -> Result<Fetched, (ResponseError, i32)> {
        let opened = cache
            .open(version, &mut request, now_ms)
            .map_err(|e| (e, 0))?;
        let mut answer = Answer::of(&request.topics, hw, with_records);
        let id = cache.finish(opened, &mut answer, now_ms)?;
        Ok((id, answer.partitions(), request.topics))
    }

    fn full(cache: &FetchSessionCache, topics: Vec<FetchTopic>, now_ms: i64) -> i32 {
        let (id, answered, _) = fetch(cache, 12, request(0, 0, topics), 10, &[], now_ms).unwrap();
        assert!(!answered.is_empty(), "a full fetch answers every partition");
        id
    }

    #[test]
    fn a_full_fetch_creates_a_session_and_incremental_fetches_carry_only_news() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0), (1, 0), (2, 0)])], 0);
        assert_ne!(id, INVALID_SESSION_ID);
        assert_eq!(cache.len(), 1);
        // Nothing changed: an empty answer, yet every partition was read at its cached offset.
        let (same, answered, read) = fetch(&cache, 12, request(id, 1, vec![]), 10, &[], 1).unwrap();
        assert_eq!(same, id);
        assert!(answered.is_empty(), "{answered:?}");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].partitions.len(), 3);
        // Records on 1 and a new high watermark everywhere: all three, 1 with its records.
        let (_, answered, _) =
            fetch(&cache, 12, request(id, 2, vec![]), 11, &[("a", 1)], 2).unwrap();
        assert_eq!(answered.len(), 3);
        // Only records on 2 now (the high watermark did not move).
        let (_, answered, read) = fetch(
            &cache,
            12,
            request(id, 3, vec![topic("a", &[(1, 7)])]),
            11,
            &[("a", 2)],
            3,
        )
        .unwrap();
        assert_eq!(answered, [("a".to_string(), 2)]);
        // Partition 1 returned records last time: it moved to the end, with its new offset.
        let order: Vec<(i32, i64)> = read[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.fetch_offset))
            .collect();
        assert_eq!(order, [(0, 0), (2, 0), (1, 7)]);
        // ... and partition 2 follows it now.
        let (_, _, read) = fetch(&cache, 12, request(id, 4, vec![]), 11, &[], 4).unwrap();
        let order: Vec<i32> = read[0].partitions.iter().map(|p| p.partition).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn incremental_fetches_add_and_forget_partitions() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0), (1, 0)])], 0);
        let mut r = request(id, 1, vec![topic("b", &[(0, 5)])]);
        r.forgotten_topics_data = vec![
            ForgottenTopic::default()
                .with_topic(name("a"))
                .with_partitions(vec![0]),
        ];
        let (_, answered, read) = fetch(&cache, 12, r, 10, &[], 1).unwrap();
        // The new partition is always answered the first time; a0 is gone.
        assert_eq!(answered, [("b".to_string(), 0)]);
        let read: Vec<(String, i32)> = read
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition))
            })
            .collect();
        assert_eq!(read, [("a".to_string(), 1), ("b".to_string(), 0)]);
        // Forgetting everything ends the session: the answer is sessionless.
        let mut r = request(id, 2, vec![]);
        r.forgotten_topics_data = vec![
            ForgottenTopic::default()
                .with_topic(name("a"))
                .with_partitions(vec![1]),
            ForgottenTopic::default()
                .with_topic(name("b"))
                .with_partitions(vec![0]),
        ];
        let (none, _, _) = fetch(&cache, 12, r, 10, &[], 2).unwrap();
        assert_eq!(none, INVALID_SESSION_ID);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn errors_are_answered_every_time_and_the_partition_again_once_they_clear() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0)])], 0);
        let mut r = request(id, 1, vec![]);
        let opened = cache.open(12, &mut r, 1).unwrap();
        let mut answer = Answer::of(&r.topics, 10, &[]);
        answer.0[0].2.error_code = ResponseError::NotLeaderOrFollower.code();
        cache.finish(opened, &mut answer, 1).unwrap();
        assert_eq!(answer.0.len(), 1, "an error is news");
        // Back to normal with the same offsets as before the error: still told.
        let (_, answered, _) = fetch(&cache, 12, request(id, 2, vec![]), 10, &[], 2).unwrap();
        assert_eq!(answered.len(), 1);
        let (_, answered, _) = fetch(&cache, 12, request(id, 3, vec![]), 10, &[], 3).unwrap();
        assert!(answered.is_empty());
    }

    #[test]
    fn session_errors() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0)])], 0);
        let err = |r, version| fetch(&cache, version, r, 10, &[], 1).unwrap_err().0;
        assert_eq!(
            err(request(id, 5, vec![]), 12),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            err(request(id + 1, 1, vec![]), 12),
            ResponseError::FetchSessionIdNotFound
        );
        assert_eq!(
            err(request(0, 1, vec![]), 12),
            ResponseError::FetchSessionIdNotFound
        );
        // A session made by names cannot go on by ids.
        assert_eq!(
            err(request(id, 1, vec![]), 13),
            ResponseError::FetchSessionTopicIdError
        );
        // The errors did not move the epoch: 1 is still right, and then 1 is a resend.
        fetch(&cache, 12, request(id, 1, vec![]), 10, &[], 2).unwrap();
        assert_eq!(
            err(request(id, 1, vec![]), 12),
            ResponseError::InvalidFetchSessionEpoch
        );
        // Epoch -1 closes the session and answers in full.
        let (none, answered, _) = fetch(
            &cache,
            12,
            request(id, -1, vec![topic("a", &[(0, 0)])]),
            10,
            &[],
            3,
        )
        .unwrap();
        assert_eq!((none, answered.len()), (INVALID_SESSION_ID, 1));
        assert_eq!(
            err(request(id, 2, vec![]), 12),
            ResponseError::FetchSessionIdNotFound
        );
        // Below v7 there are no sessions at all.
        let (none, _, _) = fetch(
            &cache,
            6,
            request(0, 0, vec![topic("a", &[(0, 0)])]),
            10,
            &[],
            4,
        )
        .unwrap();
        assert_eq!(none, INVALID_SESSION_ID);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_request_overtaken_by_its_resend_answers_an_epoch_error() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0)])], 0);
        let mut first = request(id, 1, vec![]);
        let opened = cache.open(12, &mut first, 1).unwrap();
        // The next epoch arrives while the first still waits.
        fetch(&cache, 12, request(id, 2, vec![]), 10, &[], 1).unwrap();
        let mut answer = Answer::of(&first.topics, 10, &[]);
        assert_eq!(
            cache.finish(opened, &mut answer, 2),
            Err((ResponseError::InvalidFetchSessionEpoch, id))
        );
    }

    #[test]
    fn epoch_zero_with_a_session_id_replaces_the_session() {
        let cache = FetchSessionCache::new(10);
        let id = full(&cache, vec![topic("a", &[(0, 0)])], 0);
        let (new, _, _) = fetch(
            &cache,
            12,
            request(id, 0, vec![topic("a", &[(0, 0)])]),
            10,
            &[],
            1,
        )
        .unwrap();
        assert_ne!(new, id);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn sessions_by_topic_id_key_partitions_by_id() {
        let cache = FetchSessionCache::new(10);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let by_id = |id, partitions: &[i32]| {
            FetchTopic::default()
                .with_topic_id(id)
                .with_partitions(partitions.iter().map(|&p| wanted(p, 0)).collect())
        };
        let (id, _, _) = fetch(
            &cache,
            13,
            request(0, 0, vec![by_id(a, &[0, 1])]),
            10,
            &[],
            0,
        )
        .unwrap();
        let mut r = request(id, 1, vec![by_id(b, &[0])]);
        r.forgotten_topics_data = vec![
            ForgottenTopic::default()
                .with_topic_id(a)
                .with_partitions(vec![1]),
        ];
        let (_, answered, read) = fetch(&cache, 13, r, 10, &[], 1).unwrap();
        assert_eq!(answered.len(), 1, "only the new partition");
        let ids: Vec<(Uuid, usize)> = read
            .iter()
            .map(|t| (t.topic_id, t.partitions.len()))
            .collect();
        assert_eq!(ids, [(a, 1), (b, 1)]);
        assert_eq!(
            fetch(&cache, 12, request(id, 2, vec![]), 10, &[], 2)
                .unwrap_err()
                .0,
            ResponseError::FetchSessionTopicIdError
        );
    }

    #[test]
    fn no_slots_no_sessions() {
        let cache = FetchSessionCache::new(0);
        assert_eq!(
            full(&cache, vec![topic("a", &[(0, 0)])], 0),
            INVALID_SESSION_ID
        );
    }

    /// A full fetch of `partitions` partitions, by a replica when `privileged`.
    fn create(cache: &FetchSessionCache, partitions: i32, privileged: bool, now_ms: i64) -> i32 {
        let parts: Vec<(i32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
        let mut r = request(0, 0, vec![topic("t", &parts)]);
        if privileged {
            r.replica_id = BrokerId(1);
        }
        fetch(cache, 12, r, 10, &[], now_ms).unwrap().0
    }

    #[test]
    fn eviction_prefers_stale_then_unprivileged_then_small_sessions() {
        let cache = FetchSessionCache::new(2);
        let small = create(&cache, 1, false, 0);
        let big = create(&cache, 5, false, 0);
        // Full, everyone recent: a consumer gets no session.
        assert_eq!(create(&cache, 9, false, 1_000), INVALID_SESSION_ID);
        // A replica evicts a consumer: the smaller one.
        let replica = create(&cache, 1, true, 1_000);
        assert_ne!(replica, INVALID_SESSION_ID);
        assert_eq!(
            fetch(&cache, 12, request(small, 1, vec![]), 10, &[], 1_000)
                .unwrap_err()
                .0,
            ResponseError::FetchSessionIdNotFound
        );
        // Keep both in use; once old, a bigger consumer session may evict the smaller consumer
        // one, but no consumer session may evict the replica's.
        let later = EVICTION_MS + 10;
        fetch(&cache, 12, request(big, 1, vec![]), 10, &[], later).unwrap();
        fetch(&cache, 12, request(replica, 1, vec![]), 10, &[], later).unwrap();
        assert_eq!(
            create(&cache, 2, false, later),
            INVALID_SESSION_ID,
            "smaller than big"
        );
        let bigger = create(&cache, 6, false, later);
        assert_ne!(bigger, INVALID_SESSION_ID);
        assert!(fetch(&cache, 12, request(big, 2, vec![]), 10, &[], later).is_err());
        fetch(&cache, 12, request(replica, 2, vec![]), 10, &[], later).unwrap();
        // A session unused for the eviction time goes first, whatever its worth.
        let much_later = later + EVICTION_MS + 1;
        fetch(&cache, 12, request(bigger, 1, vec![]), 10, &[], much_later).unwrap();
        assert_ne!(create(&cache, 1, false, much_later), INVALID_SESSION_ID);
        assert!(fetch(&cache, 12, request(replica, 3, vec![]), 10, &[], much_later).is_err());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_fetcher_sends_only_what_changed_and_starts_over_after_an_error() {
        let mut handler = FetchSessionHandler::default();
        let mut r = FetchRequest::default();
        handler.prepare(&mut r, vec![topic("a", &[(0, 0), (1, 0), (2, 0)])]);
        assert_eq!(
            (r.session_id, r.session_epoch),
            (0, 0),
            "full, asking for a session"
        );
        assert_eq!(r.topics[0].partitions.len(), 3);
        assert!(handler.answered(0, 55));
        assert!(handler.in_session());
        // 1 moved, 2 is no longer wanted, b0 is new.
        handler.prepare(
            &mut r,
            vec![topic("a", &[(0, 0), (1, 9)]), topic("b", &[(0, 0)])],
        );
        assert_eq!((r.session_id, r.session_epoch), (55, 1));
        let sent: Vec<(String, i32)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.as_str().to_string(), p.partition))
            })
            .collect();
        assert_eq!(sent, [("a".to_string(), 1), ("b".to_string(), 0)]);
        assert_eq!(r.forgotten_topics_data.len(), 1);
        assert_eq!(r.forgotten_topics_data[0].partitions, [2]);
        assert!(handler.answered(0, 55));
        // Nothing changed: an empty incremental fetch at the next epoch.
        handler.prepare(
            &mut r,
            vec![topic("a", &[(0, 0), (1, 9)]), topic("b", &[(0, 0)])],
        );
        assert_eq!(r.session_epoch, 2);
        assert!(r.topics.is_empty() && r.forgotten_topics_data.is_empty());
        // A session error: the next fetch is full again and closes session 55.
        assert!(!handler.answered(ResponseError::InvalidFetchSessionEpoch.code(), 0));
        handler.prepare(&mut r, vec![topic("a", &[(0, 0), (1, 9)])]);
        assert_eq!((r.session_id, r.session_epoch), (55, 0));
        assert_eq!(r.topics[0].partitions.len(), 2);
        // A leader without room: full fetches go on.
        assert!(handler.answered(0, 0));
        assert!(!handler.in_session());
    }

    /// A follower and a leader through many rounds of appends: with the session, the
    /// follower's offsets and high watermarks end where full fetches would have left them.
    #[test]
    fn a_follower_in_a_session_misses_nothing() {
        const PARTITIONS: i32 = 20;
        let cache = FetchSessionCache::new(4);
        let mut handler = FetchSessionHandler::default();
        // The leader's log ends and the follower's copies (offset, known high watermark).
        let mut leader = vec![0i64; PARTITIONS as usize];
        let mut follower = vec![(0i64, -1i64); PARTITIONS as usize];
        let mut x: u64 = 7;
        for round in 0..300 {
            for end in leader.iter_mut() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if x >> 61 == 0 {
                    *end += (x >> 40) as i64 % 5 + 1;
                }
            }
            let wanted: Vec<(i32, i64)> = (0..PARTITIONS)
                .map(|p| (p, follower[p as usize].0))
                .collect();
            let mut request = FetchRequest::default().with_replica_id(BrokerId(2));
            handler.prepare(&mut request, vec![topic("t", &wanted)]);
            let opened = cache.open(12, &mut request, round).unwrap();
            // The leader reads each partition at the offset it holds for it.
            let mut answer = Answer::default();
            for t in &request.topics {
                for p in &t.partitions {
                    let end = leader[p.partition as usize];
                    let records = (end - p.fetch_offset).max(0) as usize;
                    let data = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(end)
                        .with_last_stable_offset(end)
                        .with_records(Some(bytes::Bytes::from(vec![0u8; records])));
                    answer.0.push((t.topic.clone(), t.topic_id, data, records));
                }
            }
            let id = cache.finish(opened, &mut answer, round).unwrap();
            assert!(handler.answered(0, id));
            for (_, _, data, _) in &answer.0 {
                let copy = &mut follower[data.partition_index as usize];
                copy.0 += data.records.as_ref().map_or(0, |r| r.len()) as i64;
                copy.1 = data.high_watermark;
            }
            let expected: Vec<(i64, i64)> = leader.iter().map(|&e| (e, e)).collect();
            assert_eq!(follower, expected, "round {round}");
        }
        assert!(handler.in_session());
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(-1), -1);
    }
}
