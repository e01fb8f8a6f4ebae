//! The outbox's unit tests, on a real sled store, by concern; `model` drives it against a model
//! store instead.

mod model;
mod quarantine;
mod queue;
mod queue_damage;
mod queue_legacy;
mod recovery;
mod reopen;
mod tiers;

use super::{Entry, Outbox, Record};

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

/// sled itself on `path`, once the store's own handle has let go of its lock.
fn raw(path: &std::path::Path) -> sled::Db {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() > give_up => panic!("{e}"),
            // A retry pause while sled's threads let go of the lock, not a synchronisation.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Everything the store holds, read in pages of `page`, as the feeder reads.
fn read_all(store: &super::store::Store, page: usize) -> Vec<Entry> {
    use super::backend::Backend;
    let mut all: Vec<Entry> = Vec::new();
    loop {
        let start = all.last().map_or(0, |(k, _)| k + 1);
        let mut out = Vec::new();
        store.read(start, u64::MAX, page, &mut out).unwrap();
        if out.is_empty() {
            return all;
        }
        all.extend(out);
    }
}
