//! The test kit of telemetryd (dev-only, never packaged): real processes (Mosquitto,
//! mosquitto_sub, the built telemetryd), a counter sensor script, polling helpers, sequence
//! checks and a failure dump, for the integration tests (tests/it), the soak (tests/soak) and
//! the benchmark suite (benches/suite).
//!
//! Everything a test starts lives in an [`Env`]; dropping it kills and reaps every process and
//! removes the temp dir. When the drop happens during a panic, the env first prints the config,
//! the daemon logs, the Mosquitto log and what the subscriber received. Set
//! `TELEMETRYD_IT_KEEP=1` to keep the temp dir of a failed test, `TELEMETRYD_IT_KEEP=always`
//! to keep it whatever happens.
//!
//! Every module's items are re-exported here (`use telemetryd_testkit::*`), except the
//! [`proxy`]'s, whose names (`Mode`, `Seen`) need their module to read well.

mod broker;
mod counter;
mod daemon;
mod env;
mod logs;
mod misc;
mod notify;
mod process;
mod procfs;
pub mod proxy;
mod rng;
mod seq;
mod store;
mod subscriber;
mod wait;

pub use broker::*;
pub use counter::*;
pub use daemon::*;
pub use env::*;
pub use logs::*;
pub use misc::*;
pub use notify::*;
pub use process::*;
pub use procfs::*;
pub use rng::*;
pub use seq::*;
pub use store::*;
pub use subscriber::*;
pub use wait::*;
