//! The soak's hostile phase: QoS 1 counters accounted as in the soak while the parts of
//! [`crate::parts`] attack the daemon around them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use crate::account::{Account, COUNTER_PREFIX};
use crate::parts::{self, Part};
use crate::watch::{RSS_LIMIT_KIB, Watch, max_summary, retain_big, top_lines};

/// The accounted QoS 1 sensors: (name, interval in ms).
const COUNTERS: [(&str, u64); 3] = [("q50", 50), ("q100", 100), ("q200", 200)];
/// The `bound` part's reload lowers `max_messages` to this.
const LOWERED_BOUND: u64 = 1000;
/// The `bound` part keeps the broker away until this many readings are buffered (or 20 s).
const BACKLOG: u64 = 30_000;
/// systemd would kill the daemon after this long without a WATCHDOG=1.
const WATCHDOG: Duration = Duration::from_secs(4);
/// Log lines (the once-a-second summary lines aside) for the whole phase: startup, connects,
/// one throttled line per cause per minute. One line per bad reading is thousands.
const LOG_BUDGET: usize = 300;
const NODE: &str = "td-hostile";

pub fn run(seed: u64) {
    let on = parts::selected();
    let names: Vec<&str> = on.iter().map(|p| p.name()).collect();
    if on.is_empty() {
        eprintln!("hostile: SOAK_HOSTILE=none, skipped");
        return;
    }
    let has = |p: Part| on.contains(&p);
    let secs = std::env::var("SOAK_HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!(
        "hostile: seed {seed}, parts {} (replay: SOAK_SEED={seed} SOAK_HOSTILE={})",
        names.join(","),
        names.join(",")
    );
    let mut rng = Rng::new(seed ^ 0x6b6f_7374_696c_6521);

    let mut env = Env::new("hostile");
    let broker = Broker::start(&env.path("broker"));
    let port = broker.port;
    env.broker = Some(broker);
    env.sub = Some(Subscriber::start_timed(env.dir(), port, "sub-hostile"));
    if has(Part::Ha) {
        retain_big(port, "homeassistant/status");
        retain_big(port, &format!("homeassistant/sensor/{NODE}/ghost/config"));
    }
    let mut sensors = String::new();
    let mut counters = Vec::new();
    for (name, ms) in COUNTERS {
        let c = Counter::new(env.dir(), name);
        let topic = format!("{COUNTER_PREFIX}{name}");
        sensors.push_str(&c.sensor_toml(name, &topic, &format!("{ms}ms"), 1));
        sensors.push_str("format = \"json\"\n\n");
        counters.push(c);
    }
    for p in &on {
        sensors.push_str(&parts::sensors(*p, env.dir(), &mut rng));
    }
    let config = |env: &Env, tail: &str, bound: u64| {
        let cfg = env.config_for_port(port, "stats_interval = \"1s\"\n", tail);
        let bound = format!("max_messages = {bound}");
        tweak(
            cfg,
            &[
                ("log_level = \"debug\"", "log_level = \"info\""),
                ("max_messages = 500000", &bound),
            ],
        )
    };
    let ballast = if has(Part::Bound) {
        parts::ballast(env.dir())
    } else {
        String::new()
    };
    env.write_config(&config(&env, &format!("{sensors}{ballast}"), 500_000));

    let stop_garbage = Arc::new(AtomicBool::new(false));
    let garbage = has(Part::Garbage).then(|| {
        parts::spawn_garbage_writer(
            env.dir().to_path_buf(),
            rng.next_u64(),
            stop_garbage.clone(),
        )
    });
    if has(Part::Bound) {
        env.broker().stop(); // the backlog builds from the first reading
    }
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    let usec = WATCHDOG.as_micros().to_string();
    let mut vars = vec![("NOTIFY_SOCKET", socket.as_str())];
    if has(Part::Watchdog) {
        vars.push(("WATCHDOG_USEC", usec.as_str()));
    }
    env.daemon.start_with_env(&vars);
    let t0 = Instant::now();
    let mut acc = Account::new(env.sub().out.clone(), &COUNTERS.map(|c| c.0), NODE);
    let mut w = Watch {
        peak_rss_kib: 0,
        peak_store: 0,
        problems: Vec::new(),
    };
    let mut alive = true;
    while alive && !notify.has("READY=1") {
        assert!(t0.elapsed() < DEADLINE, "no READY=1 within {DEADLINE:?}");
        alive = w.run_for(&mut env, &mut acc, Duration::from_millis(100), "startup");
    }
    let ready = Instant::now();

    // bound: a backlog, then a reload lowers the bound under it and drops the ballast.
    let mut cut_below: Vec<u64> = vec![0; COUNTERS.len()];
    let mut buffered_before = 0;
    if alive && has(Part::Bound) {
        let t = Instant::now();
        while alive && t.elapsed() < Duration::from_secs(20) {
            buffered_before = max_summary(&env.daemon.log(), "buffered");
            if buffered_before >= BACKLOG {
                break;
            }
            alive = w.run_for(
                &mut env,
                &mut acc,
                Duration::from_millis(500),
                "bound (backlog)",
            );
        }
        env.write_config(&config(&env, &sensors, LOWERED_BOUND));
        if alive {
            env.daemon.signal(libc::SIGHUP);
        }
        let t = Instant::now();
        while alive && !env.daemon.log().contains("buffer full: dropped") {
            if t.elapsed() > DEADLINE {
                w.problems
                    .push(format!("bound: no drop line {DEADLINE:?} after the reload"));
                break;
            }
            alive = w.run_for(
                &mut env,
                &mut acc,
                Duration::from_millis(100),
                "bound (the cut)",
            );
        }
        // At the bound the oldest go on being dropped until the link is back: the cut may take
        // readings taken before the reconnect (the drop line is written after the pop).
        let links = |log: &str| log.matches("connected to the broker").count();
        let before = links(&env.daemon.log());
        env.broker().restart();
        let t = Instant::now();
        while alive && links(&env.daemon.log()) == before {
            if t.elapsed() > DEADLINE {
                w.problems.push(format!(
                    "bound: no reconnect {DEADLINE:?} after the broker restart"
                ));
                break;
            }
            alive = w.run_for(
                &mut env,
                &mut acc,
                Duration::from_millis(100),
                "bound (reconnect)",
            );
        }
        if env.daemon.log().contains("buffer full: dropped") {
            cut_below = counters.iter().map(|c| c.value() + 1).collect();
        }
    }
    if alive {
        let mut d = Duration::from_secs(secs);
        if has(Part::Hung) {
            d = d.max(parts::HUNG_RUN.saturating_sub(t0.elapsed()));
        }
        alive = w.run_for(&mut env, &mut acc, d, "the run");
    }

    // Stop the counters (a bounded wait: a starved pool never reads them), let all arrive.
    stop_garbage.store(true, Ordering::Relaxed);
    let garbage_writes = garbage.map(|g| g.join().unwrap()).unwrap_or(0);
    let mut finals = Vec::new();
    for c in &counters {
        let _ = std::fs::remove_file(c.file.with_extension("refused"));
        std::fs::File::create(c.file.with_extension("pause")).unwrap();
    }
    let t = Instant::now();
    while alive
        && t.elapsed() < DEADLINE
        && !counters
            .iter()
            .all(|c| c.file.with_extension("refused").exists())
    {
        alive = w.run_for(
            &mut env,
            &mut acc,
            Duration::from_millis(100),
            "the final reads",
        );
    }
    for (c, (name, _)) in counters.iter().zip(COUNTERS) {
        if alive && !c.file.with_extension("refused").exists() {
            w.problems.push(format!(
                "{name}: not read in the {DEADLINE:?} before the end (reads or commits stopped)"
            ));
        }
        finals.push(c.value());
    }
    let complete = |acc: &Account| {
        (0..COUNTERS.len()).all(|s| {
            (cut_below[s]..=finals[s]).all(|v| v == 0 || acc.streams[s].first.contains(&v))
        })
    };
    let t = Instant::now();
    while alive && !complete(&acc) && t.elapsed() < Duration::from_secs(60) {
        alive = w.run_for(
            &mut env,
            &mut acc,
            Duration::from_millis(200),
            "the final delivery",
        );
    }
    let stopped_at = Instant::now();
    if alive {
        env.daemon.sigterm();
        match env.daemon.wait_exit(SHUTDOWN_LIMIT) {
            Some(s) if s.success() => {}
            Some(s) => w.problems.push(format!("exit status {s} after SIGTERM")),
            None => {
                w.problems
                    .push(format!("still running {SHUTDOWN_LIMIT:?} after SIGTERM"));
                env.daemon.sigkill();
            }
        }
    }
    acc.tail();
    // Only a clean stop frees the store's lock and promises the counters are out of it.
    let clean = w
        .problems
        .iter()
        .all(|p| !p.contains("SIGTERM") && !p.contains("exited") && !p.contains("killed"));
    let left = if clean {
        store_topics(&env.buffer_path())
    } else {
        Vec::new()
    };
    let log = env.daemon.all_logs();
    let mut problems = std::mem::take(&mut w.problems);
    let all: Vec<&str> = log.lines().collect();
    if let Some(i) = all.iter().position(|l| l.contains("panicked at")) {
        let why = all.get(i + 1).unwrap_or(&"");
        problems.insert(0, format!("the daemon panicked: {} {why}", all[i]));
    }

    // The accounting.
    let produced: u64 = finals.iter().sum();
    let total_dropped = log
        .lines()
        .filter(|l| l.contains("buffer full"))
        .filter_map(|l| log_field(l, "total")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut missing = 0;
    let mut cut = 0;
    for (s, (name, _)) in COUNTERS.iter().enumerate() {
        let st = &acc.streams[s];
        let lost: Vec<u64> = (1..=finals[s]).filter(|v| !st.first.contains(v)).collect();
        // Oldest first: the cut takes a prefix 1..=k of each counter (the broker was away from
        // its first reading), all of it taken before the link was back.
        let k = lost
            .iter()
            .take_while(|&&v| v < cut_below[s])
            .enumerate()
            .take_while(|(i, v)| **v == *i as u64 + 1)
            .count();
        cut += k as u64;
        missing += (lost.len() - k) as u64;
        if lost.len() > k {
            problems.push(format!(
                "{name}: {} missing{}: {}",
                lost.len() - k,
                if has(Part::Bound) {
                    " beyond the bound's oldest-first cut"
                } else {
                    ""
                },
                ranges(&lost[k..])
            ));
        }
        for (v, after) in st.reorders.iter().take(5) {
            problems.push(format!("{name}: {v} first delivered after {after}"));
        }
    }
    if cut > total_dropped {
        problems.push(format!(
            "bound: {cut} counter readings cut, the log's drop total says {total_dropped}"
        ));
    }
    if acc.seq_reorders > 0 {
        problems.push(format!(
            "{} first deliveries out of seq order across the counters",
            acc.seq_reorders
        ));
    }
    for b in &acc.bad_payloads {
        problems.push(format!("a counter payload is not the JSON expected: {b}"));
    }
    // A clean stop publishes nothing it has not handed out yet: what the last commit took from
    // sensors still reading (the ballast, the garbage files) waits for the next start. The
    // counters were paused and all delivered before the stop, so none of theirs may be left.
    let counters_left = left
        .iter()
        .filter(|t| t.starts_with(COUNTER_PREFIX))
        .count();
    if counters_left != 0 {
        problems.push(format!(
            "{counters_left} counter readings left in the store after a clean stop (of {} left)",
            left.len()
        ));
    }
    let peak_buffered = max_summary(&log, "buffered");
    let store_limit = peak_buffered * 1024 + 16 * 1024 * 1024;
    if w.peak_store > store_limit {
        problems.push(format!(
            "store: {} bytes on disk (limit {store_limit})",
            w.peak_store
        ));
    }
    if w.peak_rss_kib > RSS_LIMIT_KIB {
        problems.push(format!(
            "peak RSS {} KiB (limit {RSS_LIMIT_KIB})",
            w.peak_rss_kib
        ));
    }
    // "sensor removed" is one line per sensor a reload takes away (the ballast): not per reading.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" summary ") && !l.contains("sensor removed"))
        .collect();
    if lines.len() > LOG_BUDGET {
        problems.push(format!(
            "{} log lines (budget {LOG_BUDGET}); the most frequent:{}",
            lines.len(),
            top_lines(&lines)
        ));
    }
    let gap = notify.longest_gap("WATCHDOG=1", ready, stopped_at);
    if has(Part::Watchdog) && gap > WATCHDOG {
        problems.push(format!(
            "watchdog: no WATCHDOG=1 for {gap:?} (systemd kills after {WATCHDOG:?})"
        ));
    }
    if has(Part::Ha) && acc.discovery_msgs == 0 {
        problems.push("ha: no discovery message published".into());
    }
    if has(Part::Floods) && acc.flood_msgs == 0 {
        problems.push("floods: no QoS 0 flood reading delivered".into());
    }

    let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
    let mut summary = format!(
        "HOSTILE {verdict} seed={seed} parts={} ran={:.0}s produced={produced} delivered={} missing={missing} cut={cut} \
         (bound: {buffered_before} buffered at the reload, drop total {total_dropped}) peak_rss={:.1}MiB \
         peak_store={}KiB peak_buffered={peak_buffered} log_lines={} watchdog_gap={} flood_msgs={} \
         other_msgs={} discovery_msgs={} garbage_writes={garbage_writes}",
        names.join(","),
        t0.elapsed().as_secs_f64(),
        acc.delivered(),
        w.peak_rss_kib as f64 / 1024.0,
        w.peak_store / 1024,
        lines.len(),
        if has(Part::Watchdog) {
            format!("{:.2}s", gap.as_secs_f64())
        } else {
            "n/a".into()
        },
        acc.flood_msgs,
        acc.other_msgs,
        acc.discovery_msgs,
    );
    for p in &problems {
        write!(summary, "\n  {p}").unwrap();
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{summary}\n").as_bytes());
    assert!(
        problems.is_empty(),
        "the hostile phase failed (seed {seed}, parts {}):\n{}",
        names.join(","),
        problems.join("\n")
    );
}
