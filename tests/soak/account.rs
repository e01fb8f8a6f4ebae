//! The hostile phase's accounting of what the subscriber got: first deliveries of the QoS 1
//! counters (order per sensor and by `seq`), and message counts of everything else.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use telemetryd_testkit::parse_sub_lines;

pub const COUNTER_PREFIX: &str = "hostile/q1/";

#[derive(Default)]
pub struct Stream {
    pub first: HashSet<u64>,
    pub max_first: u64,
    pub reorders: Vec<(u64, u64)>,
}

pub struct Account {
    out: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    names: Vec<String>,
    pub streams: Vec<Stream>,
    max_seq: u64,
    pub seq_reorders: u64,
    /// Messages on `hostile/flood*` (QoS 0).
    pub flood_msgs: u64,
    /// Messages on any other `hostile/` topic (garbage, absurd, output, ballast).
    pub other_msgs: u64,
    /// Discovery messages the daemon published for its own node (not the test's own
    /// oversized retained `ghost` one).
    pub discovery_msgs: u64,
    /// Counter payloads that were not the JSON expected: the daemon published a broken
    /// message (bounded: the first few are kept).
    pub bad_payloads: Vec<String>,
    node: String,
}

impl Account {
    pub fn new(out: PathBuf, names: &[&str], node: &str) -> Account {
        Account {
            out,
            offset: 0,
            partial: Vec::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            streams: names.iter().map(|_| Stream::default()).collect(),
            max_seq: 0,
            seq_reorders: 0,
            flood_msgs: 0,
            other_msgs: 0,
            discovery_msgs: 0,
            bad_payloads: Vec::new(),
            node: format!("homeassistant/sensor/{node}/"),
        }
    }

    pub fn delivered(&self) -> u64 {
        self.streams.iter().map(|s| s.first.len() as u64).sum()
    }

    /// Reads what the subscriber printed since the last call (at most 64 MiB a call, so a
    /// runaway publisher cannot make the test itself eat memory).
    pub fn tail(&mut self) {
        let Ok(f) = fs::File::open(&self.out) else {
            return;
        };
        let mut f = f;
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.take(64 << 20).read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for (_, topic, payload) in parse_sub_lines(&complete, true) {
            if let Some(name) = topic.strip_prefix(COUNTER_PREFIX) {
                self.counter(name, &payload);
            } else if topic.starts_with("hostile/flood") {
                self.flood_msgs += 1;
            } else if topic.starts_with("hostile/") {
                self.other_msgs += 1;
            } else if topic.starts_with(&self.node) && !topic.contains("/ghost/") {
                self.discovery_msgs += 1;
            }
        }
    }

    fn counter(&mut self, name: &str, payload: &str) {
        let Some(s) = self.names.iter().position(|n| n == name) else {
            return;
        };
        let json: Option<serde_json::Value> = serde_json::from_str(payload).ok();
        let parsed = json
            .as_ref()
            .and_then(|j| Some((j["value"].as_u64()?, j["seq"].as_u64()?)));
        let Some((value, seq)) = parsed else {
            if self.bad_payloads.len() < 5 {
                self.bad_payloads.push(format!("{name}: {payload:.200}"));
            }
            return;
        };
        let st = &mut self.streams[s];
        if st.first.insert(value) {
            if value < st.max_first {
                st.reorders.push((value, st.max_first));
            }
            st.max_first = st.max_first.max(value);
            if seq < self.max_seq {
                self.seq_reorders += 1;
            }
            self.max_seq = self.max_seq.max(seq);
        }
    }
}
