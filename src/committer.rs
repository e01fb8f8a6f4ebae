//! Group commit: readings that arrive together are numbered, rendered and made durable at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::spawn_blocking;

use crate::Stats;
use crate::config::Qos;
use crate::mqtt::LiveMessage;
use crate::outbox::{Outbox, Record};
use crate::payload;
use crate::schedule::Reading;

/// The most readings one commit takes; more wait for the next one.
const BATCH_MAX: usize = 1024;
/// How often a failed store is checked for recovery while no readings arrive.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Runs until every reading sender is gone, committing what is left on the way out.
pub async fn run(
    mut readings: mpsc::Receiver<Reading>,
    outbox: Arc<Outbox>,
    live: mpsc::Sender<LiveMessage>,
    stats: Arc<Stats>,
) {
    let mut buf = Vec::with_capacity(64);
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    loop {
        stats.committer_beat.beat();
        tokio::select! {
            n = readings.recv_many(&mut buf, BATCH_MAX) => if n == 0 { break },
            _ = maintain.tick() => {
                if outbox.is_degraded() {
                    let outbox = outbox.clone();
                    let _ = spawn_blocking(move || outbox.maintain()).await;
                }
                continue;
            }
        }
        // While this batch is being fsynced, new readings queue up in the channel and form the
        // next batch: the busier the sensors, the bigger the group.
        let mut batch = Vec::with_capacity(buf.len());
        for r in buf.drain(..) {
            let seq = outbox.next_seq();
            let payload = payload::render(&r.sensor, r.value, r.taken, seq);
            let topic = r.sensor.topic.clone();
            let retain = r.sensor.retain;
            match r.sensor.qos {
                Qos::AtMostOnce => {
                    // Fire and forget: if the publisher is behind, the reading is gone.
                    let _ = live.try_send(LiveMessage {
                        topic,
                        payload,
                        retain,
                    });
                }
                Qos::AtLeastOnce => {
                    let taken_ms = r
                        .taken
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    batch.push((
                        seq,
                        Record {
                            topic,
                            payload,
                            retain,
                            taken_ms,
                        },
                    ));
                }
            }
        }
        if !batch.is_empty() {
            let outbox = outbox.clone();
            let _ = spawn_blocking(move || outbox.commit(batch)).await;
        }
    }
}
