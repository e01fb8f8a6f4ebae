//! A store from before chunks (one tree, `outbox`), made fit to be served where it is.

use super::super::COUNT_KEY;
use super::super::record::key_of;
use super::keys::{chunk_keys, chunk_name, chunk_number, chunk_of};

/// The single tree of telemetryd before chunks, served until it is empty.
pub(in crate::outbox::store) const LEGACY_TREE: &[u8] = b"outbox";

/// The legacy tree, made fit to serve in place, and the key after its last; `None` once it is
/// empty (then dropped). One pass over it at each open while it holds readings (an upgrade's
/// backlog being sent): keys that are not ours go to `quarantine` (and the count saved at
/// close, which counted them, is forgotten), so that every key left is a reading below every
/// chunk's. If a chunk holds a key below its last (an older telemetryd ran on this store after
/// a newer one, and wrote there), the legacy readings are moved into chunks instead, one by one.
pub(super) fn open_legacy(
    db: &sled::Db,
    meta: &sled::Tree,
    quarantine: &sled::Tree,
    floor: u64,
) -> anyhow::Result<Option<(sled::Tree, u64)>> {
    let tree = db.open_tree(LEGACY_TREE)?;
    let mut last = None;
    let mut bad = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        match key_of(&k) {
            Ok(key) => last = Some(key),
            Err(_) => bad.push((k, v)),
        }
    }
    for (k, v) in bad.drain(..) {
        tracing::error!(key = ?k.as_ref(), "moved an undecodable reading to the store's quarantine tree");
        quarantine.insert(&k, v)?;
        tree.remove(&k)?;
        meta.remove(COUNT_KEY)?;
    }
    let end = match last {
        Some(key) if key >= floor => key + 1,
        _ => {
            // Empty, or every key below the floor (acknowledged).
            drop(tree);
            db.drop_tree(LEGACY_TREE)?;
            return Ok(None);
        }
    };
    let mut mixed = false;
    for name in db.tree_names() {
        if let Some(c) = chunk_number(&name)
            && chunk_keys(c).start < end
        {
            let t = db.open_tree(&name)?;
            mixed |= t
                .range(floor.to_be_bytes()..end.to_be_bytes())
                .next()
                .is_some();
        }
    }
    if !mixed {
        return Ok(Some((tree, end)));
    }
    tracing::warn!(
        "the store holds readings of two layouts (an older telemetryd ran on it): moving the older ones into the newer"
    );
    for kv in tree.iter() {
        let (k, v) = kv?;
        let key = key_of(&k)?;
        let chunk = db.open_tree(chunk_name(chunk_of(key)))?;
        chunk.insert(&k, v)?;
        crate::service::still_starting();
    }
    drop(tree);
    db.drop_tree(LEGACY_TREE)?;
    Ok(None)
}
