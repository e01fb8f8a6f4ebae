//! A scripted MQTT 3.1.1 broker for misbehaviour a real broker won't produce on demand:
//! `session_present = false` on reconnects of a persistent session, PUBACKs out of order,
//! connections dropped mid-stream with publishes unacked, and a link that goes silent
//! (half-open TCP). The real daemon is driven against it with a fast counter sensor.
//!
//! Packets are parsed and written with rumqttc's own `mqttbytes::v4` codec.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use telemetryd_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_PACKET: usize = 1 << 20;
/// Held-back PUBACKs go out after this much silence from the client, so a client with a
/// window smaller than the batch is never stalled.
const ACK_FLUSH: Duration = Duration::from_millis(30);

/// What the broker does on its i-th connection (counting from 0). Past the end of a list it
/// behaves: session present, no drop, no silence.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// CONNACK `session_present` (always false when the client asks for a clean session).
    pub session_present: Vec<bool>,
    /// Close the socket after this many PUBLISH packets (0: right after CONNACK), without
    /// sending the held-back PUBACKs.
    pub drop_after: Vec<Option<usize>>,
    /// After this many PUBLISH packets the link goes dead: the socket stays open but nothing
    /// more is recorded or answered (no PUBACK, no PINGRESP).
    pub silent_after: Vec<Option<usize>>,
    /// The PUBACK for this publish (1-based) is never sent, while everything else, PINGRESP
    /// included, goes on as normal: a broker that is alive but lost one ack.
    pub never_ack: Vec<Option<usize>>,
    /// QoS 1 PUBACKs are held until this many are pending (or [`ACK_FLUSH`] of silence), then
    /// sent newest first.
    pub ack_batch: usize,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub conn: usize,
    pub dup: bool,
    pub topic: String,
    pub payload: String,
}

#[derive(Default)]
pub struct State {
    pub connections: usize,
    pub publishes: Vec<Received>,
    pub acks_sent: usize,
    /// PUBACKs that went out before the ack of an earlier-received publish.
    pub acks_reordered: usize,
    /// Publishes that were never acked because the connection was dropped or went silent.
    pub abandoned_unacked: usize,
}

pub struct FakeBroker {
    pub port: u16,
    state: Arc<Mutex<State>>,
    pub log: EventLog,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeBroker {
    pub fn start(script: Script) -> FakeBroker {
        assert!(script.ack_batch >= 1);
        let (rt, listener, port) = loopback_server();
        let state = Arc::new(Mutex::new(State::default()));
        let log = EventLog::default();
        let script = Arc::new(script);
        {
            let (state, log) = (state.clone(), log.clone());
            rt.spawn(async move {
                loop {
                    let (sock, peer) = match listener.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            log.push(format!("accept: {e}"));
                            continue;
                        }
                    };
                    let conn = {
                        let mut st = lock(&state);
                        st.connections += 1;
                        st.connections - 1
                    };
                    log.push(format!("conn {conn}: accepted from {peer}"));
                    let (script, state, log) = (script.clone(), state.clone(), log.clone());
                    tokio::spawn(async move {
                        let why = serve(sock, conn, &script, &state, &log).await;
                        log.push(format!("conn {conn}: closed: {why}"));
                    });
                }
            });
        }
        FakeBroker {
            port,
            state,
            log,
            rt: Some(rt),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Counter values received on `topic`, in arrival order.
    pub fn values_fn(&self, topic: &str) -> impl Fn() -> Vec<u64> + Send + 'static {
        let (state, topic) = (self.state.clone(), topic.to_string());
        move || {
            lock(&state)
                .publishes
                .iter()
                .filter(|p| p.topic == topic)
                .map(|p| {
                    p.payload.parse().unwrap_or_else(|_| {
                        panic!("payload {:?} on {topic} is not an integer", p.payload)
                    })
                })
                .collect()
        }
    }

    /// A summary for the failure dump.
    pub fn dump_fn(&self, topic: &str) -> impl Fn() -> String + Send + 'static {
        let (state, log, topic) = (self.state.clone(), self.log.clone(), topic.to_string());
        move || {
            let s = lock(&state);
            let per_conn: Vec<usize> = (0..s.connections)
                .map(|c| s.publishes.iter().filter(|p| p.conn == c).count())
                .collect();
            let summary = format!(
                "connections {}, publishes per connection {per_conn:?}, acks sent {} \
                 (reordered {}), abandoned unacked {}, dup flags {}",
                s.connections,
                s.acks_sent,
                s.acks_reordered,
                s.abandoned_unacked,
                s.publishes.iter().filter(|p| p.dup).count()
            );
            // No panics here: this runs while a test is already panicking.
            let ints: Option<Vec<u64>> = s
                .publishes
                .iter()
                .filter(|p| p.topic == topic)
                .map(|p| p.payload.parse().ok())
                .collect();
            drop(s);
            let v = ints.map_or("non-integer payloads".into(), |v| describe(&v));
            format!("{summary}\n{topic}: {v}\nevents:\n{}", log.text())
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn write(sock: &mut TcpStream, packet: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, MAX_PACKET)
        .map_err(std::io::Error::other)?;
    sock.write_all(&out).await
}

/// PUBACKs for `held`, newest first.
async fn send_acks(
    sock: &mut TcpStream,
    held: &mut Vec<u16>,
    conn: usize,
    state: &Mutex<State>,
    log: &EventLog,
) -> std::io::Result<()> {
    let order: Vec<u16> = held.drain(..).rev().collect();
    for &pkid in &order {
        write(sock, Packet::PubAck(PubAck::new(pkid))).await?;
    }
    let mut st = lock(state);
    st.acks_sent += order.len();
    st.acks_reordered += order.len().saturating_sub(1);
    log.push(format!("conn {conn}: PUBACK {order:?}"));
    Ok(())
}

/// Serves one connection by the script; returns why it ended.
async fn serve(
    mut sock: TcpStream,
    conn: usize,
    script: &Script,
    state: &Mutex<State>,
    log: &EventLog,
) -> String {
    let drop_after = script.drop_after.get(conn).copied().flatten();
    let silent_after = script.silent_after.get(conn).copied().flatten();
    let never_ack = script.never_ack.get(conn).copied().flatten();
    let mut buf = BytesMut::with_capacity(4096);
    let mut held: Vec<u16> = Vec::new();
    let mut publishes = 0;
    let mut silent = false;
    loop {
        let packet = match Packet::read(&mut buf, MAX_PACKET) {
            Ok(p) => p,
            Err(MqttError::InsufficientBytes(_)) => {
                let read = if held.is_empty() {
                    sock.read_buf(&mut buf).await
                } else {
                    // read_buf is cancel-safe: on timeout nothing was read.
                    match tokio::time::timeout(ACK_FLUSH, sock.read_buf(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => {
                            if let Err(e) = send_acks(&mut sock, &mut held, conn, state, log).await
                            {
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
        if silent {
            continue; // a dead link: everything vanishes
        }
        let result = match packet {
            Packet::Connect(c) => {
                let present =
                    !c.clean_session && script.session_present.get(conn).copied().unwrap_or(true);
                log.push(format!(
                    "conn {conn}: CONNECT client_id={} clean_session={} keep_alive={} -> \
                     CONNACK session_present={present}",
                    c.client_id, c.clean_session, c.keep_alive
                ));
                let r = write(
                    &mut sock,
                    Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, present)),
                )
                .await;
                if drop_after == Some(0) {
                    return "dropped right after CONNACK (script)".into();
                }
                r
            }
            Packet::Publish(p) => {
                publishes += 1;
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                lock(state).publishes.push(Received {
                    conn,
                    dup: p.dup,
                    topic: p.topic.clone(),
                    payload: payload.clone(),
                });
                log.push(format!(
                    "conn {conn}: PUBLISH pkid={} qos={:?} dup={} {} {payload}",
                    p.pkid, p.qos, p.dup, p.topic
                ));
                match p.qos {
                    QoS::AtLeastOnce if never_ack == Some(publishes) => {
                        log.push(format!(
                            "conn {conn}: PUBACK for pkid={} withheld for good (script)",
                            p.pkid
                        ));
                    }
                    QoS::AtLeastOnce => held.push(p.pkid),
                    QoS::AtMostOnce => {}
                    QoS::ExactlyOnce => return "QoS 2 publish: not supported here".into(),
                }
                if drop_after == Some(publishes) {
                    lock(state).abandoned_unacked += held.len();
                    return format!(
                        "dropped after {publishes} publishes with {} unacked {held:?} (script)",
                        held.len()
                    );
                }
                if silent_after == Some(publishes) {
                    lock(state).abandoned_unacked += held.len();
                    log.push(format!(
                        "conn {conn}: link goes silent after {publishes} publishes, {} unacked \
                         {held:?} (script)",
                        held.len()
                    ));
                    held.clear();
                    silent = true;
                    continue;
                }
                if held.len() >= script.ack_batch {
                    send_acks(&mut sock, &mut held, conn, state, log).await
                } else {
                    Ok(())
                }
            }
            Packet::PingReq => write(&mut sock, Packet::PingResp).await,
            Packet::Disconnect => return "DISCONNECT from the client".into(),
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
