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
mod drops;
mod maintain;
#[cfg(test)]
mod model;
mod recent;
mod report;
mod store;
#[cfg(test)]
mod tests;
mod tiers;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::MutexGuard;
use tokio::sync::Notify;
use tracing::error;

use backend::Backend;
use maintain::REOPEN_MIN;
use recent::Recent;
use store::{OpenError, Store};
use tiers::Inner;

pub use report::{BufferReport, depth_at, dir_size, inspect};

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
    /// Drops not yet logged, and when the last drop line was written ([`drops::DROP_LOG_EVERY`]).
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
            recent: Recent::default(),
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

    fn lock(&self) -> MutexGuard<'_, Inner<B>> {
        // parking_lot's mutex is not poisoned by a panic: the counters are then at worst
        // approximate, the entries themselves are in sled. Carry on.
        self.inner.lock()
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
