//! Deadlines and polling: how long "soon" is, and waiting for a condition with a deadline.

use std::thread;
use std::time::{Duration, Instant};

/// Deadline for anything that should happen "soon" on a healthy machine. Generous on purpose:
/// a passing test returns as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The spec's shutdown grace (≤ 5 s) plus room for process start-up/tear-down on a slow box.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` every 25 ms until it holds; panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `f` every 25 ms until it returns `Some`; panics after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(POLL);
    }
}
