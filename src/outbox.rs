//! The durable outbox: every QoS 1 reading lives in a sled tree until its PUBACK arrives.
//!
//! Keys are our own big-endian `u64` sequence numbers, so sled's key order is FIFO order and
//! survives restarts. Two tiers keep the daemon useful when the disk is not:
//! - the **store** (sled), written in group commits: one `flush()` + `sync_data()` per batch;
//! - a small **memory tier** that holds readings while the store cannot be written (disk full,
//!   read-only, no store directory). They are published as usual and moved into the store once
//!   it can be reopened.
//!
//! The committer task is the only writer; the MQTT feeder reads and removes. Both go through
//! `Outbox`, whose mutex guards the counters and the memory tier; sled calls made under it are
//! in-memory operations, while the slow `flush`/`sync_data` run outside it.

use std::collections::VecDeque;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// sled's page cache. Its default is 1 GiB; a Pi has far less, and the outbox is a queue
/// whose hot part (both ends) is small.
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;
/// How many readings the memory tier holds while the store is unwritable. Beyond it the oldest
/// are dropped (counted), so a long disk failure cannot exhaust RAM.
const MEMORY_LIMIT: usize = 10_000;
/// How long to wait before trying to reopen a store that failed, doubling up to the max.
const REOPEN_MIN: Duration = Duration::from_secs(2);
const REOPEN_MAX: Duration = Duration::from_secs(60);

const DATA_TREE: &[u8] = b"outbox";
const META_TREE: &[u8] = b"meta";
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
const RECORD_VERSION: u8 = 1;

/// One stored reading, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the reading was taken; kept so the age of a backlog can be reported.
    pub taken_ms: u64,
}

/// A record and its key: the sequence number that orders it.
pub type Entry = (u64, Record);

/// The sled database and the file whose `sync_data` makes a flush survive a power cut.
#[derive(Clone)]
struct Store {
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    log_file: std::sync::Arc<File>,
}

struct Inner {
    store: Option<Store>,
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

pub struct Outbox {
    path: PathBuf,
    max_messages: u64,
    inner: Mutex<Inner>,
    dropped: AtomicU64,
    /// Bumped whenever the set of readable entries changes behind a reader's back (store
    /// reopened); the feeder then rereads from the start.
    generation: AtomicU64,
    /// Woken after each commit that makes new entries readable.
    pub new_data: Notify,
}

impl Outbox {
    /// Opens the store at `path`. A damaged store is moved aside and replaced; one that cannot
    /// be opened for I/O reasons leaves the outbox in memory mode, retried later. Only a store
    /// locked by another process is an error: two daemons must not share one outbox.
    pub fn open(path: &Path, max_messages: u64) -> anyhow::Result<Outbox> {
        let mut inner = Inner {
            store: None,
            stored: 0,
            durable_end: 0,
            memory: VecDeque::new(),
            next_seq: 1,
            reopen_at: Instant::now(),
            reopen_delay: REOPEN_MIN,
        };
        match open_or_replace(path) {
            Ok(store) => install(&mut inner, store)?,
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
            path: path.to_owned(),
            max_messages,
            inner: Mutex::new(inner),
            dropped: AtomicU64::new(0),
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
    /// together with whatever the memory tier holds if the store is writable again (an empty
    /// batch does just that). At the bound the oldest readings are dropped. Blocking.
    pub fn commit(&self, batch: Vec<Entry>) {
        let mut inner = self.lock();
        if batch.is_empty() && inner.memory.is_empty() {
            return;
        }
        let incoming = batch.len() as u64;
        let excess =
            (inner.stored + inner.memory.len() as u64 + incoming).saturating_sub(self.max_messages);
        let mut dropped = self.drop_oldest(&mut inner, excess);
        inner.memory.extend(batch);
        if inner.store.is_none() && Instant::now() >= inner.reopen_at {
            self.try_reopen(&mut inner);
        }
        match inner.store.clone() {
            Some(store) => {
                let pending: Vec<Entry> = inner.memory.drain(..).collect();
                let next_seq = inner.next_seq;
                let written = write_batch(&store, &pending, next_seq);
                match written {
                    Ok(()) => {
                        inner.stored += pending.len() as u64;
                        drop(inner);
                        match store
                            .db
                            .flush()
                            .map_err(anyhow::Error::from)
                            .and_then(|_| store.log_file.sync_data().context("fsync of the store"))
                        {
                            Ok(()) => {
                                let end = pending.last().map_or(0, |(k, _)| k + 1);
                                let mut inner = self.lock();
                                inner.durable_end = inner.durable_end.max(end);
                            }
                            Err(e) => {
                                // The batch may or may not be on disk: keep it in memory too. A
                                // copy that did reach the disk costs a duplicate, never a loss.
                                let mut inner = self.lock();
                                self.fail_store(&mut inner, &e);
                                inner.memory.extend(pending);
                            }
                        }
                    }
                    Err(e) => {
                        self.fail_store(&mut inner, &e);
                        inner.memory.extend(pending);
                    }
                }
            }
            None => {
                let over = inner.memory.len().saturating_sub(MEMORY_LIMIT);
                dropped += over as u64;
                inner.memory.drain(..over);
            }
        }
        if dropped > 0 {
            let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            warn!(
                dropped,
                total,
                bound = self.max_messages,
                "buffer full: dropped the oldest readings"
            );
        }
        self.new_data.notify_one();
    }

    /// Up to `max` readable entries with keys above `after`, in key order.
    pub fn read_after(&self, after: Option<u64>, max: usize) -> Vec<Entry> {
        let start = after.map_or(0, |k| k + 1);
        let mut inner = self.lock();
        let mut out = Vec::new();
        if let Some(store) = inner.store.clone() {
            for item in store
                .data
                .range(start.to_be_bytes()..inner.durable_end.to_be_bytes())
            {
                if out.len() >= max {
                    return out;
                }
                match item
                    .map_err(anyhow::Error::from)
                    .and_then(|(k, v)| decode(&k, &v))
                {
                    Ok(entry) => out.push(entry),
                    Err(e) => {
                        self.fail_store(&mut inner, &e);
                        return out;
                    }
                }
            }
        }
        let first = inner.memory.partition_point(|(k, _)| *k < start);
        out.extend(inner.memory.range(first..).take(max - out.len()).cloned());
        out
    }

    /// Forgets acknowledged readings.
    pub fn remove(&self, keys: &[u64]) {
        let mut inner = self.lock();
        for &key in keys {
            if let Ok(i) = inner.memory.binary_search_by_key(&key, |(k, _)| *k) {
                inner.memory.remove(i);
                continue;
            }
            let Some(store) = inner.store.clone() else {
                continue;
            };
            match store.data.remove(key.to_be_bytes()) {
                Ok(Some(_)) => inner.stored -= 1,
                Ok(None) => {} // already dropped at the bound
                Err(e) => self.fail_store(&mut inner, &e.into()),
            }
        }
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
        let mut inner = self.lock();
        if inner.store.is_none() && Instant::now() >= inner.reopen_at {
            self.try_reopen(&mut inner);
            drop(inner);
            self.commit(Vec::new());
        }
    }

    /// Writes the sequence counter and flushes, so a clean stop loses nothing. Blocking.
    pub fn close(&self) {
        let inner = self.lock();
        if let Some(store) = inner.store.clone() {
            let next = inner.next_seq;
            drop(inner);
            let result = store
                .meta
                .insert(NEXT_SEQ_KEY, &next.to_be_bytes())
                .and_then(|_| store.db.flush())
                .map_err(anyhow::Error::from)
                .and_then(|_| store.log_file.sync_data().context("fsync of the store"));
            if let Err(e) = result {
                error!(error = %format!("{e:#}"), "could not flush the store on shutdown");
            }
        }
    }

    /// Drops the `n` oldest readings (store first: it holds the older ones); returns how many.
    fn drop_oldest(&self, inner: &mut Inner, n: u64) -> u64 {
        let mut from_store = 0;
        if let Some(store) = inner.store.clone() {
            while from_store < n && inner.stored > 0 {
                match store.data.pop_min() {
                    Ok(Some(_)) => {
                        inner.stored -= 1;
                        from_store += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fail_store(inner, &e.into());
                        break;
                    }
                }
            }
        }
        let from_memory = ((n - from_store) as usize).min(inner.memory.len());
        inner.memory.drain(..from_memory);
        from_store + from_memory as u64
    }

    fn fail_store(&self, inner: &mut Inner, e: &anyhow::Error) {
        if inner.store.take().is_some() {
            error!(path = %self.path.display(), error = %format!("{e:#}"), "the store cannot be written; keeping new readings in memory and retrying");
            inner.stored = 0;
            inner.durable_end = 0;
            inner.reopen_delay = REOPEN_MIN;
            inner.reopen_at = Instant::now() + inner.reopen_delay;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn try_reopen(&self, inner: &mut Inner) {
        match open_or_replace(&self.path) {
            Ok(store) => match install(inner, store) {
                Ok(()) => {
                    info!(path = %self.path.display(), stored = inner.stored, "the store is writable again");
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                Err(e) => warn!(error = %format!("{e:#}"), "store reopened but unreadable"),
            },
            Err(OpenError::Locked(e) | OpenError::Unusable(e)) => {
                inner.reopen_delay = (inner.reopen_delay * 2).min(REOPEN_MAX);
                inner.reopen_at = Instant::now() + inner.reopen_delay;
                tracing::debug!(error = %format!("{e:#}"), retry_in = ?inner.reopen_delay, "store still unavailable");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters that are at worst approximate; the
        // entries themselves are in sled. Carry on rather than poison the whole daemon.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts the readings in the store at `path` (for tools and tests; not while a daemon holds it).
pub fn depth_at(path: &Path) -> anyhow::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let store = open_store(path)?;
    Ok(store.data.len() as u64)
}

/// Puts a freshly opened store into `inner`: counts it, positions the sequence after it.
fn install(inner: &mut Inner, store: Store) -> anyhow::Result<()> {
    let last = match store.data.last()? {
        Some((k, _)) => key_of(&k)?,
        None => 0,
    };
    let saved = match store.meta.get(NEXT_SEQ_KEY)? {
        Some(v) => key_of(&v)?,
        None => 1,
    };
    // One pass over the keys at start (about 1 s per million readings): the count must be
    // exact for the bound, and keys have holes (QoS 0 readings, out-of-order acks).
    inner.stored = store.data.iter().keys().count() as u64;
    inner.durable_end = last + 1;
    inner.next_seq = inner.next_seq.max(saved).max(last + 1);
    inner.store = Some(store);
    Ok(())
}

enum OpenError {
    Locked(anyhow::Error),
    Unusable(anyhow::Error),
}

/// Opens the store; a damaged one is renamed `<path>.damaged-<unix time>` and replaced.
fn open_or_replace(path: &Path) -> Result<Store, OpenError> {
    let err = match catch_unwind(AssertUnwindSafe(|| open_store(path))) {
        Ok(Ok(store)) => return Ok(store),
        Ok(Err(e)) => e,
        Err(panic) => anyhow::anyhow!("sled panicked while opening it: {}", panic_message(&panic)),
    };
    let damaged = match err.downcast_ref::<sled::Error>() {
        Some(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
            return Err(OpenError::Locked(err));
        }
        // Permissions, a full or read-only disk: moving the directory would not help.
        Some(sled::Error::Io(_)) => false,
        Some(_) => true,
        None => err.to_string().contains("panicked") || err.downcast_ref::<BadRecord>().is_some(),
    };
    if !damaged {
        return Err(OpenError::Unusable(err));
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let aside = PathBuf::from(format!("{}.damaged-{secs}", path.display()));
    if let Err(e) = std::fs::rename(path, &aside) {
        return Err(OpenError::Unusable(
            err.context(format!("and it could not be moved aside: {e}")),
        ));
    }
    error!(path = %path.display(), moved_to = %aside.display(), error = %format!("{err:#}"), "the store was damaged: moved it aside and started an empty one");
    open_store(path).map_err(OpenError::Unusable)
}

fn open_store(path: &Path) -> anyhow::Result<Store> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .open()?;
    let data = db.open_tree(DATA_TREE)?;
    let meta = db.open_tree(META_TREE)?;
    // Check every record decodes: a half-written store is caught here, not mid-publish.
    if let Some((k, v)) = data.first()? {
        decode(&k, &v)?;
    }
    let log_file = File::options()
        .read(true)
        .open(path.join("db"))
        .with_context(|| format!("opening {} for fsync", path.join("db").display()))?;
    Ok(Store {
        db,
        data,
        meta,
        log_file: std::sync::Arc::new(log_file),
    })
}

fn write_batch(store: &Store, entries: &[Entry], next_seq: u64) -> anyhow::Result<()> {
    let mut batch = sled::Batch::default();
    for (key, record) in entries {
        batch.insert(&key.to_be_bytes(), encode(record));
    }
    store.data.apply_batch(batch)?;
    store.meta.insert(NEXT_SEQ_KEY, &next_seq.to_be_bytes())?;
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable record in the store: {0}")]
struct BadRecord(&'static str);

/// `[version][flags: bit0 retain][taken_ms: u64][topic len: u16][topic][payload]`
fn encode(r: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + r.topic.len() + r.payload.len());
    v.push(RECORD_VERSION);
    v.push(r.retain as u8);
    v.extend_from_slice(&r.taken_ms.to_be_bytes());
    v.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
    v.extend_from_slice(r.topic.as_bytes());
    v.extend_from_slice(&r.payload);
    v
}

fn decode(key: &[u8], v: &[u8]) -> anyhow::Result<Entry> {
    let key = key_of(key)?;
    if v.len() < 12 || v[0] != RECORD_VERSION {
        bail!(BadRecord("unknown version or truncated header"));
    }
    let taken_ms = u64::from_be_bytes(v[2..10].try_into().unwrap());
    let topic_len = u16::from_be_bytes([v[10], v[11]]) as usize;
    let topic = v
        .get(12..12 + topic_len)
        .ok_or(BadRecord("truncated topic"))?;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| BadRecord("topic is not UTF-8"))?;
    let payload = v[12 + topic_len..].to_vec();
    Ok((
        key,
        Record {
            topic,
            payload,
            retain: v[1] & 1 == 1,
            taken_ms,
        },
    ))
}

fn key_of(k: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(
        k.try_into().map_err(|_| BadRecord("key is not 8 bytes"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            topic: "t".into(),
            payload: n.to_string().into_bytes(),
            retain: false,
            taken_ms: n,
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
        outbox.remove(&[k[2], k[0], k[0]]); // out of order, and a duplicate ack
        assert_eq!(outbox.depth(), 2);
        assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[1], k[3]]);
        outbox.close();
        drop(outbox);
        assert_eq!(depth_at(&path).unwrap(), 2);
    }

    #[test]
    fn sequence_keeps_rising_after_the_store_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let k = commit_n(&outbox, 3);
        outbox.remove(&k);
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
        outbox.remove(&k[..1]);
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
