//! The task that feeds the outbox to MQTT in key order and deletes readings on PUBACK.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Link, SHUTDOWN_GRACE, WINDOW};
use crate::Stats;
use crate::outbox::Outbox;

/// A QoS 0 reading: published if connected, otherwise gone. Never stored.
#[derive(Debug)]
pub struct LiveMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

struct Feeder {
    client: AsyncClient,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    connected: bool,
    /// Highest key handed to the client since the last (re)connect or rewind.
    cursor: Option<u64>,
    /// Keys handed to the client whose `Outgoing::Publish` event has not come yet. rumqttc
    /// writes requests in channel order and this task is the only publisher, so the n-th
    /// QoS 1 publish event belongs to the n-th key here.
    unsent: VecDeque<u64>,
    /// Packet id -> key of the reading it carries, until its PUBACK.
    inflight: HashMap<u16, u64>,
    /// The outbox generation the cursor belongs to.
    generation: u64,
    acked: Vec<u64>,
}

pub(super) async fn run(
    client: AsyncClient,
    outbox: Arc<Outbox>,
    mut link: mpsc::Receiver<Link>,
    mut live: mpsc::Receiver<LiveMessage>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let generation = outbox.generation();
    let mut f = Feeder {
        client,
        outbox: outbox.clone(),
        stats,
        connected: false,
        cursor: None,
        unsent: VecDeque::new(),
        inflight: HashMap::new(),
        generation,
        acked: Vec::new(),
    };
    let mut stopping = false;
    let mut deadline = Instant::now() + SHUTDOWN_GRACE * 1000;
    let mut live_open = true;
    loop {
        if !stopping {
            f.fill();
        } else if f.outstanding() == 0 {
            break;
        }
        let room = f.connected && f.outstanding() < WINDOW && !stopping;
        tokio::select! {
            biased;
            event = link.recv() => {
                let Some(event) = event else { break };
                f.handle(event);
                // Take everything already queued, so acks are removed from the store in one go.
                while let Ok(event) = link.try_recv() {
                    f.handle(event);
                }
                f.remove_acked();
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                deadline = Instant::now() + SHUTDOWN_GRACE;
                if f.outstanding() > 0 {
                    info!(in_flight = f.outstanding(), grace = ?SHUTDOWN_GRACE, "waiting for in-flight readings to be acknowledged");
                }
            }
            _ = sleep_until(deadline), if stopping => {
                warn!(unacknowledged = f.outstanding(), "grace period over: unacknowledged readings stay in the store and go out first on the next start");
                break;
            }
            msg = live.recv(), if live_open => match msg {
                Some(msg) => f.publish_live(msg),
                None => live_open = false,
            },
            _ = outbox.new_data.notified(), if room => {}
        }
    }
    // Best effort: the connection task waits briefly for it to go out.
    let _ = f.client.try_disconnect();
}

impl Feeder {
    fn outstanding(&self) -> usize {
        self.unsent.len() + self.inflight.len()
    }

    /// Hands readings to the client until the window is full or the outbox has no more.
    fn fill(&mut self) {
        if !self.connected {
            return;
        }
        let generation = self.outbox.generation();
        if generation != self.generation {
            // The store was reopened: what is readable changed under us. Start over; keys
            // still in flight are skipped below.
            self.generation = generation;
            self.cursor = None;
        }
        while self.outstanding() < WINDOW {
            let batch = self
                .outbox
                .read_after(self.cursor, WINDOW - self.outstanding());
            if batch.is_empty() {
                return;
            }
            for (key, record) in batch {
                if self.unsent.contains(&key) || self.inflight.values().any(|k| *k == key) {
                    self.cursor = Some(key);
                    continue;
                }
                if let Err(e) = self.client.try_publish(
                    record.topic,
                    QoS::AtLeastOnce,
                    record.retain,
                    record.payload,
                ) {
                    // The request channel has room for a full window, so this means the
                    // connection task is gone; the reading stays in the store.
                    debug!(error = %e, "publish request not accepted");
                    return;
                }
                self.cursor = Some(key);
                self.unsent.push_back(key);
            }
        }
    }

    fn handle(&mut self, event: Link) {
        match event {
            Link::Connected => {
                self.connected = true;
                self.cursor = None;
            }
            Link::Sent(0) => {} // QoS 0: nothing to track
            Link::Sent(pkid) => match self.unsent.pop_front() {
                Some(key) => {
                    if let Some(old) = self.inflight.insert(pkid, key) {
                        warn!(
                            pkid,
                            old,
                            key,
                            "packet id reused before its ack; the older reading will be resent"
                        );
                    }
                }
                None => warn!(pkid, "publish event with no reading queued"),
            },
            Link::Acked(pkid) => match self.inflight.remove(&pkid) {
                Some(key) => self.acked.push(key),
                None => debug!(pkid, "ack for a packet id not in flight"),
            },
            Link::Down(done) => {
                // Everything unacknowledged is still in the store and is read again, in key
                // order, after the next CONNACK, whatever `session_present` says.
                self.connected = false;
                self.unsent.clear();
                self.inflight.clear();
                self.cursor = None;
                let _ = done.send(());
            }
        }
    }

    fn remove_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        self.outbox.remove(&self.acked);
        self.stats
            .published
            .fetch_add(self.acked.len() as u64, Ordering::Relaxed);
        self.acked.clear();
    }

    fn publish_live(&mut self, msg: LiveMessage) {
        if !self.connected {
            self.stats.live_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self
            .client
            .try_publish(msg.topic, QoS::AtMostOnce, msg.retain, msg.payload)
        {
            Ok(()) => self.stats.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.live_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}
