//! Kafka's connection limits: `max.connections.per.ip` (with `max.connections.per.ip.overrides`)
//! refuses a client address's connections past its limit, and `connections.max.idle.ms` closes a
//! connection that has neither read a request nor written an answer for that long, and has no
//! answer still to write (a long-poll fetch keeps its connection).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often a connection past its idle time but with answers still to write looks again.
const IN_FLIGHT_RECHECK: Duration = Duration::from_secs(1);

/// Connections per client address, within `max.connections.per.ip` and its overrides.
#[derive(Debug)]
pub(crate) struct PerIp {
    limit: usize,
    overrides: HashMap<IpAddr, usize>,
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// From `max.connections.per.ip` and `max.connections.per.ip.overrides`
    /// (`host-or-ip:limit,…`, host names resolved now, as Kafka does at start).
    pub(crate) fn new(limit: usize, overrides: &str) -> Result<Self, String> {
        let mut parsed = HashMap::new();
        for entry in overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (host, count) = entry.rsplit_once(':').ok_or_else(|| {
                format!("max.connections.per.ip.overrides: {entry:?} is not host:limit")
            })?;
            let count: usize = count.trim().parse().map_err(|_| {
                format!("max.connections.per.ip.overrides: the limit of {entry:?} is not a number")
            })?;
            let host = host.trim().trim_start_matches('[').trim_end_matches(']');
            let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (host, 0)
                    .to_socket_addrs()
                    .map_err(|e| {
                        format!("max.connections.per.ip.overrides: {host:?} does not resolve: {e}")
                    })?
                    .map(|a| a.ip())
                    .collect(),
            };
            for ip in ips {
                parsed.insert(ip, count);
            }
        }
        if limit == 0 && parsed.is_empty() {
            return Err(
                "max.connections.per.ip is 0 and max.connections.per.ip.overrides is empty: no \
                 client could connect"
                    .into(),
            );
        }
        Ok(Self {
            limit,
            overrides: parsed,
            open: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `Err(limit)` when it has that many already.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, usize> {
        let limit = self.overrides.get(&ip).copied().unwrap_or(self.limit);
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                open.remove(&ip);
            }
            return Err(limit);
        }
        *count += 1;
        Ok(IpSlot {
            limits: Arc::clone(self),
            ip,
        })
    }

    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&ip).copied().unwrap_or(0)
    }
}

/// One open connection of a client address; released when dropped.
#[derive(Debug)]
pub(crate) struct IpSlot {
    limits: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What `connections.max.idle.ms` watches on one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds after `base` of the last request read or answer written.
    last_ms: AtomicU64,
    /// Answers queued or being written.
    in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A request was read (or a mute ended).
    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::SeqCst);
    }

    /// An answer is queued for the writer.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// The writer is done with an answer (written, or there was none to write).
    pub(crate) fn end(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Completes once the connection has been idle for `idle`: nothing read or written for that
    /// long and no answer pending.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.base + Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
            let deadline = deadline + idle;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(idle.min(IN_FLIGHT_RECHECK)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_limit_and_slots_are_given_back() {
        let limits = Arc::new(PerIp::new(2, "127.0.0.2:0, [::1]:5").unwrap());
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limits.admit(one).unwrap();
        let b = limits.admit(one).unwrap();
        assert_eq!(limits.admit(one).unwrap_err(), 2);
        drop(a);
        let _c = limits.admit(one).unwrap();
        assert_eq!(limits.open_from(one), 2);
        drop(b);
        assert_eq!(limits.open_from(one), 1);
        assert_eq!(limits.admit("127.0.0.2".parse().unwrap()).unwrap_err(), 0);
        let six: Vec<_> = (0..5)
            .map(|_| limits.admit("::1".parse().unwrap()).unwrap())
            .collect();
        assert_eq!(limits.admit("::1".parse().unwrap()).unwrap_err(), 5);
        drop(six);
        assert_eq!(limits.open_from("::1".parse().unwrap()), 0);
    }

    #[test]
    fn overrides_that_do_not_parse_stop_the_start() {
        for bad in ["127.0.0.1", "127.0.0.1:x", "no-such-host.invalid:3"] {
            let err = PerIp::new(10, bad).unwrap_err();
            assert!(err.contains("max.connections.per.ip.overrides"), "{err}");
        }
        let err = PerIp::new(0, "").unwrap_err();
        assert!(err.contains("no client could connect"), "{err}");
        assert!(PerIp::new(0, "localhost:10").is_ok());
    }

    #[tokio::test]
    async fn idle_means_nothing_read_written_or_pending() {
        let idle = Duration::from_millis(50);
        // Times are kept in whole milliseconds.
        let slack = Duration::from_millis(2);
        let started = Instant::now();
        let activity = Activity::new();
        activity.idle_for(idle).await;
        assert!(started.elapsed() >= idle - slack, "idle from the start");

        activity.touch();
        activity.begin(); // a long-poll fetch: however long it waits, the connection is not idle
        let pending = tokio::time::timeout(idle * 6, activity.idle_for(idle)).await;
        assert!(pending.is_err(), "not idle while an answer is pending");
        let answered = Instant::now();
        activity.end();
        activity.idle_for(idle).await;
        assert!(
            answered.elapsed() >= idle - slack,
            "idle counted from the answer written"
        );
    }
}
