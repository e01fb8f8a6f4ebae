//! Thermal zones (`/sys/class/thermal/thermal_zoneN`), found by their `type`, e.g. `cpu-thermal`.

use std::path::{Path, PathBuf};

use super::{ReadError, blocking, find_by_attr, read_attr};

#[derive(Debug, Clone)]
pub struct Thermal {
    class_dir: PathBuf,
    zone: String,
}

impl Thermal {
    pub(crate) fn new(zone: String, sysfs_root: &Path) -> Self {
        Thermal {
            class_dir: sysfs_root.join("class/thermal"),
            zone,
        }
    }

    /// Reads °C (`temp` is in millidegrees).
    pub async fn read(&mut self) -> Result<f64, ReadError> {
        let this = self.clone();
        blocking(move || {
            // The prefix skips the `cooling_deviceN` entries that share the directory.
            let dir = find_by_attr(
                "thermal zone",
                &this.class_dir,
                "thermal_zone",
                &["type"],
                &this.zone,
            )?;
            Ok(read_attr(&dir.join("temp"))? / 1000.0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::tests::put;

    #[tokio::test]
    async fn finds_zone_by_type() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        put(r, "class/thermal/cooling_device0/type", "cpu-thermal\n");
        put(r, "class/thermal/thermal_zone0/type", "gpu-thermal\n");
        put(r, "class/thermal/thermal_zone0/temp", "40000\n");
        put(r, "class/thermal/thermal_zone1/type", "cpu-thermal\n");
        put(r, "class/thermal/thermal_zone1/temp", "48312\n");
        let mut s = Thermal::new("cpu-thermal".into(), r);
        assert_eq!(s.read().await, Ok(48.312));
        let mut s = Thermal::new("gpu-thermal".into(), r);
        assert_eq!(s.read().await, Ok(40.0));
    }

    #[tokio::test]
    async fn missing_zone_or_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let mut s = Thermal::new("cpu-thermal".into(), r);
        let err = s.read().await.unwrap_err();
        let dir = r.join("class/thermal");
        assert_eq!(
            err.to_string(),
            format!(
                "no thermal zone with type \"cpu-thermal\" under {} (the directory does not exist)",
                dir.display()
            )
        );
        put(r, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        let err = s.read().await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("thermal_zone0/temp: no such file"),
            "{err}"
        );
        put(r, "class/thermal/thermal_zone0/temp", "-2500\n");
        assert_eq!(s.read().await, Ok(-2.5));
    }
}
