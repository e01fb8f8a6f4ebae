//! `telemetryd check` and `telemetryd buffer`: what a person asks before trusting the daemon.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use crate::config::Config;
use crate::mqtt::servers::Server;
use crate::outbox::{self, BufferReport};
use crate::payload::format_value;
use crate::schedule::{calibrate, read_timeout};
use crate::sensor::Source;

/// One sensor read once, as `check` shows it.
#[derive(Debug)]
pub struct CheckedReading {
    pub name: String,
    pub topic: String,
    pub unit: Option<String>,
    /// The value as it would be published, or why there is none.
    pub value: Result<String, String>,
}

/// Reads every configured sensor once, all at the same time (a DS18B20 takes 750 ms).
pub async fn read_all(config: &Config) -> Vec<CheckedReading> {
    let mut set = JoinSet::new();
    for (i, sensor) in config.sensors.iter().cloned().enumerate() {
        let mut source = Source::new(sensor.source.clone(), &config.sysfs_root);
        set.spawn(async move {
            let value =
                match tokio::time::timeout(read_timeout(&sensor.source), source.read()).await {
                    Err(_) => Err("no answer: the read timed out".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(raw)) => calibrate(&sensor, raw)
                        .map(|v| format_value(v, sensor.decimals))
                        .map_err(|e| e.to_string()),
                };
            let unit = sensor
                .unit
                .clone()
                .or_else(|| source.unit().map(str::to_owned));
            (
                i,
                CheckedReading {
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

/// How long `check` waits for a server to accept a TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One line per server of `[mqtt] servers`, in order, saying whether it accepts connections
/// now; the first that does is the one the daemon would be on. Only TCP: the broker's own
/// verdict (login, TLS) comes with the daemon's CONNECT, in its log.
pub async fn probe_servers(servers: &[Server]) -> String {
    let mut set = JoinSet::new();
    for (i, server) in servers.iter().cloned().enumerate() {
        set.spawn(async move {
            let addr = (server.host.as_str(), server.port);
            let answer =
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
                };
            (i, server, answer)
        });
    }
    let mut answers = set.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    let current = answers.iter().position(|(_, _, a)| a.is_ok());
    let mut out = String::new();
    for (i, server, answer) in answers {
        let line = match answer {
            Ok(()) if Some(i) == current => {
                "accepts connections: the daemon connects here".to_owned()
            }
            Ok(()) => "accepts connections (a failover server)".to_owned(),
            Err(e) => format!("not reachable: {e}"),
        };
        out.push_str(&format!("server {server}: {line}\n"));
    }
    out
}

/// A table: sensor, value, unit, topic; errors are listed below it in full.
pub fn render_readings(readings: &[CheckedReading]) -> String {
    let rows: Vec<[&str; 4]> = readings
        .iter()
        .map(|r| match &r.value {
            Ok(v) => [
                r.name.as_str(),
                v.as_str(),
                r.unit.as_deref().unwrap_or(""),
                r.topic.as_str(),
            ],
            Err(_) => [r.name.as_str(), "FAILED", "", r.topic.as_str()],
        })
        .collect();
    let header = ["SENSOR", "VALUE", "UNIT", "TOPIC"];
    let mut widths = [0; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let [w0, w1, w2] = widths;
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            row[0], row[1], row[2], row[3]
        ));
    }
    for r in readings {
        if let Err(e) = &r.value {
            out.push_str(&format!("{}: {e}\n", r.name));
        }
    }
    out
}

/// The buffer at `path`, for `telemetryd buffer`.
pub fn buffer(path: &Path) -> anyhow::Result<BufferView> {
    Ok(BufferView {
        path: path.display().to_string(),
        report: outbox::inspect(path)?,
        now: SystemTime::now(),
    })
}

pub struct BufferView {
    path: String,
    report: BufferReport,
    now: SystemTime,
}

impl fmt::Display for BufferView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "buffer:        {}", self.path)?;
        writeln!(f, "waiting:       {} readings", r.depth)?;
        match &r.oldest {
            Some((seq, record)) => {
                let taken = UNIX_EPOCH + Duration::from_millis(record.taken_ms);
                let age = self.now.duration_since(taken).unwrap_or_default();
                let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
                writeln!(
                    f,
                    "oldest:        {} ({age} ago), seq {seq}, topic {}",
                    // A stored time is outside input: humantime panics past year 9999.
                    if record.taken_ms <= crate::mqtt::properties::LAST_TS_MS {
                        humantime::format_rfc3339_seconds(taken).to_string()
                    } else {
                        format!("an impossible time ({} ms)", record.taken_ms)
                    },
                    record.topic
                )?;
            }
            None => writeln!(f, "oldest:        -")?,
        }
        writeln!(
            f,
            "size on disk:  {:.1} MiB",
            r.bytes_on_disk as f64 / (1024.0 * 1024.0)
        )?;
        if r.quarantined > 0 {
            writeln!(
                f,
                "quarantined:   {} undecodable readings (kept aside, never sent)",
                r.quarantined
            )?;
        }
        Ok(())
    }
}
