//! Any finite value, `decimals` and format → `payload::render`: a payload whose value parses
//! back (plain) or a JSON object with a numeric value, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use telemetryd::config::{Format, SensorConfig};
use telemetryd::fuzzing::{check_payload, file_sensor};
use telemetryd::payload::render;

fn base() -> &'static SensorConfig {
    static BASE: OnceLock<SensorConfig> = OnceLock::new();
    BASE.get_or_init(file_sensor)
}

fuzz_target!(|data: &[u8]| {
    // [value: f64 LE][decimals: 0-9, or none from 10 up][format: bit 0 json][taken_ms: u64 LE]
    let Some((bits, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let value = f64::from_le_bytes(*bits);
    // calibrate() hands render finite values only.
    if !value.is_finite() {
        return;
    }
    let (decimals, json) = match rest {
        [d, f, ..] => (*d, f & 1 == 1),
        [d] => (*d, false),
        [] => (255, false),
    };
    let taken_ms = rest
        .get(2..10)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let mut sensor = base().clone();
    sensor.decimals = (decimals <= 9).then_some(decimals);
    sensor.format = if json { Format::Json } else { Format::Plain };
    // The years 1970-9999, as readings carry them.
    let taken = UNIX_EPOCH + Duration::from_millis(taken_ms % 253_402_300_800_000);
    let payload = render(&sensor, value, taken, 7);
    check_payload(&sensor, &payload);
});
