//! The two tiers and every move between them: commit (with the drops at the bound), read,
//! take out (acks, quarantine), giving the store up when a call fails, installing a new one.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;
use tracing::{debug, error};

use super::backend::Backend;
use super::maintain::REOPEN_MIN;
use super::recent::Recent;
use super::store::Opened;
use super::{Entry, Outbox};

/// How many readings the memory tier holds while the store is unwritable. Beyond it the oldest
/// are dropped (counted), so a long disk failure cannot exhaust RAM.
const MEMORY_LIMIT: usize = 10_000;
/// At the bound, the oldest readings are popped from the store this many at a time, with the
/// lock let go in between: the feeder (acks), the status line and so the watchdog take that
/// lock on the runtime thread, and a reload that lowered `max_messages` under a backlog of
/// 500,000 held it for the whole cut (20 s here for 300,000, in a debug build).
const DROP_BATCH: u64 = 1000;
/// At most this many are popped per commit, so that one commit stays short and the committer
/// keeps beating (and readings keep flowing) while a big excess is cut: the rest goes with the
/// next commits.
pub(super) const DROP_PER_COMMIT: u64 = 50_000;

/// The two tiers' state, under the outbox's mutex.
pub(super) struct Inner<B> {
    pub(super) store: Option<B>,
    /// Readings in the store (exact: maintained on every insert and remove).
    pub(super) stored: u64,
    /// Keys below this are durable in the store; readers never see newer, uncommitted ones.
    pub(super) durable_end: u64,
    /// Readings waiting for the store to be writable again; keys above every stored key.
    pub(super) memory: VecDeque<Entry>,
    /// A copy of the store's newest readings, which reads from the end of the queue (the
    /// feeder's, in steady state) are answered from.
    pub(super) recent: Recent,
    pub(super) next_seq: u64,
    pub(super) reopen_at: Instant,
    pub(super) reopen_delay: Duration,
}

impl<B: Backend> Outbox<B> {
    /// Commits a batch (keys from [`Outbox::next_seq`], ascending) with one flush + fsync,
    /// together with whatever the memory tier holds if the store is writable (an empty batch
    /// does just that). At the bound the oldest readings are dropped. Blocking.
    pub fn commit(&self, batch: Vec<Entry>) {
        let mut inner = self.lock();
        if batch.is_empty() && inner.memory.is_empty() {
            return;
        }
        // The store's oldest first, in batches; the new batch is kept out of `memory` until
        // then, since readers see the memory tier and it is not durable yet.
        let mut dropped = 0;
        while dropped < DROP_PER_COMMIT {
            let bound = self.max_messages.load(Ordering::Relaxed);
            let total = inner.stored + (inner.memory.len() + batch.len()) as u64;
            let n = total
                .saturating_sub(bound)
                .min(inner.stored)
                .min(DROP_BATCH)
                .min(DROP_PER_COMMIT - dropped);
            if n == 0 {
                break;
            }
            let popped = self.drop_from_store(&mut inner, n);
            dropped += popped;
            if popped < n {
                break; // the store failed, or holds fewer than counted
            }
            // Let whoever waits (the feeder, the status line) have the lock between batches.
            MutexGuard::bump(&mut inner);
        }
        // Readings from the memory tier may be on disk already (written before a flush
        // failed): they must not be counted twice.
        let recovering = !inner.memory.is_empty();
        inner.memory.extend(batch);
        // What is still over the bound and not in the store: the oldest of the memory tier
        // (and of the batch). Quick: no sled call.
        if inner.stored == 0 || dropped < DROP_PER_COMMIT {
            let bound = self.max_messages.load(Ordering::Relaxed);
            let over = (inner.stored + inner.memory.len() as u64).saturating_sub(bound);
            let from_memory = (over as usize).min(inner.memory.len());
            inner.memory.drain(..from_memory);
            dropped += from_memory as u64;
        }
        match inner.store.clone() {
            Some(store) => {
                let pending: Vec<Entry> = inner.memory.drain(..).collect();
                let saved_seq = inner.next_seq;
                let generation = self.generation();
                let written = store.write(&pending, saved_seq, recovering).map(|fresh| {
                    inner.stored += fresh;
                });
                let synced = written.and_then(|()| {
                    drop(inner);
                    store.sync(saved_seq)
                });
                let mut inner = self.lock();
                match synced {
                    Ok(()) => {
                        let end = pending.last().map_or(0, |(k, _)| k + 1);
                        inner.durable_end = inner.durable_end.max(end);
                        if generation == self.generation() {
                            inner.recent.committed(pending);
                        } else {
                            // The store failed meanwhile (a read or a remove on the feeder's
                            // side): what it holds is for the next open to say.
                            let end = inner.durable_end;
                            inner.recent.reset(end);
                        }
                    }
                    Err(e) => {
                        // The batch may or may not be on disk: keep it in memory too. A copy
                        // that did reach the disk costs a duplicate, never a loss.
                        self.fail_store(&mut inner, &e);
                        let newer = std::mem::take(&mut inner.memory);
                        inner.memory = pending.into();
                        inner.memory.extend(newer);
                    }
                }
            }
            None => {
                let over = inner.memory.len().saturating_sub(MEMORY_LIMIT);
                inner.memory.drain(..over);
                dropped += over as u64;
            }
        }
        // Also with none dropped now: the drops held back since the last line are due once
        // DROP_LOG_EVERY has passed.
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.log_drops(dropped, false);
        self.new_data.notify_one();
    }

    /// Up to `max` readable entries with keys above `after`, in key order.
    pub fn read_after(&self, after: Option<u64>, max: usize) -> Vec<Entry> {
        let start = after.map_or(0, |k| k + 1);
        let mut inner = self.lock();
        let mut out = Vec::new();
        if inner.store.is_some() && inner.recent.covers(start) {
            inner.recent.read(start, max, &mut out);
        } else if let Some(store) = inner.store.clone() {
            match store.read(start, inner.durable_end, max, &mut out) {
                Ok(0) => {}
                Ok(quarantined) => {
                    inner.stored -= quarantined;
                    // Moved aside on the way (undecodable on disk): the copy may hold one.
                    let end = inner.durable_end;
                    inner.recent.reset(end);
                }
                Err(e) => {
                    self.fail_store(&mut inner, &e);
                    return out;
                }
            }
        }
        let first = inner.memory.partition_point(|(k, _)| *k < start);
        let room = max - out.len();
        out.extend(inner.memory.range(first..).take(room).cloned());
        out
    }

    /// Forgets acknowledged readings, unless `generation` (when they were read) is stale.
    pub fn remove(&self, keys: &[u64], generation: u64) {
        if self.take(keys, generation, true, B::remove).is_none() {
            debug!(
                count = keys.len(),
                "acks from before the store was reopened: those readings will be sent again"
            );
        }
    }

    /// Moves readings the broker refused for good out of the queue, into the store's quarantine
    /// tree (shown by `telemetryd buffer`), unless `generation` is stale. Readings held in the
    /// memory tier (the store cannot be written) stay where they are and are sent again later.
    /// Returns how many were moved.
    pub fn quarantine(&self, keys: &[u64], generation: u64) -> u64 {
        self.take(keys, generation, false, B::quarantine)
            .unwrap_or(0)
    }

    /// Takes `keys` out of the queue with `op` on the store (true: the key was there), keeping
    /// the count exact; with `from_memory`, keys in the memory tier are dropped from it too.
    /// `None` when `generation` is stale (nothing done), else how many store keys `op` took.
    fn take(
        &self,
        keys: &[u64],
        generation: u64,
        from_memory: bool,
        op: impl Fn(&B, u64) -> anyhow::Result<bool>,
    ) -> Option<u64> {
        let mut inner = self.lock();
        if generation != self.generation() {
            return None;
        }
        // One handle for the whole batch: cloning it per key (five reference counts up and
        // down) was 1% of a backlog drain's instructions (BENCHMARKS.md).
        let store = inner.store.clone();
        let mut taken = 0;
        for &key in keys {
            if from_memory && let Ok(i) = inner.memory.binary_search_by_key(&key, |(k, _)| *k) {
                inner.memory.remove(i);
                continue;
            }
            let Some(store) = &store else {
                continue;
            };
            match op(store, key) {
                Ok(true) => {
                    inner.stored -= 1;
                    inner.recent.forget(key);
                    taken += 1;
                }
                Ok(false) => {} // in the memory tier, or dropped at the bound
                Err(e) => {
                    self.fail_store(&mut inner, &e);
                    break;
                }
            }
        }
        Some(taken)
    }

    /// Drops up to `n` of the store's oldest readings (the store holds the oldest); returns
    /// how many.
    fn drop_from_store(&self, inner: &mut Inner<B>, n: u64) -> u64 {
        // The store's oldest may be in the copy (a short queue at a low bound): start it over.
        let end = inner.durable_end;
        inner.recent.reset(end);
        let mut from_store = 0;
        if let Some(store) = inner.store.clone() {
            while from_store < n && inner.stored > 0 {
                match store.pop_oldest() {
                    Ok(true) => {
                        inner.stored -= 1;
                        from_store += 1;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.fail_store(inner, &e);
                        break;
                    }
                }
            }
        }
        from_store
    }

    fn fail_store(&self, inner: &mut Inner<B>, e: &anyhow::Error) {
        let Some(store) = inner.store.take() else {
            return;
        };
        error!(path = %self.path.display(), error = %format!("{e:#}"), "the store cannot be written; keeping new readings in memory and retrying");
        // sled flushes and joins its flusher thread when the last handle goes: on a failing
        // disk that can take a while, and this may be the runtime thread.
        std::thread::spawn(move || drop(store));
        inner.stored = 0;
        inner.durable_end = 0;
        inner.recent.reset(0);
        inner.reopen_delay = REOPEN_MIN;
        inner.reopen_at = Instant::now() + inner.reopen_delay;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl<B> Inner<B> {
    pub(super) fn install(&mut self, opened: Opened<B>) {
        self.stored = opened.stored;
        self.durable_end = opened.last + 1;
        self.recent.reset(self.durable_end);
        self.next_seq = self.next_seq.max(opened.saved_seq).max(opened.last + 1);
        self.store = Some(opened.store);
    }
}
