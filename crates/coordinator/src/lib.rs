//! # strata-coordinator
//!
//! The group coordinator of Strata: consumer groups under Kafka's classic group protocol
//! (membership, rebalances, assignments) and their committed offsets, kept durably in an internal
//! `strata-log` log. No sockets and no clock: the broker decodes requests, passes `now_ms`, and maps
//! [`Error`] to Kafka error codes.
//!
//! ## Layout
//! - `coordinator`: [`GroupCoordinator`], every group and its offsets behind one lock; each change
//!   is written to the offsets log before it is answered; timers and offset expiry on `tick`.
//! - [`group`]: the classic-protocol state machine of one group, pure and driven by `now_ms`.
//! - [`store`]: the offsets log (`__consumer_offsets`-like records), replayed at start and
//!   compacted as it grows.
//! - [`error`]: the error type; the broker turns it into Kafka codes.
//!
//! ## Example
//! ```
//! use strata_coordinator::store::CommittedOffset;
//! use strata_coordinator::{CoordinatorConfig, GroupCoordinator, group::GroupTimeouts};
//! let config = CoordinatorConfig {
//!     timeouts: GroupTimeouts {
//!         initial_rebalance_delay_ms: 3_000,
//!         min_session_timeout_ms: 6_000,
//!         max_session_timeout_ms: 1_800_000,
//!     },
//!     offsets_retention_ms: 7 * 24 * 3_600_000,
//!     offset_metadata_max_bytes: 4096,
//! };
//! let dir = tempfile::tempdir().unwrap();
//! let coordinator = GroupCoordinator::open(dir.path(), config, 1_000)?;
//! let offset = CommittedOffset {
//!     offset: 42,
//!     leader_epoch: -1,
//!     metadata: String::new(),
//!     commit_timestamp_ms: 1_000,
//! };
//! // A commit from outside the group (an assign() consumer): no member id, generation -1.
//! let codes = coordinator.commit("billing", "", None, -1, vec![("orders".into(), 0, offset)], 1_000)?;
//! assert_eq!(codes, vec![0]);
//! let found = coordinator.fetch_offsets("billing", None);
//! assert_eq!(found[0].2.as_ref().map(|o| o.offset), Some(42));
//! coordinator.close(2_000);
//! # Ok::<(), strata_coordinator::Error>(())
//! ```

mod coordinator;
pub mod error;
pub mod group;
pub mod store;

pub use crate::coordinator::{
    CoordinatorConfig, GroupCoordinator, GroupDescription, PartitionOffsets,
};
pub use crate::error::{Error, Result};
