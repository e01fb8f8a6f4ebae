//! The task that owns the rumqttc `EventLoop`: connects, reconnects with backoff, and reports
//! link events to the feeder in the order they happened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, Request};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Link;
use super::backoff::Backoff;
use crate::Stats;
use crate::logging::Throttle;

const RECONNECT_MIN: Duration = Duration::from_millis(500);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How long a clean stop waits for our DISCONNECT to leave.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// What the connection task talks to.
pub(super) struct Connection {
    /// `host:port`, for logs.
    pub broker: String,
    pub stats: Arc<Stats>,
    pub events: mpsc::Sender<Link>,
    /// Bumped by the feeder when the broker stops acknowledging: drop the link and reconnect.
    pub reconnect: watch::Receiver<u64>,
}

/// Runs until `stop` (cancelled once the feeder is done) or until the feeder is gone.
pub(super) async fn run(mut eventloop: EventLoop, mut c: Connection, stop: CancellationToken) {
    let broker = c.broker.clone();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut throttle = Throttle::default();
    let mut failures = 0u64;
    let mut connected = false;
    // Set by the first ack or ping response: only a link that works resets the backoff, so a
    // broker that accepts us and then drops us at once is not hammered twice a second.
    let mut healthy = false;
    loop {
        c.stats.mqtt_beat.beat();
        // `poll()` is dropped mid-flight only when stopping or when the link is being dropped
        // anyway; a half-written packet matters to neither.
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = c.reconnect.changed(), if connected => match changed {
                Ok(()) => Err("the broker stopped acknowledging publishes".to_owned()),
                Err(_) => break,
            },
            polled = eventloop.poll() => polled.map_err(|e| describe(&e)),
        };
        let link = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                healthy = false;
                c.stats.connected.store(true, Ordering::Relaxed);
                c.stats.connects.fetch_add(1, Ordering::Relaxed);
                // A reconnect asked for on the previous link is done.
                c.reconnect.borrow_and_update();
                info!(%broker, session_present = ack.session_present, failed_attempts = failures, "connected to the broker");
                throttle = Throttle::default();
                failures = 0;
                Link::Connected
            }
            Ok(event) => {
                if !healthy
                    && matches!(event, Event::Incoming(Packet::PubAck(_) | Packet::PingResp))
                {
                    healthy = true;
                    backoff.reset();
                }
                match translate(event) {
                    Some(link) => link,
                    None => continue,
                }
            }
            Err(error) => {
                if !link_down(&mut eventloop, &c.events).await {
                    return;
                }
                if connected {
                    connected = false;
                    c.stats.connected.store(false, Ordering::Relaxed);
                    info!(%broker, reason = %error, "disconnected from the broker; reconnecting");
                } else {
                    failures += 1;
                    // Without the digits: some causes carry the time ("certificate expired:
                    // verification time 1795595654 ...") and would otherwise never repeat.
                    let cause: String = error.chars().filter(|c| !c.is_ascii_digit()).collect();
                    match throttle.admit(&cause) {
                        Some(_) => {
                            warn!(%broker, %error, attempts = failures, "cannot connect to the broker; retrying with backoff")
                        }
                        None => {
                            debug!(%broker, %error, attempts = failures, "cannot connect to the broker")
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        if c.events.send(link).await.is_err() {
            return;
        }
    }
    if connected {
        // The feeder asked for a DISCONNECT on its way out; let it reach the broker.
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            while !matches!(
                eventloop.poll().await,
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
            ) {}
        })
        .await;
        info!(%broker, "disconnected from the broker");
    }
    c.stats.connected.store(false, Ordering::Relaxed);
}

/// After any connection error: tells the feeder, waits until it has forgotten what was in
/// flight, and makes sure rumqttc resends nothing itself. False if the feeder is gone.
async fn link_down(eventloop: &mut EventLoop, events: &mpsc::Sender<Link>) -> bool {
    // Events read before the failure (PUBACKs among them) come first: a real ack must not be
    // lost, or its reading would be sent again for nothing.
    let queued: Vec<Event> = eventloop.state.events.drain(..).collect();
    for link in queued.into_iter().filter_map(translate) {
        if events.send(link).await.is_err() {
            return false;
        }
    }
    let (done_tx, done_rx) = oneshot::channel();
    if events.send(Link::Down(done_tx)).await.is_err() || done_rx.await.is_err() {
        return false;
    }
    // The feeder will requeue everything unacknowledged from the store. Empty rumqttc's own
    // resend queue: its unacked publishes and whatever the feeder queued before it heard of
    // the failure. Otherwise `session_present = false` would silently drop them, and a resumed
    // session would send them twice by two mechanisms. (`clean()` is idempotent; poll() ran it
    // already unless we dropped the link ourselves.)
    eventloop.clean();
    eventloop
        .pending
        .retain(|r| !matches!(r, Request::Publish(_)));
    eventloop.state.collision = None;
    true
}

/// The error as a user can act on it: what went wrong and where to look.
fn describe(error: &ConnectionError) -> String {
    let text = error.to_string();
    let hint = match error {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "the username or password is wrong",
                ConnectReturnCode::NotAuthorized => {
                    "not authorized: check username and password (or password_file), and the broker's ACL"
                }
                ConnectReturnCode::BadClientId => "the broker rejects the client_id",
                ConnectReturnCode::ServiceUnavailable => "the broker is unavailable",
                _ => "the broker refused the connection",
            };
            return format!("{why} (broker said {code:?})");
        }
        _ if text.contains("UnknownIssuer") => {
            " (the broker's certificate is not signed by a CA we trust: check [mqtt.tls] ca_file)"
        }
        // rustls names some causes by variant (`UnknownIssuer`) and writes others out with
        // their context ("certificate expired: verification time ..."): match both.
        _ if text.contains("NotValidForName")
            || text.contains("certificate not valid for name") =>
        {
            " (the broker's certificate does not name the configured host: check [mqtt] host)"
        }
        // Checked before "Expired": a Pi has no real-time clock, and until NTP has set it
        // (or with no network at all) every certificate looks like this.
        _ if text.contains("NotValidYet") || text.contains("certificate not valid yet") => {
            " (a certificate is not valid yet: this machine's clock is behind, e.g. a Pi without a real-time clock before NTP set the time; check `timedatectl`)"
        }
        _ if text.contains("Expired") || text.contains("certificate expired") => {
            " (a certificate has expired, or this machine's clock is wrong)"
        }
        _ if text.contains("CertificateRequired") || text.contains("certificate required") => {
            " (the broker wants a client certificate: set [mqtt.tls] client_cert and client_key)"
        }
        _ => "",
    };
    format!("{text}{hint}")
}

fn translate(event: Event) -> Option<Link> {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(Link::Sent(pkid)),
        Event::Incoming(Packet::PubAck(ack)) => Some(Link::Acked(ack.pkid)),
        Event::Incoming(Packet::Publish(p)) => Some(Link::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        }),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
            debug!(pkid, "packet id still in use; rumqttc waits for its ack");
            None
        }
        _ => None,
    }
}
