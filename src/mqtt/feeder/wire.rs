//! The window's adapters: the outbox as the [`Backlog`] it reads, the client as its [`Wire`].

use std::time::Duration;

use rumqttc::QoS;
use tracing::debug;

use super::window::{Backlog, Handed, Wire};
use crate::mqtt::last_state::{LastStates, State};
use crate::mqtt::properties::{self, Fate, Stamp};
use crate::mqtt::protocol::Client;
use crate::mqtt::unsent::Unsent;
use crate::outbox::{Entry, Outbox, Record};

/// The outbox as the window reads it.
impl Backlog for Outbox {
    type Item = Record;

    fn generation(&self) -> u64 {
        Outbox::generation(self)
    }

    fn read_after(&self, after: Option<u64>, max: usize) -> Vec<Entry> {
        Outbox::read_after(self, after, max)
    }
}

/// The client as the window hands readings to it: a reading older than `max_age` is dropped
/// here (collected in `unsent`), the rest get their properties and go to the request channel.
pub(super) struct ToClient<'a> {
    pub(super) states: &'a mut LastStates,
    pub(super) client: &'a Client,
    pub(super) unsent: &'a mut Unsent,
    pub(super) max_age: Option<Duration>,
    pub(super) now_ms: u64,
}

impl Wire<Record> for ToClient<'_> {
    fn publish(&mut self, key: u64, record: Record) -> Handed {
        let stamp = Stamp {
            taken_ms: record.taken_ms,
            plain: record.plain,
            retain: record.retain,
            stale_after_s: self.states.stale_after(&record.topic),
        };
        let props = match properties::fate(stamp, self.max_age, self.client.is_v5(), self.now_ms) {
            Fate::Send(props) => props,
            Fate::TooOld { age } => {
                self.unsent.expired(key, age);
                return Handed::Expired;
            }
        };
        let state = self.states.watches(&record.topic).then(|| State {
            topic: record.topic.clone(),
            payload: record.payload.clone(),
            retain: record.retain,
            taken_ms: record.taken_ms,
            plain: record.plain,
        });
        match self.client.try_publish(
            record.topic,
            QoS::AtLeastOnce,
            record.retain,
            record.payload,
            props,
        ) {
            Ok(()) => {
                if let Some(state) = state {
                    self.states.handed(key, state);
                }
                Handed::Sent
            }
            Err(e) => {
                // Full (the window's accounting leaves room for it, so this should not
                // happen) or closed (the connection task is gone). Either way the reading
                // stays in the store and is offered again.
                debug!(error = %e, "publish request not accepted");
                Handed::Refused
            }
        }
    }
}
