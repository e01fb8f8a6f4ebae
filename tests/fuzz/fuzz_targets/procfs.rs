//! Any text as `/proc/loadavg`, `/proc/meminfo`, `/proc/net/wireless`, `get_throttled` or
//! `vcgencmd get_throttled` output (the `system` kind): finite values or clean errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telemetryd::fuzzing::{loadavg, meminfo, throttled, wireless};

fuzz_target!(|text: &str| {
    for index in 0..3 {
        if let Ok(v) = loadavg(text, index) {
            assert!(v.is_finite());
        }
    }
    if let Ok((total, available)) = meminfo(text) {
        // What memory_available and memory_used publish.
        assert!(total > 0.0 && available <= total);
        assert!((available / 1024.0).is_finite());
        assert!(((total - available) / total * 100.0).is_finite());
    }
    let _ = throttled(text);
    // The first interface, a named one, and one named by the text itself.
    let named = text
        .lines()
        .nth(2)
        .and_then(|l| l.split(':').next())
        .map(str::trim);
    for interface in [None, Some("wlan0"), named] {
        if let Ok(v) = wireless(text, interface) {
            assert!(v.is_finite());
        }
    }
});
