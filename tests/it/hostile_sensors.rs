//! Sensors that misbehave (a flood of output, a value near f64::MAX, a value out of range that
//! changes every read) beside a normal one: the normal one's readings all arrive, the daemon's
//! memory stays small, and each misbehaving sensor is one throttled log line.

use std::fs::{self, File};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

const TOPIC: &str = "test/normal";
const HUGE: &str = "test/huge";
/// With the bounds, this test's daemon (debug build) peaked at 38 MiB and `check` at 14 MiB;
/// reading `yes` to the end took the daemon to 3.1 GiB.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A command sensor table; `extra` adds keys.
fn command_sensor(name: &str, argv: &str, topic: &str, extra: &str) -> String {
    format!(
        "[[sensor]]\nname = \"{name}\"\nkind = \"command\"\ncommand = {argv}\n\
         timeout = \"2s\"\ninterval = \"50ms\"\ntopic = \"{topic}\"\n{extra}\n"
    )
}

/// Peak resident memory of a running process, from /proc.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

fn hostile_sensors() -> String {
    [
        command_sensor("flood", r#"["yes"]"#, "test/flood", ""),
        command_sensor(
            "zeros",
            r#"["head", "-c", "100000000", "/dev/zero"]"#,
            "test/zeros",
            "",
        ),
        // DBL_MAX as "no data": a JSON payload crashed the committer (an inf after * 1e9).
        command_sensor(
            "huge",
            r#"["echo", "1.7976931348623157e308"]"#,
            HUGE,
            // QoS 0: rendered like any reading, but not left in the store that
            // drain_and_stop expects empty (it only pauses the counter).
            "format = \"json\"\nqos = 0",
        ),
        // 1e308 * 10 overflows in calibration: a sensor error, not an inf reading.
        command_sensor(
            "overflow",
            r#"["echo", "1e308"]"#,
            "test/overflow",
            "scale = 10",
        ),
        // A different value every read, always above max: one WARN, not one per reading.
        command_sensor(
            "hot",
            r#"["sh", "-c", "echo 1$(date +%N)"]"#,
            "test/hot",
            "max = 60",
        ),
    ]
    .concat()
}

#[test]
fn hostile_sensors_beside_a_normal_one() {
    let mut env = Env::with_broker("hostile_sensors");
    let counter = Counter::new(env.dir(), "counter");
    let sensors = format!(
        "{}{}",
        counter.sensor_toml("normal", TOPIC, "50ms", 1),
        hostile_sensors()
    );
    let cfg = env.config("", &sensors);
    env.write_config(&cfg);
    env.daemon.start();

    counter.wait_value_at_least(40, "normal readings taken beside the hostile sensors");
    wait_until(DEADLINE, "huge values published", || {
        env.sub().payloads(HUGE).len() >= 3
    });
    let hwm = vm_hwm_kib(env.daemon.pid());
    env.daemon.assert_running();
    for payload in env.sub().payloads(HUGE) {
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(json["value"].as_f64(), Some(f64::MAX), "{payload}");
    }
    let log = env.daemon.log();
    let warns = |sensor: &str, cause: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("sensor=\"{sensor}\"")))
            .inspect(|l| assert!(l.contains(&format!("cause=\"{cause}\"")), "{l}"))
            .count()
    };
    assert_eq!(warns("flood", "too_much_output"), 1, "{log}");
    assert_eq!(warns("zeros", "too_much_output"), 1, "{log}");
    assert_eq!(warns("overflow", "not_finite"), 1, "{log}");
    assert_eq!(warns("hot", "out_of_range"), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let n = env.drain_and_stop(&counter, TOPIC, 0);
    eprintln!("normal readings delivered: {n}; daemon VmHWM {hwm} KiB");
    assert!(
        hwm < RSS_LIMIT_KIB,
        "the daemon peaked at {hwm} KiB resident"
    );
}

/// Runs `telemetryd check` under GNU time: its exit status, stdout, peak RSS (KiB) and
/// duration. Not getrusage/wait4 from here: a child forked from this (large, multi-threaded)
/// test binary inherits its high-water mark at exec, which made a 14 MiB check look like
/// 226 MiB during the full suite. time's own child starts from a small process.
fn check_with_peak_rss(env: &Env) -> (ExitStatus, String, u64, Duration) {
    let out_path = env.path("check.out");
    let rss_path = env.path("check.rss");
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_path)
        .arg(bin())
        .arg("check")
        .arg("--config")
        .arg(&env.daemon.config)
        .stdout(File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .status()
        .expect("run /usr/bin/time (GNU time)");
    let elapsed = started.elapsed();
    let stdout = fs::read_to_string(&out_path).unwrap();
    // "Command exited with non-zero status 1" may come first; the format's line is last.
    let rss = fs::read_to_string(&rss_path).unwrap();
    let peak = rss
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {rss:?}"));
    (status, stdout, peak, elapsed)
}

#[test]
fn check_reports_hostile_sensors_promptly_in_little_memory() {
    let env = Env::new("check_hostile");
    // The timeout is long: only the output limit can end the flood's read early.
    let cfg = env
        .config_for_port(free_port(), "", &hostile_sensors())
        .replace("timeout = \"2s\"", "timeout = \"20s\"");
    env.write_config(&cfg);
    let (status, out, maxrss, elapsed) = check_with_peak_rss(&env);
    eprintln!("check: {status}, {maxrss} KiB peak, {elapsed:?}\n{out}");
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("flood: command `yes` printed more than 4 KiB"),
        "{out}"
    );
    assert!(out.contains("zeros: command `head"), "{out}");
    assert!(
        out.contains("overflow: value 1e308 gives inf after scale and offset"),
        "{out}"
    );
    // No value column shows inf: DBL_MAX is shown in full.
    let shown = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(shown("huge").parse::<f64>(), Ok(f64::MAX), "{out}");
    assert_eq!(shown("overflow"), "FAILED", "{out}");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(maxrss < RSS_LIMIT_KIB, "check peaked at {maxrss} KiB");
}
