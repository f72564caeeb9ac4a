//! DescribeCluster: the cluster id, its live brokers and the active controller.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{Context, str_bytes};

pub(super) fn handle(
    ctx: &Context,
    version: i16,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let (brokers, controller) = match ctx.manager.cluster() {
        Some(node) => {
            let state = node.state().borrow().clone();
            let brokers = state
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .map(|b| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.id))
                        .with_host(str_bytes(b.host.clone()))
                        .with_port(i32::from(b.port))
                        .with_rack(b.rack.clone().map(str_bytes))
                })
                .collect();
            (brokers, node.controller_id().unwrap_or(-1))
        }
        None => (
            vec![
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(ctx.node_id()))
                    .with_host(str_bytes(ctx.advertised_host.clone()))
                    .with_port(ctx.advertised_port),
            ],
            ctx.node_id(),
        ),
    };
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(ctx.manager.cluster_id()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers);
    if version >= 1 {
        // One process is both broker and controller: either endpoint type lists it.
        response.endpoint_type = request.endpoint_type;
    }
    response
}
