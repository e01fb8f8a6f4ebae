//! The sled side of the outbox: the store's handle and every sled call the outbox makes on it.

mod mark;
mod open;
mod record;
mod recover;
#[cfg(test)]
pub(super) mod test_faults;

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tracing::error;

use super::backend::Backend;
use super::{Entry, Record};
use mark::Mark;
pub(super) use open::open;
use open::{aside_path, ends, for_writing, open_or_replace, sync_dir};
pub(super) use record::{decode, encode};

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

/// Why a store could not be opened. An enum because the outbox branches on it: a store another
/// process holds is an error (two daemons must not share one outbox); anything else leaves the
/// outbox in memory mode, retried later.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds it.
    #[error(transparent)]
    Locked(anyhow::Error),
    /// It cannot be opened for I/O reasons (permissions, a full or read-only disk) and was
    /// left where it is, or it was damaged and could not be replaced.
    #[error(transparent)]
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

#[cfg(test)]
impl Store {
    /// Overwrites a stored record with bytes that do not decode.
    pub fn corrupt(&self, key: u64) {
        self.data
            .insert(key.to_be_bytes(), b"junk".as_slice())
            .unwrap();
    }
}
