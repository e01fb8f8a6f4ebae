//! The `sensors`, `check` and `buffer` subcommands.

use std::fs::{self};
use std::process::Command;

use telemetryd_testkit::*;

use super::TOPIC;

/// `telemetryd sensors` on a fake sysfs tree prints blocks that, pasted into a config, pass
/// `telemetryd check`, which reads each one and shows its value.
#[test]
fn sensors_then_check_on_a_fake_sysfs() {
    let env = Env::new("sensors_then_check_on_a_fake_sysfs");
    let root = env.path("sys");
    write_w1_slave(&root.join("bus/w1/devices/28-0316a2795aff/w1_slave"), 28437);
    let iio = root.join("bus/iio/devices/iio:device0");
    fs::create_dir_all(&iio).unwrap();
    fs::write(iio.join("name"), "bme280\n").unwrap();
    fs::write(iio.join("in_pressure_input"), "101.325\n").unwrap();
    let zone = root.join("class/thermal/thermal_zone0");
    fs::create_dir_all(&zone).unwrap();
    fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    fs::write(zone.join("temp"), "48312\n").unwrap();
    let proc = env.path("proc");
    fs::create_dir_all(&proc).unwrap();
    fs::write(proc.join("loadavg"), "0.42 0.35 0.30 1/123 4567\n").unwrap();
    fs::write(
        proc.join("meminfo"),
        "MemTotal: 4000000 kB\nMemAvailable: 1024000 kB\n",
    )
    .unwrap();

    let out = Command::new(bin())
        .args(["sensors", "--sysfs-root"])
        .arg(&root)
        .arg("--procfs-root")
        .arg(&proc)
        .output()
        .unwrap();
    assert!(out.status.success());
    let blocks = String::from_utf8(out.stdout).unwrap();
    assert!(
        blocks.contains("# 1-Wire thermometer 28-0316a2795aff: now 28.437 °C"),
        "{blocks}"
    );
    assert!(blocks.contains("channel = \"pressure\""), "{blocks}");
    // The system metrics this machine has; the ones it lacks (no /proc/uptime, no Wi-Fi, not
    // a Pi) are left out.
    assert!(
        blocks.contains("# system: memory available: now 1000 MiB\n[[sensor]]\nname = \"memory_available\"\nkind = \"system\"\nmetric = \"memory_available\"\n"),
        "{blocks}"
    );
    assert!(!blocks.contains("metric = \"uptime\""), "{blocks}");
    assert!(!blocks.contains("metric = \"under_voltage\""), "{blocks}");

    let top = format!(
        "sysfs_root = {}\nprocfs_root = {}\n",
        toml_str(&root.display().to_string()),
        toml_str(&proc.display().to_string())
    );
    env.write_config(&env.config_for_port(1, &top, &blocks));
    let (out, table) = check(&env);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Column widths follow the longest name: compare words.
    let words: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for row in [
        "28-0316a2795aff 28.4",
        "bme280_pressure 1013.3",
        "cpu-thermal 48.3",
        "load1 0.4",
        "memory_used 74.4",
        "cpu_temperature 48.3",
    ] {
        assert!(
            words.iter().any(|w| w.starts_with(row)),
            "no {row:?} in\n{table}"
        );
    }
    assert!(
        !env.buffer_path().exists(),
        "check must not create the buffer"
    );

    // A sensor that fails makes check fail, with the reason.
    fs::remove_file(zone.join("temp")).unwrap();
    let (out, table) = check(&env);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains("cpu-thermal: ") && table.contains("no such file"),
        "{table}"
    );
}

/// Runs `telemetryd check` on the env's config (no broker: port 1): its output and its
/// stdout as text.
fn check(env: &Env) -> (std::process::Output, String) {
    let out = Command::new(bin())
        .arg("check")
        .arg("--no-broker")
        .arg("--config")
        .arg(&env.daemon.config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, table)
}

/// `telemetryd buffer` says plainly when the daemon holds the buffer, and reports depth and
/// the oldest reading once it is stopped.
#[test]
fn buffer_subcommand() {
    let mut env = Env::new("buffer_subcommand");
    let counter = Counter::new(env.dir(), "counter");
    // No broker on this port: everything is buffered.
    let cfg = env.config_for_port(
        free_port(),
        "",
        &counter.sensor_toml("counter", TOPIC, "20ms", 1),
    );
    env.write_config(&cfg);
    env.daemon.start();
    counter.wait_value_at_least(10, "readings buffered");

    let config = env.daemon.config.clone();
    let buffer = || {
        Command::new(bin())
            .arg("buffer")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = buffer();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use by the running daemon"), "{stderr}");

    env.daemon.stop_expect_success();
    let out = buffer();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waiting: u64 = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("waiting:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no depth in\n{report}"));
    assert!(waiting >= 10, "{report}");
    assert!(
        report.contains(&format!("topic {TOPIC}")) && report.contains(" ago)"),
        "{report}"
    );
}
