//! A summary line per test binary that counts cases: `SUITE: N passed, F failed, K skipped`,
//! printed when the binary exits, plus one line per skip reason.
//!
//! libtest counts test functions and counts a test that returned early as passed, so a suite
//! whose cases could not run here (no Landlock, say) would look green. Here a case is announced
//! with [`case`] on the test's thread; [`skip`] marks the latest announced case of this thread
//! as skipped, with its reason; a panic on a thread marks that thread's open cases as failed (a
//! panic hook). Passed cases are the announced ones that neither skipped nor failed.
//!
//! Limits: failures are counted per thread, so with `--test-threads=1` a failure may also count
//! earlier cases that ran on the same thread (it over-counts, never hides); libtest's own
//! result remains the authority on failure.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

static STARTED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static REASONS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
static INIT: Once = Once::new();

thread_local! {
    /// Cases announced on this thread and not yet skipped or failed.
    static OPEN: Cell<usize> = const { Cell::new(0) };
}

fn suite() -> String {
    let exe = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // cargo names test binaries NAME-HASH.
    match name.rsplit_once('-') {
        Some((suite, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => suite.to_string(),
        _ => name,
    }
}

extern "C" fn print_summary() {
    let started = STARTED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst);
    let skipped = SKIPPED.load(Ordering::SeqCst);
    let passed = started.saturating_sub(failed);
    let mut text = format!("{}: {passed} passed, {failed} failed, {skipped} skipped\n", suite());
    for (reason, n) in REASONS.lock().map(|r| r.clone()).unwrap_or_default() {
        text.push_str(&format!("  skipped {n}x: {reason}\n"));
    }
    // Straight to fd 2: libtest's output capture and stdio locks are not in play at exit.
    // SAFETY: writing a valid buffer to the process's stderr descriptor.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

fn init() {
    INIT.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let open = OPEN.with(|o| o.replace(0));
            FAILED.fetch_add(open, Ordering::SeqCst);
            previous(info);
        }));
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(print_summary) };
    });
}

/// A case starts on this thread.
pub fn case() {
    init();
    STARTED.fetch_add(1, Ordering::SeqCst);
    OPEN.with(|o| o.set(o.get() + 1));
}

/// The latest case announced on this thread could not run here (or a case without an
/// announcement, if none is open). Prints `SKIPPED: reason` on the real stderr.
pub fn skip(reason: &str) {
    init();
    let took = OPEN.with(|o| {
        let n = o.get();
        if n > 0 {
            o.set(n - 1);
        }
        n > 0
    });
    if took {
        STARTED.fetch_sub(1, Ordering::SeqCst);
    }
    SKIPPED.fetch_add(1, Ordering::SeqCst);
    *REASONS.lock().unwrap_or_else(|e| e.into_inner()).entry(reason.to_string()).or_default() += 1;
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}
