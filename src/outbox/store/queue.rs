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

use super::record::key_of;
use super::{COUNT_KEY, NEXT_SEQ_KEY};

/// Keys per chunk tree: 4,096 (16 in unit tests, so that chunks turn over in small tests).
/// A tree costs a root page and a name in sled's meta; dropping it frees its pages at once.
const CHUNK_BITS: u32 = if cfg!(test) { 4 } else { 12 };
/// Chunk trees' names: this, then the chunk's number in 16 lowercase hex digits.
const CHUNK_PREFIX: &[u8] = b"outbox.";
/// The single tree of telemetryd before chunks, served until it is empty.
pub(super) const LEGACY_TREE: &[u8] = b"outbox";
/// In the `meta` tree: the floor (a big-endian `u64`).
const FLOOR_KEY: &[u8] = b"acked_below";

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

fn chunk_of(key: u64) -> u64 {
    key >> CHUNK_BITS
}

/// The keys of `chunk`'s tree: a key a damaged store holds in another chunk's tree is not in
/// the queue (it would come out of order).
fn chunk_keys(chunk: u64) -> std::ops::Range<u64> {
    chunk << CHUNK_BITS..(chunk + 1).saturating_mul(1 << CHUNK_BITS)
}

fn chunk_name(chunk: u64) -> Vec<u8> {
    let mut name = CHUNK_PREFIX.to_vec();
    name.extend_from_slice(format!("{chunk:016x}").as_bytes());
    name
}

/// The chunk a tree's name stands for: exactly the names [`chunk_name`] makes, so that no two
/// names (a hostile store's) stand for one chunk.
fn chunk_number(name: &[u8]) -> Option<u64> {
    let hex = name.strip_prefix(CHUNK_PREFIX)?;
    if hex.len() != 16 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let chunk = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    // Beyond it, a chunk's first key does not fit in a u64.
    (chunk <= u64::MAX >> CHUNK_BITS).then_some(chunk)
}

/// The floor saved in `meta`, if it can be believed. Every key ever handed out is below the
/// saved `next_seq`, so a floor above it (or one that does not decode) is damage that would
/// hide, then drop, readings never sent: it is taken as 0 instead (at worst, acknowledged
/// readings are sent again).
fn read_floor(meta: &sled::Tree) -> anyhow::Result<u64> {
    let Some(v) = meta.get(FLOOR_KEY)? else {
        return Ok(0);
    };
    let next_seq = meta.get(NEXT_SEQ_KEY)?.and_then(|v| key_of(&v).ok());
    match (key_of(&v).ok(), next_seq) {
        (Some(floor), Some(next_seq)) if floor <= next_seq => Ok(floor),
        (floor, next_seq) => {
            tracing::error!(
                ?floor,
                ?next_seq,
                "the store's acknowledged-up-to mark is damaged: ignoring it (acknowledged readings may be sent again)"
            );
            meta.remove(FLOOR_KEY)?;
            Ok(0)
        }
    }
}

/// The legacy tree, made fit to serve in place, and the key after its last; `None` once it is
/// empty (then dropped). One pass over it at each open while it holds readings (an upgrade's
/// backlog being sent): keys that are not ours go to `quarantine` (and the count saved at
/// close, which counted them, is forgotten), so that every key left is a reading below every
/// chunk's. If a chunk holds a key below its last (an older telemetryd ran on this store after
/// a newer one, and wrote there), the legacy readings are moved into chunks instead, one by one.
fn open_legacy(
    db: &sled::Db,
    meta: &sled::Tree,
    quarantine: &sled::Tree,
    floor: u64,
) -> anyhow::Result<Option<(sled::Tree, u64)>> {
    let tree = db.open_tree(LEGACY_TREE)?;
    let mut last = None;
    let mut bad = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        match key_of(&k) {
            Ok(key) => last = Some(key),
            Err(_) => bad.push((k, v)),
        }
    }
    for (k, v) in bad.drain(..) {
        tracing::error!(key = ?k.as_ref(), "moved an undecodable reading to the store's quarantine tree");
        quarantine.insert(&k, v)?;
        tree.remove(&k)?;
        meta.remove(COUNT_KEY)?;
    }
    let end = match last {
        Some(key) if key >= floor => key + 1,
        _ => {
            // Empty, or every key below the floor (acknowledged).
            drop(tree);
            db.drop_tree(LEGACY_TREE)?;
            return Ok(None);
        }
    };
    let mut mixed = false;
    for name in db.tree_names() {
        if let Some(c) = chunk_number(&name)
            && chunk_keys(c).start < end
        {
            let t = db.open_tree(&name)?;
            mixed |= t
                .range(floor.to_be_bytes()..end.to_be_bytes())
                .next()
                .is_some();
        }
    }
    if !mixed {
        return Ok(Some((tree, end)));
    }
    tracing::warn!(
        "the store holds readings of two layouts (an older telemetryd ran on it): moving the older ones into the newer"
    );
    for kv in tree.iter() {
        let (k, v) = kv?;
        let key = key_of(&k)?;
        let chunk = db.open_tree(chunk_name(chunk_of(key)))?;
        chunk.insert(&k, v)?;
        crate::service::still_starting();
    }
    drop(tree);
    db.drop_tree(LEGACY_TREE)?;
    Ok(None)
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

    /// Takes acknowledged `keys` out of the queue; returns those that were in it.
    ///
    /// In the chunk being written to (a short queue: the steady state), keys are removed one by
    /// one, which keeps its leaves small: leaving them for the floor made sled rewrite leaves
    /// full of acknowledged readings, +30% bytes written per reading at 1,000/s. In older
    /// chunks (a backlog draining) the front's keys stay where they are and the floor passes
    /// them, one write for the batch, and their trees are dropped whole. The floor is also
    /// written when it enters a later chunk, so emptied trees go.
    pub(super) fn acknowledge(&self, keys: &[u64]) -> anyhow::Result<Vec<u64>> {
        let mut acked = keys.to_vec();
        acked.sort_unstable();
        acked.dedup();
        let mut present = Vec::with_capacity(acked.len());
        let Some(&highest) = acked.last() else {
            return Ok(present);
        };
        let (floor, newest, legacy_end) = {
            let state = self.state.lock();
            let newest = state.chunks.last_key_value().map(|(&c, _)| c);
            (state.floor, newest.unwrap_or(0), state.legacy_end())
        };
        // The front: the entries from the floor on while each is acknowledged. The scan stops
        // at the first one that is not (still in flight), so it reads at most the batch and one.
        let mut next = acked.partition_point(|&k| k < floor);
        let mut new_floor = floor;
        let mut left_below = false;
        let mut removed = Vec::new();
        self.scan(floor, highest.saturating_add(1), |tree, k, _| {
            let Ok(key) = key_of(&k) else {
                return Ok(false); // not one of ours: the next read quarantines it
            };
            while next < acked.len() && acked[next] < key {
                next += 1; // acknowledged but not in the queue
            }
            if next < acked.len() && acked[next] == key {
                present.push(key);
                if key < legacy_end || chunk_of(key) == newest {
                    removed.push((tree.clone(), k));
                } else {
                    left_below = true;
                }
                new_floor = key + 1;
                next += 1;
                Ok(next < acked.len())
            } else {
                // Still in flight, or refused and held: nothing is left below it, so the floor
                // may come up to it (else one held reading would pin the floor for good).
                new_floor = key;
                Ok(false)
            }
        })?;
        for (tree, k) in removed {
            tree.remove(k)?;
        }
        // The rest, behind an entry still in flight: one by one.
        for &key in acked[next..].iter().filter(|&&k| k >= new_floor) {
            if self.remove(key)?.is_some() {
                present.push(key);
            }
        }
        if left_below || chunk_of(new_floor) > chunk_of(floor) {
            self.raise_floor(new_floor)?;
        }
        if present.first().is_some_and(|&k| k < legacy_end) {
            self.drop_legacy_if_empty()?;
        }
        Ok(present)
    }

    /// Drops the oldest entry; false if there is none.
    pub(super) fn pop_first(&self) -> anyhow::Result<bool> {
        let Some((k, _)) = self.first()? else {
            return Ok(false);
        };
        self.raise_floor(key_of(&k)? + 1)?;
        Ok(true)
    }

    fn raise_floor(&self, floor: u64) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        if floor <= state.floor {
            return Ok(());
        }
        self.meta.insert(FLOOR_KEY, &floor.to_be_bytes())?;
        state.floor = floor;
        self.drop_below_floor(&mut state)
    }

    /// Drops the chunk trees wholly below the floor, after the floor itself was written (sled
    /// recovers a prefix of its log, so a crash in between leaves the floor and some trees).
    /// Drops the legacy tree once it holds nothing (its last readings acknowledged).
    fn drop_legacy_if_empty(&self) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        if state
            .legacy
            .as_ref()
            .is_some_and(|(tree, _)| tree.is_empty())
        {
            state.legacy = None;
            self.db.drop_tree(LEGACY_TREE)?;
        }
        Ok(())
    }

    fn drop_below_floor(&self, state: &mut State) -> anyhow::Result<()> {
        if state
            .legacy
            .as_ref()
            .is_some_and(|(_, end)| *end <= state.floor)
        {
            state.legacy = None;
            self.db.drop_tree(LEGACY_TREE)?;
        }
        while let Some((&chunk, _)) = state.chunks.first_key_value() {
            if chunk_keys(chunk).end > state.floor {
                break;
            }
            state.chunks.remove(&chunk);
            self.db.drop_tree(chunk_name(chunk))?;
        }
        Ok(())
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
