//! `cargo run --example demo`: the real daemon with config/demo.toml, publishing to a broker on
//! 127.0.0.1:1883 (an embedded one when none listens there), a subscriber printing what
//! arrives, and a cut of the broker's connection to show that the buffer loses nothing.

mod broker;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};
use std::{env, io::BufRead, os::unix::process::CommandExt, thread};

use anyhow::{Context, bail};
use clap::Parser;
use watch::{Event, Note, Tally};

#[derive(Parser)]
#[command(about = "telemetryd's demo: the real daemon, a broker, a subscriber, an outage")]
struct Args {
    /// Tell the story once with a 3 s outage and stop (the tests run this); without it, the
    /// outage lasts 5 s and the daemon then runs until Ctrl-C.
    #[arg(long)]
    short: bool,
    /// The broker's port on 127.0.0.1. Any other than config/demo.toml's 1883 runs a copy of
    /// config/demo.toml with this port and a buffer of its own in a temporary directory.
    #[arg(long, default_value_t = 1883)]
    port: u16,
}

fn say(text: &str) {
    println!("demo       | {text}");
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            say(&format!("error: {e:#}"));
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let daemon = build_daemon()?;
    let (config, _temp, buffer) = demo_config(repo, args.port)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (tx, rx) = channel();
    let mut door = None;
    let watch_port = if broker::listening(args.port) {
        say(&format!(
            "a broker already listens on 127.0.0.1:{}: the demo uses it",
            args.port
        ));
        args.port
    } else {
        say(&format!(
            "nothing listens on 127.0.0.1:{}: starting an embedded MQTT broker (rumqttd, inside \
             this demo; it is no part of telemetryd)",
            args.port
        ));
        let own = broker::start_embedded()?;
        let mut d = broker::Door::new(args.port, own);
        runtime.block_on(d.open())?;
        say(&format!(
            "it listens on 127.0.0.1:{} (and on 127.0.0.1:{own}, which the subscriber uses)",
            args.port
        ));
        door = Some(d);
        own
    };
    say("subscribing to demo/# (QoS 1) before the daemon starts, so no reading passes unseen");
    watch::subscribe(watch_port, tx.clone());
    let mut story = Story {
        rx,
        tally: Tally::new(SystemTime::now()),
        interrupted,
    };
    if !story.pump(Duration::from_secs(15), |_, subscribed| subscribed) {
        bail!("the subscriber could not subscribe on 127.0.0.1:{watch_port} within 15 s");
    }

    say(&format!(
        "starting the daemon: {} --config {}",
        daemon.display(),
        config.display()
    ));
    let started = SystemTime::now();
    story.tally = Tally::new(started);
    let mut running = Daemon::start(&daemon, &config, repo, tx)?;

    // A few seconds of readings as they come, before the outage.
    let warm = Duration::from_secs(if args.short { 2 } else { 6 });
    story.pump(Duration::from_secs(60), |t, _| t.newest() >= started + warm);
    if let Some(door) = door.as_mut().filter(|_| !story.stopped()) {
        // 3 s at least: the load sensor reads every second, so one reading is taken in the
        // outage's first second and arrives 2 s or more later, which the story points out as
        // having waited in the buffer. With 2 s it depended on where the ticks fell (a cut just
        // after every sensor's tick left nothing waiting over 1.5 s).
        let outage = if args.short { 3 } else { 5 };
        say(&format!(
            "now the broker goes away for {outage} s: the demo closes 127.0.0.1:{} and cuts the \
             daemon's connection (what a broker restart or a Wi-Fi drop looks like to it). The \
             daemon goes on reading its sensors and keeps every reading in its buffer ({}) until \
             the broker acknowledges it",
            args.port,
            buffer.display()
        ));
        runtime.block_on(door.close());
        story.pump(Duration::from_secs(outage), |_, _| false);
        runtime.block_on(door.open())?;
        let back = SystemTime::now();
        say(
            "the broker is back: the daemon reconnects at its next attempt (it waits 0.5 s, \
             doubling up to 60 s, between attempts) and sends the backlog first, in order",
        );
        story.pump(Duration::from_secs(60), |t, _| {
            t.newest() > back && t.verdict().missing.is_empty()
        });
    } else if door.is_none() {
        say(
            "this broker is not the demo's, so the demo does not stop it: to watch the buffer \
             at work, stop it for a minute yourself (e.g. `sudo systemctl stop mosquitto`, then \
             `start`)",
        );
    }
    if !args.short && !story.stopped() {
        say(
            "the daemon goes on; `mosquitto_sub -v -t 'demo/#'` in another terminal shows the \
             same. Ctrl-C stops the daemon (cleanly) and the demo",
        );
        story.pump(Duration::MAX, |_, _| false);
    }

    say("stopping the daemon with SIGTERM: a clean stop");
    running.stop(&mut story);
    // Whatever the broker acknowledged before the stop may still be on its way to us.
    story.pump(Duration::from_secs(3), |t, _| {
        t.verdict().missing.is_empty()
    });
    Ok(story.verdict())
}

/// The subscriber's and the daemon's events, printed as they come, and the tally.
struct Story {
    rx: Receiver<Event>,
    tally: Tally,
    interrupted: Arc<AtomicBool>,
}

impl Story {
    fn stopped(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Prints events until `done(tally, subscribed)`, Ctrl-C or `limit`; true when `done`.
    fn pump(&mut self, limit: Duration, mut done: impl FnMut(&Tally, bool) -> bool) -> bool {
        let deadline = Instant::now().checked_add(limit);
        let mut subscribed = false;
        loop {
            if done(&self.tally, subscribed) {
                return true;
            }
            let left = deadline.map_or(Duration::from_millis(200), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() || self.stopped() {
                return false;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(Event::Subscribed) => subscribed = true,
                Ok(Event::Message { topic, payload }) => {
                    let note = self.tally.add(&topic, &payload, SystemTime::now());
                    println!("subscriber | {topic} {}", describe(note, &payload));
                }
                Ok(Event::SubscriberError(e)) => println!("subscriber | connection: {e}"),
                Ok(Event::DaemonLog(line)) => println!("daemon     | {line}"),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn verdict(&self) -> bool {
        let v = self.tally.verdict();
        let t = &self.tally;
        if v.received == 0 {
            say("no reading of this run arrived: see the daemon's lines above");
            return false;
        }
        let dups = match t.duplicates {
            0 => String::new(),
            n => format!(
                "; {n} sent twice (their acknowledgement was lost in the cut; `seq` lets a \
                 consumer drop the copy)"
            ),
        };
        if v.missing.is_empty() && t.out_of_order == 0 {
            say(&format!(
                "nothing lost: all {} readings the daemon took up to the last one received \
                 arrived, each topic's in order{dups}",
                v.received
            ));
            true
        } else {
            say(&format!(
                "LOST OR REORDERED: {} received, missing seq {:?}, {} out of order{dups}",
                v.received, v.missing, t.out_of_order
            ));
            false
        }
    }
}

fn describe(note: Note, payload: &str) -> String {
    match note {
        Note::Fresh { value, waited } if waited > Duration::from_millis(1500) => format!(
            "{value}  (read {:.1} s before it arrived: it waited in the daemon's buffer)",
            waited.as_secs_f64()
        ),
        Note::Fresh { value, .. } => value,
        Note::Duplicate { value } => format!("{value}  (again: a duplicate)"),
        Note::EarlierRun { value, ts } => {
            format!("{value}  (read at {ts} by an earlier run, left in the buffer)")
        }
        Note::NotJson => format!("{payload}  (not telemetryd's JSON: not counted)"),
    }
}

/// The daemon as a child process in its own process group (Ctrl-C reaches the demo only, which
/// then stops the daemon with one SIGTERM); killed if the demo ends early.
struct Daemon(Child);

impl Daemon {
    fn start(
        binary: &Path,
        config: &Path,
        dir: &Path,
        events: std::sync::mpsc::Sender<Event>,
    ) -> anyhow::Result<Daemon> {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if events.send(Event::DaemonLog(line)).is_err() {
                    return;
                }
            }
        });
        Ok(Daemon(child))
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped before this returns.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// SIGTERM, then up to 20 s for the daemon to finish; a second Ctrl-C cuts that short.
    fn stop(&mut self, story: &mut Story) {
        story.interrupted.store(false, Ordering::Relaxed);
        self.signal(libc::SIGTERM);
        let mut exited = false;
        story.pump(Duration::from_secs(20), |_, _| {
            exited = exited || matches!(self.0.try_wait(), Ok(Some(_)));
            exited
        });
        if !exited {
            say(if story.stopped() {
                "Ctrl-C again: killing the daemon"
            } else {
                "the daemon did not stop within 20 s: killing it"
            });
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The daemon binary next to this example (target/<profile>/telemetryd), built first when run
/// by cargo (`cargo run --example` builds the example only).
fn build_daemon() -> anyhow::Result<PathBuf> {
    let me = env::current_exe()?;
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .context("where the demo runs from")?;
    if let Ok(cargo) = env::var("CARGO") {
        say("building the daemon: cargo build --bin telemetryd (quick when it is built)");
        let mut build = Command::new(cargo);
        // Not --quiet: the first build of the daemon alone (without the demo's dev-dependencies
        // in the feature set) takes a minute or two, and a newcomer should see it progress.
        build.args(["build", "--bin", "telemetryd"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        if !build.status()?.success() {
            bail!("cargo build --bin telemetryd failed");
        }
    }
    let daemon = profile_dir.join("telemetryd");
    if !daemon.exists() {
        bail!(
            "{} does not exist: run `cargo build` first",
            daemon.display()
        );
    }
    Ok(daemon)
}

/// config/demo.toml, or a copy of it for another port with a buffer in a temporary directory;
/// and the buffer's path.
fn demo_config(
    repo: &Path,
    port: u16,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>, PathBuf)> {
    let path = repo.join("config/demo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut table: toml::Table = toml::from_str(&text)?;
    let buffer = table
        .get("buffer")
        .and_then(|b| b.get("path"))
        .and_then(|p| p.as_str())
        .context("config/demo.toml has no [buffer] path")?;
    if port == 1883 {
        let buffer = repo.join(buffer);
        return Ok((path, None, buffer));
    }
    let temp = tempfile::tempdir()?;
    let buffer = temp.path().join("buffer");
    table["mqtt"]["port"] = toml::Value::Integer(port.into());
    table["buffer"]["path"] = toml::Value::String(buffer.display().to_string());
    let copy = temp.path().join("demo.toml");
    std::fs::write(&copy, toml::to_string(&table)?)?;
    say(&format!(
        "a copy of config/demo.toml with port = {port} and a buffer in {}",
        temp.path().display()
    ));
    Ok((copy, Some(temp), buffer))
}
