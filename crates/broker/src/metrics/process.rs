//! The process's own metrics, with the names every Prometheus client library uses
//! (`process_resident_memory_bytes`, `process_open_fds`, …), read from `/proc/self` at scrape.
//! On a system without `/proc` they are left out.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::gauge;

/// What `/proc/self/status` says of memory, in bytes: `(resident, virtual)`.
fn memory_bytes(status: &str) -> (Option<i64>, Option<i64>) {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: i64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    (field("VmRSS"), field("VmSize"))
}

/// Open file descriptors: the entries of `/proc/self/fd`, less the one reading it.
fn open_fds() -> Option<i64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as i64 - 1)
}

pub(super) fn encode(encoder: &mut DescriptorEncoder) -> fmt::Result {
    let (resident, virtual_bytes) = std::fs::read_to_string("/proc/self/status")
        .map(|s| memory_bytes(&s))
        .unwrap_or_default();
    if let Some(bytes) = resident {
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            bytes,
        )?;
    }
    if let Some(bytes) = virtual_bytes {
        gauge(
            encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            bytes,
        )?;
    }
    if let Some(fds) = open_fds() {
        gauge(
            encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            fds,
        )?;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(max) = limit.and_then(|m| i64::try_from(m).ok()) {
        gauge(
            encoder,
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            max,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_the_status_file() {
        let status = "Name:\tstrata\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(
            memory_bytes(status),
            (Some(10240 * 1024), Some(204800 * 1024))
        );
        assert_eq!(memory_bytes("Name: x\n"), (None, None));
    }

    #[test]
    fn this_process_has_open_files_and_memory() {
        let fds = open_fds().expect("Linux has /proc");
        assert!(fds >= 3, "{fds}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(memory_bytes(&status).0.unwrap() > 0);
    }
}
