//! SIGHUP reloads: a new config applied without a lost reading, a bad one refused, a lowered
//! bound over a big backlog.

use std::fs::{self};
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use super::TOPIC;

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

/// `log_level` changes on SIGHUP, both ways: the reload's own lines show which level was in
/// force before it ("reloading the config", info) and after it ("config reloaded", info).
#[test]
fn sighup_changes_the_log_level() {
    let mut env = Env::with_broker("sighup_changes_the_log_level");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", "test/a", "100ms", 1));
    let at = |level: &str| {
        tweak(
            cfg.clone(),
            &[("log_level = \"debug\"", &format!("log_level = \"{level}\""))],
        )
    };
    env.write_config(&at("warn"));
    env.daemon.start();
    wait_until(DEADLINE, "readings on test/a", || {
        !env.sub().values("test/a").is_empty()
    });
    let count = |env: &Env, line: &str| env.daemon.log().matches(line).count();

    // warn -> info: the line before the switch is not logged, the one after it is.
    env.write_config(&at("info"));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "`config reloaded` at info", || {
        count(&env, "config reloaded") == 1
    });
    assert_eq!(
        count(&env, "reloading the config"),
        0,
        "{}",
        env.daemon.log()
    );

    // info -> warn: now the line before is logged and the one after is not.
    env.write_config(&at("warn"));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "`reloading the config` at info", || {
        count(&env, "reloading the config") == 1
    });
    // warn -> info again: its `config reloaded` is the second one, so the previous reload's
    // was not logged.
    env.write_config(&at("info"));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the third reload's `config reloaded`", || {
        count(&env, "config reloaded") >= 2
    });
    let log = env.daemon.log();
    assert_eq!(count(&env, "config reloaded"), 2, "{log}");
    assert_eq!(count(&env, "reloading the config"), 1, "{log}");
    env.daemon.stop_expect_success();
}
