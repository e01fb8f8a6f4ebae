//! The `[[sensor]]` tables' validation: common keys, publishing policy, kind-specific source.
//!
//! Names are unique; each topic goes behind `topic_prefix`.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use crate::filter::Policy;
use crate::sensor::SourceSpec;

use super::error::{Problem, bad};
use super::raw::{At, Kind, RawSensor};
use super::topics::{is_publish_topic, topic_for};
use super::values::{Number, bounded};
use super::{Format, Qos, SensorConfig};

/// The shortest sensor interval accepted: below this a Pi spends its time in syscalls.
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest sensor interval (and `stats_interval`, `heartbeat`): a week.
pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// The longest time a `command` sensor may run.
const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a sensor takes from outside its own table.
pub(super) struct SensorDefaults<'a> {
    pub procfs_root: &'a Path,
    /// `[homeassistant] retain_states`.
    pub retain: bool,
}

/// Every sensor, its topic behind `prefix`; names are unique.
pub(super) fn validate_sensors(
    raw: Vec<At<RawSensor>>,
    prefix: Option<&str>,
    client_id: &str,
    defaults: &SensorDefaults,
) -> Result<Vec<SensorConfig>, Problem> {
    let mut sensors: Vec<SensorConfig> = Vec::with_capacity(raw.len());
    for spanned in raw {
        let raw = spanned.into_inner();
        let name_at = raw.name.span();
        let topic_at = raw.topic.span();
        let mut sensor = validate_sensor(raw, defaults)?;
        sensor.topic = topic_for(prefix, &sensor, client_id)
            .map_err(|m| Problem::new(topic_at, format!("sensor {:?}: {m}", sensor.name)))?;
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
    Ok(sensors)
}

fn validate_sensor(raw: RawSensor, defaults: &SensorDefaults) -> Result<SensorConfig, Problem> {
    let name = raw.name.get_ref().clone();
    let fail = |at: Range<usize>, msg: String| Problem::new(at, format!("sensor {name:?}: {msg}"));
    if name.trim().is_empty() {
        return bad(raw.name.span(), "sensor: name must not be empty");
    }
    let interval = bounded(&raw.interval, "interval", MIN_INTERVAL, MAX_INTERVAL, "")
        .map_err(|p| fail(p.at, p.msg))?;
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
    let source = source_spec(&raw, defaults.procfs_root).map_err(|p| fail(p.at, p.msg))?;
    let ha = match &raw.ha {
        Some(h) => {
            h.get_ref()
                .validate()
                .map_err(|m| fail(h.span(), m.to_string()))?;
            h.get_ref().clone()
        }
        None => Default::default(),
    };
    let policy = policy(&raw, interval).map_err(|p| fail(p.at, p.msg))?;
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

fn policy(raw: &RawSensor, interval: Duration) -> Result<Policy, Problem> {
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
fn source_spec(raw: &RawSensor, procfs_root: &Path) -> Result<SourceSpec, Problem> {
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
    let need = |key: &str, v: &Option<At<String>>| -> Result<String, Problem> {
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
                .map_err(|m| Problem::new(metric_at, m.to_string()))?,
                procfs_root: procfs_root.to_owned(),
            }
        }
    })
}
