//! Fault injection, one test per scenario of issue 3: the real daemon, a real Mosquitto (own
//! port, config and persistence), a real persistent-session subscriber, and a counter sensor
//! whose every reading is the next integer, so that a lost or reordered reading shows.
//!
//! Where a link fault is needed, the daemon talks to Mosquitto through [`Proxy`], which also
//! witnesses what the broker acknowledged. Random choices (when to kill, for how long, where
//! to cut) come from a seeded generator; the seed is printed and `TELEMETRYD_IT_SEED` replays
//! it.
//!
//! One file per family: the broker, the link, the daemon (killed or stopped), the store (its
//! bound, damage on disk), the disk under it, sensors.

mod broker;
mod daemon;
mod disk;
mod link;
mod sensors;
mod store;

use telemetryd_testkit::proxy::Proxy;
use telemetryd_testkit::*;

const TOPIC: &str = "test/counter";
const BACKLOG: &str = "test/backlog";

fn keep_alive(ka: &str) -> (&'static str, String) {
    ("keep_alive = \"5s\"", format!("keep_alive = \"{ka}\""))
}

/// A broker and subscriber, a proxy in front of the broker, and the daemon's config pointing
/// at the proxy with one counter sensor.
fn proxied_counter_env(name: &str, interval: &str, ka: &str) -> (Env, Proxy, Counter) {
    let mut env = Env::with_broker(name);
    let proxy = Proxy::start(env.port());
    env.on_failure_dump("proxy", proxy.dump_fn());
    let counter = Counter::new(env.dir(), "counter");
    let cfg = env.config_for_port(
        proxy.port,
        "",
        &counter.sensor_toml("counter", TOPIC, interval, 1),
    );
    let (from, to) = keep_alive(ka);
    env.write_config(&tweak(cfg, &[(from, &to)]));
    (env, proxy, counter)
}

fn wait_first_values(env: &Env, topic: &str, n: usize) {
    wait_until(DEADLINE, &format!("{n} readings on {topic} arrive"), || {
        env.values(topic).len() >= n
    });
}

/// Lines of `log` containing `needle`, with their Unix times.
fn timed_lines(log: &str, needle: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| Some((log_time(l)?, l.to_string())))
        .collect()
}
