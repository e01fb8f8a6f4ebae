//! Opening a sled store: its settings, the first count, and replacing a damaged one.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tracing::error;

use super::mark::Mark;
use super::record::key_of;
use super::{COUNT_KEY, DATA_TREE, META_TREE, NEXT_SEQ_KEY, OpenError, Opened, QUARANTINE_TREE};
use super::{Store, panic_message, recover};

/// sled's page cache. Its default is 1 GiB; a Pi has far less, and the outbox is a queue
/// whose hot part (both ends) is small.
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;
/// How often sled's background thread writes what is not yet flushed (only acknowledged
/// readings' deletions: every commit flushes) and reclaims space. sled's default is 500 ms; at
/// one reading a second that wrote each deletion on its own, dirtying one more 4 KiB page per
/// reading (SD wear: 8.6 -> 6.0 KiB written per reading, BENCHMARKS.md). A deletion that is not
/// on disk yet costs at most a duplicate after a power cut, never a loss.
const FLUSH_EVERY_MS: u64 = 2000;

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
pub(super) fn aside_path(path: &Path) -> PathBuf {
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
pub(super) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(test)]
    super::test_faults::note_dir_sync(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of the directory {}", dir.display()))
}

/// The daemon's store: it gets its durable mark, and the count saved at close, which holds
/// only until the first change, is forgotten first.
pub(super) fn for_writing(mut opened: Opened, mark: Option<Mark>) -> Result<Opened, OpenError> {
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

pub(in crate::outbox) fn open(path: &Path) -> anyhow::Result<Opened> {
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
pub(super) fn ends(data: &sled::Tree) -> anyhow::Result<(u64, u64)> {
    let key = |kv: Option<(sled::IVec, sled::IVec)>| match kv {
        Some((k, _)) => key_of(&k),
        None => Ok(0),
    };
    Ok((key(data.first()?)?, key(data.last()?)?))
}
