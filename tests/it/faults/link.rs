//! The link misbehaves: a half-open link (a Wi-Fi drop), connections cut mid-packet.

use std::time::Duration;

use telemetryd_testkit::proxy::{Chaos, Mode};
use telemetryd_testkit::*;

use super::{TOPIC, proxied_counter_env, timed_lines, wait_first_values};

/// A half-open link: the proxy stops forwarding in both directions without closing anything
/// (a Wi-Fi drop). With keep_alive = 2 s the daemon must notice within about 2 x keep_alive,
/// keep buffering while its reconnects go into the void, reconnect once the link is back, and
/// lose nothing. Twice, with seeded silence lengths.
#[test]
fn half_open_link() {
    let name = "half_open_link";
    let mut rng = Rng::new(test_seed(name, 0x5eed_0003));
    let ka = 2.0;
    let (mut env, proxy, counter) = proxied_counter_env(name, "50ms", "2s");
    env.daemon.start();
    wait_first_values(&env, TOPIC, 10);

    for round in 1..=2 {
        let flowing = counter.value() + rng.range(5, 30);
        counter.wait_value_at_least(flowing, "readings flow before the silence");
        let silent_at = unix_now();
        let seen_before = timed_lines(&env.daemon.log(), "disconnected from the broker").len();
        proxy.set_mode(Mode::Silent);
        let (noticed, line) = wait_for(
            Duration::from_secs(20),
            "the daemon notices the dead link",
            || {
                timed_lines(&env.daemon.log(), "disconnected from the broker")
                    .into_iter()
                    .nth(seen_before)
            },
        );
        let took = noticed - silent_at;
        eprintln!("{name}: round {round}: noticed after {took:.2} s: {line}");
        assert!(
            took <= 2.0 * ka + 1.0,
            "the dead link was noticed after {took:.2} s; keep_alive is {ka} s (limit ~2x)"
        );
        // Stay dark a while longer: reconnect attempts go into the void too.
        let extra = rng.millis(500, 4000);
        let until = counter.value() + extra.as_millis() as u64 / 50;
        counter.wait_value_at_least(until, "readings buffered in the dark");
        env.daemon.assert_running();
        proxy.set_mode(Mode::Forward);
        let upto = counter.value();
        env.wait_delivered(TOPIC, upto, 0);
    }
    env.drain_and_stop(&counter, TOPIC, 0);
}

/// The proxy cuts every connection after a seeded random number of bytes in a random
/// direction, mostly in the middle of a packet (a PUBLISH half-sent, a PUBACK half-read),
/// ten times. Nothing lost, nothing reordered, the store ends empty.
#[test]
fn link_cut_at_random_moments() {
    let name = "link_cut_at_random_moments";
    let seed = test_seed(name, 0x5eed_0004);
    let (mut env, proxy, counter) = proxied_counter_env(name, "20ms", "5s");
    proxy.set_chaos(Some(Chaos {
        seed,
        daemon_bytes: (1, 3000),
        broker_bytes: (1, 600),
    }));
    env.daemon.start();
    wait_until(Duration::from_secs(120), "10 connections cut", || {
        proxy.state().cuts >= 10
    });
    proxy.set_chaos(None);
    env.daemon.assert_running();
    let n = env.drain_and_stop(&counter, TOPIC, 0);
    let st = proxy.state();
    eprintln!(
        "{name}: {n} readings over {} connections, {} cut; {} duplicates",
        st.connections,
        st.cuts,
        SeqReport::of(&env.values(TOPIC)).duplicates
    );
}
