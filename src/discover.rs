//! `telemetryd sensors`: what this machine has, as ready-to-paste `[[sensor]]` blocks.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::payload::format_value;
use crate::sensor::system::{METRICS, Metric};
use crate::sensor::{Cause, ReadError, Source, SourceSpec};

/// 1-Wire families read by the kernel's w1_therm driver.
const W1_THERM_FAMILIES: &[&str] = &["10-", "22-", "28-", "3b-", "42-"];
/// A discovery read that takes longer than this is shown as such, not waited for.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A sensor found under the sysfs root.
#[derive(Debug)]
pub struct Found {
    pub name: String,
    pub what: String,
    pub spec: SourceSpec,
    pub value: Result<(f64, Option<&'static str>), ReadError>,
}

/// Looks for 1-Wire thermometers, IIO channels, hwmon inputs and thermal zones, and reads
/// each once (all at the same time); then the `system` metrics that read on this machine.
pub async fn scan(root: &Path, procfs_root: &Path) -> Vec<Found> {
    let mut specs: Vec<(String, String, SourceSpec)> = Vec::new();
    for dir in entries(&root.join("bus/w1/devices")) {
        let id = file_name(&dir);
        if W1_THERM_FAMILIES.iter().any(|f| id.starts_with(f)) && dir.join("w1_slave").exists() {
            let spec = SourceSpec::Ds18b20 {
                path: None,
                device: Some(id.clone()),
            };
            specs.push((id.clone(), format!("1-Wire thermometer {id}"), spec));
        }
    }
    for dir in entries(&root.join("bus/iio/devices")) {
        let Some(device) = read_trimmed(&dir.join("name")) else {
            continue;
        };
        let channels: BTreeSet<String> = entries(&dir)
            .iter()
            .filter_map(|p| {
                let n = file_name(p);
                let stem = n.strip_prefix("in_")?;
                stem.strip_suffix("_input")
                    .or_else(|| stem.strip_suffix("_raw"))
                    .map(str::to_owned)
            })
            .collect();
        for channel in channels {
            let what = format!(
                "IIO device {device} ({}), channel {channel}",
                file_name(&dir)
            );
            let spec = SourceSpec::Iio {
                device: device.clone(),
                channel: channel.clone(),
            };
            specs.push((format!("{device}_{channel}"), what, spec));
        }
    }
    for dir in entries(&root.join("class/hwmon")) {
        let Some(chip) = read_trimmed(&dir.join("name")) else {
            continue;
        };
        let inputs: BTreeSet<String> = entries(&dir)
            .iter()
            .filter_map(|p| file_name(p).strip_suffix("_input").map(str::to_owned))
            .collect();
        for input in inputs {
            let label = read_trimmed(&dir.join(format!("{input}_label")));
            let what = format!(
                "hwmon chip {chip} ({}), input {input}{}",
                file_name(&dir),
                label.map(|l| format!(" \"{l}\"")).unwrap_or_default()
            );
            let spec = SourceSpec::Hwmon {
                chip: chip.clone(),
                input: input.clone(),
            };
            specs.push((format!("{chip}_{input}"), what, spec));
        }
    }
    for dir in entries(&root.join("class/thermal")) {
        if !file_name(&dir).starts_with("thermal_zone") {
            continue;
        }
        let Some(zone) = read_trimmed(&dir.join("type")) else {
            continue;
        };
        let what = format!("thermal zone {zone} ({})", file_name(&dir));
        specs.push((zone.clone(), what, SourceSpec::Thermal { zone }));
    }
    let hardware = specs.len();
    for name in METRICS {
        let metric = Metric::parse(name, None, None).expect("a known metric");
        let what = match &metric {
            Metric::DiskUsed { path } => format!("system: disk used on {}", path.display()),
            m => format!("system: {}", m.name().replace('_', " ")),
        };
        let spec = SourceSpec::System {
            metric,
            procfs_root: procfs_root.to_owned(),
        };
        specs.push(((*name).to_owned(), what, spec));
    }

    let mut used = HashSet::new();
    let mut set = JoinSet::new();
    for (i, (name, what, spec)) in specs.into_iter().enumerate() {
        let name = unique(&mut used, crate::homeassistant::object_id(&name));
        let mut source = Source::new(spec.clone(), root);
        set.spawn(async move {
            let value = match tokio::time::timeout(READ_TIMEOUT, source.read()).await {
                Ok(Ok(v)) => Ok((v, source.unit())),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ReadError::new(
                    Cause::Timeout,
                    format!("no answer within {READ_TIMEOUT:?}"),
                )),
            };
            (
                i,
                Found {
                    name,
                    what,
                    spec,
                    value,
                },
            )
        });
    }
    let mut found = set.join_all().await;
    found.sort_by_key(|(i, _)| *i);
    // A system metric this machine does not have (no Wi-Fi, not a Pi) is left out.
    found
        .into_iter()
        .filter(|(i, f)| *i < hardware || f.value.is_ok())
        .map(|(_, f)| f)
        .collect()
}

/// The blocks, or a note saying nothing was found and where it looked.
pub fn render(found: &[Found], root: &Path) -> String {
    if found.is_empty() {
        return format!(
            "# No sensors found under {}: no 1-Wire thermometers (bus/w1/devices), IIO devices\n\
             # (bus/iio/devices), hwmon chips (class/hwmon) or thermal zones (class/thermal).\n\
             # On a Pi, enable them with dtoverlay= lines in /boot/firmware/config.txt.\n\
             # A file or a command can always be read: see kind = \"file\" and \"command\".\n",
            root.display()
        );
    }
    let mut out = String::new();
    for f in found {
        let now = match &f.value {
            Ok((v, unit)) => format!(
                "now {}{}",
                format_value(*v, None),
                unit.map(|u| format!(" {u}")).unwrap_or_default()
            ),
            Err(e) => format!("reading failed: {e}"),
        };
        out.push_str(&format!(
            "# {}: {now}\n[[sensor]]\nname = \"{}\"\n",
            f.what, f.name
        ));
        out.push_str(&match &f.spec {
            SourceSpec::Ds18b20 { device, .. } => {
                format!(
                    "kind = \"ds18b20\"\ndevice = \"{}\"\n",
                    device.as_deref().unwrap_or_default()
                )
            }
            SourceSpec::Iio { device, channel } => {
                format!("kind = \"iio\"\ndevice = \"{device}\"\nchannel = \"{channel}\"\n")
            }
            SourceSpec::Hwmon { chip, input } => {
                format!("kind = \"hwmon\"\nchip = \"{chip}\"\ninput = \"{input}\"\n")
            }
            SourceSpec::Thermal { zone } => format!("kind = \"thermal\"\nzone = \"{zone}\"\n"),
            SourceSpec::System { metric, .. } => {
                let path = match metric {
                    Metric::DiskUsed { path } => format!("path = \"{}\"\n", path.display()),
                    _ => String::new(),
                };
                format!("kind = \"system\"\nmetric = \"{}\"\n{path}", metric.name())
            }
            SourceSpec::File { .. } | SourceSpec::Command { .. } => {
                unreachable!("never discovered")
            }
        });
        // Health figures change slowly; a flag is 0 or 1.
        let (interval, decimals) = match &f.spec {
            SourceSpec::System { metric, .. } if metric.is_flag() => ("1m", 0),
            SourceSpec::System { .. } => ("1m", 1),
            _ => ("30s", 1),
        };
        out.push_str(&format!(
            "interval = \"{interval}\"\ntopic = \"sensors/{}\"\ndecimals = {decimals}\n\n",
            f.name
        ));
    }
    out
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn unique(used: &mut HashSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{name}_{n}");
        n += 1;
    }
    candidate
}
