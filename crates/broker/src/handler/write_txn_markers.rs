//! WriteTxnMarkers (between brokers): a transaction coordinator asks this broker to end a
//! transaction in the partitions it leads. Each marker is answered once the partition's in-sync
//! replicas have it.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use strata_log::txn::Marker;

use super::Context;

pub(super) async fn handle(
    ctx: Arc<Context>,
    authorized: bool,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    for wanted in request.markers {
        let marker = Marker {
            commit: wanted.transaction_result,
            coordinator_epoch: wanted.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(wanted.topics.len());
        for topic in wanted.topics {
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for index in topic.partition_indexes {
                if !authorized {
                    // Only brokers write markers: CLUSTER_ACTION on the cluster.
                    partitions.push(
                        WritableTxnMarkerPartitionResult::default()
                            .with_partition_index(index)
                            .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
                    );
                    continue;
                }
                let written = ctx
                    .txns
                    .write_local(
                        topic.name.as_str(),
                        index,
                        wanted.producer_id.0,
                        wanted.producer_epoch,
                        marker,
                    )
                    .await;
                let code = written.err().map_or(0, |c| c.code());
                partitions.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(wanted.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
