//! Config errors: the located [`ConfigError`], and the validators' [`Problem`] and [`Invalid`].
//!
//! A validator returns a `Problem` (a byte range and a message) or, where it does not know the
//! value's place, an `Invalid` its caller places; `located` turns either into the message the
//! user reads, with the file, line and column.

use std::ops::Range;
use std::path::Path;

/// A config that cannot be used; the message names the file, the line and column, the key and
/// what was expected, then shows the line. Policy: the daemon refuses to start on it (exit
/// 78), a reload keeps the old config.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(super) String);

/// A rejected value: where it is in the file (a byte range) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub(super) struct Problem {
    pub at: Range<usize>,
    pub msg: String,
}

impl Problem {
    pub fn new(at: Range<usize>, msg: impl Into<String>) -> Problem {
        Problem {
            at,
            msg: msg.into(),
        }
    }
}

/// `Err(Problem)`, for the validators' early returns.
pub(super) fn bad<T>(at: Range<usize>, msg: impl Into<String>) -> Result<T, Problem> {
    Err(Problem::new(at, msg))
}

/// What is wrong with a value, in the user's words, where the value's place is not known: the
/// caller, who knows it, makes it a `Problem` (often with the key in front).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub(crate) String);

/// A number that names no supported `protocol` or `qos`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {value} is not supported: use {hint}")]
pub struct Unsupported {
    pub key: &'static str,
    pub value: u8,
    /// What to write instead.
    pub hint: &'static str,
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `path:line:col: message`, then the line itself with the place marked, as a compiler shows
/// it. With `name_key`, the key is put in front of the message (taken from the marked line,
/// when the mark is on a value after `key =`).
pub(super) fn located(
    path: &Path,
    text: &str,
    span: Range<usize>,
    msg: &str,
    name_key: bool,
) -> ConfigError {
    let start = span.start.min(text.len());
    let (line, col) = line_col(text, start);
    let content = text.lines().nth(line - 1).unwrap_or("");
    let key = content
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            name_key
                && !k.is_empty()
                && k.len() + 1 < col
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
        })
        .map_or_else(String::new, |k| format!("{}: ", k.trim_matches('"')));
    let width = text[start..span.end.clamp(start, text.len())]
        .lines()
        .next()
        .map_or(1, |s| s.chars().count().max(1));
    let gutter = " ".repeat(line.to_string().len());
    ConfigError(format!(
        "{}:{line}:{col}: {key}{msg}\n {gutter} |\n {line} | {content}\n {gutter} | {}{}",
        path.display(),
        " ".repeat(col - 1),
        "^".repeat(width)
    ))
}
