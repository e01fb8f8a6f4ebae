//! A 3-node nats-server cluster (JetStream, MQTT sessions replicated to every node) a test can
//! kill, restart and read the logs of.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use telemetryd_testkit::*;

use super::nats_health::{http_get, lagging_replica};

pub fn have_nats() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("skipped: nats-server not installed");
    }
    ok
}

/// One nats-server of the cluster.
struct Node {
    conf: PathBuf,
    log: PathBuf,
    http_port: u16,
    mqtt_port: u16,
    proc: Option<Proc>,
}

/// Three nats-servers routed to each other, with JetStream and MQTT; the MQTT session and
/// message streams and the consumers have 3 replicas, so a session survives a node.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the three nodes in `dir` and waits until each is ready. Tries again on fresh
    /// ports (up to 3 times) if a node could not bind one: another process can take a port
    /// between `free_port()` and nats-server's bind.
    pub fn start(dir: &Path) -> NatsCluster {
        for attempt in 1.. {
            let mut cluster = NatsCluster::configure(dir);
            (0..3).for_each(|i| cluster.spawn(i));
            match (0..3).try_for_each(|i| cluster.wait_ready(i)) {
                Ok(()) => return cluster,
                Err(exit) if attempt < 3 && exit.contains("address already in use") => {
                    eprintln!("nats cluster: a port was taken, again on new ports: {exit}");
                    drop(cluster);
                    fs::remove_dir_all(dir).unwrap();
                }
                Err(exit) => panic!("{exit}"),
            }
        }
        unreachable!()
    }

    /// Writes each node's config, on ports free now.
    fn configure(dir: &Path) -> NatsCluster {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list: Vec<String> = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let node_dir = dir.join(format!("n{i}"));
            fs::create_dir_all(&node_dir).unwrap();
            let (http_port, mqtt_port) = (free_port(), free_port());
            let conf = node_dir.join("nats.conf");
            fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{client}\n\
                     server_name: n{i}\n\
                     http: 127.0.0.1:{http_port}\n\
                     jetstream {{ store_dir: {js} }}\n\
                     cluster {{ name: telemetryd, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n\
                     mqtt {{ listen: 127.0.0.1:{mqtt_port}, stream_replicas: 3, consumer_replicas: 3 }}\n",
                    client = free_port(),
                    js = toml_str(&node_dir.join("js").display().to_string()),
                    routes = route_list.join(", "),
                ),
            )
            .unwrap();
            nodes.push(Node {
                conf,
                log: node_dir.join("nats.log"),
                http_port,
                mqtt_port,
                proc: None,
            });
        }
        NatsCluster { nodes }
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        node.proc = Some(Proc::spawn(
            "nats-server",
            Command::new("nats-server")
                .arg("-c")
                .arg(&node.conf)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
    }

    /// Until the node is current with JetStream's meta leader, every stream and consumer it
    /// holds a replica of is current in the eyes of that asset's leader, and its MQTT port
    /// accepts connections: then it can stand in for another node that is killed next.
    ///
    /// Not `/healthz`: on nats-server 2.9 (Debian's) a restarted node's replica of a
    /// `$MQTT_rmsgs_<node>` consumer (each node's durable for retained messages, which these
    /// tests never send; upstream replaced those durables after 2.10.10) often never becomes
    /// current, and `/healthz` then fails for good: 15 of 36 restarts stayed unhealthy over
    /// 2 minutes with six clusters at once (2026-12-07), and CI's run failed that way after
    /// 3 minutes. Those consumers are the only assets skipped here.
    ///
    /// Err(why) if a node exited meanwhile; panics if it is not ready within 3 minutes.
    fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let mut last = String::new();
        wait_for(
            Duration::from_secs(180),
            &format!("nats node n{i} is current"),
            || {
                // Any node: a dead one would leave this one waiting for its report.
                for (j, node) in self.nodes.iter_mut().enumerate() {
                    if let Some(s) = node.proc.as_mut().and_then(|p| p.try_status()) {
                        let log = read_lossy(&node.log);
                        return Some(Err(format!("nats node n{j} exited ({s}): {log}")));
                    }
                }
                let behind = self.behind(i);
                if behind != last {
                    eprintln!("nats node n{i}: {behind}");
                    last = behind;
                }
                last.is_empty().then_some(Ok(()))
            },
        )
    }

    /// What node `i` still lacks to be ready, or "" once it lacks nothing.
    fn behind(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let server_only = "/healthz?js-server-only=true";
        if !http_get(node.http_port, server_only).is_some_and(|b| b.contains("\"ok\"")) {
            return "not current with the JetStream meta leader".into();
        }
        if std::net::TcpStream::connect(("127.0.0.1", node.mqtt_port)).is_err() {
            return "MQTT port not accepting".into();
        }
        let me = format!("n{i}");
        for (j, other) in self.nodes.iter().enumerate() {
            if other.proc.is_none() {
                continue;
            }
            let Some(jsz) = http_get(other.http_port, "/jsz?consumers=true")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            else {
                return format!("no JetStream report from n{j}");
            };
            if let Some(lag) = lagging_replica(&jsz, &format!("n{j}"), &me) {
                return lag;
            }
        }
        String::new()
    }
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        if let Err(exit) = self.wait_ready(i) {
            panic!("{exit}");
        }
    }

    pub fn mqtt_port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt_port
    }

    pub fn logs(&self) -> impl Fn() -> String + Send + 'static {
        let logs: Vec<PathBuf> = self.nodes.iter().map(|n| n.log.clone()).collect();
        move || {
            logs.iter()
                .map(|l| format!("--- {}\n{}", l.display(), tail(&read_lossy(l), 60)))
                .collect()
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
