//! 3. Footprint.
//!
//! Side by side with collectd (issue 15): 4 sensors reading a file every second, published at
//! QoS 1 to the suite's broker; runs of telemetryd and of collectd alternate. Each run: a
//! warm-up, then a window in which the peak RSS, the CPU time, the peak thread count and the
//! readings a subscriber received are taken. Then one run of each under callgrind, for the
//! instructions per reading received.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use telemetryd_testkit::{Broker, Proc, log_file, read_lossy, wait_for};

use crate::env::{Daemon, has_subscriber, proc_stats, stripped_size};
use crate::{Fmt, Row, Settings};

use super::collectd::{self, Collectd};
use super::*;

const SENSORS: usize = 4;
const OURS_TOPIC: &str = "bench/footprint/";
const PEER_TOPIC: &str = "bench/collectd/";
/// How long a stopping collectd may take.
const PEER_STOP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Ours,
    Collectd,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Ours => "telemetryd",
            Who::Collectd => "collectd",
        }
    }

    fn topic(self) -> &'static str {
        match self {
            Who::Ours => OURS_TOPIC,
            Who::Collectd => PEER_TOPIC,
        }
    }
}

/// What the scenario's runs share.
struct Ctx<'a> {
    s: &'a Settings,
    work: &'a Path,
    broker: &'a Broker,
    sub: Counter,
    values: Vec<PathBuf>,
    peer: Option<&'a Collectd>,
}

/// A `mosquitto_sub -q 1` on both peers' topics, one line (the topic) per message received.
struct Counter {
    _proc: Proc,
    out: PathBuf,
}

impl Counter {
    fn start(broker: &Broker, dir: &Path) -> Counter {
        fs::create_dir_all(dir).expect("subscriber dir");
        let out = dir.join("received");
        let id = "bench-footprint-sub";
        let proc = Proc::spawn(
            "mosquitto_sub",
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                .args(["-i", id, "-q", "1", "-F", "%t"])
                .args([
                    "-t",
                    &format!("{OURS_TOPIC}#"),
                    "-t",
                    &format!("{PEER_TOPIC}#"),
                ])
                .stdin(Stdio::null())
                .stdout(log_file(&out).0)
                .stderr(Stdio::null()),
        );
        wait_for(
            Duration::from_secs(30),
            "the footprint subscriber is subscribed",
            || has_subscriber(broker, id).then_some(()),
        );
        Counter { _proc: proc, out }
    }

    /// Messages received so far on `who`'s topics.
    fn count(&self, who: Who) -> u64 {
        read_lossy(&self.out)
            .lines()
            .filter(|l| l.starts_with(who.topic()))
            .count() as u64
    }
}

/// A daemon or collectd, running.
enum Running {
    Ours(Daemon),
    Peer(collectd::Running),
}

impl Running {
    fn start(ctx: &Ctx, who: Who, dir: &Path, tag: &str, wrapper: &[String]) -> Running {
        let client_id = format!("bench-footprint-{tag}");
        match who {
            Who::Ours => {
                let mut sensors = String::new();
                for (i, v) in ctx.values.iter().enumerate() {
                    sensors.push_str(&file_sensor(
                        &format!("s{i}"),
                        "1s",
                        v,
                        &format!("{OURS_TOPIC}{i}"),
                    ));
                }
                let buffer = dir.join("buf");
                let config = DaemonConfig {
                    port: ctx.broker.port,
                    buffer: &buffer,
                    client_id: &client_id,
                    stats_interval: "5m",
                    max_messages: 500_000,
                    buffer_extra: "",
                    stats_topic: true,
                    sensors,
                };
                Running::Ours(Daemon::start_wrapped(
                    &ctx.s.bin,
                    dir,
                    &config.render(),
                    wrapper,
                ))
            }
            Who::Collectd => {
                let peer = ctx.peer.expect("collectd is there");
                let config = collectd::config(
                    dir,
                    &ctx.values,
                    ctx.broker.port,
                    &client_id,
                    PEER_TOPIC.trim_end_matches('/'),
                );
                Running::Peer(collectd::Running::start(peer, dir, &config, wrapper))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Ours(d) => d.pid(),
            Running::Peer(p) => p.pid(),
        }
    }

    fn spawned_at(&self) -> Instant {
        match self {
            Running::Ours(d) => d.spawned_at,
            Running::Peer(p) => p.spawned_at,
        }
    }

    fn stop(self) {
        match self {
            Running::Ours(d) => {
                stop_delivered(d, "footprint", SENSORS as u64);
            }
            Running::Peer(p) => {
                p.stop(PEER_STOP_LIMIT);
            }
        }
    }
}

/// One run's figures.
struct Sample {
    hwm_kib: u64,
    cpu_percent: f64,
    peak_threads: u64,
    received: u64,
}

/// Starts `who`, waits for its first message at the subscriber and the warm-up, returns it
/// with the subscriber's count at the start of the window.
fn start_and_warm(ctx: &Ctx, who: Who, dir: &Path, tag: &str, wrapper: &[String]) -> Running {
    let before = ctx.sub.count(who);
    let r = Running::start(ctx, who, dir, tag, wrapper);
    // Start-up (opening the store, connecting) is not the steady state being measured; and
    // a peer whose readings do not arrive is not doing the work.
    let slow = if wrapper.is_empty() { 1.0 } else { 10.0 };
    wait_for(
        deadline(ctx.s.footprint_warmup * slow),
        &format!("{} publishes its first reading", who.name()),
        || (ctx.sub.count(who) > before).then_some(()),
    );
    let settle = if wrapper.is_empty() {
        r.spawned_at()
    } else {
        Instant::now()
    } + Duration::from_secs_f64(ctx.s.footprint_warmup);
    wait_for(deadline(ctx.s.footprint_warmup), "the warm-up", || {
        (Instant::now() >= settle).then_some(())
    });
    r
}

/// Polls until the window's end, noting the peak thread count.
fn window(ctx: &Ctx, pid: u32, mut peak_threads: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(ctx.s.footprint_secs);
    wait_for(
        deadline(ctx.s.footprint_secs),
        "the footprint run is over",
        || {
            if let Some(st) = proc_stats(pid) {
                peak_threads = peak_threads.max(st.threads);
            }
            (Instant::now() >= end).then_some(())
        },
    );
    peak_threads
}

/// Readings expected in a window, at the least: half of what 4 sensors at 1 s take.
fn enough(ctx: &Ctx) -> u64 {
    ((SENSORS as f64 * ctx.s.footprint_secs) / 2.0)
        .floor()
        .max(1.0) as u64
}

fn run(ctx: &Ctx, who: Who, run: usize) -> Sample {
    let dir = ctx.work.join(format!("footprint-{}-{run}", who.name()));
    let r = start_and_warm(ctx, who, &dir, &format!("{}-{run}", who.name()), &[]);
    let pid = r.pid();
    let a = proc_stats(pid).expect("its /proc entry");
    let got_a = ctx.sub.count(who);
    let ta = Instant::now();
    let peak_threads = window(ctx, pid, a.threads);
    let b = proc_stats(pid).expect("its /proc entry");
    let wall = secs(ta.elapsed());
    let received = ctx.sub.count(who) - got_a;
    r.stop();
    let c = cpu_percent(&a, &b, wall);
    eprintln!(
        "footprint run {run}, {}: VmHWM {} KiB, CPU {c:.3}%, threads {} (peak {peak_threads}), {received} readings received",
        who.name(),
        b.hwm_kib,
        b.threads
    );
    assert!(
        received >= enough(ctx),
        "footprint: the subscriber received {received} readings from {} in {wall:.1} s: the comparison is void",
        who.name()
    );
    fs::remove_dir_all(&dir).expect("remove the run's dir");
    Sample {
        hwm_kib: b.hwm_kib,
        cpu_percent: c,
        peak_threads,
        received,
    }
}

/// valgrind with callgrind and `callgrind_control`, or why not.
fn callgrind_available() -> anyhow::Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            anyhow::bail!("no `{tool}` (Debian: valgrind)");
        }
    }
    Ok(())
}

fn callgrind_control(flag: &str, pid: u32) {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .expect("run callgrind_control");
    assert!(
        out.status.success(),
        "callgrind_control {flag} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Instructions per reading received, under callgrind: the counters are zeroed after the
/// warm-up and dumped at the window's end (all threads together).
fn instructions_per_reading(ctx: &Ctx, who: Who) -> f64 {
    let dir = ctx.work.join(format!("footprint-{}-callgrind", who.name()));
    fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("callgrind.out");
    let wrapper: Vec<String> = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
        format!("--log-file={}", dir.join("valgrind.log").display()),
    ];
    let r = start_and_warm(
        ctx,
        who,
        &dir,
        &format!("{}-callgrind", who.name()),
        &wrapper,
    );
    let pid = r.pid();
    callgrind_control("-z", pid);
    let got_a = ctx.sub.count(who);
    window(ctx, pid, 0);
    callgrind_control("-d", pid);
    let received = ctx.sub.count(who) - got_a;
    r.stop();
    let dump = read_lossy(&PathBuf::from(format!("{}.1", out.display())));
    let total: u64 = dump
        .lines()
        .filter_map(|l| l.strip_prefix("summary:"))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `summary:` in the callgrind dump of {}", who.name()));
    assert!(
        received > 0,
        "footprint under callgrind: no reading of {} received: the comparison is void",
        who.name()
    );
    let per = total as f64 / received as f64;
    eprintln!(
        "footprint under callgrind, {}: {total} instructions, {received} readings received, {per:.0} per reading",
        who.name()
    );
    fs::remove_dir_all(&dir).expect("remove the run's dir");
    per
}

pub fn footprint(s: &Settings, work: &Path) -> Vec<Row> {
    let broker = Broker::start_quiet(&work.join("broker-footprint"));
    let peer = match collectd::find_or_install() {
        Ok(c) => {
            eprintln!("footprint: peer {} ({})", c.version, c.bin.display());
            Some(c)
        }
        Err(why) => {
            let note = format!("footprint: the collectd peer is SKIPPED: {why}");
            eprintln!("{note}");
            println!("> {note}\n");
            None
        }
    };
    let values_dir = work.join("footprint-values");
    fs::create_dir_all(&values_dir).expect("dir");
    let values: Vec<PathBuf> = (0..SENSORS)
        .map(|i| {
            let v = values_dir.join(format!("value{i}"));
            fs::write(&v, format!("{}\n", 20 + i)).expect("value file");
            v
        })
        .collect();
    let ctx = Ctx {
        s,
        work,
        broker: &broker,
        sub: Counter::start(&broker, &work.join("footprint-sub")),
        values,
        peer: peer.as_ref(),
    };
    let whos: &[Who] = if peer.is_some() {
        &[Who::Ours, Who::Collectd]
    } else {
        &[Who::Ours]
    };
    let mut samples: Vec<Vec<Sample>> = whos.iter().map(|_| Vec::new()).collect();
    for r in 0..s.runs {
        // Alternate who goes first, in case the machine's load drifts.
        let order: Vec<usize> = if r % 2 == 0 {
            (0..whos.len()).collect()
        } else {
            (0..whos.len()).rev().collect()
        };
        for i in order {
            samples[i].push(run(&ctx, whos[i], r));
        }
    }
    let instructions: Option<Vec<f64>> = match callgrind_available() {
        Ok(()) => Some(
            whos.iter()
                .map(|&w| instructions_per_reading(&ctx, w))
                .collect(),
        ),
        Err(why) => {
            let note = format!("footprint: instructions per reading SKIPPED: {why}");
            eprintln!("{note}");
            println!("> {note}\n");
            None
        }
    };

    let secs = s.footprint_secs;
    let warm = s.footprint_warmup;
    let get = |i: usize, f: fn(&Sample) -> f64| samples[i].iter().map(f).collect::<Vec<f64>>();
    let ratio = |f: fn(&Sample) -> f64| -> Vec<f64> {
        samples[0]
            .iter()
            .zip(&samples[1])
            .map(|(o, p)| f(o) / f(p))
            .collect()
    };
    let rss = |x: &Sample| x.hwm_kib as f64 * 1024.0;
    let cpu = |x: &Sample| x.cpu_percent;
    let threads = |x: &Sample| x.peak_threads as f64;
    let received = |x: &Sample| x.received as f64;
    let mut rows = Vec::new();
    for (i, who) in whos.iter().enumerate() {
        let name = who.name();
        let peer_target = |t: &'static str| if i == 0 && peer.is_some() { t } else { "" };
        rows.push(Row::new(
            "3",
            format!("4 sensors @ 1 s, {warm:.0} s warm-up + {secs:.0} s, {name}: peak RSS (VmHWM)"),
            peer_target("<= collectd's"),
            Fmt::Bytes,
            get(i, rss),
        ));
        rows.push(Row::new(
            "3",
            format!("4 sensors @ 1 s, {name}: CPU, % of one core (the {secs:.0} s)"),
            peer_target("<= 2x collectd's"),
            Fmt::Percent,
            get(i, cpu),
        ));
        rows.push(Row::new(
            "3",
            format!("4 sensors @ 1 s, {name}: threads (peak)"),
            "",
            Fmt::Count,
            get(i, threads),
        ));
        rows.push(Row::new(
            "3",
            format!(
                "4 sensors @ 1 s, {name}: readings received by a subscriber in the {secs:.0} s"
            ),
            "",
            Fmt::Count,
            get(i, received),
        ));
        if let Some(ins) = &instructions {
            rows.push(Row::once(
                "3",
                format!("4 sensors @ 1 s, {name}: instructions per reading received (callgrind, {secs:.0} s)"),
                "",
                Fmt::Count,
                ins[i],
            ));
        }
    }
    if peer.is_some() {
        rows.push(Row::new(
            "3",
            "ratio telemetryd / collectd: peak RSS (per run)".into(),
            "<= 1.0x",
            Fmt::Ratio,
            ratio(rss),
        ));
        rows.push(Row::new(
            "3",
            "ratio telemetryd / collectd: CPU (per run)".into(),
            "<= 2.0x",
            Fmt::Ratio,
            ratio(cpu),
        ));
        if let Some(ins) = &instructions {
            rows.push(Row::once(
                "3",
                "ratio telemetryd / collectd: instructions per reading".into(),
                "",
                Fmt::Ratio,
                ins[0] / ins[1],
            ));
        }
    }
    let (size, stripped) = stripped_size(&s.bin, work);
    rows.push(Row::once(
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
    ));
    rows
}
