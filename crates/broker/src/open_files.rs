//! The open-files limit (`RLIMIT_NOFILE`): raised to the hard limit at start and shared between the
//! log's segment file cache ([`strata_log::file_cache`]) and everything else the broker opens
//! (connections, the lake's files and sockets, metadata).
//!
//! A partition holds no file while idle, so partitions alone cannot exhaust the limit any more; what
//! more partitions than the cache's cap cost is time: when more of them are written or read at once
//! than the cache keeps open, their files are opened again and again.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The segment file cache takes one part in this many of the open-files limit (a half): the rest
/// is for connections (up to [`crate::server::CONNECTIONS_MAX`]), the lake and the broker's own files.
const SEGMENT_FILES_SHARE_DIVISOR: u64 = 2;
/// The cache's cap when the limit is infinite (Linux never has one for open files, but the type
/// allows it).
const SEGMENT_FILES_UNLIMITED: usize = 1 << 16;
/// Below this limit the broker warns at start: it cannot serve its maximum of connections.
const OPEN_FILES_LOW: u64 = crate::server::CONNECTIONS_MAX as u64;

/// Raises the soft open-files limit to the hard one and sizes the log's segment file cache from the
/// result. Returns the limit in force (`None`: infinite).
pub(crate) fn fit_to_limit() -> Option<u64> {
    let before = getrlimit(Resource::Nofile);
    let mut limit = before.current;
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?before.current, to = ?before.maximum,
                    "raised the open-files limit to the hard limit");
                limit = before.maximum;
            }
            Err(e) => tracing::warn!(soft = ?before.current, hard = ?before.maximum, error = %e,
                "could not raise the open-files limit to the hard limit"),
        }
    }
    let cap = segment_files_max(limit);
    strata_log::file_cache::set_open_files_max(cap);
    tracing::debug!(
        limit = ?limit,
        segment_files_max = cap,
        "open-files budget"
    );
    if limit.is_some_and(|l| l < OPEN_FILES_LOW) {
        tracing::warn!(limit = ?limit, connections_max = crate::server::CONNECTIONS_MAX,
            "the open-files limit is low (raise it with `ulimit -Hn` or systemd's LimitNOFILE=)");
    }
    limit
}

/// The segment file cache's cap for an open-files limit.
fn segment_files_max(limit: Option<u64>) -> usize {
    limit.map_or(SEGMENT_FILES_UNLIMITED, |l| {
        usize::try_from(l / SEGMENT_FILES_SHARE_DIVISOR).unwrap_or(usize::MAX)
    })
}

/// Warns when there are more partitions than segment files kept open: not an error (each idle
/// partition costs no file), but partitions written or read at once beyond the cap reopen files.
pub(crate) fn warn_if_partitions_exceed(partitions: usize) {
    let cap = strata_log::file_cache::open_files_max();
    if partitions > cap {
        tracing::warn!(
            partitions,
            segment_files_max = cap,
            "more partitions than segment files kept open (half the open-files limit): when more \
             than that many are busy at once their files are reopened, which is slower; raise the \
             hard open-files limit (`ulimit -Hn`, systemd's LimitNOFILE=) for this many partitions"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_takes_half_the_limit() {
        assert_eq!(segment_files_max(Some(20_000)), 10_000);
        assert_eq!(segment_files_max(Some(1024)), 512);
        assert_eq!(segment_files_max(None), SEGMENT_FILES_UNLIMITED);
    }
}
