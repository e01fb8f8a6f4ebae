//! The built `telemetryd` binary ([`bin`]) and the daemon under test ([`Daemon`]).

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::relay;
use crate::{Proc, SHUTDOWN_LIMIT, log_file, read_lossy, strip_ansi};

/// The `telemetryd` binary cargo built for this test or bench. Cargo sets
/// `CARGO_BIN_EXE_telemetryd` when it runs an integration test or a bench (at build time too,
/// but this crate is not one: it is built before them). A test binary started by hand (under a
/// debugger, say) finds it next to its own `deps/` directory, where cargo puts it.
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_telemetryd") {
            return path
                .into_string()
                .expect("CARGO_BIN_EXE_telemetryd is not UTF-8");
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let path = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("telemetryd"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no CARGO_BIN_EXE_telemetryd and no telemetryd next to {}: run through cargo",
                    exe.display()
                )
            });
        path.into_os_string()
            .into_string()
            .expect("the telemetryd path is not UTF-8")
    })
}

/// The real `telemetryd` binary, restartable; each run logs (stderr and stdout) to its own
/// file `daemon-N.log`.
pub struct Daemon {
    pub config: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) proc: Option<Proc>,
    /// (log path, exit status) of every run so far.
    pub(crate) runs: Vec<(PathBuf, Option<ExitStatus>)>,
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
