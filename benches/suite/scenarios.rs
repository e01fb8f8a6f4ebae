//! The five measurements of issue 5. Each returns table rows holding one value per run; the
//! table shows their median. Every run checks what its figure rests on (main.rs says what, per
//! scenario); none checks a timing.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use telemetryd::config::Config;
use telemetryd::outbox::{Record, dir_size};
use telemetryd::payload;
use telemetryd_testkit::{
    Broker, Proc, copy_dir, free_port, prefill_store_with, store_depth, wait_for,
};

use crate::env::{Daemon, FirstMessage, ProcStats, proc_stats, stripped_size};
use crate::library;
use crate::{Fmt, Row, Settings};

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

// ---------------------------------------------------------------------------------------------
// 1. Backlog drain, side by side with mosquitto_pub
// ---------------------------------------------------------------------------------------------

pub fn drain(s: &Settings, work: &Path) -> Vec<Row> {
    let n = s.drain_n;
    eprintln!("drain: filling a store with {n} readings");
    let template = work.join("drain-template");
    let lines = work.join("drain-lines.txt");
    prefill(&template, n, "bench/drain", Some(&lines));
    let broker = Broker::start_quiet(&work.join("broker-drain"));
    let (mut ours, mut reference, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..s.runs {
        // Alternate who goes first, in case the broker gets slower as it runs.
        let (a, b) = if run % 2 == 0 {
            let r = drain_reference(&broker, &lines, n, run);
            (drain_ours(s, work, &template, &broker, n, run), r)
        } else {
            let o = drain_ours(s, work, &template, &broker, n, run);
            (o, drain_reference(&broker, &lines, n, run))
        };
        eprintln!(
            "drain run {run}: telemetryd {a:.0}/s, mosquitto_pub {b:.0}/s, ratio {:.2}",
            a / b
        );
        ours.push(a);
        reference.push(b);
        ratio.push(a / b);
    }
    vec![
        Row::new(
            "1",
            format!("backlog drain of {n}: telemetryd (start to empty store)"),
            "",
            Fmt::Rate,
            ours,
        ),
        Row::new(
            "1",
            format!("backlog drain of {n}: `mosquitto_pub -q 1 -l` (start to exit)"),
            "",
            Fmt::Rate,
            reference,
        ),
        Row::new(
            "1",
            "ratio telemetryd / mosquitto_pub (per run)".into(),
            ">= 1.0x",
            Fmt::Ratio,
            ratio,
        ),
    ]
}

fn drain_ours(
    s: &Settings,
    work: &Path,
    template: &Path,
    broker: &Broker,
    n: u64,
    run: usize,
) -> f64 {
    let dir = work.join(format!("drain-{run}"));
    let buffer = dir.join("buf");
    copy_dir(template, &buffer);
    let client_id = format!("bench-drain-{run}");
    let config = DaemonConfig {
        port: broker.port,
        buffer: &buffer,
        client_id: &client_id,
        // The drain's end is read from this summary: 10 ms is its resolution.
        stats_interval: "10ms",
        max_messages: 2 * n,
        buffer_extra: "",
        stats_topic: false,
        sensors: String::new(),
    };
    let mut d = Daemon::start(&s.bin, &dir, &config.render());
    let empty = d.wait_summary(
        deadline(n as f64 / 10_000.0),
        "the backlog is delivered",
        |x| x.buffered == 0,
    );
    // From the start, as for mosquitto_pub: opening the store is part of the job (a store
    // whose keys were counted at open has its pages warm before the broker is even reached).
    let spawned = d.spawned;
    let log = stop_delivered(d, "drain", 0);
    assert_eq!(
        empty.published, n,
        "every reading acknowledged exactly once; the log:\n{log}"
    );
    assert_eq!(store_depth(&buffer), 0);
    fs::remove_dir_all(&dir).expect("remove the run's dir");
    n as f64 / between(spawned, empty.at)
}

fn drain_reference(broker: &Broker, lines: &Path, n: u64, run: usize) -> f64 {
    let start = Instant::now();
    let mut p = Proc::spawn(
        "mosquitto_pub",
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", &format!("bench-ref-{run}"), "-q", "1"])
            .args(["-t", "bench/ref", "-l"])
            .stdin(File::open(lines).expect("the lines file"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let status = p
        .wait_timeout(deadline(n as f64 / 10_000.0))
        .expect("mosquitto_pub finishes");
    let elapsed = secs(start.elapsed());
    assert!(status.success(), "mosquitto_pub failed: {status}");
    n as f64 / elapsed
}

// ---------------------------------------------------------------------------------------------
// 2. Ingest: the daemon with many sensors (broker down), and commit latency inside
// ---------------------------------------------------------------------------------------------

pub fn ingest(s: &Settings, work: &Path) -> Vec<Row> {
    let value = work.join("ingest-value");
    fs::write(&value, "21.5\n").expect("value file");
    let mut rows = Vec::new();
    for &sensors in &s.ingest_sensors {
        let (mut rate, mut cpu, mut threads, mut rss) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..s.runs {
            let dir = work.join(format!("ingest-{sensors}-{run}"));
            let buffer = dir.join("buf");
            let client_id = format!("bench-ingest-{run}");
            // Nothing listens there: the daemon only commits.
            let config = DaemonConfig {
                port: free_port(),
                buffer: &buffer,
                client_id: &client_id,
                stats_interval: "250ms",
                max_messages: 100_000_000,
                buffer_extra: "",
                stats_topic: false,
                sensors: file_sensors(sensors, "10ms", &value, "bench/ingest"),
            };
            let mut d = Daemon::start(&s.bin, &dir, &config.render());
            let wait = deadline(s.ingest_secs);
            let from = d.spawned + Duration::from_secs(1);
            let a = d.wait_summary(wait, "the sensors have started", |x| x.at >= from);
            let sa = d.stats();
            let ta = Instant::now();
            let until = a.at + Duration::from_secs_f64(s.ingest_secs);
            let b = d.wait_summary(wait, "the ingest run is over", |x| x.at >= until);
            let sb = d.stats();
            let wall = secs(ta.elapsed());
            assert!(b.buffered > a.buffered, "no reading was committed");
            assert_eq!(b.dropped, 0);
            let r = (b.buffered - a.buffered) as f64 / between(a.at, b.at);
            eprintln!(
                "ingest {sensors} sensors run {run}: {r:.0} committed/s, {} threads",
                sb.threads
            );
            rate.push(r);
            cpu.push(cpu_percent(&sa, &sb, wall));
            threads.push(sb.threads as f64);
            rss.push(sb.hwm_kib as f64 * 1024.0);
            // Stopping commits what is queued; everything stays buffered (no broker).
            d.stop();
            fs::remove_dir_all(&dir).expect("remove the run's dir");
        }
        let offered = sensors as f64 * 100.0;
        rows.push(Row::new(
            "2",
            format!("ingest, {sensors} sensor(s) @ 10 ms (offered {offered:.0}/s): readings committed durably/s"),
            "",
            Fmt::Rate,
            rate,
        ));
        rows.push(Row::new(
            "2",
            format!("ingest, {sensors} sensor(s): CPU, % of one core"),
            "",
            Fmt::Percent,
            cpu,
        ));
        rows.push(Row::new(
            "2",
            format!("ingest, {sensors} sensor(s): threads"),
            "",
            Fmt::Count,
            threads,
        ));
        rows.push(Row::new(
            "2",
            format!("ingest, {sensors} sensor(s): peak RSS (VmHWM)"),
            "",
            Fmt::Bytes,
            rss,
        ));
    }
    rows
}

pub fn latency(s: &Settings, work: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for &sensors in &s.ingest_sensors {
        let (mut rate, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..s.runs {
            let store = work.join(format!("latency-{sensors}-{run}"));
            let l =
                library::commit_latency(&store, sensors, Duration::from_secs_f64(s.latency_secs));
            eprintln!(
                "latency {sensors} sensors run {run}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                l.rate, l.p50_ms, l.p99_ms
            );
            rate.push(l.rate);
            p50.push(l.p50_ms);
            p99.push(l.p99_ms);
            fs::remove_dir_all(&store).expect("remove the store");
        }
        rows.push(Row::new(
            "2",
            format!("commit latency, {sensors} sensor(s) @ 10 ms (library): committed/s"),
            "",
            Fmt::Rate,
            rate,
        ));
        rows.push(Row::new(
            "2",
            format!("commit latency, {sensors} sensor(s): p50 (taken to durable)"),
            "",
            Fmt::Ms,
            p50,
        ));
        rows.push(Row::new(
            "2",
            format!("commit latency, {sensors} sensor(s): p99"),
            "",
            Fmt::Ms,
            p99,
        ));
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 3. Footprint
// ---------------------------------------------------------------------------------------------

pub fn footprint(s: &Settings, work: &Path) -> Vec<Row> {
    let broker = Broker::start_quiet(&work.join("broker-footprint"));
    let (mut rss, mut cpu, mut threads) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..s.runs {
        let dir = work.join(format!("footprint-{run}"));
        fs::create_dir_all(&dir).expect("dir");
        let values: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("value{i}"))).collect();
        let mut sensors = String::new();
        for (i, v) in values.iter().enumerate() {
            fs::write(v, format!("{}\n", 20 + i)).expect("value file");
            sensors.push_str(&file_sensor(
                &format!("s{i}"),
                "1s",
                v,
                &format!("bench/footprint/{i}"),
            ));
        }
        let buffer = dir.join("buf");
        let client_id = format!("bench-footprint-{run}");
        let config = DaemonConfig {
            port: broker.port,
            buffer: &buffer,
            client_id: &client_id,
            stats_interval: "5m",
            max_messages: 500_000,
            buffer_extra: "",
            stats_topic: true,
            sensors,
        };
        let d = Daemon::start(&s.bin, &dir, &config.render());
        // Start-up (opening the store, connecting) is not the steady state being measured.
        let settle = d.spawned_at + Duration::from_secs(2);
        wait_for(deadline(2.0), "the daemon settles", || {
            (Instant::now() >= settle).then_some(())
        });
        let a = d.stats();
        let ta = Instant::now();
        let end = ta + Duration::from_secs_f64(s.footprint_secs);
        let mut peak_threads = a.threads;
        wait_for(
            deadline(s.footprint_secs),
            "the footprint run is over",
            || {
                if let Some(st) = proc_stats(d.pid()) {
                    peak_threads = peak_threads.max(st.threads);
                }
                (Instant::now() >= end).then_some(())
            },
        );
        let b = d.stats();
        let wall = secs(ta.elapsed());
        let c = cpu_percent(&a, &b, wall);
        eprintln!(
            "footprint run {run}: VmHWM {} KiB, CPU {c:.3}%, threads {} (peak {peak_threads})",
            b.hwm_kib, b.threads
        );
        rss.push(b.hwm_kib as f64 * 1024.0);
        cpu.push(c);
        threads.push(peak_threads as f64);
        stop_delivered(d, "footprint", 4);
        fs::remove_dir_all(&dir).expect("remove the run's dir");
    }
    let (size, stripped) = stripped_size(&s.bin, work);
    let secs = s.footprint_secs;
    vec![
        Row::new(
            "3",
            format!("4 sensors @ 1 s for {secs:.0} s: peak RSS (VmHWM)"),
            "<= 10 MiB",
            Fmt::Bytes,
            rss,
        ),
        Row::new(
            "3",
            "4 sensors @ 1 s: CPU, % of one core (after 2 s of start-up)".into(),
            "<= 0.2%",
            Fmt::Percent,
            cpu,
        ),
        Row::new(
            "3",
            "4 sensors @ 1 s: threads (peak)".into(),
            "",
            Fmt::Count,
            threads,
        ),
        Row::once(
            "3",
            format!(
                "binary size ({})",
                if stripped {
                    "stripped"
                } else {
                    "NOT stripped: no `strip`"
                }
            ),
            "<= 8 MiB",
            Fmt::Bytes,
            size as f64,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// 4. Big backlog
// ---------------------------------------------------------------------------------------------

pub fn backlog(s: &Settings, work: &Path) -> Vec<Row> {
    let n = s.big_n;
    eprintln!("backlog: filling a store with {n} readings");
    let template = work.join("backlog-template");
    let t = Instant::now();
    prefill(&template, n, "bench/backlog", None);
    eprintln!("backlog: filled in {:.1} s", secs(t.elapsed()));
    let before = dir_size(&template) as f64;
    let broker = Broker::start_quiet(&work.join("broker-backlog"));
    let (mut first, mut rss, mut rate, mut after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..s.runs {
        let dir = work.join(format!("backlog-{run}"));
        let buffer = dir.join("buf");
        copy_dir(&template, &buffer);
        let watcher = FirstMessage::subscribe(&broker, &format!("bench-first-{run}"), "bench/#");
        let client_id = format!("bench-backlog-{run}");
        let config = DaemonConfig {
            port: broker.port,
            buffer: &buffer,
            client_id: &client_id,
            stats_interval: "100ms",
            max_messages: 2 * n,
            buffer_extra: "",
            stats_topic: false,
            sensors: String::new(),
        };
        let mut d = Daemon::start(&s.bin, &dir, &config.render());
        let arrived = watcher.wait(deadline(n as f64 / 1_000_000.0));
        let to_first = secs(arrived - d.spawned_at);
        let empty = d.wait_summary(
            deadline(n as f64 / 10_000.0),
            "the big backlog is delivered",
            |x| x.buffered == 0,
        );
        let peak = d.stats().hwm_kib as f64 * 1024.0;
        let r = n as f64 / between(d.spawned, empty.at);
        let log = stop_delivered(d, "backlog", 0);
        assert_eq!(
            empty.published, n,
            "every reading acknowledged exactly once; the log:\n{log}"
        );
        let size_after = dir_size(&buffer) as f64;
        eprintln!(
            "backlog run {run}: first publish after {to_first:.3} s, VmHWM {:.1} MiB, {r:.0}/s, store {:.1} -> {:.1} MiB",
            peak / 1048576.0,
            before / 1048576.0,
            size_after / 1048576.0
        );
        first.push(to_first);
        rss.push(peak);
        rate.push(r);
        after.push(size_after);
        fs::remove_dir_all(&dir).expect("remove the run's dir");
    }
    vec![
        Row::new(
            "4",
            format!("backlog of {n}: start to first publish"),
            "<= 1 s",
            Fmt::Secs,
            first,
        ),
        Row::new(
            "4",
            format!("backlog of {n}: peak RSS while draining"),
            "<= 48 MiB",
            Fmt::Bytes,
            rss,
        ),
        Row::new(
            "4",
            format!("backlog of {n}: drain rate (start to empty)"),
            "",
            Fmt::Rate,
            rate,
        ),
        Row::once(
            "4",
            format!("backlog of {n}: store on disk before"),
            "",
            Fmt::Bytes,
            before,
        ),
        Row::new(
            "4",
            format!("backlog of {n}: store on disk after draining"),
            "",
            Fmt::Bytes,
            after,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// 5. SD wear
// ---------------------------------------------------------------------------------------------

/// Bytes written per reading at 1 reading/s and at 1,000 readings/s, with the broker up (so
/// each reading is inserted, committed, published and deleted), under the commit policy
/// given by `buffer_extra` (`""`: the default).
pub fn wear(s: &Settings, work: &Path, policy: &str, buffer_extra: &str) -> Vec<Row> {
    let broker = Broker::start_quiet(&work.join("broker-wear"));
    let value = work.join("wear-value");
    fs::write(&value, "21.5\n").expect("value file");
    let cases = [
        (1, "1s", s.wear_slow_secs, "1 reading/s", "<= 8 KiB"),
        (10, "10ms", s.wear_fast_secs, "1,000 readings/s", "<= 1 KiB"),
    ];
    let mut rows = Vec::new();
    for (sensors, interval, run_secs, label, target) in cases {
        let mut per_reading = Vec::new();
        for run in 0..s.runs {
            let dir = work.join(format!("wear-{sensors}-{run}"));
            let buffer = dir.join("buf");
            let client_id = format!("bench-wear-{sensors}-{run}");
            let config = DaemonConfig {
                port: broker.port,
                buffer: &buffer,
                client_id: &client_id,
                stats_interval: "1s",
                max_messages: 500_000,
                buffer_extra,
                stats_topic: false,
                sensors: file_sensors(sensors, interval, &value, "bench/wear"),
            };
            let mut d = Daemon::start(&s.bin, &dir, &config.render());
            let wait = deadline(run_secs);
            // Pair each summary with /proc/<pid>/io read as soon as the line appears.
            let a = d.wait_summary(wait, "connected, with readings", |a| {
                a.connected && a.readings > 0
            });
            let ia = d.stats();
            let until = a.at + Duration::from_secs_f64(run_secs);
            let (b, ib) = loop {
                let b = d.next_summary(wait);
                let ib = d.stats();
                if b.at >= until {
                    break (b, ib);
                }
            };
            let readings = b.readings - a.readings;
            assert!(readings > 0, "no readings during the wear run");
            let bytes = ib.write_bytes.saturating_sub(ia.write_bytes) as f64;
            let per = bytes / readings as f64;
            eprintln!(
                "wear {label} ({policy}) run {run}: {readings} readings, {bytes:.0} bytes written, {per:.0} B/reading"
            );
            per_reading.push(per);
            // With a 100 ms commit interval, up to 10 readings per sensor wait for their
            // commit when the stop comes: committed on the way out, sent on the next start.
            let left = if buffer_extra.is_empty() { 1 } else { 11 };
            stop_delivered(d, "wear", sensors as u64 * left);
            fs::remove_dir_all(&dir).expect("remove the run's dir");
        }
        rows.push(Row::new(
            "5",
            format!("SD wear at {label} ({policy}): bytes written per reading"),
            target,
            Fmt::Bytes,
            per_reading,
        ));
    }
    rows
}
