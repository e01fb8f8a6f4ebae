//! The `[buffer]` table: where the store lives, how big it may grow, how often it commits.

use std::path::PathBuf;
use std::time::Duration;

use super::BufferConfig;
use super::error::Problem;
use super::raw::RawBuffer;
use super::values::bounded;

/// The longest `[buffer] commit_interval`: the window of readings a crash can lose.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(60);

pub(super) fn validate_buffer(raw: RawBuffer) -> Result<BufferConfig, Problem> {
    Ok(BufferConfig {
        path: raw
            .path
            .unwrap_or_else(|| PathBuf::from("/var/lib/telemetryd/buffer")),
        max_messages: raw.max_messages.map_or(500_000, |w| w.0),
        commit_interval: match &raw.commit_interval {
            Some(d) => bounded(
                d,
                "[buffer] commit_interval",
                Duration::ZERO,
                MAX_COMMIT_INTERVAL,
                ": readings wait that long in memory, unpublished, and a crash loses them",
            )?,
            None => Duration::ZERO,
        },
    })
}
