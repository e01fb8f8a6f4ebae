//! The TOML config: a raw serde layer that rejects unknown keys, validated into [`Config`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::filter::Policy;
use crate::sensor::SourceSpec;

/// Where the packaged config lives; `--config` overrides it.
pub const DEFAULT_PATH: &str = "/etc/telemetryd/telemetryd.toml";

/// The shortest sensor interval accepted: below this a Pi spends its time in syscalls.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// 0 panicked the metrics task. Not 1 s: the benchmark suite (BENCHMARKS.md) reads the
/// summary every 10 ms, the shortest sensor interval too.
const MIN_STATS_INTERVAL: Duration = MIN_INTERVAL;

/// The longest `[buffer] commit_interval`: the window of readings a crash can lose.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(60);

/// How long an MQTT 5 broker keeps our session after the connection drops, unless
/// `session_expiry` says otherwise. telemetryd does not depend on it (it resends from its own
/// store); it only spares re-subscribing and keeps the broker's view of a device that is away
/// for a night.
const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(86_400);

/// The shortest keep-alive rumqttc's MQTT 5 client accepts (it panics below).
const MIN_KEEP_ALIVE_V5: Duration = Duration::from_secs(5);

/// The shortest `max_age`: MQTT 5 carries the message expiry in whole seconds.
const MIN_MAX_AGE: Duration = Duration::from_secs(1);

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
    pub host: String,
    pub port: u16,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub enum Protocol {
    V4,
    V5,
}

impl TryFrom<u8> for Protocol {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            4 => Ok(Protocol::V4),
            5 => Ok(Protocol::V5),
            _ => Err(format!(
                "protocol {v} is not supported: use 4 (MQTT 3.1.1, the default) or 5 (MQTT 5)"
            )),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            _ => Err(format!(
                "qos {v} is not supported: use 1 (stored until acknowledged) or 0 (fire and forget)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Json,
}

/// A config that cannot be used; the message names the file, the place and what was expected.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_level: Option<String>,
    sysfs_root: Option<PathBuf>,
    procfs_root: Option<PathBuf>,
    topic_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    stats_interval: Option<Duration>,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    buffer: RawBuffer,
    homeassistant: Option<RawHomeAssistant>,
    #[serde(default, rename = "sensor")]
    sensors: Vec<Spanned<RawSensor>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    port: Option<u16>,
    client_id: Option<String>,
    clean_session: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    keep_alive: Option<Duration>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    tls: Option<RawTls>,
    status_topic: Option<String>,
    online_payload: Option<String>,
    offline_payload: Option<String>,
    stats_topic: Option<String>,
    protocol: Option<Protocol>,
    #[serde(default, with = "humantime_serde")]
    session_expiry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHomeAssistant {
    discovery_prefix: Option<String>,
    node_id: Option<String>,
    device_name: Option<String>,
    retain_states: Option<bool>,
    diagnostics: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    path: Option<PathBuf>,
    max_messages: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    commit_interval: Option<Duration>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Kind {
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
struct RawSensor {
    name: String,
    kind: Kind,
    #[serde(with = "humantime_serde")]
    interval: Duration,
    topic: String,
    qos: Option<Qos>,
    retain: Option<bool>,
    decimals: Option<u8>,
    scale: Option<f64>,
    offset: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    unit: Option<String>,
    format: Option<Format>,
    deadband: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    heartbeat: Option<Duration>,
    average: Option<u32>,
    max_step: Option<f64>,
    // Kind-specific keys.
    path: Option<PathBuf>,
    device: Option<String>,
    channel: Option<String>,
    chip: Option<String>,
    input: Option<String>,
    zone: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    metric: Option<String>,
    interface: Option<String>,
    /// How Home Assistant shows it (`[sensor.ha]`).
    ha: Option<crate::homeassistant::EntityOptions>,
}

/// A config file is a few KiB; a bigger one is a mistaken path (a log, `/dev/zero`).
const CONFIG_MAX: u64 = 4 * 1024 * 1024;

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cannot = |e: &dyn fmt::Display| {
            ConfigError(format!("cannot read config file {}: {e}", path.display()))
        };
        let text = crate::sensor::read_bounded(path, CONFIG_MAX).map_err(|e| cannot(&e))?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))?;
        let at = |span: Range<usize>, msg: String| {
            let (line, col) = line_col(text, span.start);
            ConfigError(format!("{}:{line}:{col}: {msg}", path.display()))
        };

        let mut warnings = Vec::new();
        // Settings outside a sensor table have no span (they may be defaults): the error
        // points at the line of the key that was rejected, when the file sets it.
        let in_table = |table: &str, label: &str, r: Rejected| match key_offset(text, table, r.key)
        {
            Some(offset) => {
                let (line, col) = line_col(text, offset);
                ConfigError(format!("{}:{line}:{col}: {label}{}", path.display(), r.msg))
            }
            None => ConfigError(format!(
                "invalid config file {}: {label}{}",
                path.display(),
                r.msg
            )),
        };
        let mqtt = validate_mqtt(raw.mqtt, &mut warnings).map_err(|r| {
            let table = if r.tls { "mqtt.tls" } else { "mqtt" };
            in_table(table, "[mqtt] ", r)
        })?;
        let buffer = BufferConfig {
            path: raw
                .buffer
                .path
                .unwrap_or_else(|| PathBuf::from("/var/lib/telemetryd/buffer")),
            max_messages: raw.buffer.max_messages.unwrap_or(500_000),
            commit_interval: raw.buffer.commit_interval.unwrap_or(Duration::ZERO),
        };
        if buffer.max_messages == 0 {
            let r = Rejected::new("max_messages", "max_messages must be at least 1".into());
            return Err(in_table("buffer", "[buffer] ", r));
        }
        if buffer.commit_interval > MAX_COMMIT_INTERVAL {
            let m = format!(
                "commit_interval {} is too long: readings wait that long in memory, unpublished, and a crash loses them; the maximum is 1m",
                humantime::format_duration(buffer.commit_interval)
            );
            return Err(in_table(
                "buffer",
                "[buffer] ",
                Rejected::new("commit_interval", m),
            ));
        }

        let log_level = raw.log_level.unwrap_or_else(|| "info".to_owned());
        if !crate::logging::LEVELS.contains(&log_level.as_str()) {
            let m = format!(
                "log_level {log_level:?} is not one of {}",
                crate::logging::LEVELS.join(", ")
            );
            return Err(in_table("", "", Rejected::new("log_level", m)));
        }
        let stats_interval = raw.stats_interval.unwrap_or(Duration::from_secs(300));
        if stats_interval < MIN_STATS_INTERVAL {
            let m = format!(
                "stats_interval {} is too short: the minimum is {}",
                humantime::format_duration(stats_interval),
                humantime::format_duration(MIN_STATS_INTERVAL)
            );
            return Err(in_table("", "", Rejected::new("stats_interval", m)));
        }

        let procfs_root = raw.procfs_root.unwrap_or_else(|| PathBuf::from("/proc"));
        let defaults = SensorDefaults {
            procfs_root: &procfs_root,
            retain: raw
                .homeassistant
                .as_ref()
                .and_then(|ha| ha.retain_states)
                .unwrap_or(false),
        };
        let mut sensors: Vec<SensorConfig> = Vec::with_capacity(raw.sensors.len());
        for spanned in raw.sensors {
            let span = spanned.span();
            let mut sensor = validate_sensor(spanned.into_inner(), &defaults)
                .map_err(|m| at(span.clone(), m))?;
            sensor.topic = topic_for(raw.topic_prefix.as_deref(), &sensor, &mqtt.client_id)
                .map_err(|m| at(span.clone(), m))?;
            if sensors.iter().any(|s| s.name == sensor.name) {
                let msg = format!(
                    "sensor name {:?} is used twice: names must be unique",
                    sensor.name
                );
                return Err(at(span, msg));
            }
            sensors.push(sensor);
        }

        let homeassistant = raw.homeassistant.map(|ha| {
            // Discovery ids allow [a-zA-Z0-9_-] only.
            let node_id: String = ha
                .node_id
                .unwrap_or_else(|| mqtt.client_id.clone())
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            HomeAssistant {
                discovery_prefix: ha
                    .discovery_prefix
                    .unwrap_or_else(|| "homeassistant".into()),
                device_name: ha.device_name.unwrap_or_else(|| mqtt.client_id.clone()),
                node_id,
                retain_states: ha.retain_states.unwrap_or(false),
                diagnostics: ha.diagnostics.unwrap_or(true),
            }
        });
        if homeassistant.is_none()
            && let Some(s) = sensors.iter().find(|s| s.ha != Default::default())
        {
            warnings.push(format!(
                "sensor {:?} has Home Assistant settings (`ha`) but there is no [homeassistant] table: they do nothing",
                s.name
            ));
        }
        Ok(Config {
            homeassistant,
            log_level,
            sysfs_root: raw.sysfs_root.unwrap_or_else(|| PathBuf::from("/sys")),
            procfs_root,
            stats_interval,
            mqtt,
            buffer,
            sensors,
            warnings,
        })
    }
}

fn validate_mqtt(raw: RawMqtt, warnings: &mut Vec<String>) -> Result<MqttConfig, Rejected> {
    let no = Rejected::new;
    let client_id = raw.client_id.unwrap_or_else(default_client_id);
    if client_id.is_empty() {
        let msg = "client_id must not be empty: it names the persistent session";
        return Err(no("client_id", msg.into()));
    }
    let keep_alive = raw.keep_alive.unwrap_or(Duration::from_secs(30));
    if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(u16::MAX as u64) {
        let msg = format!(
            "keep_alive must be between 1s and 18h, got {}",
            humantime::format_duration(keep_alive)
        );
        return Err(no("keep_alive", msg));
    }
    let raw_has_password_file = raw.password_file.is_some();
    let password = match (raw.password, raw.password_file) {
        (Some(_), Some(_)) => {
            let msg = "give either `password` or `password_file`, not both";
            return Err(no("password_file", msg.into()));
        }
        (Some(p), None) => Some(Secret(p)),
        (None, Some(file)) => Some(Secret(
            read_password(&file, warnings).map_err(|m| no("password_file", m))?,
        )),
        (None, None) => None,
    };
    let credentials = match (raw.username, password) {
        (Some(user), password) => Some((user, password.unwrap_or_else(|| Secret(String::new())))),
        (None, Some(_)) => {
            let key = if raw_has_password_file {
                "password_file"
            } else {
                "password"
            };
            return Err(no(key, "a password needs a `username`".into()));
        }
        (None, None) => None,
    };
    let tls = raw
        .tls
        .map(validate_tls)
        .transpose()
        .map_err(|r| Rejected { tls: true, ..r })?;
    // An empty topic turns the feature off.
    let topic = |key, t: Option<String>, default: &str| match t.as_deref() {
        Some("") => Ok(None),
        t => expand(t.unwrap_or(default), &client_id, None)
            .map(Some)
            .map_err(|m| no(key, m)),
    };
    let availability = topic(
        "status_topic",
        raw.status_topic,
        "telemetryd/{client_id}/status",
    )?
    .map(|topic| Availability {
        topic,
        online: raw.online_payload.unwrap_or_else(|| "online".into()),
        offline: raw.offline_payload.unwrap_or_else(|| "offline".into()),
    });
    let stats_topic = topic(
        "stats_topic",
        raw.stats_topic,
        "telemetryd/{client_id}/stats",
    )?;
    let protocol = raw.protocol.unwrap_or(Protocol::V4);
    if protocol == Protocol::V4 && raw.session_expiry.is_some() {
        let msg = "session_expiry is an MQTT 5 setting: add `protocol = 5` (with MQTT 3.1.1 the \
                   broker decides how long a session lasts)";
        return Err(no("session_expiry", msg.into()));
    }
    if protocol == Protocol::V5 && keep_alive < MIN_KEEP_ALIVE_V5 {
        let msg = format!(
            "keep_alive must be at least 5s with protocol = 5 (rumqttc's MQTT 5 client refuses \
             less), got {}",
            humantime::format_duration(keep_alive)
        );
        return Err(no("keep_alive", msg));
    }
    let session_expiry = raw.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY);
    if session_expiry.as_secs() > u64::from(u32::MAX) {
        let msg = format!(
            "session_expiry {} is too long: MQTT 5 allows at most 4294967295 seconds (136 years, \
             which means never)",
            humantime::format_duration(session_expiry)
        );
        return Err(no("session_expiry", msg));
    }
    if let Some(age) = raw.max_age
        && (age < MIN_MAX_AGE || age.as_secs() > u64::from(u32::MAX))
    {
        let msg = format!(
            "max_age {} is out of range: give at least 1s (MQTT 5 counts message expiry in \
             seconds), or leave it out to keep readings however old",
            humantime::format_duration(age)
        );
        return Err(no("max_age", msg));
    }
    let default_port = if tls.is_some() { 8883 } else { 1883 };
    Ok(MqttConfig {
        host: raw.host.unwrap_or_else(|| "localhost".to_owned()),
        port: raw.port.unwrap_or(default_port),
        client_id,
        clean_session: raw.clean_session.unwrap_or(false),
        // MQTT carries keep-alive in whole seconds.
        keep_alive: Duration::from_secs(keep_alive.as_secs()),
        credentials,
        tls,
        availability,
        stats_topic,
        protocol,
        // MQTT carries these in whole seconds.
        session_expiry: Duration::from_secs(session_expiry.as_secs()),
        max_age: raw.max_age.map(|a| Duration::from_secs(a.as_secs())),
    })
}

/// The first line of the file; warns when anyone on the machine can read it.
fn read_password(file: &Path, warnings: &mut Vec<String>) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    // Bounded like the config itself: a mistaken path (`/dev/zero`) must not eat the memory.
    let text = crate::sensor::read_bounded(file, CONFIG_MAX)
        .map_err(|e| format!("password_file {}: {e}", file.display()))?;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o004 != 0
    {
        warnings.push(format!(
            "password_file {} is readable by every user: chmod 640 it (owner root, group telemetryd)",
            file.display()
        ));
    }
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn validate_tls(raw: RawTls) -> Result<TlsConfig, Rejected> {
    let read = |key: &'static str, p: &Path| {
        crate::sensor::read_bounded(p, CONFIG_MAX)
            .map(String::into_bytes)
            .map_err(|e| Rejected::new(key, format!("tls.{key} {}: {e}", p.display())))
    };
    let ca = raw
        .ca_file
        .as_deref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client = match (raw.client_cert, raw.client_key) {
        (Some(cert), Some(key)) => {
            let key = String::from_utf8(read("client_key", &key)?).map_err(|_| {
                Rejected::new("client_key", "tls.client_key is not a PEM file".into())
            })?;
            Some((read("client_cert", &cert)?, Secret(key)))
        }
        (None, None) => None,
        (cert, _) => {
            let key = if cert.is_some() {
                "client_cert"
            } else {
                "client_key"
            };
            let msg = "tls needs both `client_cert` and `client_key` for a client certificate";
            return Err(Rejected::new(key, msg.into()));
        }
    };
    let rustls = crate::mqtt::tls::client_config(ca.as_deref(), client.as_ref()).map_err(|m| {
        // tls.rs names the file at fault first ("tls.client_cert is not a PEM ...").
        let key = ["ca_file", "client_cert", "client_key"]
            .into_iter()
            .find(|k| m.starts_with(&format!("tls.{k}")))
            .unwrap_or("ca_file");
        Rejected::new(key, m)
    })?;
    Ok(TlsConfig { ca, client, rustls })
}

/// What a sensor takes from outside its own table.
struct SensorDefaults<'a> {
    procfs_root: &'a Path,
    /// `[homeassistant] retain_states`.
    retain: bool,
}

fn validate_sensor(raw: RawSensor, defaults: &SensorDefaults) -> Result<SensorConfig, String> {
    let name = raw.name.clone();
    let fail = |msg: String| format!("sensor {name:?}: {msg}");
    if raw.name.trim().is_empty() {
        return Err("sensor: name must not be empty".into());
    }
    if raw.interval < MIN_INTERVAL {
        return Err(fail(format!(
            "interval {} is too short: the minimum is 10ms",
            humantime::format_duration(raw.interval)
        )));
    }
    // Bounds keep every publish far below rumqttc's 10 KiB packet limit: a reading the client
    // refuses would otherwise sit at the head of the outbox forever.
    for (key, value, max) in [
        ("name", raw.name.as_str(), 128),
        ("topic", &raw.topic, 1024),
    ]
    .into_iter()
    .chain(raw.unit.as_deref().map(|u| ("unit", u, 32)))
    {
        if value.len() > max {
            return Err(fail(format!("{key} is longer than {max} bytes")));
        }
    }
    if !is_publish_topic(&raw.topic) {
        return Err(fail(format!(
            "topic {:?} is not a publish topic: it must be non-empty without + or # wildcards",
            raw.topic
        )));
    }
    // TOML accepts `inf` and `nan`; any of them here would turn every reading into a
    // non-finite value (or make every bound check false).
    for (key, value) in [
        ("scale", raw.scale),
        ("offset", raw.offset),
        ("min", raw.min),
        ("max", raw.max),
    ] {
        if let Some(v) = value.filter(|v| !v.is_finite()) {
            return Err(fail(format!("{key} must be a finite number, got {v}")));
        }
    }
    if let (Some(min), Some(max)) = (raw.min, raw.max)
        && min > max
    {
        return Err(fail(format!("min ({min}) is greater than max ({max})")));
    }
    if raw.decimals.is_some_and(|d| d > 9) {
        return Err(fail("decimals must be between 0 and 9".into()));
    }
    let source = source_spec(&raw, defaults.procfs_root).map_err(fail)?;
    let ha = raw.ha.clone().unwrap_or_default();
    ha.validate().map_err(fail)?;
    let policy = policy(&raw).map_err(fail)?;
    Ok(SensorConfig {
        name: raw.name,
        source,
        interval: raw.interval,
        topic: raw.topic,
        qos: raw.qos.unwrap_or(Qos::AtLeastOnce),
        retain: raw.retain.unwrap_or(defaults.retain),
        decimals: raw.decimals,
        scale: raw.scale.unwrap_or(1.0),
        offset: raw.offset.unwrap_or(0.0),
        min: raw.min,
        max: raw.max,
        unit: raw.unit,
        format: raw.format.unwrap_or(Format::Plain),
        policy,
        ha,
    })
}

fn policy(raw: &RawSensor) -> Result<Policy, String> {
    let positive = |key: &str, v: Option<f64>, zero_ok: bool| match v {
        Some(x) if !x.is_finite() || x < 0.0 || (x == 0.0 && !zero_ok) => {
            Err(format!("{key} must be a positive number, got {x}"))
        }
        _ => Ok(v),
    };
    let deadband = positive("deadband", raw.deadband, true)?;
    let max_step = positive("max_step", raw.max_step, false)?;
    if let Some(h) = raw.heartbeat {
        if deadband.is_none() {
            return Err("heartbeat only makes sense with a deadband".into());
        }
        if h < raw.interval {
            return Err("heartbeat must be at least the interval".into());
        }
    }
    if raw.average.is_some_and(|n| n == 0 || n > 10_000) {
        return Err("average must be between 1 and 10000 readings".into());
    }
    Ok(Policy {
        deadband,
        heartbeat: raw.heartbeat,
        average: raw.average,
        max_step,
    })
}

/// Builds the kind-specific part, refusing keys that belong to another kind: a `chip` on a
/// ds18b20 is a mistake the user wants to hear about, not a silently ignored line.
fn source_spec(raw: &RawSensor, procfs_root: &Path) -> Result<SourceSpec, String> {
    let kind = raw.kind;
    let present: [(&str, bool); 10] = [
        ("path", raw.path.is_some()),
        ("device", raw.device.is_some()),
        ("channel", raw.channel.is_some()),
        ("chip", raw.chip.is_some()),
        ("input", raw.input.is_some()),
        ("zone", raw.zone.is_some()),
        ("command", raw.command.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("metric", raw.metric.is_some()),
        ("interface", raw.interface.is_some()),
    ];
    let allowed: &[&str] = match kind {
        Kind::Ds18b20 => &["path", "device"],
        Kind::Iio => &["device", "channel"],
        Kind::Hwmon => &["chip", "input"],
        Kind::Thermal => &["zone"],
        Kind::File => &["path"],
        Kind::Command => &["command", "timeout"],
        Kind::System => &["metric", "path", "interface"],
    };
    let kind_name = format!("{kind:?}").to_lowercase();
    if let Some((key, _)) = present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
        return Err(format!(
            "key `{key}` does not apply to kind \"{kind_name}\" (its keys: {})",
            allowed.join(", ")
        ));
    }
    let need = |key: &str, v: &Option<String>| -> Result<String, String> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(format!("kind \"{kind_name}\" needs `{key}`")),
        }
    };
    Ok(match kind {
        Kind::Ds18b20 => match (&raw.path, &raw.device) {
            (None, None) => {
                return Err(
                    "kind \"ds18b20\" needs `path` (a w1_slave file) or `device` (e.g. \"28-0316a2795aff\")"
                        .into(),
                );
            }
            (Some(_), Some(_)) => return Err("give either `path` or `device`, not both".into()),
            _ => SourceSpec::Ds18b20 {
                path: raw.path.clone(),
                device: raw.device.clone(),
            },
        },
        Kind::Iio => SourceSpec::Iio {
            device: need("device", &raw.device)?,
            channel: need("channel", &raw.channel)?,
        },
        Kind::Hwmon => SourceSpec::Hwmon {
            chip: need("chip", &raw.chip)?,
            input: need("input", &raw.input)?,
        },
        Kind::Thermal => SourceSpec::Thermal {
            zone: need("zone", &raw.zone)?,
        },
        Kind::File => SourceSpec::File {
            path: raw.path.clone().ok_or("kind \"file\" needs `path`")?,
        },
        Kind::Command => {
            let argv = raw.command.clone().unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(
                    "kind \"command\" needs `command`, e.g. [\"vcgencmd\", \"measure_temp\"]"
                        .into(),
                );
            }
            SourceSpec::Command {
                argv,
                timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
            }
        }
        Kind::System => SourceSpec::System {
            metric: crate::sensor::system::Metric::parse(
                &need("metric", &raw.metric)?,
                raw.path.clone(),
                raw.interface.clone(),
            )?,
            procfs_root: procfs_root.to_owned(),
        },
    })
}

/// `telemetryd-<hostname>`: stable across restarts, so the broker keeps our session.
fn default_client_id() -> String {
    match hostname().as_str() {
        "" => "telemetryd".to_owned(),
        h => format!("telemetryd-{h}"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The sensor's topic behind `topic_prefix`, with placeholders filled in.
fn topic_for(
    prefix: Option<&str>,
    sensor: &SensorConfig,
    client_id: &str,
) -> Result<String, String> {
    let joined = match prefix.map(|p| p.trim_end_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/{}", sensor.topic),
        _ => sensor.topic.clone(),
    };
    expand(&joined, client_id, Some(&sensor.name))
}

/// Fills in `{client_id}`, `{hostname}` and (for sensor topics) `{sensor}`, so that one config
/// file serves a fleet; checks the result is a publish topic.
fn expand(template: &str, client_id: &str, sensor: Option<&str>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or("topic has a `{` without a closing `}`")?
            + open;
        out.push_str(&match (&rest[open + 1..close], sensor) {
            ("client_id", _) => client_id.to_owned(),
            ("hostname", _) => hostname(),
            ("sensor", Some(name)) => name.to_owned(),
            (other, _) => {
                let known = if sensor.is_some() {
                    "{client_id}, {sensor} or {hostname}"
                } else {
                    "{client_id} or {hostname}"
                };
                return Err(format!(
                    "unknown placeholder {{{other}}} in topic: use {known}"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    if !is_publish_topic(&out) || out.len() > 1024 {
        return Err(format!("topic {out:?} is not a valid publish topic"));
    }
    Ok(out)
}

/// What MQTT allows as the topic of a PUBLISH: not empty, no wildcard, no U+0000. A NUL makes
/// Mosquitto drop the link, and rumqttc does not check for it: the reading would go out first
/// again on every reconnect, holding up everything behind it.
fn is_publish_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A setting outside the sensor tables that validation rejected: its key and why.
struct Rejected {
    key: &'static str,
    /// The key is in `[mqtt.tls]`, not `[mqtt]`.
    tls: bool,
    msg: String,
}

impl Rejected {
    fn new(key: &'static str, msg: String) -> Rejected {
        Rejected {
            key,
            tls: false,
            msg,
        }
    }
}

/// Where `key` is set under `[table]` ("" for the top level) in `text`, if it is. A line scan
/// rather than a TOML parse: it only has to find `key =` in a file that already parsed.
fn key_offset(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header.split(']').next().unwrap_or("").trim().to_owned();
        } else if current == table
            && let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/telemetryd/t.toml")).map_err(|e| e.to_string())
    }

    const SEED: &str = r#"
[mqtt]
host = "localhost"
client_id = "pi-garden"

[buffer]
path = "/tmp/buf"

[[sensor]]
name = "outside"
kind = "ds18b20"
device = "28-0316a2795aff"
interval = "30s"
topic = "temperature/outside"
decimals = 1
"#;

    #[test]
    fn seed_config_gets_defaults() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert!(!c.mqtt.clean_session);
        assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(c.buffer.max_messages, 500_000);
        assert_eq!(c.buffer.commit_interval, Duration::ZERO);
        let s = &c.sensors[0];
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.qos, Qos::AtLeastOnce);
        assert_eq!(s.format, Format::Plain);
        assert_eq!(
            s.source,
            SourceSpec::Ds18b20 {
                path: None,
                device: Some("28-0316a2795aff".into())
            }
        );
    }

    #[test]
    fn calibration_values_must_be_finite() {
        for (key, value) in [
            ("scale", "inf"),
            ("offset", "-inf"),
            ("min", "nan"),
            ("max", "inf"),
        ] {
            let err =
                parse(&SEED.replace("decimals = 1", &format!("{key} = {value}"))).unwrap_err();
            assert!(
                err.contains(&format!("{key} must be a finite number")),
                "{err}"
            );
        }
        let err = parse(&SEED.replace("decimals = 1", "max_step = inf")).unwrap_err();
        assert!(err.contains("max_step must be a positive number"), "{err}");
    }

    #[test]
    fn an_oversized_config_file_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("big.toml");
        let padding = "# padding\n".repeat(CONFIG_MAX as usize / 10 + 1);
        std::fs::write(&path, format!("{SEED}{padding}")).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot read config file {}: more than 4096 KiB",
                path.display()
            )
        );
        std::fs::write(&path, SEED).unwrap();
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn default_client_id_is_stable_and_named() {
        let c = parse("[[sensor]]\nname='a'\nkind='file'\npath='/x'\ninterval='1s'\ntopic='a'\n")
            .unwrap();
        assert!(c.mqtt.client_id.starts_with("telemetryd"));
        assert_eq!(c.mqtt.client_id, default_client_id());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse(&SEED.replace("decimals = 1", "decimal = 1")).unwrap_err();
        assert!(err.contains("/etc/telemetryd/t.toml"), "{err}");
        assert!(err.contains("line 15"), "{err}");
        assert!(err.contains("unknown field `decimal`"), "{err}");
    }

    #[test]
    fn bad_duration_and_qos_are_located() {
        let err = parse(&SEED.replace("\"30s\"", "\"30 parsecs\"")).unwrap_err();
        assert!(err.contains("line 13") && err.contains("interval"), "{err}");
        let err = parse(&SEED.replace("decimals = 1", "qos = 2")).unwrap_err();
        assert!(
            err.contains("line 15") && err.contains("qos 2 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn kind_errors_point_at_the_sensor_table() {
        let err = parse(&SEED.replace("device = \"28-0316a2795aff\"", "")).unwrap_err();
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:9:1: sensor \"outside\""),
            "{err}"
        );
        assert!(err.contains("needs `path`"), "{err}");
        let err = parse(&SEED.replace("decimals = 1", "chip = \"x\"")).unwrap_err();
        assert!(
            err.contains("key `chip` does not apply to kind \"ds18b20\""),
            "{err}"
        );
        let err = parse(&SEED.replace("kind = \"ds18b20\"", "kind = \"dht\"")).unwrap_err();
        assert!(err.contains("unknown variant `dht`"), "{err}");
    }

    /// "0s" was accepted and panicked the metrics task (a tokio interval of zero).
    #[test]
    fn rejects_a_stats_interval_under_10ms() {
        let text = format!("log_level = \"info\"\nstats_interval = \"0s\"\n{SEED}");
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains("t.toml:2:1:") && err.contains("stats_interval 0s is too short"),
            "{err}"
        );
        assert!(parse(&format!("stats_interval = \"5ms\"\n{SEED}")).is_err());
        assert!(parse(&format!("stats_interval = \"10ms\"\n{SEED}")).is_ok());
    }

    #[test]
    fn rejects_wildcard_topics_short_intervals_and_duplicate_names() {
        let err = parse(&SEED.replace("temperature/outside", "temperature/#")).unwrap_err();
        assert!(err.contains("wildcards"), "{err}");
        let long = "t/".repeat(600);
        let err = parse(&SEED.replace("temperature/outside", &long)).unwrap_err();
        assert!(err.contains("topic is longer than 1024 bytes"), "{err}");
        let err = parse(&SEED.replace("\"30s\"", "\"1ms\"")).unwrap_err();
        assert!(err.contains("too short"), "{err}");
        let twice = format!("{SEED}\n{}", &SEED[SEED.find("[[sensor]]").unwrap()..]);
        let err = parse(&twice).unwrap_err();
        assert!(
            err.contains(":17:1:") && err.contains("used twice"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_mqtt_settings() {
        let err =
            parse(&SEED.replace("client_id = \"pi-garden\"", "client_id = \"\"")).unwrap_err();
        assert!(err.contains("[mqtt] client_id"), "{err}");
        let err = parse(&SEED.replace("[mqtt]", "[mqtt]\nkeep_alive = \"100ms\"")).unwrap_err();
        assert!(err.contains("keep_alive"), "{err}");
        // The line of the key, not only its name.
        let line = SEED.lines().position(|l| l == "[mqtt]").unwrap() + 2;
        assert!(
            err.contains(&format!("t.toml:{line}:1: [mqtt] keep_alive")),
            "{err}"
        );
        let text = SEED.replace("[mqtt]", "[mqtt]\nprotocol = 4\nsession_expiry = \"1h\"");
        let err = parse(&text).unwrap_err();
        let line = SEED.lines().position(|l| l == "[mqtt]").unwrap() + 3;
        assert!(
            err.contains(&format!(":{line}:1: [mqtt] session_expiry")),
            "{err}"
        );
        // The rejected key's line, not that of another key the message happens to name.
        let text = SEED.replace("[mqtt]", "[mqtt]\nstats_topic = \"t/{nope}\"");
        let err = parse(&text).unwrap_err();
        let line = SEED.lines().position(|l| l == "[mqtt]").unwrap() + 2;
        assert!(
            err.contains(&format!(":{line}:1: [mqtt] unknown placeholder")),
            "{err}"
        );
        let err = parse(&format!("log_level = 'loud'\n{SEED}")).unwrap_err();
        assert!(err.contains("log_level \"loud\""), "{err}");
        let err = parse(&SEED.replace("[mqtt]", "[mqtt]\nport = 70000")).unwrap_err();
        assert!(err.contains("port"), "{err}");
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn credentials_come_from_a_password_file_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let pw = write(dir.path(), "pw", "s3cret-value\n", 0o640);
        let text = SEED.replace(
            "[mqtt]",
            &format!(
                "[mqtt]\nusername = \"pi\"\npassword_file = {:?}",
                pw.display().to_string()
            ),
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.mqtt.credentials,
            Some(("pi".into(), Secret("s3cret-value".into())))
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password leaks through Debug"
        );

        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let c = parse(&text).unwrap();
        assert!(
            c.warnings[0].contains("readable by every user"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn credential_mistakes_are_config_errors() {
        let with = |extra: &str| parse(&SEED.replace("[mqtt]", &format!("[mqtt]\n{extra}")));
        let err = with("password = \"x\"").unwrap_err();
        assert!(err.contains("needs a `username`"), "{err}");
        let err = with("username = \"u\"\npassword = \"x\"\npassword_file = \"/x\"").unwrap_err();
        assert!(err.contains("not both"), "{err}");
        let err = with("username = \"u\"\npassword_file = \"/nonexistent/pw\"").unwrap_err();
        assert!(err.contains("password_file /nonexistent/pw"), "{err}");
    }

    #[test]
    fn a_password_or_tls_file_that_never_ends_is_refused() {
        let with = |extra: &str| parse(&SEED.replace("[mqtt]", &format!("[mqtt]\n{extra}")));
        let err = with("username = \"u\"\npassword_file = \"/dev/zero\"").unwrap_err();
        assert!(err.contains("password_file /dev/zero: more than"), "{err}");
        let err = parse(&format!("{SEED}\n[mqtt.tls]\nca_file = \"/dev/zero\"")).unwrap_err();
        assert!(err.contains("tls.ca_file /dev/zero: more than"), "{err}");
    }

    #[test]
    fn tls_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["test-ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_file = write(dir.path(), "ca.pem", &ca.pem(), 0o644);
        let tls = |body: &str| parse(&format!("{SEED}\n[mqtt.tls]\n{body}"));

        let c = tls(&format!("ca_file = {:?}", ca_file.display().to_string())).unwrap();
        assert_eq!(c.mqtt.port, 8883, "TLS defaults to the MQTT-over-TLS port");
        assert!(c.mqtt.tls.is_some());

        let junk = write(dir.path(), "junk.pem", "not a certificate", 0o644);
        let err = tls(&format!("ca_file = {:?}", junk.display().to_string())).unwrap_err();
        assert!(err.contains("tls.ca_file holds no certificate"), "{err}");
        let err = tls("ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(err.contains("tls.ca_file /nonexistent/ca.pem"), "{err}");
        let err = tls(&format!(
            "client_cert = {:?}",
            ca_file.display().to_string()
        ))
        .unwrap_err();
        assert!(err.contains("both `client_cert` and `client_key`"), "{err}");
        let key_file = write(dir.path(), "key.pem", &key.serialize_pem(), 0o600);
        let c = tls(&format!(
            "ca_file = {ca:?}\nclient_cert = {ca:?}\nclient_key = {key:?}",
            ca = ca_file.display().to_string(),
            key = key_file.display().to_string()
        ))
        .unwrap();
        assert!(
            !format!("{c:?}").contains("PRIVATE KEY"),
            "the key leaks through Debug"
        );
        let err = tls("unknown = 1").unwrap_err();
        assert!(err.contains("unknown field `unknown`"), "{err}");
    }

    /// A NUL in `topic_prefix` (or `status_topic`/`stats_topic`) reached the topic: only the
    /// sensor's own `topic` was checked for it. MQTT forbids U+0000 in topic names, and
    /// rumqttc lets it through, so such a reading would lead every link and hold the backlog.
    #[test]
    fn rejects_a_nul_in_any_topic() {
        let text = format!("topic_prefix = \"home\\u0000x\"\n{SEED}");
        let err = parse(&text).map(|c| c.sensors[0].topic.clone());
        assert!(err.is_err(), "accepted topic {err:?}");
        let text = SEED.replace("[mqtt]", "[mqtt]\nstatus_topic = \"s\\u0000\"");
        let err = parse(&text).map(|c| c.mqtt.availability.map(|a| a.topic));
        assert!(err.is_err(), "accepted status topic {err:?}");
    }

    #[test]
    fn topic_templates_fill_in_placeholders() {
        let text = format!(
            "topic_prefix = \"home/{{hostname}}/\"\n{}",
            SEED.replace(
                "topic = \"temperature/outside\"",
                "topic = \"{client_id}/{sensor}\"",
            )
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.sensors[0].topic,
            format!("home/{}/pi-garden/outside", hostname())
        );
        let err = parse(&SEED.replace("temperature/outside", "t/{room}")).unwrap_err();
        assert!(
            err.contains(":9:1:") && err.contains("unknown placeholder {room}"),
            "{err}"
        );
    }

    #[test]
    fn publishing_policy_is_validated() {
        let c = parse(&SEED.replace(
            "decimals = 1",
            "deadband = 0.5\nheartbeat = \"10m\"\naverage = 4\nmax_step = 5",
        ))
        .unwrap();
        let p = c.sensors[0].policy;
        assert_eq!(
            (p.deadband, p.heartbeat, p.average, p.max_step),
            (
                Some(0.5),
                Some(Duration::from_secs(600)),
                Some(4),
                Some(5.0)
            )
        );
        let err = parse(&SEED.replace("decimals = 1", "heartbeat = \"10m\"")).unwrap_err();
        assert!(
            err.contains("heartbeat only makes sense with a deadband"),
            "{err}"
        );
        let err =
            parse(&SEED.replace("decimals = 1", "deadband = 1\nheartbeat = \"1s\"")).unwrap_err();
        assert!(err.contains("at least the interval"), "{err}");
        let err = parse(&SEED.replace("decimals = 1", "average = 0")).unwrap_err();
        assert!(err.contains("average must be between"), "{err}");
        let err = parse(&SEED.replace("decimals = 1", "max_step = 0")).unwrap_err();
        assert!(err.contains("max_step must be a positive number"), "{err}");
    }

    #[test]
    fn commit_interval_is_a_bounded_duration() {
        let with =
            |v: &str| parse(&SEED.replace("[buffer]", &format!("[buffer]\ncommit_interval = {v}")));
        assert_eq!(
            with("\"250ms\"").unwrap().buffer.commit_interval,
            Duration::from_millis(250)
        );
        assert_eq!(
            with("\"0s\"").unwrap().buffer.commit_interval,
            Duration::ZERO
        );
        assert_eq!(
            with("\"1m\"").unwrap().buffer.commit_interval,
            Duration::from_secs(60)
        );
        let err = with("\"61s\"").unwrap_err();
        assert!(
            err.contains("[buffer] commit_interval 1m 1s is too long") && err.contains("1m"),
            "{err}"
        );
        let err = with("\"soon\"").unwrap_err();
        assert!(err.contains("commit_interval"), "{err}");
    }

    #[test]
    fn mqtt5_settings_are_validated() {
        let with = |extra: &str| parse(&SEED.replace("[mqtt]", &format!("[mqtt]\n{extra}")));
        let c = parse(SEED).unwrap();
        assert_eq!(c.mqtt.protocol, Protocol::V4, "3.1.1 stays the default");
        assert_eq!(c.mqtt.max_age, None);

        let c = with("protocol = 5\nsession_expiry = \"2h\"\nmax_age = \"6h\"").unwrap();
        assert_eq!(c.mqtt.protocol, Protocol::V5);
        assert_eq!(c.mqtt.session_expiry, Duration::from_secs(7200));
        assert_eq!(c.mqtt.max_age, Some(Duration::from_secs(6 * 3600)));
        let c = with("protocol = 5").unwrap();
        assert_eq!(c.mqtt.session_expiry, DEFAULT_SESSION_EXPIRY);
        // max_age also drops stale readings on 3.1.1 (there is no message expiry to set).
        let c = with("protocol = 4\nmax_age = \"90s\"").unwrap();
        assert_eq!(c.mqtt.max_age, Some(Duration::from_secs(90)));

        // An unsupported version is located by toml: file, line, key.
        let err = with("protocol = 3").unwrap_err();
        assert!(
            err.contains("/etc/telemetryd/t.toml")
                && err.contains("line 3")
                && err.contains("protocol 3 is not supported"),
            "{err}"
        );
        let err = with("session_expiry = \"1d\"").unwrap_err();
        assert!(
            err.contains("[mqtt] session_expiry is an MQTT 5 setting"),
            "{err}"
        );
        let err = with("protocol = 5\nsession_expiry = \"200years\"").unwrap_err();
        assert!(
            err.contains("session_expiry") && err.contains("too long"),
            "{err}"
        );
        let err = with("max_age = \"500ms\"").unwrap_err();
        assert!(err.contains("max_age 500ms is out of range"), "{err}");
        let err = with("protocol = 5\nkeep_alive = \"2s\"").unwrap_err();
        assert!(err.contains("keep_alive must be at least 5s"), "{err}");
        let err = with("protocol = \"5\"").unwrap_err();
        assert!(err.contains("protocol"), "{err}");
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.sensors.is_empty(), "{} has no sensors", path.display());
                n += 1;
            }
        }
        assert!(
            n >= 2,
            "expected the Pi config and the demo config in {}",
            dir.display()
        );
    }
}
