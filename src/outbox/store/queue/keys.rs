//! Which chunk tree a key lives in, and the trees' names.

/// Keys per chunk tree: 4,096 (16 in unit tests, so that chunks turn over in small tests).
/// A tree costs a root page and a name in sled's meta; dropping it frees its pages at once.
pub(super) const CHUNK_BITS: u32 = if cfg!(test) { 4 } else { 12 };
/// Chunk trees' names: this, then the chunk's number in 16 lowercase hex digits.
const CHUNK_PREFIX: &[u8] = b"outbox.";

pub(super) fn chunk_of(key: u64) -> u64 {
    key >> CHUNK_BITS
}

/// The keys of `chunk`'s tree: a key a damaged store holds in another chunk's tree is not in
/// the queue (it would come out of order).
pub(super) fn chunk_keys(chunk: u64) -> std::ops::Range<u64> {
    chunk << CHUNK_BITS..(chunk + 1).saturating_mul(1 << CHUNK_BITS)
}

pub(super) fn chunk_name(chunk: u64) -> Vec<u8> {
    let mut name = CHUNK_PREFIX.to_vec();
    name.extend_from_slice(format!("{chunk:016x}").as_bytes());
    name
}

/// The chunk a tree's name stands for: exactly the names [`chunk_name`] makes, so that no two
/// names (a hostile store's) stand for one chunk.
pub(super) fn chunk_number(name: &[u8]) -> Option<u64> {
    let hex = name.strip_prefix(CHUNK_PREFIX)?;
    if hex.len() != 16 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let chunk = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    // Beyond it, a chunk's first key does not fit in a u64.
    (chunk <= u64::MAX >> CHUNK_BITS).then_some(chunk)
}
