//! The durable outbox: every QoS 1 reading lives in a sled tree until its PUBACK arrives.
//!
//! Keys are our own big-endian `u64` sequence numbers, so sled's key order is FIFO order and
//! survives restarts. Two tiers keep the daemon useful when the disk is not:
//! - the **store** (sled, [`store`]), written in group commits: one `flush()` + `sync_data()`
//!   per batch;
//! - a small **memory tier** that holds readings while the store cannot be written (disk full,
//!   read-only, no store directory). They are published as usual and moved into the store once
//!   it can be reopened.
//!
//! The committer task is the only writer; the MQTT feeder reads and removes. Both go through
//! `Outbox`, whose mutex guards the counters and the memory tier. Only quick sled calls run
//! under it; flushes, fsyncs and reopening run outside it.

mod backend;
#[cfg(test)]
mod model;
mod store;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::MutexGuard;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use backend::Backend;
use store::{OpenError, Opened, Store};

/// How many readings the memory tier holds while the store is unwritable. Beyond it the oldest
/// are dropped (counted), so a long disk failure cannot exhaust RAM.
const MEMORY_LIMIT: usize = 10_000;
/// How long to wait before trying to reopen a store that failed, doubling up to the max.
const REOPEN_MIN: Duration = Duration::from_secs(2);
const REOPEN_MAX: Duration = Duration::from_secs(60);
/// At the bound every commit drops readings; one warn line per this long (with the count since
/// the last line and the running total) rather than one per reading.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);
/// At the bound, the oldest readings are popped from the store this many at a time, with the
/// lock let go in between: the feeder (acks), the status line and so the watchdog take that
/// lock on the runtime thread, and a reload that lowered `max_messages` under a backlog of
/// 500,000 held it for the whole cut (20 s here for 300,000, in a debug build).
const DROP_BATCH: u64 = 1000;
/// At most this many are popped per commit, so that one commit stays short and the committer
/// keeps beating (and readings keep flowing) while a big excess is cut: the rest goes with the
/// next commits.
const DROP_PER_COMMIT: u64 = 50_000;

/// One stored reading, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the reading was taken (ms since the epoch): the age of a backlog, `max_age`, and the
    /// `ts` user property on MQTT 5.
    pub taken_ms: u64,
    /// The payload is the bare value (`format = "plain"`), which carries no time of its own:
    /// on MQTT 5 the reading's time goes with it as a user property.
    pub plain: bool,
}

/// A record and its key: the sequence number that orders it.
pub type Entry = (u64, Record);

/// The stored-record codec, for the fuzz targets (`crate::fuzzing`).
#[cfg(fuzzing)]
pub(crate) mod codec {
    pub fn decode(key: &[u8], value: &[u8]) -> anyhow::Result<super::Entry> {
        super::store::decode(key, value)
    }

    pub fn encode(record: &super::Record) -> Vec<u8> {
        super::store::encode(record)
    }
}

struct Inner<B> {
    store: Option<B>,
    /// Readings in the store (exact: maintained on every insert and remove).
    stored: u64,
    /// Keys below this are durable in the store; readers never see newer, uncommitted ones.
    durable_end: u64,
    /// Readings waiting for the store to be writable again; keys above every stored key.
    memory: VecDeque<Entry>,
    next_seq: u64,
    reopen_at: Instant,
    reopen_delay: Duration,
}

/// The outbox over a store tier `B`: sled's [`Store`] in the daemon.
pub struct Outbox<B: Backend = Store> {
    /// Where the store is (re)opened from, and its path for the log.
    source: B::Source,
    path: PathBuf,
    max_messages: AtomicU64,
    /// parking_lot's, for [`MutexGuard::bump`]: a fair hand-over to whoever waits (std's
    /// mutex let the thread that just unlocked take it straight back, so the runtime thread
    /// waited seconds behind a long cut at the bound).
    inner: parking_lot::Mutex<Inner<B>>,
    dropped: AtomicU64,
    /// Drops not yet logged, and when the last drop line was written ([`DROP_LOG_EVERY`]).
    drop_log: Mutex<(u64, Option<Instant>)>,
    /// Bumped whenever keys a reader holds may no longer mean what they meant (the store
    /// failed or was reopened). Readers reread from the start, and removals made with an
    /// older generation are ignored: a duplicate is better than deleting the wrong reading.
    generation: AtomicU64,
    /// Woken when entries become readable.
    pub new_data: Notify,
}

impl Outbox {
    /// Opens the store at `path`. A damaged store is moved aside and replaced; one that cannot
    /// be opened for I/O reasons leaves the outbox in memory mode, retried later. Only a store
    /// locked by another process is an error: two daemons must not share one outbox.
    pub fn open(path: &Path, max_messages: u64) -> anyhow::Result<Outbox> {
        Outbox::open_from(path.to_owned(), path, max_messages)
    }
}

impl<B: Backend> Outbox<B> {
    /// [`Outbox::open`] for any store tier; `path` names it in the log.
    fn open_from(source: B::Source, path: &Path, max_messages: u64) -> anyhow::Result<Self> {
        let mut inner = Inner {
            store: None,
            stored: 0,
            durable_end: 0,
            memory: VecDeque::new(),
            next_seq: seq_floor(),
            reopen_at: Instant::now(),
            reopen_delay: REOPEN_MIN,
        };
        match B::open(&source) {
            Ok(opened) => inner.install(opened),
            Err(OpenError::Locked(e)) => {
                return Err(e).context(format!(
                    "the store {} is in use by another process (is telemetryd already running?)",
                    path.display()
                ));
            }
            Err(OpenError::Unusable(e)) => {
                error!(path = %path.display(), error = %format!("{e:#}"), "cannot open the store; readings are kept in memory until it can be written");
                inner.reopen_at = Instant::now() + inner.reopen_delay;
            }
        }
        Ok(Outbox {
            source,
            path: path.to_owned(),
            max_messages: AtomicU64::new(max_messages),
            inner: parking_lot::Mutex::new(inner),
            dropped: AtomicU64::new(0),
            drop_log: Mutex::new((0, None)),
            generation: AtomicU64::new(0),
            new_data: Notify::new(),
        })
    }

    /// Reserves the next sequence number. Every reading gets one, stored or not, so `seq` in
    /// payloads increases across the whole daemon and across restarts.
    pub fn next_seq(&self) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        seq
    }

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
        if let Some(store) = inner.store.clone() {
            match store.read(start, inner.durable_end, max, &mut out) {
                Ok(quarantined) => inner.stored -= quarantined,
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

    /// When the oldest waiting reading was taken (ms since the epoch).
    pub fn oldest_taken_ms(&self) -> Option<u64> {
        let inner = self.lock();
        let stored = inner.store.as_ref().and_then(|s| s.first().ok().flatten());
        stored
            .or_else(|| inner.memory.front().cloned())
            .map(|(_, r)| r.taken_ms)
    }

    /// A new bound, applied from the next commit on (a reload).
    pub fn set_max_messages(&self, max_messages: u64) {
        self.max_messages.store(max_messages, Ordering::Relaxed);
    }

    /// Readings waiting to be acknowledged (stored and in memory).
    pub fn depth(&self) -> u64 {
        let inner = self.lock();
        inner.stored + inner.memory.len() as u64
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True while readings can only be kept in memory.
    pub fn is_degraded(&self) -> bool {
        self.lock().store.is_none()
    }

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

    /// Saves the sequence counter and the count of readings (so the next open need not count
    /// them) and flushes, so a clean stop loses nothing. The last call on an outbox. Blocking.
    pub fn close(&self) {
        self.log_drops(0, true);
        let inner = self.lock();
        if !inner.memory.is_empty() {
            error!(lost = inner.memory.len(), path = %self.path.display(), "stopping with readings that could never be written to the store: they are lost");
        }
        let Some(store) = inner.store.clone() else {
            return;
        };
        let (next, stored) = (inner.next_seq, inner.stored);
        drop(inner);
        let saved = store
            .save_seq(next)
            .and_then(|()| store.save_count(stored, next))
            .and_then(|()| store.sync(next));
        if let Err(e) = saved {
            error!(error = %format!("{e:#}"), "could not flush the store on shutdown");
        }
    }

    /// Counts `n` more dropped readings for the log, and writes the line if one is due (or
    /// `now`, at a stop: the last line then has the final total).
    fn log_drops(&self, n: u64, now: bool) {
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

    /// Drops up to `n` of the store's oldest readings (the store holds the oldest); returns
    /// how many.
    fn drop_from_store(&self, inner: &mut Inner<B>, n: u64) -> u64 {
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
        inner.reopen_delay = REOPEN_MIN;
        inner.reopen_at = Instant::now() + inner.reopen_delay;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, Inner<B>> {
        // parking_lot's mutex is not poisoned by a panic: the counters are then at worst
        // approximate, the entries themselves are in sled. Carry on.
        self.inner.lock()
    }
}

impl<B> Inner<B> {
    fn install(&mut self, opened: Opened<B>) {
        self.stored = opened.stored;
        self.durable_end = opened.last + 1;
        self.next_seq = self.next_seq.max(opened.saved_seq).max(opened.last + 1);
        self.store = Some(opened.store);
    }
}

/// Where sequence numbers start: the clock in microseconds. Readings are far rarer than one
/// per microsecond, so this is above every number a previous run handed out even when the
/// store that remembered it is gone (damaged, unavailable, or a QoS 0-only daemon that crashed).
fn seq_floor() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// What `telemetryd buffer` shows.
#[derive(Debug)]
pub struct BufferReport {
    pub depth: u64,
    /// The oldest reading: its key and record.
    pub oldest: Option<Entry>,
    pub quarantined: usize,
    pub bytes_on_disk: u64,
}

/// Looks at the store at `path` without changing it. Fails plainly when a daemon holds it.
pub fn inspect(path: &Path) -> anyhow::Result<BufferReport> {
    if !path.exists() {
        anyhow::bail!(
            "there is no buffer at {} yet: the daemon has not run with this config",
            path.display()
        );
    }
    let opened = match store::open(path) {
        Ok(opened) => opened,
        Err(e) if format!("{e:#}").contains("could not acquire lock") => anyhow::bail!(
            "the buffer at {} is in use by the running daemon; `systemctl status telemetryd` shows its depth, or stop the daemon to inspect it",
            path.display()
        ),
        Err(e) => return Err(e.context(format!("cannot open the buffer at {}", path.display()))),
    };
    Ok(BufferReport {
        depth: opened.stored,
        oldest: opened.store.first()?,
        quarantined: opened.store.quarantined()?,
        bytes_on_disk: dir_size(path),
    })
}

/// Bytes of the files under `path` (their lengths, as `ls` shows them): the store's size on
/// disk for `telemetryd buffer` and the benchmarks.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Counts the readings in the store at `path` (for tools and tests; not while a daemon holds it).
pub fn depth_at(path: &Path) -> anyhow::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    Ok(store::open(path)?.stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            topic: "t".into(),
            payload: n.to_string().into_bytes(),
            retain: false,
            taken_ms: n / 1000, // keys are near the clock in µs
            plain: true,
        }
    }

    fn commit_n(outbox: &Outbox, n: usize) -> Vec<u64> {
        let batch: Vec<Entry> = (0..n)
            .map(|_| outbox.next_seq())
            .map(|k| (k, record(k)))
            .collect();
        let keys = batch.iter().map(|(k, _)| *k).collect();
        outbox.commit(batch);
        keys
    }

    fn keys(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn keeps_fifo_order_and_sequence_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let mut written = commit_n(&outbox, 3);
        written.extend(commit_n(&outbox, 2));
        assert_eq!(keys(&outbox.read_after(None, 100)), written);
        assert_eq!(keys(&outbox.read_after(Some(written[1]), 2)), written[2..4]);
        drop(outbox);

        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 5);
        let read = outbox.read_after(None, 100);
        assert_eq!(keys(&read), written);
        assert_eq!(read[4].1, record(written[4]));
        assert!(outbox.next_seq() > *written.last().unwrap());
    }

    #[test]
    fn removes_acked_entries_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 4);
        outbox.remove(&[k[2], k[0], k[0]], outbox.generation()); // out of order, and a duplicate ack
        assert_eq!(outbox.depth(), 2);
        assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[1], k[3]]);
        outbox.close();
        drop(outbox);
        assert_eq!(depth_at(&path).unwrap(), 2);
    }

    #[test]
    fn refused_readings_move_to_quarantine_with_their_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 3);
        let json = Record {
            plain: false,
            retain: true,
            ..record(7)
        };
        let key = outbox.next_seq();
        outbox.commit(vec![(key, json.clone())]);
        assert_eq!(outbox.read_after(Some(k[2]), 1), vec![(key, json)]);
        assert_eq!(outbox.read_after(None, 1)[0].1, record(k[0]));

        assert_eq!(outbox.quarantine(&[k[1]], outbox.generation() + 1), 0);
        assert_eq!(outbox.depth(), 4, "a stale generation moves nothing");
        assert_eq!(outbox.quarantine(&[k[1], k[1]], outbox.generation()), 1);
        assert_eq!(outbox.depth(), 3);
        assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[0], k[2], key]);
        outbox.close();
        drop(outbox);
        let report = inspect(&path).unwrap();
        assert_eq!((report.depth, report.quarantined), (3, 1));
    }

    #[test]
    fn a_clean_close_saves_the_count_and_the_next_open_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 5);
        outbox.remove(&k[..2], outbox.generation());
        outbox.close();
        drop(outbox);
        let opened = store::open(&path).unwrap();
        assert!(opened.from_close, "a clean close saves the count");
        assert_eq!(opened.stored, 3);
        drop(opened);

        // The daemon's open forgets it before anything changes: after a crash (no close),
        // the next open counts the keys.
        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 3);
        // A middle key: the first and last stay, so only forgetting the count (not the check
        // of the store's ends) keeps the next open from trusting it.
        outbox.remove(&k[3..4], outbox.generation());
        drop(outbox);
        let opened = store::open(&path).unwrap();
        assert!(!opened.from_close);
        assert_eq!(opened.stored, 2);
    }

    /// An older telemetryd that ran on the store in between knows nothing of the saved count,
    /// but it changes the store's state: the count is not trusted then.
    #[test]
    fn a_saved_count_is_ignored_once_the_store_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 4);
        outbox.close();
        drop(outbox);
        let opened = store::open(&path).unwrap();
        assert!(opened.from_close);
        opened.store.remove(k[0]).unwrap();
        opened.store.save_seq(opened.saved_seq + 10).unwrap();
        opened.store.sync(opened.saved_seq + 10).unwrap();
        drop(opened);
        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 3);
    }

    #[test]
    fn sequence_keeps_rising_after_the_store_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 3);
        outbox.remove(&k, outbox.generation());
        let qos0_seq = outbox.next_seq(); // a reading that was never stored
        outbox.close();
        drop(outbox);
        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 0);
        assert!(outbox.next_seq() > qos0_seq);
    }

    #[test]
    fn drops_exactly_the_oldest_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 5).unwrap();
        let mut k = commit_n(&outbox, 4);
        k.extend(commit_n(&outbox, 4));
        assert_eq!(outbox.depth(), 5);
        assert_eq!(outbox.dropped(), 3);
        assert_eq!(keys(&outbox.read_after(None, 100)), k[3..]);
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        commit_n(&outbox, 10);
        drop(outbox);
        let garbage: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(path.join("db"), &garbage).unwrap();
        std::fs::write(path.join("conf"), &garbage[..512]).unwrap();

        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 0);
        assert!(!outbox.is_degraded());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("buf.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let k = commit_n(&outbox, 2);
        assert_eq!(keys(&outbox.read_after(None, 10)), k);
    }

    /// sled can open a damaged log without an error and without its last commits; the durable
    /// mark beside it shows that. The store is moved aside, what survived is carried into a
    /// new one, and sequence numbers go on above the mark.
    #[test]
    fn a_store_below_its_durable_mark_is_moved_aside_with_its_survivors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 5);
        outbox.close();
        drop(outbox);
        // A clean reopen is not flagged.
        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 5);
        outbox.close();
        drop(outbox);
        let mark = raise_the_mark(&path);

        let outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.depth(), 5);
        assert_eq!(keys(&outbox.read_after(None, 10)), k);
        assert!(outbox.next_seq() >= mark);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("buf.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
        // The new store is sound: it reopens without being flagged again.
        commit_n(&outbox, 1);
        outbox.close();
        drop(outbox);
        assert_eq!(Outbox::open(&path, 100).unwrap().depth(), 6);
    }

    /// Makes the store at `path` look as if sled had lost the commits that brought its
    /// counter from what it saved up to `saved + 1000`; returns that durable mark.
    fn raise_the_mark(path: &Path) -> u64 {
        let saved = store::open(path).unwrap().saved_seq;
        let mark = saved + 1000;
        let mut bytes = mark.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(mark ^ 0x7465_6c65_6d65_7472).to_be_bytes());
        std::fs::write(path.join("telemetryd-durable-mark"), bytes).unwrap();
        mark
    }

    /// Names in `dir` beside the store `buf`: its `.damaged-*` and `.recovering*` ones.
    fn beside(dir: &Path) -> (usize, Vec<String>) {
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let damaged = names
            .iter()
            .filter(|n| n.starts_with("buf.damaged-"))
            .count();
        let recovering = names
            .into_iter()
            .filter(|n| n.starts_with("buf.recovering"))
            .collect();
        (damaged, recovering)
    }

    /// A stop or a power cut at each step of carrying a damaged store's survivors over: the
    /// next start finishes the recovery (its copy was complete and durable) or redoes it (it
    /// was not), and never accepts a partial copy: every survivor is there, exactly once, in
    /// order, sequence numbers go on above the mark, one damaged store is kept aside, no
    /// staging is left, and the result opens clean. The store holds more than one copy batch
    /// (10,000), so the crash while copying leaves a partial copy behind.
    #[test]
    fn a_recovery_interrupted_at_any_step_is_finished_or_redone() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template");
        let outbox = Outbox::open(&template, 100_000).unwrap();
        let mut k = commit_n(&outbox, 10_000);
        k.extend(commit_n(&outbox, 50));
        outbox.close();
        drop(outbox);
        for step in ["copying", "copied", "marked done", "moved aside", "renamed"] {
            let run = dir.path().join(step.replace(' ', "-"));
            std::fs::create_dir(&run).unwrap();
            let path = run.join("buf");
            copy_tree(&template, &path);
            let mark = raise_the_mark(&path);

            store::test_faults::crash_at(step);
            let crashed = Outbox::open(&path, 100_000).unwrap();
            assert!(
                crashed.is_degraded(),
                "{step}: the simulated crash happened"
            );
            drop(crashed);

            let outbox = Outbox::open(&path, 100_000).unwrap();
            assert!(!outbox.is_degraded(), "{step}");
            assert_eq!(outbox.depth(), k.len() as u64, "{step}");
            assert_eq!(keys(&outbox.read_after(None, 20_000)), k, "{step}");
            assert!(outbox.next_seq() >= mark, "{step}");
            assert_eq!(beside(&run), (1, vec![]), "{step}");
            outbox.close();
            drop(outbox);
            // Sound: it is not flagged again, and the damaged store is kept whole.
            let outbox = Outbox::open(&path, 100_000).unwrap();
            assert_eq!(outbox.depth(), k.len() as u64, "{step}");
            assert_eq!(beside(&run).0, 1, "{step}");
        }
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// The directory fsyncs a power cut needs: a new store's directory and its parent, the
    /// store's directory again once the durable mark's file exists, the parent after a
    /// damaged store is moved aside (before the new one is made). A reopen syncs nothing
    /// (an SD card wears).
    #[test]
    fn new_names_are_made_durable_with_directory_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        store::test_faults::take_dir_syncs();
        let outbox = Outbox::open(&path, 100).unwrap();
        let synced = store::test_faults::take_dir_syncs();
        let at = |p: &Path| synced.iter().filter(|s| *s == p).count();
        assert_eq!(at(dir.path()), 1, "the new store's entry: {synced:?}");
        assert_eq!(
            at(&path),
            2,
            "the store's files, then the mark's: {synced:?}"
        );
        commit_n(&outbox, 3);
        outbox.close();
        drop(outbox);
        drop(Outbox::open(&path, 100).unwrap());
        assert_eq!(store::test_faults::take_dir_syncs(), Vec::<PathBuf>::new());

        std::fs::write(path.join("db"), vec![0x5a; 64 * 1024]).unwrap();
        std::fs::write(path.join("conf"), vec![0x5a; 512]).unwrap();
        let outbox = Outbox::open(&path, 100).unwrap();
        assert!(!outbox.is_degraded());
        let synced = store::test_faults::take_dir_syncs();
        assert_eq!(
            synced.first().map(PathBuf::as_path),
            Some(dir.path()),
            "the move aside is durable before the new store is made: {synced:?}"
        );
        assert!(
            synced.iter().filter(|s| *s == dir.path()).count() >= 2,
            "{synced:?}"
        );
    }

    #[test]
    fn an_unwritable_store_keeps_readings_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        // A directory cannot be created below a regular file.
        let path = dir.path().join("file").join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        assert!(outbox.is_degraded());
        let k = commit_n(&outbox, 3);
        assert_eq!(keys(&outbox.read_after(None, 10)), k);
        outbox.remove(&k[..1], outbox.generation());
        assert_eq!(outbox.depth(), 2);
        assert!(!dir.path().join("file.damaged").exists());
    }

    #[test]
    fn memory_readings_move_into_the_store_once_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("state");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 3);
        let generation = outbox.generation();

        std::fs::remove_file(&blocker).unwrap();
        outbox.lock().reopen_at = Instant::now();
        outbox.maintain();
        assert!(!outbox.is_degraded());
        assert!(outbox.generation() > generation);
        assert_eq!(keys(&outbox.read_after(None, 10)), k);
        outbox.close();
        drop(outbox);
        assert_eq!(depth_at(&path).unwrap(), 3);
    }

    /// A store that cannot be opened at start, holding a backlog keyed above the clock (as if
    /// the clock went back): the readings taken meanwhile must neither overwrite it nor jump
    /// ahead of it.
    #[test]
    fn a_store_unavailable_at_start_never_overwrites_its_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let future = seq_floor() + 1_000_000_000;
        let outbox = Outbox::open(&path, 100).unwrap();
        let old: Vec<u64> = (future..future + 5).collect();
        outbox.commit(old.iter().map(|&k| (k, record(k))).collect());
        outbox.close();
        drop(outbox);

        let hidden = dir.path().join("hidden");
        std::fs::rename(&path, &hidden).unwrap();
        std::fs::write(&path, b"not a directory").unwrap();
        let outbox = Outbox::open(&path, 100).unwrap();
        assert!(outbox.is_degraded());
        commit_n(&outbox, 3);
        let generation = outbox.generation();

        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&hidden, &path).unwrap();
        outbox.lock().reopen_at = Instant::now();
        outbox.maintain();
        assert!(!outbox.is_degraded());
        assert!(outbox.generation() > generation);
        let read = outbox.read_after(None, 100);
        assert_eq!(
            keys(&read)[..5],
            old[..],
            "the backlog comes first, untouched"
        );
        assert_eq!(read.len(), 8);
        assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(outbox.depth(), 8);
        outbox.close();
        drop(outbox);
        assert_eq!(depth_at(&path).unwrap(), 8);
    }

    #[tokio::test]
    async fn reopening_the_store_wakes_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("state");
        std::fs::write(&blocker, b"").unwrap();
        let outbox = Outbox::open(&blocker.join("buf"), 100).unwrap();
        std::fs::remove_file(&blocker).unwrap();
        outbox.lock().reopen_at = Instant::now();
        outbox.maintain();
        assert!(!outbox.is_degraded());
        let woken = tokio::time::timeout(Duration::from_secs(5), outbox.new_data.notified()).await;
        assert!(woken.is_ok(), "a reopened store must wake the feeder");
    }

    #[test]
    fn an_undecodable_record_is_quarantined_not_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
        let k = commit_n(&outbox, 4);
        let store = outbox.lock().store.clone().unwrap();
        store.corrupt(k[1]);
        assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[0], k[2], k[3]]);
        assert_eq!(outbox.depth(), 3);
        assert_eq!(store.quarantined().unwrap(), 1);
        assert!(!outbox.is_degraded());
    }

    /// sled panics on some damaged or failing stores, and not only in `open`. A panic in
    /// any call (insert, flush, remove, iteration) must take the store-failed path: the
    /// readings stay readable (memory tier or the store once reopened), nothing is lost, and
    /// the caller (the committer or the feeder) goes on.
    #[test]
    fn a_sled_panic_outside_open_fails_the_store_and_loses_nothing() {
        for what in ["insert", "flush", "remove", "iter"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("buf");
            let outbox = Outbox::open(&path, 100).unwrap();
            let mut k = commit_n(&outbox, 3);
            let generation = outbox.generation();
            store::test_faults::panic_next(what);
            match what {
                "insert" | "flush" => k.extend(commit_n(&outbox, 2)),
                "remove" => outbox.remove(&k[..1], generation),
                _ => {
                    outbox.read_after(None, 10);
                }
            }
            assert!(outbox.is_degraded(), "{what}: the store is given up");
            assert!(outbox.generation() > generation, "{what}");
            outbox.lock().reopen_at = Instant::now();
            outbox.maintain();
            assert!(!outbox.is_degraded(), "{what}: reopened");
            assert_eq!(keys(&outbox.read_after(None, 10)), k, "{what}");
            assert_eq!(outbox.depth(), k.len() as u64, "{what}");
            outbox.close();
            drop(outbox);
            assert_eq!(depth_at(&path).unwrap(), k.len() as u64, "{what}");
        }
    }

    /// Stored records are outside input: whatever decodes must be publishable (a time RFC
    /// 3339 can write, a topic a client and a broker accept, a size rumqttc sends); anything
    /// else is quarantined, never a panic and never a record that stalls the feeder.
    #[test]
    fn records_that_cannot_be_published_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
        let good = |n: u64| record(n);
        let bad = [
            Record {
                taken_ms: u64::MAX,
                ..good(1)
            },
            Record {
                taken_ms: crate::mqtt::properties::LAST_TS_MS + 1,
                ..good(1)
            },
            Record {
                topic: String::new(),
                ..good(1)
            },
            Record {
                topic: "a/#".into(),
                ..good(1)
            },
            Record {
                topic: "a/+/b".into(),
                ..good(1)
            },
            Record {
                topic: "a\0b".into(),
                ..good(1)
            },
            Record {
                payload: vec![b'x'; 10 * 1024],
                ..good(1)
            },
        ];
        let edge = Record {
            taken_ms: crate::mqtt::properties::LAST_TS_MS,
            payload: vec![b'x'; 10 * 1024 - 9 - 1],
            ..good(2)
        };
        let mut batch: Vec<Entry> = bad.iter().map(|r| (outbox.next_seq(), r.clone())).collect();
        let edge_key = outbox.next_seq();
        batch.push((edge_key, edge.clone()));
        outbox.commit(batch);
        let read = outbox.read_after(None, 100);
        assert_eq!(read, vec![(edge_key, edge)]);
        assert_eq!(outbox.depth(), 1);
        let store = outbox.lock().store.clone().unwrap();
        assert_eq!(store.quarantined().unwrap(), bad.len());
        // And what did decode goes out without a panic.
        for (_, r) in read {
            let stamp = crate::mqtt::properties::Stamp {
                taken_ms: r.taken_ms,
                plain: r.plain,
                retain: r.retain,
                stale_after_s: Some(u64::MAX),
            };
            let _ = crate::mqtt::properties::fate(stamp, None, true, 0);
        }
    }

    /// A bound lowered far under the backlog: each commit cuts at most DROP_PER_COMMIT (one
    /// commit stays short), the next commits cut the rest, and the counts stay exact.
    #[test]
    fn a_big_excess_is_cut_over_several_commits_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 1_000_000).unwrap();
        let backlog = DROP_PER_COMMIT + 10_000;
        let mut k = Vec::new();
        while (k.len() as u64) < backlog {
            k.extend(commit_n(&outbox, 10_000));
        }
        assert_eq!(k.len() as u64, backlog);
        outbox.set_max_messages(10);
        k.extend(commit_n(&outbox, 1));
        assert_eq!(outbox.dropped(), DROP_PER_COMMIT);
        assert_eq!(outbox.depth(), backlog + 1 - DROP_PER_COMMIT);
        k.extend(commit_n(&outbox, 1));
        assert_eq!(outbox.depth(), 10);
        assert_eq!(outbox.dropped(), backlog + 2 - 10);
        assert_eq!(keys(&outbox.read_after(None, 100)), k[k.len() - 10..]);
    }

    #[test]
    fn a_batch_larger_than_the_bound_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 3).unwrap();
        let k = commit_n(&outbox, 5);
        assert_eq!(keys(&outbox.read_after(None, 10)), k[2..]);
        assert_eq!((outbox.depth(), outbox.dropped()), (3, 2));
    }

    #[test]
    fn acks_from_an_older_generation_delete_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
        let k = commit_n(&outbox, 2);
        let stale = outbox.generation();
        outbox.generation.fetch_add(1, Ordering::AcqRel);
        outbox.remove(&k, stale);
        assert_eq!(outbox.depth(), 2);
    }

    #[test]
    fn a_store_in_use_is_an_error_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let _held = Outbox::open(&path, 100).unwrap();
        let err = Outbox::open(&path, 100)
            .err()
            .expect("a second open must fail");
        assert!(
            format!("{err:#}").contains("in use by another process"),
            "{err:#}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing moved aside"
        );
    }
}
