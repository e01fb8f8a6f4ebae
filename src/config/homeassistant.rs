//! The `[homeassistant]` table: MQTT discovery's prefix, node id and device name.

use super::error::{Problem, bad};
use super::raw::{At, RawHomeAssistant};
use super::{HomeAssistant, SensorConfig};

/// `[homeassistant]` names: far below what would push a discovery config towards rumqttc's
/// 10 KiB packet limit.
const MAX_HA_TEXT: usize = 128;

pub(super) fn validate_homeassistant(
    ha: RawHomeAssistant,
    client_id: &str,
) -> Result<HomeAssistant, Problem> {
    // Each goes into every discovery config: bounded so that one stays far below
    // rumqttc's 10 KiB packet limit (a config it refuses drops the link at every
    // connect, and no reading is ever delivered).
    let text = |key: &str, v: Option<At<String>>, default: &str| match v {
        Some(v) if v.get_ref().is_empty() || v.get_ref().len() > MAX_HA_TEXT => bad(
            v.span(),
            format!("[homeassistant] {key} must be 1 to {MAX_HA_TEXT} bytes"),
        ),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default.to_owned()),
    };
    let node_id = text("node_id", ha.node_id, client_id)?;
    Ok(HomeAssistant {
        discovery_prefix: text("discovery_prefix", ha.discovery_prefix, "homeassistant")?,
        device_name: text("device_name", ha.device_name, client_id)?,
        // Discovery ids allow [a-zA-Z0-9_-] only.
        node_id: crate::homeassistant::object_id(&node_id),
        retain_states: ha.retain_states.unwrap_or(false),
        diagnostics: ha.diagnostics.unwrap_or(true),
    })
}

/// A warning when a sensor has `ha` settings that nothing will use.
pub(super) fn unused_settings(
    homeassistant: Option<&HomeAssistant>,
    sensors: &[SensorConfig],
) -> Option<String> {
    if homeassistant.is_none()
        && let Some(s) = sensors.iter().find(|s| s.ha != Default::default())
    {
        return Some(format!(
            "sensor {:?} has Home Assistant settings (`ha`) but there is no [homeassistant] table: they do nothing",
            s.name
        ));
    }
    None
}
