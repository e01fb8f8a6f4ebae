//! The parts every scenario uses: child processes that are always reaped, a real Mosquitto on
//! a free loopback port, the daemon with its log, `/proc` readings, and polling with deadlines.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How often a condition is polled. Short: the drain is timed from the daemon's own log, but
/// a poll that comes late delays the next step.
const POLL: Duration = Duration::from_millis(5);

/// Polls `f` until it returns `Some`; panics after `timeout` naming `what`.
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

/// A child process, killed (SIGKILL) and reaped on drop if it still runs. Signals go to the
/// pid only while the child is un-reaped, so never to a recycled pid.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
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
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) on the pid of our own un-reaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM; panics unless it exits successfully within `grace` (it is killed then).
    pub fn terminate(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(grace) {
            Some(s) if s.success() => {}
            Some(s) => panic!("{} exited with {s} after SIGTERM", self.name),
            None => {
                self.kill();
                panic!("{} did not exit within {grace:?} of SIGTERM", self.name);
            }
        }
    }

    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port that was free a moment ago (racy by nature: the broker retries with another).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `mosquitto` from PATH, else Debian's /usr/sbin.
fn mosquitto_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

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

/// A real Mosquitto with its own config, persistence dir and log, on 127.0.0.1.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    _proc: Proc,
}

impl Broker {
    /// Starts on a free port (trying another if the bind fails); returns once it runs.
    pub fn start(dir: &Path) -> Broker {
        fs::create_dir_all(dir).expect("broker dir");
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            match Broker::spawn(dir, port) {
                Ok(proc) => {
                    return Broker {
                        port,
                        dir: dir.to_owned(),
                        _proc: proc,
                    };
                }
                Err(e) => errors.push(format!("port {port}: {e}")),
            }
        }
        panic!("mosquitto did not start on any of 5 ports: {errors:?}");
    }

    fn spawn(dir: &Path, port: u16) -> Result<Proc, String> {
        let d = dir.display();
        // As in the integration tests (shared/notes/testing-with-brokers.md), minus the
        // per-message logging; `subscribe` lines tell when a subscriber is ready.
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {d}/\n\
             autosave_interval 1\n\
             max_queued_messages 0\n\
             log_dest file {d}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n"
        );
        if is_root() {
            // Otherwise it drops to user `mosquitto` and cannot save into a root-owned dir.
            conf.push_str("user root\n");
        }
        let conf_path = dir.join("mosquitto.conf");
        fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let running = |log: &Path| {
            read_lossy(log)
                .lines()
                .filter(|l| l.contains(" mosquitto version ") && l.ends_with(" running"))
                .count()
        };
        let before = running(&log);
        let mut p = Proc::spawn(
            "mosquitto",
            Command::new(mosquitto_bin())
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log_file(&dir.join("mosquitto.stderr")))
                .stderr(log_file(&dir.join("mosquitto.stderr"))),
        );
        let start = Instant::now();
        loop {
            if let Some(status) = p.try_status() {
                return Err(format!("mosquitto exited ({status})"));
            }
            if running(&log) > before {
                return Ok(p);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err("mosquitto did not log `running`".into());
            }
            thread::sleep(POLL);
        }
    }

    /// True once the broker has logged a subscription by `client_id`.
    fn has_subscriber(&self, client_id: &str) -> bool {
        read_lossy(&self.dir.join("mosquitto.log"))
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(client_id))
    }
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
            || broker.has_subscriber(client_id).then_some(()),
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

fn log_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn parse_summary(line: &str) -> Option<Summary> {
    if !line.contains(" summary ") {
        return None;
    }
    let num = |k| field(line, k)?.parse().ok();
    Some(Summary {
        at: log_time(line)?,
        readings: num("readings")?,
        published: num("published")?,
        buffered: num("buffered")?,
        dropped: num("dropped")?,
        connected: field(line, "connected")? == "true",
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
        fs::create_dir_all(dir).expect("daemon dir");
        let config_path = dir.join("telemetryd.toml");
        fs::write(&config_path, config).expect("write the config");
        let log_path = dir.join("telemetryd.log");
        let spawned = SystemTime::now();
        let spawned_at = Instant::now();
        let proc = Proc::spawn(
            "telemetryd",
            Command::new(bin)
                .arg("--config")
                .arg(&config_path)
                .env_remove("RUST_LOG")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("JOURNAL_STREAM")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log_path)),
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

    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid()).expect("the daemon's /proc entry")
    }

    /// SIGTERM; panics unless it stops cleanly. Returns the whole log.
    pub fn stop(mut self) -> String {
        self.proc.terminate(Duration::from_secs(20));
        self.refresh();
        self.lines.join("\n")
    }
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Peak resident set size (VmHWM), KiB.
    pub hwm_kib: u64,
    pub threads: u64,
    /// utime + stime, in clock ticks (dead threads included).
    pub cpu_ticks: u64,
    /// Bytes this process caused to be sent to the storage layer.
    pub write_bytes: u64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kv = |key: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let write_bytes = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
        .unwrap_or(0);
    Some(ProcStats {
        hwm_kib: kv("VmHWM")?,
        threads: kv("Threads")?,
        cpu_ticks: utime + stime,
        write_bytes,
    })
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Bytes of the files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy");
    for e in fs::read_dir(from).expect("read the template").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).expect("copy a store file");
        }
    }
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
