//! The periodic self-report: a summary line in the log and, optionally, a retained JSON message.
//!
//! Every `stats_interval`; the message (when `stats_topic` is set) carries the same figures,
//! so a dashboard sees how the daemon is doing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Stats;
use crate::mqtt::LiveMessage;
use crate::outbox::Outbox;
use crate::service;

/// The retained self-metrics message.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub buffered: u64,
    /// Seconds since the oldest unsent reading was taken; null when nothing waits.
    pub oldest_unsent_age_s: Option<u64>,
    pub readings: u64,
    pub published: u64,
    pub dropped: u64,
    /// QoS 0 readings not published: taken while not connected, or more at once than the
    /// link could take (QoS 0 is fire and forget; they are never stored).
    pub qos0_dropped: u64,
    /// Readings older than `max_age`, deleted unsent.
    pub expired: u64,
    /// Readings an MQTT 5 broker refused for good (quarantined).
    pub refused: u64,
    pub read_errors: std::collections::BTreeMap<String, u64>,
    /// The sensors whose last read failed (or that have not read once yet).
    pub failing_sensors: Vec<String>,
    pub reconnects: u64,
    pub connected: bool,
    /// The server (`host:port`) of `[mqtt] servers` we are connected to, or trying.
    pub server: String,
    pub uptime_s: u64,
}

impl Snapshot {
    pub fn take(outbox: &Outbox, stats: &Stats) -> Snapshot {
        let now_ms = crate::unix_ms(SystemTime::now());
        Snapshot {
            buffered: outbox.depth(),
            oldest_unsent_age_s: outbox
                .oldest_taken_ms()
                .map(|t| now_ms.saturating_sub(t) / 1000),
            readings: stats.readings.load(Ordering::Relaxed),
            published: stats.published.load(Ordering::Relaxed),
            dropped: outbox.dropped(),
            qos0_dropped: stats.live_dropped.load(Ordering::Relaxed),
            expired: stats.expired.load(Ordering::Relaxed),
            refused: stats.refused.load(Ordering::Relaxed),
            read_errors: stats
                .errors_by_sensor
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            failing_sensors: stats.health.failing_names(),
            reconnects: stats.connects.load(Ordering::Relaxed).saturating_sub(1),
            connected: stats.connected.load(Ordering::Relaxed),
            server: stats.server(),
            uptime_s: service::uptime().as_secs(),
        }
    }
}

/// Runs until `stop`. `publish`: the stats topic and the QoS 0 channel to the publisher.
pub async fn run(
    every: Duration,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    publish: Option<(String, mpsc::Sender<LiveMessage>)>,
    stop: CancellationToken,
) {
    // The config refuses under 1s; a zero period would panic tokio's interval all the same.
    let every = every.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let s = Snapshot::take(&outbox, &stats);
        info!(
            readings = s.readings,
            published = s.published,
            buffered = s.buffered,
            oldest_unsent_age_s = s.oldest_unsent_age_s,
            dropped = s.dropped,
            qos0_dropped = s.qos0_dropped,
            expired = s.expired,
            refused = s.refused,
            read_errors = s.read_errors.values().sum::<u64>(),
            sensors_failing = s.failing_sensors.len(),
            failing = %s.failing_sensors.join(","),
            reconnects = s.reconnects,
            connected = s.connected,
            server = %s.server,
            "summary"
        );
        if let Some((topic, live)) = &publish {
            let payload = serde_json::to_vec(&s).expect("numbers and strings serialize");
            // QoS 0 and retained: the latest figures matter, a missed one does not.
            let _ = live.try_send(LiveMessage {
                topic: topic.clone(),
                payload,
                retain: true,
                taken_ms: crate::unix_ms(SystemTime::now()),
                // JSON, with its own time.
                plain: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero period (refused by the config) used to panic tokio's interval and end the task.
    #[tokio::test]
    async fn a_zero_period_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(&dir.path().join("buf"), 100).unwrap());
        let (live, mut got) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            Duration::ZERO,
            outbox,
            Arc::new(Stats::default()),
            Some(("stats".into(), live)),
            stop.clone(),
        ));
        let first = tokio::time::timeout(Duration::from_secs(10), got.recv()).await;
        assert!(matches!(first, Ok(Some(_))), "a summary is published");
        stop.cancel();
        task.await.expect("the task ends without a panic");
    }
}
