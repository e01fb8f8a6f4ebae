//! The daemon's store, through its own outbox code: depth, a prefilled backlog, a copy.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Readings in the sled store at `path` (daemon stopped), via the library hook.
pub fn store_depth(path: &Path) -> u64 {
    telemetryd::outbox::depth_at(path)
        .unwrap_or_else(|e| panic!("depth_at({}): {e:#}", path.display()))
}

/// The topics of the readings in the sled store at `path` (daemon stopped), oldest first.
pub fn store_topics(path: &Path) -> Vec<String> {
    let outbox = telemetryd::outbox::Outbox::open(path, u64::MAX)
        .unwrap_or_else(|e| panic!("open {}: {e:#}", path.display()));
    let mut topics = Vec::new();
    let mut after = None;
    loop {
        let page = outbox.read_after(after, 10_000);
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        topics.extend(page.into_iter().map(|(_, r)| r.topic));
    }
    outbox.close();
    topics
}

/// Writes a backlog into the store at `path` (daemon stopped), as a previous run with the
/// broker away would have left it: `count` readings on `topic` with payloads `1..=count`,
/// through the daemon's own outbox code. Returns how long it took.
pub fn prefill_store(path: &Path, topic: &str, count: u64) -> Duration {
    let t0 = Instant::now();
    let taken_ms = telemetryd::unix_ms(std::time::SystemTime::now());
    prefill_store_with(path, count, |i, _seq| telemetryd::outbox::Record {
        topic: topic.to_string(),
        payload: (i + 1).to_string().into_bytes(),
        retain: false,
        taken_ms,
        plain: true,
    });
    t0.elapsed()
}

/// Fills the store at `path` (daemon stopped) with `count` readings, the i-th (from 0, with
/// its sequence number) made by `record`, in commits of 10,000, and closes it cleanly.
pub fn prefill_store_with(
    path: &Path,
    count: u64,
    mut record: impl FnMut(u64, u64) -> telemetryd::outbox::Record,
) {
    let outbox =
        telemetryd::outbox::Outbox::open(path, count.max(1)).expect("open the store to fill it");
    let mut i = 0;
    while i < count {
        let end = (i + 10_000).min(count);
        let batch = (i..end)
            .map(|j| {
                let seq = outbox.next_seq();
                (seq, record(j, seq))
            })
            .collect();
        outbox.commit(batch);
        i = end;
    }
    assert_eq!(outbox.depth(), count, "prefilled store depth");
    outbox.close();
}

/// Copies the directory `from` (a stopped store, say) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy");
    for e in fs::read_dir(from)
        .expect("read the directory to copy")
        .flatten()
    {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).expect("copy a file");
        }
    }
}
