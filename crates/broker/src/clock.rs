//! The broker's clock: wall-clock milliseconds since the Unix epoch, as Kafka timestamps are.
//! Decisions take `now_ms` as an argument (see `strata_log::policy`); only the edges read it here.

/// Milliseconds since the Unix epoch; 0 if the system clock is before it.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
