//! 3. Footprint.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use telemetryd_testkit::{Broker, wait_for};

use crate::env::{Daemon, proc_stats, stripped_size};
use crate::{Fmt, Row, Settings};

use super::*;

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
