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

mod link;
mod witness;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::*;
use link::serve;

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
