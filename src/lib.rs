//! telemetryd: reads sensors on a schedule and publishes them over MQTT without losing any.
//!
//! The pipeline: one [`schedule`] task per sensor → the [`committer`] (numbers, renders and
//! group-commits readings into the [`outbox`]) → the [`mqtt`] feeder, which publishes from the
//! outbox and deletes a reading only when its PUBACK arrives.

pub mod committer;
pub mod config;
pub mod logging;
pub mod mqtt;
pub mod outbox;
pub mod payload;
pub mod schedule;
pub mod sensor;
pub mod signals;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::outbox::Outbox;
use crate::sensor::Source;

/// Counters shared by the tasks, for the periodic summary (and later, status reporting).
#[derive(Debug, Default)]
pub struct Stats {
    pub readings: AtomicU64,
    pub sensor_errors: AtomicU64,
    /// QoS 1 readings acknowledged by the broker plus QoS 0 readings sent.
    pub published: AtomicU64,
    /// QoS 0 readings discarded because the broker was not connected.
    pub live_dropped: AtomicU64,
    pub connected: AtomicBool,
}

/// How many readings may wait between the sensors and the committer.
const READING_QUEUE: usize = 1024;
const LIVE_QUEUE: usize = 256;

/// Runs the daemon until `shutdown` is cancelled, then stops in order: sensors first, then
/// the committer (committing what they produced), then the publisher after a grace period for
/// in-flight acks, and finally a flush of the store.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let buffer = config.buffer.clone();
    let outbox =
        tokio::task::spawn_blocking(move || Outbox::open(&buffer.path, buffer.max_messages))
            .await
            .context("opening the store")??;
    let outbox = Arc::new(outbox);
    info!(path = %config.buffer.path.display(), buffered = outbox.depth(), "store opened");

    let stats = Arc::new(Stats::default());
    let tracker = TaskTracker::new();
    let (reading_tx, reading_rx) = mpsc::channel(READING_QUEUE);
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);

    let sensors = config.sensors.len();
    for sensor in config.sensors {
        let source = Source::new(sensor.source.clone(), &config.sysfs_root);
        tracker.spawn(schedule::run_sensor(
            sensor,
            source,
            reading_tx.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }
    // The committer ends when the last sensor task drops its sender.
    drop(reading_tx);
    tracker.spawn(committer::run(reading_rx, outbox.clone(), live_tx));
    mqtt::spawn(
        &config.mqtt,
        outbox.clone(),
        live_rx,
        stats.clone(),
        shutdown.clone(),
        &tracker,
    );
    tracker.spawn(summaries(
        config.stats_interval,
        outbox.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    tracker.close();
    if sensors == 0 {
        tracing::warn!("no [[sensor]] configured: only the stored backlog will be published");
    }
    info!(
        sensors,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        client_id = %config.mqtt.client_id,
        "telemetryd {} started",
        env!("CARGO_PKG_VERSION")
    );

    tracker.wait().await;
    let closing = outbox.clone();
    tokio::task::spawn_blocking(move || closing.close()).await?;
    info!(buffered = outbox.depth(), "stopped");
    Ok(())
}

/// One info line per `every`: enough to see the daemon is alive without one line per reading.
async fn summaries(
    every: std::time::Duration,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        info!(
            readings = stats.readings.load(Ordering::Relaxed),
            published = stats.published.load(Ordering::Relaxed),
            buffered = outbox.depth(),
            dropped = outbox.dropped(),
            sensor_errors = stats.sensor_errors.load(Ordering::Relaxed),
            connected = stats.connected.load(Ordering::Relaxed),
            "summary"
        );
    }
}
