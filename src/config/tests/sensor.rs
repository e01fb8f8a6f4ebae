//! The `[[sensor]]` tables.

use super::*;

#[test]
fn calibration_values_must_be_finite() {
    for (key, value) in [
        ("scale", "inf"),
        ("offset", "-inf"),
        ("min", "nan"),
        ("max", "inf"),
    ] {
        let err = parse(&SEED.replace("decimals = 1", &format!("{key} = {value}"))).unwrap_err();
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
fn bad_duration_and_qos_are_located() {
    let err = parse(&SEED.replace("\"30s\"", "\"30 parsecs\"")).unwrap_err();
    assert!(
        err.starts_with("/etc/telemetryd/t.toml:13:12: interval: \"30 parsecs\" is not a duration"),
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
    let err = parse(&SEED.replace("decimals = 1", "deadband = 1\nheartbeat = \"1s\"")).unwrap_err();
    assert!(err.contains("at least the interval"), "{err}");
    let err = parse(&SEED.replace("decimals = 1", "average = 0")).unwrap_err();
    assert!(
        err.contains("average: 0 is out of range: expected a whole number from 1 to 10000"),
        "{err}"
    );
    let err = parse(&SEED.replace("decimals = 1", "max_step = 0")).unwrap_err();
    assert!(err.contains("max_step must be a positive number"), "{err}");
}
