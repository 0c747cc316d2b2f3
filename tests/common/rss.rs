//! The resident set size (VmRSS) of a process, read from /proc (Linux; 0 where unreadable).
//! Only std: the examples include this file too (`#[path]`).
// Each includer uses its share.
#![allow(dead_code)]

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    vm_rss_kib(&format!("/proc/{pid}/status"))
}

/// VmRSS of this process, in KiB.
pub fn own_rss_kib() -> u64 {
    vm_rss_kib("/proc/self/status")
}

/// The `VmRSS:` line of a /proc status file (`VmRSS:    12345 kB`).
fn vm_rss_kib(status_file: &str) -> u64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kib| kib.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
