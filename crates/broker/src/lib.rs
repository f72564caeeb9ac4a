//! # strata-broker
//!
//! The Kafka-protocol broker of Strata: every unmodified Kafka client talks to it over TCP.
//!
//! ## Layout
//! Data flows from the socket down to the log:
//! - [`server`]: one accept loop per listener (`server/listeners.rs`: plain TCP, or TLS after a
//!   handshake), per-connection reader and in-order writer, maintenance, shutdown.
//! - [`frame`]: length-prefixed frames, bounded by `socket.request.max.bytes`.
//! - `fetch_session`: incremental fetch sessions (KIP-227): the partitions a fetcher follows,
//!   kept between its fetches so that it sends and receives only what changed.
//! - `outgoing`: responses as written: encoded bytes, and segment ranges sent with `sendfile(2)`
//!   (read in bounded chunks and written through rustls on TLS connections).
//! - `handler`: decodes a request with the `kafka-protocol` crate and routes it to one file per
//!   Kafka API (`handler/produce.rs`, `handler/fetch.rs`, …).
//! - [`manager`]: topics and their partitions, created, altered and deleted through the
//!   [`metadata`] store.
//! - [`partition`]: one partition replica: its log, role (leader or follower), leader epoch,
//!   in-sync replicas and high watermark.
//! - `replication`: in a cluster, applies the committed metadata to the local replicas, runs one
//!   fetcher per leader broker (truncation by OffsetForLeaderEpoch, then Fetch as a replica) and
//!   commits the ISR changes leaders propose. The metadata quorum is the `strata-cluster` crate.
//! - `lake_view`: historic reads below the local log start, served from the lake through shared
//!   footer and row-group caches (`lake.read.cache.bytes`).
//! - consumer groups and their committed offsets live in their own crate, `strata-coordinator`:
//!   the group handlers (`handler/join_group.rs`, `handler/offset_commit.rs`, …) call its
//!   `GroupCoordinator`, and [`error`] maps its errors to Kafka codes.
//! - `groups`: which coordinator serves a group: a single broker's one, or in a cluster one per
//!   partition of the replicated `__consumer_offsets` this broker leads, loaded from the
//!   partition's log when it becomes leader (group coordinator failover).
//! - `offload`: the background pipeline that moves sealed segments into the lake.
//! - `metrics`: Prometheus metrics, counted on the request path and computed at scrape, served
//!   with `/health` and `/ready` on `metrics.listen`.
//! - `open_files`: the open-files limit, raised at start and shared with the log's file cache.
//! - `clock`: the wall clock, read at the edges; decisions take `now_ms` as an argument.
//! - [`config`]: broker settings and topic configs with Kafka's names.
//! - [`error`]: the error type and the one mapping to Kafka error codes.
//! - [`session`]: a connection's listener, security protocol and principal.
//! - [`security`]: the store of SCRAM credentials, ACL bindings and client quotas (a file, or the
//!   replicated metadata in a cluster); listener lists (`security/listener.rs`), TLS with PEM
//!   files reloaded on change (`security/tls.rs`) and connections to other brokers
//!   (`security/client.rs`).
//! - `dir_lock`: one broker per data folder (`<data_dir>/.lock`, as Kafka's).
//!
//! ## Example
//! ```no_run
//! # async fn run() -> strata_broker::Result<()> {
//! use strata_broker::{BrokerConfig, server};
//! let config = BrokerConfig::for_dir("./strata-data".into(), "127.0.0.1:9092".parse().unwrap());
//! let broker = server::start(config).await?;
//! println!("listening on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

mod clock;
pub mod config;
mod dir_lock;
pub mod error;
mod fetch_session;
pub mod frame;
mod groups;
mod handler;
mod lake_view;
mod led;
pub mod manager;
pub mod metadata;
mod metrics;
mod offload;
mod open_files;
mod outgoing;
pub mod partition;
mod replication;
pub mod security;
pub mod server;
pub mod session;
mod txn;

pub use crate::config::BrokerConfig;
pub use crate::error::{Error, Result};
pub use crate::server::{BrokerHandle, start};
