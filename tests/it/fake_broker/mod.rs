//! A scripted MQTT 3.1.1 broker for misbehaviour a real broker won't produce on demand:
//! `session_present = false` on reconnects of a persistent session, PUBACKs out of order,
//! connections dropped mid-stream with publishes unacked, and a link that goes silent
//! (half-open TCP). The real daemon is driven against it with a fast counter sensor.
//!
//! Packets are parsed and written with rumqttc's own `mqttbytes::v4` codec.

mod broker;

use std::time::Duration;

use telemetryd_testkit::*;

use broker::{FakeBroker, Script};

const TOPIC: &str = "test/counter";

/// Runs the daemon with a 10 ms counter against `script` until every scripted connection has
/// happened and at least `min_readings` were taken; then stops the counter, waits until the
/// broker has every value, SIGTERMs the daemon and checks order, completeness and an empty
/// store.
fn drive(name: &str, script: Script, keep_alive: &str, min_readings: u64) {
    // Connections with a scripted disruption; past them the broker behaves.
    let scripted = script
        .drop_after
        .len()
        .max(script.silent_after.len())
        .max(script.never_ack.len());
    let broker = FakeBroker::start(script);
    let mut env = Env::new(name);
    env.on_failure_dump("fake broker", broker.dump_fn(TOPIC));
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config_for_port(
            broker.port,
            "",
            &counter.sensor_toml("counter", TOPIC, "10ms", 1),
        ),
        &[(
            "keep_alive = \"5s\"",
            &format!("keep_alive = \"{keep_alive}\""),
        )],
    );
    env.write_config(&cfg);
    env.daemon.start();

    let values = broker.values_fn(TOPIC);
    wait_until(
        DEADLINE * 2,
        &format!("{scripted} scripted connections are over and {min_readings} readings arrived"),
        || broker.state().connections > scripted && SeqReport::of(&values()).max >= min_readings,
    );
    env.daemon.assert_running();

    let buffer = env.buffer_path();
    let n = drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &values,
        "the fake broker",
        0,
    );
    let st = broker.state();
    assert!(n >= min_readings);
    assert!(st.acks_reordered > 0, "no PUBACK was sent out of order");
    eprintln!(
        "{name}: {n} readings, {} publishes over {} connections, {} abandoned unacked",
        st.publishes.len(),
        st.connections,
        st.abandoned_unacked
    );
}

/// PUBACKs in reverse batches of 4; the connection dropped mid-stream (also right after
/// CONNACK) with publishes unacked; CONNACK says session_present = false on some reconnects
/// of the persistent session.
#[test]
fn fake_broker_out_of_order_acks_and_drops() {
    drive(
        "fake_broker_out_of_order_acks_and_drops",
        Script {
            session_present: vec![false, true, false, true, false, false, true, true],
            drop_after: vec![
                Some(37),
                Some(53),
                Some(0),
                Some(21),
                Some(1),
                Some(64),
                Some(0),
                Some(45),
            ],
            silent_after: vec![],
            never_ack: vec![],
            ack_batch: 4,
        },
        "5s",
        300,
    );
}

/// The broker never resumes the session: every reconnect says session_present = false, so
/// whatever the client library kept for the session is void.
#[test]
fn fake_broker_session_never_present() {
    drive(
        "fake_broker_session_never_present",
        Script {
            session_present: vec![false; 7],
            drop_after: vec![
                Some(30),
                Some(45),
                Some(0),
                Some(30),
                Some(2),
                Some(30),
                Some(50),
            ],
            silent_after: vec![],
            never_ack: vec![],
            ack_batch: 5,
        },
        "5s",
        300,
    );
}

/// The link goes dead mid-stream (socket open, nothing acked or answered, PINGREQ included):
/// the daemon must notice through keep-alive, reconnect and resend what was unacked.
#[test]
fn fake_broker_half_open_connection() {
    drive(
        "fake_broker_half_open_connection",
        Script {
            session_present: vec![false, true, false],
            drop_after: vec![],
            silent_after: vec![Some(40), Some(25)],
            never_ack: vec![],
            ack_batch: 3,
        },
        "1s",
        200,
    );
}

/// One PUBACK never comes, while the broker keeps acking the rest and answering pings, so
/// keep-alive sees a healthy link: the daemon must not wait for it forever. After its ack
/// timeout (10 s here) it reconnects and resends; nothing is lost, nothing reordered.
#[test]
fn fake_broker_ack_that_never_comes() {
    drive(
        "fake_broker_ack_that_never_comes",
        Script {
            session_present: vec![true, true],
            never_ack: vec![Some(3)],
            ack_batch: 4,
            ..Script::default()
        },
        "1s",
        200,
    );
}

/// SIGTERM while publishes are in flight on a link that acks nothing: exit 0 within the grace
/// (≤ 5 s), the unacked readings stay in the store, and on the next start they go out first,
/// before new readings.
#[test]
fn fake_broker_sigterm_with_unacked_in_flight() {
    let name = "fake_broker_sigterm_with_unacked_in_flight";
    let broker = FakeBroker::start(Script {
        session_present: vec![false],
        drop_after: vec![],
        silent_after: vec![Some(20)],
        never_ack: vec![],
        ack_batch: 4,
    });
    let mut env = Env::new(name);
    env.on_failure_dump("fake broker", broker.dump_fn(TOPIC));
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config_for_port(
            broker.port,
            "",
            &counter.sensor_toml("counter", TOPIC, "20ms", 1),
        ),
        &[
            // Long enough that keep-alive does not notice the dead link during the test.
            ("keep_alive = \"5s\"", "keep_alive = \"60s\""),
            // Every PUBACK here is counted as a reading's: no birth message on this link.
            ("[mqtt]\n", "[mqtt]\nstatus_topic = \"\"\n"),
        ],
    );
    env.write_config(&cfg);
    env.daemon.start();

    let values = broker.values_fn(TOPIC);
    counter.wait_value_at_least(60, "60 readings (the link went silent after 20)");
    let n = counter.pause();
    let acked = broker.state().acks_sent as u64;
    assert!(acked < 20, "the broker acked {acked} of 20");

    let t0 = std::time::Instant::now();
    env.daemon.sigterm();
    let status = env.daemon.wait_exit(SHUTDOWN_LIMIT);
    let took = t0.elapsed();
    match status {
        Some(s) => assert!(
            s.success(),
            "exit after SIGTERM with unacked publishes: {s}"
        ),
        None => panic!("still running {SHUTDOWN_LIMIT:?} after SIGTERM (grace is ≤ 5 s)"),
    }
    assert!(
        took <= Duration::from_millis(6500),
        "SIGTERM to exit took {took:?}; the grace is ≤ 5 s"
    );
    let depth = store_depth(&env.buffer_path());
    assert_eq!(
        depth,
        n - acked,
        "store after SIGTERM: {n} readings, {acked} acked by the broker"
    );
    eprintln!("{name}: exit 0 {took:?} after SIGTERM; {depth} unacked readings kept");

    // Next start: the broker behaves (connection 1 is not scripted).
    counter.resume();
    let first_new_conn = broker.state().connections;
    env.daemon.start();
    counter.wait_value_at_least(n + 20, "20 new readings after the restart");
    let buffer = env.buffer_path();
    drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &values,
        "the fake broker",
        0,
    );
    // The backlog went out first: the first publish after the restart is the oldest unacked.
    let st = broker.state();
    let first_after = st
        .publishes
        .iter()
        .find(|p| p.conn >= first_new_conn)
        .map(|p| p.payload.clone());
    assert_eq!(
        first_after.as_deref(),
        Some((acked + 1).to_string().as_str()),
        "first publish after the restart"
    );
}
