//! What gets published for a reading: the DS18B20 seed example (explicit path and device
//! lookup under a fake sysfs tree) and the JSON payload format.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use telemetryd_testkit::*;

const DEVICE: &str = "28-0316a2795aff";
const TOPIC: &str = "temperature/outside";

fn ds18b20_sensor(source: &str, format: &str) -> String {
    format!(
        "[[sensor]]\n\
         name = \"outside\"\n\
         kind = \"ds18b20\"\n\
         {source}\n\
         interval = \"100ms\"\n\
         topic = \"{TOPIC}\"\n\
         qos = 1\n\
         retain = false\n\
         decimals = 1\n\
         format = \"{format}\"\n"
    )
}

/// Waits for `n` messages on TOPIC and asserts every payload is exactly `28.4`.
fn expect_seed_payloads(env: &Env, n: usize) {
    wait_until(DEADLINE, &format!("{n} readings on {TOPIC}"), || {
        env.sub().payloads(TOPIC).len() >= n
    });
    let payloads = env.sub().payloads(TOPIC);
    assert!(
        payloads.iter().all(|p| p == "28.4"),
        "expected every payload to be exactly \"28.4\" (t=28437, decimals = 1), got {payloads:?}"
    );
}

/// The spec's example: a w1_slave at 28.437 °C, decimals = 1 → payload `28.4`.
#[test]
fn seed_example() {
    let mut env = Env::with_broker("seed_example");
    let w1 = env.path(&format!("w1/{DEVICE}/w1_slave"));
    write_w1_slave(&w1, 28437);
    let source = format!("path = {}", toml_str(&w1.display().to_string()));
    let cfg = env.config("", &ds18b20_sensor(&source, "plain"));
    env.write_config(&cfg);
    env.daemon.start();

    expect_seed_payloads(&env, 3);
    let others: Vec<_> = env
        .sub()
        .lines()
        .into_iter()
        // The daemon's own availability and stats topics are expected; nothing else is.
        .filter(|(t, _)| {
            t != TOPIC && !t.starts_with(PROBE_PREFIX) && !t.starts_with("telemetryd/")
        })
        .collect();
    assert!(others.is_empty(), "unexpected publishes: {others:?}");
}

/// Same, with `device = "28-..."` looked up under `<sysfs_root>/bus/w1/devices/`.
#[test]
fn seed_example_device_lookup() {
    let mut env = Env::with_broker("seed_example_device_lookup");
    let sysfs = env.path("sys");
    write_w1_slave(
        &sysfs.join(format!("bus/w1/devices/{DEVICE}/w1_slave")),
        28437,
    );
    let top = format!("sysfs_root = {}\n", toml_str(&sysfs.display().to_string()));
    let cfg = env.config(
        &top,
        &ds18b20_sensor(&format!("device = \"{DEVICE}\""), "plain"),
    );
    env.write_config(&cfg);
    env.daemon.start();

    expect_seed_payloads(&env, 3);
}

/// `format = "json"`: {"sensor","value","unit","ts","seq"}; value is a number and follows the
/// file; unit °C; ts is RFC 3339 and close to now; seq strictly increasing over first
/// deliveries.
#[test]
fn json_format() {
    let mut env = Env::with_broker("json_format");
    let w1 = env.path(&format!("w1/{DEVICE}/w1_slave"));
    write_w1_slave(&w1, 28437);
    let source = format!("path = {}", toml_str(&w1.display().to_string()));
    let cfg = env.config("", &ds18b20_sensor(&source, "json"));
    env.write_config(&cfg);
    env.daemon.start();

    wait_until(DEADLINE, "3 readings", || {
        env.sub().payloads(TOPIC).len() >= 3
    });
    write_w1_slave(&w1, 21062);
    wait_until(DEADLINE, "a reading of the new temperature 21.1", || {
        env.sub()
            .payloads(TOPIC)
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(|j| j["value"].as_f64() == Some(21.1))
            .count()
            >= 3
    });

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // (seq, value) of first deliveries: QoS 1 may repeat a message, with its seq.
    let mut firsts: Vec<(u64, f64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in env.sub().payloads(TOPIC) {
        let j: serde_json::Value =
            serde_json::from_str(&p).unwrap_or_else(|e| panic!("payload is not JSON ({e}): {p}"));
        let obj = j
            .as_object()
            .unwrap_or_else(|| panic!("payload is not a JSON object: {p}"));
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["sensor", "seq", "ts", "unit", "value"],
            "keys of {p}"
        );
        assert_eq!(j["sensor"], "outside", "sensor in {p}");
        assert_eq!(j["unit"], "°C", "unit in {p}");
        let value = j["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("value is not a number: {p}"));
        assert!(
            value == 28.4 || value == 21.1,
            "value {value} is neither 28.4 nor 21.1 (rounded to 1 decimal): {p}"
        );
        let ts = j["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("ts is not a string: {p}"));
        let t = parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts:?} is not RFC 3339: {e}"));
        assert!(
            (t - now).abs() < 300.0,
            "ts {ts} is {:.0} s away from now",
            t - now
        );
        let seq = j["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("seq is not an unsigned integer: {p}"));
        if seen.insert(seq) {
            firsts.push((seq, value));
        }
    }
    assert!(
        firsts.windows(2).all(|w| w[0].0 < w[1].0),
        "seq not strictly increasing over first deliveries: {firsts:?}"
    );
    let switch = firsts.iter().position(|&(_, v)| v == 21.1).unwrap();
    assert!(
        firsts[switch..].iter().all(|&(_, v)| v == 21.1),
        "an old value after the new one: {firsts:?}"
    );
}

/// RFC 3339 date-time (`2026-11-25T04:20:00.123Z`, `...+01:00`) to Unix seconds.
fn parse_rfc3339(s: &str) -> anyhow::Result<f64> {
    let (datetime, offset_secs) = if let Some(d) = s.strip_suffix('Z').or(s.strip_suffix('z')) {
        (d, 0i64)
    } else if s.len() > 6 && matches!(&s[s.len() - 6..s.len() - 5], "+" | "-") {
        let (d, off) = s.split_at(s.len() - 6);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let h: i64 = off[1..3].parse().map_err(|_| anyhow!("bad offset hours"))?;
        if &off[3..4] != ":" {
            bail!("bad offset");
        }
        let m: i64 = off[4..6]
            .parse()
            .map_err(|_| anyhow!("bad offset minutes"))?;
        (d, sign * (h * 3600 + m * 60))
    } else {
        bail!("no Z or ±hh:mm offset");
    };
    let utc = format!("{datetime}Z");
    if !matches!(datetime.as_bytes().get(10), Some(b'T' | b't')) {
        bail!("no T between date and time");
    }
    let t = humantime::parse_rfc3339(&utc)?;
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    Ok(secs - offset_secs as f64)
}

/// The publishing policy end to end: a sensor steps through scripted values; with a deadband
/// of 1 and spike rejection at 10, only real moves are published, the lone 85 °C glitch is
/// dropped, and a jump to 50 that the next reading confirms goes out. The last value repeats
/// forever, so once 50 arrived nothing else can.
#[test]
fn deadband_and_spike_rejection() {
    let mut env = Env::with_broker("deadband_and_spike_rejection");
    let values = env.path("values");
    fs::write(&values, "20\n20.2\n20.4\n21.5\n21.6\n85\n21.7\n21.8\n50\n").unwrap();
    let index = env.path("index");
    let script = format!(
        "i=$(( $(cat {idx} 2>/dev/null || echo 0) + 1 )); echo $i > {idx}.tmp && mv {idx}.tmp {idx}; \
         v=$(sed -n \"${{i}}p\" {vals}); [ -n \"$v\" ] || v=$(tail -n 1 {vals}); echo $v",
        idx = index.display(),
        vals = values.display()
    );
    let sensor = format!(
        "[[sensor]]\nname = \"outside\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {}]\n\
         interval = \"20ms\"\ntopic = \"{TOPIC}\"\ndeadband = 1.0\nmax_step = 10.0\n",
        toml_str(&script)
    );
    let cfg = env.config("", &sensor);
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(DEADLINE, "the confirmed jump to 50", || {
        env.sub().payloads(TOPIC).contains(&"50".to_owned())
    });
    let read: u64 = fs::read_to_string(&index).unwrap().trim().parse().unwrap();
    assert!(read >= 10, "only {read} readings taken");
    assert_eq!(env.sub().payloads(TOPIC), ["20", "21.5", "50"]);
    env.daemon.stop_expect_success();
    assert!(
        env.daemon
            .log()
            .contains("dropped a lone reading that jumped more than max_step")
    );
}

/// Readings buffered through an outage and delivered late keep the time they were taken and
/// their seq; a topic template and an average shape what is published.
#[test]
fn late_readings_keep_their_time_and_seq() {
    let mut env = Env::with_broker("late_readings_keep_their_time_and_seq");
    let counter = Counter::new(env.dir(), "counter");
    // Every 2 counter values are averaged: 1,2 -> 1.5; 3,4 -> 3.5 ...
    let sensor = counter
        .sensor_toml("counter", "{sensor}/mean", "50ms", 1)
        .replace(
            "decimals = 0",
            "decimals = 1\naverage = 2\nformat = \"json\"",
        );
    let cfg = env.config("topic_prefix = \"farm/{client_id}\"\n", &sensor);
    env.write_config(&cfg);
    let topic = "farm/td-late_readings_keep_their_time_and_seq/counter/mean";

    env.broker().stop();
    env.daemon.start();
    counter.wait_value_at_least(20, "readings buffered while the broker is down");
    let back = SystemTime::now();
    env.broker().restart();
    wait_until(DEADLINE, "the buffered readings", || {
        env.sub().payloads(topic).len() >= 10
    });

    let first: serde_json::Value = serde_json::from_str(&env.sub().payloads(topic)[0]).unwrap();
    assert_eq!(first["value"], 1.5, "{first}");
    let ts = humantime::parse_rfc3339(first["ts"].as_str().unwrap()).unwrap();
    assert!(
        ts < back,
        "a buffered reading must keep the time it was taken: {first}"
    );
    let seqs: Vec<u64> = env
        .sub()
        .payloads(topic)
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must increase: {seqs:?}"
    );
    env.daemon.stop_expect_success();
}
