//! Logging to stderr: journald-friendly under systemd, timestamps and colours on a terminal.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The levels `log_level` accepts.
pub const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Installs the global subscriber. `RUST_LOG`, when set and non-empty, wins over `level`.
/// Dependencies only log warnings unless asked for: sled and rumqttc are chatty at debug.
pub fn init(level: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter = match &from_env {
        Some(s) => parse_filter(s),
        None => parse_filter(&directives(level)),
    };
    let reloadable = from_env.is_none();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if stderr_is_journal() {
        // journald adds the time and the unit; the `<N>` prefix sets the priority, so
        // `journalctl -p warning` works.
        let inner = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false)
            .with_level(false);
        install(
            layer.with_ansi(false).event_format(Journal(inner)),
            filter,
            reloadable,
        );
    } else {
        // Colours only for a person at a terminal, never into a file or a pipe.
        install(
            layer.with_ansi(std::io::stderr().is_terminal()),
            filter,
            reloadable,
        );
    }
}

/// Installs `layer` behind a reloadable `filter` (outermost, as `fmt().with_env_filter()` put
/// it); when `reloadable`, [`set_level`] replaces the filter.
fn install<L>(layer: L, filter: Targets, reloadable: bool)
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(filter);
    if reloadable {
        let _ = SET_LEVEL.set(Box::new(move |level: &str| {
            let _ = handle.reload(parse_filter(&directives(level)));
        }));
    }
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
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

/// Parses `RUST_LOG`-style directives as `EnvFilter::new` did, without the regex engine behind
/// `tracing-subscriber`'s `env-filter` (550 KiB of the binary): comma-separated
/// `target=level`, bare `level` (for every other target), bare `target` (every level); a
/// target matches itself and every target it prefixes, the longest match decides, and of two
/// directives for one target the later. An invalid directive is reported on stderr and
/// skipped; with no valid one only errors are logged, and without a bare level a target no
/// directive names logs nothing. Each directive is trimmed (`EnvFilter` misread one with
/// spaces around it). Span and field filters (`target[span{field=value}]=level`) are not
/// supported: such a directive is reported and skipped.
fn parse_filter(spec: &str) -> Targets {
    let mut filter = Targets::new();
    let mut any = false;
    for text in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive(text) {
            Ok((Some(target), level)) => filter = filter.with_target(target, level),
            Ok((None, level)) => filter = filter.with_default(level),
            Err(err) => {
                eprintln!("ignoring `{text}`: {err}");
                continue;
            }
        }
        any = true;
    }
    if any {
        filter
    } else {
        filter.with_default(LevelFilter::ERROR)
    }
}

/// One directive: its target (`None` for a bare level) and level. The error is only printed.
fn directive(text: &str) -> anyhow::Result<(Option<&str>, LevelFilter)> {
    if text.contains(['[', ']', '{', '}']) {
        anyhow::bail!("span and field filters are not supported");
    }
    if !text.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '-' | ':' | '_')) {
        anyhow::bail!("invalid filter directive");
    }
    Ok(match text.split_once('=') {
        Some((target, "")) => (Some(target), LevelFilter::TRACE),
        Some((target, level)) => (Some(target), level.parse::<LevelFilter>()?),
        None => match text.parse() {
            Ok(level) => (None, level),
            Err(_) => (Some(text), LevelFilter::TRACE),
        },
    })
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

    fn enables(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn the_default_directives_log_our_level_and_only_warnings_of_dependencies() {
        let f = parse_filter(&directives("debug"));
        assert!(enables(&f, "telemetryd", Level::DEBUG));
        assert!(enables(&f, "telemetryd::mqtt", Level::DEBUG));
        assert!(!enables(&f, "telemetryd::mqtt", Level::TRACE));
        assert!(enables(&f, "sled::pagecache", Level::WARN));
        assert!(!enables(&f, "sled::pagecache", Level::INFO));
        assert!(enables(&f, "rumqttc::state", Level::ERROR));
        assert!(!enables(&f, "rumqttc::state", Level::WARN));
        let f = parse_filter(&directives("error"));
        assert!(!enables(&f, "telemetryd", Level::WARN));
        assert!(enables(&f, "sled", Level::WARN));
    }

    #[test]
    fn rust_log_directives_parse_as_env_filter_did() {
        // A bare level is the default; the longest matching target decides.
        let f = parse_filter("info,telemetryd::mqtt=trace,telemetryd=warn");
        assert!(enables(&f, "sled", Level::INFO));
        assert!(!enables(&f, "sled", Level::DEBUG));
        assert!(!enables(&f, "telemetryd::buffer", Level::INFO));
        assert!(enables(&f, "telemetryd::mqtt::conn", Level::TRACE));
        // Without a bare level, other targets log nothing.
        let f = parse_filter("telemetryd=debug");
        assert!(!enables(&f, "sled", Level::ERROR));
        assert!(enables(&f, "telemetryd", Level::DEBUG));
        // A bare target enables every level; `target=` too; levels ignore case; `off`.
        let f = parse_filter("telemetryd,sled=,rumqttc=OFF, warn ,,");
        assert!(enables(&f, "telemetryd", Level::TRACE));
        assert!(enables(&f, "sled", Level::TRACE));
        assert!(!enables(&f, "rumqttc", Level::ERROR));
        assert!(enables(&f, "tokio", Level::WARN));
        assert!(!enables(&f, "tokio", Level::INFO));
        // The later of two directives for one target wins.
        let f = parse_filter("debug,error");
        assert!(!enables(&f, "x", Level::WARN));
    }

    #[test]
    fn invalid_directives_are_skipped_and_none_valid_logs_errors() {
        let f = parse_filter("telemetryd=loud,info");
        assert!(enables(&f, "telemetryd", Level::INFO));
        assert!(!enables(&f, "telemetryd", Level::DEBUG));
        let f = parse_filter("=info,telemetryd[span]=debug,a[{x=1}]=trace,b=c=d");
        assert!(enables(&f, "telemetryd", Level::ERROR));
        assert!(!enables(&f, "telemetryd", Level::WARN));
        assert!(!enables(&f, "a", Level::WARN));
        assert!(directive("telemetryd=loud").is_err());
        assert!(directive("=info").is_err());
        assert!(directive("[span]=info").is_err());
        assert_eq!(directive("3").unwrap(), (None, LevelFilter::INFO));
    }

    /// What `RUST_LOG` means, written out: the longest target that prefixes the event's wins
    /// (of equal ones, the later), else the last bare level, else nothing; errors only when no
    /// directive is valid.
    fn model(ds: &[(Option<&str>, LevelFilter)], target: &str, level: Level) -> bool {
        if ds.is_empty() {
            return level <= Level::ERROR;
        }
        let named = ds
            .iter()
            .filter_map(|(t, l)| t.filter(|t| target.starts_with(t)).map(|t| (t.len(), *l)));
        let decides = named
            .fold(None::<(usize, LevelFilter)>, |best, (n, l)| match best {
                Some((m, _)) if m > n => best,
                _ => Some((n, l)),
            })
            .map(|(_, l)| l)
            .or_else(|| ds.iter().rev().find(|(t, _)| t.is_none()).map(|(_, l)| *l));
        decides.is_some_and(|l| l >= level)
    }

    proptest::proptest! {
        /// Any text, as `RUST_LOG` may hold, gives a filter (no panic); a list of valid
        /// directives, in any order, with repeats and junk among them, means what the model says.
        #[test]
        fn any_rust_log_gives_a_filter_and_valid_ones_mean_what_they_say(
            junk in "\\PC{0,40}",
            picks in proptest::collection::vec((0usize..5, 0usize..6, 0usize..3), 0..8),
        ) {
            let _ = parse_filter(&junk);
            const TARGETS: [&str; 5] = ["", "a", "ab", "abc", "b"];
            const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
            let mut text = Vec::new();
            let mut ds = Vec::new();
            for (t, l, junky) in picks {
                if junky == 0 {
                    text.push("=nonsense".to_string());
                    continue;
                }
                let level: LevelFilter = LEVELS[l].parse().unwrap();
                if TARGETS[t].is_empty() {
                    text.push(LEVELS[l].to_string());
                    ds.push((None, level));
                } else {
                    text.push(format!("{}={}", TARGETS[t], LEVELS[l]));
                    ds.push((Some(TARGETS[t]), level));
                }
            }
            let f = parse_filter(&text.join(","));
            for target in ["a", "ab", "abc", "abd", "b", "c"] {
                for level in [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE] {
                    proptest::prop_assert_eq!(
                        enables(&f, target, level),
                        model(&ds, target, level),
                        "{:?}: {} at {}", text, target, level
                    );
                }
            }
        }
    }

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
