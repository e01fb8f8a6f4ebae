//! Any bytes as a config file: `Config::parse` gives a config or an error that renders, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use telemetryd::config::Config;

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 is what `Config::load` refuses before parsing; lossy keeps those inputs useful.
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("/etc/telemetryd/fuzz.toml")) {
        Ok(config) => {
            for warning in &config.warnings {
                assert!(!warning.is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an empty config error"),
    }
});
