//! Every mistake names the file, the line, the column and the key.

use super::*;
use crate::config::raw::CONFIG_MAX;

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
fn unknown_key_names_file_line_and_key() {
    let err = parse(&SEED.replace("decimals = 1", "decimal = 1")).unwrap_err();
    assert!(
        err.starts_with("/etc/telemetryd/t.toml:15:1: unknown field `decimal`"),
        "{err}"
    );
    assert!(err.contains("\n 15 | decimal = 1\n    | ^^^^^^^"), "{err}");
}

/// The mistakes of issue 14, each with its place and its message.
#[test]
fn every_config_mistake_names_its_line_key_and_what_to_write() {
    let sensor_line = |extra: &str| parse(&SEED.replace("decimals = 1", extra)).expect_err(extra);
    let mqtt_line =
        |extra: &str| parse(&SEED.replace("[mqtt]", &format!("[mqtt]\n{extra}"))).expect_err(extra);
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
        err.starts_with("/etc/telemetryd/t.toml:1:16: topic_prefix: unknown placeholder {room}"),
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
