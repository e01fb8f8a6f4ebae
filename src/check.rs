//! `telemetryd check`: the config, buffer, broker, sandbox and sensors as the service meets them.
//!
//! Printed for a person.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::inspect;
use crate::mqtt::{self, Probe};
use crate::sandbox::Sandbox;

/// How long `check` waits for the broker's CONNACK.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints what `check` found; `Ok(false)` when something failed, `Err` when `unit` cannot be
/// read (`main` only prints it: anyhow, with what was being read as its context).
pub async fn run(
    path: &Path,
    config: &Config,
    no_broker: bool,
    unit: Option<&Path>,
) -> anyhow::Result<bool> {
    let mut failed: Vec<String> = Vec::new();
    let n = config.sensors.len();
    let plural = if n == 1 { "sensor" } else { "sensors" };
    println!("{}: ok, {n} {plural}", path.display());
    for warning in &config.warnings {
        println!("warning: {warning}");
    }

    let (sandbox, from) = match unit {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the unit {}", p.display()))?;
            (Sandbox::from_unit(&text), Some(p.to_owned()))
        }
        None => Sandbox::installed_or_shipped(),
    };
    let buffer = config.buffer.path.display();
    // With a unit installed, systemd makes its StateDirectory= at the service's start.
    let made_by_systemd = sandbox
        .state_dirs
        .iter()
        .find(|w| from.is_some() && config.buffer.path.starts_with(w) && !w.exists());
    match inspect::buffer_writable(&config.buffer.path) {
        Err(_) if made_by_systemd.is_some() => println!(
            "buffer: {buffer}: not there yet; systemd makes {} for the service when it starts \
             (StateDirectory=)",
            made_by_systemd.map_or_else(String::new, |w| w.display().to_string())
        ),
        Ok(inspect::BufferAccess::Exists) => println!("buffer: {buffer}: writable"),
        Ok(inspect::BufferAccess::WillBeCreated { under }) => println!(
            "buffer: {buffer}: not there yet; the daemon will create it ({} is writable)",
            under.display()
        ),
        Err(e) => {
            println!(
                "buffer: FAILED: {e}. The daemon would keep readings in memory only (up to \
                 10,000) and lose them when it stops"
            );
            failed.push("the buffer cannot be written".into());
        }
    }
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        println!(
            "note: check runs as root, who can write almost anything: run it as the service's \
             user (`sudo -u telemetryd telemetryd check`) to know that the service can"
        );
    }

    // Every server of `[mqtt] servers`, at once: the first that accepts us is where the
    // daemon connects; the others are its failover.
    let probes = async {
        if no_broker {
            Vec::new()
        } else {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..config.mqtt.servers.len() {
                let mqtt = config.mqtt.clone();
                set.spawn(async move { (i, mqtt::probe(&mqtt, i, PROBE_TIMEOUT).await) });
            }
            let mut answers = set.join_all().await;
            answers.sort_by_key(|(i, _)| *i);
            answers.into_iter().map(|(_, p)| p).collect::<Vec<_>>()
        }
    };
    let (results, probes) = tokio::join!(inspect::read_all(config), probes);
    let first_ok = probes
        .iter()
        .position(|p| matches!(p, Probe::Connected { .. }));
    let several = config.mqtt.servers.len() > 1;
    for (i, (server, probe)) in config.mqtt.servers.iter().zip(&probes).enumerate() {
        match probe {
            Probe::Connected { client_id } => {
                let role = match (several, Some(i) == first_ok) {
                    (false, _) => "",
                    (true, true) => "; the daemon connects here",
                    (true, false) => "; a failover server",
                };
                println!(
                    "broker: connected to the broker {server} (a test connection as {client_id}: \
                     nothing published){role}"
                )
            }
            Probe::Failed(error) => println!(
                "broker: FAILED: cannot connect to the broker {server}: {error}. The daemon would \
                 {}",
                if several {
                    "try the next server"
                } else {
                    "keep retrying, buffering readings meanwhile"
                }
            ),
        }
    }
    if !probes.is_empty() && first_ok.is_none() {
        failed.push("the broker cannot be reached".into());
    }

    let findings = sandbox.findings(config);
    let place = match &from {
        Some(p) => format!("under systemd ({})", p.display()),
        None => "under the shipped systemd unit (not installed here)".to_owned(),
    };
    if findings.is_empty() {
        println!("{place}: the sandbox hides nothing this config needs");
    }
    for f in &findings {
        let what = match (f.fails, &from) {
            (true, Some(_)) => {
                failed.push("the service's sandbox hides something".into());
                "FAILED"
            }
            (true, None) => "would fail",
            (false, _) => "note",
        };
        println!("{place}: {what}: {}", f.text);
    }

    print!("{}", inspect::render_readings(&results));
    let sensors_failed = results.iter().filter(|r| r.value.is_err()).count();
    if sensors_failed > 0 {
        failed.push(format!(
            "{sensors_failed} of {} sensors failed",
            results.len()
        ));
    }
    failed.dedup();
    if !failed.is_empty() {
        println!("check failed: {}", failed.join("; "));
    }
    Ok(failed.is_empty())
}
