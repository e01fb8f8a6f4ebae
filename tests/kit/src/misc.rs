//! Small helpers: TOML text, config tweaks, the time, in-test servers, event logs, w1 files.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `cfg` with each `(from, to)` replaced; panics if `from` is not there (a config template
/// that changed must not leave a test running with settings it did not ask for).
pub fn tweak(mut cfg: String, pairs: &[(&str, &str)]) -> String {
    for (from, to) in pairs {
        assert!(cfg.contains(from), "{from:?} not in the config:\n{cfg}");
        cfg = cfg.replace(from, to);
    }
    cfg
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A one-worker tokio runtime and a listener on a free 127.0.0.1 port: what each in-test
/// network component (the proxy, the scripted brokers) runs on, apart from the test thread.
pub fn loopback_server() -> (tokio::runtime::Runtime, tokio::net::TcpListener, u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    (rt, listener, port)
}

/// Shared text log for in-test components (the fake broker), dumped on failure.
#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<String>>>);

impl EventLog {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }
}

/// A fake w1_slave file for `millidegrees`.
pub fn write_w1_slave(path: &Path, millidegrees: i64) {
    fs::create_dir_all(path.parent().expect("parent")).expect("w1 dir");
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        format!(
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t={millidegrees}\n"
        ),
    )
    .expect("write w1_slave");
    fs::rename(&tmp, path).expect("rename w1_slave");
}
