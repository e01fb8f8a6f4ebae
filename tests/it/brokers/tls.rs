//! TLS (certificates made by the test), passwords and client certificates on a Mosquitto
//! listener: mistakes named clearly, retried with backoff, nothing lost, fixed by a reload.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use telemetryd_testkit::*;

use super::TOPIC;

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
