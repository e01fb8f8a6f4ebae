//! The counter sensor ([`Counter`]): a command sensor whose readings are 1, 2, 3, ...

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::{DEADLINE, toml_str, wait_for, wait_until};

/// A `command` sensor whose every reading is the next integer, persisted in a file so it
/// survives daemon restarts. Gaps and reorders of readings become visible downstream.
///
/// It can be paused: while `<name>.pause` exists the script increments nothing, touches
/// `<name>.refused` and fails. Once `refused` exists, every earlier reading has been fully
/// read by the daemon (a sensor is read one reading at a time), so the counter value is the
/// exact number of readings taken. The new value is written to a temp file and renamed, so a
/// script killed half-way can never reset the counter.
#[derive(Clone)]
pub struct Counter {
    pub file: PathBuf,
    pause: PathBuf,
    refused: PathBuf,
}

impl Counter {
    pub fn new(dir: &Path, name: &str) -> Counter {
        Counter {
            file: dir.join(name),
            pause: dir.join(format!("{name}.pause")),
            refused: dir.join(format!("{name}.refused")),
        }
    }

    /// The `command = [...]` TOML value.
    pub fn command_toml(&self) -> String {
        let script = format!(
            "f={f}; if [ -e {p} ]; then touch {r}; exit 1; fi; \
             n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n > $f.tmp && mv $f.tmp $f; echo $n",
            f = self.file.display(),
            p = self.pause.display(),
            r = self.refused.display(),
        );
        format!("[\"sh\", \"-c\", {}]", toml_str(&script))
    }

    /// A `[[sensor]]` table reading this counter.
    pub fn sensor_toml(&self, name: &str, topic: &str, interval: &str, qos: u8) -> String {
        format!(
            "[[sensor]]\n\
             name = {name}\n\
             kind = \"command\"\n\
             command = {cmd}\n\
             timeout = \"5s\"\n\
             interval = \"{interval}\"\n\
             topic = {topic}\n\
             qos = {qos}\n\
             decimals = 0\n",
            name = toml_str(name),
            cmd = self.command_toml(),
            topic = toml_str(topic),
        )
    }

    /// The last value handed out (0 before the first reading).
    pub fn value(&self) -> u64 {
        // The file is replaced atomically, so a read sees a whole number or no file.
        fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn wait_value_at_least(&self, n: u64, what: &str) -> u64 {
        wait_for(DEADLINE, &format!("{what} (counter >= {n})"), || {
            let v = self.value();
            (v >= n).then_some(v)
        })
    }

    /// Pauses the counter and waits until the daemon has finished every reading; returns the
    /// final count.
    pub fn pause(&self) -> u64 {
        let _ = fs::remove_file(&self.refused);
        File::create(&self.pause).expect("create pause file");
        wait_until(
            DEADLINE,
            "the daemon tries a reading of the paused counter",
            || self.refused.exists(),
        );
        self.value()
    }

    pub fn resume(&self) {
        let _ = fs::remove_file(&self.pause);
        let _ = fs::remove_file(&self.refused);
    }
}
