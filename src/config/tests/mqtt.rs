//! The `[mqtt]` table, its TLS and credentials.

use super::*;
use crate::config::mqtt::{DEFAULT_SESSION_EXPIRY, default_client_id};

#[test]
fn default_client_id_is_stable_and_named() {
    let c =
        parse("[[sensor]]\nname='a'\nkind='file'\npath='/x'\ninterval='1s'\ntopic='a'\n").unwrap();
    assert!(c.mqtt.client_id.starts_with("telemetryd"));
    assert_eq!(c.mqtt.client_id, default_client_id());
}

#[test]
fn rejects_bad_mqtt_settings() {
    let err = parse(&SEED.replace("client_id = \"pi-garden\"", "client_id = \"\"")).unwrap_err();
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

#[test]
fn servers_is_a_failover_list_instead_of_host() {
    use crate::config::Server;
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
