//! rumqttc's options for each of `[mqtt] servers`, MQTT 3.1.1 or 5.
//!
//! The same client id, session, will, limits and TLS on every server.

use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use crate::config::MqttConfig;
use crate::mqtt::PKID_SLOTS;
use crate::mqtt::servers::Server;

/// The biggest packet we read. rumqttc's 10 KiB default let one big retained message on the
/// Home Assistant topics we subscribe to (another client's, say) fail every connection.
pub(super) const MAX_INCOMING: usize = 64 * 1024;

fn transport(cfg: &MqttConfig) -> Option<Transport> {
    cfg.tls
        .as_ref()
        .map(|tls| Transport::tls_with_config(TlsConfiguration::Rustls(tls.rustls.clone())))
}

/// MQTT 3.1.1 options for one server; the same client id, session and will everywhere.
pub(super) fn options_v4(cfg: &MqttConfig, server: &Server) -> MqttOptions {
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
pub(super) fn options_v5(cfg: &MqttConfig, server: &Server) -> r5::MqttOptions {
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
