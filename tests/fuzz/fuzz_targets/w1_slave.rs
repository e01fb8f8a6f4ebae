//! Any text as a DS18B20 `w1_slave` file: a finite °C in the sensor's range, or a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetryd::fuzzing::w1_slave;

fuzz_target!(|text: &str| {
    match w1_slave(text) {
        // t= is an i64 of milli-°C: any such value divided by 1000 is finite.
        Ok(c) => assert!(c.is_finite(), "{c} from {text:?}"),
        Err(reason) => assert!(!reason.to_string().is_empty()),
    }
});
