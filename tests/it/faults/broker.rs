//! The broker misbehaves: SIGKILLed mid-stream, restarted without its persistence, refusing
//! the daemon's CONNECT.

use std::collections::HashSet;
use std::fs;
use std::time::SystemTime;

use telemetryd_testkit::proxy::Mode;
use telemetryd_testkit::*;

use super::{TOPIC, proxied_counter_env, timed_lines, wait_first_values};

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
