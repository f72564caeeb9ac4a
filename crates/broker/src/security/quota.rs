//! Client quotas as Kafka has them (KIP-13, KIP-55, KIP-124, KIP-219), and the broker-wide
//! limits on the lake (KIP-956).
//!
//! # Layout
//! - [`Entity`]: who a quota is written for: a user, a client id, or both, each possibly the
//!   `<default>` entity. Stored in the security store under kind [`KIND`], keyed by the
//!   canonical string of [`Entity::key`] (`users/alice/clients/app`, `users/<default>`, …), the
//!   value a JSON map of quota key → number (`{"producer_byte_rate":1048576.0}`).
//! - [`QuotaType`]: `producer_byte_rate`, `consumer_byte_rate`, `request_percentage`.
//! - [`QuotaConfigs`]: the records compiled, once per store generation; [`QuotaConfigs::resolve`]
//!   applies Kafka's precedence and names the rate a connection is measured against.
//! - [`Rate`]: Kafka's sampled rate (`quota.window.num` samples of `quota.window.size.seconds`).
//! - [`throttle_ms`]: Kafka's throttle time, `(rate − quota) / quota × window`.
//! - [`Quotas`]: the broker's measured rates, recorded per request.
//! - [`Mute`]: a connection's mute (KIP-219): the broker reads no further request of a
//!   throttled connection until its throttle time has passed, whether or not the client honours
//!   `throttle_time_ms`.
//! - [`TokenBucket`] and [`RateLimiter`]: the lake's byte rates
//!   (`remote.log.manager.copy.max.bytes.per.second`,
//!   `remote.log.manager.fetch.max.bytes.per.second`).
//!
//! Decisions are plain functions of `now_ms`; only [`Mute`] and [`RateLimiter`] sleep.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::SecurityRecords;

/// The security store kind holding client quotas.
pub(crate) const KIND: &str = "quota";
/// Kafka's entity type of a user principal's name.
pub(crate) const USER: &str = "user";
/// Kafka's entity type of a client id.
pub(crate) const CLIENT_ID: &str = "client-id";
/// Kafka's entity type of a client address (connection-rate quotas, not supported here).
pub(crate) const IP: &str = "ip";
/// How the default entity appears in a canonical key (a name `<default>` is escaped there).
const DEFAULT_KEY: &str = "<default>";
/// A measured rate idle this long has no sample left in its window: it is dropped, and a new
/// one measures the same. At least this often the rates are swept.
const SWEEP_INTERVAL_MS: i64 = 30_000;

/// One side of a quota entity: a name, or the default entity (a `null` name on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Name {
    /// `<default>`: applies to every name without a quota of its own.
    Default,
    /// A user name or client id.
    Is(String),
}

impl Name {
    fn from_wire(name: Option<&str>) -> Self {
        match name {
            None => Self::Default,
            Some(n) => Self::Is(n.to_string()),
        }
    }

    /// The name on the wire: `None` for the default entity.
    pub(crate) fn as_wire(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Is(n) => Some(n),
        }
    }

    fn key(&self) -> String {
        match self {
            Self::Default => DEFAULT_KEY.to_string(),
            Self::Is(n) => escape(n),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        if key == DEFAULT_KEY {
            return Some(Self::Default);
        }
        unescape(key).map(Self::Is)
    }
}

/// Percent-encodes everything but ASCII letters, digits and `._-`, as Kafka's `Sanitizer` does
/// for its ZooKeeper paths: a name cannot contain the `/` of a key, nor spell `<default>`.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn unescape(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut rest = key.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Who a quota is written for: a user, a client id, or a user's client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Entity {
    /// The user (principal name), if the entity names one.
    pub(crate) user: Option<Name>,
    /// The client id, if the entity names one.
    pub(crate) client_id: Option<Name>,
}

impl Entity {
    /// The entity a request names as `(entity type, name)` pairs, validated as Kafka's
    /// controller does (`ClientQuotaControlManager`); the error is an INVALID_REQUEST message.
    pub(crate) fn from_wire<'a>(
        parts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Self, String> {
        let mut entity = Self {
            user: None,
            client_id: None,
        };
        let mut empty = true;
        for (kind, name) in parts {
            empty = false;
            let slot = match kind {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                IP => return Err("ip quotas (connection_creation_rate) are not supported".into()),
                other => return Err(format!("Unhandled client quota entity type: {other}")),
            };
            if slot.is_some() {
                return Err(format!(
                    "Invalid client quota entity, duplicate entity entry {kind}"
                ));
            }
            if name == Some("") {
                return Err(format!("Empty {kind} not supported"));
            }
            *slot = Some(Name::from_wire(name));
        }
        if empty {
            return Err("Invalid empty client quota entity".into());
        }
        Ok(entity)
    }

    /// The `(entity type, name)` pairs of a response, user first.
    pub(crate) fn to_wire(&self) -> Vec<(&'static str, Option<&str>)> {
        let user = self.user.as_ref().map(|n| (USER, n.as_wire()));
        let client = self.client_id.as_ref().map(|n| (CLIENT_ID, n.as_wire()));
        user.into_iter().chain(client).collect()
    }

    /// The canonical key of the entity in the security store, shaped like Kafka's ZooKeeper
    /// paths: `users/<name>`, `clients/<name>`, `users/<name>/clients/<name>`.
    pub(crate) fn key(&self) -> String {
        match (&self.user, &self.client_id) {
            (Some(u), Some(c)) => format!("users/{}/clients/{}", u.key(), c.key()),
            (Some(u), None) => format!("users/{}", u.key()),
            (None, Some(c)) => format!("clients/{}", c.key()),
            (None, None) => String::new(),
        }
    }

    /// The entity a canonical key names.
    pub(crate) fn from_key(key: &str) -> Option<Self> {
        let parts: Vec<&str> = key.split('/').collect();
        let (user, client_id) = match parts.as_slice() {
            ["users", u, "clients", c] => (Some(Name::from_key(u)?), Some(Name::from_key(c)?)),
            ["users", u] => (Some(Name::from_key(u)?), None),
            ["clients", c] => (None, Some(Name::from_key(c)?)),
            _ => return None,
        };
        Some(Self { user, client_id })
    }

    fn of(user: Option<&Name>, client_id: Option<&Name>) -> Self {
        Self {
            user: user.cloned(),
            client_id: client_id.cloned(),
        }
    }
}

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QuotaType {
    /// `producer_byte_rate`: Produce request bytes per second.
    Produce,
    /// `consumer_byte_rate`: Fetch response bytes per second.
    Fetch,
    /// `request_percentage`: handler time, in percent of one thread, per window.
    Request,
}

impl QuotaType {
    /// Every quota type.
    pub(crate) const ALL: [Self; 3] = [Self::Produce, Self::Fetch, Self::Request];

    /// Kafka's quota config key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Produce => "producer_byte_rate",
            Self::Fetch => "consumer_byte_rate",
            Self::Request => "request_percentage",
        }
    }

    /// The type a quota config key names.
    pub(crate) fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.key() == key)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Checks a value as Kafka's controller does: positive; the byte rates (Kafka LONGs) whole
    /// numbers. The error is an INVALID_REQUEST message.
    pub(crate) fn validate(self, value: f64) -> Result<(), String> {
        let key = self.key();
        if !value.is_finite() || value <= 0.0 {
            return Err(format!("Quota {key} must be greater than 0"));
        }
        if self != Self::Request {
            if value > i64::MAX as f64 {
                return Err(format!("Proposed value for {key} is too large for a LONG."));
            }
            if (value % 1.0).abs() > 1e-6 {
                return Err(format!("{key} cannot be a fractional value."));
            }
        }
        Ok(())
    }
}

/// The quota values of one entity, as stored: quota key → value.
pub(crate) type Values = BTreeMap<String, f64>;

/// Parses a stored value; `None` (and a warning) for a record this version cannot read.
pub(crate) fn parse_values(key: &str, json: &str) -> Option<Values> {
    match serde_json::from_str::<Values>(json) {
        Ok(values) => Some(values),
        Err(e) => {
            tracing::warn!(entity = key, error = %e, "ignoring an unreadable client quota record");
            None
        }
    }
}

/// The stored form of `values` (`None`: no quota left, the record is deleted).
pub(crate) fn values_json(values: &Values) -> Option<String> {
    (!values.is_empty()).then(|| serde_json::to_string(values).expect("numbers serialize"))
}

/// Whose rate a request counts against, as Kafka's metric tags `(user, client-id)`: the user
/// and client id of the connection, or only one of them when the quota that applies is a
/// user's or a client id's alone (then every client of the user, or every user of the client
/// id, shares one rate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tags {
    /// The user measured, `None` when the rate is a client id's.
    pub(crate) user: Option<String>,
    /// The client id measured, `None` when the rate is a user's.
    pub(crate) client_id: Option<String>,
}

/// The quota records compiled: by quota type, entity → limit.
#[derive(Debug, Default)]
pub(crate) struct QuotaConfigs {
    /// The store generation compiled.
    generation: u64,
    limits: [HashMap<Entity, f64>; 3],
}

impl QuotaConfigs {
    /// Compiles the records of kind [`KIND`]; a record that cannot be read is left out.
    pub(crate) fn compile(records: &SecurityRecords) -> Self {
        let mut configs = Self {
            generation: records.generation,
            ..Self::default()
        };
        for (key, json) in records.kind(KIND) {
            let Some(entity) = Entity::from_key(key) else {
                tracing::warn!(entity = %key, "ignoring a client quota record with a bad key");
                continue;
            };
            for (name, value) in parse_values(key, json).unwrap_or_default() {
                if let Some(kind) = QuotaType::parse(&name) {
                    configs.limits[kind.index()].insert(entity.clone(), value);
                }
            }
        }
        configs
    }

    /// Whether any quota of this type is set: when none is, nothing is measured.
    pub(crate) fn any(&self, kind: QuotaType) -> bool {
        !self.limits[kind.index()].is_empty()
    }

    /// The quota of type `kind` for user `user` (the principal's name) and `client_id`, in
    /// Kafka's order of precedence, with the rate it is measured against; `None`: unlimited.
    ///
    /// 1. `/users/u/clients/c`, 2. `/users/u/clients/<default>`, 3. `/users/u`,
    /// 4. `/users/<default>/clients/c`, 5. `/users/<default>/clients/<default>`,
    /// 6. `/users/<default>`, 7. `/clients/c`, 8. `/clients/<default>`.
    pub(crate) fn resolve(
        &self,
        kind: QuotaType,
        user: &str,
        client_id: &str,
    ) -> Option<(Tags, f64)> {
        let limits = &self.limits[kind.index()];
        if limits.is_empty() {
            return None;
        }
        let (u, c) = (Name::Is(user.to_string()), Name::Is(client_id.to_string()));
        let d = Name::Default;
        // Each level, and which of the user and client id its rate is measured by.
        let order = [
            (Some(&u), Some(&c), true, true),
            (Some(&u), Some(&d), true, true),
            (Some(&u), None, true, false),
            (Some(&d), Some(&c), true, true),
            (Some(&d), Some(&d), true, true),
            (Some(&d), None, true, false),
            (None, Some(&c), false, true),
            (None, Some(&d), false, true),
        ];
        order
            .into_iter()
            .find_map(|(entity_user, entity_client, by_user, by_client)| {
                let limit = *limits.get(&Entity::of(entity_user, entity_client))?;
                let tags = Tags {
                    user: by_user.then(|| user.to_string()),
                    client_id: by_client.then(|| client_id.to_string()),
                };
                Some((tags, limit))
            })
    }
}

/// Kafka's quota windows: `quota.window.num` samples of `quota.window.size.seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Samples kept (`quota.window.num`, Kafka's default 11).
    pub(crate) samples: usize,
    /// Length of one sample (`quota.window.size.seconds`, Kafka's default 1 s).
    pub(crate) window_ms: i64,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            samples: 11,
            window_ms: 1000,
        }
    }
}

#[derive(Debug, Clone)]
struct Sample {
    value: f64,
    start_ms: i64,
    last_event_ms: i64,
}

impl Sample {
    fn new(now_ms: i64) -> Self {
        Self {
            value: 0.0,
            start_ms: now_ms,
            last_event_ms: now_ms,
        }
    }
}

/// A rate per second over sampled windows, as Kafka's `Rate` over a `WindowedSum`: samples of
/// `window_ms` each, one more kept for the sample overlapping the oldest edge; a sample with no
/// event for `samples × window_ms` is dropped; the rate divides the sum by the time since the
/// oldest sample began, but never by less than `samples − 1` whole windows (so that a rate
/// measured just after start is not inflated).
#[derive(Debug, Clone, Default)]
pub(crate) struct Rate {
    samples: Vec<Sample>,
    current: usize,
}

impl Rate {
    /// Adds `value` at `now_ms`.
    pub(crate) fn record(&mut self, windows: Windows, value: f64, now_ms: i64) {
        if self.samples.is_empty() {
            self.samples.push(Sample::new(now_ms));
        }
        if now_ms - self.samples[self.current].start_ms >= windows.window_ms {
            self.current = (self.current + 1) % (windows.samples + 1);
            if self.current >= self.samples.len() {
                self.samples.push(Sample::new(now_ms));
            } else {
                self.samples[self.current] = Sample::new(now_ms);
            }
        }
        let sample = &mut self.samples[self.current];
        sample.value += value;
        sample.last_event_ms = now_ms;
    }

    fn purge(&mut self, windows: Windows, now_ms: i64) {
        let expire_ms = windows.samples as i64 * windows.window_ms;
        for sample in &mut self.samples {
            if now_ms - sample.last_event_ms >= expire_ms {
                *sample = Sample::new(now_ms);
            }
        }
    }

    /// The time the rate is measured over, in milliseconds (at least 1).
    pub(crate) fn window_size_ms(&mut self, windows: Windows, now_ms: i64) -> i64 {
        self.purge(windows, now_ms);
        let oldest = self
            .samples
            .iter()
            .map(|s| s.start_ms)
            .min()
            .unwrap_or(now_ms);
        let mut elapsed = now_ms - oldest;
        let full = elapsed / windows.window_ms;
        let min_full = windows.samples as i64 - 1;
        if full < min_full {
            elapsed += (min_full - full) * windows.window_ms;
        }
        elapsed.max(1)
    }

    /// The rate per second at `now_ms`.
    pub(crate) fn measure(&mut self, windows: Windows, now_ms: i64) -> f64 {
        let window_ms = self.window_size_ms(windows, now_ms);
        let sum: f64 = self.samples.iter().map(|s| s.value).sum();
        sum / (window_ms as f64 / 1000.0)
    }

    /// Whether no sample holds an event of the last `samples × window_ms`: such a rate
    /// measures exactly as a new one.
    fn idle(&self, windows: Windows, now_ms: i64) -> bool {
        let expire_ms = windows.samples as i64 * windows.window_ms;
        self.samples
            .iter()
            .all(|s| now_ms - s.last_event_ms >= expire_ms)
    }
}

/// Kafka's throttle time (`QuotaUtils.throttleTime`): how long the client must stay away for a
/// measured `rate` over `window_ms` to fall back to `quota`, assuming nothing more is recorded:
/// `rate × W / (W + X) = quota`, so `X = (rate − quota) / quota × W`. 0 within the quota.
pub(crate) fn throttle_ms(rate: f64, quota: f64, window_ms: i64) -> i64 {
    if rate <= quota || quota <= 0.0 {
        return 0;
    }
    let throttle = (rate - quota) / quota * window_ms as f64;
    throttle.round().min(i32::MAX as f64) as i64
}

/// Converts handler time to what `request_percentage` measures: percent of one thread.
pub(crate) fn request_percentage(busy: Duration) -> f64 {
    busy.as_nanos() as f64 * 100.0 / 1e9
}

/// The measured rates of the broker's clients, one per quota type and [`Tags`].
#[derive(Debug)]
pub(crate) struct Quotas {
    windows: Windows,
    compiled: Mutex<Arc<QuotaConfigs>>,
    rates: Mutex<Rates>,
}

#[derive(Debug, Default)]
struct Rates {
    by_tags: HashMap<(QuotaType, Tags), Rate>,
    swept_at_ms: i64,
}

impl Quotas {
    /// No rate measured yet.
    pub(crate) fn new(windows: Windows) -> Self {
        Self {
            windows,
            compiled: Mutex::new(Arc::new(QuotaConfigs {
                generation: u64::MAX,
                ..QuotaConfigs::default()
            })),
            rates: Mutex::default(),
        }
    }

    /// The windows rates are measured over.
    pub(crate) fn windows(&self) -> Windows {
        self.windows
    }

    /// The quota records compiled, recompiled when the store's generation moved.
    pub(crate) fn configs(&self, records: &SecurityRecords) -> Arc<QuotaConfigs> {
        let mut compiled = self.compiled.lock();
        if compiled.generation != records.generation {
            *compiled = Arc::new(QuotaConfigs::compile(records));
        }
        Arc::clone(&compiled)
    }

    /// Records `value` against the quota of type `kind` that applies to `user` and
    /// `client_id`, and answers the throttle time in milliseconds that the rate now calls for
    /// (0 within the quota or without one), as Kafka's `recordAndGetThrottleTimeMs`. A
    /// request-percentage throttle is at most one window, as Kafka's.
    pub(crate) fn record(
        &self,
        configs: &QuotaConfigs,
        kind: QuotaType,
        (user, client_id): (&str, &str),
        value: f64,
        now_ms: i64,
    ) -> i64 {
        let Some((tags, quota)) = configs.resolve(kind, user, client_id) else {
            return 0;
        };
        let windows = self.windows;
        let mut rates = self.rates.lock();
        if now_ms - rates.swept_at_ms >= SWEEP_INTERVAL_MS {
            rates.by_tags.retain(|_, r| !r.idle(windows, now_ms));
            rates.swept_at_ms = now_ms;
        }
        let rate = rates.by_tags.entry((kind, tags)).or_default();
        rate.record(windows, value, now_ms);
        let measured = rate.measure(windows, now_ms);
        let throttle = throttle_ms(measured, quota, rate.window_size_ms(windows, now_ms));
        match kind {
            QuotaType::Request => throttle.min(windows.window_ms),
            _ => throttle,
        }
    }
}

/// Milliseconds of a monotonic clock, for mutes (the wall clock may step).
fn monotonic_ms() -> i64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// A connection's mute (KIP-219): after a throttled response the broker reads no further
/// request of the connection until the throttle time has passed.
#[derive(Debug, Default)]
pub(crate) struct Mute {
    /// Until when (ms of [`monotonic_ms`]); 0 when never muted.
    until_ms: AtomicI64,
}

impl Mute {
    /// Mutes the connection for `throttle_ms` from now (a longer mute already set stays).
    pub(crate) fn extend(&self, throttle_ms: i64) {
        if throttle_ms > 0 {
            self.until_ms
                .fetch_max(monotonic_ms() + throttle_ms, Ordering::Relaxed);
        }
    }

    /// How long the connection stays muted.
    pub(crate) fn remaining(&self) -> Duration {
        let left = self.until_ms.load(Ordering::Relaxed) - monotonic_ms();
        Duration::from_millis(left.max(0) as u64)
    }

    /// Waits until the mute ends (at once when not muted).
    pub(crate) async fn wait(&self) {
        loop {
            let left = self.remaining();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

/// A token bucket of bytes: `rate` bytes a second, at most `burst` saved up. A taker may
/// overdraw it (a segment or a lake read is taken whole); the next one waits until the balance
/// is positive again, so over time no more than `rate` bytes a second pass.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    balance: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes a second saving up to `burst` bytes.
    pub(crate) fn new(rate: f64, burst: f64, now_ms: i64) -> Self {
        assert!(
            rate > 0.0 && burst > 0.0,
            "a token bucket needs a positive rate"
        );
        Self {
            rate,
            burst,
            balance: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed_ms = (now_ms - self.at_ms).max(0);
        self.balance = (self.balance + self.rate * elapsed_ms as f64 / 1000.0).min(self.burst);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// How long until the balance is positive (zero when it is): a taker waits that long.
    pub(crate) fn wait_ms(&mut self, now_ms: i64) -> i64 {
        self.refill(now_ms);
        if self.balance > 0.0 {
            0
        } else {
            ((-self.balance / self.rate) * 1000.0).ceil() as i64 + 1
        }
    }

    /// Takes `bytes`, overdrawing if need be.
    pub(crate) fn take(&mut self, bytes: u64, now_ms: i64) {
        self.refill(now_ms);
        self.balance -= bytes as f64;
    }
}

/// A broker-wide byte rate limit shared by tasks: Kafka's `Long.MAX_VALUE` (the default) is
/// no limit at all.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    bucket: Option<Mutex<TokenBucket>>,
}

impl RateLimiter {
    /// A limit of `bytes_per_second`; `i64::MAX` (Kafka's default) or less than 1 is none. The
    /// bucket saves up one second of bytes.
    pub(crate) fn new(bytes_per_second: i64) -> Self {
        let bucket = (bytes_per_second > 0 && bytes_per_second < i64::MAX).then(|| {
            let rate = bytes_per_second as f64;
            Mutex::new(TokenBucket::new(rate, rate, monotonic_ms()))
        });
        Self { bucket }
    }

    /// No limit.
    pub(crate) fn unlimited() -> Self {
        Self { bucket: None }
    }

    /// Whether takers must wait now (Kafka's `isQuotaExceeded`).
    pub(crate) fn exceeded(&self) -> bool {
        self.bucket
            .as_ref()
            .is_some_and(|b| b.lock().wait_ms(monotonic_ms()) > 0)
    }

    /// Takes `bytes` without waiting (a read already made).
    pub(crate) fn take(&self, bytes: u64) {
        if let Some(bucket) = &self.bucket {
            bucket.lock().take(bytes, monotonic_ms());
        }
    }

    /// Waits until the bucket is positive, then takes `bytes`.
    pub(crate) async fn acquire(&self, bytes: u64) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        loop {
            let wait = {
                let mut bucket = bucket.lock();
                let now = monotonic_ms();
                let wait = bucket.wait_ms(now);
                if wait == 0 {
                    bucket.take(bytes, now);
                    return;
                }
                wait
            };
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(quotas: &[(&str, &str)], generation: u64) -> SecurityRecords {
        let mut kinds = BTreeMap::new();
        kinds.insert(
            KIND.to_string(),
            quotas
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        SecurityRecords { generation, kinds }
    }

    #[test]
    fn entity_keys_round_trip_and_escape_what_would_be_ambiguous() {
        let cases = [
            (
                Some(Name::Is("alice".into())),
                Some(Name::Is("app-1".into())),
            ),
            (Some(Name::Default), None),
            (None, Some(Name::Default)),
            (Some(Name::Is("<default>".into())), Some(Name::Default)),
            (Some(Name::Is("CN=a/b, O=x%".into())), None),
            (None, Some(Name::Is("é".into()))),
        ];
        for (user, client_id) in cases {
            let entity = Entity { user, client_id };
            let key = entity.key();
            assert_eq!(Entity::from_key(&key), Some(entity.clone()), "{key}");
        }
        let named = Entity::from_wire([(USER, Some("<default>"))]).unwrap();
        assert_eq!(named.key(), "users/%3Cdefault%3E");
        let default = Entity::from_wire([(USER, None), (CLIENT_ID, Some("c"))]).unwrap();
        assert_eq!(default.key(), "users/<default>/clients/c");
        assert_eq!(
            default.to_wire(),
            vec![(USER, None), (CLIENT_ID, Some("c"))]
        );
        for bad in [
            "",
            "users",
            "users/a/b",
            "groups/a",
            "users/%zz",
            "clients/a/users/b",
        ] {
            assert_eq!(Entity::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn entities_and_values_are_validated_as_kafka_does() {
        let err = |parts: &[(&str, Option<&str>)]| Entity::from_wire(parts.iter().copied());
        assert!(err(&[]).unwrap_err().contains("empty"));
        assert!(
            err(&[(USER, Some("a")), (USER, Some("b"))])
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(err(&[("group", Some("a"))]).unwrap_err().contains("group"));
        assert!(err(&[(USER, Some(""))]).unwrap_err().contains("Empty user"));
        assert!(
            err(&[(IP, Some("1.2.3.4"))])
                .unwrap_err()
                .contains("not supported")
        );
        assert!(QuotaType::Produce.validate(1024.0).is_ok());
        assert!(QuotaType::Produce.validate(0.0).is_err());
        assert!(QuotaType::Fetch.validate(-5.0).is_err());
        assert!(
            QuotaType::Fetch
                .validate(10.5)
                .unwrap_err()
                .contains("fractional")
        );
        assert!(QuotaType::Request.validate(12.5).is_ok());
        assert!(QuotaType::Request.validate(f64::NAN).is_err());
        assert_eq!(
            QuotaType::parse("consumer_byte_rate"),
            Some(QuotaType::Fetch)
        );
        assert_eq!(QuotaType::parse("controller_mutation_rate"), None);
    }

    /// Each level of Kafka's precedence wins over every level below it, and names the rate
    /// the client is measured against.
    #[test]
    fn the_most_specific_quota_applies_in_kafka_s_order() {
        let levels = [
            "users/u/clients/c",
            "users/u/clients/<default>",
            "users/u",
            "users/<default>/clients/c",
            "users/<default>/clients/<default>",
            "users/<default>",
            "clients/c",
            "clients/<default>",
        ];
        let tags = |user: Option<&str>, client: Option<&str>| Tags {
            user: user.map(String::from),
            client_id: client.map(String::from),
        };
        let expected_tags = [
            tags(Some("u"), Some("c")),
            tags(Some("u"), Some("c")),
            tags(Some("u"), None),
            tags(Some("u"), Some("c")),
            tags(Some("u"), Some("c")),
            tags(Some("u"), None),
            tags(None, Some("c")),
            tags(None, Some("c")),
        ];
        for winner in 0..levels.len() {
            // The winner and every level below it are set, each to its own value.
            let set: Vec<(&str, String)> = levels[winner..]
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    (
                        *key,
                        format!("{{\"producer_byte_rate\":{}}}", 100 + winner + i),
                    )
                })
                .collect();
            let borrowed: Vec<(&str, &str)> = set.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let configs = QuotaConfigs::compile(&records(&borrowed, 1));
            let (tags, limit) = configs.resolve(QuotaType::Produce, "u", "c").unwrap();
            assert_eq!(limit, (100 + winner) as f64, "level {}", levels[winner]);
            assert_eq!(tags, expected_tags[winner], "level {}", levels[winner]);
            assert!(configs.resolve(QuotaType::Fetch, "u", "c").is_none());
        }
        // Other users and clients fall through to the defaults only.
        let configs = QuotaConfigs::compile(&records(
            &[
                ("users/u", r#"{"consumer_byte_rate":5}"#),
                ("clients/<default>", r#"{"consumer_byte_rate":7}"#),
            ],
            1,
        ));
        assert_eq!(configs.resolve(QuotaType::Fetch, "u", "x").unwrap().1, 5.0);
        assert_eq!(configs.resolve(QuotaType::Fetch, "v", "x").unwrap().1, 7.0);
        assert!(configs.any(QuotaType::Fetch) && !configs.any(QuotaType::Request));
    }

    #[test]
    fn unreadable_records_are_left_out_and_the_compiled_form_follows_the_generation() {
        let quotas = Quotas::new(Windows::default());
        let first = records(
            &[
                ("users/a", r#"{"producer_byte_rate":10,"unknown_key":3}"#),
                ("bogus", r#"{"producer_byte_rate":10}"#),
                ("users/b", "not json"),
            ],
            1,
        );
        let configs = quotas.configs(&first);
        assert_eq!(
            configs.resolve(QuotaType::Produce, "a", "").unwrap().1,
            10.0
        );
        assert!(configs.resolve(QuotaType::Produce, "b", "").is_none());
        assert!(Arc::ptr_eq(&configs, &quotas.configs(&first)));
        let second = records(&[("users/a", r#"{"producer_byte_rate":20}"#)], 2);
        assert_eq!(
            quotas
                .configs(&second)
                .resolve(QuotaType::Produce, "a", "")
                .unwrap()
                .1,
            20.0
        );
    }

    const W: Windows = Windows {
        samples: 11,
        window_ms: 1000,
    };

    #[test]
    fn the_rate_divides_by_at_least_samples_minus_one_windows() {
        let mut rate = Rate::default();
        rate.record(W, 1000.0, 0);
        // Just started: 10 whole windows are assumed.
        assert_eq!(rate.window_size_ms(W, 0), 10_000);
        assert_eq!(rate.measure(W, 0), 100.0);
        // 15 s of 1000 bytes a second: the oldest samples expire, the window stays ~11 s.
        for t in 1..=15 {
            rate.record(W, 1000.0, t * 1000);
        }
        let window = rate.window_size_ms(W, 15_000);
        assert!((10_000..=11_000).contains(&window), "{window}");
        let measured = rate.measure(W, 15_500);
        assert!((900.0..=1100.0).contains(&measured), "{measured}");
        // Idle for the whole window span: everything expired.
        assert!(rate.idle(W, 27_000));
        assert_eq!(rate.measure(W, 27_000), 0.0);
    }

    #[test]
    fn throttle_time_is_kafka_s_formula() {
        assert_eq!(throttle_ms(100.0, 100.0, 10_000), 0);
        assert_eq!(throttle_ms(50.0, 100.0, 10_000), 0);
        // 20% over a 10 s window: 2 s.
        assert_eq!(throttle_ms(120.0, 100.0, 10_000), 2_000);
        assert_eq!(throttle_ms(300.0, 100.0, 11_000), 22_000);
        assert_eq!(request_percentage(Duration::from_millis(50)), 5.0);
    }

    #[test]
    fn recording_past_the_quota_throttles_and_request_throttles_are_capped() {
        let quotas = Quotas::new(W);
        let configs = quotas.configs(&records(
            &[(
                "users/<default>",
                r#"{"producer_byte_rate":1000,"request_percentage":10}"#,
            )],
            1,
        ));
        let who = ("ANONYMOUS", "app");
        // 10 s of quota at once is within it (Kafka's start-up allowance)…
        assert_eq!(
            quotas.record(&configs, QuotaType::Produce, who, 10_000.0, 0),
            0
        );
        // …one byte a second more is not: (10_500 / 10 − 1000) / 1000 × 10 s.
        assert_eq!(
            quotas.record(&configs, QuotaType::Produce, who, 500.0, 0),
            500
        );
        // Another user's client has its own rate.
        assert_eq!(
            quotas.record(&configs, QuotaType::Produce, ("bob", "app"), 500.0, 0),
            0
        );
        // 5 s of handler time in one window is far past 10%: capped at one window.
        let busy = request_percentage(Duration::from_secs(5));
        assert_eq!(
            quotas.record(&configs, QuotaType::Request, who, busy, 0),
            1000
        );
        // No fetch quota: nothing measured.
        assert_eq!(quotas.record(&configs, QuotaType::Fetch, who, 1e12, 0), 0);
    }

    /// Bytes a client sends per second over `[from_ms, to_ms)` when it sends `request` bytes
    /// at a time and always waits out its throttle time, against a quota of 100,000 B/s.
    fn greedy_client_rate(windows: Windows, request: f64, from_ms: i64, to_ms: i64) -> f64 {
        let quotas = Quotas::new(windows);
        let configs = quotas.configs(&records(
            &[("clients/c", r#"{"producer_byte_rate":100000}"#)],
            1,
        ));
        let (mut now, mut bytes) = (0, 0.0);
        while now < to_ms {
            let throttle = quotas.record(&configs, QuotaType::Produce, ("u", "c"), request, now);
            if now >= from_ms {
                bytes += request;
            }
            now += throttle.max(1);
        }
        bytes * 1000.0 / (to_ms - from_ms) as f64
    }

    /// Kafka's sampled rate lets a client send (samples − 1) windows of quota at once when its
    /// oldest sample expires, so with the default 11 windows its rate is only held over spans
    /// of several window spans (and stays above the quota by the burst's share); with 2
    /// windows every 10 s span is within 10% of the quota.
    #[test]
    fn a_client_honouring_throttles_is_held_to_its_quota() {
        let rate = greedy_client_rate(W, 16_384.0, 0, 120_000);
        assert!((90_000.0..=120_000.0).contains(&rate), "{rate}");
        let two = Windows {
            samples: 2,
            window_ms: 1000,
        };
        for from in [0, 7_000, 12_000, 20_000, 33_000, 45_000] {
            let rate = greedy_client_rate(two, 4096.0, from, from + 10_000);
            assert!(
                (90_000.0..=110_000.0).contains(&rate),
                "from {from} ms: {rate}"
            );
        }
    }

    #[test]
    fn token_buckets_pass_their_rate_over_time_and_let_a_large_take_overdraw() {
        let mut bucket = TokenBucket::new(1000.0, 1000.0, 0);
        assert_eq!(bucket.wait_ms(0), 0);
        bucket.take(5000, 0);
        // 4000 bytes in debt at 1000 B/s: positive again after 4 s.
        let wait = bucket.wait_ms(0);
        assert!((4000..=4002).contains(&wait), "{wait}");
        assert!(bucket.wait_ms(3000) > 0);
        assert_eq!(bucket.wait_ms(4002), 0);
        // Saving up stops at the burst.
        assert_eq!(bucket.wait_ms(100_000), 0);
        bucket.take(1000, 100_000);
        assert!(bucket.wait_ms(100_000) > 0);
        // A steady taker of 100 bytes gets 1000 B/s.
        let mut bucket = TokenBucket::new(1000.0, 100.0, 0);
        let (mut now, mut taken) = (0, 0u64);
        while now < 20_000 {
            now += bucket.wait_ms(now);
            bucket.take(100, now);
            taken += 100;
        }
        let rate = taken as f64 / 20.0;
        assert!((950.0..=1060.0).contains(&rate), "{rate}");
        assert!(RateLimiter::new(i64::MAX).bucket.is_none());
        assert!(!RateLimiter::unlimited().exceeded());
    }

    #[tokio::test]
    async fn a_limiter_overdrawn_makes_takers_wait_and_a_mute_holds_for_its_time() {
        let limiter = RateLimiter::new(1_000_000);
        // A full bucket lets a large take through at once, then owes it.
        limiter.acquire(3_000_000).await;
        assert!(limiter.exceeded());
        let mute = Mute::default();
        assert!(mute.remaining().is_zero());
        let started = std::time::Instant::now();
        mute.extend(50);
        mute.extend(10);
        assert!(mute.remaining() > Duration::from_millis(10));
        mute.wait().await;
        assert!(mute.remaining().is_zero());
        assert!(started.elapsed() >= Duration::from_millis(49));
    }
}
