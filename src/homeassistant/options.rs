//! Per-sensor Home Assistant settings (`[sensor.ha]`) and the derived `expire_after`.
//!
//! `expire_after` is derived from the longest silence a sensor's publishing policy allows.

use std::time::Duration;

use serde::Deserialize;

use crate::filter::Policy;

/// How Home Assistant shows one sensor; every field overrides what telemetryd derives.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityOptions {
    /// The entity's name (default: the sensor's name).
    pub name: Option<String>,
    /// One of Home Assistant's sensor device classes (default: from the unit or the kind).
    pub device_class: Option<String>,
    /// `mdi:...`
    pub icon: Option<String>,
    /// `diagnostic`: shown apart from the device's main readings.
    pub entity_category: Option<String>,
    /// Digits Home Assistant shows (default: the sensor's `decimals`).
    pub suggested_display_precision: Option<u8>,
    /// `measurement` (default), `measurement_angle`, `total`, `total_increasing`, or `none`.
    pub state_class: Option<String>,
    /// Shown unavailable after this long without a value; `"0s"`: never (default: derived).
    #[serde(default, with = "humantime_serde")]
    pub expire_after: Option<Duration>,
}

/// Why a `[sensor.ha]` setting is refused. Nobody branches on it: the config places it at
/// the table in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(String);

const STATE_CLASSES: &[&str] = &[
    "measurement",
    "measurement_angle",
    "total",
    "total_increasing",
    "none",
];

impl EntityOptions {
    /// Checked at config load, so Home Assistant never gets a config it refuses (it drops the
    /// whole entity, with an error only in its own log).
    pub fn validate(&self) -> Result<(), OptionError> {
        let word = |v: &str| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if let Some(n) = &self.name
            && (n.trim().is_empty() || n.len() > 128)
        {
            return Err(OptionError("ha.name must be 1 to 128 bytes".into()));
        }
        if let Some(c) = self.device_class.as_deref().filter(|c| !word(c)) {
            return Err(OptionError(format!(
                "ha.device_class {c:?} is not a Home Assistant device class (lowercase, e.g. \"temperature\", \"voltage\")"
            )));
        }
        if let Some(i) = &self.icon {
            // Bounded like every other field: the whole discovery config must stay far below
            // rumqttc's 10 KiB packet limit, or its refusal drops the link at every connect.
            let ok = i.len() <= 64
                && i.split_once(':').is_some_and(|(set, name)| {
                    word(set)
                        && !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !ok {
                return Err(OptionError(format!(
                    "ha.icon {i:?} is not an icon name like \"mdi:thermometer\" (at most 64 bytes)"
                )));
            }
        }
        if let Some(c) = self
            .entity_category
            .as_deref()
            .filter(|c| *c != "diagnostic")
        {
            return Err(OptionError(format!(
                "ha.entity_category {c:?}: Home Assistant accepts only \"diagnostic\" for sensors"
            )));
        }
        if self.suggested_display_precision.is_some_and(|p| p > 9) {
            return Err(OptionError(
                "ha.suggested_display_precision must be between 0 and 9".into(),
            ));
        }
        if let Some(c) = self
            .state_class
            .as_deref()
            .filter(|c| !STATE_CLASSES.contains(c))
        {
            return Err(OptionError(format!(
                "ha.state_class {c:?} is not one of {}",
                STATE_CLASSES.join(", ")
            )));
        }
        if let Some(e) = self.expire_after
            && e.subsec_nanos() != 0
        {
            return Err(OptionError(
                "ha.expire_after is counted in whole seconds".into(),
            ));
        }
        Ok(())
    }
}

/// A margin for late readings: a slow read (a DS18B20 takes 750 ms), a missed reading or
/// two, delivery. At least a minute, and two publishing periods.
const MARGIN_MIN: Duration = Duration::from_secs(60);

/// The longest a sensor read every `interval` with `policy` stays silent while it works, plus
/// a margin; `None` when nothing bounds it (a deadband without a heartbeat: a steady value is
/// never published again, and must not turn "unavailable").
///
/// - one publish per `average` readings: a period of `interval × average`;
/// - a deadband publishes at the first period at or after `heartbeat`: up to
///   `heartbeat + period` apart;
/// - `max_step` holds a jump for one more reading.
pub fn silence_bound(interval: Duration, policy: &Policy) -> Option<Duration> {
    let period = interval.saturating_mul(policy.average.unwrap_or(1));
    let silence = match (policy.deadband, policy.heartbeat) {
        (Some(_), None) => return None,
        (Some(_), Some(heartbeat)) => heartbeat.saturating_add(period),
        (None, _) => period,
    };
    let held = if policy.max_step.is_some() {
        interval
    } else {
        Duration::ZERO
    };
    let margin = period.saturating_mul(2).max(MARGIN_MIN);
    Some(silence.saturating_add(held).saturating_add(margin))
}

/// `expire_after` in whole seconds, rounded up; `None`: leave it out (never expires).
pub fn expire_after_s(bound: Option<Duration>) -> Option<u64> {
    let b = bound?;
    let s = b.as_secs() + u64::from(b.subsec_nanos() > 0);
    (s > 0).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn s(secs: u64) -> Option<u64> {
        Some(secs)
    }

    #[test]
    fn the_shipped_examples_never_expire_while_working() {
        // `outside`: 1 min, deadband with a 15 min heartbeat, max_step. It publishes at least
        // every 16 minutes; the old rule (3 × interval) made it unavailable from minute 3.
        let outside = Policy {
            deadband: Some(0.2),
            heartbeat: Some(15 * MIN),
            max_step: Some(10.0),
            ..Policy::default()
        };
        let bound = silence_bound(MIN, &outside);
        assert_eq!(expire_after_s(bound), s((15 + 1 + 1 + 2) * 60));
        // `cpu`: average = 5 at 1 min: one publish per 5 minutes, 10 minutes of margin.
        let cpu = Policy {
            average: Some(5),
            ..Policy::default()
        };
        assert_eq!(expire_after_s(silence_bound(MIN, &cpu)), s(15 * 60));
        // A plain 30 s sensor: as before, 3 intervals.
        let plain = silence_bound(Duration::from_secs(30), &Policy::default());
        assert_eq!(expire_after_s(plain), s(90));
        // Fast sensors get at least a minute of margin.
        let fast = silence_bound(Duration::from_millis(200), &Policy::default());
        assert_eq!(expire_after_s(fast), s(61));
    }

    #[test]
    fn a_deadband_without_heartbeat_has_no_bound() {
        let p = Policy {
            deadband: Some(0.5),
            ..Policy::default()
        };
        assert_eq!(silence_bound(MIN, &p), None);
        assert_eq!(expire_after_s(None), None);
        // Absurd settings saturate instead of overflowing.
        let huge = Policy {
            average: Some(10_000),
            ..Policy::default()
        };
        assert!(silence_bound(Duration::MAX, &huge).is_some());
    }

    #[test]
    fn options_are_checked_against_what_home_assistant_accepts() {
        let ok = EntityOptions {
            name: Some("Outside".into()),
            device_class: Some("temperature".into()),
            icon: Some("mdi:thermometer-lines".into()),
            entity_category: Some("diagnostic".into()),
            suggested_display_precision: Some(1),
            state_class: Some("none".into()),
            expire_after: Some(Duration::from_secs(600)),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |o: EntityOptions| o.validate().unwrap_err().to_string();
        assert!(
            bad(EntityOptions {
                entity_category: Some("config".into()),
                ..ok.clone()
            })
            .contains("only \"diagnostic\"")
        );
        assert!(
            bad(EntityOptions {
                device_class: Some("Temperature".into()),
                ..ok.clone()
            })
            .contains("device class")
        );
        assert!(
            bad(EntityOptions {
                icon: Some("thermometer".into()),
                ..ok.clone()
            })
            .contains("mdi:thermometer")
        );
        assert!(
            bad(EntityOptions {
                state_class: Some("gauge".into()),
                ..ok.clone()
            })
            .contains("measurement")
        );
        assert!(
            bad(EntityOptions {
                suggested_display_precision: Some(12),
                ..ok.clone()
            })
            .contains("0 and 9")
        );
        assert!(
            bad(EntityOptions {
                expire_after: Some(Duration::from_millis(1500)),
                ..ok.clone()
            })
            .contains("whole seconds")
        );
        assert!(
            bad(EntityOptions {
                name: Some(" ".into()),
                ..ok
            })
            .contains("ha.name")
        );
    }
}
