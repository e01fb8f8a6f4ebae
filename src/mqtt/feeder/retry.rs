//! Retry holds: what an MQTT 5 broker could not take for now goes again after a pause.
//!
//! A reading refused with a "retry" reason code (quota exceeded, say) stays in the store while
//! the window pauses, with a backoff, and then rewinds to send it again.

use std::time::Duration;

use tokio::time::Instant;

use super::Feeder;
use super::window::Outstanding;

/// The first pause before a reading the broker could not take (MQTT 5 "retry" reason codes)
/// is sent again; it doubles while the broker keeps refusing, up to the max.
pub(super) const RETRY_MIN: Duration = Duration::from_secs(1);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(60);

impl Feeder {
    /// A PUBACK with a "retry" reason code for `o`: hold the window, then send it again.
    pub(super) fn retry_later(&mut self, o: Outstanding, code: u8, reason: Option<&str>) {
        if let Some(key) = o.key {
            self.states.refused(key);
        }
        // One pause per episode: a whole window refused at once (quota exceeded) must
        // not step the backoff once per publish.
        let now = Instant::now().into_std();
        let until = match self.window.hold_until() {
            Some(until) => until,
            None => now + self.retry_backoff.next_delay(),
        };
        // Stays in the store; the rewind after the pause sends it again. A control
        // message is only retried on the next connect.
        let until = self.window.retry(o.key, until);
        let pause = until.saturating_duration_since(now);
        let topic = self.topic_of(&o);
        self.unsent.retry(&topic, code, reason, pause);
    }
}
