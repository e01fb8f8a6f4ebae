//! QoS 0 readings: published at once while the link is up, dropped otherwise; never stored.

use std::sync::atomic::Ordering;

use rumqttc::QoS;

use super::{Feeder, now_ms};
use crate::mqtt::last_state::State;
use crate::mqtt::properties::{Fate, Stamp};

/// A QoS 0 reading: published if connected, otherwise gone. Never stored.
#[derive(Debug)]
pub struct LiveMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When it was taken (ms since the epoch).
    pub taken_ms: u64,
    /// The payload is the bare value: on MQTT 5 its time goes in the `ts` user property.
    pub plain: bool,
}

impl Feeder {
    pub(super) fn publish_live(&mut self, msg: LiveMessage) {
        if !self.window.is_connected() {
            self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stamp = Stamp {
            taken_ms: msg.taken_ms,
            plain: msg.plain,
            retain: msg.retain,
            stale_after_s: self.states.stale_after(&msg.topic),
        };
        let state = self.states.watches(&msg.topic).then(|| State {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            retain: msg.retain,
            taken_ms: msg.taken_ms,
            plain: msg.plain,
        });
        let props = match self.fate(stamp, now_ms()) {
            Fate::Send(props) => props,
            Fate::TooOld { .. } => {
                self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match self
            .client
            .try_publish(msg.topic, QoS::AtMostOnce, msg.retain, msg.payload, props)
        {
            Ok(()) => {
                if let Some(state) = state {
                    self.refresh_copy(&state);
                    self.states.sent_live(state);
                }
                self.window.live_handed();
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
