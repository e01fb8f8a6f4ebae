//! Home Assistant MQTT discovery against a real Mosquitto: announced at connect, announced
//! again when Home Assistant says `online`, removed when a sensor leaves the config — by a
//! reload, or while the daemon was stopped.

use std::fs;
use std::process::Command;

use telemetryd_testkit::*;

fn file_sensor(env: &Env, name: &str) -> String {
    let path = env.path(name);
    fs::write(&path, "21.5\n").unwrap();
    format!(
        "[[sensor]]\nname = \"{name}\"\nkind = \"file\"\npath = {}\ninterval = \"200ms\"\n\
         topic = \"garden/{name}\"\nunit = \"°C\"\nformat = \"json\"\n",
        toml_str(&path.display().to_string())
    )
}

#[test]
fn home_assistant_discovery() {
    let mut env = Env::with_broker("home_assistant_discovery");
    let node = "td-home_assistant_discovery";
    let config_topic = |name: &str| format!("homeassistant/sensor/{node}/{name}/config");
    let both = format!(
        "{}\n{}",
        file_sensor(&env, "soil"),
        file_sensor(&env, "air")
    );
    let top = "[homeassistant]\ndevice_name = \"Garden Pi\"\n";
    // The [homeassistant] table must come after the top-level keys and before [[sensor]].
    let cfg = env.config("", &format!("{top}\n{both}"));
    env.write_config(&cfg);
    env.daemon.start();

    wait_until(DEADLINE, "both sensors announced", || {
        !env.sub().payloads(&config_topic("soil")).is_empty()
            && !env.sub().payloads(&config_topic("air")).is_empty()
    });
    let soil: serde_json::Value =
        serde_json::from_str(&env.sub().payloads(&config_topic("soil"))[0]).unwrap();
    assert_eq!(soil["unique_id"], format!("{node}_soil"));
    assert_eq!(soil["state_topic"], "garden/soil");
    assert_eq!(soil["device_class"], "temperature");
    assert_eq!(soil["value_template"], "{{ value_json.value }}");
    assert_eq!(
        soil["availability_topic"],
        format!("telemetryd/{node}/status")
    );
    assert_eq!(soil["device"]["name"], "Garden Pi");
    wait_until(DEADLINE, "a reading", || {
        !env.sub().payloads("garden/soil").is_empty()
    });

    // Home Assistant restarts: it says `online`, the daemon announces again.
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.port().to_string(),
            "-t",
            "homeassistant/status",
            "-m",
            "online",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(DEADLINE, "announced again", || {
        env.sub().payloads(&config_topic("soil")).len() >= 2
    });

    // A reload without `air`: its entity is removed (an empty retained config).
    env.write_config(&env.config("", &format!("{top}\n{}", file_sensor(&env, "soil"))));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "air removed", || {
        env.sub()
            .payloads(&config_topic("air"))
            .last()
            .is_some_and(|p| p.is_empty())
    });

    // Removed while stopped: found among the retained configs at the next start.
    env.daemon.stop_expect_success();
    env.write_config(&env.config("", &format!("{top}\n{}", file_sensor(&env, "air"))));
    env.daemon.start();
    wait_until(DEADLINE, "soil removed after the restart", || {
        env.sub()
            .payloads(&config_topic("soil"))
            .last()
            .is_some_and(|p| p.is_empty())
    });
    let air = env.sub().payloads(&config_topic("air"));
    assert!(
        air.last().is_some_and(|p| !p.is_empty()),
        "air announced again: {air:?}"
    );
    env.daemon.stop_expect_success();
}

/// Publishes `payload` on `topic` with `mosquitto_pub`, as Home Assistant's birth message is.
fn publish(env: &Env, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &env.port().to_string()])
        .args(["-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(status.success());
}

/// What the broker holds retained on `topic` (a new subscriber's view), if anything.
fn retained(env: &Env, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &env.port().to_string()])
        .args(["-t", topic, "--retained-only", "-C", "1", "-W", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The discovery fields a Pi owner relies on, the `system` kind end to end on a fake
/// procfs/sysfs, and, when Home Assistant restarts, each sensor's last state sent again right
/// after its config: a copy of what was delivered, not a fresh reading (the file changed in
/// between, and the next reading is an hour away).
#[test]
fn home_assistant_states_come_back_after_its_restart() {
    let mut env = Env::with_broker("home_assistant_states_come_back");
    let node = "td-home_assistant_states_come_back";
    let config_topic =
        |component: &str, name: &str| format!("homeassistant/{component}/{node}/{name}/config");
    let proc = env.path("proc");
    let sys = env.path("sys");
    fs::create_dir_all(&proc).unwrap();
    fs::write(proc.join("loadavg"), "0.42 0.35 0.30 1/123 4567\n").unwrap();
    let fw = sys.join("devices/platform/soc/soc:firmware");
    fs::create_dir_all(&fw).unwrap();
    fs::write(fw.join("get_throttled"), "50005\n").unwrap();
    let soil = env.path("soil");
    fs::write(&soil, "21.5\n").unwrap();
    let roots = format!(
        "procfs_root = {}\nsysfs_root = {}\n",
        toml_str(&proc.display().to_string()),
        toml_str(&sys.display().to_string())
    );
    let ha = |retain: bool| {
        format!("[homeassistant]\ndevice_name = \"Garden Pi\"\nretain_states = {retain}\n")
    };
    let sensors = format!(
        "[[sensor]]\nname = \"soil\"\nkind = \"file\"\npath = {}\ninterval = \"1h\"\n\
         topic = \"garden/soil\"\nunit = \"°C\"\ndecimals = 1\n\
         [sensor.ha]\nname = \"Soil temperature\"\nicon = \"mdi:sprout\"\n\
         [[sensor]]\nname = \"load\"\nkind = \"system\"\nmetric = \"load1\"\ninterval = \"1h\"\n\
         topic = \"garden/load\"\ndeadband = 0.1\nheartbeat = \"2h\"\n\
         [[sensor]]\nname = \"power\"\nkind = \"system\"\nmetric = \"under_voltage\"\n\
         interval = \"1h\"\ntopic = \"garden/power\"\ndecimals = 0\n",
        toml_str(&soil.display().to_string())
    );
    env.write_config(&env.config(&roots, &format!("{}\n{sensors}", ha(false))));
    env.daemon.start();

    wait_until(DEADLINE, "announced, and the first states", || {
        let sub = env.sub();
        !sub.payloads(&config_topic("sensor", "soil")).is_empty()
            && !sub
                .payloads(&config_topic("binary_sensor", "power"))
                .is_empty()
            && !sub.payloads("garden/soil").is_empty()
            && !sub.payloads("garden/load").is_empty()
            && !sub.payloads("garden/power").is_empty()
    });
    let json = |component: &str, name: &str| -> serde_json::Value {
        serde_json::from_str(&env.sub().payloads(&config_topic(component, name))[0]).unwrap()
    };
    let soil_cfg = json("sensor", "soil");
    assert_eq!(soil_cfg["name"], "Soil temperature");
    assert_eq!(soil_cfg["icon"], "mdi:sprout");
    assert_eq!(soil_cfg["device_class"], "temperature");
    assert_eq!(soil_cfg["suggested_display_precision"], 1);
    // One reading an hour: unavailable after 3 hours without one, not 3 minutes.
    assert_eq!(soil_cfg["expire_after"], 3 * 3600);
    // A heartbeat of 2 h on top of the 1 h interval, and 2 h of margin.
    assert_eq!(json("sensor", "load")["expire_after"], 5 * 3600);
    let power = json("binary_sensor", "power");
    assert_eq!(power["device_class"], "problem");
    assert_eq!(power["state_topic"], "garden/power");
    let buffered = json("sensor", "telemetryd_buffered");
    assert_eq!(buffered["entity_category"], "diagnostic");
    assert_eq!(buffered["state_topic"], format!("telemetryd/{node}/stats"));
    // The diagnostic entities' figures at connect, not 5 minutes (stats_interval) later.
    let stats_topic = format!("telemetryd/{node}/stats");
    wait_until(DEADLINE, "the figures at connect", || {
        !env.sub().payloads(&stats_topic).is_empty()
    });
    let stats: serde_json::Value =
        serde_json::from_str(&env.sub().payloads(&stats_topic)[0]).unwrap();
    assert_eq!(stats["connected"], true);
    assert!(stats["buffered"].is_u64(), "{stats}");
    assert_eq!(env.sub().payloads("garden/load"), ["0.42"]);
    assert_eq!(env.sub().payloads("garden/power"), ["1"]);
    assert_eq!(
        retained(&env, "garden/soil"),
        None,
        "states are not retained by default"
    );

    // The soil changes, but its next reading is an hour away. Home Assistant restarts.
    fs::write(&soil, "30\n").unwrap();
    publish(&env, "homeassistant/status", "online");
    wait_until(DEADLINE, "the last states sent again", || {
        let sub = env.sub();
        sub.payloads("garden/soil").len() >= 2
            && sub.payloads("garden/load").len() >= 2
            && sub.payloads("garden/power").len() >= 2
    });
    assert_eq!(env.sub().payloads("garden/soil"), ["21.5", "21.5"]);
    // After the configs, which Home Assistant reads before it subscribes to a state topic.
    let lines = env.sub().lines();
    let at = |topic: &str, nth: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| t == topic)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap()
    };
    assert!(at(&config_topic("sensor", "soil"), 1) < at("garden/soil", 1));

    // retain_states: the next reading (a reload restarts the changed sensors) stays on the
    // broker for whoever subscribes later.
    env.write_config(&env.config(&roots, &format!("{}\n{sensors}", ha(true))));
    env.daemon.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the new soil reading retained", || {
        retained(&env, "garden/soil").as_deref() == Some("30.0")
    });
    env.daemon.stop_expect_success();
}

/// With `retain_states` on MQTT 5, a retained state expires on the broker when Home Assistant
/// would expire it, so a Home Assistant that restarts later is not handed a stale value as
/// current.
#[test]
fn retained_states_expire_on_an_mqtt5_broker() {
    let mut env = Env::with_broker("retained_states_expire_on_an_mqtt5_broker");
    let soil = env.path("soil");
    fs::write(&soil, "21.5\n").unwrap();
    let sensors = format!(
        "[homeassistant]\nretain_states = true\n\
         [[sensor]]\nname = \"soil\"\nkind = \"file\"\npath = {}\ninterval = \"1h\"\n\
         topic = \"garden/soil\"\nha = {{ expire_after = \"3s\" }}\n",
        toml_str(&soil.display().to_string())
    );
    let cfg = env.config("", &sensors).replace(
        "keep_alive = \"5s\"\n",
        "keep_alive = \"5s\"\nprotocol = 5\n",
    );
    env.write_config(&cfg);
    env.daemon.start();
    wait_until(DEADLINE, "the state retained", || {
        retained(&env, "garden/soil").as_deref() == Some("21.5")
    });
    wait_until(DEADLINE, "the retained state gone once stale", || {
        retained(&env, "garden/soil").is_none()
    });
    env.daemon.stop_expect_success();
}

/// The diagnostic entities after an outage: the figures go out at the reconnect (the backlog
/// waiting) and once it is delivered (while a sensor keeps adding readings, so the buffer is
/// never empty), not only every `stats_interval` (5 minutes here).
#[test]
fn diagnostics_follow_a_backlog_after_an_outage() {
    let mut env = Env::with_broker("diagnostics_follow_a_backlog_after_an_outage");
    let stats_topic = "telemetryd/td-diagnostics_follow_a_backlog_after_an_outage/stats";
    let counter = Counter::new(env.dir(), "counter");
    let sensors = format!(
        "[homeassistant]\n{}",
        counter.sensor_toml("counter", "test/counter", "100ms", 1)
    );
    env.write_config(&env.config("", &sensors));
    env.daemon.start();
    let buffered = |env: &Env| -> Vec<u64> {
        env.sub()
            .payloads(stats_topic)
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                v["buffered"].as_u64().unwrap()
            })
            .collect()
    };
    wait_until(DEADLINE, "the figures at the first connect", || {
        buffered(&env).len() == 1
    });

    env.broker().stop();
    let at_stop = counter.value();
    counter.wait_value_at_least(at_stop + 30, "30 readings taken while the broker is down");
    env.broker().restart();
    // The subscriber also gets the retained figures again when it resubscribes after the
    // restart: look for the backlog, then its delivery.
    wait_until(
        DEADLINE,
        "the figures at the reconnect and after the backlog",
        || {
            let figures = buffered(&env);
            let backlog = figures.iter().position(|b| *b >= 30);
            backlog.is_some_and(|i| figures[i + 1..].iter().any(|b| *b < 30))
        },
    );
    env.daemon.stop_expect_success();
}

/// A flood of `online` messages on Home Assistant's status topic (a looping automation, a
/// misbehaving client): the daemon re-announces at most about once a second, not once per
/// message, so the flood neither fills the journal with one line per message nor keeps the
/// window busy with configs and state copies ahead of the readings. The last `online` is
/// still acted on (the configs and the copy come after it).
#[test]
fn a_flood_of_home_assistant_births_is_coalesced() {
    const FLOOD: usize = 3000;
    let mut env = Env::with_broker("a_flood_of_home_assistant_births");
    let node = "td-a_flood_of_home_assistant_births";
    let config_topic = format!("homeassistant/sensor/{node}/counter/config");
    let counter = Counter::new(env.dir(), "counter");
    let sensors = format!(
        "[homeassistant]\n{}",
        counter.sensor_toml("counter", "test/counter", "100ms", 1)
    );
    env.write_config(&env.config("", &sensors));
    env.daemon.start();
    wait_until(DEADLINE, "announced, and a first reading", || {
        let sub = env.sub();
        sub.payloads(&config_topic).len() == 1 && !sub.payloads("test/counter").is_empty()
    });
    let started = std::time::Instant::now();
    let mut flood = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &env.port().to_string()])
        .args(["-t", "homeassistant/status", "-q", "1", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = flood.stdin.take().unwrap();
        stdin
            .write_all("online\n".repeat(FLOOD).as_bytes())
            .unwrap();
    }
    assert!(flood.wait().unwrap().success());
    // The last one is acted on within the second after it.
    let value = counter.value();
    counter.wait_value_at_least(value + 20, "2 s of readings after the flood");
    let elapsed = started.elapsed().as_secs_f64();
    let announced = env.sub().payloads(&config_topic).len() - 1;
    let logged = env
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("Home Assistant is online: announcing"))
        .count();
    env.daemon.stop_expect_success();
    // At once, then at most once a second (plus the last one, at the end of its second).
    let most = elapsed.ceil() as usize + 2;
    assert!(
        (1..=most).contains(&announced),
        "{FLOOD} births in {elapsed:.1} s: announced {announced} times (at most {most})"
    );
    assert!(
        logged <= most,
        "{FLOOD} births in {elapsed:.1} s: {logged} log lines (at most {most})"
    );
}

/// A state Home Assistant has already expired (its sensor stopped publishing longer ago than
/// `expire_after`: unplugged, failing) is not sent again when Home Assistant restarts: the copy
/// would show the old value as current for another `expire_after`. A state still within its
/// `expire_after` is.
#[test]
fn an_expired_state_is_not_sent_again_after_home_assistants_restart() {
    let mut env = Env::with_broker("an_expired_state_is_not_sent_again");
    let sensor = |name: &str, expire: &str| {
        let path = env.path(name);
        fs::write(&path, "21.5\n").unwrap();
        format!(
            "[[sensor]]\nname = \"{name}\"\nkind = \"file\"\npath = {}\ninterval = \"1h\"\n\
             topic = \"garden/{name}\"\nha = {{ expire_after = \"{expire}\" }}\n",
            toml_str(&path.display().to_string())
        )
    };
    let sensors = format!(
        "[homeassistant]\n{}{}",
        sensor("stale", "2s"),
        sensor("steady", "1h")
    );
    env.write_config(&env.config("", &sensors));
    env.daemon.start();
    wait_until(DEADLINE, "the first states", || {
        let sub = env.sub();
        sub.payloads("garden/stale").len() == 1 && sub.payloads("garden/steady").len() == 1
    });
    // The stale sensor's state is now older than its expire_after.
    let taken = std::time::Instant::now();
    wait_until(DEADLINE, "3 s", || taken.elapsed().as_secs() >= 3);
    publish(&env, "homeassistant/status", "online");
    // Copies go out in topic order: "stale" would come before "steady".
    wait_until(DEADLINE, "the steady sensor's state sent again", || {
        env.sub().payloads("garden/steady").len() == 2
    });
    env.daemon.stop_expect_success();
    assert_eq!(
        env.sub().payloads("garden/stale"),
        ["21.5"],
        "a state older than its expire_after was sent again: Home Assistant shows it as current"
    );
}
