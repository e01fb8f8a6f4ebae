//! rumqttc's events, MQTT 3.1.1 or 5, mapped onto our one [`Event`] type.
//!
//! The connection task and the feeder read only [`Event`]s.

use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::mqtt::PKID_SLOTS;

/// What rumqttc reported, whatever the protocol.
#[derive(Debug)]
pub(in crate::mqtt) enum Event {
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

pub(super) fn from_v4(event: rumqttc::Event) -> Event {
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

pub(super) fn from_v5(event: r5::Event) -> Event {
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
    use rumqttc::QoS;

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
