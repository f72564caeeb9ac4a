//! Client quotas applied to requests (KIP-219): what a request is charged, the
//! `throttle_time_ms` its answer carries, and the connection's mute.
//!
//! As Kafka's `KafkaApis`:
//! - Produce charges its request bytes to `producer_byte_rate`, before it is handled;
//! - Fetch charges its response bytes to `consumer_byte_rate`, once read (the records are sent
//!   and the connection muted; Kafka would answer empty and not charge, which an incremental
//!   fetch session here could not tell from a partition with no news);
//! - every request charges its handler time to `request_percentage`: the throttle it gets is
//!   the one its client's rate calls for when it arrives (its own time is known only once
//!   answered, and counts from the next request on);
//! - the answer carries the largest throttle, and the connection reads no further request until
//!   the largest has passed ([`Mute`]), whether or not the client honours the field.
//!
//! Requests of other brokers (follower fetches, transaction markers) are not charged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseKind};

use super::{Context, now_ms};
use crate::security::quota::{Mute, QuotaConfigs, QuotaType, Quotas, request_percentage};
use crate::session::Session;

/// A request's account with the client quotas.
pub(super) struct Charge {
    quotas: Arc<Quotas>,
    configs: Arc<QuotaConfigs>,
    user: String,
    client_id: String,
    mute: Arc<Mute>,
    /// The largest throttle so far, in milliseconds.
    throttle_ms: i64,
    started: Instant,
}

impl Charge {
    /// Opens the account of a request of `frame_bytes` bytes: charges a Produce's bytes and
    /// looks at the client's request rate. `None` when no quota could apply (none is set, or the
    /// request is another broker's).
    pub(super) fn open(
        ctx: &Context,
        session: &Session,
        header: &RequestHeader,
        api_key: ApiKey,
        frame_bytes: usize,
    ) -> Option<Self> {
        if api_key == ApiKey::WriteTxnMarkers {
            return None;
        }
        let configs = ctx.quotas.configs(&ctx.security.records());
        if !QuotaType::ALL.into_iter().any(|t| configs.any(t)) {
            return None;
        }
        let mut charge = Self {
            quotas: Arc::clone(&ctx.quotas),
            configs,
            user: session.principal.name.clone(),
            client_id: header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            mute: Arc::clone(&session.mute),
            throttle_ms: 0,
            started: Instant::now(),
        };
        let now = now_ms();
        // The request rate as it stands (recording nothing adds nothing).
        charge.add(QuotaType::Request, 0.0, now);
        if api_key == ApiKey::Produce {
            charge.add(QuotaType::Produce, frame_bytes as f64, now);
        }
        Some(charge)
    }

    fn add(&mut self, kind: QuotaType, value: f64, now_ms: i64) {
        let who = (self.user.as_str(), self.client_id.as_str());
        let throttle = self.quotas.record(&self.configs, kind, who, value, now_ms);
        self.throttle_ms = self.throttle_ms.max(throttle);
    }

    /// The throttle the answer carries, in milliseconds.
    pub(super) fn throttle_ms(&self) -> i32 {
        self.throttle_ms.min(i64::from(i32::MAX)) as i32
    }

    /// The most a Fetch may ask for under its `consumer_byte_rate`, as Kafka's
    /// `getMaxValueInQuotaWindow`: what the quota's windows hold (the quota times
    /// `quota.window.num − 1` windows). `None` without a fetch quota.
    pub(super) fn fetch_bytes_max(&self) -> Option<i32> {
        let (_, quota) = self
            .configs
            .resolve(QuotaType::Fetch, &self.user, &self.client_id)?;
        let windows = self.quotas.windows();
        let held = (windows.samples.saturating_sub(1).max(1) as i64 * windows.window_ms) as f64;
        Some((quota * held / 1000.0).clamp(1.0, f64::from(i32::MAX)) as i32)
    }

    /// Charges a Fetch's response bytes; the throttle the answer then carries.
    pub(super) fn fetched(&mut self, response_bytes: usize) -> i32 {
        self.add(QuotaType::Fetch, response_bytes as f64, now_ms());
        self.throttle_ms()
    }

    /// Closes the account once the handler returned: charges its time (`busy` when it ran
    /// apart, else the time since [`Charge::open`]), and mutes the connection for the throttle.
    pub(super) fn close(mut self, busy: Option<Duration>) {
        let busy = busy.unwrap_or_else(|| self.started.elapsed());
        self.add(QuotaType::Request, request_percentage(busy), now_ms());
        self.mute.extend(self.throttle_ms);
    }
}

/// Sets the `throttle_time_ms` of an answer, for the APIs whose answers have one (at versions
/// without the field it is not encoded).
pub(super) fn set_throttle(response: &mut ResponseKind, throttle_ms: i32) {
    macro_rules! throttled {
        ($($api:ident),* $(,)?) => {
            match response {
                $(ResponseKind::$api(r) => r.throttle_time_ms = throttle_ms,)*
                _ => {}
            }
        };
    }
    throttled!(
        Produce,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetFetch,
        FindCoordinator,
        JoinGroup,
        Heartbeat,
        LeaveGroup,
        SyncGroup,
        DescribeGroups,
        ListGroups,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        OffsetForLeaderEpoch,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        TxnOffsetCommit,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
        DescribeConfigs,
        AlterConfigs,
        DescribeLogDirs,
        CreatePartitions,
        DeleteGroups,
        ElectLeaders,
        IncrementalAlterConfigs,
        AlterPartitionReassignments,
        ListPartitionReassignments,
        OffsetDelete,
        DescribeClientQuotas,
        AlterClientQuotas,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        DescribeCluster,
        DescribeProducers,
        DescribeTransactions,
        ListTransactions,
    );
}

/// A future and the time spent polling it: the thread time of a request handled apart (its
/// waits not counted), for `request_percentage`.
pub(super) struct Busy<F: Future> {
    inner: std::pin::Pin<Box<F>>,
    busy: Duration,
}

impl<F: Future> Busy<F> {
    /// Measures `inner`.
    pub(super) fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            busy: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Busy<F> {
    type Output = (F::Output, Duration);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let started = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        self.busy += started.elapsed();
        polled.map(|output| (output, self.busy))
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;
    use crate::handler::tests::{context, session};
    use crate::handler::{Reply, dispatch, str_bytes};
    use crate::security::SecurityChange;

    /// A Produce v9 frame of one batch of `values` values of 100 bytes to `t`-0, client id
    /// `app`.
    fn produce_frame(values: usize) -> Bytes {
        let records: Vec<Record> = (0..values)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: now_ms(),
                key: None,
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut batch = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.freeze())),
                    ]),
            ]);
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(9)
            .with_correlation_id(1)
            .with_client_id(Some(str_bytes("app")))
            .encode(&mut frame, ApiKey::Produce.request_header_version(9))
            .unwrap();
        request.encode(&mut frame, 9).unwrap();
        frame.freeze()
    }

    fn throttle_of(reply: Reply) -> i32 {
        let Reply::Ready(Some(frame)) = reply else {
            panic!("an answer at once")
        };
        let mut body = Bytes::from(frame.to_vec().unwrap()).slice(4..);
        ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(9)).unwrap();
        let response = ProduceResponse::decode(&mut body, 9).unwrap();
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        response.throttle_time_ms
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_produce_past_its_quota_carries_its_throttle_and_mutes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        ctx.manager
            .create_topic("t", 1, 1, Default::default(), false, 0)
            .unwrap();
        let session = session();
        // No quota: nothing measured, no throttle.
        assert_eq!(
            throttle_of(dispatch(&ctx, &session, produce_frame(50)).unwrap()),
            0
        );
        assert!(session.mute.remaining().is_zero());
        ctx.security
            .change(vec![SecurityChange {
                kind: crate::security::quota::KIND.into(),
                key: "clients/<default>".into(),
                value: Some(r#"{"producer_byte_rate":1000}"#.into()),
            }])
            .await
            .unwrap();
        // Within 10 s of quota (Kafka's start-up allowance with 11 windows): no throttle…
        assert_eq!(
            throttle_of(dispatch(&ctx, &session, produce_frame(50)).unwrap()),
            0
        );
        // …16.5 KB in all is 65% over: (1650 − 1000) / 1000 × 10 s, and as long a mute.
        let throttle = throttle_of(dispatch(&ctx, &session, produce_frame(100)).unwrap());
        assert!((6_000..=7_000).contains(&throttle), "{throttle}");
        let muted = session.mute.remaining();
        assert!(
            muted > Duration::from_millis(throttle as u64 - 500),
            "{muted:?} for {throttle} ms"
        );
        // Another client id's connection is not muted.
        assert!(crate::handler::tests::session().mute.remaining().is_zero());
    }
}
