//! The newest committed readings, kept in memory so the feeder can publish them without reading
//! them back from sled.
//!
//! In steady state each reading is committed, then read at once by the feeder, then removed on
//! its PUBACK: the read back was a sled range scan and a decode per reading (BENCHMARKS.md). A
//! commit's batch is moved here once it is durable instead. The rule that makes a read from
//! here the same as one from the store: every stored key from `from` up to the durable end is
//! here, and nothing else is. Whatever could break that (a failed store, a reopened one, drops
//! at the bound) resets it, and reads below `from` go to the store as before.

use std::collections::VecDeque;

use super::Entry;

/// At most this many readings are kept; beyond, the oldest leave and `from` moves past them.
const MAX_ENTRIES: usize = 256;
/// And at most about this many bytes of topics and payloads.
const MAX_BYTES: usize = 64 * 1024;

/// A copy of the store's newest readings. Owned by the outbox's [`super::tiers::Inner`], under
/// its mutex.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// Ascending keys, all below the store's durable end.
    entries: VecDeque<Entry>,
    /// Every stored key at or above this (and below the durable end) is in `entries`.
    from: u64,
    /// One past the last key appended (or `from` after a reset): a batch must start here or
    /// later to be appended.
    end: u64,
    bytes: usize,
}

impl Recent {
    /// Forgets everything; only keys from `end` on (the durable end) will be covered.
    pub(super) fn reset(&mut self, end: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.from = end;
        self.end = end;
    }

    /// Takes a batch that was just made durable (ascending keys). A batch that does not start at
    /// or after the last one's end (renumbered or recovered readings) resets the copy instead.
    pub(super) fn committed(&mut self, batch: Vec<Entry>) {
        let (Some((first, _)), Some((last, _))) = (batch.first(), batch.last()) else {
            return;
        };
        let (first, last) = (*first, *last);
        if first < self.end {
            self.reset(last + 1);
            return;
        }
        // A batch bigger than the copy (a recovered memory tier, a held-back burst): only its
        // newest readings are taken, so the deque never grows past its bound, even for a moment
        // (it would keep that capacity for good).
        let skip = batch.len().saturating_sub(MAX_ENTRIES);
        if skip > 0 {
            self.entries.clear();
            self.bytes = 0;
            self.from = batch[skip].0;
        }
        for entry in batch.into_iter().skip(skip) {
            self.bytes += size(&entry);
            self.entries.push_back(entry);
        }
        self.end = last + 1;
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size(&old);
            self.from = old.0 + 1;
        }
    }

    /// True if a read from `start` on can be answered here alone.
    pub(super) fn covers(&self, start: u64) -> bool {
        start >= self.from
    }

    /// Appends up to `max` entries with keys from `start` on (which [`Recent::covers`]).
    pub(super) fn read(&self, start: u64, max: usize, out: &mut Vec<Entry>) {
        let first = self.entries.partition_point(|(k, _)| *k < start);
        let room = max.saturating_sub(out.len());
        out.extend(self.entries.range(first..).take(room).cloned());
    }

    /// `key` left the store (acknowledged or quarantined).
    pub(super) fn forget(&mut self, key: u64) {
        let Ok(i) = self.entries.binary_search_by_key(&key, |(k, _)| *k) else {
            return;
        };
        if let Some(old) = self.entries.remove(i) {
            self.bytes -= size(&old);
        }
    }
}

fn size((_, r): &Entry) -> usize {
    r.topic.len() + r.payload.len() + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Record;

    fn entry(key: u64, payload_len: usize) -> Entry {
        let record = Record {
            topic: "t".into(),
            payload: vec![0; payload_len],
            retain: false,
            taken_ms: key,
            plain: true,
        };
        (key, record)
    }

    fn keys(out: &[Entry]) -> Vec<u64> {
        out.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn covers_from_the_reset_on_and_reads_in_pages() {
        let mut r = Recent::default();
        r.reset(10);
        assert!(!r.covers(9) && r.covers(10));
        r.committed((10..15).map(|k| entry(k, 1)).collect());
        let mut out = Vec::new();
        r.read(11, 2, &mut out);
        assert_eq!(keys(&out), [11, 12]);
        r.forget(10);
        r.forget(12);
        out.clear();
        r.read(10, 10, &mut out);
        assert_eq!(keys(&out), [11, 13, 14]);
        assert!(r.covers(10), "a removed key leaves the coverage as it was");
    }

    #[test]
    fn a_batch_from_before_the_end_resets_it() {
        let mut r = Recent::default();
        r.reset(10);
        r.committed((10..13).map(|k| entry(k, 1)).collect());
        r.committed((12..14).map(|k| entry(k, 1)).collect());
        assert!(!r.covers(13) && r.covers(14));
        let mut out = Vec::new();
        r.read(14, 10, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_oldest_leave_at_the_bounds_and_coverage_moves_past_them() {
        let mut r = Recent::default();
        r.reset(0);
        r.committed((0..3).map(|k| entry(k, 1)).collect());
        r.committed(
            (3..20 * MAX_ENTRIES as u64 + 5)
                .map(|k| entry(k, 1))
                .collect(),
        );
        let first = 19 * MAX_ENTRIES as u64 + 5;
        assert!(!r.covers(first - 1) && r.covers(first));
        let mut out = Vec::new();
        r.read(0, usize::MAX, &mut out);
        assert_eq!(out.len(), MAX_ENTRIES);
        assert!(
            r.entries.capacity() < 2 * MAX_ENTRIES,
            "a big batch is not taken whole"
        );
        r.reset(1000);
        r.committed(vec![entry(1000, MAX_BYTES), entry(1001, 10)]);
        assert!(!r.covers(1000) && r.covers(1001));
        assert!(r.bytes <= MAX_BYTES);
    }
}
