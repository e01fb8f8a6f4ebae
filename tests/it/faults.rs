//! Fault injection, one test per scenario of issue 3: the real daemon, a real Mosquitto (own
//! port, config and persistence), a real persistent-session subscriber, and a counter sensor
//! whose every reading is the next integer, so that a lost or reordered reading shows.
//!
//! Where a link fault is needed, the daemon talks to Mosquitto through [`Proxy`], which also
//! witnesses what the broker acknowledged. Random choices (when to kill, for how long, where
//! to cut) come from a seeded generator; the seed is printed and `TELEMETRYD_IT_SEED` replays
//! it.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant, SystemTime};

use telemetryd_testkit::proxy::{Chaos, Mode, Proxy};
use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";
const BACKLOG: &str = "test/backlog";

fn keep_alive(ka: &str) -> (&'static str, String) {
    ("keep_alive = \"5s\"", format!("keep_alive = \"{ka}\""))
}

/// A broker and subscriber, a proxy in front of the broker, and the daemon's config pointing
/// at the proxy with one counter sensor.
fn proxied_counter_env(name: &str, interval: &str, ka: &str) -> (Env, Proxy, Counter) {
    let mut env = Env::with_broker(name);
    let proxy = Proxy::start(env.port());
    env.on_failure_dump("proxy", proxy.dump_fn());
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config_for_port(
        proxy.port,
        "",
        &counter.sensor_toml("counter", TOPIC, interval, 1),
    );
    let (from, to) = keep_alive(ka);
    env.write_config(&tweak(cfg, &[(from, &to)]));
    (env, proxy, counter)
}

fn wait_first_values(env: &Env, topic: &str, n: usize) {
    wait_until(DEADLINE, &format!("{n} readings on {topic} arrive"), || {
        env.values(topic).len() >= n
    });
}

/// Lines of `log` containing `needle`, with their Unix times.
fn timed_lines(log: &str, needle: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| Some((log_time(l)?, l.to_string())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------

/// Mosquitto SIGKILLed three times mid-stream (counter at 20 ms) and restarted on the same
/// port and persistence. Before each kill, at seeded moments, the subscriber is frozen
/// (SIGSTOP) for a while, so the broker acknowledges readings it can only queue in memory, and
/// then the broker itself is frozen, so publishes are in flight, unacknowledged, when it dies.
///
/// A broker killed this way may lose messages it had already acknowledged but neither
/// delivered nor saved: that loss is the broker's. The proxy saw every PUBACK, so the test
/// knows exactly which readings the broker had accepted at each kill. Every reading must
/// arrive, in order, except readings the broker had acknowledged and not yet delivered when it
/// died; whatever was in flight unacknowledged must arrive; the store ends empty.
#[test]
fn broker_sigkill_and_restart() {
    let name = "broker_sigkill_and_restart";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0001));
    let (mut env, proxy, counter) = proxied_counter_env(name, "20ms", "5s");
    // The subscriber's session must be in Mosquitto's file before the first kill, or the
    // restarted broker would not know it.
    let subscribed = SystemTime::now();
    env.daemon.start();
    wait_first_values(&env, TOPIC, 10);
    env.broker().wait_saved_after(subscribed);

    let mut at_risk: HashSet<u64> = HashSet::new();
    let mut unacked_at_kills = Vec::new();
    for kill in 1..=3 {
        let run_to = counter.value() + rng.range(10, 50);
        counter.wait_value_at_least(run_to, "readings flow before the kill");
        // Readings the broker acknowledges but can only queue for the frozen subscriber.
        env.sub.as_mut().unwrap().signal(libc::SIGSTOP);
        let queued_to = counter.value() + rng.range(5, 40);
        counter.wait_value_at_least(queued_to, "readings queued for the frozen subscriber");
        // Publishes the frozen broker reads no more, and acknowledges no more.
        let forwarded = proxy.state().forwarded.len();
        env.broker().signal(libc::SIGSTOP);
        let in_flight = rng.range(3, 30) as usize;
        wait_until(DEADLINE, "publishes in flight to the frozen broker", || {
            proxy.state().forwarded.len() >= forwarded + in_flight
        });
        env.broker().kill();
        // Once the proxy has read the broker side to its end, it has seen every PUBACK.
        proxy.wait_no_open_connection();
        let received: HashSet<u64> = env.values(TOPIC).into_iter().collect();
        let acked: HashSet<u64> = proxy.acked_values(TOPIC).into_iter().collect();
        let risk: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|v| !received.contains(v) && !at_risk.contains(v))
            .collect();
        let unacked: Vec<u64> = proxy
            .forwarded_values(TOPIC)
            .into_iter()
            .filter(|v| !acked.contains(v))
            .collect();
        eprintln!(
            "{name}: kill {kill} at counter {}: {} acked by the broker, not yet delivered: {}; \
             {} forwarded and never acked: {}",
            counter.value(),
            risk.len(),
            ranges(&risk),
            unacked.len(),
            ranges(&unacked)
        );
        at_risk.extend(risk);
        unacked_at_kills.extend(unacked);
        env.sub.as_mut().unwrap().signal(libc::SIGCONT);

        let down_to = counter.value() + rng.range(5, 50);
        counter.wait_value_at_least(down_to, "readings taken while the broker is dead");
        env.daemon.assert_running();
        env.broker().restart();
        let restarted_at = counter.value();
        wait_until(DEADLINE, "new readings arrive after the restart", || {
            env.values(TOPIC).iter().any(|&v| v > restarted_at)
        });
    }

    let n = counter.pause();
    let sub = env.sub.as_ref().unwrap();
    wait_complete_except(&|| sub.values(TOPIC), n, &at_risk, "the subscriber");
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&env.buffer_path()),
        0,
        "store not empty at the end"
    );
    let r = SeqReport::of(&env.values(TOPIC));
    eprintln!(
        "{name}: {n} readings, 3 broker SIGKILLs; {} in flight unacked at the kills, all \
         delivered; {} at risk in the broker, {} lost by it {}; {} duplicates",
        unacked_at_kills.len(),
        at_risk.len(),
        r.missing.len(),
        ranges(&r.missing),
        r.duplicates
    );
}

/// The broker restarted *without* its persistence file: the daemon's session is gone
/// (CONNACK session_present = false) and rumqttc would silently drop what it had queued. The
/// daemon resends from its store itself: nothing is lost, nothing reordered.
///
/// First the link goes silent for ten readings, so that publishes are in flight, unacked,
/// when it then drops: exactly what rumqttc would throw away on a lost session. The proxy
/// stays down while the broker is replaced, so that the subscriber (whose session is gone
/// too) can subscribe again before the daemon publishes, and so that everything the old
/// broker acknowledged was delivered before it went.
#[test]
fn broker_restart_without_persistence() {
    let name = "broker_restart_without_persistence";
    let (mut env, proxy, counter) = proxied_counter_env(name, "50ms", "5s");
    env.daemon.start();
    wait_first_values(&env, TOPIC, 10);

    proxy.set_mode(Mode::Silent);
    let at_silent = counter.value();
    counter.wait_value_at_least(at_silent + 10, "10 readings sent into a silent link");
    proxy.set_mode(Mode::Down);
    proxy.wait_no_open_connection();
    let acked = proxy.acked_values(TOPIC);
    wait_until(
        DEADLINE,
        "the subscriber has all the broker acknowledged",
        || {
            let got: HashSet<u64> = env.values(TOPIC).into_iter().collect();
            acked.iter().all(|v| got.contains(v))
        },
    );
    let at_down = counter.value();
    env.broker().stop();
    env.broker().wipe_persistence();
    env.broker().restart();
    env.sub.as_mut().unwrap().wait_subscribed();
    counter.wait_value_at_least(at_down + 20, "20 readings buffered meanwhile");
    let connects_before = env.daemon.log().matches("connected to the broker").count();
    proxy.set_mode(Mode::Forward);

    let upto = counter.wait_value_at_least(at_down + 40, "20 more readings");
    env.wait_delivered(TOPIC, upto, 0);
    let log = env.daemon.log();
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connected to the broker"))
        .collect();
    assert!(connects.len() > connects_before, "no reconnect in the log");
    assert!(
        connects[connects_before..]
            .iter()
            .any(|l| l.contains("session_present=false")),
        "the fresh broker did not report a lost session: {connects:?}"
    );
    let n = env.drain_and_stop(&counter, TOPIC, 0);
    eprintln!(
        "{name}: {n} readings; {}..={at_down} published into the silent link, never acked, \
         then the session was lost; {} duplicates",
        at_silent + 1,
        SeqReport::of(&env.values(TOPIC)).duplicates
    );
}

// ---------------------------------------------------------------------------------------------
// The link
// ---------------------------------------------------------------------------------------------

/// A half-open link: the proxy stops forwarding in both directions without closing anything
/// (a Wi-Fi drop). With keep_alive = 2 s the daemon must notice within about 2 x keep_alive,
/// keep buffering while its reconnects go into the void, reconnect once the link is back, and
/// lose nothing. Twice, with seeded silence lengths.
#[test]
fn half_open_link() {
    let name = "half_open_link";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0003));
    let ka = 2.0;
    let (mut env, proxy, counter) = proxied_counter_env(name, "50ms", "2s");
    env.daemon.start();
    wait_first_values(&env, TOPIC, 10);

    for round in 1..=2 {
        let flowing = counter.value() + rng.range(5, 30);
        counter.wait_value_at_least(flowing, "readings flow before the silence");
        let silent_at = unix_now();
        let seen_before = timed_lines(&env.daemon.log(), "disconnected from the broker").len();
        proxy.set_mode(Mode::Silent);
        let (noticed, line) = wait_for(
            Duration::from_secs(20),
            "the daemon notices the dead link",
            || {
                timed_lines(&env.daemon.log(), "disconnected from the broker")
                    .into_iter()
                    .nth(seen_before)
            },
        );
        let took = noticed - silent_at;
        eprintln!("{name}: round {round}: noticed after {took:.2} s: {line}");
        assert!(
            took <= 2.0 * ka + 1.0,
            "the dead link was noticed after {took:.2} s; keep_alive is {ka} s (limit ~2x)"
        );
        // Stay dark a while longer: reconnect attempts go into the void too.
        let extra = rng.millis(500, 4000);
        let until = counter.value() + extra.as_millis() as u64 / 50;
        counter.wait_value_at_least(until, "readings buffered in the dark");
        env.daemon.assert_running();
        proxy.set_mode(Mode::Forward);
        let upto = counter.value();
        env.wait_delivered(TOPIC, upto, 0);
    }
    env.drain_and_stop(&counter, TOPIC, 0);
}

/// The proxy cuts every connection after a seeded random number of bytes in a random
/// direction, mostly in the middle of a packet (a PUBLISH half-sent, a PUBACK half-read),
/// ten times. Nothing lost, nothing reordered, the store ends empty.
#[test]
fn link_cut_at_random_moments() {
    let name = "link_cut_at_random_moments";
    let seed = test_seed(name, 0x5eed_0004);
    let (mut env, proxy, counter) = proxied_counter_env(name, "20ms", "5s");
    proxy.set_chaos(Some(Chaos {
        seed,
        daemon_bytes: (1, 3000),
        broker_bytes: (1, 600),
    }));
    env.daemon.start();
    wait_until(Duration::from_secs(120), "10 connections cut", || {
        proxy.state().cuts >= 10
    });
    proxy.set_chaos(None);
    env.daemon.assert_running();
    let n = env.drain_and_stop(&counter, TOPIC, 0);
    let st = proxy.state();
    eprintln!(
        "{name}: {n} readings over {} connections, {} cut; {} duplicates",
        st.connections,
        st.cuts,
        SeqReport::of(&env.values(TOPIC)).duplicates
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Sensors
// ---------------------------------------------------------------------------------------------

/// One sensor fault: `fault()`, wait for the log line, check the counter keeps its schedule
/// and nothing is published on `topic`; `fix()`, wait until `good` is published on it.
struct SensorFault<'a> {
    what: &'a str,
    fault: &'a dyn Fn(),
    fix: &'a dyn Fn(),
    logged: &'a str,
    topic: &'a str,
    good: &'a str,
}

fn sensor_fault(env: &Env, counter: &Counter, f: SensorFault) {
    let what = f.what;
    let before = env.sub().payloads(f.topic).len();
    (f.fault)();
    let t0 = Instant::now();
    let at = counter.value();
    wait_until(DEADLINE, &format!("{what}: logged"), || {
        env.daemon.log().contains(f.logged)
    });
    counter.wait_value_at_least(at + 20, &format!("{what}: the counter goes on"));
    let rate = 20.0 / t0.elapsed().as_secs_f64();
    assert!(
        rate >= 5.0,
        "{what}: the 100 ms counter slowed to {rate:.1} readings/s"
    );
    let during = env.sub().payloads(f.topic).len();
    assert!(
        during <= before + 3,
        "{what}: {} readings published on {} during the fault",
        during - before,
        f.topic
    );
    (f.fix)();
    wait_until(DEADLINE, &format!("{what}: the sensor recovers"), || {
        env.sub().payloads(f.topic)[before..]
            .iter()
            .any(|p| p == f.good)
    });
    eprintln!("sensor_faults: {what}: the counter kept {rate:.1} readings/s, recovered");
}

/// Sensor faults next to a healthy counter at 100 ms: a file that vanishes and comes back, a
/// command that hangs (killed at its 300 ms timeout, with what it started), a command printing
/// garbage, a DS18B20 whose w1_slave says `NO` (CRC error). Each fault is logged (once), the
/// counter keeps its schedule and loses nothing, and each faulty sensor recovers by itself
/// once its fault is gone.
#[test]
fn sensor_faults() {
    let mut env = Env::with_broker("sensor_faults");
    let counter = Counter::new(env.dir(), "counter");
    let file = env.path("value");
    // What the command does: `hang`, `garbage`, or print the number in the file.
    let mode = env.path("mode");
    let w1 = env.path("w1/28-000000000001/w1_slave");
    fs::write(&file, "1\n").unwrap();
    fs::write(&mode, "2").unwrap();
    write_w1_slave(&w1, 21_000);
    // In the command line of the shell and of its `sleep` (GNU sleep adds its arguments).
    let tag = format!("0.000{}", std::process::id());
    let script = format!(
        "m=$(cat {mode}); case $m in hang) sleep 30 {tag}; echo 0;; \
         garbage) echo 'no number here';; *) echo $m;; esac",
        mode = mode.display()
    );
    let sensors = format!(
        "{counter}\n\
         [[sensor]]\nname = \"file\"\nkind = \"file\"\npath = {file}\ninterval = \"100ms\"\n\
         topic = \"test/file\"\ndecimals = 0\n\n\
         [[sensor]]\nname = \"cmd\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {script}]\n\
         timeout = \"300ms\"\ninterval = \"100ms\"\ntopic = \"test/cmd\"\ndecimals = 0\n\n\
         [[sensor]]\nname = \"w1\"\nkind = \"ds18b20\"\npath = {w1}\ninterval = \"100ms\"\n\
         topic = \"test/w1\"\ndecimals = 0\n",
        counter = counter.sensor_toml("counter", TOPIC, "100ms", 1),
        file = toml_str(&file.display().to_string()),
        script = toml_str(&script),
        w1 = toml_str(&w1.display().to_string()),
    );
    let cfg = env.config("", &sensors);
    env.write_config(&cfg);
    env.daemon.start();
    for (t, v) in [("test/file", "1"), ("test/cmd", "2"), ("test/w1", "21")] {
        wait_until(DEADLINE, &format!("{v} on {t}"), || {
            env.sub().payloads(t).iter().any(|p| p == v)
        });
    }

    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the file vanishes",
            fault: &|| fs::remove_file(&file).unwrap(),
            fix: &|| fs::write(&file, "3\n").unwrap(),
            logged: "no such file",
            topic: "test/file",
            good: "3",
        },
    );
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the command hangs",
            fault: &|| fs::write(&mode, "hang").unwrap(),
            fix: &|| fs::write(&mode, "4").unwrap(),
            logged: "timed out after 300ms",
            topic: "test/cmd",
            good: "4",
        },
    );
    // Each hung command was killed at its timeout, with the `sleep` it started.
    wait_until(Duration::from_secs(10), "no hung command left", || {
        processes_matching(&tag).is_empty()
    });
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the command prints garbage",
            fault: &|| fs::write(&mode, "garbage").unwrap(),
            fix: &|| fs::write(&mode, "5").unwrap(),
            logged: "no number in output",
            topic: "test/cmd",
            good: "5",
        },
    );
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "w1_slave says CRC NO",
            fault: &|| {
                fs::write(
                    &w1,
                    "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=22000\n",
                )
                .unwrap()
            },
            fix: &|| write_w1_slave(&w1, 23_000),
            logged: "CRC check failed",
            topic: "test/w1",
            good: "23",
        },
    );
    let log = env.daemon.log();
    for needle in [
        "no such file",
        "timed out after 300ms",
        "no number in output",
        "CRC check failed",
    ] {
        let n = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count();
        assert!(n >= 1, "no warning for {needle}");
        assert!(n <= 2, "{n} warnings for {needle}: not rate-limited");
    }
    assert!(
        log.matches("sensor recovered").count() >= 4,
        "not every recovery was logged"
    );
    // Not `drain_and_stop`: the three other sensors keep reading until the stop, and a reading
    // one of them committed after the feeder saw SIGTERM stays in the store for the next start
    // (by design). Each waits for its reading's commit before the next, so that is at most one
    // per sensor.
    let n = counter.pause();
    env.wait_delivered(TOPIC, n, 0);
    env.daemon.stop_expect_success();
    let left = store_depth(&env.buffer_path());
    assert!(left <= 3, "{left} readings left in the store at the stop");
    assert_in_order(&env.values(TOPIC), n, 0);
}

// ---------------------------------------------------------------------------------------------
// A broker that refuses us
// ---------------------------------------------------------------------------------------------

/// Mosquitto with `allow_anonymous false` and a password file on the daemon's listener; the
/// daemon has no credentials, so every CONNECT is refused (CONNACK: not authorised). The log
/// names the reason, attempts back off (counted over a window, and the gaps grow), nothing is
/// dropped from the store; once the broker allows anonymous clients again (restarted with a
/// new config) every reading arrives, in order.
#[test]
fn broker_refuses_connection() {
    let name = "broker_refuses_connection";
    let mut env = Env::new(name);
    let dir = env.path("broker");
    fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args(["someone", "secret"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let port = free_port();
    let refusing = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
        passwords.display()
    );
    let broker = Broker::start_with(&dir, &refusing);
    let sub_port = broker.port;
    env.broker = Some(broker);
    env.sub = Some(Subscriber::start(
        env.dir(),
        sub_port,
        &format!("sub-{name}"),
    ));
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config_for_port(port, "", &counter.sensor_toml("counter", TOPIC, "50ms", 1));
    env.write_config(&cfg);
    env.daemon.start();

    wait_until(DEADLINE, "a refusal naming the reason", || {
        env.daemon.log().lines().any(|l| {
            l.contains("WARN")
                && l.contains("cannot connect to the broker")
                && l.contains("not authorized")
        })
    });
    let t0 = unix_now();
    counter.wait_value_at_least(counter.value() + 200, "10 s of refusals");
    let attempts: Vec<f64> = timed_lines(&env.daemon.log(), "cannot connect to the broker")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let window: Vec<f64> = attempts.iter().copied().filter(|&t| t >= t0).collect();
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "{name}: {} attempts in all, {} in the last {:.1} s; gaps {gaps:.2?}",
        attempts.len(),
        window.len(),
        unix_now() - t0
    );
    assert!(
        window.len() <= 5,
        "{} connection attempts in ~10 s: no backoff?",
        window.len()
    );
    assert!(
        gaps.len() >= 3 && gaps[gaps.len() - 1] > 2.0 * gaps[0],
        "the gaps between attempts do not grow: {gaps:.2?}"
    );
    let refusals = fs::read_to_string(env.broker().log_path())
        .unwrap()
        .matches("not authorised")
        .count();
    assert!(
        refusals >= attempts.len().saturating_sub(1),
        "mosquitto saw {refusals} refusals"
    );
    env.daemon.assert_running();
    assert!(env.values(TOPIC).is_empty());

    // The broker's owner lets anonymous clients in again.
    let broker = env.broker();
    broker.stop();
    broker.extra_listeners = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
    broker.restart();
    env.drain_and_stop(&counter, TOPIC, 0);
}
