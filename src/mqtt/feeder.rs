//! The task that feeds the outbox to MQTT in key order and deletes readings on PUBACK.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::properties::{self, Fate, Properties, Stamp};
use super::protocol::{Client, Event};
use super::puback::{self, Verdict};
use super::unsent::{EXPIRE_BATCH, Unsent};
use super::{Link, PKID_SLOTS, SHUTDOWN_GRACE, WINDOW};
use crate::Stats;
use crate::config::Availability;
use crate::homeassistant::Discovery;
use crate::logging::Throttle;
use crate::outbox::Outbox;

/// The first pause before a reading the broker could not take (MQTT 5 "retry" reason codes)
/// is sent again; it doubles while the broker keeps refusing, up to the max.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

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

/// A QoS 1 publish handed to the client and not yet acknowledged.
struct Outstanding {
    /// The store key it carries; `None` for control messages, and once the outbox generation
    /// changed under it (its ack must then delete nothing).
    key: Option<u64>,
    /// A control message's topic, for the log should the broker refuse it. A reading's is
    /// looked up in the store then (refusals are rare; a copy per publish is not).
    control_topic: Option<String>,
    since: Instant,
}

/// What the feeder needs from the config besides the channels.
pub(super) struct Settings {
    /// How long the oldest publish may wait for its ack before the link is presumed stuck.
    pub ack_timeout: Duration,
    /// `[mqtt] max_age`: older readings are dropped unsent.
    pub max_age: Option<Duration>,
}

struct Feeder {
    client: Client,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    connected: bool,
    /// Highest key handed to the client since the last (re)connect or rewind.
    cursor: Option<u64>,
    /// The outbox generation the cursor and keys belong to.
    generation: u64,
    /// Send index of the next QoS 1 publish on this connection.
    next_index: u64,
    /// Everything handed out and not acknowledged, by send index.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Send indexes whose `Outgoing::Publish` event has not come yet. rumqttc writes requests
    /// in channel order and this task is the only publisher, so the n-th QoS 1 publish event
    /// belongs to the n-th index here.
    not_sent: VecDeque<u64>,
    /// Packet id -> send index, until its PUBACK.
    inflight: HashMap<u16, u64>,
    acked: Vec<u64>,
    /// Packet ids rumqttc cycles through on this link (an MQTT 5 broker's Receive Maximum can
    /// make it fewer than `PKID_SLOTS`); the window is half of it.
    slots: usize,
    settings: Settings,
    /// Refused and expired readings, until they are quarantined or deleted.
    unsent: Unsent,
    /// After a "retry" refusal: nothing new goes out until then; then reading starts over from
    /// the first key, so the refused reading goes out again, first.
    hold_until: Option<Instant>,
    retry_backoff: Backoff,
    /// The reading last refused with a "retry" code: its successful ack ends the backoff (so
    /// does its expiry; a generation change forgets it).
    retrying: Option<u64>,
    reconnect: watch::Sender<()>,
    reconnect_requested: bool,
    availability: Option<Availability>,
    discovery: watch::Receiver<Option<Discovery>>,
    /// Retained QoS 1 messages that are not readings (birth, discovery), sent before the
    /// backlog as the window allows.
    control: VecDeque<(String, Vec<u8>)>,
    /// A refused subscription is logged once per cause, not at every reconnect.
    subscribe_log: Throttle,
}

pub(super) struct Channels {
    pub link: mpsc::Receiver<Link>,
    pub live: mpsc::Receiver<LiveMessage>,
    pub reconnect: watch::Sender<()>,
    pub availability: Option<Availability>,
    pub discovery: watch::Receiver<Option<Discovery>>,
}

pub(super) async fn run(
    client: Client,
    outbox: Arc<Outbox>,
    channels: Channels,
    stats: Arc<Stats>,
    settings: Settings,
    shutdown: CancellationToken,
) -> mpsc::Receiver<LiveMessage> {
    let Channels {
        mut link,
        mut live,
        reconnect,
        availability,
        discovery,
    } = channels;
    let mut f = Feeder {
        client,
        generation: outbox.generation(),
        outbox: outbox.clone(),
        stats,
        connected: false,
        cursor: None,
        next_index: 0,
        outstanding: BTreeMap::new(),
        not_sent: VecDeque::new(),
        inflight: HashMap::new(),
        acked: Vec::new(),
        slots: PKID_SLOTS,
        settings,
        unsent: Unsent::default(),
        hold_until: None,
        retry_backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
        retrying: None,
        reconnect,
        reconnect_requested: false,
        availability,
        discovery,
        control: VecDeque::new(),
        subscribe_log: Throttle::default(),
    };
    let mut grace_end: Option<Instant> = None;
    let mut live_open = true;
    loop {
        match grace_end {
            // After a batch of stale readings was dropped: let the connection task (keep-alive,
            // acks) and the committer run before the next one. A ready `Notify` alone would not
            // give the thread back (it is not part of tokio's cooperative budget).
            None if f.fill() => tokio::task::yield_now().await,
            None => {}
            Some(_) if f.outstanding.is_empty() => break,
            Some(_) => {}
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        let ack_deadline = f.ack_deadline();
        let hold_until = f.hold_until;
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
                if !f.outstanding.is_empty() {
                    info!(in_flight = f.outstanding.len(), grace = ?SHUTDOWN_GRACE, "waiting for in-flight readings to be acknowledged");
                }
            }
            _ = sleep_until(grace_end.unwrap_or(far)), if grace_end.is_some() => {
                warn!(unacknowledged = f.outstanding.len(), "grace period over: unacknowledged readings stay in the store and go out first on the next start");
                break;
            }
            _ = sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                warn!(waited = ?f.settings.ack_timeout, "no acknowledgement from the broker: reconnecting");
                f.reconnect_requested = true;
                f.reconnect.send_replace(());
            }
            _ = sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => {
                // Start over from the first key: the refused reading goes out again first
                // (readings still in flight are skipped, see fill()).
                f.hold_until = None;
                f.cursor = None;
            }
            Ok(()) = f.discovery.changed() => f.discovery_changed(),
            msg = live.recv(), if live_open => match msg {
                Some(msg) => f.publish_live(msg),
                None => live_open = false,
            },
            _ = outbox.new_data.notified(), if f.has_room() && grace_end.is_none() => {}
        }
    }
    // A clean stop sends no Last Will: say `offline` ourselves, before the DISCONNECT (the
    // client writes requests in order). Best effort: the connection task waits briefly.
    if let (true, Some(a)) = (f.connected, &f.availability) {
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
    /// True when another QoS 1 publish may go out. Besides the window, the distance from the
    /// oldest unacknowledged publish is bounded: rumqttc hands out packet ids round-robin over
    /// `PKID_SLOTS`, and reaching the slot of a still-unacked publish would stall its event
    /// loop in "collision" mode until that ack comes.
    fn has_room(&self) -> bool {
        self.connected && self.hold_until.is_none() && self.room() > 0
    }

    /// When the oldest publish must have been acknowledged, unless a reconnect is underway.
    fn ack_deadline(&self) -> Option<Instant> {
        if !self.connected || self.reconnect_requested {
            return None;
        }
        self.outstanding
            .values()
            .next()
            .map(|o| o.since + self.settings.ack_timeout)
    }

    /// Hands readings to the client while there is room and the outbox has more. True when it
    /// stopped after a batch of stale readings, with more to look at.
    fn fill(&mut self) -> bool {
        let mut more = false;
        let generation = self.outbox.generation();
        if generation != self.generation {
            // The store failed or was reopened: keys in flight may now name other readings.
            // Their acks must delete nothing (they are resent: a duplicate, never a loss), and
            // reading starts over.
            self.generation = generation;
            self.cursor = None;
            self.retrying = None;
            for o in self.outstanding.values_mut() {
                o.key = None;
            }
        }
        self.send_control();
        let now_ms = now_ms();
        while self.has_room() {
            if self.unsent.expired_pending() >= EXPIRE_BATCH {
                // Come back for the rest once the link events had their turn.
                self.outbox.new_data.notify_one();
                more = true;
                break;
            }
            let batch = self.outbox.read_after(self.cursor, self.room());
            if batch.is_empty() {
                break;
            }
            // Only after a rewind can a key read now still be in flight.
            let in_flight_max = self.outstanding.values().filter_map(|o| o.key).max();
            for (key, record) in batch {
                self.cursor = Some(key);
                if in_flight_max.is_some_and(|max| key <= max)
                    && self.outstanding.values().any(|o| o.key == Some(key))
                {
                    continue; // still in flight from before a rewind
                }
                let stamp = Stamp {
                    taken_ms: record.taken_ms,
                    plain: record.plain,
                    retain: record.retain,
                };
                let props = match self.fate(stamp, now_ms) {
                    Fate::Send(props) => props,
                    Fate::TooOld { age } => {
                        self.unsent.expired(key, age);
                        if self.retrying == Some(key) {
                            // Its ack will never come: the episode ends here.
                            self.retrying = None;
                            self.retry_backoff.reset();
                        }
                        continue;
                    }
                };
                if let Err(e) = self.client.try_publish(
                    record.topic,
                    QoS::AtLeastOnce,
                    record.retain,
                    record.payload,
                    props,
                ) {
                    // The request channel has room for everything we allow out, so this means
                    // the connection task is gone; the reading stays in the store.
                    debug!(error = %e, "publish request not accepted");
                    break;
                }
                self.track(Some(key), None);
            }
        }
        self.apply_unsent();
        more
    }

    /// Records a QoS 1 publish just handed to the client, before its event can arrive.
    fn track(&mut self, key: Option<u64>, control_topic: Option<String>) {
        let index = self.next_index;
        self.next_index += 1;
        self.outstanding.insert(
            index,
            Outstanding {
                key,
                control_topic,
                since: Instant::now(),
            },
        );
        self.not_sent.push_back(index);
    }

    /// How many more publishes fit, by count and by packet-id distance.
    fn room(&self) -> usize {
        let oldest = self
            .outstanding
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_index);
        let by_distance = (self.slots as u64).saturating_sub(self.next_index - oldest);
        let window = (self.slots / 2).clamp(1, WINDOW);
        window
            .saturating_sub(self.outstanding.len())
            .min(by_distance as usize)
    }

    fn handle(&mut self, event: Link) {
        match event {
            Link::Connected { slots } => {
                self.connected = true;
                self.slots = slots;
                self.cursor = None;
                self.control.clear();
                // First on the new link, ahead of the backlog.
                if let Some(a) = &self.availability {
                    self.control
                        .push_back((a.topic.clone(), a.online.clone().into_bytes()));
                }
                let discovery = self.discovery.borrow_and_update().clone();
                if let Some(d) = discovery {
                    self.subscribe(&d);
                    self.announce(&d);
                }
            }
            Link::Wire(Event::Message { topic, payload }) => self.message(&topic, &payload),
            Link::Wire(Event::Sent(0)) => {} // QoS 0: nothing to track
            Link::Wire(Event::Sent(pkid)) => match self.not_sent.pop_front() {
                Some(index) => {
                    if let Some(old) = self.inflight.insert(pkid, index) {
                        warn!(
                            pkid,
                            old,
                            index,
                            "packet id reused before its ack; the older reading will be resent"
                        );
                        self.outstanding.remove(&old);
                    }
                }
                None => warn!(pkid, "publish event with no reading queued"),
            },
            Link::Wire(Event::Acked { pkid, code, reason }) => {
                let done = self
                    .inflight
                    .remove(&pkid)
                    .and_then(|index| self.outstanding.remove(&index));
                match done {
                    Some(o) => self.answered(o, code, reason.as_deref()),
                    None => debug!(pkid, "ack for a packet id not in flight"),
                }
            }
            Link::Wire(Event::SubscribeRefused { reasons }) => {
                if self.subscribe_log.admit(&reasons).is_some() {
                    error!(%reasons, "the broker refused the Home Assistant subscription: sensors are not announced again when Home Assistant restarts, and entities of removed sensors are not removed; check the broker's ACL");
                }
            }
            Link::Wire(_) => {}
            Link::Down(done) => {
                // Everything unacknowledged is still in the outbox and is read again, in key
                // order, after the next CONNACK, whatever `session_present` says.
                self.connected = false;
                self.reconnect_requested = false;
                self.outstanding.clear();
                self.not_sent.clear();
                self.inflight.clear();
                self.next_index = 0;
                self.cursor = None;
                let _ = done.send(());
            }
        }
    }

    /// Sends queued control messages as QoS 1 retained publishes that are not in the outbox:
    /// each takes a window slot like a reading, so packet ids still map to keys, but its ack
    /// deletes nothing.
    fn send_control(&mut self) {
        while self.has_room() {
            let Some((topic, payload)) = self.control.pop_front() else {
                return;
            };
            let accepted = self.client.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                true,
                payload,
                Properties::default(),
            );
            if accepted.is_err() {
                return;
            }
            self.track(None, Some(topic));
        }
    }

    /// A PUBACK for `o`: delete its reading, quarantine it, or hold and send it again,
    /// according to the reason code (always 0 on MQTT 3.1.1).
    fn answered(&mut self, o: Outstanding, code: u8, reason: Option<&str>) {
        match puback::verdict(code) {
            Verdict::Delivered => {
                if let Some(key) = o.key {
                    self.acked.push(key);
                    if self.retrying == Some(key) {
                        self.retrying = None;
                        self.retry_backoff.reset();
                    }
                }
            }
            Verdict::Quarantine => {
                let topic = self.topic_of(&o);
                self.unsent.refused(o.key, &topic, code, reason)
            }
            Verdict::Retry => {
                // One pause per episode: a whole window refused at once (quota exceeded) must
                // not step the backoff once per publish.
                let until = match self.hold_until {
                    Some(until) => until,
                    None => Instant::now() + self.retry_backoff.next_delay(),
                };
                let pause = until.saturating_duration_since(Instant::now());
                let topic = self.topic_of(&o);
                self.unsent.retry(&topic, code, reason, pause);
                // Stays in the store; the rewind after the pause sends it again. A control
                // message is only retried on the next connect.
                self.retrying = o.key.or(self.retrying);
                self.hold_until = Some(until);
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
            .apply(&self.outbox, self.generation, &self.stats, max_age);
    }

    fn subscribe(&mut self, d: &Discovery) {
        if self
            .client
            .try_subscribe(&[&d.status_topic, &d.config_filter])
        {
            // A SUBSCRIBE takes the next packet id too: count it, or the distance check on
            // publishes behind it would be one short.
            self.next_index += 1;
        }
    }

    fn announce(&mut self, d: &Discovery) {
        self.control.extend(
            d.announcements
                .iter()
                .map(|a| (a.topic.clone(), a.payload.clone())),
        );
    }

    /// Home Assistant came (back) online: announce again. A retained config of ours for a
    /// sensor no longer configured (removed while we were stopped): remove it.
    fn message(&mut self, topic: &str, payload: &[u8]) {
        let Some(d) = self.discovery.borrow().clone() else {
            return;
        };
        if topic == d.status_topic && payload == b"online" {
            info!("Home Assistant is online: announcing the sensors");
            self.announce(&d);
        } else if d.object_of(topic).is_some()
            && !payload.is_empty()
            && !d.announcements.iter().any(|a| a.topic == topic)
        {
            info!(
                topic,
                "removing a Home Assistant entity that is no longer configured"
            );
            self.control.push_back((topic.to_owned(), Vec::new()));
        }
    }

    /// A reload changed the discovery messages: announce what is. What went is removed when
    /// its retained config comes back on our subscription, as after a restart.
    fn discovery_changed(&mut self) {
        let new = self.discovery.borrow_and_update().clone();
        if !self.connected {
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
        self.outbox.remove(&self.acked, self.generation);
        self.stats
            .published
            .fetch_add(self.acked.len() as u64, Ordering::Relaxed);
        self.acked.clear();
    }

    fn publish_live(&mut self, msg: LiveMessage) {
        if !self.connected {
            self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stamp = Stamp {
            taken_ms: msg.taken_ms,
            plain: msg.plain,
            retain: msg.retain,
        };
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
            Ok(()) => self.stats.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.live_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn now_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}
