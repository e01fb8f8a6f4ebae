//! Test harness: real processes (Mosquitto, mosquitto_sub, the built telemetryd), a counter
//! sensor script, polling helpers, sequence checks, and a failure dump. The benchmark suite
//! (benches/suite) and the soak (tests/soak.rs) include this file too.
//!
//! Everything a test starts lives in an [`Env`]; dropping it kills and reaps every process and
//! removes the temp dir. When the drop happens during a panic, the env first prints the config,
//! the daemon logs, the Mosquitto log and what the subscriber received. Set
//! `TELEMETRYD_IT_KEEP=1` to keep the temp dir of a failed test, `TELEMETRYD_IT_KEEP=always`
//! to keep it whatever happens.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Deadline for anything that should happen "soon" on a healthy machine. Generous on purpose:
/// a passing test returns as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The spec's shutdown grace (≤ 5 s) plus room for process start-up/tear-down on a slow box.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every 25 ms until it holds; panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `f` every 25 ms until it returns `Some`; panics after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped on drop if still running.
///
/// Signals go to the pid only while the child is un-reaped (a zombie still owns its pid), so
/// a signal can never hit a recycled pid.
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) on the pid of our own un-reaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        self.status.expect("reaped")
    }

    /// Its stdout, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the status and whether it exited
    /// within the grace.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, bool) {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(grace) {
            Some(s) => (s, true),
            None => (self.kill(), false),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies `from` into `to` on a thread until EOF.
fn relay(mut from: impl std::io::Read + Send + 'static, mut to: File) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
    });
}

/// A file to append a process's output to, twice (for its stdout and stderr).
pub fn log_file(path: &Path) -> (File, File) {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let g = f.try_clone().expect("dup log fd");
    (f, g)
}

pub fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port that was free a moment ago (bind 127.0.0.1:0 and let go). Racy by nature: the
/// broker start retries with a new one if the bind fails.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------------------------

/// `mosquitto` from PATH, else Debian's /usr/sbin (not in every non-root PATH).
pub fn mosquitto_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// A real Mosquitto with its own config, persistence dir and log, on 127.0.0.1.
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    /// More listeners (each with its own settings: `per_listener_settings true`), e.g. TLS.
    pub extra_listeners: String,
    /// No per-message log lines ([`Broker::start_quiet`]).
    quiet: bool,
    proc: Option<Proc>,
}

impl Broker {
    /// Starts on a fresh free port, trying a new port if Mosquitto cannot bind.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, "")
    }

    /// [`Broker::start`] with more listeners after the plain anonymous one.
    pub fn start_with(dir: &Path, extra_listeners: &str) -> Broker {
        Broker::start_inner(dir, extra_listeners, false)
    }

    /// [`Broker::start`] logging no line per message (connections and subscriptions still):
    /// for the benchmarks, where logging every PUBLISH would cost the broker more CPU than
    /// handling it, on the same cores as the client being measured.
    pub fn start_quiet(dir: &Path) -> Broker {
        Broker::start_inner(dir, "", true)
    }

    fn start_inner(dir: &Path, extra_listeners: &str, quiet: bool) -> Broker {
        fs::create_dir_all(dir).expect("broker dir");
        let mut errors = String::new();
        for _ in 0..5 {
            let mut b = Broker {
                port: free_port(),
                dir: dir.to_path_buf(),
                extra_listeners: extra_listeners.to_owned(),
                quiet,
                proc: None,
            };
            match b.spawn() {
                Ok(()) => return b,
                Err(e) => writeln!(errors, "port {}: {e}", b.port).unwrap(),
            }
        }
        panic!("mosquitto did not start on any of 5 ports:\n{errors}");
    }

    /// Starts again on the same port with the same persistence dir (sessions and queued
    /// messages survive). Retries while the port is briefly unavailable.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "restart of a running broker");
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if start.elapsed() < DEADLINE => {
                    // E.g. the port is held for a moment; a retry pause, not a synchronisation.
                    eprintln!(
                        "mosquitto restart on port {} failed, retrying: {e}",
                        self.port
                    );
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("mosquitto did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// SIGTERM (Mosquitto saves its database) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let (status, in_time) = p.terminate(DEADLINE);
            assert!(in_time, "mosquitto did not exit on SIGTERM ({status})");
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Sends `sig` to the running broker (SIGSTOP freezes it: connections stay open, nothing is
    /// read or answered).
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(sig);
        }
    }

    /// Mosquitto's persistence file: sessions, subscriptions and queued messages.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("mosquitto.db")
    }

    /// Deletes the persistence file of a stopped broker: it forgets every session.
    pub fn wipe_persistence(&mut self) {
        assert!(
            self.proc.is_none(),
            "wipe of a running broker's persistence"
        );
        match fs::remove_file(self.db_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", self.db_path().display()),
        }
    }

    /// Waits until Mosquitto has saved its database (autosave, every second here) after
    /// `since`, so that a SIGKILL cannot take the sessions and subscriptions made before.
    pub fn wait_saved_after(&self, since: std::time::SystemTime) {
        let db = self.db_path();
        wait_until(DEADLINE, "mosquitto autosaves its database", || {
            fs::metadata(&db)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > since)
        });
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("mosquitto.log")
    }

    fn running_lines(&self) -> usize {
        read_lossy(&self.log_path())
            .lines()
            .filter(|l| l.contains(" mosquitto version ") && l.ends_with(" running"))
            .count()
    }

    /// Spawns Mosquitto on `self.port`; ready once its log says "running" one more time than
    /// before (the listener is open by then). Err if it exits first.
    fn spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.display();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 0\n\
             log_dest file {dir}/mosquitto.log\n\
             {log_types}",
            port = self.port,
            log_types = if self.quiet {
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 log_type subscribe\n"
            } else {
                "log_type all\n"
            },
        );
        if !self.extra_listeners.is_empty() {
            conf = format!(
                "per_listener_settings true\n{conf}{}\n",
                self.extra_listeners
            );
        }
        if is_root() {
            // Otherwise Mosquitto drops to user `mosquitto` and cannot save its database in a
            // root-owned temp dir: sessions would silently not survive a restart.
            conf.push_str("user root\n");
        }
        fs::write(self.conf_path(), conf).expect("write mosquitto.conf");
        let before = self.running_lines();
        let (out, err) = log_file(&self.dir.join("mosquitto.stderr"));
        let mut p = Proc::spawn(
            "mosquitto",
            Command::new(mosquitto_bin())
                .arg("-c")
                .arg(self.conf_path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        let start = Instant::now();
        loop {
            if let Some(status) = p.try_status() {
                let log = read_lossy(&self.log_path());
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("mosquitto exited ({status}); log tail: {tail:?}"));
            }
            if self.running_lines() > before {
                self.proc = Some(p);
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err("mosquitto did not log `running`".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------------------------

/// `mosquitto_sub` with a persistent session (`-c -i ID -q 1`) on `#`, printing `%t %p` lines
/// into a file. Checked on Mosquitto 2.0.11: with `-F` it appends a newline and flushes stdout
/// after every message even when stdout is a file, so no `stdbuf` is needed, and it reconnects
/// by itself (every ~1 s) when the broker restarts; its session and queue are in the broker's
/// persistence.
pub struct Subscriber {
    pub id: String,
    pub out: PathBuf,
    port: u16,
    proc: Proc,
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

// ---------------------------------------------------------------------------------------------
// Counter sensor
// ---------------------------------------------------------------------------------------------

/// A `command` sensor whose every reading is the next integer, persisted in a file so it
/// survives daemon restarts. Gaps and reorders of readings become visible downstream.
///
/// It can be paused: while `<name>.pause` exists the script increments nothing, touches
/// `<name>.refused` and fails. Once `refused` exists, every earlier reading has been fully
/// read by the daemon (a sensor is read one reading at a time), so the counter value is the
/// exact number of readings taken. The new value is written to a temp file and renamed, so a
/// script killed half-way can never reset the counter.
#[derive(Clone)]
pub struct Counter {
    pub file: PathBuf,
    pause: PathBuf,
    refused: PathBuf,
}

impl Counter {
    pub fn new(dir: &Path, name: &str) -> Counter {
        Counter {
            file: dir.join(name),
            pause: dir.join(format!("{name}.pause")),
            refused: dir.join(format!("{name}.refused")),
        }
    }

    /// The `command = [...]` TOML value.
    pub fn command_toml(&self) -> String {
        let script = format!(
            "f={f}; if [ -e {p} ]; then touch {r}; exit 1; fi; \
             n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n > $f.tmp && mv $f.tmp $f; echo $n",
            f = self.file.display(),
            p = self.pause.display(),
            r = self.refused.display(),
        );
        format!("[\"sh\", \"-c\", {}]", toml_str(&script))
    }

    /// A `[[sensor]]` table reading this counter.
    pub fn sensor_toml(&self, name: &str, topic: &str, interval: &str, qos: u8) -> String {
        format!(
            "[[sensor]]\n\
             name = {name}\n\
             kind = \"command\"\n\
             command = {cmd}\n\
             timeout = \"5s\"\n\
             interval = \"{interval}\"\n\
             topic = {topic}\n\
             qos = {qos}\n\
             decimals = 0\n",
            name = toml_str(name),
            cmd = self.command_toml(),
            topic = toml_str(topic),
        )
    }

    /// The last value handed out (0 before the first reading).
    pub fn value(&self) -> u64 {
        // The file is replaced atomically, so a read sees a whole number or no file.
        fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn wait_value_at_least(&self, n: u64, what: &str) -> u64 {
        wait_for(DEADLINE, &format!("{what} (counter >= {n})"), || {
            let v = self.value();
            (v >= n).then_some(v)
        })
    }

    /// Pauses the counter and waits until the daemon has finished every reading; returns the
    /// final count.
    pub fn pause(&self) -> u64 {
        let _ = fs::remove_file(&self.refused);
        File::create(&self.pause).expect("create pause file");
        wait_until(
            DEADLINE,
            "the daemon tries a reading of the paused counter",
            || self.refused.exists(),
        );
        self.value()
    }

    pub fn resume(&self) {
        let _ = fs::remove_file(&self.pause);
        let _ = fs::remove_file(&self.refused);
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

// ---------------------------------------------------------------------------------------------
// Sequence checks
// ---------------------------------------------------------------------------------------------

/// What a stream of counter values looks like.
#[derive(Debug)]
pub struct SeqReport {
    pub messages: usize,
    pub distinct: usize,
    pub duplicates: usize,
    /// Highest value seen.
    pub max: u64,
    /// Values of 1..=max never received.
    pub missing: Vec<u64>,
    /// (arrival index, value, highest first delivery before it): a first delivery that came
    /// after a higher value.
    pub reorders: Vec<(usize, u64, u64)>,
}

impl SeqReport {
    pub fn of(values: &[u64]) -> SeqReport {
        let mut seen = HashSet::new();
        let mut max = 0;
        let mut reorders = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            if seen.insert(v) {
                if v < max {
                    reorders.push((i, v, max));
                }
                max = max.max(v);
            }
        }
        let missing = (1..=max).filter(|v| !seen.contains(v)).collect();
        SeqReport {
            messages: values.len(),
            distinct: seen.len(),
            duplicates: values.len() - seen.len(),
            max,
            missing,
            reorders,
        }
    }

    /// Whether 1..=upto arrived, except at most `allowed_missing` values.
    pub fn covers(&self, upto: u64, allowed_missing: usize) -> bool {
        self.max >= upto && self.missing.len() <= allowed_missing
    }
}

/// `1-57,59,61-300` style summary of a value set.
pub fn ranges(values: &[u64]) -> String {
    let mut v: Vec<u64> = values.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if v[i] == start {
            write!(out, "{start}").unwrap();
        } else {
            write!(out, "{start}-{}", v[i]).unwrap();
        }
        i += 1;
    }
    out
}

pub fn describe(values: &[u64]) -> String {
    let r = SeqReport::of(values);
    let reorders: Vec<_> = r.reorders.iter().take(10).collect();
    format!(
        "{} messages, {} distinct, {} duplicates, max {}, received {}, missing [{}], \
         reorders (index, value, after) {:?}{}",
        r.messages,
        r.distinct,
        r.duplicates,
        r.max,
        ranges(values),
        ranges(&r.missing),
        reorders,
        if r.reorders.len() > 10 { " ..." } else { "" }
    )
}

/// Asserts: first deliveries strictly increasing (no reorder), every value of 1..=upto
/// received, except at most `allowed_missing` isolated values (each a gap of size 1).
pub fn assert_in_order(values: &[u64], upto: u64, allowed_missing: usize) {
    if let Err(e) = check_in_order(values, upto, allowed_missing) {
        panic!("{e}");
    }
}

pub fn check_in_order(values: &[u64], upto: u64, allowed_missing: usize) -> Result<(), String> {
    let r = SeqReport::of(values);
    let summary = describe(values);
    if !r.reorders.is_empty() {
        return Err(format!("reordered first deliveries: {summary}"));
    }
    if r.max < upto {
        return Err(format!("expected values up to {upto}: {summary}"));
    }
    if r.missing.len() > allowed_missing {
        return Err(format!(
            "gap: at most {allowed_missing} missing value(s) allowed: {summary}"
        ));
    }
    if r.missing.windows(2).any(|w| w[1] == w[0] + 1) {
        return Err(format!("a gap of more than one value: {summary}"));
    }
    Ok(())
}

#[test]
fn sequence_checks_detect_gaps_and_reorders() {
    let r = SeqReport::of(&[1, 2, 2, 3, 5, 4, 6, 1]);
    assert_eq!((r.max, r.duplicates, r.distinct), (6, 2, 6));
    assert_eq!(r.reorders, vec![(5, 4, 5)]);
    assert!(r.missing.is_empty());
    let r = SeqReport::of(&[2, 3, 5, 6]);
    assert_eq!(r.missing, vec![1, 4]);
    assert!(r.covers(6, 2) && !r.covers(6, 1) && !r.covers(7, 2));
    assert_eq!(ranges(&[7, 1, 2, 3, 5, 3]), "1-3,5,7");
    assert_in_order(&[1, 2, 1, 2, 3, 4, 3], 4, 0);
    assert_in_order(&[1, 2, 4, 5], 5, 1);
    assert_in_order(&[1, 3, 5], 5, 2);
    for (bad, missing) in [
        (&[1u64, 3, 2][..], 1),
        (&[1, 2, 5], 1),
        (&[2, 3], 0),
        (&[1, 3, 5], 1),
        (&[1, 2], 1),
        (&[1, 4], 2),
    ] {
        let r = check_in_order(bad, 3, missing);
        assert!(
            r.is_err(),
            "{bad:?} accepted with {missing} missing allowed"
        );
    }
    assert_eq!(
        strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
        "time  INFO x"
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_telemetryd")
}

/// The real `telemetryd` binary, restartable; each run logs (stderr and stdout) to its own
/// file `daemon-N.log`.
pub struct Daemon {
    pub config: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    /// (log path, exit status) of every run so far.
    runs: Vec<(PathBuf, Option<ExitStatus>)>,
}

impl Daemon {
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts with `RUST_LOG` removed from the environment and `vars` set.
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) {
        self.start_custom(vars, None);
    }

    /// Starts with a file-size limit (`RLIMIT_FSIZE`, bytes) on the daemon: past it, writes fail
    /// with EFBIG, as on a full disk. Its output then goes through a pipe to the log file, so
    /// the limit does not hit the log.
    pub fn start_with_fsize_limit(&mut self, bytes: u64) {
        self.start_custom(&[], Some(bytes));
    }

    fn start_custom(&mut self, vars: &[(&str, &str)], fsize_limit: Option<u64>) {
        assert!(self.proc.is_none(), "daemon already running");
        let log = self.dir.join(format!("daemon-{}.log", self.runs.len() + 1));
        let (out, err) = log_file(&log);
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        let relay_to = match fsize_limit {
            None => {
                cmd.stdout(out).stderr(err);
                None
            }
            Some(limit) => {
                use std::os::unix::process::CommandExt;
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
                unsafe {
                    cmd.pre_exec(move || {
                        let lim = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some((out, err))
            }
        };
        let mut p = Proc::spawn("telemetryd", &mut cmd);
        if let Some((out, err)) = relay_to {
            // The relays end at EOF, once the daemon and its children are gone.
            if let Some(o) = p.take_stdout() {
                relay(o, out);
            }
            if let Some(e) = p.child.stderr.take() {
                relay(e, err);
            }
        }
        self.runs.push((log, None));
        self.proc = Some(p);
    }

    fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("daemon not running")
    }

    pub fn pid(&mut self) -> u32 {
        self.proc().pid()
    }

    /// The pid of the current run, if the daemon is running.
    pub fn pid_if_running(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Panics if the current run has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.proc().try_status() {
            self.finish(s);
            panic!("telemetryd exited unexpectedly ({s})");
        }
    }

    pub fn sigterm(&mut self) {
        self.proc().signal(libc::SIGTERM);
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        self.proc().signal(sig);
    }

    pub fn sigkill(&mut self) -> ExitStatus {
        let s = self.proc().kill();
        self.finish(s);
        s
    }

    /// Waits for the current run to exit; `None` (still running) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let s = self.proc().wait_timeout(timeout)?;
        self.finish(s);
        Some(s)
    }

    /// SIGTERM and expect exit status 0 within [`SHUTDOWN_LIMIT`]; returns how long it took.
    pub fn stop_expect_success(&mut self) -> Duration {
        let t0 = Instant::now();
        self.sigterm();
        let status = self.wait_exit(SHUTDOWN_LIMIT);
        let took = t0.elapsed();
        match status {
            Some(s) if s.success() => took,
            Some(s) => panic!("telemetryd exited with {s} after SIGTERM (expected 0)"),
            None => panic!("telemetryd still running {SHUTDOWN_LIMIT:?} after SIGTERM"),
        }
    }

    fn finish(&mut self, s: ExitStatus) {
        self.proc = None;
        if let Some(last) = self.runs.last_mut() {
            last.1 = Some(s);
        }
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// How many times the daemon was started.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Logs of every run so far, in order.
    pub fn all_logs(&self) -> String {
        self.runs
            .iter()
            .map(|(p, _)| strip_ansi(&read_lossy(p)))
            .collect::<Vec<_>>()
            .join("")
    }

    /// Log of the current (or last) run.
    pub fn log(&self) -> String {
        self.runs
            .last()
            .map(|(p, _)| strip_ansi(&read_lossy(p)))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The test environment
// ---------------------------------------------------------------------------------------------

type Dumper = Box<dyn Fn() -> String + Send>;

/// One test's world: temp dir, broker, subscriber, daemon, and what to print if it fails.
pub struct Env {
    pub name: String,
    pub broker: Option<Broker>,
    pub sub: Option<Subscriber>,
    pub daemon: Daemon,
    dumpers: Vec<(String, Dumper)>,
    // Last field: dropped after the processes above.
    tmp: Option<tempfile::TempDir>,
}

impl Env {
    /// A bare env: temp dir and (not yet started) daemon.
    pub fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("telemetryd-it-{name}-"))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        Env {
            name: name.to_string(),
            broker: None,
            sub: None,
            daemon: Daemon {
                config: dir.join("telemetryd.toml"),
                dir,
                proc: None,
                runs: Vec::new(),
            },
            dumpers: Vec::new(),
            tmp: Some(tmp),
        }
    }

    /// An env with a running Mosquitto and a subscribed `mosquitto_sub`.
    pub fn with_broker(name: &str) -> Env {
        let mut env = Env::new(name);
        let broker = Broker::start(&env.path("broker"));
        let port = broker.port;
        env.broker = Some(broker);
        env.sub = Some(Subscriber::start(env.dir(), port, &format!("sub-{name}")));
        env
    }

    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("temp dir").path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    pub fn buffer_path(&self) -> PathBuf {
        self.path("buffer")
    }

    pub fn broker(&mut self) -> &mut Broker {
        self.broker.as_mut().expect("env has no broker")
    }

    pub fn sub(&self) -> &Subscriber {
        self.sub.as_ref().expect("env has no subscriber")
    }

    pub fn port(&self) -> u16 {
        self.broker.as_ref().expect("env has no broker").port
    }

    /// A complete config: top-level keys, `[mqtt]` to `port` with client id `td-<name>`,
    /// `[buffer]` in the temp dir, then `tail` (sensor tables).
    pub fn config_for_port(&self, port: u16, top: &str, tail: &str) -> String {
        format!(
            "log_level = \"debug\"\n\
             {top}\
             [mqtt]\n\
             host = \"127.0.0.1\"\n\
             port = {port}\n\
             client_id = \"td-{name}\"\n\
             clean_session = false\n\
             keep_alive = \"5s\"\n\
             \n\
             [buffer]\n\
             path = {buffer}\n\
             max_messages = 500000\n\
             \n\
             {tail}",
            name = self.name,
            buffer = toml_str(&self.buffer_path().display().to_string()),
        )
    }

    /// [`Env::config_for_port`] for this env's Mosquitto.
    pub fn config(&self, top: &str, tail: &str) -> String {
        self.config_for_port(self.port(), top, tail)
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.daemon.config, text).expect("write config");
    }

    /// Registers a section for the failure dump.
    pub fn on_failure_dump(&mut self, title: &str, f: impl Fn() -> String + Send + 'static) {
        self.dumpers.push((title.to_string(), Box::new(f)));
    }

    /// Counter values on `topic` received by the subscriber.
    pub fn values(&self, topic: &str) -> Vec<u64> {
        self.sub().values(topic)
    }

    /// Waits until the subscriber has every value of 1..=upto on `topic` (but at most
    /// `allowed_missing`), and checks the order.
    pub fn wait_delivered(&self, topic: &str, upto: u64, allowed_missing: usize) {
        let sub = self.sub();
        wait_delivered_by(&|| sub.values(topic), topic, upto, allowed_missing);
    }

    /// Stops the counter, waits until everything it produced reached the subscriber on
    /// `topic`, SIGTERMs the daemon (exit 0) and checks that the store ended empty. Returns
    /// the final count.
    pub fn drain_and_stop(
        &mut self,
        counter: &Counter,
        topic: &str,
        allowed_missing: usize,
    ) -> u64 {
        let sub = self.sub.as_ref().expect("env has no subscriber");
        drain_and_stop_by(
            &mut self.daemon,
            &self.tmp.as_ref().expect("temp dir").path().join("buffer"),
            counter,
            &|| sub.values(topic),
            topic,
            allowed_missing,
        )
    }

    fn dump(&self) -> String {
        let mut o = String::new();
        let bar = "=".repeat(100);
        writeln!(
            o,
            "\n{bar}\nFAILED: {} (temp dir {})",
            self.name,
            self.dir().display()
        )
        .unwrap();
        section(
            &mut o,
            "config",
            &read_lossy(&self.daemon.config),
            usize::MAX,
        );
        for (i, (log, status)) in self.daemon.runs.iter().enumerate() {
            let title = format!(
                "telemetryd run {} ({}), {}",
                i + 1,
                match status {
                    Some(s) => s.to_string(),
                    None => "killed by the harness".into(),
                },
                log.display()
            );
            section(&mut o, &title, &read_lossy(log), 400);
        }
        if let Some(b) = &self.broker {
            section(
                &mut o,
                &format!("mosquitto.log (port {})", b.port),
                &read_lossy(&b.log_path()),
                300,
            );
            section(
                &mut o,
                "mosquitto stderr",
                &read_lossy(&b.dir.join("mosquitto.stderr")),
                30,
            );
        }
        if let Some(s) = &self.sub {
            let mut topics: Vec<String> = s.lines().into_iter().map(|(t, _)| t).collect();
            topics.sort();
            topics.dedup();
            let mut summary = String::new();
            for t in topics.iter().filter(|t| !t.starts_with(PROBE_PREFIX)) {
                let payloads = s.payloads(t);
                let ints: Option<Vec<u64>> = payloads.iter().map(|p| p.parse().ok()).collect();
                match ints {
                    Some(v) => writeln!(summary, "{t}: {}", describe(&v)).unwrap(),
                    None => writeln!(summary, "{t}: {} messages", payloads.len()).unwrap(),
                }
            }
            section(&mut o, "subscriber summary", &summary, usize::MAX);
            section(&mut o, "subscriber received (topic payload)", &s.raw(), 200);
            section(
                &mut o,
                "subscriber stderr",
                &read_lossy(&self.path("sub.err")),
                30,
            );
        }
        for (title, f) in &self.dumpers {
            section(&mut o, title, &f(), usize::MAX);
        }
        writeln!(o, "{bar}").unwrap();
        o
    }
}

fn section(o: &mut String, title: &str, body: &str, max_lines: usize) {
    let body = strip_ansi(body);
    let lines: Vec<&str> = body.lines().collect();
    writeln!(o, "----- {title} ({} lines) -----", lines.len()).unwrap();
    if lines.len() > max_lines {
        writeln!(
            o,
            "[... {} earlier lines omitted ...]",
            lines.len() - max_lines
        )
        .unwrap();
    }
    for l in &lines[lines.len().saturating_sub(max_lines)..] {
        writeln!(o, "{l}").unwrap();
    }
}

/// Removes ANSI colour sequences (ESC [ ... letter), for readable dumps.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Env {
    fn drop(&mut self) {
        // Processes first (logs complete, ports free), then dump, then the temp dir.
        if let Some(mut p) = self.daemon.proc.take() {
            let s = p.kill();
            let _ = s;
        }
        if let Some(s) = self.sub.as_mut() {
            s.proc.kill();
        }
        if let Some(b) = self.broker.as_mut() {
            b.kill();
        }
        let keep = std::env::var("TELEMETRYD_IT_KEEP").ok();
        if thread::panicking() {
            eprintln!("{}", self.dump());
        }
        if (thread::panicking() && keep.is_some() || keep.as_deref() == Some("always"))
            && let Some(t) = self.tmp.take()
        {
            eprintln!("kept {}", t.keep().display());
        }
    }
}

/// Waits until `values()` (counter values in arrival order) has every value of 1..=upto but at
/// most `allowed_missing`, then checks the order.
pub fn wait_delivered_by(
    values: &dyn Fn() -> Vec<u64>,
    what: &str,
    upto: u64,
    allowed_missing: usize,
) {
    let start = Instant::now();
    while !SeqReport::of(&values()).covers(upto, allowed_missing) {
        if start.elapsed() >= DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting until {what} has 1..={upto} \
                 (at most {allowed_missing} missing); it has: {}",
                describe(&values())
            );
        }
        thread::sleep(POLL);
    }
    assert_in_order(&values(), upto, allowed_missing);
}

/// Stops the counter, waits until everything it produced has arrived (`values()`), SIGTERMs
/// the daemon (exit 0 within the grace) and checks that the store at `buffer` ended empty and
/// that the final sequence is in order, complete but for `allowed_missing`. Returns the final
/// count.
pub fn drain_and_stop_by(
    daemon: &mut Daemon,
    buffer: &Path,
    counter: &Counter,
    values: &dyn Fn() -> Vec<u64>,
    what: &str,
    allowed_missing: usize,
) -> u64 {
    let n = counter.pause();
    wait_delivered_by(values, what, n, allowed_missing);
    daemon.stop_expect_success();
    assert_eq!(store_depth(buffer), 0, "store not empty at the end");
    let all = values();
    assert_in_order(&all, n, allowed_missing);
    assert!(
        all.iter().all(|&v| v <= n),
        "values above the final count {n}: {}",
        describe(&all)
    );
    n
}

/// Readings in the sled store at `path` (daemon stopped), via the library hook.
pub fn store_depth(path: &Path) -> u64 {
    telemetryd::outbox::depth_at(path)
        .unwrap_or_else(|e| panic!("depth_at({}): {e:#}", path.display()))
}

/// `cfg` with each `(from, to)` replaced; panics if `from` is not there (a config template
/// that changed must not leave a test running with settings it did not ask for).
pub fn tweak(mut cfg: String, pairs: &[(&str, &str)]) -> String {
    for (from, to) in pairs {
        assert!(cfg.contains(from), "{from:?} not in the config:\n{cfg}");
        cfg = cfg.replace(from, to);
    }
    cfg
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A one-worker tokio runtime and a listener on a free 127.0.0.1 port: what each in-test
/// network component (the proxy, the scripted brokers) runs on, apart from the test thread.
pub fn loopback_server() -> (tokio::runtime::Runtime, tokio::net::TcpListener, u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    (rt, listener, port)
}

/// Shared text log for in-test components (the fake broker), dumped on failure.
#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<String>>>);

impl EventLog {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }
}

/// A fake w1_slave file for `millidegrees`.
pub fn write_w1_slave(path: &Path, millidegrees: i64) {
    fs::create_dir_all(path.parent().expect("parent")).expect("w1 dir");
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        format!(
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t={millidegrees}\n"
        ),
    )
    .expect("write w1_slave");
    fs::rename(&tmp, path).expect("rename w1_slave");
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

/// A small seeded generator (SplitMix64): the same seed gives the same fault schedule.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `lo..=hi`, in milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// The seed for a test: `TELEMETRYD_IT_SEED` if set (to replay a failure), else `default`.
/// Printed, so that a failing run names it.
pub fn test_seed(test: &str, default: u64) -> u64 {
    let seed = std::env::var("TELEMETRYD_IT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default);
    eprintln!("{test}: seed {seed} (replay with TELEMETRYD_IT_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------------
// What a process costs
// ---------------------------------------------------------------------------------------------

/// CPU time (user + system) a process has used so far, all its threads' (ended ones too), to
/// the nanosecond: its CPU-time clock. `/proc/<pid>/stat` counts 10 ms ticks, which a mostly
/// idle daemon can go seconds without. `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write their out-parameter; Linux lets any process read another
    // process's CPU-time clock.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0
            || libc::clock_gettime(clock, &mut t) != 0
        {
            return None;
        }
    }
    Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

/// A `Vm*` field of /proc/<pid>/status (e.g. `VmRSS`, `VmHWM`), in KiB.
pub fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    status_number(pid, field)
}

/// A numeric field of /proc/<pid>/status (`Threads`, or a `Vm*` one in KiB).
pub fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Bytes the process caused to be sent to the storage layer (`write_bytes` of
/// /proc/<pid>/io): what wears an SD card, unlike what it handed to `write(2)`.
pub fn io_write_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
}

/// Disk space used by everything under `path`, like `du -s` (allocated blocks, in bytes).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

/// Processes whose command line contains `needle` (for leftovers of a sensor command).
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stores and logs
// ---------------------------------------------------------------------------------------------

/// Writes a backlog into the store at `path` (daemon stopped), as a previous run with the
/// broker away would have left it: `count` readings on `topic` with payloads `1..=count`,
/// through the daemon's own outbox code. Returns how long it took.
pub fn prefill_store(path: &Path, topic: &str, count: u64) -> Duration {
    let t0 = Instant::now();
    let taken_ms = telemetryd::unix_ms(std::time::SystemTime::now());
    prefill_store_with(path, count, |i, _seq| telemetryd::outbox::Record {
        topic: topic.to_string(),
        payload: (i + 1).to_string().into_bytes(),
        retain: false,
        taken_ms,
        plain: true,
    });
    t0.elapsed()
}

/// Fills the store at `path` (daemon stopped) with `count` readings, the i-th (from 0, with
/// its sequence number) made by `record`, in commits of 10,000, and closes it cleanly.
pub fn prefill_store_with(
    path: &Path,
    count: u64,
    mut record: impl FnMut(u64, u64) -> telemetryd::outbox::Record,
) {
    let outbox =
        telemetryd::outbox::Outbox::open(path, count.max(1)).expect("open the store to fill it");
    let mut i = 0;
    while i < count {
        let end = (i + 10_000).min(count);
        let batch = (i..end)
            .map(|j| {
                let seq = outbox.next_seq();
                (seq, record(j, seq))
            })
            .collect();
        outbox.commit(batch);
        i = end;
    }
    assert_eq!(outbox.depth(), count, "prefilled store depth");
    outbox.close();
}

/// Copies the directory `from` (a stopped store, say) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy");
    for e in fs::read_dir(from)
        .expect("read the directory to copy")
        .flatten()
    {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).expect("copy a file");
        }
    }
}

/// When a log line that starts with an RFC 3339 timestamp was written.
pub fn log_systime(line: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// [`log_systime`] in Unix seconds.
pub fn log_time(line: &str) -> Option<f64> {
    let t = log_systime(line)?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The value of `key=value` in a log line (up to the next space; quotes kept).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    line[start..].split_whitespace().next()
}

/// Asserts: first deliveries in order, every value of `1..=upto` received except values in
/// `may_miss`.
pub fn assert_complete_except(values: &[u64], upto: u64, may_miss: &HashSet<u64>, what: &str) {
    let r = SeqReport::of(values);
    assert!(
        r.reorders.is_empty(),
        "{what}: reordered first deliveries: {}",
        describe(values)
    );
    assert!(
        r.max >= upto,
        "{what}: expected values up to {upto}: {}",
        describe(values)
    );
    let unexplained: Vec<u64> = r
        .missing
        .iter()
        .copied()
        .filter(|v| *v <= upto && !may_miss.contains(v))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{what}: missing {} beyond those that may be missing ({}): {}",
        ranges(&unexplained),
        ranges(&may_miss.iter().copied().collect::<Vec<_>>()),
        describe(values)
    );
}

/// Waits until `values()` holds every value of `1..=upto` except values in `may_miss`.
pub fn wait_complete_except(
    values: &dyn Fn() -> Vec<u64>,
    upto: u64,
    may_miss: &HashSet<u64>,
    what: &str,
) {
    let start = Instant::now();
    loop {
        let v = values();
        let r = SeqReport::of(&v);
        if r.max >= upto && r.missing.iter().all(|m| *m > upto || may_miss.contains(m)) {
            break;
        }
        if start.elapsed() >= DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting until {what} has 1..={upto} but for {}: {}",
                ranges(&may_miss.iter().copied().collect::<Vec<_>>()),
                describe(&v)
            );
        }
        thread::sleep(POLL);
    }
    assert_complete_except(&values(), upto, may_miss, what);
}
