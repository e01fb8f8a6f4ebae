//! `telemetryd buffer`'s look at a store no daemon holds, and the store's size on disk.

use std::path::Path;

use super::Entry;
use super::backend::Backend;
use super::store;

/// What `telemetryd buffer` shows.
#[derive(Debug)]
pub struct BufferReport {
    pub depth: u64,
    /// The oldest reading: its key and record.
    pub oldest: Option<Entry>,
    pub quarantined: usize,
    pub bytes_on_disk: u64,
}

/// Looks at the store at `path` without changing it. Fails plainly when a daemon holds it.
pub fn inspect(path: &Path) -> anyhow::Result<BufferReport> {
    if !path.exists() {
        anyhow::bail!(
            "there is no buffer at {} yet: the daemon has not run with this config",
            path.display()
        );
    }
    let opened = match store::open(path) {
        Ok(opened) => opened,
        Err(e) if format!("{e:#}").contains("could not acquire lock") => anyhow::bail!(
            "the buffer at {} is in use by the running daemon; `systemctl status telemetryd` shows its depth, or stop the daemon to inspect it",
            path.display()
        ),
        Err(e) => return Err(e.context(format!("cannot open the buffer at {}", path.display()))),
    };
    Ok(BufferReport {
        depth: opened.stored,
        oldest: opened.store.first()?,
        quarantined: opened.store.quarantined()?,
        bytes_on_disk: dir_size(path),
    })
}

/// Bytes of the files under `path` (their lengths, as `ls` shows them): the store's size on
/// disk for `telemetryd buffer` and the benchmarks.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Counts the readings in the store at `path` (for tools and tests; not while a daemon holds it).
pub fn depth_at(path: &Path) -> anyhow::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    Ok(store::open(path)?.stored)
}
