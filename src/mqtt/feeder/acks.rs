//! PUBACKs: a delivered reading is deleted, a refused one quarantined or held for a retry.
//!
//! Which, by the reason code; deletes go to the store in one go per batch of link events.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Feeder;
use super::window::Outstanding;
use crate::mqtt::properties::{self, Fate, Stamp};
use crate::mqtt::puback::{self, Verdict};

impl Feeder {
    /// A PUBACK for `o`: delete its reading, quarantine it, or hold and send it again,
    /// according to the reason code (always 0 on MQTT 3.1.1).
    pub(super) fn answered(&mut self, o: Outstanding, code: u8, reason: Option<&str>) {
        match puback::verdict(code) {
            Verdict::Delivered => {
                if let Some(key) = o.key {
                    self.states.acked(key);
                    self.acked.push(key);
                    if self.window.delivered(key) {
                        self.retry_backoff.reset();
                    }
                }
            }
            Verdict::Quarantine => {
                if let Some(key) = o.key {
                    self.states.refused(key);
                }
                let topic = self.topic_of(&o);
                self.unsent.refused(o.key, &topic, code, reason)
            }
            Verdict::Retry => self.retry_later(o, code, reason),
        }
    }

    pub(super) fn fate(&self, stamp: Stamp, now_ms: u64) -> Fate {
        properties::fate(stamp, self.settings.max_age, self.client.is_v5(), now_ms)
    }

    /// The topic of a refused publish, for the log.
    pub(super) fn topic_of(&self, o: &Outstanding) -> String {
        let stored = o.key.and_then(|key| {
            let next = self.outbox.read_after(key.checked_sub(1), 1);
            next.into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, r)| r.topic)
        });
        stored
            .or_else(|| o.control_topic.clone())
            .unwrap_or_else(|| "(no longer in the store)".into())
    }

    pub(super) fn apply_unsent(&mut self) {
        let max_age = self.settings.max_age.unwrap_or_default();
        self.unsent
            .apply(&self.outbox, self.window.generation(), &self.stats, max_age);
    }

    pub(super) fn remove_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        self.outbox.remove(&self.acked, self.window.generation());
        self.stats
            .published
            .fetch_add(self.acked.len() as u64, Ordering::Relaxed);
        self.acked.clear();
        if let Some((connected_ms, looked)) = self.stats_after_backlog {
            // Sensors keep adding readings, so the depth need not reach 0: the backlog is
            // delivered once the oldest reading waiting is younger than the connect.
            let delivered = self.outbox.depth() == 0
                || (looked.elapsed() >= Duration::from_secs(1)
                    && self
                        .outbox
                        .oldest_taken_ms()
                        .is_none_or(|t| t > connected_ms));
            if delivered {
                self.stats_after_backlog = None;
                self.queue_stats();
            } else if looked.elapsed() >= Duration::from_secs(1) {
                self.stats_after_backlog = Some((connected_ms, Instant::now()));
            }
        }
    }
}
