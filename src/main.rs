//! The `telemetryd` command: parses arguments, loads the config, and decides every exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use telemetryd::config::{self, Config};

/// EX_CONFIG from sysexits.h: the unit file's `RestartPreventExitStatus=78` stops systemd
/// from restarting a daemon whose config is wrong.
const EXIT_CONFIG: u8 = 78;

/// Reads sensors on a schedule and publishes them to an MQTT broker, buffering on disk so
/// that no reading is lost while the broker or the network is away.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The config file.
    #[arg(long, short, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("telemetryd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetryd::logging::init(&config.log_level);

    // One thread runs every task; blocking work (sysfs reads, fsyncs) goes to tokio's
    // blocking pool. A Pi has few cores and the daemon is mostly asleep.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telemetryd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        telemetryd::signals::install(shutdown.clone())?;
        telemetryd::run(config, shutdown).await
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
