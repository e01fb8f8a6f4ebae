//! The config's tests, by table; here the seed config every one of them edits.

use super::*;

mod buffer;
mod homeassistant;
mod located;
mod mqtt;
mod sensor;
mod topics;

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
