//! The `[mqtt] servers` failover list: parsing `host:port` entries, and which server to try next.

use std::fmt;

/// At most this many servers: a cluster has a handful of nodes, and every one is tried in turn.
pub const MAX_SERVERS: usize = 16;

/// One broker to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `"host"`, `"host:port"`, `"[v6]"` or `"[v6]:port"`; `default_port` when none is given.
pub fn parse(entry: &str, default_port: u16) -> Result<Server, String> {
    let bad = |why: &str| Err(format!("{entry:?} is not a server: {why}"));
    const FORM: &str = "write host:port, e.g. \"broker1.lan:1883\" (no scheme, path or spaces)";
    if entry.contains("://") {
        return bad(FORM);
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return bad("an IPv6 address in [ ] lacks its ]");
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return bad("write [address]:port"),
            },
        }
    } else {
        match entry.split_once(':') {
            // More than one colon without brackets: a bare IPv6 address, no port.
            Some((_, rest)) if rest.contains(':') => (entry, None),
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return bad("the host is empty");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/[]@".contains(c))
    {
        return bad(FORM);
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad("the port must be a number from 1 to 65535"),
        },
    };
    Ok(Server {
        host: host.to_owned(),
        port,
    })
}

/// The whole list: not empty, at most [`MAX_SERVERS`], no server twice.
pub fn parse_list(entries: &[String], default_port: u16) -> Result<Vec<Server>, String> {
    if entries.is_empty() {
        return Err("servers is empty: give at least one \"host:port\"".into());
    }
    if entries.len() > MAX_SERVERS {
        return Err(format!(
            "servers has {} entries, at most {MAX_SERVERS} are allowed",
            entries.len()
        ));
    }
    let mut out: Vec<Server> = Vec::with_capacity(entries.len());
    for entry in entries {
        let server = parse(entry, default_port).map_err(|e| format!("servers: {e}"))?;
        if out.contains(&server) {
            return Err(format!("servers lists {server} twice"));
        }
        out.push(server);
    }
    Ok(out)
}

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

    fn s(host: &str, port: u16) -> Server {
        Server {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn entries_parse_with_or_without_a_port() {
        assert_eq!(parse("broker1.lan", 1883), Ok(s("broker1.lan", 1883)));
        assert_eq!(parse("10.0.0.2:1884", 1883), Ok(s("10.0.0.2", 1884)));
        assert_eq!(parse("::1", 8883), Ok(s("::1", 8883)));
        assert_eq!(parse("[::1]:1884", 1883), Ok(s("::1", 1884)));
        assert_eq!(parse("[fe80::1]", 1883), Ok(s("fe80::1", 1883)));
        assert_eq!(s("::1", 1884).to_string(), "[::1]:1884");
        assert_eq!(s("a", 1).to_string(), "a:1");
        for bad in [
            "",
            ":1883",
            "a:0",
            "a:70000",
            "a:x",
            "a:",
            "mqtt://a:1883",
            "a b",
            "[::1",
            "[::1]x",
            "[]:1",
        ] {
            assert!(parse(bad, 1883).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_list_is_checked_as_a_whole() {
        let l = |v: &[&str]| parse_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 1883);
        assert_eq!(l(&["a", "b:1884"]), Ok(vec![s("a", 1883), s("b", 1884)]));
        assert!(l(&[]).unwrap_err().contains("empty"));
        assert!(l(&["a", "a:1883"]).unwrap_err().contains("twice"));
        let many: Vec<String> = (0..17).map(|i| format!("h{i}")).collect();
        assert!(parse_list(&many, 1).unwrap_err().contains("at most 16"));
    }

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
