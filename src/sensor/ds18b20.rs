//! DS18B20 (and other w1_therm) 1-Wire thermometers, read through the kernel's `w1_slave` file.

use std::path::{Path, PathBuf};

use super::{ATTR_MAX, Cause, ParseError, ReadError, blocking, bounded_error, read_bounded};

/// Millidegrees the sensor reports after power-on, before any conversion completed.
const POWER_ON_RESET: i64 = 85_000;
/// Millidegrees reported when the sensor lacks power to convert (e.g. parasite power).
const INSUFFICIENT_POWER: i64 = 127_937;

#[derive(Debug, Clone)]
pub struct Ds18b20 {
    /// `None` only when the config gave neither `path` nor `device`; reported at read time
    /// because [`super::Source::new`] never fails.
    path: Option<PathBuf>,
    /// `<sysfs_root>/bus/w1/devices`: looked at when `w1_slave` is missing, to say why.
    bus: PathBuf,
}

impl Ds18b20 {
    pub(crate) fn new(path: Option<PathBuf>, device: Option<String>, sysfs_root: &Path) -> Self {
        let path = path
            .or_else(|| device.map(|d| sysfs_root.join("bus/w1/devices").join(d).join("w1_slave")));
        let bus = sysfs_root.join("bus/w1/devices");
        Ds18b20 { path, bus }
    }

    /// Reads °C. Reading `w1_slave` triggers a ~750 ms conversion, hence the blocking pool.
    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let Some(path) = self.path.clone() else {
            return Err(ReadError::new(
                Cause::Config,
                "ds18b20 sensor has neither `path` nor `device` set",
            ));
        };
        let bus = self.bus.clone();
        blocking(move || {
            let text = read_bounded(&path, ATTR_MAX).map_err(|e| {
                let err = bounded_error(&path, &e);
                match err.cause() {
                    Cause::NotFound => ReadError::new(
                        Cause::NotFound,
                        format!("{err}: {}", why_missing(&path, &bus)),
                    ),
                    _ => err,
                }
            })?;
            parse_w1_slave(&text)
                .map_err(|why| ReadError::new(Cause::BadData, format!("{}: {why}", path.display())))
        })
        .await
    }
}

/// At most this many 1-Wire device names are listed in an error, the first in name order of
/// at most `SCANNED_MAX` entries (a bus has a few dozen devices at most; sysfs could lie).
const LISTED_MAX: usize = 8;
const SCANNED_MAX: usize = 1024;

/// Why `w1_slave` is missing, in the words of someone wiring a Pi: the 1-Wire bus is off (no
/// `dtoverlay=w1-gpio`), or it is on and the thermometers on it are listed (a wrong id, or none
/// answering: wiring). `bus` is `<sysfs_root>/bus/w1/devices`.
pub(crate) fn why_missing(path: &Path, bus: &Path) -> String {
    let entries = match std::fs::read_dir(bus) {
        Ok(entries) => entries,
        Err(_) => {
            return format!(
                "1-Wire is off ({} does not exist): add the line dtoverlay=w1-gpio to \
                 /boot/firmware/config.txt (/boot/config.txt before Raspberry Pi OS bookworm) \
                 and reboot; the DS18B20's data line then goes to GPIO4",
                bus.display()
            );
        }
    };
    // The bus masters (w1_bus_master1) are listed there too; the devices are `<family>-<id>`.
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("w1_bus_master"))
        .take(SCANNED_MAX)
        .collect();
    found.sort();
    let wanted = path
        .parent()
        .and_then(Path::file_name)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    if found.is_empty() {
        return format!(
            "1-Wire is on but no device answers on it (ls {} shows none): check the wiring \
             (data to GPIO4, a 4.7 kOhm pull-up between data and 3.3 V, ground)",
            bus.display()
        );
    }
    if found.contains(&wanted) {
        // The device is there but has no w1_slave: not a thermometer, or w1_therm is not loaded.
        return format!(
            "{wanted} has no w1_slave: not a thermometer, or the w1_therm module is not loaded"
        );
    }
    let more = if found.len() > LISTED_MAX {
        ", ..."
    } else {
        ""
    };
    found.truncate(LISTED_MAX);
    format!(
        "no 1-Wire device {wanted:?}; the bus has: {}{more} (`telemetryd sensors` prints them as [[sensor]] blocks)",
        found.join(", ")
    )
}

/// Parses the two-line `w1_slave` format into °C:
/// ```text
/// 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
/// 72 01 4b 46 7f ff 0e 10 57 t=23125
/// ```
/// Errors are the reason only; the caller prefixes the path.
pub(crate) fn parse_w1_slave(text: &str) -> Result<f64, ParseError> {
    let mut lines = text.lines();
    let crc_line = lines.next().unwrap_or("").trim();
    if crc_line.is_empty() {
        return Err(ParseError::new(
            "empty reading (sensor disconnected or conversion pending?)",
        ));
    }
    if crc_line.ends_with("NO") {
        return Err(ParseError::new("CRC check failed (NO)"));
    }
    if !crc_line.ends_with("YES") {
        return Err(ParseError::new(format!(
            "unexpected first line {:?}",
            super::excerpt(crc_line)
        )));
    }
    let data_line = lines.next().unwrap_or("");
    let Some((_, t)) = data_line.split_once("t=") else {
        return Err(ParseError::new(format!(
            "no t= value in {:?}",
            super::excerpt(data_line)
        )));
    };
    let milli: i64 = t
        .trim()
        .parse()
        .map_err(|_| ParseError::new(format!("bad t= value {:?}", super::excerpt(t))))?;
    // Both values are well-known garbage: believing them once can trigger real actions
    // (a fridge controller that sees 85 °C cools to freezing), so they are errors, not data.
    match milli {
        POWER_ON_RESET => Err(ParseError::new(
            "85.000 °C is the power-on reset value (read before a conversion completed); discarded",
        )),
        INSUFFICIENT_POWER => Err(ParseError::new(
            "127.937 °C means the sensor has insufficient power (check VDD / parasite-power wiring); discarded",
        )),
        _ => Ok(milli as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::tests::put;

    const YES: &str =
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";

    fn sample(crc: &str, t: &str) -> String {
        format!("72 01 4b 46 7f ff 0e 10 57 : crc=57 {crc}\n72 01 4b 46 7f ff 0e 10 57 t={t}\n")
    }

    #[test]
    fn parses_good_and_negative_readings() {
        assert_eq!(parse_w1_slave(YES), Ok(23.125));
        assert_eq!(parse_w1_slave(&sample("YES", "-1250")), Ok(-1.25));
        assert_eq!(parse_w1_slave(&sample("YES", "0")), Ok(0.0));
    }

    #[test]
    fn rejects_crc_errors_and_known_bad_values() {
        assert_eq!(
            parse_w1_slave(&sample("NO", "23125")),
            Err(ParseError::new("CRC check failed (NO)"))
        );
        let reset = parse_w1_slave(&sample("YES", "85000")).unwrap_err();
        assert!(reset.to_string().contains("power-on reset"), "{reset}");
        let power = parse_w1_slave(&sample("YES", "127937")).unwrap_err();
        assert!(power.to_string().contains("insufficient power"), "{power}");
        // Neighbouring values are real temperatures.
        assert_eq!(parse_w1_slave(&sample("YES", "85062")), Ok(85.062));
    }

    #[test]
    fn rejects_malformed_content() {
        assert!(parse_w1_slave("").is_err());
        assert!(parse_w1_slave("garbage\n").is_err());
        assert!(parse_w1_slave("00 : crc=00 YES\n").is_err());
        assert!(parse_w1_slave("00 : crc=00 YES\n00 t=abc\n").is_err());
    }

    #[tokio::test]
    async fn reads_by_device_id() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "bus/w1/devices/28-0316a2795aff/w1_slave", YES);
        let mut s = Ds18b20::new(None, Some("28-0316a2795aff".into()), tmp.path());
        assert_eq!(s.read().await, Ok(23.125));
    }

    #[tokio::test]
    async fn explicit_path_wins_and_errors_name_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w1_slave");
        std::fs::write(&path, sample("NO", "1")).unwrap();
        let mut s = Ds18b20::new(Some(path.clone()), Some("28-other".into()), tmp.path());
        let err = s.read().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: CRC check failed (NO)", path.display())
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn an_explicit_path_that_never_ends_is_an_error() {
        let mut s = Ds18b20::new(Some("/dev/zero".into()), None, Path::new("/"));
        let err = s.read().await.unwrap_err();
        assert_eq!(err.cause(), Cause::TooMuchOutput);
        assert_eq!(
            err.to_string(),
            "/dev/zero: more than 4 KiB: not a sensor value"
        );
    }

    #[tokio::test]
    async fn missing_device_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Ds18b20::new(None, Some("28-000000000000".into()), tmp.path());
        let err = s.read().await.unwrap_err();
        let expected = tmp.path().join("bus/w1/devices/28-000000000000/w1_slave");
        let bus = tmp.path().join("bus/w1/devices");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no such file: 1-Wire is off ({} does not exist): add the line \
                 dtoverlay=w1-gpio to /boot/firmware/config.txt (/boot/config.txt before \
                 Raspberry Pi OS bookworm) and reboot; the DS18B20's data line then goes to GPIO4",
                expected.display(),
                bus.display()
            )
        );
        assert_eq!(err.cause(), Cause::NotFound);
        // Same failure, same error: deterministic, so it can be compared.
        assert_eq!(s.read().await.unwrap_err(), err);
    }

    #[tokio::test]
    async fn a_bus_without_devices_points_at_the_wiring() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bus/w1/devices/w1_bus_master1")).unwrap();
        let mut s = Ds18b20::new(None, Some("28-000000000000".into()), tmp.path());
        let err = s.read().await.unwrap_err().to_string();
        assert!(
            err.contains("no such file: 1-Wire is on but no device answers"),
            "{err}"
        );
        assert!(err.contains("4.7 kOhm pull-up"), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_id_lists_the_thermometers_present() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bus/w1/devices/w1_bus_master1")).unwrap();
        for i in 0..10 {
            put(
                tmp.path(),
                &format!("bus/w1/devices/28-00000000000{i}/w1_slave"),
                YES,
            );
        }
        let mut s = Ds18b20::new(None, Some("28-0316a2795aff".into()), tmp.path());
        let err = s.read().await.unwrap_err();
        assert_eq!(err.cause(), Cause::NotFound);
        let err = err.to_string();
        // Sorted, at most eight, never the bus master.
        assert!(
            err.ends_with(
                "no 1-Wire device \"28-0316a2795aff\"; the bus has: 28-000000000000, \
                 28-000000000001, 28-000000000002, 28-000000000003, 28-000000000004, \
                 28-000000000005, 28-000000000006, 28-000000000007, ... \
                 (`telemetryd sensors` prints them as [[sensor]] blocks)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn neither_path_nor_device() {
        let mut s = Ds18b20::new(None, None, Path::new("/sys"));
        assert!(s.read().await.unwrap_err().to_string().contains("neither"));
    }
}
