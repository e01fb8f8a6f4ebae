//! Living under systemd: readiness and watchdog notifications, SIGHUP reloads, journald log
//! lines, and the `check`, `sensors` and `buffer` subcommands. The fake `NOTIFY_SOCKET` is the
//! kit's [`telemetryd_testkit::NotifySocket`].

mod journald;
mod reload;
mod start_stop;
mod status;
mod subcommands;

const TOPIC: &str = "test/counter";
