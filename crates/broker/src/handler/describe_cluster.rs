//! DescribeCluster: the cluster id and its (single) broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{Context, str_bytes};

pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let broker = DescribeClusterBroker::default()
        .with_broker_id(BrokerId(ctx.node_id()))
        .with_host(str_bytes(ctx.advertised_host.clone()))
        .with_port(ctx.advertised_port);
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(ctx.manager.cluster_id()))
        .with_controller_id(BrokerId(ctx.node_id()))
        .with_brokers(vec![broker]);
    if version >= 1 {
        // One process is both broker and controller: either endpoint type lists it.
        response.endpoint_type = request.endpoint_type;
    }
    response
}
