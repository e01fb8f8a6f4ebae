//! One sensor's task: read on schedule, calibrate, filter, hand the reading on.
//!
//! Each read runs within a read slot and a timeout; failures are logged throttled by cause.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Reading, calibrate};
use crate::Stats;
use crate::config::SensorConfig;
use crate::filter::Filter;
use crate::logging::Throttle;
use crate::sensor::{Cause, ReadError, Source, SourceSpec};

/// A sysfs read that has not returned after this long is abandoned (its blocking thread may
/// stay stuck in the kernel, but the sensor's schedule goes on). Commands have their own timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most sensor reads in flight at once, hung ones included. tokio's blocking pool has a
/// few threads more (`main.rs`), so opening, closing and reloading always find one.
pub const READ_SLOTS: usize = 16;
static READ_SLOT: Semaphore = Semaphore::const_new(READ_SLOTS);

/// A read running in a task of its own, holding the source and a read slot until it returns:
/// abandoned at its timeout, it goes on (a read() stuck in the kernel cannot be cancelled) and
/// the sensor reads again only once it is back.
type InFlight = JoinHandle<(Source, Result<f64, ReadError>)>;

/// Reads `source` every `cfg.interval` until `stop`. Errors are logged (rate-limited) and the
/// schedule goes on: one failing sensor never holds up the others or the daemon.
pub async fn run_sensor(
    mut cfg: SensorConfig,
    source: Source,
    tx: mpsc::Sender<Reading>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    if cfg.unit.is_none() {
        cfg.unit = source.unit().map(str::to_owned);
    }
    let read_timeout = read_timeout(&cfg.source);
    let sensor = Arc::new(cfg);
    let name = sensor.name.as_str();
    let mut ticker = tokio::time::interval(sensor.interval);
    // A slow read (a DS18B20 takes 750 ms) delays the next one rather than bunching reads up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut throttle = Throttle::default();
    let mut spikes = Throttle::default();
    let mut filter = Filter::new(sensor.policy);
    let mut previous: Option<oneshot::Receiver<()>> = None;
    // A read that panicked loses the source it held: reads go on with a fresh copy.
    let fresh = source.clone();
    let mut source = Some(source);
    let mut hung: Option<InFlight> = None;
    let mut said_hung = false;
    // Failing until a first read works; a transient error (a DHT's EIO) after that does not
    // count, a lasting one does. Cleared when the task ends (a removed sensor).
    let health = HealthGuard::new(stats.clone(), sensor.name.clone());
    let mut ever_ok = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return abandon(hung),
            _ = ticker.tick() => {}
        }
        if let Some(read) = hung.take_if(|r| r.is_finished()) {
            // Back at last: its late value is stale, but the source is ours again.
            if let Ok((back, _)) = read.await {
                source = Some(back);
            }
            if said_hung {
                info!(sensor = name, "hung read returned; reading again");
            }
            said_hung = false;
        }
        let Some(mut src) = source.take() else {
            if !said_hung {
                warn!(sensor = name, "read still hung, skipping");
                said_hung = true;
            }
            continue;
        };
        if let Some(committed) = previous.take() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = committed => {} // an error means the committer is gone: stopping anyway
            }
        }
        let deadline = tokio::time::Instant::now() + read_timeout;
        // A command runs as a child process, not on the blocking pool, and its own timeout
        // kills it: it needs no slot (nor should it queue behind a thousand file reads).
        let slot = if matches!(src, Source::Command(_)) {
            Ok(Ok(None))
        } else {
            tokio::select! {
                _ = stop.cancelled() => return,
                s = tokio::time::timeout_at(deadline, READ_SLOT.acquire()) => s.map(|r| r.map(Some)),
            }
        };
        let result = match slot {
            Ok(Ok(slot)) => {
                let mut read = tokio::spawn(async move {
                    let _slot = slot;
                    let r = src.read().await;
                    (src, r)
                });
                tokio::select! {
                    // Aborting is fine: a command child is killed on drop; a blocking read
                    // goes on in its thread and gives its slot back when it returns.
                    _ = stop.cancelled() => return abandon(Some(read)),
                    r = tokio::time::timeout_at(deadline, &mut read) => match r {
                        Ok(Ok((back, r))) => {
                            source = Some(back);
                            r
                        }
                        Ok(Err(_)) => {
                            // The read panicked: start again from the config's source.
                            source = Some(fresh.clone());
                            Err(ReadError::new(Cause::Internal, "sensor read panicked"))
                        }
                        Err(_) => {
                            hung = Some(read);
                            Err(ReadError::new(Cause::Timeout, format!("no answer within {read_timeout:?}: the read is abandoned")))
                        }
                    },
                }
            }
            Ok(Err(_)) => return, // the semaphore is never closed
            Err(_) => {
                source = Some(src);
                Err(ReadError::new(
                    Cause::Timeout,
                    format!(
                        "no read slot free within {read_timeout:?}: {READ_SLOTS} reads are hung"
                    ),
                ))
            }
        };
        let taken = SystemTime::now();
        let value = result.and_then(|raw| calibrate(&sensor, raw));
        // An average can overflow even when every reading in it is finite.
        let outcome = value.and_then(|value| {
            filter
                .push((value, taken), Instant::now())
                .map(|outcome| (value, outcome))
        });
        match outcome {
            Ok((value, outcome)) => {
                ever_ok = true;
                health.ok();
                if throttle.recovered() {
                    info!(sensor = name, value, "sensor recovered");
                }
                stats.readings.fetch_add(1, Ordering::Relaxed);
                if let Some(spike) = outcome.dropped_spike
                    && let Some(held_back) = spikes.admit("spike")
                {
                    info!(
                        sensor = name,
                        spike, held_back, "dropped a lone reading that jumped more than max_step"
                    );
                }
                for (value, taken) in outcome.publish {
                    let (done, committed) = oneshot::channel();
                    previous = Some(committed);
                    let reading = Reading {
                        sensor: sensor.clone(),
                        value,
                        taken,
                        committed: Some(done),
                    };
                    if tx.send(reading).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                if stop.is_cancelled() {
                    // Stopping: a read cut short by the stop is no failure of the sensor.
                    return;
                }
                if !ever_ok || !error.is_transient() {
                    health.failing();
                }
                stats.sensor_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut by_name) = stats.errors_by_sensor.lock() {
                    *by_name.entry(sensor.name.clone()).or_default() += 1;
                }
                log_failure(&mut throttle, name, &error);
                if let Some(after) = error.retry_after().filter(|a| *a < sensor.interval) {
                    ticker.reset_after(after);
                }
            }
        }
    }
}

/// Logs a failed read. Throttled by cause, not by message: the message may quote a value that
/// changes every read (`value 61.3 is outside ...`), which would make every one "new" and let
/// journald's rate limit drop the lines that matter. The message goes in the `detail` field.
fn log_failure(throttle: &mut Throttle, name: &str, error: &ReadError) {
    let cause = error.cause().as_str();
    if error.is_transient() {
        debug!(sensor = name, cause, detail = %error, "sensor read failed (expected now and then)");
        return;
    }
    match throttle.admit(cause) {
        Some(0) => {
            warn!(sensor = name, cause, detail = %error, "sensor read failed; retrying on schedule")
        }
        Some(held_back) => {
            warn!(sensor = name, cause, detail = %error, held_back, "sensor read still failing; retrying on schedule")
        }
        None => {}
    }
}

/// A sensor task's entry in [`crate::health::Health`]; removed when the task ends.
struct HealthGuard {
    stats: Arc<Stats>,
    name: String,
    task: u64,
}

impl HealthGuard {
    fn new(stats: Arc<Stats>, name: String) -> HealthGuard {
        let task = stats.health.task();
        HealthGuard { stats, name, task }
    }

    fn failing(&self) {
        self.stats.health.failing(&self.name, self.task);
    }

    fn ok(&self) {
        self.stats.health.ok(&self.name, self.task);
    }
}

impl Drop for HealthGuard {
    fn drop(&mut self) {
        self.ok();
    }
}

/// A sensor stopping: a read still in flight is cancelled (a command's child is killed).
fn abandon(read: Option<InFlight>) {
    if let Some(read) = read {
        read.abort();
    }
}

/// How long one read may take before it is abandoned.
pub(crate) fn read_timeout(spec: &SourceSpec) -> Duration {
    match spec {
        SourceSpec::Command { timeout, .. } => *timeout + Duration::from_secs(5),
        _ => READ_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::sensor;

    /// Runs `f` with a subscriber that captures formatted events; returns the captured text.
    fn captured(f: impl FnOnce()) -> String {
        use std::sync::Mutex;
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_value_that_changes_every_read_logs_one_warning_per_cause() {
        let s = sensor("min = -40\nmax = 60");
        let log = captured(|| {
            let mut throttle = Throttle::default();
            for i in 0..20 {
                let err = calibrate(&s, 61.0 + f64::from(i) / 10.0).unwrap_err();
                log_failure(&mut throttle, "t", &err);
            }
            // Another cause is news at once; its detail and cause are fields.
            let err = ReadError::new(Cause::NotANumber, "/x: expected a number, got \"abc\"");
            log_failure(&mut throttle, "t", &err);
        });
        let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 2, "{log}");
        assert!(warns[0].contains("cause=\"out_of_range\""), "{}", warns[0]);
        assert!(
            warns[0].contains("detail=value 61 is outside"),
            "{}",
            warns[0]
        );
        assert!(warns[1].contains("cause=\"not_a_number\""), "{}", warns[1]);
        assert!(warns[1].contains("held_back=19"), "{}", warns[1]);
    }
}
