//! The outbox's unit tests, on a real sled store, by concern; `model` drives it against a model
//! store instead.

mod model;
mod quarantine;
mod recovery;
mod reopen;
mod sparse;
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
