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
            let payload = JsonPayload {
                sensor: &sensor.name,
                // The rounded text as a JSON number: 17 stays 17 (not 17.0), 28.4 stays 28.4.
                value: text
                    .parse()
                    .expect("a formatted finite f64 is a JSON number"),
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
    value: serde_json::Number,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: String,
    seq: u64,
}

/// `28.437` with 1 decimal is `28.4`; halves round away from zero, as people expect (a
/// pressure of 101.325 kPa is 1013.3 hPa, not the 1013.2 that its binary form `1013.2499…`
/// would give); no `-0.0`.
pub fn format_value(value: f64, decimals: Option<u8>) -> String {
    let d = decimals.map_or(DEFAULT_DECIMALS, usize::from);
    // First drop the noise of binary arithmetic (scale factors, unit conversions), then round.
    let clean = (value * 1e9).round() / 1e9;
    let factor = 10f64.powi(d as i32);
    let rounded = (clean * factor).round() / factor;
    let mut text = format!("{rounded:.d$}");
    if decimals.is_none() && text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text.remove(0);
    }
    text
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
}
