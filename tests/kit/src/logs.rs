//! What processes wrote: log files, ANSI colours stripped, timestamps and `key=value` fields.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

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
