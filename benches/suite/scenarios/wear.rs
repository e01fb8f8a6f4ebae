//! 5. SD wear.

use std::fs;
use std::path::Path;
use std::time::Duration;

use telemetryd_testkit::Broker;

use crate::env::Daemon;
use crate::{Fmt, Row, Settings};

use super::*;

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
