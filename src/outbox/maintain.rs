//! Reopening a store that failed or could not be opened, with a backoff, and carrying the
//! memory tier into it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Outbox;
use super::backend::Backend;
use super::store::OpenError;

/// How long to wait before trying to reopen a store that failed, doubling up to the max.
pub(super) const REOPEN_MIN: Duration = Duration::from_secs(2);
const REOPEN_MAX: Duration = Duration::from_secs(60);

impl<B: Backend> Outbox<B> {
    /// Retries a failed store when its time has come; cheap otherwise. Blocking.
    pub fn maintain(&self) {
        {
            let inner = self.lock();
            if inner.store.is_some() || Instant::now() < inner.reopen_at {
                return;
            }
        }
        // Opening counts every key (seconds on a big store on a Pi): not under the lock, which
        // the feeder takes on the runtime thread.
        let opened = B::open(&self.source);
        let mut inner = self.lock();
        match opened {
            Ok(opened) => {
                let last = opened.last;
                let store = opened.store.clone();
                inner.install(opened);
                // A batch whose flush failed (or panicked) is kept in memory, but sled may
                // still have written it (when its handle was dropped): those are the same
                // readings, already in the store. Renumbering them below would send them
                // twice and count them twice.
                let before = inner.memory.len();
                inner
                    .memory
                    .retain(|(k, r)| *k > last || !store.holds(*k, r).unwrap_or(false));
                let on_disk = before - inner.memory.len();
                if on_disk > 0 {
                    debug!(
                        count = on_disk,
                        "readings kept in memory were in the store already"
                    );
                }
                // Readings taken while the store was away must sort after it and must not
                // overwrite it. The sequence starts above the clock in microseconds, so this
                // only happens if the clock went back; renumber them then.
                if inner.memory.front().is_some_and(|(k, _)| *k <= last) {
                    let mut next = inner.next_seq;
                    for (k, _) in inner.memory.iter_mut() {
                        *k = next;
                        next += 1;
                    }
                    inner.next_seq = next;
                    warn!(
                        count = inner.memory.len(),
                        "renumbered readings taken while the store was unavailable"
                    );
                }
                self.generation.fetch_add(1, Ordering::AcqRel);
                info!(path = %self.path.display(), stored = inner.stored, in_memory = inner.memory.len(), "the store is writable again");
                drop(inner);
                self.commit(Vec::new());
                self.new_data.notify_one();
            }
            Err(OpenError::Locked(e) | OpenError::Unusable(e)) => {
                inner.reopen_delay = (inner.reopen_delay * 2).min(REOPEN_MAX);
                inner.reopen_at = Instant::now() + inner.reopen_delay;
                debug!(error = %format!("{e:#}"), retry_in = ?inner.reopen_delay, "store still unavailable");
            }
        }
    }
}
