//! Readings taken out of the queue for good: refused by the broker, undecodable, or not
//! publishable as stored.

use super::{commit_n, keys, record};
use crate::outbox::{Entry, Outbox, Record, inspect};

#[test]
fn refused_readings_move_to_quarantine_with_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 3);
    let json = Record {
        plain: false,
        retain: true,
        ..record(7)
    };
    let key = outbox.next_seq();
    outbox.commit(vec![(key, json.clone())]);
    assert_eq!(outbox.read_after(Some(k[2]), 1), vec![(key, json)]);
    assert_eq!(outbox.read_after(None, 1)[0].1, record(k[0]));

    assert_eq!(outbox.quarantine(&[k[1]], outbox.generation() + 1), 0);
    assert_eq!(outbox.depth(), 4, "a stale generation moves nothing");
    assert_eq!(outbox.quarantine(&[k[1], k[1]], outbox.generation()), 1);
    assert_eq!(outbox.depth(), 3);
    assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[0], k[2], key]);
    outbox.close();
    drop(outbox);
    let report = inspect(&path).unwrap();
    assert_eq!((report.depth, report.quarantined), (3, 1));
}

/// An undecodable record is quarantined, not blocking; and once it is, it is not served from
/// the copy of the newest readings either (which holds it as it was written): the last one
/// here is in that copy.
#[test]
fn an_undecodable_record_is_quarantined_not_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
    let k = commit_n(&outbox, 5);
    let store = outbox.lock().store.clone().unwrap();
    store.corrupt(k[1]);
    store.corrupt(k[4]);
    assert_eq!(keys(&outbox.read_after(None, 10)), vec![k[0], k[2], k[3]]);
    assert_eq!(keys(&outbox.read_after(Some(k[3]), 10)), Vec::<u64>::new());
    assert_eq!(outbox.depth(), 3);
    assert_eq!(store.quarantined().unwrap(), 2);
    assert!(!outbox.is_degraded());
}

/// Stored records are outside input: whatever decodes must be publishable (a time RFC
/// 3339 can write, a topic a client and a broker accept, a size rumqttc sends); anything
/// else is quarantined, never a panic and never a record that stalls the feeder.
#[test]
fn records_that_cannot_be_published_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("buf"), 100).unwrap();
    let good = |n: u64| record(n);
    let bad = [
        Record {
            taken_ms: u64::MAX,
            ..good(1)
        },
        Record {
            taken_ms: crate::mqtt::properties::LAST_TS_MS + 1,
            ..good(1)
        },
        Record {
            topic: String::new(),
            ..good(1)
        },
        Record {
            topic: "a/#".into(),
            ..good(1)
        },
        Record {
            topic: "a/+/b".into(),
            ..good(1)
        },
        Record {
            topic: "a\0b".into(),
            ..good(1)
        },
        Record {
            payload: vec![b'x'; 10 * 1024],
            ..good(1)
        },
    ];
    let edge = Record {
        taken_ms: crate::mqtt::properties::LAST_TS_MS,
        payload: vec![b'x'; 10 * 1024 - 9 - 1],
        ..good(2)
    };
    let mut batch: Vec<Entry> = bad.iter().map(|r| (outbox.next_seq(), r.clone())).collect();
    let edge_key = outbox.next_seq();
    batch.push((edge_key, edge.clone()));
    outbox.commit(batch);
    let read = outbox.read_after(None, 100);
    assert_eq!(read, vec![(edge_key, edge)]);
    assert_eq!(outbox.depth(), 1);
    let store = outbox.lock().store.clone().unwrap();
    assert_eq!(store.quarantined().unwrap(), bad.len());
    // And what did decode goes out without a panic.
    for (_, r) in read {
        let stamp = crate::mqtt::properties::Stamp {
            taken_ms: r.taken_ms,
            plain: r.plain,
            retain: r.retain,
            stale_after_s: Some(u64::MAX),
        };
        let _ = crate::mqtt::properties::fate(stamp, None, true, 0);
    }
}
