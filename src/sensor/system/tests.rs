//! The `system` kind on a fake procfs/sysfs tree.

use super::*;
use crate::sensor::tests::put;

fn sys(metric: &str, root: &Path) -> System {
    let m = Metric::parse(metric, None, None).unwrap();
    System::new(m, &root.join("proc"), &root.join("sys"))
}

async fn read(metric: &str, root: &Path) -> Result<f64, ReadError> {
    sys(metric, root).read().await
}

#[tokio::test]
async fn reads_procfs_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    put(r, "proc/loadavg", "0.42 0.35 0.30 1/123 4567\n");
    put(
        r,
        "proc/meminfo",
        "MemTotal:        4000000 kB\nMemFree:  1 kB\nMemAvailable:    1024000 kB\n",
    );
    put(r, "proc/uptime", "12345.67 40000.00\n");
    assert_eq!(read("load1", r).await, Ok(0.42));
    assert_eq!(read("load5", r).await, Ok(0.35));
    assert_eq!(read("load15", r).await, Ok(0.30));
    assert_eq!(read("memory_available", r).await, Ok(1000.0));
    assert_eq!(read("memory_used", r).await, Ok(74.4));
    assert_eq!(read("uptime", r).await, Ok(12345.67));
    let err = read("wifi_signal", r).await.unwrap_err();
    assert_eq!(err.cause(), Cause::NotFound);
    assert!(
        err.to_string()
            .ends_with("no such file (no Wi-Fi on this machine?)"),
        "{err}"
    );
    put(
        r,
        "proc/net/wireless",
        "Inter-| sta-|   Quality\n face | tus | link level noise\n  wlan0: 0000   56.  -54.  -256  0 0 0 0 0 0\n",
    );
    assert_eq!(read("wifi_signal", r).await, Ok(-54.0));
    let m = Metric::parse("wifi_signal", None, Some("wlan1".into())).unwrap();
    let err = System::new(m, &r.join("proc"), &r.join("sys"))
        .read()
        .await
        .unwrap_err();
    assert_eq!(err.cause(), Cause::NotFound);
    assert!(err.to_string().contains("(found: \"wlan0\")"), "{err}");

    // Garbage is an error that names the file, never a value.
    put(r, "proc/loadavg", "nonsense\n");
    let err = read("load1", r).await.unwrap_err();
    assert_eq!(err.cause(), Cause::NotANumber);
    assert!(err.to_string().contains("proc/loadavg"), "{err}");
    // Bounded: a file that never ends is refused, not read to the end.
    put(r, "proc/uptime", &"1".repeat(70 * 1024));
    assert_eq!(
        read("uptime", r).await.unwrap_err().cause(),
        Cause::TooMuchOutput
    );
}

#[tokio::test]
async fn cpu_temperature_whatever_the_zone_is_called() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let err = read("cpu_temperature", r).await.unwrap_err();
    assert_eq!(err.cause(), Cause::NotFound);
    // A PC: only zone 0, an ACPI zone.
    put(r, "sys/class/thermal/thermal_zone0/type", "acpitz\n");
    put(r, "sys/class/thermal/thermal_zone0/temp", "27800\n");
    assert_eq!(read("cpu_temperature", r).await, Ok(27.8));
    // The CPU's zone wins over zone 0, under any of its usual names.
    put(r, "sys/class/thermal/thermal_zone3/type", "x86_pkg_temp\n");
    put(r, "sys/class/thermal/thermal_zone3/temp", "51000\n");
    assert_eq!(read("cpu_temperature", r).await, Ok(51.0));
    put(r, "sys/class/thermal/thermal_zone1/type", "cpu-thermal\n");
    put(r, "sys/class/thermal/thermal_zone1/temp", "48312\n");
    assert_eq!(read("cpu_temperature", r).await, Ok(48.312));
}

#[tokio::test]
async fn throttled_flags_from_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    // Pi 1-4: the classic path. Under-voltage now and since boot, throttled since boot.
    put(
        r,
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "50001\n",
    );
    assert_eq!(read("under_voltage", r).await, Ok(1.0));
    assert_eq!(read("under_voltage_since_boot", r).await, Ok(1.0));
    assert_eq!(read("throttled", r).await, Ok(0.0));
    assert_eq!(read("throttled_since_boot", r).await, Ok(1.0));
    std::fs::remove_dir_all(r.join("sys/devices")).unwrap();
    // Elsewhere: through the driver's directory.
    put(
        r,
        "sys/bus/platform/drivers/raspberrypi-firmware/soc@107c000000:firmware/get_throttled",
        "8\n",
    );
    assert_eq!(read("under_voltage", r).await, Ok(0.0));
    assert_eq!(read("throttled", r).await, Ok(1.0));
    put(
        r,
        "sys/bus/platform/drivers/raspberrypi-firmware/soc@107c000000:firmware/get_throttled",
        "garbage\n",
    );
    let err = read("throttled", r).await.unwrap_err();
    assert_eq!(err.cause(), Cause::NotANumber);
}

#[tokio::test]
async fn throttled_flags_fall_back_to_vcgencmd() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let mut s = sys("under_voltage", r);
    s.fallback = vec!["sh".into(), "-c".into(), "echo throttled=0x50005".into()];
    assert_eq!(s.read().await, Ok(1.0));
    // No sysfs file and no vcgencmd: one clear error.
    s.fallback = vec!["/nonexistent/vcgencmd".into(), "get_throttled".into()];
    let err = s.read().await.unwrap_err();
    assert_eq!(err.cause(), Cause::NotFound);
    assert!(err.to_string().contains("not a Raspberry Pi?"), "{err}");
}

#[tokio::test]
async fn disk_used_of_a_real_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Metric::parse("disk_used", Some(tmp.path().to_owned()), None).unwrap();
    let used = System::new(m, tmp.path(), tmp.path()).read().await.unwrap();
    assert!((0.0..=100.0).contains(&used), "{used}");
    let m = Metric::parse("disk_used", Some(tmp.path().join("absent")), None).unwrap();
    let err = System::new(m, tmp.path(), tmp.path())
        .read()
        .await
        .unwrap_err();
    assert_eq!(err.cause(), Cause::NotFound);
}

#[test]
fn metric_names_units_and_keys() {
    for name in METRICS {
        let m = Metric::parse(name, None, None).unwrap();
        assert_eq!(m.name(), *name);
        assert_eq!(m.is_flag(), m.device_class() == Some("problem"), "{name}");
    }
    let err = Metric::parse("load", None, None).unwrap_err().to_string();
    assert!(
        err.starts_with("unknown metric \"load\": use one of load1, load5"),
        "{err}"
    );
    let err = Metric::parse("uptime", Some("/".into()), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only applies to metric \"disk_used\""),
        "{err}"
    );
    assert_eq!(
        Metric::parse("disk_used", None, None).unwrap(),
        Metric::DiskUsed { path: "/".into() }
    );
    assert_eq!(Metric::CpuTemperature.unit(), Some("°C"));
}
