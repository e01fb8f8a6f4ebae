//! Living under systemd: readiness and watchdog notifications, SIGHUP reloads, journald log
//! lines, and the `check`, `sensors` and `buffer` subcommands.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";

/// Collects what the daemon sends to a fake `NOTIFY_SOCKET`.
struct NotifySocket {
    path: std::path::PathBuf,
    /// Each line with when it arrived.
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        // Ends when the test's temp dir (and so the socket file) is gone and reads keep timing
        // out; it holds nothing that matters.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            for _ in 0..600 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let now = Instant::now();
                    sink.lock()
                        .unwrap()
                        .extend(msg.lines().map(|l| (now, l.to_owned())));
                }
            }
        });
        NotifySocket { path, got }
    }

    fn lines(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// When each `line` arrived.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(_, l)| l == line)
            .map(|(t, _)| *t)
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}

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

/// A reload that lowers `max_messages` far below a big backlog (the broker away): the excess
/// is dropped in bounded batches, so the runtime thread, which takes the outbox lock for the
/// status line, keeps feeding the watchdog all along (it froze for the whole drop when the
/// excess was popped under one lock), and the final depth and the dropped total are exact.
#[test]
fn lowering_the_bound_over_a_big_backlog_keeps_the_daemon_answering() {
    const PREFILL: u64 = 150_000;
    const BOUND: u64 = 1000;
    let name = "lowering_the_bound_over_a_big_backlog";
    let mut env = Env::new(name);
    let took = prefill_store(&env.buffer_path(), "test/backlog", PREFILL);
    eprintln!("{name}: prefilled {PREFILL} readings in {took:?}");
    let counter = Counter::new(env.dir(), "counter");
    // No broker: nothing is acknowledged, so every reading stays in the store.
    let cfg = env.config_for_port(
        free_port(),
        "",
        &counter.sensor_toml("counter", TOPIC, "100ms", 1),
    );
    env.write_config(&cfg);
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    env.daemon
        .start_with_env(&[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1000000")]);
    wait_until(DEADLINE, "READY=1 and a watchdog ping", || {
        notify.lines().contains(&"READY=1".to_owned()) && notify.count("WATCHDOG=1") >= 1
    });
    counter.wait_value_at_least(3, "readings committed over the backlog");

    env.write_config(&tweak(
        cfg,
        &[("max_messages = 500000", &format!("max_messages = {BOUND}"))],
    ));
    let reloaded = Instant::now();
    env.daemon.signal(libc::SIGHUP);
    let settled = format!(" {BOUND} buffered");
    wait_until(
        Duration::from_secs(120),
        "the backlog is cut to the new bound",
        || {
            env.daemon.assert_running();
            notify
                .lines()
                .iter()
                .any(|l| l.starts_with("STATUS=") && l.contains(&settled))
        },
    );
    let done = Instant::now();
    eprintln!("{name}: cut {PREFILL} to {BOUND} in {:?}", done - reloaded);
    // The watchdog pings every 0.5 s (half of WATCHDOG_USEC); over the whole drop none may be
    // missing for long (3 s leaves room for a loaded machine; 0.57 s measured). A frozen
    // runtime thread misses them for the length of the drop (6.5 s here).
    let mut pings: Vec<Instant> = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= reloaded && *t <= done)
        .collect();
    pings.insert(0, reloaded);
    pings.push(done);
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!("{name}: longest time without a watchdog ping: {longest:?}");
    assert!(
        longest < Duration::from_secs(3),
        "no watchdog ping for {longest:?} while the backlog was cut"
    );

    let n = counter.pause();
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), BOUND);
    // The last drop line (written at the stop) has the exact total.
    let log = env.daemon.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("buffer full: dropped the oldest readings"))
        .unwrap_or_else(|| panic!("no drop line:\n{log}"));
    let total: u64 = log_field(line, "total").unwrap().parse().unwrap();
    assert_eq!(total, PREFILL + n - BOUND, "{line}");
}

/// A store that opens below its durable mark (sled lost its log's tail) holding 150,000
/// readings: carrying them into a new store takes seconds, during which the daemon tells
/// systemd it is still starting (`EXTEND_TIMEOUT_USEC=`, before `READY=1`). A SIGKILL in the
/// middle of that copy loses nothing: the next start throws the partial copy away (or finishes
/// a complete one) and every reading is in the store, with one damaged store kept aside.
#[test]
fn a_slow_recovery_extends_the_start_timeout_and_survives_a_kill() {
    const PREFILL: u64 = 150_000;
    let name = "a_slow_recovery_extends_the_start_timeout";
    let mut env = Env::new(name);
    let buffer = env.buffer_path();
    prefill_store(&buffer, "test/backlog", PREFILL);
    // A durable mark far above what the store saved: as if sled had dropped its last commits.
    let mark = (unix_now() * 2e6) as u64;
    let mut bytes = mark.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(mark ^ 0x7465_6c65_6d65_7472).to_be_bytes());
    fs::write(buffer.join("telemetryd-durable-mark"), bytes).unwrap();
    let file = env.path("level");
    fs::write(&file, "1\n").unwrap();
    // QoS 0 and no broker: nothing is added to the store or taken from it.
    let sensor = format!(
        "[[sensor]]\nname = \"level\"\nkind = \"file\"\npath = {}\ninterval = \"1s\"\ntopic = \"test/level\"\nqos = 0\n",
        toml_str(&file.display().to_string())
    );
    env.write_config(&env.config_for_port(free_port(), "", &sensor));
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    let staging = env.path("buffer.recovering");

    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);
    // Copying 150,000 readings takes seconds in a debug build, more on a loaded machine.
    let slow = Duration::from_secs(120);
    wait_until(slow, "the copy of the survivors has begun", || {
        env.daemon.assert_running();
        staging.exists()
    });
    env.daemon.sigkill();
    let complete = env.path("buffer.recovering.done").exists();
    eprintln!(
        "{name}: killed with the copy {}",
        if complete { "complete" } else { "partial" }
    );

    let before = notify.lines().len();
    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);
    wait_until(slow, "READY=1 after the recovery", || {
        env.daemon.assert_running();
        notify.lines()[before..].contains(&"READY=1".to_owned())
    });
    let lines = notify.lines()[before..].to_vec();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert!(
        lines[..ready].contains(&"EXTEND_TIMEOUT_USEC=30000000".to_owned()),
        "no EXTEND_TIMEOUT_USEC before READY=1 during a long recovery: {lines:?}"
    );
    let log = env.daemon.log();
    assert!(
        log.contains(
            "a recovery of the damaged store was interrupted before its copy was complete"
        ) || log.contains("finished a recovery of the damaged store that was interrupted"),
        "the interrupted recovery is not logged:\n{log}"
    );
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&buffer),
        PREFILL,
        "every survivor is in the store"
    );
    let names: Vec<String> = fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("buffer."))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one damaged store aside, no staging: {names:?}"
    );
    assert!(names[0].starts_with("buffer.damaged-"), "{names:?}");
}

/// SIGHUP with a valid config applies it: a changed topic, an added sensor and new MQTT
/// settings (a reconnect), without losing or reordering a reading; an invalid config is
/// logged with its place and the daemon goes on with the old one.
#[test]
fn sighup_reload() {
    let mut env = Env::with_broker("sighup_reload");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", "test/a", "50ms", 1));
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(DEADLINE, "readings on test/a", || {
        env.sub().values("test/a").len() >= 5
    });

    // Invalid: the daemon says why and where, and keeps publishing on test/a.
    env.write_config(&format!("{cfg}bogus_key = 1\n"));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the reload error in the log", || {
        env.daemon.log().contains("reload failed")
    });
    let log = env.daemon.log();
    assert!(
        log.contains("unknown field `bogus_key`") && log.contains("telemetryd.toml"),
        "{log}"
    );
    let before = env.sub().values("test/a").len();
    wait_until(
        DEADLINE,
        "more readings on test/a after the failed reload",
        || env.sub().values("test/a").len() >= before + 5,
    );

    // Valid: new topic, one more sensor, another client id.
    let file = env.path("level");
    fs::write(&file, "42.5\n").unwrap();
    let extra = format!(
        "[[sensor]]\nname = \"level\"\nkind = \"file\"\npath = {}\ninterval = \"100ms\"\ntopic = \"test/level\"\n",
        toml_str(&file.display().to_string())
    );
    let new_cfg = env.config(
        "",
        &format!(
            "{}\n{extra}",
            counter.sensor_toml("counter", "test/b", "50ms", 1)
        ),
    );
    env.write_config(&new_cfg.replace(
        "client_id = \"td-sighup_reload\"",
        "client_id = \"td-sighup_reload-2\"",
    ));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "readings on test/b and test/level", || {
        env.sub().values("test/b").len() >= 5 && !env.sub().payloads("test/level").is_empty()
    });
    let log = env.daemon.log();
    assert!(
        log.contains("MQTT settings changed: reconnecting") && log.contains("config reloaded"),
        "{log}"
    );
    assert_eq!(env.sub().payloads("test/level")[0], "42.5");

    // Every counter value, across both topics, arrived once at least and in order.
    let upto = counter.pause();
    wait_until(DEADLINE, "every counter value delivered", || {
        let mut all = env.sub().values("test/a");
        all.extend(env.sub().values("test/b"));
        SeqReport::of(&all).covers(upto, 0)
    });
    let mut all = env.sub().values("test/a");
    all.extend(env.sub().values("test/b"));
    assert_in_order(&all, upto, 0);
    env.daemon.stop_expect_success();
}

/// `telemetryd sensors` on a fake sysfs tree prints blocks that, pasted into a config, pass
/// `telemetryd check`, which reads each one and shows its value.
#[test]
fn sensors_then_check_on_a_fake_sysfs() {
    let env = Env::new("sensors_then_check_on_a_fake_sysfs");
    let root = env.path("sys");
    write_w1_slave(&root.join("bus/w1/devices/28-0316a2795aff/w1_slave"), 28437);
    let iio = root.join("bus/iio/devices/iio:device0");
    fs::create_dir_all(&iio).unwrap();
    fs::write(iio.join("name"), "bme280\n").unwrap();
    fs::write(iio.join("in_pressure_input"), "101.325\n").unwrap();
    let zone = root.join("class/thermal/thermal_zone0");
    fs::create_dir_all(&zone).unwrap();
    fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    fs::write(zone.join("temp"), "48312\n").unwrap();
    let proc = env.path("proc");
    fs::create_dir_all(&proc).unwrap();
    fs::write(proc.join("loadavg"), "0.42 0.35 0.30 1/123 4567\n").unwrap();
    fs::write(
        proc.join("meminfo"),
        "MemTotal: 4000000 kB\nMemAvailable: 1024000 kB\n",
    )
    .unwrap();

    let out = Command::new(bin())
        .args(["sensors", "--sysfs-root"])
        .arg(&root)
        .arg("--procfs-root")
        .arg(&proc)
        .output()
        .unwrap();
    assert!(out.status.success());
    let blocks = String::from_utf8(out.stdout).unwrap();
    assert!(
        blocks.contains("# 1-Wire thermometer 28-0316a2795aff: now 28.437 °C"),
        "{blocks}"
    );
    assert!(blocks.contains("channel = \"pressure\""), "{blocks}");
    // The system metrics this machine has; the ones it lacks (no /proc/uptime, no Wi-Fi, not
    // a Pi) are left out.
    assert!(
        blocks.contains("# system: memory available: now 1000 MiB\n[[sensor]]\nname = \"memory_available\"\nkind = \"system\"\nmetric = \"memory_available\"\n"),
        "{blocks}"
    );
    assert!(!blocks.contains("metric = \"uptime\""), "{blocks}");
    assert!(!blocks.contains("metric = \"under_voltage\""), "{blocks}");

    let top = format!(
        "sysfs_root = {}\nprocfs_root = {}\n",
        toml_str(&root.display().to_string()),
        toml_str(&proc.display().to_string())
    );
    env.write_config(&env.config_for_port(1, &top, &blocks));
    let (out, table) = check(&env);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Column widths follow the longest name: compare words.
    let words: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for row in [
        "28-0316a2795aff 28.4",
        "bme280_pressure 1013.3",
        "cpu-thermal 48.3",
        "load1 0.4",
        "memory_used 74.4",
        "cpu_temperature 48.3",
    ] {
        assert!(
            words.iter().any(|w| w.starts_with(row)),
            "no {row:?} in\n{table}"
        );
    }
    assert!(
        !env.buffer_path().exists(),
        "check must not create the buffer"
    );

    // A sensor that fails makes check fail, with the reason.
    fs::remove_file(zone.join("temp")).unwrap();
    let (out, table) = check(&env);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains("cpu-thermal: ") && table.contains("no such file"),
        "{table}"
    );
}

/// Runs `telemetryd check` on the env's config (no broker: port 1): its output and its
/// stdout as text.
fn check(env: &Env) -> (std::process::Output, String) {
    let out = Command::new(bin())
        .arg("check")
        .arg("--no-broker")
        .arg("--config")
        .arg(&env.daemon.config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, table)
}

/// `telemetryd buffer` says plainly when the daemon holds the buffer, and reports depth and
/// the oldest reading once it is stopped.
#[test]
fn buffer_subcommand() {
    let mut env = Env::new("buffer_subcommand");
    let counter = Counter::new(env.dir(), "counter");
    // No broker on this port: everything is buffered.
    let cfg = env.config_for_port(
        free_port(),
        "",
        &counter.sensor_toml("counter", TOPIC, "20ms", 1),
    );
    env.write_config(&cfg);
    env.daemon.start();
    counter.wait_value_at_least(10, "readings buffered");

    let config = env.daemon.config.clone();
    let buffer = || {
        Command::new(bin())
            .arg("buffer")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = buffer();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use by the running daemon"), "{stderr}");

    env.daemon.stop_expect_success();
    let out = buffer();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waiting: u64 = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("waiting:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no depth in\n{report}"));
    assert!(waiting >= 10, "{report}");
    assert!(
        report.contains(&format!("topic {TOPIC}")) && report.contains(" ago)"),
        "{report}"
    );
}

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

/// systemd stops the unit as its `KillMode=` says: with the default (control-group) every
/// process of the unit gets SIGTERM, a command sensor's child included, and its read failed
/// with "killed by signal 15" at every stop. With `KillMode=mixed` only the daemon gets it,
/// and stops the child itself: no failure is logged and no child is left behind.
#[test]
fn a_stop_under_the_units_kill_mode_logs_no_failed_read() {
    let unit = include_str!("../../systemd/telemetryd.service");
    let mixed = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KillMode="))
        .next_back()
        .is_some_and(|m| m.trim() == "mixed");
    let mut env = Env::new("a_stop_under_the_units_kill_mode");
    let pidfile = env.path("child.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let sensor = format!(
        "[[sensor]]\nname = \"slow\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {}]\ntimeout = \"60s\"\ninterval = \"1s\"\ntopic = \"test/slow\"\n",
        toml_str(&script)
    );
    env.write_config(&env.config_for_port(free_port(), "", &sensor));
    env.daemon.start();
    let child: i32 = wait_for(DEADLINE, "the sensor's child runs", || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(child));

    if !mixed {
        // control-group: the child's SIGTERM may come first; here it does.
        // SAFETY: kill(2) with a pid this test started (through the daemon).
        unsafe { libc::kill(child, libc::SIGTERM) };
        wait_until(DEADLINE, "the child ends", || !alive(child));
    }
    env.daemon.stop_expect_success();
    let log = env.daemon.log();
    assert!(
        !log.contains("sensor read failed"),
        "a failed read logged at the stop (KillMode=mixed: {mixed}):\n{log}"
    );
    assert!(
        !alive(child),
        "the sensor's child {child} outlived the daemon"
    );
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
