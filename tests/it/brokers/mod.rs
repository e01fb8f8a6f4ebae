//! Brokers other than a plain anonymous Mosquitto: TLS, passwords and client certificates
//! (`tls`), and other brokers the daemon must work with (`nats`, `rabbitmq`), each through an
//! outage. Misconfigurations must give a clear reason, be retried with backoff, lose nothing,
//! and be fixable by a reload.

mod nats;
mod rabbitmq;
mod tls;

use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";

/// A broker other than the kit's Mosquitto that a test can take down and bring back.
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
