//! The log of readings dropped at the bound: one line a minute, not one per reading.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Outbox;
use super::backend::Backend;

/// At the bound every commit drops readings; one warn line per this long (with the count since
/// the last line and the running total) rather than one per reading.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

impl<B: Backend> Outbox<B> {
    /// Counts `n` more dropped readings for the log, and writes the line if one is due (or
    /// `now`, at a stop: the last line then has the final total).
    pub(super) fn log_drops(&self, n: u64, now: bool) {
        let mut log = self.drop_log.lock().unwrap_or_else(|p| p.into_inner());
        log.0 += n;
        let due = now || log.1.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY);
        if log.0 > 0 && due {
            warn!(
                dropped = log.0,
                total = self.dropped(),
                bound = self.max_messages.load(Ordering::Relaxed),
                "buffer full: dropped the oldest readings"
            );
            *log = (0, Some(Instant::now()));
        }
    }
}
