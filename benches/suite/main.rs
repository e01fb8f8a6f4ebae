//! The benchmark suite (issue 5): the real `telemetryd` binary against a real local Mosquitto,
//! side by side with `mosquitto_pub`, and the footprint of the daemon side by side with
//! collectd (installed with apt when missing, skipped with the reason when it cannot be). See
//! BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench suite                       # everything, release build (~15 min)
//! cargo bench --bench suite -- --quick            # small N, short runs
//! cargo test --bench suite -- --quick             # the same in a debug build: what CI runs
//! cargo bench --bench suite -- --only drain,wear --runs 5
//! ```
//!
//! Options: `--quick`; `--runs N` (default 3; 1 with --quick); `--only` a comma-separated
//! list of `drain`, `ingest`, `latency`, `footprint`, `backlog`, `wear`, `wear-interval` (the
//! same with `commit_interval = "100ms"`), `reconnect` (outages of 1 and 10 minutes, 3 s with
//! `--quick`); `--dir PATH` where
//! the stores go (default: the temp dir; on a Pi, a directory on the SD card); `--bin PATH`
//! another telemetryd binary to drive (e.g. a build from before a change; the `latency`
//! scenario always uses the library this suite was built with); `--drain-n N`, `--big-n N`
//! other backlog sizes for scenarios 1 and 4; `--keep` leaves the work dir (stores, configs,
//! logs) in place, for a look after a failure.
//!
//! A Markdown table goes to stdout (each figure the median of the runs), progress to stderr.
//! Every run checks what its figure rests on: the drain and the big backlog, every reading
//! acknowledged and the store empty; footprint and wear, a clean stop without warnings with at
//! most the readings taken as the stop came left in the store; ingest and latency (no
//! broker), the readings committed; reconnect, a reading arrives after the outage and the
//! daemon stops cleanly. No timing is ever checked: these machines are noisy.

mod env;
mod library;
mod reconnect;
mod scenarios;

use std::path::PathBuf;
use std::time::Instant;

/// What to run and how long.
pub struct Settings {
    pub bin: PathBuf,
    pub runs: usize,
    pub drain_n: u64,
    pub big_n: u64,
    pub ingest_sensors: Vec<usize>,
    pub ingest_secs: f64,
    pub latency_secs: f64,
    pub footprint_secs: f64,
    /// From the start (or, under callgrind, the first reading received) to the window.
    pub footprint_warmup: f64,
    pub wear_slow_secs: f64,
    pub wear_fast_secs: f64,
    /// How long the broker is away in the `reconnect` scenario.
    pub reconnect_outages: Vec<std::time::Duration>,
    /// `reconnect` also runs with the old fixed 60 s backoff cap, for comparison.
    pub reconnect_compare: bool,
}

#[derive(Clone, Copy)]
pub enum Fmt {
    Rate,
    Ratio,
    Percent,
    Count,
    Bytes,
    Ms,
    Secs,
}

impl Fmt {
    fn show(self, v: f64) -> String {
        match self {
            Fmt::Rate => format!("{}/s", thousands(v)),
            Fmt::Ratio => format!("{v:.2}x"),
            Fmt::Percent => format!("{v:.3}%"),
            Fmt::Count => format!("{v:.0}"),
            Fmt::Bytes if v >= 1024.0 * 1024.0 => format!("{:.2} MiB", v / 1048576.0),
            Fmt::Bytes if v >= 1024.0 => format!("{:.2} KiB", v / 1024.0),
            Fmt::Bytes => format!("{v:.0} B"),
            Fmt::Ms => format!("{v:.2} ms"),
            Fmt::Secs => format!("{v:.3} s"),
        }
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of the table: a value per run, or one value for what does not change between
/// runs (the binary's size, a store prepared once).
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub target: &'static str,
    pub fmt: Fmt,
    pub values: Vec<f64>,
    once: bool,
}

impl Row {
    pub fn new(
        section: &'static str,
        measure: String,
        target: &'static str,
        fmt: Fmt,
        values: Vec<f64>,
    ) -> Row {
        Row {
            section,
            measure,
            target,
            fmt,
            values,
            once: false,
        }
    }

    pub fn once(
        section: &'static str,
        measure: String,
        target: &'static str,
        fmt: Fmt,
        value: f64,
    ) -> Row {
        Row {
            once: true,
            ..Row::new(section, measure, target, fmt, vec![value])
        }
    }

    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    }
}

const SCENARIOS: &[&str] = &[
    "drain",
    "ingest",
    "latency",
    "footprint",
    "backlog",
    "wear",
    "wear-interval",
    "reconnect",
];

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench suite -- [--quick] [--runs N] [--only {}] [--dir PATH] [--bin PATH] [--drain-n N] [--big-n N] [--keep]",
        SCENARIOS.join(",")
    );
    std::process::exit(2);
}

fn main() {
    let mut quick = false;
    let mut runs = None;
    let mut only: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    let mut dir = std::env::temp_dir();
    let mut bin = PathBuf::from(env!("CARGO_BIN_EXE_telemetryd"));
    let (mut drain_n, mut big_n) = (None, None);
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--runs" => {
                runs = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .unwrap_or_else(|| usage()),
                )
            }
            "--only" => {
                only = args
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if only.iter().any(|o| !SCENARIOS.contains(&o.as_str())) {
                    usage();
                }
            }
            "--dir" => dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--bin" => bin = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--keep" => keep = true,
            "--drain-n" => drain_n = args.next().and_then(|n| n.parse().ok()),
            "--big-n" => big_n = args.next().and_then(|n| n.parse().ok()),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            _ => usage(),
        }
    }
    let s = if quick {
        Settings {
            bin: bin.clone(),
            runs: runs.unwrap_or(1),
            drain_n: 2_000,
            big_n: 20_000,
            ingest_sensors: vec![1, 10, 100, 1000],
            ingest_secs: 1.0,
            latency_secs: 1.0,
            footprint_secs: 3.0,
            footprint_warmup: 2.0,
            wear_slow_secs: 3.0,
            wear_fast_secs: 2.0,
            reconnect_outages: vec![std::time::Duration::from_secs(3)],
            reconnect_compare: false,
        }
    } else {
        Settings {
            bin: bin.clone(),
            runs: runs.unwrap_or(3),
            drain_n: 100_000,
            big_n: 1_000_000,
            ingest_sensors: vec![1, 10, 100, 1000],
            ingest_secs: 5.0,
            latency_secs: 5.0,
            footprint_secs: 30.0,
            footprint_warmup: 5.0,
            wear_slow_secs: 60.0,
            wear_fast_secs: 10.0,
            reconnect_outages: vec![
                std::time::Duration::from_secs(60),
                std::time::Duration::from_secs(600),
            ],
            reconnect_compare: true,
        }
    };
    let mut s = s;
    s.drain_n = drain_n.unwrap_or(s.drain_n);
    s.big_n = big_n.unwrap_or(s.big_n);
    if s.drain_n == 0 || s.big_n == 0 {
        usage();
    }
    let work = tempfile::Builder::new()
        .prefix("telemetryd-bench-")
        .tempdir_in(&dir)
        .unwrap_or_else(|e| panic!("cannot create a work dir in {}: {e}", dir.display()));
    if keep {
        eprintln!("keeping the work dir {}", work.path().display());
    }
    let work = Work(Some(work), keep);

    println!("{}", machine(work.path(), &s, quick));
    let started = Instant::now();
    // In the order of SCENARIOS, whatever the order of --only.
    let mut results: Vec<(&str, Vec<Row>)> = Vec::new();
    for &name in SCENARIOS.iter().filter(|&&n| only.iter().any(|o| o == n)) {
        let w = work.path();
        let rows = match name {
            "drain" => scenarios::drain(&s, w),
            "ingest" => scenarios::ingest(&s, w),
            "latency" => scenarios::latency(&s, w),
            "footprint" => scenarios::footprint(&s, w),
            "backlog" => scenarios::backlog(&s, w),
            "wear" => scenarios::wear(&s, w, "default policy", ""),
            "wear-interval" => {
                let policy = "commit_interval = \"100ms\"";
                scenarios::wear(&s, w, policy, policy)
            }
            "reconnect" => reconnect::reconnect(&s, w),
            _ => unreachable!("{name} is in SCENARIOS"),
        };
        results.push((name, rows));
    }
    let rows: Vec<&Row> = results.iter().flat_map(|(_, rows)| rows).collect();

    println!("| # | measure | target | median | runs |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let runs: Vec<String> = r.values.iter().map(|&v| r.fmt.show(v)).collect();
        println!(
            "| {} | {} | {} | **{}** | {} |",
            r.section,
            r.measure,
            r.target,
            r.fmt.show(r.median()),
            runs.join(", ")
        );
    }
    println!(
        "\n{} figures in {:.0} s.",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    // A panic, not an exit: the work dir is removed on the way out.
    let problems = check_sane(&results, s.runs);
    if !problems.is_empty() {
        panic!(
            "the suite ran but its figures are not sane:\n{}",
            problems.join("\n")
        );
    }
}

/// Sanity, never speed (these machines are noisy): every scenario asked for gave figures, one
/// per run, and every figure is a positive finite number (a rate, a size, a time, a count of
/// threads; CPU time is measured to the nanosecond, so even an idle daemon's is above zero).
/// The scenarios have checked as they ran that everything was delivered and every stop was
/// clean. Returns every problem found (none: all is sane).
fn check_sane(results: &[(&str, Vec<Row>)], runs: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if results.is_empty() {
        problems.push("no scenario ran".to_owned());
    }
    for (scenario, rows) in results {
        if rows.is_empty() {
            problems.push(format!("{scenario}: no figures"));
        }
        for r in rows {
            let expected = if r.once { 1 } else { runs };
            if r.values.len() != expected {
                problems.push(format!(
                    "{scenario}: {}: {} values for {expected} run(s)",
                    r.measure,
                    r.values.len()
                ));
            }
            for &v in &r.values {
                if !(v.is_finite() && v > 0.0) {
                    problems.push(format!(
                        "{scenario}: {}: {v} is not a sane figure",
                        r.measure
                    ));
                }
            }
        }
    }
    problems
}

/// The work dir: removed at the end (on a panic too) unless `--keep`.
struct Work(Option<tempfile::TempDir>, bool);

impl Work {
    fn path(&self) -> &std::path::Path {
        self.0.as_ref().expect("the work dir").path()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.1 {
            let _ = self.0.take().map(tempfile::TempDir::keep);
        }
    }
}

/// The machine and the build, for the record.
fn machine(work: &std::path::Path, s: &Settings, quick: bool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().next().unwrap_or("?").to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let fs = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && work.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} ({} on {})", f[1], f[2], f[0])))
        })
        .max()
        .map_or("?".into(), |(_, d)| d);
    let build = if cfg!(debug_assertions) {
        "DEBUG build (figures are not representative; use `cargo bench`)"
    } else {
        "release build"
    };
    format!(
        "telemetryd benchmark suite{}: {build}, {} run(s) per figure\n\
         binary: {}\n\
         machine: {cores} cores, {model}; {mem}; stores under {} on {fs}\n\
         broker: {}\n",
        if quick { " (quick)" } else { "" },
        s.runs,
        s.bin.display(),
        work.display(),
        env::mosquitto_version()
    )
}
