//! The soak's fault schedule: which faults, how often ([`FAULTS`]), and how each is made.

use std::time::{Duration, Instant, SystemTime};

use telemetryd_testkit::proxy::{Chaos, Mode};
use telemetryd_testkit::*;

use crate::{Soak, Stop};

/// Daemon restarts only before this fraction of the run.
const RESTARTS_UNTIL: f64 = 0.6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Fault {
    BrokerTerm,
    BrokerKill,
    BrokerFresh,
    HalfOpen,
    LinkChaos,
    LinkDown,
    DaemonKill,
    DaemonTerm,
}

pub(crate) const FAULTS: [(Fault, u64); 8] = [
    (Fault::BrokerTerm, 2),
    (Fault::BrokerKill, 3),
    (Fault::BrokerFresh, 1),
    (Fault::HalfOpen, 2),
    (Fault::LinkChaos, 2),
    (Fault::LinkDown, 1),
    (Fault::DaemonKill, 4),
    (Fault::DaemonTerm, 1),
];

impl Soak {
    pub(crate) fn start_daemon(&mut self) {
        self.env.daemon.start();
        self.last_daemon_start = self.elapsed();
    }

    /// SIGKILL (or SIGTERM: the read in progress is abandoned, which costs the same one
    /// reading) and records the window of each counter.
    pub(crate) fn stop_daemon(&mut self, what: &str, kill: bool) {
        self.observe();
        let before: Vec<u64> = self.counters.iter().map(|c| c.value()).collect();
        if kill {
            self.env.daemon.sigkill();
        } else {
            let t = Instant::now();
            self.env.daemon.sigterm();
            match self.env.daemon.wait_exit(SHUTDOWN_LIMIT) {
                Some(s) if s.success() => {}
                Some(s) => panic!("SIGTERM: exit status {s}"),
                None => panic!("still running {SHUTDOWN_LIMIT:?} after SIGTERM"),
            }
            assert!(
                t.elapsed() <= Duration::from_millis(6500),
                "SIGTERM to exit took {:?}; the grace is 5 s",
                t.elapsed()
            );
        }
        let after: Vec<u64> = self.counters.iter().map(|c| c.value() + 1).collect();
        self.stops.push(Stop {
            what: what.to_string(),
            at_s: self.elapsed(),
            windows: before.into_iter().zip(after).collect(),
        });
    }

    pub(crate) fn broker_kill(&mut self) {
        self.env.broker().kill();
        self.broker_kills += 1;
        // Everything the broker acknowledged has been read by the proxy once its broker side
        // is closed; what was not yet delivered may be lost with the broker.
        self.proxy.wait_no_open_connection();
        self.observe();
        let kill = self.broker_kills;
        for key in self.pending_ack.drain() {
            self.at_risk.entry(key).or_insert(kill);
        }
    }

    pub(crate) fn fault(&mut self, fault: Fault) {
        *self.faults.entry(fault).or_default() += 1;
        match fault {
            Fault::BrokerTerm => {
                self.env.broker().stop();
                let d = self.rng.millis(300, 5000);
                self.run_for(d);
                self.env.broker().restart();
            }
            Fault::BrokerKill => {
                self.broker_kill();
                let d = self.rng.millis(300, 5000);
                self.run_for(d);
                self.env.broker().restart();
            }
            Fault::BrokerFresh => {
                // Keep the daemon away until the subscriber, whose session goes too, is back;
                // and let everything the old broker acknowledged be delivered first.
                self.proxy.set_mode(Mode::Down);
                self.proxy.wait_no_open_connection();
                let t = Instant::now();
                while {
                    self.observe();
                    !self.pending_ack.is_empty()
                } {
                    assert!(
                        t.elapsed() < DEADLINE,
                        "acknowledged readings never delivered: {:?}",
                        self.pending_ack
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.env.broker().stop();
                self.env.broker().wipe_persistence();
                self.env.broker().restart();
                self.env.sub.as_mut().unwrap().wait_subscribed();
                let subscribed = SystemTime::now();
                self.env.broker().wait_saved_after(subscribed);
                self.proxy.set_mode(Mode::Forward);
            }
            Fault::HalfOpen => {
                self.proxy.set_mode(Mode::Silent);
                let d = self.rng.millis(1000, 8000);
                self.run_for(d);
                self.proxy.set_mode(Mode::Forward);
            }
            Fault::LinkChaos => {
                let seed = self.rng.next_u64();
                self.proxy.set_chaos(Some(Chaos {
                    seed,
                    daemon_bytes: (1, 3000),
                    broker_bytes: (1, 600),
                }));
                let d = self.rng.millis(3000, 10000);
                self.run_for(d);
                self.proxy.set_chaos(None);
            }
            Fault::LinkDown => {
                self.proxy.set_mode(Mode::Down);
                let d = self.rng.millis(500, 5000);
                self.run_for(d);
                self.proxy.set_mode(Mode::Forward);
            }
            Fault::DaemonKill => match self.rng.range(0, 2) {
                0 => {
                    self.stop_daemon("SIGKILL, connected", true);
                    let d = self.rng.millis(0, 1500);
                    self.run_for(d);
                    self.start_daemon();
                }
                1 => {
                    self.env.broker().stop();
                    let d = self.rng.millis(300, 3000);
                    self.run_for(d);
                    self.stop_daemon("SIGKILL, broker down", true);
                    let d = self.rng.millis(0, 1000);
                    self.run_for(d);
                    self.start_daemon();
                    let d = self.rng.millis(300, 3000);
                    self.run_for(d);
                    self.env.broker().restart();
                }
                _ => {
                    // A backlog, then a kill at a random point of its drain.
                    self.env.broker().stop();
                    let d = self.rng.millis(2000, 6000);
                    self.run_for(d);
                    self.observe();
                    let got: usize = self.streams.iter().map(|s| s.first.len()).sum();
                    self.env.broker().restart();
                    let more = self.rng.range(1, 200) as usize;
                    let t = Instant::now();
                    while {
                        self.observe();
                        self.streams.iter().map(|s| s.first.len()).sum::<usize>() < got + more
                            && t.elapsed() < DEADLINE
                    } {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    self.stop_daemon("SIGKILL, draining a backlog", true);
                    self.start_daemon();
                }
            },
            Fault::DaemonTerm => {
                self.stop_daemon("SIGTERM", false);
                let d = self.rng.millis(0, 2000);
                self.run_for(d);
                self.start_daemon();
            }
        }
    }

    pub(crate) fn pick(&mut self) -> Fault {
        let restarts = self.elapsed() < RESTARTS_UNTIL * self.secs as f64;
        let eligible: Vec<(Fault, u64)> = FAULTS
            .iter()
            .copied()
            .filter(|(f, _)| restarts || !matches!(f, Fault::DaemonKill | Fault::DaemonTerm))
            .collect();
        let total: u64 = eligible.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.range(0, total - 1);
        for (f, w) in eligible {
            if r < w {
                return f;
            }
            r -= w;
        }
        unreachable!()
    }
}
