//! Signals: SIGTERM/SIGINT stop gracefully (a second one at once), SIGHUP rereads the config.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::flag;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancels `shutdown` on the first SIGTERM or SIGINT; returns a stream of SIGHUPs. Must be
/// called inside the runtime.
pub fn install(shutdown: CancellationToken) -> io::Result<mpsc::Receiver<()>> {
    let stopping = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // Order matters: the conditional default is checked before the flag is set, so only
        // a signal that arrives while already stopping kills the process.
        flag::register_conditional_default(sig, Arc::clone(&stopping))?;
        flag::register(sig, Arc::clone(&stopping))?;
    }
    // With a file-size limit, a write past it raises SIGXFSZ, which kills by default. Caught,
    // the write fails with EFBIG instead and the store's error handling takes over.
    flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false)))?;

    let mut hup = signal(SignalKind::hangup())?;
    // One pending reload is enough: several SIGHUPs in a row mean "reload once more".
    let (reload_tx, reload_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reload_tx.try_send(());
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "stopping (send it again to exit at once)");
        shutdown.cancel();
    });
    Ok(reload_rx)
}
