//! `telemetryd check`'s reading of every sensor once, and its table.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::{Config, Format, Qos};
use crate::payload::format_value;
use crate::schedule::{calibrate, read_timeout};
use crate::sensor::{Cause, ReadError, Source};

/// One sensor read once, as `check` shows it.
#[derive(Debug)]
pub struct CheckedReading {
    pub name: String,
    pub topic: String,
    pub interval: Duration,
    pub qos: Qos,
    pub format: Format,
    pub unit: Option<String>,
    /// The value as it would be published, or why there is none.
    pub value: Result<String, ReadError>,
}

/// Reads every configured sensor once, all at the same time (a DS18B20 takes 750 ms).
pub async fn read_all(config: &Config) -> Vec<CheckedReading> {
    let mut set = JoinSet::new();
    for (i, sensor) in config.sensors.iter().cloned().enumerate() {
        let mut source = Source::new(sensor.source.clone(), &config.sysfs_root);
        set.spawn(async move {
            let value = match tokio::time::timeout(read_timeout(&sensor.source), source.read())
                .await
            {
                Err(_) => Err(ReadError::new(
                    Cause::Timeout,
                    "no answer: the read timed out",
                )),
                Ok(Err(e)) => Err(e),
                Ok(Ok(raw)) => calibrate(&sensor, raw).map(|v| format_value(v, sensor.decimals)),
            };
            let unit = sensor
                .unit
                .clone()
                .or_else(|| source.unit().map(str::to_owned));
            (
                i,
                CheckedReading {
                    interval: sensor.interval,
                    qos: sensor.qos,
                    format: sensor.format,
                    name: sensor.name,
                    topic: sensor.topic,
                    unit,
                    value,
                },
            )
        });
    }
    let mut out: Vec<(usize, CheckedReading)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// A table: sensor, value, unit, interval, QoS, format, topic; errors are listed below it in
/// full.
pub fn render_readings(readings: &[CheckedReading]) -> String {
    let rows: Vec<[String; 7]> = readings
        .iter()
        .map(|r| {
            let (value, unit) = match &r.value {
                Ok(v) => (v.clone(), r.unit.clone().unwrap_or_default()),
                Err(_) => ("FAILED".to_owned(), String::new()),
            };
            [
                r.name.clone(),
                value,
                unit,
                humantime::format_duration(r.interval).to_string(),
                match r.qos {
                    Qos::AtLeastOnce => "1",
                    Qos::AtMostOnce => "0",
                }
                .to_owned(),
                match r.format {
                    Format::Plain => "plain",
                    Format::Json => "json",
                }
                .to_owned(),
                r.topic.clone(),
            ]
        })
        .collect();
    let header = [
        "SENSOR", "VALUE", "UNIT", "INTERVAL", "QOS", "FORMAT", "TOPIC",
    ]
    .map(String::from);
    let mut widths = [0; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (cell, w) in row.iter().zip(widths) {
            out.push_str(&format!("{cell:w$}  "));
        }
        out.push_str(&row[6]);
        out.push('\n');
    }
    for r in readings {
        if let Err(e) = &r.value {
            out.push_str(&format!("{}: {e}\n", r.name));
        }
    }
    out
}
