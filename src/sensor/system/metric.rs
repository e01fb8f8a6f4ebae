//! The figures the `system` kind reads, with their units and Home Assistant classes.

use std::path::PathBuf;

/// Which figure a `system` sensor reads (`metric = "..."` in the config).
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// The 1, 5 and 15 minute load averages.
    Load1,
    Load5,
    Load15,
    /// `MemAvailable`, in MiB.
    MemoryAvailable,
    /// The share of memory not available, in %.
    MemoryUsed,
    /// The share of the file system holding `path` that is used, in % (as `df` counts it).
    DiskUsed {
        path: PathBuf,
    },
    /// Seconds since boot.
    Uptime,
    /// The CPU's thermal zone, whatever this board calls it.
    CpuTemperature,
    /// The Pi firmware's flags, 1 or 0: under-voltage now, and since boot.
    UnderVoltage,
    UnderVoltageSinceBoot,
    /// Throttled, frequency capped or at the soft temperature limit now, and since boot.
    Throttled,
    ThrottledSinceBoot,
    /// The signal level in dBm of `interface` (the first Wi-Fi interface when `None`).
    WifiSignal {
        interface: Option<String>,
    },
}

/// Every metric name, as written in the config.
pub const METRICS: &[&str] = &[
    "load1",
    "load5",
    "load15",
    "memory_available",
    "memory_used",
    "disk_used",
    "uptime",
    "cpu_temperature",
    "under_voltage",
    "under_voltage_since_boot",
    "throttled",
    "throttled_since_boot",
    "wifi_signal",
];

/// Why a `[[sensor]]` table's `metric` (with its `path` and `interface`) is refused. Nobody
/// branches on it: the config places it at the key in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MetricError(String);

impl Metric {
    /// The metric called `name`, with its `path` (disk_used, default `/`) and `interface`
    /// (wifi_signal); `Err` names the known metrics.
    pub fn parse(
        name: &str,
        path: Option<PathBuf>,
        interface: Option<String>,
    ) -> Result<Metric, MetricError> {
        let m = match name {
            "load1" => Metric::Load1,
            "load5" => Metric::Load5,
            "load15" => Metric::Load15,
            "memory_available" => Metric::MemoryAvailable,
            "memory_used" => Metric::MemoryUsed,
            "disk_used" => Metric::DiskUsed {
                path: path.clone().unwrap_or_else(|| PathBuf::from("/")),
            },
            "uptime" => Metric::Uptime,
            "cpu_temperature" => Metric::CpuTemperature,
            "under_voltage" => Metric::UnderVoltage,
            "under_voltage_since_boot" => Metric::UnderVoltageSinceBoot,
            "throttled" => Metric::Throttled,
            "throttled_since_boot" => Metric::ThrottledSinceBoot,
            "wifi_signal" => Metric::WifiSignal {
                interface: interface.clone(),
            },
            _ => {
                return Err(MetricError(format!(
                    "unknown metric {name:?}: use one of {}",
                    METRICS.join(", ")
                )));
            }
        };
        if path.is_some() && !matches!(m, Metric::DiskUsed { .. }) {
            return Err(MetricError(format!(
                "key `path` only applies to metric \"disk_used\", not {name:?}"
            )));
        }
        if interface.is_some() && !matches!(m, Metric::WifiSignal { .. }) {
            return Err(MetricError(format!(
                "key `interface` only applies to metric \"wifi_signal\", not {name:?}"
            )));
        }
        Ok(m)
    }

    /// The name in the config.
    pub fn name(&self) -> &'static str {
        METRICS[self.index()]
    }

    pub(super) fn index(&self) -> usize {
        match self {
            Metric::Load1 => 0,
            Metric::Load5 => 1,
            Metric::Load15 => 2,
            Metric::MemoryAvailable => 3,
            Metric::MemoryUsed => 4,
            Metric::DiskUsed { .. } => 5,
            Metric::Uptime => 6,
            Metric::CpuTemperature => 7,
            Metric::UnderVoltage => 8,
            Metric::UnderVoltageSinceBoot => 9,
            Metric::Throttled => 10,
            Metric::ThrottledSinceBoot => 11,
            Metric::WifiSignal { .. } => 12,
        }
    }

    pub fn unit(&self) -> Option<&'static str> {
        match self {
            Metric::MemoryAvailable => Some("MiB"),
            Metric::MemoryUsed | Metric::DiskUsed { .. } => Some("%"),
            Metric::Uptime => Some("s"),
            Metric::CpuTemperature => Some("°C"),
            Metric::WifiSignal { .. } => Some("dBm"),
            _ => None,
        }
    }

    /// A flag (1 or 0): Home Assistant shows it as a problem binary sensor.
    pub fn is_flag(&self) -> bool {
        matches!(
            self,
            Metric::UnderVoltage
                | Metric::UnderVoltageSinceBoot
                | Metric::Throttled
                | Metric::ThrottledSinceBoot
        )
    }

    /// Home Assistant's device class for it (sensor or, for flags, binary sensor classes).
    pub fn device_class(&self) -> Option<&'static str> {
        match self {
            Metric::MemoryAvailable => Some("data_size"),
            Metric::Uptime => Some("duration"),
            Metric::CpuTemperature => Some("temperature"),
            Metric::WifiSignal { .. } => Some("signal_strength"),
            m if m.is_flag() => Some("problem"),
            _ => None,
        }
    }
}
