//! `telemetryd check` and `telemetryd buffer`: what a person asks before trusting the daemon.

mod buffer;
mod readings;

pub use buffer::{BufferAccess, BufferView, buffer, buffer_writable};
pub use readings::{CheckedReading, read_all, render_readings};
