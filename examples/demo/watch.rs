//! The demo's subscriber (a real MQTT client on `demo/#`) and its tally: which readings of
//! this run arrived, whether each topic's came in order, and which are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, SystemTime};

use rumqttc::{Client, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde::Deserialize;

/// What the demo's threads report to its main loop.
pub enum Event {
    Subscribed,
    Message { topic: String, payload: String },
    SubscriberError(String),
    DaemonLog(String),
}

/// Subscribes to `demo/#` with QoS 1 on 127.0.0.1:`port` and reports every message; the
/// connection lives in a thread until the process exits.
pub fn subscribe(port: u16, events: Sender<Event>) {
    let mut options = MqttOptions::new(
        format!("telemetryd-demo-watch-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = Client::new(options, 64);
    thread::spawn(move || {
        let mut reported_error = false;
        for event in connection.iter() {
            let sent = match event {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    reported_error = false;
                    client
                        .try_subscribe("demo/#", QoS::AtLeastOnce)
                        .map_err(|e| events.send(Event::SubscriberError(e.to_string())))
                        .ok();
                    Ok(())
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => events.send(Event::Subscribed),
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => events.send(Event::Message {
                    topic: p.topic,
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                }),
                Ok(_) => Ok(()),
                Err(e) => {
                    let sent = if reported_error {
                        Ok(())
                    } else {
                        events.send(Event::SubscriberError(e.to_string()))
                    };
                    reported_error = true;
                    thread::sleep(Duration::from_millis(500));
                    sent
                }
            };
            if sent.is_err() {
                return; // the demo is over
            }
        }
    });
}

/// A JSON payload as telemetryd renders it.
#[derive(Deserialize)]
struct Json {
    value: f64,
    #[serde(default)]
    unit: String,
    ts: String,
    seq: u64,
}

/// What one message was, for the line the demo prints about it.
pub enum Note {
    /// Read this run; `waited` is how long it took from the sensor to the subscriber.
    Fresh {
        value: String,
        waited: Duration,
    },
    Duplicate {
        value: String,
    },
    EarlierRun {
        value: String,
        ts: String,
    },
    NotJson,
}

/// Every reading of this run (taken at or after `since`) by `seq`, which telemetryd gives to
/// every reading in the order they are taken, one apart.
pub struct Tally {
    since: SystemTime,
    seen: BTreeSet<u64>,
    last_per_topic: BTreeMap<String, u64>,
    newest: SystemTime,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub not_json: u64,
}

/// The end of the story: how many readings of this run arrived and which are missing.
pub struct Verdict {
    pub received: usize,
    pub missing: Vec<u64>,
}

impl Tally {
    pub fn new(since: SystemTime) -> Tally {
        Tally {
            since,
            seen: BTreeSet::new(),
            last_per_topic: BTreeMap::new(),
            newest: since,
            duplicates: 0,
            out_of_order: 0,
            not_json: 0,
        }
    }

    pub fn add(&mut self, topic: &str, payload: &str, arrived: SystemTime) -> Note {
        let parsed = serde_json::from_str::<Json>(payload)
            .ok()
            .and_then(|j| humantime::parse_rfc3339(&j.ts).ok().map(|taken| (j, taken)));
        let Some((json, taken)) = parsed else {
            self.not_json += 1;
            return Note::NotJson;
        };
        let value = format!("{} {}", json.value, json.unit)
            .trim_end()
            .to_string();
        if taken < self.since {
            return Note::EarlierRun { value, ts: json.ts };
        }
        if !self.seen.insert(json.seq) {
            self.duplicates += 1;
            return Note::Duplicate { value };
        }
        // New readings of one topic must come in the order they were taken.
        let last = self.last_per_topic.entry(topic.to_string()).or_insert(0);
        if json.seq < *last {
            self.out_of_order += 1;
        }
        *last = (*last).max(json.seq);
        self.newest = self.newest.max(taken);
        Note::Fresh {
            value,
            waited: arrived.duration_since(taken).unwrap_or_default(),
        }
    }

    /// When the newest reading received was taken.
    pub fn newest(&self) -> SystemTime {
        self.newest
    }

    /// Every `seq` between the first and the last received that did not arrive (at most 20
    /// listed).
    pub fn verdict(&self) -> Verdict {
        let missing = match (self.seen.first(), self.seen.last()) {
            (Some(&first), Some(&last)) => (first..=last)
                .filter(|s| !self.seen.contains(s))
                .take(20)
                .collect(),
            _ => Vec::new(),
        };
        Verdict {
            received: self.seen.len(),
            missing,
        }
    }
}
