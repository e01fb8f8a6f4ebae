//! The durable mark: a file beside sled's own with the `next_seq` of the last fsynced commit.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::sync_dir;

/// A file beside sled's own, holding the `next_seq` of the last commit that was fsynced. sled
/// 0.34 takes a damaged record in its log for a torn tail and opens *without an error*, without
/// whatever came after it, readings that had been made durable (and may never have been
/// published). A `next_seq` below this mark after opening shows that; see
/// [`super::open::open_or_replace`].
const MARK_FILE: &str = "telemetryd-durable-mark";
/// Mixed into the mark's check word, so that a file of garbage (or zeroes) is not a mark.
const MARK_CHECK: u64 = 0x7465_6c65_6d65_7472;

/// The durable mark beside sled's files (see [`MARK_FILE`]).
pub(super) struct Mark(File);

impl Mark {
    /// Opens (creating) the mark of the store at `path`, with the `next_seq` it holds if it is
    /// a valid mark.
    pub(super) fn open(path: &Path) -> (Option<Mark>, Option<u64>) {
        let created = !path.join(MARK_FILE).exists();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(MARK_FILE));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.join(MARK_FILE).display(), error = %e, "cannot write the durable mark; a damaged store log would go unnoticed");
                return (None, None);
            }
        };
        if created {
            // The mark's name in the store's directory: without it a power cut can take the
            // mark, and with it the check, just when sled may have lost the log's tail. Once
            // per store; the mark's later writes are not fsynced (see Store::sync).
            let _ = sync_dir(path);
        }
        let mut bytes = [0u8; 16];
        let seq = file.read_exact_at(&mut bytes, 0).ok().and_then(|()| {
            let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            let check = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
            (check == seq ^ MARK_CHECK).then_some(seq)
        });
        (Some(Mark(file)), seq)
    }

    pub(super) fn write(&self, seq: u64) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&seq.to_be_bytes());
        bytes[8..].copy_from_slice(&(seq ^ MARK_CHECK).to_be_bytes());
        // Failing to write it only weakens the check: the readings are durable already.
        if let Err(e) = self.0.write_at(&bytes, 0) {
            tracing::debug!(error = %e, "could not update the durable mark");
        }
    }
}
