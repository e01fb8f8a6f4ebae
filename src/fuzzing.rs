//! Entry points for the fuzz targets in tests/fuzz (compiled only with `--cfg fuzzing`).
//!
//! The parsers of outside data are private to their modules; these wrappers expose them
//! unchanged, so that the targets exercise exactly the code the daemon runs.

use std::path::Path;

use crate::config::SensorConfig;
use crate::sensor::{ParseError, ReadError};

pub use crate::outbox::codec::{decode as decode_record, encode as encode_record};

/// A DS18B20 `w1_slave` file's text to °C.
pub fn w1_slave(text: &str) -> Result<f64, ParseError> {
    crate::sensor::ds18b20::parse_w1_slave(text)
}

/// A sysfs attribute holding one number (hwmon, thermal zone, IIO), as `read_attr` parses it.
pub fn sysfs_attr(text: &str) -> Result<f64, ReadError> {
    crate::sensor::parse_attr(Path::new("/sys/fuzz/attr"), text)
}

/// The first number in a file's or a command's output.
pub fn first_number(text: &str) -> Option<f64> {
    crate::sensor::first_number(text)
}

/// The excerpt of outside text that error messages quote.
pub fn excerpt(text: &str) -> String {
    crate::sensor::excerpt(text)
}

/// hwmon: the published unit and divisor of an input (`temp1` → °C, 1000).
pub fn hwmon_conversion(input: &str) -> Option<(&'static str, f64)> {
    crate::sensor::hwmon::conversion(input)
}

/// IIO: the type of a channel name (`temp_object` → `temp`).
pub fn iio_channel_type(channel: &str) -> &str {
    crate::sensor::iio::channel_type(channel)
}

/// IIO: a value in ABI units to the published unit.
pub fn iio_to_unit(channel_type: &str, value: f64) -> f64 {
    crate::sensor::iio::to_unit(channel_type, value)
}

/// `scale`, `offset` and the plausibility bounds, as the schedule applies them to each read.
pub fn calibrate(sensor: &SensorConfig, raw: f64) -> Result<f64, ReadError> {
    crate::schedule::calibrate(sensor, raw)
}

/// A plain `file` sensor with every default, for the targets to vary.
pub fn file_sensor() -> SensorConfig {
    let text =
        "[[sensor]]\nname = 'x'\nkind = 'file'\npath = '/x'\ninterval = '1s'\ntopic = 't/x'\n";
    crate::config::Config::parse(text, Path::new("fuzz.toml"))
        .expect("the fuzz sensor's config is valid")
        .sensors
        .remove(0)
}

/// Panics unless `payload` is what `sensor`'s format promises: a finite number (plain) or a
/// JSON object with a numeric `value`.
pub fn check_payload(sensor: &SensorConfig, payload: &[u8]) {
    let text = std::str::from_utf8(payload).expect("UTF-8");
    match sensor.format {
        crate::config::Format::Plain => {
            let back: f64 = text
                .parse()
                .unwrap_or_else(|_| panic!("{text:?} is not a number"));
            assert!(back.is_finite(), "{text:?}");
        }
        crate::config::Format::Json => {
            let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert!(v["value"].is_number(), "{text}");
        }
    }
}

/// The `system` kind's procfs/sysfs parsers, as the daemon runs them on outside text.
pub use crate::sensor::system::parse::{loadavg, meminfo, throttled, wireless_level as wireless};
