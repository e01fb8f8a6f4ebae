//! Connection errors worded so a user can act on them, and sorted into [`LinkError`] kinds.
//!
//! The wording says what went wrong and where to look.

use super::protocol::LinkError;

/// An MQTT 3.1.1 connection error.
pub(super) fn v4(error: &rumqttc::ConnectionError) -> LinkError {
    use rumqttc::ConnectReturnCode as C;
    use rumqttc::ConnectionError as E;
    use rumqttc::StateError as S;
    if let E::ConnectionRefused(code) = error {
        let why = match code {
            C::BadUserNamePassword => BAD_LOGIN,
            C::NotAuthorized => NOT_AUTHORIZED,
            C::BadClientId => "the broker rejects the client_id",
            C::ServiceUnavailable => "the broker is unavailable",
            _ => "the broker refused the connection",
        };
        return refused(why, code);
    }
    let what = match error {
        E::MqttState(S::Deserialization(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(
            _,
        ))) => {
            return LinkError::Oversized {
                message: with_hint(error.to_string()),
            };
        }
        E::MqttState(S::Unsolicited(_)) => Some("Unsolicited"),
        E::MqttState(S::Deserialization(_)) => Some("Deserialization"),
        E::NotConnAck(_) => Some("NotConnAck"),
        _ => None,
    };
    other(error.to_string(), what)
}

/// An MQTT 5 connection error.
/// `connected_once`: this server sent a CONNACK before on this daemon run, so a closed link is not a
/// protocol mismatch.
pub(super) fn v5(error: &rumqttc::v5::ConnectionError, connected_once: bool) -> LinkError {
    use rumqttc::v5::ConnectionError as E;
    use rumqttc::v5::StateError as S;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    if let E::ConnectionRefused(code) = error {
        let why = match code {
            C::BadUserNamePassword => BAD_LOGIN,
            C::NotAuthorized => NOT_AUTHORIZED,
            C::BadClientId | C::ClientIdentifierNotValid => "the broker rejects the client_id",
            C::ServiceUnavailable | C::ServerUnavailable | C::ServerBusy => {
                "the broker is unavailable"
            }
            C::Banned => "the broker has banned this client",
            C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => UNSUPPORTED,
            _ => "the broker refused the connection",
        };
        return refused(why, code);
    }
    let text = error.to_string();
    // A 3.1.1-only broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK ("unacceptable
    // protocol version": 2 bytes where MQTT 5 wants more) and closes: rumqttc then only sees
    // the connection end (NATS server 2.9 does this).
    if !connected_once && matches!(error, E::MqttState(S::ConnectionAborted)) {
        return LinkError::Network {
            message: format!(
                "{text} (at every connect attempt, this is what a broker that does not speak \
                 MQTT 5 does: remove `protocol = 5` from [mqtt])"
            ),
        };
    }
    // The ones whose message carries a packet id or a size.
    let what = match error {
        E::MqttState(S::Unsolicited(_)) => Some("Unsolicited"),
        E::MqttState(S::Deserialization(_)) => Some("Deserialization"),
        E::MqttState(S::InvalidAlias { .. }) => Some("InvalidAlias"),
        E::MqttState(S::OutgoingPacketTooLarge { .. }) => Some("OutgoingPacketTooLarge"),
        E::MqttState(S::IncomingPacketTooLarge { .. }) => Some("IncomingPacketTooLarge"),
        E::NotConnAck(_) => Some("NotConnAck"),
        _ => None,
    };
    other(text, what)
}

/// A CONNACK that refused us: what it means, and the broker's own code.
fn refused(why: &str, code: &impl std::fmt::Debug) -> LinkError {
    LinkError::Refused {
        message: format!("{why} (broker said {code:?})"),
    }
}

/// Any other failure: a certificate problem (with its hint), a protocol error (`what` is
/// rumqttc's name for it), or the network.
fn other(text: String, what: Option<&'static str>) -> LinkError {
    match (Certificate::of(&text), what) {
        (Some(problem), _) => LinkError::Certificate {
            message: format!("{text}{}", problem.hint()),
            problem,
        },
        (None, Some(what)) => LinkError::Protocol {
            what,
            message: text,
        },
        (None, None) => LinkError::Network { message: text },
    }
}

const BAD_LOGIN: &str =
    "the username or password is wrong: check username and password (or password_file)";
const NOT_AUTHORIZED: &str =
    "not authorized: check username and password (or password_file), and the broker's ACL";
const UNSUPPORTED: &str =
    "the broker does not speak MQTT 5: remove `protocol = 5` from [mqtt] (3.1.1 is the default)";

/// A TLS certificate problem the log gives a hint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Certificate {
    UnknownIssuer,
    NotValidForName,
    NotValidYet,
    Expired,
    Required,
}

impl Certificate {
    /// The problem `text` names, if any. rustls names some causes by variant (`UnknownIssuer`)
    /// and writes others out with their context ("certificate expired: verification time
    /// ..."): match both.
    fn of(text: &str) -> Option<Certificate> {
        let has = |a: &str, b: &str| text.contains(a) || text.contains(b);
        if text.contains("UnknownIssuer") {
            Some(Certificate::UnknownIssuer)
        } else if has("NotValidForName", "certificate not valid for name") {
            Some(Certificate::NotValidForName)
        } else if has("NotValidYet", "certificate not valid yet") {
            // Before "Expired": a Pi has no real-time clock, and until NTP has set it (or with
            // no network at all) every certificate looks like this.
            Some(Certificate::NotValidYet)
        } else if has("Expired", "certificate expired") {
            Some(Certificate::Expired)
        } else if has("CertificateRequired", "certificate required") {
            Some(Certificate::Required)
        } else {
            None
        }
    }

    /// What to check, appended to the message.
    fn hint(self) -> &'static str {
        match self {
            Certificate::UnknownIssuer => {
                " (the broker's certificate is not signed by a CA we trust: check [mqtt.tls] ca_file)"
            }
            Certificate::NotValidForName => {
                " (the broker's certificate does not name the configured host: check [mqtt] host)"
            }
            Certificate::NotValidYet => {
                " (a certificate is not valid yet: this machine's clock is behind, e.g. a Pi without a real-time clock before NTP set the time; check `timedatectl`)"
            }
            Certificate::Expired => {
                " (a certificate has expired, or this machine's clock is wrong)"
            }
            Certificate::Required => {
                " (the broker wants a client certificate: set [mqtt.tls] client_cert and client_key)"
            }
        }
    }
}

/// `text` with the hint for the certificate problem it names, if any.
fn with_hint(text: String) -> String {
    match Certificate::of(&text) {
        Some(problem) => format!("{text}{}", problem.hint()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use rumqttc::ConnectionError as E;
    use rumqttc::v5::ConnectionError as E5;

    use super::*;

    fn io(text: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, text.to_owned())
    }

    fn expired(now: u64) -> E {
        E::Tls(rumqttc::TlsError::Io(io(&format!(
            "invalid peer certificate: certificate expired: verification time {now} (UNIX), but certificate is not valid after 1795000000 (3 days ago)"
        ))))
    }

    /// The log shows one line per cause: an expired certificate is the same cause at every
    /// attempt, though rustls words it with the time of each.
    #[test]
    fn a_cause_stays_the_same_while_its_message_changes() {
        let (a, b) = (v4(&expired(1795595654)), v4(&expired(1795595655)));
        assert_eq!(a.cause(), b.cause());
        assert_eq!(
            a.to_string(),
            "TLS: I/O: invalid peer certificate: certificate expired: verification time 1795595654 (UNIX), but certificate is not valid after 1795000000 (3 days ago) (a certificate has expired, or this machine's clock is wrong)"
        );
        let unsolicited = |pkid| v4(&E::MqttState(rumqttc::StateError::Unsolicited(pkid)));
        assert_eq!(unsolicited(3).cause(), unsolicited(4).cause());
        assert_eq!(
            unsolicited(3).to_string(),
            "Mqtt state: Received unsolicited ack pkid: 3"
        );
        let unsolicited = |pkid| {
            v5(
                &E5::MqttState(rumqttc::v5::StateError::Unsolicited(pkid)),
                true,
            )
        };
        assert_eq!(unsolicited(3).cause(), unsolicited(4).cause());
    }

    #[test]
    fn different_causes_are_told_apart() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let causes = [
            v4(&E::Io(refused)).cause(),
            v4(&E::Io(reset)).cause(),
            v4(&E::NetworkTimeout).cause(),
            v4(&expired(1)).cause(),
            v4(&E::Tls(rumqttc::TlsError::Io(io(
                "invalid peer certificate: UnknownIssuer",
            ))))
            .cause(),
            v4(&E::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized,
            ))
            .cause(),
            v4(&E::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword,
            ))
            .cause(),
            v4(&E::MqttState(rumqttc::StateError::Unsolicited(1))).cause(),
            v4(&E::MqttState(rumqttc::StateError::AwaitPingResp)).cause(),
            v5(
                &E5::MqttState(rumqttc::v5::StateError::ConnectionAborted),
                false,
            )
            .cause(),
        ];
        for (i, a) in causes.iter().enumerate() {
            for b in &causes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    /// The connection task turns the subscriptions off on this kind.
    #[test]
    fn a_packet_over_our_limit_is_its_own_kind() {
        use rumqttc::mqttbytes::Error as M;
        let e = v4(&E::MqttState(rumqttc::StateError::Deserialization(
            M::PayloadSizeLimitExceeded(70_000),
        )));
        assert!(matches!(e, LinkError::Oversized { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the broker sent a packet over our 64 KiB limit: Mqtt state: Mqtt serialization/deserialization error: payload size limit exceeded: 70000"
        );
        let refused = v4(&E::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        ));
        assert_eq!(
            refused.to_string(),
            "not authorized: check username and password (or password_file), and the broker's ACL (broker said NotAuthorized)"
        );
    }
}
