//! The five measurements of issue 5. Each returns table rows holding one value per run; the
//! table shows their median. Every run checks what its figure rests on (main.rs says what, per
//! scenario); none checks a timing. One file per scenario; what they share is here.

mod backlog;
mod collectd;
mod drain;
mod footprint;
mod ingest;
mod wear;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use telemetryd::config::Config;
use telemetryd::outbox::Record;
use telemetryd::payload;
use telemetryd_testkit::{prefill_store_with, store_depth};

use crate::env::{Daemon, ProcStats};

pub use backlog::backlog;
pub use drain::drain;
pub use footprint::footprint;
pub use ingest::{ingest, latency};
pub use wear::wear;

/// What the daemon's config needs from a scenario.
struct DaemonConfig<'a> {
    port: u16,
    buffer: &'a Path,
    client_id: &'a str,
    stats_interval: &'a str,
    max_messages: u64,
    /// More `[buffer]` keys (a commit policy).
    buffer_extra: &'a str,
    /// Keep the default `stats_topic` (a retained QoS 0 message every `stats_interval`);
    /// otherwise it is off, as the bench reads the summary lines at short intervals.
    stats_topic: bool,
    sensors: String,
}

impl DaemonConfig<'_> {
    fn render(&self) -> String {
        format!(
            "log_level = \"info\"\n\
             stats_interval = \"{stats}\"\n\
             [mqtt]\n\
             host = \"127.0.0.1\"\n\
             port = {port}\n\
             client_id = \"{id}\"\n\
             keep_alive = \"30s\"\n\
             {stats_topic}\
             [buffer]\n\
             path = \"{path}\"\n\
             max_messages = {max}\n\
             {extra}\n\
             {sensors}",
            stats = self.stats_interval,
            port = self.port,
            id = self.client_id,
            path = self.buffer.display(),
            max = self.max_messages,
            extra = self.buffer_extra,
            stats_topic = if self.stats_topic {
                ""
            } else {
                "stats_topic = \"\"\n"
            },
            sensors = if self.sensors.is_empty() {
                IDLE_SENSOR
            } else {
                &self.sensors
            },
        )
    }
}

/// A config needs a sensor; the drain scenarios measure a stored backlog, so theirs reads
/// once at start and then weekly, and publishes nothing (the mean of 10,000 reads), so
/// `published` stays the backlog's count.
const IDLE_SENSOR: &str = "[[sensor]]\nname = \"idle\"\nkind = \"file\"\npath = \"/proc/uptime\"\n\
                           interval = \"7d\"\ntopic = \"idle/uptime\"\nqos = 0\naverage = 10000\n";

/// `n` file sensors reading `value` every `interval`, with JSON payloads (~90 bytes, the
/// larger of the two formats).
fn file_sensors(n: usize, interval: &str, value: &Path, topic: &str) -> String {
    (0..n)
        .map(|i| file_sensor(&format!("s{i}"), interval, value, &format!("{topic}/{i}")))
        .collect()
}

fn file_sensor(name: &str, interval: &str, value: &Path, topic: &str) -> String {
    format!(
        "[[sensor]]\nname = \"{name}\"\nkind = \"file\"\npath = \"{}\"\n\
         interval = \"{interval}\"\ntopic = \"{topic}\"\nformat = \"json\"\n\
         decimals = 1\nunit = \"°C\"\n",
        value.display()
    )
}

fn json_sensor() -> telemetryd::config::SensorConfig {
    Config::parse(
        "[[sensor]]\nname = 'outside'\nkind = 'file'\npath = '/dev/null'\ninterval = '1s'\n\
         topic = 'bench'\nformat = 'json'\ndecimals = 1\nunit = '°C'\n",
        Path::new("bench.toml"),
    )
    .expect("the bench sensor")
    .sensors
    .remove(0)
}

/// Fills a store through the library with `n` readings as the daemon would have stored them
/// (JSON payloads, an hour old), in commits of 1,000. With `lines`, also writes each payload
/// as a line, for `mosquitto_pub -l`.
fn prefill(path: &Path, n: u64, topic: &str, lines: Option<&Path>) {
    let sensor = json_sensor();
    let mut out = lines.map(|p| BufWriter::new(File::create(p).expect("lines file")));
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    prefill_store_with(path, n, |j, seq| {
        let taken = hour_ago + Duration::from_millis(j * 10);
        let value = 20.0 + (j % 100) as f64 / 10.0;
        let payload = payload::render(&sensor, value, taken, seq);
        if let Some(out) = out.as_mut() {
            out.write_all(&payload)
                .and_then(|()| out.write_all(b"\n"))
                .expect("write a line");
        }
        Record {
            topic: topic.to_owned(),
            payload,
            retain: false,
            taken_ms: telemetryd::unix_ms(taken),
            plain: true,
        }
    });
    if let Some(mut out) = out {
        out.flush().expect("flush the lines");
    }
    assert_eq!(store_depth(path), n);
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

fn cpu_percent(a: &ProcStats, b: &ProcStats, wall: f64) -> f64 {
    (b.cpu - a.cpu).as_secs_f64() / wall * 100.0
}

/// A deadline for work that should take `expected` on a healthy machine (debug builds and
/// busy machines are slow; a passing run returns as soon as it is done).
fn deadline(expected: f64) -> Duration {
    Duration::from_secs_f64(60.0 + expected * 20.0)
}

/// Stops the daemon and checks the clean-stop line and that it logged no warning. At most
/// `left` readings may stay in the store: those the sensors took as the stop came (they are
/// committed but, by design, not sent during the stop's grace period). Returns the log.
fn stop_delivered(d: Daemon, what: &str, left: u64) -> String {
    let log = d.stop();
    let stopped = log
        .lines()
        .rev()
        .find(|l| l.contains(" stopped "))
        .unwrap_or_else(|| panic!("{what}: no `stopped` line in the log:\n{log}"));
    let buffered: u64 = stopped
        .split_whitespace()
        .find_map(|w| w.strip_prefix("buffered=")?.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no count in {stopped:?}"));
    assert!(
        buffered <= left,
        "{what}: {buffered} readings left in the store at the end: {stopped}"
    );
    let unexpected = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .any(|l| !l.contains("no [[sensor]] configured"));
    assert!(!unexpected, "{what}: warnings in the daemon's log:\n{log}");
    log
}
