//! Watching the daemon in the hostile phase: memory, store, liveness, and small helpers
//! for the log and the broker.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use telemetryd_testkit::*;

use crate::account::Account;

/// Generous for a debug build (the plain soak peaks near 41 MiB).
pub const RSS_LIMIT_KIB: u64 = 128 * 1024;

pub struct Watch {
    pub peak_rss_kib: u64,
    pub peak_store: u64,
    pub problems: Vec<String>,
}

impl Watch {
    /// Samples memory and store; records a daemon that died, with the phase it died in.
    pub fn observe(&mut self, env: &mut Env, acc: &mut Account, phase: &str) -> bool {
        acc.tail();
        if let Some(pid) = env.daemon.pid_if_running() {
            for field in ["VmRSS", "VmHWM"] {
                let kib = vm_kib(pid, field).unwrap_or(0);
                self.peak_rss_kib = self.peak_rss_kib.max(kib);
            }
            // A runaway is stopped here, not at the end: on old code an output flood took
            // the daemon to 1.8 GiB, on a machine others share.
            if self.peak_rss_kib > 2 * RSS_LIMIT_KIB {
                env.daemon.sigkill();
                self.problems.push(format!(
                    "RSS {} KiB during {phase}: the daemon was killed (limit {RSS_LIMIT_KIB})",
                    self.peak_rss_kib
                ));
                return false;
            }
        }
        self.peak_store = self.peak_store.max(disk_usage(&env.buffer_path()));
        let died =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.daemon.assert_running()));
        if died.is_err() {
            self.problems.push(format!(
                "the daemon exited during {phase} (its log is below)"
            ));
        }
        died.is_ok()
    }

    /// Watches for `d`; false once the daemon is gone.
    pub fn run_for(&mut self, env: &mut Env, acc: &mut Account, d: Duration, phase: &str) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if !self.observe(env, acc, phase) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200).min(end - Instant::now()));
        }
        true
    }
}

/// A retained message of 20 KiB (over rumqttc's 10 KiB incoming limit) on `topic`.
pub fn retain_big(port: u16, topic: &str) {
    let big = "o".repeat(20 * 1024);
    let mut p = Proc::spawn(
        "mosquitto_pub",
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
            .args(["-t", topic, "-m", &big])
            .stdin(Stdio::null()),
    );
    let s = p.wait_timeout(DEADLINE).expect("mosquitto_pub exits");
    assert!(s.success(), "mosquitto_pub -r {topic}: {s}");
}

pub fn max_summary(log: &str, key: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(" summary "))
        .filter_map(|l| log_field(l, key)?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The most frequent log lines, digits folded, to show what blew the budget.
pub fn top_lines(lines: &[&str]) -> String {
    let mut by: HashMap<String, usize> = HashMap::new();
    for l in lines {
        let shape: String = l
            .chars()
            .skip(28)
            .take(110)
            .filter(|c| !c.is_ascii_digit())
            .collect();
        *by.entry(shape).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .take(5)
        .map(|(s, n)| format!("\n    {n} x {s}"))
        .collect()
}
