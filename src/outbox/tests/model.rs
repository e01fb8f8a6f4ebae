//! A property test of the outbox's two tiers against a model store that fails on demand.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use proptest::prelude::*;

use crate::outbox::model::{Disk, Fault, Model};
use crate::outbox::{Entry, Outbox, Record};

/// Ids of readings committed by the test count from 1; those put straight into the store
/// while the outbox could not open it (a backlog from before the clock went back) from here.
const BACKLOG_IDS: u64 = 1 << 40;

#[derive(Debug, Clone)]
enum Op {
    /// Commits `n` new readings.
    Commit(usize, Option<Fault>),
    /// Reads the whole queue in pages of this size, remembering each key with the
    /// generation it was read under.
    Read(usize, Option<Fault>),
    /// Acknowledges (removes) these of the last read, each with its generation; `stale`
    /// passes an older generation instead.
    Ack(Vec<prop::sample::Index>, bool, Option<Fault>),
    /// Quarantines these of the last read.
    Quarantine(Vec<prop::sample::Index>, Option<Fault>),
    /// Reopening succeeds or fails from now on.
    OpenFails(bool),
    /// `maintain()` with the reopen due.
    Maintain,
    /// While the store is away: a backlog with keys above every handed-out one appears in
    /// it (a clock that went back), to be renumbered around.
    Backlog(usize),
    /// Lowers the bound to the depth minus this many, and commits one reading.
    Cut(u64),
    /// QoS 0 readings: each takes a sequence number and is never stored, so the keys of the
    /// next commit jump (thousands of QoS 0 readings beside a few QoS 1 ones).
    Live(u64),
    /// The bytes of this stored reading go bad on disk: the next read that meets it moves it
    /// to quarantine.
    Corrupt(prop::sample::Index),
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    prop_oneof![
        4 => Just(None),
        1 => prop_oneof![
            Just(Fault::Write),
            any::<bool>().prop_map(|lost| Fault::Sync { lost }),
            Just(Fault::Read),
            Just(Fault::Remove),
            Just(Fault::Pop),
        ]
        .prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let picks = || prop::collection::vec(any::<prop::sample::Index>(), 0..6);
    prop_oneof![
        4 => (1..6usize, fault()).prop_map(|(n, f)| Op::Commit(n, f)),
        3 => (1..8usize, fault()).prop_map(|(n, f)| Op::Read(n, f)),
        3 => (picks(), prop::bool::weighted(0.2), fault()).prop_map(|(p, s, f)| Op::Ack(p, s, f)),
        1 => (picks(), fault()).prop_map(|(p, f)| Op::Quarantine(p, f)),
        1 => any::<bool>().prop_map(Op::OpenFails),
        2 => Just(Op::Maintain),
        1 => (1..4usize).prop_map(Op::Backlog),
        1 => (0..4u64).prop_map(Op::Cut),
        1 => any::<prop::sample::Index>().prop_map(Op::Corrupt),
        2 => prop_oneof![1..4u64, 1000..5000u64].prop_map(Op::Live),
    ]
}

fn record(id: u64) -> Record {
    Record {
        topic: "t".into(),
        payload: id.to_be_bytes().to_vec(),
        retain: false,
        taken_ms: 0,
        plain: true,
    }
}

fn id_of(r: &Record) -> u64 {
    u64::from_be_bytes(r.payload.as_slice().try_into().unwrap())
}

/// What the test knows must be (or may be) in the queue.
#[derive(Default)]
struct Expect {
    /// Committed and not taken out: must be there, once.
    live: BTreeSet<u64>,
    /// Taken out by a call that also hit a failure, or dropped at a bound: may be gone.
    maybe_gone: BTreeSet<u64>,
    /// Quarantined (maybe): if gone, they are in the quarantine tree.
    maybe_quarantined: BTreeSet<u64>,
    next_id: u64,
    next_backlog: u64,
    /// The last read: key, id, generation.
    read: Vec<(u64, u64, u64)>,
}

impl Expect {
    /// True if it was there to take.
    fn take_out(&mut self, id: u64, certain: bool) -> bool {
        let was = self.live.remove(&id);
        if was && !certain {
            self.maybe_gone.insert(id);
        }
        was
    }
}

/// The queue as the outbox shows it, checked against what is expected: keys rising, every
/// reading once, nothing committed missing, nothing unknown, counts exact.
fn check(outbox: &Outbox<Model>, disk: &Arc<Mutex<Disk>>, x: &mut Expect) -> anyhow::Result<()> {
    let up = !outbox.is_degraded();
    let all = outbox.read_after(None, usize::MAX);
    if outbox.is_degraded() == up {
        bail!("the store failed on a read without a fault");
    }
    // Read again as the feeder does, a page at a time from where the last one ended: the later
    // pages come from the copy of the newest readings where it covers them, and must say
    // exactly what the store (and the memory tier) says.
    let mut paged = Vec::new();
    loop {
        let page = outbox.read_after(paged.last().map(|(k, _): &Entry| *k), 2);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    if paged != all {
        bail!("a paged read differs from a whole one: {paged:?} against {all:?}");
    }
    // And from where the feeder may still be: after any key it read last time, though that
    // reading may since have been acknowledged, quarantined or dropped at the bound.
    for &(key, _, _) in &x.read {
        let page = outbox.read_after(Some(key), 2);
        let whole: Vec<Entry> = all
            .iter()
            .filter(|(k, _)| *k > key)
            .take(2)
            .cloned()
            .collect();
        if page != whole {
            bail!("a read after key {key} differs from a whole one: {page:?} against {whole:?}");
        }
    }
    let keys: Vec<u64> = all.iter().map(|(k, _)| *k).collect();
    if !keys.windows(2).all(|w| w[0] < w[1]) {
        bail!("keys out of order: {keys:?}");
    }
    let ids: Vec<u64> = all.iter().map(|(_, r)| id_of(r)).collect();
    // FIFO: readings committed later sort later (the backlog, renumbered around, apart).
    for part in [
        |id: &&u64| **id < BACKLOG_IDS,
        |id: &&u64| **id >= BACKLOG_IDS,
    ] {
        let order: Vec<&u64> = ids.iter().filter(part).collect();
        if !order.windows(2).all(|w| w[0] < w[1]) {
            bail!("readings out of order: {ids:?}");
        }
    }
    let seen: BTreeSet<u64> = ids.iter().copied().collect();
    if seen.len() != ids.len() {
        bail!("a reading appears twice: {ids:?}");
    }
    if outbox.depth() != ids.len() as u64 {
        bail!("depth {} for {} readings", outbox.depth(), ids.len());
    }
    let unknown: Vec<_> = seen
        .iter()
        .filter(|id| !x.live.contains(id) && !x.maybe_gone.contains(id))
        .collect();
    if !unknown.is_empty() {
        bail!("readings that were taken out are back: {unknown:?}");
    }
    if up {
        let missing: Vec<_> = x.live.difference(&seen).collect();
        if !missing.is_empty() {
            bail!("committed readings lost: {missing:?}");
        }
        let quarantined: BTreeSet<u64> = disk
            .lock()
            .unwrap()
            .quarantine
            .values()
            .map(id_of)
            .collect();
        for id in &x.maybe_quarantined {
            if !seen.contains(id) && !quarantined.contains(id) {
                bail!("reading {id} left the queue but is not in quarantine");
            }
        }
        // What is there now is what must be there from now on.
        x.live = seen;
        x.maybe_gone.clear();
        x.maybe_quarantined.clear();
    } else {
        // Only the memory tier is visible: its readings are ones that must or may be there.
        for id in seen {
            x.maybe_gone.remove(&id);
            x.live.insert(id);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> anyhow::Result<()> {
    let disk = Arc::new(Mutex::new(Disk::default()));
    let outbox: Outbox<Model> =
        Outbox::open_from(disk.clone(), std::path::Path::new("model"), u64::MAX)?;
    let mut x = Expect {
        next_id: 1,
        next_backlog: BACKLOG_IDS,
        ..Expect::default()
    };
    let arm = |f: Option<Fault>| disk.lock().unwrap().fault = f;
    for (step, op) in ops.into_iter().enumerate() {
        let faulty = match &op {
            Op::Commit(_, f) | Op::Read(_, f) | Op::Ack(_, _, f) | Op::Quarantine(_, f) => *f,
            _ => None,
        };
        arm(faulty);
        'op: {
            match op {
                Op::Commit(n, _) => {
                    let batch: Vec<Entry> = (0..n)
                        .map(|_| {
                            let id = x.next_id;
                            x.next_id += 1;
                            x.live.insert(id);
                            (outbox.next_seq(), record(id))
                        })
                        .collect();
                    outbox.commit(batch);
                }
                Op::Live(n) => {
                    for _ in 0..n {
                        outbox.next_seq();
                    }
                }
                Op::Read(page, _) => {
                    x.read.clear();
                    let mut cursor = None;
                    loop {
                        let generation = outbox.generation();
                        let got = outbox.read_after(cursor, page);
                        let Some((last, _)) = got.last() else {
                            break;
                        };
                        cursor = Some(*last);
                        x.read
                            .extend(got.iter().map(|(k, r)| (*k, id_of(r), generation)));
                    }
                }
                Op::Ack(picks, stale, _) => {
                    if x.read.is_empty() {
                        break 'op;
                    }
                    for p in picks {
                        let (key, id, generation) = x.read[p.index(x.read.len())];
                        let generation = if stale {
                            generation.wrapping_sub(1)
                        } else {
                            generation
                        };
                        let current = generation == outbox.generation();
                        let before = outbox.generation();
                        let degraded = outbox.is_degraded();
                        outbox.remove(&[key], generation);
                        // Gone for certain only if the store was up, the generation held and
                        // nothing failed. One acked from the memory tier may come back once: the
                        // copy a failed flush left on disk (a duplicate, by design).
                        if current {
                            x.take_out(id, !degraded && outbox.generation() == before);
                            x.maybe_quarantined.remove(&id); // acked instead
                        }
                    }
                }
                Op::Quarantine(picks, _) => {
                    if x.read.is_empty() {
                        break 'op;
                    }
                    for p in picks {
                        let (key, id, generation) = x.read[p.index(x.read.len())];
                        if generation == outbox.generation() {
                            outbox.quarantine(&[key], generation);
                            // A reading in the memory tier stays: it may or may not be gone.
                            if x.take_out(id, false) {
                                x.maybe_quarantined.insert(id);
                            }
                        }
                    }
                }
                Op::OpenFails(fails) => disk.lock().unwrap().open_fails = fails,
                Op::Maintain => {
                    outbox.lock().reopen_at = Instant::now();
                    outbox.maintain();
                }
                Op::Backlog(n) => {
                    if !outbox.is_degraded() {
                        break 'op;
                    }
                    let handed_out = outbox.lock().next_seq;
                    let mut d = disk.lock().unwrap();
                    // From the next key the outbox will hand out: the keys of readings taken
                    // from now on (as after a clock set back), which must not overwrite it.
                    let from = d
                        .data
                        .keys()
                        .next_back()
                        .map_or(0, |k| k + 1)
                        .max(handed_out);
                    for i in 0..n as u64 {
                        let id = x.next_backlog;
                        x.next_backlog += 1;
                        d.data.insert(from + i, record(id));
                        x.live.insert(id);
                    }
                }
                Op::Corrupt(pick) => {
                    // Not a key the memory tier also holds (a failed flush that reached the
                    // disk): at the reopen its copy, no longer the same bytes as on disk, is
                    // taken for another reading with that key and renumbered after the newer
                    // ones. Never overwriting such a key is the design (it may be a backlog
                    // from before the clock went back); this double fault reorders one reading.
                    let in_memory: Vec<u64> =
                        outbox.lock().memory.iter().map(|(k, _)| *k).collect();
                    let mut d = disk.lock().unwrap();
                    let keys: Vec<u64> = d
                        .data
                        .keys()
                        .copied()
                        .filter(|k| !in_memory.contains(k))
                        .collect();
                    if keys.is_empty() {
                        break 'op;
                    }
                    let key = keys[pick.index(keys.len())];
                    let id = id_of(&d.data[&key]);
                    d.corrupt.insert(key);
                    drop(d);
                    if x.take_out(id, false) {
                        x.maybe_quarantined.insert(id);
                    }
                }
                Op::Cut(below) => {
                    let depth = outbox.depth();
                    let bound = depth.saturating_sub(below).max(1);
                    outbox.set_max_messages(bound);
                    let id = x.next_id;
                    x.next_id += 1;
                    x.live.insert(id);
                    let dropped = outbox.dropped();
                    // The oldest go: any of those there may be the ones (the test does not model
                    // which tier holds the oldest).
                    let all: Vec<u64> = x.live.iter().copied().collect();
                    outbox.commit(vec![(outbox.next_seq(), record(id))]);
                    if !outbox.is_degraded() && outbox.depth() > bound {
                        bail!("depth {} above the bound {bound}", outbox.depth());
                    }
                    outbox.set_max_messages(u64::MAX);
                    if outbox.dropped() > dropped {
                        for id in all {
                            x.take_out(id, false);
                        }
                        // One waiting to be quarantined may have been dropped instead.
                        x.maybe_quarantined.clear();
                    }
                }
            }
        }
        arm(None);
        check(&outbox, &disk, &mut x).with_context(|| format!("after step {step}"))?;
    }
    // Everything comes back once the store can be opened.
    disk.lock().unwrap().open_fails = false;
    outbox.lock().reopen_at = Instant::now();
    outbox.maintain();
    if outbox.is_degraded() {
        bail!("the store does not reopen");
    }
    check(&outbox, &disk, &mut x).context("at the end")
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    /// Random interleavings of commits, store failures (each call, a flush that did or did not
    /// reach the disk), failed and successful reopens, paged reads, acks (current or stale
    /// generation), quarantines, a backlog that forces renumbering and cuts at a bound: nothing
    /// committed is lost or duplicated, keys rise, the count is exact, and a stale ack deletes
    /// nothing.
    #[test]
    fn the_outbox_keeps_its_invariants_under_any_interleaving(ops in prop::collection::vec(op(), 1..60)) {
        if let Err(e) = run(ops) {
            return Err(TestCaseError::fail(format!("{e:#}")));
        }
    }
}
