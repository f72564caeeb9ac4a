//! # strata-coordinator
//!
//! The group coordinator of Strata: consumer groups under Kafka's classic group protocol
//! (membership, rebalances, assignments) and their committed offsets, kept durably as records in
//! an offsets log: a local `strata-log` log for a single broker, or (implemented by the broker) its
//! replicated partition of `__consumer_offsets` in a cluster. No sockets and no clock: the broker
//! decodes requests, passes `now_ms`, waits for the [`Durable`] futures of writes before
//! answering, and maps [`Error`] to Kafka error codes.
//!
//! ## Layout
//! - `coordinator`: [`GroupCoordinator`], a set of groups and their offsets behind one lock; each
//!   change is appended to the offsets log before it is answered; transactional offset commits
//!   pending until their transaction's marker; timers, offset expiry and compaction on `tick`.
//! - [`group`]: the classic-protocol state machine of one group, pure and driven by `now_ms`.
//! - [`store`]: what the offsets log's records mean (`__consumer_offsets`-like keys and values,
//!   transactional batches and their markers), replayed on load, and its compaction by snapshot.
//! - [`offsets_log`]: the [`OffsetsLog`] trait the records are written through, and
//!   [`LocalOffsetsLog`], a single broker's implementation.
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
//! let offsets = vec![("orders".into(), 0, offset)];
//! let (codes, _durable) = coordinator.commit("billing", "", None, -1, offsets, 1_000)?;
//! // A local log's append is durable at once; a replicated one's future waits for the ISR.
//! assert_eq!(codes, vec![0]);
//! let found = coordinator.fetch_offsets("billing", None, false);
//! assert_eq!(found[0].2.as_ref().unwrap().as_ref().map(|o| o.offset), Some(42));
//! coordinator.close(2_000);
//! # Ok::<(), strata_coordinator::Error>(())
//! ```

mod coordinator;
pub mod error;
pub mod group;
pub mod offsets_log;
pub mod store;

pub use crate::coordinator::{
    CoordinatorConfig, GroupCoordinator, GroupDescription, ImportedGroup, Membership,
    PartitionOffsets, TxnOffsetCommit,
};
pub use crate::error::{Error, Result};
pub use crate::offsets_log::{Durable, LocalOffsetsLog, OffsetsLog};
