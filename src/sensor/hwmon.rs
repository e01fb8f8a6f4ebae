//! hwmon chips (`/sys/class/hwmon/hwmonN`), found by their `name` file; one `<input>_input` each.

use std::path::{Path, PathBuf};

use super::{ReadError, blocking, find_by_attr, read_attr};

#[derive(Debug, Clone)]
pub struct Hwmon {
    class_dir: PathBuf,
    chip: String,
    input: String,
}

impl Hwmon {
    pub(crate) fn new(chip: String, input: String, sysfs_root: &Path) -> Self {
        Hwmon {
            class_dir: sysfs_root.join("class/hwmon"),
            chip,
            input,
        }
    }

    pub fn unit(&self) -> Option<&'static str> {
        conversion(&self.input).map(|(unit, _)| unit)
    }

    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let this = self.clone();
        blocking(move || {
            let dir = find_by_attr(
                "hwmon chip",
                &this.class_dir,
                "hwmon",
                &["name"],
                &this.chip,
            )?;
            let value = read_attr(&dir.join(format!("{}_input", this.input)))?;
            Ok(conversion(&this.input).map_or(value, |(_, divisor)| value / divisor))
        })
        .await
    }
}

/// Published unit and divisor from the sysfs-interface unit, by input type
/// (`temp1` → `temp`). Unknown types are passed through unconverted, without a unit.
pub(crate) fn conversion(input: &str) -> Option<(&'static str, f64)> {
    match input.trim_end_matches(|c: char| c.is_ascii_digit()) {
        "temp" => Some(("°C", 1e3)),    // millidegrees
        "in" => Some(("V", 1e3)),       // millivolts
        "curr" => Some(("A", 1e3)),     // milliamperes
        "power" => Some(("W", 1e6)),    // microwatts
        "energy" => Some(("J", 1e6)),   // microjoules
        "humidity" => Some(("%", 1e3)), // milli-percent
        "fan" => Some(("RPM", 1.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::tests::put;

    fn chip(root: &Path, input: &str) -> Hwmon {
        Hwmon::new("rpi".into(), input.into(), root)
    }

    #[tokio::test]
    async fn converts_each_input_type() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        put(r, "class/hwmon/hwmon0/name", "cpu_thermal\n");
        put(r, "class/hwmon/hwmon0/temp1_input", "99000\n");
        put(r, "class/hwmon/hwmon1/name", "rpi\n");
        let cases = [
            ("temp1", "48312", 48.312, Some("°C")),
            ("in0", "3300", 3.3, Some("V")),
            ("curr1", "1500", 1.5, Some("A")),
            ("power1", "2500000", 2.5, Some("W")),
            ("energy1", "7000000", 7.0, Some("J")),
            ("humidity1", "55500", 55.5, Some("%")),
            ("fan1", "1200", 1200.0, Some("RPM")),
            ("pwm1", "128", 128.0, None),
        ];
        for (input, raw, expected, unit) in cases {
            put(
                r,
                &format!("class/hwmon/hwmon1/{input}_input"),
                &format!("{raw}\n"),
            );
            let mut s = chip(r, input);
            assert_eq!(s.read().await, Ok(expected), "{input}");
            assert_eq!(s.unit(), unit, "{input}");
        }
    }

    #[tokio::test]
    async fn missing_chip_and_input() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "class/hwmon/hwmon3/name", "rpi\n");
        let err = Hwmon::new("nct6775".into(), "fan1".into(), tmp.path())
            .read()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no hwmon chip with name \"nct6775\" under "),
            "{err}"
        );
        let err = chip(tmp.path(), "temp2").read().await.unwrap_err();
        let path = tmp.path().join("class/hwmon/hwmon3/temp2_input");
        assert_eq!(err.to_string(), format!("{}: no such file", path.display()));
    }
}
