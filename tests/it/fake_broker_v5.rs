//! A scripted MQTT 5 broker for what Mosquitto will not do on demand: PUBACKs with a *retry*
//! reason code (0x97 Quota exceeded, 0x80 Unspecified error) and a Receive Maximum that drops
//! between two connections. Packets are parsed and written with rumqttc's `mqttbytes::v5`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, PubAckReason, Publish,
    SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{Error as MqttError, QoS};
use telemetryd_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_PACKET: u32 = 1 << 20;
/// Held PUBACKs go out after this much silence from the client.
const ACK_FLUSH: Duration = Duration::from_millis(30);
const TOPIC: &str = "test/counter";

#[derive(Clone, Debug, Default)]
struct Script {
    /// The CONNACK's Receive Maximum on the i-th connection (past the list: 20).
    receive_max: Vec<u16>,
    /// Close the i-th connection after this many PUBLISH packets, acks held back unsent.
    drop_after: Vec<Option<usize>>,
    /// PUBACKs on the i-th connection are held until this many are pending; past the list,
    /// until [`ACK_FLUSH`] of silence.
    ack_batch: Vec<usize>,
    /// The CONNACK's Server Keep Alive, on every connection.
    server_keep_alive: Option<u16>,
    /// Every SUBSCRIBE is answered 0x87 Not authorized, filter by filter.
    refuse_subscriptions: bool,
    /// The n-th PUBLISH over the broker's life (1-based) is answered with this reason code.
    refuse: HashMap<usize, PubAckReason>,
    /// Right after a refusal's PUBACK, the broker passes on Home Assistant's birth message
    /// (`online` on `homeassistant/status`), as if Home Assistant restarted just then.
    birth_after_refusal: bool,
}

/// One PUBLISH as the broker saw it, with its answer.
#[derive(Clone, Debug)]
struct Seen {
    conn: usize,
    value: u64,
    reason: PubAckReason,
}

#[derive(Default)]
struct State {
    connections: usize,
    publishes: Vec<Seen>,
    /// Per connection: the most publishes that were unacknowledged at once.
    max_unacked: Vec<usize>,
    pings: usize,
    subscribes: usize,
    /// Every PUBLISH on another topic than [`TOPIC`], in arrival order: (topic, payload, QoS 1).
    others: Vec<(String, String, bool)>,
}

struct FakeBroker {
    port: u16,
    state: Arc<Mutex<State>>,
    log: EventLog,
    rt: Option<tokio::runtime::Runtime>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBroker {
    fn start(script: Script) -> FakeBroker {
        let (rt, listener, port) = loopback_server();
        let state = Arc::new(Mutex::new(State::default()));
        let log = EventLog::default();
        let script = Arc::new(script);
        let (st, lg) = (state.clone(), log.clone());
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn = {
                    let mut s = lock(&st);
                    s.connections += 1;
                    s.max_unacked.push(0);
                    s.connections - 1
                };
                let (script, st, lg) = (script.clone(), st.clone(), lg.clone());
                tokio::spawn(async move {
                    let why = serve(sock, conn, &script, &st, &lg).await;
                    lg.push(format!("conn {conn}: closed: {why}"));
                });
            }
        });
        FakeBroker {
            port,
            state,
            log,
            rt: Some(rt),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Values the broker accepted (a success PUBACK), in the order it accepted them.
    fn accepted_fn(&self) -> impl Fn() -> Vec<u64> + 'static {
        let state = self.state.clone();
        move || {
            lock(&state)
                .publishes
                .iter()
                .filter(|p| p.reason == PubAckReason::Success)
                .map(|p| p.value)
                .collect()
        }
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn write(sock: &mut TcpStream, packet: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, Some(MAX_PACKET))
        .map_err(std::io::Error::other)?;
    sock.write_all(&out).await
}

/// Marks, in [`State::others`], where the birth message went out.
const BIRTH_SENT: &str = "(birth sent)";

/// Writes the held PUBACKs, then the birth message if one is due.
async fn flush(
    sock: &mut TcpStream,
    held: &mut Vec<PubAck>,
    birth: &mut bool,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    for ack in held.drain(..) {
        write(sock, Packet::PubAck(ack)).await?;
    }
    if std::mem::take(birth) {
        lock(state)
            .others
            .push((BIRTH_SENT.into(), String::new(), false));
        let online = Publish::new("homeassistant/status", QoS::AtMostOnce, "online", None);
        write(sock, Packet::Publish(online)).await?;
    }
    Ok(())
}

async fn serve(
    mut sock: TcpStream,
    conn: usize,
    script: &Script,
    state: &Mutex<State>,
    log: &EventLog,
) -> String {
    let receive_max = script.receive_max.get(conn).copied().unwrap_or(20);
    let drop_after = script.drop_after.get(conn).copied().flatten();
    let ack_batch = script.ack_batch.get(conn).copied().unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(4096);
    let mut held: Vec<PubAck> = Vec::new();
    // A birth message to pass on once the held acks (a refusal among them) are written.
    let mut birth = false;
    let mut publishes = 0;
    loop {
        let packet = match Packet::read(&mut buf, Some(MAX_PACKET)) {
            Ok(p) => p,
            Err(MqttError::InsufficientBytes(_)) => {
                let read = if held.is_empty() || ack_batch != usize::MAX {
                    sock.read_buf(&mut buf).await
                } else {
                    // read_buf is cancel-safe: on timeout nothing was read.
                    match tokio::time::timeout(ACK_FLUSH, sock.read_buf(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => {
                            if let Err(e) = flush(&mut sock, &mut held, &mut birth, state).await {
                                return format!("write error {e}");
                            }
                            continue;
                        }
                    }
                };
                match read {
                    Ok(0) => return "closed by the client".into(),
                    Ok(_) => continue,
                    Err(e) => return format!("read error {e}"),
                }
            }
            Err(e) => return format!("protocol error {e}"),
        };
        let result = match packet {
            Packet::Connect(c, _, _) => {
                log.push(format!(
                    "conn {conn}: CONNECT clean_start={} -> Receive Maximum {receive_max}",
                    c.clean_start
                ));
                let props = ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: Some(receive_max),
                    max_qos: None,
                    retain_available: None,
                    max_packet_size: None,
                    assigned_client_identifier: None,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: None,
                    subscription_identifiers_available: None,
                    shared_subscription_available: None,
                    server_keep_alive: script.server_keep_alive,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                };
                let connack = ConnAck {
                    session_present: !c.clean_start,
                    code: ConnectReturnCode::Success,
                    properties: Some(props),
                };
                write(&mut sock, Packet::ConnAck(connack)).await
            }
            Packet::Publish(p) if p.qos == QoS::AtMostOnce => {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                lock(state).others.push((topic, payload, false));
                Ok(())
            }
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                publishes += 1;
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if topic != TOPIC {
                    lock(state)
                        .others
                        .push((topic.clone(), payload.clone(), true));
                }
                let reason = {
                    let mut s = lock(state);
                    let reason = if topic == TOPIC {
                        let ordinal = s.publishes.len() + 1;
                        let reason = script
                            .refuse
                            .get(&ordinal)
                            .copied()
                            .unwrap_or(PubAckReason::Success);
                        let value = payload.parse().unwrap_or_else(|_| {
                            panic!("payload {payload:?} on {topic} is not an integer")
                        });
                        s.publishes.push(Seen {
                            conn,
                            value,
                            reason,
                        });
                        log.push(format!(
                            "conn {conn}: PUBLISH #{ordinal} {payload} -> {reason:?}"
                        ));
                        reason
                    } else {
                        PubAckReason::Success // availability and the like
                    };
                    s.max_unacked[conn] = s.max_unacked[conn].max(held.len() + 1);
                    reason
                };
                birth |= script.birth_after_refusal && reason != PubAckReason::Success;
                held.push(PubAck {
                    pkid: p.pkid,
                    reason,
                    properties: None,
                });
                if drop_after == Some(publishes) {
                    return format!("dropped after {publishes} publishes (script)");
                }
                if held.len() >= ack_batch {
                    flush(&mut sock, &mut held, &mut birth, state).await
                } else {
                    Ok(())
                }
            }
            Packet::PingReq(_) => {
                lock(state).pings += 1;
                write(&mut sock, Packet::PingResp(PingResp)).await
            }
            Packet::Subscribe(sub) => {
                lock(state).subscribes += 1;
                let code = if script.refuse_subscriptions {
                    SubscribeReasonCode::NotAuthorized
                } else {
                    SubscribeReasonCode::Success(QoS::AtLeastOnce)
                };
                let ack = SubAck {
                    pkid: sub.pkid,
                    return_codes: vec![code; sub.filters.len()],
                    properties: None,
                };
                write(&mut sock, Packet::SubAck(ack)).await
            }
            Packet::Disconnect(_) => return "DISCONNECT from the client".into(),
            other => {
                log.push(format!("conn {conn}: unexpected {other:?}"));
                Ok(())
            }
        };
        if let Err(e) = result {
            return format!("write error {e}");
        }
    }
}

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
