//! Failover along `[mqtt] servers`: a 3-node nats-server cluster (JetStream, MQTT sessions
//! replicated to every node) whose node under the daemon is SIGKILLed or cut off, and, for
//! MQTT 5 (which NATS does not speak), two independent Mosquittos. Nothing may be missing and
//! first deliveries must stay in order; the figures (duplicates, time without deliveries) are
//! printed for the record.

mod nats;
mod nats_health;

use std::fs;
use std::process::Command;
use std::time::Duration;

use telemetryd_testkit::proxy::{Mode, Proxy};
use telemetryd_testkit::*;

use nats::*;

const TOPIC: &str = "test/counter";

/// The daemon's config: `env.config_for_port` with `servers` instead of `host` and `port`.
fn servers_config(env: &Env, ports: &[u16], mqtt_extra: &str, counter: &Counter) -> String {
    let cfg = env.config_for_port(
        ports[0],
        "stats_interval = \"1s\"\n",
        &counter.sensor_toml("counter", TOPIC, "100ms", 1),
    );
    let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    tweak(
        cfg,
        &[(
            &format!("host = \"127.0.0.1\"\nport = {}\n", ports[0]),
            &format!("servers = [{}]\n{mqtt_extra}", list.join(", ")),
        )],
    )
}

/// The `server=` of the daemon's last "connected to the broker" line, and how many there were.
fn current_server(log: &str) -> (Option<String>, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connected to the broker") && !l.contains("disconnected"))
        .collect();
    let last = lines
        .last()
        .and_then(|l| log_field(l, "server"))
        .map(str::to_owned);
    (last, lines.len())
}

/// Waits until the daemon has connected anew (after `connects` connections) to `port`.
fn wait_connected_to(env: &Env, connects: usize, port: u16) -> f64 {
    let want = format!("127.0.0.1:{port}");
    wait_for(
        Duration::from_secs(60),
        &format!("the daemon on {want}"),
        || {
            let log = env.daemon.log();
            let (server, n) = current_server(&log);
            (n > connects && server.as_deref() == Some(want.as_str())).then(|| {
                log.lines()
                    .rfind(|l| l.contains("connected to the broker") && !l.contains("disconnected"))
                    .and_then(log_time)
                    .unwrap_or_else(unix_now)
            })
        },
    )
}

/// A fault at `at` (Unix seconds), when the counter had handed out `taken` readings.
struct Fault {
    what: &'static str,
    at: f64,
    taken: u64,
    /// When the daemon's CONNACK on the next server came.
    relinked: f64,
}

impl Fault {
    /// Notes the moment and the counter, just before the fault is made.
    fn now(what: &'static str, counter: &Counter) -> Fault {
        Fault {
            what,
            taken: counter.value(),
            at: unix_now(),
            relinked: f64::NAN,
        }
    }

    /// Seconds from the fault to the first receipt of a reading taken after it (so sent on
    /// the new link, not an older one the cluster was still passing on).
    fn first_new_delivery(&self, received: &[(f64, u64)]) -> f64 {
        received
            .iter()
            .filter(|(_, v)| *v > self.taken)
            .map(|(t, _)| *t)
            .fold(f64::MAX, f64::min)
            - self.at
    }
}

/// Receipts (time, counter value) on `TOPIC` of every subscriber, merged in time order.
fn receipts(subs: &[&Subscriber]) -> Vec<(f64, u64)> {
    let mut all: Vec<(f64, u64)> = subs
        .iter()
        .flat_map(|s| s.timed_lines())
        .filter(|(_, t, _)| t == TOPIC)
        .filter_map(|(at, _, p)| Some((at, p.trim().parse().ok()?)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all
}

/// What each fault cost, for the record (the closing note of issue 13 quotes these lines).
fn report(name: &str, faults: &[Fault], received: &[(f64, u64)], upto: u64) {
    let values: Vec<u64> = received.iter().map(|(_, v)| *v).collect();
    let r = SeqReport::of(&values);
    eprintln!(
        "FIGURES {name}: {upto} readings, {} received, {} duplicates, {} missing",
        r.messages,
        r.duplicates,
        r.missing.len()
    );
    for f in faults {
        eprintln!(
            "FIGURES {name}: {}: without a link {:.2} s (fault to CONNACK), first reading taken after the fault delivered after {:.2} s",
            f.what,
            f.relinked - f.at,
            f.first_new_delivery(received)
        );
    }
}

/// Runs the counter until `more` further readings were taken.
fn readings_go_on(counter: &Counter, more: u64) {
    counter.wait_value_at_least(counter.value() + more, "readings go on");
}

/// The node under the daemon is SIGKILLed, then (after it is back) the next one: the daemon
/// fails over each time and wraps around its list. The subscriber, on the third node, gets
/// every reading, first deliveries in order, through the cluster.
#[test]
fn nats_cluster_node_killed() {
    if !have_nats() {
        return;
    }
    let mut env = Env::new("nats_cluster_node_killed");
    let mut cluster = NatsCluster::start(&env.path("cluster"));
    env.on_failure_dump("nats-server logs", cluster.logs());
    let (p0, p1) = (cluster.mqtt_port(0), cluster.mqtt_port(1));
    env.sub = Some(Subscriber::start_timed(
        env.dir(),
        cluster.mqtt_port(2),
        "sub-nats-cluster-killed",
    ));
    let counter = Counter::new(env.dir(), "counter");
    env.write_config(&servers_config(&env, &[p0, p1], "", &counter));
    env.daemon.start();
    wait_connected_to(&env, 0, p0);
    wait_until(DEADLINE, "readings through the cluster", || {
        env.values(TOPIC).len() >= 10
    });

    let mut faults = Vec::new();
    for (victim, to, what) in [(0, p1, "n0 SIGKILLed"), (1, p0, "n1 SIGKILLed")] {
        let (_, connects) = current_server(&env.daemon.log());
        let mut fault = Fault::now(what, &counter);
        cluster.kill(victim);
        fault.relinked = wait_connected_to(&env, connects, to);
        faults.push(fault);
        readings_go_on(&counter, 20);
        cluster.restart(victim);
        readings_go_on(&counter, 20);
    }
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0, "store not empty");
    report(
        "nats_cluster_node_killed",
        &faults,
        &receipts(&[env.sub()]),
        upto,
    );
    assert!(
        env.daemon.log().contains("failing over to the next server"),
        "the log says why we left"
    );
}

/// The daemon's link to its node is blackholed (a half-open link, the node stays up): it
/// notices by keep-alive, fails over to the next node, which takes over the session; then
/// the link to that one is cut loudly and it goes back.
#[test]
fn nats_cluster_partition() {
    if !have_nats() {
        return;
    }
    let mut env = Env::new("nats_cluster_partition");
    let cluster = NatsCluster::start(&env.path("cluster"));
    env.on_failure_dump("nats-server logs", cluster.logs());
    let proxies = [
        Proxy::start(cluster.mqtt_port(0)),
        Proxy::start(cluster.mqtt_port(1)),
    ];
    for (i, p) in proxies.iter().enumerate() {
        env.on_failure_dump(&format!("proxy {i}"), p.dump_fn());
    }
    env.sub = Some(Subscriber::start_timed(
        env.dir(),
        cluster.mqtt_port(2),
        "sub-nats-cluster-partition",
    ));
    let counter = Counter::new(env.dir(), "counter");
    let ports = [proxies[0].port, proxies[1].port];
    env.write_config(&servers_config(&env, &ports, "", &counter));
    env.daemon.start();
    wait_connected_to(&env, 0, ports[0]);
    wait_until(DEADLINE, "readings through the cluster", || {
        env.values(TOPIC).len() >= 10
    });

    let mut faults = Vec::new();
    for (cut, mode, to, what) in [
        (0, Mode::Silent, 1, "link to n0 blackholed"),
        (1, Mode::Down, 0, "link to n1 cut"),
    ] {
        let (_, connects) = current_server(&env.daemon.log());
        let mut fault = Fault::now(what, &counter);
        proxies[cut].set_mode(mode);
        fault.relinked = wait_connected_to(&env, connects, ports[to]);
        faults.push(fault);
        readings_go_on(&counter, 20);
        proxies[cut].set_mode(Mode::Forward);
    }
    let upto = counter.pause();
    env.wait_delivered(TOPIC, upto, 0);
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0, "store not empty");
    report(
        "nats_cluster_partition",
        &faults,
        &receipts(&[env.sub()]),
        upto,
    );
}

/// MQTT 5, which NATS does not speak: two independent Mosquittos (no cluster, no bridge), so
/// the session does not follow the daemon; its buffer resends what the lost broker had not
/// acknowledged. The broker under it is SIGKILLed, then (once back) the link to the other is
/// blackholed. A subscriber on each broker; together they get every reading, first deliveries
/// in time order.
#[test]
fn mosquitto_pair_mqtt5() {
    let mut env = Env::new("mosquitto_pair_mqtt5");
    let mut brokers = [
        Broker::start(&env.path("broker-a")),
        Broker::start(&env.path("broker-b")),
    ];
    let proxies = [Proxy::start(brokers[0].port), Proxy::start(brokers[1].port)];
    for (i, p) in proxies.iter().enumerate() {
        env.on_failure_dump(&format!("proxy {i}"), p.dump_fn());
    }
    let subs: Vec<Subscriber> = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let dir = env.path(&format!("sub-{i}"));
            fs::create_dir_all(&dir).unwrap();
            Subscriber::start_v5(&dir, b.port, &format!("sub-pair-{i}"))
        })
        .collect();
    let values = || -> Vec<u64> {
        receipts(&subs.iter().collect::<Vec<_>>())
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    let counter = Counter::new(env.dir(), "counter");
    let ports = [proxies[0].port, proxies[1].port];
    env.write_config(&servers_config(&env, &ports, "protocol = 5\n", &counter));
    env.daemon.start();
    wait_connected_to(&env, 0, ports[0]);
    wait_until(DEADLINE, "readings on broker a", || values().len() >= 10);

    let mut faults = Vec::new();
    let (_, connects) = current_server(&env.daemon.log());
    let mut fault = Fault::now("broker a SIGKILLed", &counter);
    brokers[0].kill();
    fault.relinked = wait_connected_to(&env, connects, ports[1]);
    faults.push(fault);
    // The stats JSON names the server we are on now.
    let stats_topic = "telemetryd/td-mosquitto_pair_mqtt5/stats";
    let on_b = format!("\"server\":\"127.0.0.1:{}\"", ports[1]);
    wait_until(DEADLINE, "the stats JSON names broker b", || {
        subs[1]
            .payloads(stats_topic)
            .iter()
            .any(|p| p.contains(&on_b) && p.contains("\"connected\":true"))
    });
    readings_go_on(&counter, 20);
    brokers[0].restart();
    readings_go_on(&counter, 20);

    let (_, connects) = current_server(&env.daemon.log());
    let mut fault = Fault::now("link to broker b blackholed", &counter);
    proxies[1].set_mode(Mode::Silent);
    fault.relinked = wait_connected_to(&env, connects, ports[0]);
    faults.push(fault);
    readings_go_on(&counter, 20);
    proxies[1].set_mode(Mode::Forward);

    let upto = counter.pause();
    wait_delivered_by(&values, "the two subscribers", upto, 0);
    env.daemon.stop_expect_success();
    assert_eq!(store_depth(&env.buffer_path()), 0, "store not empty");
    let log = env.daemon.log();
    assert!(
        log.contains("session_present=false") && log.contains("failing over to the next server"),
        "a failover to a broker without our session"
    );
    report(
        "mosquitto_pair_mqtt5",
        &faults,
        &receipts(&subs.iter().collect::<Vec<_>>()),
        upto,
    );
}

/// `telemetryd check` says which servers answer and which one the daemon would use.
#[test]
fn check_names_the_server_it_would_use() {
    let env = Env::with_broker("check_names_the_server");
    let dead = free_port();
    let live = env.port();
    // A config needs a sensor.
    let counter = Counter::new(env.dir(), "counter");
    let cfg = tweak(
        env.config_for_port(live, "", &counter.sensor_toml("counter", TOPIC, "1s", 0)),
        &[(
            &format!("host = \"127.0.0.1\"\nport = {live}\n"),
            &format!("servers = [\"127.0.0.1:{dead}\", \"127.0.0.1:{live}\"]\n"),
        )],
    );
    env.write_config(&cfg);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&env.daemon.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Each server gets a real CONNECT, in the daemon's own words; the first that accepts is
    // the daemon's, the others are named as failover.
    assert!(
        text.contains(&format!(
            "broker: FAILED: cannot connect to the broker 127.0.0.1:{dead}: "
        )) && text.contains("The daemon would try the next server")
            && text.contains(&format!(
                "broker: connected to the broker 127.0.0.1:{live} "
            ))
            && text.contains("; the daemon connects here"),
        "{text}"
    );
}

/// Servers that refuse us (a login required) or do not answer are skipped, each reported with
/// its own reason; the daemon ends up on the first one that takes it and delivers everything.
#[test]
fn refusing_servers_are_skipped_with_their_reasons() {
    let mut env = Env::new("refusing_servers_are_skipped");
    let refusing = free_port();
    let broker = Broker::start_with(
        &env.path("broker"),
        &format!("listener {refusing} 127.0.0.1\nallow_anonymous false\n"),
    );
    let good = broker.port;
    env.broker = Some(broker);
    env.sub = Some(Subscriber::start(env.dir(), good, "sub-refusing-servers"));
    let dead = free_port();
    let counter = Counter::new(env.dir(), "counter");
    env.write_config(&servers_config(&env, &[refusing, dead, good], "", &counter));
    env.daemon.start();
    wait_connected_to(&env, 0, good);
    let log = env.daemon.log();
    let refused = |port: u16, why: &str| {
        log.lines().any(|l| {
            l.contains("cannot connect to the broker")
                && log_field(l, "server") == Some(&format!("127.0.0.1:{port}"))
                && l.contains(why)
        })
    };
    assert!(refused(refusing, "not authorized"), "{log}");
    assert!(refused(dead, "Connection refused"), "{log}");
    readings_go_on(&counter, 10);
    env.drain_and_stop(&counter, TOPIC, 0);
}

/// While no server answers, each one's failure is a warning once, then quiet (debug) until
/// its cause changes: a round's causes alternate, which must not let every attempt through.
#[test]
fn unanswered_servers_warn_once_each() {
    let mut env = Env::new("unanswered_servers_warn_once_each");
    let (a, b) = (free_port(), free_port());
    let counter = Counter::new(env.dir(), "counter");
    env.write_config(&servers_config(&env, &[a, b], "", &counter));
    env.daemon.start();
    // Rounds come 0.25-0.5 s, 0.5-1 s, 1-2 s ... apart: six attempts take a few seconds.
    wait_until(DEADLINE, "three rounds of attempts", || {
        env.daemon
            .log()
            .matches("cannot connect to the broker")
            .count()
            >= 6
    });
    let log = env.daemon.log();
    for port in [a, b] {
        let warned = log
            .lines()
            .filter(|l| {
                l.contains(" WARN ")
                    && l.contains("cannot connect to the broker")
                    && log_field(l, "server") == Some(&format!("127.0.0.1:{port}"))
            })
            .count();
        assert_eq!(warned, 1, "127.0.0.1:{port} warned {warned} times:\n{log}");
    }
    env.daemon.stop_expect_success();
}
