//! MQTT publishing: the application, not rumqttc, owns retransmission (see docs/ARCHITECTURE.md).
//!
//! Two tasks share the work. The [`connection`] task owns the rumqttc `EventLoop`, never
//! cancels a `poll()` mid-flight, and reports what happened on the link. The [`feeder`] task
//! reads the outbox in key order, keeps a window of unacknowledged publishes, maps packet ids
//! to store keys and deletes a reading only when the PUBACK for the packet that carried it
//! arrives. After any connection error rumqttc's own resend queue is emptied and the feeder
//! requeues every unacknowledged key ahead of new data, so a lost or resumed session behave
//! the same.

mod backoff;
mod connection;
mod feeder;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Stats;
use crate::config::MqttConfig;
use crate::outbox::Outbox;

pub use feeder::LiveMessage;

/// Unacknowledged QoS 1 publishes we allow at once.
pub const WINDOW: usize = 50;
/// rumqttc's packet ids (its `inflight` setting). They are handed out round-robin, so the
/// feeder also keeps every new publish fewer than this many sends after the oldest unacked
/// one: reaching a busy slot would stall rumqttc in "collision" mode (rumqttc #1056).
pub const PKID_SLOTS: usize = 2 * WINDOW;

/// How long in-flight publishes get to be acknowledged once a stop is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The least time a publish may wait for its PUBACK before the link is presumed stuck.
const ACK_TIMEOUT_MIN: Duration = Duration::from_secs(10);

/// What the connection task tells the feeder, in the order it happened on the wire.
#[derive(Debug)]
enum Link {
    Connected,
    /// A publish left with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection is gone. The feeder forgets what was in flight and replies, after which
    /// nothing it queued earlier can still be sent.
    Down(oneshot::Sender<()>),
}

/// Starts the connection and feeder tasks on `tracker`. The feeder stops on `shutdown` after
/// the grace period; the connection task stops once the feeder is done.
pub fn spawn(
    cfg: &MqttConfig,
    outbox: Arc<Outbox>,
    live: mpsc::Receiver<LiveMessage>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_clean_session(cfg.clean_session);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_inflight(PKID_SLOTS as u16);
    // Room for a full window plus QoS 0 live readings; try_publish never waits.
    let (client, eventloop) = AsyncClient::new(opts, WINDOW * 2 + 64);
    let (link_tx, link_rx) = mpsc::channel(1024);
    let (reconnect_tx, reconnect_rx) = watch::channel(0);
    let link_done = CancellationToken::new();
    let broker = format!("{}:{}", cfg.host, cfg.port);
    // Longer than keep-alive takes to notice a dead link, so this only fires on a broker that
    // is alive but not acknowledging.
    let ack_timeout = (cfg.keep_alive * 2).max(ACK_TIMEOUT_MIN);

    let conn = connection::Connection {
        broker,
        stats: stats.clone(),
        events: link_tx,
        reconnect: reconnect_rx,
    };
    tracker.spawn(connection::run(eventloop, conn, link_done.clone()));
    tracker.spawn(async move {
        // Even if the feeder panics, the connection task must stop, or shutdown would hang.
        let _stop_connection = link_done.drop_guard();
        let channels = feeder::Channels {
            link: link_rx,
            live,
            reconnect: reconnect_tx,
        };
        feeder::run(client, outbox, channels, stats, ack_timeout, shutdown).await;
    });
}
