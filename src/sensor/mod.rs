//! Sensor sources: what to read ([`SourceSpec`]) and the [`Source`] that reads it, per kind.
//!
//! One file per kind behind the [`Source`] enum; each read yields one raw value.

pub mod command;
pub mod ds18b20;
mod error;
pub mod file;
pub mod hwmon;
pub mod iio;
mod sysfs;
pub mod system;
mod text;
pub mod thermal;

pub use error::{Cause, ParseError, ReadError};
pub(crate) use sysfs::{
    ATTR_MAX, bounded_error, find_by_attr, parse_attr, read_attr, read_bounded,
};
pub(crate) use text::{excerpt, first_number};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to read, as resolved from one `[[sensor]]` table of the config.
///
/// Values are returned in the unit a user expects (°C, %, hPa, V ...), before the
/// per-sensor calibration (`scale`, `offset`) and plausibility bounds that the scheduler applies.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A DS18B20 (or other w1_therm) thermometer: an explicit `w1_slave` path, or a device id
    /// looked up as `<sysfs_root>/bus/w1/devices/<device>/w1_slave`.
    Ds18b20 {
        path: Option<PathBuf>,
        device: Option<String>,
    },
    /// An IIO device found by the content of its `name` file, and a channel such as `temp`,
    /// `humidityrelative` or `pressure`.
    Iio { device: String, channel: String },
    /// A hwmon chip found by its `name` file, and an input such as `temp1`.
    Hwmon { chip: String, input: String },
    /// A thermal zone found by its `type` file, e.g. `cpu-thermal`.
    Thermal { zone: String },
    /// The first number in a file.
    File { path: PathBuf },
    /// The first number on the stdout of a command run without a shell.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// The machine's own health from procfs/sysfs (`procfs_root` from the config's top level).
    System {
        metric: system::Metric,
        procfs_root: PathBuf,
    },
}

/// A configured sensor, ready to be read.
#[derive(Debug, Clone)]
pub enum Source {
    Ds18b20(ds18b20::Ds18b20),
    Iio(iio::Iio),
    Hwmon(hwmon::Hwmon),
    Thermal(thermal::Thermal),
    File(file::FileSource),
    Command(command::CommandSource),
    System(system::System),
}

impl Source {
    /// Never fails: lookups (device by name etc.) happen at read time, so a sensor that is
    /// absent at start can appear later.
    pub fn new(spec: SourceSpec, sysfs_root: &Path) -> Source {
        match spec {
            SourceSpec::Ds18b20 { path, device } => {
                Source::Ds18b20(ds18b20::Ds18b20::new(path, device, sysfs_root))
            }
            SourceSpec::Iio { device, channel } => {
                Source::Iio(iio::Iio::new(device, channel, sysfs_root))
            }
            SourceSpec::Hwmon { chip, input } => {
                Source::Hwmon(hwmon::Hwmon::new(chip, input, sysfs_root))
            }
            SourceSpec::Thermal { zone } => {
                Source::Thermal(thermal::Thermal::new(zone, sysfs_root))
            }
            SourceSpec::File { path } => Source::File(file::FileSource::new(path)),
            SourceSpec::Command { argv, timeout } => {
                Source::Command(command::CommandSource::new(argv, timeout))
            }
            SourceSpec::System {
                metric,
                procfs_root,
            } => Source::System(system::System::new(metric, &procfs_root, sysfs_root)),
        }
    }

    /// One reading, in the unit given by [`Source::unit`]. Blocking sysfs reads run on
    /// tokio's blocking pool, so a slow sensor never stalls the async runtime.
    pub async fn read(&mut self) -> Result<f64, ReadError> {
        match self {
            Source::Ds18b20(s) => s.read().await,
            Source::Iio(s) => s.read().await,
            Source::Hwmon(s) => s.read().await,
            Source::Thermal(s) => s.read().await,
            Source::File(s) => s.read().await,
            Source::Command(s) => s.read().await,
            Source::System(s) => s.read().await,
        }
    }

    /// Unit of the value read; `None` when unknown (file and command sources, unknown channels).
    pub fn unit(&self) -> Option<&'static str> {
        match self {
            Source::Ds18b20(_) | Source::Thermal(_) => Some("°C"),
            Source::Iio(s) => s.unit(),
            Source::Hwmon(s) => s.unit(),
            Source::System(s) => s.unit(),
            Source::File(_) | Source::Command(_) => None,
        }
    }
}

/// Runs a blocking read on tokio's blocking pool (sysfs reads can take ~750 ms for a DS18B20).
pub(crate) async fn blocking<F>(read: F) -> Result<f64, ReadError>
where
    F: FnOnce() -> Result<f64, ReadError> + Send + 'static,
{
    match tokio::task::spawn_blocking(read).await {
        Ok(result) => result,
        // Our own fixed text, not the JoinError's (it holds a task id): the detail stays the same.
        Err(e) if e.is_panic() => Err(ReadError::new(Cause::Internal, "sensor read panicked")),
        Err(_) => Err(ReadError::new(Cause::Internal, "sensor read was cancelled")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `content` to `root/rel`, creating parent directories (fake sysfs trees).
    pub(crate) fn put(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    #[tokio::test]
    async fn source_units_and_dispatch() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "v", "temp=41.2'C");
        let spec = SourceSpec::File {
            path: tmp.path().join("v"),
        };
        let mut s = Source::new(spec, tmp.path());
        assert_eq!(s.unit(), None);
        assert_eq!(s.read().await, Ok(41.2));
        let root = tmp.path();
        let unit = |spec| Source::new(spec, root).unit();
        let ds = SourceSpec::Ds18b20 {
            path: None,
            device: Some("28-1".into()),
        };
        assert_eq!(unit(ds), Some("°C"));
        assert_eq!(
            unit(SourceSpec::Thermal {
                zone: "cpu-thermal".into()
            }),
            Some("°C")
        );
        let iio = SourceSpec::Iio {
            device: "bme280".into(),
            channel: "pressure".into(),
        };
        assert_eq!(unit(iio), Some("hPa"));
        let hw = SourceSpec::Hwmon {
            chip: "x".into(),
            input: "fan1".into(),
        };
        assert_eq!(unit(hw), Some("RPM"));
        let cmd = SourceSpec::Command {
            argv: vec!["true".into()],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(unit(cmd), None);
    }
}
