//! Payloads: the bare value (`28.4`) or a JSON object that keeps the reading's own time.

use std::time::SystemTime;

use crate::config::{Format, SensorConfig};

/// Without `decimals`, values are rounded to this many and trailing zeros dropped, so that a
/// scaled sysfs value prints as `22.625`, not `22.625000000000004`.
const DEFAULT_DECIMALS: usize = 3;

/// The payload for one reading; `seq` is its daemon-wide sequence number.
pub fn render(sensor: &SensorConfig, value: f64, taken: SystemTime, seq: u64) -> Vec<u8> {
    let text = format_value(value, sensor.decimals);
    match sensor.format {
        Format::Plain => text.into_bytes(),
        Format::Json => {
            // The rounded text as a JSON number: 17 stays 17 (not 17.0), 28.4 stays 28.4.
            // Every finite value formats as a number; a non-finite one never gets here (the
            // scheduler refuses it), but would give `null` rather than a dead committer.
            let value = text
                .parse::<serde_json::Number>()
                .ok()
                .or_else(|| serde_json::Number::from_f64(value))
                .map_or(serde_json::Value::Null, serde_json::Value::Number);
            let payload = JsonPayload {
                sensor: &sensor.name,
                value,
                unit: sensor.unit.as_deref(),
                ts: humantime::format_rfc3339_millis(taken).to_string(),
                seq,
            };
            serde_json::to_vec(&payload).expect("strings and numbers always serialize")
        }
    }
}

/// Field order is the documented one: sensor, value, unit, ts, seq.
#[derive(serde::Serialize)]
struct JsonPayload<'a> {
    sensor: &'a str,
    value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: String,
    seq: u64,
}

/// `28.437` with 1 decimal is `28.4`; halves round away from zero, as people expect (a
/// pressure of 101.325 kPa is 1013.3 hPa, not the 1013.2 that its binary form `1013.2499…`
/// would give); no `-0.0`. Total: any finite value gives a number (`1e300` as `1e300`), a
/// non-finite one its Rust name (`NaN`, `inf`), never a panic.
pub fn format_value(value: f64, decimals: Option<u8>) -> String {
    let d = decimals.map_or(DEFAULT_DECIMALS, usize::from);
    // First drop the noise of binary arithmetic (scale factors, unit conversions), then round.
    let clean = round_to(value, 1e9);
    let rounded = round_to(clean, 10f64.powi(d as i32));
    // Past 1e21 (JavaScript's threshold too) decimals mean nothing and the full digits are
    // up to 309 of them: the shortest exponent form that parses back to the same value.
    if rounded.abs() >= 1e21 {
        return format!("{rounded:e}");
    }
    let mut text = format!("{rounded:.d$}");
    if decimals.is_none() && text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text.remove(0);
    }
    text
}

/// `value` rounded to a multiple of `1 / factor`. Past 2^53 every f64 is an integer, so when
/// `value * factor` is that large `value` is already coarser than `1 / factor` and is returned
/// as it is: multiplying through would lose its last bits, or overflow to `inf`.
fn round_to(value: f64, factor: f64) -> f64 {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let scaled = value * factor;
    if scaled.abs() < EXACT {
        scaled.round() / factor
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    fn sensor(extra: &str) -> SensorConfig {
        let text = format!(
            "[[sensor]]\nname='outside'\nkind='ds18b20'\ndevice='28-1'\ninterval='1s'\ntopic='temperature/outside'\n{extra}"
        );
        let mut s = Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .sensors
            .remove(0);
        s.unit.get_or_insert_with(|| "°C".into());
        s
    }

    #[test]
    fn the_classic_example_is_28_4() {
        let s = sensor("decimals = 1");
        assert_eq!(render(&s, 28.437, SystemTime::now(), 1), b"28.4");
    }

    #[test]
    fn values_round_and_trim() {
        assert_eq!(format_value(22.625000000000004, None), "22.625");
        assert_eq!(format_value(17.0, None), "17");
        assert_eq!(format_value(17.0, Some(0)), "17");
        assert_eq!(format_value(0.5, None), "0.5");
        assert_eq!(format_value(28.4, Some(2)), "28.40");
        assert_eq!(format_value(-0.04, Some(1)), "0.0");
        assert_eq!(format_value(-0.0001, None), "0");
        assert_eq!(format_value(-3.25, Some(1)), "-3.3");
        assert_eq!(format_value(101.325 * 10.0, Some(1)), "1013.3");
        assert_eq!(format_value(0.1 + 0.2, Some(2)), "0.30");
        assert_eq!(format_value(2.5, Some(0)), "3");
        assert_eq!(format_value(1013.2534, Some(1)), "1013.3");
        assert_eq!(format_value(-0.0, None), "0");
        assert_eq!(format_value(f64::MIN_POSITIVE / 4.0, None), "0");
    }

    #[test]
    fn huge_values_render_in_full_without_panicking() {
        let s = sensor("format = 'json'");
        assert_eq!(format_value(f64::MAX, Some(1)), "1.7976931348623157e308");
        assert_eq!(format_value(-1e300, None), "-1e300");
        assert_eq!(format_value(1e20, None), "100000000000000000000");
        for value in [1e300, -1e300, f64::MAX, f64::MIN, 1.8e299, 2e299, 1e21] {
            let text = format_value(value, None);
            assert_eq!(text.parse::<f64>(), Ok(value), "{text}");
            let json = render(&s, value, SystemTime::now(), 1);
            let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(parsed["value"].as_f64(), Some(value));
        }
    }

    #[test]
    fn json_keeps_the_time_of_the_reading_and_seq() {
        let s = sensor("decimals = 1\nformat = 'json'");
        let taken = UNIX_EPOCH + Duration::from_millis(1_795_580_400_123);
        let text = String::from_utf8(render(&s, 28.437, taken, 1234)).unwrap();
        assert_eq!(
            text,
            r#"{"sensor":"outside","value":28.4,"unit":"°C","ts":"2026-11-25T04:20:00.123Z","seq":1234}"#
        );
        let mut counter = sensor("decimals = 0\nformat = 'json'");
        counter.unit = None;
        let text = String::from_utf8(render(&counter, 17.0, taken, 7)).unwrap();
        assert!(
            text.starts_with(r#"{"sensor":"outside","value":17,"ts":"#),
            "{text}"
        );
    }

    /// Within rounding: half a unit of the last decimal, plus the first cleaning step's 1e-9,
    /// plus the relative error of printing a number this large.
    fn tolerance(value: f64, decimals: Option<u8>) -> f64 {
        let d = decimals.map_or(DEFAULT_DECIMALS, usize::from);
        0.5 * 10f64.powi(-(d as i32)) + 1e-9 + value.abs() * 1e-15
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn any_f64_renders_without_panicking(
            bits in proptest::num::u64::ANY,
            decimals in proptest::option::of(0u8..=9),
            json in proptest::bool::ANY,
        ) {
            let value = f64::from_bits(bits);
            let mut s = sensor(if json { "format = 'json'" } else { "" });
            s.decimals = decimals;
            let payload = render(&s, value, SystemTime::now(), 1);
            if json {
                let parsed: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                if value.is_finite() {
                    let got = parsed["value"].as_f64().unwrap();
                    proptest::prop_assert!((got - value).abs() <= tolerance(value, decimals), "{value} -> {got}");
                }
            } else if value.is_finite() {
                let text = std::str::from_utf8(&payload).unwrap();
                let got: f64 = text.parse().unwrap();
                proptest::prop_assert!(got.is_finite());
                proptest::prop_assert!((got - value).abs() <= tolerance(value, decimals), "{value} -> {text}");
                // No "-0": a minus sign means a negative number.
                proptest::prop_assert!(!text.starts_with('-') || got < 0.0, "{text}");
            }
        }

        #[test]
        fn finite_values_of_any_size_round_trip(value in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let text = format_value(value, None);
            let got: f64 = text.parse().unwrap();
            proptest::prop_assert!((got - value).abs() <= tolerance(value, None), "{value} -> {text}");
        }
    }
}
