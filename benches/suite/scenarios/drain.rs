//! 1. Backlog drain, side by side with mosquitto_pub.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use telemetryd_testkit::{Broker, Proc, copy_dir, store_depth};

use crate::env::Daemon;
use crate::{Fmt, Row, Settings};

use super::*;

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
