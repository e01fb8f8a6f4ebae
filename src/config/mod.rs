//! The TOML config: a raw serde layer that rejects unknown keys, validated into [`Config`].
//!
//! Here the validated types and [`Config::load`]; `raw` holds the serde structs and reads the
//! file, `mqtt` (with `tls` and `servers`), `buffer`, `sensor` and `homeassistant` validate
//! their tables, `topics` fills in topic templates, `values` types single values, and `error`
//! places a mistake at its line and column. Nothing here depends on `mqtt/`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::filter::Policy;
use crate::sensor::SourceSpec;

mod buffer;
mod error;
mod homeassistant;
mod mqtt;
mod raw;
mod sensor;
mod servers;
mod tls;
mod topics;
mod values;

pub use error::{ConfigError, Invalid, Unsupported};
pub use servers::Server;
pub use values::parse_duration;

use error::{Problem, located};
use raw::RawConfig;
use sensor::{MAX_INTERVAL, MIN_INTERVAL, SensorDefaults};
use values::bounded;

/// Where the packaged config lives; `--config` overrides it.
pub const DEFAULT_PATH: &str = "/etc/telemetryd/telemetryd.toml";

/// 0 panicked the metrics task. Not 1 s: the benchmark suite (BENCHMARKS.md) reads the
/// summary every 10 ms, the shortest sensor interval too.
const MIN_STATS_INTERVAL: Duration = MIN_INTERVAL;

/// A validated configuration: everything the daemon needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub log_level: String,
    pub sysfs_root: PathBuf,
    /// Where procfs lives, for `system` sensors (tests point it at a fake tree).
    pub procfs_root: PathBuf,
    pub stats_interval: Duration,
    pub mqtt: MqttConfig,
    pub buffer: BufferConfig,
    pub sensors: Vec<SensorConfig>,
    /// Home Assistant MQTT discovery, when the `[homeassistant]` table is present.
    pub homeassistant: Option<HomeAssistant>,
    /// Things worth telling the user that do not stop the daemon (logged once logging is up).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// The first of `servers` (the only one without a `servers` list).
    pub host: String,
    pub port: u16,
    /// Where to connect, tried in this order (`servers`, or `host` and `port`); never empty.
    pub servers: Vec<Server>,
    /// The longest pause between two rounds of connection attempts (`reconnect_max`).
    pub reconnect_max: Duration,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: Duration,
    /// Username and password, the password read from `password_file` when given.
    pub credentials: Option<(String, Secret)>,
    pub tls: Option<TlsConfig>,
    /// Where `online` / `offline` (retained, and `offline` as the Last Will) go.
    pub availability: Option<Availability>,
    /// Where the retained self-metrics JSON goes every `stats_interval`.
    pub stats_topic: Option<String>,
    pub protocol: Protocol,
    /// MQTT 5 only: how long the broker keeps our session after a disconnect (whole seconds;
    /// `u32::MAX` seconds means never expire).
    pub session_expiry: Duration,
    /// Readings older than this are not sent (dropped from the store, counted and logged);
    /// younger ones carry the rest of it as their MQTT 5 message expiry.
    pub max_age: Option<Duration>,
}

/// The MQTT version spoken: 3.1.1 (`protocol = 4`, the default) or 5 (`protocol = 5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

impl TryFrom<u8> for Protocol {
    type Error = Unsupported;
    fn try_from(v: u8) -> Result<Self, Unsupported> {
        match v {
            4 => Ok(Protocol::V4),
            5 => Ok(Protocol::V5),
            _ => Err(Unsupported {
                key: "protocol",
                value: v,
                hint: "4 (MQTT 3.1.1, the default) or 5 (MQTT 5)",
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HomeAssistant {
    /// Home Assistant's discovery prefix (its default: `homeassistant`).
    pub discovery_prefix: String,
    /// Groups this daemon's entities; one device per daemon.
    pub node_id: String,
    /// The device name shown in Home Assistant.
    pub device_name: String,
    /// Sensors publish retained unless they say `retain = false`: Home Assistant shows the
    /// last value at once after a restart of its own or of the broker.
    pub retain_states: bool,
    /// The daemon's own figures (buffered readings, oldest unsent age, connected) as
    /// diagnostic entities, read from the stats topic.
    pub diagnostics: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    pub topic: String,
    pub online: String,
    pub offline: String,
}

/// TLS settings: the PEM files read at load time, and the rustls config built from them (so
/// a bad file is a config error, not a reconnect loop).
#[derive(Clone)]
pub struct TlsConfig {
    /// The CA certificates to trust, PEM; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, PEM, for mutual TLS.
    pub client: Option<(Vec<u8>, Secret)>,
    pub rustls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "ca",
                &self.ca.as_ref().map_or("system roots", |_| "from ca_file"),
            )
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsConfig {
    /// Same files, same TLS: the built config follows from them.
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca && self.client == other.client
    }
}

/// A password or key: compared and used, never printed.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub path: PathBuf,
    pub max_messages: u64,
    /// At most one commit (flush + fsync) per this long; zero: commit as soon as readings
    /// arrive. Readings wait up to this long in memory, unpublished, and a crash loses them.
    pub commit_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SensorConfig {
    pub name: String,
    pub source: SourceSpec,
    pub interval: Duration,
    pub topic: String,
    pub qos: Qos,
    pub retain: bool,
    pub decimals: Option<u8>,
    pub scale: f64,
    pub offset: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub unit: Option<String>,
    pub format: Format,
    pub policy: Policy,
    /// How Home Assistant shows it (`[sensor.ha]`), with discovery on.
    pub ha: crate::homeassistant::EntityOptions,
}

/// QoS 2 is deliberately absent: the outbox gives at-least-once, and `seq` lets consumers dedupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

impl TryFrom<u8> for Qos {
    type Error = Unsupported;
    fn try_from(v: u8) -> Result<Self, Unsupported> {
        match v {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            _ => Err(Unsupported {
                key: "qos",
                value: v,
                hint: "1 (stored until acknowledged) or 0 (fire and forget)",
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Json,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&raw::read(path)?, path)
    }

    /// Validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| match e.span() {
            // toml's messages (and those of the typed values) do not name the key.
            Some(span) => located(path, text, span, e.message().trim_end(), true),
            None => ConfigError(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message().trim_end()
            )),
        })?;
        validate(raw).map_err(|p| located(path, text, p.at, &p.msg, false))?
            .ok_or_else(|| {
                ConfigError(format!(
                    "{}: no sensors: add a [[sensor]] table (`telemetryd sensors` lists what this machine has, ready to paste)",
                    path.display()
                ))
            })
    }
}

/// The config, or `None` when it has no sensor. The tables are checked in this order, so that
/// of several mistakes the same one is always reported.
fn validate(raw: RawConfig) -> Result<Option<Config>, Problem> {
    let mut warnings = Vec::new();
    let mqtt = mqtt::validate_mqtt(raw.mqtt, &mut warnings)?;
    let buffer = buffer::validate_buffer(raw.buffer)?;
    let log_level = raw.log_level.map_or_else(|| "info".to_owned(), |l| l.0);
    let stats_interval = match &raw.stats_interval {
        Some(d) => bounded(d, "stats_interval", MIN_STATS_INTERVAL, MAX_INTERVAL, "")?,
        None => Duration::from_secs(300),
    };
    let prefix = topics::validate_prefix(raw.topic_prefix, &mqtt.client_id)?;

    let procfs_root = raw.procfs_root.unwrap_or_else(|| PathBuf::from("/proc"));
    let defaults = SensorDefaults {
        procfs_root: &procfs_root,
        retain: raw
            .homeassistant
            .as_ref()
            .and_then(|ha| ha.retain_states)
            .unwrap_or(false),
    };
    let sensors =
        sensor::validate_sensors(raw.sensors, prefix.as_deref(), &mqtt.client_id, &defaults)?;
    if sensors.is_empty() {
        return Ok(None);
    }

    let homeassistant = raw
        .homeassistant
        .map(|ha| homeassistant::validate_homeassistant(ha, &mqtt.client_id))
        .transpose()?;
    warnings.extend(homeassistant::unused_settings(
        homeassistant.as_ref(),
        &sensors,
    ));
    Ok(Some(Config {
        homeassistant,
        log_level,
        sysfs_root: raw.sysfs_root.unwrap_or_else(|| PathBuf::from("/sys")),
        procfs_root,
        stats_interval,
        mqtt,
        buffer,
        sensors,
        warnings,
    }))
}

#[cfg(test)]
mod tests;
