//! The set of sensor tasks, and the [`Reading`] they hand to the committer.
//!
//! Tasks are started, stopped and restarted as the config asks: a reload applies only the
//! differences.

mod calibrate;
mod task;

pub(crate) use calibrate::calibrate;
pub(crate) use task::read_timeout;
pub use task::{READ_SLOTS, run_sensor};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::Stats;
use crate::config::SensorConfig;
use crate::sensor::Source;

/// The running sensor tasks, by name. Reloading the config applies only the differences:
/// an unchanged sensor keeps its schedule.
pub struct Sensors {
    tx: mpsc::Sender<Reading>,
    stats: Arc<Stats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    running: HashMap<String, (SensorConfig, PathBuf, CancellationToken)>,
    /// After the first `apply`, changes are worth a log line.
    started: bool,
}

impl Sensors {
    /// Readings go to `tx`; the committer ends once this and every task is gone.
    pub fn new(
        tx: mpsc::Sender<Reading>,
        stats: Arc<Stats>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Sensors {
        Sensors {
            tx,
            stats,
            tracker,
            shutdown,
            running: HashMap::new(),
            started: false,
        }
    }

    /// Starts, stops and restarts tasks so that exactly `wanted` run; logs each change.
    pub fn apply(&mut self, wanted: &[SensorConfig], sysfs_root: &Path) {
        self.stats.health.set_sensors(wanted.len());
        let names: HashSet<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        self.running.retain(|name, (_, _, stop)| {
            let keep = names.contains(name.as_str());
            if !keep {
                stop.cancel();
                info!(sensor = %name, "sensor removed");
            }
            keep
        });
        for cfg in wanted {
            let root = sysfs_root.to_owned();
            match self.running.get(&cfg.name) {
                Some((old, old_root, _)) if *old == *cfg && *old_root == root => continue,
                Some((_, _, stop)) => {
                    stop.cancel();
                    info!(sensor = %cfg.name, "sensor changed: restarting it");
                }
                None if self.started => info!(sensor = %cfg.name, "sensor added"),
                None => {}
            }
            let stop = self.shutdown.child_token();
            let source = Source::new(cfg.source.clone(), &root);
            self.tracker.spawn(run_sensor(
                cfg.clone(),
                source,
                self.tx.clone(),
                self.stats.clone(),
                stop.clone(),
            ));
            self.running
                .insert(cfg.name.clone(), (cfg.clone(), root, stop));
        }
        self.started = true;
    }

    /// Stops every sensor; the reading channel closes once their tasks are done.
    pub fn stop_all(self) {
        for (_, _, stop) in self.running.values() {
            stop.cancel();
        }
    }
}

/// A calibrated value, with the sensor it came from and when it was taken.
#[derive(Debug)]
pub struct Reading {
    pub sensor: Arc<SensorConfig>,
    pub value: f64,
    pub taken: SystemTime,
    /// Fired by the committer once the reading is committed (or accepted into a batch held
    /// by `commit_interval`). The sensor waits for it before its next read, so a crash can
    /// cost at most one uncommitted reading per sensor even when an fsync is slower than the
    /// interval; a slow disk delays reads instead.
    pub committed: Option<oneshot::Sender<()>>,
}

/// A sensor with every default and `extra` lines, for the tests of the schedule.
#[cfg(test)]
fn sensor(extra: &str) -> SensorConfig {
    let text =
        format!("[[sensor]]\nname='t'\nkind='file'\npath='/x'\ninterval='1s'\ntopic='t'\n{extra}");
    crate::config::Config::parse(&text, Path::new("t.toml"))
        .unwrap()
        .sensors
        .remove(0)
}
