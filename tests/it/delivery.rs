//! Delivery across broker outages and daemon restarts, against a real Mosquitto and a real
//! persistent-session subscriber, with a counter sensor that makes gaps and reorders visible.

use std::time::{Duration, Instant};

use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";

/// Env + counter sensor at 100 ms, daemon running, first readings arrived.
fn start_counter_env(name: &str, qos: u8) -> (Env, Counter) {
    let mut env = Env::with_broker(name);
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "100ms", qos));
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(
        DEADLINE,
        "the first 3 readings reach the subscriber",
        || env.values(TOPIC).len() >= 3,
    );
    (env, counter)
}

/// Broker down for ≥ 30 readings, then back on the same port and persistence dir: every
/// reading arrives, in order, none missing; the store ends empty.
#[test]
fn broker_outage_loses_nothing() {
    let (mut env, counter) = start_counter_env("broker_outage_loses_nothing", 1);

    env.broker().stop();
    let at_stop = counter.value();
    counter.wait_value_at_least(at_stop + 30, "30 readings taken while the broker is down");
    env.daemon.assert_running();

    env.broker().restart();
    let target = counter.value();
    env.wait_delivered(TOPIC, target, 0);

    env.drain_and_stop(&counter, TOPIC, 0);
}

/// Broker down, daemon buffering, SIGKILL; daemon restarted (still no broker), then the
/// broker: all buffered readings arrive in order. Only the reading in flight at the kill may
/// be lost: at most one gap of size 1.
#[test]
fn sigkill_while_broker_down() {
    let (mut env, counter) = start_counter_env("sigkill_while_broker_down", 1);

    env.broker().stop();
    let at_stop = counter.value();
    counter.wait_value_at_least(at_stop + 30, "30 readings taken while the broker is down");
    let before_kill = counter.value();
    env.daemon.sigkill();
    let at_kill = counter.value();

    env.daemon.start();
    counter.wait_value_at_least(
        at_kill + 10,
        "the restarted daemon takes 10 readings, broker still down",
    );
    env.daemon.assert_running();

    env.broker().restart();
    let target = counter.value();
    env.wait_delivered(TOPIC, target, 1);

    let n = env.drain_and_stop(&counter, TOPIC, 1);
    // Only the reading in flight may be lost: at least the last one counted before the kill
    // (it may still have been on its way into the store), at most one the orphaned script
    // finished after it.
    let missing = SeqReport::of(&env.values(TOPIC)).missing;
    assert!(
        missing
            .iter()
            .all(|v| (before_kill..=at_kill + 1).contains(v)),
        "lost {missing:?}, but only the reading in flight at the kill \
         ({before_kill}..={}) may be lost",
        at_kill + 1
    );
    eprintln!("sigkill_while_broker_down: lost {missing:?} (killed at {before_kill}, final {n})");
}

/// Broker down, SIGTERM: exit 0 within the grace, backlog kept in the store. Then broker and
/// daemon again: the backlog drains first, new readings follow, all in order, no gap.
#[test]
fn sigterm_backlog_then_new() {
    let (mut env, counter) = start_counter_env("sigterm_backlog_then_new", 1);

    env.broker().stop();
    let at_stop = counter.value();
    counter.wait_value_at_least(at_stop + 20, "20 readings taken while the broker is down");
    let at_term = counter.pause();

    let t0 = Instant::now();
    env.daemon.sigterm();
    let status = env.daemon.wait_exit(SHUTDOWN_LIMIT);
    let took = t0.elapsed();
    match status {
        Some(s) => assert!(s.success(), "exit after SIGTERM with the broker down: {s}"),
        None => panic!("still running {SHUTDOWN_LIMIT:?} after SIGTERM (grace is ≤ 5 s)"),
    }
    assert!(
        took <= Duration::from_millis(6500),
        "SIGTERM to exit took {took:?}; the grace is ≤ 5 s"
    );
    eprintln!("sigterm_backlog_then_new: exit 0 {took:?} after SIGTERM with the broker down");
    // Readings taken after the broker had exited cannot have been acked.
    let depth = store_depth(&env.buffer_path());
    assert!(
        depth >= at_term - at_stop,
        "store holds {depth} readings after SIGTERM; {} were taken with the broker down \
         (values {}..={at_term})",
        at_term - at_stop,
        at_stop + 1
    );

    counter.resume();
    env.broker().restart();
    env.daemon.start();
    let target = counter.wait_value_at_least(at_term + 20, "20 new readings after the restart");
    env.wait_delivered(TOPIC, target, 0);

    env.drain_and_stop(&counter, TOPIC, 0);
}

/// QoS 0 readings are fire and forget: taken while the broker is down they are neither kept
/// in memory (broker restart, daemon running) nor in the store (SIGTERM during the outage:
/// empty store; daemon restart: none of them appear).
#[test]
fn qos0_not_stored() {
    let (mut env, counter) = start_counter_env("qos0_not_stored", 0);

    // Outage 1: the daemon keeps running.
    env.broker().stop();
    let down1_from = counter.value() + 1;
    let down1_to = counter.wait_value_at_least(
        down1_from + 20,
        "20 readings taken while the broker is down",
    );
    env.broker().restart();
    wait_until(
        DEADLINE,
        "QoS 0 readings flow again after the broker restart",
        || env.values(TOPIC).iter().any(|&v| v > down1_to + 5),
    );
    let values = env.values(TOPIC);
    let leaked: Vec<u64> = values
        .iter()
        .copied()
        .filter(|v| (down1_from..=down1_to).contains(v))
        .collect();
    assert!(
        leaked.is_empty(),
        "QoS 0 readings taken while the broker was down ({down1_from}..={down1_to}) were \
         delivered after it came back: {}; all: {}",
        ranges(&leaked),
        describe(&values)
    );

    // Outage 2: SIGTERM while the broker is down, then everything restarts.
    env.broker().stop();
    let down2_from = counter.value() + 1;
    counter.wait_value_at_least(
        down2_from + 20,
        "20 readings taken while the broker is down",
    );
    let down2_to = counter.pause();
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&env.buffer_path()),
        0,
        "QoS 0 readings were stored"
    );

    counter.resume();
    env.broker().restart();
    env.daemon.start();
    wait_until(
        DEADLINE,
        "QoS 0 readings flow after the daemon restart",
        || env.values(TOPIC).iter().any(|&v| v > down2_to + 5),
    );

    let values = env.values(TOPIC);
    let leaked: Vec<u64> = values
        .iter()
        .copied()
        .filter(|v| (down2_from..=down2_to).contains(v))
        .collect();
    assert!(
        leaked.is_empty(),
        "QoS 0 readings taken while the broker was down ({down2_from}..={down2_to}) were \
         delivered after the restarts: {}; all: {}",
        ranges(&leaked),
        describe(&values)
    );
    assert!(
        SeqReport::of(&values).reorders.is_empty(),
        "QoS 0 readings reordered: {}",
        describe(&values)
    );
}

/// Hundreds of QoS 0 sensors beside dozens of QoS 1 ones, all read at the same moments, on a
/// healthy link: the QoS 0 flood fills rumqttc's request channel, which QoS 1 publishes share.
/// Every QoS 1 reading must still go out, in order, without waiting for a reconnect. (The
/// feeder used to move its cursor past readings a full channel had refused: they stayed in the
/// store, unsent, until the next reconnect or restart, and then went out late and out of
/// order.)
#[test]
fn qos0_flood_does_not_hold_back_qos1() {
    qos0_flood("qos0_flood_does_not_hold_back_qos1", "");
}

/// The same on MQTT 5, where Mosquitto's Receive Maximum (20) shrinks the window to 10.
#[test]
fn qos0_flood_does_not_hold_back_qos1_mqtt5() {
    qos0_flood("qos0_flood_does_not_hold_back_qos1_mqtt5", "protocol = 5\n");
}

/// 1,500 QoS 0 file sensors and 40 QoS 1 counters at 500 ms, with `mqtt` lines added to
/// `[mqtt]`: every counter reading arrives, in order, on one link.
fn qos0_flood(name: &str, mqtt: &str) {
    const FLOOD: usize = 1500;
    const COUNTERS: usize = 40;
    let mut env = Env::with_broker(name);
    let value_file = env.path("value");
    std::fs::write(&value_file, "21.5\n").unwrap();
    let counters: Vec<Counter> = (0..COUNTERS)
        .map(|i| Counter::new(env.dir(), &format!("counter{i}")))
        .collect();
    let mut sensors = String::new();
    for (i, c) in counters.iter().enumerate() {
        sensors.push_str(&c.sensor_toml(&format!("counter{i}"), &format!("test/c{i}"), "500ms", 1));
    }
    for i in 0..FLOOD {
        sensors.push_str(&format!(
            "[[sensor]]\nname = \"flood{i}\"\nkind = \"file\"\npath = {path}\n\
             interval = \"500ms\"\ntopic = \"flood/{i}\"\nqos = 0\n",
            path = toml_str(&value_file.display().to_string()),
        ));
    }
    // Quieter than debug: thousands of QoS 0 publishes a second would be as many log lines.
    let cfg = tweak(
        env.config("", &sensors),
        &[
            ("log_level = \"debug\"", "log_level = \"info\""),
            ("[mqtt]\n", &format!("[mqtt]\n{mqtt}")),
        ],
    );
    env.write_config(&cfg);
    env.daemon.start();
    counters[0].wait_value_at_least(30, "30 rounds of readings taken during the flood");
    for c in &counters {
        c.pause();
    }
    // Everything taken must arrive on this link: no reconnect, no restart.
    for (i, c) in counters.iter().enumerate() {
        env.wait_delivered(&format!("test/c{i}"), c.value(), 0);
    }
    assert!(
        !env.daemon.log().contains("disconnected from the broker"),
        "the link dropped during the test, which would hide readings held back"
    );
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&env.buffer_path()),
        0,
        "readings left in the store"
    );
}
