//! One face over rumqttc's MQTT 3.1.1 and MQTT 5 clients, so the connection task and the
//! feeder are written once.
//!
//! rumqttc has two parallel modules (`rumqttc` and `rumqttc::v5`) built the same way: an
//! `AsyncClient` that queues requests and an `EventLoop` with the same public-but-internal
//! fields our retransmission relies on (`state.events`, `pending`, `state.collision`). This
//! file is the only one that knows which is in use; everything else sees [`Event`]s.

use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{LastWill, MqttOptions, QoS, Request, TlsConfiguration, Transport};

use super::PKID_SLOTS;
use super::describe;
use super::properties::Properties;
use super::servers::Server;
use crate::config::{MqttConfig, Protocol};

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

/// What rumqttc reported, whatever the protocol.
#[derive(Debug)]
pub(super) enum Event {
    /// The broker accepted us. `slots`: how many packet ids rumqttc cycles through on this link
    /// (an MQTT 5 broker can lower it with Receive Maximum).
    ConnAck {
        session_present: bool,
        slots: usize,
    },
    /// A publish left with this packet id (0 for QoS 0).
    Sent(u16),
    /// A SUBSCRIBE left (the feeder counts what is queued in the client's channel).
    SubscribeSent,
    /// A PUBACK with its reason code (always 0 on MQTT 3.1.1) and the broker's reason string.
    Acked {
        pkid: u16,
        code: u8,
        reason: Option<String>,
    },
    PingResp,
    /// A message on one of our subscriptions.
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The broker refused (some of) our SUBSCRIBE's filters: `reasons`, as rumqttc names
    /// them. rumqttc's own warning about it is silenced with the rest of its per-packet
    /// warnings (logging.rs).
    SubscribeRefused {
        reasons: String,
    },
    /// rumqttc waits for this packet id's ack before sending more ("collision").
    AwaitAck(u16),
    /// Our DISCONNECT left.
    DisconnectSent,
    Other,
}

/// The biggest packet we read. rumqttc's 10 KiB default let one big retained message on the
/// Home Assistant topics we subscribe to (another client's, say) fail every connection.
const MAX_INCOMING: usize = 64 * 1024;
/// How an error for a packet over [`MAX_INCOMING`] starts.
pub(super) const OVERSIZED: &str = "the broker sent a packet over our 64 KiB limit";

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

fn transport(cfg: &MqttConfig) -> Option<Transport> {
    cfg.tls
        .as_ref()
        .map(|tls| Transport::tls_with_config(TlsConfiguration::Rustls(tls.rustls.clone())))
}

/// MQTT 3.1.1 options for one server; the same client id, session and will everywhere.
fn options_v4(cfg: &MqttConfig, server: &Server) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), server.host.clone(), server.port);
    opts.set_clean_session(cfg.clean_session);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_inflight(PKID_SLOTS as u16);
    // Outgoing stays at rumqttc's 10 KiB, which the config's bounds keep every
    // publish under.
    opts.set_max_packet_size(MAX_INCOMING, 10 * 1024);
    if let Some((user, password)) = &cfg.credentials {
        opts.set_credentials(user.clone(), password.0.clone());
    }
    if let Some(a) = &cfg.availability {
        let will = LastWill::new(&a.topic, a.offline.clone(), QoS::AtLeastOnce, true);
        opts.set_last_will(will);
    }
    if let Some(t) = transport(cfg) {
        opts.set_transport(t);
    }
    opts
}

/// MQTT 5 options for one server.
fn options_v5(cfg: &MqttConfig, server: &Server) -> r5::MqttOptions {
    let mut opts = r5::MqttOptions::new(cfg.client_id.clone(), server.host.clone(), server.port);
    opts.set_clean_start(cfg.clean_session);
    // Without an expiry an MQTT 5 session ends with the connection, whatever clean_start
    // says. Config validation keeps it within u32 seconds.
    opts.set_session_expiry_interval(Some(cfg.session_expiry.as_secs() as u32));
    opts.set_keep_alive(cfg.keep_alive);
    // Its default is u16::MAX packet-id slots (a 14 MB table); the broker's Receive
    // Maximum can lower this further, which the CONNACK event reports.
    opts.set_outgoing_inflight_upper_limit(PKID_SLOTS as u16);
    // Sent in CONNECT as Maximum Packet Size: the broker drops a bigger message for us
    // instead of sending it (and rumqttc reads up to it).
    opts.set_max_packet_size(Some(MAX_INCOMING as u32));
    if let Some((user, password)) = &cfg.credentials {
        opts.set_credentials(user.clone(), password.0.clone());
    }
    if let Some(a) = &cfg.availability {
        let will = p5::LastWill::new(
            &a.topic,
            a.offline.clone(),
            r5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        );
        opts.set_last_will(will);
    }
    if let Some(t) = transport(cfg) {
        opts.set_transport(t);
    }
    opts
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
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let qos = qos5(qos);
                let result = match props.into_v5() {
                    Some(p) => c.try_publish_with_properties(topic, qos, retain, payload, p),
                    None => c.try_publish(topic, qos, retain, payload),
                };
                result.map_err(|e| e.to_string())
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
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl EventLoop {
    /// The next event; an error is already worded for the log (what went wrong, where to look).
    /// Cancel-safe in the same way as rumqttc's `poll()`: only drop it when the link goes anyway.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V4 { el, .. } => el.poll().await.map(from_v4).map_err(|e| {
                if format!("{e:?}").contains("PayloadSizeLimitExceeded") {
                    format!("{OVERSIZED}: {}", describe::v4(&e))
                } else {
                    describe::v4(&e)
                }
            }),
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

/// What rumqttc reports of its own sends: the same type for both protocols.
fn from_outgoing(outgoing: rumqttc::Outgoing) -> Event {
    use rumqttc::Outgoing;
    match outgoing {
        Outgoing::Publish(pkid) => Event::Sent(pkid),
        Outgoing::Subscribe(_) => Event::SubscribeSent,
        Outgoing::AwaitAck(pkid) => Event::AwaitAck(pkid),
        Outgoing::Disconnect => Event::DisconnectSent,
        _ => Event::Other,
    }
}

fn from_v4(event: rumqttc::Event) -> Event {
    use rumqttc::mqttbytes::v4::SubscribeReasonCode;
    use rumqttc::{Event as E, Packet};
    match event {
        E::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
            session_present: ack.session_present,
            slots: PKID_SLOTS,
        },
        E::Outgoing(o) => from_outgoing(o),
        E::Incoming(Packet::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            code: 0,
            reason: None,
        },
        E::Incoming(Packet::PingResp) => Event::PingResp,
        E::Incoming(Packet::Publish(p)) => Event::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        E::Incoming(Packet::SubAck(ack)) => refused_subscription(
            ack.return_codes
                .iter()
                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_))),
        ),
        _ => Event::Other,
    }
}

fn from_v5(event: r5::Event) -> Event {
    use r5::{Event as E, Incoming};
    match event {
        E::Incoming(Incoming::ConnAck(ack)) => Event::ConnAck {
            session_present: ack.session_present,
            // What rumqttc's state does with it: the smaller of its limit and the broker's
            // Receive Maximum (0 is a protocol error; rumqttc would then stall, we stay at 1).
            slots: match ack.properties.and_then(|p| p.receive_max) {
                Some(max) => usize::from(max).clamp(1, PKID_SLOTS),
                None => PKID_SLOTS,
            },
        },
        E::Outgoing(o) => from_outgoing(o),
        E::Incoming(Incoming::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            code: puback_code(ack.reason),
            reason: ack.properties.and_then(|p| p.reason_string),
        },
        E::Incoming(Incoming::PingResp(_)) => Event::PingResp,
        E::Incoming(Incoming::Publish(p)) => Event::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        },
        E::Incoming(Incoming::SubAck(ack)) => refused_subscription(
            ack.return_codes
                .iter()
                .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_))),
        ),
        _ => Event::Other,
    }
}

/// `SubscribeRefused` if any SUBACK code is a refusal.
fn refused_subscription<C: std::fmt::Debug>(mut refused: impl Iterator<Item = C>) -> Event {
    match refused.next() {
        None => Event::Other,
        Some(first) => {
            let rest: String = refused.map(|c| format!(", {c:?}")).collect();
            Event::SubscribeRefused {
                reasons: format!("{first:?}{rest}"),
            }
        }
    }
}

/// The wire value of a PUBACK reason (rumqttc keeps its own mapping private).
fn puback_code(reason: p5::PubAckReason) -> u8 {
    use p5::PubAckReason as R;
    match reason {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connack(receive_max: Option<u16>) -> r5::Event {
        let properties = p5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        r5::Event::Incoming(r5::Incoming::ConnAck(p5::ConnAck {
            session_present: true,
            code: p5::ConnectReturnCode::Success,
            properties: Some(properties),
        }))
    }

    /// Mosquitto announces Receive Maximum 20: rumqttc then cycles through 20 packet ids, and
    /// the feeder's window must fit in them.
    #[test]
    fn the_brokers_receive_maximum_limits_the_slots() {
        let slots = |e| match from_v5(e) {
            Event::ConnAck { slots, .. } => slots,
            other => panic!("{other:?}"),
        };
        assert_eq!(slots(connack(Some(20))), 20);
        assert_eq!(slots(connack(Some(1000))), PKID_SLOTS);
        assert_eq!(slots(connack(None)), PKID_SLOTS);
        assert_eq!(slots(connack(Some(0))), 1);
    }

    #[test]
    fn a_refused_subscription_is_reported_on_both_protocols() {
        use rumqttc::mqttbytes::v4;
        let v4 = |codes| {
            from_v4(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(
                v4::SubAck::new(1, codes),
            )))
        };
        let ok = v4::SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert!(matches!(v4(vec![ok, ok]), Event::Other));
        assert!(matches!(
            v4(vec![ok, v4::SubscribeReasonCode::Failure]),
            Event::SubscribeRefused { reasons } if reasons == "Failure"
        ));
        let v5 = from_v5(r5::Event::Incoming(r5::Incoming::SubAck(p5::SubAck {
            pkid: 1,
            return_codes: vec![p5::SubscribeReasonCode::NotAuthorized],
            properties: None,
        })));
        assert!(matches!(v5, Event::SubscribeRefused { reasons } if reasons == "NotAuthorized"));
    }

    #[test]
    fn puback_reasons_keep_their_wire_codes() {
        use p5::PubAckReason as R;
        // Every variant, against the byte rumqttc itself puts on the wire for it.
        let all = [
            R::Success,
            R::NoMatchingSubscribers,
            R::UnspecifiedError,
            R::ImplementationSpecificError,
            R::NotAuthorized,
            R::TopicNameInvalid,
            R::PacketIdentifierInUse,
            R::QuotaExceeded,
            R::PayloadFormatInvalid,
        ];
        for reason in all {
            let ack = p5::PubAck {
                pkid: 7,
                reason,
                properties: None,
            };
            let mut wire = bytes::BytesMut::new();
            p5::Packet::PubAck(ack.clone())
                .write(&mut wire, None)
                .expect("encodes");
            // Fixed header, remaining length, packet id (2 bytes), then the reason code; a
            // bare Success may leave it out.
            let on_wire = wire.get(4).copied().unwrap_or(0);
            let e = r5::Event::Incoming(r5::Incoming::PubAck(ack));
            match from_v5(e) {
                Event::Acked { pkid: 7, code, .. } => {
                    assert_eq!(code, on_wire, "{reason:?}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
