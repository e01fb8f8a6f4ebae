//! systemd integration: readiness, a current status line, and a progress-fed watchdog.
//!
//! The watchdog is fed only while the daemon makes progress. Every call is a no-op when not
//! started by systemd.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Stats;
use crate::outbox::Outbox;

/// How often the status line is refreshed (and the watchdog fed, if it asks for more often).
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The committer wakes every second; this long without it means it is stuck (a hung fsync).
const COMMITTER_STALL: Duration = Duration::from_secs(30);

/// When a task last showed it was making progress.
#[derive(Debug, Default)]
pub struct Beat(AtomicU64);

impl Beat {
    pub fn beat(&self) {
        self.0
            .store(since_start().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        since_start().saturating_sub(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

/// Time since the daemon started (the first call, made at start-up).
pub fn uptime() -> Duration {
    since_start()
}

fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// How long systemd is asked to wait for the next sign of life while a long start goes on,
/// and how often at most one is sent.
const EXTEND_BY: Duration = Duration::from_secs(30);
const EXTEND_EVERY: Duration = Duration::from_secs(1);

/// A long part of starting (counting a big store, recovering a damaged one) is still going:
/// `EXTEND_TIMEOUT_USEC=`, so that systemd's start timeout (90 s by default; a Pi with a slow
/// SD card can count a big store for longer) does not kill a start that is progressing. Cheap
/// to call often: sends at most once per [`EXTEND_EVERY`], and nothing in the first one.
pub fn still_starting() {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = since_start().as_millis() as u64;
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EXTEND_EVERY.as_millis() as u64 {
        return;
    }
    if LAST_MS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        notify(&[NotifyState::ExtendTimeoutUsec(EXTEND_BY.as_micros() as u32)]);
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// Keeps `STATUS=` current and feeds the watchdog while both the committer and the MQTT
/// connection task beat in time, until `stop`.
pub async fn run(
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    mqtt_stall: Duration,
    stop: CancellationToken,
) {
    let watchdog = sd_notify::watchdog_enabled();
    // WATCHDOG_USEC=1 would make a zero period, which panics tokio's interval.
    let every = watchdog
        .map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY))
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(every);
    let mut last_status = String::new();
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let status = status_line(&outbox, &stats);
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if watchdog.is_none() {
            continue;
        }
        let committer = stats.committer_beat.age();
        let mqtt = stats.mqtt_beat.age();
        if committer < COMMITTER_STALL && mqtt < mqtt_stall {
            notify(&[NotifyState::Watchdog]);
            if std::mem::take(&mut stalled) {
                info!("all tasks are making progress again; feeding the watchdog");
            }
        } else if !stalled {
            stalled = true;
            error!(committer_idle = ?committer, mqtt_idle = ?mqtt, "a task has stopped making progress; no longer feeding the watchdog, so systemd will restart the service");
        }
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// E.g. `connected to localhost:1883; 0 buffered, 0 dropped; 2 sensors ok` or
/// `waiting for localhost:1883; 1234 buffered (oldest 2h 5m ago), 0 dropped; 1 of 2 sensors
/// failing: outside`: the current server of `[mqtt] servers`.
pub fn status_line(outbox: &Outbox, stats: &Stats) -> String {
    let broker = stats.server();
    let link = if stats.connected.load(Ordering::Relaxed) {
        format!("connected to {broker}")
    } else {
        format!("waiting for {broker}")
    };
    let depth = outbox.depth();
    let age = match outbox.oldest_taken_ms().filter(|_| depth > 0) {
        Some(taken) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let age =
                Duration::from_secs(now.saturating_sub(Duration::from_millis(taken)).as_secs());
            format!(" (oldest {} ago)", humantime::format_duration(age))
        }
        None => String::new(),
    };
    let store = if outbox.is_degraded() {
        "; store unavailable, buffering in memory"
    } else {
        ""
    };
    format!(
        "{link}; {depth} buffered{age}, {} dropped{store}; {}",
        outbox.dropped(),
        stats.health.describe()
    )
}
