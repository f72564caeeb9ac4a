//! Roll, retention and flush decisions as pure functions of the log's state and `now`.

use crate::config::LogConfig;

/// What a decision needs to know of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    /// First offset the segment can hold.
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    /// Size of the segment file.
    pub size_bytes: u64,
    /// Largest record timestamp in it, -1 when empty or unknown.
    pub max_timestamp_ms: i64,
    /// Broker time of its first append (or of its opening), for `segment.ms`.
    pub created_ms: i64,
}

impl SegmentStat {
    /// Whether the segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }
}

/// Whether the active segment must be sealed before a batch of `incoming_bytes` ending at
/// `incoming_last_offset` is appended.
pub fn should_roll(
    active: &SegmentStat,
    incoming_bytes: u64,
    incoming_last_offset: i64,
    now_ms: i64,
    config: &LogConfig,
) -> bool {
    if active.is_empty() {
        return false;
    }
    let full = active.size_bytes + incoming_bytes > config.segment_bytes;
    // Index entries hold 32-bit relative offsets and positions.
    let index_overflow = incoming_last_offset - active.base_offset > i64::from(u32::MAX)
        || active.size_bytes + incoming_bytes > u64::from(u32::MAX);
    full || index_overflow || is_due_for_time_roll(active, now_ms, config)
}

/// Whether a non-empty active segment is older than `segment.ms`.
pub fn is_due_for_time_roll(active: &SegmentStat, now_ms: i64, config: &LogConfig) -> bool {
    !active.is_empty() && now_ms.saturating_sub(active.created_ms) >= config.segment_ms
}

/// How many of the oldest sealed segments retention removes. `sealed` is in offset order and
/// excludes the active segment, which is never deleted; `total_bytes` includes the active one.
///
/// Without tiering, `retention.ms` / `retention.bytes` apply. With tiering, the local ones apply
/// and only to segments entirely below `offloaded_offset`: local data never goes before its
/// offload is durable in object storage.
pub fn segments_to_delete(
    sealed: &[SegmentStat],
    total_bytes: u64,
    now_ms: i64,
    offloaded_offset: i64,
    config: &LogConfig,
) -> usize {
    let (retention_ms, retention_bytes) = if config.remote_storage {
        (config.local_retention_ms, config.local_retention_bytes)
    } else {
        (config.retention_ms, config.retention_bytes)
    };
    let mut remaining_bytes = total_bytes;
    let mut count = 0;
    for segment in sealed {
        if config.remote_storage && segment.next_offset > offloaded_offset {
            break;
        }
        let expired = retention_ms >= 0
            && segment.max_timestamp_ms >= 0
            && now_ms.saturating_sub(segment.max_timestamp_ms) > retention_ms;
        let oversize = retention_bytes >= 0
            && remaining_bytes.saturating_sub(segment.size_bytes) >= retention_bytes as u64;
        if !(expired || oversize) {
            break;
        }
        remaining_bytes -= segment.size_bytes;
        count += 1;
    }
    count
}

/// How many of the oldest sealed segments lie entirely below the log start offset (moved there
/// by DeleteRecords while they were still active, or by a follower following its leader): their
/// records can no longer be read, so they go whatever retention and the offload say.
pub fn segments_below_log_start(sealed: &[SegmentStat], log_start_offset: i64) -> usize {
    sealed
        .iter()
        .take_while(|s| s.next_offset <= log_start_offset)
        .count()
}

/// Whether `flush.messages` or `flush.ms` asks for an fsync now.
pub fn should_flush(
    unflushed_messages: i64,
    last_flush_ms: i64,
    now_ms: i64,
    config: &LogConfig,
) -> bool {
    if unflushed_messages == 0 {
        return false;
    }
    unflushed_messages >= config.flush_messages
        || now_ms.saturating_sub(last_flush_ms) >= config.flush_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base_offset: i64, size_bytes: u64, max_timestamp_ms: i64) -> SegmentStat {
        SegmentStat {
            base_offset,
            next_offset: base_offset + 10,
            size_bytes,
            max_timestamp_ms,
            created_ms: 0,
        }
    }

    #[test]
    fn rolls_on_size_time_and_index_overflow_but_never_empty() {
        let config = LogConfig {
            segment_bytes: 1000,
            segment_ms: 60_000,
            ..LogConfig::default()
        };
        let active = seg(0, 900, 5);
        assert!(!should_roll(&active, 100, 10, 1, &config));
        assert!(should_roll(&active, 101, 10, 1, &config));
        assert!(should_roll(&active, 1, 10, 60_000, &config));
        assert!(should_roll(&active, 1, i64::from(u32::MAX) + 1, 1, &config));
        assert!(!should_roll(&seg(0, 0, -1), 5000, 10, 1_000_000, &config));
    }

    #[test]
    fn segments_entirely_below_the_log_start_go_the_one_holding_it_stays() {
        let sealed = [seg(0, 10, 5), seg(10, 10, 5), seg(20, 10, 5)];
        assert_eq!(segments_below_log_start(&sealed, 0), 0);
        assert_eq!(
            segments_below_log_start(&sealed, 19),
            1,
            "19 is in the second"
        );
        assert_eq!(segments_below_log_start(&sealed, 20), 2);
        assert_eq!(segments_below_log_start(&sealed, 1_000), 3);
        assert_eq!(segments_below_log_start(&[], 1_000), 0);
    }

    #[test]
    fn retention_by_time_and_size_stops_at_the_first_kept_segment() {
        let config = LogConfig {
            retention_ms: 100,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        let sealed = [seg(0, 10, 50), seg(10, 10, 500), seg(20, 10, 60)];
        assert_eq!(segments_to_delete(&sealed, 40, 200, -1, &config), 1);

        let config = LogConfig {
            retention_ms: -1,
            retention_bytes: 25,
            ..LogConfig::default()
        };
        // 40 bytes in all: dropping the first leaves 30 >= 25, the second would leave 20 < 25.
        assert_eq!(segments_to_delete(&sealed, 40, 200, -1, &config), 1);
        let config = LogConfig {
            retention_bytes: 20,
            ..config
        };
        assert_eq!(segments_to_delete(&sealed, 40, 200, -1, &config), 2);
        let keep_all = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            ..config
        };
        assert_eq!(segments_to_delete(&sealed, 40, i64::MAX, -1, &keep_all), 0);
    }

    #[test]
    fn tiered_logs_delete_only_offloaded_segments_under_local_retention() {
        let config = LogConfig {
            remote_storage: true,
            retention_ms: -1,
            local_retention_ms: 100,
            local_retention_bytes: -1,
            ..LogConfig::default()
        };
        // next offsets 10, 20, 30; all expired locally.
        let sealed = [seg(0, 10, 50), seg(10, 10, 50), seg(20, 10, 50)];
        assert_eq!(
            segments_to_delete(&sealed, 40, 1000, -1, &config),
            0,
            "nothing offloaded yet"
        );
        assert_eq!(
            segments_to_delete(&sealed, 40, 1000, 19, &config),
            1,
            "only the first is entirely offloaded"
        );
        assert_eq!(segments_to_delete(&sealed, 40, 1000, 30, &config), 3);
        assert_eq!(
            segments_to_delete(&sealed, 40, 120, 30, &config),
            0,
            "not yet past local retention"
        );
    }

    #[test]
    fn flush_follows_messages_and_ms() {
        let config = LogConfig {
            flush_messages: 3,
            flush_ms: 1000,
            ..LogConfig::default()
        };
        assert!(!should_flush(0, 0, 5000, &config));
        assert!(!should_flush(2, 0, 10, &config));
        assert!(should_flush(3, 0, 10, &config));
        assert!(should_flush(1, 0, 1000, &config));
        assert!(!should_flush(
            1_000_000,
            0,
            1_000_000,
            &LogConfig::default()
        ));
    }
}
