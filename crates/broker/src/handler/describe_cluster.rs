//! DescribeCluster: the cluster id, its live brokers and the active controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{Context, str_bytes};
use crate::security::acl::{Access, CLUSTER_NAME, ResourceType};

pub(super) fn handle(
    ctx: &Context,
    (listener, access): (&str, &Access),
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let (live, controller) = ctx.live_brokers(listener);
    let brokers = live
        .into_iter()
        .map(|(id, host, port, rack)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(str_bytes(host))
                .with_port(port)
                .with_rack(rack.map(str_bytes))
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(ctx.manager.cluster_id()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers);
    if version >= 1 {
        // One process is both broker and controller: either endpoint type lists it.
        response.endpoint_type = request.endpoint_type;
    }
    if request.include_cluster_authorized_operations {
        // As Kafka: nothing is refused (Metadata names the same brokers), only reported.
        response.cluster_authorized_operations =
            access.authorized_operations(ResourceType::Cluster, CLUSTER_NAME);
    }
    response
}
