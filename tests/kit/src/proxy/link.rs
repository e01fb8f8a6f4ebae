//! One proxied connection: forwarded (and witnessed), cut by chaos, refused or silenced, as
//! the proxy's [`Mode`] says at each moment.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::witness::Witness;
use super::{Mode, ProxyState, lock, stamp};
use crate::EventLog;

/// Serves one accepted connection; returns why it ended.
pub(super) async fn serve(
    client: TcpStream,
    conn: usize,
    upstream: u16,
    mut mode: watch::Receiver<Mode>,
    state: &Mutex<ProxyState>,
    log: &EventLog,
) -> String {
    let now = *mode.borrow_and_update();
    match now {
        Mode::Down => return "refused (down)".into(),
        Mode::Silent => {
            log.push(format!("{} conn {conn}: accepted into silence", stamp()));
            let (r, w) = client.into_split();
            return sink(r, w, None, &mut mode).await;
        }
        Mode::Forward => {}
    }
    let broker = match TcpStream::connect(("127.0.0.1", upstream)).await {
        Ok(s) => s,
        Err(e) => return format!("cannot reach the broker: {e}"),
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    // (direction: 0 daemon->broker, 1 broker->daemon; byte count) after which it is cut.
    let cut_at = lock(state).chaos.as_mut().map(|(rng, c)| {
        if rng.chance(0.5) {
            (0usize, rng.range(c.daemon_bytes.0, c.daemon_bytes.1))
        } else {
            (1usize, rng.range(c.broker_bytes.0, c.broker_bytes.1))
        }
    });
    log.push(format!(
        "{} conn {conn}: forwarding{}",
        stamp(),
        cut_at.map_or(String::new(), |(d, n)| format!(
            ", cut after {n} bytes {}",
            ["daemon->broker", "broker->daemon"][d]
        ))
    ));
    lock(state).open += 1;
    let why = forward(client, broker, conn, cut_at, &mut mode, state).await;
    lock(state).open -= 1;
    match why {
        Ended::Closed(why) => why,
        Ended::Silenced(cr, cw, br, bw) => {
            log.push(format!("{} conn {conn}: silenced", stamp()));
            sink(cr, cw, Some((br, bw)), &mut mode).await
        }
    }
}

enum Ended {
    Closed(String),
    Silenced(OwnedReadHalf, OwnedWriteHalf, OwnedReadHalf, OwnedWriteHalf),
}

async fn forward(
    client: TcpStream,
    broker: TcpStream,
    conn: usize,
    cut_at: Option<(usize, u64)>,
    mode: &mut watch::Receiver<Mode>,
    state: &Mutex<ProxyState>,
) -> Ended {
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let mut witness = Witness::new(conn);
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let mut moved = [0u64; 2];
    loop {
        let (dir, n) = tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return Ended::Closed("proxy stopped".into());
                }
                let now = *mode.borrow_and_update();
                match now {
                    Mode::Forward => continue,
                    Mode::Down => return Ended::Closed("closed (down)".into()),
                    Mode::Silent => return Ended::Silenced(cr, cw, br, bw),
                }
            }
            r = cr.read(&mut a) => match r {
                Ok(0) => return Ended::Closed("closed by the daemon".into()),
                Ok(n) => (0, n),
                Err(e) => return Ended::Closed(format!("daemon side: {e}")),
            },
            r = br.read(&mut b) => match r {
                Ok(0) => return Ended::Closed("closed by the broker".into()),
                Ok(n) => (1, n),
                Err(e) => return Ended::Closed(format!("broker side: {e}")),
            },
        };
        // Bytes past a chaos cut are never forwarded.
        let mut len = n;
        let mut cut = false;
        if let Some((d, at)) = cut_at
            && d == dir
            && moved[d] + n as u64 >= at
        {
            len = (at - moved[d]) as usize;
            cut = true;
        }
        moved[dir] += len as u64;
        let written = if dir == 0 {
            witness.client_bytes(&a[..len], state);
            write_all(&mut bw, &a[..len]).await
        } else {
            // A PUBACK read from the broker counts as acknowledged even if it is cut here:
            // the broker has accepted the message.
            witness.broker_bytes(&b[..n], state);
            write_all(&mut cw, &b[..len]).await
        };
        if cut {
            lock(state).cuts += 1;
            return Ended::Closed(format!(
                "cut by chaos after {} bytes {}",
                moved[dir],
                ["daemon->broker", "broker->daemon"][dir]
            ));
        }
        if let Err(e) = written {
            return Ended::Closed(format!("write: {e}"));
        }
    }
}

async fn write_all(w: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    w.write_all(bytes).await
}

/// A dead link: reads and drops whatever comes, answers nothing, closes nothing, until the
/// daemon closes its side (or the proxy goes [`Mode::Down`]). The broker side (if any) is
/// held open the same way until the broker gives up on it.
async fn sink(
    mut cr: OwnedReadHalf,
    _cw: OwnedWriteHalf,
    broker: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    mode: &mut watch::Receiver<Mode>,
) -> String {
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    let (mut br, _bw) = match broker {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            changed = mode.changed() => {
                let now = *mode.borrow_and_update();
                if changed.is_err() || now == Mode::Down {
                    return format!("silent link closed (down) ({dropped} bytes dropped)");
                }
            }
            r = cr.read(&mut a) => match r {
                Ok(0) => return format!("silent link closed by the daemon ({dropped} bytes dropped)"),
                Ok(n) => dropped += n as u64,
                Err(e) => return format!("silent link: daemon side {e}"),
            },
            r = async { br.as_mut().unwrap().read(&mut b).await }, if br.is_some() => match r {
                Ok(n) if n > 0 => dropped += n as u64,
                _ => br = None, // the broker gave up; the daemon must find out by itself
            },
        }
    }
}
