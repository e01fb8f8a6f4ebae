//! Brokers that want more than a plain anonymous connection: TLS (certificates made by the
//! test), passwords, client certificates. Misconfigurations must give a clear reason, be
//! retried with backoff, lose nothing, and be fixable by a reload.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::harness::*;

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
    env.config_for_port(
        tls_port,
        "",
        &counter.sensor_toml("counter", TOPIC, "50ms", 1),
    )
    .replace(
        "host = \"127.0.0.1\"",
        &format!("host = \"localhost\"\n{mqtt_extra}"),
    )
    .replace("[buffer]", &format!("[mqtt.tls]\n{tls}\n\n[buffer]"))
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
    let mut env = Env::new("tls_and_auth_mistakes");
    let pki = Pki::make(&env.path("pki"));
    let tls_port = tls_broker(&mut env, &pki, false);
    let counter = Counter::new(env.dir(), "counter");
    let good_tls = format!("ca_file = {}", toml_path(&pki.ca));
    let good_mqtt = format!("username = \"pi\"\npassword = \"{PASSWORD}\"");

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
        "username = \"pi\"\npassword = \"wrong\"",
        &good_tls,
        &counter,
    ));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "a refusal naming bad credentials", || {
        let log = env.daemon.log();
        log.contains("config reloaded")
            && log.lines().any(|l| {
                l.contains("cannot connect")
                    && l.contains("not authorized: check username and password")
            })
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
