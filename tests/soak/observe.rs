//! Watching the soak: the subscriber's output read as it grows, the proxy's acks, the daemon's
//! memory and the store's size.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant, UNIX_EPOCH};

use telemetryd_testkit::*;

use crate::{SENSORS, Soak};

/// What one sensor's stream looks like at the subscriber, built as lines arrive.
#[derive(Default)]
pub(crate) struct Stream {
    pub(crate) first: HashSet<u64>,
    pub(crate) messages: u64,
    pub(crate) max_first: u64,
    pub(crate) reorders: Vec<(u64, u64)>,
}

impl Soak {
    pub(crate) fn sensor_of(topic: &str) -> Option<usize> {
        let name = topic.strip_prefix("soak/")?;
        SENSORS.iter().position(|(n, _)| *n == name)
    }

    /// Reads what the subscriber printed since the last call.
    pub(crate) fn tail(&mut self) {
        let Ok(mut f) = fs::File::open(&self.env.sub().out) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.sub_offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.sub_offset += buf.len() as u64;
        self.sub_partial.extend_from_slice(&buf);
        let Some(end) = self.sub_partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.sub_partial.drain(..=end).collect();
        for (recv, topic, payload) in parse_sub_lines(&complete, true) {
            let Some(s) = Soak::sensor_of(&topic) else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&payload)
                .unwrap_or_else(|e| panic!("payload on {topic} is not JSON ({e}): {payload}"));
            let value = json["value"].as_u64().expect("value");
            let seq = json["seq"].as_u64().expect("seq");
            let ts = json["ts"].as_str().expect("ts");
            let taken = humantime::parse_rfc3339(ts)
                .expect("ts")
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let st = &mut self.streams[s];
            st.messages += 1;
            if st.first.insert(value) {
                self.pending_ack.remove(&(s, value));
                if value < st.max_first {
                    st.reorders.push((value, st.max_first));
                }
                st.max_first = st.max_first.max(value);
                if seq < self.max_seq_first {
                    self.global_reorders += 1;
                }
                self.max_seq_first = self.max_seq_first.max(seq);
                if recv - taken > self.max_delay {
                    self.max_delay = recv - taken;
                    self.max_delay_at = (self.t0.elapsed().as_secs_f64(), s, value);
                }
            }
        }
    }

    /// Takes the PUBACKs the proxy saw since the last call.
    pub(crate) fn drain_acks(&mut self) {
        self.proxy.drain_forwarded();
        for seen in self.proxy.drain_acked() {
            let Some(s) = Soak::sensor_of(&seen.topic) else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&seen.payload).expect("JSON");
            let value = json["value"].as_u64().expect("value");
            if !self.streams[s].first.contains(&value) {
                self.pending_ack.insert((s, value));
            }
        }
    }

    /// One round of watching: subscriber, acks, memory and store.
    pub(crate) fn observe(&mut self) {
        self.drain_acks();
        self.tail();
        if let Some(pid) = self.env.daemon.pid_if_running() {
            if let Some(rss) = vm_kib(pid, "VmRSS") {
                self.rss_samples.push((self.elapsed(), rss));
                self.peak_rss_kib = self.peak_rss_kib.max(rss);
            }
            if let Some(hwm) = vm_kib(pid, "VmHWM") {
                self.peak_rss_kib = self.peak_rss_kib.max(hwm);
            }
        }
        let du = disk_usage(&self.env.buffer_path());
        self.peak_store_bytes = self.peak_store_bytes.max(du);
        if self.elapsed() >= self.next_trace {
            self.next_trace += 60.0;
            let rss = self.rss_samples.last().map_or(0, |(_, r)| *r);
            let delivered: usize = self.streams.iter().map(|s| s.first.len()).sum();
            eprintln!(
                "soak: {:5.0} s  rss {rss} KiB  store {} KiB  delivered {delivered}",
                self.elapsed(),
                du / 1024
            );
        }
    }

    /// Lets the system run for `d` (the schedule's own pauses), watching it meanwhile.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            self.observe();
            let now = Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(200)));
        }
    }
}
