//! Topic templates.

use super::*;
use crate::config::topics::hostname;

/// A NUL in `topic_prefix` (or `status_topic`/`stats_topic`) reached the topic: only the
/// sensor's own `topic` was checked for it. MQTT forbids U+0000 in topic names, and
/// rumqttc lets it through, so such a reading would lead every link and hold the backlog.
#[test]
fn rejects_a_nul_in_any_topic() {
    let text = format!("topic_prefix = \"home\\u0000x\"\n{SEED}");
    let err = parse(&text).map(|c| c.sensors[0].topic.clone());
    assert!(err.is_err(), "accepted topic {err:?}");
    let text = SEED.replace("[mqtt]", "[mqtt]\nstatus_topic = \"s\\u0000\"");
    let err = parse(&text).map(|c| c.mqtt.availability.map(|a| a.topic));
    assert!(err.is_err(), "accepted status topic {err:?}");
}

#[test]
fn topic_templates_fill_in_placeholders() {
    let text = format!(
        "topic_prefix = \"home/{{hostname}}/\"\n{}",
        SEED.replace(
            "topic = \"temperature/outside\"",
            "topic = \"{client_id}/{sensor}\"",
        )
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.sensors[0].topic,
        format!("home/{}/pi-garden/outside", hostname())
    );
    let err = parse(&SEED.replace("temperature/outside", "t/{room}")).unwrap_err();
    assert!(
        err.contains(":14:9: sensor \"outside\": unknown placeholder {room}"),
        "{err}"
    );
}
