//! The chunked store when its own bytes are damaged or hostile (found by review): a bad floor,
//! a key in the wrong chunk's tree or of the wrong length, a count saved before conversion,
//! and a front that never gets acknowledged. None may lose or hide a reading.

use std::path::Path;

use super::{raw, record};
use crate::outbox::backend::Backend;
use crate::outbox::store::{self, Store};
use crate::outbox::{Entry, Outbox};

/// The name of the chunk tree of `key` with the unit tests' 16 keys per chunk.
fn chunk_tree(key: u64) -> String {
    format!("outbox.{:016x}", key >> 4)
}

fn fill(path: &Path, keys: &[u64]) {
    let opened = store::open(path).unwrap();
    let batch: Vec<Entry> = keys.iter().map(|&k| (k, record(k))).collect();
    let next = keys.last().unwrap() + 1;
    opened.store.write(&batch, next, false).unwrap();
    opened.store.sync(next).unwrap();
}

fn all_keys(store: &Store) -> Vec<u64> {
    let mut out = Vec::new();
    store.read(0, u64::MAX, 10_000, &mut out).unwrap();
    out.iter().map(|(k, _)| *k).collect()
}

fn set_meta(path: &Path, key: &str, value: &[u8]) {
    let db = raw(path);
    db.open_tree("meta").unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_floor_above_every_key_handed_out_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    fill(&path, &(1_000_000..1_000_100).collect::<Vec<_>>());
    set_meta(&path, "acked_below", &(1u64 << 62).to_be_bytes());
    let opened = store::open(&path).unwrap();
    assert_eq!(
        opened.stored, 100,
        "readings hidden or dropped by a damaged floor"
    );
    assert_eq!(
        all_keys(&opened.store),
        (1_000_000..1_000_100).collect::<Vec<_>>()
    );
}

#[test]
fn a_floor_that_does_not_decode_is_ignored_not_taken_for_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    fill(&path, &(1_000_000..1_000_100).collect::<Vec<_>>());
    set_meta(&path, "acked_below", b"xx");
    let outbox = Outbox::open(&path, 1000).unwrap();
    assert_eq!(outbox.depth(), 100);
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "the store was moved aside");
}

#[test]
fn a_key_of_the_wrong_length_in_a_chunk_tree_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    fill(&path, &(1_000_000..1_000_010).collect::<Vec<_>>());
    {
        let db = raw(&path);
        let mut k = 1_000_004u64.to_be_bytes().to_vec();
        k.push(0);
        let tree = db.open_tree(chunk_tree(1_000_004)).unwrap();
        tree.insert(k, b"junk".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let outbox = Outbox::open(&path, 1000).unwrap();
    let got = outbox.read_after(None, 100);
    assert_eq!(got.len(), 10);
    assert!(!outbox.is_degraded());
    assert_eq!(outbox.depth(), 10);
}

#[test]
fn a_key_in_another_chunks_tree_neither_comes_out_of_order_nor_lifts_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let mut keys: Vec<u64> = (1_000_000..1_000_006).collect();
    keys.extend(1_000_100..1_000_106);
    fill(&path, &keys);
    {
        let db = raw(&path);
        let v = store::encode(&record(1_000_200));
        let tree = db.open_tree(chunk_tree(1_000_000)).unwrap();
        tree.insert(1_000_200u64.to_be_bytes(), v).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("next_seq", &1_000_201u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let opened = store::open(&path).unwrap();
    let store = opened.store;
    let mut page = Vec::new();
    store.read(0, u64::MAX, 7, &mut page).unwrap();
    let sent: Vec<u64> = page.iter().map(|(k, _)| *k).collect();
    assert_eq!(sent, [&keys[..6], &keys[6..7]].concat());
    store.remove(&sent).unwrap();
    assert_eq!(all_keys(&store), keys[7..]);
}

#[test]
fn a_count_saved_by_an_older_telemetryd_with_a_bad_key_ends_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let entries: Vec<Entry> = (0..10u64).map(|k| (1_000_000 + k, record(k))).collect();
    {
        let db = raw(&path);
        let legacy = db.open_tree("outbox").unwrap();
        for (k, r) in &entries {
            legacy.insert(k.to_be_bytes(), store::encode(r)).unwrap();
        }
        let mut bad = 1_000_004u64.to_be_bytes().to_vec();
        bad.push(0);
        legacy.insert(bad, b"junk".as_slice()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("next_seq", &1_000_010u64.to_be_bytes())
            .unwrap();
        // What the telemetryd before chunks saved at a clean close: 11 keys.
        let mut v = Vec::new();
        for n in [11u64, 1_000_000, 1_000_009, 1_000_010] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        meta.insert("count_at_close", v).unwrap();
        db.flush().unwrap();
    }
    let outbox = Outbox::open(&path, 1000).unwrap();
    let keys: Vec<u64> = outbox
        .read_after(None, 100)
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(keys.len(), 10);
    assert_eq!(
        outbox.depth(),
        10,
        "the key moved to quarantine is still counted"
    );
    outbox.remove(&keys, outbox.generation());
    assert_eq!(outbox.depth(), 0);
}

/// The oldest reading of each batch refused for good (an ACL on one sensor), the rest
/// acknowledged: the floor must still come up, or chunk trees pile up for good.
#[test]
fn a_refused_reading_at_the_front_does_not_pin_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let opened = store::open(&dir.path().join("buf")).unwrap();
    let store = opened.store;
    let base = 1_000_000u64;
    for i in 0..200u64 {
        let keys: Vec<u64> = (base + 16 * i..base + 16 * i + 16).collect();
        let batch: Vec<Entry> = keys.iter().map(|&k| (k, record(k))).collect();
        store.write(&batch, keys[15] + 1, false).unwrap();
        // As the feeder does: the acks first, then the refusal is quarantined.
        assert_eq!(store.remove(&keys[1..]).unwrap().len(), 15);
        assert!(store.quarantine(keys[0]).unwrap());
    }
    assert!(
        store.chunk_trees() < 3,
        "{} chunk trees left",
        store.chunk_trees()
    );
    assert!(all_keys(&store).is_empty());
}

/// An MQTT 5 broker that refuses every reading (an ACL on every topic): nothing is ever
/// acknowledged, and the quarantined readings' trees must still go.
#[test]
fn readings_all_refused_leave_no_trees_behind() {
    let dir = tempfile::tempdir().unwrap();
    let opened = store::open(&dir.path().join("buf")).unwrap();
    let store = opened.store;
    for i in 0..200u64 {
        let keys: Vec<u64> = (1_000_000 + 16 * i..1_000_000 + 16 * i + 16).collect();
        let batch: Vec<Entry> = keys.iter().map(|&k| (k, record(k))).collect();
        store.write(&batch, keys[15] + 1, false).unwrap();
        for k in keys {
            assert!(store.quarantine(k).unwrap());
        }
    }
    assert!(
        store.chunk_trees() < 3,
        "{} chunk trees left",
        store.chunk_trees()
    );
    assert_eq!(store.quarantined().unwrap(), 3200);
}

/// Tree names for chunks whose keys would not fit in a u64 are not chunks of ours: neither a
/// panic (the store taken for damaged) nor keys served outside their chunk.
#[test]
fn trees_named_for_chunks_beyond_the_keys_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    fill(&path, &(1_000_000..1_000_010).collect::<Vec<_>>());
    {
        let db = raw(&path);
        db.open_tree("outbox.ffffffffffffffff").unwrap();
        let wraps = db.open_tree("outbox.1000000000000000").unwrap();
        wraps
            .insert(2_000_000u64.to_be_bytes(), store::encode(&record(7)))
            .unwrap();
        db.flush().unwrap();
    }
    let outbox = Outbox::open(&path, 1000).unwrap();
    assert_eq!(outbox.depth(), 10);
    let keys: Vec<u64> = outbox
        .read_after(None, 100)
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(keys, (1_000_000..1_000_010).collect::<Vec<_>>());
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "the store was moved aside");
}
