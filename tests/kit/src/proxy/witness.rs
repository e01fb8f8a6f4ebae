//! What the proxy reads in the MQTT stream it forwards: QoS 1 PUBLISHes from the daemon and
//! the broker's PUBACKs for them, per connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::{Error as MqttError, QoS};

use super::{ProxyState, Seen, lock};
use crate::unix_now;

const MAX_PACKET: usize = 1 << 20;

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
pub(super) struct Witness {
    conn: usize,
    c2s: Parser,
    s2c: Parser,
    pending: HashMap<u16, (String, String)>,
}

impl Witness {
    pub(super) fn new(conn: usize) -> Witness {
        Witness {
            conn,
            c2s: Parser::default(),
            s2c: Parser::default(),
            pending: HashMap::new(),
        }
    }

    pub(super) fn client_bytes(&mut self, bytes: &[u8], state: &Mutex<ProxyState>) {
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

    pub(super) fn broker_bytes(&mut self, bytes: &[u8], state: &Mutex<ProxyState>) {
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
