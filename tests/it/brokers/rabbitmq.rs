//! RabbitMQ's MQTT plugin as the broker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use telemetryd_testkit::*;

use super::{Restartable, outage_round_trip};

/// A throwaway RabbitMQ node with its MQTT plugin, on its own ports and data dir. Debian's
/// wrapper runs it as user `rabbitmq` through `su` (a new session), so it is stopped with
/// `rabbitmqctl stop`, and killed by the pid in its pid file if that fails.
struct Rabbit {
    node: String,
    dir: PathBuf,
    mqtt_port: u16,
    ports: (u16, u16),
    wrapper: Option<Proc>,
}

impl Rabbit {
    fn start(dir: &Path, name: &str) -> Rabbit {
        fs::create_dir_all(dir.join("mnesia")).unwrap();
        fs::create_dir_all(dir.join("log")).unwrap();
        let mqtt_port = free_port();
        let ports = (free_port(), free_port());
        fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = {}\nmqtt.listeners.tcp.default = {mqtt_port}\n\
                 mqtt.allow_anonymous = true\nloopback_users = none\n",
                ports.0
            ),
        )
        .unwrap();
        let status = Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown to rabbitmq");
        let node = format!("td-{name}-{}@localhost", std::process::id());
        let mut rabbit = Rabbit {
            node,
            dir: dir.to_owned(),
            mqtt_port,
            ports,
            wrapper: None,
        };
        rabbit.restart();
        rabbit
    }

    fn kill_node(&self) {
        let pid_file = self.dir.join("mnesia").join(format!("{}.pid", self.node));
        if let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Restartable for Rabbit {
    fn name(&self) -> &'static str {
        "RabbitMQ"
    }

    fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    fn restart(&mut self) {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("out.log"))
            .unwrap();
        let mut wrapper = Proc::spawn(
            "rabbitmq-server",
            Command::new("rabbitmq-server")
                .env("RABBITMQ_NODENAME", &self.node)
                .env("RABBITMQ_NODE_PORT", self.ports.0.to_string())
                .env("RABBITMQ_DIST_PORT", self.ports.1.to_string())
                .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
                .env("RABBITMQ_LOG_BASE", d("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
                .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        );
        wait_until(DEADLINE * 2, "RabbitMQ accepts MQTT connections", || {
            if let Some(s) = wrapper.try_status() {
                panic!(
                    "rabbitmq-server exited ({s}): {}",
                    fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok()
        });
        self.wrapper = Some(wrapper);
    }

    fn stop(&mut self) {
        let Some(mut wrapper) = self.wrapper.take() else {
            return;
        };
        let stopped = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        if !stopped.is_ok_and(|o| o.status.success()) {
            self.kill_node();
        }
        assert!(
            wrapper.wait_timeout(DEADLINE).is_some(),
            "rabbitmq-server did not exit"
        );
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.wrapper.is_some() {
            self.kill_node();
        }
    }
}

/// RabbitMQ's MQTT plugin as the broker: persistent session, QoS 1, a node restart in the
/// middle of the stream; nothing lost, nothing reordered. Skipped where RabbitMQ is not
/// installed (CI installs Mosquitto and NATS only).
#[test]
fn rabbitmq_mqtt_plugin() {
    if Command::new("rabbitmq-server")
        .arg("--help")
        .output()
        .is_err()
        || !Path::new("/usr/lib/rabbitmq").exists()
    {
        eprintln!("skipped: RabbitMQ not installed");
        return;
    }
    let mut env = Env::new("rabbitmq_mqtt_plugin");
    let mut rabbit = Rabbit::start(&env.path("rabbit"), "it");
    let log = rabbit.dir.join("out.log");
    env.on_failure_dump("rabbitmq-server output", move || {
        fs::read_to_string(&log).unwrap_or_default()
    });
    outage_round_trip(&mut env, &mut rabbit);
    rabbit.stop();
}
