//! Readings that leave the queue without a successful PUBACK: refused for good, or too old.
//!
//! Refused for good by an MQTT 5 broker (moved to the store's quarantine tree) or older than
//! `max_age` (deleted unsent, the user's explicit choice). Both are counted and logged,
//! rate-limited.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::puback;
use crate::Stats;
use crate::logging::Throttle;
use crate::outbox::Outbox;

/// How many stale readings one pass drops before the feeder yields: dropping a long outage's
/// backlog must not hold the runtime thread (and the connection task's keep-alive) for seconds.
pub(super) const EXPIRE_BATCH: usize = 1000;

#[derive(Default)]
pub(super) struct Unsent {
    /// Keys to move to quarantine at the next [`Unsent::apply`].
    refused: Vec<u64>,
    /// Keys to delete unsent at the next [`Unsent::apply`], with the oldest one's age.
    expired: Vec<u64>,
    oldest_expired: Duration,
    refused_log: PerCause,
    retry_log: PerCause,
    expired_log: Throttle,
}

/// One throttle per topic and code: an ACL that denies several topics must not turn into one
/// line per reading as the topics take turns.
#[derive(Default)]
struct PerCause(HashMap<String, HashMap<u8, Throttle>>);

impl PerCause {
    /// `Some(held back)` when `code` on `topic` is to be logged now. A topic is copied only the
    /// first time it is refused, not at every refusal.
    fn admit(&mut self, code: u8, topic: &str) -> Option<u64> {
        if !self.0.contains_key(topic) {
            self.0.insert(topic.to_owned(), HashMap::new());
        }
        let codes = self.0.get_mut(topic).expect("just inserted");
        codes.entry(code).or_default().admit("")
    }
}

impl Unsent {
    /// The broker refused a publish for good. A reading (`key`) goes to quarantine; a control
    /// message (birth, discovery) is only logged.
    pub fn refused(&mut self, key: Option<u64>, topic: &str, code: u8, reason: Option<&str>) {
        let what = puback::name(code);
        let reason = reason.unwrap_or("");
        if let Some(suppressed) = self.refused_log.admit(code, topic) {
            match key {
                Some(_) => {
                    error!(%topic, code = %format_args!("{code:#04x}"), what, reason, suppressed, "the broker refused a reading for good: moved to the store's quarantine (`telemetryd buffer` counts them); check the broker's ACL for this topic")
                }
                None => {
                    error!(%topic, code = %format_args!("{code:#04x}"), what, reason, suppressed, "the broker refused a control message (availability or discovery); check the broker's ACL for this topic")
                }
            }
        }
        self.refused.extend(key);
    }

    /// The broker could not take a publish now; it is sent again after `pause`.
    pub fn retry(&mut self, topic: &str, code: u8, reason: Option<&str>, pause: Duration) {
        let what = puback::name(code);
        let reason = reason.unwrap_or("");
        match self.retry_log.admit(code, topic) {
            Some(suppressed) => {
                warn!(%topic, code = %format_args!("{code:#04x}"), what, reason, suppressed, ?pause, "the broker did not take a reading; sending it again after a pause")
            }
            None => {
                debug!(%topic, code = %format_args!("{code:#04x}"), what, ?pause, "the broker did not take a reading")
            }
        }
    }

    /// A reading older than `max_age`, not sent.
    pub fn expired(&mut self, key: u64, age: Duration) {
        self.expired.push(key);
        self.oldest_expired = self.oldest_expired.max(age);
    }

    /// Quarantines and deletes what was collected, and counts it.
    pub fn apply(&mut self, outbox: &Outbox, generation: u64, stats: &Stats, max_age: Duration) {
        if !self.refused.is_empty() {
            let moved = outbox.quarantine(&self.refused, generation);
            stats.refused.fetch_add(moved, Ordering::Relaxed);
            self.refused.clear();
        }
        if !self.expired.is_empty() {
            let count = self.expired.len() as u64;
            outbox.remove(&self.expired, generation);
            let total = stats.expired.fetch_add(count, Ordering::Relaxed) + count;
            let oldest = Duration::from_secs(self.oldest_expired.as_secs());
            if let Some(suppressed) = self.expired_log.admit("expired") {
                warn!(count, total, oldest_age = %humantime::format_duration(oldest), max_age = %humantime::format_duration(max_age), suppressed, "readings older than max_age dropped without being sent");
            }
            self.expired.clear();
            self.oldest_expired = Duration::ZERO;
        }
    }
}
