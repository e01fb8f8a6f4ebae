//! packaging/build-debs: a panic unwinds and is caught in a binary built the way the .deb's is.
//!
//! The daemon relies on `catch_unwind` around sled (a damaged store is moved aside, not a crash
//! loop), so the release profile keeps `panic = "unwind"`. The static ARM builds get their std
//! from `-Zbuild-std=std,panic_unwind` and their unwinder from zig's libunwind; a broken link
//! there shows only when something panics. build-debs builds this next to telemetryd, with the
//! same target, profile and linker, and runs it on the oldest CPU of the architecture.

use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Counts its drop: the frames a panic unwinds through must run their destructors.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[inline(never)]
fn deep(depth: u32) -> u32 {
    let _guard = Guard;
    if black_box(depth) == 0 {
        panic!("probe panic");
    }
    deep(depth - 1) + 1
}

fn main() -> std::process::ExitCode {
    // Keep the default hook's message off stderr: the panic is the point.
    std::panic::set_hook(Box::new(|_| {}));
    let caught = catch_unwind(AssertUnwindSafe(|| deep(black_box(8))));
    let message = caught
        .as_ref()
        .err()
        .and_then(|p| p.downcast_ref::<&str>().copied());
    let dropped = DROPPED.load(Ordering::SeqCst);
    if message == Some("probe panic") && dropped == 9 {
        println!("unwind ok: caught the panic, 9 frames dropped");
        std::process::ExitCode::SUCCESS
    } else {
        println!("unwind broken: caught {message:?}, {dropped} of 9 frames dropped");
        std::process::ExitCode::FAILURE
    }
}
