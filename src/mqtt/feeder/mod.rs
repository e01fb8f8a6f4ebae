//! The feeder task: its select loop, and the state the other files of this module share.
//!
//! It feeds the outbox to MQTT in key order and deletes readings on PUBACK. The decisions
//! without I/O are in [`window`]; the rest of the work is split by concern, each file adding
//! methods to [`Feeder`]: control messages ([`announce`]), PUBACKs and removal ([`acks`]),
//! retry holds ([`retry`]), QoS 0 readings ([`live`]) and the window's adapters ([`wire`]).

mod acks;
mod announce;
mod live;
mod retry;
mod window;
mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::birth::BirthGate;
use super::control::ControlQueue;
use super::last_state::LastStates;
use super::properties::Properties;
use super::protocol::{Client, Event};
use super::unsent::{EXPIRE_BATCH, Unsent};
use super::{Link, PKID_SLOTS, SHUTDOWN_GRACE};
use crate::Stats;
use crate::config::Availability;
use crate::homeassistant::Discovery;
use crate::logging::Throttle;
use crate::outbox::Outbox;
pub use live::LiveMessage;
use retry::{RETRY_MAX, RETRY_MIN};
use window::{Reused, Window};
use wire::ToClient;

/// What the feeder needs from the config besides the channels.
pub(super) struct Settings {
    /// How long the oldest publish may wait for its ack before the link is presumed stuck.
    pub ack_timeout: Duration,
    /// `[mqtt] max_age`: older readings are dropped unsent.
    pub max_age: Option<Duration>,
    /// How many requests the client's channel holds.
    pub channel_capacity: usize,
    /// `[mqtt] stats_topic`: with Home Assistant discovery, the figures also go out at each
    /// connect and once the backlog is delivered, so its diagnostic entities are current.
    pub stats_topic: Option<String>,
}

/// The feeder's state. Owned by the one feeder task, so nothing here is locked; each field
/// says which file of this module changes it (the others only read it).
struct Feeder {
    /// False once a message on our subscriptions was too big to read: publishing must not
    /// depend on them. Cleared by the connection task, read by [`announce`].
    may_subscribe: Arc<std::sync::atomic::AtomicBool>,
    /// The request side of rumqttc: every file hands it publishes.
    client: Client,
    /// Read by [`window`] through [`wire`]; readings are deleted from it by [`acks`] only.
    outbox: Arc<Outbox>,
    /// The daemon's counters: published and dropped readings ([`acks`], [`live`]).
    stats: Arc<Stats>,
    /// What is in flight, what goes next, what a packet id names: the decisions, without I/O.
    /// Driven by the loop here, told of acks by [`acks`] and of holds by [`retry`].
    window: Window,
    /// Keys whose PUBACK came, deleted from the store in one go per batch of link events
    /// ([`acks`]).
    acked: Vec<u64>,
    settings: Settings,
    /// Refused and expired readings, until they are quarantined or deleted: filled by
    /// [`wire`], [`acks`] and [`retry`], applied by [`acks`].
    unsent: Unsent,
    /// The pause before a reading refused with a "retry" code goes out again ([`retry`]; reset
    /// by [`acks`] and once a hold is over).
    retry_backoff: Backoff,
    /// Asks the connection task to drop the link: the loop here, when acks stop coming.
    reconnect: watch::Sender<()>,
    /// A reconnect was asked for and the link is not down yet: no ack deadline meanwhile.
    reconnect_requested: bool,
    /// `[mqtt] availability`: the birth at each connect ([`announce`]), `offline` on a clean
    /// stop (the loop here).
    availability: Option<Availability>,
    /// Home Assistant discovery, replaced on a reload ([`announce`]).
    discovery: watch::Receiver<Option<Discovery>>,
    /// QoS 1 messages that are not readings (birth, discovery, copies of the last states),
    /// sent before the backlog as the window allows ([`announce`]).
    control: ControlQueue,
    /// The last state of each Home Assistant sensor, sent again when Home Assistant restarts:
    /// told of what goes out by [`wire`] and [`live`], of its fate by [`acks`] and [`retry`].
    states: LastStates,
    /// A backlog was waiting at connect (at this time, ms since the epoch): send the figures
    /// again once everything taken before then is delivered, looked at at most once a second
    /// (set by [`announce`], looked at by [`acks`]).
    stats_after_backlog: Option<(u64, Instant)>,
    /// A refused subscription is logged once per cause, not at every reconnect.
    subscribe_log: Throttle,
    /// A full control queue is logged once in a while ([`announce`]).
    control_log: Throttle,
    /// Home Assistant's `online`: acted on at most once a second (a flood is coalesced;
    /// [`announce`]).
    births: BirthGate,
}

pub(super) struct Channels {
    pub link: mpsc::Receiver<Link>,
    pub live: mpsc::Receiver<LiveMessage>,
    pub reconnect: watch::Sender<()>,
    pub availability: Option<Availability>,
    pub discovery: watch::Receiver<Option<Discovery>>,
    /// Cleared by the connection task after a packet over our limit: no more subscriptions.
    pub subscribe: Arc<std::sync::atomic::AtomicBool>,
}

pub(super) async fn run(
    client: Client,
    outbox: Arc<Outbox>,
    channels: Channels,
    stats: Arc<Stats>,
    settings: Settings,
    shutdown: CancellationToken,
) -> mpsc::Receiver<LiveMessage> {
    let channel_capacity = settings.channel_capacity;
    let Channels {
        mut link,
        mut live,
        reconnect,
        availability,
        discovery,
        subscribe,
    } = channels;
    let mut f = Feeder {
        client,
        window: Window::new(channel_capacity, outbox.generation(), PKID_SLOTS),
        outbox: outbox.clone(),
        stats,
        acked: Vec::new(),
        settings,
        unsent: Unsent::default(),
        retry_backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
        reconnect,
        reconnect_requested: false,
        availability,
        discovery,
        control: ControlQueue::default(),
        states: LastStates::default(),
        stats_after_backlog: None,
        subscribe_log: Throttle::default(),
        control_log: Throttle::default(),
        births: BirthGate::default(),
        may_subscribe: subscribe,
    };
    if let Some(d) = f.discovery.borrow().as_ref() {
        f.states.watch(&d.state_topics);
    }
    let mut grace_end: Option<Instant> = None;
    let mut live_open = true;
    loop {
        match grace_end {
            // After a batch of stale readings was dropped: let the connection task (keep-alive,
            // acks) and the committer run before the next one. A ready `Notify` alone would not
            // give the thread back (it is not part of tokio's cooperative budget).
            None if f.fill() => tokio::task::yield_now().await,
            None => {}
            Some(_) if f.window.in_flight() == 0 => break,
            Some(_) => {}
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        let ack_deadline = f.ack_deadline();
        let hold_until = f.window.hold_until().map(Instant::from_std);
        // Deferred births wait for a link: the announcements made at connect and the copies
        // are queued on it.
        let birth_due = f
            .births
            .due()
            .filter(|_| f.window.is_connected())
            .map(Instant::from_std);
        tokio::select! {
            biased;
            event = link.recv() => {
                let Some(event) = event else { break };
                f.handle(event);
                // Take everything already queued, so acks are removed from the store in one go.
                while let Ok(event) = link.try_recv() {
                    f.handle(event);
                }
                f.remove_acked();
                f.apply_unsent();
            }
            _ = shutdown.cancelled(), if grace_end.is_none() => {
                grace_end = Some(Instant::now() + SHUTDOWN_GRACE);
                if f.window.in_flight() > 0 {
                    info!(in_flight = f.window.in_flight(), grace = ?SHUTDOWN_GRACE, "waiting for in-flight readings to be acknowledged");
                }
            }
            _ = sleep_until(grace_end.unwrap_or(far)), if grace_end.is_some() => {
                warn!(unacknowledged = f.window.in_flight(), "grace period over: unacknowledged readings stay in the store and go out first on the next start");
                break;
            }
            _ = sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                warn!(waited = ?f.settings.ack_timeout, "no acknowledgement from the broker: reconnecting");
                f.reconnect_requested = true;
                f.reconnect.send_replace(());
            }
            _ = sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => {
                // Start over from the first key: the refused reading goes out again first.
                f.window.hold_over();
            }
            _ = sleep_until(birth_due.unwrap_or(far)), if birth_due.is_some() => {
                let deferred = f.births.take_due(Instant::now().into_std());
                if deferred > 0 {
                    f.home_assistant_online(deferred);
                }
            }
            Ok(()) = f.discovery.changed() => f.discovery_changed(),
            // While connected, QoS 0 readings wait in `live` when the client's channel has no
            // share left for them (the committer counts what does not fit there); while not,
            // they are taken and dropped, so none goes out late after a reconnect.
            msg = live.recv(), if live_open && (!f.window.is_connected() || f.window.live_room()) => match msg {
                Some(msg) => f.publish_live(msg),
                None => live_open = false,
            },
            _ = outbox.new_data.notified(), if f.has_room() && grace_end.is_none() => {}
        }
    }
    // A clean stop sends no Last Will: say `offline` ourselves, before the DISCONNECT (the
    // client writes requests in order). Best effort: the connection task waits briefly.
    if let (true, Some(a)) = (f.window.is_connected(), &f.availability) {
        let _ = f.client.try_publish(
            a.topic.clone(),
            QoS::AtLeastOnce,
            true,
            a.offline.clone().into_bytes(),
            Properties::default(),
        );
    }
    f.client.try_disconnect();
    live
}

impl Feeder {
    fn has_room(&self) -> bool {
        self.window.room() > 0
    }

    /// When the oldest publish must have been acknowledged, unless a reconnect is underway.
    fn ack_deadline(&self) -> Option<Instant> {
        if self.reconnect_requested {
            return None;
        }
        self.window
            .ack_deadline(self.settings.ack_timeout)
            .map(Instant::from_std)
    }

    /// Hands readings to the client while there is room and the outbox has more. True when it
    /// stopped after a batch of stale readings, with more to look at.
    fn fill(&mut self) -> bool {
        self.send_control();
        let mut wire = ToClient {
            states: &mut self.states,
            client: &self.client,
            unsent: &mut self.unsent,
            max_age: self.settings.max_age,
            now_ms: now_ms(),
        };
        let now = Instant::now().into_std();
        let fill = self
            .window
            .fill(&*self.outbox, &mut wire, now, EXPIRE_BATCH);
        if fill.retry_over {
            self.retry_backoff.reset();
        }
        if fill.more {
            // Come back for the rest once the link events had their turn.
            self.outbox.new_data.notify_one();
        }
        self.apply_unsent();
        fill.more
    }

    fn handle(&mut self, event: Link) {
        match event {
            Link::Connected { slots } => {
                self.window.connected(slots);
                self.connected();
            }
            Link::Wire(Event::Message { topic, payload }) => self.message(&topic, &payload),
            Link::Wire(Event::Sent(pkid)) => match self.window.sent(pkid) {
                Ok(()) => {}
                Err(Reused::Busy { old, index }) => warn!(
                    pkid,
                    old, index, "packet id reused before its ack; the older reading will be resent"
                ),
                Err(Reused::Unexpected) => warn!(pkid, "publish event with no reading queued"),
            },
            Link::Wire(Event::SubscribeSent) => self.window.subscribe_sent(),
            Link::Wire(Event::Acked { pkid, code, reason }) => match self.window.acked(pkid) {
                Some(o) => self.answered(o, code, reason.as_deref()),
                None => debug!(pkid, "ack for a packet id not in flight"),
            },
            Link::Wire(Event::SubscribeRefused { reasons }) => {
                if self.subscribe_log.admit(&reasons).is_some() {
                    error!(%reasons, "the broker refused the Home Assistant subscription: sensors are not announced again when Home Assistant restarts, and entities of removed sensors are not removed; check the broker's ACL");
                }
            }
            Link::Wire(_) => {}
            Link::Down(done) => {
                // Everything unacknowledged is still in the outbox and is read again, in key
                // order, after the next CONNACK, whatever `session_present` says.
                self.window.down();
                self.states.link_down();
                self.reconnect_requested = false;
                let _ = done.send(());
            }
        }
    }
}

fn now_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}
