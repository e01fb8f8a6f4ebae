//! The acknowledged-up-to floor as saved in the `meta` tree, and when not to believe it.

use super::super::NEXT_SEQ_KEY;
use super::super::record::key_of;

/// In the `meta` tree: the floor (a big-endian `u64`).
pub(super) const FLOOR_KEY: &[u8] = b"acked_below";

/// The floor saved in `meta`, if it can be believed. Every key ever handed out is below the
/// saved `next_seq`, so a floor above it (or one that does not decode) is damage that would
/// hide, then drop, readings never sent: it is taken as 0 instead (at worst, acknowledged
/// readings are sent again).
pub(super) fn read_floor(meta: &sled::Tree) -> anyhow::Result<u64> {
    let Some(v) = meta.get(FLOOR_KEY)? else {
        return Ok(0);
    };
    let next_seq = meta.get(NEXT_SEQ_KEY)?.and_then(|v| key_of(&v).ok());
    match (key_of(&v).ok(), next_seq) {
        (Some(floor), Some(next_seq)) if floor <= next_seq => Ok(floor),
        (floor, next_seq) => {
            tracing::error!(
                ?floor,
                ?next_seq,
                "the store's acknowledged-up-to mark is damaged: ignoring it (acknowledged readings may be sent again)"
            );
            meta.remove(FLOOR_KEY)?;
            Ok(0)
        }
    }
}
