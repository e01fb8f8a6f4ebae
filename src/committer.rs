//! Group commit: readings that arrive together are numbered, rendered and made durable at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::error;

use crate::Stats;
use crate::config::{Format, Qos};
use crate::mqtt::LiveMessage;
use crate::outbox::{Entry, Outbox, Record};
use crate::payload;
use crate::schedule::Reading;

/// The most readings one commit takes; more wait for the next one.
const BATCH_MAX: usize = 1024;
/// How often a failed store is checked for recovery while no readings arrive.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// With a commit interval, the most readings that wait for their commit; more commit at once.
const HOLD_MAX: usize = 16 * BATCH_MAX;

/// Runs until every reading sender is gone, committing what is left on the way out.
///
/// With a commit interval (`[buffer] commit_interval`, changed by a reload through
/// `commit_interval`), a commit comes at least that long after the previous one: QoS 1 readings wait for it (QoS 0 ones go out at once), so that
/// busy sensors make few large commits instead of many small ones.
pub async fn run(
    mut readings: mpsc::Receiver<Reading>,
    outbox: Arc<Outbox>,
    live: mpsc::Sender<LiveMessage>,
    stats: Arc<Stats>,
    commit_interval: watch::Receiver<Duration>,
) {
    let Some(thread) = CommitThread::start() else {
        return;
    };
    let mut buf = Vec::with_capacity(64);
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    // QoS 1 readings, numbered and rendered, waiting for their commit.
    let mut batch: Vec<Entry> = Vec::new();
    let mut acks = Vec::new();
    let mut last_commit: Option<Instant> = None;
    loop {
        stats.committer_beat.beat();
        // When the next commit may come; held readings wait for it. A reload's new interval is
        // read here, so it applies within a `maintain` tick at the latest.
        let next_commit = last_commit.map(|t| t + *commit_interval.borrow());
        let held_until = next_commit.filter(|_| !batch.is_empty());
        tokio::select! {
            n = readings.recv_many(&mut buf, BATCH_MAX) => if n == 0 { break },
            _ = sleep_until(held_until.unwrap_or_else(Instant::now)), if held_until.is_some() => {}
            _ = maintain.tick() => {
                if outbox.is_degraded() {
                    let outbox = outbox.clone();
                    thread.run(move || outbox.maintain()).await;
                }
                continue;
            }
        }
        // While this batch is being fsynced, new readings queue up in the channel and form the
        // next batch: the busier the sensors, the bigger the group.
        for mut r in buf.drain(..) {
            acks.extend(r.committed.take());
            let seq = outbox.next_seq();
            let payload = payload::render(&r.sensor, r.value, r.taken, seq);
            let topic = r.sensor.topic.clone();
            let retain = r.sensor.retain;
            let plain = r.sensor.format == Format::Plain;
            let taken_ms = crate::unix_ms(r.taken);
            match r.sensor.qos {
                Qos::AtMostOnce => {
                    // Fire and forget: if the publisher is behind, the reading is gone (and
                    // counted: the summary's `qos0_dropped`).
                    let sent = live.try_send(LiveMessage {
                        topic,
                        payload,
                        retain,
                        taken_ms,
                        plain,
                    });
                    if sent.is_err() {
                        stats.live_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Qos::AtLeastOnce => {
                    batch.push((
                        seq,
                        Record {
                            topic,
                            payload,
                            retain,
                            taken_ms,
                            plain,
                        },
                    ));
                }
            }
        }
        let due_now = next_commit.is_none_or(|t| Instant::now() >= t);
        if !batch.is_empty() && (due_now || batch.len() >= HOLD_MAX) {
            last_commit = Some(Instant::now());
            commit(&thread, &outbox, std::mem::take(&mut batch)).await;
        }
        // Committed, or held by commit_interval (a window the user chose): either way the
        // sensors may take their next reading.
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
    if !batch.is_empty() {
        commit(&thread, &outbox, batch).await;
    }
}

async fn commit(thread: &CommitThread, outbox: &Arc<Outbox>, batch: Vec<Entry>) {
    let outbox = outbox.clone();
    thread.run(move || outbox.commit(batch)).await;
}

type Job = Box<dyn FnOnce() + Send>;

/// The store's writes and fsyncs run on a thread of their own, `telemetryd-commit`, not on
/// tokio's blocking pool: sensor reads share that pool, and reads wedged in the kernel (a
/// 1-Wire bus in D state) could fill it and starve every commit.
struct CommitThread {
    jobs: mpsc::Sender<Job>,
}

impl CommitThread {
    /// The thread ends once this is dropped and its last job is done.
    fn start() -> Option<CommitThread> {
        // One job at a time runs; one more may wait (the committer awaits each).
        let (jobs, mut rx) = mpsc::channel::<Job>(1);
        let spawned = std::thread::Builder::new()
            .name("telemetryd-commit".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    // The store catches sled's panics itself; this only keeps the thread (and
                    // every later commit) alive should anything else in a job panic.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        match spawned {
            Ok(_) => Some(CommitThread { jobs }),
            Err(e) => {
                error!(%e, "cannot start the commit thread: nothing can be committed");
                None
            }
        }
    }

    /// Runs `job` on the commit thread and waits for it.
    async fn run(&self, job: impl FnOnce() + Send + 'static) {
        let (done, finished) = oneshot::channel();
        let job: Job = Box::new(move || {
            job();
            let _ = done.send(());
        });
        if self.jobs.send(job).await.is_ok() {
            let _ = finished.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::{Config, SensorConfig};

    const DEADLINE: Duration = Duration::from_secs(10);

    fn sensor(qos: u8) -> Arc<SensorConfig> {
        let text = format!(
            "[[sensor]]\nname='t'\nkind='file'\npath='/x'\ninterval='1s'\ntopic='t'\nqos={qos}\n"
        );
        Arc::new(
            Config::parse(&text, Path::new("t.toml"))
                .unwrap()
                .sensors
                .remove(0),
        )
    }

    fn reading(sensor: &Arc<SensorConfig>) -> Reading {
        Reading {
            sensor: sensor.clone(),
            value: 1.0,
            taken: SystemTime::now(),
            committed: None,
        }
    }

    struct Rig {
        outbox: Arc<Outbox>,
        tx: mpsc::Sender<Reading>,
        live: mpsc::Receiver<LiveMessage>,
        task: JoinHandle<()>,
        interval: watch::Sender<Duration>,
        stats: Arc<Stats>,
        _dir: tempfile::TempDir,
    }

    fn start(interval: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(&dir.path().join("buf"), 100).unwrap());
        let (tx, rx) = mpsc::channel(16);
        let (live_tx, live) = mpsc::channel(16);
        let (interval, interval_rx) = watch::channel(interval);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(rx, outbox.clone(), live_tx, stats.clone(), interval_rx));
        Rig {
            outbox,
            tx,
            live,
            task,
            interval,
            stats,
            _dir: dir,
        }
    }

    /// Polls until `n` readings are readable (committed); returns when.
    async fn readable(outbox: &Outbox, n: usize) -> Instant {
        tokio::time::timeout(DEADLINE, async {
            while outbox.read_after(None, 100).len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Instant::now()
        })
        .await
        .unwrap_or_else(|_| panic!("{n} readings committed within {DEADLINE:?}"))
    }

    /// A sensor reads again only once its previous reading is committed (at most one reading
    /// per sensor at risk at a crash): the signal comes after the commit, never before.
    #[tokio::test]
    async fn a_sensor_hears_of_its_reading_only_once_it_is_committed() {
        let rig = start(Duration::ZERO);
        let s = sensor(1);
        for n in 1..=3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let r = Reading {
                committed: Some(tx),
                ..reading(&s)
            };
            rig.tx.send(r).await.unwrap();
            tokio::time::timeout(DEADLINE, rx)
                .await
                .expect("the committer answers")
                .expect("it fires the signal rather than dropping it");
            assert_eq!(
                rig.outbox.read_after(None, 100).len(),
                n,
                "told before the reading was committed"
            );
        }
    }

    #[tokio::test]
    async fn without_an_interval_a_reading_is_committed_at_once() {
        let rig = start(Duration::ZERO);
        let s = sensor(1);
        for _ in 0..3 {
            rig.tx.send(reading(&s)).await.unwrap();
        }
        readable(&rig.outbox, 3).await;
    }

    #[tokio::test]
    async fn an_interval_spaces_commits_and_groups_readings() {
        let interval = Duration::from_millis(400);
        let rig = start(interval);
        let s = sensor(1);
        let sent_first = Instant::now();
        rig.tx.send(reading(&s)).await.unwrap();
        // The first commit is not delayed: nothing was committed before.
        readable(&rig.outbox, 1).await;
        for _ in 0..3 {
            rig.tx.send(reading(&s)).await.unwrap();
        }
        let all = readable(&rig.outbox, 4).await;
        assert!(
            all - sent_first >= interval,
            "the second commit came {:?} after the first reading, before the interval",
            all - sent_first
        );
    }

    /// A reload that shortens the interval releases readings held under the old one (within a
    /// `maintain` tick, not after the old hour).
    #[tokio::test]
    async fn a_shorter_interval_applies_to_readings_already_held() {
        let rig = start(Duration::from_secs(3600));
        let s = sensor(1);
        rig.tx.send(reading(&s)).await.unwrap();
        readable(&rig.outbox, 1).await;
        rig.tx.send(reading(&s)).await.unwrap();
        rig.interval.send_replace(Duration::ZERO);
        readable(&rig.outbox, 2).await;
    }

    #[tokio::test]
    async fn stopping_commits_waiting_readings_at_once() {
        let rig = start(Duration::from_secs(60));
        let s = sensor(1);
        for _ in 0..3 {
            rig.tx.send(reading(&s)).await.unwrap();
        }
        drop(rig.tx);
        tokio::time::timeout(DEADLINE, rig.task)
            .await
            .expect("the committer ends without waiting for the interval")
            .unwrap();
        assert_eq!(rig.outbox.read_after(None, 100).len(), 3);
    }

    #[tokio::test]
    async fn qos0_readings_do_not_wait_for_the_interval() {
        let mut rig = start(Duration::from_secs(60));
        rig.tx.send(reading(&sensor(1))).await.unwrap();
        readable(&rig.outbox, 1).await;
        rig.tx.send(reading(&sensor(1))).await.unwrap();
        rig.tx.send(reading(&sensor(0))).await.unwrap();
        tokio::time::timeout(DEADLINE, rig.live.recv())
            .await
            .expect("the QoS 0 reading goes out at once")
            .unwrap();
        assert_eq!(
            rig.outbox.read_after(None, 100).len(),
            1,
            "the second QoS 1 reading waits for the interval"
        );
    }

    /// QoS 0 readings the publisher cannot take (its channel, 16 here, is full) are dropped,
    /// and counted: they used to vanish without a trace.
    #[tokio::test]
    async fn qos0_readings_that_do_not_fit_are_counted() {
        let mut rig = start(Duration::ZERO);
        for _ in 0..20 {
            rig.tx.send(reading(&sensor(0))).await.unwrap();
        }
        drop(rig.tx);
        tokio::time::timeout(DEADLINE, rig.task)
            .await
            .expect("the committer ends")
            .unwrap();
        let mut queued = 0;
        while rig.live.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 16);
        assert_eq!(rig.stats.live_dropped.load(Ordering::Relaxed), 4);
    }
}
