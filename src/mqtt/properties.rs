//! What goes with a reading besides topic and payload.
//!
//! Whether it is still worth sending (`max_age`), and its MQTT 5 properties (message expiry,
//! the `ts` user property).

use std::time::{Duration, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// The user property that carries a plain reading's time on MQTT 5.
pub const TS_PROPERTY: &str = "ts";

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z): humantime panics on a
/// later time, and a stored record's time is outside input (a damaged or foreign store), so
/// every formatting of it goes through [`rfc3339_millis`]. The store also refuses to decode a
/// record stamped later (it is quarantined), since no clock of ours produced it.
pub const LAST_TS_MS: u64 = 253_402_300_799_999;

/// `taken_ms` as RFC 3339 UTC with milliseconds; `None` past [`LAST_TS_MS`] instead of a panic.
pub fn rfc3339_millis(taken_ms: u64) -> Option<String> {
    (taken_ms <= LAST_TS_MS).then(|| {
        let taken = UNIX_EPOCH + Duration::from_millis(taken_ms);
        humantime::format_rfc3339_millis(taken).to_string()
    })
}

/// MQTT 5 publish properties we set; MQTT 3.1.1 has no room for them.
#[derive(Debug, Default, PartialEq)]
pub struct Properties {
    /// Message Expiry Interval: the broker drops the message (e.g. queued for an offline
    /// subscriber) once this many seconds have passed.
    pub expiry_s: Option<u32>,
    /// The reading's time, RFC 3339 UTC with milliseconds (the JSON payload's `ts` format).
    pub ts: Option<String>,
}

impl Properties {
    /// rumqttc's form; `None` when there is nothing to set.
    pub fn into_v5(self) -> Option<PublishProperties> {
        if self == Properties::default() {
            return None;
        }
        Some(PublishProperties {
            message_expiry_interval: self.expiry_s,
            user_properties: self
                .ts
                .map(|ts| vec![(TS_PROPERTY.to_owned(), ts)])
                .unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// What to do with a reading taken at `taken_ms`, at `now_ms` (both ms since the epoch).
#[derive(Debug, PartialEq)]
pub enum Fate {
    Send(Properties),
    /// Older than `max_age`: dropped unsent.
    TooOld {
        age: Duration,
    },
}

/// What the fate of a reading depends on, besides the settings and the clock.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// When it was taken (ms since the epoch).
    pub taken_ms: u64,
    /// Its payload is the bare value: on MQTT 5 its time goes in the `ts` user property.
    pub plain: bool,
    /// Retained: the topic's current value for whoever subscribes later (Home Assistant after
    /// a restart). `max_age` decides whether it is sent, but once sent it must not vanish
    /// from the broker, so it carries no expiry for that.
    pub retain: bool,
    /// A retained Home Assistant state with an `expire_after`: on MQTT 5 the broker drops it
    /// once it is that old (counted from when it was taken), so Home Assistant, restarting,
    /// never gets from the broker a value it would itself have expired.
    pub stale_after_s: Option<u64>,
}

/// The reading's fate at `now_ms`. A reading stamped in the future (the clock went back)
/// counts as new. On MQTT 3.1.1 the properties are left out by `Client::try_publish`; `v5`
/// only saves formatting a `ts` nobody sends.
pub fn fate(r: Stamp, max_age: Option<Duration>, v5: bool, now_ms: u64) -> Fate {
    let age = Duration::from_millis(now_ms.saturating_sub(r.taken_ms));
    let mut props = Properties::default();
    if let Some(max) = max_age {
        if age > max {
            return Fate::TooOld { age };
        }
        if !r.retain {
            // What is left of max_age, rounded up: 0 would mean "expired" to some brokers.
            let left_ms = (max - age).as_millis() as u64;
            props.expiry_s = Some(left_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32);
        }
    }
    if let (true, Some(stale)) = (r.retain, r.stale_after_s) {
        let left_ms = stale
            .saturating_mul(1000)
            .saturating_sub(age.as_millis() as u64);
        let left_s = left_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32;
        props.expiry_s = Some(props.expiry_s.map_or(left_s, |e| e.min(left_s)));
    }
    if v5 && r.plain {
        // A time RFC 3339 cannot write goes without `ts` rather than stopping the feeder.
        props.ts = rfc3339_millis(r.taken_ms);
    }
    Fate::Send(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAKEN: u64 = 1_795_580_400_123; // 2026-11-25T04:20:00.123Z

    fn st(plain: bool) -> Stamp {
        Stamp {
            taken_ms: TAKEN,
            plain,
            retain: false,
            stale_after_s: None,
        }
    }

    #[test]
    fn plain_readings_carry_their_time_on_mqtt5_only() {
        let Fate::Send(p) = fate(st(true), None, true, TAKEN + 5) else {
            panic!("sent")
        };
        assert_eq!(p.ts.as_deref(), Some("2026-11-25T04:20:00.123Z"));
        assert_eq!(p.expiry_s, None);
        let props = p.into_v5().expect("properties");
        assert_eq!(
            props.user_properties,
            vec![("ts".to_owned(), "2026-11-25T04:20:00.123Z".to_owned())]
        );
        // JSON payloads have their own ts; 3.1.1 has no properties at all.
        assert_eq!(
            fate(st(false), None, true, TAKEN),
            Fate::Send(Properties::default())
        );
        assert_eq!(
            fate(st(true), None, false, TAKEN),
            Fate::Send(Properties::default())
        );
        assert_eq!(Properties::default().into_v5(), None);
    }

    #[test]
    fn max_age_drops_old_readings_and_sets_the_rest_as_expiry() {
        let hour = Some(Duration::from_secs(3600));
        // 10 minutes old: 50 minutes left.
        let Fate::Send(p) = fate(st(false), hour, true, TAKEN + 600_000) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(3000));
        // Rounded up, never 0.
        let Fate::Send(p) = fate(st(false), hour, true, TAKEN + 3_599_999) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(1));
        assert_eq!(
            fate(st(true), hour, true, TAKEN + 3_600_001),
            Fate::TooOld {
                age: Duration::from_millis(3_600_001)
            }
        );
        // MQTT 3.1.1: dropped all the same; no `ts` formatted (try_publish sends no
        // properties there).
        assert!(matches!(
            fate(st(true), hour, false, TAKEN + 4_000_000),
            Fate::TooOld { .. }
        ));
        let Fate::Send(p) = fate(st(true), hour, false, TAKEN + 1) else {
            panic!("sent")
        };
        assert_eq!(p.ts, None);
        // Retained: dropped when too old like any reading, but sent without an expiry.
        let retained = Stamp {
            retain: true,
            ..st(true)
        };
        let Fate::Send(p) = fate(retained, hour, true, TAKEN + 600_000) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, None);
        assert!(p.ts.is_some());
        assert!(matches!(
            fate(retained, hour, true, TAKEN + 3_600_001),
            Fate::TooOld { .. }
        ));
        // The clock went back: the reading counts as new.
        let Fate::Send(p) = fate(st(false), hour, true, TAKEN - 10_000) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(3600));
    }

    /// A retained Home Assistant state expires on the broker when Home Assistant would
    /// expire it: `expire_after` after it was taken, at least 1 s, and never longer than
    /// `max_age` would allow for a reading that is not retained.
    #[test]
    fn retained_states_expire_on_the_broker_with_expire_after() {
        let state = Stamp {
            retain: true,
            stale_after_s: Some(900),
            ..st(true)
        };
        let Fate::Send(p) = fate(state, None, true, TAKEN + 60_000) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(840));
        // Taken longer ago than that (a backlog): still sent, gone from the broker at once.
        let Fate::Send(p) = fate(state, None, true, TAKEN + 3_600_000) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(1));
        // Not retained: the state is not kept anyway.
        let live = Stamp {
            retain: false,
            ..state
        };
        assert_eq!(
            fate(live, None, true, TAKEN),
            Fate::Send(Properties {
                expiry_s: None,
                ts: rfc3339_millis(TAKEN)
            })
        );
        let huge = Stamp {
            stale_after_s: Some(u64::MAX),
            ..state
        };
        let Fate::Send(p) = fate(huge, None, true, TAKEN) else {
            panic!("sent")
        };
        assert_eq!(p.expiry_s, Some(u32::MAX));
    }

    /// A stored time past year 9999 (a damaged store) panicked humantime's formatter, and with
    /// it the feeder. Every time must give a fate, with or without max_age.
    #[test]
    fn any_stored_time_gives_a_fate_without_panicking() {
        assert_eq!(
            rfc3339_millis(LAST_TS_MS).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(rfc3339_millis(LAST_TS_MS + 1), None);
        let hour = Some(Duration::from_secs(3600));
        for taken_ms in [0, 1, LAST_TS_MS, LAST_TS_MS + 1, u64::MAX / 2, u64::MAX] {
            for (max_age, v5, retain) in
                [(None, true, false), (hour, true, false), (hour, true, true)]
            {
                let stamp = Stamp {
                    taken_ms,
                    plain: true,
                    retain,
                    stale_after_s: None,
                };
                for now_ms in [0, TAKEN, u64::MAX] {
                    let _ = fate(stamp, max_age, v5, now_ms);
                }
            }
        }
        let far = Stamp {
            taken_ms: u64::MAX,
            plain: true,
            retain: false,
            stale_after_s: None,
        };
        let Fate::Send(p) = fate(far, None, true, TAKEN) else {
            panic!("sent")
        };
        assert_eq!(p.ts, None);
    }
}
