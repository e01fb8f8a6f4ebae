//! Starting and stopping as the systemd unit expects: a long recovery extends the start
//! timeout, a stop under the unit's KillMode logs no failed read.

use std::fs::{self};
use std::time::Duration;

use telemetryd_testkit::*;

/// A store that opens below its durable mark (sled lost its log's tail) holding 150,000
/// readings: carrying them into a new store takes seconds, during which the daemon tells
/// systemd it is still starting (`EXTEND_TIMEOUT_USEC=`, before `READY=1`). A SIGKILL in the
/// middle of that copy loses nothing: the next start throws the partial copy away (or finishes
/// a complete one) and every reading is in the store, with one damaged store kept aside.
#[test]
fn a_slow_recovery_extends_the_start_timeout_and_survives_a_kill() {
    const PREFILL: u64 = 150_000;
    let name = "a_slow_recovery_extends_the_start_timeout";
    let mut env = Env::new(name);
    let buffer = env.buffer_path();
    prefill_store(&buffer, "test/backlog", PREFILL);
    // A durable mark far above what the store saved: as if sled had dropped its last commits.
    let mark = (unix_now() * 2e6) as u64;
    let mut bytes = mark.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(mark ^ 0x7465_6c65_6d65_7472).to_be_bytes());
    fs::write(buffer.join("telemetryd-durable-mark"), bytes).unwrap();
    let file = env.path("level");
    fs::write(&file, "1\n").unwrap();
    // QoS 0 and no broker: nothing is added to the store or taken from it.
    let sensor = format!(
        "[[sensor]]\nname = \"level\"\nkind = \"file\"\npath = {}\ninterval = \"1s\"\ntopic = \"test/level\"\nqos = 0\n",
        toml_str(&file.display().to_string())
    );
    env.write_config(&env.config_for_port(free_port(), "", &sensor));
    let notify = NotifySocket::bind(env.dir());
    let socket = notify.path.display().to_string();
    let staging = env.path("buffer.recovering");

    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);
    // Copying 150,000 readings takes seconds in a debug build, more on a loaded machine.
    let slow = Duration::from_secs(120);
    wait_until(slow, "the copy of the survivors has begun", || {
        env.daemon.assert_running();
        staging.exists()
    });
    env.daemon.sigkill();
    let complete = env.path("buffer.recovering.done").exists();
    eprintln!(
        "{name}: killed with the copy {}",
        if complete { "complete" } else { "partial" }
    );

    let before = notify.lines().len();
    env.daemon.start_with_env(&[("NOTIFY_SOCKET", &socket)]);
    wait_until(slow, "READY=1 after the recovery", || {
        env.daemon.assert_running();
        notify.lines()[before..].contains(&"READY=1".to_owned())
    });
    let lines = notify.lines()[before..].to_vec();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert!(
        lines[..ready].contains(&"EXTEND_TIMEOUT_USEC=30000000".to_owned()),
        "no EXTEND_TIMEOUT_USEC before READY=1 during a long recovery: {lines:?}"
    );
    let log = env.daemon.log();
    assert!(
        log.contains(
            "a recovery of the damaged store was interrupted before its copy was complete"
        ) || log.contains("finished a recovery of the damaged store that was interrupted"),
        "the interrupted recovery is not logged:\n{log}"
    );
    env.daemon.stop_expect_success();
    assert_eq!(
        store_depth(&buffer),
        PREFILL,
        "every survivor is in the store"
    );
    let names: Vec<String> = fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("buffer."))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one damaged store aside, no staging: {names:?}"
    );
    assert!(names[0].starts_with("buffer.damaged-"), "{names:?}");
}

/// systemd stops the unit as its `KillMode=` says: with the default (control-group) every
/// process of the unit gets SIGTERM, a command sensor's child included, and its read failed
/// with "killed by signal 15" at every stop. With `KillMode=mixed` only the daemon gets it,
/// and stops the child itself: no failure is logged and no child is left behind.
#[test]
fn a_stop_under_the_units_kill_mode_logs_no_failed_read() {
    let unit = include_str!("../../../systemd/telemetryd.service");
    let mixed = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KillMode="))
        .next_back()
        .is_some_and(|m| m.trim() == "mixed");
    let mut env = Env::new("a_stop_under_the_units_kill_mode");
    let pidfile = env.path("child.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let sensor = format!(
        "[[sensor]]\nname = \"slow\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {}]\ntimeout = \"60s\"\ninterval = \"1s\"\ntopic = \"test/slow\"\n",
        toml_str(&script)
    );
    env.write_config(&env.config_for_port(free_port(), "", &sensor));
    env.daemon.start();
    let child: i32 = wait_for(DEADLINE, "the sensor's child runs", || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(child));

    if !mixed {
        // control-group: the child's SIGTERM may come first; here it does.
        // SAFETY: kill(2) with a pid this test started (through the daemon).
        unsafe { libc::kill(child, libc::SIGTERM) };
        wait_until(DEADLINE, "the child ends", || !alive(child));
    }
    env.daemon.stop_expect_success();
    let log = env.daemon.log();
    assert!(
        !log.contains("sensor read failed"),
        "a failed read logged at the stop (KillMode=mixed: {mixed}):\n{log}"
    );
    assert!(
        !alive(child),
        "the sensor's child {child} outlived the daemon"
    );
}
