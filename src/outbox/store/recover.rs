//! Carrying a damaged store's surviving readings into a new one, crash-safely.

// The steps, each durable before the next, so that a stop or a power cut at any point leaves
// a state the next start finishes or redoes (see `finish_interrupted`):
// 1. copy the survivors into `<path>.recovering` (a fresh sled store) with the sequence
//    counter, the count and the durable mark; fsync every file and the directory;
// 2. write `<path>.recovering.done` naming where the damaged store goes; fsync it and the
//    parent. From here on the copy is the store;
// 3. rename the damaged store to `<path>.damaged-<unix time>`; fsync the parent;
// 4. rename `<path>.recovering` to `<path>`; fsync the parent;
// 5. remove `<path>.recovering.done`; fsync the parent.
//
// Before step 2 the damaged store is untouched at `<path>`: an interrupted copy is thrown
// away and made again. After it, the next start completes steps 3 to 5.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::{error, warn};

use super::Backend;
use super::{Mark, OpenError, Opened, aside_path, for_writing, guarded, open, sync_dir};

/// The copy being made.
fn staging(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.recovering", path.display()))
}

/// Says the copy is complete and durable, and where the damaged store goes.
fn done_file(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.recovering.done", path.display()))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Test-only: a simulated crash at a named step (nothing after it runs, nothing is cleaned).
fn step(name: &'static str) -> anyhow::Result<()> {
    #[cfg(test)]
    super::test_faults::crash_if_armed(name)?;
    let _ = name;
    Ok(())
}

/// The store at `path` opened below its durable `mark`: sled stopped at a damaged record and
/// dropped everything after it. Carries what survived into a new store (so those readings are
/// still published and the damaged log is never written to again), keeps the damaged one
/// aside for a person to look at, and says loudly what is lost.
pub(super) fn carry_over(path: &Path, damaged: Opened, mark: u64) -> Result<Opened, OpenError> {
    let recovered_to = damaged.saved_seq;
    let stage = staging(path);
    let aside = aside_path(path);
    copy_survivors(&damaged, &stage, mark)
        .with_context(|| {
            format!(
                "copying the readings that survived into {}",
                stage.display()
            )
        })
        .map_err(OpenError::Unusable)?;
    // sled lets go of the directory (its lock, its threads) once every handle is dropped.
    drop(damaged);
    let lost = format!("{recovered_to}..{mark}");
    let swapped = write_done(path, &aside, &lost).and_then(|()| swap(path, &stage, &aside));
    swapped.map_err(OpenError::Unusable)?;
    let opened = open(path)
        .map_err(OpenError::Unusable)
        .and_then(|opened| for_writing(opened, Mark::open(path).0))?;
    error!(
        path = %path.display(),
        moved_to = %aside.display(),
        kept = opened.stored,
        lost_seq = %lost,
        "the store's log was damaged: readings committed with seq {recovered_to}..{mark} are lost (those not yet published); moved it aside and carried the readings that survived into a new store"
    );
    Ok(opened)
}

/// Step 1.
fn copy_survivors(damaged: &Opened, stage: &Path, mark: u64) -> anyhow::Result<()> {
    if stage.exists() {
        // Left by an interrupted copy that finish_interrupted did not see (it runs first):
        // only possible if something else made it. Never mix with it.
        std::fs::remove_dir_all(stage).context("removing an old copy")?;
    }
    let new = open(stage)?;
    let old = &damaged.store;
    guarded("iter", || {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in old.data.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            in_batch += 1;
            if in_batch == 10_000 {
                new.store.data.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
                crate::service::still_starting();
                step("copying")?;
            }
        }
        new.store.data.apply_batch(batch)?;
        for kv in old.quarantine.iter() {
            let (k, v) = kv?;
            new.store.quarantine.insert(k, v)?;
        }
        Ok(())
    })?;
    // Sequence numbers go on above everything handed out before the damage. The count saves
    // counting the copy again when it is opened as the store.
    let saved_seq = mark.max(damaged.saved_seq);
    new.store.save_seq(saved_seq)?;
    new.store.save_count(damaged.stored, saved_seq)?;
    new.store.sync(saved_seq)?;
    let (new_mark, _) = Mark::open(stage);
    if let Some(m) = &new_mark {
        m.write(saved_seq);
    }
    drop(new_mark);
    drop(new);
    step("copied")?;
    // What makes the copy the store must be on disk before the damaged one is moved: every
    // file sled wrote, the directory, and the directory's entry in the parent.
    sync_tree(stage)?;
    sync_dir(parent(stage))
}

/// Step 2. The done file holds where the damaged store goes and the lost `seq` range, for
/// the log line if the recovery is finished by the next start.
fn write_done(path: &Path, aside: &Path, lost: &str) -> anyhow::Result<()> {
    let done = done_file(path);
    let mut f = File::create(&done).with_context(|| format!("creating {}", done.display()))?;
    writeln!(f, "{}\n{lost}", aside.display())?;
    f.sync_all()?;
    drop(f);
    sync_dir(parent(path))?;
    step("marked done")
}

/// Steps 3 to 5, also used to finish an interrupted recovery. Each step is skipped if it was
/// done already.
fn swap(path: &Path, stage: &Path, aside: &Path) -> anyhow::Result<()> {
    let dir = parent(path);
    if stage.exists() {
        if path.exists() {
            // Taken meanwhile (another damage within the same second): never merge with it.
            let fresh;
            let aside = if aside.exists() {
                fresh = aside_path(path);
                &fresh
            } else {
                aside
            };
            std::fs::rename(path, aside)
                .with_context(|| format!("moving the damaged store to {}", aside.display()))?;
            sync_dir(dir)?;
            step("moved aside")?;
        }
        std::fs::rename(stage, path)
            .with_context(|| format!("moving {} to {}", stage.display(), path.display()))?;
        sync_dir(dir)?;
        step("renamed")?;
    }
    std::fs::remove_file(done_file(path)).context("removing the recovery's done file")?;
    sync_dir(dir)
}

/// Run before opening the store: a recovery that a stop or a power cut interrupted is finished
/// (its copy was complete) or thrown away, leaving the damaged store in place to be recovered
/// again (it was not). Never silent, and the damaged store is never lost.
pub(super) fn finish_interrupted(path: &Path) -> Result<(), OpenError> {
    let stage = staging(path);
    let done = done_file(path);
    match read_done(&done) {
        Ok((aside, lost)) => {
            // Ours always names `<path>.damaged-...`; a damaged done file does not decide
            // where anything goes.
            let ours = format!("{}.damaged-", path.display());
            let aside = if aside.to_string_lossy().starts_with(&ours) {
                aside
            } else {
                aside_path(path)
            };
            swap(path, &stage, &aside)
                .context("finishing an interrupted recovery of the damaged store")
                .map_err(OpenError::Unusable)?;
            error!(path = %path.display(), moved_to = %aside.display(), lost_seq = %lost, "finished a recovery of the damaged store that was interrupted (a stop or a power cut): readings committed with seq {lost} are lost (those not yet published); the readings that survived are in the store");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !stage.exists() {
                return Ok(());
            }
            if in_use(&stage) {
                return Err(OpenError::Locked(anyhow::anyhow!(
                    "{} is being written by another process",
                    stage.display()
                )));
            }
            std::fs::remove_dir_all(&stage)
                .and_then(|()| File::open(parent(&stage))?.sync_all())
                .with_context(|| format!("removing the incomplete copy {}", stage.display()))
                .map_err(OpenError::Unusable)?;
            warn!(path = %path.display(), incomplete_copy = %stage.display(), "a recovery of the damaged store was interrupted before its copy was complete (a stop or a power cut); the damaged store is still in place, so the recovery starts again");
            Ok(())
        }
        Err(e) => Err(OpenError::Unusable(
            anyhow::Error::from(e).context(format!("reading {}", done.display())),
        )),
    }
}

/// What the done file says: where the damaged store goes and the lost `seq` range. Its first
/// 8 KiB only, so that a file of garbage cannot make us read without bound.
fn read_done(done: &Path) -> std::io::Result<(PathBuf, String)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(done)?.take(8192).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let aside = PathBuf::from(lines.next().unwrap_or_default());
    let lost = lines.next().unwrap_or("unknown").to_owned();
    Ok((aside, lost))
}

/// Another process holds sled's lock (`flock` on `db`) on the store at `dir`.
fn in_use(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(db) = File::open(dir.join("db")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    let r = unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// fsyncs every file under `dir` (recursively), then each directory.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync of {}", entry.path().display()))?;
        }
    }
    sync_dir(dir)
}
