//! Which server of the `[mqtt] servers` failover list to try next.
//!
//! The list itself is parsed with the config, in `config/servers.rs`.

pub use crate::config::Server;

/// Which server to try, in list order: a failure moves to the next, wrapping around; a full
/// round of failures (every server once since the last working link) asks for a backoff.
/// Pure: the connection task tells it what happened.
#[derive(Debug)]
pub struct Rotation {
    len: usize,
    current: usize,
    failed_in_round: usize,
}

impl Rotation {
    /// Starts at the first server. `len` is at least 1.
    pub fn new(len: usize) -> Rotation {
        Rotation {
            len: len.max(1),
            current: 0,
            failed_in_round: 0,
        }
    }

    /// The index of the server to try (or that we are on).
    pub fn current(&self) -> usize {
        self.current
    }

    /// The current server failed us: it refused or did not answer, or a link to it was lost.
    /// Moves to the next; true when every server has now failed once in this round, so the
    /// caller should back off before trying again.
    pub fn failed(&mut self) -> bool {
        self.current = (self.current + 1) % self.len;
        self.failed_in_round += 1;
        if self.failed_in_round >= self.len {
            self.failed_in_round = 0;
            true
        } else {
            false
        }
    }

    /// A link to the current server works (an ack or a ping answered): a new round starts.
    pub fn works(&mut self) {
        self.failed_in_round = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// Against a model: the server tried is the list in order from where the round
        /// started, wrapping; a backoff comes exactly when every server failed once since the
        /// last working link; nothing else moves it.
        #[test]
        fn rotation_follows_the_list_and_backs_off_per_round(
            len in 1usize..6,
            events in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let mut r = Rotation::new(len);
            let (mut at, mut since_working) = (0usize, 0usize);
            for failed in events {
                prop_assert_eq!(r.current(), at);
                if failed {
                    let backoff = r.failed();
                    at = (at + 1) % len;
                    since_working += 1;
                    prop_assert_eq!(backoff, since_working == len);
                    if backoff {
                        since_working = 0;
                    }
                } else {
                    r.works();
                    since_working = 0;
                }
                prop_assert!(r.current() < len);
            }
        }
    }
}
