//! The README's first command, `cargo run --example demo`, in its short mode: with nothing on
//! its port it starts the embedded broker, runs the real daemon, cuts the connection and must
//! end with every reading of the run received.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use telemetryd_testkit::{Proc, bin, free_port, log_file, read_lossy};

#[test]
fn the_demo_shows_readings_and_an_outage_that_loses_nothing() {
    // The example is built by a plain `cargo test`, not by `cargo test --test it`: build it
    // (a no-op when it is fresh), in the profile of the daemon under test.
    let profile_dir = Path::new(bin()).parent().unwrap();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--quiet", "--locked", "--example", "demo"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    build.current_dir(env!("CARGO_MANIFEST_DIR"));
    assert!(
        build.status().unwrap().success(),
        "cargo build --example demo"
    );

    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("demo.log");
    let (out, err) = log_file(&log);
    let port = free_port();
    // Without CARGO the demo does not rebuild the daemon: it runs the one next to it.
    let mut demo = Proc::spawn(
        "demo",
        Command::new(profile_dir.join("examples/demo"))
            .args(["--short", "--port", &port.to_string()])
            .env_remove("CARGO")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    );
    // Its own deadlines add up to under three minutes.
    let status = demo.wait_timeout(Duration::from_secs(240));
    let text = read_lossy(&log);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}");
    for expected in [
        &format!("nothing listens on 127.0.0.1:{port}: starting an embedded MQTT broker")[..],
        &format!("starting the daemon: {}", bin()),
        "now the broker goes away for 3 s",
        // The readings taken during the cut arrived afterwards, with their own time.
        "it waited in the daemon's buffer)",
        "nothing lost: all ",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // The daemon really lost its broker and came back.
    assert_eq!(
        text.matches("connected to the broker server=").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("cannot connect to the broker")
            || text.contains("disconnected from the broker; reconnecting"),
        "{text}"
    );
    let received: usize = text
        .split("nothing lost: all ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // 1 s, 2 s and 5 s sensors over at least 4 s.
    assert!(received >= 6, "{received} readings:\n{text}");
}
