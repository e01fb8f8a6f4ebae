//! Damaged stores: moved aside and replaced, carried over when sled silently lost their tail
//! (the durable mark), a recovery interrupted at any step, and the directory fsyncs it needs.

use std::path::{Path, PathBuf};

use super::{commit_n, keys};
use crate::outbox::{Outbox, store};

#[test]
fn a_damaged_store_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    commit_n(&outbox, 10);
    drop(outbox);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(path.join("db"), &garbage).unwrap();
    std::fs::write(path.join("conf"), &garbage[..512]).unwrap();

    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 0);
    assert!(!outbox.is_degraded());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("buf.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let k = commit_n(&outbox, 2);
    assert_eq!(keys(&outbox.read_after(None, 10)), k);
}

/// sled can open a damaged log without an error and without its last commits; the durable
/// mark beside it shows that. The store is moved aside, what survived is carried into a
/// new one, and sequence numbers go on above the mark.
#[test]
fn a_store_below_its_durable_mark_is_moved_aside_with_its_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let outbox = Outbox::open(&path, 100).unwrap();
    let k = commit_n(&outbox, 5);
    outbox.close();
    drop(outbox);
    // A clean reopen is not flagged.
    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 5);
    outbox.close();
    drop(outbox);
    let mark = raise_the_mark(&path);

    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth(), 5);
    assert_eq!(keys(&outbox.read_after(None, 10)), k);
    assert!(outbox.next_seq() >= mark);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("buf.damaged-")
        })
        .count();
    assert_eq!(aside, 1);
    // The new store is sound: it reopens without being flagged again.
    commit_n(&outbox, 1);
    outbox.close();
    drop(outbox);
    assert_eq!(Outbox::open(&path, 100).unwrap().depth(), 6);
}

/// Makes the store at `path` look as if sled had lost the commits that brought its
/// counter from what it saved up to `saved + 1000`; returns that durable mark.
fn raise_the_mark(path: &Path) -> u64 {
    let saved = store::open(path).unwrap().saved_seq;
    let mark = saved + 1000;
    let mut bytes = mark.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(mark ^ 0x7465_6c65_6d65_7472).to_be_bytes());
    std::fs::write(path.join("telemetryd-durable-mark"), bytes).unwrap();
    mark
}

/// Names in `dir` beside the store `buf`: its `.damaged-*` and `.recovering*` ones.
fn beside(dir: &Path) -> (usize, Vec<String>) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let damaged = names
        .iter()
        .filter(|n| n.starts_with("buf.damaged-"))
        .count();
    let recovering = names
        .into_iter()
        .filter(|n| n.starts_with("buf.recovering"))
        .collect();
    (damaged, recovering)
}

/// A stop or a power cut at each step of carrying a damaged store's survivors over: the
/// next start finishes the recovery (its copy was complete and durable) or redoes it (it
/// was not), and never accepts a partial copy: every survivor is there, exactly once, in
/// order, sequence numbers go on above the mark, one damaged store is kept aside, no
/// staging is left, and the result opens clean. The store holds more than one copy batch
/// (10,000), so the crash while copying leaves a partial copy behind.
#[test]
fn a_recovery_interrupted_at_any_step_is_finished_or_redone() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template");
    let outbox = Outbox::open(&template, 100_000).unwrap();
    let mut k = commit_n(&outbox, 10_000);
    k.extend(commit_n(&outbox, 50));
    outbox.close();
    drop(outbox);
    for step in ["copying", "copied", "marked done", "moved aside", "renamed"] {
        let run = dir.path().join(step.replace(' ', "-"));
        std::fs::create_dir(&run).unwrap();
        let path = run.join("buf");
        copy_tree(&template, &path);
        let mark = raise_the_mark(&path);

        store::test_faults::crash_at(step);
        let crashed = Outbox::open(&path, 100_000).unwrap();
        assert!(
            crashed.is_degraded(),
            "{step}: the simulated crash happened"
        );
        drop(crashed);

        let outbox = Outbox::open(&path, 100_000).unwrap();
        assert!(!outbox.is_degraded(), "{step}");
        assert_eq!(outbox.depth(), k.len() as u64, "{step}");
        assert_eq!(keys(&outbox.read_after(None, 20_000)), k, "{step}");
        assert!(outbox.next_seq() >= mark, "{step}");
        assert_eq!(beside(&run), (1, vec![]), "{step}");
        outbox.close();
        drop(outbox);
        // Sound: it is not flagged again, and the damaged store is kept whole.
        let outbox = Outbox::open(&path, 100_000).unwrap();
        assert_eq!(outbox.depth(), k.len() as u64, "{step}");
        assert_eq!(beside(&run).0, 1, "{step}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The directory fsyncs a power cut needs: a new store's directory and its parent, the
/// store's directory again once the durable mark's file exists, the parent after a
/// damaged store is moved aside (before the new one is made). A reopen syncs nothing
/// (an SD card wears).
#[test]
fn new_names_are_made_durable_with_directory_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    store::test_faults::take_dir_syncs();
    let outbox = Outbox::open(&path, 100).unwrap();
    let synced = store::test_faults::take_dir_syncs();
    let at = |p: &Path| synced.iter().filter(|s| *s == p).count();
    assert_eq!(at(dir.path()), 1, "the new store's entry: {synced:?}");
    assert_eq!(
        at(&path),
        2,
        "the store's files, then the mark's: {synced:?}"
    );
    commit_n(&outbox, 3);
    outbox.close();
    drop(outbox);
    drop(Outbox::open(&path, 100).unwrap());
    assert_eq!(store::test_faults::take_dir_syncs(), Vec::<PathBuf>::new());

    std::fs::write(path.join("db"), vec![0x5a; 64 * 1024]).unwrap();
    std::fs::write(path.join("conf"), vec![0x5a; 512]).unwrap();
    let outbox = Outbox::open(&path, 100).unwrap();
    assert!(!outbox.is_degraded());
    let synced = store::test_faults::take_dir_syncs();
    assert_eq!(
        synced.first().map(PathBuf::as_path),
        Some(dir.path()),
        "the move aside is durable before the new store is made: {synced:?}"
    );
    assert!(
        synced.iter().filter(|s| *s == dir.path()).count() >= 2,
        "{synced:?}"
    );
}
