//! A store from before chunks served where it is, when it holds keys that are not ours or an
//! older telemetryd wrote to it after a newer one (found by review).

use std::path::Path;

use super::{keys, raw, read_all, record};
use crate::outbox::Entry;
use crate::outbox::backend::Backend;
use crate::outbox::store::{self, Store};

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

/// An older telemetryd's store of 10 readings (100..110) with a key that is not ours after the
/// last and one among them ([`Store::write_legacy`]).
fn old_store_with_a_bad_last_key(path: &Path) -> Vec<Entry> {
    let old: Vec<Entry> = (0..10u64).map(|i| (100 + i, record(i))).collect();
    Store::write_legacy(path, &old, 110);
    let db = raw(path);
    let legacy = db.open_tree("outbox").unwrap();
    legacy.insert(b"bad", b"junk".as_slice()).unwrap();
    db.flush().unwrap();
    old
}

/// A key that is not ours after the last reading is quarantined, not dropped with the tree.
#[test]
fn a_bad_key_after_an_old_stores_last_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let old = old_store_with_a_bad_last_key(&path);
    let opened = store::open(&path).unwrap();
    assert_eq!(read_all(&opened.store, 100), old);
    assert_eq!(opened.store.quarantined().unwrap(), 2);
}

/// Through the daemon's open: a key that is not ours never gets the store taken for damaged.
#[test]
fn an_old_store_with_a_bad_key_is_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let old = old_store_with_a_bad_last_key(&path);
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
