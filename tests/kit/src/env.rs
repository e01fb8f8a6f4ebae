//! One test's world ([`Env`]): temp dir, broker, subscriber and daemon, all torn down on drop,
//! with a dump of logs and deliveries when the test fails.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;

use crate::{
    Broker, Counter, Daemon, PROBE_PREFIX, Subscriber, assert_in_order, describe, read_lossy,
    store_depth, strip_ansi, toml_str, wait_delivered_by,
};

type Dumper = Box<dyn Fn() -> String + Send>;

/// One test's world: temp dir, broker, subscriber, daemon, and what to print if it fails.
pub struct Env {
    pub name: String,
    pub broker: Option<Broker>,
    pub sub: Option<Subscriber>,
    pub daemon: Daemon,
    dumpers: Vec<(String, Dumper)>,
    // Last field: dropped after the processes above.
    tmp: Option<tempfile::TempDir>,
}

impl Env {
    /// A bare env: temp dir and (not yet started) daemon.
    pub fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("telemetryd-it-{name}-"))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        Env {
            name: name.to_string(),
            broker: None,
            sub: None,
            daemon: Daemon {
                config: dir.join("telemetryd.toml"),
                dir,
                proc: None,
                runs: Vec::new(),
            },
            dumpers: Vec::new(),
            tmp: Some(tmp),
        }
    }

    /// An env with a running Mosquitto and a subscribed `mosquitto_sub`.
    pub fn with_broker(name: &str) -> Env {
        let mut env = Env::new(name);
        let broker = Broker::start(&env.path("broker"));
        let port = broker.port;
        env.broker = Some(broker);
        env.sub = Some(Subscriber::start(env.dir(), port, &format!("sub-{name}")));
        env
    }

    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("temp dir").path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    pub fn buffer_path(&self) -> PathBuf {
        self.path("buffer")
    }

    pub fn broker(&mut self) -> &mut Broker {
        self.broker.as_mut().expect("env has no broker")
    }

    pub fn sub(&self) -> &Subscriber {
        self.sub.as_ref().expect("env has no subscriber")
    }

    pub fn port(&self) -> u16 {
        self.broker.as_ref().expect("env has no broker").port
    }

    /// A complete config: top-level keys, `[mqtt]` to `port` with client id `td-<name>`,
    /// `[buffer]` in the temp dir, then `tail` (sensor tables).
    pub fn config_for_port(&self, port: u16, top: &str, tail: &str) -> String {
        format!(
            "log_level = \"debug\"\n\
             {top}\
             [mqtt]\n\
             host = \"127.0.0.1\"\n\
             port = {port}\n\
             client_id = \"td-{name}\"\n\
             clean_session = false\n\
             keep_alive = \"5s\"\n\
             \n\
             [buffer]\n\
             path = {buffer}\n\
             max_messages = 500000\n\
             \n\
             {tail}",
            name = self.name,
            buffer = toml_str(&self.buffer_path().display().to_string()),
        )
    }

    /// [`Env::config_for_port`] for this env's Mosquitto.
    pub fn config(&self, top: &str, tail: &str) -> String {
        self.config_for_port(self.port(), top, tail)
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.daemon.config, text).expect("write config");
    }

    /// Registers a section for the failure dump.
    pub fn on_failure_dump(&mut self, title: &str, f: impl Fn() -> String + Send + 'static) {
        self.dumpers.push((title.to_string(), Box::new(f)));
    }

    /// Counter values on `topic` received by the subscriber.
    pub fn values(&self, topic: &str) -> Vec<u64> {
        self.sub().values(topic)
    }

    /// Waits until the subscriber has every value of 1..=upto on `topic` (but at most
    /// `allowed_missing`), and checks the order.
    pub fn wait_delivered(&self, topic: &str, upto: u64, allowed_missing: usize) {
        let sub = self.sub();
        wait_delivered_by(&|| sub.values(topic), topic, upto, allowed_missing);
    }

    /// Stops the counter, waits until everything it produced reached the subscriber on
    /// `topic`, SIGTERMs the daemon (exit 0) and checks that the store ended empty. Returns
    /// the final count.
    pub fn drain_and_stop(
        &mut self,
        counter: &Counter,
        topic: &str,
        allowed_missing: usize,
    ) -> u64 {
        let sub = self.sub.as_ref().expect("env has no subscriber");
        drain_and_stop_by(
            &mut self.daemon,
            &self.tmp.as_ref().expect("temp dir").path().join("buffer"),
            counter,
            &|| sub.values(topic),
            topic,
            allowed_missing,
        )
    }

    fn dump(&self) -> String {
        let mut o = String::new();
        let bar = "=".repeat(100);
        writeln!(
            o,
            "\n{bar}\nFAILED: {} (temp dir {})",
            self.name,
            self.dir().display()
        )
        .unwrap();
        section(
            &mut o,
            "config",
            &read_lossy(&self.daemon.config),
            usize::MAX,
        );
        for (i, (log, status)) in self.daemon.runs.iter().enumerate() {
            let title = format!(
                "telemetryd run {} ({}), {}",
                i + 1,
                match status {
                    Some(s) => s.to_string(),
                    None => "killed by the harness".into(),
                },
                log.display()
            );
            section(&mut o, &title, &read_lossy(log), 400);
        }
        if let Some(b) = &self.broker {
            section(
                &mut o,
                &format!("mosquitto.log (port {})", b.port),
                &read_lossy(&b.log_path()),
                300,
            );
            section(
                &mut o,
                "mosquitto stderr",
                &read_lossy(&b.dir.join("mosquitto.stderr")),
                30,
            );
        }
        if let Some(s) = &self.sub {
            let mut topics: Vec<String> = s.lines().into_iter().map(|(t, _)| t).collect();
            topics.sort();
            topics.dedup();
            let mut summary = String::new();
            for t in topics.iter().filter(|t| !t.starts_with(PROBE_PREFIX)) {
                let payloads = s.payloads(t);
                let ints: Option<Vec<u64>> = payloads.iter().map(|p| p.parse().ok()).collect();
                match ints {
                    Some(v) => writeln!(summary, "{t}: {}", describe(&v)).unwrap(),
                    None => writeln!(summary, "{t}: {} messages", payloads.len()).unwrap(),
                }
            }
            section(&mut o, "subscriber summary", &summary, usize::MAX);
            section(&mut o, "subscriber received (topic payload)", &s.raw(), 200);
            section(
                &mut o,
                "subscriber stderr",
                &read_lossy(&self.path("sub.err")),
                30,
            );
        }
        for (title, f) in &self.dumpers {
            section(&mut o, title, &f(), usize::MAX);
        }
        writeln!(o, "{bar}").unwrap();
        o
    }
}

fn section(o: &mut String, title: &str, body: &str, max_lines: usize) {
    let body = strip_ansi(body);
    let lines: Vec<&str> = body.lines().collect();
    writeln!(o, "----- {title} ({} lines) -----", lines.len()).unwrap();
    if lines.len() > max_lines {
        writeln!(
            o,
            "[... {} earlier lines omitted ...]",
            lines.len() - max_lines
        )
        .unwrap();
    }
    for l in &lines[lines.len().saturating_sub(max_lines)..] {
        writeln!(o, "{l}").unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Processes first (logs complete, ports free), then dump, then the temp dir.
        if let Some(mut p) = self.daemon.proc.take() {
            let s = p.kill();
            let _ = s;
        }
        if let Some(s) = self.sub.as_mut() {
            s.proc.kill();
        }
        if let Some(b) = self.broker.as_mut() {
            b.kill();
        }
        let keep = std::env::var("TELEMETRYD_IT_KEEP").ok();
        if thread::panicking() {
            eprintln!("{}", self.dump());
        }
        if (thread::panicking() && keep.is_some() || keep.as_deref() == Some("always"))
            && let Some(t) = self.tmp.take()
        {
            eprintln!("kept {}", t.keep().display());
        }
    }
}

/// Stops the counter, waits until everything it produced has arrived (`values()`), SIGTERMs
/// the daemon (exit 0 within the grace) and checks that the store at `buffer` ended empty and
/// that the final sequence is in order, complete but for `allowed_missing`. Returns the final
/// count.
pub fn drain_and_stop_by(
    daemon: &mut Daemon,
    buffer: &Path,
    counter: &Counter,
    values: &dyn Fn() -> Vec<u64>,
    what: &str,
    allowed_missing: usize,
) -> u64 {
    let n = counter.pause();
    wait_delivered_by(values, what, n, allowed_missing);
    daemon.stop_expect_success();
    assert_eq!(store_depth(buffer), 0, "store not empty at the end");
    let all = values();
    assert_in_order(&all, n, allowed_missing);
    assert!(
        all.iter().all(|&v| v <= n),
        "values above the final count {n}: {}",
        describe(&all)
    );
    n
}
