//! Home Assistant MQTT discovery against a real Mosquitto: announced at connect, announced
//! again when Home Assistant says `online`, removed when a sensor leaves the config — by a
//! reload, or while the daemon was stopped.

use std::fs;
use std::process::Command;

use crate::harness::*;

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
