//! The `system` kind: the machine's own health, read from procfs and sysfs.
//!
//! Load, memory, disk, uptime, CPU temperature, the Pi's under-voltage and throttling flags,
//! Wi-Fi signal.

mod metric;
pub(crate) mod parse;

pub use metric::{METRICS, Metric, MetricError};

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::CommandSource;
use super::{
    ATTR_MAX, Cause, ParseError, ReadError, blocking, bounded_error, find_by_attr, read_attr,
    read_bounded,
};

/// `/proc/meminfo` is about 1.5 KiB, `/proc/net/wireless` a few lines per interface.
const PROC_MAX: u64 = 64 * 1024;
/// `vcgencmd` answers in milliseconds; it is only the fallback where sysfs has no
/// `get_throttled`.
const VCGENCMD_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured `system` sensor.
#[derive(Debug, Clone)]
pub struct System {
    metric: Metric,
    proc: PathBuf,
    sys: PathBuf,
    /// The command asked when sysfs has no `get_throttled` (tests put a script here).
    fallback: Vec<String>,
}

impl System {
    pub(crate) fn new(metric: Metric, procfs_root: &Path, sysfs_root: &Path) -> Self {
        System {
            metric,
            proc: procfs_root.to_owned(),
            sys: sysfs_root.to_owned(),
            fallback: vec!["vcgencmd".to_owned(), "get_throttled".to_owned()],
        }
    }

    pub fn unit(&self) -> Option<&'static str> {
        self.metric.unit()
    }

    pub async fn read(&mut self) -> Result<f64, ReadError> {
        if let Some(mask) = flag_mask(&self.metric) {
            let bits = self.throttled_bits().await?;
            return Ok(if bits & mask != 0 { 1.0 } else { 0.0 });
        }
        let this = self.clone();
        blocking(move || this.read_blocking()).await
    }

    fn read_blocking(&self) -> Result<f64, ReadError> {
        let proc = |rel: &str| {
            let path = self.proc.join(rel);
            let text = read_bounded(&path, PROC_MAX).map_err(|e| bounded_error(&path, &e))?;
            Ok::<_, ReadError>((path, text))
        };
        let bad = |path: &Path, msg: ParseError| {
            ReadError::new(Cause::NotANumber, format!("{}: {msg}", path.display()))
        };
        match &self.metric {
            Metric::Load1 | Metric::Load5 | Metric::Load15 => {
                let (path, text) = proc("loadavg")?;
                let index = self.metric.index();
                parse::loadavg(&text, index).map_err(|m| bad(&path, m))
            }
            Metric::MemoryAvailable | Metric::MemoryUsed => {
                let (path, text) = proc("meminfo")?;
                let (total, available) = parse::meminfo(&text).map_err(|m| bad(&path, m))?;
                Ok(match self.metric {
                    Metric::MemoryAvailable => available / 1024.0,
                    _ => (total - available) / total * 100.0,
                })
            }
            Metric::Uptime => {
                let (path, text) = proc("uptime")?;
                parse::loadavg(&text, 0).map_err(|m| bad(&path, m))
            }
            Metric::WifiSignal { interface } => {
                let (path, text) = proc("net/wireless").map_err(|e| {
                    if e.cause() == Cause::NotFound {
                        // The file exists once a wireless driver is loaded.
                        ReadError::new(Cause::NotFound, format!("{e} (no Wi-Fi on this machine?)"))
                    } else {
                        e
                    }
                })?;
                parse::wireless_level(&text, interface.as_deref()).map_err(|m| {
                    ReadError::new(Cause::NotFound, format!("{}: {m}", path.display()))
                })
            }
            Metric::DiskUsed { path } => disk_used(path),
            Metric::CpuTemperature => cpu_temperature(&self.sys.join("class/thermal")),
            _ => unreachable!("flags are read in read()"),
        }
    }

    /// The firmware's bits from sysfs when the kernel exposes them, else from `vcgencmd`.
    async fn throttled_bits(&self) -> Result<u32, ReadError> {
        let sys = self.sys.clone();
        let from_sysfs = tokio::task::spawn_blocking(move || read_throttled_attr(&sys))
            .await
            .map_err(|_| ReadError::new(Cause::Internal, "sensor read panicked"))??;
        if let Some(bits) = from_sysfs {
            return Ok(bits);
        }
        // Older kernels, or a firmware driver without the attribute: ask the firmware through
        // vcgencmd, bounded like a command sensor (timeout, 4 KiB of output, its own group).
        let out = CommandSource::new(self.fallback.clone(), VCGENCMD_TIMEOUT)
            .output()
            .await
            .map_err(|e| {
                ReadError::new(
                    Cause::NotFound,
                    format!(
                        "no get_throttled under {} (not a Raspberry Pi?), and vcgencmd failed: {e}",
                        self.sys.display()
                    ),
                )
            })?;
        parse::throttled(&out)
            .map_err(|m| ReadError::new(Cause::NotANumber, format!("vcgencmd get_throttled: {m}")))
    }
}

/// The bits of `get_throttled` a flag metric tests (Raspberry Pi documentation,
/// "get_throttled": bit 0 under-voltage, 1 arm frequency capped, 2 throttled, 3 soft
/// temperature limit; bits 16-19 the same "has occurred since boot").
fn flag_mask(m: &Metric) -> Option<u32> {
    match m {
        Metric::UnderVoltage => Some(1),
        Metric::UnderVoltageSinceBoot => Some(1 << 16),
        Metric::Throttled => Some(0b1110),
        Metric::ThrottledSinceBoot => Some(0b1110 << 16),
        _ => None,
    }
}

/// The bits from sysfs; `None` when this kernel does not expose them.
fn read_throttled_attr(sys: &Path) -> Result<Option<u32>, ReadError> {
    let Some(path) = throttled_attr(sys) else {
        return Ok(None);
    };
    let text = read_bounded(&path, ATTR_MAX).map_err(|e| bounded_error(&path, &e))?;
    parse::throttled(&text)
        .map(Some)
        .map_err(|m| ReadError::new(Cause::NotANumber, format!("{}: {m}", path.display())))
}

/// Where the kernel's Raspberry Pi firmware driver exposes `get_throttled` (added by
/// "firmware/raspberrypi: Add a get_throttled sysfs file", raspberrypi/linux, 2018; it prints
/// the bits with `"%x\n"`). Pi 1-4 have the device at `soc/soc:firmware`; elsewhere it is
/// found through the driver's directory, which links every device it is bound to.
fn throttled_attr(sys: &Path) -> Option<PathBuf> {
    let classic = sys.join("devices/platform/soc/soc:firmware/get_throttled");
    if classic.exists() {
        return Some(classic);
    }
    let driver = sys.join("bus/platform/drivers/raspberrypi-firmware");
    let mut devices: Vec<PathBuf> = std::fs::read_dir(driver)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("get_throttled"))
        .filter(|p| p.exists())
        .collect();
    devices.sort();
    devices.into_iter().next()
}

/// The CPU's temperature without knowing what the board calls its zone: the first zone whose
/// type names the CPU (`cpu-thermal` on a Pi, `x86_pkg_temp` on a PC), else zone 0.
fn cpu_temperature(class_dir: &Path) -> Result<f64, ReadError> {
    for wanted in [
        "cpu-thermal",
        "cpu_thermal",
        "x86_pkg_temp",
        "soc_thermal",
        "soc-thermal",
    ] {
        if let Ok(dir) = find_by_attr("thermal zone", class_dir, "thermal_zone", &["type"], wanted)
        {
            return Ok(read_attr(&dir.join("temp"))? / 1000.0);
        }
    }
    let zone0 = class_dir.join("thermal_zone0/temp");
    if zone0.exists() {
        return Ok(read_attr(&zone0)? / 1000.0);
    }
    Err(ReadError::new(
        Cause::NotFound,
        format!("no thermal zone under {}", class_dir.display()),
    ))
}

/// The used share of the file system holding `path`, as `df` shows it: used / (used +
/// available to unprivileged users).
fn disk_used(path: &Path) -> Result<f64, ReadError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        ReadError::new(
            Cause::Config,
            format!("{}: path has a NUL byte", path.display()),
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(ReadError::io(path, &std::io::Error::last_os_error()));
    }
    let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
    let avail = st.f_bavail as f64;
    if used + avail <= 0.0 {
        return Err(ReadError::new(
            Cause::NotANumber,
            format!("{}: the file system reports no blocks", path.display()),
        ));
    }
    Ok(used / (used + avail) * 100.0)
}

#[cfg(test)]
mod tests;
