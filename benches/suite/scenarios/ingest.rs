//! 2. Ingest: the daemon with many sensors (broker down), and commit latency inside.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use telemetryd_testkit::free_port;

use crate::env::Daemon;
use crate::library;
use crate::{Fmt, Row, Settings};

use super::*;

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
