//! telemetryd: reads sensors on a schedule and publishes them over MQTT without losing any.
//!
//! The pipeline: one [`schedule`] task per sensor → the [`committer`] (numbers, renders and
//! group-commits readings into the [`outbox`]) → the [`mqtt`] feeder, which publishes from the
//! outbox and deletes a reading only when its PUBACK arrives.
//!
//! # Errors
//!
//! One policy for the whole crate, so that a `Result` says what its caller may do with it:
//!
//! - **An enum (thiserror) where a caller branches on the kind.** Retry, give up, log at
//!   which level, count under which name: the caller must be able to match, not read text. A
//!   failed reading is a [`sensor::ReadError`] with a stable [`sensor::Cause`]: the log
//!   throttle counts by cause (the message may quote a value that changes every read), and a
//!   transient one is retried sooner and logged at debug.
//! - **A small error struct (thiserror) where nobody branches but the reason travels on**:
//!   the caller adds where it happened. A parser of outside text gives a
//!   [`sensor::ParseError`] that the sensor prefixes with the path; a setting a table's
//!   validator refuses ([`homeassistant::OptionError`], [`sensor::system::MetricError`]) is
//!   placed by the config at its key in the file.
//! - **A located `config::ConfigError` for config text.** It names the file, line and column
//!   and the key, says what was expected and shows the line, because a person fixes it in an
//!   editor. The daemon exits 78 on it (systemd does not restart it into the same error); a
//!   reload logs it and keeps the running config.
//! - **`anyhow::Error` with `.context(..)` at task boundaries and in `main`**, where the
//!   caller only logs it, exits or stops in order, and never branches: `{e:#}` prints the
//!   chain, what was being done first. A type per call site would add nothing.
//! - **Never `String` as an error type.** It cannot be matched, has no `source()`, and
//!   invites callers to parse messages (the MQTT connection task had to strip the digits
//!   from them to tell causes apart).
//!
//! Messages are for people, and tests and users read them: a new wording is a behaviour
//! change.

pub mod check;
pub mod committer;
pub mod config;
pub mod discover;
pub mod filter;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod homeassistant;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod payload;
pub mod sandbox;
pub mod schedule;
pub mod sensor;
pub mod service;
pub mod signals;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;
use crate::mqtt::Publisher;
use crate::outbox::Outbox;
use crate::schedule::Sensors;

/// Counters shared by the tasks, for the periodic summary (and later, status reporting).
#[derive(Debug, Default)]
pub struct Stats {
    pub readings: AtomicU64,
    pub sensor_errors: AtomicU64,
    /// QoS 1 readings acknowledged by the broker plus QoS 0 readings sent.
    pub published: AtomicU64,
    /// QoS 0 readings discarded: taken while the broker was not connected, or more at once
    /// than the publisher could take.
    pub live_dropped: AtomicU64,
    /// QoS 1 readings older than `[mqtt] max_age`, deleted unsent.
    pub expired: AtomicU64,
    /// QoS 1 readings an MQTT 5 broker refused for good, moved to the store's quarantine.
    pub refused: AtomicU64,
    pub connected: AtomicBool,
    /// The server of `[mqtt] servers` we are connected to, or trying (`host:port`).
    server: std::sync::Mutex<String>,
    /// Progress of the committer and the MQTT connection task, for the watchdog.
    pub committer_beat: service::Beat,
    pub mqtt_beat: service::Beat,
    /// Successful connections since start (so reconnects are this minus one).
    pub connects: AtomicU64,
    /// Failed reads per sensor name, for the self-metrics.
    pub errors_by_sensor: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Which sensors are failing now, for STATUS and the summary.
    pub health: health::Health,
}

impl Stats {
    /// The server we are connected to or trying next.
    pub fn set_server(&self, server: &impl std::fmt::Display) {
        if let Ok(mut s) = self.server.lock() {
            *s = server.to_string();
        }
    }

    /// `host:port` of the current server ("" before the first attempt).
    pub fn server(&self) -> String {
        self.server.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// How many readings may wait between the sensors and the committer.
const READING_QUEUE: usize = 1024;
/// QoS 0 readings waiting for the publisher: a burst of many sensors read at the same moment
/// waits here while rumqttc's channel takes its share (about 100); beyond this they are
/// dropped and counted (`qos0_dropped`). About 150 bytes each.
const LIVE_QUEUE: usize = 1024;

/// A way to ask the running daemon to reread its config (SIGHUP, in `main`).
pub struct Reloads {
    pub path: PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// The settings of every property test: failing cases are saved beside the test's source
/// file (`<file>.proptest-regressions`, replayed first next time), not in a folder at the top.
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, FileFailurePersistence};
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// `t` in milliseconds since the Unix epoch, as readings and stats carry it (0 before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Runs the daemon until `shutdown` is cancelled, then stops in order: sensors first, then
/// the committer (committing what they produced), then the publisher after a grace period for
/// in-flight acks, and finally a flush of the store. With `reloads`, each request rereads the
/// config and applies what changed; an invalid config is logged and the old one kept.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: Option<Reloads>,
) -> anyhow::Result<()> {
    service::uptime(); // starts the uptime clock
    let buffer = config.buffer.clone();
    let outbox =
        tokio::task::spawn_blocking(move || Outbox::open(&buffer.path, buffer.max_messages))
            .await
            .context("opening the store")??;
    let outbox = Arc::new(outbox);
    info!(path = %config.buffer.path.display(), buffered = outbox.depth(), "store opened");

    let stats = Arc::new(Stats::default());
    let tracker = TaskTracker::new();
    let (reading_tx, reading_rx) = mpsc::channel(READING_QUEUE);
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
    let (commit_interval, commit_interval_rx) = watch::channel(config.buffer.commit_interval);
    tracker.spawn(committer::run(
        reading_rx,
        outbox.clone(),
        live_tx.clone(),
        stats.clone(),
        commit_interval_rx,
    ));
    let mut sensors = Sensors::new(reading_tx, stats.clone(), tracker.clone(), shutdown.clone());
    sensors.apply(&config.sensors, &config.sysfs_root);
    let discovery = homeassistant::discovery(&config);
    // None only after a failed stop at a reload, on the way out.
    let mut publisher = Some(Publisher::start(
        &config.mqtt,
        outbox.clone(),
        live_rx,
        discovery,
        stats.clone(),
    ));
    let mut failed: Option<anyhow::Error> = None;
    let mut side = SideTasks::start(&config, &outbox, &stats, &live_tx, &tracker);

    if config.sensors.is_empty() {
        tracing::warn!("no [[sensor]] configured: only the stored backlog will be published");
    }
    info!(
        sensors = config.sensors.len(),
        servers = %list_servers(&config.mqtt.servers),
        client_id = %config.mqtt.client_id,
        "telemetryd {} started",
        env!("CARGO_PKG_VERSION")
    );
    service::ready();

    let mut config = config;
    let (_never, idle) = mpsc::channel(1);
    let (path, mut requests) = match reloads {
        Some(r) => (Some(r.path), r.requests),
        None => (None, idle),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = requests.recv() => {
                let Some(path) = &path else { continue };
                service::reloading();
                match load_for_reload(path).await {
                    Err(e) => error!("reload failed, still running the previous config: {e}"),
                    Ok(new) => {
                        info!(path = %path.display(), "reloading the config");
                        for warning in &new.warnings {
                            tracing::warn!("{}: {warning}", path.display());
                        }
                        logging::set_level(&new.log_level);
                        sensors.apply(&new.sensors, &new.sysfs_root);
                        let discovery = homeassistant::discovery(&new);
                        if new.mqtt != config.mqtt {
                            info!("MQTT settings changed: reconnecting");
                            let live = match publisher.take().expect("running").stop().await {
                                Ok(live) => live,
                                Err(e) => {
                                    // Its QoS 0 receiver is lost with it: stop in order and
                                    // exit with the error, for systemd to restart us.
                                    failed = Some(e);
                                    break;
                                }
                            };
                            publisher = Some(Publisher::start(&new.mqtt, outbox.clone(), live, discovery, stats.clone()));
                        } else {
                            publisher.as_ref().expect("running").set_discovery(discovery);
                        }
                        if new.buffer.path != config.buffer.path {
                            tracing::warn!(path = %new.buffer.path.display(), "a new [buffer] path takes effect after a restart");
                        }
                        outbox.set_max_messages(new.buffer.max_messages);
                        commit_interval.send_replace(new.buffer.commit_interval);
                        side.stop();
                        side = SideTasks::start(&new, &outbox, &stats, &live_tx, &tracker);
                        config = new;
                        info!(sensors = config.sensors.len(), "config reloaded");
                    }
                }
                service::ready();
            }
        }
    }

    service::stopping();
    // Sensors stop; the committer then commits what they queued and ends.
    sensors.stop_all();
    // A publisher that failed must not cost the rest of the stop (the committer's last
    // commit, the store's flush): what it had in flight is still in the store.
    if let Some(Err(e)) = match publisher {
        Some(p) => Some(p.stop().await),
        None => None,
    } {
        error!(error = %format!("{e:#}"), "the publisher failed; stopping the rest in order");
        failed.get_or_insert(e);
    }
    side.stop();
    tracker.close();
    tracker.wait().await;
    let closing = outbox.clone();
    tokio::task::spawn_blocking(move || closing.close()).await?;
    info!(buffered = outbox.depth(), "stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The most a reload waits for the config file (on a hung NFS mount, read() never returns).
const RELOAD_LOAD_LIMIT: Duration = Duration::from_secs(10);

/// Loads the config on a blocking thread, within [`RELOAD_LOAD_LIMIT`]: the runtime thread
/// keeps serving keep-alive, acks and the watchdog meanwhile. The caller only logs the error
/// and keeps the running config: anyhow.
async fn load_for_reload(path: &std::path::Path) -> anyhow::Result<Config> {
    let owned = path.to_owned();
    let load = tokio::task::spawn_blocking(move || Config::load(&owned));
    match tokio::time::timeout(RELOAD_LOAD_LIMIT, load).await {
        Ok(Ok(loaded)) => Ok(loaded?),
        Ok(Err(e)) => Err(anyhow::anyhow!("loading {} failed: {e}", path.display())),
        Err(_) => Err(anyhow::anyhow!(
            "{} could not be read within {RELOAD_LOAD_LIMIT:?}",
            path.display()
        )),
    }
}

/// The summary/metrics and systemd status tasks: restarted on reload, as their settings may change.
struct SideTasks {
    stop: CancellationToken,
}

impl SideTasks {
    fn start(
        config: &Config,
        outbox: &Arc<Outbox>,
        stats: &Arc<Stats>,
        live: &mpsc::Sender<mqtt::LiveMessage>,
        tracker: &TaskTracker,
    ) -> SideTasks {
        let stop = CancellationToken::new();
        let publish = config
            .mqtt
            .stats_topic
            .clone()
            .map(|topic| (topic, live.clone()));
        let (outbox, stats) = (outbox.clone(), stats.clone());
        tracker.spawn(metrics::run(
            config.stats_interval,
            outbox.clone(),
            stats.clone(),
            publish,
            stop.clone(),
        ));
        let stall = mqtt::stall_limit(config.mqtt.keep_alive, config.mqtt.reconnect_max);
        tracker.spawn(service::run(outbox, stats, stall, stop.clone()));
        SideTasks { stop }
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

/// `a:1883, b:1883`: the servers as the log shows them.
fn list_servers(servers: &[mqtt::servers::Server]) -> String {
    let names: Vec<String> = servers.iter().map(ToString::to_string).collect();
    names.join(", ")
}
