//! Home Assistant MQTT discovery: one retained config message per sensor.
//!
//! One device per daemon, with the daemon's own figures as diagnostic entities.

mod options;

pub use options::{EntityOptions, OptionError, expire_after_s, silence_bound};

use serde_json::{Value, json};

use crate::config::{Config, Format, SensorConfig};
use crate::sensor::{Source, SourceSpec};

/// A retained discovery message: an empty payload removes the entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the publisher needs to keep Home Assistant's view in step with the config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Discovery {
    /// Home Assistant says `online` here when it (re)starts: announce again.
    pub status_topic: String,
    /// Match every config topic of this daemon's node (to find stale entities): one per
    /// component (`sensor`, `binary_sensor`).
    pub config_filters: Vec<String>,
    pub announcements: Vec<Announcement>,
    /// The sensors' state topics, with the `expire_after` announced for each: their last
    /// state is sent again when Home Assistant comes online, after the announcements, and a
    /// retained one expires on an MQTT 5 broker when Home Assistant would expire it.
    pub state_topics: Vec<(String, Option<u64>)>,
}

impl Discovery {
    /// The config topic's object id, if `topic` is one of this node's config topics.
    pub fn object_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        self.config_filters.iter().find_map(|filter| {
            let (prefix, suffix) = filter.split_once('+')?;
            topic.strip_prefix(prefix)?.strip_suffix(suffix)
        })
    }
}

/// The Home Assistant platform an entity is announced as.
#[derive(Clone, Copy, PartialEq)]
enum Component {
    Sensor,
    BinarySensor,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
        }
    }
}

/// The discovery messages for `config`, or `None` without a `[homeassistant]` table.
pub fn discovery(config: &Config) -> Option<Discovery> {
    let ha = config.homeassistant.as_ref()?;
    let node = |c: Component| format!("{}/{}/{}", ha.discovery_prefix, c.as_str(), ha.node_id);
    let device = json!({
        "identifiers": [ha.node_id],
        "name": ha.device_name,
        "manufacturer": "telemetryd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let mut entities: Vec<(Component, String, Value)> = config
        .sensors
        .iter()
        .map(|s| {
            let (component, entity) = entity(s, config);
            (component, object_id(&s.name), entity)
        })
        .collect();
    if ha.diagnostics
        && let Some(stats) = &config.mqtt.stats_topic
    {
        entities.extend(diagnostics(stats, config.stats_interval));
    }
    let announcements = entities
        .into_iter()
        .map(|(component, object, mut entity)| {
            entity["unique_id"] = json!(format!("{}_{object}", ha.node_id));
            entity["device"] = device.clone();
            if let Some(a) = &config.mqtt.availability {
                entity["availability_topic"] = json!(a.topic);
                entity["payload_available"] = json!(a.online);
                entity["payload_not_available"] = json!(a.offline);
            }
            Announcement {
                topic: format!("{}/{object}/config", node(component)),
                payload: serde_json::to_vec(&entity).expect("JSON values serialize"),
            }
        })
        .collect();
    Some(Discovery {
        status_topic: format!("{}/status", ha.discovery_prefix),
        config_filters: [Component::Sensor, Component::BinarySensor]
            .map(|c| format!("{}/+/config", node(c)))
            .to_vec(),
        announcements,
        state_topics: config
            .sensors
            .iter()
            .map(|s| (s.topic.clone(), expire_after(s)))
            .collect(),
    })
}

fn entity(s: &SensorConfig, config: &Config) -> (Component, Value) {
    let source = Source::new(s.source.clone(), &config.sysfs_root);
    let unit = s.unit.clone().or_else(|| source.unit().map(str::to_owned));
    let flag = matches!(&s.source, SourceSpec::System { metric, .. } if metric.is_flag());
    let o = &s.ha;
    let mut e = json!({
        "name": o.name.as_deref().unwrap_or(&s.name),
        "state_topic": s.topic,
    });
    if let Some(secs) = expire_after(s) {
        e["expire_after"] = json!(secs);
    }
    let value = if s.format == Format::Json {
        "value_json.value"
    } else {
        "value | float(0)"
    };
    let component = if flag {
        // 1 or 0, whatever `decimals` makes of it ("1.0"): compared as a number.
        e["value_template"] = json!(format!("{{{{ 'ON' if {value} > 0 else 'OFF' }}}}"));
        Component::BinarySensor
    } else {
        match o.state_class.as_deref() {
            Some("none") => {}
            class => e["state_class"] = json!(class.unwrap_or("measurement")),
        }
        if let Some(unit) = &unit {
            e["unit_of_measurement"] = json!(unit);
        }
        if let Some(p) = o.suggested_display_precision.or(s.decimals) {
            e["suggested_display_precision"] = json!(p);
        }
        if s.format == Format::Json {
            e["value_template"] = json!("{{ value_json.value }}");
        }
        Component::Sensor
    };
    let class = o
        .device_class
        .clone()
        .or_else(|| device_class(&s.source, unit.as_deref()).map(str::to_owned));
    if let Some(class) = class {
        e["device_class"] = json!(class);
    }
    if let Some(icon) = &o.icon {
        e["icon"] = json!(icon);
    }
    if let Some(category) = &o.entity_category {
        e["entity_category"] = json!(category);
    }
    (component, e)
}

/// The `expire_after` announced for `s`, in seconds; `None`: it never expires.
fn expire_after(s: &SensorConfig) -> Option<u64> {
    match s.ha.expire_after {
        Some(d) => expire_after_s(Some(d)),
        None => expire_after_s(silence_bound(s.interval, &s.policy)),
    }
}

/// The daemon's own figures, read by Home Assistant from the retained stats JSON: readings
/// waiting in the buffer, the age of the oldest, and whether the broker link is up.
fn diagnostics(stats_topic: &str, every: std::time::Duration) -> Vec<(Component, String, Value)> {
    let expire = expire_after_s(silence_bound(every, &Default::default()));
    let entity = |name: &str, template: &str| {
        let mut e = json!({
            "name": name,
            "state_topic": stats_topic,
            "value_template": template,
            "entity_category": "diagnostic",
        });
        if let Some(secs) = expire {
            e["expire_after"] = json!(secs);
        }
        e
    };
    let mut buffered = entity("Buffered readings", "{{ value_json.buffered }}");
    buffered["state_class"] = json!("measurement");
    buffered["icon"] = json!("mdi:tray-full");
    // null while nothing waits.
    let mut age = entity(
        "Oldest unsent reading",
        "{{ value_json.oldest_unsent_age_s or 0 }}",
    );
    age["state_class"] = json!("measurement");
    age["device_class"] = json!("duration");
    age["unit_of_measurement"] = json!("s");
    let mut connected = entity(
        "Broker connection",
        "{{ 'ON' if value_json.connected else 'OFF' }}",
    );
    connected["device_class"] = json!("connectivity");
    vec![
        (Component::Sensor, "telemetryd_buffered".into(), buffered),
        (
            Component::Sensor,
            "telemetryd_oldest_unsent_age".into(),
            age,
        ),
        (
            Component::BinarySensor,
            "telemetryd_connected".into(),
            connected,
        ),
    ]
}

fn device_class(source: &SourceSpec, unit: Option<&str>) -> Option<&'static str> {
    let humidity = match source {
        SourceSpec::System { metric, .. } => return metric.device_class(),
        SourceSpec::Iio { channel, .. } => channel.starts_with("humidity"),
        SourceSpec::Hwmon { input, .. } => input.starts_with("humidity"),
        _ => false,
    };
    match unit? {
        "°C" => Some("temperature"),
        "%" if humidity => Some("humidity"),
        "hPa" => Some("atmospheric_pressure"),
        "V" => Some("voltage"),
        "A" => Some("current"),
        "W" => Some("power"),
        _ => None,
    }
}

/// Discovery object ids allow `[a-zA-Z0-9_-]`; every other character becomes `_`. Also what
/// `telemetryd sensors` makes of a device's name (it goes into topics) and the node id.
pub(crate) fn object_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
