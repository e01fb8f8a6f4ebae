//! Brokers that want more than a plain anonymous connection: TLS (certificates made by the
//! test), passwords, client certificates. Misconfigurations must give a clear reason, be
//! retried with backoff, lose nothing, and be fixable by a reload.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";
const PASSWORD: &str = "correct-horse-battery";

/// A test CA and a server certificate for `localhost` signed by it, plus a client one.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed nothing here: trusting it must fail the handshake.
    other_ca: PathBuf,
    /// The test CA, to sign more certificates with.
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            p
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (Issuer::new(params, key), cert.pem())
        };
        let (issuer, ca_pem) = ca("telemetryd test CA");
        let (_, other_pem) = ca("some other CA");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = leaf(vec!["localhost".into()]);
        let (client_pem, client_key) = leaf(vec!["pi-garden".into()]);
        Pki {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_pem),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_pem),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_pem),
            issuer,
        }
    }
}

/// A Mosquitto with its plain anonymous listener (for the subscriber) and a TLS listener
/// that wants a password and, with `require_client_cert`, a client certificate.
fn tls_broker(env: &mut Env, pki: &Pki, require_client_cert: bool) -> u16 {
    let dir = env.path("broker");
    fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwd");
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args(["pi", PASSWORD])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let tls_port = free_port();
    let listener = format!(
        "listener {tls_port} 127.0.0.1\n\
         allow_anonymous false\n\
         password_file {passwd}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate {require_client_cert}\n",
        passwd = passwords.display(),
        ca = pki.ca.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    );
    let broker = Broker::start_with(&dir, &listener);
    let port = broker.port;
    env.broker = Some(broker);
    env.sub = Some(Subscriber::start(
        env.dir(),
        port,
        &format!("sub-{}", env.name),
    ));
    tls_port
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// The daemon's config for the TLS listener: `mqtt_extra` goes into `[mqtt]`, `tls` into
/// `[mqtt.tls]`.
fn config(env: &Env, tls_port: u16, mqtt_extra: &str, tls: &str, counter: &Counter) -> String {
    let cfg = env.config_for_port(
        tls_port,
        "",
        &counter.sensor_toml("counter", TOPIC, "50ms", 1),
    );
    tweak(
        cfg,
        &[
            (
                "host = \"127.0.0.1\"",
                &format!("host = \"localhost\"\n{mqtt_extra}"),
            ),
            ("[buffer]", &format!("[mqtt.tls]\n{tls}\n\n[buffer]")),
        ],
    )
}

/// TLS with the test CA and a password from a file: every reading arrives, in order, and the
/// password is nowhere in the log.
#[test]
fn tls_and_password() {
    let mut env = Env::new("tls_and_password");
    let pki = Pki::make(&env.path("pki"));
    let tls_port = tls_broker(&mut env, &pki, false);
    let pw = env.path("mqtt-password");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let counter = Counter::new(env.dir(), "counter");
    let mqtt = format!("username = \"pi\"\npassword_file = {}", toml_path(&pw));
    let cfg = config(
        &env,
        tls_port,
        &mqtt,
        &format!("ca_file = {}", toml_path(&pki.ca)),
        &counter,
    );
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(DEADLINE, "readings over TLS", || {
        env.sub().values(TOPIC).len() >= 10
    });
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
    assert!(
        !env.daemon.log().contains(PASSWORD),
        "the password is in the log"
    );
}

/// Wrong CA, then wrong password: each gives a log line naming the cause, attempts back off
/// (not one per reading), readings are kept; a reload with the right settings delivers all.
#[test]
fn tls_and_auth_mistakes_are_clear_and_lose_nothing() {
    tls_and_auth_mistakes("tls_and_auth_mistakes", "");
}

/// The same over MQTT 5.
#[test]
fn tls_and_auth_mistakes_mqtt5() {
    tls_and_auth_mistakes("tls_and_auth_mistakes_mqtt5", "protocol = 5\n");
}

fn tls_and_auth_mistakes(name: &str, protocol: &str) {
    let mut env = Env::new(name);
    let pki = Pki::make(&env.path("pki"));
    let tls_port = tls_broker(&mut env, &pki, false);
    let counter = Counter::new(env.dir(), "counter");
    let good_tls = format!("ca_file = {}", toml_path(&pki.ca));
    let good_mqtt = format!("{protocol}username = \"pi\"\npassword = \"{PASSWORD}\"");

    let wrong_ca = format!("ca_file = {}", toml_path(&pki.other_ca));
    env.write_config(&config(&env, tls_port, &good_mqtt, &wrong_ca, &counter));
    env.daemon.start();
    wait_until(DEADLINE, "a certificate error in the log", || {
        env.daemon.log().contains("cannot connect to the broker")
            && env.daemon.log().contains("UnknownIssuer")
            && env.daemon.log().contains("check [mqtt.tls] ca_file")
    });
    counter.wait_value_at_least(40, "readings buffered meanwhile");

    env.write_config(&config(
        &env,
        tls_port,
        &format!("{protocol}username = \"pi\"\npassword = \"wrong\""),
        &good_tls,
        &counter,
    ));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "a refusal naming bad credentials", || {
        let log = env.daemon.log();
        log.contains("config reloaded")
            && log
                .lines()
                .any(|l| l.contains("cannot connect") && l.contains("check username and password"))
    });
    counter.wait_value_at_least(80, "more readings buffered meanwhile");
    // About 4 s of refusals: with backoff (0.5 s doubling) that is a handful of attempts, where
    // retrying per reading (every 50 ms) would be dozens.
    let attempts = env
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("cannot connect to the broker"))
        .count();
    assert!(attempts < 20, "{attempts} connection attempts: no backoff?");
    assert!(
        env.sub().values(TOPIC).is_empty(),
        "nothing can have been published yet"
    );

    env.write_config(&config(&env, tls_port, &good_mqtt, &good_tls, &counter));
    env.daemon.signal(libc::SIGHUP);
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
    assert!(
        !env.daemon.log().contains(PASSWORD),
        "the password is in the log"
    );
}

/// A broker that requires a client certificate: refused without one, accepted with one.
#[test]
fn mutual_tls() {
    let mut env = Env::new("mutual_tls");
    let pki = Pki::make(&env.path("pki"));
    let tls_port = tls_broker(&mut env, &pki, true);
    let counter = Counter::new(env.dir(), "counter");
    let mqtt = format!("username = \"pi\"\npassword = \"{PASSWORD}\"");
    let server_only = format!("ca_file = {}", toml_path(&pki.ca));
    env.write_config(&config(&env, tls_port, &mqtt, &server_only, &counter));
    env.daemon.start();
    wait_until(DEADLINE, "a failed handshake in the log", || {
        env.daemon.log().contains("cannot connect to the broker")
    });

    let with_cert = format!(
        "{server_only}\nclient_cert = {}\nclient_key = {}",
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key)
    );
    env.write_config(&config(&env, tls_port, &mqtt, &with_cert, &counter));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "readings with a client certificate", || {
        env.sub().values(TOPIC).len() >= 5
    });
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
}

/// A broker other than the harness's Mosquitto that a test can take down and bring back.
trait Restartable {
    fn name(&self) -> &'static str;
    fn mqtt_port(&self) -> u16;
    fn stop(&mut self);
    fn restart(&mut self);
}

/// The interop scenario: a subscriber with a persistent session and the daemon with a 50 ms
/// counter; the broker goes down while readings keep coming and comes back. Every reading
/// arrives, in order, and the buffer ends empty.
fn outage_round_trip(env: &mut Env, broker: &mut impl Restartable) {
    let port = broker.mqtt_port();
    env.sub = Some(Subscriber::start(
        env.dir(),
        port,
        &format!("sub-{}", env.name),
    ));
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config_for_port(port, "", &counter.sensor_toml("counter", TOPIC, "50ms", 1));
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(
        DEADLINE,
        &format!("readings through {}", broker.name()),
        || env.sub().values(TOPIC).len() >= 10,
    );

    broker.stop();
    let at_stop = counter.value();
    counter.wait_value_at_least(at_stop + 30, "readings buffered while the broker is down");
    broker.restart();
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
    assert_eq!(telemetryd::outbox::depth_at(&env.buffer_path()).unwrap(), 0);
}

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

/// The certificate mistakes a Pi owner meets, each on its own TLS listener of one broker: a
/// server certificate that has expired, one not valid yet (what every certificate looks like
/// to a Pi without a real-time clock before NTP has set its clock), and one for another host
/// name. Each gives a log line naming the cause and what to check; readings are kept; the
/// right listener then gets every one of them, in order.
#[test]
fn tls_certificate_faults_are_named() {
    let mut env = Env::new("tls_certificate_faults");
    let pki = Pki::make(&env.path("pki"));
    let leaf = |name: &str, names: &[&str], valid: (i32, i32)| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
        let cert = params.signed_by(&key, &pki.issuer).unwrap();
        let cert_path = env.path(&format!("pki/{name}.pem"));
        let key_path = env.path(&format!("pki/{name}.key"));
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let cases = [
        (
            leaf("expired", &["localhost"], (2020, 2021)),
            "has expired, or this machine's clock is wrong",
        ),
        (
            leaf("not-yet", &["localhost"], (2090, 2100)),
            "not valid yet: this machine's clock is behind",
        ),
        (
            leaf("other-name", &["broker.example.org"], (2020, 2100)),
            "does not name the configured host",
        ),
        ((pki.server_cert.clone(), pki.server_key.clone()), ""),
    ];
    let ports: Vec<u16> = cases.iter().map(|_| free_port()).collect();
    let listeners: String = cases
        .iter()
        .zip(&ports)
        .map(|(((cert, key), _), port)| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            )
        })
        .collect();
    let broker = Broker::start_with(&env.path("broker"), &listeners);
    let plain = broker.port;
    env.broker = Some(broker);
    env.sub = Some(Subscriber::start(env.dir(), plain, "sub-tls-faults"));
    let counter = Counter::new(env.dir(), "counter");
    let tls = format!("ca_file = {}", toml_path(&pki.ca));

    let mut buffered = 0;
    for ((_, hint), port) in cases.iter().zip(&ports) {
        env.write_config(&config(&env, *port, "", &tls, &counter));
        if env.daemon.is_running() {
            env.daemon.signal(libc::SIGHUP);
        } else {
            env.daemon.start();
        }
        if hint.is_empty() {
            break;
        }
        wait_until(DEADLINE, &format!("a refusal saying `{hint}`"), || {
            env.daemon.log().lines().any(|l| {
                l.contains("cannot connect to the broker")
                    && l.contains(&format!(":{port}"))
                    && l.contains(hint)
            })
        });
        buffered += 20;
        counter.wait_value_at_least(buffered, "readings buffered meanwhile");
        // Logged once (then at debug level until it changes), even when the cause carries
        // the time of each attempt.
        let warned = env
            .daemon
            .log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!(":{port}")) && l.contains(hint))
            .count();
        assert_eq!(warned, 1, "warn lines for `{hint}`");
        assert!(
            env.sub().values(TOPIC).is_empty(),
            "nothing can be published"
        );
    }
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
}
