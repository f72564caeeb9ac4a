//! Every API a client can send, from a principal with no binding at all, is refused with Kafka's
//! error for its resource; the same requests from a super user are not.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::handler::tests::{context_with_acl, session};
use crate::handler::{Context, Reply, dispatch};
use crate::security::acl::AclSettings;
use crate::session::{Principal, Session};

const TOPIC: u8 = 29;
const GROUP: u8 = 30;
const CLUSTER: u8 = 31;
const TXN: u8 = 53;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic() -> TopicName {
    TopicName(text("t"))
}

fn group() -> GroupId {
    GroupId(text("g"))
}

fn txn() -> TransactionalId {
    TransactionalId(text("x"))
}

/// `(API, version, request, the authorization error expected)`: every API that checks one.
fn requests() -> Vec<(ApiKey, i16, RequestKind, u8)> {
    use kafka_protocol::messages::{
        add_partitions_to_txn_request as aptxn, alter_configs_request as ac,
        alter_partition_reassignments_request as apr, create_acls_request as cacl,
        create_partitions_request as cp, create_topics_request as ct, delete_acls_request as dacl,
        delete_records_request as dr, describe_configs_request as dc,
        describe_producers_request as dp, fetch_request as f,
        incremental_alter_configs_request as iac, list_offsets_request as lo,
        offset_commit_request as oc, offset_delete_request as od,
        offset_for_leader_epoch_request as ofle, produce_request as p,
        txn_offset_commit_request as toc, write_txn_markers_request as wtm,
    };
    let produce = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        p::TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![p::PartitionProduceData::default().with_index(0)]),
    ]);
    let fetch = |replica: i32| {
        FetchRequest::default()
            .with_replica_id(BrokerId(replica))
            .with_max_wait_ms(0)
            .with_topics(vec![
                f::FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![
                        f::FetchPartition::default().with_partition_max_bytes(1024),
                    ]),
            ])
    };
    let commit_topic = vec![
        oc::OffsetCommitRequestTopic::default()
            .with_name(topic())
            .with_partitions(vec![oc::OffsetCommitRequestPartition::default()]),
    ];
    let configs = |resource_type: i8, name: &str| {
        (
            dc::DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(text(name)),
            ac::AlterConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(text(name)),
        )
    };
    let (describe_topic, alter_topic) = configs(2, "t");
    let (describe_broker, _) = configs(4, "0");
    vec![
        (ApiKey::Produce, 9, produce.clone().into(), TOPIC),
        (
            ApiKey::Produce,
            9,
            produce.with_transactional_id(Some(txn())).into(),
            TXN,
        ),
        (ApiKey::Fetch, 12, fetch(-1).into(), TOPIC),
        (ApiKey::Fetch, 12, fetch(1).into(), TOPIC),
        (
            ApiKey::ListOffsets,
            7,
            ListOffsetsRequest::default()
                .with_topics(vec![
                    lo::ListOffsetsTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![
                            lo::ListOffsetsPartition::default().with_timestamp(-1),
                        ]),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::Metadata,
            12,
            MetadataRequest::default()
                .with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
                ]))
                .into(),
            TOPIC,
        ),
        (
            ApiKey::OffsetFetch,
            7,
            OffsetFetchRequest::default().with_group_id(group()).into(),
            GROUP,
        ),
        (
            ApiKey::FindCoordinator,
            3,
            FindCoordinatorRequest::default().with_key(text("g")).into(),
            GROUP,
        ),
        (
            ApiKey::FindCoordinator,
            3,
            FindCoordinatorRequest::default()
                .with_key(text("x"))
                .with_key_type(1)
                .into(),
            TXN,
        ),
        (
            ApiKey::JoinGroup,
            5,
            JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(10_000)
                .into(),
            GROUP,
        ),
        (
            ApiKey::SyncGroup,
            3,
            SyncGroupRequest::default().with_group_id(group()).into(),
            GROUP,
        ),
        (
            ApiKey::Heartbeat,
            3,
            HeartbeatRequest::default().with_group_id(group()).into(),
            GROUP,
        ),
        (
            ApiKey::LeaveGroup,
            3,
            LeaveGroupRequest::default().with_group_id(group()).into(),
            GROUP,
        ),
        (
            ApiKey::DescribeGroups,
            5,
            DescribeGroupsRequest::default()
                .with_groups(vec![group()])
                .into(),
            GROUP,
        ),
        (
            ApiKey::DeleteGroups,
            2,
            DeleteGroupsRequest::default()
                .with_groups_names(vec![group()])
                .into(),
            GROUP,
        ),
        (
            ApiKey::OffsetDelete,
            0,
            OffsetDeleteRequest::default()
                .with_group_id(group())
                .with_topics(vec![
                    od::OffsetDeleteRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![od::OffsetDeleteRequestPartition::default()]),
                ])
                .into(),
            GROUP,
        ),
        (
            ApiKey::CreateTopics,
            7,
            CreateTopicsRequest::default()
                .with_topics(vec![
                    ct::CreatableTopic::default()
                        .with_name(TopicName(text("new")))
                        .with_num_partitions(1)
                        .with_replication_factor(1),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DeleteTopics,
            6,
            DeleteTopicsRequest::default()
                .with_topics(vec![
                    delete_topics_request::DeleteTopicState::default().with_name(Some(topic())),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::CreatePartitions,
            3,
            CreatePartitionsRequest::default()
                .with_topics(vec![
                    cp::CreatePartitionsTopic::default()
                        .with_name(topic())
                        .with_count(2),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DescribeConfigs,
            4,
            DescribeConfigsRequest::default()
                .with_resources(vec![describe_topic])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DescribeConfigs,
            4,
            DescribeConfigsRequest::default()
                .with_resources(vec![describe_broker])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::AlterConfigs,
            2,
            AlterConfigsRequest::default()
                .with_resources(vec![alter_topic])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::IncrementalAlterConfigs,
            1,
            IncrementalAlterConfigsRequest::default()
                .with_resources(vec![
                    iac::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text("t")),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::InitProducerId,
            4,
            InitProducerIdRequest::default()
                .with_transactional_id(Some(txn()))
                .with_transaction_timeout_ms(60_000)
                .into(),
            TXN,
        ),
        (
            ApiKey::InitProducerId,
            4,
            InitProducerIdRequest::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::AddPartitionsToTxn,
            3,
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(txn())
                .with_v3_and_below_topics(vec![
                    aptxn::AddPartitionsToTxnTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![0]),
                ])
                .into(),
            TXN,
        ),
        (
            ApiKey::AddOffsetsToTxn,
            3,
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(txn())
                .with_group_id(group())
                .into(),
            TXN,
        ),
        (
            ApiKey::EndTxn,
            3,
            EndTxnRequest::default().with_transactional_id(txn()).into(),
            TXN,
        ),
        (
            ApiKey::TxnOffsetCommit,
            3,
            TxnOffsetCommitRequest::default()
                .with_transactional_id(txn())
                .with_group_id(group())
                .with_topics(vec![
                    toc::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![toc::TxnOffsetCommitRequestPartition::default()]),
                ])
                .into(),
            TXN,
        ),
        (
            ApiKey::OffsetCommit,
            8,
            OffsetCommitRequest::default()
                .with_group_id(group())
                .with_topics(commit_topic)
                .into(),
            GROUP,
        ),
        (
            ApiKey::WriteTxnMarkers,
            1,
            WriteTxnMarkersRequest::default()
                .with_markers(vec![wtm::WritableTxnMarker::default().with_topics(vec![
                    wtm::WritableTxnMarkerTopic::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0]),
                ])])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::OffsetForLeaderEpoch,
            4,
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ofle::OffsetForLeaderTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![ofle::OffsetForLeaderPartition::default()]),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DeleteRecords,
            2,
            DeleteRecordsRequest::default()
                .with_topics(vec![
                    dr::DeleteRecordsTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![
                            dr::DeleteRecordsPartition::default().with_offset(0),
                        ]),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DescribeLogDirs,
            3,
            DescribeLogDirsRequest::default().into(),
            CLUSTER,
        ),
        (
            ApiKey::ElectLeaders,
            2,
            ElectLeadersRequest::default().into(),
            CLUSTER,
        ),
        (
            ApiKey::AlterPartitionReassignments,
            0,
            AlterPartitionReassignmentsRequest::default()
                .with_topics(vec![apr::ReassignableTopic::default().with_name(topic())])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::ListPartitionReassignments,
            0,
            ListPartitionReassignmentsRequest::default().into(),
            CLUSTER,
        ),
        (
            ApiKey::DescribeProducers,
            0,
            DescribeProducersRequest::default()
                .with_topics(vec![
                    dp::TopicRequest::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0]),
                ])
                .into(),
            TOPIC,
        ),
        (
            ApiKey::DescribeTransactions,
            0,
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![txn()])
                .into(),
            TXN,
        ),
        (
            ApiKey::DescribeAcls,
            1,
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1)
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::CreateAcls,
            1,
            CreateAclsRequest::default()
                .with_creations(vec![
                    cacl::AclCreation::default()
                        .with_resource_type(2)
                        .with_resource_name(text("t"))
                        .with_resource_pattern_type(3)
                        .with_principal(text("User:ANONYMOUS"))
                        .with_host(text("*"))
                        .with_operation(2)
                        .with_permission_type(3),
                ])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::DeleteAcls,
            1,
            DeleteAclsRequest::default()
                .with_filters(vec![
                    dacl::DeleteAclsFilter::default()
                        .with_resource_type_filter(1)
                        .with_pattern_type_filter(1)
                        .with_operation(1)
                        .with_permission_type(1),
                ])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::DescribeUserScramCredentials,
            0,
            DescribeUserScramCredentialsRequest::default().into(),
            CLUSTER,
        ),
        (
            ApiKey::AlterUserScramCredentials,
            0,
            AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(text("alice"))
                        .with_mechanism(1),
                ])
                .into(),
            CLUSTER,
        ),
        (
            ApiKey::DescribeClientQuotas,
            1,
            DescribeClientQuotasRequest::default().into(),
            CLUSTER,
        ),
        (
            ApiKey::AlterClientQuotas,
            1,
            AlterClientQuotasRequest::default()
                .with_entries(vec![
                    alter_client_quotas_request::EntryData::default().with_entity(vec![
                        alter_client_quotas_request::EntityData::default()
                            .with_entity_type(text("user"))
                            .with_entity_name(Some(text("alice"))),
                    ]),
                ])
                .into(),
            CLUSTER,
        ),
    ]
}

/// The response to `request`, printed with `Debug` (every `error_code` field shows in it).
async fn answer(
    ctx: &Arc<Context>,
    session: &Session,
    (key, version): (ApiKey, i16),
    request: &RequestKind,
) -> String {
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut frame, key.request_header_version(version))
        .unwrap();
    request.encode(&mut frame, version).unwrap();
    let reply = dispatch(ctx, session, frame.freeze())
        .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    let frame = match reply {
        Reply::Ready(Some(frame)) => frame,
        Reply::Ready(None) => panic!("{key:?}: no answer"),
        Reply::Waiting(task) => task.await.unwrap().unwrap(),
    };
    let mut body = Bytes::from(frame.to_vec().unwrap()).slice(4..);
    ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    format!(
        "{:?}",
        ResponseKind::decode(key, &mut body, version).unwrap()
    )
}

fn has_code(debug: &str, code: u8) -> bool {
    debug.contains(&format!("error_code: {code},"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_refuses_a_principal_without_bindings_and_allows_a_super_user() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context_with_acl(
        dir.path(),
        AclSettings {
            enabled: true,
            super_users: vec![Principal::user("admin")],
            allow_everyone_if_no_acl_found: false,
        },
    );
    ctx.manager
        .create_topic("t", 1, 1, Default::default(), false, 0)
        .unwrap();
    let nobody = session();
    for (key, version, request, code) in requests() {
        let debug = answer(&ctx, &nobody, (key, version), &request).await;
        assert!(has_code(&debug, code), "{key:?} v{version}: {debug}");
    }
    // Filters: nothing listed, nothing refused.
    let listed = answer(
        &ctx,
        &nobody,
        (ApiKey::Metadata, 12),
        &MetadataRequest::default().with_topics(None).into(),
    )
    .await;
    assert!(listed.contains("topics: []"), "{listed}");
    let mut admin = session();
    admin.principal = Principal::user("admin");
    // KIP-430: every topic operation (READ 3 … ALTER_CONFIGS 11, no CLUSTER_ACTION 9) for a
    // super user, as bits.
    let described = answer(
        &ctx,
        &admin,
        (ApiKey::Metadata, 12),
        &MetadataRequest::default()
            .with_topics(None)
            .with_include_topic_authorized_operations(true)
            .into(),
    )
    .await;
    assert!(
        described.contains("topic_authorized_operations: 3576"),
        "{described}"
    );
    for (key, version, request, _) in requests() {
        let debug = answer(&ctx, &admin, (key, version), &request).await;
        for code in [TOPIC, GROUP, CLUSTER, TXN] {
            assert!(!has_code(&debug, code), "{key:?} v{version}: {debug}");
        }
    }
}

/// Stores `bindings` as the authorizer reads them.
async fn bind(ctx: &Context, bindings: &[crate::security::acl::AclBinding]) {
    let changes = bindings
        .iter()
        .map(|b| crate::security::SecurityChange {
            kind: crate::security::acl::ACL_KIND.into(),
            key: b.key(),
            value: Some(b.to_json()),
        })
        .collect();
    ctx.security.change(changes).await.unwrap();
}

/// An ALLOW of `operation` on the topic `t` for the anonymous principal of [`session`].
fn allow_on_t(operation: crate::security::acl::AclOperation) -> crate::security::acl::AclBinding {
    use crate::security::acl::{AclBinding, AclPermission, PatternType, ResourceType};
    AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: "t".into(),
        pattern_type: PatternType::Literal,
        principal: Principal::anonymous().to_string(),
        host: "*".into(),
        operation,
        permission_type: AclPermission::Allow,
    }
}

fn restricted(dir: &std::path::Path) -> Arc<Context> {
    let ctx = context_with_acl(
        dir,
        AclSettings {
            enabled: true,
            super_users: vec![Principal::user("admin")],
            allow_everyone_if_no_acl_found: false,
        },
    );
    ctx.manager
        .create_topic("t", 1, 1, Default::default(), false, 0)
        .unwrap();
    ctx
}

/// A Produce to `t`-0 of one batch, transactional or not, without a transactional id.
fn produce_batch(transactional: bool) -> RequestKind {
    use kafka_protocol::messages::produce_request as p;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional,
        control: false,
        partition_leader_epoch: 0,
        producer_id: 7,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 1,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, [record].iter(), &options).unwrap();
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            p::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    p::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze())),
                ]),
        ])
        .into()
}

/// WRITE on a topic is not enough for transactional batches: a request carrying them without a
/// transactional id is refused whole, as Kafka does, and nothing is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batches_without_a_transactional_id_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = restricted(dir.path());
    bind(
        &ctx,
        &[allow_on_t(crate::security::acl::AclOperation::Write)],
    )
    .await;
    let writer = session();
    let refused = answer(&ctx, &writer, (ApiKey::Produce, 9), &produce_batch(true)).await;
    assert!(has_code(&refused, TXN), "{refused}");
    let partition = ctx.manager.leader_partition("t", 0).unwrap();
    assert_eq!(partition.log_end_offset(), 0, "nothing appended");
    let written = answer(&ctx, &writer, (ApiKey::Produce, 9), &produce_batch(false)).await;
    assert!(has_code(&written, 0), "{written}");
    assert_eq!(partition.log_end_offset(), 1);
}

/// DeleteTopics by id does not tell the topic's name to a principal that may not describe it;
/// one that may describe it (and not delete it) gets the name with the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topics_by_id_does_not_name_an_undescribable_topic() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    let dir = tempfile::tempdir().unwrap();
    let ctx = restricted(dir.path());
    let id = ctx.manager.topic("t").unwrap().topic_id;
    let request: RequestKind = DeleteTopicsRequest::default()
        .with_topics(vec![DeleteTopicState::default().with_topic_id(id)])
        .into();
    let nobody = session();
    let refused = answer(&ctx, &nobody, (ApiKey::DeleteTopics, 6), &request).await;
    assert!(has_code(&refused, TOPIC), "{refused}");
    assert!(refused.contains("name: None"), "{refused}");
    bind(
        &ctx,
        &[allow_on_t(crate::security::acl::AclOperation::Describe)],
    )
    .await;
    let named = answer(&ctx, &nobody, (ApiKey::DeleteTopics, 6), &request).await;
    assert!(has_code(&named, TOPIC), "{named}");
    assert!(named.contains("\"t\""), "{named}");
    assert!(ctx.manager.topic("t").is_some());
}

/// DescribeTransactions names only the topics of the transaction that the principal may
/// describe (as Kafka): DESCRIBE on the transactional id does not tell the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_transactions_leaves_out_undescribable_topics() {
    use crate::security::acl::{AclBinding, AclOperation, AclPermission, PatternType};
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    let dir = tempfile::tempdir().unwrap();
    let ctx = restricted(dir.path());
    let mut admin = session();
    admin.principal = Principal::user("admin");
    let init = answer(
        &ctx,
        &admin,
        (ApiKey::InitProducerId, 4),
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(txn()))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .into(),
    )
    .await;
    assert!(has_code(&init, 0), "{init}");
    let producer_id = ctx.txns.of("x").unwrap().describe("x").unwrap().producer_id;
    let added = answer(
        &ctx,
        &admin,
        (ApiKey::AddPartitionsToTxn, 3),
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txn())
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(0)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![0]),
            ])
            .into(),
    )
    .await;
    assert!(has_code(&added, 0), "{added}");
    let describe: RequestKind = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![txn()])
        .into();
    // The admin sees the topic…
    let full = answer(&ctx, &admin, (ApiKey::DescribeTransactions, 0), &describe).await;
    assert!(full.contains("\"t\""), "{full}");
    // …a principal allowed to describe only the transactional id does not.
    bind(
        &ctx,
        &[AclBinding {
            resource_type: crate::security::acl::ResourceType::TransactionalId,
            resource_name: "x".into(),
            pattern_type: PatternType::Literal,
            principal: Principal::anonymous().to_string(),
            host: "*".into(),
            operation: AclOperation::Describe,
            permission_type: AclPermission::Allow,
        }],
    )
    .await;
    let nobody = session();
    let partial = answer(&ctx, &nobody, (ApiKey::DescribeTransactions, 0), &describe).await;
    assert!(has_code(&partial, 0), "{partial}");
    assert!(partial.contains("topics: []"), "{partial}");
}

/// CreateTopics answers a new topic's configs only to a principal that may describe them (as
/// Kafka: without DESCRIBE_CONFIGS the topic is created and its configs are refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_answers_configs_only_with_describe_configs() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let dir = tempfile::tempdir().unwrap();
    let ctx = restricted(dir.path());
    let creator = |name: &str| crate::security::acl::AclBinding {
        resource_name: name.into(),
        ..allow_on_t(crate::security::acl::AclOperation::Create)
    };
    bind(&ctx, &[creator("u"), creator("v")]).await;
    let create = |name: &str| -> RequestKind {
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(text(name)))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ])
            .into()
    };
    let nobody = session();
    let blind = answer(&ctx, &nobody, (ApiKey::CreateTopics, 7), &create("u")).await;
    assert!(blind.contains("error_code: 0,"), "{blind}");
    assert!(blind.contains("topic_config_error_code: 29"), "{blind}");
    assert!(!blind.contains("retention.ms"), "{blind}");
    assert!(ctx.manager.topic("u").is_some());
    let mut describer = allow_on_t(crate::security::acl::AclOperation::DescribeConfigs);
    describer.resource_name = "v".into();
    bind(&ctx, &[describer]).await;
    let seen = answer(&ctx, &nobody, (ApiKey::CreateTopics, 7), &create("v")).await;
    assert!(seen.contains("topic_config_error_code: 0"), "{seen}");
    assert!(seen.contains("retention.ms"), "{seen}");
}
