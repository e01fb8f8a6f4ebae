//! The readings' keys on disk: one sled tree per chunk of keys, and the acknowledged-up-to floor.
//!
//! A reading's key `k` lives in the tree of chunk `k >> CHUNK_BITS`. Acknowledgements at the
//! front of the queue (the usual case: PUBACKs come in order) do not remove keys one by one,
//! which cost sled about 12,000 instructions each and rewrote a B-tree node per key
//! (BENCHMARKS.md): they raise the **floor**, one `meta` record per batch, below which every
//! key counts as gone. A chunk wholly below the floor is dropped as a whole tree (its pages
//! freed together). Keys acknowledged out of order, quarantined ones and physical leftovers are
//! removed one by one, as before.
//!
//! A store from before chunks (one tree, `outbox`) is served where it is: its keys are all
//! below every new one, its acknowledgements are removes as before, and the tree is dropped
//! once empty. (Moving its readings into chunks at the first open took 85 MiB for 100,000 of
//! them: a big backlog at an upgrade would have met the unit's memory limit at every start.)
//!
//! The floor is written like the removes it replaces: not fsynced on its own, durable with the
//! next commit. After a power cut it may be older than it was, never newer, so the readings
//! acknowledged last are sent again (duplicates), none lost.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use sled::IVec;

mod ack;
mod floor;
mod keys;
mod legacy;

use super::record::key_of;
use floor::{FLOOR_KEY, read_floor};
use keys::{chunk_keys, chunk_name, chunk_number, chunk_of};
pub(super) use legacy::LEGACY_TREE;
use legacy::open_legacy;

/// The chunk trees and the floor. Shared by every clone of the store; each call takes the lock
/// for its own duration (the outbox already serialises the calls that change the queue).
pub(super) struct Queue {
    db: sled::Db,
    meta: sled::Tree,
    state: Mutex<State>,
}

struct State {
    /// Every key below it is gone (acknowledged, or dropped at the bound), whatever a chunk
    /// tree may still hold below it.
    floor: u64,
    /// Open chunk trees by chunk number, the oldest first.
    chunks: BTreeMap<u64, sled::Tree>,
    /// A tree from before chunks that still holds readings, and the key after its last: every
    /// key below that is in it, every key above in the chunks.
    legacy: Option<(sled::Tree, u64)>,
}

impl State {
    /// The tree that holds `key`, if any.
    fn tree_of(&self, key: u64) -> Option<&sled::Tree> {
        match &self.legacy {
            Some((tree, end)) if key < *end => Some(tree),
            _ => self.chunks.get(&chunk_of(key)),
        }
    }

    fn legacy_end(&self) -> u64 {
        self.legacy.as_ref().map_or(0, |(_, end)| *end)
    }
}

impl Queue {
    /// Opens the chunk trees of `db` and a legacy single tree if it holds readings, and drops
    /// the chunks a crash left below the floor.
    pub(super) fn open(
        db: &sled::Db,
        meta: &sled::Tree,
        quarantine: &sled::Tree,
    ) -> anyhow::Result<Queue> {
        let floor = read_floor(meta)?;
        let legacy = match db.tree_names().iter().any(|n| n.as_ref() == LEGACY_TREE) {
            true => open_legacy(db, meta, quarantine, floor)?,
            false => None,
        };
        let mut chunks = BTreeMap::new();
        for name in db.tree_names() {
            if let Some(chunk) = chunk_number(&name) {
                chunks.insert(chunk, db.open_tree(&name)?);
            }
        }
        let queue = Queue {
            db: db.clone(),
            meta: meta.clone(),
            state: Mutex::new(State {
                floor,
                chunks,
                legacy,
            }),
        };
        queue.drop_below_floor(&mut queue.state.lock())?;
        Ok(queue)
    }

    /// Writes `entries` (ascending keys): one insert for one entry, else one atomic batch per
    /// chunk they fall in (a commit spans two chunks once in 4,096 keys; a crash between the
    /// two batches leaves the first, which the memory tier's retry tolerates like any key
    /// already on disk).
    pub(super) fn insert(&self, entries: Vec<(u64, IVec)>) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        if let Some(&(lowest, _)) = entries.first()
            && lowest < state.floor
        {
            // Cannot happen (new keys are above every acknowledged one), but a key below the
            // floor would be invisible: a loss. Lowering the floor costs at worst duplicates.
            tracing::warn!(
                key = lowest,
                floor = state.floor,
                "a reading below the acknowledged floor: lowering it"
            );
            state.floor = lowest;
            self.meta.insert(FLOOR_KEY, &lowest.to_be_bytes())?;
        }
        // Keys of the legacy tree's range go there (cannot happen either: every new key is
        // above it), so that they are where reads look for them.
        let legacy_end = state.legacy_end();
        let entries = match &state.legacy {
            Some((tree, _)) if entries.first().is_some_and(|(k, _)| *k < legacy_end) => {
                let (old, new): (Vec<_>, Vec<_>) =
                    entries.into_iter().partition(|(k, _)| *k < legacy_end);
                for (key, value) in old {
                    tree.insert(key.to_be_bytes(), value)?;
                }
                new
            }
            _ => entries,
        };
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() == 1 {
            let (key, value) = entries.into_iter().next().expect("one entry");
            self.tree(&mut state, chunk_of(key))?
                .insert(key.to_be_bytes(), value)?;
            return Ok(());
        }
        let mut batch: Option<(u64, sled::Batch)> = None;
        for (key, value) in entries {
            let chunk = chunk_of(key);
            if let Some((c, b)) = batch.take_if(|(c, _)| *c != chunk) {
                self.tree(&mut state, c)?.apply_batch(b)?;
            }
            let (_, b) = batch.get_or_insert_with(|| (chunk, sled::Batch::default()));
            b.insert(&key.to_be_bytes(), value);
        }
        if let Some((c, b)) = batch {
            self.tree(&mut state, c)?.apply_batch(b)?;
        }
        Ok(())
    }

    /// The tree of `chunk`, created if it is not there.
    fn tree(&self, state: &mut State, chunk: u64) -> anyhow::Result<sled::Tree> {
        if let Some(tree) = state.chunks.get(&chunk) {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(chunk_name(chunk))?;
        state.chunks.insert(chunk, tree.clone());
        Ok(tree)
    }

    /// The value of `key`, if it is in the queue.
    pub(super) fn get(&self, key: u64) -> anyhow::Result<Option<IVec>> {
        let state = self.state.lock();
        if key < state.floor {
            return Ok(None);
        }
        match state.tree_of(key) {
            Some(tree) => Ok(tree.get(key.to_be_bytes())?),
            None => Ok(None),
        }
    }

    /// Removes `key` itself (quarantine, out-of-order acknowledgements); its value if it was in
    /// the queue.
    pub(super) fn remove(&self, key: u64) -> anyhow::Result<Option<IVec>> {
        let state = self.state.lock();
        if key < state.floor {
            return Ok(None);
        }
        match state.tree_of(key) {
            Some(tree) => Ok(tree.remove(key.to_be_bytes())?),
            None => Ok(None),
        }
    }

    /// Calls `f` with the queue's entries with keys in `start..end` in order, and the tree each
    /// is in, until it returns false. `f` may call [`Queue::remove`]. The trees are taken one
    /// at a time (a big backlog has hundreds), each within its own chunk's keys.
    pub(super) fn scan(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&sled::Tree, IVec, IVec) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut from = start;
        let legacy = {
            let state = self.state.lock();
            from = from.max(state.floor);
            state.legacy.clone()
        };
        if let Some((tree, legacy_end)) = legacy {
            let hi = end.min(legacy_end);
            if from < hi {
                for kv in tree.range(from.to_be_bytes()..hi.to_be_bytes()) {
                    let (k, v) = kv?;
                    if !f(&tree, k, v)? {
                        return Ok(());
                    }
                }
            }
            if hi == end {
                return Ok(());
            }
            from = from.max(legacy_end);
        }
        loop {
            let next = {
                let state = self.state.lock();
                from = from.max(state.floor);
                let chunk = state.chunks.range(chunk_of(from)..).next();
                chunk.map(|(&c, t)| (c, t.clone()))
            };
            let Some((chunk, tree)) = next else {
                return Ok(());
            };
            let own = chunk_keys(chunk);
            let (lo, hi) = (from.max(own.start), end.min(own.end));
            if lo >= hi {
                return Ok(());
            }
            for kv in tree.range(lo.to_be_bytes()..hi.to_be_bytes()) {
                let (k, v) = kv?;
                if !f(&tree, k, v)? {
                    return Ok(());
                }
            }
            if hi == end {
                return Ok(());
            }
            from = hi;
        }
    }

    /// Removes an entry whose key is not one of ours from `tree` (quarantine).
    pub(super) fn remove_raw(tree: &sled::Tree, k: &[u8]) -> anyhow::Result<()> {
        tree.remove(k)?;
        Ok(())
    }

    /// The oldest entry.
    pub(super) fn first(&self) -> anyhow::Result<Option<(IVec, IVec)>> {
        let mut first = None;
        self.scan(0, u64::MAX, |_, k, v| {
            first = Some((k, v));
            Ok(false)
        })?;
        Ok(first)
    }

    /// The newest entry's key, if any.
    pub(super) fn last_key(&self) -> anyhow::Result<Option<u64>> {
        let state = self.state.lock();
        for (&chunk, tree) in state.chunks.iter().rev() {
            let own = chunk_keys(chunk);
            let range = own.start.to_be_bytes()..own.end.to_be_bytes();
            if let Some((k, _)) = tree.range(range).next_back().transpose()? {
                let key = key_of(&k)?;
                return Ok((key >= state.floor).then_some(key));
            }
        }
        match &state.legacy {
            Some((tree, _)) => match tree.last()? {
                Some((k, _)) => {
                    let key = key_of(&k)?;
                    Ok((key >= state.floor).then_some(key))
                }
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// How many entries there are: one pass over the keys, `tick` every 100,000.
    pub(super) fn count(&self, tick: impl Fn()) -> anyhow::Result<u64> {
        let mut n = 0u64;
        self.scan(0, u64::MAX, |_, _, _| {
            n += 1;
            if n.is_multiple_of(100_000) {
                tick();
            }
            Ok(true)
        })?;
        Ok(n)
    }

    /// Every entry, for copying a damaged store's survivors.
    pub(super) fn all(
        &self,
        mut f: impl FnMut(IVec, IVec) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        self.scan(0, u64::MAX, |_, k, v| f(k, v))
    }
}

#[cfg(test)]
impl Queue {
    /// How many chunk trees are open.
    pub(super) fn chunk_count(&self) -> usize {
        self.state.lock().chunks.len()
    }
}
