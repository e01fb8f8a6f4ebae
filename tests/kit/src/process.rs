//! Child processes that are always reaped ([`Proc`]), and finding processes by command line.

use std::fs::{self, File};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped on drop if still running.
///
/// Signals go to the pid only while the child is un-reaped (a zombie still owns its pid), so
/// a signal can never hit a recycled pid.
pub struct Proc {
    pub name: String,
    pub(crate) child: Child,
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
pub(crate) fn relay(mut from: impl std::io::Read + Send + 'static, mut to: File) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
    });
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
