//! The connection task: owns the rumqttc `EventLoop`, connects, fails over and reconnects.
//!
//! It fails over along `[mqtt] servers`, reconnects with backoff between full rounds, and
//! reports link events to the feeder in the order they happened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Link;
use super::backoff::Backoff;
use super::protocol::{Event, EventLoop, LinkError};
use super::puback::{self, Verdict};
use super::servers::{Rotation, Server};
use crate::Stats;
use crate::logging::Throttle;

const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// How long a clean stop waits for our DISCONNECT to leave.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// What the connection task talks to.
pub(super) struct Connection {
    /// `[mqtt] servers`, in order (at least one).
    pub servers: Vec<Server>,
    /// The cap of the pause between two rounds of attempts.
    pub reconnect_max: Duration,
    pub stats: Arc<Stats>,
    pub events: mpsc::Sender<Link>,
    /// Set by the feeder when the broker stops acknowledging: drop the link and reconnect.
    pub reconnect: watch::Receiver<()>,
    /// Cleared after a packet over our incoming limit (a huge retained message on a topic
    /// we subscribe to): the feeder stops subscribing.
    pub subscribe: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs until `stop` (cancelled once the feeder is done) or until the feeder is gone.
pub(super) async fn run(mut eventloop: EventLoop, mut c: Connection, stop: CancellationToken) {
    let mut rotation = Rotation::new(c.servers.len());
    let mut broker = on_server(&mut eventloop, &c, rotation.current());
    let mut backoff = Backoff::new(RECONNECT_MIN, c.reconnect_max);
    // One per server: a throttle remembers only its last cause, and the causes of a round
    // alternate (one node refuses, the next times out), which would let every attempt through.
    let n = c.servers.len();
    let new_throttles = move || -> Vec<Throttle> { (0..n).map(|_| Throttle::default()).collect() };
    let mut throttles = new_throttles();
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
                Ok(()) => {
                    c.reconnect.borrow_and_update();
                    Err(LinkError::Unacknowledged)
                }
                Err(_) => break,
            },
            polled = eventloop.poll() => polled,
        };
        let link = match polled {
            Ok(Event::ConnAck {
                session_present,
                slots,
            }) => {
                connected = true;
                healthy = false;
                c.stats.connected.store(true, Ordering::Relaxed);
                c.stats.connects.fetch_add(1, Ordering::Relaxed);
                // A reconnect asked for on the previous link is done.
                c.reconnect.borrow_and_update();
                info!(server = %broker, session_present, failed_attempts = failures, "connected to the broker");
                if slots < super::PKID_SLOTS {
                    debug!(
                        receive_maximum = slots,
                        "the broker accepts fewer unacknowledged publishes: the window shrinks to fit"
                    );
                }
                throttles = new_throttles();
                failures = 0;
                Link::Connected { slots }
            }
            Ok(event) => {
                // A refused publish does not show the link works: a broker that refuses
                // everything must not be retried twice a second.
                let works = match &event {
                    Event::PingResp => true,
                    Event::Acked { code, .. } => puback::verdict(*code) == Verdict::Delivered,
                    _ => false,
                };
                if !healthy && works {
                    healthy = true;
                    backoff.reset();
                    rotation.works();
                }
                match translate(event) {
                    Some(link) => link,
                    None => continue,
                }
            }
            Err(error) => {
                if matches!(error, LinkError::Oversized { .. })
                    && c.subscribe.swap(false, Ordering::Relaxed)
                {
                    // Only our subscriptions bring unasked packets; without them (and without
                    // the session that holds the message for us) the link works.
                    warn!(server = %broker, %error, "a message on a subscribed Home Assistant topic is too big: discovery subscriptions are off until restart");
                    eventloop.forget_session();
                }
                if !link_down(&mut eventloop, &c.events).await {
                    return;
                }
                let failed_index = rotation.current();
                let round_failed = rotation.failed();
                let left = broker;
                broker = on_server(&mut eventloop, &c, rotation.current());
                // With one server, "next" is the same one again.
                let next = (c.servers.len() > 1).then_some(&broker);
                if connected {
                    connected = false;
                    c.stats.connected.store(false, Ordering::Relaxed);
                    match next {
                        Some(next) => {
                            warn!(server = %left, reason = %error, %next, "disconnected from the broker; failing over to the next server")
                        }
                        None => {
                            info!(server = %left, reason = %error, "disconnected from the broker; reconnecting")
                        }
                    }
                } else {
                    failures += 1;
                    // By cause, not by message: some messages carry the time ("certificate
                    // expired: verification time 1795595654 ...") or a packet id, and would
                    // otherwise never repeat. Per server: each one's refusal is reported with
                    // its own reason.
                    match throttles[failed_index].admit(&error.cause()) {
                        Some(_) => match next {
                            Some(next) => {
                                warn!(server = %left, %error, attempts = failures, %next, "cannot connect to the broker; trying the next server")
                            }
                            None => {
                                warn!(server = %left, %error, attempts = failures, "cannot connect to the broker; retrying with backoff")
                            }
                        },
                        None => {
                            debug!(server = %left, %error, attempts = failures, "cannot connect to the broker")
                        }
                    }
                }
                // The next server of a round is tried at once; a pause only after every
                // server failed once (with one server: after every failure).
                if round_failed {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
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
            while !matches!(eventloop.poll().await, Ok(Event::DisconnectSent) | Err(_)) {}
        })
        .await;
        info!(server = %broker, "disconnected from the broker");
    }
    c.stats.connected.store(false, Ordering::Relaxed);
}

/// Points the event loop at `c.servers[index]` for its next CONNECT and publishes it as the
/// current server (STATUS, the stats JSON). Returns it, for the log.
fn on_server(eventloop: &mut EventLoop, c: &Connection, index: usize) -> Server {
    let server = c.servers[index].clone();
    eventloop.use_server(index);
    c.stats.set_server(&server);
    server
}

/// After any connection error: tells the feeder, waits until it has forgotten what was in
/// flight, and makes sure rumqttc resends nothing itself. False if the feeder is gone.
async fn link_down(eventloop: &mut EventLoop, events: &mpsc::Sender<Link>) -> bool {
    // Events read before the failure (PUBACKs among them) come first: a real ack must not be
    // lost, or its reading would be sent again for nothing.
    for link in eventloop.take_queued().into_iter().filter_map(translate) {
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
    // session would send them twice by two mechanisms.
    eventloop.recover();
    true
}

/// The events the feeder needs; CONNACKs are handled by the loop itself.
fn translate(event: Event) -> Option<Link> {
    match event {
        Event::Sent(_)
        | Event::SubscribeSent
        | Event::Acked { .. }
        | Event::Message { .. }
        | Event::SubscribeRefused { .. } => Some(Link::Wire(event)),
        Event::AwaitAck(pkid) => {
            debug!(pkid, "packet id still in use; rumqttc waits for its ack");
            None
        }
        _ => None,
    }
}
