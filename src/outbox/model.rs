//! A model of the store tier that fails on demand, for the outbox's property test
//! (`tests/model.rs`): the two tiers without sled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::backend::Backend;
use super::store::{OpenError, Opened};
use super::{Entry, Record};

/// What a store call can be made to do wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fault {
    Write,
    /// The flush fails; `lost`: what it wrote since the last sync is not on disk.
    Sync {
        lost: bool,
    },
    Read,
    Remove,
    Pop,
}

#[derive(Default)]
pub(super) struct Disk {
    pub(super) data: BTreeMap<u64, Record>,
    pub(super) quarantine: BTreeMap<u64, Record>,
    /// Keys whose bytes went bad on disk: a read moves them to quarantine, as sled's does with
    /// a record that does not decode.
    pub(super) corrupt: BTreeSet<u64>,
    pub(super) next_seq: u64,
    /// Keys written since the last sync (a failed sync can lose them).
    unsynced: Vec<u64>,
    pub(super) fault: Option<Fault>,
    pub(super) open_fails: bool,
    /// Bumped by every open: a handle of an older one must never be used again.
    epoch: u64,
}

impl Disk {
    fn hit(&mut self, f: Fault) -> anyhow::Result<()> {
        let hit = match (self.fault, f) {
            (Some(Fault::Sync { lost }), Fault::Sync { .. }) => {
                if lost {
                    for k in std::mem::take(&mut self.unsynced) {
                        self.data.remove(&k);
                    }
                }
                true
            }
            (Some(armed), f) => armed == f,
            (None, _) => false,
        };
        if hit {
            self.fault = None;
            anyhow::bail!("injected {f:?} failure");
        }
        Ok(())
    }
}

#[derive(Clone)]
pub(super) struct Model {
    disk: Arc<Mutex<Disk>>,
    epoch: u64,
}

impl Model {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        let disk = self.disk.lock().unwrap();
        assert_eq!(
            disk.epoch, self.epoch,
            "a handle used after the store was reopened"
        );
        disk
    }
}

impl Backend for Model {
    type Source = Arc<Mutex<Disk>>;

    fn open(source: &Self::Source) -> Result<Opened<Self>, OpenError> {
        let mut disk = source.lock().unwrap();
        if disk.open_fails {
            return Err(OpenError::Unusable(anyhow::anyhow!(
                "injected open failure"
            )));
        }
        disk.epoch += 1;
        disk.unsynced.clear();
        Ok(Opened {
            store: Model {
                disk: source.clone(),
                epoch: disk.epoch,
            },
            stored: disk.data.len() as u64,
            from_close: false,
            last: disk.data.keys().next_back().copied().unwrap_or(0),
            saved_seq: disk.next_seq.max(1),
        })
    }
    fn write(&self, entries: &[Entry], next_seq: u64, check: bool) -> anyhow::Result<u64> {
        let mut disk = self.disk();
        disk.hit(Fault::Write)?;
        let mut fresh = 0;
        for (k, r) in entries {
            disk.corrupt.remove(k);
            let existed = disk.data.insert(*k, r.clone()).is_some();
            if !existed {
                disk.unsynced.push(*k);
            }
            if !(check && existed) {
                fresh += 1;
            }
        }
        disk.next_seq = next_seq;
        Ok(fresh)
    }
    fn sync(&self, _saved_seq: u64) -> anyhow::Result<()> {
        let mut disk = self.disk();
        disk.hit(Fault::Sync { lost: false })?;
        disk.unsynced.clear();
        Ok(())
    }
    fn read(&self, start: u64, end: u64, max: usize, out: &mut Vec<Entry>) -> anyhow::Result<u64> {
        let mut disk = self.disk();
        disk.hit(Fault::Read)?;
        let mut quarantined = 0;
        if start < end {
            let keys: Vec<u64> = disk.data.range(start..end).map(|(k, _)| *k).collect();
            for k in keys {
                if out.len() >= max {
                    break;
                }
                if disk.corrupt.remove(&k) {
                    let r = disk.data.remove(&k).expect("a key just listed");
                    disk.quarantine.insert(k, r);
                    quarantined += 1;
                } else {
                    out.push((k, disk.data[&k].clone()));
                }
            }
        }
        Ok(quarantined)
    }
    fn first(&self) -> anyhow::Result<Option<Entry>> {
        Ok(self
            .disk()
            .data
            .first_key_value()
            .map(|(k, r)| (*k, r.clone())))
    }
    fn holds(&self, key: u64, record: &Record) -> anyhow::Result<bool> {
        let disk = self.disk();
        Ok(!disk.corrupt.contains(&key) && disk.data.get(&key) == Some(record))
    }
    fn remove(&self, key: u64) -> anyhow::Result<bool> {
        let mut disk = self.disk();
        disk.hit(Fault::Remove)?;
        disk.corrupt.remove(&key);
        Ok(disk.data.remove(&key).is_some())
    }
    fn quarantine(&self, key: u64) -> anyhow::Result<bool> {
        let mut disk = self.disk();
        disk.hit(Fault::Remove)?;
        disk.corrupt.remove(&key);
        match disk.data.remove(&key) {
            Some(r) => {
                disk.quarantine.insert(key, r);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn pop_oldest(&self) -> anyhow::Result<bool> {
        let mut disk = self.disk();
        disk.hit(Fault::Pop)?;
        let popped = disk.data.pop_first();
        if let Some((k, _)) = &popped {
            disk.corrupt.remove(k);
        }
        Ok(popped.is_some())
    }
    fn save_seq(&self, next_seq: u64) -> anyhow::Result<()> {
        self.disk().next_seq = next_seq;
        Ok(())
    }
    fn save_count(&self, _stored: u64, _next_seq: u64) -> anyhow::Result<()> {
        Ok(())
    }
}
