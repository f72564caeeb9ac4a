//! `strata groups`: list, describe (members, assignment, committed offset and lag per partition)
//! and reset the offsets of an inactive group, over the Kafka protocol.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use bytes::Buf;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde::Serialize;

use crate::admin::AdminClient;

/// One group in `strata groups list`.
#[derive(Debug, Serialize)]
pub struct GroupRow {
    /// Group id.
    pub group: String,
    /// State.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
}

/// One partition in `strata groups describe`.
#[derive(Debug, Serialize)]
pub struct PartitionRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset, if any.
    pub committed_offset: Option<i64>,
    /// Log end offset (high watermark).
    pub log_end_offset: i64,
    /// `log_end_offset - committed_offset`, when committed.
    pub lag: Option<i64>,
    /// The member it is assigned to, if any.
    pub member_id: Option<String>,
    /// That member's client id.
    pub client_id: Option<String>,
    /// That member's address.
    pub host: Option<String>,
}

/// `strata groups describe`.
#[derive(Debug, Serialize)]
pub struct GroupDetail {
    /// Group id.
    pub group: String,
    /// State.
    pub state: String,
    /// Assignor.
    pub protocol: String,
    /// Number of members.
    pub members: usize,
    /// Partitions with a committed offset or an owner.
    pub partitions: Vec<PartitionRow>,
}

/// One partition in `strata groups reset-offsets`.
#[derive(Debug, Serialize)]
pub struct ResetRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset before.
    pub previous_offset: Option<i64>,
    /// Committed offset after.
    pub new_offset: i64,
}

/// Where `reset-offsets` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start offset.
    Earliest,
    /// The log end offset.
    Latest,
    /// A given offset, clamped to the log.
    Offset(i64),
    /// The first offset at or after a timestamp (ms), or the log end.
    Timestamp(i64),
}

/// `strata groups list`.
pub fn list(client: &mut AdminClient) -> Result<Vec<GroupRow>> {
    let response = client.call(&ListGroupsRequest::default(), 4)?;
    check(response.error_code, "listing groups")?;
    let mut rows: Vec<GroupRow> = response
        .groups
        .into_iter()
        .map(|g| GroupRow {
            group: g.group_id.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
        })
        .collect();
    rows.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(rows)
}

/// `strata groups describe GROUP`.
pub fn describe(client: &mut AdminClient, group: &str) -> Result<GroupDetail> {
    let described = client.call(
        &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
        5,
    )?;
    let g = described
        .groups
        .into_iter()
        .next()
        .context("the broker described no group")?;
    check(g.error_code, "describing the group")?;
    // Owner of each assigned partition.
    let mut owners: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for member in &g.members {
        for (topic, partition) in decode_assignment(&member.member_assignment) {
            owners.insert(
                (topic, partition),
                (
                    member.member_id.to_string(),
                    member.client_id.to_string(),
                    member.client_host.to_string(),
                ),
            );
        }
    }
    let committed = committed_offsets(client, group)?;
    let mut keys: Vec<(String, i32)> = committed
        .keys()
        .cloned()
        .chain(owners.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let ends = list_offsets(client, &keys, -1)?;
    let partitions = keys
        .into_iter()
        .map(|key| {
            let committed_offset = committed.get(&key).copied();
            let log_end_offset = ends.get(&key).copied().unwrap_or(-1);
            let owner = owners.get(&key);
            PartitionRow {
                lag: committed_offset.map(|c| (log_end_offset - c).max(0)),
                committed_offset,
                log_end_offset,
                member_id: owner.map(|o| o.0.clone()),
                client_id: owner.map(|o| o.1.clone()),
                host: owner.map(|o| o.2.clone()),
                topic: key.0,
                partition: key.1,
            }
        })
        .collect();
    Ok(GroupDetail {
        group: group.to_string(),
        state: g.group_state.to_string(),
        protocol: g.protocol_data.to_string(),
        members: g.members.len(),
        partitions,
    })
}

/// `strata groups reset-offsets`: only for a group without active members.
pub fn reset_offsets(
    client: &mut AdminClient,
    group: &str,
    topic: &str,
    to: ResetTo,
    dry_run: bool,
) -> Result<Vec<ResetRow>> {
    let described = client.call(
        &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
        5,
    )?;
    if let Some(g) = described.groups.first()
        && !matches!(g.group_state.as_str(), "Empty" | "Dead")
    {
        bail!(
            "group {group} is {} with {} member(s): stop its consumers before resetting offsets",
            g.group_state.as_str(),
            g.members.len()
        );
    }
    let partitions = topic_partitions(client, topic)?;
    let keys: Vec<(String, i32)> = partitions.iter().map(|p| (topic.to_string(), *p)).collect();
    let earliest = list_offsets(client, &keys, -2)?;
    let latest = list_offsets(client, &keys, -1)?;
    let targets = match to {
        ResetTo::Earliest => earliest.clone(),
        ResetTo::Latest => latest.clone(),
        ResetTo::Offset(n) => keys
            .iter()
            .map(|k| (k.clone(), n.clamp(earliest[k], latest[k])))
            .collect(),
        ResetTo::Timestamp(ts) => {
            let found = list_offsets(client, &keys, ts)?;
            keys.iter()
                .map(|k| {
                    (
                        k.clone(),
                        found
                            .get(k)
                            .copied()
                            .filter(|o| *o >= 0)
                            .unwrap_or(latest[k]),
                    )
                })
                .collect()
        }
    };
    let previous = committed_offsets(client, group)?;
    let rows: Vec<ResetRow> = keys
        .iter()
        .map(|k| ResetRow {
            topic: k.0.clone(),
            partition: k.1,
            previous_offset: previous.get(k).copied(),
            new_offset: targets[k],
        })
        .collect();
    if dry_run {
        return Ok(rows);
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    rows.iter()
                        .map(|r| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(r.partition)
                                .with_committed_offset(r.new_offset)
                                .with_committed_metadata(Some(StrBytes::from_static_str("")))
                        })
                        .collect(),
                ),
        ]);
    let response = client.call(&request, 8)?;
    for t in &response.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("committing {}-{}", t.name.as_str(), p.partition_index),
            )?;
        }
    }
    Ok(rows)
}

fn committed_offsets(
    client: &mut AdminClient,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    let response = client.call(
        &OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(None),
        7,
    )?;
    check(response.error_code, "fetching committed offsets")?;
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.committed_offset >= 0 {
                out.insert((t.name.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

fn list_offsets(
    client: &mut AdminClient,
    keys: &[(String, i32)],
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in keys {
        by_topic.entry(t).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            ListOffsetsTopic::default()
                .with_name(topic_name(t))
                .with_partitions(
                    ps.into_iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )
        })
        .collect();
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(topics);
    let response = client.call(&request, 7)?;
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            check(
                p.error_code,
                &format!(
                    "listing offsets of {}-{}",
                    t.name.as_str(),
                    p.partition_index
                ),
            )?;
            out.insert((t.name.to_string(), p.partition_index), p.offset);
        }
    }
    Ok(out)
}

fn topic_partitions(client: &mut AdminClient, topic: &str) -> Result<Vec<i32>> {
    let request = MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(topic_name(topic))),
    ]));
    let response = client.call(&request, 9)?;
    let t = response
        .topics
        .into_iter()
        .next()
        .context("the broker returned no topic")?;
    check(t.error_code, &format!("looking up topic {topic}"))?;
    Ok(t.partitions.iter().map(|p| p.partition_index).collect())
}

/// `(topic, partition)` pairs of a consumer protocol assignment; empty when it is not one.
fn decode_assignment(bytes: &bytes::Bytes) -> Vec<(String, i32)> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16().clamp(0, 3);
    match ConsumerProtocolAssignment::decode(&mut buf, version) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.to_string(), *p)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn check(code: i16, what: &str) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => bail!("{what}: {e} (Kafka error {code})"),
    }
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Formats an optional number, `-` when absent.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["long-name".to_string(), "22".to_string()],
        ];
        assert_eq!(
            table(&["GROUP", "N"], &rows),
            "GROUP      N\na          1\nlong-name  22"
        );
    }
}
