//! A command run without a shell (e.g. `vcgencmd measure_temp`); the first number on stdout is the value.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{Cause, ReadError, excerpt, first_number};

/// A sensor command prints a number: more on stdout is a mistake (`yes`, a log dump), and
/// reading it all once took the daemon to 3 GiB.
const STDOUT_MAX: usize = 4 * 1024;
/// Enough stderr for the first line of an error message; the rest is read and dropped.
const STDERR_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct CommandSource {
    argv: Vec<String>,
    timeout: Duration,
}

impl CommandSource {
    pub(crate) fn new(argv: Vec<String>, timeout: Duration) -> Self {
        CommandSource { argv, timeout }
    }

    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let stdout = self.output().await?;
        first_number(&stdout).ok_or_else(|| {
            ReadError::new(
                Cause::NotANumber,
                format!(
                    "command `{}`: no number in output {:?}",
                    display_argv(&self.argv),
                    excerpt(&stdout)
                ),
            )
        })
    }

    /// Runs the command once, bounded as described above; its stdout (at most 4 KiB) when it
    /// exits successfully. The `system` kind parses `vcgencmd get_throttled` from this.
    pub(crate) async fn output(&self) -> Result<String, ReadError> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(ReadError::new(
                Cause::Config,
                "command sensor has an empty command",
            ));
        };
        let shown = display_argv(&self.argv);
        let mut child = Command::new(program)
            .args(args)
            // A sensor command must never wait for input from the daemon's terminal.
            .stdin(Stdio::null())
            // systemd's sockets and watchdog are for the daemon itself, not its children.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what it started too (`sh -c` leaves
            // its children behind otherwise, one more every interval).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(&shown, program, &e))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Declared after `child`, so dropped before it: the group is killed while the child
        // is not yet reaped, when its pid cannot belong to anyone else. Covers the timeout,
        // too much output and the daemon stopping in the middle of a read.
        let mut group = KillGroupOnDrop(pid);
        let run = async {
            // Both pipes are read at once: a child blocked on a full stderr pipe would never
            // finish its stdout. A flood on stdout ends the read (and the child, on drop).
            let (out, err) = tokio::try_join!(
                async {
                    match read_capped(stdout, STDOUT_MAX, true).await? {
                        (_, true) => Err(None),
                        (out, false) => Ok(out),
                    }
                },
                async { Ok(read_capped(stderr, STDERR_MAX, false).await?.0) },
            )?;
            let status = child.wait().await?;
            Ok::<_, Option<io::Error>>((status, out, err))
        };
        let (status, stdout, stderr) = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(output)) => {
                group.0 = None;
                output
            }
            Ok(Err(None)) => {
                return Err(ReadError::new(
                    Cause::TooMuchOutput,
                    format!(
                        "command `{shown}` printed more than {} KiB: killed (a sensor prints a number)",
                        STDOUT_MAX / 1024
                    ),
                ));
            }
            Ok(Err(Some(e))) => {
                return Err(ReadError::new(Cause::Io, format!("command `{shown}`: {e}")));
            }
            // Duration's Debug form ("5s", "200ms") is stable and readable.
            Err(_) => {
                return Err(ReadError::new(
                    Cause::Timeout,
                    format!("command `{shown}` timed out after {:?}", self.timeout),
                ));
            }
        };
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
            let mut msg = format!("command `{shown}` {}", describe(status));
            if let Some(line) = first {
                msg = format!("{msg}: {}", excerpt(line));
            }
            return Err(ReadError::new(Cause::CommandFailed, msg));
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

/// Reads `pipe` to its end, keeping at most `cap` bytes; returns them and whether there was
/// more. With `stop`, returns at the first byte over; without, drains (and drops) the rest so
/// a chatty child never blocks on a full pipe.
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
    stop: bool,
) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut over = false;
    let Some(mut pipe) = pipe else {
        return Ok((kept, over));
    };
    let mut buf = [0u8; 4096];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, over));
        }
        let room = cap - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            over = true;
            if stop {
                return Ok((kept, over));
            }
        }
    }
}

/// Sends SIGKILL to a process group when dropped, unless disarmed (`.0 = None`).
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

fn spawn_error(shown: &str, program: &str, err: &io::Error) -> ReadError {
    let why = match err.kind() {
        io::ErrorKind::NotFound => {
            format!("program {program:?} not found (not installed or not on PATH?)")
        }
        io::ErrorKind::PermissionDenied => format!("permission denied running {program:?}"),
        _ => format!("cannot start: {err}"),
    };
    ReadError::new(Cause::CommandFailed, format!("command `{shown}`: {why}"))
}

/// "exited with status 2" or, on Unix, "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    format!("failed ({status})")
}

/// The argv as a user would type it, quoting arguments that contain spaces or quotes,
/// so the message can be copied into a shell to reproduce the failure.
fn display_argv(argv: &[String]) -> String {
    let quote = |a: &String| {
        if !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str, timeout: Duration) -> CommandSource {
        CommandSource::new(vec!["sh".into(), "-c".into(), script.into()], timeout)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn parses_vcgencmd_style_output() {
        let mut s = sh(r#"echo 'temp=48.3'"'"'C'"#, 5 * SECOND);
        assert_eq!(s.read().await, Ok(48.3));
        assert_eq!(sh("printf ' -7.25\\n'", 5 * SECOND).read().await, Ok(-7.25));
    }

    #[tokio::test]
    async fn garbage_output_is_an_error() {
        let err = sh("echo abc", 5 * SECOND).read().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `sh -c 'echo abc'`: no number in output \"abc\""
        );
    }

    #[tokio::test]
    async fn nonzero_exit_reports_status_and_stderr() {
        let script = "echo 42; echo sensor busy >&2; echo more >&2; exit 2";
        let err = sh(script, 5 * SECOND).read().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("command `sh -c '{script}'` exited with status 2: sensor busy")
        );
        let err = sh("exit 3", 5 * SECOND).read().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `sh -c 'exit 3'` exited with status 3"
        );
    }

    #[tokio::test]
    async fn a_flood_on_stdout_is_stopped_and_an_error() {
        let started = Instant::now();
        let mut s = CommandSource::new(vec!["yes".into()], 10 * SECOND);
        let err = s.read().await.unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
        assert_eq!(
            err.to_string(),
            "command `yes` printed more than 4 KiB: killed (a sensor prints a number)"
        );
        // Correctness bound: killed at the limit, not at the 10 s timeout.
        assert!(started.elapsed() < 5 * SECOND, "{:?}", started.elapsed());
        // Just under the limit is still a reading.
        let script = format!(
            "printf '%s' 21.5; head -c {} /dev/zero | tr '\\0' ' '",
            STDOUT_MAX - 4
        );
        assert_eq!(sh(&script, 5 * SECOND).read().await, Ok(21.5));
    }

    #[tokio::test]
    async fn a_flood_on_stderr_is_drained_and_the_first_line_kept() {
        // 1 MiB of stderr: kept only up to the cap, drained so the child is never blocked.
        let script = "echo first problem >&2; head -c 1048576 /dev/zero >&2; echo 3; exit 1";
        let err = sh(script, 5 * SECOND).read().await.unwrap_err();
        assert_eq!(err.cause(), Cause::CommandFailed);
        assert!(
            err.to_string()
                .ends_with("exited with status 1: first problem"),
            "{err}"
        );
        let script = "head -c 1048576 /dev/zero >&2; echo 3";
        assert_eq!(sh(script, 5 * SECOND).read().await, Ok(3.0));
    }

    #[tokio::test]
    async fn stdin_is_null() {
        // `cat` would hang on an inherited terminal; with a null stdin it sees EOF at once.
        assert_eq!(sh("cat; echo 1", 5 * SECOND).read().await, Ok(1.0));
    }

    #[tokio::test]
    async fn timeout_kills_promptly() {
        let mut s = sh("sleep 5", Duration::from_millis(200));
        let started = Instant::now();
        let err = s.read().await.unwrap_err();
        // Correctness bound: the read must not wait for the child to finish on its own.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            err.to_string(),
            "command `sh -c 'sleep 5'` timed out after 200ms"
        );
    }

    #[tokio::test]
    async fn timeout_kills_what_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let err = sh(&script, Duration::from_millis(300))
            .read()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        // The orphaned `sleep` is reparented and reaped; until then it may show as a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the command's child {pid} survived the timeout: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn missing_program_and_empty_argv() {
        let argv = vec!["telemetryd-no-such-program".to_string(), "x".into()];
        let err = CommandSource::new(argv, SECOND).read().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `telemetryd-no-such-program x`: program \"telemetryd-no-such-program\" \
             not found (not installed or not on PATH?)"
        );
        let err = CommandSource::new(vec![], SECOND).read().await.unwrap_err();
        assert!(err.to_string().contains("empty command"));
    }

    #[test]
    fn argv_display_quotes_when_needed() {
        let argv = ["vcgencmd", "measure_temp"].map(String::from);
        assert_eq!(display_argv(&argv), "vcgencmd measure_temp");
        let argv = ["sh", "-c", "echo 'x'", ""].map(String::from);
        assert_eq!(display_argv(&argv), r"sh -c 'echo '\''x'\''' ''");
    }
}
