//! Pure parsers for the procfs/sysfs texts the `system` kind reads.
//!
//! Outside input, so every one returns an error for garbage instead of panicking
//! (property-tested below).

use crate::sensor::ParseError;

/// Field `index` (0, 1, 2: the 1, 5 and 15 minute load) of `/proc/loadavg`
/// (`0.42 0.35 0.30 1/123 4567`).
pub fn loadavg(text: &str, index: usize) -> Result<f64, ParseError> {
    let field = text.split_ascii_whitespace().nth(index).ok_or_else(|| {
        ParseError::new(format!("expected 3 load averages, got {:?}", short(text)))
    })?;
    number(field)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in kB (`MemTotal:  3882328 kB`).
pub fn meminfo(text: &str) -> Result<(f64, f64), ParseError> {
    let field = |key: &str| -> Result<f64, ParseError> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| {
                ParseError::new(format!(
                    "no {key} line (MemAvailable needs Linux 3.14 or later)"
                ))
            })?;
        number(line.split_ascii_whitespace().next().unwrap_or_default())
    };
    let (total, available) = (field("MemTotal")?, field("MemAvailable")?);
    if total <= 0.0 || available > total {
        return Err(ParseError::new(format!(
            "MemTotal {total} kB and MemAvailable {available} kB do not add up"
        )));
    }
    Ok((total, available))
}

/// The firmware's throttled bits: `get_throttled` in sysfs prints them in hex without a prefix
/// (`50005`), `vcgencmd get_throttled` as `throttled=0x50005`.
pub fn throttled(text: &str) -> Result<u32, ParseError> {
    let t = text.trim();
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(hex, 16).map_err(|_| {
        ParseError::new(format!(
            "expected the throttled bits in hex, got {:?}",
            short(text)
        ))
    })
}

/// The signal level in dBm of `interface` (the first one listed when `None`) in
/// `/proc/net/wireless`: two header lines, then `wlan0: 0000   70.  -40.  -256 ...`
/// (status, link quality, level, noise, ...).
pub fn wireless_level(text: &str, interface: Option<&str>) -> Result<f64, ParseError> {
    let mut seen = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if interface.is_some_and(|i| i != name) {
            seen.push(format!("{name:?}"));
            continue;
        }
        let level = rest.split_ascii_whitespace().nth(2).ok_or_else(|| {
            ParseError::new(format!(
                "{name}: expected status, link and level, got {:?}",
                short(rest)
            ))
        })?;
        return number(level.trim_end_matches('.'));
    }
    Err(ParseError::new(match (interface, seen.is_empty()) {
        (Some(i), false) => format!("no wireless interface {i:?} (found: {})", seen.join(", ")),
        _ => "no wireless interface listed (Wi-Fi off, not associated, or no Wi-Fi)".into(),
    }))
}

fn number(field: &str) -> Result<f64, ParseError> {
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ParseError::new(format!(
            "expected a number, got {:?}",
            short(field)
        ))),
    }
}

fn short(text: &str) -> String {
    super::super::excerpt(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn real_texts() {
        let load = "0.42 0.35 0.30 1/123 4567\n";
        assert_eq!(loadavg(load, 0), Ok(0.42));
        assert_eq!(loadavg(load, 2), Ok(0.30));
        assert!(loadavg("0.1\n", 1).is_err());
        let mem =
            "MemTotal:        3882328 kB\nMemFree:          123 kB\nMemAvailable:    2941160 kB\n";
        assert_eq!(meminfo(mem), Ok((3_882_328.0, 2_941_160.0)));
        let err = meminfo("MemTotal: 100 kB\n").unwrap_err().to_string();
        assert!(err.contains("no MemAvailable line"), "{err}");
        assert!(meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n").is_err());
        assert_eq!(throttled("50005\n"), Ok(0x50005));
        assert_eq!(throttled("0\n"), Ok(0));
        assert_eq!(throttled("throttled=0x50005\n"), Ok(0x50005));
        assert!(throttled("throttled=\n").is_err());
        assert!(throttled("fffffffff").is_err());
        let wireless = "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n \
                        face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n \
                        wlan0: 0000   70.  -40.  -256        0      0      0      0      0        0\n  \
                        wlan1: 0000   30.  -81.  -256        0      0      0      0      0        0\n";
        assert_eq!(wireless_level(wireless, None), Ok(-40.0));
        assert_eq!(wireless_level(wireless, Some("wlan1")), Ok(-81.0));
        let err = wireless_level(wireless, Some("wlan9"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no wireless interface \"wlan9\" (found: \"wlan0\", \"wlan1\")"
        );
        let header_only = wireless.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(
            wireless_level(&header_only, None)
                .unwrap_err()
                .to_string()
                .contains("no wireless interface listed")
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Any text gives a finite value or an error, never a panic.
        #[test]
        fn garbage_never_panics(text in "(?s).{0,300}", index in 0usize..4, iface in proptest::option::of("[a-z0-9:]{0,6}")) {
            if let Ok(v) = loadavg(&text, index) { prop_assert!(v.is_finite()); }
            if let Ok((t, a)) = meminfo(&text) { prop_assert!(t > 0.0 && a <= t); }
            let _ = throttled(&text);
            if let Ok(v) = wireless_level(&text, iface.as_deref()) { prop_assert!(v.is_finite()); }
        }

        /// What the kernel prints is read back exactly.
        #[test]
        fn kernel_formats_round_trip(bits: u32, level in -120i32..0, load in 0u32..100_000) {
            prop_assert_eq!(throttled(&format!("{bits:x}\n")), Ok(bits));
            prop_assert_eq!(throttled(&format!("throttled=0x{bits:x}\n")), Ok(bits));
            let line = format!("h1\nh2\n wlan0: 0000   70.  {level}.  -256   0 0 0 0 0 0\n");
            prop_assert_eq!(wireless_level(&line, Some("wlan0")), Ok(f64::from(level)));
            let l = f64::from(load) / 100.0;
            prop_assert_eq!(loadavg(&format!("{l:.2} 0.00 0.00 1/1 1\n"), 0), Ok(l));
        }
    }
}
