//! Logging to journald: a priority prefix on every line, multi-line errors included.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use telemetryd_testkit::*;

use super::TOPIC;

/// Under journald (stderr is the stream named by JOURNAL_STREAM) every line carries its
/// sd-daemon priority and no timestamp or colour, so `journalctl -p warning` works.
#[test]
fn journald_priority_prefixes() {
    let env = Env::new("journald_priority_prefixes");
    // A config needs a sensor; this one reads a file that is there.
    let level = env.path("level");
    fs::write(&level, "1\n").unwrap();
    let sensor = format!(
        "[[sensor]]\nname = \"level\"\nkind = \"file\"\npath = {}\ninterval = \"1s\"\ntopic = \"test/level\"\nqos = 0\n",
        toml_str(&level.display().to_string())
    );
    let cfg = env.config_for_port(free_port(), "", &sensor);
    env.write_config(&cfg);
    let (log_path, log, stream) = journal_file(&env, "journal.log");
    let mut daemon = spawn_under_journald(&env, &stream, log);
    let read = || fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(DEADLINE, "a failed connection attempt in the log", || {
        read().contains("cannot connect")
    });
    daemon.signal(libc::SIGTERM);
    assert!(
        daemon
            .wait_timeout(SHUTDOWN_LIMIT)
            .is_some_and(|s| s.success())
    );
    let text = read();
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "line without a priority prefix: {line:?}\n{text}"
        );
        assert!(!line.contains('\u{1b}'), "colour codes in {line:?}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("started")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("cannot connect")),
        "{text}"
    );
    assert!(
        !text.contains("2026-") && !text.contains(" INFO "),
        "timestamps or levels in {text}"
    );
}

/// A config error spans several lines (the TOML error points at the key on a line of its
/// own). journald makes each line a record, so each needs the error priority, or
/// `journalctl -p warning` shows "line 14, column 12" without the key: both from
/// `telemetryd check` (the unit's ExecReload) and from the daemon refusing a SIGHUP'd config.
/// Seen in the system test (tests/system) under the real systemd.
#[test]
fn journald_multiline_config_errors_keep_their_priority() {
    let env = Env::new("journald_multiline_config_errors_keep_their_priority");
    // A config needs a sensor.
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config_for_port(
        free_port(),
        "",
        &counter.sensor_toml("counter", TOPIC, "1s", 0),
    );
    env.write_config(&cfg);
    let journal = |name: &str| journal_file(&env, name);
    let bad = cfg.replacen("keep_alive = \"5s\"", "keep_alive = \"soon\"", 1);
    assert_ne!(bad, cfg);
    let bad_path = env.path("bad.toml");
    fs::write(&bad_path, &bad).unwrap();
    let all_errors = |text: &str| {
        assert!(
            text.lines()
                .any(|l| l.starts_with("<3>") && l.contains("keep_alive = \"soon\"")),
            "the key's line is not at error priority:\n{text}"
        );
        for line in text.lines() {
            assert!(
                ["<3>", "<4>", "<6>", "<7>"]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "line without a priority prefix: {line:?}\n{text}"
            );
        }
    };

    let (path, file, stream) = journal("check.log");
    let status = Command::new(bin())
        .args(["check", "--quiet", "--config"])
        .arg(&bad_path)
        .env("JOURNAL_STREAM", &stream)
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(78));
    all_errors(&fs::read_to_string(&path).unwrap());

    let (path, file, stream) = journal("daemon.log");
    let mut daemon = spawn_under_journald(&env, &stream, file);
    let read = || fs::read_to_string(&path).unwrap_or_default();
    wait_until(DEADLINE, "started", || read().contains("started"));
    env.write_config(&bad);
    daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the refused reload in the log", || {
        read().contains("previous config")
    });
    daemon.signal(libc::SIGTERM);
    assert!(
        daemon
            .wait_timeout(SHUTDOWN_LIMIT)
            .is_some_and(|s| s.success())
    );
    all_errors(&read());
}

/// A file that stands for journald's stream: its path, the file, and the `JOURNAL_STREAM`
/// value (`device:inode`) by which the daemon recognises it as its stderr.
fn journal_file(env: &Env, name: &str) -> (std::path::PathBuf, File, String) {
    let path = env.path(name);
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    (path, file, format!("{}:{}", meta.dev(), meta.ino()))
}

/// The daemon on `env`'s config with its stderr on that stream, as under systemd.
fn spawn_under_journald(env: &Env, stream: &str, stderr: File) -> Proc {
    Proc::spawn(
        "telemetryd",
        Command::new(bin())
            .arg("--config")
            .arg(&env.daemon.config)
            .env_remove("RUST_LOG")
            .env("JOURNAL_STREAM", stream)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr),
    )
}
