//! A real Mosquitto on a free loopback port ([`Broker`]): start, stop, kill, restart.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{DEADLINE, Proc, log_file, read_lossy, wait_until};

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

/// `mosquitto` from PATH, else Debian's /usr/sbin (not in every non-root PATH).
pub fn mosquitto_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// Why one attempt to start Mosquitto failed (the start tries again on another port).
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// It exited: the last lines of its log, newest first.
    #[error("mosquitto exited ({status}); log tail: {tail:?}")]
    Exited {
        status: ExitStatus,
        tail: Vec<String>,
    },
    #[error("mosquitto did not log `running`")]
    NotRunning,
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
    fn spawn(&mut self) -> Result<(), StartError> {
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
                let tail = log.lines().rev().take(5).map(str::to_owned).collect();
                return Err(StartError::Exited { status, tail });
            }
            if self.running_lines() > before {
                self.proc = Some(p);
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(StartError::NotRunning);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}
