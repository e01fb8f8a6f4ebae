//! Property tests of [`Window`] against a model of the store, the client and the broker.
//!
//! The model: a store of keyed readings (some of them stale, a generation that changes),
//! rumqttc's bounded request channel and round-robin packet ids, and a broker that writes
//! requests in order, acknowledges out of order, refuses with MQTT 5 codes, and drops the link
//! at any moment. The test plays the feeder's part with the same
//! calls the feeder makes.
//!
//! Invariants, checked after every step: in flight never exceeds the window; the channel never
//! refuses a QoS 1 publish for lack of room; no packet id is reused while its publish is
//! unacknowledged (rumqttc's "collision"); readings are first sent in key order (nothing is
//! passed over); an ack deletes only the key its packet carried, in the generation it was sent
//! in. At the end, on a calm link, every reading is delivered and deleted (or expired, or
//! quarantined): nothing is stuck.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const CAPACITY: usize = 2 * WINDOW + 64;
const EXPIRE_BATCH: usize = 7;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_secs(1);
const SLOTS: [u16; 6] = [1, 2, 4, 10, 20, 100];

#[derive(Debug, Clone, Copy)]
enum Code {
    Success,
    Retry,
    Quarantine,
}

#[derive(Debug, Clone)]
enum Op {
    /// `n` readings committed; bit i of `stale`: reading i is older than `max_age`.
    Commit {
        n: u8,
        stale: u8,
    },
    /// The event loop writes up to `n` requests from the channel.
    Poll(u8),
    /// Up to `n` link events reach the feeder.
    Deliver(u8),
    /// The broker answers one of the publishes it has (picked by index).
    Ack {
        pick: u16,
        code: Code,
    },
    /// The broker answers the newest publish it has (the oldest stays unacknowledged: the
    /// packet-id distance check is what keeps its slot from coming round again).
    AckNewest,
    /// The broker answers everything it has, in order.
    AckAll,
    /// `n` QoS 0 readings reach the feeder.
    Live(u8),
    /// A control message (birth, discovery) to send.
    Control,
    Subscribe,
    /// The link fails: nothing more is written or acknowledged until `Down`.
    Fail,
    /// The connection task's recovery: queued events first, then `Down`, then the channel
    /// and rumqttc's resend queue emptied.
    Down,
    /// Reconnected; slots from `SLOTS`; on MQTT 5 (slots < 100) rumqttc's state is new.
    Connect {
        slots: u8,
        fresh: bool,
    },
    /// The store failed or was reopened: its generation changes.
    Reopen,
    /// Time passes.
    Tick(u16),
    /// The client refuses the next `n` publishes (its channel closed for a moment).
    RefuseNext(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let code = prop_oneof![
        8 => Just(Code::Success),
        1 => Just(Code::Retry),
        1 => Just(Code::Quarantine),
    ];
    prop_oneof![
        6 => (1..8u8, any::<u8>()).prop_map(|(n, stale)| Op::Commit { n, stale: stale & stale.rotate_left(3) }),
        6 => (1..40u8).prop_map(Op::Poll),
        6 => (1..60u8).prop_map(Op::Deliver),
        6 => (any::<u16>(), code).prop_map(|(pick, code)| Op::Ack { pick, code }),
        4 => Just(Op::AckNewest),
        2 => Just(Op::AckAll),
        3 => (1..200u8).prop_map(Op::Live),
        1 => Just(Op::Control),
        1 => Just(Op::Subscribe),
        1 => Just(Op::Fail),
        1 => Just(Op::Down),
        2 => (0..SLOTS.len() as u8, any::<bool>()).prop_map(|(slots, fresh)| Op::Connect { slots, fresh }),
        1 => Just(Op::Reopen),
        2 => (1..3000u16).prop_map(Op::Tick),
        1 => (1..4u8).prop_map(Op::RefuseNext),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Carried {
    key: Option<u64>,
    generation: u64,
}

#[derive(Debug)]
enum Request {
    Qos1(Carried),
    Qos0,
    Subscribe,
}

#[derive(Debug)]
enum Event {
    Connected(usize),
    Sent(u16),
    SubscribeSent,
    Acked(u16, Code, Carried),
}

/// The store as the window reads it: key -> stale.
struct Store {
    readings: BTreeMap<u64, bool>,
    generation: u64,
}

impl Backlog for Store {
    type Item = bool;
    fn generation(&self) -> u64 {
        self.generation
    }
    fn read_after(&self, after: Option<u64>, max: usize) -> Vec<(u64, bool)> {
        let from = after.map_or(0, |k| k + 1);
        self.readings
            .range(from..)
            .take(max)
            .map(|(k, s)| (*k, *s))
            .collect()
    }
}

/// rumqttc's request channel, as the feeder's wire sees it.
struct Client {
    channel: VecDeque<Request>,
    refuse: u8,
    generation: u64,
    /// Keys ever handed to the client, and the order of their first sends.
    sent_ever: BTreeSet<u64>,
    last_first_send: Option<u64>,
    /// Stale readings the wire dropped, deleted by the feeder after the fill.
    expired: Vec<u64>,
}

impl Wire<bool> for Client {
    fn publish(&mut self, key: u64, stale: bool) -> Handed {
        if stale {
            self.expired.push(key);
            return Handed::Expired;
        }
        if self.refuse > 0 {
            self.refuse -= 1;
            return Handed::Refused;
        }
        assert!(
            self.channel.len() < CAPACITY,
            "the request channel is full for a QoS 1 publish: the QoS 0 share is not kept"
        );
        self.channel.push_back(Request::Qos1(Carried {
            key: Some(key),
            generation: self.generation,
        }));
        if self.sent_ever.insert(key) {
            assert!(
                self.last_first_send.is_none_or(|last| last < key),
                "reading {key} first sent after {:?}: readings were passed over",
                self.last_first_send
            );
            self.last_first_send = Some(key);
        }
        Handed::Sent
    }
}

/// rumqttc's event loop and the broker behind it.
#[derive(Default)]
struct Link {
    up: bool,
    failed: bool,
    slots: u16,
    last_pkid: u16,
    unacked: Vec<(u16, Carried)>,
    events: VecDeque<Event>,
}

impl Link {
    /// rumqttc's `next_pkid`: 1..=slots, round robin.
    fn next_pkid(&mut self) -> u16 {
        let next = self.last_pkid + 1;
        if next >= self.slots {
            self.last_pkid = 0;
            return self.slots;
        }
        self.last_pkid = next;
        next
    }
}

struct Model {
    w: Window,
    now: Instant,
    store: Store,
    client: Client,
    link: Link,
    next_key: u64,
    committed: u64,
    delivered: BTreeSet<u64>,
    expired: BTreeSet<u64>,
    quarantined: BTreeSet<u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            w: Window::new(CAPACITY, 0, 100),
            now: Instant::now(),
            store: Store {
                readings: BTreeMap::new(),
                generation: 0,
            },
            client: Client {
                channel: VecDeque::new(),
                refuse: 0,
                generation: 0,
                sent_ever: BTreeSet::new(),
                last_first_send: None,
                expired: Vec::new(),
            },
            link: Link {
                slots: 100,
                ..Link::default()
            },
            next_key: 1,
            committed: 0,
            delivered: BTreeSet::new(),
            expired: BTreeSet::new(),
            quarantined: BTreeSet::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Commit { n, stale } => {
                for i in 0..n {
                    self.store
                        .readings
                        .insert(self.next_key, stale & (1 << i) != 0);
                    self.next_key += 1 + u64::from(i % 3 == 2); // keys have holes (QoS 0)
                    self.committed += 1;
                }
            }
            Op::Poll(n) => self.poll(usize::from(n)),
            Op::Deliver(n) => self.deliver(usize::from(n)),
            Op::Ack { pick, code } => {
                if self.link.up && !self.link.failed && !self.link.unacked.is_empty() {
                    let i = usize::from(pick) % self.link.unacked.len();
                    let (pkid, carried) = self.link.unacked.remove(i);
                    self.link
                        .events
                        .push_back(Event::Acked(pkid, code, carried));
                }
            }
            Op::AckNewest => {
                if self.link.up
                    && !self.link.failed
                    && let Some((pkid, carried)) = self.link.unacked.pop()
                {
                    self.link
                        .events
                        .push_back(Event::Acked(pkid, Code::Success, carried));
                }
            }
            Op::AckAll => self.ack_all(),
            Op::Live(n) => {
                for _ in 0..n {
                    if !(self.w.is_connected() && self.w.live_room()) {
                        break; // the feeder leaves it in its queue (or drops it, not connected)
                    }
                    assert!(self.client.channel.len() < CAPACITY);
                    self.client.channel.push_back(Request::Qos0);
                    self.w.live_handed();
                }
            }
            Op::Control => {
                if self.w.room() > 0 && self.client.channel.len() < CAPACITY {
                    self.client.channel.push_back(Request::Qos1(Carried {
                        key: None,
                        generation: self.store.generation,
                    }));
                    self.w.track(None, Some("control".into()), self.now);
                }
            }
            Op::Subscribe => {
                if self.w.is_connected() && self.client.channel.len() < CAPACITY {
                    self.client.channel.push_back(Request::Subscribe);
                    self.w.subscribed();
                }
            }
            Op::Fail => self.link.failed = self.link.up,
            Op::Down => self.down(),
            Op::Connect { slots, fresh } => {
                if !self.link.up {
                    let slots = SLOTS[usize::from(slots)];
                    // MQTT 5's recovery replaces rumqttc's state (docs/ARCHITECTURE.md).
                    if fresh || slots != self.link.slots || slots < 100 {
                        self.link.last_pkid = 0;
                    }
                    self.link.slots = slots;
                    self.link.up = true;
                    self.link
                        .events
                        .push_back(Event::Connected(usize::from(slots)));
                }
            }
            Op::Reopen => {
                self.store.generation += 1;
                self.client.generation = self.store.generation;
            }
            Op::Tick(ms) => self.tick(Duration::from_millis(u64::from(ms))),
            Op::RefuseNext(n) => self.client.refuse = n,
        }
        self.fill();
        self.check();
    }

    /// The feeder's loop top.
    fn fill(&mut self) {
        // The feeder learns the store's generation when it fills (the wire sends with it).
        let fill = self
            .w
            .fill(&self.store, &mut self.client, self.now, EXPIRE_BATCH);
        assert!(fill.expired <= EXPIRE_BATCH);
        // The feeder deletes expired readings with its generation: a stale one deletes nothing.
        for key in std::mem::take(&mut self.client.expired) {
            if self.w.generation() == self.store.generation
                && self.store.readings.remove(&key).is_some()
            {
                self.expired.insert(key);
            }
        }
    }

    fn poll(&mut self, n: usize) {
        if !self.link.up || self.link.failed {
            return;
        }
        for _ in 0..n {
            let Some(request) = self.client.channel.pop_front() else {
                return;
            };
            match request {
                Request::Qos1(carried) => {
                    let pkid = self.link.next_pkid();
                    assert!(
                        !self.link.unacked.iter().any(|(p, _)| *p == pkid),
                        "packet id {pkid} reused while unacknowledged: rumqttc would stall in collision"
                    );
                    self.link.unacked.push((pkid, carried));
                    self.link.events.push_back(Event::Sent(pkid));
                }
                Request::Qos0 => self.link.events.push_back(Event::Sent(0)),
                Request::Subscribe => {
                    self.link.next_pkid();
                    self.link.events.push_back(Event::SubscribeSent);
                }
            }
        }
    }

    fn ack_all(&mut self) {
        if self.link.up && !self.link.failed {
            for (pkid, carried) in self.link.unacked.drain(..) {
                self.link
                    .events
                    .push_back(Event::Acked(pkid, Code::Success, carried));
            }
        }
    }

    /// Link events reach the feeder: what `Feeder::handle` does with each.
    fn deliver(&mut self, n: usize) {
        let mut acked = Vec::new();
        for _ in 0..n {
            let Some(event) = self.link.events.pop_front() else {
                break;
            };
            match event {
                Event::Connected(slots) => self.w.connected(slots),
                Event::Sent(pkid) => {
                    assert_eq!(self.w.sent(pkid), Ok(()), "publish event for pkid {pkid}")
                }
                Event::SubscribeSent => self.w.subscribe_sent(),
                Event::Acked(pkid, code, carried) => {
                    let Some(o) = self.w.acked(pkid) else {
                        panic!("an ack for pkid {pkid} found nothing in flight");
                    };
                    if let Some(key) = o.key {
                        assert_eq!(
                            carried.key,
                            Some(key),
                            "pkid {pkid} carried {carried:?}, but its ack names key {key}"
                        );
                        assert_eq!(
                            carried.generation,
                            self.w.generation(),
                            "an ack of a publish sent in another generation names key {key}"
                        );
                    }
                    match code {
                        Code::Success => {
                            if let Some(key) = o.key {
                                acked.push(key);
                                self.w.delivered(key);
                            }
                        }
                        Code::Quarantine => {
                            if let Some(key) = o.key
                                && self.w.generation() == self.store.generation
                                && self.store.readings.remove(&key).is_some()
                            {
                                self.quarantined.insert(key);
                            }
                        }
                        Code::Retry => {
                            self.w.retry(o.key, self.now + RETRY_PAUSE);
                        }
                    }
                }
            }
        }
        // `Outbox::remove` with the feeder's generation: a stale one deletes nothing.
        for key in acked {
            if self.w.generation() == self.store.generation
                && self.store.readings.remove(&key).is_some()
            {
                self.delivered.insert(key);
            }
        }
    }

    fn down(&mut self) {
        if !self.link.up {
            return;
        }
        // Events read before the failure first, then Down, then the recovery.
        self.deliver(usize::MAX);
        self.w.down();
        self.client.channel.clear();
        self.link.unacked.clear();
        self.link.up = false;
        self.link.failed = false;
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        if self.w.hold_until().is_some_and(|t| t <= self.now) {
            self.w.hold_over();
        }
        if self
            .w
            .ack_deadline(ACK_TIMEOUT)
            .is_some_and(|t| t <= self.now)
        {
            // The feeder asks the connection task to drop the link.
            self.link.failed = true;
            self.down();
        }
    }

    fn check(&self) {
        assert!(
            self.w.in_flight() <= self.w.size(),
            "{} in flight, window {}",
            self.w.in_flight(),
            self.w.size()
        );
        assert!(self.client.channel.len() <= CAPACITY);
        if self.w.is_connected() && self.client.channel.is_empty() && self.link.events.is_empty() {
            assert!(
                self.w.live_room(),
                "an empty channel has no room for QoS 0: the count drifted"
            );
        }
    }

    /// A calm link until everything is out: every committed reading must end delivered,
    /// expired or quarantined.
    fn settle(&mut self) {
        self.client.refuse = 0;
        for _ in 0..100_000 {
            if self.store.readings.is_empty()
                && self.w.in_flight() == 0
                && self.client.channel.is_empty()
                && self.link.events.is_empty()
            {
                break;
            }
            if self.link.failed {
                self.down();
            }
            if !self.link.up {
                self.apply(&Op::Connect {
                    slots: (SLOTS.len() - 1) as u8,
                    fresh: false,
                });
            }
            self.deliver(usize::MAX);
            self.tick(RETRY_PAUSE);
            self.fill();
            self.poll(usize::MAX);
            self.ack_all();
            self.deliver(usize::MAX);
            self.fill();
            self.check();
        }
        assert!(
            self.store.readings.is_empty(),
            "stuck in the store on a calm link: {:?} (window: {} in flight, room {})",
            self.store.readings.keys().take(20).collect::<Vec<_>>(),
            self.w.in_flight(),
            self.w.room()
        );
        let ended = self.delivered.len() + self.expired.len() + self.quarantined.len();
        assert_eq!(ended as u64, self.committed, "readings unaccounted for");
    }
}

// 256 cases by default (about 10 s in a debug build); `PROPTEST_CASES=10000` for a long run.
proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn window_against_model(ops in proptest::collection::vec(op(), 1..300)) {
        let mut m = Model::new();
        for op in &ops {
            m.apply(op);
        }
        m.settle();
    }
}

/// The defect the model was built to catch: a refusing channel must not move the cursor past
/// the readings it refused.
#[test]
fn a_refused_publish_is_offered_again() {
    let mut m = Model::new();
    m.apply(&Op::Connect {
        slots: 5,
        fresh: true,
    });
    m.deliver(1);
    m.client.refuse = 1;
    m.apply(&Op::Commit { n: 5, stale: 0 });
    // The first fill was refused at once; the next one sends all five, first key first.
    assert_eq!(m.w.in_flight(), 0);
    m.fill();
    assert_eq!(m.w.in_flight(), 5);
    assert_eq!(m.client.last_first_send, Some(6));
    m.settle();
}
