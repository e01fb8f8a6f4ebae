//! Sensor sources: one file per kind behind the [`Source`] enum; each read yields one raw value.

pub mod command;
pub mod ds18b20;
mod error;
pub mod file;
pub mod hwmon;
pub mod iio;
pub mod system;
pub mod thermal;

pub use error::{Cause, ParseError, ReadError};

use std::io;
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

/// Parses a sysfs attribute, which holds exactly one number (plus a newline).
pub(crate) fn parse_attr(path: &Path, text: &str) -> Result<f64, ReadError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ReadError::new(
            Cause::NotANumber,
            format!(
                "{}: expected a number, got {:?}",
                path.display(),
                excerpt(text)
            ),
        )),
    }
}

/// A sysfs attribute is at most a page; anything longer is not one (a wrong `path`).
pub(crate) const ATTR_MAX: u64 = 4096;

/// Reads at most `limit` bytes of `path` as text; longer is an error, never a partial read,
/// so a mistaken path (`/dev/zero`, a log) costs `limit` bytes of memory, not all of it.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            if limit.is_multiple_of(1024) {
                format!("more than {} KiB", limit / 1024)
            } else {
                format!("more than {limit} bytes")
            },
        ));
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Maps an error of [`read_bounded`]; an oversized file gets its own cause.
pub(crate) fn bounded_error(path: &Path, err: &io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::FileTooLarge {
        ReadError::new(
            Cause::TooMuchOutput,
            format!("{}: {err}: not a sensor value", path.display()),
        )
    } else {
        ReadError::io(path, err)
    }
}

/// Reads and parses a sysfs attribute that must exist.
pub(crate) fn read_attr(path: &Path) -> Result<f64, ReadError> {
    let text = read_bounded(path, ATTR_MAX).map_err(|e| bounded_error(path, &e))?;
    parse_attr(path, &text)
}

/// Finds the entry `<parent>/<prefix>*` whose first readable `keys` file (trimmed) equals
/// `wanted`. Kernel numbering (hwmonN, iio:deviceN ...) changes between boots and hot-plugs,
/// so the scan runs on every read instead of caching: it is a handful of tiny files.
pub(crate) fn find_by_attr(
    what: &str,
    parent: &Path,
    prefix: &str,
    keys: &[&str],
    wanted: &str,
) -> Result<PathBuf, ReadError> {
    let not_found = |detail: String| {
        ReadError::new(
            Cause::NotFound,
            format!(
                "no {what} with {} {wanted:?} under {}{detail}",
                keys[0],
                parent.display()
            ),
        )
    };
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(not_found(" (the directory does not exist)".into()));
        }
        Err(e) => return Err(ReadError::io(parent, &e)),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    // Natural order (hwmon2 before hwmon10) so duplicates resolve the same way every time.
    dirs.sort_by_key(|p| (p.as_os_str().len(), p.clone()));
    let mut seen = Vec::new();
    for dir in dirs {
        for key in keys {
            if let Ok(value) = read_bounded(&dir.join(key), ATTR_MAX) {
                let value = value.trim();
                if value == wanted {
                    return Ok(dir);
                }
                seen.push(format!("{value:?}"));
            }
        }
    }
    // Listing what exists makes a typo in the config obvious.
    if seen.is_empty() {
        Err(not_found(String::new()))
    } else {
        Err(not_found(format!(" (found: {})", seen.join(", "))))
    }
}

/// The first number in `text`: the first maximal run of the form `[+-]digits[.digits][e[+-]digits]`
/// (`.5` and `5.` included). `None` if there is none or it is not finite (e.g. `1e999`).
pub(crate) fn first_number(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut start = 0;
    while start < b.len() {
        // Only ASCII bytes are ever matched, so slicing at these indices is UTF-8 safe.
        let mut i = start;
        if b[i] == b'+' || b[i] == b'-' {
            i += 1;
        }
        let int_end = digits(i);
        let mut end = int_end;
        if end < b.len() && b[end] == b'.' {
            end = digits(end + 1);
        }
        // A mantissa needs a digit: "-", "." and "-." are not numbers.
        if end - i > 1 || int_end > i {
            if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
                let mut j = end + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                let exp_end = digits(j);
                if exp_end > j {
                    end = exp_end;
                }
            }
            return text[start..end]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite());
        }
        start += 1;
    }
    None
}

/// A short, single-line excerpt of `text` for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 60;
    let line = text.trim();
    if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX).collect::<String>())
    } else {
        line.to_string()
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

    #[test]
    fn first_number_variants() {
        assert_eq!(first_number("48.3"), Some(48.3));
        assert_eq!(first_number("-1.5e3"), Some(-1500.0));
        assert_eq!(first_number("temp=48.3'C\n"), Some(48.3));
        assert_eq!(first_number("  23125\n"), Some(23125.0));
        assert_eq!(first_number("t=-1250"), Some(-1250.0));
        assert_eq!(first_number("+7"), Some(7.0));
        assert_eq!(first_number(".5V"), Some(0.5));
        assert_eq!(first_number("5."), Some(5.0));
        assert_eq!(first_number("5.e3"), Some(5000.0));
        assert_eq!(first_number("+.5"), Some(0.5));
        assert_eq!(first_number("1.2.3"), Some(1.2));
        assert_eq!(first_number("2E-2x"), Some(0.02));
        // An "e" not followed by digits is not an exponent.
        assert_eq!(first_number("3em"), Some(3.0));
        assert_eq!(first_number("x - . 9"), Some(9.0));
        assert_eq!(first_number("µ 42 °C"), Some(42.0));
    }

    #[test]
    fn first_number_rejects_non_numbers() {
        assert_eq!(first_number(""), None);
        assert_eq!(first_number("abc"), None);
        assert_eq!(first_number("NaN inf infinity"), None);
        assert_eq!(first_number("-.e"), None);
        assert_eq!(first_number("1e999"), None);
    }

    #[test]
    fn parse_attr_is_strict() {
        let p = Path::new("/x");
        assert_eq!(parse_attr(p, "23125\n"), Ok(23125.0));
        assert_eq!(parse_attr(p, "101.343285156\n"), Ok(101.343285156));
        let err = parse_attr(p, "abc\n").unwrap_err();
        assert_eq!(err.to_string(), "/x: expected a number, got \"abc\"");
        assert!(!err.is_transient());
        assert!(parse_attr(p, "nan").is_err());
    }

    #[test]
    fn attribute_reads_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in_temp_input");
        std::fs::write(&path, format!("{:>4095}\n", 21500)).unwrap();
        assert_eq!(read_attr(&path), Ok(21500.0));
        std::fs::write(&path, format!("{:>4096}\n", 21500)).unwrap();
        let err = read_attr(&path).unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
        assert_eq!(
            err.to_string(),
            format!("{}: more than 4 KiB: not a sensor value", path.display())
        );
        // A character device that never ends (a mistaken `path`) ends at the bound.
        let err = read_attr(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
    }

    #[test]
    fn find_by_attr_matches_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, "hwmon2/name", "cpu_thermal\n");
        put(root, "hwmon10/name", "rpi_volt\n");
        put(root, "other/name", "rpi_volt\n");
        let found = find_by_attr("hwmon chip", root, "hwmon", &["name"], "rpi_volt").unwrap();
        assert_eq!(found, root.join("hwmon10"));
        let err = find_by_attr("hwmon chip", root, "hwmon", &["name"], "nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no hwmon chip with name \"nope\" under {} (found: \"cpu_thermal\", \"rpi_volt\")",
                root.display()
            )
        );
        let missing = root.join("absent");
        let err = find_by_attr("hwmon chip", &missing, "hwmon", &["name"], "x").unwrap_err();
        assert!(
            err.to_string().ends_with("(the directory does not exist)"),
            "{err}"
        );
    }

    #[test]
    fn io_error_messages_name_the_path() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            ReadError::io(Path::new("/a/b"), &e).to_string(),
            "/a/b: no such file"
        );
        let e = io::Error::from_raw_os_error(13);
        assert!(
            ReadError::io(Path::new("/a/b"), &e)
                .to_string()
                .starts_with("/a/b: ")
        );
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
