//! The sled side of the outbox: opening (and replacing a damaged store), records, batches.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tracing::error;

use super::backend::Backend;
use super::{Entry, Record};

mod recover;

/// sled's page cache. Its default is 1 GiB; a Pi has far less, and the outbox is a queue
/// whose hot part (both ends) is small.
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;
/// How often sled's background thread writes what is not yet flushed (only acknowledged
/// readings' deletions: every commit flushes) and reclaims space. sled's default is 500 ms; at
/// one reading a second that wrote each deletion on its own, dirtying one more 4 KiB page per
/// reading (SD wear: 8.6 -> 6.0 KiB written per reading, BENCHMARKS.md). A deletion that is not
/// on disk yet costs at most a duplicate after a power cut, never a loss.
const FLUSH_EVERY_MS: u64 = 2000;
const DATA_TREE: &[u8] = b"outbox";
const META_TREE: &[u8] = b"meta";
/// Records that could not be decoded, and readings an MQTT 5 broker refused for good (e.g. an
/// ACL), kept for a person to look at instead of blocking the queue.
const QUARANTINE_TREE: &[u8] = b"quarantine";
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
/// How many readings the store held at a clean close, with what identifies that state (first
/// and last key, `next_seq`). The next open uses it instead of counting every key if the state
/// still matches (an older telemetryd, which knows nothing of it, changes `next_seq` whenever
/// it runs), and removes it before anything changes.
const COUNT_KEY: &[u8] = b"count_at_close";
const RECORD_VERSION: u8 = 1;
/// A file beside sled's own, holding the `next_seq` of the last commit that was fsynced. sled
/// 0.34 takes a damaged record in its log for a torn tail and opens *without an error*, without
/// whatever came after it, readings that had been made durable (and may never have been
/// published). A `next_seq` below this mark after opening shows that; see [`open_or_replace`].
const MARK_FILE: &str = "telemetryd-durable-mark";
/// Mixed into the mark's check word, so that a file of garbage (or zeroes) is not a mark.
const MARK_CHECK: u64 = 0x7465_6c65_6d65_7472;

/// The sled database and the file whose `sync_data` makes a flush survive a power cut.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    quarantine: sled::Tree,
    log_file: Arc<File>,
    /// Where the durable mark goes after each fsync: only for the daemon's store
    /// ([`open_or_replace`]), and `None` if it could not be opened (the check is then skipped:
    /// it guards against sled's silence, it holds no data).
    mark: Option<Arc<Mark>>,
}

/// A store just opened, with what was learnt from it.
pub struct Opened<S = Store> {
    pub store: S,
    /// How many readings it holds: saved by a clean close, else one pass over the keys (about
    /// 1 s per million on a PC, more on a Pi).
    pub stored: u64,
    /// `stored` came from the count saved at close, which must be forgotten before any change.
    pub from_close: bool,
    /// Its highest key, 0 when empty.
    pub last: u64,
    pub saved_seq: u64,
}

pub enum OpenError {
    /// Another process holds it.
    Locked(anyhow::Error),
    /// It cannot be opened for I/O reasons (permissions, a full or read-only disk) and was
    /// left where it is, or it was damaged and could not be replaced.
    Unusable(anyhow::Error),
}

impl Store {
    /// Removes the count saved at close, durably, before the first change: after a crash, the
    /// next open counts.
    fn forget_count(&self, saved_seq: u64) -> anyhow::Result<()> {
        guarded("remove", || Ok(self.meta.remove(COUNT_KEY)?))?;
        self.sync(saved_seq)
    }

    pub fn quarantined(&self) -> anyhow::Result<usize> {
        guarded("iter", || Ok(self.quarantine.len()))
    }

    fn move_to_quarantine(&self, k: &[u8], v: sled::IVec) -> anyhow::Result<()> {
        // Copy first: a crash in between leaves a copy in both trees, never in neither.
        self.quarantine.insert(k, v)?;
        self.data.remove(k)?;
        Ok(())
    }
}

impl Backend for Store {
    type Source = PathBuf;

    fn open(path: &PathBuf) -> Result<Opened, OpenError> {
        open_or_replace(path)
    }

    /// `flush()` alone is sync_file_range on Linux, not a durable fsync. `saved_seq`: the
    /// `next_seq` the caller saved (with [`Store::write`] or [`Store::save_seq`]) before this
    /// sync, which makes it durable.
    ///
    /// After the fsync, the durable mark is updated (written, not fsynced: after a power cut
    /// it may be older than the store, never newer, and an older mark flags nothing).
    fn sync(&self, saved_seq: u64) -> anyhow::Result<()> {
        guarded("flush", || {
            self.db.flush()?;
            self.log_file.sync_data().context("fsync of the store")
        })?;
        if let Some(mark) = &self.mark {
            mark.write(saved_seq);
        }
        Ok(())
    }

    /// Writes `entries` and the sequence counter (made durable by the next `sync`). Returns how
    /// many keys are new; with `check_existing`, keys already present (written before a failed
    /// flush) don't count.
    fn write(&self, entries: &[Entry], next_seq: u64, check_existing: bool) -> anyhow::Result<u64> {
        guarded("insert", || {
            let mut fresh = entries.len() as u64;
            if check_existing {
                for (key, _) in entries {
                    if self.data.contains_key(key.to_be_bytes())? {
                        fresh -= 1;
                    }
                }
            }
            // The counter first: the readings are then the last record(s) of the commit, so a
            // flush that fails part-way cannot have written them (sled recovers a log prefix).
            self.save_seq(next_seq)?;
            match entries {
                // One reading (the usual case at low rates): a plain insert. `apply_batch` writes
                // a manifest and forces its own log buffer out, so a commit of one reading wrote
                // two 4 KiB pages instead of one (SD wear, BENCHMARKS.md). One record is atomic
                // anyway.
                [(key, record)] => {
                    self.data.insert(key.to_be_bytes(), encode(record))?;
                }
                // Several: one atomic batch, so a failed flush leaves none of them on disk (no
                // copy that the memory tier would then not know about).
                _ => {
                    let mut batch = sled::Batch::default();
                    for (key, record) in entries {
                        batch.insert(&key.to_be_bytes(), encode(record));
                    }
                    self.data.apply_batch(batch)?;
                }
            }
            Ok(fresh)
        })
    }

    /// Saves how many readings there are, for a quick next open. Only when nothing is
    /// written afterwards (a clean close).
    fn save_count(&self, stored: u64, next_seq: u64) -> anyhow::Result<()> {
        guarded("insert", || {
            let (first, last) = ends(&self.data)?;
            let mut v = Vec::with_capacity(32);
            for n in [stored, first, last, next_seq] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            self.meta.insert(COUNT_KEY, v)?;
            Ok(())
        })
    }

    fn save_seq(&self, next_seq: u64) -> anyhow::Result<()> {
        guarded("insert", || {
            self.meta.insert(NEXT_SEQ_KEY, &next_seq.to_be_bytes())?;
            Ok(())
        })
    }

    /// Appends up to `max` entries with keys in `start..end` to `out`. A record that cannot be
    /// decoded is moved to the quarantine tree (logged) rather than blocking everything behind
    /// it; returns how many were.
    fn read(&self, start: u64, end: u64, max: usize, out: &mut Vec<Entry>) -> anyhow::Result<u64> {
        if start >= end {
            return Ok(0);
        }
        guarded("iter", || {
            let mut quarantined = 0;
            for item in self.data.range(start.to_be_bytes()..end.to_be_bytes()) {
                if out.len() >= max {
                    break;
                }
                let (k, v) = item?;
                match decode(&k, &v) {
                    Ok(entry) => out.push(entry),
                    Err(e) => {
                        self.move_to_quarantine(&k, v)?;
                        quarantined += 1;
                        error!(key = ?k.as_ref(), error = %e, "moved an undecodable reading to the store's quarantine tree");
                    }
                }
            }
            Ok(quarantined)
        })
    }

    /// The oldest reading, if any.
    fn first(&self) -> anyhow::Result<Option<Entry>> {
        guarded("iter", || {
            self.data.first()?.map(|(k, v)| decode(&k, &v)).transpose()
        })
    }

    /// Moves a reading to the quarantine tree; true if the key was there.
    fn quarantine(&self, key: u64) -> anyhow::Result<bool> {
        guarded("insert", || {
            let k = key.to_be_bytes();
            let Some(v) = self.data.get(k)? else {
                return Ok(false);
            };
            self.move_to_quarantine(&k, v)?;
            Ok(true)
        })
    }

    /// True if `key` holds exactly `record`.
    fn holds(&self, key: u64, record: &Record) -> anyhow::Result<bool> {
        guarded("iter", || {
            let stored = self.data.get(key.to_be_bytes())?;
            Ok(stored.is_some_and(|v| v.as_ref() == encode(record).as_slice()))
        })
    }

    /// True if the key was there.
    fn remove(&self, key: u64) -> anyhow::Result<bool> {
        guarded("remove", || {
            Ok(self.data.remove(key.to_be_bytes())?.is_some())
        })
    }

    /// Drops the oldest reading; false if there was none.
    fn pop_oldest(&self) -> anyhow::Result<bool> {
        guarded("remove", || Ok(self.data.pop_min()?.is_some()))
    }
}

/// Opens the store for the daemon; a damaged one is renamed `<path>.damaged-<unix time>` and
/// replaced.
pub(super) fn open_or_replace(path: &Path) -> Result<Opened, OpenError> {
    recover::finish_interrupted(path)?;
    let err = match catch_unwind(AssertUnwindSafe(|| open(path))) {
        Ok(Ok(opened)) => {
            let (mark, marked) = Mark::open(path);
            return match marked {
                Some(seq) if seq > opened.saved_seq => {
                    drop(mark);
                    recover::carry_over(path, opened, seq)
                }
                _ => for_writing(opened, mark),
            };
        }
        Ok(Err(e)) => e,
        Err(panic) => anyhow::anyhow!("sled panicked while opening it: {}", panic_message(&panic)),
    };
    if is_locked(&err) {
        return Err(OpenError::Locked(err));
    }
    let damaged = match err.downcast_ref::<sled::Error>() {
        // Permissions, a full or read-only disk: moving the directory would not help.
        Some(sled::Error::Io(_)) => false,
        Some(_) => true,
        // Our own checks (an undecodable key) and panics.
        None => err.downcast_ref::<std::io::Error>().is_none(),
    };
    if !damaged {
        return Err(OpenError::Unusable(err));
    }
    let aside = aside_path(path);
    if let Err(e) = std::fs::rename(path, &aside) {
        return Err(OpenError::Unusable(
            err.context(format!("and it could not be moved aside: {e}")),
        ));
    }
    // The move must be on disk before the new store is: after a power cut, the old name
    // could otherwise come back holding the damaged store, next to a new one. Once per
    // damaged store.
    if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    error!(path = %path.display(), moved_to = %aside.display(), error = %format!("{err:#}"), "the store was damaged: moved it aside and started an empty one");
    open(path)
        .map_err(OpenError::Unusable)
        .and_then(|opened| for_writing(opened, Mark::open(path).0))
}

/// Another process holds the store (or this one, for a moment after dropping it).
fn is_locked(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<sled::Error>(),
        Some(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock"))
}

/// `<path>.damaged-<unix time>`, with `-2`, `-3`... if that is taken (a second damage within
/// the same second must not fail to move, nor merge with the first).
fn aside_path(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let base = format!("{}.damaged-{secs}", path.display());
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = PathBuf::from(format!("{base}-{n}"));
    }
    aside
}

/// fsync of a directory: makes the names created, renamed or removed in it survive a power
/// cut (an fsync of a file covers its data, not its entry in the directory).
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(test)]
    test_faults::note_dir_sync(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of the directory {}", dir.display()))
}

/// The daemon's store: it gets its durable mark, and the count saved at close, which holds
/// only until the first change, is forgotten first.
fn for_writing(mut opened: Opened, mark: Option<Mark>) -> Result<Opened, OpenError> {
    opened.store.mark = mark.map(Arc::new);
    if opened.from_close {
        opened
            .store
            .forget_count(opened.saved_seq)
            .map_err(OpenError::Unusable)?;
    }
    Ok(opened)
}

/// How long opening waits for a lock on the store to be let go: sled's I/O threads hold it a
/// moment after the last handle of a store is dropped (as when it is moved aside and reopened).
/// A store another daemon holds is an error after that.
const LOCK_WAIT: Duration = Duration::from_secs(2);

pub(super) fn open(path: &Path) -> anyhow::Result<Opened> {
    let created = !path.exists();
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .flush_every_ms(Some(FLUSH_EVERY_MS));
    let give_up = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(e) => {
                let e = anyhow::Error::from(e);
                if !is_locked(&e) || std::time::Instant::now() >= give_up {
                    return Err(e);
                }
                // A retry pause while sled's threads finish, not a synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let data = db.open_tree(DATA_TREE)?;
    let meta = db.open_tree(META_TREE)?;
    let quarantine = db.open_tree(QUARANTINE_TREE)?;
    let log_file = File::options()
        .read(true)
        .open(path.join("db"))
        .with_context(|| format!("opening {} for fsync", path.join("db").display()))?;
    if created {
        // A new store's directory and its entry in the parent: without them a power cut can
        // take the whole store, fsynced readings included, with it (the fsync of `db` covers
        // its data only). Once per store, so no wear to speak of.
        sync_dir(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let (first, last) = ends(&data)?;
    let saved_seq = match meta.get(NEXT_SEQ_KEY)? {
        Some(v) => key_of(&v)?,
        None => 1,
    };
    // The count must be exact for the bound, and keys have holes (QoS 0 readings,
    // out-of-order acks), so `last - first + 1` would not do. Counting reads the whole store,
    // which delayed the first publish of a big backlog by seconds: a clean close saved it.
    let saved = meta.get(COUNT_KEY)?.and_then(|v| {
        let v: [u8; 32] = v.as_ref().try_into().ok()?;
        let n = |i: usize| u64::from_be_bytes(v[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        ((n(1), n(2), n(3)) == (first, last, saved_seq)).then_some(n(0))
    });
    let stored = match saved {
        Some(n) => n,
        None => {
            let mut n = 0u64;
            for key in data.iter().keys() {
                key?;
                n += 1;
                if n.is_multiple_of(100_000) {
                    // Seconds on a big store on a Pi: systemd must not take it for a hang.
                    crate::service::still_starting();
                }
            }
            n
        }
    };
    let store = Store {
        db,
        data,
        meta,
        quarantine,
        log_file: Arc::new(log_file),
        mark: None,
    };
    Ok(Opened {
        store,
        stored,
        from_close: saved.is_some(),
        last,
        saved_seq,
    })
}

/// The first and last key, 0 when empty.
fn ends(data: &sled::Tree) -> anyhow::Result<(u64, u64)> {
    let key = |kv: Option<(sled::IVec, sled::IVec)>| match kv {
        Some((k, _)) => key_of(&k),
        None => Ok(0),
    };
    Ok((key(data.first()?)?, key(data.last()?)?))
}

/// The durable mark beside sled's files (see [`MARK_FILE`]).
pub(super) struct Mark(File);

impl Mark {
    /// Opens (creating) the mark of the store at `path`, with the `next_seq` it holds if it is
    /// a valid mark.
    fn open(path: &Path) -> (Option<Mark>, Option<u64>) {
        let created = !path.join(MARK_FILE).exists();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(MARK_FILE));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.join(MARK_FILE).display(), error = %e, "cannot write the durable mark; a damaged store log would go unnoticed");
                return (None, None);
            }
        };
        if created {
            // The mark's name in the store's directory: without it a power cut can take the
            // mark, and with it the check, just when sled may have lost the log's tail. Once
            // per store; the mark's later writes are not fsynced (see Store::sync).
            let _ = sync_dir(path);
        }
        let mut bytes = [0u8; 16];
        let seq = file.read_exact_at(&mut bytes, 0).ok().and_then(|()| {
            let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            let check = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
            (check == seq ^ MARK_CHECK).then_some(seq)
        });
        (Some(Mark(file)), seq)
    }

    fn write(&self, seq: u64) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&seq.to_be_bytes());
        bytes[8..].copy_from_slice(&(seq ^ MARK_CHECK).to_be_bytes());
        // Failing to write it only weakens the check: the readings are durable already.
        if let Err(e) = self.0.write_at(&bytes, 0) {
            tracing::debug!(error = %e, "could not update the durable mark");
        }
    }
}

/// Runs a sled call, turning a panic into an error. sled 0.34 panics on some states of a
/// damaged or failing store (its own asserts), and outside input must not kill the committer
/// or the feeder: the error takes the store-failed path (memory tier, reopen with backoff).
fn guarded<T>(what: &'static str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let run = AssertUnwindSafe(|| {
        #[cfg(test)]
        test_faults::panic_if_armed(what);
        f()
    });
    catch_unwind(run).unwrap_or_else(|p| {
        Err(anyhow::anyhow!(
            "sled panicked in {what}: {}",
            panic_message(&p)
        ))
    })
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

/// `[version][flags: bit0 retain, bit1 plain][taken_ms: u64][topic len: u16][topic][payload]`
/// (config validation keeps topics far below 64 KiB). Records written before the `plain` bit
/// existed read as not plain: they go out without the MQTT 5 `ts` property, as before.
pub(super) fn encode(r: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + r.topic.len() + r.payload.len());
    v.push(RECORD_VERSION);
    v.push(r.retain as u8 | (r.plain as u8) << 1);
    v.extend_from_slice(&r.taken_ms.to_be_bytes());
    v.extend_from_slice(&(r.topic.len() as u16).to_be_bytes());
    v.extend_from_slice(r.topic.as_bytes());
    v.extend_from_slice(&r.payload);
    v
}

/// The most topic + payload bytes a record may hold. rumqttc's MQTT 3.1.1 client refuses a
/// packet over 10 KiB (its default `max_outgoing_packet_size`) by dropping the connection, so
/// such a record would be resent, and the link dropped, forever. 9 bytes of the packet go to
/// its fixed header, the topic length and the packet id. Our sensors' payloads are far smaller.
const MAX_TOPIC_AND_PAYLOAD: usize = 10 * 1024 - 9;

/// A stored record is outside input (a damaged or foreign store): whatever decodes must be
/// publishable as it is, so a record the client or the broker would refuse, or whose time
/// cannot be written, is undecodable (quarantined) instead of stopping the feeder.
pub(super) fn decode(key: &[u8], v: &[u8]) -> anyhow::Result<Entry> {
    let key = key_of(key)?;
    if v.len() < 12 || v[0] != RECORD_VERSION {
        bail!(BadRecord("unknown version or truncated header"));
    }
    if v.len() - 12 > MAX_TOPIC_AND_PAYLOAD {
        bail!(BadRecord("too large to publish"));
    }
    let taken_ms = u64::from_be_bytes(v[2..10].try_into().expect("8 bytes"));
    if taken_ms > crate::mqtt::properties::LAST_TS_MS {
        bail!(BadRecord("taken after year 9999"));
    }
    let topic_len = u16::from_be_bytes([v[10], v[11]]) as usize;
    let topic = v
        .get(12..12 + topic_len)
        .ok_or(BadRecord("truncated topic"))?;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| BadRecord("topic is not UTF-8"))?;
    // The checks config.rs makes on a sensor's topic: rumqttc refuses wildcards, a broker
    // drops the link over an empty topic or a NUL.
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        bail!(BadRecord("not a topic one can publish to"));
    }
    let payload = v[12 + topic_len..].to_vec();
    Ok((
        key,
        Record {
            topic,
            payload,
            retain: v[1] & 1 == 1,
            plain: v[1] & 2 == 2,
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
pub(super) fn decode_for_test(key: &[u8], v: &[u8]) -> anyhow::Result<Entry> {
    decode(key, v)
}

#[cfg(test)]
impl Store {
    /// Overwrites a stored record with bytes that do not decode.
    pub fn corrupt(&self, key: u64) {
        self.data
            .insert(key.to_be_bytes(), b"junk".as_slice())
            .unwrap();
    }
}

/// Test-only: makes the next sled call of a kind panic on this thread, as sled itself can.
#[cfg(test)]
pub(super) mod test_faults {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<Option<&'static str>> = const { Cell::new(None) };
        static CRASH: Cell<Option<&'static str>> = const { Cell::new(None) };
        static DIR_SYNCS: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The next guarded call named `what` ("insert", "flush", "remove", "iter") panics.
    pub fn panic_next(what: &'static str) {
        ARMED.with(|a| a.set(Some(what)));
    }

    pub(super) fn note_dir_sync(dir: &std::path::Path) {
        DIR_SYNCS.with(|d| d.borrow_mut().push(dir.to_owned()));
    }

    /// The directories fsynced on this thread since the last call.
    pub fn take_dir_syncs() -> Vec<std::path::PathBuf> {
        DIR_SYNCS.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }

    /// A simulated crash at the recovery step `name` (see `recover`).
    pub fn crash_at(name: &'static str) {
        CRASH.with(|a| a.set(Some(name)));
    }

    pub(super) fn crash_if_armed(name: &str) -> anyhow::Result<()> {
        if CRASH.with(|a| a.get()) == Some(name) {
            CRASH.with(|a| a.set(None));
            anyhow::bail!("simulated crash at {name}");
        }
        Ok(())
    }

    pub(super) fn panic_if_armed(what: &str) {
        if ARMED.with(|a| a.get()) == Some(what) {
            ARMED.with(|a| a.set(None));
            panic!("injected sled panic in {what}");
        }
    }
}
