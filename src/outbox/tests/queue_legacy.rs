//! A store from before chunks served where it is, when it holds keys that are not ours or an
//! older telemetryd wrote to it after a newer one (found by review).

use std::path::Path;
use std::time::{Duration, Instant};

use super::record;
use crate::outbox::Entry;
use crate::outbox::backend::Backend;
use crate::outbox::store::{self, Store};

fn raw(path: &Path) -> sled::Db {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if Instant::now() > give_up => panic!("{e}"),
            // A retry pause while sled's threads let go of the lock, not a synchronisation.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn read_all(store: &Store, page: usize) -> Vec<Entry> {
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

fn keys(e: &[Entry]) -> Vec<u64> {
    e.iter().map(|(k, _)| *k).collect()
}

/// A wrong-length key sorting before the first reading of a legacy tree: quarantined at open,
/// not taken for damage.
#[test]
fn a_bad_first_key_in_an_old_store_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let batch: Vec<Entry> = (0..10u64).map(|i| (900_000 + i, record(i))).collect();
    Store::write_legacy(&path, &batch, 1_000_000);
    {
        let db = raw(&path);
        db.open_tree("outbox")
            .unwrap()
            .insert([0u8; 9], b"junk".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let opened = store::open(&path);
    assert!(opened.is_ok(), "open failed: {:#}", opened.err().unwrap());
}

/// Chunked store with readings, then an older telemetryd (a rollback) adds readings above them
/// in `outbox`: none may be hidden, and they come out in key order.
#[test]
fn readings_of_both_layouts_are_all_served_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let newer: Vec<Entry> = (0..20u64).map(|k| (1_000_000 + k, record(k))).collect();
    {
        let opened = store::open(&path).unwrap();
        opened.store.write(&newer, 1_000_020, false).unwrap();
        opened.store.sync(1_000_020).unwrap();
    }
    let older_daemon: Vec<Entry> = (20..30u64).map(|k| (1_000_000 + k, record(k))).collect();
    Store::write_legacy(&path, &older_daemon, 1_000_030);
    let opened = store::open(&path).unwrap();
    let got = read_all(&opened.store, 7);
    assert_eq!(
        keys(&got),
        keys(&[newer, older_daemon].concat()),
        "stored {}",
        opened.stored
    );
}

/// A key that is not ours after the last reading is quarantined, not dropped with the tree.
#[test]
fn a_bad_key_after_an_old_stores_last_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let old: Vec<Entry> = (0..10u64).map(|i| (100 + i, record(i))).collect();
    Store::write_legacy(&path, &old, 110);
    {
        let db = raw(&path);
        db.open_tree("outbox")
            .unwrap()
            .insert(b"bad", b"junk".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let opened = store::open(&path).unwrap();
    read_all(&opened.store, 100);
    assert_eq!(opened.store.quarantined().unwrap(), 2);
}

/// Through the daemon's open: a key that is not ours never gets the store taken for damaged.
#[test]
fn an_old_store_with_a_bad_key_is_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let old: Vec<Entry> = (0..10u64).map(|i| (100 + i, record(i))).collect();
    Store::write_legacy(&path, &old, 110);
    {
        let db = raw(&path);
        db.open_tree("outbox")
            .unwrap()
            .insert(b"bad", b"junk".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let newer: Vec<Entry> = (110..114u64).map(|k| (k, record(k))).collect();
    {
        let opened = store::open(&path).unwrap();
        read_all(&opened.store, 100);
        opened.store.remove(&keys(&old[..6])).unwrap();
        opened.store.remove(&keys(&old[6..])).unwrap();
        opened.store.write(&newer, 114, false).unwrap();
        opened.store.sync(114).unwrap();
    }
    let outbox = crate::outbox::Outbox::open(&path, 1000).unwrap();
    let got: Vec<u64> = outbox
        .read_after(None, 100)
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(got, keys(&newer), "dir: {aside:?}");
}
