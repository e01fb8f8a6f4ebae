//! Per-sensor publishing policy: spike rejection, averaging, and deadband with a heartbeat.
//!
//! Applied in that order to each calibrated reading, it decides what is published. Pure logic
//! with the clock passed in, so every rule is unit-tested without waiting.

use std::time::{Duration, Instant, SystemTime};

use crate::sensor::{Cause, ReadError};

/// The policy of one sensor, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Policy {
    /// Publish only when the value moved by at least this much since the last publish.
    pub deadband: Option<f64>,
    /// With a deadband: publish anyway when nothing was published for this long.
    pub heartbeat: Option<Duration>,
    /// Publish the mean of every `average` readings (a tumbling window).
    pub average: Option<u32>,
    /// A reading this far from the last accepted one is held until the next confirms it.
    pub max_step: Option<f64>,
}

impl Policy {
    pub fn is_passthrough(&self) -> bool {
        *self == Policy::default()
    }
}

/// A value and the time it was read.
pub type Sample = (f64, SystemTime);

/// What a reading leads to.
#[derive(Debug, PartialEq, Default)]
pub struct Outcome {
    /// Publish these, oldest first: none (inside the deadband, filling the average, held as
    /// a possible spike), one, or two (a confirmed jump releases the held reading too).
    pub publish: Vec<Sample>,
    /// A held reading turned out to be a lone spike and was dropped.
    pub dropped_spike: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Filter {
    policy: Policy,
    /// The last reading that passed spike rejection.
    accepted: Option<f64>,
    /// A suspected spike waiting for the next reading.
    held: Option<Sample>,
    window: Vec<Sample>,
    /// The last published value and when it was published.
    last: Option<(f64, Instant)>,
}

impl Filter {
    pub fn new(policy: Policy) -> Filter {
        Filter {
            policy,
            ..Filter::default()
        }
    }

    /// An error when the mean of an `average` window is not finite: the window is discarded.
    pub fn push(&mut self, sample: Sample, now: Instant) -> Result<Outcome, ReadError> {
        let mut outcome = Outcome::default();
        for s in self.reject_spikes(sample, &mut outcome.dropped_spike) {
            if let Some(s) = self.average(s)?
                && self.passes_deadband(s.0, now)
            {
                self.last = Some((s.0, now));
                outcome.publish.push(s);
            }
        }
        Ok(outcome)
    }

    /// 0, 1 or 2 readings that are not spikes.
    fn reject_spikes(&mut self, s: Sample, dropped: &mut Option<f64>) -> Vec<Sample> {
        let Some(step) = self.policy.max_step else {
            return vec![s];
        };
        let Some(accepted) = self.accepted else {
            self.accepted = Some(s.0);
            return vec![s];
        };
        match self.held.take() {
            None if (s.0 - accepted).abs() > step => {
                self.held = Some(s);
                vec![]
            }
            None => {
                self.accepted = Some(s.0);
                vec![s]
            }
            // The jump is confirmed: the value really moved, keep both.
            Some(h) if (s.0 - h.0).abs() <= step => {
                self.accepted = Some(s.0);
                vec![h, s]
            }
            // The held reading was alone: a spike. Judge the new one afresh.
            Some(h) => {
                *dropped = Some(h.0);
                self.reject_spikes(s, &mut None)
            }
        }
    }

    fn average(&mut self, s: Sample) -> Result<Option<Sample>, ReadError> {
        let Some(n) = self.policy.average.filter(|n| *n > 1) else {
            return Ok(Some(s));
        };
        self.window.push(s);
        if self.window.len() < n as usize {
            return Ok(None);
        }
        let len = self.window.len() as f64;
        let sum = self.window.iter().map(|(v, _)| v).sum::<f64>();
        // Finite readings can sum past f64::MAX (two of 1e308), and an infinite mean would be
        // published as "inf"; dividing each first cannot overflow.
        let mean = if sum.is_finite() {
            sum / len
        } else {
            self.window.iter().map(|(v, _)| v / len).sum()
        };
        // The mean is as of the newest reading in it.
        let taken = self.window.last().map_or(s.1, |(_, t)| *t);
        self.window.clear();
        if !mean.is_finite() {
            return Err(ReadError::new(
                Cause::NotFinite,
                format!("the average of {n} readings is {mean}: discarded"),
            ));
        }
        Ok(Some((mean, taken)))
    }

    fn passes_deadband(&self, value: f64, now: Instant) -> bool {
        let Some(band) = self.policy.deadband else {
            return true;
        };
        let Some((last, at)) = self.last else {
            return true;
        };
        (value - last).abs() >= band
            || self
                .policy
                .heartbeat
                .is_some_and(|h| now.duration_since(at) >= h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(policy: Policy, values: &[f64]) -> Vec<f64> {
        let mut f = Filter::new(policy);
        let start = Instant::now();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let outcome = f
                .push(
                    (*v, SystemTime::now()),
                    start + Duration::from_secs(i as u64),
                )
                .unwrap();
            out.extend(outcome.publish.iter().map(|(v, _)| *v));
        }
        out
    }

    #[test]
    fn no_policy_publishes_everything() {
        assert_eq!(feed(Policy::default(), &[1.0, 1.0, 2.0]), [1.0, 1.0, 2.0]);
    }

    #[test]
    fn deadband_publishes_only_real_changes() {
        let p = Policy {
            deadband: Some(0.5),
            ..Policy::default()
        };
        assert_eq!(
            feed(p, &[20.0, 20.2, 20.4, 20.5, 20.6, 19.9]),
            [20.0, 20.5, 19.9]
        );
    }

    #[test]
    fn heartbeat_publishes_an_unchanged_value_now_and_then() {
        // One reading a second; a heartbeat every 3 s.
        let p = Policy {
            deadband: Some(1.0),
            heartbeat: Some(Duration::from_secs(3)),
            ..Policy::default()
        };
        assert_eq!(feed(p, &[5.0; 8]), [5.0, 5.0, 5.0]);
    }

    #[test]
    fn average_publishes_the_mean_of_each_window() {
        let p = Policy {
            average: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            feed(p, &[1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 7.0]),
            [2.0, 20.0]
        );
    }

    /// Seen triaging the `pipeline` fuzz target's "inf" payloads: the mean of two readings of 1e308
    /// was inf (the target itself cannot tell it apart until values that large render).
    #[test]
    fn the_mean_of_huge_readings_stays_finite() {
        let p = Policy {
            average: Some(2),
            ..Policy::default()
        };
        let means = feed(p, &[1e308, 1e308, -1e308, -f64::MAX]);
        assert_eq!(means, [1e308, -1e308 / 2.0 - f64::MAX / 2.0]);
    }

    #[test]
    fn a_lone_spike_is_dropped_and_a_confirmed_jump_kept() {
        let p = Policy {
            max_step: Some(5.0),
            ..Policy::default()
        };
        // 85 °C once (a DS18B20 glitch): dropped. A real jump to 40, confirmed: both kept.
        assert_eq!(
            feed(p, &[21.0, 85.0, 21.2, 40.0, 40.5, 41.0]),
            [21.0, 21.2, 40.0, 40.5, 41.0]
        );
        let mut f = Filter::new(p);
        let now = Instant::now();
        f.push((21.0, SystemTime::now()), now).unwrap();
        assert_eq!(
            f.push((85.0, SystemTime::now()), now),
            Ok(Outcome::default())
        );
        let next = f.push((21.1, SystemTime::now()), now).unwrap();
        assert_eq!((next.publish.len(), next.dropped_spike), (1, Some(85.0)));
    }

    #[test]
    fn a_spike_right_after_a_spike_is_still_judged() {
        let p = Policy {
            max_step: Some(5.0),
            ..Policy::default()
        };
        assert_eq!(feed(p, &[20.0, 90.0, -40.0, 20.5]), [20.0, 20.5]);
    }

    #[test]
    fn the_mean_keeps_the_time_of_its_newest_reading() {
        let mut f = Filter::new(Policy {
            average: Some(2),
            ..Policy::default()
        });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let t1 = t0 + Duration::from_secs(30);
        assert!(
            f.push((1.0, t0), Instant::now())
                .unwrap()
                .publish
                .is_empty()
        );
        assert_eq!(
            f.push((3.0, t1), Instant::now()).unwrap().publish,
            vec![(2.0, t1)]
        );
    }

    #[test]
    fn an_average_that_overflows_is_an_error_not_inf() {
        let mut f = Filter::new(Policy {
            average: Some(2),
            ..Policy::default()
        });
        let now = Instant::now();
        let t = SystemTime::now();
        assert_eq!(f.push((f64::MAX, t), now), Ok(Outcome::default()));
        // Summing first gave inf; dividing first gives the true mean.
        let mean = f.push((f64::MAX, t), now).unwrap().publish;
        assert_eq!(mean, vec![(f64::MAX, t)]);
        let mut three = Filter::new(Policy {
            average: Some(3),
            ..Policy::default()
        });
        for v in [f64::MAX, f64::MAX] {
            assert!(three.push((v, t), now).unwrap().publish.is_empty());
        }
        // MAX / 3 rounds up: three of them sum past MAX. An error, and the next window starts
        // empty.
        let err = three.push((f64::MAX, t), now).unwrap_err();
        assert_eq!(err.cause(), Cause::NotFinite);
        assert_eq!(
            err.to_string(),
            "the average of 3 readings is inf: discarded"
        );
        assert!(three.push((1.0, t), now).unwrap().publish.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Any raw value, through calibration and any policy, is a finite value or an error.
        #[test]
        fn calibrate_and_filter_give_finite_values_or_errors(
            // Uniform bits rarely come near f64::MAX, where sums overflow: weight those in.
            raws in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::f64::ANY,
                    proptest::strategy::Just(f64::MAX),
                    proptest::strategy::Just(-f64::MAX),
                    1e307..f64::MAX,
                ],
                1..12,
            ),
            scale in proptest::prop_oneof![proptest::num::f64::NORMAL, proptest::strategy::Just(1.0)],
            offset in proptest::num::f64::NORMAL | proptest::num::f64::ZERO,
            average in proptest::option::of(1u32..4),
            max_step in proptest::option::of(1e-3f64..1e300),
            deadband in proptest::option::of(0f64..1e300),
        ) {
            let toml = format!(
                "[[sensor]]\nname='t'\nkind='file'\npath='/x'\ninterval='1s'\ntopic='t'\nscale={scale:e}\noffset={offset:e}\n"
            );
            let sensor = crate::config::Config::parse(&toml, std::path::Path::new("t.toml"))
                .unwrap()
                .sensors
                .remove(0);
            let mut f = Filter::new(Policy { deadband, heartbeat: None, average, max_step });
            for raw in raws {
                let Ok(value) = crate::schedule::calibrate(&sensor, raw) else { continue };
                proptest::prop_assert!(value.is_finite());
                if let Ok(out) = f.push((value, SystemTime::now()), Instant::now()) {
                    for (v, _) in out.publish {
                        proptest::prop_assert!(v.is_finite(), "{v}");
                    }
                }
            }
        }
    }
}
