//! A TCP proxy between the daemon and a real broker, for link faults a broker will not make on
//! demand, and a witness of what the broker acknowledged.
//!
//! Modes, switched by the test at any moment:
//! - [`Mode::Forward`]: bytes go both ways.
//! - [`Mode::Down`]: every connection is closed, new ones are accepted and closed at once
//!   (the broker's host is unreachable, loudly).
//! - [`Mode::Silent`]: a half-open link, what a Wi-Fi drop looks like. Nothing is forwarded in
//!   either direction and nothing is closed: bytes are read and thrown away, new connections
//!   are accepted and never answered. A connection that went silent stays silent for good
//!   (its bytes are gone), until its owner closes it.
//!
//! With [`Proxy::set_chaos`], each new connection is cut (both sides closed) after a random
//! number of bytes in a random direction, usually in the middle of a packet.
//!
//! The proxy also parses the MQTT stream it forwards: a PUBACK read from the broker
//! acknowledges the QoS 1 PUBLISH with that packet id on that connection. So a test knows
//! exactly which readings the broker accepted, which is what may be lost when the broker is
//! SIGKILLed (the broker's loss, not the daemon's), and which readings left the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::*;

const MAX_PACKET: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Down,
    Silent,
}

/// A publish as seen on the wire.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// Unix seconds, to set against the daemon's log.
    pub wall: f64,
    pub conn: usize,
    pub topic: String,
    pub payload: String,
}

#[derive(Default)]
pub struct ProxyState {
    pub connections: usize,
    /// Connections currently forwarding (open to the broker).
    pub open: usize,
    /// Connections cut by chaos.
    pub cuts: usize,
    /// QoS 1 publishes forwarded to the broker, in order.
    pub forwarded: Vec<Seen>,
    /// QoS 1 publishes the broker acknowledged (its PUBACK was read), in order of the acks.
    pub acked: Vec<Seen>,
    /// Counts that draining does not reset.
    pub forwarded_total: u64,
    pub acked_total: u64,
    /// The generator and the settings, while chaos is on.
    chaos: Option<(Rng, Chaos)>,
}

/// Where [`Proxy::set_chaos`] cuts: with equal chance after a number of bytes from the daemon
/// or from the broker, drawn from these inclusive ranges.
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    pub seed: u64,
    pub daemon_bytes: (u64, u64),
    pub broker_bytes: (u64, u64),
}

pub struct Proxy {
    pub port: u16,
    pub upstream: u16,
    state: Arc<Mutex<ProxyState>>,
    mode: watch::Sender<Mode>,
    pub log: EventLog,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let (rt, listener, port) = loopback_server();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let log = EventLog::default();
        let (mode, _) = watch::channel(Mode::Forward);
        {
            let (state, log, mode) = (state.clone(), log.clone(), mode.clone());
            rt.spawn(async move {
                loop {
                    let (sock, _) = match listener.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            log.push(format!("accept: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let conn = {
                        let mut st = lock(&state);
                        st.connections += 1;
                        st.connections - 1
                    };
                    let (state, log, rx) = (state.clone(), log.clone(), mode.subscribe());
                    tokio::spawn(async move {
                        let why = serve(sock, conn, upstream, rx, &state, &log).await;
                        log.push(format!("{} conn {conn}: {why}", stamp()));
                    });
                }
            });
        }
        Proxy {
            port,
            upstream,
            state,
            mode,
            log,
            rt: Some(rt),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.log.push(format!("{} mode {mode:?}", stamp()));
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// From now on every new connection is cut after a random number of bytes (see
    /// [`Chaos`]). `None` turns it off.
    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        self.log.push(format!("{} chaos {chaos:?}", stamp()));
        lock(&self.state).chaos = chaos.map(|c| (Rng::new(c.seed), c));
    }

    pub fn state(&self) -> MutexGuard<'_, ProxyState> {
        lock(&self.state)
    }

    /// Waits until no connection is open to the broker, so everything the broker sent before
    /// it went away has been read (and its acks counted).
    pub fn wait_no_open_connection(&self) {
        wait_until(DEADLINE, "the proxy has no open broker connection", || {
            self.state().open == 0
        });
    }

    /// Payloads on `topic` that the broker acknowledged, as integers.
    pub fn acked_values(&self, topic: &str) -> Vec<u64> {
        self.state()
            .acked
            .iter()
            .filter(|s| s.topic == topic)
            .filter_map(|s| s.payload.parse().ok())
            .collect()
    }

    /// Payloads on `topic` that were forwarded to the broker, as integers.
    pub fn forwarded_values(&self, topic: &str) -> Vec<u64> {
        self.state()
            .forwarded
            .iter()
            .filter(|s| s.topic == topic)
            .filter_map(|s| s.payload.parse().ok())
            .collect()
    }

    /// Takes the acknowledged publishes recorded so far (a long run drains them as it goes).
    pub fn drain_acked(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state().acked)
    }

    /// Forgets the forwarded publishes recorded so far; returns how many there were.
    pub fn drain_forwarded(&self) -> usize {
        std::mem::take(&mut self.state().forwarded).len()
    }

    /// A summary for the failure dump.
    pub fn dump_fn(&self) -> impl Fn() -> String + Send + 'static {
        let (state, log) = (self.state.clone(), self.log.clone());
        move || {
            let s = lock(&state);
            format!(
                "connections {}, open {}, chaos cuts {}, publishes forwarded {}, acked by the \
                 broker {}\nevents:\n{}",
                s.connections,
                s.open,
                s.cuts,
                s.forwarded_total,
                s.acked_total,
                log.text()
            )
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn lock(state: &Mutex<ProxyState>) -> MutexGuard<'_, ProxyState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds since the Unix epoch, for event lines that can be set against the daemon's log.
fn stamp() -> String {
    format!("{:.3}", unix_now())
}

/// Reads MQTT packets out of one direction of a connection.
#[derive(Default)]
struct Parser {
    buf: BytesMut,
    broken: bool,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => out.push(p),
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        out
    }
}

/// Per connection: what was published, by packet id, until the broker acks it.
struct Witness {
    conn: usize,
    c2s: Parser,
    s2c: Parser,
    pending: HashMap<u16, (String, String)>,
}

impl Witness {
    fn client_bytes(&mut self, bytes: &[u8], state: &Mutex<ProxyState>) {
        for p in self.c2s.feed(bytes) {
            if let Packet::Publish(p) = p
                && p.qos == QoS::AtLeastOnce
            {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                self.pending
                    .insert(p.pkid, (p.topic.clone(), payload.clone()));
                let mut st = lock(state);
                st.forwarded_total += 1;
                st.forwarded.push(Seen {
                    at: Instant::now(),
                    wall: unix_now(),
                    conn: self.conn,
                    topic: p.topic,
                    payload,
                });
            }
        }
    }

    fn broker_bytes(&mut self, bytes: &[u8], state: &Mutex<ProxyState>) {
        for p in self.s2c.feed(bytes) {
            if let Packet::PubAck(ack) = p
                && let Some((topic, payload)) = self.pending.remove(&ack.pkid)
            {
                let mut st = lock(state);
                st.acked_total += 1;
                st.acked.push(Seen {
                    at: Instant::now(),
                    wall: unix_now(),
                    conn: self.conn,
                    topic,
                    payload,
                });
            }
        }
    }
}

/// Serves one accepted connection; returns why it ended.
async fn serve(
    client: TcpStream,
    conn: usize,
    upstream: u16,
    mut mode: watch::Receiver<Mode>,
    state: &Mutex<ProxyState>,
    log: &EventLog,
) -> String {
    let now = *mode.borrow_and_update();
    match now {
        Mode::Down => return "refused (down)".into(),
        Mode::Silent => {
            log.push(format!("{} conn {conn}: accepted into silence", stamp()));
            let (r, w) = client.into_split();
            return sink(r, w, None, &mut mode).await;
        }
        Mode::Forward => {}
    }
    let broker = match TcpStream::connect(("127.0.0.1", upstream)).await {
        Ok(s) => s,
        Err(e) => return format!("cannot reach the broker: {e}"),
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    // (direction: 0 daemon->broker, 1 broker->daemon; byte count) after which it is cut.
    let cut_at = lock(state).chaos.as_mut().map(|(rng, c)| {
        if rng.chance(0.5) {
            (0usize, rng.range(c.daemon_bytes.0, c.daemon_bytes.1))
        } else {
            (1usize, rng.range(c.broker_bytes.0, c.broker_bytes.1))
        }
    });
    log.push(format!(
        "{} conn {conn}: forwarding{}",
        stamp(),
        cut_at.map_or(String::new(), |(d, n)| format!(
            ", cut after {n} bytes {}",
            ["daemon->broker", "broker->daemon"][d]
        ))
    ));
    lock(state).open += 1;
    let why = forward(client, broker, conn, cut_at, &mut mode, state).await;
    lock(state).open -= 1;
    match why {
        Ended::Closed(why) => why,
        Ended::Silenced(cr, cw, br, bw) => {
            log.push(format!("{} conn {conn}: silenced", stamp()));
            sink(cr, cw, Some((br, bw)), &mut mode).await
        }
    }
}

enum Ended {
    Closed(String),
    Silenced(OwnedReadHalf, OwnedWriteHalf, OwnedReadHalf, OwnedWriteHalf),
}

async fn forward(
    client: TcpStream,
    broker: TcpStream,
    conn: usize,
    cut_at: Option<(usize, u64)>,
    mode: &mut watch::Receiver<Mode>,
    state: &Mutex<ProxyState>,
) -> Ended {
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let mut witness = Witness {
        conn,
        c2s: Parser::default(),
        s2c: Parser::default(),
        pending: HashMap::new(),
    };
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let mut moved = [0u64; 2];
    loop {
        let (dir, n) = tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return Ended::Closed("proxy stopped".into());
                }
                let now = *mode.borrow_and_update();
                match now {
                    Mode::Forward => continue,
                    Mode::Down => return Ended::Closed("closed (down)".into()),
                    Mode::Silent => return Ended::Silenced(cr, cw, br, bw),
                }
            }
            r = cr.read(&mut a) => match r {
                Ok(0) => return Ended::Closed("closed by the daemon".into()),
                Ok(n) => (0, n),
                Err(e) => return Ended::Closed(format!("daemon side: {e}")),
            },
            r = br.read(&mut b) => match r {
                Ok(0) => return Ended::Closed("closed by the broker".into()),
                Ok(n) => (1, n),
                Err(e) => return Ended::Closed(format!("broker side: {e}")),
            },
        };
        // Bytes past a chaos cut are never forwarded.
        let mut len = n;
        let mut cut = false;
        if let Some((d, at)) = cut_at
            && d == dir
            && moved[d] + n as u64 >= at
        {
            len = (at - moved[d]) as usize;
            cut = true;
        }
        moved[dir] += len as u64;
        let written = if dir == 0 {
            witness.client_bytes(&a[..len], state);
            write_all(&mut bw, &a[..len]).await
        } else {
            // A PUBACK read from the broker counts as acknowledged even if it is cut here:
            // the broker has accepted the message.
            witness.broker_bytes(&b[..n], state);
            write_all(&mut cw, &b[..len]).await
        };
        if cut {
            lock(state).cuts += 1;
            return Ended::Closed(format!(
                "cut by chaos after {} bytes {}",
                moved[dir],
                ["daemon->broker", "broker->daemon"][dir]
            ));
        }
        if let Err(e) = written {
            return Ended::Closed(format!("write: {e}"));
        }
    }
}

async fn write_all(w: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    w.write_all(bytes).await
}

/// A dead link: reads and drops whatever comes, answers nothing, closes nothing, until the
/// daemon closes its side (or the proxy goes [`Mode::Down`]). The broker side (if any) is
/// held open the same way until the broker gives up on it.
async fn sink(
    mut cr: OwnedReadHalf,
    _cw: OwnedWriteHalf,
    broker: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    mode: &mut watch::Receiver<Mode>,
) -> String {
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let (mut br, _bw) = match broker {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            changed = mode.changed() => {
                let now = *mode.borrow_and_update();
                if changed.is_err() || now == Mode::Down {
                    return format!("silent link closed (down) ({dropped} bytes dropped)");
                }
            }
            r = cr.read(&mut a) => match r {
                Ok(0) => return format!("silent link closed by the daemon ({dropped} bytes dropped)"),
                Ok(n) => dropped += n as u64,
                Err(e) => return format!("silent link: daemon side {e}"),
            },
            r = async { br.as_mut().unwrap().read(&mut b).await }, if br.is_some() => match r {
                Ok(n) if n > 0 => dropped += n as u64,
                _ => br = None, // the broker gave up; the daemon must find out by itself
            },
        }
    }
}
