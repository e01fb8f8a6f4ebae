//! Logging to stderr: journald-friendly under systemd, timestamps and colours on a terminal.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The levels `log_level` accepts.
pub const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Installs the global subscriber. `RUST_LOG`, when set and non-empty, wins over `level`.
/// Dependencies only log warnings unless asked for: sled and rumqttc are chatty at debug.
pub fn init(level: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter = match &from_env {
        Some(s) => EnvFilter::new(s),
        None => EnvFilter::new(directives(level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The handle's type depends on the format; keep it behind a closure.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if from_env.is_none() {
                let _ = SET_LEVEL.set(Box::new(move |level: &str| {
                    let _ = handle.reload(EnvFilter::new(directives(level)));
                }));
            }
            builder.init();
        }};
    }
    if stderr_is_journal() {
        // journald adds the time and the unit; the `<N>` prefix sets the priority, so
        // `journalctl -p warning` works.
        let inner = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false)
            .with_level(false);
        install!(builder.with_ansi(false).event_format(Journal(inner)));
    } else {
        // Colours only for a person at a terminal, never into a file or a pipe.
        install!(builder.with_ansi(std::io::stderr().is_terminal()));
    }
}

/// Applies a new `log_level` (on reload). Does nothing when `RUST_LOG` decides.
pub fn set_level(level: &str) {
    if let Some(set) = SET_LEVEL.get() {
        set(level);
    }
}

type SetLevel = Box<dyn Fn(&str) + Send + Sync>;
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

fn directives(level: &str) -> String {
    // rumqttc warns once per refused MQTT 5 PUBACK, unthrottled; we log those ourselves.
    format!("warn,rumqttc=error,telemetryd={level}")
}

/// True when stderr is the journal stream systemd gave us, not merely when the variable is
/// inherited (a shell started from a service has it too, with another stderr).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        // journald takes each line for a record of its own: every line of a message that
        // spans several (a TOML error pointing at the key) needs the priority, or the lines
        // after the first land at info and `journalctl -p warning` shows half the error.
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        for line in text.lines() {
            writeln!(w, "<{priority}>{line}")?;
        }
        Ok(())
    }
}

/// Prints an error for a person to stderr. Under journald every line of it gets the error
/// priority `<3>`, so `journalctl -p warning` shows all of it (`telemetryd check` run by
/// `systemctl reload`, a daemon refusing its config at start).
pub fn print_error(message: &str) {
    let text = if stderr_is_journal() {
        message.lines().map(|l| format!("<3>{l}\n")).collect()
    } else {
        format!("{message}\n")
    };
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
}

/// How often an unchanged error is repeated in the log.
const REPEAT_EVERY: Duration = Duration::from_secs(600);

/// Rate-limits a repeating error: a new key is logged at once, the same one again only
/// every [`REPEAT_EVERY`], so a sensor unplugged for a week does not flood the journal.
/// The key must be the error's cause, not a message quoting a value: a value that changes
/// every read would make every message new (log such details as fields instead).
#[derive(Default)]
pub struct Throttle {
    last: Option<(String, Instant)>,
    suppressed: u64,
    /// A failure was logged and its recovery not yet (see [`Throttle::recovered`]).
    announced: bool,
}

impl Throttle {
    /// `Some(n)` when `key` should be logged now, `n` being how many repeats were held back.
    pub fn admit(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        match &self.last {
            Some((last, at)) if last == key && now.duration_since(*at) < REPEAT_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some((key.to_owned(), now));
                self.announced = true;
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// A success after failures: whether to log the recovery. Unlike [`Throttle::clear`] it
    /// keeps the last key, so a sensor that flips between failing and working every read
    /// (a half-written file) logs one failure and one recovery per [`REPEAT_EVERY`], not two
    /// lines per read; a recovery is logged only when its failure was.
    pub fn recovered(&mut self) -> bool {
        std::mem::take(&mut self.announced)
    }

    /// Forgets the last message (the condition cleared); returns whether one was active.
    pub fn clear(&mut self) -> bool {
        self.suppressed = 0;
        self.announced = false;
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_new_messages_and_holds_back_repeats() {
        let mut t = Throttle::default();
        assert_eq!(t.admit("a"), Some(0));
        assert_eq!(t.admit("a"), None);
        assert_eq!(t.admit("a"), None);
        assert_eq!(t.admit("b"), Some(2));
        assert!(t.clear());
        assert_eq!(t.admit("b"), Some(0));
        assert!(!Throttle::default().clear());
    }

    #[test]
    fn a_flapping_condition_logs_once_per_period() {
        let mut t = Throttle::default();
        assert!(!t.recovered());
        assert_eq!(t.admit("not_a_number"), Some(0));
        assert!(t.recovered());
        for _ in 0..100 {
            assert_eq!(t.admit("not_a_number"), None);
            assert!(!t.recovered());
        }
        // A different cause is news, and so is its recovery.
        assert_eq!(t.admit("io"), Some(100));
        assert!(t.recovered());
    }
}
