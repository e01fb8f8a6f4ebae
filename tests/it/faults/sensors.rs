//! Sensors that fail (vanish, hang, print garbage, fail their CRC) next to a healthy one.

use std::fs;
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use super::TOPIC;

/// One sensor fault: `fault()`, wait for the log line, check the counter keeps its schedule
/// and nothing is published on `topic`; `fix()`, wait until `good` is published on it.
struct SensorFault<'a> {
    what: &'a str,
    fault: &'a dyn Fn(),
    fix: &'a dyn Fn(),
    logged: &'a str,
    topic: &'a str,
    good: &'a str,
}

fn sensor_fault(env: &Env, counter: &Counter, f: SensorFault) {
    let what = f.what;
    let before = env.sub().payloads(f.topic).len();
    (f.fault)();
    let t0 = Instant::now();
    let at = counter.value();
    wait_until(DEADLINE, &format!("{what}: logged"), || {
        env.daemon.log().contains(f.logged)
    });
    counter.wait_value_at_least(at + 20, &format!("{what}: the counter goes on"));
    let rate = 20.0 / t0.elapsed().as_secs_f64();
    assert!(
        rate >= 5.0,
        "{what}: the 100 ms counter slowed to {rate:.1} readings/s"
    );
    let during = env.sub().payloads(f.topic).len();
    assert!(
        during <= before + 3,
        "{what}: {} readings published on {} during the fault",
        during - before,
        f.topic
    );
    (f.fix)();
    wait_until(DEADLINE, &format!("{what}: the sensor recovers"), || {
        env.sub().payloads(f.topic)[before..]
            .iter()
            .any(|p| p == f.good)
    });
    eprintln!("sensor_faults: {what}: the counter kept {rate:.1} readings/s, recovered");
}

/// Sensor faults next to a healthy counter at 100 ms: a file that vanishes and comes back, a
/// command that hangs (killed at its 300 ms timeout, with what it started), a command printing
/// garbage, a DS18B20 whose w1_slave says `NO` (CRC error). Each fault is logged (once), the
/// counter keeps its schedule and loses nothing, and each faulty sensor recovers by itself
/// once its fault is gone.
#[test]
fn sensor_faults() {
    let mut env = Env::with_broker("sensor_faults");
    let counter = Counter::new(env.dir(), "counter");
    let file = env.path("value");
    // What the command does: `hang`, `garbage`, or print the number in the file.
    let mode = env.path("mode");
    let w1 = env.path("w1/28-000000000001/w1_slave");
    fs::write(&file, "1\n").unwrap();
    fs::write(&mode, "2").unwrap();
    write_w1_slave(&w1, 21_000);
    // In the command line of the shell and of its `sleep` (GNU sleep adds its arguments).
    let tag = format!("0.000{}", std::process::id());
    let script = format!(
        "m=$(cat {mode}); case $m in hang) sleep 30 {tag}; echo 0;; \
         garbage) echo 'no number here';; *) echo $m;; esac",
        mode = mode.display()
    );
    let sensors = format!(
        "{counter}\n\
         [[sensor]]\nname = \"file\"\nkind = \"file\"\npath = {file}\ninterval = \"100ms\"\n\
         topic = \"test/file\"\ndecimals = 0\n\n\
         [[sensor]]\nname = \"cmd\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {script}]\n\
         timeout = \"300ms\"\ninterval = \"100ms\"\ntopic = \"test/cmd\"\ndecimals = 0\n\n\
         [[sensor]]\nname = \"w1\"\nkind = \"ds18b20\"\npath = {w1}\ninterval = \"100ms\"\n\
         topic = \"test/w1\"\ndecimals = 0\n",
        counter = counter.sensor_toml("counter", TOPIC, "100ms", 1),
        file = toml_str(&file.display().to_string()),
        script = toml_str(&script),
        w1 = toml_str(&w1.display().to_string()),
    );
    let cfg = env.config("", &sensors);
    env.write_config(&cfg);
    env.daemon.start();
    for (t, v) in [("test/file", "1"), ("test/cmd", "2"), ("test/w1", "21")] {
        wait_until(DEADLINE, &format!("{v} on {t}"), || {
            env.sub().payloads(t).iter().any(|p| p == v)
        });
    }

    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the file vanishes",
            fault: &|| fs::remove_file(&file).unwrap(),
            fix: &|| fs::write(&file, "3\n").unwrap(),
            logged: "no such file",
            topic: "test/file",
            good: "3",
        },
    );
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the command hangs",
            fault: &|| fs::write(&mode, "hang").unwrap(),
            fix: &|| fs::write(&mode, "4").unwrap(),
            logged: "timed out after 300ms",
            topic: "test/cmd",
            good: "4",
        },
    );
    // Each hung command was killed at its timeout, with the `sleep` it started.
    wait_until(Duration::from_secs(10), "no hung command left", || {
        processes_matching(&tag).is_empty()
    });
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "the command prints garbage",
            fault: &|| fs::write(&mode, "garbage").unwrap(),
            fix: &|| fs::write(&mode, "5").unwrap(),
            logged: "no number in output",
            topic: "test/cmd",
            good: "5",
        },
    );
    sensor_fault(
        &env,
        &counter,
        SensorFault {
            what: "w1_slave says CRC NO",
            fault: &|| {
                fs::write(
                    &w1,
                    "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=22000\n",
                )
                .unwrap()
            },
            fix: &|| write_w1_slave(&w1, 23_000),
            logged: "CRC check failed",
            topic: "test/w1",
            good: "23",
        },
    );
    let log = env.daemon.log();
    for needle in [
        "no such file",
        "timed out after 300ms",
        "no number in output",
        "CRC check failed",
    ] {
        let n = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count();
        assert!(n >= 1, "no warning for {needle}");
        assert!(n <= 2, "{n} warnings for {needle}: not rate-limited");
    }
    assert!(
        log.matches("sensor recovered").count() >= 4,
        "not every recovery was logged"
    );
    // Not `drain_and_stop`: the three other sensors keep reading until the stop, and a reading
    // one of them committed after the feeder saw SIGTERM stays in the store for the next start
    // (by design). Each waits for its reading's commit before the next, so that is at most one
    // per sensor.
    let n = counter.pause();
    env.wait_delivered(TOPIC, n, 0);
    env.daemon.stop_expect_success();
    let left = store_depth(&env.buffer_path());
    assert!(left <= 3, "{left} readings left in the store at the stop");
    assert_in_order(&env.values(TOPIC), n, 0);
}
