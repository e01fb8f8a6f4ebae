//! Thousands of QoS 0 readings beside a few QoS 1 ones: every reading takes a sequence number,
//! so the stored keys are far apart. The store must cost what its readings cost, not what the
//! key space between them would. (A layout with a sled tree per 4,096 keys, tried in issue 15,
//! made a tree per stored reading here: 8,000 readings took 848 MiB on disk and 330 MiB of
//! RAM, growing with the square of the count.)

use super::{Entry, Outbox, record};
use crate::outbox::dir_size;

#[test]
fn readings_far_apart_in_key_space_cost_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 1_000_000).unwrap();
    let first = outbox.next_seq();
    // 3,000 QoS 1 readings, each 5,000 sequence numbers after the last (the QoS 0 ones
    // between them are never stored), committed one at a time as at a low rate, broker away.
    for i in 0..3_000u64 {
        let key = first + i * 5_000;
        let batch: Vec<Entry> = vec![(key, record(i))];
        outbox.commit(batch);
    }
    assert_eq!(outbox.depth(), 3_000);
    let size = dir_size(&path);
    assert!(
        size < 32 << 20,
        "{} MiB on disk for 3,000 readings",
        size >> 20
    );
    // The broker is back: everything goes out in order and is acknowledged.
    let mut after = None;
    let mut sent = 0;
    loop {
        let page = outbox.read_after(after, 100);
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        let keys: Vec<u64> = page.iter().map(|(k, _)| *k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        sent += keys.len();
        outbox.remove(&keys, outbox.generation());
    }
    assert_eq!((sent, outbox.depth()), (3_000, 0));
}
