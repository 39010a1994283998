//! The worker thread the current code runs on (each worker is one single-threaded
//! event loop, as nginx's workers), for per-worker state: connection pools, the cached
//! Date header.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many workers serve connections (per-worker state is sized by it).
static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// The Date header value and the second it was made for.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

/// This thread's worker index (0 outside workers).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Workers serving connections.
pub fn count() -> usize {
    COUNT.load(std::sync::atomic::Ordering::Relaxed)
}

/// The workers `server.workers` asks for: 0 means one per available core.
pub fn resolve(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Sets the number of workers (at startup, before pools are made).
pub fn set_count(count: usize) {
    COUNT.store(count.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Marks this thread as worker `index`.
pub fn set_index(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The HTTP Date of this second (`Tue, 01 Dec 2026 16:00:00 GMT`), formatted once per
/// second per worker.
pub fn http_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let bytes = text.as_bytes();
            if bytes.len() == 29 {
                cached.1.copy_from_slice(bytes);
                cached.0 = secs;
            }
        }
        f(&cached.1);
    });
}
