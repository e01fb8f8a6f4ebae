//! Commit latency, measured inside: the daemon's own committer and outbox on a current-thread
//! runtime like the daemon's, fed by sensor-like tasks and read by a feeder-like task.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use telemetryd::Stats;
use telemetryd::committer;
use telemetryd::config::Config;
use telemetryd::outbox::Outbox;
use telemetryd::schedule::Reading;

/// As in the daemon (`READING_QUEUE`).
const READING_QUEUE: usize = 1024;
/// Readings taken before this are left out: the runtime and the store are warming up.
const WARM_UP: Duration = Duration::from_millis(500);

pub struct Latency {
    /// Readings made readable (committed durably) per second, after the warm-up.
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `sensors` tasks each send a reading every 10 ms for `run`; a reader waits for them to
/// become readable (which happens after the batch's flush + fsync), the way the feeder does,
/// and removes them, the way acks do. A reading's value is when it was taken, in microseconds
/// since the start, so its latency is read off its payload.
pub fn commit_latency(store: &Path, sensors: usize, run: Duration) -> Latency {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = store.to_owned();
    rt.block_on(async move {
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&store, u64::MAX))
            .await
            .expect("open task")
            .expect("open the store");
        let outbox = Arc::new(outbox);
        let sensor = Config::parse(
            "[[sensor]]\nname = 'bench'\nkind = 'file'\npath = '/dev/null'\n\
             interval = '10ms'\ntopic = 'bench/latency'\ndecimals = 0\n",
            Path::new("bench.toml"),
        )
        .expect("the bench sensor")
        .sensors
        .remove(0);
        let sensor = Arc::new(sensor);
        let (tx, rx) = mpsc::channel(READING_QUEUE);
        let (live_tx, _live_rx) = mpsc::channel(256);
        let (_, no_interval) = tokio::sync::watch::channel(Duration::ZERO);
        let committer = tokio::spawn(committer::run(
            rx,
            outbox.clone(),
            live_tx,
            Arc::new(Stats::default()),
            no_interval,
        ));
        let t0 = Instant::now();
        let stop = CancellationToken::new();
        for _ in 0..sensors {
            let (tx, sensor, stop) = (tx.clone(), sensor.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let reading = Reading {
                        sensor: sensor.clone(),
                        value: t0.elapsed().as_micros() as f64,
                        taken: SystemTime::now(),
                        // The ingest bench measures the committer alone: no waiting on acks.
                        committed: None,
                    };
                    if tx.send(reading).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let done = CancellationToken::new();
        let reader = tokio::spawn({
            let (outbox, done) = (outbox.clone(), done.clone());
            async move {
                let mut cursor = None;
                let mut latencies_us = Vec::new();
                loop {
                    let last_round = done.is_cancelled();
                    loop {
                        let batch = outbox.read_after(cursor, 4096);
                        if batch.is_empty() {
                            break;
                        }
                        let now = t0.elapsed().as_micros() as u64;
                        let mut keys = Vec::with_capacity(batch.len());
                        for (key, record) in &batch {
                            let taken: u64 = std::str::from_utf8(&record.payload)
                                .ok()
                                .and_then(|p| p.parse().ok())
                                .expect("a payload the bench wrote");
                            if taken >= WARM_UP.as_micros() as u64 {
                                latencies_us.push(now.saturating_sub(taken));
                            }
                            keys.push(*key);
                        }
                        cursor = keys.last().copied();
                        outbox.remove(&keys, outbox.generation());
                    }
                    if last_round {
                        return latencies_us;
                    }
                    tokio::select! {
                        _ = outbox.new_data.notified() => {}
                        _ = done.cancelled() => {}
                    }
                }
            }
        });

        tokio::time::sleep(run).await;
        stop.cancel();
        committer.await.expect("the committer");
        done.cancel();
        let mut latencies = reader.await.expect("the reader");
        let closing = outbox.clone();
        tokio::task::spawn_blocking(move || closing.close())
            .await
            .expect("close");
        assert!(
            !latencies.is_empty(),
            "no reading became readable in {run:?}"
        );
        latencies.sort_unstable();
        let pick = |q: f64| {
            let i = ((latencies.len() - 1) as f64 * q).round() as usize;
            latencies[i] as f64 / 1000.0
        };
        Latency {
            rate: latencies.len() as f64 / (run - WARM_UP).as_secs_f64(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
        }
    })
}
