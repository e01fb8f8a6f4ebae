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

mod values;
pub use values::parse_duration;
use values::{Argv, Dur, Level, Number, Port, Whole, show};

/// Where the packaged config lives; `--config` overrides it.
pub const DEFAULT_PATH: &str = "/etc/telemetryd/telemetryd.toml";

/// The shortest sensor interval accepted: below this a Pi spends its time in syscalls.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// 0 panicked the metrics task. Not 1 s: the benchmark suite (BENCHMARKS.md) reads the
/// summary every 10 ms, the shortest sensor interval too.
const MIN_STATS_INTERVAL: Duration = MIN_INTERVAL;

/// The longest sensor interval (and `stats_interval`, `heartbeat`): a week.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// The longest time a `command` sensor may run.
const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

/// The longest `online_payload` / `offline_payload`.
const MAX_STATUS_PAYLOAD: usize = 1024;

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

/// `reconnect_max`: the cap of the pause between reconnect rounds. The pause is drawn from
/// [d/2, d], so with 8 s a broker that is back is retried within 8 s.
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(8);
const MIN_RECONNECT_MAX: Duration = Duration::from_secs(1);
const MAX_RECONNECT_MAX: Duration = Duration::from_secs(600);

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
    pub servers: Vec<crate::mqtt::servers::Server>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A config that cannot be used; the message names the file, the line and column, the key and
/// what was expected, then shows the line. Policy: the daemon refuses to start on it (exit
/// 78), a reload keeps the old config.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

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

/// A value (or a table) and where it is in the file.
type At<T> = Spanned<T>;

/// A rejected value: where it is and why.
type Bad = (Range<usize>, String);

fn bad<T>(at: Range<usize>, msg: impl Into<String>) -> Result<T, Bad> {
    Err((at, msg.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_level: Option<Level>,
    sysfs_root: Option<PathBuf>,
    procfs_root: Option<PathBuf>,
    topic_prefix: Option<At<String>>,
    stats_interval: Option<At<Dur>>,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    buffer: RawBuffer,
    homeassistant: Option<RawHomeAssistant>,
    #[serde(default, rename = "sensor")]
    sensors: Vec<At<RawSensor>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<At<String>>,
    port: Option<Port>,
    servers: Option<At<Vec<String>>>,
    reconnect_max: Option<At<Dur>>,
    client_id: Option<At<String>>,
    clean_session: Option<bool>,
    keep_alive: Option<At<Dur>>,
    username: Option<At<String>>,
    password: Option<At<String>>,
    password_file: Option<At<PathBuf>>,
    tls: Option<At<RawTls>>,
    status_topic: Option<At<String>>,
    online_payload: Option<At<String>>,
    offline_payload: Option<At<String>>,
    stats_topic: Option<At<String>>,
    protocol: Option<At<Protocol>>,
    session_expiry: Option<At<Dur>>,
    max_age: Option<At<Dur>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<At<PathBuf>>,
    client_cert: Option<At<PathBuf>>,
    client_key: Option<At<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHomeAssistant {
    discovery_prefix: Option<At<String>>,
    node_id: Option<At<String>>,
    device_name: Option<At<String>>,
    retain_states: Option<bool>,
    diagnostics: Option<bool>,
}

/// `[homeassistant]` names and the client id: far below what would push a discovery config, a
/// topic or the Last Will towards rumqttc's 10 KiB packet limit.
const MAX_HA_TEXT: usize = 128;
const MAX_CLIENT_ID: usize = 256;

/// The most readings the buffer may be told to hold: about 28 GB at 280 bytes each.
const MAX_MAX_MESSAGES: u64 = 100_000_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    path: Option<PathBuf>,
    max_messages: Option<Whole<1, MAX_MAX_MESSAGES>>,
    commit_interval: Option<At<Dur>>,
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
    name: At<String>,
    kind: At<Kind>,
    interval: At<Dur>,
    topic: At<String>,
    qos: Option<Qos>,
    retain: Option<bool>,
    decimals: Option<Whole<0, 9>>,
    scale: Option<Number>,
    offset: Option<Number>,
    min: Option<Number>,
    max: Option<At<Number>>,
    unit: Option<At<String>>,
    format: Option<Format>,
    deadband: Option<At<Number>>,
    heartbeat: Option<At<Dur>>,
    average: Option<Whole<1, 10_000>>,
    max_step: Option<At<Number>>,
    // Kind-specific keys.
    path: Option<At<PathBuf>>,
    device: Option<At<String>>,
    channel: Option<At<String>>,
    chip: Option<At<String>>,
    input: Option<At<String>>,
    zone: Option<At<String>>,
    command: Option<At<Argv>>,
    timeout: Option<At<Dur>>,
    metric: Option<At<String>>,
    interface: Option<At<String>>,
    /// How Home Assistant shows it (`[sensor.ha]`).
    ha: Option<At<crate::homeassistant::EntityOptions>>,
}

/// A config file is a few KiB; a bigger one is a mistaken path (a log, `/dev/zero`).
const CONFIG_MAX: u64 = 4 * 1024 * 1024;

/// A duration that must lie in `min..=max`; the error says which end and why.
fn bounded(
    d: &At<Dur>,
    key: &str,
    min: Duration,
    max: Duration,
    why: &str,
) -> Result<Duration, Bad> {
    let v = d.get_ref().get();
    if v < min {
        return bad(
            d.span(),
            format!(
                "{key} {} is too short: the minimum is {}{why}",
                show(v),
                show(min)
            ),
        );
    }
    if v > max {
        return bad(
            d.span(),
            format!(
                "{key} {} is too long: the maximum is {}{why}",
                show(v),
                show(max)
            ),
        );
    }
    Ok(v)
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
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
        match String::from_utf8(bytes) {
            Ok(text) => Config::parse(&text, path),
            Err(e) => {
                let good = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                let text = String::from_utf8_lossy(&bytes[..good]);
                let (line, col) = line_col(&text, good);
                Err(ConfigError(format!(
                    "{}:{line}:{col}: the file is not UTF-8 text here (byte 0x{:02x}): save it as UTF-8",
                    path.display(),
                    bytes[good]
                )))
            }
        }
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
        validate(raw).map_err(|(span, msg)| located(path, text, span, &msg, false))?
            .ok_or_else(|| {
                ConfigError(format!(
                    "{}: no sensors: add a [[sensor]] table (`telemetryd sensors` lists what this machine has, ready to paste)",
                    path.display()
                ))
            })
    }
}

/// The config, or `None` when it has no sensor.
fn validate(raw: RawConfig) -> Result<Option<Config>, Bad> {
    let mut warnings = Vec::new();
    let mqtt = validate_mqtt(raw.mqtt, &mut warnings)?;
    let buffer = BufferConfig {
        path: raw
            .buffer
            .path
            .unwrap_or_else(|| PathBuf::from("/var/lib/telemetryd/buffer")),
        max_messages: raw.buffer.max_messages.map_or(500_000, |w| w.0),
        commit_interval: match &raw.buffer.commit_interval {
            Some(d) => bounded(
                d,
                "[buffer] commit_interval",
                Duration::ZERO,
                MAX_COMMIT_INTERVAL,
                ": readings wait that long in memory, unpublished, and a crash loses them",
            )?,
            None => Duration::ZERO,
        },
    };
    let log_level = raw.log_level.map_or_else(|| "info".to_owned(), |l| l.0);
    let stats_interval = match &raw.stats_interval {
        Some(d) => bounded(d, "stats_interval", MIN_STATS_INTERVAL, MAX_INTERVAL, "")?,
        None => Duration::from_secs(300),
    };
    // The prefix on its own: its mistakes point at it, not at every sensor.
    let prefix = match raw.topic_prefix {
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            let trimmed = p.trim_end_matches('/');
            if !trimmed.is_empty() {
                expand(trimmed, &mqtt.client_id, Some("sensor"))
                    .map_err(|m| (span, format!("topic_prefix: {m}")))?;
            }
            Some(p)
        }
        None => None,
    };

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
        let raw = spanned.into_inner();
        let name_at = raw.name.span();
        let topic_at = raw.topic.span();
        let mut sensor = validate_sensor(raw, &defaults)?;
        sensor.topic = topic_for(prefix.as_deref(), &sensor, &mqtt.client_id)
            .map_err(|m| (topic_at, format!("sensor {:?}: {m}", sensor.name)))?;
        if sensors.iter().any(|s| s.name == sensor.name) {
            return bad(
                name_at,
                format!(
                    "sensor name {:?} is used twice: names must be unique",
                    sensor.name
                ),
            );
        }
        sensors.push(sensor);
    }
    if sensors.is_empty() {
        return Ok(None);
    }

    let homeassistant = match raw.homeassistant {
        Some(ha) => {
            // Each goes into every discovery config: bounded so that one stays far below
            // rumqttc's 10 KiB packet limit (a config it refuses drops the link at every
            // connect, and no reading is ever delivered).
            let text = |key: &str, v: Option<At<String>>, default: &str| match v {
                Some(v) if v.get_ref().is_empty() || v.get_ref().len() > MAX_HA_TEXT => bad(
                    v.span(),
                    format!("[homeassistant] {key} must be 1 to {MAX_HA_TEXT} bytes"),
                ),
                Some(v) => Ok(v.into_inner()),
                None => Ok(default.to_owned()),
            };
            let node_id = text("node_id", ha.node_id, &mqtt.client_id)?;
            Some(HomeAssistant {
                discovery_prefix: text("discovery_prefix", ha.discovery_prefix, "homeassistant")?,
                device_name: text("device_name", ha.device_name, &mqtt.client_id)?,
                // Discovery ids allow [a-zA-Z0-9_-] only.
                node_id: crate::homeassistant::object_id(&node_id),
                retain_states: ha.retain_states.unwrap_or(false),
                diagnostics: ha.diagnostics.unwrap_or(true),
            })
        }
        None => None,
    };
    if homeassistant.is_none()
        && let Some(s) = sensors.iter().find(|s| s.ha != Default::default())
    {
        warnings.push(format!(
            "sensor {:?} has Home Assistant settings (`ha`) but there is no [homeassistant] table: they do nothing",
            s.name
        ));
    }
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

fn validate_mqtt(raw: RawMqtt, warnings: &mut Vec<String>) -> Result<MqttConfig, Bad> {
    // A default topic that fails is the client id's doing (`{client_id}` in it).
    let client_id_at = raw.client_id.as_ref().map_or(0..0, At::span);
    let client_id = match raw.client_id {
        Some(id) if id.get_ref().is_empty() => {
            return bad(
                id.span(),
                "[mqtt] client_id must not be empty: it names the persistent session",
            );
        }
        Some(id) if id.get_ref().len() > MAX_CLIENT_ID => {
            return bad(
                id.span(),
                format!(
                    "[mqtt] client_id is longer than {MAX_CLIENT_ID} bytes: it goes into the \
                     status and stats topics and the Last Will"
                ),
            );
        }
        Some(id) => id.into_inner(),
        None => default_client_id(),
    };
    let host = match raw.host {
        Some(h) if h.get_ref().trim().is_empty() => {
            return bad(
                h.span(),
                "[mqtt] host must not be empty: the broker's name or address",
            );
        }
        Some(h) => Some(h.into_inner()),
        None => None,
    };
    let protocol = raw.protocol.as_ref().map_or(Protocol::V4, |p| *p.get_ref());
    let keep_alive = match &raw.keep_alive {
        // MQTT carries keep-alive in whole seconds, at most 65535.
        Some(k) => {
            let min = if protocol == Protocol::V5 {
                MIN_KEEP_ALIVE_V5
            } else {
                Duration::from_secs(1)
            };
            let why = if protocol == Protocol::V5 {
                " with protocol = 5 (rumqttc's MQTT 5 client refuses less)"
            } else {
                " (MQTT counts it in whole seconds, up to 65535)"
            };
            bounded(
                k,
                "[mqtt] keep_alive",
                min,
                Duration::from_secs(u16::MAX as u64),
                why,
            )?
        }
        None => Duration::from_secs(30),
    };
    let has_password_file = raw.password_file.is_some();
    let password = match (raw.password, raw.password_file) {
        (Some(_), Some(file)) => {
            return bad(
                file.span(),
                "[mqtt] give either `password` or `password_file`, not both",
            );
        }
        (Some(p), None) => Some((p.span(), Secret(p.into_inner()))),
        (None, Some(file)) => {
            let span = file.span();
            let secret = read_password(file.get_ref(), warnings)
                .map_err(|m| (span.clone(), format!("[mqtt] {m}")))?;
            Some((span, Secret(secret)))
        }
        (None, None) => None,
    };
    let credentials = match (raw.username, password) {
        (Some(user), password) => Some((
            user.into_inner(),
            password.map_or_else(|| Secret(String::new()), |(_, p)| p),
        )),
        (None, Some((span, _))) => {
            let key = if has_password_file {
                "password_file"
            } else {
                "password"
            };
            return bad(span, format!("[mqtt] {key}: a password needs a `username`"));
        }
        (None, None) => None,
    };
    let tls = raw.tls.map(validate_tls).transpose()?;
    // An empty topic turns the feature off.
    let topic = |key: &str, t: Option<At<String>>, default: &str| match t {
        Some(t) if t.get_ref().is_empty() => Ok(None),
        Some(t) => expand(t.get_ref(), &client_id, None)
            .map(Some)
            .map_err(|m| (t.span(), format!("[mqtt] {key}: {m}"))),
        None => expand(default, &client_id, None).map(Some).map_err(|m| {
            (
                client_id_at.clone(),
                format!("[mqtt] client_id makes the default {key} {default:?} invalid: {m}"),
            )
        }),
    };
    // Far below rumqttc's 10 KiB packet limit: a Last Will it refuses fails every connect.
    let payload = |key: &str, p: Option<At<String>>, default: &str| match p {
        Some(p) if p.get_ref().len() > MAX_STATUS_PAYLOAD => bad(
            p.span(),
            format!("[mqtt] {key} is longer than {MAX_STATUS_PAYLOAD} bytes"),
        ),
        Some(p) => Ok(p.into_inner()),
        None => Ok(default.to_owned()),
    };
    let online = payload("online_payload", raw.online_payload, "online")?;
    let offline = payload("offline_payload", raw.offline_payload, "offline")?;
    let availability = topic(
        "status_topic",
        raw.status_topic,
        "telemetryd/{client_id}/status",
    )?
    .map(|topic| Availability {
        topic,
        online,
        offline,
    });
    let stats_topic = topic(
        "stats_topic",
        raw.stats_topic,
        "telemetryd/{client_id}/stats",
    )?;
    let session_expiry = match &raw.session_expiry {
        Some(s) if protocol == Protocol::V4 => {
            return bad(
                s.span(),
                "[mqtt] session_expiry is an MQTT 5 setting: add `protocol = 5` (with MQTT 3.1.1 \
                 the broker decides how long a session lasts)",
            );
        }
        Some(s) => bounded(
            s,
            "[mqtt] session_expiry",
            Duration::ZERO,
            Duration::from_secs(u32::MAX as u64),
            ": MQTT 5 allows at most 4294967295 seconds (136 years, which means never)",
        )?,
        None => DEFAULT_SESSION_EXPIRY,
    };
    let max_age = match &raw.max_age {
        Some(a) => Some(bounded(
            a,
            "[mqtt] max_age",
            MIN_MAX_AGE,
            Duration::from_secs(u32::MAX as u64),
            " (MQTT 5 counts message expiry in whole seconds); leave it out to keep readings however old",
        )?),
        None => None,
    };
    let default_port = raw
        .port
        .map_or(if tls.is_some() { 8883 } else { 1883 }, |p| p.0);
    let servers = match (host, raw.servers) {
        (Some(_), Some(list)) => {
            return bad(
                list.span(),
                "[mqtt] servers and host are both set: give one or the other (servers lists \
                 every broker, the first one first)",
            );
        }
        (None, Some(list)) => crate::mqtt::servers::parse_list(list.get_ref(), default_port)
            .map_err(|m| (list.span(), format!("[mqtt] {m}")))?,
        (host, None) => vec![crate::mqtt::servers::Server {
            host: host.unwrap_or_else(|| "localhost".to_owned()),
            port: default_port,
        }],
    };
    let reconnect_max = match &raw.reconnect_max {
        Some(r) => bounded(
            r,
            "[mqtt] reconnect_max",
            MIN_RECONNECT_MAX,
            MAX_RECONNECT_MAX,
            "",
        )?,
        None => DEFAULT_RECONNECT_MAX,
    };
    Ok(MqttConfig {
        host: servers[0].host.clone(),
        port: servers[0].port,
        servers,
        reconnect_max,
        client_id,
        clean_session: raw.clean_session.unwrap_or(false),
        // MQTT carries these in whole seconds.
        keep_alive: Duration::from_secs(keep_alive.as_secs()),
        credentials,
        tls,
        availability,
        stats_topic,
        protocol,
        session_expiry: Duration::from_secs(session_expiry.as_secs()),
        max_age: max_age.map(|a| Duration::from_secs(a.as_secs())),
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

fn validate_tls(raw: At<RawTls>) -> Result<TlsConfig, Bad> {
    let table = raw.span();
    let raw = raw.into_inner();
    let read = |key: &str, p: &At<PathBuf>| {
        crate::sensor::read_bounded(p.get_ref(), CONFIG_MAX)
            .map(String::into_bytes)
            .map_err(|e| {
                (
                    p.span(),
                    format!("tls.{key} {}: {e}", p.get_ref().display()),
                )
            })
    };
    let ca = raw
        .ca_file
        .as_ref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => {
            let pem = String::from_utf8(read("client_key", key)?)
                .map_err(|_| (key.span(), "tls.client_key is not a PEM file".to_owned()))?;
            Some((read("client_cert", cert)?, Secret(pem)))
        }
        (None, None) => None,
        (cert, key) => {
            let at = cert.as_ref().or(key.as_ref()).map_or(table, |p| p.span());
            return bad(
                at,
                "tls needs both `client_cert` and `client_key` for a client certificate",
            );
        }
    };
    let rustls = crate::mqtt::tls::client_config(ca.as_deref(), client.as_ref()).map_err(|m| {
        // tls.rs names the file at fault first ("tls.client_cert is not a PEM ...").
        let at = [
            ("ca_file", &raw.ca_file),
            ("client_cert", &raw.client_cert),
            ("client_key", &raw.client_key),
        ]
        .into_iter()
        .find(|(k, _)| m.starts_with(&format!("tls.{k}")))
        .and_then(|(_, p)| p.as_ref().map(|p| p.span()))
        .unwrap_or(table.clone());
        (at, m)
    })?;
    Ok(TlsConfig { ca, client, rustls })
}

/// What a sensor takes from outside its own table.
struct SensorDefaults<'a> {
    procfs_root: &'a Path,
    /// `[homeassistant] retain_states`.
    retain: bool,
}

fn validate_sensor(raw: RawSensor, defaults: &SensorDefaults) -> Result<SensorConfig, Bad> {
    let name = raw.name.get_ref().clone();
    let fail = |at: Range<usize>, msg: String| (at, format!("sensor {name:?}: {msg}"));
    if name.trim().is_empty() {
        return bad(raw.name.span(), "sensor: name must not be empty");
    }
    let interval = bounded(&raw.interval, "interval", MIN_INTERVAL, MAX_INTERVAL, "")
        .map_err(|(at, m)| fail(at, m))?;
    // Bounds keep every publish far below rumqttc's 10 KiB packet limit: a reading the client
    // refuses would otherwise sit at the head of the outbox forever.
    for (key, value, max) in [("name", &raw.name, 128), ("topic", &raw.topic, 1024)]
        .into_iter()
        .chain(raw.unit.as_ref().map(|u| ("unit", u, 32)))
    {
        if value.get_ref().len() > max {
            return Err(fail(
                value.span(),
                format!("{key} is longer than {max} bytes"),
            ));
        }
    }
    let topic = raw.topic.get_ref();
    if !is_publish_topic(topic) {
        return Err(fail(
            raw.topic.span(),
            format!(
                "topic {topic:?} is not a publish topic: it must be non-empty without + or # wildcards"
            ),
        ));
    }
    let (min, max) = (
        raw.min.map(|n| n.0),
        raw.max.as_ref().map(|n| n.get_ref().0),
    );
    if let (Some(lo), Some(hi), Some(at)) = (min, max, raw.max.as_ref())
        && lo > hi
    {
        return Err(fail(
            at.span(),
            format!("min ({lo}) is greater than max ({hi})"),
        ));
    }
    let source = source_spec(&raw, defaults.procfs_root).map_err(|(at, m)| fail(at, m))?;
    let ha = match &raw.ha {
        Some(h) => {
            h.get_ref()
                .validate()
                .map_err(|m| fail(h.span(), m.to_string()))?;
            h.get_ref().clone()
        }
        None => Default::default(),
    };
    let policy = policy(&raw, interval).map_err(|(at, m)| fail(at, m))?;
    Ok(SensorConfig {
        name,
        source,
        interval,
        topic: raw.topic.into_inner(),
        qos: raw.qos.unwrap_or(Qos::AtLeastOnce),
        retain: raw.retain.unwrap_or(defaults.retain),
        decimals: raw.decimals.map(|d| d.0 as u8),
        scale: raw.scale.map_or(1.0, |n| n.0),
        offset: raw.offset.map_or(0.0, |n| n.0),
        min,
        max,
        unit: raw.unit.map(At::into_inner),
        format: raw.format.unwrap_or(Format::Plain),
        policy,
        ha,
    })
}

fn policy(raw: &RawSensor, interval: Duration) -> Result<Policy, Bad> {
    let positive = |key: &str, v: &Option<At<Number>>, zero_ok: bool| match v {
        Some(x) if x.get_ref().0 < 0.0 || (x.get_ref().0 == 0.0 && !zero_ok) => bad(
            x.span(),
            format!("{key} must be a positive number, got {}", x.get_ref().0),
        ),
        _ => Ok(v.as_ref().map(|x| x.get_ref().0)),
    };
    let deadband = positive("deadband", &raw.deadband, true)?;
    let max_step = positive("max_step", &raw.max_step, false)?;
    let heartbeat = match &raw.heartbeat {
        Some(h) if deadband.is_none() => {
            return bad(h.span(), "heartbeat only makes sense with a deadband");
        }
        Some(h) if h.get_ref().get() < interval => {
            return bad(h.span(), "heartbeat must be at least the interval");
        }
        Some(h) => Some(bounded(h, "heartbeat", interval, MAX_INTERVAL, "")?),
        None => None,
    };
    Ok(Policy {
        deadband,
        heartbeat,
        average: raw.average.map(|n| n.0 as u32),
        max_step,
    })
}

/// Builds the kind-specific part, refusing keys that belong to another kind: a `chip` on a
/// ds18b20 is a mistake the user wants to hear about, not a silently ignored line.
fn source_spec(raw: &RawSensor, procfs_root: &Path) -> Result<SourceSpec, Bad> {
    let kind = *raw.kind.get_ref();
    let present: [(&str, Option<Range<usize>>); 10] = [
        ("path", raw.path.as_ref().map(At::span)),
        ("device", raw.device.as_ref().map(At::span)),
        ("channel", raw.channel.as_ref().map(At::span)),
        ("chip", raw.chip.as_ref().map(At::span)),
        ("input", raw.input.as_ref().map(At::span)),
        ("zone", raw.zone.as_ref().map(At::span)),
        ("command", raw.command.as_ref().map(At::span)),
        ("timeout", raw.timeout.as_ref().map(At::span)),
        ("metric", raw.metric.as_ref().map(At::span)),
        ("interface", raw.interface.as_ref().map(At::span)),
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
    if let Some((key, Some(at))) = present
        .iter()
        .find(|(k, at)| at.is_some() && !allowed.contains(k))
    {
        return bad(
            at.clone(),
            format!(
                "key `{key}` does not apply to kind \"{kind_name}\" (its keys: {})",
                allowed.join(", ")
            ),
        );
    }
    // A missing key is pointed at by the table's `kind`.
    let kind_at = raw.kind.span();
    let need = |key: &str, v: &Option<At<String>>| -> Result<String, Bad> {
        match v {
            Some(s) if !s.get_ref().trim().is_empty() => Ok(s.get_ref().clone()),
            Some(s) => bad(s.span(), format!("`{key}` must not be empty")),
            None => bad(
                kind_at.clone(),
                format!("kind \"{kind_name}\" needs `{key}`"),
            ),
        }
    };
    Ok(match kind {
        Kind::Ds18b20 => match (&raw.path, &raw.device) {
            (None, None) => {
                return bad(
                    kind_at,
                    "kind \"ds18b20\" needs `path` (a w1_slave file) or `device` (e.g. \"28-0316a2795aff\")",
                );
            }
            (Some(_), Some(d)) => return bad(d.span(), "give either `path` or `device`, not both"),
            _ => SourceSpec::Ds18b20 {
                path: raw.path.as_ref().map(|p| p.get_ref().clone()),
                device: raw.device.as_ref().map(|d| d.get_ref().clone()),
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
            path: match &raw.path {
                Some(p) => p.get_ref().clone(),
                None => return bad(kind_at, "kind \"file\" needs `path`"),
            },
        },
        Kind::Command => {
            let example = "kind \"command\" needs `command`, e.g. [\"vcgencmd\", \"measure_temp\"]";
            let argv = match &raw.command {
                Some(c) if c.get_ref().0.first().is_some_and(|a| !a.is_empty()) => {
                    c.get_ref().0.clone()
                }
                Some(c) => return bad(c.span(), example),
                None => return bad(kind_at, example),
            };
            let timeout = match &raw.timeout {
                Some(t) => bounded(t, "timeout", MIN_INTERVAL, MAX_COMMAND_TIMEOUT, "")?,
                None => Duration::from_secs(10),
            };
            SourceSpec::Command { argv, timeout }
        }
        Kind::System => {
            let metric_at = raw.metric.as_ref().map_or(kind_at.clone(), At::span);
            SourceSpec::System {
                metric: crate::sensor::system::Metric::parse(
                    &need("metric", &raw.metric)?,
                    raw.path.as_ref().map(|p| p.get_ref().clone()),
                    raw.interface.as_ref().map(|i| i.get_ref().clone()),
                )
                .map_err(|m| (metric_at, m.to_string()))?,
                procfs_root: procfs_root.to_owned(),
            }
        }
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

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `path:line:col: message`, then the line itself with the place marked, as a compiler shows
/// it. With `name_key`, the key is put in front of the message (taken from the marked line,
/// when the mark is on a value after `key =`).
fn located(path: &Path, text: &str, span: Range<usize>, msg: &str, name_key: bool) -> ConfigError {
    let start = span.start.min(text.len());
    let (line, col) = line_col(text, start);
    let content = text.lines().nth(line - 1).unwrap_or("");
    let key = content
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            name_key
                && !k.is_empty()
                && k.len() + 1 < col
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
        })
        .map_or_else(String::new, |k| format!("{}: ", k.trim_matches('"')));
    let width = text[start..span.end.clamp(start, text.len())]
        .lines()
        .next()
        .map_or(1, |s| s.chars().count().max(1));
    let gutter = " ".repeat(line.to_string().len());
    ConfigError(format!(
        "{}:{line}:{col}: {key}{msg}\n {gutter} |\n {line} | {content}\n {gutter} | {}{}",
        path.display(),
        " ".repeat(col - 1),
        "^".repeat(width)
    ))
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

    /// Every text that goes into a discovery config, a topic or the Last Will is bounded: a
    /// 20 KB `ha.icon` made each connect send a 20 KB config that rumqttc refuses, dropping
    /// the link at once, forever, with no reading delivered (seen against a real Mosquitto).
    #[test]
    fn texts_that_go_into_every_packet_are_bounded() {
        let long = "a".repeat(20_000);
        let ha = |extra: &str| format!("{SEED}\n[homeassistant]\n{extra}\n");
        for (text, says) in [
            (
                SEED.replace(
                    "decimals = 1",
                    &format!("[sensor.ha]\nicon = \"mdi:{long}\""),
                ),
                "ha.icon",
            ),
            (
                ha(&format!("device_name = \"{long}\"")),
                "device_name must be 1 to 128 bytes",
            ),
            (
                ha(&format!("node_id = \"{long}\"")),
                "node_id must be 1 to 128 bytes",
            ),
            (
                ha(&format!("discovery_prefix = \"{long}\"")),
                "discovery_prefix must be 1 to 128",
            ),
            (
                ha("device_name = \"\""),
                "device_name must be 1 to 128 bytes",
            ),
            (
                SEED.replace("\"pi-garden\"", &format!("\"{long}\"")),
                "client_id is longer than 256 bytes",
            ),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(says), "{says}: {}", &err[..err.len().min(300)]);
        }
        // What a real setup writes still passes.
        let ok = SEED.replace(
            "decimals = 1",
            "[sensor.ha]\nicon = \"mdi:thermometer-lines\"",
        );
        parse(&ha("device_name = \"Garden Pi\"\nnode_id = \"garden\"")).unwrap();
        parse(&format!("{ok}\n[homeassistant]\n")).unwrap();
    }

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
                err.contains(&format!(
                    "{key}: {value} is not a number telemetryd can use"
                )),
                "{err}"
            );
        }
        let err = parse(&SEED.replace("decimals = 1", "max_step = inf")).unwrap_err();
        assert!(err.contains("max_step: inf is not a number"), "{err}");
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
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:15:1: unknown field `decimal`"),
            "{err}"
        );
        assert!(err.contains("\n 15 | decimal = 1\n    | ^^^^^^^"), "{err}");
    }

    #[test]
    fn bad_duration_and_qos_are_located() {
        let err = parse(&SEED.replace("\"30s\"", "\"30 parsecs\"")).unwrap_err();
        assert!(
            err.starts_with(
                "/etc/telemetryd/t.toml:13:12: interval: \"30 parsecs\" is not a duration"
            ),
            "{err}"
        );
        let err = parse(&SEED.replace("decimals = 1", "qos = 2")).unwrap_err();
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:15:7: qos: 2 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn kind_errors_point_at_the_key() {
        // A missing key: the sensor's `kind`, which asks for it.
        let err = parse(&SEED.replace("device = \"28-0316a2795aff\"", "")).unwrap_err();
        assert!(
            err.starts_with(
                "/etc/telemetryd/t.toml:11:8: sensor \"outside\": kind \"ds18b20\" needs `path`"
            ),
            "{err}"
        );
        let err = parse(&SEED.replace("decimals = 1", "chip = \"x\"")).unwrap_err();
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:15:8: sensor \"outside\": key `chip` does not apply to kind \"ds18b20\""),
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
            err.starts_with(
                "/etc/telemetryd/t.toml:2:18: stats_interval 0s is too short: the minimum is 10ms"
            ),
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
            err.contains(":18:8: sensor name \"outside\" is used twice"),
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
            err.contains(&format!(
                "t.toml:{line}:14: [mqtt] keep_alive 100ms is too short"
            )),
            "{err}"
        );
        let text = SEED.replace("[mqtt]", "[mqtt]\nprotocol = 4\nsession_expiry = \"1h\"");
        let err = parse(&text).unwrap_err();
        let line = SEED.lines().position(|l| l == "[mqtt]").unwrap() + 3;
        assert!(
            err.contains(&format!(":{line}:18: [mqtt] session_expiry")),
            "{err}"
        );
        // The rejected key's line, not that of another key the message happens to name.
        let text = SEED.replace("[mqtt]", "[mqtt]\nstats_topic = \"t/{nope}\"");
        let err = parse(&text).unwrap_err();
        let line = SEED.lines().position(|l| l == "[mqtt]").unwrap() + 2;
        assert!(
            err.contains(&format!(
                ":{line}:15: [mqtt] stats_topic: unknown placeholder"
            )),
            "{err}"
        );
        let err = parse(&format!("log_level = 'loud'\n{SEED}")).unwrap_err();
        assert!(
            err.contains(":1:13: log_level: \"loud\" is not one of"),
            "{err}"
        );
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
            err.contains(":14:9: sensor \"outside\": unknown placeholder {room}"),
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
        assert!(
            err.contains("average: 0 is out of range: expected a whole number from 1 to 10000"),
            "{err}"
        );
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
            err.starts_with("/etc/telemetryd/t.toml:3:12: protocol: 3 is not supported"),
            "{err}"
        );
        let err = with("session_expiry = \"1d\"").unwrap_err();
        assert!(
            err.contains("[mqtt] session_expiry is an MQTT 5 setting"),
            "{err}"
        );
        let err = with("protocol = 5\nsession_expiry = \"49711d\"").unwrap_err();
        assert!(
            err.contains("session_expiry") && err.contains("too long"),
            "{err}"
        );
        let err = with("max_age = \"500ms\"").unwrap_err();
        assert!(err.contains("max_age 500ms is too short"), "{err}");
        let err = with("protocol = 5\nkeep_alive = \"2s\"").unwrap_err();
        assert!(
            err.contains("keep_alive 2s is too short: the minimum is 5s with protocol = 5"),
            "{err}"
        );
        let err = with("protocol = \"5\"").unwrap_err();
        assert!(err.contains("protocol"), "{err}");
    }

    /// The mistakes of issue 14, each with its place and its message.
    #[test]
    fn every_config_mistake_names_its_line_key_and_what_to_write() {
        let sensor_line =
            |extra: &str| parse(&SEED.replace("decimals = 1", extra)).expect_err(extra);
        let mqtt_line = |extra: &str| {
            parse(&SEED.replace("[mqtt]", &format!("[mqtt]\n{extra}"))).expect_err(extra)
        };
        for (value, says) in [
            (
                "\"5M\"",
                "\"M\" would be months, which telemetryd does not take: write minutes as \"m\"",
            ),
            (
                "\"10y\"",
                "\"y\" is not a unit telemetryd takes: use ms, s, m, h or d",
            ),
            (
                "\"30 s\"",
                "has a space in it: write it without, like \"30s\"",
            ),
            ("\"30sec\"", "\"sec\" is not a unit telemetryd takes"),
            ("30", "a duration needs a unit and quotes: write \"30s\""),
            ("\"8d\"", "interval 8days is too long: the maximum is 7days"),
        ] {
            let err = parse(&SEED.replace("\"30s\"", value)).expect_err(value);
            assert!(err.starts_with("/etc/telemetryd/t.toml:13:12: "), "{err}");
            assert!(err.contains(says), "{value}: {err}");
        }
        for (extra, at, says) in [
            (
                "port = 0",
                8,
                "port: 0 is out of range: expected a whole number from 1 to 65535",
            ),
            (
                "port = 70000",
                8,
                "port: 70000 is out of range: expected a whole number from 1 to 65535",
            ),
            (
                "port = \"1883\"",
                8,
                "port: \"1883\" is in quotes: write the number without them (1883)",
            ),
            (
                "port = 18.83",
                8,
                "port: invalid type: floating point `18.83`, expected a whole number from 1 to 65535",
            ),
        ] {
            let err = mqtt_line(extra);
            assert!(
                err.starts_with(&format!("/etc/telemetryd/t.toml:3:{at}: {says}")),
                "{err}"
            );
        }
        let long = format!("offline_payload = \"{}\"", "x".repeat(1025));
        assert!(mqtt_line(&long).starts_with(
            "/etc/telemetryd/t.toml:3:19: [mqtt] offline_payload is longer than 1024 bytes"
        ));
        let err = parse(&SEED.replace("host = \"localhost\"", "host = \"\"")).unwrap_err();
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:3:8: [mqtt] host must not be empty"),
            "{err}"
        );
        for (extra, at, says) in [
            (
                "scale = \"2\"",
                9,
                "scale: \"2\" is in quotes: write the number without them",
            ),
            (
                "scale = \"x\"",
                9,
                "scale: invalid type: string \"x\", expected a number, like 1.5 or -3",
            ),
            (
                "decimals = 10",
                12,
                "decimals: 10 is out of range: expected a whole number from 0 to 9",
            ),
            (
                "qos = \"1\"",
                7,
                "qos: \"1\" is in quotes: write the number without them (1)",
            ),
            (
                "retain = \"yes\"",
                10,
                "retain: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "path = 3",
                8,
                "path: invalid type: integer `3`, expected path string",
            ),
        ] {
            let err = sensor_line(extra);
            assert!(
                err.starts_with(&format!("/etc/telemetryd/t.toml:15:{at}: {says}")),
                "{err}"
            );
        }
        let command = |argv: &str| {
            let text = SEED
                .replace("kind = \"ds18b20\"", "kind = \"command\"")
                .replace("device = \"28-0316a2795aff\"", &format!("command = {argv}"));
            parse(&text).expect_err(argv)
        };
        let err = command("\"vcgencmd measure_temp\"");
        assert!(err.starts_with("/etc/telemetryd/t.toml:12:11: command: a list of words, run without a shell: write [\"vcgencmd\", \"measure_temp\"]"), "{err}");
        let err = command("5");
        assert!(err.contains(":12:11: command: invalid type: integer `5`, expected a list like [\"vcgencmd\", \"measure_temp\"]"), "{err}");
        let err = command("[]");
        assert!(
            err.contains(":12:11: sensor \"outside\": kind \"command\" needs `command`"),
            "{err}"
        );

        // Top level, and a mistake in topic_prefix at its own line, not at a sensor's.
        // A client id that makes a default topic invalid: at the client id.
        let err = parse(&SEED.replace("\"pi-garden\"", "\"pi#1\"")).unwrap_err();
        assert!(
            err.starts_with(
                "/etc/telemetryd/t.toml:4:13: [mqtt] client_id makes the default status_topic"
            ),
            "{err}"
        );
        let err = parse(&format!("stats_interval = \"5ms\"\n{SEED}")).unwrap_err();
        assert!(
            err.starts_with(
                "/etc/telemetryd/t.toml:1:18: stats_interval 5ms is too short: the minimum is 10ms"
            ),
            "{err}"
        );
        let err = parse(&format!("topic_prefix = \"home/{{room}}\"\n{SEED}")).unwrap_err();
        assert!(
            err.starts_with(
                "/etc/telemetryd/t.toml:1:16: topic_prefix: unknown placeholder {room}"
            ),
            "{err}"
        );
        let err = parse(&format!("topic_prefix = \"home/#\"\n{SEED}")).unwrap_err();
        assert!(
            err.starts_with("/etc/telemetryd/t.toml:1:16: topic_prefix: "),
            "{err}"
        );
        let err = parse(&SEED.replace("path = \"/tmp/buf\"", "max_messages = 0")).unwrap_err();
        assert!(err.starts_with("/etc/telemetryd/t.toml:7:16: max_messages: 0 is out of range: expected a whole number from 1 to 100000000"), "{err}");

        // No sensor at all: the daemon would start and do nothing.
        for text in ["", "# nothing yet\n", "[mqtt]\nhost = \"broker\"\n"] {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with("/etc/telemetryd/t.toml: no sensors: add a [[sensor]] table"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_gets_the_place_of_the_first_bad_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("latin1.toml");
        let mut bytes = SEED.as_bytes().to_vec();
        // "temperature/outsidé" in Latin-1, on line 14.
        let at = SEED.find("outside\"\ndecimals").unwrap() + "outside".len();
        bytes.insert(at, 0xe9);
        std::fs::write(&path, bytes).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:14:29: the file is not UTF-8 text here (byte 0xe9): save it as UTF-8",
                path.display()
            )
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Any line of the seed replaced by any text: a config, or an error that names the
        /// file (and renders its place without panicking).
        #[test]
        fn any_edit_gives_a_config_or_a_located_error(line in 0usize..16, text in "\\PC{0,40}") {
            let mut lines: Vec<&str> = SEED.lines().collect();
            let at = line % lines.len();
            lines[at] = &text;
            let edited = lines.join("\n");
            if let Err(e) = parse(&edited) {
                proptest::prop_assert!(e.starts_with("/etc/telemetryd/t.toml") || e.starts_with("invalid config file /etc/telemetryd/t.toml"), "{e}");
            }
        }
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

    #[test]
    fn servers_is_a_failover_list_instead_of_host() {
        use crate::mqtt::servers::Server;
        let sv = |host: &str, port| Server {
            host: host.into(),
            port,
        };
        let with = |mqtt: &str| parse(&SEED.replace("host = \"localhost\"", mqtt)).map(|c| c.mqtt);
        let m = with("servers = [\"n1.lan\", \"n2.lan:1884\", \"[::1]\"]").unwrap();
        assert_eq!(
            m.servers,
            vec![sv("n1.lan", 1883), sv("n2.lan", 1884), sv("::1", 1883)]
        );
        assert_eq!((m.host.as_str(), m.port), ("n1.lan", 1883));
        assert_eq!(m.reconnect_max, Duration::from_secs(8));
        // `port` is the default port of the entries that give none.
        let m = with("port = 2883\nservers = [\"a\", \"b:1\"]").unwrap();
        assert_eq!(m.servers, vec![sv("a", 2883), sv("b", 1)]);
        // Without `servers`, `host` and `port` are the one server.
        assert_eq!(
            parse(SEED).unwrap().mqtt.servers,
            vec![sv("localhost", 1883)]
        );

        let err = parse(&SEED.replace("[mqtt]", "[mqtt]\nservers = [\"a\"]")).unwrap_err();
        assert!(
            err.contains("t.toml:3:11: [mqtt] servers") && err.contains("both set"),
            "{err}"
        );
        for (bad, says) in [
            ("servers = []", "empty"),
            ("servers = [\"a:99999\"]", "1 to 65535"),
            ("servers = [\"a\", \"a:1883\"]", "twice"),
            ("servers = [\"mqtt://a\"]", "no scheme"),
        ] {
            let err = with(bad).unwrap_err();
            assert!(
                err.contains("[mqtt] servers") && err.contains(says),
                "{bad}: {err}"
            );
        }
        let err = with("host = \"a\"\nreconnect_max = \"0s\"").unwrap_err();
        assert!(
            err.contains("[mqtt] reconnect_max 0s is too short: the minimum is 1s"),
            "{err}"
        );
        let m = with("host = \"a\"\nreconnect_max = \"1m\"").unwrap();
        assert_eq!(m.reconnect_max, Duration::from_secs(60));
    }
}
