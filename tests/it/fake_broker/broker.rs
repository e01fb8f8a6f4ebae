//! The scripted MQTT 3.1.1 broker ([`FakeBroker`]): what it does on each connection is its
//! [`Script`]; what it received and acknowledged is its [`State`].

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
