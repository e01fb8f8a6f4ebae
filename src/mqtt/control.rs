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
