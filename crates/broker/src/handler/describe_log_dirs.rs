//! DescribeLogDirs: the broker's one log folder (its data folder) with, per partition replica
//! hosted here, the bytes of its local log and how far its log end is ahead of its high
//! watermark; from v4 the file system's total and usable bytes.
//!
//! The lake's bytes are not counted: they are not on this broker's disk.

use std::path::Path;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{Context, str_bytes};
use crate::manager::Topic;
use crate::security::acl::{Access, AclOperation};

pub(super) fn handle(
    ctx: &Context,
    access: &Access,
    version: i16,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    if !access.check_cluster(AclOperation::Describe) {
        // As Kafka: no log folder, and from v3 the error.
        let mut response = DescribeLogDirsResponse::default();
        if version >= 3 {
            response.error_code = ResponseError::ClusterAuthorizationFailed.code();
        }
        return response;
    }
    let data_dir = &ctx.manager.config().data_dir;
    // `None` asks for every topic; a topic or partition not hosted here is left out, as Kafka does.
    let mut topics: Vec<DescribeLogDirsTopic> = match &request.topics {
        None => ctx
            .manager
            .topics()
            .iter()
            .map(|t| describe_topic(t, None))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .filter_map(|w| {
                let topic = ctx.manager.topic(&w.topic)?;
                Some(describe_topic(&topic, Some(&w.partitions)))
            })
            .collect(),
    };
    topics.retain(|t| !t.partitions.is_empty());
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(data_dir.display().to_string()))
        .with_topics(topics);
    if version >= 4 {
        match disk_bytes(data_dir) {
            Ok((total, usable)) => {
                result = result.with_total_bytes(total).with_usable_bytes(usable);
            }
            Err(e) => {
                tracing::warn!(dir = %data_dir.display(), error = %e, "statvfs of the data folder failed");
                result = result.with_error_code(ResponseError::KafkaStorageError.code());
            }
        }
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// The replicas of `topic` hosted here, all or those of `partitions`.
fn describe_topic(topic: &Topic, partitions: Option<&[i32]>) -> DescribeLogDirsTopic {
    let described = topic
        .partitions
        .iter()
        .filter(|p| partitions.is_none_or(|wanted| wanted.contains(&p.index())))
        .filter_map(|p| {
            // A replica closed meanwhile (its topic deleted) is left out.
            let size = p.size_bytes().ok()?;
            Some(
                DescribeLogDirsPartition::default()
                    .with_partition_index(p.index())
                    .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                    .with_offset_lag((p.log_end_offset() - p.high_watermark()).max(0))
                    .with_is_future_key(false),
            )
        })
        .collect();
    DescribeLogDirsTopic::default()
        .with_name(TopicName(str_bytes(topic.name.clone())))
        .with_partitions(described)
}

/// `(total, usable)` bytes of the file system holding `dir` (usable: free to unprivileged
/// users, as `df` counts available space).
fn disk_bytes(dir: &Path) -> std::io::Result<(i64, i64)> {
    let stat = rustix::fs::statvfs(dir)?;
    let bytes =
        |blocks: u64| i64::try_from(blocks.saturating_mul(stat.f_frsize)).unwrap_or(i64::MAX);
    Ok((bytes(stat.f_blocks), bytes(stat.f_bavail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_folder_has_a_size_and_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let (total, usable) = disk_bytes(dir.path()).unwrap();
        assert!(
            total > 0 && (0..=total).contains(&usable),
            "{total} {usable}"
        );
        assert!(disk_bytes(&dir.path().join("missing")).is_err());
    }
}
