//! One face over rumqttc's MQTT 3.1.1 and MQTT 5 clients: the client pair and its two sides.
//!
//! So the connection task and the feeder are written once. rumqttc has two parallel modules
//! (`rumqttc` and `rumqttc::v5`) built the same way: an `AsyncClient` that queues requests and
//! an `EventLoop` with the same public-but-internal fields our retransmission relies on
//! (`state.events`, `pending`, `state.collision`). This module is the only one that knows
//! which is in use; everything else sees [`Event`]s.
//!
//! [`options`] builds rumqttc's options per
//! server, [`events`] maps what rumqttc reports onto [`Event`], [`error`] says why a link
//! failed or a request was not taken.

mod error;
mod events;
mod options;

#[cfg(test)]
mod batch_tests;

use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{MqttOptions, QoS, Request};

use super::PKID_SLOTS;
use super::describe;
use super::properties::Properties;
use crate::config::{MqttConfig, Protocol};
pub(super) use error::{ClientError, LinkError};
pub(super) use events::Event;
use events::{from_v4, from_v5};
use options::{options_v4, options_v5};

/// The request side: the feeder's handle.
pub(super) enum Client {
    V4(rumqttc::AsyncClient),
    V5(r5::AsyncClient),
}

/// The connection side: owned by the connection task.
// One per connection task, never moved around: boxing the bigger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum EventLoop {
    V4 {
        el: rumqttc::EventLoop,
        /// The options for each of `[mqtt] servers`, in order; one goes into `el` at a time.
        servers: Vec<MqttOptions>,
    },
    V5 {
        el: r5::EventLoop,
        servers: Vec<r5::MqttOptions>,
        /// Ours, from the config: rumqttc adopts a broker's Server Keep Alive for good.
        keep_alive: std::time::Duration,
        /// Per server: a CONNACK came from it at least once, so a link it closes is not a
        /// protocol mismatch.
        connected_once: Vec<bool>,
        /// The index of the server in use.
        current: usize,
    },
}

/// Builds the client pair for `cfg.protocol`; the request channel holds `cap` requests. It
/// starts on the first of `cfg.servers`; [`EventLoop::use_server`] moves it to another.
pub(super) fn connect(cfg: &MqttConfig, cap: usize) -> (Client, EventLoop) {
    match cfg.protocol {
        Protocol::V4 => {
            let servers: Vec<MqttOptions> =
                cfg.servers.iter().map(|s| options_v4(cfg, s)).collect();
            let (client, eventloop) = rumqttc::AsyncClient::new(servers[0].clone(), cap);
            (
                Client::V4(client),
                EventLoop::V4 {
                    el: eventloop,
                    servers,
                },
            )
        }
        Protocol::V5 => {
            let servers: Vec<r5::MqttOptions> =
                cfg.servers.iter().map(|s| options_v5(cfg, s)).collect();
            let (client, eventloop) = r5::AsyncClient::new(servers[0].clone(), cap);
            let eventloop = EventLoop::V5 {
                el: eventloop,
                servers,
                keep_alive: cfg.keep_alive,
                connected_once: vec![false; cfg.servers.len()],
                current: 0,
            };
            (Client::V5(client), eventloop)
        }
    }
}

impl Client {
    /// MQTT 5: publish properties and PUBACK reason codes apply.
    pub fn is_v5(&self) -> bool {
        matches!(self, Client::V5(_))
    }

    /// Queues a publish without waiting. MQTT 3.1.1 has no properties: they are left out.
    pub fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        props: Properties,
    ) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => Ok(c.try_publish(topic, qos, retain, payload)?),
            Client::V5(c) => {
                let qos = qos5(qos);
                let result = match props.into_v5() {
                    Some(p) => c.try_publish_with_properties(topic, qos, retain, payload, p),
                    None => c.try_publish(topic, qos, retain, payload),
                };
                Ok(result?)
            }
        }
    }

    /// Queues one SUBSCRIBE (QoS 1) for all `filters`; false if it was not accepted.
    pub fn try_subscribe(&self, filters: &[&String]) -> bool {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new((*t).clone(), QoS::AtLeastOnce)),
                )
                .is_ok(),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|t| p5::Filter::new((*t).clone(), r5::mqttbytes::QoS::AtLeastOnce)),
                )
                .is_ok(),
        }
    }

    pub fn try_disconnect(&self) {
        // Best effort: a full channel or a gone connection task leaves no link to close.
        match self {
            Client::V4(c) => {
                let _ = c.try_disconnect();
            }
            Client::V5(c) => {
                let _ = c.try_disconnect();
            }
        }
    }
}

impl EventLoop {
    /// The next event; an error says its kind and is worded for the log (what went wrong,
    /// where to look).
    /// Cancel-safe in the same way as rumqttc's `poll()`: only drop it when the link goes anyway.
    pub async fn poll(&mut self) -> Result<Event, LinkError> {
        match self {
            EventLoop::V4 { el, .. } => el.poll().await.map(from_v4).map_err(|e| describe::v4(&e)),
            EventLoop::V5 {
                el,
                keep_alive,
                connected_once,
                current,
                ..
            } => {
                let connected_once = &mut connected_once[*current];
                let event = el
                    .poll()
                    .await
                    .map(from_v5)
                    .map_err(|e| describe::v5(&e, *connected_once))?;
                if let Event::ConnAck { .. } = event {
                    *connected_once = true;
                    // A Server Keep Alive replaces ours in rumqttc, for this link and the
                    // next CONNECT. Longer than ours would outlast the watchdog's idea of a
                    // quiet link and notice a half-open one late; 0 would ping in a loop. A
                    // broker accepts pings more often than it asked for.
                    let theirs = el.options.keep_alive();
                    if theirs.is_zero() || theirs > *keep_alive {
                        el.options.set_keep_alive(*keep_alive);
                    }
                }
                Ok(event)
            }
        }
    }

    /// The next CONNECT starts a clean session: the broker drops what it holds for us (a
    /// too-big message among it). Safe: the feeder resends every unacknowledged reading.
    pub fn forget_session(&mut self) {
        match self {
            EventLoop::V4 { el, servers } => {
                el.mqtt_options.set_clean_session(true);
                servers.iter_mut().for_each(|o| {
                    o.set_clean_session(true);
                });
            }
            EventLoop::V5 { el, servers, .. } => {
                el.options.set_clean_start(true);
                servers.iter_mut().for_each(|o| {
                    o.set_clean_start(true);
                });
            }
        }
    }

    /// The next CONNECT goes to the server at `index` of `[mqtt] servers`, with the same
    /// client id and session. Only between links (after [`EventLoop::recover`]).
    pub fn use_server(&mut self, index: usize) {
        match self {
            EventLoop::V4 { el, servers } => {
                if let Some(o) = servers.get(index) {
                    el.mqtt_options = o.clone();
                }
            }
            EventLoop::V5 {
                el,
                servers,
                current,
                ..
            } => {
                if let Some(o) = servers.get(index) {
                    // Also forgets a Server Keep Alive the previous server set.
                    el.options = o.clone();
                    *current = index;
                }
            }
        }
    }

    /// Events rumqttc read before a failure and has not handed out yet (PUBACKs among them).
    pub fn take_queued(&mut self) -> Vec<Event> {
        match self {
            EventLoop::V4 { el, .. } => el.state.events.drain(..).map(from_v4).collect(),
            EventLoop::V5 { el, .. } => el.state.events.drain(..).map(from_v5).collect(),
        }
    }

    /// After a failure, once the feeder has forgotten what was in flight: makes sure rumqttc
    /// resends nothing itself. `clean()` moves its unacked publishes and whatever is still in
    /// the request channel into `pending`; every publish is dropped from there (the feeder
    /// resends from the store), other requests (a SUBSCRIBE, a DISCONNECT) stay.
    pub fn recover(&mut self) {
        match self {
            EventLoop::V4 { el, .. } => {
                el.clean();
                el.pending.retain(|r| !matches!(r, Request::Publish(_)));
                // It survives clean() and would stall the next link (rumqttc #1056).
                el.state.collision = None;
            }
            EventLoop::V5 { el, .. } => {
                el.clean();
                el.pending.retain(|r| !matches!(r, r5::Request::Publish(_)));
                // A fresh state rather than only clearing `collision`: it also forgets the
                // last packet id and the previous broker's Receive Maximum. rumqttc keeps both
                // across reconnects, and a packet id above a lowered maximum never wraps: it
                // runs off its slot table and fails every link from then on.
                el.state = r5::MqttState::new(PKID_SLOTS as u16, false);
            }
        }
    }
}

fn qos5(qos: QoS) -> r5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => r5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => r5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => r5::mqttbytes::QoS::ExactlyOnce,
    }
}
