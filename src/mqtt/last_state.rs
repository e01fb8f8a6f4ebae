//! Which state of each Home Assistant sensor to send again when Home Assistant comes online.
//!
//! Never one older than a state Home Assistant already got or gets after it.
//!
//! After Home Assistant's birth message, it receives, in this order: whatever readings are
//! already on the wire, the copies we queue (control messages go before the backlog), then
//! the backlog. So the copy for a topic must be at least as new as the newest reading of that
//! topic handed to the current link, and no newer than any reading still waiting in the
//! store. The newest reading handed to this link if there is one, else the newest the broker
//! acknowledged, is both. A reading handed to an earlier link but not acknowledged is back in
//! the store and goes out again after the copy, so it never counts. QoS 0 readings do not wait
//! for the window: one that goes out while its topic's copy is still queued replaces the
//! copy's state (the feeder's `refresh_copy`).

use std::collections::{BTreeMap, HashMap};

/// One state, as it went out.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub taken_ms: u64,
    pub plain: bool,
}

/// Far more than the window ever holds: a bound, should a key never be answered.
const IN_FLIGHT_MAX: usize = 1024;

#[derive(Debug, Default)]
pub struct LastStates {
    /// The sensors' state topics (nothing else is kept), with their `expire_after`.
    watched: HashMap<String, Option<u64>>,
    /// Per topic, the newest state acknowledged (its key; QoS 0 ones have none and replace).
    delivered: HashMap<String, (Option<u64>, State)>,
    /// Handed to the current link, not yet acknowledged, by store key.
    in_flight: BTreeMap<u64, State>,
}

impl LastStates {
    /// Keeps only `topics` (the configured sensors' topics after a reload), each with the
    /// `expire_after` Home Assistant was given for it.
    pub fn watch(&mut self, topics: &[(String, Option<u64>)]) {
        self.watched = topics.iter().cloned().collect();
        let watched = &self.watched;
        self.delivered.retain(|t, _| watched.contains_key(t));
        self.in_flight.retain(|_, s| watched.contains_key(&s.topic));
    }

    pub fn watches(&self, topic: &str) -> bool {
        self.watched.contains_key(topic)
    }

    /// How long Home Assistant shows a state of `topic` before it expires, if it does.
    pub fn stale_after(&self, topic: &str) -> Option<u64> {
        self.watched.get(topic).copied().flatten()
    }

    /// The QoS 1 reading under `key` was handed to the client.
    pub fn handed(&mut self, key: u64, state: State) {
        if !self.watches(&state.topic) {
            return;
        }
        self.in_flight.insert(key, state);
        while self.in_flight.len() > IN_FLIGHT_MAX {
            self.in_flight.pop_first();
        }
    }

    /// A QoS 0 reading went out: there is no acknowledgement to wait for.
    pub fn sent_live(&mut self, state: State) {
        if self.watches(&state.topic) {
            self.delivered.insert(state.topic.clone(), (None, state));
        }
    }

    /// The broker acknowledged `key`.
    pub fn acked(&mut self, key: u64) {
        let Some(state) = self.in_flight.remove(&key) else {
            return;
        };
        let newer = match self.delivered.get(&state.topic) {
            Some((Some(k), _)) => key > *k,
            _ => true,
        };
        if newer {
            self.delivered
                .insert(state.topic.clone(), (Some(key), state));
        }
    }

    /// `key` was refused (it stays in the store, or is quarantined): it is not a state.
    pub fn refused(&mut self, key: u64) {
        self.in_flight.remove(&key);
    }

    /// The link went down: what was in flight is in the store again, to be sent after any copy.
    pub fn link_down(&mut self) {
        self.in_flight.clear();
    }

    /// The copies to send, one per watched topic that has a state, in topic order: per topic
    /// the newest (highest key) of those acknowledged and those in flight on this link.
    pub fn to_resend(&self) -> Vec<State> {
        let mut out: BTreeMap<&str, (Option<u64>, &State)> = self
            .delivered
            .iter()
            .map(|(t, (k, s))| (t.as_str(), (*k, s)))
            .collect();
        for (k, s) in &self.in_flight {
            let newer = match out.get(s.topic.as_str()) {
                Some((Some(d), _)) => k > d,
                _ => true,
            };
            if newer {
                out.insert(&s.topic, (Some(*k), s));
            }
        }
        out.into_values().map(|(_, s)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(topic: &str, value: u64) -> State {
        State {
            topic: topic.into(),
            payload: value.to_string().into_bytes(),
            retain: false,
            taken_ms: value,
            plain: true,
        }
    }

    #[test]
    fn unwatched_topics_are_never_kept_or_resent() {
        let mut l = LastStates::default();
        l.watch(&[("a".into(), Some(90))]);
        assert_eq!(l.stale_after("a"), Some(90));
        assert_eq!(l.stale_after("b"), None);
        l.handed(1, st("b", 1));
        l.acked(1);
        l.sent_live(st("b", 2));
        assert!(l.to_resend().is_empty());
        l.handed(2, st("a", 2));
        l.acked(2);
        assert_eq!(l.to_resend(), vec![st("a", 2)]);
        l.watch(&[("b".into(), None)]);
        assert!(l.to_resend().is_empty(), "a reload forgets removed sensors");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new reading of topic `t` enters the store.
        Take(u8),
        /// The feeder hands the oldest unsent reading to the link.
        Hand,
        /// The broker acknowledges the in-flight reading at this index.
        Ack(usize),
        /// The broker refuses it with a retry code: back to the store.
        Refuse(usize),
        /// The link drops.
        Down,
        /// Home Assistant's birth message: check the copies.
        Birth,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..3).prop_map(Op::Take),
            3 => Just(Op::Hand),
            2 => any::<usize>().prop_map(Op::Ack),
            1 => any::<usize>().prop_map(Op::Refuse),
            1 => Just(Op::Down),
            1 => Just(Op::Birth),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Against a model of the store and the link (acks in any order, refusals, drops): the
        /// copy of each topic is the newest of its readings acknowledged or on the current link.
        #[test]
        fn a_copy_never_runs_ahead_of_the_store_or_behind_the_wire(ops in proptest::collection::vec(op(), 1..200)) {
            let topics: Vec<String> = (0..3).map(|t| format!("t{t}")).collect();
            let mut l = LastStates::default();
            l.watch(&topics.iter().map(|t| (t.clone(), None)).collect::<Vec<_>>());
            let mut key = 0u64;
            let mut store: BTreeMap<u64, String> = BTreeMap::new(); // unacknowledged
            let mut link: Vec<u64> = Vec::new(); // in flight, handed order
            let mut acked: HashMap<String, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Take(t) => { key += 1; store.insert(key, topics[t as usize].clone()); }
                    Op::Hand => {
                        let next = store.keys().find(|k| !link.contains(k)).copied();
                        if let Some(k) = next {
                            link.push(k);
                            l.handed(k, st(&store[&k], k));
                        }
                    }
                    Op::Ack(i) if !link.is_empty() => {
                        let k = link.remove(i % link.len());
                        let t = store.remove(&k).unwrap();
                        let e = acked.entry(t).or_default();
                        *e = (*e).max(k);
                        l.acked(k);
                    }
                    Op::Refuse(i) if !link.is_empty() => {
                        let k = link.remove(i % link.len());
                        l.refused(k);
                    }
                    Op::Down => { link.clear(); l.link_down(); }
                    Op::Birth => {
                        let copies = l.to_resend();
                        for t in &topics {
                            let copy = copies.iter().find(|c| &c.topic == t).map(|c| c.taken_ms);
                            let on_wire = link.iter().filter(|k| &store[k] == t).max().copied();
                            let floor = on_wire.into_iter().chain(acked.get(t).copied()).max();
                            // Exactly the newest reading Home Assistant can have seen: nothing
                            // older (it would step back), nothing newer (a reading still in the
                            // store would then arrive after it). A store reading older than it
                            // is a refusal's resend, out of order with or without the copy.
                            prop_assert_eq!(copy, floor, "topic {}", t);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
