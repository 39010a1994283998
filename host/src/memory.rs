//! Keeping the gateway's memory to what it uses: allocator settings made before `main`,
//! and handing back what a burst of work (compiling a plugin) freed.

/// Sets mimalloc's options through its environment variables, unless the operator set
/// them: no eager commit of whole arenas and no transparent huge pages (both turn a
/// small touched footprint into megabytes of RSS). Called from the binary's
/// `.init_array` entry, before `main` and before any allocation reads the options, so it
/// must not allocate.
pub extern "C" fn tune_allocator() {
    for (name, value) in [
        (c"MIMALLOC_ARENA_EAGER_COMMIT", c"0"),
        (c"MIMALLOC_ALLOW_THP", c"0"),
    ] {
        // SAFETY: static NUL-terminated strings; before main nothing else runs, so
        // nothing reads the environment concurrently. overwrite = 0 keeps the
        // operator's own setting.
        unsafe {
            libc::setenv(name.as_ptr(), value.as_ptr(), 0);
        }
    }
}

/// Returns the memory freed on this thread (and by finished threads) to the OS: called
/// after compiling a plugin, whose scratch allocations would otherwise stay resident.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own structures; with another global
    // allocator (the test binaries) it finds nothing to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
