//! The daemon itself killed (SIGKILL) or stopped (SIGTERM) in the middle of its work.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use super::{BACKLOG, TOPIC, proxied_counter_env, timed_lines};

/// SIGKILL of the daemon at seeded random moments: twice while it drains a backlog of 20,000
/// readings, then, in a seeded order, twice while connected and twice while the broker is
/// down; restarted each time. Every committed reading arrives (the whole backlog, and all but
/// at most one counter reading per kill, the one being taken or committed at that moment);
/// order is kept.
#[test]
fn daemon_sigkill_at_random_moments() {
    let name = "daemon_sigkill_at_random_moments";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0005));
    let mut env = Env::with_broker(name);
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "50ms", 1));
    env.write_config(&cfg);
    const B: u64 = 20_000;
    let took = prefill_store(&env.buffer_path(), BACKLOG, B);
    eprintln!("{name}: prefilled {B} readings in {took:?}");
    env.daemon.start();

    // (counter value just before the kill, value once the kill is done and any orphaned
    // reading finished): at most one value in that window may be missing per kill.
    let mut windows: Vec<(String, u64, u64)> = Vec::new();
    let mut kill = |env: &mut Env, what: &str| {
        let before = counter.value();
        env.daemon.sigkill();
        let after = counter.value() + 1;
        eprintln!("{name}: SIGKILL while {what}, counter {before}");
        windows.push((what.to_string(), before, after));
    };

    for _ in 0..2 {
        let seen = env.values(BACKLOG).len() as u64;
        let at = seen + rng.range(200, 3000);
        wait_until(DEADLINE, "the backlog is draining", || {
            env.values(BACKLOG).len() as u64 >= at
        });
        let distinct = env
            .values(BACKLOG)
            .into_iter()
            .collect::<HashSet<_>>()
            .len() as u64;
        kill(&mut env, &format!("draining ({distinct}/{B} delivered)"));
        assert!(distinct < B, "the backlog was drained before the kill");
        env.daemon.start();
    }
    let mut rest = ["connected", "connected", "offline", "offline"];
    for i in (1..rest.len()).rev() {
        rest.swap(i, rng.range(0, i as u64) as usize);
    }
    for what in rest {
        let ahead = counter.value() + rng.range(5, 40);
        counter.wait_value_at_least(ahead, "readings flow");
        if what == "connected" {
            kill(&mut env, what);
            env.daemon.start();
        } else {
            env.broker().stop();
            let down = counter.value() + rng.range(3, 30);
            counter.wait_value_at_least(down, "readings buffered with the broker down");
            kill(&mut env, what);
            env.daemon.start();
            let more = counter.value() + rng.range(3, 20);
            counter.wait_value_at_least(more, "the restarted daemon buffers more");
            env.broker().restart();
        }
    }

    let n = counter.pause();
    let sub = env.sub.as_ref().unwrap();
    wait_delivered_by(&|| sub.values(BACKLOG), BACKLOG, B, 0);
    let may_miss: HashSet<u64> = windows.iter().flat_map(|(_, lo, hi)| *lo..=*hi).collect();
    wait_complete_except(&|| sub.values(TOPIC), n, &may_miss, TOPIC);
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&env.buffer_path()),
        0,
        "store not empty at the end"
    );
    let r = SeqReport::of(&env.values(TOPIC));
    for (what, lo, hi) in &windows {
        let lost: Vec<u64> = r
            .missing
            .iter()
            .copied()
            .filter(|v| (lo..=hi).contains(&v))
            .collect();
        assert!(
            lost.len() <= 1,
            "the kill while {what} (counter {lo}..={hi}) lost {lost:?}: at most one reading"
        );
    }
    eprintln!(
        "{name}: {n} counter readings, {B} backlog, {} kills, lost {} ({}), {} duplicates",
        windows.len(),
        r.missing.len(),
        ranges(&r.missing),
        r.duplicates + SeqReport::of(&env.values(BACKLOG)).duplicates
    );
}

/// SIGTERM while a backlog of 30,000 readings drains: exit status 0 within the 5 s grace, the
/// store keeps exactly what the broker had not acknowledged (the proxy counted the PUBACKs),
/// and after a restart the remainder goes out first, in order, before any newer reading.
#[test]
fn sigterm_while_large_backlog_drains() {
    let name = "sigterm_while_large_backlog_drains";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0006));
    let (mut env, proxy, counter) = proxied_counter_env(name, "100ms", "5s");
    const B: u64 = 30_000;
    let took = prefill_store(&env.buffer_path(), BACKLOG, B);
    eprintln!("{name}: prefilled {B} readings in {took:?}");
    env.daemon.start();
    let at = rng.range(500, 5000);
    wait_until(DEADLINE, "the backlog is draining", || {
        env.values(BACKLOG).len() as u64 >= at
    });
    let n = counter.pause();
    let t0 = Instant::now();
    env.daemon.sigterm();
    let status = env.daemon.wait_exit(SHUTDOWN_LIMIT);
    let took = t0.elapsed();
    match status {
        Some(s) => assert!(s.success(), "exit after SIGTERM while draining: {s}"),
        None => panic!("still running {SHUTDOWN_LIMIT:?} after SIGTERM (grace is 5 s)"),
    }
    assert!(
        took <= Duration::from_millis(6500),
        "SIGTERM to exit took {took:?}; the grace is 5 s"
    );
    proxy.wait_no_open_connection();
    let acked: HashSet<u64> = proxy.acked_values(BACKLOG).into_iter().collect();
    let acked_counter: HashSet<u64> = proxy.acked_values(TOPIC).into_iter().collect();
    let depth = store_depth(&env.buffer_path());
    eprintln!(
        "{name}: exit 0 {took:?} after SIGTERM; {} of {B} backlog acked; {depth} kept",
        acked.len()
    );
    assert!(
        (acked.len() as u64) < B,
        "the whole backlog was acknowledged: the SIGTERM did not stop the drain"
    );
    // Once it has the signal the daemon hands out nothing new: at most what was in flight (a
    // window of 50) and one more batch handed out while the signal was being logged.
    let stop_t = timed_lines(&env.daemon.log(), "stopping (send it again")[0].0;
    let after = proxy
        .state()
        .forwarded
        .iter()
        .filter(|s| s.topic == BACKLOG && s.wall > stop_t)
        .count();
    assert!(
        after <= 100,
        "{after} backlog readings reached the broker after SIGTERM: it went on publishing"
    );
    assert_eq!(
        depth,
        B + n - acked.len() as u64 - acked_counter.len() as u64,
        "store after SIGTERM: {B} backlog + {n} counter readings, {} + {} acknowledged",
        acked.len(),
        acked_counter.len()
    );

    counter.resume();
    env.daemon.start();
    counter.wait_value_at_least(n + 10, "new readings after the restart");
    let sub = env.sub.as_ref().unwrap();
    wait_delivered_by(&|| sub.values(BACKLOG), BACKLOG, B, 0);
    env.drain_and_stop(&counter, TOPIC, 0);
    // Global order: every backlog reading went out before the first counter reading.
    let lines = env.sub().lines();
    let last_backlog = lines.iter().rposition(|(t, _)| t == BACKLOG).unwrap();
    let first_counter = lines.iter().position(|(t, _)| t == TOPIC).unwrap();
    assert!(
        last_backlog < first_counter,
        "a counter reading (line {first_counter}) arrived before the end of the older \
         backlog (line {last_backlog})"
    );
}
