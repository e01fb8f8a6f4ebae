//! nats-server's MQTT front end (JetStream) as the broker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use telemetryd_testkit::*;

use super::{Restartable, outage_round_trip};

/// nats-server with JetStream and its MQTT front end: a broker that clusters.
struct Nats {
    mqtt_port: u16,
    conf: PathBuf,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Restartable for Nats {
    fn name(&self) -> &'static str {
        "NATS"
    }

    fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// Starts (again) with the same config and JetStream store; ready once its MQTT port
    /// accepts connections.
    fn restart(&mut self) {
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let (status, in_time) = p.terminate(DEADLINE);
            assert!(in_time, "nats-server did not stop ({status})");
        }
    }
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        fs::create_dir_all(dir).unwrap();
        let mqtt_port = free_port();
        let conf = dir.join("nats.conf");
        fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{nats}\nserver_name: telemetryd_test\n\
                 jetstream {{ store_dir: {js} }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
                nats = free_port(),
                js = toml_str(&dir.join("js").display().to_string()),
            ),
        )
        .unwrap();
        let mut nats = Nats {
            mqtt_port,
            conf,
            proc: None,
            log: dir.join("nats.log"),
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut proc = Proc::spawn(
            "nats-server",
            Command::new("nats-server")
                .arg("-c")
                .arg(&self.conf)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        wait_until(DEADLINE, "nats-server accepts MQTT connections", || {
            if let Some(s) = proc.try_status() {
                panic!(
                    "nats-server exited ({s}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok()
        });
        self.proc = Some(proc);
    }
}

/// NATS as the broker: QoS 1 into a persistent session, an outage with a server restart in
/// the middle of the stream, nothing lost, nothing reordered.
#[test]
fn nats_server_mqtt() {
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: nats-server not installed");
        return;
    }
    let mut env = Env::new("nats_server_mqtt");
    let mut nats = Nats::start(&env.path("nats"));
    let log = nats.log.clone();
    env.on_failure_dump("nats-server log", move || {
        fs::read_to_string(&log).unwrap_or_default()
    });
    outage_round_trip(&mut env, &mut nats);
}
