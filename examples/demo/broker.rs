//! The demo's embedded broker (rumqttd on a port of its own) and the door in front of it: the
//! port the daemon connects to, which the demo can close and open again.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Starts rumqttd (MQTT 3.1.1, in-memory, anonymous) in this process on a free port of
/// 127.0.0.1 and returns that port once it accepts connections. It runs until the demo exits.
pub fn start_embedded() -> anyhow::Result<u16> {
    let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let config = format!(
        r#"
id = 0
[router]
max_connections = 16
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&config).context("the embedded broker's config")?;
    let mut broker = rumqttd::Broker::new(config);
    thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("demo | the embedded broker stopped: {e}");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        if Instant::now() > deadline {
            bail!("the embedded broker did not listen on 127.0.0.1:{port} within 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

/// 127.0.0.1:`public` forwarded to the broker on 127.0.0.1:`broker`. Closing it drops the
/// listener and every connection through it, so the daemon sees its broker vanish (connection
/// reset, then connection refused) while the broker and the subscriber stay up: nothing the
/// broker acknowledged can be lost on the broker's side, so whatever is missing at the end
/// would be the daemon's loss.
pub struct Door {
    public: u16,
    broker: u16,
    open: Option<JoinHandle<()>>,
}

impl Door {
    pub fn new(public: u16, broker: u16) -> Door {
        Door {
            public,
            broker,
            open: None,
        }
    }

    pub async fn open(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.public))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{}", self.public))?;
        let broker = self.broker;
        self.open = Some(tokio::spawn(async move {
            // Dropped with the task when the door closes: that aborts every connection.
            let mut links = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, broker)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                while links.try_join_next().is_some() {}
            }
        }));
        Ok(())
    }

    pub async fn close(&mut self) {
        if let Some(task) = self.open.take() {
            task.abort();
            let _ = task.await;
        }
    }
}
