//! A 3-node nats-server cluster (JetStream, MQTT sessions replicated to every node) a test can
//! kill, restart and read the logs of.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use telemetryd_testkit::*;

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
    pub fn start(dir: &Path) -> NatsCluster {
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
        let mut cluster = NatsCluster { nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_ready(i);
        }
        cluster
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

    /// Until the node reports healthy (JetStream has a meta leader and the node is current)
    /// and its MQTT port accepts connections. Up to 3 minutes: after a node is killed and
    /// started again, JetStream's elections took over the former 60 s twice in five runs on a
    /// 2-core VM (2026-12-07), once with nothing else running; nothing of ours runs in this
    /// wait.
    fn wait_ready(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        wait_until(
            Duration::from_secs(180),
            &format!("nats node n{i} is healthy"),
            || {
                if let Some(s) = node.proc.as_mut().and_then(|p| p.try_status()) {
                    panic!("nats node n{i} exited ({s}): {}", read_lossy(&node.log));
                }
                healthz(node.http_port)
                    && std::net::TcpStream::connect(("127.0.0.1", node.mqtt_port)).is_ok()
            },
        );
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
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

/// nats-server's `/healthz` answers `{"status":"ok"}` once JetStream is ready on that node.
fn healthz(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut body);
    String::from_utf8_lossy(&body).contains("\"ok\"")
}
