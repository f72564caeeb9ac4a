//! ApiVersions: the APIs and versions this broker handles completely.

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseKind};
use kafka_protocol::protocol::VersionRange;

/// `(api, min, max)` for every API handled. Only versions whose every field is honoured are
/// listed: Produce v12+ is transactions V2 (KIP-890); Fetch v14 answers followers
/// OFFSET_MOVED_TO_TIERED_STORAGE, v15 carries `replica_state`, v16 KIP-951's leader endpoints.
pub(crate) const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 13),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // v9+ of OffsetCommit/OffsetFetch carry KIP-848 member epochs (the new consumer protocol).
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // v4 only lets the answer carry TRANSACTION_ABORTABLE; v5 is transactions V2 (KIP-890 part
    // 2: the group joins the transaction without AddOffsetsToTxn).
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    // v4+ is the broker-to-broker verification of KIP-890.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    // v4 and EndTxn v5 are transactions V2 (KIP-890 part 2: an epoch bump per transaction).
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    // v2 filters by a transactional id pattern.
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // v1 is flexible (KIP-546).
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    // v0 is followed by raw SASL tokens; v1 by SaslAuthenticate (security::sasl).
    (ApiKey::SaslHandshake, 0, 1),
    // v1 carries session_lifetime_ms (KIP-368 re-authentication); v2 is flexible.
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // v1 is the first with pattern types (KIP-290); v2+ are flexible.
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// The versions of `api_key` this broker handles, if any.
pub(crate) fn supported_range(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == api_key)
        .map(|&(_, min, max)| VersionRange { min, max })
}

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

pub(super) fn handle(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys())
}

/// The KIP-511 answer to an ApiVersions request at a version this broker does not know: v0 layout,
/// UNSUPPORTED_VERSION, and the supported ranges.
pub(crate) fn unsupported_version_response(correlation_id: i32) -> BytesMut {
    let response = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys());
    super::encode(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(response),
    )
    .expect("a v0 ApiVersions response encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn advertised_versions_are_within_what_the_codec_knows() {
        for &(key, min, max) in SUPPORTED_APIS {
            let codec = key.valid_versions();
            assert!(codec.min <= min && max <= codec.max, "{key:?}");
        }
    }

    #[test]
    fn unsupported_version_answer_is_v0_with_error_35() {
        let mut bytes = unsupported_version_response(42).freeze();
        let length = bytes.get_i32();
        assert_eq!(length as usize, bytes.len());
        assert_eq!(
            bytes.get_i32(),
            42,
            "response header v0: the correlation id only"
        );
        let response = ApiVersionsResponse::decode(&mut bytes, 0).unwrap();
        assert_eq!(response.error_code, 35);
        assert!(
            response
                .api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4)
        );
    }
}
