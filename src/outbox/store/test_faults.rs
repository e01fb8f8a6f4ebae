//! Test-only: makes the next sled call of a kind panic on this thread, as sled itself can.

use std::cell::Cell;

thread_local! {
    static ARMED: Cell<Option<&'static str>> = const { Cell::new(None) };
    static CRASH: Cell<Option<&'static str>> = const { Cell::new(None) };
    static DIR_SYNCS: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The next guarded call named `what` ("insert", "flush", "remove", "iter") panics.
pub fn panic_next(what: &'static str) {
    ARMED.with(|a| a.set(Some(what)));
}

pub(super) fn note_dir_sync(dir: &std::path::Path) {
    DIR_SYNCS.with(|d| d.borrow_mut().push(dir.to_owned()));
}

/// The directories fsynced on this thread since the last call.
pub fn take_dir_syncs() -> Vec<std::path::PathBuf> {
    DIR_SYNCS.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// A simulated crash at the recovery step `name` (see `recover`).
pub fn crash_at(name: &'static str) {
    CRASH.with(|a| a.set(Some(name)));
}

pub(super) fn crash_if_armed(name: &str) -> anyhow::Result<()> {
    if CRASH.with(|a| a.get()) == Some(name) {
        CRASH.with(|a| a.set(None));
        anyhow::bail!("simulated crash at {name}");
    }
    Ok(())
}

pub(super) fn panic_if_armed(what: &str) {
    if ARMED.with(|a| a.get()) == Some(what) {
        ARMED.with(|a| a.set(None));
        panic!("injected sled panic in {what}");
    }
}
