//! Connection errors worded so a user can act on them: what went wrong and where to look.

/// An MQTT 3.1.1 connection error.
pub(super) fn v4(error: &rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as C;
    if let rumqttc::ConnectionError::ConnectionRefused(code) = error {
        let why = match code {
            C::BadUserNamePassword => BAD_LOGIN,
            C::NotAuthorized => NOT_AUTHORIZED,
            C::BadClientId => "the broker rejects the client_id",
            C::ServiceUnavailable => "the broker is unavailable",
            _ => "the broker refused the connection",
        };
        return format!("{why} (broker said {code:?})");
    }
    with_hint(error.to_string())
}

/// An MQTT 5 connection error.
/// `connected_once`: this server sent a CONNACK before on this daemon run, so a closed link is not a
/// protocol mismatch.
pub(super) fn v5(error: &rumqttc::v5::ConnectionError, connected_once: bool) -> String {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    if let rumqttc::v5::ConnectionError::ConnectionRefused(code) = error {
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
        return format!("{why} (broker said {code:?})");
    }
    let text = error.to_string();
    // A 3.1.1-only broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK ("unacceptable
    // protocol version": 2 bytes where MQTT 5 wants more) and closes: rumqttc then only sees
    // the connection end (NATS server 2.9 does this).
    if !connected_once
        && matches!(
            error,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ConnectionAborted)
        )
    {
        return format!(
            "{text} (at every connect attempt, this is what a broker that does not speak MQTT 5 \
             does: remove `protocol = 5` from [mqtt])"
        );
    }
    with_hint(text)
}

const BAD_LOGIN: &str =
    "the username or password is wrong: check username and password (or password_file)";
const NOT_AUTHORIZED: &str =
    "not authorized: check username and password (or password_file), and the broker's ACL";
const UNSUPPORTED: &str =
    "the broker does not speak MQTT 5: remove `protocol = 5` from [mqtt] (3.1.1 is the default)";

/// TLS failures. rustls names some causes by variant (`UnknownIssuer`) and writes others out
/// with their context ("certificate expired: verification time ..."): match both.
fn with_hint(text: String) -> String {
    let has = |a: &str, b: &str| text.contains(a) || text.contains(b);
    let hint = if text.contains("UnknownIssuer") {
        " (the broker's certificate is not signed by a CA we trust: check [mqtt.tls] ca_file)"
    } else if has("NotValidForName", "certificate not valid for name") {
        " (the broker's certificate does not name the configured host: check [mqtt] host)"
    } else if has("NotValidYet", "certificate not valid yet") {
        // Before "Expired": a Pi has no real-time clock, and until NTP has set it (or with no
        // network at all) every certificate looks like this.
        " (a certificate is not valid yet: this machine's clock is behind, e.g. a Pi without a real-time clock before NTP set the time; check `timedatectl`)"
    } else if has("Expired", "certificate expired") {
        " (a certificate has expired, or this machine's clock is wrong)"
    } else if has("CertificateRequired", "certificate required") {
        " (the broker wants a client certificate: set [mqtt.tls] client_cert and client_key)"
    } else {
        ""
    };
    format!("{text}{hint}")
}
