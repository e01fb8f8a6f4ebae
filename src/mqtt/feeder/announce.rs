//! The feeder's control messages: what it queues for a link, and sending them first.
//!
//! The availability birth, Home Assistant discovery (announcements, removals, the answer to its
//! birth), copies of the last states and the stats, sent as QoS 1 ahead of the backlog.

use rumqttc::QoS;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Feeder, now_ms};
use crate::homeassistant::Discovery;
use crate::mqtt::control::Control;
use crate::mqtt::last_state::State;
use crate::mqtt::properties::{Fate, Properties};

/// Control messages waiting: the announcements, copies and removals of a few thousand sensors.
/// Only a broker sending tens of thousands of stale discovery configs of our node reaches it.
const CONTROL_MAX: usize = 10_000;

impl Feeder {
    /// A new link: what waited for the old one is forgotten; the birth goes first, ahead of
    /// the backlog, then the subscriptions, the announcements and the stats.
    pub(super) fn connected(&mut self) {
        self.control.clear();
        // First on the new link, ahead of the backlog.
        if let Some(a) = &self.availability {
            let birth = Control::retained(&a.topic, a.online.as_bytes());
            self.queue(birth);
        }
        let discovery = self.discovery.borrow_and_update().clone();
        if let Some(d) = discovery {
            self.subscribe(&d);
            self.announce(&d);
            self.queue_stats();
            self.stats_after_backlog =
                (self.outbox.depth() > 0).then(|| (now_ms(), Instant::now()));
        }
    }

    /// Sends queued control messages as QoS 1 retained publishes that are not in the outbox:
    /// each takes a window slot like a reading, so packet ids still map to keys, but its ack
    /// deletes nothing.
    pub(super) fn send_control(&mut self) {
        while self.has_room() {
            let Some(c) = self.control.front() else {
                return;
            };
            let now = now_ms();
            if c.expired(now) {
                // Home Assistant expired this state already: it stays unavailable.
                self.control.pop_front();
                continue;
            }
            let props = match c.stamp {
                None => Properties::default(),
                Some(stamp) => match self.fate(stamp, now) {
                    Fate::Send(props) => props,
                    // A copy of a state older than `max_age`: not sent, like the reading.
                    Fate::TooOld { .. } => {
                        self.control.pop_front();
                        continue;
                    }
                },
            };
            // Taken off the queue only once the client has it: a refused one is offered again.
            let accepted = self.client.try_publish(
                c.topic.clone(),
                QoS::AtLeastOnce,
                c.retain,
                c.payload.clone(),
                props,
            );
            if accepted.is_err() {
                return;
            }
            let c = self.control.pop_front().expect("just looked at it");
            self.window
                .track(None, Some(c.topic), Instant::now().into_std());
        }
    }

    pub(super) fn subscribe(&mut self, d: &Discovery) {
        if !self
            .may_subscribe
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let filters: Vec<&String> = std::iter::once(&d.status_topic)
            .chain(&d.config_filters)
            .collect();
        if self.client.try_subscribe(&filters) {
            self.window.subscribed();
        }
    }

    pub(super) fn announce(&mut self, d: &Discovery) {
        for a in &d.announcements {
            self.queue(Control::retained(&a.topic, &a.payload));
        }
    }

    /// Queues a control message. One waiting for the same topic is dropped (the newer one says
    /// what is current), so repeated `online` messages cannot grow the queue: it holds at most
    /// one message per topic, and never more than [`CONTROL_MAX`].
    pub(super) fn queue(&mut self, c: Control) {
        let topic = c.topic.clone();
        if !self.control.push(c, CONTROL_MAX) && self.control_log.admit("full").is_some() {
            warn!(%topic, max = CONTROL_MAX, "too many Home Assistant messages waiting; dropping one");
        }
    }

    /// Home Assistant came (back) online: announce again. A retained config of ours for a
    /// sensor no longer configured (removed while we were stopped): remove it.
    pub(super) fn message(&mut self, topic: &str, payload: &[u8]) {
        let Some(d) = self.discovery.borrow().clone() else {
            return;
        };
        if topic == d.status_topic && payload == b"online" {
            // Within a second of the previous one: answered at the end of that second (the
            // info line counts them as `deferred`).
            if self.births.online(Instant::now().into_std()) {
                self.home_assistant_online(0);
            }
        } else if d.object_of(topic).is_some()
            && !payload.is_empty()
            && !d.announcements.iter().any(|a| a.topic == topic)
        {
            info!(
                topic,
                "removing a Home Assistant entity that is no longer configured"
            );
            self.queue(Control::retained(topic, b""));
        }
    }

    /// Home Assistant (re)started: announce the sensors again and send their last states.
    /// `deferred`: the births this answers that came within a second of the previous one.
    pub(super) fn home_assistant_online(&mut self, deferred: u64) {
        let Some(d) = self.discovery.borrow().clone() else {
            return;
        };
        let copies = self.states.to_resend();
        info!(
            states = copies.len(),
            deferred,
            "Home Assistant is online: announcing the sensors and sending their last states"
        );
        self.announce(&d);
        // After the configs (Home Assistant subscribes to a state topic when it reads the
        // config), before the backlog; see last_state.rs for which state and why.
        for copy in copies {
            let stale = self.states.stale_after(&copy.topic);
            self.queue(Control::copy(copy, stale));
        }
    }

    /// A reload changed the discovery messages: announce what is. What went is removed when
    /// its retained config comes back on our subscription, as after a restart.
    pub(super) fn discovery_changed(&mut self) {
        let new = self.discovery.borrow_and_update().clone();
        self.states
            .watch(new.as_ref().map_or(&[][..], |d| &d.state_topics));
        if !self.window.is_connected() {
            return; // everything is announced on the next CONNACK
        }
        if let Some(d) = &new {
            self.subscribe(d);
            self.announce(d);
        }
    }

    /// The self-metrics JSON, now, as a retained control message (the metrics task sends it
    /// every `stats_interval` as QoS 0; a Home Assistant diagnostic entity would otherwise
    /// show the figures from before an outage until the next one).
    pub(super) fn queue_stats(&mut self) {
        let Some(topic) = &self.settings.stats_topic else {
            return;
        };
        let snapshot = crate::metrics::Snapshot::take(&self.outbox, &self.stats);
        let payload = serde_json::to_vec(&snapshot).expect("numbers and strings serialize");
        let stats = Control::retained(topic, &payload);
        self.queue(stats);
    }

    /// A QoS 0 reading of `s.topic` just went out while a copy of that topic's state waits
    /// in the control queue (for room in the window, or a retry hold): the copy now carries
    /// this reading, or, sent after it, it would take Home Assistant (and a retained copy the
    /// broker) back to the older state until the next reading.
    pub(super) fn refresh_copy(&mut self, s: &State) {
        let stale = self.states.stale_after(&s.topic);
        if let Some(c) = self.control.get_mut(&s.topic)
            && c.stamp.is_some()
        {
            *c = Control::copy(s.clone(), stale);
        }
    }
}
