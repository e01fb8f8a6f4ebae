//! Raw readings → calibrate (scale, offset, bounds) → filter (spikes, average, deadband) →
//! render, with any calibration and any valid policy: no panic, and every payload parses.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use telemetryd::config::{Format, SensorConfig};
use telemetryd::filter::{Filter, Policy};
use telemetryd::fuzzing::{calibrate, check_payload, file_sensor};
use telemetryd::payload::render;

fn base() -> &'static SensorConfig {
    static BASE: OnceLock<SensorConfig> = OnceLock::new();
    BASE.get_or_init(file_sensor)
}

/// Reads the input front to back; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn f64(&mut self) -> f64 {
        f64::from_le_bytes([(); 8].map(|()| self.u8()))
    }
}

/// What config validation lets through for a non-negative setting: finite, >= 0 (> 0 unless `zero_ok`).
fn setting(v: f64, zero_ok: bool) -> Option<f64> {
    (v.is_finite() && v >= 0.0 && (zero_ok || v > 0.0)).then_some(v)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    // [flags][decimals][scale][offset][min][max][deadband][max_step][average: u8], then raw f64s.
    let flags = b.u8();
    let decimals = b.u8();
    let mut sensor = base().clone();
    sensor.format = if flags & 1 == 1 {
        Format::Json
    } else {
        Format::Plain
    };
    sensor.decimals = (decimals <= 9).then_some(decimals);
    // TOML allows inf and nan here, and config.rs takes any float.
    sensor.scale = b.f64();
    sensor.offset = b.f64();
    let (min, max) = (b.f64(), b.f64());
    sensor.min = (flags & 2 != 0).then_some(min);
    sensor.max = (flags & 4 != 0).then_some(max);
    let (deadband, max_step, average) = (b.f64(), b.f64(), b.u8());
    let deadband = (flags & 8 != 0).then(|| setting(deadband, true)).flatten();
    sensor.policy = Policy {
        deadband,
        heartbeat: (flags & 16 != 0 && deadband.is_some()).then_some(Duration::from_secs(3)),
        average: (flags & 32 != 0).then_some(u32::from(average).max(1)),
        max_step: (flags & 64 != 0)
            .then(|| setting(max_step, false))
            .flatten(),
    };
    let mut filter = Filter::new(sensor.policy);
    let start = Instant::now();
    let mut seq = 0;
    // At most 64 readings: the window of an average of up to 255 need not fill.
    for i in 0..64u64 {
        if b.0.len() < 8 {
            break;
        }
        let raw = b.f64();
        let Ok(value) = calibrate(&sensor, raw) else {
            continue;
        };
        assert!(value.is_finite());
        let taken = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i);
        // An average that overflows is a sensor error (logged), never an inf reading.
        let Ok(outcome) = filter.push((value, taken), start + Duration::from_secs(i)) else {
            continue;
        };
        for (value, taken) in outcome.publish {
            seq += 1;
            let payload = render(&sensor, value, taken, seq);
            check_payload(&sensor, &payload);
        }
    }
});
