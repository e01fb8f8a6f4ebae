//! 4. Big backlog.

use std::fs;
use std::path::Path;
use std::time::Instant;

use telemetryd::outbox::dir_size;
use telemetryd_testkit::{Broker, copy_dir};

use crate::env::{Daemon, FirstMessage};
use crate::{Fmt, Row, Settings};

use super::*;

pub fn backlog(s: &Settings, work: &Path) -> Vec<Row> {
    let n = s.big_n;
    eprintln!("backlog: filling a store with {n} readings");
    let template = work.join("backlog-template");
    let t = Instant::now();
    prefill(&template, n, "bench/backlog", None);
    eprintln!("backlog: filled in {:.1} s", secs(t.elapsed()));
    let before = dir_size(&template) as f64;
    let broker = Broker::start_quiet(&work.join("broker-backlog"));
    let (mut first, mut open_rss, mut rss, mut rate, mut after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        // The peak so far: opening the store (sled rebuilds its page table), before the drain.
        let at_first = d.stats().hwm_kib as f64 * 1024.0;
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
            "backlog run {run}: first publish after {to_first:.3} s (VmHWM then {:.1} MiB), VmHWM {:.1} MiB, {r:.0}/s, store {:.1} -> {:.1} MiB",
            at_first / 1048576.0,
            peak / 1048576.0,
            before / 1048576.0,
            size_after / 1048576.0
        );
        first.push(to_first);
        open_rss.push(at_first);
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
            format!("backlog of {n}: peak RSS at the first publish (opening the store)"),
            "",
            Fmt::Bytes,
            open_rss,
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
