//! The task that owns the rumqttc `EventLoop`: connects, reconnects with backoff, and reports
//! link events to the feeder in the order they happened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{Event, EventLoop, Outgoing, Packet, Request};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Link;
use super::backoff::Backoff;
use crate::Stats;
use crate::logging::Throttle;

const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How long a clean stop waits for our DISCONNECT to leave.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Runs until `stop` (cancelled by the feeder once it is done) or until the feeder is gone.
pub(super) async fn run(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Link>,
    stats: Arc<Stats>,
    broker: String,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut throttle = Throttle::default();
    let mut failures = 0u64;
    let mut connected = false;
    loop {
        // `poll()` is only ever dropped here, when stopping: cancelling it mid-flight could
        // lose a half-written packet, and at that point we no longer care.
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                stats.connected.store(true, Ordering::Relaxed);
                info!(%broker, session_present = ack.session_present, failed_attempts = failures, "connected to the broker");
                backoff.reset();
                throttle = Throttle::default();
                failures = 0;
                Link::Connected
            }
            Ok(event) => match translate(event) {
                Some(link) => link,
                None => continue,
            },
            Err(error) => {
                // Events read before the failure (PUBACKs among them) come first: a real ack
                // must not be lost, or its reading would be sent again for nothing.
                let queued: Vec<Event> = eventloop.state.events.drain(..).collect();
                for link in queued.into_iter().filter_map(translate) {
                    if tx.send(link).await.is_err() {
                        return;
                    }
                }
                let (done_tx, done_rx) = oneshot::channel();
                if tx.send(Link::Down(done_tx)).await.is_err() || done_rx.await.is_err() {
                    return;
                }
                // The feeder has forgotten everything in flight and will requeue it from the
                // store. Make sure rumqttc resends nothing itself: not its unacked publishes,
                // not requests the feeder queued before it heard of the failure. Otherwise a
                // `session_present = false` would silently drop them, and a resumed session
                // would send them twice by two mechanisms.
                eventloop.clean();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(_)));
                eventloop.state.collision = None;
                if connected {
                    connected = false;
                    stats.connected.store(false, Ordering::Relaxed);
                    info!(%broker, reason = %error, "disconnected from the broker; reconnecting");
                } else {
                    failures += 1;
                    match throttle.admit(&error.to_string()) {
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
        if tx.send(event).await.is_err() {
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
    stats.connected.store(false, Ordering::Relaxed);
}

fn translate(event: Event) -> Option<Link> {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(Link::Sent(pkid)),
        Event::Incoming(Packet::PubAck(ack)) => Some(Link::Acked(ack.pkid)),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
            debug!(pkid, "packet id still in use; rumqttc waits for its ack");
            None
        }
        _ => None,
    }
}
