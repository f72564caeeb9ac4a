//! # strata
//!
//! The `strata` command: `strata serve` runs the broker, `strata groups` manages the consumer
//! groups of a running broker, `strata lake` lists and checks what the lake holds, and
//! `strata cluster status` shows a cluster's brokers, controller and unhealthy partitions.
//!
//! ## Layout
//! - [`cli`]: argument parsing (clap), configuration layering (file < `STRATA_*` environment <
//!   flags), logging set-up and signal handling.
//! - [`acl`]: `strata acl list | add | remove` (kafka-acls' flags).
//! - [`admin`]: a small Kafka protocol client for the admin subcommands.
//! - [`groups`]: `strata groups list | describe | reset-offsets`.
//! - [`lake`]: `strata lake ls | verify`.
//! - [`cluster`]: `strata cluster status`.
//! - [`users`]: `strata users add | remove | list`, online or on a stopped broker's data folder.
//!
//! ## Example
//! ```text
//! strata serve --data-dir ./strata-data --listen 127.0.0.1:9092
//! strata groups describe my-group --bootstrap 127.0.0.1:9092
//! strata lake ls --topic clicks
//! strata cluster status --bootstrap 127.0.0.1:9092,127.0.0.1:9192 --json
//! ```

pub mod acl;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod groups;
pub mod lake;
pub mod users;
