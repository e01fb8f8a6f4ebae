//! Any text as a sysfs attribute (hwmon `*_input`, thermal `temp`) or a file/command output:
//! finite numbers or clean errors, and the unit conversions keep them finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetryd::fuzzing::{excerpt, first_number, hwmon_conversion, sysfs_attr};

fuzz_target!(|text: &str| {
    match sysfs_attr(text) {
        Ok(v) => {
            assert!(v.is_finite());
            // The thermal zone's millidegrees, and every hwmon input type's divisor.
            assert!((v / 1000.0).is_finite());
            for input in [
                "temp1",
                "in0",
                "curr1",
                "power1",
                "energy1",
                "humidity1",
                "fan1",
            ] {
                let (_, divisor) = hwmon_conversion(input).expect("a known input type");
                assert!((v / divisor).is_finite());
            }
        }
        Err(error) => assert!(error.to_string().contains("expected a number")),
    }
    if let Some(v) = first_number(text) {
        assert!(v.is_finite(), "{v} from {text:?}");
    }
    // Error messages quote at most 60 characters of what was read.
    assert!(excerpt(text).chars().count() <= 61);
    // An outside name (the config's `input`) only ever selects a conversion.
    let _ = hwmon_conversion(text);
});
