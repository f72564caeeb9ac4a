//! Per-log settings, with Kafka's topic configuration names and defaults.

/// How the timestamps of stored batches are chosen (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Keep the producer's timestamps (`CreateTime`).
    #[default]
    CreateTime,
    /// Stamp each batch with the broker's clock when appended (`LogAppendTime`).
    LogAppendTime,
}

/// The codec the broker stores batches in (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Keep the producer's codec (`producer`).
    #[default]
    Producer,
    /// Store uncompressed (`uncompressed`).
    Uncompressed,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl CompressionType {
    /// Kafka's name of the setting value.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "producer" => Self::Producer,
            "uncompressed" | "none" => Self::Uncompressed,
            "gzip" => Self::Gzip,
            "snappy" => Self::Snappy,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }

    /// The batch codec id to store in, `None` for the producer's.
    pub fn codec(self) -> Option<i16> {
        use crate::record::codec;
        match self {
            Self::Producer => None,
            Self::Uncompressed => Some(codec::NONE),
            Self::Gzip => Some(codec::GZIP),
            Self::Snappy => Some(codec::SNAPPY),
            Self::Lz4 => Some(codec::LZ4),
            Self::Zstd => Some(codec::ZSTD),
        }
    }
}

/// The levels the broker recompresses at (KIP-390), with Kafka's defaults: used only when
/// `compression.type` names a codec other than the batch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionLevels {
    /// `compression.gzip.level`: 1 to 9, or -1 for zlib's default (6).
    pub gzip: i32,
    /// `compression.lz4.level`: 1 to 17 (liblz4 caps the high-compression levels at 12).
    pub lz4: i32,
    /// `compression.zstd.level`: -131072 to 22.
    pub zstd: i32,
}

impl Default for CompressionLevels {
    fn default() -> Self {
        Self {
            gzip: -1,
            lz4: 9,
            zstd: 3,
        }
    }
}

/// Settings of one partition's log. Field names follow Kafka's topic configs, units last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it would exceed this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first append.
    pub segment_ms: i64,
    /// `retention.ms`: delete sealed segments whose newest record is older; -1 keeps them.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest sealed segments while the log is larger; -1 keeps them.
    pub retention_bytes: i64,
    /// `flush.messages`: fsync after this many appended records (`i64::MAX` leaves it to the OS).
    pub flush_messages: i64,
    /// `flush.ms`: fsync when the last one is this old (`i64::MAX` leaves it to the OS).
    pub flush_ms: i64,
    /// `index.interval.bytes`: bytes of log between two offset index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: how far in the past a CreateTime timestamp may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future a CreateTime timestamp may be.
    pub timestamp_after_max_ms: i64,
    /// `compression.type`: the codec batches are stored in.
    pub compression: CompressionType,
    /// `compression.gzip.level`, `compression.lz4.level`, `compression.zstd.level`.
    pub compression_levels: CompressionLevels,
    /// `remote.storage.enable`: sealed segments are offloaded to the lake, and deleted locally only
    /// once offloaded, under `local_retention_*`.
    pub remote_storage: bool,
    /// Effective `local.retention.ms` (already resolved from -2): local retention when tiered.
    pub local_retention_ms: i64,
    /// Effective `local.retention.bytes` (already resolved from -2).
    pub local_retention_bytes: i64,
}

impl Default for LogConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        Self {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            index_interval_bytes: 4096,
            max_message_bytes: 1024 * 1024 + 12,
            timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 60 * 60 * 1000,
            compression: CompressionType::Producer,
            compression_levels: CompressionLevels::default(),
            remote_storage: false,
            local_retention_ms: 7 * 24 * 60 * 60 * 1000,
            local_retention_bytes: -1,
        }
    }
}

impl LogConfig {
    /// What the records of a produced batch must satisfy.
    pub fn record_rules(&self) -> crate::record::RecordRules {
        crate::record::RecordRules {
            timestamp_type: self.timestamp_type,
            timestamp_before_max_ms: self.timestamp_before_max_ms,
            timestamp_after_max_ms: self.timestamp_after_max_ms,
        }
    }
}
