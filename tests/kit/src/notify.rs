//! A fake systemd `NOTIFY_SOCKET` that records what the daemon sends, with arrival times.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound in a test's temp dir; the daemon learns it from `NOTIFY_SOCKET`.
pub struct NotifySocket {
    pub path: PathBuf,
    /// Each line with when it arrived.
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    pub fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let alive = path.clone();
        // Ends once the test's temp dir (and so the socket file) is gone, or after 10 minutes:
        // a bounded thread that holds nothing that matters.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            for _ in 0..3000 {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let now = Instant::now();
                        sink.lock()
                            .unwrap()
                            .extend(msg.lines().map(|l| (now, l.to_owned())));
                    }
                    Err(_) if !alive.exists() => return,
                    Err(_) => {}
                }
            }
        });
        NotifySocket { path, got }
    }

    /// Every line so far, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// How many times `line` arrived.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    pub fn has(&self, line: &str) -> bool {
        self.got.lock().unwrap().iter().any(|(_, l)| l == line)
    }

    /// When each `line` arrived.
    pub fn times_of(&self, line: &str) -> Vec<Instant> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(_, l)| l == line)
            .map(|(t, _)| *t)
            .collect()
    }

    /// The longest time without `line` between `from` and `to` (the edges count as arrivals
    /// only for the gap measure, so a silence at either end is caught too).
    pub fn longest_gap(&self, line: &str, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .times_of(line)
            .into_iter()
            .filter(|t| *t > from && *t < to)
            .collect();
        times.insert(0, from);
        times.push(to);
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}
