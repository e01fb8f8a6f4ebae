//! A real `mosquitto_sub` ([`Subscriber`]) and the parsing of what it printed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{DEADLINE, Proc, log_file, read_lossy, wait_until};

/// `mosquitto_sub` with a persistent session (`-c -i ID -q 1`) on `#`, printing `%t %p` lines
/// into a file. Checked on Mosquitto 2.0.11: with `-F` it appends a newline and flushes stdout
/// after every message even when stdout is a file, so no `stdbuf` is needed, and it reconnects
/// by itself (every ~1 s) when the broker restarts; its session and queue are in the broker's
/// persistence.
pub struct Subscriber {
    pub id: String,
    pub out: PathBuf,
    port: u16,
    pub(crate) proc: Proc,
    /// Lines start with the receive time (`%U`, Unix seconds with nanoseconds).
    timed: bool,
    /// MQTT 5 (`-V mqttv5`): tab-separated `%U %t %p %P` lines, user properties last.
    v5: bool,
    err: PathBuf,
    probes: usize,
}

pub const PROBE_PREFIX: &str = "probe/";

impl Subscriber {
    /// Starts and returns once the subscription is active: a probe published to
    /// `probe/<id>` (matched by `#`) has come back.
    pub fn start(dir: &Path, port: u16, id: &str) -> Subscriber {
        Subscriber::start_with(dir, port, id, false, false)
    }

    /// [`Subscriber::start`], with every line prefixed by its receive time
    /// ([`Subscriber::timed_lines`]).
    pub fn start_timed(dir: &Path, port: u16, id: &str) -> Subscriber {
        Subscriber::start_with(dir, port, id, true, false)
    }

    /// An MQTT 5 subscriber (persistent session that never expires, as `-c` gives on v5),
    /// timed, that also records user properties ([`Subscriber::properties`]). Started again
    /// with the same `id`, it resumes the session and appends to the same output.
    pub fn start_v5(dir: &Path, port: u16, id: &str) -> Subscriber {
        Subscriber::start_with(dir, port, id, true, true)
    }

    fn start_with(dir: &Path, port: u16, id: &str, timed: bool, v5: bool) -> Subscriber {
        let out = dir.join("sub.out");
        let err_path = dir.join("sub.err");
        let err = log_file(&err_path).0;
        let (format, version) = match (v5, timed) {
            (true, _) => ("%U\\t%t\\t%p\\t%P", "mqttv5"),
            (false, true) => ("%U %t %p", "mqttv311"),
            (false, false) => ("%t %p", "mqttv311"),
        };
        let proc = Proc::spawn(
            "mosquitto_sub",
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
                .args(["-c", "-i", id, "-q", "1", "-t", "#", "-F", format])
                .stdin(Stdio::null())
                .stdout(log_file(&out).0)
                .stderr(err),
        );
        let mut sub = Subscriber {
            id: id.to_string(),
            out,
            port,
            proc,
            timed,
            v5,
            err: err_path,
            probes: 0,
        };
        sub.wait_subscribed();
        sub
    }

    /// Returns once the subscription is active (again, e.g. after the broker lost it): a new
    /// probe published to `probe/<id>` has come back.
    pub fn wait_subscribed(&mut self) {
        self.probes += 1;
        let probe_topic = format!("{PROBE_PREFIX}{}", self.id);
        let payload = format!("probe-{}", self.probes);
        let port = self.port.to_string();
        let mut last_probe = Instant::now() - Duration::from_secs(1);
        wait_until(DEADLINE, "mosquitto_sub receives its probe", || {
            if let Some(s) = self.proc.try_status() {
                panic!("mosquitto_sub exited ({s}): {}", read_lossy(&self.err));
            }
            if self
                .lines()
                .iter()
                .any(|(t, p)| *t == probe_topic && *p == payload)
            {
                return true;
            }
            // Non-retained probe: only one published after the SUBACK comes back, so repeat.
            if last_probe.elapsed() > Duration::from_millis(250) {
                last_probe = Instant::now();
                let mut p = Proc::spawn(
                    "mosquitto_pub",
                    Command::new("mosquitto_pub")
                        .args(["-h", "127.0.0.1", "-p", &port])
                        .args(["-q", "1", "-t", &probe_topic, "-m", &payload])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                );
                p.wait_timeout(Duration::from_secs(5));
            }
            false
        });
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends `sig` to mosquitto_sub (SIGSTOP: it stops reading and acknowledging).
    pub fn signal(&mut self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Every complete line so far as (receive time in Unix seconds, topic, payload), in arrival
    /// order; the time is 0 unless started with [`Subscriber::start_timed`].
    pub fn timed_lines(&self) -> Vec<(f64, String, String)> {
        if self.v5 {
            return self
                .v5_lines()
                .into_iter()
                .map(|(time, topic, payload, _)| (time, topic, payload))
                .collect();
        }
        let raw = fs::read(&self.out).unwrap_or_default();
        parse_sub_lines(&raw, self.timed)
    }

    /// MQTT 5 only: (receive time, payload, user properties as `key:value` words) of every
    /// message on `topic`, in arrival order.
    pub fn properties(&self, topic: &str) -> Vec<(f64, String, String)> {
        assert!(self.v5, "properties need Subscriber::start_v5");
        self.v5_lines()
            .into_iter()
            .filter(|(_, t, _, _)| t == topic)
            .map(|(time, _, payload, props)| (time, payload, props))
            .collect()
    }

    fn v5_lines(&self) -> Vec<(f64, String, String, String)> {
        let raw = fs::read(&self.out).unwrap_or_default();
        String::from_utf8_lossy(complete_lines(&raw))
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, '\t');
                let mut next = || f.next().unwrap_or_default().to_owned();
                let time = next().parse().unwrap_or(0.0);
                (time, next(), next(), next())
            })
            .collect()
    }

    /// Stops mosquitto_sub (SIGTERM): its session stays on the broker, which queues QoS 1
    /// messages for it until [`Subscriber::start_v5`] with the same id resumes it.
    pub fn stop(mut self) {
        self.proc.terminate(DEADLINE);
    }

    /// Every complete `topic payload` line so far, in arrival order (probes included).
    pub fn lines(&self) -> Vec<(String, String)> {
        self.timed_lines()
            .into_iter()
            .map(|(_, t, p)| (t, p))
            .collect()
    }

    /// Payloads received on `topic`, in arrival order.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect()
    }

    /// Counter values received on `topic`, in arrival order; panics on a non-integer payload.
    pub fn values(&self, topic: &str) -> Vec<u64> {
        self.payloads(topic)
            .iter()
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("payload {p:?} on {topic} is not an integer"))
            })
            .collect()
    }

    pub fn raw(&self) -> String {
        read_lossy(&self.out)
    }
}

/// `raw` up to its last newline: a line mosquitto_sub is still writing is left out.
fn complete_lines(raw: &[u8]) -> &[u8] {
    match raw.iter().rposition(|&b| b == b'\n') {
        Some(i) => &raw[..=i],
        None => &[],
    }
}

/// Parses complete mosquitto_sub output lines (`[%U ]%t %p`); a trailing partial line is left
/// out.
pub fn parse_sub_lines(raw: &[u8], timed: bool) -> Vec<(f64, String, String)> {
    String::from_utf8_lossy(complete_lines(raw))
        .lines()
        .map(|l| {
            let (time, rest) = match l.split_once(' ') {
                Some((t, rest)) if timed => (t.parse().unwrap_or(0.0), rest),
                _ => (0.0, l),
            };
            match rest.split_once(' ') {
                Some((t, p)) => (time, t.to_string(), p.to_string()),
                None => (time, rest.to_string(), String::new()),
            }
        })
        .collect()
}
