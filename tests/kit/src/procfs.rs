//! What a process costs: CPU time, memory and I/O from `/proc`, and disk usage.

use std::fs;
use std::path::Path;
use std::time::Duration;

/// CPU time (user + system) a process has used so far, all its threads' (ended ones too), to
/// the nanosecond: its CPU-time clock. `/proc/<pid>/stat` counts 10 ms ticks, which a mostly
/// idle daemon can go seconds without. `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write their out-parameter; Linux lets any process read another
    // process's CPU-time clock.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0
            || libc::clock_gettime(clock, &mut t) != 0
        {
            return None;
        }
    }
    Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

/// A `Vm*` field of /proc/<pid>/status (e.g. `VmRSS`, `VmHWM`), in KiB.
pub fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    status_number(pid, field)
}

/// A numeric field of /proc/<pid>/status (`Threads`, or a `Vm*` one in KiB).
pub fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Bytes the process caused to be sent to the storage layer (`write_bytes` of
/// /proc/<pid>/io): what wears an SD card, unlike what it handed to `write(2)`.
pub fn io_write_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
}

/// Disk space used by everything under `path`, like `du -s` (allocated blocks, in bytes).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}
