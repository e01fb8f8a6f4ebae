//! The feeder's decisions without I/O: what goes out next, and what a packet id names.
//!
//! Which stored reading goes out next, how many may be unacknowledged, which store key a
//! PUBACK's packet id names, and what a lost link, a retry hold or a store change makes it
//! forget.
//!
//! [`Window`] is driven by the link's events ([`Window::connected`], [`Window::sent`],
//! [`Window::acked`], [`Window::down`]) and by [`Window::fill`], which reads a [`Backlog`] and
//! offers readings to a [`Wire`]. It never blocks, sleeps, locks or touches a socket or the
//! store, so the property tests (`window/tests.rs`) drive it against a model of the store,
//! rumqttc's request channel and packet ids, and a broker that acks out of order or drops the
//! link at any moment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::mqtt::WINDOW;

#[cfg(test)]
mod tests;

/// How many requests a subscription may have queued in the client's channel beside a full
/// window before QoS 0 readings must wait: subscriptions come once per link and per reload.
const SUBSCRIBE_RESERVE: usize = 8;

/// Where readings come from, in key order: the outbox (or a model of it).
pub(super) trait Backlog {
    type Item;
    /// Changes whenever a key may have changed meaning (the store failed or was reopened).
    fn generation(&self) -> u64;
    /// Up to `max` readings with keys above `after` (from the first with `None`), in order.
    fn read_after(&self, after: Option<u64>, max: usize) -> Vec<(u64, Self::Item)>;
}

/// What became of a reading offered to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handed {
    /// In the client's request channel: it will be written, in order.
    Sent,
    /// Not sent, and not to be (older than `max_age`): the wire has dealt with it.
    Expired,
    /// The client did not take it (its channel is full or closed): it stays where it is and
    /// is offered again by the next fill.
    Refused,
}

/// Where readings go: the rumqttc client (or a model of it).
pub(super) trait Wire<T> {
    fn publish(&mut self, key: u64, item: T) -> Handed;
}

/// A QoS 1 publish handed to the client and not yet acknowledged.
#[derive(Debug)]
pub(super) struct Outstanding {
    /// The store key it carries; `None` for control messages, and once the store's generation
    /// changed under it (its ack must then delete nothing).
    pub key: Option<u64>,
    /// A control message's topic, for the log should the broker refuse it.
    pub control_topic: Option<String>,
    pub since: Instant,
}

/// The in-flight bookkeeping of one feeder. Owned by the feeder task; lives across links.
pub(super) struct Window {
    /// The client's request channel holds this many requests (QoS 1, QoS 0, subscriptions).
    capacity: usize,
    connected: bool,
    /// Packet ids rumqttc cycles through on this link (an MQTT 5 broker's Receive Maximum can
    /// make it fewer than `PKID_SLOTS`); the window is half of it.
    slots: usize,
    /// Highest key handed out (or passed over) since the last (re)connect or rewind. Moves
    /// only past a key that was sent, expired or is still in flight: never past a refused one.
    cursor: Option<u64>,
    /// The store generation the cursor and the keys in flight belong to.
    generation: u64,
    /// Send index of the next request that takes a packet id on this link.
    next_index: u64,
    /// Everything handed out and not acknowledged, by send index.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Send indexes whose `Outgoing::Publish` event has not come yet. rumqttc writes requests
    /// in channel order and the feeder is the only publisher, so the n-th QoS 1 publish event
    /// belongs to the n-th index here.
    not_sent: VecDeque<u64>,
    /// Packet id -> send index, until its PUBACK.
    inflight: HashMap<u16, u64>,
    /// QoS 0 publishes and subscriptions in the client's channel (handed over, not yet
    /// reported written). QoS 1 publishes are `not_sent`.
    queued_live: usize,
    queued_subscribes: usize,
    /// After a "retry" refusal: nothing new goes out until then; then reading starts over from
    /// the first key, so the refused reading goes out again, first.
    hold_until: Option<Instant>,
    /// The reading last refused with a "retry" code: its successful ack (or its expiry) ends
    /// the retry episode; a generation change forgets it.
    retrying: Option<u64>,
}

impl Window {
    /// A window for a client whose request channel holds `capacity` requests; it must have
    /// room for a full window, the subscription reserve and some QoS 0 readings.
    pub fn new(capacity: usize, generation: u64, slots: usize) -> Window {
        debug_assert!(capacity > WINDOW + SUBSCRIBE_RESERVE);
        Window {
            capacity,
            connected: false,
            slots,
            cursor: None,
            generation,
            next_index: 0,
            outstanding: BTreeMap::new(),
            not_sent: VecDeque::new(),
            inflight: HashMap::new(),
            queued_live: 0,
            queued_subscribes: 0,
            hold_until: None,
            retrying: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// How many publishes may be unacknowledged at once on this link.
    pub fn size(&self) -> usize {
        (self.slots / 2).clamp(1, WINDOW)
    }

    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    /// How many more QoS 1 publishes fit now. Besides the window, the distance from the oldest
    /// unacknowledged publish is bounded: rumqttc hands out packet ids round-robin over
    /// `slots`, and reaching the slot of a still-unacked publish would stall its event loop in
    /// "collision" mode until that ack comes (rumqttc #1056). No room while disconnected or
    /// held after a refusal.
    pub fn room(&self) -> usize {
        if !self.connected || self.hold_until.is_some() {
            return 0;
        }
        let oldest = self
            .outstanding
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_index);
        let by_distance = (self.slots as u64).saturating_sub(self.next_index - oldest);
        self.size()
            .saturating_sub(self.outstanding.len())
            .min(by_distance as usize)
    }

    /// True when a QoS 0 reading may be handed to the client now. QoS 0 readings share the
    /// request channel with QoS 1 ones but may only fill what a full window and the
    /// subscription reserve leave free, so a flood of them can never make the channel refuse
    /// a QoS 1 publish.
    pub fn live_room(&self) -> bool {
        // Subscriptions beyond their reserve eat into the QoS 0 share.
        let over = self.queued_subscribes.saturating_sub(SUBSCRIBE_RESERVE);
        self.connected && self.queued_live + over < self.capacity - WINDOW - SUBSCRIBE_RESERVE
    }

    /// A QoS 0 publish was handed to the client.
    pub fn live_handed(&mut self) {
        self.queued_live += 1;
    }

    /// A SUBSCRIBE was handed to the client: it takes the next packet id too, so it counts in
    /// the distance check of the publishes behind it.
    pub fn subscribed(&mut self) {
        self.next_index += 1;
        self.queued_subscribes += 1;
    }

    /// The SUBSCRIBE left.
    pub fn subscribe_sent(&mut self) {
        self.queued_subscribes = self.queued_subscribes.saturating_sub(1);
    }

    /// When the oldest publish must have been acknowledged by.
    pub fn ack_deadline(&self, timeout: Duration) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        self.outstanding.values().next().map(|o| o.since + timeout)
    }

    /// The link is up; rumqttc cycles through `slots` packet ids on it. Reading starts over
    /// from the first key.
    pub fn connected(&mut self, slots: usize) {
        self.connected = true;
        self.slots = slots;
        self.cursor = None;
    }

    /// The link is gone. Everything unacknowledged is still in the store and is read again,
    /// in key order, after the next CONNACK, whatever `session_present` says; nothing queued
    /// in the client survives the connection task's recovery.
    pub fn down(&mut self) {
        self.connected = false;
        self.outstanding.clear();
        self.not_sent.clear();
        self.inflight.clear();
        self.queued_live = 0;
        self.queued_subscribes = 0;
        self.next_index = 0;
        self.cursor = None;
    }

    /// The store's generation is now `generation`. If it changed, keys in flight may name
    /// other readings: their acks must delete nothing (they are resent: a duplicate, never a
    /// loss), and reading starts over.
    fn sync_generation(&mut self, generation: u64) {
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.cursor = None;
        self.retrying = None;
        for o in self.outstanding.values_mut() {
            o.key = None;
        }
    }

    /// Records a QoS 1 publish just handed to the client, before its event can arrive.
    pub fn track(&mut self, key: Option<u64>, control_topic: Option<String>, now: Instant) {
        let index = self.next_index;
        self.next_index += 1;
        self.outstanding.insert(
            index,
            Outstanding {
                key,
                control_topic,
                since: now,
            },
        );
        self.not_sent.push_back(index);
    }

    /// rumqttc wrote a publish with `pkid` (0: QoS 0). `Err` when the packet id was still
    /// carrying an unacknowledged publish (the distance check should make that impossible):
    /// the older one is forgotten and reading starts over, so it is sent again.
    pub fn sent(&mut self, pkid: u16) -> Result<(), Reused> {
        if pkid == 0 {
            self.queued_live = self.queued_live.saturating_sub(1);
            return Ok(());
        }
        let Some(index) = self.not_sent.pop_front() else {
            return Err(Reused::Unexpected);
        };
        match self.inflight.insert(pkid, index) {
            None => Ok(()),
            Some(old) => {
                self.outstanding.remove(&old);
                self.cursor = None;
                Err(Reused::Busy { old, index })
            }
        }
    }

    /// A PUBACK for `pkid`: what it acknowledges, if it was in flight.
    pub fn acked(&mut self, pkid: u16) -> Option<Outstanding> {
        self.inflight
            .remove(&pkid)
            .and_then(|index| self.outstanding.remove(&index))
    }

    /// `key` was delivered. True when that ends a retry episode (the backoff starts over).
    pub fn delivered(&mut self, key: u64) -> bool {
        if self.retrying == Some(key) {
            self.retrying = None;
            return true;
        }
        false
    }

    /// The broker could not take `key` (or a control message) now: nothing new goes out until
    /// `until` (an earlier hold stands: one pause per episode), then reading starts over.
    /// Returns the end of the hold.
    pub fn retry(&mut self, key: Option<u64>, until: Instant) -> Instant {
        self.retrying = key.or(self.retrying);
        *self.hold_until.get_or_insert(until)
    }

    /// The retry hold is over: start over from the first key, so the refused reading goes out
    /// again first (readings still in flight are passed over).
    pub fn hold_over(&mut self) {
        self.hold_until = None;
        self.cursor = None;
    }

    /// Hands readings from `backlog` to `wire` while there is room. Returns true when it
    /// stopped after `expire_batch` expired readings with possibly more to look at (the caller
    /// yields to the link first); false when the window is full, the backlog is exhausted or
    /// the wire refused a reading. A refused reading is not passed over: the cursor stays
    /// before it, and the next fill offers it again.
    pub fn fill<B: Backlog>(
        &mut self,
        backlog: &B,
        wire: &mut impl Wire<B::Item>,
        now: Instant,
        expire_batch: usize,
    ) -> Fill {
        self.sync_generation(backlog.generation());
        let mut fill = Fill::default();
        while self.room() > 0 {
            let batch = backlog.read_after(self.cursor, self.room());
            if batch.is_empty() {
                return fill;
            }
            // Only after a rewind can a key read now still be in flight.
            let in_flight_max = self.outstanding.values().filter_map(|o| o.key).max();
            for (key, item) in batch {
                if in_flight_max.is_some_and(|max| key <= max)
                    && self.outstanding.values().any(|o| o.key == Some(key))
                {
                    self.cursor = Some(key);
                    continue;
                }
                match wire.publish(key, item) {
                    Handed::Sent => {
                        self.cursor = Some(key);
                        self.track(Some(key), None, now);
                    }
                    Handed::Expired => {
                        self.cursor = Some(key);
                        fill.expired += 1;
                        if self.retrying == Some(key) {
                            // Its ack will never come: the episode ends here.
                            self.retrying = None;
                            fill.retry_over = true;
                        }
                        if fill.expired >= expire_batch {
                            fill.more = true;
                            return fill;
                        }
                    }
                    Handed::Refused => return fill,
                }
            }
        }
        fill
    }
}

/// What one [`Window::fill`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fill {
    pub expired: usize,
    /// Stopped after a batch of expired readings: call again once the link had its turn.
    pub more: bool,
    /// A reading being retried expired: the retry backoff starts over.
    pub retry_over: bool,
}

/// A publish event that does not fit the bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reused {
    /// The packet id still carried the publish with send index `old`.
    Busy { old: u64, index: u64 },
    /// A QoS 1 publish event with nothing handed out.
    Unexpected,
}
