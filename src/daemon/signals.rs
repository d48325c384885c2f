//! Signals: blocked in every thread, taken with `sigwait` on one.

use nix::sys::signal::{SigSet, Signal};

/// The signals the daemon takes: the ones that end it, and SIGCHLD.
pub fn set() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGCHLD);
    s.add(Signal::SIGINT);
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGHUP);
    s
}

/// Blocks the daemon's signals in this thread and all threads it starts
/// later. Call before the first thread starts.
pub fn block() -> Result<(), String> {
    set().thread_block().map_err(|e| format!("cannot block signals: {e}"))
}

/// Waits for the next signal in the set, forever.
pub fn wait() -> Option<Signal> {
    set().wait().ok()
}
