//! Taking readings out of the queue: acknowledgements, the floor they raise, and the trees
//! dropped behind it.

use super::super::record::key_of;
use super::floor::FLOOR_KEY;
use super::keys::{chunk_keys, chunk_name, chunk_of};
use super::legacy::LEGACY_TREE;
use super::{Queue, State};

impl Queue {
    /// Takes acknowledged `keys` out of the queue; returns those that were in it.
    ///
    /// In the chunk being written to (a short queue: the steady state), keys are removed one by
    /// one, which keeps its leaves small: leaving them for the floor made sled rewrite leaves
    /// full of acknowledged readings, +30% bytes written per reading at 1,000/s. In older
    /// chunks (a backlog draining) the front's keys stay where they are and the floor passes
    /// them, one write for the batch, and their trees are dropped whole. The floor is also
    /// written when it enters a later chunk, so emptied trees go.
    pub(in crate::outbox::store) fn acknowledge(&self, keys: &[u64]) -> anyhow::Result<Vec<u64>> {
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
    pub(in crate::outbox::store) fn pop_first(&self) -> anyhow::Result<bool> {
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

    pub(super) fn drop_below_floor(&self, state: &mut State) -> anyhow::Result<()> {
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
}
