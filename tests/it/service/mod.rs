//! Living under systemd: readiness and watchdog notifications, SIGHUP reloads, journald log
//! lines, and the `check`, `sensors` and `buffer` subcommands.

mod journald;
mod reload;
mod start_stop;
mod status;
mod subcommands;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "test/counter";

/// Collects what the daemon sends to a fake `NOTIFY_SOCKET`.
struct NotifySocket {
    path: std::path::PathBuf,
    /// Each line with when it arrived.
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        // Ends when the test's temp dir (and so the socket file) is gone and reads keep timing
        // out; it holds nothing that matters.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            for _ in 0..600 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let now = Instant::now();
                    sink.lock()
                        .unwrap()
                        .extend(msg.lines().map(|l| (now, l.to_owned())));
                }
            }
        });
        NotifySocket { path, got }
    }

    fn lines(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// When each `line` arrived.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(_, l)| l == line)
            .map(|(t, _)| *t)
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}
