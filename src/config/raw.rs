//! The raw serde structs: the config file as written, and its bounded read.
//!
//! Each table rejects unknown keys and each value is typed, so that toml places a mistake at
//! its key, before the validators see it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, line_col};
use super::values::{self, Argv, Dur, Level, Number, Port, Whole};
use super::{Format, Protocol, Qos};

/// A value (or a table) and where it is in the file.
pub(super) type At<T> = Spanned<T>;

/// A config file is a few KiB; a bigger one is a mistaken path (a log, `/dev/zero`).
pub(super) const CONFIG_MAX: u64 = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub log_level: Option<Level>,
    pub sysfs_root: Option<PathBuf>,
    pub procfs_root: Option<PathBuf>,
    pub topic_prefix: Option<At<String>>,
    pub stats_interval: Option<At<Dur>>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub buffer: RawBuffer,
    pub homeassistant: Option<RawHomeAssistant>,
    #[serde(default, rename = "sensor")]
    pub sensors: Vec<At<RawSensor>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub host: Option<At<String>>,
    pub port: Option<Port>,
    pub servers: Option<At<Vec<String>>>,
    pub reconnect_max: Option<At<Dur>>,
    pub client_id: Option<At<String>>,
    pub clean_session: Option<bool>,
    pub keep_alive: Option<At<Dur>>,
    pub username: Option<At<String>>,
    pub password: Option<At<String>>,
    pub password_file: Option<At<PathBuf>>,
    pub tls: Option<At<RawTls>>,
    pub status_topic: Option<At<String>>,
    pub online_payload: Option<At<String>>,
    pub offline_payload: Option<At<String>>,
    pub stats_topic: Option<At<String>>,
    pub protocol: Option<At<Protocol>>,
    pub session_expiry: Option<At<Dur>>,
    pub max_age: Option<At<Dur>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub ca_file: Option<At<PathBuf>>,
    pub client_cert: Option<At<PathBuf>>,
    pub client_key: Option<At<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomeAssistant {
    pub discovery_prefix: Option<At<String>>,
    pub node_id: Option<At<String>>,
    pub device_name: Option<At<String>>,
    pub retain_states: Option<bool>,
    pub diagnostics: Option<bool>,
}

/// The most readings the buffer may be told to hold: about 28 GB at 280 bytes each.
const MAX_MAX_MESSAGES: u64 = 100_000_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    pub path: Option<PathBuf>,
    pub max_messages: Option<Whole<1, MAX_MAX_MESSAGES>>,
    pub commit_interval: Option<At<Dur>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    Ds18b20,
    Iio,
    Hwmon,
    Thermal,
    File,
    Command,
    System,
}

/// One `[[sensor]]` table; which of the optional keys are required depends on `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSensor {
    pub name: At<String>,
    pub kind: At<Kind>,
    pub interval: At<Dur>,
    pub topic: At<String>,
    pub qos: Option<Qos>,
    pub retain: Option<bool>,
    pub decimals: Option<Whole<0, 9>>,
    pub scale: Option<Number>,
    pub offset: Option<Number>,
    pub min: Option<Number>,
    pub max: Option<At<Number>>,
    pub unit: Option<At<String>>,
    pub format: Option<Format>,
    pub deadband: Option<At<Number>>,
    pub heartbeat: Option<At<Dur>>,
    pub average: Option<Whole<1, 10_000>>,
    pub max_step: Option<At<Number>>,
    // Kind-specific keys.
    pub path: Option<At<PathBuf>>,
    pub device: Option<At<String>>,
    pub channel: Option<At<String>>,
    pub chip: Option<At<String>>,
    pub input: Option<At<String>>,
    pub zone: Option<At<String>>,
    pub command: Option<At<Argv>>,
    pub timeout: Option<At<Dur>>,
    pub metric: Option<At<String>>,
    pub interface: Option<At<String>>,
    /// How Home Assistant shows it (`[sensor.ha]`).
    pub ha: Option<At<crate::homeassistant::EntityOptions>>,
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = values::integer(d, "4 (MQTT 3.1.1) or 5 (MQTT 5)")?;
        Protocol::try_from(u8::try_from(v).unwrap_or(u8::MAX)).map_err(|_| {
            serde::de::Error::custom(format!(
                "{v} is not supported: use 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)"
            ))
        })
    }
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = values::integer(d, "1 (stored until acknowledged) or 0 (fire and forget)")?;
        Qos::try_from(u8::try_from(v).unwrap_or(u8::MAX)).map_err(|_| {
            serde::de::Error::custom(format!(
                "{v} is not supported: use 1 (stored until acknowledged) or 0 (fire and forget)"
            ))
        })
    }
}

/// The config file's text: at most [`CONFIG_MAX`] bytes of UTF-8.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot = |e: &dyn fmt::Display| {
        ConfigError(format!("cannot read config file {}: {e}", path.display()))
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(CONFIG_MAX + 1).read_to_end(&mut bytes))
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > CONFIG_MAX {
        return Err(cannot(&format!("more than {} KiB", CONFIG_MAX / 1024)));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = String::from_utf8_lossy(&bytes[..good]);
        let (line, col) = line_col(&text, good);
        ConfigError(format!(
            "{}:{line}:{col}: the file is not UTF-8 text here (byte 0x{:02x}): save it as UTF-8",
            path.display(),
            bytes[good]
        ))
    })
}
