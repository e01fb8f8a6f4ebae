//! The disk fails the store: a store path that cannot be created, a store that cannot be
//! written (no crash, no busy loop, live readings go on).

use std::fs;
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use super::{TOPIC, timed_lines};

/// CPU time the daemon used over `window`, as a fraction of one core.
fn cpu_share(pid: u32, window: impl FnOnce()) -> f64 {
    let (c0, t0) = (cpu_time(pid).unwrap(), Instant::now());
    window();
    let (c1, t1) = (cpu_time(pid).unwrap(), Instant::now());
    (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64()
}

/// A store path that cannot be created (below a regular file): a clear error naming the path,
/// no crash, no busy loop (CPU stays low, reopening backs off), readings still published live
/// while connected, in order and complete; once the path can be created the store is opened.
#[test]
fn store_path_cannot_be_created() {
    let name = "store_path_cannot_be_created";
    let mut env = Env::with_broker(name);
    let blocker = env.path("state");
    fs::write(&blocker, b"a file where a directory should be").unwrap();
    let buffer = blocker.join("buffer");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config("", &counter.sensor_toml("counter", TOPIC, "50ms", 1)),
        &[(
            &toml_str(&env.buffer_path().display().to_string()),
            &toml_str(&buffer.display().to_string()),
        )],
    );
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(DEADLINE, "an error naming the store", || {
        env.daemon.log().lines().any(|l| {
            l.contains("ERROR")
                && l.contains("cannot open the store")
                && l.contains(&buffer.display().to_string())
        })
    });
    let pid = env.daemon.pid();
    let share = cpu_share(pid, || {
        let at = counter.value();
        counter.wait_value_at_least(at + 200, "200 readings (10 s) with no store");
    });
    env.daemon.assert_running();
    // Reopening backs off from 2 s, doubling: attempts at about 2, 6 and 14 s.
    let attempts = env.daemon.log().matches("store still unavailable").count();
    eprintln!(
        "{name}: {:.1}% CPU, {attempts} reopen attempts in ~11 s",
        share * 100.0
    );
    assert!(
        share < 0.25,
        "{:.0}% of a core with no store: a busy loop?",
        share * 100.0
    );
    assert!(
        attempts <= 3,
        "{attempts} attempts to reopen the store in ~11 s: no backoff?"
    );
    let upto = counter.value();
    env.wait_delivered(TOPIC, upto, 0);

    fs::remove_file(&blocker).unwrap();
    wait_until(
        Duration::from_secs(70),
        "the store is opened once it can be",
        || env.daemon.log().contains("the store is writable again"),
    );
    assert!(buffer.join("db").exists());
    let sub = env.sub.as_ref().unwrap();
    drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &|| sub.values(TOPIC),
        TOPIC,
        0,
    );
}

/// A store that cannot be written: the daemon runs with RLIMIT_FSIZE = 64 KiB, so once sled's
/// file reaches it every write fails (EFBIG, like a full disk). The daemon must say so
/// clearly, not crash, not spin (CPU time stays low, and the failing store is not retried in
/// a tight loop), and keep publishing live readings, complete and in order, while connected.
#[test]
fn store_cannot_be_written() {
    let name = "store_cannot_be_written";
    let mut env = Env::with_broker(name);
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "20ms", 1));
    env.write_config(&cfg);
    env.daemon.start_with_fsize_limit(64 * 1024);
    let failed_at = wait_for(Duration::from_secs(60), "the store fails to write", || {
        timed_lines(&env.daemon.log(), "the store cannot be written")
            .first()
            .map(|(t, _)| *t)
    });
    let pid = env.daemon.pid();
    let share = cpu_share(pid, || {
        let at = counter.value();
        counter.wait_value_at_least(at + 400, "400 readings (8 s) with a failing store");
    });
    env.daemon.assert_running();
    let log = env.daemon.log();
    let failures: Vec<f64> = timed_lines(&log, "the store cannot be written")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let span = unix_now() - failed_at;
    let error_lines = log.lines().filter(|l| l.contains("ERROR")).count();
    eprintln!(
        "{name}: {:.1}% CPU; {} store failures in {span:.1} s; {error_lines} ERROR lines",
        share * 100.0,
        failures.len()
    );
    assert!(
        share < 0.25,
        "{:.0}% of a core: a busy loop?",
        share * 100.0
    );
    assert!(
        failures.len() as f64 <= span / 1.5 + 1.0,
        "{} store failures in {span:.1} s: retried in a tight loop",
        failures.len()
    );
    let upto = counter.value();
    env.wait_delivered(TOPIC, upto, 0);
    env.drain_and_stop(&counter, TOPIC, 0);
}
