//! Broker settings and topic configuration, with Kafka's names, types, defaults and validation.
//!
//! Broker-wide settings use Kafka's broker names (`num.partitions`, `log.segment.bytes`, …); each
//! topic config (`segment.bytes`, `retention.ms`, …) falls back to its broker-wide default. The
//! table [`TOPIC_CONFIGS`] is the single list of topic configs the broker knows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use strata_log::{LogConfig, TimestampType};

use crate::error::{Error, Result};

/// The value type of a config, for validation and DescribeConfigs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// A 32-bit integer at or above a minimum.
    Int(i64),
    /// A 32-bit integer within `min..=max`.
    IntBetween(i64, i64),
    /// A 32-bit integer: one special value (Kafka's "-1: the default"), or within `min..=max`.
    IntOrBetween(i64, i64, i64),
    /// A 64-bit integer at or above a minimum.
    Long(i64),
    /// `true` or `false`.
    Boolean,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// Free text (checked where it is used, e.g. `controller.quorum.voters`).
    Text,
}

impl ConfigType {
    /// Kafka's DescribeConfigs config type code (v3+).
    pub fn kafka_code(self) -> i8 {
        match self {
            Self::Boolean => 1,
            Self::Choice(_) | Self::Text => 2,
            Self::Int(_) | Self::IntBetween(..) | Self::IntOrBetween(..) => 3,
            Self::Long(_) => 5,
        }
    }

    /// Checks a value, naming the config in the error.
    pub fn validate(self, name: &str, value: &str) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidConfig(format!("{name}={value:?}: {why}")));
        match self {
            Self::Int(min) => match value.trim().parse::<i32>() {
                Ok(v) if i64::from(v) >= min => Ok(()),
                Ok(_) => bad(format!("must be at least {min}")),
                Err(_) => bad("not a 32-bit integer".into()),
            },
            Self::IntBetween(min, max) => match value.trim().parse::<i32>() {
                Ok(v) if (min..=max).contains(&i64::from(v)) => Ok(()),
                Ok(_) => bad(format!("must be between {min} and {max}")),
                Err(_) => bad("not a 32-bit integer".into()),
            },
            Self::IntOrBetween(special, min, max) => match value.trim().parse::<i32>() {
                Ok(v) if i64::from(v) == special || (min..=max).contains(&i64::from(v)) => Ok(()),
                Ok(_) => bad(format!("must be {special} or between {min} and {max}")),
                Err(_) => bad("not a 32-bit integer".into()),
            },
            Self::Long(min) => match value.trim().parse::<i64>() {
                Ok(v) if v >= min => Ok(()),
                Ok(_) => bad(format!("must be at least {min}")),
                Err(_) => bad("not a 64-bit integer".into()),
            },
            Self::Boolean => match value.trim() {
                "true" | "false" => Ok(()),
                _ => bad("must be true or false".into()),
            },
            Self::Choice(options) => {
                if options.contains(&value.trim()) {
                    Ok(())
                } else {
                    bad(format!("must be one of {options:?}"))
                }
            }
            Self::Text => Ok(()),
        }
    }
}

/// One topic config: its name, the broker setting that gives its default, and its type.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    /// Kafka's topic config name.
    pub name: &'static str,
    /// Kafka's broker setting holding the default.
    pub broker_name: &'static str,
    /// The default when the broker setting is not given either.
    pub default: &'static str,
    /// Type and bounds.
    pub kind: ConfigType,
}

const WEEK_MS: &str = "604800000";

/// Every topic config Strata knows, with Kafka's names and defaults.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "cleanup.policy",
        "log.cleanup.policy",
        "delete",
        ConfigType::Choice(&["delete"]),
    ),
    def(
        "compression.type",
        "compression.type",
        "producer",
        ConfigType::Choice(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
    ),
    // KIP-390: the levels the broker recompresses at (gzip: -1 for zlib's default, or 1 to 9).
    def(
        "compression.gzip.level",
        "compression.gzip.level",
        "-1",
        ConfigType::IntOrBetween(-1, 1, 9),
    ),
    def(
        "compression.lz4.level",
        "compression.lz4.level",
        "9",
        ConfigType::IntBetween(1, 17),
    ),
    def(
        "compression.zstd.level",
        "compression.zstd.level",
        "3",
        ConfigType::IntBetween(-131_072, 22),
    ),
    def(
        "flush.messages",
        "log.flush.interval.messages",
        "9223372036854775807",
        ConfigType::Long(1),
    ),
    def(
        "flush.ms",
        "log.flush.interval.ms",
        "9223372036854775807",
        ConfigType::Long(0),
    ),
    def(
        "index.interval.bytes",
        "log.index.interval.bytes",
        "4096",
        ConfigType::Int(0),
    ),
    // The fresh lake: how long replaced or removed lake files stay readable, how long the
    // topic's Iceberg snapshots are kept, and how old the oldest record not in the lake may get
    // before the partition's leader uploads a fresh piece (-1: never, sealed files only).
    def(
        "lake.fresh.delete.delay.ms",
        "lake.fresh.delete.delay.ms",
        "600000",
        ConfigType::Long(0),
    ),
    def(
        "lake.snapshot.retention.ms",
        "lake.snapshot.retention.ms",
        "86400000",
        ConfigType::Long(0),
    ),
    def(
        "lake.target.lag.ms",
        "lake.target.lag.ms",
        "60000",
        ConfigType::Long(-1),
    ),
    def(
        "local.retention.bytes",
        "log.local.retention.bytes",
        "-2",
        ConfigType::Long(-2),
    ),
    def(
        "local.retention.ms",
        "log.local.retention.ms",
        WEEK_MS,
        ConfigType::Long(-2),
    ),
    // At most the largest batch the lake's segment reader takes (64 MiB): a stored batch must
    // always be convertible.
    def(
        "max.message.bytes",
        "message.max.bytes",
        "1048588",
        ConfigType::IntBetween(0, strata_lake::segment::BATCH_BYTES_MAX as i64),
    ),
    def(
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        "3600000",
        ConfigType::Long(0),
    ),
    def(
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        "9223372036854775807",
        ConfigType::Long(0),
    ),
    def(
        "message.timestamp.type",
        "log.message.timestamp.type",
        "CreateTime",
        ConfigType::Choice(&["CreateTime", "LogAppendTime"]),
    ),
    def(
        "min.insync.replicas",
        "min.insync.replicas",
        "1",
        ConfigType::Int(1),
    ),
    def(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        "false",
        ConfigType::Choice(&["false"]),
    ),
    def(
        "remote.storage.enable",
        "remote.storage.enable",
        "true",
        ConfigType::Boolean,
    ),
    def(
        "retention.bytes",
        "log.retention.bytes",
        "-1",
        ConfigType::Long(-1),
    ),
    def(
        "retention.ms",
        "log.retention.ms",
        "-1",
        ConfigType::Long(-1),
    ),
    def(
        "segment.bytes",
        "log.segment.bytes",
        "1073741824",
        ConfigType::Int(14),
    ),
    def("segment.ms", "log.roll.ms", WEEK_MS, ConfigType::Long(1)),
];

const fn def(
    name: &'static str,
    broker_name: &'static str,
    default: &'static str,
    kind: ConfigType,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        broker_name,
        default,
        kind,
    }
}

/// Kafka topic configs that clients and tools set but that change nothing here: deprecated in
/// Kafka 3.x, or about features Strata does not have (compaction tuning, throttles, file
/// preallocation). Accepted with a warning, as Kafka 3.x accepts its deprecated configs, and
/// never shown by DescribeConfigs. Every other unknown name is refused.
pub const IGNORED_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("delete.retention.ms", "log compaction is not supported"),
    ("file.delete.delay.ms", "segments are deleted at once"),
    (
        "follower.replication.throttled.replicas",
        "replication throttles are not supported",
    ),
    (
        "leader.replication.throttled.replicas",
        "replication throttles are not supported",
    ),
    ("max.compaction.lag.ms", "log compaction is not supported"),
    (
        "message.downconversion.enable",
        "deprecated in Kafka 3.x: only magic 2 is served",
    ),
    (
        "message.format.version",
        "deprecated in Kafka 3.x: the format is always magic 2",
    ),
    (
        "message.timestamp.difference.max.ms",
        "deprecated by KIP-937: use message.timestamp.before.max.ms / after.max.ms",
    ),
    (
        "min.cleanable.dirty.ratio",
        "log compaction is not supported",
    ),
    ("min.compaction.lag.ms", "log compaction is not supported"),
    ("preallocate", "segments are not preallocated"),
    ("segment.index.bytes", "indexes grow with their segment"),
    ("segment.jitter.ms", "segments roll at segment.ms exactly"),
];

/// Broker settings that are not topic defaults.
pub const BROKER_SETTINGS: &[(&str, &str, ConfigType)] = &[
    ("advertised.listeners", "", ConfigType::Text),
    (
        "allow.everyone.if.no.acl.found",
        "false",
        ConfigType::Boolean,
    ),
    ("authorizer.class.name", "", ConfigType::Text),
    ("authorizer.enabled", "false", ConfigType::Boolean),
    ("auto.create.topics.enable", "true", ConfigType::Boolean),
    ("auto.leader.rebalance.enable", "true", ConfigType::Boolean),
    ("broker.heartbeat.interval.ms", "500", ConfigType::Int(10)),
    ("broker.rack", "", ConfigType::Text),
    ("broker.session.timeout.ms", "3000", ConfigType::Int(100)),
    ("controller.listen", "", ConfigType::Text),
    ("controller.listener.names", "", ConfigType::Text),
    ("controller.quorum.voters", "", ConfigType::Text),
    ("default.replication.factor", "1", ConfigType::Int(1)),
    (
        "group.initial.rebalance.delay.ms",
        "3000",
        ConfigType::Int(0),
    ),
    (
        "group.max.session.timeout.ms",
        "1800000",
        ConfigType::Int(1),
    ),
    ("group.min.session.timeout.ms", "6000", ConfigType::Int(1)),
    ("inter.broker.listener.name", "", ConfigType::Text),
    ("lake.read.cache.bytes", "268435456", ConfigType::Long(0)),
    (
        "listener.security.protocol.map",
        crate::security::listener::DEFAULT_PROTOCOL_MAP,
        ConfigType::Text,
    ),
    ("listeners", "", ConfigType::Text),
    (
        "max.incremental.fetch.session.cache.slots",
        "1000",
        ConfigType::Int(0),
    ),
    (
        "leader.imbalance.check.interval.seconds",
        "300",
        ConfigType::Long(1),
    ),
    (
        "log.retention.check.interval.ms",
        "300000",
        ConfigType::Long(1),
    ),
    ("metrics.listen", "", ConfigType::Text),
    ("node.id", "0", ConfigType::Int(0)),
    ("num.partitions", "1", ConfigType::Int(1)),
    ("offset.metadata.max.bytes", "4096", ConfigType::Int(0)),
    (
        "offsets.retention.check.interval.ms",
        "600000",
        ConfigType::Long(1),
    ),
    ("offsets.retention.minutes", "10080", ConfigType::Int(1)),
    ("offsets.topic.num.partitions", "10", ConfigType::Int(1)),
    ("offsets.topic.replication.factor", "3", ConfigType::Int(1)),
    (
        "transaction.state.log.num.partitions",
        "10",
        ConfigType::Int(1),
    ),
    (
        "transaction.state.log.replication.factor",
        "3",
        ConfigType::Int(1),
    ),
    ("transaction.max.timeout.ms", "900000", ConfigType::Int(1)),
    (
        "transactional.id.expiration.ms",
        "604800000",
        ConfigType::Int(1),
    ),
    (
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
        ConfigType::Int(1),
    ),
    // Client quotas' sampled windows (Kafka's defaults: 11 windows of 1 s).
    ("quota.window.num", "11", ConfigType::Int(1)),
    ("quota.window.size.seconds", "1", ConfigType::Int(1)),
    ("queued.max.request.bytes", "536870912", ConfigType::Long(1)),
    ("replica.lag.time.max.ms", "30000", ConfigType::Long(1)),
    // KIP-956: broker-wide byte rates of lake uploads and lake reads; Long.MAX is no limit.
    (
        "remote.log.manager.copy.max.bytes.per.second",
        "9223372036854775807",
        ConfigType::Long(1),
    ),
    (
        "remote.log.manager.fetch.max.bytes.per.second",
        "9223372036854775807",
        ConfigType::Long(1),
    ),
    ("socket.request.max.bytes", "104857600", ConfigType::Int(1)),
    // Connections (server::limits): Kafka's idle close (0 or below: never) and limits on how
    // many are open, in all and per client address.
    ("connections.max.idle.ms", "600000", ConfigType::Long(-1)),
    ("max.connections", "4096", ConfigType::Int(1)),
    ("max.connections.per.ip", "2147483647", ConfigType::Int(0)),
    ("max.connections.per.ip.overrides", "", ConfigType::Text),
    // SASL (security::sasl): KIP-368 re-authentication is off at 0, as in Kafka.
    ("connections.max.reauth.ms", "0", ConfigType::Long(0)),
    // Kafka's delay of the close after a failed authentication (slows password guessing); at
    // most an hour, so that a typo cannot hold refused connections for days.
    (
        "connection.failed.authentication.delay.ms",
        "100",
        ConfigType::IntBetween(0, 3_600_000),
    ),
    (
        "sasl.enabled.mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512",
        ConfigType::Text,
    ),
    ("sasl.jaas.config", "", ConfigType::Text),
    (
        "sasl.mechanism.inter.broker.protocol",
        "SCRAM-SHA-256",
        ConfigType::Choice(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ),
    ("sasl.plain.allow.plaintext", "false", ConfigType::Boolean),
    ("super.users", "", ConfigType::Text),
    (
        "ssl.client.auth",
        "none",
        ConfigType::Choice(&["none", "requested", "required"]),
    ),
    ("ssl.keystore.certificate.chain", "", ConfigType::Text),
    ("ssl.keystore.key", "", ConfigType::Text),
    ("ssl.key.password", "", ConfigType::Text),
    ("ssl.keystore.location", "", ConfigType::Text),
    ("ssl.keystore.type", "PEM", ConfigType::Choice(&["PEM"])),
    ("ssl.truststore.certificates", "", ConfigType::Text),
    ("ssl.truststore.location", "", ConfigType::Text),
    ("ssl.truststore.type", "PEM", ConfigType::Choice(&["PEM"])),
    (
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
        ConfigType::Int(1),
    ),
    ("transaction.max.timeout.ms", "900000", ConfigType::Int(1)),
    (
        "transaction.state.log.num.partitions",
        "10",
        ConfigType::Int(1),
    ),
    (
        "transaction.state.log.replication.factor",
        "3",
        ConfigType::Int(1),
    ),
    (
        "transactional.id.expiration.ms",
        "604800000",
        ConfigType::Int(1),
    ),
];

fn resolve_addr(value: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    value.to_socket_addrs().ok()?.next()
}

/// Parses `controller.quorum.voters`: `id@host:port` separated by commas.
pub fn parse_voters(value: &str) -> Result<BTreeMap<i32, SocketAddr>> {
    let mut voters = BTreeMap::new();
    for voter in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let bad = || {
            Error::InvalidConfig(format!(
                "controller.quorum.voters: {voter:?} is not ID@HOST:PORT"
            ))
        };
        let (id, addr) = voter.split_once('@').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let addr = resolve_addr(addr.trim()).ok_or_else(bad)?;
        if id < 0 || voters.insert(id, addr).is_some() {
            return Err(bad());
        }
    }
    Ok(voters)
}

/// Looks up a topic config by name.
pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Everything the broker is started with.
#[derive(Clone)]
pub struct BrokerConfig {
    /// Where partitions, metadata and (by default) the lake live; always absolute (a relative
    /// folder given to [`BrokerConfig::new`] is resolved against the working directory).
    pub data_dir: PathBuf,
    /// Address of the one PLAINTEXT listener when the `listeners` setting is not set (which
    /// takes Kafka's `NAME://HOST:PORT,…` list instead).
    pub listen: SocketAddr,
    /// `host:port` given to clients in Metadata; `None` means the bound listen address.
    pub advertised: Option<String>,
    /// Object storage URL of the lake tier.
    pub tier_url: String,
    /// Kafka broker settings by name, validated; unset ones take their defaults.
    settings: BTreeMap<String, String>,
    /// Environment for the object store (`AWS_*` variables); the process environment when run
    /// from the command line, an explicit one in tests.
    pub tier_env: BTreeMap<String, String>,
}

impl std::fmt::Debug for BrokerConfig {
    // Private keys, JAAS logins and the object store's credentials (`AWS_SECRET_ACCESS_KEY`)
    // are never printed, not even in debug output of a struct that holds the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings: BTreeMap<&str, &str> = self
            .settings
            .iter()
            .map(|(name, value)| {
                let shown = if is_sensitive(name) {
                    "[hidden]"
                } else {
                    value
                };
                (name.as_str(), shown)
            })
            .collect();
        let tier_env: Vec<&str> = self.tier_env.keys().map(String::as_str).collect();
        f.debug_struct("BrokerConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("advertised", &self.advertised)
            .field("tier_url", &self.tier_url)
            .field("settings", &settings)
            .field("tier_env_names", &tier_env)
            .finish()
    }
}

impl BrokerConfig {
    /// Builds a config, refusing unknown broker settings and invalid values.
    pub fn new(
        data_dir: PathBuf,
        listen: SocketAddr,
        advertised: Option<String>,
        tier_url: Option<String>,
        settings: BTreeMap<String, String>,
    ) -> Result<Self> {
        for (name, value) in &settings {
            broker_setting_type(name)
                .ok_or_else(|| Error::InvalidConfig(format!("unknown broker setting {name:?}")))?
                .validate(name, value)?;
        }
        // A relative folder (the default `./strata-data` included) is the working directory's,
        // made absolute once here so that the default tier URL is a valid `file://` URL and no
        // later change of working directory moves the data.
        let data_dir = std::path::absolute(&data_dir).map_err(|e| {
            Error::InvalidConfig(format!("data folder {}: {e}", data_dir.display()))
        })?;
        let tier_url = match tier_url {
            Some(url) => url,
            None => strata_lake::store::file_url(&data_dir.join("lake"))
                .map_err(|e| Error::InvalidConfig(format!("default tier URL: {e}")))?,
        };
        let config = Self {
            data_dir,
            listen,
            advertised,
            tier_url,
            settings,
            tier_env: BTreeMap::new(),
        };
        // Listener settings are checked against each other here, so that a bad list is an
        // error at start-up, naming the setting.
        config.listeners()?;
        Ok(config)
    }

    /// A config for tests and embedding: defaults everywhere, listening on `listen`.
    pub fn for_dir(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self::new(data_dir, listen, None, None, BTreeMap::new()).expect("defaults are valid")
    }

    /// Sets one broker setting, validating it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        broker_setting_type(name)
            .ok_or_else(|| Error::InvalidConfig(format!("unknown broker setting {name:?}")))?
            .validate(name, value)?;
        self.settings.insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// The value of a broker setting (given or default).
    pub fn setting(&self, name: &str) -> String {
        if let Some(v) = self.settings.get(name) {
            return v.clone();
        }
        BROKER_SETTINGS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, d, _)| *d)
            .or_else(|| {
                TOPIC_CONFIGS
                    .iter()
                    .find(|d| d.broker_name == name)
                    .map(|d| d.default)
            })
            .unwrap_or_else(|| panic!("no broker setting named {name}"))
            .to_string()
    }

    /// Whether a broker setting was given explicitly.
    pub fn is_set(&self, name: &str) -> bool {
        self.settings.contains_key(name)
    }

    fn long(&self, name: &str) -> i64 {
        self.setting(name)
            .trim()
            .parse()
            .expect("validated at start-up")
    }

    /// `num.partitions`.
    pub fn num_partitions(&self) -> i32 {
        self.long("num.partitions") as i32
    }

    /// `auto.create.topics.enable`.
    pub fn auto_create_topics(&self) -> bool {
        self.setting("auto.create.topics.enable") == "true"
    }

    /// The ACL authorizer's settings: on with `authorizer.enabled=true` or any non-empty
    /// `authorizer.class.name` (Kafka's way of turning it on); `super.users` as
    /// `User:admin;User:broker`; `allow.everyone.if.no.acl.found`.
    pub fn acl_settings(&self) -> Result<crate::security::acl::AclSettings> {
        let super_users = self.setting("super.users");
        Ok(crate::security::acl::AclSettings {
            enabled: self.setting("authorizer.enabled") == "true"
                || !self.setting("authorizer.class.name").trim().is_empty(),
            super_users: crate::security::acl::AclSettings::parse_super_users(&super_users)
                .map_err(Error::InvalidConfig)?,
            allow_everyone_if_no_acl_found: self.setting("allow.everyone.if.no.acl.found")
                == "true",
        })
    }

    /// `socket.request.max.bytes`.
    pub fn socket_request_max_bytes(&self) -> usize {
        self.long("socket.request.max.bytes") as usize
    }

    /// `connections.max.idle.ms`; `None` at 0 or below (connections are never closed for it).
    pub fn connections_max_idle(&self) -> Option<std::time::Duration> {
        let ms = self.long("connections.max.idle.ms");
        (ms > 0).then(|| std::time::Duration::from_millis(ms.unsigned_abs()))
    }

    /// `max.connections`: connections served at once, every listener together; past it new
    /// connections wait in the kernel's accept queue.
    pub fn max_connections(&self) -> usize {
        usize::try_from(self.long("max.connections")).unwrap_or(usize::MAX)
    }

    /// `max.connections.per.ip` and `max.connections.per.ip.overrides`.
    pub(crate) fn connections_per_ip(&self) -> Result<crate::server::limits::PerIp> {
        let limit = usize::try_from(self.long("max.connections.per.ip")).unwrap_or(usize::MAX);
        crate::server::limits::PerIp::new(limit, &self.setting("max.connections.per.ip.overrides"))
            .map_err(Error::InvalidConfig)
    }

    /// `queued.max.request.bytes`: request bytes read but not yet answered, broker-wide.
    pub fn queued_max_request_bytes(&self) -> usize {
        self.long("queued.max.request.bytes") as usize
    }

    /// `log.retention.check.interval.ms`.
    pub fn retention_check_interval_ms(&self) -> i64 {
        self.long("log.retention.check.interval.ms")
    }

    /// `lake.read.cache.bytes`: decoded lake files kept for historic reads.
    pub fn lake_read_cache_bytes(&self) -> usize {
        self.long("lake.read.cache.bytes") as usize
    }

    /// `lake.target.lag.ms` as the broker default (topics may override it, see
    /// [`TopicConfig::lake_target_lag_ms`]): also how often group offsets go to the lake.
    pub fn lake_target_lag_ms(&self) -> i64 {
        self.long("lake.target.lag.ms")
    }

    /// `quota.window.num` × `quota.window.size.seconds`: the sampled windows client quotas
    /// are measured over: `(samples, window_ms)`.
    pub fn quota_windows(&self) -> (usize, i64) {
        (
            self.long("quota.window.num").max(1) as usize,
            self.long("quota.window.size.seconds").max(1) * 1000,
        )
    }

    /// `remote.log.manager.copy.max.bytes.per.second`: bytes of segments offloaded to the lake
    /// per second, broker-wide (`i64::MAX`: no limit).
    pub fn remote_copy_max_bytes_per_second(&self) -> i64 {
        self.long("remote.log.manager.copy.max.bytes.per.second")
    }

    /// `remote.log.manager.fetch.max.bytes.per.second`: bytes read from the lake for consumers
    /// per second, broker-wide (`i64::MAX`: no limit).
    pub fn remote_fetch_max_bytes_per_second(&self) -> i64 {
        self.long("remote.log.manager.fetch.max.bytes.per.second")
    }

    /// `max.incremental.fetch.session.cache.slots`: fetch sessions (KIP-227) kept at once.
    pub fn max_incremental_fetch_session_cache_slots(&self) -> usize {
        self.long("max.incremental.fetch.session.cache.slots") as usize
    }

    /// `node.id`.
    pub fn node_id(&self) -> i32 {
        self.long("node.id") as i32
    }

    /// `default.replication.factor`.
    pub fn default_replication_factor(&self) -> i16 {
        self.long("default.replication.factor")
            .min(i64::from(i16::MAX)) as i16
    }

    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub fn replica_lag_time_max_ms(&self) -> i64 {
        self.long("replica.lag.time.max.ms")
    }

    /// `controller.quorum.voters` (`id@host:port,…`): the metadata quorum, empty for a single
    /// broker with local metadata.
    pub fn quorum_voters(&self) -> Result<BTreeMap<i32, SocketAddr>> {
        parse_voters(&self.setting("controller.quorum.voters"))
    }

    /// Whether this broker is part of a cluster (`controller.quorum.voters` is set).
    pub fn is_clustered(&self) -> bool {
        !self.setting("controller.quorum.voters").trim().is_empty()
    }

    /// The listeners: `listeners` when set, else one PLAINTEXT listener on [`Self::listen`];
    /// with `listener.security.protocol.map`, `advertised.listeners` (and `--advertised` for
    /// the first listener), `inter.broker.listener.name` and `controller.listener.names`.
    pub(crate) fn listeners(&self) -> Result<crate::security::listener::Listeners> {
        let listen = self.listen.to_string();
        let listeners = self.setting("listeners");
        let settings = [
            "listener.security.protocol.map",
            "advertised.listeners",
            "inter.broker.listener.name",
            "controller.listener.names",
        ]
        .map(|name| self.setting(name));
        crate::security::listener::parse(&crate::security::listener::ListenerSettings {
            listeners: if listeners.trim().is_empty() {
                &listen
            } else {
                &listeners
            },
            protocol_map: &settings[0],
            advertised_listeners: &settings[1],
            advertised: self.advertised.as_deref(),
            inter_broker_listener_name: &settings[2],
            controller_listener_names: &settings[3],
        })
        .map_err(Error::InvalidConfig)
    }

    /// The TLS settings of listener `name` (`listener.name.<name>.ssl.*` first, then `ssl.*`).
    pub(crate) fn tls_settings(&self, name: &str) -> Result<crate::security::tls::TlsSettings> {
        crate::security::tls::TlsSettings::read(name, |setting| self.settings.get(setting).cloned())
            .map_err(Error::InvalidConfig)
    }

    /// `controller.listen`: where this voter serves the metadata quorum.
    pub fn controller_listen(&self) -> Result<Option<SocketAddr>> {
        let value = self.setting("controller.listen");
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        resolve_addr(value).map(Some).ok_or_else(|| {
            Error::InvalidConfig(format!("controller.listen {value:?} is not HOST:PORT"))
        })
    }

    /// `metrics.listen`: where `/metrics`, `/health` and `/ready` are served over HTTP; `None`
    /// (the default) serves none.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>> {
        let value = self.setting("metrics.listen");
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        resolve_addr(value).map(Some).ok_or_else(|| {
            Error::InvalidConfig(format!("metrics.listen {value:?} is not HOST:PORT"))
        })
    }

    /// `auto.leader.rebalance.enable`: the controller moves leadership back to preferred replicas.
    pub fn auto_leader_rebalance(&self) -> bool {
        self.setting("auto.leader.rebalance.enable") == "true"
    }

    /// `leader.imbalance.check.interval.seconds`.
    pub fn leader_imbalance_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.long("leader.imbalance.check.interval.seconds") as u64)
    }

    /// `broker.rack`, `None` when unset.
    pub fn rack(&self) -> Option<String> {
        let rack = self.setting("broker.rack");
        (!rack.trim().is_empty()).then(|| rack.trim().to_string())
    }

    /// `broker.heartbeat.interval.ms`.
    pub fn heartbeat_interval_ms(&self) -> i64 {
        self.long("broker.heartbeat.interval.ms")
    }

    /// `broker.session.timeout.ms`: a broker not heard from for this long is fenced.
    pub fn session_timeout_ms(&self) -> i64 {
        self.long("broker.session.timeout.ms")
    }

    /// Group and offset settings for the coordinator.
    pub fn coordinator_config(&self) -> strata_coordinator::CoordinatorConfig {
        strata_coordinator::CoordinatorConfig {
            timeouts: strata_coordinator::group::GroupTimeouts {
                initial_rebalance_delay_ms: self.long("group.initial.rebalance.delay.ms"),
                min_session_timeout_ms: self.long("group.min.session.timeout.ms") as i32,
                max_session_timeout_ms: self.long("group.max.session.timeout.ms") as i32,
            },
            offsets_retention_ms: self.long("offsets.retention.minutes") * 60_000,
            offset_metadata_max_bytes: self.long("offset.metadata.max.bytes") as usize,
        }
    }

    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` (a cluster's).
    pub fn offsets_topic_num_partitions(&self) -> i32 {
        self.long("offsets.topic.num.partitions")
            .min(i64::from(crate::manager::PARTITIONS_MAX)) as i32
    }

    /// `offsets.topic.replication.factor`: replicas of each `__consumer_offsets` partition.
    pub fn offsets_topic_replication_factor(&self) -> i16 {
        self.long("offsets.topic.replication.factor")
            .min(i64::from(i16::MAX)) as i16
    }

    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state` (a
    /// cluster's).
    pub fn transaction_state_num_partitions(&self) -> i32 {
        self.long("transaction.state.log.num.partitions")
            .min(i64::from(crate::manager::PARTITIONS_MAX)) as i32
    }

    /// `transaction.state.log.replication.factor`: replicas of each `__transaction_state`
    /// partition.
    pub fn transaction_state_replication_factor(&self) -> i16 {
        self.long("transaction.state.log.replication.factor")
            .min(i64::from(i16::MAX)) as i16
    }

    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask for.
    pub fn transaction_max_timeout_ms(&self) -> i64 {
        self.long("transaction.max.timeout.ms")
    }

    /// `transactional.id.expiration.ms`: a transactional id idle this long is forgotten.
    pub fn transactional_id_expiration_ms(&self) -> i64 {
        self.long("transactional.id.expiration.ms")
    }

    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often transactions
    /// are checked against their timeout.
    pub fn transaction_timeout_check_interval_ms(&self) -> i64 {
        self.long("transaction.abort.timed.out.transaction.cleanup.interval.ms")
    }

    /// `offsets.retention.check.interval.ms`.
    pub fn offsets_retention_check_interval_ms(&self) -> i64 {
        self.long("offsets.retention.check.interval.ms")
    }

    /// All broker settings with their values, for DescribeConfigs on the broker resource.
    pub fn all_settings(&self) -> Vec<(String, String, bool)> {
        let names = BROKER_SETTINGS
            .iter()
            .map(|(n, _, _)| *n)
            .chain(TOPIC_CONFIGS.iter().map(|d| d.broker_name));
        let mut all: Vec<_> = names
            .filter(|n| !is_sensitive(n))
            .map(|n| (n.to_string(), self.setting(n), self.is_set(n)))
            .collect();
        all.sort();
        all.dedup_by(|a, b| a.0 == b.0);
        all
    }

    /// The effective topic config for a topic with these overrides.
    pub fn topic_config(&self, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let values = TOPIC_CONFIGS
            .iter()
            .map(|d| {
                let value = overrides
                    .get(d.name)
                    .cloned()
                    .unwrap_or_else(|| self.setting(d.broker_name));
                (d.name.to_string(), value)
            })
            .collect();
        TopicConfig { values }
    }
}

/// Settings whose values DescribeConfigs never shows (private keys).
fn is_sensitive(name: &str) -> bool {
    name.ends_with("ssl.keystore.key")
        || name.ends_with("ssl.key.password")
        || name.ends_with("sasl.jaas.config")
}

fn broker_setting_type(name: &str) -> Option<ConfigType> {
    // A TLS setting of one listener: `listener.name.<name>.ssl.keystore.location`, ….
    let name = match name.strip_prefix("listener.name.") {
        Some(rest) => rest
            .split_once('.')
            .map(|(_, setting)| setting)
            .filter(|s| crate::security::tls::TLS_SETTINGS.contains(s))
            // The SASL login of one listener and mechanism:
            // `listener.name.<name>.scram-sha-256.sasl.jaas.config`.
            .or_else(|| {
                let (_, rest) = rest.split_once('.')?;
                let (mechanism, setting) = rest.split_once('.')?;
                crate::security::sasl::SaslMechanism::parse(mechanism)?;
                (setting == "sasl.jaas.config").then_some(setting)
            })?,
        None => name,
    };
    BROKER_SETTINGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, t)| *t)
        .or_else(|| {
            TOPIC_CONFIGS
                .iter()
                .find(|d| d.broker_name == name)
                .map(|d| d.kind)
        })
}

/// Checks topic overrides: known names, valid values, supported features.
pub fn validate_topic_overrides(overrides: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in overrides {
        if let Some((_, why)) = IGNORED_TOPIC_CONFIGS.iter().find(|(n, _)| n == name) {
            tracing::warn!(config = %name, value = %value, "topic config accepted and ignored: {why}");
            continue;
        }
        let def = topic_config_def(name)
            .ok_or_else(|| Error::InvalidConfig(format!("unknown topic config {name:?}")))?;
        if name == "cleanup.policy" && value.split(',').any(|p| p.trim() == "compact") {
            return Err(Error::InvalidConfig(
                "cleanup.policy=compact: log compaction is not supported yet".into(),
            ));
        }
        def.kind.validate(name, value)?;
    }
    Ok(())
}

/// The effective config of one topic: every known topic config with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    values: BTreeMap<String, String>,
}

impl TopicConfig {
    /// The value of a topic config.
    pub fn get(&self, name: &str) -> &str {
        self.values
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn long(&self, name: &str) -> i64 {
        self.get(name).trim().parse().expect("validated")
    }

    fn int(&self, name: &str) -> i32 {
        self.get(name).trim().parse().expect("validated")
    }

    /// `min.insync.replicas`: the in-sync replicas an `acks=all` produce needs.
    pub fn min_insync_replicas(&self) -> usize {
        self.long("min.insync.replicas").max(1) as usize
    }

    /// `lake.target.lag.ms`: the leader uploads the records not in the lake as a fresh piece
    /// once the oldest of them has waited this long.
    pub fn lake_target_lag_ms(&self) -> i64 {
        self.long("lake.target.lag.ms")
    }

    /// `lake.fresh.delete.delay.ms`: how long a lake file replaced (a fresh piece) or removed
    /// (retention, DeleteRecords) stays in object storage, so readers that listed it finish.
    pub fn lake_fresh_delete_delay_ms(&self) -> i64 {
        self.long("lake.fresh.delete.delay.ms")
    }

    /// `lake.snapshot.retention.ms`: how long the snapshots of the topic's Iceberg table are
    /// kept (the current one always is).
    pub fn lake_snapshot_retention_ms(&self) -> i64 {
        self.long("lake.snapshot.retention.ms")
    }

    /// The settings of the partition logs.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.long("segment.bytes") as u64,
            segment_ms: self.long("segment.ms"),
            retention_ms: self.long("retention.ms"),
            retention_bytes: self.long("retention.bytes"),
            flush_messages: self.long("flush.messages"),
            flush_ms: self.long("flush.ms"),
            index_interval_bytes: self.long("index.interval.bytes").max(1) as u64,
            max_message_bytes: self.long("max.message.bytes") as usize,
            timestamp_type: match self.get("message.timestamp.type") {
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => TimestampType::CreateTime,
            },
            timestamp_before_max_ms: self.long("message.timestamp.before.max.ms"),
            timestamp_after_max_ms: self.long("message.timestamp.after.max.ms"),
            compression: strata_log::CompressionType::parse(self.get("compression.type"))
                .unwrap_or_default(),
            compression_levels: strata_log::CompressionLevels {
                gzip: self.int("compression.gzip.level"),
                lz4: self.int("compression.lz4.level"),
                zstd: self.int("compression.zstd.level"),
            },
            remote_storage: self.get("remote.storage.enable") == "true",
            // Kafka: -2 means "the same as retention.ms / retention.bytes".
            local_retention_ms: match self.long("local.retention.ms") {
                -2 => self.long("retention.ms"),
                v => v,
            },
            local_retention_bytes: match self.long("local.retention.bytes") {
                -2 => self.long("retention.bytes"),
                v => v,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(settings: &[(&str, &str)]) -> Result<BrokerConfig> {
        BrokerConfig::new(
            PathBuf::from("/tmp/x"),
            "127.0.0.1:9092".parse().unwrap(),
            None,
            None,
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_relative_data_dir_is_the_working_directory_s() {
        let listen = "127.0.0.1:9092".parse().unwrap();
        let c =
            BrokerConfig::new("./strata-data".into(), listen, None, None, BTreeMap::new()).unwrap();
        let expected = std::env::current_dir().unwrap().join("strata-data");
        assert_eq!(c.data_dir, expected);
        assert_eq!(c.tier_url, format!("file://{}/lake", expected.display()));
        // The default tier URL is one the lake opens (spaces and all).
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("my data");
        let c = BrokerConfig::for_dir(data.clone(), listen);
        assert!(c.tier_url.contains("my%20data"), "{}", c.tier_url);
        strata_lake::store::open(&c.tier_url, &BTreeMap::new()).unwrap();
        assert!(data.join("lake").is_dir());
    }

    #[test]
    fn defaults_follow_kafka() {
        let c = config(&[]).unwrap();
        assert_eq!(c.num_partitions(), 1);
        assert!(c.auto_create_topics());
        assert_eq!(c.socket_request_max_bytes(), 100 * 1024 * 1024);
        assert_eq!(c.tier_url, "file:///tmp/x/lake");
        let t = c.topic_config(&BTreeMap::new());
        assert_eq!(t.get("segment.bytes"), "1073741824");
        assert_eq!(
            (t.lake_target_lag_ms(), t.lake_fresh_delete_delay_ms()),
            (60_000, 600_000)
        );
        // Lake defaults: tiered, unlimited remote retention, a week locally.
        let log = t.log_config();
        assert!(log.remote_storage);
        assert_eq!(
            (
                log.retention_ms,
                log.local_retention_ms,
                log.local_retention_bytes
            ),
            (-1, 604_800_000, -1)
        );
    }

    #[test]
    fn broker_defaults_flow_into_topics_and_overrides_win() {
        let c = config(&[("log.segment.bytes", "1000"), ("num.partitions", "3")]).unwrap();
        assert_eq!(c.num_partitions(), 3);
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        let t = c.topic_config(&overrides);
        assert_eq!(t.log_config().segment_bytes, 1000);
        assert_eq!(t.log_config().retention_ms, 5);
        // The fresh lake's settings: a broker default, a topic override over it.
        let c = config(&[("lake.target.lag.ms", "2000")]).unwrap();
        assert_eq!(c.lake_target_lag_ms(), 2000);
        assert_eq!(c.topic_config(&BTreeMap::new()).lake_target_lag_ms(), 2000);
        let overrides = BTreeMap::from([
            ("lake.target.lag.ms".to_string(), "500".to_string()),
            ("lake.fresh.delete.delay.ms".to_string(), "0".to_string()),
        ]);
        validate_topic_overrides(&overrides).unwrap();
        let t = c.topic_config(&overrides);
        assert_eq!(
            (t.lake_target_lag_ms(), t.lake_fresh_delete_delay_ms()),
            (500, 0)
        );
        // -1 turns fresh pieces off; below it is refused.
        let off = BTreeMap::from([("lake.target.lag.ms".to_string(), "-1".to_string())]);
        validate_topic_overrides(&off).unwrap();
        assert_eq!(c.topic_config(&off).lake_target_lag_ms(), -1);
        let negative = BTreeMap::from([("lake.target.lag.ms".to_string(), "-2".to_string())]);
        assert!(validate_topic_overrides(&negative).is_err());
        let retention =
            BTreeMap::from([("lake.snapshot.retention.ms".to_string(), "1000".to_string())]);
        assert_eq!(
            c.topic_config(&retention).lake_snapshot_retention_ms(),
            1000
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let err = config(&[("num.partitionz", "3")]).unwrap_err().to_string();
        assert!(err.contains("num.partitionz"), "{err}");
        let err = config(&[("num.partitions", "zero")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("num.partitions"), "{err}");
        let bad = |k: &str, v: &str| {
            validate_topic_overrides(&BTreeMap::from([(k.to_string(), v.to_string())])).unwrap_err()
        };
        assert!(
            bad("segment.bytes", "-5")
                .to_string()
                .contains("at least 14")
        );
        assert!(
            bad("retention.mss", "5")
                .to_string()
                .contains("unknown topic config")
        );
        assert!(
            bad("cleanup.policy", "compact")
                .to_string()
                .contains("compaction")
        );
        assert!(
            bad("message.timestamp.type", "Now")
                .to_string()
                .contains("one of")
        );
        assert!(
            bad("remote.storage.enable", "yes")
                .to_string()
                .contains("true or false")
        );
    }

    #[test]
    fn the_authorizer_is_on_by_its_setting_or_kafka_s_class_name() {
        assert_eq!(
            config(&[]).unwrap().acl_settings().unwrap(),
            Default::default()
        );
        let class = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";
        let on = config(&[
            ("authorizer.class.name", class),
            ("super.users", "User:admin;User:broker"),
            ("allow.everyone.if.no.acl.found", "true"),
        ])
        .unwrap()
        .acl_settings()
        .unwrap();
        assert!(on.enabled && on.allow_everyone_if_no_acl_found);
        assert_eq!(on.super_users.len(), 2);
        assert!(
            config(&[("authorizer.enabled", "true")])
                .unwrap()
                .acl_settings()
                .unwrap()
                .enabled
        );
        let bad = config(&[("super.users", "admin")]).unwrap().acl_settings();
        assert!(bad.unwrap_err().to_string().contains("super.users"));
    }

    #[test]
    fn max_message_bytes_stays_within_what_the_lake_converts() {
        assert!(config(&[("message.max.bytes", "67108864")]).is_ok());
        let e = config(&[("message.max.bytes", "67108865")]).unwrap_err();
        assert!(e.to_string().contains("between 0 and 67108864"), "{e}");
        let overrides =
            BTreeMap::from([("max.message.bytes".to_string(), "100000000".to_string())]);
        assert!(validate_topic_overrides(&overrides).is_err());
    }

    #[test]
    fn debug_output_hides_keys_logins_and_object_store_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = BrokerConfig::for_dir(dir.path().into(), "127.0.0.1:0".parse().unwrap());
        c.set("ssl.keystore.key", "-----BEGIN PRIVATE KEY-----secret-key")
            .unwrap();
        c.set(
            "listener.name.internal.scram-sha-256.sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"broker\" password=\"jaas-secret\";",
        )
        .unwrap();
        c.set("ssl.client.auth", "required").unwrap();
        c.set("ssl.key.password", "password-secret").unwrap();
        c.tier_env
            .insert("AWS_SECRET_ACCESS_KEY".into(), "aws-secret".into());
        let shown = format!("{c:?}");
        for secret in ["secret-key", "jaas-secret", "aws-secret", "password-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && shown.contains("required"));
    }
}
