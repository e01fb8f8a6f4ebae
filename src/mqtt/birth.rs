//! How often Home Assistant's `online` is acted on.
//!
//! At once, then at most once per [`BIRTH_GAP`]. One that arrives sooner is deferred to the
//! end of the gap, never dropped, so Home Assistant's last restart is always answered while a
//! flood costs one re-announce (and one log line) per gap instead of one per message.

use std::time::{Duration, Instant};

/// Home Assistant restarts in tens of seconds; only a flood sends `online` more often.
pub(super) const BIRTH_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct BirthGate {
    /// When an `online` was last acted on.
    last: Option<Instant>,
    /// Births that arrived since, within the gap: to be acted on once, when it ends.
    deferred: u64,
}

impl BirthGate {
    /// An `online` arrived at `now`: true when it is to be acted on now; otherwise it is
    /// deferred to [`BirthGate::due`].
    pub fn online(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now < last + BIRTH_GAP => {
                self.deferred += 1;
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// When deferred births are to be acted on, if any are waiting.
    pub fn due(&self) -> Option<Instant> {
        match (self.deferred, self.last) {
            (0, _) | (_, None) => None,
            (_, Some(last)) => Some(last + BIRTH_GAP),
        }
    }

    /// At `now`: how many deferred births are answered by acting now (0: none is due).
    pub fn take_due(&mut self, now: Instant) -> u64 {
        match self.due() {
            Some(due) if now >= due => {
                self.last = Some(now);
                std::mem::take(&mut self.deferred)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Births at any moments, the feeder acting whenever `due` says: two actions are never
        /// closer than the gap, and every birth is answered by an action at or after it,
        /// within the gap.
        #[test]
        fn acts_at_most_once_per_gap_and_answers_every_birth(
            gaps_ms in proptest::collection::vec(0u64..2500, 1..200),
        ) {
            let t0 = Instant::now();
            let mut gate = BirthGate::default();
            let mut actions: Vec<Instant> = Vec::new();
            let mut births: Vec<Instant> = Vec::new();
            let mut now = t0;
            for gap in gaps_ms {
                let next = now + Duration::from_millis(gap);
                // The feeder's timer fires first if a deferred action falls due before.
                while let Some(due) = gate.due().filter(|d| *d <= next) {
                    prop_assert!(gate.take_due(due) > 0);
                    actions.push(due);
                }
                now = next;
                births.push(now);
                if gate.online(now) {
                    actions.push(now);
                }
            }
            if let Some(due) = gate.due() {
                prop_assert!(gate.take_due(due - Duration::from_millis(1)) == 0, "early");
                prop_assert!(gate.take_due(due) > 0);
                actions.push(due);
            }
            prop_assert_eq!(gate.due(), None);
            for pair in actions.windows(2) {
                prop_assert!(pair[1] - pair[0] >= BIRTH_GAP, "{:?}", pair);
            }
            for b in births {
                prop_assert!(
                    actions.iter().any(|a| *a >= b && *a - b <= BIRTH_GAP),
                    "a birth left unanswered"
                );
            }
        }
    }
}
