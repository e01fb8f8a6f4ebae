//! Why a reading failed ([`ReadError`], [`Cause`]), and why a text holds none ([`ParseError`]).
//!
//! The cause is stable, for throttling; the message is for people.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

/// The kind of a failed reading, stable across readings: the log throttle compares causes,
/// not messages, because a message may quote a value that changes every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The file, device or directory does not exist (unplugged, wrong path).
    NotFound,
    /// Any other I/O error.
    Io,
    /// The text read holds no number, or not a finite one.
    NotANumber,
    /// The device reported a bad reading (a DS18B20 CRC failure).
    BadData,
    /// More output than a sensor can mean: stopped and discarded.
    TooMuchOutput,
    /// A command exited with an error or was killed.
    CommandFailed,
    /// No answer in time.
    Timeout,
    /// Outside the configured `min`/`max`.
    OutOfRange,
    /// Calibration or averaging overflowed to infinity (or gave NaN).
    NotFinite,
    /// The sensor's settings cannot work (an empty command, a ds18b20 without path or device).
    Config,
    /// The read itself panicked or was cancelled.
    Internal,
}

impl Cause {
    /// The name logged in the `cause` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NotFound => "not_found",
            Cause::Io => "io",
            Cause::NotANumber => "not_a_number",
            Cause::BadData => "bad_data",
            Cause::TooMuchOutput => "too_much_output",
            Cause::CommandFailed => "command_failed",
            Cause::Timeout => "timeout",
            Cause::OutOfRange => "out_of_range",
            Cause::NotFinite => "not_finite",
            Cause::Config => "config",
            Cause::Internal => "internal",
        }
    }
}

/// Why a reading failed: a stable [`Cause`] and a message that may quote what was read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadError {
    cause: Cause,
    message: String,
    /// Set only for expected, self-healing failures (DHT checksum/timeouts).
    retry_after: Option<Duration>,
}

impl ReadError {
    pub(crate) fn new(cause: Cause, message: impl Into<String>) -> ReadError {
        ReadError {
            cause,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn transient(
        cause: Cause,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> ReadError {
        ReadError {
            cause,
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }

    /// A failed read of `path`. "No such file" gets a short wording because it is the
    /// common case (wrong path, overlay not loaded, sensor unplugged).
    pub(crate) fn io(path: &Path, err: &io::Error) -> ReadError {
        if err.kind() == io::ErrorKind::NotFound {
            ReadError::new(Cause::NotFound, format!("{}: no such file", path.display()))
        } else {
            ReadError::new(Cause::Io, format!("{}: {err}", path.display()))
        }
    }

    /// What kind of failure this is, for throttling and the `cause` log field.
    pub fn cause(&self) -> Cause {
        self.cause
    }

    /// How long to wait before the next attempt, when the failure is expected to clear.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// True for expected failures (a DHT sensor's EIO/ETIMEDOUT) that deserve debug, not warn.
    pub fn is_transient(&self) -> bool {
        self.retry_after.is_some()
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReadError {}

/// Why a text read from a device, procfs or a command holds no reading: the reason only
/// (`CRC check failed (NO)`). Nobody branches on it: the caller prefixes where the text came
/// from and makes it a [`ReadError`] of the [`Cause`] that fits there.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub(crate) fn new(reason: impl Into<String>) -> ParseError {
        ParseError(reason.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_messages_name_the_path() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            ReadError::io(Path::new("/a/b"), &e).to_string(),
            "/a/b: no such file"
        );
        let e = io::Error::from_raw_os_error(13);
        assert!(
            ReadError::io(Path::new("/a/b"), &e)
                .to_string()
                .starts_with("/a/b: ")
        );
    }
}
