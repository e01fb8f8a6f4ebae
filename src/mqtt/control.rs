//! Control messages (what the feeder sends that is not a reading) and their queue.
//!
//! The birth message, discovery configs and their removal, the self-metrics at connect, copies
//! of the last states.

use std::collections::{HashMap, VecDeque};

use super::last_state::State;
use super::properties::Stamp;

/// A QoS 1 message that is not a reading: acked, it deletes nothing.
#[derive(Debug)]
pub(super) struct Control {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// A copy of a reading: its `max_age` and MQTT 5 properties, as for the reading.
    pub stamp: Option<Stamp>,
}

impl Control {
    /// Birth, discovery configs and their removal: retained, no properties.
    pub fn retained(topic: &str, payload: &[u8]) -> Control {
        Control {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            retain: true,
            stamp: None,
        }
    }

    /// A copy of a state Home Assistant has already expired at `now_ms` (taken longer ago
    /// than its `expire_after`): sent, it would show the old value as current again.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.stamp.is_some_and(|s| {
            s.stale_after_s
                .is_some_and(|stale| now_ms.saturating_sub(s.taken_ms) > stale.saturating_mul(1000))
        })
    }

    /// A fresh copy of a state, published as the reading was (retained or not).
    pub fn copy(s: State, stale_after_s: Option<u64>) -> Control {
        Control {
            stamp: Some(Stamp {
                taken_ms: s.taken_ms,
                plain: s.plain,
                retain: s.retain,
                stale_after_s,
            }),
            topic: s.topic,
            payload: s.payload,
            retain: s.retain,
        }
    }
}

/// The control messages waiting, in send order, at most one per topic: a newer message for a
/// topic replaces the waiting one and goes to the back. Every operation is O(1) amortized, so a
/// broker replaying thousands of stale configs of ours (each queues a removal) costs linear
/// time, not quadratic: 10,000 topics queue in 12 ms here, against 0.20-0.29 s with the scan
/// per message it replaces (a Pi Zero is some 10-20 times slower, and the single-threaded
/// runtime does nothing else meanwhile).
#[derive(Debug, Default)]
pub(super) struct ControlQueue {
    /// With their sequence numbers, ascending. An entry whose topic has a newer one queued is
    /// dead: skipped, and dropped in bulk once they outnumber the live ones. The front is
    /// always live.
    queue: VecDeque<(u64, Control)>,
    /// Per topic waiting, the sequence number of its live entry.
    live: HashMap<String, u64>,
    next: u64,
}

impl ControlQueue {
    pub fn clear(&mut self) {
        self.queue.clear();
        self.live.clear();
    }

    /// Queues `c` behind the others, replacing one waiting for its topic. False (not queued)
    /// when it is for a new topic and `max` already wait.
    pub fn push(&mut self, c: Control, max: usize) -> bool {
        if !self.live.contains_key(&c.topic) && self.live.len() >= max {
            return false;
        }
        let seq = self.next;
        self.next += 1;
        self.live.insert(c.topic.clone(), seq);
        self.queue.push_back((seq, c));
        self.skip_dead();
        if self.queue.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.queue
                .retain(|(seq, c)| live.get(&c.topic) == Some(seq));
        }
        true
    }

    /// The next message to send.
    pub fn front(&self) -> Option<&Control> {
        self.queue.front().map(|(_, c)| c)
    }

    pub fn pop_front(&mut self) -> Option<Control> {
        let (_, c) = self.queue.pop_front()?;
        self.live.remove(&c.topic);
        self.skip_dead();
        Some(c)
    }

    /// The message waiting for `topic`, if any.
    pub fn get_mut(&mut self, topic: &str) -> Option<&mut Control> {
        let seq = *self.live.get(topic)?;
        let at = self.queue.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        self.queue.get_mut(at).map(|(_, c)| c)
    }

    fn skip_dead(&mut self) {
        while let Some((seq, c)) = self.queue.front() {
            if self.live.get(&c.topic) == Some(seq) {
                return;
            }
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8, u8),
        Pop,
        Refresh(u8, u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..6, any::<u8>()).prop_map(|(t, p)| Op::Push(t, p)),
            3 => Just(Op::Pop),
            1 => (0u8..6, any::<u8>()).prop_map(|(t, p)| Op::Refresh(t, p)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Against the plain queue it replaces (a scan per push, one message per topic, the
        /// newest at the back, at most `max`): the same messages come out in the same order.
        #[test]
        fn behaves_as_a_scanned_queue(ops in proptest::collection::vec(op(), 1..300)) {
            const MAX: usize = 4;
            let mut q = ControlQueue::default();
            let mut model: VecDeque<(String, Vec<u8>)> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(t, p) => {
                        let topic = format!("t{t}");
                        model.retain(|(m, _)| *m != topic);
                        let fits = model.len() < MAX;
                        if fits {
                            model.push_back((topic.clone(), vec![p]));
                        }
                        prop_assert_eq!(q.push(Control::retained(&topic, &[p]), MAX), fits);
                    }
                    Op::Pop => {
                        let got = q.pop_front().map(|c| (c.topic, c.payload));
                        prop_assert_eq!(got, model.pop_front());
                    }
                    Op::Refresh(t, p) => {
                        let topic = format!("t{t}");
                        if let Some(c) = q.get_mut(&topic) {
                            c.payload = vec![p];
                        }
                        if let Some(m) = model.iter_mut().find(|(m, _)| *m == topic) {
                            m.1 = vec![p];
                        }
                    }
                    Op::Clear => {
                        q.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(q.live.len(), model.len());
                prop_assert_eq!(
                    q.front().map(|c| (c.topic.clone(), c.payload.clone())),
                    model.front().cloned()
                );
                prop_assert!(q.queue.len() <= 2 * q.live.len() + 65);
            }
        }
    }

    fn copy(taken_ms: u64, stale_after_s: Option<u64>) -> Control {
        let s = State {
            topic: "t".into(),
            payload: b"1".to_vec(),
            retain: false,
            taken_ms,
            plain: true,
        };
        Control::copy(s, stale_after_s)
    }

    #[test]
    fn a_copy_expires_with_its_expire_after_and_nothing_else_does() {
        assert!(!copy(10_000, Some(2)).expired(12_000), "exactly 2 s old");
        assert!(copy(10_000, Some(2)).expired(12_001));
        assert!(!copy(10_000, None).expired(u64::MAX), "no expire_after");
        assert!(!copy(10_000, Some(u64::MAX)).expired(u64::MAX));
        // Taken "later" than now (the clock went back): not expired.
        assert!(!copy(10_000, Some(2)).expired(5_000));
        assert!(!Control::retained("t", b"x").expired(u64::MAX));
    }
}
