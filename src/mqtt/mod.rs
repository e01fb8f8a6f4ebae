//! MQTT publishing: the application, not rumqttc, owns retransmission (see docs/ARCHITECTURE.md).
//!
//! Two tasks share the work. The [`connection`] task owns the rumqttc `EventLoop`, never
//! cancels a `poll()` mid-flight, and reports what happened on the link. The [`feeder`] task
//! reads the outbox in key order, keeps a window of unacknowledged publishes, maps packet ids
//! to store keys and deletes a reading only when the PUBACK for the packet that carried it
//! arrives. After any connection error rumqttc's own resend queue is emptied and the feeder
//! requeues every unacknowledged key ahead of new data, so a lost or resumed session behave
//! the same. MQTT 3.1.1 and MQTT 5 share all of this.
//!
//! The map:
//! - this file: [`Publisher`], which starts both tasks and stops them, and the limits they
//!   share ([`WINDOW`], [`PKID_SLOTS`]).
//! - [`connection`]: the connection task; [`servers`] the failover list, [`backoff`] the pause
//!   between rounds, [`tls`] the rustls setup.
//! - [`protocol`]: one face over rumqttc's two clients (`options`, `events`, and `error`: the
//!   typed [`protocol::LinkError`] the connection task branches on); [`describe`] words its
//!   errors for the user.
//! - [`feeder`]: the feeder task, its select loop in `feeder/mod.rs`; the sans-IO window
//!   (`feeder/window.rs`, property-tested) decides what goes out and what a packet id names;
//!   `announce`, `acks`, `retry`, `live` and `wire` are its other concerns.
//! - What the feeder consults: [`puback`] what an MQTT 5 refusal does, [`properties`] what
//!   goes with a reading (`max_age`, message expiry, the `ts` user property), [`unsent`] the
//!   refused and expired readings, [`control`] the queue of control messages, [`last_state`]
//!   which state to send again to Home Assistant, [`birth`] how often its `online` is answered.
//! - [`probe`](mod@probe): one test connection for `telemetryd check`.

mod backoff;
mod birth;
mod connection;
mod control;
mod describe;
mod feeder;
mod last_state;
mod probe;
pub(crate) mod properties;
mod protocol;
mod puback;
pub mod servers;
mod unsent;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Stats;
use crate::config::MqttConfig;
use crate::homeassistant::Discovery;
use crate::outbox::Outbox;

pub use feeder::LiveMessage;
pub use probe::{Probe, probe};

/// Unacknowledged QoS 1 publishes we allow at once (fewer when an MQTT 5 broker's Receive
/// Maximum is lower than [`PKID_SLOTS`]: half of that).
pub const WINDOW: usize = 50;
/// rumqttc's packet ids (its `inflight` setting). They are handed out round-robin, so the
/// feeder also keeps every new publish fewer than this many sends after the oldest unacked
/// one: reaching a busy slot would stall rumqttc in "collision" mode (rumqttc #1056).
pub const PKID_SLOTS: usize = 2 * WINDOW;

/// Requests rumqttc's channel holds: a full window, a few subscriptions, and QoS 0 readings
/// in what is left (about a hundred: a burst of more waits in the committer's QoS 0 channel).
const REQUEST_CHANNEL: usize = WINDOW * 2 + 64;

/// How long in-flight publishes get to be acknowledged once a stop is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The least time a publish may wait for its PUBACK before the link is presumed stuck.
const ACK_TIMEOUT_MIN: Duration = Duration::from_secs(10);

/// How long the connection task may go without a loop turn before it counts as stuck: it
/// turns at least once per keep-alive when connected, and per attempt (a 5 s connect timeout,
/// plus a backoff step of at most `reconnect_max`) when not.
pub fn stall_limit(keep_alive: Duration, reconnect_max: Duration) -> Duration {
    (keep_alive * 2).max(reconnect_max) + Duration::from_secs(30)
}

/// What the connection task tells the feeder, in the order it happened on the wire.
#[derive(Debug)]
enum Link {
    /// Connected; rumqttc cycles through `slots` packet ids on this link.
    Connected { slots: usize },
    /// What the feeder needs of the wire: a publish sent, a PUBACK, a message on one of our
    /// subscriptions (Home Assistant's status, discovery topics), a refused subscription.
    Wire(protocol::Event),
    /// The connection is gone. The feeder forgets what was in flight and replies, after which
    /// nothing it queued earlier can still be sent.
    Down(oneshot::Sender<()>),
}

/// The running connection and feeder tasks; restarted when the MQTT settings change.
pub struct Publisher {
    /// Asks the feeder to stop (after the grace period for in-flight acks).
    stop: CancellationToken,
    feeder: JoinHandle<mpsc::Receiver<LiveMessage>>,
    connection: JoinHandle<()>,
    discovery: watch::Sender<Option<Discovery>>,
}

impl Publisher {
    /// Connects with `cfg` and starts publishing from `outbox`, and QoS 0 readings from `live`.
    pub fn start(
        cfg: &MqttConfig,
        outbox: Arc<Outbox>,
        live: mpsc::Receiver<LiveMessage>,
        discovery: Option<Discovery>,
        stats: Arc<Stats>,
    ) -> Publisher {
        let (discovery_tx, discovery_rx) = watch::channel(discovery);
        // Room for a full window, subscriptions and QoS 0 readings; the feeder's window keeps
        // QoS 0 readings to their share, so a QoS 1 publish always finds room.
        let (client, eventloop) = protocol::connect(cfg, REQUEST_CHANNEL);
        let (link_tx, link_rx) = mpsc::channel(1024);
        let (reconnect_tx, reconnect_rx) = watch::channel(());
        let stop = CancellationToken::new();
        let link_done = CancellationToken::new();
        // Longer than keep-alive takes to notice a dead link, so this only fires on a broker
        // that is alive but not acknowledging.
        let ack_timeout = (cfg.keep_alive * 2).max(ACK_TIMEOUT_MIN);

        let subscribe = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conn = connection::Connection {
            subscribe: subscribe.clone(),
            servers: cfg.servers.clone(),
            reconnect_max: cfg.reconnect_max,
            stats: stats.clone(),
            events: link_tx,
            reconnect: reconnect_rx,
        };
        let connection = tokio::spawn(connection::run(eventloop, conn, link_done.clone()));
        let feeder_stop = stop.clone();
        let availability = cfg.availability.clone();
        let cfg_max_age = cfg.max_age;
        let stats_topic = cfg.stats_topic.clone();
        let feeder = tokio::spawn(async move {
            // Even if the feeder panics, the connection task must stop, or shutdown would hang.
            let _stop_connection = link_done.drop_guard();
            let channels = feeder::Channels {
                link: link_rx,
                live,
                reconnect: reconnect_tx,
                availability,
                discovery: discovery_rx,
                subscribe,
            };
            let settings = feeder::Settings {
                ack_timeout,
                max_age: cfg_max_age,
                channel_capacity: REQUEST_CHANNEL,
                stats_topic,
            };
            feeder::run(client, outbox, channels, stats, settings, feeder_stop).await
        });
        Publisher {
            stop,
            feeder,
            connection,
            discovery: discovery_tx,
        }
    }

    /// New discovery messages (a reload changed the sensors): announced at once if connected.
    pub fn set_discovery(&self, discovery: Option<Discovery>) {
        self.discovery.send_if_modified(|d| {
            let changed = *d != discovery;
            *d = discovery;
            changed
        });
    }

    /// Stops publishing: in-flight readings get [`SHUTDOWN_GRACE`] to be acknowledged, the
    /// rest stays in the outbox. Returns the QoS 0 receiver for a successor.
    pub async fn stop(self) -> anyhow::Result<mpsc::Receiver<LiveMessage>> {
        self.stop.cancel();
        let live = self.feeder.await.context("the MQTT feeder task failed")?;
        self.connection
            .await
            .context("the MQTT connection task failed")?;
        Ok(live)
    }
}
