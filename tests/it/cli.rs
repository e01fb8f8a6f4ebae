//! Command-line behaviour: a bad config is refused with exit status 78 (EX_CONFIG) and a
//! message naming the file, the line and the key, before the store is touched.

use std::time::Duration;

use telemetryd_testkit::*;

/// Runs the daemon on `config` (which must fail) and checks: exit 78 promptly, stderr names the
/// config path, the line (`line N`, `:N:` or `:N,`) of the first line containing `needle`, and
/// `key`; the buffer directory was not created.
fn expect_config_error(name: &str, config: impl Fn(&Env) -> String, needle: &str, key: &str) {
    let mut env = Env::new(name);
    let text = config(&env);
    env.write_config(&text);
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the test's config"))
        + 1;

    env.daemon.start();
    let status = env
        .daemon
        .wait_exit(Duration::from_secs(20))
        .expect("telemetryd still running with a bad config");
    let stderr = env.daemon.log();
    assert_eq!(
        status.code(),
        Some(78),
        "exit status for a bad config ({status}); output:\n{stderr}"
    );
    let path = env.daemon.config.display().to_string();
    assert!(
        stderr.contains(&path),
        "output does not name the config file {path}:\n{stderr}"
    );
    // Line and key must be named outside the path (the temp dir name is random).
    let rest = stderr.replace(&path, "<config>");
    assert!(
        mentions_line(&rest, line),
        "output does not name line {line}:\n{stderr}"
    );
    assert!(
        rest.contains(key),
        "output does not name the key `{key}`:\n{stderr}"
    );
    assert!(
        !env.buffer_path().exists(),
        "the buffer dir {} was created although the config is bad",
        env.buffer_path().display()
    );
}

/// "line 7", "Line 7", ":7:" or ":7," with no digit right before or after the number.
fn mentions_line(text: &str, line: usize) -> bool {
    let n = line.to_string();
    let lower = text.to_lowercase();
    let bytes = lower.as_bytes();
    lower.match_indices(&n).any(|(i, _)| {
        let end = i + n.len();
        if bytes.get(end).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        let before = &lower[..i];
        before.ends_with("line ")
            || before.ends_with("line: ")
            || (before.ends_with(':') && matches!(bytes.get(end), Some(b':' | b',')))
    })
}

fn sensor(extra: &str, interval: &str) -> String {
    format!(
        "[[sensor]]\n\
         name = \"outside\"\n\
         kind = \"file\"\n\
         path = \"/nonexistent/value\"\n\
         interval = \"{interval}\"\n\
         topic = \"t/outside\"\n\
         {extra}"
    )
}

#[test]
fn config_error_exit_78_unknown_key() {
    expect_config_error(
        "config_error_exit_78_unknown_key",
        |env| {
            env.config_for_port(1883, "", &sensor("", "30s")).replace(
                "keep_alive = ",
                "keepalive_interval = \"30s\"\nkeep_alive = ",
            )
        },
        "keepalive_interval",
        "keepalive_interval",
    );
}

#[test]
fn config_error_exit_78_unknown_sensor_key() {
    expect_config_error(
        "config_error_exit_78_unknown_sensor_key",
        |env| env.config_for_port(1883, "", &sensor("qos_level = 1\n", "30s")),
        "qos_level",
        "qos_level",
    );
}

#[test]
fn config_error_exit_78_wrong_type() {
    expect_config_error(
        "config_error_exit_78_wrong_type",
        |env| {
            env.config_for_port(1883, "", &sensor("", "30s"))
                .replace("port = 1883", "port = \"1883\"")
        },
        "port = ",
        "port",
    );
}

#[test]
fn config_error_exit_78_bad_duration() {
    expect_config_error(
        "config_error_exit_78_bad_duration",
        |env| env.config_for_port(1883, "", &sensor("", "every 30 seconds")),
        "interval = ",
        "interval",
    );
}

#[test]
fn config_error_exit_78_syntax() {
    expect_config_error(
        "config_error_exit_78_syntax",
        |env| {
            env.config_for_port(1883, "", &sensor("", "30s"))
                .replace("clean_session = false", "clean_session = false false")
        },
        "clean_session = ",
        "clean_session",
    );
}

#[test]
fn mentions_line_matches_common_formats() {
    assert!(mentions_line("TOML parse error at line 7, column 1", 7));
    assert!(mentions_line("/etc/t.toml:7:3: bad", 7));
    assert!(mentions_line("/etc/t.toml:7, bad", 7));
    assert!(!mentions_line("TOML parse error at line 17, column 1", 7));
    assert!(!mentions_line("line 71", 7));
    assert!(!mentions_line("port 7", 7));
}

/// `RUST_LOG` wins over the config's `log_level`: with `log_level = "error"` a run logs no
/// INFO line; the same config with `RUST_LOG=info` does. (No broker: nothing listens on the
/// port, which only adds WARN lines.)
#[test]
fn rust_log_overrides_log_level() {
    let mut env = Env::new("rust_log_overrides_log_level");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env
        .config_for_port(
            free_port(),
            "",
            &counter.sensor_toml("counter", "t/counter", "50ms", 1),
        )
        .replace("log_level = \"debug\"", "log_level = \"error\"");
    env.write_config(&cfg);

    for (run, rust_log) in [(1u64, None), (2, Some("info"))] {
        match rust_log {
            Some(v) => env.daemon.start_with_env(&[("RUST_LOG", v)]),
            None => env.daemon.start(),
        }
        counter.wait_value_at_least(run * 5, "the daemon takes readings");
        env.daemon.stop_expect_success();
        let log = env.daemon.log();
        let info = log
            .lines()
            .any(|l| l.contains(" INFO ") || l.contains("INFO "));
        match rust_log {
            None => assert!(!info, "INFO lines with log_level = \"error\":\n{log}"),
            Some(_) => assert!(info, "no INFO line with RUST_LOG=info:\n{log}"),
        }
    }
}
