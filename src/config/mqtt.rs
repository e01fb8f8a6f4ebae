//! The `[mqtt]` table's validation, with the credentials and `password_file`.
//!
//! Broker or failover list, client id, keep-alive, availability and stats topics, MQTT 5
//! settings; `tls` validates `[mqtt.tls]`, `servers` parses the failover list.

use std::path::Path;
use std::time::Duration;

use super::error::{Invalid, Problem, bad};
use super::raw::{At, CONFIG_MAX, RawMqtt};
use super::servers::{Server, parse_list};
use super::topics::{expand, hostname};
use super::values::bounded;
use super::{Availability, MqttConfig, Protocol, Secret, tls};

/// The longest `online_payload` / `offline_payload`.
const MAX_STATUS_PAYLOAD: usize = 1024;

/// How long an MQTT 5 broker keeps our session after the connection drops, unless
/// `session_expiry` says otherwise. telemetryd does not depend on it (it resends from its own
/// store); it only spares re-subscribing and keeps the broker's view of a device that is away
/// for a night.
pub(super) const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(86_400);

/// The shortest keep-alive rumqttc's MQTT 5 client accepts (it panics below).
const MIN_KEEP_ALIVE_V5: Duration = Duration::from_secs(5);

/// The shortest `max_age`: MQTT 5 carries the message expiry in whole seconds.
const MIN_MAX_AGE: Duration = Duration::from_secs(1);

/// `reconnect_max`: the cap of the pause between reconnect rounds. The pause is drawn from
/// [d/2, d], so with 8 s a broker that is back is retried within 8 s.
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(8);
const MIN_RECONNECT_MAX: Duration = Duration::from_secs(1);
const MAX_RECONNECT_MAX: Duration = Duration::from_secs(600);

/// The client id: far below what would push a discovery config, a topic or the Last Will
/// towards rumqttc's 10 KiB packet limit.
const MAX_CLIENT_ID: usize = 256;

pub(super) fn validate_mqtt(
    raw: RawMqtt,
    warnings: &mut Vec<String>,
) -> Result<MqttConfig, Problem> {
    // A default topic that fails is the client id's doing (`{client_id}` in it).
    let client_id_at = raw.client_id.as_ref().map_or(0..0, At::span);
    let client_id = match raw.client_id {
        Some(id) if id.get_ref().is_empty() => {
            return bad(
                id.span(),
                "[mqtt] client_id must not be empty: it names the persistent session",
            );
        }
        Some(id) if id.get_ref().len() > MAX_CLIENT_ID => {
            return bad(
                id.span(),
                format!(
                    "[mqtt] client_id is longer than {MAX_CLIENT_ID} bytes: it goes into the \
                     status and stats topics and the Last Will"
                ),
            );
        }
        Some(id) => id.into_inner(),
        None => default_client_id(),
    };
    let host = match raw.host {
        Some(h) if h.get_ref().trim().is_empty() => {
            return bad(
                h.span(),
                "[mqtt] host must not be empty: the broker's name or address",
            );
        }
        Some(h) => Some(h.into_inner()),
        None => None,
    };
    let protocol = raw.protocol.as_ref().map_or(Protocol::V4, |p| *p.get_ref());
    let keep_alive = match &raw.keep_alive {
        // MQTT carries keep-alive in whole seconds, at most 65535.
        Some(k) => {
            let min = if protocol == Protocol::V5 {
                MIN_KEEP_ALIVE_V5
            } else {
                Duration::from_secs(1)
            };
            let why = if protocol == Protocol::V5 {
                " with protocol = 5 (rumqttc's MQTT 5 client refuses less)"
            } else {
                " (MQTT counts it in whole seconds, up to 65535)"
            };
            bounded(
                k,
                "[mqtt] keep_alive",
                min,
                Duration::from_secs(u16::MAX as u64),
                why,
            )?
        }
        None => Duration::from_secs(30),
    };
    let has_password_file = raw.password_file.is_some();
    let password = match (raw.password, raw.password_file) {
        (Some(_), Some(file)) => {
            return bad(
                file.span(),
                "[mqtt] give either `password` or `password_file`, not both",
            );
        }
        (Some(p), None) => Some((p.span(), Secret(p.into_inner()))),
        (None, Some(file)) => {
            let span = file.span();
            let secret = read_password(file.get_ref(), warnings)
                .map_err(|m| Problem::new(span.clone(), format!("[mqtt] {m}")))?;
            Some((span, Secret(secret)))
        }
        (None, None) => None,
    };
    let credentials = match (raw.username, password) {
        (Some(user), password) => Some((
            user.into_inner(),
            password.map_or_else(|| Secret(String::new()), |(_, p)| p),
        )),
        (None, Some((span, _))) => {
            let key = if has_password_file {
                "password_file"
            } else {
                "password"
            };
            return bad(span, format!("[mqtt] {key}: a password needs a `username`"));
        }
        (None, None) => None,
    };
    let tls = raw.tls.map(tls::validate_tls).transpose()?;
    // An empty topic turns the feature off.
    let topic = |key: &str, t: Option<At<String>>, default: &str| match t {
        Some(t) if t.get_ref().is_empty() => Ok(None),
        Some(t) => expand(t.get_ref(), &client_id, None)
            .map(Some)
            .map_err(|m| Problem::new(t.span(), format!("[mqtt] {key}: {m}"))),
        None => expand(default, &client_id, None).map(Some).map_err(|m| {
            Problem::new(
                client_id_at.clone(),
                format!("[mqtt] client_id makes the default {key} {default:?} invalid: {m}"),
            )
        }),
    };
    // Far below rumqttc's 10 KiB packet limit: a Last Will it refuses fails every connect.
    let payload = |key: &str, p: Option<At<String>>, default: &str| match p {
        Some(p) if p.get_ref().len() > MAX_STATUS_PAYLOAD => bad(
            p.span(),
            format!("[mqtt] {key} is longer than {MAX_STATUS_PAYLOAD} bytes"),
        ),
        Some(p) => Ok(p.into_inner()),
        None => Ok(default.to_owned()),
    };
    let online = payload("online_payload", raw.online_payload, "online")?;
    let offline = payload("offline_payload", raw.offline_payload, "offline")?;
    let availability = topic(
        "status_topic",
        raw.status_topic,
        "telemetryd/{client_id}/status",
    )?
    .map(|topic| Availability {
        topic,
        online,
        offline,
    });
    let stats_topic = topic(
        "stats_topic",
        raw.stats_topic,
        "telemetryd/{client_id}/stats",
    )?;
    let session_expiry = match &raw.session_expiry {
        Some(s) if protocol == Protocol::V4 => {
            return bad(
                s.span(),
                "[mqtt] session_expiry is an MQTT 5 setting: add `protocol = 5` (with MQTT 3.1.1 \
                 the broker decides how long a session lasts)",
            );
        }
        Some(s) => bounded(
            s,
            "[mqtt] session_expiry",
            Duration::ZERO,
            Duration::from_secs(u32::MAX as u64),
            ": MQTT 5 allows at most 4294967295 seconds (136 years, which means never)",
        )?,
        None => DEFAULT_SESSION_EXPIRY,
    };
    let max_age = match &raw.max_age {
        Some(a) => Some(bounded(
            a,
            "[mqtt] max_age",
            MIN_MAX_AGE,
            Duration::from_secs(u32::MAX as u64),
            " (MQTT 5 counts message expiry in whole seconds); leave it out to keep readings however old",
        )?),
        None => None,
    };
    let default_port = raw
        .port
        .map_or(if tls.is_some() { 8883 } else { 1883 }, |p| p.0);
    let servers = match (host, raw.servers) {
        (Some(_), Some(list)) => {
            return bad(
                list.span(),
                "[mqtt] servers and host are both set: give one or the other (servers lists \
                 every broker, the first one first)",
            );
        }
        (None, Some(list)) => parse_list(list.get_ref(), default_port)
            .map_err(|m| Problem::new(list.span(), format!("[mqtt] {m}")))?,
        (host, None) => vec![Server {
            host: host.unwrap_or_else(|| "localhost".to_owned()),
            port: default_port,
        }],
    };
    let reconnect_max = match &raw.reconnect_max {
        Some(r) => bounded(
            r,
            "[mqtt] reconnect_max",
            MIN_RECONNECT_MAX,
            MAX_RECONNECT_MAX,
            "",
        )?,
        None => DEFAULT_RECONNECT_MAX,
    };
    Ok(MqttConfig {
        host: servers[0].host.clone(),
        port: servers[0].port,
        servers,
        reconnect_max,
        client_id,
        clean_session: raw.clean_session.unwrap_or(false),
        // MQTT carries these in whole seconds.
        keep_alive: Duration::from_secs(keep_alive.as_secs()),
        credentials,
        tls,
        availability,
        stats_topic,
        protocol,
        session_expiry: Duration::from_secs(session_expiry.as_secs()),
        max_age: max_age.map(|a| Duration::from_secs(a.as_secs())),
    })
}

/// The first line of the file; warns when anyone on the machine can read it.
fn read_password(file: &Path, warnings: &mut Vec<String>) -> Result<String, Invalid> {
    use std::os::unix::fs::PermissionsExt;
    // Bounded like the config itself: a mistaken path (`/dev/zero`) must not eat the memory.
    let text = crate::sensor::read_bounded(file, CONFIG_MAX)
        .map_err(|e| Invalid(format!("password_file {}: {e}", file.display())))?;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o004 != 0
    {
        warnings.push(format!(
            "password_file {} is readable by every user: chmod 640 it (owner root, group telemetryd)",
            file.display()
        ));
    }
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// `telemetryd-<hostname>`: stable across restarts, so the broker keeps our session.
pub(super) fn default_client_id() -> String {
    match hostname().as_str() {
        "" => "telemetryd".to_owned(),
        h => format!("telemetryd-{h}"),
    }
}
