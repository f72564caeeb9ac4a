//! # strata-lake
//!
//! The lake tier of Strata: sealed log segments become Parquet files that consumers can be served
//! from again and that DuckDB, Spark or pyarrow read as they are; the records of unsealed
//! segments go up as fresh pieces, which the sealed file replaces.
//!
//! ## Layout
//! - [`records`]: RecordBatch v2 ↔ records, every codec, duplicate headers kept.
//! - [`parquet_file`]: the lake's Parquet schema, writer and reader.
//! - [`segment`]: a segment's batches read one at a time through a bounded window (the offload
//!   streams them), a whole segment's bytes ↔ records, and records ↔ batches for serving.
//! - [`manifest`]: which files hold which offsets (sealed files, then fresh pieces), and which
//!   leader epoch committed them; contiguity, replacement of pieces, retired files awaiting
//!   deletion, commit fencing, retention and verification.
//! - [`lake`]: the layout in object storage, offload (upload, then a conditional manifest commit
//!   fenced by the leader epoch) of sealed segments and fresh pieces, promotion of pieces, a new
//!   leader's claim, listing.
//! - [`iceberg`]: each topic as an Iceberg table (format v2) over the same files, in place:
//!   manifests and manifest lists in Avro, metadata committed with a conditional put, snapshot
//!   expiry; and reading its current files back.
//! - [`reader`]: ranged reads of lake files for serving consumers: the footer, then only the row
//!   groups holding the wanted offsets, as whole RecordBatch v2 batches.
//! - [`store`]: the object store a tier URL names (`file://`, with conditional updates under a
//!   file lock, or `s3://`).
//! - [`status`]: a partition's failing offload, as the broker last saw it.
//! - [`groups`]: committed offsets of consumer groups, one JSON object per group.
//! - [`txn`]: transactions in the lake: which batches hold committed records (control batches
//!   and aborted transactions are left out, their offsets left as gaps).
//! - [`error`]: the crate's one error type.
//!
//! ## Example
//! ```
//! use strata_lake::{parquet_file, segment};
//! # let segment_bytes: Vec<u8> = Vec::new();
//! let records = segment::decode(&segment_bytes)?;
//! let file = parquet_file::write(&records)?;
//! let back = parquet_file::read(file.into())?;
//! assert_eq!(back, records);
//! # Ok::<(), strata_lake::Error>(())
//! ```

pub mod error;
pub mod groups;
pub mod iceberg;
pub mod lake;
pub mod manifest;
pub mod parquet_file;
pub mod reader;
pub mod records;
pub mod segment;
pub mod status;
pub mod store;
pub mod txn;

pub use crate::error::{Error, Result};
pub use crate::lake::{Lake, ManifestVersion, TopicMetadata, Uploaded};
pub use crate::manifest::{FileEntry, Manifest, VerifyReport};
pub use crate::records::LakeRecord;
pub use crate::status::OffloadError;
