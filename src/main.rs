//! The `telemetryd` command: parses arguments, loads the config, and decides every exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use telemetryd::config::{self, Config};
use telemetryd::{discover, inspect};

/// EX_CONFIG from sysexits.h: the unit file's `RestartPreventExitStatus=78` stops systemd
/// from restarting a daemon whose config is wrong.
const EXIT_CONFIG: u8 = 78;

/// Reads sensors on a schedule and publishes them to an MQTT broker, buffering on disk so
/// that no reading is lost while the broker or the network is away.
///
/// Without a subcommand, runs the daemon in the foreground. SIGTERM or Ctrl-C stops it
/// cleanly (a second one at once); SIGHUP rereads the config.
const EXAMPLES: &str = "Examples:
  telemetryd sensors                    what this machine has, as [[sensor]] blocks to paste
  telemetryd check                      validate /etc/telemetryd/telemetryd.toml and read every sensor once
  telemetryd buffer                     how many readings wait for the broker, and since when
  telemetryd --config demo.toml         run in the foreground
  journalctl -u telemetryd -f           follow the service's log
  systemctl reload telemetryd           apply an edited config without a restart";

#[derive(Parser)]
#[command(version, about, long_about, after_long_help = EXAMPLES)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the config, the buffer and the broker, then read every sensor once and show what
    /// it would publish.
    ///
    /// Run it as the service's user (`sudo -u telemetryd telemetryd check`): the buffer is
    /// tried as that user. Exits 0 when all is well, 78 on a config error, 1 when the buffer
    /// cannot be written, the broker cannot be reached, a sensor failed, or the service's
    /// sandbox hides something the config needs.
    Check {
        /// Only validate the config and print nothing on success (for `systemctl reload`).
        #[arg(long, short)]
        quiet: bool,
        /// Do not try to connect to the broker.
        #[arg(long)]
        no_broker: bool,
        /// The systemd unit whose sandbox to check against [default: the installed
        /// telemetryd.service; if none, the shipped one, whose findings are then only notes].
        #[arg(long, value_name = "PATH")]
        unit: Option<PathBuf>,
    },
    /// List the sensors this machine has, each as a ready-to-paste [[sensor]] block.
    Sensors {
        /// Where sysfs is mounted.
        #[arg(long, value_name = "PATH", default_value = "/sys")]
        sysfs_root: PathBuf,
        /// Where procfs is mounted (for the `system` metrics).
        #[arg(long, value_name = "PATH", default_value = "/proc")]
        procfs_root: PathBuf,
    },
    /// Show the buffer: readings waiting, the oldest one and its age, size on disk.
    Buffer,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => daemon(&cli.config),
        Some(Command::Check {
            quiet,
            no_broker,
            unit,
        }) => check(&cli.config, quiet, no_broker, unit.as_deref()),
        Some(Command::Sensors {
            sysfs_root,
            procfs_root,
        }) => {
            let found = block_on(discover::scan(&sysfs_root, &procfs_root));
            print!("{}", discover::render(&found, &sysfs_root));
            ExitCode::SUCCESS
        }
        Some(Command::Buffer) => buffer(&cli.config),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        telemetryd::logging::print_error(&format!("telemetryd: {e}"));
        ExitCode::from(EXIT_CONFIG)
    })
}

fn daemon(path: &Path) -> ExitCode {
    // First of all: a SIGHUP's default action kills, and `systemctl reload` (or a config
    // tool) may send one while the config is still loading. Noted here, it is replayed once
    // the real handler is in place, so the reload is deferred rather than fatal.
    let early_hup = Arc::new(AtomicBool::new(false));
    let early_hup_id = signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hup.clone());
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetryd::logging::init(&config.log_level);
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    tune_malloc();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let requests = telemetryd::signals::install(shutdown.clone())?;
        if let Ok(id) = early_hup_id {
            signal_hook::low_level::unregister(id);
        }
        if early_hup.load(Ordering::Relaxed) {
            tracing::info!("SIGHUP during startup: rereading the config now that it is running");
            // SAFETY: raise(3) only sends a signal to this process, which now handles it.
            unsafe { libc::raise(libc::SIGHUP) };
        }
        let reloads = telemetryd::Reloads {
            path: path.to_owned(),
            requests,
        };
        telemetryd::run(config, shutdown, Some(reloads)).await
    });
    // A sensor read still blocking in the pool (a w1 conversion) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("telemetryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path, quiet: bool, no_broker: bool, unit: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if quiet {
        return ExitCode::SUCCESS;
    }
    match block_on(telemetryd::check::run(path, &config, no_broker, unit)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("telemetryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn buffer(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match inspect::buffer(&config.buffer.path) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telemetryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
/// what is freed there. With the runtime thread, the blocking pool and sled's threads, draining
/// a backlog of a million readings peaked at 75 MiB resident; one arena, and memory handed
/// back once 64 KiB are free at the top of the heap, keep it near 45 MiB, at the same speed
/// (BENCHMARKS.md). Before any thread starts. glibc only: the static ARM .debs link musl,
/// whose allocator has no such knobs (and measures worse: BENCHMARKS.md, musl's allocator).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024);
    }
}

/// The most threads tokio's blocking pool may run at once (its default is 512). Each sensor
/// read takes one while it runs (a DS18B20's 750 ms conversion); 1,000 file sensors at 10 ms
/// started 512 threads here for work that takes microseconds (BENCHMARKS.md). Reads are capped
/// at [`READ_SLOTS`](telemetryd::schedule::READ_SLOTS), hung ones included; the few threads
/// beyond are for opening and closing the store and loading the config at a reload. Commits
/// have a thread of their own (`telemetryd-commit`).
const MAX_BLOCKING_THREADS: usize = telemetryd::schedule::READ_SLOTS + 4;

/// One thread runs every task; blocking work (sysfs reads, fsyncs) goes to tokio's blocking
/// pool, at most [`MAX_BLOCKING_THREADS`] threads. A Pi has few cores and the daemon is
/// mostly asleep.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .map_err(|e| {
            eprintln!("telemetryd: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = runtime().unwrap_or_else(|_| std::process::exit(1));
    let out = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_millis(500));
    out
}
