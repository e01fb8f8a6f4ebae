//! The scripted MQTT 5 broker ([`FakeBroker`]): its PUBACK reason codes, Receive Maximum,
//! keep-alive and SUBACK answers as a test sets them.

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

use super::*;

const MAX_PACKET: u32 = 1 << 20;
/// Held PUBACKs go out after this much silence from the client.
const ACK_FLUSH: Duration = Duration::from_millis(30);

#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The CONNACK's Receive Maximum on the i-th connection (past the list: 20).
    pub receive_max: Vec<u16>,
    /// Close the i-th connection after this many PUBLISH packets, acks held back unsent.
    pub drop_after: Vec<Option<usize>>,
    /// PUBACKs on the i-th connection are held until this many are pending; past the list,
    /// until [`ACK_FLUSH`] of silence.
    pub ack_batch: Vec<usize>,
    /// The CONNACK's Server Keep Alive, on every connection.
    pub server_keep_alive: Option<u16>,
    /// Every SUBSCRIBE is answered 0x87 Not authorized, filter by filter.
    pub refuse_subscriptions: bool,
    /// The n-th PUBLISH over the broker's life (1-based) is answered with this reason code.
    pub refuse: HashMap<usize, PubAckReason>,
    /// Right after a refusal's PUBACK, the broker passes on Home Assistant's birth message
    /// (`online` on `homeassistant/status`), as if Home Assistant restarted just then.
    pub birth_after_refusal: bool,
}

/// One PUBLISH as the broker saw it, with its answer.
#[derive(Clone, Debug)]
pub struct Seen {
    pub conn: usize,
    pub value: u64,
    pub reason: PubAckReason,
}

#[derive(Default)]
pub struct State {
    pub connections: usize,
    pub publishes: Vec<Seen>,
    /// Per connection: the most publishes that were unacknowledged at once.
    pub max_unacked: Vec<usize>,
    pub pings: usize,
    pub subscribes: usize,
    /// Every PUBLISH on another topic than [`TOPIC`], in arrival order: (topic, payload, QoS 1).
    pub others: Vec<(String, String, bool)>,
}

pub struct FakeBroker {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    pub log: EventLog,
    pub rt: Option<tokio::runtime::Runtime>,
}

pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBroker {
    pub fn start(script: Script) -> FakeBroker {
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

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Values the broker accepted (a success PUBACK), in the order it accepted them.
    pub fn accepted_fn(&self) -> impl Fn() -> Vec<u64> + 'static {
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
pub const BIRTH_SENT: &str = "(birth sent)";

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
