//! Home Assistant MQTT discovery: one retained config message per sensor, one device per daemon.

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
    /// Matches every config topic of this daemon's node (to find stale entities).
    pub config_filter: String,
    pub announcements: Vec<Announcement>,
}

impl Discovery {
    /// The config topic's object id, if `topic` is one of this node's config topics.
    pub fn object_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let (prefix, suffix) = self.config_filter.split_once('+')?;
        topic.strip_prefix(prefix)?.strip_suffix(suffix)
    }
}

/// The discovery messages for `config`, or `None` without a `[homeassistant]` table.
pub fn discovery(config: &Config) -> Option<Discovery> {
    let ha = config.homeassistant.as_ref()?;
    let node = format!("{}/sensor/{}", ha.discovery_prefix, ha.node_id);
    let device = json!({
        "identifiers": [ha.node_id],
        "name": ha.device_name,
        "manufacturer": "telemetryd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let announcements = config
        .sensors
        .iter()
        .map(|s| {
            let object = object_id(&s.name);
            let mut entity = entity(s, config);
            entity["unique_id"] = json!(format!("{}_{object}", ha.node_id));
            entity["device"] = device.clone();
            Announcement {
                topic: format!("{node}/{object}/config"),
                payload: serde_json::to_vec(&entity).expect("JSON values serialize"),
            }
        })
        .collect();
    Some(Discovery {
        status_topic: format!("{}/status", ha.discovery_prefix),
        config_filter: format!("{node}/+/config"),
        announcements,
    })
}

fn entity(s: &SensorConfig, config: &Config) -> Value {
    let unit = s.unit.clone().or_else(|| {
        Source::new(s.source.clone(), &config.sysfs_root)
            .unit()
            .map(str::to_owned)
    });
    let mut e = json!({
        "name": s.name,
        "state_topic": s.topic,
        "state_class": "measurement",
        // Three missed readings: Home Assistant shows the value as unavailable.
        "expire_after": (s.interval.as_secs() * 3).max(60),
    });
    if let Some(unit) = &unit {
        e["unit_of_measurement"] = json!(unit);
    }
    if let Some(class) = device_class(&s.source, unit.as_deref()) {
        e["device_class"] = json!(class);
    }
    if s.format == Format::Json {
        e["value_template"] = json!("{{ value_json.value }}");
    }
    if let Some(a) = &config.mqtt.availability {
        e["availability_topic"] = json!(a.topic);
        e["payload_available"] = json!(a.online);
        e["payload_not_available"] = json!(a.offline);
    }
    e
}

fn device_class(source: &SourceSpec, unit: Option<&str>) -> Option<&'static str> {
    let humidity = match source {
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

/// Discovery object ids allow `[a-zA-Z0-9_-]`.
fn object_id(name: &str) -> String {
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
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[mqtt]
client_id = "pi-garden"
[homeassistant]
[[sensor]]
name = "outside"
kind = "ds18b20"
device = "28-0316a2795aff"
interval = "30s"
topic = "temperature/outside"
[[sensor]]
name = "bme280 humidity"
kind = "iio"
device = "bme280"
channel = "humidityrelative"
interval = "1m"
topic = "garden/humidity"
format = "json"
"#;

    #[test]
    fn one_config_per_sensor_with_device_class_unit_and_availability() {
        let config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let d = discovery(&config).unwrap();
        assert_eq!(d.status_topic, "homeassistant/status");
        assert_eq!(
            d.announcements[0].topic,
            "homeassistant/sensor/pi-garden/outside/config"
        );
        let outside: Value = serde_json::from_slice(&d.announcements[0].payload).unwrap();
        assert_eq!(outside["unique_id"], "pi-garden_outside");
        assert_eq!(outside["device_class"], "temperature");
        assert_eq!(outside["unit_of_measurement"], "°C");
        assert_eq!(outside["state_topic"], "temperature/outside");
        assert_eq!(outside["expire_after"], 90);
        assert_eq!(outside["availability_topic"], "telemetryd/pi-garden/status");
        assert_eq!(outside["device"]["identifiers"][0], "pi-garden");
        assert!(outside.get("value_template").is_none());
        let humidity: Value = serde_json::from_slice(&d.announcements[1].payload).unwrap();
        assert_eq!(
            d.announcements[1].topic,
            "homeassistant/sensor/pi-garden/bme280_humidity/config"
        );
        assert_eq!(humidity["device_class"], "humidity");
        assert_eq!(humidity["value_template"], "{{ value_json.value }}");
        assert_eq!(
            d.object_of("homeassistant/sensor/pi-garden/old_one/config"),
            Some("old_one")
        );
        assert_eq!(d.object_of("homeassistant/sensor/other-pi/x/config"), None);
    }

    #[test]
    fn no_table_no_discovery() {
        let config = Config::parse(
            &CONFIG.replace("[homeassistant]\n", ""),
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(discovery(&config).is_none());
    }
}
