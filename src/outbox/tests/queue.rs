//! The sled store's chunk trees and acknowledged-up-to floor against a plain ordered map: any
//! mix of commits, acknowledgements (in any order, with keys that are not there), quarantine,
//! drops at the bound and reopening reads back exactly what the map holds.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{read_all, record};
use crate::outbox::backend::Backend;
use crate::outbox::store::{self, Store};
use crate::outbox::{Entry, Record};

#[derive(Debug, Clone)]
enum Op {
    /// Writes this many readings, each `gap` keys after the last (QoS 0 readings take keys
    /// too), and syncs.
    Commit(usize, u64),
    /// Acknowledges these of the stored keys (front-heavy when `front`), plus keys that are
    /// not stored, in this order.
    Ack(Vec<prop::sample::Index>, bool, Vec<u64>),
    Quarantine(prop::sample::Index),
    Pop(usize),
    /// Closes cleanly (the saved count) or not, and opens again.
    Reopen(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..40, 1u64..40).prop_map(|(n, gap)| Op::Commit(n, gap)),
        5 => (prop::collection::vec(any::<prop::sample::Index>(), 0..30), any::<bool>(), prop::collection::vec(0u64..3000, 0..3))
            .prop_map(|(i, front, absent)| Op::Ack(i, front, absent)),
        1 => any::<prop::sample::Index>().prop_map(Op::Quarantine),
        1 => (1usize..20).prop_map(Op::Pop),
        1 => any::<bool>().prop_map(Op::Reopen),
    ]
}

fn check(store: &Store, model: &BTreeMap<u64, Record>, page: usize) -> Result<(), TestCaseError> {
    let want: Vec<Entry> = model.iter().map(|(k, r)| (*k, r.clone())).collect();
    prop_assert_eq!(read_all(store, page), want.clone());
    prop_assert_eq!(store.first().unwrap(), want.first().cloned());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_holds_what_a_map_would(
        ops in prop::collection::vec(op(), 1..40),
        page in 1usize..20,
        legacy in prop::option::of(1u64..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let mut model: BTreeMap<u64, Record> = BTreeMap::new();
        if let Some(n) = legacy {
            // A store an older telemetryd left (one tree, and a key that is not ours).
            let old: Vec<Entry> = (0..n).map(|i| (900_000 + 3 * i, record(i))).collect();
            Store::write_legacy(&path, &old, 1_000_000);
            model.extend(old);
        }
        let mut opened = store::open(&path).unwrap();
        let mut next = 1_000_000u64;
        for op in ops {
            let store = opened.store.clone();
            match op {
                Op::Commit(n, gap) => {
                    let batch: Vec<Entry> = (0..n).map(|i| next + i as u64 * gap).map(|k| (k, record(k))).collect();
                    next += n as u64 * gap;
                    prop_assert_eq!(store.write(&batch, next, false).unwrap(), n as u64);
                    store.sync(next).unwrap();
                    model.extend(batch);
                }
                Op::Ack(picks, front, absent) => {
                    let stored: Vec<u64> = model.keys().copied().collect();
                    let mut keys: Vec<u64> = Vec::new();
                    if !stored.is_empty() {
                        for (i, pick) in picks.iter().enumerate() {
                            // Front-heavy: mostly the oldest keys, as PUBACKs come in order.
                            let k = if front { stored[pick.index(stored.len().min(i + 2))] } else { *pick.get(&stored) };
                            keys.push(k);
                        }
                    }
                    keys.extend(absent.iter().map(|a| next + a)); // never stored
                    let mut present = store.remove(&keys).unwrap();
                    present.sort_unstable();
                    let mut want: Vec<u64> = keys.iter().copied().filter(|k| model.contains_key(k)).collect();
                    want.sort_unstable();
                    want.dedup();
                    prop_assert_eq!(present, want.clone());
                    for k in want {
                        model.remove(&k);
                    }
                }
                Op::Quarantine(pick) => {
                    if model.is_empty() {
                        continue;
                    }
                    let key = *pick.get(&model.keys().copied().collect::<Vec<_>>());
                    prop_assert!(store.quarantine(key).unwrap());
                    prop_assert!(!store.quarantine(key).unwrap());
                    model.remove(&key);
                }
                Op::Pop(n) => {
                    for _ in 0..n {
                        prop_assert_eq!(store.pop_oldest().unwrap(), model.pop_first().is_some());
                    }
                }
                Op::Reopen(clean) => {
                    if clean {
                        store.save_count(model.len() as u64, next).unwrap();
                    }
                    store.sync(next).unwrap();
                    drop(store);
                    drop(opened);
                    opened = store::open(&path).unwrap();
                    prop_assert_eq!(opened.stored, model.len() as u64);
                    prop_assert_eq!(opened.last, model.keys().next_back().copied().unwrap_or(0));
                    if opened.from_close {
                        // As the daemon does before its first change.
                        opened = store::for_writing_test(opened);
                    }
                }
            }
            check(&opened.store, &model, page)?;
            for (k, r) in model.iter().take(3) {
                prop_assert!(opened.store.holds(*k, r).unwrap());
            }
        }
    }
}

/// Acknowledgements in order take whole chunk trees away (their pages freed together), instead
/// of removing key after key.
#[test]
fn acknowledged_chunks_are_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opened = store::open(&dir.path().join("buf")).unwrap();
    let store = opened.store;
    let batch: Vec<Entry> = (0..200u64).map(|k| (1_000_000 + k, record(k))).collect();
    store.write(&batch, 1_000_200, false).unwrap();
    let full = store.chunk_trees();
    assert!(full >= 12, "{full} chunk trees for 200 keys");
    let keys: Vec<u64> = batch.iter().map(|(k, _)| *k).collect();
    for acked in keys[..150].chunks(10) {
        assert_eq!(store.remove(acked).unwrap(), acked);
    }
    assert!(
        store.chunk_trees() <= full - 9,
        "{} of {full} chunk trees left",
        store.chunk_trees()
    );
    let mut rest = Vec::new();
    store.read(0, u64::MAX, 100, &mut rest).unwrap();
    assert_eq!(rest, batch[150..]);
}

/// A store an older telemetryd wrote (one tree) is served where it is: every reading kept and
/// in order before new ones, a key that is not one of ours quarantined, and the old tree
/// dropped once its readings are acknowledged.
#[test]
fn a_store_from_before_chunks_is_served_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let batch: Vec<Entry> = (0..100u64)
        .map(|k| (5_000_000 + 3 * k, record(k)))
        .collect();
    Store::write_legacy(&path, &batch, 5_000_300);
    let opened = store::open(&path).unwrap();
    assert_eq!(
        (opened.stored, opened.last, opened.saved_seq),
        (100, 5_000_297, 5_000_300)
    );
    assert_eq!(read_all(&opened.store, 7), batch);
    assert_eq!(opened.store.quarantined().unwrap(), 1);
    let newer: Vec<Entry> = (0..40u64).map(|k| (5_000_300 + k, record(k))).collect();
    opened.store.write(&newer, 5_000_340, false).unwrap();
    drop(opened);
    let opened = store::open(&path).unwrap();
    assert_eq!(opened.stored, 140);
    assert_eq!(
        read_all(&opened.store, 100),
        [batch.clone(), newer.clone()].concat()
    );
    let keys: Vec<u64> = batch.iter().map(|(k, _)| *k).collect();
    for acked in keys.chunks(9) {
        assert_eq!(opened.store.remove(acked).unwrap(), acked);
    }
    assert_eq!(read_all(&opened.store, 7), newer);
    drop(opened);
    assert!(!Store::has_legacy(&path), "the old tree is still there");
    let opened = store::open(&path).unwrap();
    assert_eq!(opened.stored, 40);
    assert_eq!(read_all(&opened.store, 100), newer);
}
