//! collectd, the footprint scenario's peer (issue 15): Debian's `collectd-core` with its
//! `table` input plugin on the same value files as our `file` sensors and its `mqtt` write
//! plugin at QoS 1 on the suite's broker. Its own config in the run's dir; in the foreground
//! (`collectd -f -C FILE`), never the system's config, never a daemon.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use telemetryd_testkit::{Proc, log_file, read_lossy};

use crate::env::wrapped;

/// Where Debian's `collectd-core` puts its binary, plugins and types.
const BINARIES: &[&str] = &["/usr/sbin/collectd", "/usr/bin/collectd"];
const PLUGIN_DIR: &str = "/usr/lib/collectd";
const TYPES_DB: &str = "/usr/share/collectd/types.db";

/// An installed collectd with the two plugins the scenario needs.
pub struct Collectd {
    pub bin: PathBuf,
    pub version: String,
}

fn installed() -> anyhow::Result<Collectd> {
    let bin = BINARIES
        .iter()
        .map(PathBuf::from)
        .find(|b| b.exists())
        .ok_or_else(|| anyhow::anyhow!("no collectd binary in /usr/sbin or /usr/bin"))?;
    for plugin in ["table.so", "mqtt.so"] {
        let p = Path::new(PLUGIN_DIR).join(plugin);
        if !p.exists() {
            anyhow::bail!("{} is missing", p.display());
        }
    }
    if !Path::new(TYPES_DB).exists() {
        anyhow::bail!("{TYPES_DB} is missing");
    }
    let out = Command::new(&bin)
        .arg("-h")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find(|l| l.starts_with("collectd "))
        .unwrap_or("collectd (version unknown)")
        .trim()
        .to_owned();
    Ok(Collectd { bin, version })
}

/// collectd as installed, or installed now with apt (`collectd-core`, as root or with a
/// password-less sudo), saying so on stderr; `Err` with the reason when neither works.
pub fn find_or_install() -> anyhow::Result<Collectd> {
    match installed() {
        Ok(c) => return Ok(c),
        Err(why) => eprintln!(
            "footprint: collectd is not usable ({why}); installing Debian's collectd-core with apt-get"
        ),
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    };
    let status = cmd
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "collectd-core",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => installed().map_err(|why| anyhow::anyhow!("installed, but {why}")),
        Ok(s) => Err(anyhow::anyhow!(
            "`apt-get install collectd-core` failed ({s})"
        )),
        Err(e) => Err(anyhow::anyhow!("cannot run apt-get: {e}")),
    }
}

/// The config: `values[i]` read by a `table` every `interval` s as `table-s{i}/gauge`,
/// published by `mqtt` at QoS 1 under `prefix/bench/…` to 127.0.0.1:`port`.
pub fn config(dir: &Path, values: &[PathBuf], port: u16, client_id: &str, prefix: &str) -> String {
    let mut c = format!(
        "Hostname \"bench\"\nFQDNLookup false\nInterval 1\n\
         BaseDir \"{dir}\"\nPIDFile \"{dir}/collectd.pid\"\n\
         PluginDir \"{PLUGIN_DIR}\"\nTypesDB \"{TYPES_DB}\"\n\
         LoadPlugin logfile\n<Plugin logfile>\n  LogLevel info\n  File stderr\n</Plugin>\n\
         LoadPlugin table\nLoadPlugin mqtt\n<Plugin table>\n",
        dir = dir.display()
    );
    for (i, v) in values.iter().enumerate() {
        let _ = write!(
            c,
            "  <Table \"{}\">\n    Instance \"s{i}\"\n    Separator \" \\n\"\n    \
             <Result>\n      Type gauge\n      ValuesFrom 0\n    </Result>\n  </Table>\n",
            v.display()
        );
    }
    let _ = write!(
        c,
        "</Plugin>\n<Plugin mqtt>\n  <Publish \"bench\">\n    Host \"127.0.0.1\"\n    \
         Port {port}\n    ClientId \"{client_id}\"\n    QoS 1\n    Prefix \"{prefix}\"\n  \
         </Publish>\n</Plugin>\n"
    );
    c
}

/// A running collectd (`-f`), its stderr in `collectd.log` in its dir.
pub struct Running {
    proc: Proc,
    log: PathBuf,
    pub spawned_at: Instant,
}

impl Running {
    pub fn start(c: &Collectd, dir: &Path, config: &str, wrapper: &[String]) -> Running {
        fs::create_dir_all(dir).expect("collectd dir");
        let conf = dir.join("collectd.conf");
        fs::write(&conf, config).expect("write collectd.conf");
        let log = dir.join("collectd.log");
        let spawned_at = Instant::now();
        let proc = Proc::spawn(
            "collectd",
            wrapped(wrapper, &c.bin)
                .arg("-f")
                .arg("-C")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log).0),
        );
        Running {
            proc,
            log,
            spawned_at,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGTERM; panics unless it exits with 0 within `limit`. Returns its log.
    pub fn stop(mut self, limit: Duration) -> String {
        let (status, in_time) = self.proc.terminate(limit);
        let log = read_lossy(&self.log);
        assert!(
            in_time && status.success(),
            "collectd did not stop cleanly within {limit:?} of SIGTERM ({status}); its log:\n{log}"
        );
        log
    }
}
