//! The task that feeds the outbox to MQTT in key order and deletes readings on PUBACK.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Link, PKID_SLOTS, SHUTDOWN_GRACE, WINDOW};
use crate::Stats;
use crate::config::Availability;
use crate::homeassistant::Discovery;
use crate::outbox::Outbox;

/// A QoS 0 reading: published if connected, otherwise gone. Never stored.
#[derive(Debug)]
pub struct LiveMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A QoS 1 publish handed to the client and not yet acknowledged.
struct Outstanding {
    /// The store key it carries; `None` once the outbox generation changed under it (its ack
    /// must then delete nothing).
    key: Option<u64>,
    since: Instant,
}

struct Feeder {
    client: AsyncClient,
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
    unsent: VecDeque<u64>,
    /// Packet id -> send index, until its PUBACK.
    inflight: HashMap<u16, u64>,
    acked: Vec<u64>,
    /// How long the oldest publish may wait for its ack before the link is presumed stuck.
    ack_timeout: Duration,
    reconnect: watch::Sender<u64>,
    reconnect_requested: bool,
    availability: Option<Availability>,
    discovery: watch::Receiver<Option<Discovery>>,
    /// Retained QoS 1 messages that are not readings (birth, discovery), sent before the
    /// backlog as the window allows.
    control: VecDeque<(String, Vec<u8>)>,
}

pub(super) struct Channels {
    pub link: mpsc::Receiver<Link>,
    pub live: mpsc::Receiver<LiveMessage>,
    pub reconnect: watch::Sender<u64>,
    pub availability: Option<Availability>,
    pub discovery: watch::Receiver<Option<Discovery>>,
}

pub(super) async fn run(
    client: AsyncClient,
    outbox: Arc<Outbox>,
    channels: Channels,
    stats: Arc<Stats>,
    ack_timeout: Duration,
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
        unsent: VecDeque::new(),
        inflight: HashMap::new(),
        acked: Vec::new(),
        ack_timeout,
        reconnect,
        reconnect_requested: false,
        availability,
        discovery,
        control: VecDeque::new(),
    };
    let mut grace_end: Option<Instant> = None;
    let mut live_open = true;
    loop {
        match grace_end {
            None => f.fill(),
            Some(_) if f.outstanding.is_empty() => break,
            Some(_) => {}
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        let ack_deadline = f.ack_deadline();
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
                warn!(waited = ?f.ack_timeout, "no acknowledgement from the broker: reconnecting");
                f.reconnect_requested = true;
                f.reconnect.send_modify(|n| *n += 1);
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
        let _ = f
            .client
            .try_publish(&a.topic, QoS::AtLeastOnce, true, a.offline.clone());
    }
    let _ = f.client.try_disconnect();
    live
}

impl Feeder {
    /// True when another QoS 1 publish may go out. Besides the window, the distance from the
    /// oldest unacknowledged publish is bounded: rumqttc hands out packet ids round-robin over
    /// `PKID_SLOTS`, and reaching the slot of a still-unacked publish would stall its event
    /// loop in "collision" mode until that ack comes.
    fn has_room(&self) -> bool {
        self.connected && self.room() > 0
    }

    /// When the oldest publish must have been acknowledged, unless a reconnect is underway.
    fn ack_deadline(&self) -> Option<Instant> {
        if !self.connected || self.reconnect_requested {
            return None;
        }
        self.outstanding
            .values()
            .next()
            .map(|o| o.since + self.ack_timeout)
    }

    /// Hands readings to the client while there is room and the outbox has more.
    fn fill(&mut self) {
        let generation = self.outbox.generation();
        if generation != self.generation {
            // The store failed or was reopened: keys in flight may now name other readings.
            // Their acks must delete nothing (they are resent: a duplicate, never a loss), and
            // reading starts over.
            self.generation = generation;
            self.cursor = None;
            for o in self.outstanding.values_mut() {
                o.key = None;
            }
        }
        self.send_control();
        while self.has_room() {
            let batch = self.outbox.read_after(self.cursor, self.room());
            if batch.is_empty() {
                return;
            }
            for (key, record) in batch {
                self.cursor = Some(key);
                if self.outstanding.values().any(|o| o.key == Some(key)) {
                    continue; // still in flight from before a rewind
                }
                if let Err(e) = self.client.try_publish(
                    record.topic,
                    QoS::AtLeastOnce,
                    record.retain,
                    record.payload,
                ) {
                    // The request channel has room for everything we allow out, so this means
                    // the connection task is gone; the reading stays in the store.
                    debug!(error = %e, "publish request not accepted");
                    return;
                }
                let index = self.next_index;
                self.next_index += 1;
                self.outstanding.insert(
                    index,
                    Outstanding {
                        key: Some(key),
                        since: Instant::now(),
                    },
                );
                self.unsent.push_back(index);
            }
        }
    }

    /// How many more publishes fit, by count and by packet-id distance.
    fn room(&self) -> usize {
        let oldest = self
            .outstanding
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_index);
        let by_distance = PKID_SLOTS as u64 - (self.next_index - oldest);
        (WINDOW - self.outstanding.len()).min(by_distance as usize)
    }

    fn handle(&mut self, event: Link) {
        match event {
            Link::Connected => {
                self.connected = true;
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
            Link::Message { topic, payload } => self.message(&topic, &payload),
            Link::Sent(0) => {} // QoS 0: nothing to track
            Link::Sent(pkid) => match self.unsent.pop_front() {
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
            Link::Acked(pkid) => {
                let done = self
                    .inflight
                    .remove(&pkid)
                    .and_then(|index| self.outstanding.remove(&index));
                match done {
                    Some(Outstanding { key: Some(key), .. }) => self.acked.push(key),
                    Some(Outstanding { key: None, .. }) => {}
                    None => debug!(pkid, "ack for a packet id not in flight"),
                }
            }
            Link::Down(done) => {
                // Everything unacknowledged is still in the outbox and is read again, in key
                // order, after the next CONNACK, whatever `session_present` says.
                self.connected = false;
                self.reconnect_requested = false;
                self.outstanding.clear();
                self.unsent.clear();
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
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, payload)
                .is_err()
            {
                return;
            }
            let index = self.next_index;
            self.next_index += 1;
            self.outstanding.insert(
                index,
                Outstanding {
                    key: None,
                    since: Instant::now(),
                },
            );
            self.unsent.push_back(index);
        }
    }

    fn subscribe(&mut self, d: &Discovery) {
        let filters = [&d.status_topic, &d.config_filter]
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if self.client.try_subscribe_many(filters).is_ok() {
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
        match self
            .client
            .try_publish(msg.topic, QoS::AtMostOnce, msg.retain, msg.payload)
        {
            Ok(()) => self.stats.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.live_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}
