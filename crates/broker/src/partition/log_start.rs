//! What DeleteRecords and DescribeLogDirs ask of a replica beyond reads and appends: the log
//! start offsets its followers report (Kafka's low watermark), whether its log is tiered, and
//! its size on disk.

use super::Partition;
use crate::error::Result;

impl Partition {
    /// Notes the log start offset follower `replica` reported in a fetch (leader only; an
    /// unknown replica is ignored: its fetch is refused anyway).
    pub fn record_follower_log_start(&self, replica: i32, log_start_offset: i64) {
        if let Some(follower) = self.role.lock().followers.get_mut(&replica) {
            follower.log_start_offset = log_start_offset;
        }
    }

    /// Kafka's low watermark: the smallest log start offset over this replica and the in-sync
    /// followers, as they last reported it (-1 for one not heard from since this leadership
    /// began). DeleteRecords is answered once it reaches the new log start.
    pub fn low_watermark(&self) -> i64 {
        let own = self.log_start_offset();
        let role = self.role.lock();
        role.assignment
            .isr
            .iter()
            .filter(|&&r| r != self.node_id)
            .map(|r| role.followers.get(r).map_or(-1, |f| f.log_start_offset))
            .fold(own, i64::min)
    }

    /// Whether the log is tiered (`remote.storage.enable`): older offsets live in the lake.
    pub fn is_tiered(&self) -> Result<bool> {
        self.with_log(|log| Ok(log.config().remote_storage))
    }

    /// Bytes of the local log's segments.
    pub fn size_bytes(&self) -> Result<u64> {
        self.with_log(|log| Ok(log.size_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Assignment;
    use super::*;

    #[test]
    fn the_low_watermark_is_the_smallest_log_start_over_the_in_sync_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let assignment = Assignment {
            leader: 1,
            leader_epoch: 3,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
        };
        let p = Partition::open_as(
            "t",
            0,
            dir.path(),
            Default::default(),
            assignment.clone(),
            1,
            0,
        )
        .unwrap();
        assert_eq!(p.low_watermark(), -1, "follower 2 not heard from yet");
        p.record_follower_log_start(2, 0);
        p.record_follower_log_start(3, -5);
        assert_eq!(p.low_watermark(), 0, "3 is not in sync: not counted");
        p.record_follower_log_start(9, -5);
        assert_eq!(p.low_watermark(), 0, "not a replica");
        assert!(!p.is_tiered().unwrap());
        assert_eq!(p.size_bytes().unwrap(), 0);
        // A new leadership forgets what followers reported.
        p.set_assignment(
            Assignment {
                leader_epoch: 4,
                ..assignment
            },
            0,
        );
        assert_eq!(p.low_watermark(), -1);
    }
}
