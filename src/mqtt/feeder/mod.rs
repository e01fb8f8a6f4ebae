//! The task that feeds the outbox to MQTT in key order and deletes readings on PUBACK.

mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::birth::BirthGate;
use super::control::{Control, ControlQueue};
use super::last_state::{LastStates, State};
use super::properties::{self, Fate, Properties, Stamp};
use super::protocol::{Client, Event};
use super::puback::{self, Verdict};
use super::unsent::{EXPIRE_BATCH, Unsent};
use super::{Link, PKID_SLOTS, SHUTDOWN_GRACE};
use crate::Stats;
use crate::config::Availability;
use crate::homeassistant::Discovery;
use crate::logging::Throttle;
use crate::outbox::{Entry, Outbox, Record};
use window::{Backlog, Handed, Outstanding, Reused, Window, Wire};

/// The first pause before a reading the broker could not take (MQTT 5 "retry" reason codes)
/// is sent again; it doubles while the broker keeps refusing, up to the max.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Control messages waiting: the announcements, copies and removals of a few thousand sensors.
/// Only a broker sending tens of thousands of stale discovery configs of our node reaches it.
const CONTROL_MAX: usize = 10_000;

/// A QoS 0 reading: published if connected, otherwise gone. Never stored.
#[derive(Debug)]
pub struct LiveMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When it was taken (ms since the epoch).
    pub taken_ms: u64,
    /// The payload is the bare value: on MQTT 5 its time goes in the `ts` user property.
    pub plain: bool,
}

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

struct Feeder {
    /// False once a message on our subscriptions was too big to read: publishing must not
    /// depend on them.
    may_subscribe: Arc<std::sync::atomic::AtomicBool>,
    client: Client,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    /// What is in flight, what goes next, what a packet id names: the decisions, without I/O.
    window: Window,
    /// Keys whose PUBACK came, deleted from the store in one go per batch of link events.
    acked: Vec<u64>,
    settings: Settings,
    /// Refused and expired readings, until they are quarantined or deleted.
    unsent: Unsent,
    /// The pause before a reading refused with a "retry" code goes out again.
    retry_backoff: Backoff,
    reconnect: watch::Sender<()>,
    reconnect_requested: bool,
    availability: Option<Availability>,
    discovery: watch::Receiver<Option<Discovery>>,
    /// QoS 1 messages that are not readings (birth, discovery, copies of the last states),
    /// sent before the backlog as the window allows.
    control: ControlQueue,
    /// The last state of each Home Assistant sensor, sent again when Home Assistant restarts.
    states: LastStates,
    /// A backlog was waiting at connect (at this time, ms since the epoch): send the figures
    /// again once everything taken before then is delivered, looked at at most once a second.
    stats_after_backlog: Option<(u64, Instant)>,
    /// A refused subscription is logged once per cause, not at every reconnect.
    subscribe_log: Throttle,
    /// A full control queue is logged once in a while.
    control_log: Throttle,
    /// Home Assistant's `online`: acted on at most once a second (a flood is coalesced).
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
                self.control.clear();
                // First on the new link, ahead of the backlog.
                if let Some(a) = &self.availability {
                    let birth = Control::retained(&a.topic, a.online.as_bytes());
                    self.queue(birth);
                }
                let discovery = self.discovery.borrow_and_update().clone();
                if let Some(d) = discovery {
                    self.subscribe(&d);
                    self.announce(&d);
                    self.queue_stats();
                    self.stats_after_backlog =
                        (self.outbox.depth() > 0).then(|| (now_ms(), Instant::now()));
                }
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

    /// Sends queued control messages as QoS 1 retained publishes that are not in the outbox:
    /// each takes a window slot like a reading, so packet ids still map to keys, but its ack
    /// deletes nothing.
    fn send_control(&mut self) {
        while self.has_room() {
            let Some(c) = self.control.front() else {
                return;
            };
            let now = now_ms();
            if c.expired(now) {
                // Home Assistant expired this state already: it stays unavailable.
                self.control.pop_front();
                continue;
            }
            let props = match c.stamp {
                None => Properties::default(),
                Some(stamp) => match self.fate(stamp, now) {
                    Fate::Send(props) => props,
                    // A copy of a state older than `max_age`: not sent, like the reading.
                    Fate::TooOld { .. } => {
                        self.control.pop_front();
                        continue;
                    }
                },
            };
            // Taken off the queue only once the client has it: a refused one is offered again.
            let accepted = self.client.try_publish(
                c.topic.clone(),
                QoS::AtLeastOnce,
                c.retain,
                c.payload.clone(),
                props,
            );
            if accepted.is_err() {
                return;
            }
            let c = self.control.pop_front().expect("just looked at it");
            self.window
                .track(None, Some(c.topic), Instant::now().into_std());
        }
    }

    /// A PUBACK for `o`: delete its reading, quarantine it, or hold and send it again,
    /// according to the reason code (always 0 on MQTT 3.1.1).
    fn answered(&mut self, o: Outstanding, code: u8, reason: Option<&str>) {
        match puback::verdict(code) {
            Verdict::Delivered => {
                if let Some(key) = o.key {
                    self.states.acked(key);
                    self.acked.push(key);
                    if self.window.delivered(key) {
                        self.retry_backoff.reset();
                    }
                }
            }
            Verdict::Quarantine => {
                if let Some(key) = o.key {
                    self.states.refused(key);
                }
                let topic = self.topic_of(&o);
                self.unsent.refused(o.key, &topic, code, reason)
            }
            Verdict::Retry => {
                if let Some(key) = o.key {
                    self.states.refused(key);
                }
                // One pause per episode: a whole window refused at once (quota exceeded) must
                // not step the backoff once per publish.
                let now = Instant::now().into_std();
                let until = match self.window.hold_until() {
                    Some(until) => until,
                    None => now + self.retry_backoff.next_delay(),
                };
                // Stays in the store; the rewind after the pause sends it again. A control
                // message is only retried on the next connect.
                let until = self.window.retry(o.key, until);
                let pause = until.saturating_duration_since(now);
                let topic = self.topic_of(&o);
                self.unsent.retry(&topic, code, reason, pause);
            }
        }
    }

    fn fate(&self, stamp: Stamp, now_ms: u64) -> Fate {
        properties::fate(stamp, self.settings.max_age, self.client.is_v5(), now_ms)
    }

    /// The topic of a refused publish, for the log.
    fn topic_of(&self, o: &Outstanding) -> String {
        let stored = o.key.and_then(|key| {
            let next = self.outbox.read_after(key.checked_sub(1), 1);
            next.into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, r)| r.topic)
        });
        stored
            .or_else(|| o.control_topic.clone())
            .unwrap_or_else(|| "(no longer in the store)".into())
    }

    fn apply_unsent(&mut self) {
        let max_age = self.settings.max_age.unwrap_or_default();
        self.unsent
            .apply(&self.outbox, self.window.generation(), &self.stats, max_age);
    }

    fn subscribe(&mut self, d: &Discovery) {
        if !self
            .may_subscribe
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let filters: Vec<&String> = std::iter::once(&d.status_topic)
            .chain(&d.config_filters)
            .collect();
        if self.client.try_subscribe(&filters) {
            self.window.subscribed();
        }
    }

    fn announce(&mut self, d: &Discovery) {
        for a in &d.announcements {
            self.queue(Control::retained(&a.topic, &a.payload));
        }
    }

    /// Queues a control message. One waiting for the same topic is dropped (the newer one says
    /// what is current), so repeated `online` messages cannot grow the queue: it holds at most
    /// one message per topic, and never more than [`CONTROL_MAX`].
    fn queue(&mut self, c: Control) {
        let topic = c.topic.clone();
        if !self.control.push(c, CONTROL_MAX) && self.control_log.admit("full").is_some() {
            warn!(%topic, max = CONTROL_MAX, "too many Home Assistant messages waiting; dropping one");
        }
    }

    /// Home Assistant came (back) online: announce again. A retained config of ours for a
    /// sensor no longer configured (removed while we were stopped): remove it.
    fn message(&mut self, topic: &str, payload: &[u8]) {
        let Some(d) = self.discovery.borrow().clone() else {
            return;
        };
        if topic == d.status_topic && payload == b"online" {
            // Within a second of the previous one: answered at the end of that second (the
            // info line counts them as `deferred`).
            if self.births.online(Instant::now().into_std()) {
                self.home_assistant_online(0);
            }
        } else if d.object_of(topic).is_some()
            && !payload.is_empty()
            && !d.announcements.iter().any(|a| a.topic == topic)
        {
            info!(
                topic,
                "removing a Home Assistant entity that is no longer configured"
            );
            self.queue(Control::retained(topic, b""));
        }
    }

    /// Home Assistant (re)started: announce the sensors again and send their last states.
    /// `deferred`: the births this answers that came within a second of the previous one.
    fn home_assistant_online(&mut self, deferred: u64) {
        let Some(d) = self.discovery.borrow().clone() else {
            return;
        };
        let copies = self.states.to_resend();
        info!(
            states = copies.len(),
            deferred,
            "Home Assistant is online: announcing the sensors and sending their last states"
        );
        self.announce(&d);
        // After the configs (Home Assistant subscribes to a state topic when it reads the
        // config), before the backlog; see last_state.rs for which state and why.
        for copy in copies {
            let stale = self.states.stale_after(&copy.topic);
            self.queue(Control::copy(copy, stale));
        }
    }

    /// A reload changed the discovery messages: announce what is. What went is removed when
    /// its retained config comes back on our subscription, as after a restart.
    fn discovery_changed(&mut self) {
        let new = self.discovery.borrow_and_update().clone();
        self.states
            .watch(new.as_ref().map_or(&[][..], |d| &d.state_topics));
        if !self.window.is_connected() {
            return; // everything is announced on the next CONNACK
        }
        if let Some(d) = &new {
            self.subscribe(d);
            self.announce(d);
        }
    }

    fn remove_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        self.outbox.remove(&self.acked, self.window.generation());
        self.stats
            .published
            .fetch_add(self.acked.len() as u64, Ordering::Relaxed);
        self.acked.clear();
        if let Some((connected_ms, looked)) = self.stats_after_backlog {
            // Sensors keep adding readings, so the depth need not reach 0: the backlog is
            // delivered once the oldest reading waiting is younger than the connect.
            let delivered = self.outbox.depth() == 0
                || (looked.elapsed() >= Duration::from_secs(1)
                    && self
                        .outbox
                        .oldest_taken_ms()
                        .is_none_or(|t| t > connected_ms));
            if delivered {
                self.stats_after_backlog = None;
                self.queue_stats();
            } else if looked.elapsed() >= Duration::from_secs(1) {
                self.stats_after_backlog = Some((connected_ms, Instant::now()));
            }
        }
    }

    /// The self-metrics JSON, now, as a retained control message (the metrics task sends it
    /// every `stats_interval` as QoS 0; a Home Assistant diagnostic entity would otherwise
    /// show the figures from before an outage until the next one).
    fn queue_stats(&mut self) {
        let Some(topic) = &self.settings.stats_topic else {
            return;
        };
        let snapshot = crate::metrics::Snapshot::take(&self.outbox, &self.stats);
        let payload = serde_json::to_vec(&snapshot).expect("numbers and strings serialize");
        let stats = Control::retained(topic, &payload);
        self.queue(stats);
    }

    /// A QoS 0 reading of `s.topic` just went out while a copy of that topic's state waits
    /// in the control queue (for room in the window, or a retry hold): the copy now carries
    /// this reading, or, sent after it, it would take Home Assistant (and a retained copy the
    /// broker) back to the older state until the next reading.
    fn refresh_copy(&mut self, s: &State) {
        let stale = self.states.stale_after(&s.topic);
        if let Some(c) = self.control.get_mut(&s.topic)
            && c.stamp.is_some()
        {
            *c = Control::copy(s.clone(), stale);
        }
    }

    fn publish_live(&mut self, msg: LiveMessage) {
        if !self.window.is_connected() {
            self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stamp = Stamp {
            taken_ms: msg.taken_ms,
            plain: msg.plain,
            retain: msg.retain,
            stale_after_s: self.states.stale_after(&msg.topic),
        };
        let state = self.states.watches(&msg.topic).then(|| State {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            retain: msg.retain,
            taken_ms: msg.taken_ms,
            plain: msg.plain,
        });
        let props = match self.fate(stamp, now_ms()) {
            Fate::Send(props) => props,
            Fate::TooOld { .. } => {
                self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match self
            .client
            .try_publish(msg.topic, QoS::AtMostOnce, msg.retain, msg.payload, props)
        {
            Ok(()) => {
                if let Some(state) = state {
                    self.refresh_copy(&state);
                    self.states.sent_live(state);
                }
                self.window.live_handed();
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The outbox as the window reads it.
impl Backlog for Outbox {
    type Item = Record;

    fn generation(&self) -> u64 {
        Outbox::generation(self)
    }

    fn read_after(&self, after: Option<u64>, max: usize) -> Vec<Entry> {
        Outbox::read_after(self, after, max)
    }
}

/// The client as the window hands readings to it: a reading older than `max_age` is dropped
/// here (collected in `unsent`), the rest get their properties and go to the request channel.
struct ToClient<'a> {
    states: &'a mut LastStates,
    client: &'a Client,
    unsent: &'a mut Unsent,
    max_age: Option<Duration>,
    now_ms: u64,
}

impl Wire<Record> for ToClient<'_> {
    fn publish(&mut self, key: u64, record: Record) -> Handed {
        let stamp = Stamp {
            taken_ms: record.taken_ms,
            plain: record.plain,
            retain: record.retain,
            stale_after_s: self.states.stale_after(&record.topic),
        };
        let props = match properties::fate(stamp, self.max_age, self.client.is_v5(), self.now_ms) {
            Fate::Send(props) => props,
            Fate::TooOld { age } => {
                self.unsent.expired(key, age);
                return Handed::Expired;
            }
        };
        let state = self.states.watches(&record.topic).then(|| State {
            topic: record.topic.clone(),
            payload: record.payload.clone(),
            retain: record.retain,
            taken_ms: record.taken_ms,
            plain: record.plain,
        });
        match self.client.try_publish(
            record.topic,
            QoS::AtLeastOnce,
            record.retain,
            record.payload,
            props,
        ) {
            Ok(()) => {
                if let Some(state) = state {
                    self.states.handed(key, state);
                }
                Handed::Sent
            }
            Err(e) => {
                // Full (the window's accounting leaves room for it, so this should not
                // happen) or closed (the connection task is gone). Either way the reading
                // stays in the store and is offered again.
                debug!(error = %e, "publish request not accepted");
                Handed::Refused
            }
        }
    }
}

fn now_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}
