//! The `[mqtt] servers` failover list: parsing its `host:port` entries into [`Server`]s.

use std::fmt;

use super::error::Invalid;

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
pub fn parse(entry: &str, default_port: u16) -> Result<Server, Invalid> {
    let bad = |why: &str| Err(Invalid(format!("{entry:?} is not a server: {why}")));
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
pub fn parse_list(entries: &[String], default_port: u16) -> Result<Vec<Server>, Invalid> {
    if entries.is_empty() {
        return Err(Invalid(
            "servers is empty: give at least one \"host:port\"".into(),
        ));
    }
    if entries.len() > MAX_SERVERS {
        return Err(Invalid(format!(
            "servers has {} entries, at most {MAX_SERVERS} are allowed",
            entries.len()
        )));
    }
    let mut out: Vec<Server> = Vec::with_capacity(entries.len());
    for entry in entries {
        let server = parse(entry, default_port).map_err(|e| Invalid(format!("servers: {e}")))?;
        if out.contains(&server) {
            return Err(Invalid(format!("servers lists {server} twice")));
        }
        out.push(server);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(l(&[]).unwrap_err().0.contains("empty"));
        assert!(l(&["a", "a:1883"]).unwrap_err().0.contains("twice"));
        let many: Vec<String> = (0..17).map(|i| format!("h{i}")).collect();
        assert!(parse_list(&many, 1).unwrap_err().0.contains("at most 16"));
    }
}
