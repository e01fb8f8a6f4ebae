//! What the systemd unit's sandbox hides from the service, for `telemetryd check`.
//!
//! Paths and commands that work in a shell but not in the service.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::sensor::SourceSpec;

/// The unit the package installs, for when none is installed here.
pub const SHIPPED_UNIT: &str = include_str!("../systemd/telemetryd.service");

/// Where an installed unit is looked for, first match wins (drop-ins are not read).
const INSTALLED: &[&str] = &[
    "/etc/systemd/system/telemetryd.service",
    "/usr/lib/systemd/system/telemetryd.service",
    "/lib/systemd/system/telemetryd.service",
];

/// The sandbox settings of a unit's `[Service]` section that change what a sensor sees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `PrivateTmp=yes`: /tmp and /var/tmp are the service's own, empty.
    pub private_tmp: bool,
    /// `ProtectHome=yes` or `tmpfs`: /home, /root and /run/user are hidden.
    pub hide_home: bool,
    /// `ProtectSystem=strict`: all is read-only but `writable` (and /dev, /proc, /sys).
    pub read_only_system: bool,
    /// `StateDirectory=` (under /var/lib) and `ReadWritePaths=`.
    pub writable: Vec<PathBuf>,
    /// `StateDirectory=`: made by systemd, for the service's user, when the service starts.
    pub state_dirs: Vec<PathBuf>,
    /// `ProtectProc=invisible`: other users' processes are not in /proc.
    pub own_processes_only: bool,
    /// `NoNewPrivileges=yes`: sudo and setuid programs cannot gain anything.
    pub no_new_privileges: bool,
}

/// A finding: `fails` when the service will certainly not work this way (a hidden path), not
/// only differ (a process count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub fails: bool,
    pub text: String,
}

impl Sandbox {
    /// Reads the settings from a unit file's text; later lines win, as in systemd.
    pub fn from_unit(text: &str) -> Sandbox {
        let mut s = Sandbox::default();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|_| in_service) else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let yes = matches!(value, "yes" | "true" | "on" | "1");
            match key {
                "PrivateTmp" => s.private_tmp = yes,
                "ProtectHome" => s.hide_home = yes || value == "tmpfs",
                "ProtectSystem" => s.read_only_system = value == "strict",
                "ProtectProc" => s.own_processes_only = value == "invisible",
                "NoNewPrivileges" => s.no_new_privileges = yes,
                "StateDirectory" => {
                    let dirs = value
                        .split_whitespace()
                        .map(|d| Path::new("/var/lib").join(d.split(':').next().unwrap_or(d)));
                    s.state_dirs.extend(dirs.clone());
                    s.writable.extend(dirs);
                }
                "ReadWritePaths" => s.writable.extend(
                    value
                        .split_whitespace()
                        .map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))),
                ),
                _ => {}
            }
        }
        s
    }

    /// The installed unit's sandbox, or the shipped one's; and which file it came from
    /// (`None`: the shipped copy, no unit installed here).
    pub fn installed_or_shipped() -> (Sandbox, Option<PathBuf>) {
        for path in INSTALLED {
            if let Ok(text) = std::fs::read_to_string(path) {
                return (Sandbox::from_unit(&text), Some(PathBuf::from(path)));
            }
        }
        (Sandbox::from_unit(SHIPPED_UNIT), None)
    }

    /// Where `path` is hidden from the service, if it is.
    fn hides(&self, path: &Path) -> Option<String> {
        if self.private_tmp && (path.starts_with("/tmp") || path.starts_with("/var/tmp")) {
            return Some(
                "the service has a private /tmp and /var/tmp of its own (PrivateTmp=yes), empty \
                 at every start"
                    .into(),
            );
        }
        if self.hide_home
            && ["/home", "/root", "/run/user"]
                .iter()
                .any(|h| path.starts_with(h))
        {
            return Some(
                "the service cannot see /home, /root or /run/user (ProtectHome=yes)".into(),
            );
        }
        None
    }

    /// What would not work (or work differently) in the service with `config`.
    pub fn findings(&self, config: &Config) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut hidden = |what: String, path: &Path| {
            if let Some(why) = self.hides(path) {
                out.push(Finding {
                    fails: true,
                    text: format!(
                        "{what} {} is hidden from the service: {why}",
                        path.display()
                    ),
                });
            }
        };
        hidden("[buffer] path".into(), &config.buffer.path);
        hidden("sysfs_root".into(), &config.sysfs_root);
        for sensor in &config.sensors {
            let name = &sensor.name;
            match &sensor.source {
                SourceSpec::File { path }
                | SourceSpec::Ds18b20 {
                    path: Some(path), ..
                } => hidden(format!("sensor {name:?}: path"), path),
                SourceSpec::Command { argv, .. } => {
                    for arg in argv.iter().filter(|a| a.starts_with('/')) {
                        hidden(format!("sensor {name:?}: command uses"), Path::new(arg));
                    }
                }
                _ => {}
            }
        }
        let buffer = &config.buffer.path;
        if self.read_only_system
            && self.hides(buffer).is_none()
            && !self.writable.iter().any(|w| buffer.starts_with(w))
        {
            let writable: Vec<String> = self
                .writable
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            out.push(Finding {
                fails: true,
                text: format!(
                    "[buffer] path {} is read-only for the service (ProtectSystem=strict; it may \
                     write only under {}): it would keep readings in memory only. Put the buffer \
                     there, or allow the path with ReadWritePaths= in a drop-in \
                     (`systemctl edit telemetryd`)",
                    buffer.display(),
                    if writable.is_empty() {
                        "nothing".to_owned()
                    } else {
                        writable.join(", ")
                    }
                ),
            });
        }
        for sensor in &config.sensors {
            let SourceSpec::Command { argv, .. } = &sensor.source else {
                continue;
            };
            let program = Path::new(&argv[0])
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let shown = argv.join(" ");
            if self.own_processes_only
                && (matches!(program, "ps" | "pgrep" | "pidof" | "pstree" | "top")
                    || argv.iter().any(|a| a.contains("/proc/")))
            {
                out.push(Finding {
                    fails: false,
                    text: format!(
                        "sensor {:?}: `{shown}` sees only the service's own processes there \
                         (ProtectProc=invisible), so it will count or find other things than here",
                        sensor.name
                    ),
                });
            }
            if self.no_new_privileges && matches!(program, "sudo" | "su" | "doas" | "pkexec") {
                out.push(Finding {
                    fails: true,
                    text: format!(
                        "sensor {:?}: `{shown}` cannot gain privileges in the service \
                         (NoNewPrivileges=yes): give the service's user the access instead (a group)",
                        sensor.name
                    ),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped unit, as check reads it: every setting the findings depend on.
    #[test]
    fn reads_the_shipped_units_sandbox() {
        let s = Sandbox::from_unit(SHIPPED_UNIT);
        assert_eq!(
            s,
            Sandbox {
                private_tmp: true,
                hide_home: true,
                read_only_system: true,
                writable: vec![PathBuf::from("/var/lib/telemetryd")],
                state_dirs: vec![PathBuf::from("/var/lib/telemetryd")],
                own_processes_only: true,
                no_new_privileges: true,
            }
        );
    }

    #[test]
    fn finds_what_the_sandbox_hides() {
        let text = r#"
[buffer]
path = "/home/pi/buffer"

[[sensor]]
name = "scratch"
kind = "file"
path = "/tmp/value"
interval = "1s"
topic = "t/scratch"

[[sensor]]
name = "procs"
kind = "command"
command = ["ps", "-e"]
interval = "1s"
topic = "t/procs"

[[sensor]]
name = "script"
kind = "command"
command = ["sudo", "/home/pi/read.py"]
interval = "1s"
topic = "t/script"

[[sensor]]
name = "cpu"
kind = "file"
path = "/sys/class/thermal/thermal_zone0/temp"
interval = "1s"
topic = "t/cpu"
"#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let found = Sandbox::from_unit(SHIPPED_UNIT).findings(&config);
        let texts: Vec<&str> = found.iter().map(|f| f.text.as_str()).collect();
        let has = |needle: &str, fails: bool| {
            assert!(
                found
                    .iter()
                    .any(|f| f.text.contains(needle) && f.fails == fails),
                "no {needle:?} (fails: {fails}) in {texts:#?}"
            );
        };
        has("[buffer] path /home/pi/buffer is hidden", true);
        has(
            "sensor \"scratch\": path /tmp/value is hidden from the service: the service has a private /tmp",
            true,
        );
        has(
            "sensor \"procs\": `ps -e` sees only the service's own processes",
            false,
        );
        has(
            "sensor \"script\": command uses /home/pi/read.py is hidden",
            true,
        );
        has(
            "sensor \"script\": `sudo /home/pi/read.py` cannot gain privileges",
            true,
        );
        assert_eq!(found.len(), 5, "{texts:#?}");

        let config = Config::parse(
            &text.replace("/home/pi/buffer", "/var/lib/telemetryd/buffer"),
            Path::new("t.toml"),
        )
        .unwrap();
        let found = Sandbox::from_unit(SHIPPED_UNIT).findings(&config);
        assert!(
            !found.iter().any(|f| f.text.contains("[buffer]")),
            "{found:#?}"
        );
        let config = Config::parse(
            &format!("sysfs_root = \"/tmp/fake-sys\"\n{text}"),
            Path::new("t.toml"),
        )
        .unwrap();
        let found = Sandbox::from_unit(SHIPPED_UNIT).findings(&config);
        assert!(
            found
                .iter()
                .any(|f| f.fails && f.text.starts_with("sysfs_root /tmp/fake-sys is hidden")),
            "{found:#?}"
        );
        let config = Config::parse(
            &text.replace("/home/pi/buffer", "/srv/buffer"),
            Path::new("t.toml"),
        )
        .unwrap();
        let found = Sandbox::from_unit(SHIPPED_UNIT).findings(&config);
        assert!(
            found.iter().any(|f| f
                .text
                .contains("[buffer] path /srv/buffer is read-only for the service")),
            "{found:#?}"
        );
    }
}
