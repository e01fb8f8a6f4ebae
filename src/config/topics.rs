//! Topic templates: placeholders filled in, `topic_prefix` put in front, publish topics checked.

use super::SensorConfig;
use super::error::{Invalid, Problem};
use super::raw::At;

/// Checks `topic_prefix` on its own: its mistakes point at it, not at every sensor.
pub(super) fn validate_prefix(
    raw: Option<At<String>>,
    client_id: &str,
) -> Result<Option<String>, Problem> {
    Ok(match raw {
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            let trimmed = p.trim_end_matches('/');
            if !trimmed.is_empty() {
                expand(trimmed, client_id, Some("sensor"))
                    .map_err(|m| Problem::new(span, format!("topic_prefix: {m}")))?;
            }
            Some(p)
        }
        None => None,
    })
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The sensor's topic behind `topic_prefix`, with placeholders filled in.
pub(super) fn topic_for(
    prefix: Option<&str>,
    sensor: &SensorConfig,
    client_id: &str,
) -> Result<String, Invalid> {
    let joined = match prefix.map(|p| p.trim_end_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/{}", sensor.topic),
        _ => sensor.topic.clone(),
    };
    expand(&joined, client_id, Some(&sensor.name))
}

/// Fills in `{client_id}`, `{hostname}` and (for sensor topics) `{sensor}`, so that one config
/// file serves a fleet; checks the result is a publish topic.
pub(super) fn expand(
    template: &str,
    client_id: &str,
    sensor: Option<&str>,
) -> Result<String, Invalid> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| Invalid("topic has a `{` without a closing `}`".into()))?
            + open;
        out.push_str(&match (&rest[open + 1..close], sensor) {
            ("client_id", _) => client_id.to_owned(),
            ("hostname", _) => hostname(),
            ("sensor", Some(name)) => name.to_owned(),
            (other, _) => {
                let known = if sensor.is_some() {
                    "{client_id}, {sensor} or {hostname}"
                } else {
                    "{client_id} or {hostname}"
                };
                return Err(Invalid(format!(
                    "unknown placeholder {{{other}}} in topic: use {known}"
                )));
            }
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    if !is_publish_topic(&out) || out.len() > 1024 {
        return Err(Invalid(format!(
            "topic {out:?} is not a valid publish topic"
        )));
    }
    Ok(out)
}

/// What MQTT allows as the topic of a PUBLISH: not empty, no wildcard, no U+0000. A NUL makes
/// Mosquitto drop the link, and rumqttc does not check for it: the reading would go out first
/// again on every reconnect, holding up everything behind it.
pub(super) fn is_publish_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}
