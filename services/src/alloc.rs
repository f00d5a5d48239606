//! How much freed memory the allocator keeps resident.
//!
//! glibc malloc gives threads their own arenas (up to 8 per core) and keeps what is
//! freed in them for reuse. The transient peaks of `circle serve` (a checkpoint's or
//! snapshot's text, which is the size of the whole reports state; pages of the log)
//! then stay resident for good, spread over the arenas of the runtime's threads. Two
//! arenas, and handing free pages back after those peaks, keep the resident size
//! close to what is live. Elsewhere (another libc) both are no-ops.

/// At most two malloc arenas, and blocks of 1 MB or more always mapped apart (so
/// they go back to the system when freed; by default glibc raises that threshold
/// to 32 MB after the first large free, and such blocks then stay in the heap).
/// Call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Returns free heap pages to the operating system, after a large transient value
/// (a checkpoint or snapshot text) has been dropped.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds unused.
    unsafe {
        libc::malloc_trim(0);
    }
}
