//! Discovery messages built from configs, the shipped example included.
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

/// The shipped example's two sensors: neither goes unavailable while it works (the old
/// rule gave `outside` 180 s against a 15-minute heartbeat, `cpu` 180 s against one
/// publish per 5 minutes).
#[test]
fn expire_after_follows_the_publishing_policy() {
    let text = format!(
        "{CONFIG}[[sensor]]\nname = \"steady\"\nkind = \"file\"\npath = \"/x\"\n\
         interval = \"1m\"\ntopic = \"t/steady\"\ndeadband = 0.5\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let d = discovery(&config).unwrap();
    let entity =
        |i: usize| -> Value { serde_json::from_slice(&d.announcements[i].payload).unwrap() };
    assert_eq!(entity(0)["expire_after"], 90);
    assert_eq!(entity(1)["expire_after"], 60 + 120);
    assert!(
        entity(2).get("expire_after").is_none(),
        "a deadband without heartbeat never expires"
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/homeassistant.toml");
    let config = Config::load(&shipped).unwrap();
    let d = discovery(&config).unwrap();
    let by_name = |name: &str| -> Value {
        d.announcements
            .iter()
            .map(|a| serde_json::from_slice::<Value>(&a.payload).unwrap())
            .find(|e| e["unique_id"] == format!("pi-garden_{name}"))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(by_name("outside")["expire_after"], (15 + 1 + 1 + 2) * 60);
    assert_eq!(by_name("cpu")["expire_after"], 15 * 60);
}

#[test]
fn overrides_flags_and_diagnostics() {
    let text = r#"
[mqtt]
client_id = "pi"
[homeassistant]
retain_states = true
[[sensor]]
name = "outside"
kind = "ds18b20"
device = "28-1"
interval = "1m"
topic = "t/outside"
decimals = 1
retain = false
[sensor.ha]
name = "Outside temperature"
icon = "mdi:thermometer"
suggested_display_precision = 2
expire_after = "0s"
[[sensor]]
name = "power"
kind = "system"
metric = "under_voltage"
interval = "1m"
topic = "t/power"
ha = { entity_category = "diagnostic" }
[[sensor]]
name = "wifi"
kind = "system"
metric = "wifi_signal"
interval = "1m"
topic = "t/wifi"
format = "json"
"#;
    let config = Config::parse(text, Path::new("t.toml")).unwrap();
    assert!(!config.sensors[0].retain, "an explicit retain = false wins");
    assert!(
        config.sensors[1].retain,
        "retain_states makes the rest retained"
    );
    let d = discovery(&config).unwrap();
    let topics: Vec<&str> = d.announcements.iter().map(|a| a.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "homeassistant/sensor/pi/outside/config",
            "homeassistant/binary_sensor/pi/power/config",
            "homeassistant/sensor/pi/wifi/config",
            "homeassistant/sensor/pi/telemetryd_buffered/config",
            "homeassistant/sensor/pi/telemetryd_oldest_unsent_age/config",
            "homeassistant/binary_sensor/pi/telemetryd_connected/config",
        ]
    );
    let e = |i: usize| -> Value { serde_json::from_slice(&d.announcements[i].payload).unwrap() };
    let outside = e(0);
    assert_eq!(outside["name"], "Outside temperature");
    assert_eq!(outside["icon"], "mdi:thermometer");
    assert_eq!(outside["suggested_display_precision"], 2);
    assert!(
        outside.get("expire_after").is_none(),
        "\"0s\": never expires"
    );
    let power = e(1);
    assert_eq!(power["device_class"], "problem");
    assert_eq!(power["entity_category"], "diagnostic");
    assert_eq!(
        power["value_template"],
        "{{ 'ON' if value | float(0) > 0 else 'OFF' }}"
    );
    assert!(power.get("unit_of_measurement").is_none() && power.get("state_class").is_none());
    let wifi = e(2);
    assert_eq!(wifi["device_class"], "signal_strength");
    assert_eq!(wifi["unit_of_measurement"], "dBm");
    assert_eq!(wifi["value_template"], "{{ value_json.value }}");
    let buffered = e(3);
    assert_eq!(buffered["state_topic"], "telemetryd/pi/stats");
    assert_eq!(buffered["entity_category"], "diagnostic");
    assert_eq!(buffered["unique_id"], "pi_telemetryd_buffered");
    // stats every 5 minutes: 15 minutes.
    assert_eq!(buffered["expire_after"], 900);
    assert_eq!(e(5)["device_class"], "connectivity");
    let topics = [
        ("t/outside", None),
        ("t/power", Some(180)),
        ("t/wifi", Some(180)),
    ];
    assert_eq!(d.state_topics, topics.map(|(t, e)| (t.to_owned(), e)));
    assert_eq!(
        d.object_of("homeassistant/binary_sensor/pi/gone/config"),
        Some("gone")
    );
    // No stats topic, or diagnostics off: no diagnostic entities.
    for change in [
        "[mqtt]\nstats_topic = \"\"",
        "[homeassistant]\ndiagnostics = false",
    ] {
        let (table, key) = change.split_once('\n').unwrap();
        let text = text.replacen(&format!("{table}\n"), &format!("{table}\n{key}\n"), 1);
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!(
            discovery(&config).unwrap().announcements.len(),
            3,
            "{change}"
        );
    }
    let bad = text.replace("icon = \"mdi:thermometer\"", "icon = \"thermometer\"");
    let err = Config::parse(&bad, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.toml:14:1: sensor \"outside\": ha.icon"),
        "{err}"
    );
}

#[test]
fn ha_settings_without_the_table_are_warned_about() {
    let text = CONFIG.replace("[homeassistant]\n", "") + "[sensor.ha]\nname = \"Humidity\"\n";
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert_eq!(
        config.warnings,
        [
            "sensor \"bme280 humidity\" has Home Assistant settings (`ha`) but there is no [homeassistant] table: they do nothing"
        ]
    );
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
