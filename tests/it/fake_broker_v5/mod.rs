//! A scripted MQTT 5 broker for what Mosquitto will not do on demand: PUBACKs with a *retry*
//! reason code (0x97 Quota exceeded, 0x80 Unspecified error) and a Receive Maximum that drops
//! between two connections. Packets are parsed and written with rumqttc's `mqttbytes::v5`.

mod broker;

use std::collections::HashMap;

use rumqttc::v5::mqttbytes::v5::PubAckReason;
use telemetryd_testkit::*;

use broker::*;

const TOPIC: &str = "test/counter";

/// The daemon on MQTT 5 with a 10 ms counter against `broker`.
/// `tables`: more config before the sensor (e.g. a `[homeassistant]` table).
fn start_daemon(name: &str, broker: &FakeBroker, tables: &str) -> (Env, Counter) {
    let mut env = Env::new(name);
    let log = broker.log.clone();
    env.on_failure_dump("fake broker", move || log.text());
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config_for_port(
            broker.port,
            "",
            &format!(
                "{tables}\n{}",
                counter.sensor_toml("counter", TOPIC, "10ms", 1)
            ),
        ),
        &[("[mqtt]\n", "[mqtt]\nprotocol = 5\n")],
    );
    env.write_config(&cfg);
    env.daemon.start();
    (env, counter)
}

/// PUBACK 0x97 Quota exceeded for two publishes in a row and 0x80 Unspecified error for a
/// later one: each refused reading stays in the store and goes out again after a pause, no
/// new reading is sent meanwhile beyond those already in flight, every reading is accepted
/// in the end, the warning names the code, the store ends empty, and the pause is one
/// backoff step per episode, reset once the retried reading is accepted.
#[test]
fn fake_broker_v5_retry_codes_resend() {
    use PubAckReason::{QuotaExceeded, UnspecifiedError};
    let script = Script {
        refuse: HashMap::from([
            (30, QuotaExceeded),
            (31, QuotaExceeded),
            (90, UnspecifiedError),
        ]),
        ..Script::default()
    };
    let broker = FakeBroker::start(script);
    let (mut env, counter) = start_daemon("fake_broker_v5_retry_codes", &broker, "");
    let accepted = broker.accepted_fn();
    wait_until(DEADLINE * 2, "the three refusals are behind us", || {
        let s = broker.state();
        s.publishes.len() > 150
    });
    let n = counter.pause();
    wait_until(DEADLINE, "every reading accepted", || {
        let got: std::collections::HashSet<u64> = accepted().into_iter().collect();
        (1..=n).all(|v| got.contains(&v))
    });
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0, "store not empty");

    let s = broker.state();
    let window = 20 / 2; // half the Receive Maximum
    for (ordinal, code) in [(30, "0x97"), (31, "0x97"), (90, "0x80")] {
        let refused = s.publishes[ordinal - 1].value;
        let again = s.publishes[ordinal..]
            .iter()
            .position(|p| p.value == refused)
            .unwrap_or_else(|| panic!("value {refused} (publish #{ordinal}) never sent again"));
        // Between the refusal and the resend only what was already in flight may come.
        assert!(
            again <= window,
            "{again} publishes after the refusal of {refused} before its resend: not held"
        );
        assert!(
            env.daemon.log().lines().any(|l| l.contains("WARN")
                && l.contains("the broker did not take a reading")
                && l.contains(code)),
            "no warning naming {code}"
        );
    }
    assert_eq!(s.connections, 1, "a retry code must not cost the link");
    // The pause: 1 s for the first refusal; the second one, in the same episode (in flight
    // together), waits out the same pause rather than a doubled one; after the retried reading
    // was accepted the backoff starts again at 1 s for the third.
    let pauses: Vec<f64> = env
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("the broker did not take a reading"))
        .map(|l| duration_s(log_field(l, "pause").expect("a pause field")))
        .collect();
    assert_eq!(pauses.len(), 3, "{pauses:?}");
    assert!(
        pauses.iter().all(|&p| p <= 1.0),
        "pauses {pauses:?}: the backoff grew"
    );
}

/// Home Assistant restarts while a refusal holds the window (0x97: nothing new goes out for a
/// second) and a QoS 0 sensor keeps publishing meanwhile. The copy of its last state, queued at
/// the birth and sent once the hold is over, must not be older than the readings that went out
/// before it: Home Assistant (and, with retain, the broker) would step back to an old value
/// until the next reading.
#[test]
fn fake_broker_v5_a_state_copy_never_steps_back_behind_a_live_reading() {
    let script = Script {
        refuse: HashMap::from([(30, PubAckReason::QuotaExceeded)]),
        birth_after_refusal: true,
        ..Script::default()
    };
    let broker = FakeBroker::start(script);
    let mut env = Env::new("fake_broker_v5_state_copy");
    let log = broker.log.clone();
    env.on_failure_dump("fake broker", move || log.text());
    let counter = Counter::new(env.dir(), "counter");
    let live = Counter::new(env.dir(), "live");
    let sensors = format!(
        "[homeassistant]\ndevice_name = \"Garden Pi\"\n\n{}\n{}",
        live.sensor_toml("live", "test/live", "50ms", 0),
        counter.sensor_toml("counter", TOPIC, "10ms", 1)
    );
    let cfg = tweak(
        env.config_for_port(broker.port, "", &sensors),
        &[("[mqtt]\n", "[mqtt]\nprotocol = 5\n")],
    );
    env.write_config(&cfg);
    env.daemon.start();
    let others = || lock(&broker.state).others.clone();
    wait_until(
        DEADLINE,
        "a copy of test/live's state after the birth",
        || {
            others()
                .iter()
                .any(|(t, _, qos1)| t == "test/live" && *qos1)
        },
    );
    env.daemon.stop_expect_success();
    let seen = others();
    let birth = seen
        .iter()
        .position(|(t, ..)| t == BIRTH_SENT)
        .expect("the birth was passed on");
    let live: Vec<(usize, u64, bool)> = seen
        .iter()
        .enumerate()
        .filter(|(_, (t, ..))| t == "test/live")
        .map(|(i, (_, p, qos1))| (i, p.parse().expect("an integer"), *qos1))
        .collect();
    let &(copy_at, copy, _) = live.iter().find(|l| l.2).expect("a copy");
    let during_hold = live
        .iter()
        .filter(|&&(i, _, qos1)| !qos1 && i > birth && i < copy_at)
        .count();
    assert!(
        during_hold > 0,
        "no QoS 0 reading went out between the birth and the copy: the test shows nothing"
    );
    let newest_before = live
        .iter()
        .filter(|&&(i, ..)| i < copy_at)
        .map(|l| l.1)
        .max()
        .expect("readings before the copy");
    assert!(
        copy >= newest_before,
        "the copy of test/live carries {copy}, after {newest_before} went out: Home Assistant \
         steps back to an older state"
    );
}

/// A `Duration`'s Debug text ("999.8ms", "1s") in seconds.
fn duration_s(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("duration {text:?}"));
    n * match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => panic!("duration {text:?}"),
    }
}

/// Receive Maximum 100 on the first connection, dropped mid-stream; 4 on the second, dropped
/// too; 20 after. The daemon keeps at most half of each in flight, rumqttc's packet ids follow
/// the lowered maximum (without a fresh state after the drop they ran off its table and every
/// later link failed), and every reading arrives, first deliveries in order.
#[test]
fn fake_broker_v5_receive_maximum_lowered_on_reconnect() {
    let script = Script {
        receive_max: vec![100, 4, 20],
        // A batch of 30 acks on the first link: readings pile up in flight while it lasts.
        ack_batch: vec![30],
        drop_after: vec![Some(120), Some(60)],
        ..Script::default()
    };
    let broker = FakeBroker::start(script);
    let (mut env, counter) = start_daemon("fake_broker_v5_receive_maximum", &broker, "");
    let accepted = broker.accepted_fn();
    wait_until(
        DEADLINE * 2,
        "the third connection carries readings",
        || {
            let s = broker.state();
            s.publishes.iter().filter(|p| p.conn == 2).count() > 50
        },
    );
    let buffer = env.buffer_path();
    drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &accepted,
        "the fake broker",
        0,
    );
    let s = broker.state();
    for (conn, receive_max) in [(0, 100), (1, 4), (2, 20)] {
        assert!(
            s.max_unacked[conn] <= receive_max / 2,
            "connection {conn}: {} unacknowledged at once, Receive Maximum {receive_max}",
            s.max_unacked[conn]
        );
    }
    assert!(
        s.max_unacked[0] >= 30,
        "the first link never used its larger window: {}",
        s.max_unacked[0]
    );
}

/// A broker whose CONNACK says Server Keep Alive 0. rumqttc adopts it, and a keep-alive of 0
/// pings without pause: the second PINGREQ before the first PINGRESP fails the link, in a
/// loop. The daemon keeps its own keep-alive (5 s): one connection, a handful of pings, every
/// reading delivered in order.
#[test]
fn fake_broker_v5_server_keep_alive_zero() {
    let script = Script {
        server_keep_alive: Some(0),
        ..Script::default()
    };
    let broker = FakeBroker::start(script);
    let (mut env, counter) = start_daemon("fake_broker_v5_server_keep_alive", &broker, "");
    let accepted = broker.accepted_fn();
    counter.wait_value_at_least(300, "3 s of readings");
    let buffer = env.buffer_path();
    drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &accepted,
        "the fake broker",
        0,
    );
    let s = broker.state();
    assert_eq!(s.connections, 1, "the link failed and was made again");
    assert!(
        s.pings <= 3,
        "{} PINGREQs in a few seconds at a 5 s keep-alive",
        s.pings
    );
}

/// A broker that refuses the Home Assistant subscription (SUBACK 0x87; Mosquitto 2.0 grants
/// an ACL-denied subscription and filters it instead). The daemon says so once, in its own
/// words (rumqttc's per-packet warnings are silenced), and not again when it subscribes on
/// the next link; the readings go on.
#[test]
fn fake_broker_v5_refused_subscription_is_logged_once() {
    let script = Script {
        refuse_subscriptions: true,
        drop_after: vec![Some(50)],
        ..Script::default()
    };
    let broker = FakeBroker::start(script);
    let (mut env, counter) = start_daemon(
        "fake_broker_v5_refused_subscription",
        &broker,
        "[homeassistant]\ndevice_name = \"Garden Pi\"\n",
    );
    let accepted = broker.accepted_fn();
    wait_until(DEADLINE, "a subscription on the second link", || {
        broker.state().subscribes >= 2
    });
    let buffer = env.buffer_path();
    drain_and_stop_by(
        &mut env.daemon,
        &buffer,
        &counter,
        &accepted,
        "the fake broker",
        0,
    );
    let log = env.daemon.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused the Home Assistant subscription"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("ERROR") && refused[0].contains("NotAuthorized"));
    assert!(!log.contains("SubAck"), "rumqttc's own warning got through");
}
