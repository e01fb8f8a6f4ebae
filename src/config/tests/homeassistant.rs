//! The `[homeassistant]` table.

use super::*;

/// Every text that goes into a discovery config, a topic or the Last Will is bounded: a
/// 20 KB `ha.icon` made each connect send a 20 KB config that rumqttc refuses, dropping
/// the link at once, forever, with no reading delivered (seen against a real Mosquitto).
#[test]
fn texts_that_go_into_every_packet_are_bounded() {
    let long = "a".repeat(20_000);
    let ha = |extra: &str| format!("{SEED}\n[homeassistant]\n{extra}\n");
    for (text, says) in [
        (
            SEED.replace(
                "decimals = 1",
                &format!("[sensor.ha]\nicon = \"mdi:{long}\""),
            ),
            "ha.icon",
        ),
        (
            ha(&format!("device_name = \"{long}\"")),
            "device_name must be 1 to 128 bytes",
        ),
        (
            ha(&format!("node_id = \"{long}\"")),
            "node_id must be 1 to 128 bytes",
        ),
        (
            ha(&format!("discovery_prefix = \"{long}\"")),
            "discovery_prefix must be 1 to 128",
        ),
        (
            ha("device_name = \"\""),
            "device_name must be 1 to 128 bytes",
        ),
        (
            SEED.replace("\"pi-garden\"", &format!("\"{long}\"")),
            "client_id is longer than 256 bytes",
        ),
    ] {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(says), "{says}: {}", &err[..err.len().min(300)]);
    }
    // What a real setup writes still passes.
    let ok = SEED.replace(
        "decimals = 1",
        "[sensor.ha]\nicon = \"mdi:thermometer-lines\"",
    );
    parse(&ha("device_name = \"Garden Pi\"\nnode_id = \"garden\"")).unwrap();
    parse(&format!("{ok}\n[homeassistant]\n")).unwrap();
}
