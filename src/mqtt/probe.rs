//! One test connection to the broker for `telemetryd check`: does it answer, and accept us?

use std::time::Duration;

use super::protocol::{self, Event};
use crate::config::MqttConfig;

/// What the probe found: the daemon's own words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The broker accepted a CONNECT with our settings (as `client_id`).
    Connected { client_id: String },
    /// As the daemon's log puts it after `cannot connect to the broker`.
    Failed(String),
}

/// Connects once with the daemon's host, port, TLS, login and protocol, but under a client id
/// of its own (`<client_id>-check`), a clean session and no Last Will: the running daemon's
/// session is not taken over, and nothing is published (no `offline`). Gives up after
/// `timeout`. `server` is an index into `cfg.servers`.
pub async fn probe(cfg: &MqttConfig, server: usize, timeout: Duration) -> Probe {
    let mut cfg = cfg.clone();
    cfg.client_id = format!("{}-check", cfg.client_id);
    cfg.clean_session = true;
    cfg.session_expiry = Duration::ZERO;
    cfg.availability = None;
    let (client, mut eventloop) = protocol::connect(&cfg, 10);
    eventloop.use_server(server);
    let answer = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::ConnAck { .. }) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(())) => {
            client.try_disconnect();
            // Lets the DISCONNECT leave, so the broker does not log a dropped client.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(e) = eventloop.poll().await {
                    if matches!(e, Event::DisconnectSent) {
                        break;
                    }
                }
            })
            .await;
            Probe::Connected {
                client_id: cfg.client_id,
            }
        }
        Ok(Err(e)) => Probe::Failed(e.to_string()),
        Err(_) => Probe::Failed(format!(
            "no answer within {}: a firewall, a wrong host, or a broker that is not listening",
            humantime::format_duration(timeout)
        )),
    }
}
