//! Ground-floor helpers about host processes, read from `/proc` and
//! pidfds: liveness, exit notification, memory (PSS). Nothing above them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Whether `pid` names a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// PSS of `pid` in KiB; 0 when it is gone.
pub fn pss_kib(pid: u32) -> u64 {
    pss_parts_kib(pid).0
}

/// PSS of `pid` in KiB, all and file-backed; (0, 0) when it is gone. File
/// pages (binaries, libraries) are page cache, shared with every process
/// that maps them and dropped by the kernel under pressure; the rest
/// (anonymous and shmem: guest RAM, TCG's translation cache, heaps) stays
/// until the process frees it.
pub fn pss_parts_kib(pid: u32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Pss_File:"))
}

/// Opens a pidfd for `pid`: readable once it exits. `None` (logged at
/// debug) on kernels without pidfd_open or for a pid that is gone.
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: integers only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        tracing::debug!(pid, "pidfd_open: {}", std::io::Error::last_os_error());
        return None;
    }
    // SAFETY: a non-negative result is a new descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
