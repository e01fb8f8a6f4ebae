//! The store: an outage beyond its bound, and a store damaged on disk.

use std::collections::HashSet;
use std::fs;

use telemetryd_testkit::*;

use super::{TOPIC, wait_first_values};

/// An outage much longer than `[buffer] max_messages = 100`: exactly the oldest readings
/// beyond the bound are dropped and counted in the log, the store holds exactly the bound,
/// its size on disk and the daemon's memory stay flat while the outage goes on, and the
/// newest readings all arrive.
#[test]
fn outage_beyond_buffer_bound() {
    let name = "outage_beyond_buffer_bound";
    const BOUND: u64 = 100;
    let mut env = Env::with_broker(name);
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config(
            "stats_interval = \"1s\"\n",
            &counter.sensor_toml("counter", TOPIC, "20ms", 1),
        ),
        &[("max_messages = 500000", &format!("max_messages = {BOUND}"))],
    );
    env.write_config(&cfg);
    env.daemon.start();
    wait_first_values(&env, TOPIC, 5);
    // An idle link first: then the outage's readings are exactly the unacknowledged ones.
    let a = counter.pause();
    env.wait_delivered(TOPIC, a, 0);
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0);

    env.broker().stop();
    counter.resume();
    env.daemon.start();
    let pid = env.daemon.pid();
    counter.wait_value_at_least(a + 2 * BOUND, "the store fills up to its bound");
    let (du1, rss1) = (
        disk_usage(&env.buffer_path()),
        vm_kib(pid, "VmRSS").unwrap(),
    );
    counter.wait_value_at_least(a + 8 * BOUND, "the outage goes on well beyond the bound");
    let (du2, rss2) = (
        disk_usage(&env.buffer_path()),
        vm_kib(pid, "VmRSS").unwrap(),
    );
    let n = counter.pause();
    env.daemon.stop_expect_success();
    let log = env.daemon.log();
    assert_eq!(
        store_depth(&env.buffer_path()),
        BOUND,
        "the store holds the bound"
    );
    let full: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("buffer full: dropped the oldest readings"))
        .collect();
    let total: u64 = full
        .last()
        .and_then(|l| log_field(l, "total"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in the log"));
    assert_eq!(
        total,
        n - a - BOUND,
        "dropped count in the log: {n} - {a} readings during the outage, bound {BOUND}"
    );
    // One line a minute and one at the stop, not one per dropped reading.
    assert!(
        full.len() <= 3,
        "{} warn lines for {total} drops:\n{}",
        full.len(),
        full.join("\n")
    );
    for l in log.lines().filter(|l| l.contains(" summary ")) {
        let buffered: u64 = log_field(l, "buffered").unwrap().parse().unwrap();
        assert!(buffered <= BOUND, "more than the bound buffered: {l}");
    }
    eprintln!(
        "{name}: {} readings in the outage, {total} dropped ({} warn lines), store {du1} -> \
         {du2} bytes on disk, RSS {rss1} -> {rss2} KiB",
        n - a,
        full.len()
    );
    assert!(
        du2 <= du1 + 1024 * 1024,
        "the store grew from {du1} to {du2} bytes while holding {BOUND} readings"
    );
    assert!(
        rss2 <= rss1 + 4 * 1024,
        "RSS grew from {rss1} to {rss2} KiB while the store stayed at its bound"
    );

    env.broker().restart();
    counter.resume();
    env.daemon.start();
    counter.wait_value_at_least(n + 20, "new readings after the outage");
    let dropped: HashSet<u64> = (a + 1..=n - BOUND).collect();
    let m = counter.pause();
    let sub = env.sub.as_ref().unwrap();
    wait_complete_except(&|| sub.values(TOPIC), m, &dropped, TOPIC);
    let r = SeqReport::of(&env.values(TOPIC));
    let expected: Vec<u64> = (a + 1..=n - BOUND).collect();
    assert_eq!(
        r.missing, expected,
        "exactly the oldest {total} readings of the outage are missing"
    );
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0);
}

/// A daemon with a 50 ms counter that built a backlog with the broker down and was stopped
/// (SIGTERM): the env, the counter (paused) and its value at the stop.
fn stopped_with_backlog(name: &str) -> (Env, Counter, u64) {
    let mut env = Env::with_broker(name);
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "50ms", 1));
    env.write_config(&cfg);
    env.daemon.start();
    wait_first_values(&env, TOPIC, 3);
    env.broker().stop();
    let at = counter.value();
    counter.wait_value_at_least(at + 30, "readings buffered with the broker down");
    let n = counter.pause();
    env.daemon.stop_expect_success();
    // Opening a sled store writes to it (a snapshot): count a copy, leave the original as the
    // daemon left it.
    let copy = env.path("buffer-copy");
    copy_dir(&env.buffer_path(), &copy);
    let depth = store_depth(&copy);
    assert!(depth >= 30, "{depth} readings stored");
    (env, counter, n)
}

/// The damaged-store log line and the directory it names.
fn damaged_store_moved(env: &Env) -> Option<std::path::PathBuf> {
    let log = env.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("the store was damaged: moved it aside"))?;
    let to = log_field(line, "moved_to")?;
    Some(std::path::PathBuf::from(to))
}

/// Garbage (seeded) over every file of the sled store while the daemon is stopped: the daemon
/// starts anyway, moves the store aside to `<path>.damaged-<time>` and says so in the log with
/// both paths, and publishes new readings, in order, from an empty store.
#[test]
fn corrupted_store_is_moved_aside() {
    let name = "corrupted_store_is_moved_aside";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0008));
    let (mut env, counter, n) = stopped_with_backlog(name);

    let mut garbled = Vec::new();
    for entry in fs::read_dir(env.buffer_path()).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_file() {
            let junk: Vec<u8> = (0..meta.len()).map(|_| rng.next_u64() as u8).collect();
            fs::write(entry.path(), junk).unwrap();
            garbled.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    eprintln!("{name}: garbage over {garbled:?}");

    env.broker().restart();
    counter.resume();
    env.daemon.start();
    let moved = wait_for(DEADLINE, "the damaged store is moved aside", || {
        env.daemon.assert_running();
        damaged_store_moved(&env)
    });
    let buffer = env.buffer_path().display().to_string();
    assert!(
        moved
            .display()
            .to_string()
            .starts_with(&format!("{buffer}.damaged-")),
        "moved to {}",
        moved.display()
    );
    assert!(moved.is_dir(), "{} is not there", moved.display());
    assert!(
        env.daemon.log().contains(&format!("path={buffer} ")),
        "the log line does not name the store"
    );
    wait_until(DEADLINE, "new readings are published", || {
        env.values(TOPIC).iter().any(|&v| v > n + 5)
    });
    let m = counter.pause();
    // The backlog is gone with the damaged store; from the first new reading on, no gap.
    let sub = env.sub.as_ref().unwrap();
    let new = || {
        sub.values(TOPIC)
            .into_iter()
            .filter(|&v| v > n)
            .map(|v| v - n)
            .collect()
    };
    wait_delivered_by(&new, "new readings", m - n, 0);
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0);
}

/// Garbage over the first 4 KiB of sled's log file only, in a store written by one run and
/// stopped cleanly. sled's recovery takes a corrupt log for a torn tail and opens the store
/// without an error and without the readings after the damage. The daemon must notice (its
/// durable mark is above what sled recovered), move the store aside, say which readings are
/// lost, and carry on with what survived and new readings. Silence would be a loss.
#[test]
fn corrupted_store_log_head_is_not_lost_silently() {
    let name = "corrupted_store_log_head_is_not_lost_silently";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0009));
    let (mut env, counter, n) = stopped_with_backlog(name);
    let depth = store_depth(&env.path("buffer-copy"));
    let db = env.buffer_path().join("db");
    let mut bytes = fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = rng.next_u64() as u8;
    }
    fs::write(&db, bytes).unwrap();

    env.broker().restart();
    counter.resume();
    env.daemon.start();
    wait_until(DEADLINE, "new readings are published", || {
        env.values(TOPIC).iter().any(|&v| v > n + 5)
    });
    let log = env.daemon.log();
    let sub = env.sub.as_ref().unwrap();
    let delivered: HashSet<u64> = sub.values(TOPIC).into_iter().collect();
    let lost: Vec<u64> = (1..=n).filter(|v| !delivered.contains(v)).collect();
    // The premise: this damage costs readings (sled cannot read past it). Were it to cost
    // none, the test would check nothing.
    assert!(
        !lost.is_empty(),
        "garbage over the log's head lost nothing: the test no longer damages the store"
    );
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("the store's log was damaged"))
        .or_else(|| log.lines().find(|l| l.contains("the store was damaged")))
        .unwrap_or_else(|| {
            panic!(
                "the store held {depth} readings; after garbage over the head of its log {} \
                 readings are lost ({}) and the daemon logged no damage:\n{log}",
                lost.len(),
                ranges(&lost)
            )
        });
    let moved = log_field(line, "moved_to").expect("the log line names where the store went");
    assert!(std::path::Path::new(&moved).is_dir(), "{line}");
    // New readings still arrive in order after the damage.
    let after: Vec<u64> = sub.values(TOPIC).into_iter().filter(|&v| v > n).collect();
    assert!(after.windows(2).all(|w| w[0] <= w[1]), "{after:?}");
}
