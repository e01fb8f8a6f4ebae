//! Scenario `reconnect` (issue 13): how soon after a broker outage readings flow again. The
//! broker is stopped for a while (the daemon keeps retrying with backoff) and started again;
//! measured from the moment it accepts connections to the daemon's CONNACK and to the first
//! reading at a subscriber. Runs (and outages) go on side by side in threads: they are mostly
//! waiting, and the 10-minute outage then costs 10 minutes once.

use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime};

use telemetryd_testkit::{Broker, log_systime, wait_for};

use crate::env::{Daemon, FirstMessage};
use crate::{Fmt, Row, Settings};

const TOPIC: &str = "bench/reconnect";

/// Seconds from the broker accepting connections again to the daemon's CONNACK and to the
/// first reading at a subscriber.
struct Delay {
    connack: f64,
    first: f64,
}

/// One run: a daemon with a 100 ms sensor, its broker gone for `outage`.
fn one(bin: &Path, dir: &Path, outage: Duration, mqtt_extra: &str) -> Delay {
    let mut broker = Broker::start_quiet(&dir.join("broker"));
    let value = dir.join("value");
    std::fs::write(&value, "21.5\n").expect("the sensor's file");
    let config = format!(
        "log_level = \"info\"\nstats_interval = \"1h\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"bench-reconnect\"\n\
         stats_topic = \"\"\n{mqtt_extra}\
         [buffer]\npath = \"{buffer}\"\n\
         [[sensor]]\nname = \"t\"\nkind = \"file\"\npath = \"{value}\"\ninterval = \"100ms\"\n\
         topic = \"{TOPIC}\"\n",
        port = broker.port,
        buffer = dir.join("buffer").display(),
        value = value.display(),
    );
    let sub = FirstMessage::subscribe(&broker, "bench-reconnect-sub-0", TOPIC);
    let mut daemon = Daemon::start(bin, &dir.join("daemon"), &config);
    sub.wait(Duration::from_secs(60));
    drop(sub);

    broker.stop();
    // The outage itself: the scenario, not a synchronisation.
    thread::sleep(outage);
    broker.restart();
    let back = SystemTime::now();
    let back_at = std::time::Instant::now();
    let sub = FirstMessage::subscribe(&broker, "bench-reconnect-sub-1", TOPIC);
    let first = sub.wait(Duration::from_secs(120)).duration_since(back_at);
    // The CONNACK line is logged as the daemon gets it; it is there by the first delivery.
    let connack = wait_for(Duration::from_secs(10), "the reconnect in the log", || {
        daemon.lines_so_far().iter().find_map(|l| {
            let at = log_systime(l)?;
            (l.contains("connected to the broker") && !l.contains("disconnected") && at >= back)
                .then(|| at.duration_since(back).unwrap_or_default())
        })
    });
    daemon.stop();
    broker.stop();
    Delay {
        connack: connack.as_secs_f64(),
        first: first.as_secs_f64(),
    }
}

pub fn reconnect(s: &Settings, work: &Path) -> Vec<Row> {
    // The default (reconnect_max 8 s) and, for comparison, the old fixed 60 s cap.
    let caps: &[(&str, &str)] = if s.reconnect_compare {
        &[
            ("default", ""),
            (
                "reconnect_max = 60s (the old cap)",
                "reconnect_max = \"60s\"\n",
            ),
        ]
    } else {
        &[("default", "")]
    };
    let mut jobs = Vec::new();
    for &outage in &s.reconnect_outages {
        for (c, &(cap, extra)) in caps.iter().enumerate() {
            for run in 0..s.runs {
                let dir = work.join(format!("reconnect-{}s-{c}-{run}", outage.as_secs()));
                let bin = s.bin.clone();
                jobs.push((
                    outage,
                    cap,
                    thread::spawn(move || one(&bin, &dir, outage, extra)),
                ));
            }
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for (outage, cap, job) in jobs {
        let d = job.join().expect("a reconnect run");
        let what = format!("{}", humantime::format_duration(outage));
        eprintln!(
            "reconnect after {what} ({cap}): CONNACK {:.2} s, first reading {:.2} s",
            d.connack, d.first
        );
        for (measure, v) in [
            (
                format!("after a {what} outage ({cap}): broker back to the daemon's CONNACK"),
                d.connack,
            ),
            (
                format!(
                    "after a {what} outage ({cap}): broker back to the first reading delivered"
                ),
                d.first,
            ),
        ] {
            match rows.iter_mut().find(|r| r.measure == measure) {
                Some(r) => r.values.push(v),
                None => {
                    let target = if cap == "default" { "<= 10 s" } else { "" };
                    rows.push(Row::new("6", measure, target, Fmt::Secs, vec![v]))
                }
            }
        }
    }
    rows
}
