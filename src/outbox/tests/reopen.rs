//! Opening, closing and reopening: the count saved at a clean close, a store that comes back
//! (and what the memory tier held meanwhile), sled panics, a store in use.

use std::time::{Duration, Instant};

use super::{commit_n, keys, record};
use crate::outbox::backend::Backend;
use crate::outbox::{Outbox, depth_at, seq_floor, store};

#[test]
fn a_clean_close_saves_the_count_and_the_next_open_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 5);
    outbox.remove(&k[..2], outbox.generation());
    outbox.close();
    drop(outbox);
    let opened = store::open(&path).unwrap();
    assert!(opened.from_close, "a clean close saves the count");
    assert_eq!(opened.stored, 3);
    drop(opened);

    // The daemon's open forgets it before anything changes: after a crash (no close),
    // the next open counts the keys.
    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 3);
    // A middle key: the first and last stay, so only forgetting the count (not the check
    // of the store's ends) keeps the next open from trusting it.
    outbox.remove(&k[3..4], outbox.generation());
    drop(outbox);
    let opened = store::open(&path).unwrap();
    assert!(!opened.from_close);
    assert_eq!(opened.stored, 2);
}

/// An older telemetryd that ran on the store in between knows nothing of the saved count,
/// but it changes the store's state: the count is not trusted then.
#[test]
fn a_saved_count_is_ignored_once_the_store_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 4);
    outbox.close();
    drop(outbox);
    let opened = store::open(&path).unwrap();
    assert!(opened.from_close);
    opened.store.remove(k[0]).unwrap();
    opened.store.save_seq(opened.saved_seq + 10).unwrap();
    opened.store.sync(opened.saved_seq + 10).unwrap();
    drop(opened);
    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 3);
}

#[test]
fn memory_readings_move_into_the_store_once_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"").unwrap();
    let path = blocker.join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 3);
    let generation = outbox.generation();

    std::fs::remove_file(&blocker).unwrap();
    outbox.lock().reopen_at = Instant::now();
    outbox.maintain();
    assert!(!outbox.is_degraded());
    assert!(outbox.generation() > generation);
    assert_eq!(keys(&outbox.read_after(None, 10)), k);
    outbox.close();
    drop(outbox);
    assert_eq!(depth_at(&path).unwrap(), 3);
}

/// A store that cannot be opened at start, holding a backlog keyed above the clock (as if
/// the clock went back): the readings taken meanwhile must neither overwrite it nor jump
/// ahead of it.
#[test]
fn a_store_unavailable_at_start_never_overwrites_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let future = seq_floor() + 1_000_000_000;
    let outbox = Outbox::open(&path, 100).unwrap();
    let old: Vec<u64> = (future..future + 5).collect();
    outbox.commit(old.iter().map(|&k| (k, record(k))).collect());
    outbox.close();
    drop(outbox);

    let hidden = dir.path().join("hidden");
    std::fs::rename(&path, &hidden).unwrap();
    std::fs::write(&path, b"not a directory").unwrap();
    let outbox = Outbox::open(&path, 100).unwrap();
    assert!(outbox.is_degraded());
    commit_n(&outbox, 3);
    let generation = outbox.generation();

    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&hidden, &path).unwrap();
    outbox.lock().reopen_at = Instant::now();
    outbox.maintain();
    assert!(!outbox.is_degraded());
    assert!(outbox.generation() > generation);
    let read = outbox.read_after(None, 100);
    assert_eq!(
        keys(&read)[..5],
        old[..],
        "the backlog comes first, untouched"
    );
    assert_eq!(read.len(), 8);
    assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(outbox.depth(), 8);
    outbox.close();
    drop(outbox);
    assert_eq!(depth_at(&path).unwrap(), 8);
}

#[tokio::test]
async fn reopening_the_store_wakes_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"").unwrap();
    let outbox = Outbox::open(&blocker.join("buf"), 100).unwrap();
    std::fs::remove_file(&blocker).unwrap();
    outbox.lock().reopen_at = Instant::now();
    outbox.maintain();
    assert!(!outbox.is_degraded());
    let woken = tokio::time::timeout(Duration::from_secs(5), outbox.new_data.notified()).await;
    assert!(woken.is_ok(), "a reopened store must wake the feeder");
}

/// sled panics on some damaged or failing stores, and not only in `open`. A panic in
/// any call (insert, flush, remove, iteration) must take the store-failed path: the
/// readings stay readable (memory tier or the store once reopened), nothing is lost, and
/// the caller (the committer or the feeder) goes on.
#[test]
fn a_sled_panic_outside_open_fails_the_store_and_loses_nothing() {
    for what in ["insert", "flush", "remove", "iter"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let outbox = Outbox::open(&path, 100).unwrap();
        let mut k = commit_n(&outbox, 3);
        let generation = outbox.generation();
        store::test_faults::panic_next(what);
        match what {
            "insert" | "flush" => k.extend(commit_n(&outbox, 2)),
            "remove" => outbox.remove(&k[..1], generation),
            _ => {
                outbox.read_after(None, 10);
            }
        }
        assert!(outbox.is_degraded(), "{what}: the store is given up");
        assert!(outbox.generation() > generation, "{what}");
        outbox.lock().reopen_at = Instant::now();
        outbox.maintain();
        assert!(!outbox.is_degraded(), "{what}: reopened");
        assert_eq!(keys(&outbox.read_after(None, 10)), k, "{what}");
        assert_eq!(outbox.depth(), k.len() as u64, "{what}");
        outbox.close();
        drop(outbox);
        assert_eq!(depth_at(&path).unwrap(), k.len() as u64, "{what}");
    }
}

#[test]
fn a_store_in_use_is_an_error_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let _held = Outbox::open(&path, 100).unwrap();
    let err = Outbox::open(&path, 100)
        .err()
        .expect("a second open must fail");
    assert!(
        format!("{err:#}").contains("in use by another process"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing moved aside"
    );
}
