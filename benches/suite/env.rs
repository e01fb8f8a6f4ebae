//! What the scenarios add to the test kit (`telemetryd-testkit`, tests/kit: processes that are
//! always reaped, a real Mosquitto on a free loopback port, polling with deadlines, `/proc`
//! readings): a first-message watcher, the daemon with its log read as it grows, and what
//! `/proc` says about it.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use telemetryd_testkit::{
    Broker, Proc, cpu_time, io_write_bytes, log_field, log_file, log_systime, mosquitto_bin,
    read_lossy, status_number, wait_for,
};

/// How long a stopping daemon may take: the shutdown grace for in-flight acks (5 s) and the
/// final flush, with room for a busy machine.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The Mosquitto version line (`mosquitto version 2.0.11`).
pub fn mosquitto_version() -> String {
    Command::new(mosquitto_bin())
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
}

/// True once the broker has logged a subscription by `client_id` (a quiet broker still logs
/// subscriptions).
pub fn has_subscriber(broker: &Broker, client_id: &str) -> bool {
    read_lossy(&broker.log_path())
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(client_id))
}

/// A `mosquitto_sub -C 1`: notes when the first message on its topic arrives.
pub struct FirstMessage {
    _proc: Proc,
    arrived: mpsc::Receiver<Instant>,
}

impl FirstMessage {
    /// Returns once the broker has the subscription.
    pub fn subscribe(broker: &Broker, client_id: &str, topic: &str) -> FirstMessage {
        let mut proc = Proc::spawn(
            "mosquitto_sub",
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                .args(["-i", client_id, "-t", topic, "-C", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = proc.take_stdout().expect("piped stdout");
        let (tx, arrived) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(stdout).read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(Instant::now());
            }
        });
        wait_for(
            Duration::from_secs(30),
            "mosquitto_sub is subscribed",
            || has_subscriber(broker, client_id).then_some(()),
        );
        FirstMessage {
            _proc: proc,
            arrived,
        }
    }

    pub fn wait(&self, timeout: Duration) -> Instant {
        self.arrived
            .recv_timeout(timeout)
            .expect("the first message reaches the subscriber")
    }
}

/// One `summary` line of the daemon's log.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub at: SystemTime,
    pub readings: u64,
    pub published: u64,
    pub buffered: u64,
    pub dropped: u64,
    pub connected: bool,
}

fn parse_summary(line: &str) -> Option<Summary> {
    if !line.contains(" summary ") {
        return None;
    }
    let num = |k| log_field(line, k)?.parse().ok();
    Some(Summary {
        at: log_systime(line)?,
        readings: num("readings")?,
        published: num("published")?,
        buffered: num("buffered")?,
        dropped: num("dropped")?,
        connected: log_field(line, "connected")? == "true",
    })
}

/// The real `telemetryd` binary with a config of the bench's making; its log (stderr) goes to
/// a file that is read as it grows.
pub struct Daemon {
    proc: Proc,
    log_path: PathBuf,
    offset: u64,
    partial: String,
    lines: Vec<String>,
    summaries: Vec<Summary>,
    /// Index of the next summary `next_summary` returns.
    cursor: usize,
    pub spawned: SystemTime,
    pub spawned_at: Instant,
}

impl Daemon {
    pub fn start(bin: &Path, dir: &Path, config: &str) -> Daemon {
        Daemon::start_wrapped(bin, dir, config, &[])
    }

    /// [`Daemon::start`] under a wrapper such as `valgrind --tool=callgrind` (`wrapper[0]` is
    /// the program run, the daemon's command line follows its arguments): same pid.
    pub fn start_wrapped(bin: &Path, dir: &Path, config: &str, wrapper: &[String]) -> Daemon {
        fs::create_dir_all(dir).expect("daemon dir");
        let config_path = dir.join("telemetryd.toml");
        fs::write(&config_path, config).expect("write the config");
        let log_path = dir.join("telemetryd.log");
        let spawned = SystemTime::now();
        let spawned_at = Instant::now();
        let proc = Proc::spawn(
            "telemetryd",
            wrapped(wrapper, bin)
                .arg("--config")
                .arg(&config_path)
                .env_remove("RUST_LOG")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("JOURNAL_STREAM")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log_path).0),
        );
        Daemon {
            proc,
            log_path,
            offset: 0,
            partial: String::new(),
            lines: Vec::new(),
            summaries: Vec::new(),
            cursor: 0,
            spawned,
            spawned_at,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Reads what the log gained since the last call.
    fn refresh(&mut self) {
        let Ok(mut f) = File::open(&self.log_path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let line = line.trim_end().to_owned();
            if let Some(s) = parse_summary(&line) {
                self.summaries.push(s);
            }
            self.lines.push(line);
        }
    }

    fn check_alive(&mut self) {
        if let Some(status) = self.proc.try_status() {
            self.refresh();
            panic!(
                "telemetryd exited ({status}); its log:\n{}",
                self.lines.join("\n")
            );
        }
    }

    /// The next summary line (blocking until it is written).
    pub fn next_summary(&mut self, timeout: Duration) -> Summary {
        wait_for(timeout, "telemetryd logs a summary", || {
            self.refresh();
            if let Some(s) = self.summaries.get(self.cursor).copied() {
                self.cursor += 1;
                return Some(s);
            }
            self.check_alive();
            None
        })
    }

    /// The first summary from the current one on that satisfies `pred`.
    pub fn wait_summary(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Summary) -> bool,
    ) -> Summary {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting until {what}; last summary: {:?}",
                    self.summaries.last()
                );
            }
            let s = self.next_summary(left);
            if pred(&s) {
                return s;
            }
        }
    }

    /// The log lines written so far.
    pub fn lines_so_far(&mut self) -> &[String] {
        self.refresh();
        &self.lines
    }

    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid()).expect("the daemon's /proc entry")
    }

    /// SIGTERM; panics unless it exits with 0 within [`STOP_LIMIT`]. Returns the whole log.
    pub fn stop(mut self) -> String {
        let (status, in_time) = self.proc.terminate(STOP_LIMIT);
        self.refresh();
        let log = self.lines.join("\n");
        assert!(
            in_time && status.success(),
            "telemetryd did not stop cleanly within {STOP_LIMIT:?} of SIGTERM ({status}); its log:\n{log}"
        );
        log
    }
}

/// `bin` as a command, or `wrapper` with `bin` as its last argument.
pub fn wrapped(wrapper: &[String], bin: &Path) -> Command {
    match wrapper.split_first() {
        None => Command::new(bin),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
    }
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Peak resident set size (VmHWM), KiB.
    pub hwm_kib: u64,
    pub threads: u64,
    /// User + system time of all its threads, ended ones included.
    pub cpu: Duration,
    /// Bytes this process caused to be sent to the storage layer.
    pub write_bytes: u64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    Some(ProcStats {
        hwm_kib: status_number(pid, "VmHWM")?,
        threads: status_number(pid, "Threads")?,
        cpu: cpu_time(pid)?,
        write_bytes: io_write_bytes(pid).unwrap_or(0),
    })
}

/// The size of `bin` once stripped (`strip` on a copy), or unstripped if `strip` is missing.
pub fn stripped_size(bin: &Path, work: &Path) -> (u64, bool) {
    let copy = work.join("telemetryd.stripped");
    fs::copy(bin, &copy).expect("copy the binary");
    let stripped = Command::new("strip")
        .arg(&copy)
        .status()
        .is_ok_and(|s| s.success());
    let size = fs::metadata(&copy).expect("binary size").len();
    let _ = fs::remove_file(&copy);
    (size, stripped)
}
