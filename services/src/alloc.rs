//! Which allocator Circle runs on, and how much freed memory it keeps resident.
//!
//! Every program that links Circle (`circle`, the benchmarks, the tests) allocates
//! through mimalloc. On the HTTP path glibc malloc took about a fifth of the
//! process's own time (its free lists consolidating every few requests); in
//! alternating runs mimalloc raised the 32-connection rate by about 16% (see
//! ARCHITECTURE.md, "Measured"). Declared here, once, so that what the benchmarks
//! measure is what `circle serve` runs.
//!
//! mimalloc's defaults keep freed pages for a while and commit its arenas eagerly:
//! after a rebuild over 1,000,000 events `circle serve` stayed at 340 MB resident
//! (glibc: 200 MB). [`configure`] makes it hand freed pages back at once and commit
//! only what it uses (212 MB after the same rebuild, 125 MB after twenty `as_of`
//! reports), at no cost measurable on the HTTP path.
//!
//! Memory that C code allocates itself (SQLite, for the embedded store) still comes
//! from glibc malloc, which gives threads their own arenas (up to 8 per core) and
//! keeps what is freed in them. Two arenas, and blocks of 1 MB or more mapped apart,
//! keep that close to what is live. Elsewhere (another libc) those are no-ops.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options by their place in `mi_option_e`, in the `mimalloc.h` of the v3
/// sources that libmimalloc-sys 0.1.49 builds (its Rust constants predate v3: hence
/// the exact versions in Cargo.toml).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the system at once and arenas are committed as used, in
/// mimalloc; at most two glibc arenas, and glibc blocks of 1 MB or more always
/// mapped apart (so they go back to the system when freed; by default glibc raises
/// that threshold to 32 MB after the first large free, and such blocks then stay in
/// the heap). Call first thing in `main`, before the runtime starts its threads.
pub fn configure() {
    // SAFETY: setting an option only changes allocator tuning, from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Runs `program` as every Circle program runs (`circle` and the benchmarks): the
/// allocator configured first, then on a multi-threaded runtime.
pub fn run<F: std::future::Future>(program: F) -> std::io::Result<F::Output> {
    configure();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(program))
}

/// Returns free pages to the operating system, mimalloc's and glibc's, after a
/// large transient value (a checkpoint or snapshot text) has been dropped.
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees what mimalloc holds unused; safe from any thread.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds unused.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_allocations_come_from_mimalloc() {
        let value = Box::new([7u8; 64]);
        let address = value.as_ptr().cast::<std::ffi::c_void>();
        // SAFETY: only asks whether the address lies in mimalloc's heap.
        assert!(unsafe { libmimalloc_sys::mi_is_in_heap_region(address) });
    }

    /// The indices name the options meant: each holds its v3 default (nothing in
    /// this test binary calls [`configure`]). A release that renumbers them fails here.
    #[test]
    fn the_option_indices_name_eager_commit_and_purge_delay() {
        // SAFETY: reading an option has no side effect but its lazy initialization.
        let (eager, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        // 2: eagerly where the system overcommits; 1,000 ms.
        assert_eq!((eager, delay), (2, 1000));
    }
}
