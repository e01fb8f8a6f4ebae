//! The daemon's own runtime under hostile sensors and signals: hung reads, early SIGHUP.

use std::time::{Duration, Instant};

use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";

/// Threads of process `pid`, from /proc.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// Twelve `file` sensors on a FIFO nobody writes (open() blocks for good: a read stuck in the
/// kernel, like a 1-Wire bus in D state) beside a counter. Their abandoned reads used to hold
/// a thread of the shared blocking pool each and, after the 30 s read timeout, take another:
/// the pool filled, commits (which ran there too) starved and the counter's QoS 1 readings
/// stopped. Now commits have their own thread and a sensor with a hung read skips its reads.
#[test]
fn hung_reads_neither_starve_commits_nor_pile_up_threads() {
    let mut env = Env::with_broker("hung_reads");
    let fifo = env.path("wedged");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let counter = Counter::new(env.dir(), "counter");
    let mut sensors = counter.sensor_toml("counter", TOPIC, "200ms", 1);
    for i in 0..12 {
        sensors.push_str(&format!(
            "[[sensor]]\nname = \"wedged{i}\"\nkind = \"file\"\npath = {}\n\
             interval = \"1s\"\ntopic = \"test/wedged{i}\"\nqos = 1\n",
            toml_str(&fifo.display().to_string())
        ));
    }
    let cfg = env.config("", &sensors);
    env.write_config(&cfg);
    env.daemon.start();
    let pid = env.daemon.pid();

    // Past the read timeout (30 s), when the abandoned reads' second round used to fill the pool.
    let until = Instant::now() + Duration::from_secs(45);
    let mut most_threads = 0;
    let mut last = (0, Instant::now());
    while Instant::now() < until {
        most_threads = most_threads.max(threads(pid));
        let delivered = env.values(TOPIC).into_iter().max().unwrap_or(0);
        if delivered > last.0 {
            last = (delivered, Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(8),
            "no counter reading delivered for 8 s (last {}, {most_threads} threads)",
            last.0
        );
        std::thread::sleep(Duration::from_millis(250)); // sampling, not synchronising
    }
    eprintln!(
        "hung_reads: {} delivered, at most {most_threads} threads",
        last.0
    );
    assert!(
        most_threads <= 40,
        "{most_threads} threads with 12 hung sensors"
    );
    assert!(
        env.daemon.log().contains("read still hung, skipping"),
        "the skip is logged"
    );
    let took = env.daemon.stop_expect_success();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Opens the FIFO for writing once a reader has it open (ENXIO until then): the daemon is then
/// inside its read of the config.
fn wait_for_reader(fifo: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    wait_for(DEADLINE, "the daemon opening its config", || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .ok()
    })
}

/// A SIGHUP while the config is still being read (the daemon blocked in open() of a FIFO
/// config) used to kill the daemon: SIGHUP's default action, as the handler came later. Now
/// it is noted from the first line of main and replayed as a reload once running.
#[test]
fn a_sighup_during_startup_does_not_kill_the_daemon() {
    let mut env = Env::with_broker("sighup_at_startup");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "100ms", 1));
    let path = env.daemon.config.clone();
    mkfifo(&path);
    env.daemon.start();
    let mut writer = wait_for_reader(&path);
    env.daemon.signal(libc::SIGHUP);
    use std::io::Write;
    writer
        .write_all(cfg.as_bytes())
        .expect("config into the FIFO");
    drop(writer);
    // The deferred reload reads a plain file (or, should it come first, times out on the FIFO
    // and keeps the config it has: either way the daemon runs on).
    std::fs::remove_file(&path).unwrap();
    env.write_config(&cfg);
    env.wait_delivered(TOPIC, 5, 0);
    env.daemon.assert_running();
    assert!(
        env.daemon.log().contains("SIGHUP during startup"),
        "{}",
        env.daemon.log()
    );
    env.daemon.stop_expect_success();
}

/// A reload whose config file cannot be read (a FIFO nobody writes stands for a hung NFS
/// mount) used to block the runtime thread in Config::load: no publishing, no acks, no
/// watchdog. Now the load runs on a blocking thread with a time limit; the old config stays.
#[test]
fn a_reload_that_hangs_reading_the_config_keeps_the_daemon_running() {
    let mut env = Env::with_broker("hung_reload");
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config("", &counter.sensor_toml("counter", TOPIC, "100ms", 1));
    env.write_config(&cfg);
    env.daemon.start();
    env.wait_delivered(TOPIC, 3, 0);
    let path = env.daemon.config.clone();
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    env.daemon.signal(libc::SIGHUP);
    let _reader_seen = wait_for_reader(&path);
    // Readings keep flowing while the reload hangs...
    let at_hup = counter.value();
    env.wait_delivered(TOPIC, at_hup + 10, 0);
    // ...and the reload gives up, keeping the running config.
    wait_until(Duration::from_secs(20), "the reload to give up", || {
        env.daemon.log().contains("could not be read within")
    });
    let later = counter.value();
    env.wait_delivered(TOPIC, later + 3, 0);
    env.daemon.stop_expect_success();
}

/// Retains `size` bytes on `topic` on the env's broker.
fn retain_big(env: &Env, topic: &str, size: usize) {
    let file = env.path("big.bin");
    std::fs::write(&file, vec![b'x'; size]).unwrap();
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.port().to_string(),
            "-t",
            topic,
        ])
        .args(["-r", "-q", "1", "-f", &file.display().to_string()])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
}

/// A big retained message on `homeassistant/status` (the birth topic we subscribe to) made
/// every connection fail at rumqttc's 10 KiB incoming limit, so no reading was ever
/// published. `size` within the new 64 KiB limit is read; with MQTT 5 a bigger one is not even
/// sent (Maximum Packet Size in CONNECT).
fn big_retained_ha_status(name: &str, size: usize, mqtt5: bool) {
    let mut env = Env::with_broker(name);
    retain_big(&env, "homeassistant/status", size);
    let counter = Counter::new(env.dir(), "counter");
    let mut cfg = env.config(
        "",
        &format!(
            "[homeassistant]\n\n{}",
            counter.sensor_toml("counter", TOPIC, "100ms", 1)
        ),
    );
    if mqtt5 {
        cfg = cfg.replacen("[mqtt]\n", "[mqtt]\nprotocol = 5\n", 1);
    }
    env.write_config(&cfg);
    env.daemon.start();
    env.wait_delivered(TOPIC, 10, 0);
    env.daemon.stop_expect_success();
}

#[test]
fn a_big_retained_home_assistant_status_does_not_stop_publishing() {
    big_retained_ha_status("big_ha_status_v4", 40 * 1024, false);
}

#[test]
fn a_huge_retained_home_assistant_status_does_not_stop_publishing_mqtt5() {
    big_retained_ha_status("huge_ha_status_v5", 100 * 1024, true);
}

/// Over the 64 KiB limit on 3.1.1 (which cannot tell the broker a limit): the link fails once,
/// then the daemon connects without the discovery subscriptions and publishes.
#[test]
fn a_huge_retained_home_assistant_status_does_not_stop_publishing() {
    big_retained_ha_status("huge_ha_status_v4", 100 * 1024, false);
}
