//! What the outbox needs of its store tier, so that its two-tier state machine can be tested without sled.

use super::Entry;
use super::Record;
use super::store::{OpenError, Opened};

/// A durable, ordered store of entries. [`super::store::Store`] (sled) in the daemon; a model
/// in the outbox's property test. Every call may fail; the outbox then gives the handle up
/// (the memory tier) and opens a new one later.
pub trait Backend: Clone + Send + 'static {
    /// Where a store is opened from (a path for sled).
    type Source: Send + Sync;

    /// Opens (or replaces a damaged) store, with its count, last key and saved `next_seq`.
    fn open(source: &Self::Source) -> Result<Opened<Self>, OpenError>;
    /// Writes `entries` and `next_seq`; returns how many keys are new (with
    /// `check_existing`, keys already present don't count).
    fn write(&self, entries: &[Entry], next_seq: u64, check_existing: bool) -> anyhow::Result<u64>;
    /// Makes everything written durable.
    fn sync(&self, saved_seq: u64) -> anyhow::Result<()>;
    /// Appends up to `max` entries with keys in `start..end`; returns how many undecodable
    /// ones were moved aside on the way.
    fn read(&self, start: u64, end: u64, max: usize, out: &mut Vec<Entry>) -> anyhow::Result<u64>;
    fn first(&self) -> anyhow::Result<Option<Entry>>;
    /// True if `key` holds exactly `record`.
    fn holds(&self, key: u64, record: &Record) -> anyhow::Result<bool>;
    /// True if the key was there.
    fn remove(&self, key: u64) -> anyhow::Result<bool>;
    /// Moves the reading to quarantine; true if the key was there.
    fn quarantine(&self, key: u64) -> anyhow::Result<bool>;
    /// Drops the oldest entry; false if there was none.
    fn pop_oldest(&self) -> anyhow::Result<bool>;
    fn save_seq(&self, next_seq: u64) -> anyhow::Result<()>;
    /// Saves the count for a quick next open (a clean close).
    fn save_count(&self, stored: u64, next_seq: u64) -> anyhow::Result<()>;
}
