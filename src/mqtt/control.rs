//! Messages the feeder sends that are not readings: the birth message, discovery configs and
//! their removal, the self-metrics at connect, copies of the last states.

use super::last_state::State;
use super::properties::Stamp;

/// A QoS 1 message that is not a reading: acked, it deletes nothing.
#[derive(Debug)]
pub(super) struct Control {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// A copy of a reading: its `max_age` and MQTT 5 properties, as for the reading.
    pub stamp: Option<Stamp>,
}

impl Control {
    /// Birth, discovery configs and their removal: retained, no properties.
    pub fn retained(topic: &str, payload: &[u8]) -> Control {
        Control {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            retain: true,
            stamp: None,
        }
    }

    /// A copy of a state Home Assistant has already expired at `now_ms` (taken longer ago
    /// than its `expire_after`): sent, it would show the old value as current again.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.stamp.is_some_and(|s| {
            s.stale_after_s
                .is_some_and(|stale| now_ms.saturating_sub(s.taken_ms) > stale.saturating_mul(1000))
        })
    }

    /// A fresh copy of a state, published as the reading was (retained or not).
    pub fn copy(s: State, stale_after_s: Option<u64>) -> Control {
        Control {
            stamp: Some(Stamp {
                taken_ms: s.taken_ms,
                plain: s.plain,
                retain: s.retain,
                stale_after_s,
            }),
            topic: s.topic,
            payload: s.payload,
            retain: s.retain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(taken_ms: u64, stale_after_s: Option<u64>) -> Control {
        let s = State {
            topic: "t".into(),
            payload: b"1".to_vec(),
            retain: false,
            taken_ms,
            plain: true,
        };
        Control::copy(s, stale_after_s)
    }

    #[test]
    fn a_copy_expires_with_its_expire_after_and_nothing_else_does() {
        assert!(!copy(10_000, Some(2)).expired(12_000), "exactly 2 s old");
        assert!(copy(10_000, Some(2)).expired(12_001));
        assert!(!copy(10_000, None).expired(u64::MAX), "no expire_after");
        assert!(!copy(10_000, Some(u64::MAX)).expired(u64::MAX));
        // Taken "later" than now (the clock went back): not expired.
        assert!(!copy(10_000, Some(2)).expired(5_000));
        assert!(!Control::retained("t", b"x").expired(u64::MAX));
    }
}
