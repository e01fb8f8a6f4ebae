//! The two tiers: FIFO order, exact counts, acks and their generation, drops at the bound, the
//! memory tier while the store cannot be written.

use std::sync::atomic::Ordering;

use super::{commit_n, keys, record};
use crate::outbox::tiers::DROP_PER_COMMIT;
use crate::outbox::{Outbox, depth_at};

#[test]
fn keeps_fifo_order_and_sequence_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let mut written = commit_n(&outbox, 3);
    written.extend(commit_n(&outbox, 2));
    assert_eq!(keys(&outbox.read_after(None, 100)), written);
    assert_eq!(keys(&outbox.read_after(Some(written[1]), 2)), written[2..4]);
    drop(outbox);

    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 5);
    let read = outbox.read_after(None, 100);
    assert_eq!(keys(&read), written);
    assert_eq!(read[4].1, record(written[4]));
    assert!(outbox.next_seq() > *written.last().unwrap());
}

#[test]
fn removes_acked_entries_and_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 4);
    outbox.remove(&[k[2], k[0], k[0]], outbox.generation()); // out of order, and a duplicate ack
    assert_eq!(outbox.depth(), 2);
    assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[1], k[3]]);
    outbox.close();
    drop(outbox);
    assert_eq!(depth_at(&path).unwrap(), 2);
}

#[test]
fn sequence_keeps_rising_after_the_store_drains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 3);
    outbox.remove(&k, outbox.generation());
    let qos0_seq = outbox.next_seq(); // a reading that was never stored
    outbox.close();
    drop(outbox);
    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 0);
    assert!(outbox.next_seq() > qos0_seq);
}

#[test]
fn drops_exactly_the_oldest_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 5).unwrap();
    let mut k = commit_n(&outbox, 4);
    k.extend(commit_n(&outbox, 4));
    assert_eq!(outbox.depth(), 5);
    assert_eq!(outbox.dropped(), 3);
    assert_eq!(keys(&outbox.read_after(None, 100)), k[3..]);
}

/// A bound lowered far under the backlog: each commit cuts at most DROP_PER_COMMIT (one
/// commit stays short), the next commits cut the rest, and the counts stay exact.
#[test]
fn a_big_excess_is_cut_over_several_commits_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 1_000_000).unwrap();
    let backlog = DROP_PER_COMMIT + 10_000;
    let mut k = Vec::new();
    while (k.len() as u64) < backlog {
        k.extend(commit_n(&outbox, 10_000));
    }
    assert_eq!(k.len() as u64, backlog);
    outbox.set_max_messages(10);
    k.extend(commit_n(&outbox, 1));
    assert_eq!(outbox.dropped(), DROP_PER_COMMIT);
    assert_eq!(outbox.depth(), backlog + 1 - DROP_PER_COMMIT);
    k.extend(commit_n(&outbox, 1));
    assert_eq!(outbox.depth(), 10);
    assert_eq!(outbox.dropped(), backlog + 2 - 10);
    assert_eq!(keys(&outbox.read_after(None, 100)), k[k.len() - 10..]);
}

#[test]
fn a_batch_larger_than_the_bound_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 3).unwrap();
    let k = commit_n(&outbox, 5);
    assert_eq!(keys(&outbox.read_after(None, 10)), k[2..]);
    assert_eq!((outbox.depth(), outbox.dropped()), (3, 2));
}

#[test]
fn acks_from_an_older_generation_delete_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
    let k = commit_n(&outbox, 2);
    let stale = outbox.generation();
    outbox.generation.fetch_add(1, Ordering::AcqRel);
    outbox.remove(&k, stale);
    assert_eq!(outbox.depth(), 2);
}

#[test]
fn an_unwritable_store_keeps_readings_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    // A directory cannot be created below a regular file.
    let path = dir.path().join("file").join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    assert!(outbox.is_degraded());
    let k = commit_n(&outbox, 3);
    assert_eq!(keys(&outbox.read_after(None, 10)), k);
    outbox.remove(&k[..1], outbox.generation());
    assert_eq!(outbox.depth(), 2);
    assert!(!dir.path().join("file.damaged").exists());
}
