//! IIO sensors (BME280, DHT11/22, ...) found by their `name`/`label` under `/sys/bus/iio/devices`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ATTR_MAX, Cause, ReadError, blocking, bounded_error, find_by_attr, parse_attr, read_attr,
    read_bounded,
};

/// DHT drivers cache a reading for 2 s; asking again sooner just returns the same error.
const DHT_RETRY: Duration = Duration::from_secs(2);
/// Linux errno values (no libc dependency just for two constants).
const EIO: i32 = 5;
const ETIMEDOUT: i32 = 110;

#[derive(Debug, Clone)]
pub struct Iio {
    devices_dir: PathBuf,
    device: String,
    channel: String,
}

impl Iio {
    pub(crate) fn new(device: String, channel: String, sysfs_root: &Path) -> Self {
        Iio {
            devices_dir: sysfs_root.join("bus/iio/devices"),
            device,
            channel,
        }
    }

    /// Unit after conversion, from the channel type (`temp`, `temp0`, `temp_ambient` → °C).
    pub fn unit(&self) -> Option<&'static str> {
        match channel_type(&self.channel) {
            "temp" => Some("°C"),
            "humidityrelative" => Some("%"),
            "pressure" => Some("hPa"),
            _ => None,
        }
    }

    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let this = self.clone();
        blocking(move || {
            // `iio:deviceN` only: trigger directories in the same place also have `name` files.
            let dir = find_by_attr(
                "IIO device",
                &this.devices_dir,
                "iio:device",
                &["name", "label"],
                &this.device,
            )?;
            let value = read_channel(&dir, &this.channel)?;
            Ok(to_unit(channel_type(&this.channel), value))
        })
        .await
    }
}

/// The channel type: `in_<type>[index][_modifier]_...`, e.g. `temp0` → `temp`, `temp_object` → `temp`.
pub(crate) fn channel_type(channel: &str) -> &str {
    let head = channel.split('_').next().unwrap_or(channel);
    head.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// Converts from IIO ABI units (milli-°C, milli-%, kPa) to the published ones.
pub(crate) fn to_unit(channel_type: &str, value: f64) -> f64 {
    match channel_type {
        "temp" | "humidityrelative" => value / 1000.0,
        "pressure" => value * 10.0,
        _ => value,
    }
}

/// Reads `in_X_input` (processed) if the driver has it, else `(in_X_raw + in_X_offset) * in_X_scale`,
/// both in the same ABI units.
fn read_channel(dir: &Path, channel: &str) -> Result<f64, ReadError> {
    if let Some(v) = read_value(&dir.join(format!("in_{channel}_input")))? {
        return Ok(v);
    }
    let raw_path = dir.join(format!("in_{channel}_raw"));
    let Some(raw) = read_value(&raw_path)? else {
        return Err(ReadError::new(
            Cause::NotFound,
            format!(
                "{}: IIO device has no channel {channel:?} (neither in_{channel}_input nor in_{channel}_raw)",
                dir.display()
            ),
        ));
    };
    let offset = optional_attr(dir, channel, "offset")?.unwrap_or(0.0);
    let scale = optional_attr(dir, channel, "scale")?.unwrap_or(1.0);
    Ok((raw + offset) * scale)
}

/// Reads a channel value; `Ok(None)` if the file does not exist. A DHT's EIO/ETIMEDOUT
/// surfaces here, on the value read itself.
fn read_value(path: &Path) -> Result<Option<f64>, ReadError> {
    match read_bounded(path, ATTR_MAX) {
        Ok(text) => parse_attr(path, &text).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => Err(bounded_error(path, &e)),
        Err(e) => Err(classify(path, &e)),
    }
}

/// `in_X_<attr>`, falling back to the attribute shared by the channel type
/// (`in_voltage_scale` serves `in_voltage0_raw`); `None` if neither exists.
fn optional_attr(dir: &Path, channel: &str, attr: &str) -> Result<Option<f64>, ReadError> {
    let kind = channel_type(channel);
    let mut names = vec![format!("in_{channel}_{attr}")];
    if kind != channel {
        names.push(format!("in_{kind}_{attr}"));
    }
    for name in names {
        let path = dir.join(name);
        if path.exists() {
            return read_attr(&path).map(Some);
        }
    }
    Ok(None)
}

/// EIO (checksum/sync) and ETIMEDOUT are how DHT11/22 drivers report a missed reading,
/// 25-75 % of the time: expected, so transient with a retry delay instead of a warning.
fn classify(path: &Path, err: &io::Error) -> ReadError {
    let dht_style = matches!(err.raw_os_error(), Some(EIO | ETIMEDOUT))
        || err.kind() == io::ErrorKind::TimedOut;
    if dht_style {
        ReadError::transient(
            Cause::Io,
            format!(
                "{}: {err} (normal now and then for DHT11/DHT22; retry after 2 s)",
                path.display()
            ),
            DHT_RETRY,
        )
    } else {
        ReadError::io(path, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::tests::put;

    fn iio(root: &Path, device: &str, channel: &str) -> Iio {
        Iio::new(device.into(), channel.into(), root)
    }

    /// A BME280 with processed channels, next to a DHT11 and a trigger sharing its name.
    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        put(r, "bus/iio/devices/trigger0/name", "bme280\n");
        put(r, "bus/iio/devices/iio:device0/name", "dht11\n");
        put(r, "bus/iio/devices/iio:device0/in_temp_input", "21000\n");
        put(r, "bus/iio/devices/iio:device1/name", "bme280\n");
        put(r, "bus/iio/devices/iio:device1/in_temp_input", "23450\n");
        put(
            r,
            "bus/iio/devices/iio:device1/in_humidityrelative_input",
            "45678\n",
        );
        put(
            r,
            "bus/iio/devices/iio:device1/in_pressure_input",
            "101.343285156\n",
        );
        tmp
    }

    #[tokio::test]
    async fn processed_channels_by_name() {
        let tmp = tree();
        assert_eq!(iio(tmp.path(), "bme280", "temp").read().await, Ok(23.45));
        assert_eq!(iio(tmp.path(), "dht11", "temp").read().await, Ok(21.0));
        assert_eq!(
            iio(tmp.path(), "bme280", "humidityrelative").read().await,
            Ok(45.678)
        );
        let hpa = iio(tmp.path(), "bme280", "pressure").read().await.unwrap();
        assert!((hpa - 1013.43285156).abs() < 1e-9, "{hpa}");
    }

    #[tokio::test]
    async fn raw_with_scale_and_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let d = "bus/iio/devices/iio:device3";
        put(tmp.path(), &format!("{d}/name"), "sensor\n");
        put(tmp.path(), &format!("{d}/in_temp_raw"), "1000\n");
        put(tmp.path(), &format!("{d}/in_temp_offset"), "-200\n");
        put(tmp.path(), &format!("{d}/in_temp_scale"), "25\n");
        put(
            tmp.path(),
            &format!("{d}/in_humidityrelative_raw"),
            "2000\n",
        );
        put(
            tmp.path(),
            &format!("{d}/in_humidityrelative_scale"),
            "25.5\n",
        );
        put(tmp.path(), &format!("{d}/in_pressure_raw"), "400000\n");
        put(tmp.path(), &format!("{d}/in_pressure_scale"), "0.00025\n");
        put(tmp.path(), &format!("{d}/in_voltage0_raw"), "512\n");
        put(tmp.path(), &format!("{d}/in_voltage_scale"), "0.5\n");
        // (1000 - 200) * 25 = 20000 m°C
        assert_eq!(iio(tmp.path(), "sensor", "temp").read().await, Ok(20.0));
        // 2000 * 25.5 = 51000 m% (offset defaults to 0)
        assert_eq!(
            iio(tmp.path(), "sensor", "humidityrelative").read().await,
            Ok(51.0)
        );
        // 400000 * 0.00025 = 100 kPa = 1000 hPa
        assert_eq!(
            iio(tmp.path(), "sensor", "pressure").read().await,
            Ok(1000.0)
        );
        // Unknown type: unconverted, shared scale, no unit.
        let mut volt = iio(tmp.path(), "sensor", "voltage0");
        assert_eq!(volt.read().await, Ok(256.0));
        assert_eq!(volt.unit(), None);
    }

    #[tokio::test]
    async fn label_matches_too() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "bus/iio/devices/iio:device0/name", "bme280\n");
        put(tmp.path(), "bus/iio/devices/iio:device0/label", "outdoor\n");
        put(
            tmp.path(),
            "bus/iio/devices/iio:device0/in_temp_input",
            "-5500\n",
        );
        assert_eq!(iio(tmp.path(), "outdoor", "temp").read().await, Ok(-5.5));
    }

    #[tokio::test]
    async fn missing_device_and_channel() {
        let tmp = tree();
        let err = iio(tmp.path(), "bme680", "temp").read().await.unwrap_err();
        let dir = tmp.path().join("bus/iio/devices");
        assert_eq!(
            err.to_string(),
            format!(
                "no IIO device with name \"bme680\" under {} (found: \"dht11\", \"bme280\")",
                dir.display()
            )
        );
        assert!(!err.is_transient());
        let err = iio(tmp.path(), "dht11", "pressure")
            .read()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no channel \"pressure\""), "{err}");
    }

    #[tokio::test]
    async fn device_appearing_later_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = iio(tmp.path(), "dht11", "humidityrelative");
        assert!(s.read().await.is_err());
        put(tmp.path(), "bus/iio/devices/iio:device7/name", "dht11\n");
        put(
            tmp.path(),
            "bus/iio/devices/iio:device7/in_humidityrelative_input",
            "40000\n",
        );
        assert_eq!(s.read().await, Ok(40.0));
    }

    #[test]
    fn dht_errors_are_transient() {
        let p = Path::new("/sys/bus/iio/devices/iio:device0/in_temp_input");
        for errno in [EIO, ETIMEDOUT] {
            let e = classify(p, &io::Error::from_raw_os_error(errno));
            assert!(e.is_transient());
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
            assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        }
        let e = classify(p, &io::Error::from_raw_os_error(13)); // EACCES
        assert!(!e.is_transient());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn channel_types_and_units() {
        assert_eq!(channel_type("temp"), "temp");
        assert_eq!(channel_type("temp0"), "temp");
        assert_eq!(channel_type("temp_object"), "temp");
        assert_eq!(channel_type("humidityrelative"), "humidityrelative");
        let root = Path::new("/sys");
        assert_eq!(iio(root, "d", "temp").unit(), Some("°C"));
        assert_eq!(iio(root, "d", "humidityrelative").unit(), Some("%"));
        assert_eq!(iio(root, "d", "pressure").unit(), Some("hPa"));
        assert_eq!(iio(root, "d", "illuminance").unit(), None);
    }
}
