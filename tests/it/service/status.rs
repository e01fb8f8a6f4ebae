//! What the daemon tells about itself: systemd notifications (READY, STATUS, WATCHDOG,
//! STOPPING), its availability topic and self-metrics.

use std::fs::{self};
use std::process::Command;

use telemetryd_testkit::*;

use super::TOPIC;

/// READY=1 once running, a STATUS= line that says connected and how much is buffered,
/// WATCHDOG=1 at half of WATCHDOG_USEC while all is well, STOPPING=1 on the way out.
#[test]
fn systemd_notifications() {
    let mut env = Env::with_broker("systemd_notifications");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "100ms", 1));
    env.write_config(&cfg);
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    env.daemon
        .start_with_env(&[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1000000")]);

    let connected = format!("STATUS=connected to 127.0.0.1:{}", env.port());
    wait_until(
        DEADLINE,
        "READY=1, a connected status and three watchdog pings",
        || {
            let lines = notify.lines();
            lines.contains(&"READY=1".to_owned())
                && lines
                    .iter()
                    .any(|l| l.starts_with(&connected) && l.contains(" buffered, 0 dropped"))
                && notify.count("WATCHDOG=1") >= 3
        },
    );
    env.daemon.stop_expect_success();
    let lines = notify.lines();
    assert!(lines.contains(&"STOPPING=1".to_owned()), "{lines:?}");
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    let first_ping = lines.iter().position(|l| l == "WATCHDOG=1").unwrap();
    assert!(ready < first_ping, "READY=1 must come first: {lines:?}");
}

/// With `servers`, STATUS names the server we are on: waiting for the first (it does not
/// answer), then connected to the second.
#[test]
fn status_names_the_current_server() {
    let mut env = Env::with_broker("status_names_the_current_server");
    let (dead, live) = (free_port(), env.port());
    // A config needs a sensor.
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config("", &counter.sensor_toml("counter", TOPIC, "1s", 0)),
        &[(
            &format!("host = \"127.0.0.1\"\nport = {live}\n"),
            &format!("servers = [\"127.0.0.1:{dead}\", \"127.0.0.1:{live}\"]\n"),
        )],
    );
    env.write_config(&cfg);
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);
    let connected = format!("STATUS=connected to 127.0.0.1:{live};");
    wait_until(DEADLINE, "a status naming the second server", || {
        notify.lines().iter().any(|l| l.starts_with(&connected))
    });
    env.daemon.stop_expect_success();
}

/// Availability: a retained `online` at connect, the Last Will `offline` when the daemon dies,
/// an explicit `offline` on a clean stop. Self-metrics: a retained JSON every stats_interval.
#[test]
fn availability_and_self_metrics() {
    let mut env = Env::with_broker("availability_and_self_metrics");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config(
        "stats_interval = \"1s\"\n",
        &counter.sensor_toml("counter", TOPIC, "100ms", 1),
    );
    env.write_config(&cfg);
    let status = "telemetryd/td-availability_and_self_metrics/status";
    let stats = "telemetryd/td-availability_and_self_metrics/stats";

    env.daemon.start();
    wait_until(DEADLINE, "online", || {
        env.sub().payloads(status) == ["online"]
    });
    wait_until(DEADLINE, "a stats message", || {
        !env.sub().payloads(stats).is_empty()
    });
    let snapshot: serde_json::Value = serde_json::from_str(&env.sub().payloads(stats)[0]).unwrap();
    for key in [
        "buffered",
        "oldest_unsent_age_s",
        "readings",
        "published",
        "dropped",
        "qos0_dropped",
        "read_errors",
        "reconnects",
        "uptime_s",
    ] {
        assert!(snapshot.get(key).is_some(), "no {key} in {snapshot}");
    }
    assert!(snapshot["readings"].as_u64().unwrap() > 0, "{snapshot}");
    assert_eq!(snapshot["connected"], true, "{snapshot}");

    // Killed: the broker publishes the Last Will.
    env.daemon.sigkill();
    wait_until(DEADLINE, "the Last Will", || {
        env.sub().payloads(status) == ["online", "offline"]
    });
    env.daemon.start();
    wait_until(DEADLINE, "online again", || {
        env.sub().payloads(status).len() == 3
    });
    // Stopped cleanly: no Last Will, so the daemon says it itself.
    env.daemon.stop_expect_success();
    wait_until(DEADLINE, "offline on a clean stop", || {
        env.sub().payloads(status) == ["online", "offline", "online", "offline"]
    });
    // Retained: a subscriber that comes later still learns the daemon is offline.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.port().to_string(),
            "-t",
            status,
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "offline");
}

/// A daemon whose sensors fail must not look healthy: STATUS (and the summary line) say how
/// many of them fail and name them, and stop saying so once they read again.
#[test]
fn status_names_failing_sensors() {
    let mut env = Env::with_broker("status_names_failing_sensors");
    let counter = Counter::new(env.dir(), "counter");
    let missing = env.path("not-wired-yet");
    let sensors = format!(
        "{}\n[[sensor]]\nname = \"outside\"\nkind = \"file\"\npath = {}\ninterval = \"100ms\"\ntopic = \"test/outside\"\n",
        counter.sensor_toml("counter", TOPIC, "100ms", 1),
        toml_str(&missing.display().to_string())
    );
    env.write_config(&env.config("stats_interval = \"200ms\"\n", &sensors));
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);

    let connected = format!("STATUS=connected to 127.0.0.1:{}; ", env.port());
    let status_ends = |end: &str| {
        notify
            .lines()
            .iter()
            .any(|l| l.starts_with(&connected) && l.ends_with(end))
    };
    wait_until(DEADLINE, "STATUS naming the failing sensor", || {
        status_ends(" 0 dropped; 1 of 2 sensors failing: outside")
    });
    wait_until(DEADLINE, "a summary naming it", || {
        env.daemon
            .log()
            .lines()
            .any(|l| l.contains("summary") && l.contains("sensors_failing=1 failing=outside "))
    });

    // Wired up: it reads, and the status says all is well.
    fs::write(&missing, "12.5\n").unwrap();
    wait_until(DEADLINE, "STATUS with every sensor ok", || {
        status_ends(" 0 dropped; 2 sensors ok")
    });
    env.daemon.stop_expect_success();
}
