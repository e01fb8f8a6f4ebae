//! The vendored rumqttc's one write per batch (vendor/rumqttc/PATCHES.md), pinned: what one
//! `poll` takes from the request channel, and where it stops.
//!
//! A broker of a few lines accepts, answers the CONNECT and reads everything after it without
//! answering: nothing incoming competes with the requests, so the events one `poll` leaves
//! queued are exactly the requests it took with the first one. Upstream takes one per poll.

use std::time::Duration;

use rumqttc::v5 as r5;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// CONNACK, MQTT 3.1.1: no session, accepted.
const CONNACK_V4: &[u8] = &[0x20, 0x02, 0x00, 0x00];
/// CONNACK, MQTT 5: no session, success, Receive Maximum 5.
const CONNACK_V5_RECEIVE_MAX_5: &[u8] = &[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x05];

/// A broker on a free port that sends `connack` once connected, then reads everything and
/// answers nothing but what the test sends it through the returned channel.
async fn scripted_broker(
    connack: &'static [u8],
) -> (u16, mpsc::UnboundedSender<Vec<u8>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(connack).await.unwrap();
        let mut sink = vec![0; 64 * 1024];
        loop {
            tokio::select! {
                read = socket.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { break },
                Some(bytes) = rx.recv() => socket.write_all(&bytes).await.unwrap(),
            }
        }
    });
    (port, tx, task)
}

async fn mute_broker(connack: &'static [u8]) -> (u16, JoinHandle<()>) {
    let (port, _, task) = scripted_broker(connack).await;
    (port, task)
}

fn options(port: u16, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new("batch-test", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(inflight);
    o
}

/// A v3 client connected to the broker on `port`.
async fn connected(port: u16, inflight: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut el) = AsyncClient::new(options(port, inflight), 200);
    loop {
        if let Event::Incoming(rumqttc::Packet::ConnAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    (client, el)
}

/// The event one poll returns, then the events it left queued.
async fn one_poll(el: &mut rumqttc::EventLoop) -> Vec<Event> {
    let mut events = vec![el.poll().await.unwrap()];
    events.extend(el.state.events.drain(..));
    events
}

/// Connects, queues `queue`'s requests, polls once: [`one_poll`]'s events.
async fn one_poll_v4(inflight: u16, queue: impl FnOnce(&AsyncClient)) -> Vec<Event> {
    let (port, broker) = mute_broker(CONNACK_V4).await;
    let (client, mut el) = connected(port, inflight).await;
    queue(&client);
    let events = one_poll(&mut el).await;
    broker.abort();
    events
}

fn published(events: &[Event]) -> Vec<u16> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn one_poll_takes_the_first_request_and_64_queued_behind_it_in_order() {
    let events = one_poll_v4(100, |c| {
        for i in 0..100 {
            c.try_publish("t", QoS::AtLeastOnce, false, vec![i as u8])
                .unwrap();
        }
    })
    .await;
    assert_eq!(published(&events), (1..=65).collect::<Vec<u16>>());
}

#[tokio::test]
async fn a_batch_stops_once_4_kib_are_buffered() {
    // 1,000-byte payloads: each packet is a little over 1,000 bytes.
    let events = one_poll_v4(100, |c| {
        for _ in 0..20 {
            c.try_publish("t", QoS::AtMostOnce, false, vec![0u8; 1000])
                .unwrap();
        }
    })
    .await;
    // Batched (more than one), and at most one packet past 4 KiB.
    assert_eq!(published(&events).len(), 5, "{events:?}");
}

#[tokio::test]
async fn a_batch_stops_at_a_full_inflight_window() {
    let events = one_poll_v4(5, |c| {
        for _ in 0..10 {
            c.try_publish("t", QoS::AtLeastOnce, false, vec![1])
                .unwrap();
        }
    })
    .await;
    // The sixth would reuse packet id 1 while it is unacknowledged: a collision, which stalls
    // rumqttc (rumqttc #1056). Not even taken: no `AwaitAck` among the events.
    assert_eq!(published(&events), vec![1, 2, 3, 4, 5]);
    assert_eq!(events.len(), 5, "{events:?}");
}

#[tokio::test]
async fn a_batch_stops_at_a_packet_id_collision() {
    // Packet ids 1-5 out, 2-5 acknowledged, 1 not (a broker acking out of order): the next
    // publish gets id 1 again, collides and waits. Nothing queued behind it may overtake it.
    let (port, broker, task) = scripted_broker(CONNACK_V4).await;
    let (client, mut el) = connected(port, 5).await;
    let mut acks = 0;
    let mut sent = 0;
    for _ in 0..5 {
        client
            .try_publish("t", QoS::AtLeastOnce, false, vec![1])
            .unwrap();
    }
    while acks < 4 {
        match el.poll().await.unwrap() {
            Event::Outgoing(Outgoing::Publish(_)) => {
                sent += 1;
                if sent == 5 {
                    for pkid in 2..=5u8 {
                        broker.send(vec![0x40, 0x02, 0x00, pkid]).unwrap();
                    }
                }
            }
            Event::Incoming(rumqttc::Packet::PubAck(_)) => acks += 1,
            _ => {}
        }
    }
    for _ in 0..3 {
        client
            .try_publish("t", QoS::AtLeastOnce, false, vec![2])
            .unwrap();
    }
    let events = one_poll(&mut el).await;
    task.abort();
    assert!(published(&events).is_empty(), "{events:?}");
    assert!(
        matches!(events[..], [Event::Outgoing(Outgoing::AwaitAck(1))]),
        "{events:?}"
    );
}

#[tokio::test]
async fn requests_left_from_a_previous_link_go_first_one_per_poll() {
    // Two requests in `pending` (left from the link before): new ones in the channel must not
    // overtake the second.
    let (port, broker) = mute_broker(CONNACK_V4).await;
    let (client, mut el) = connected(port, 100).await;
    for topic in ["old/1", "old/2"] {
        let publish = rumqttc::Publish::new(topic, QoS::AtLeastOnce, vec![1]);
        el.pending.push_back(rumqttc::Request::Publish(publish));
    }
    for _ in 0..3 {
        client
            .try_publish("new", QoS::AtLeastOnce, false, vec![2])
            .unwrap();
    }
    let events = one_poll(&mut el).await;
    broker.abort();
    assert_eq!(published(&events), vec![1], "{events:?}");
    assert_eq!(el.pending.len(), 1);
}

#[tokio::test]
async fn qos_0_readings_do_not_fill_the_inflight_window() {
    // A flood of QoS 0 beside a few QoS 1 behind a window of 2: the QoS 0 ones do not count.
    let events = one_poll_v4(2, |c| {
        for i in 0..30 {
            let qos = if i % 10 == 9 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            c.try_publish("t", qos, false, vec![1]).unwrap();
        }
    })
    .await;
    // 9 QoS 0, QoS 1 (pkid 1), 9 QoS 0, QoS 1 (pkid 2): the window is full there.
    let mut expected = vec![0; 9];
    expected.push(1);
    expected.extend([0; 9]);
    expected.push(2);
    assert_eq!(published(&events), expected);
}

#[tokio::test]
async fn nothing_queued_after_a_disconnect_goes_with_it() {
    let events = one_poll_v4(100, |c| {
        for _ in 0..3 {
            c.try_publish("t", QoS::AtLeastOnce, false, vec![1])
                .unwrap();
        }
        c.try_disconnect().unwrap();
        for _ in 0..3 {
            c.try_publish("t", QoS::AtLeastOnce, false, vec![1])
                .unwrap();
        }
    })
    .await;
    assert_eq!(published(&events), vec![1, 2, 3]);
    assert!(
        matches!(events.last(), Some(Event::Outgoing(Outgoing::Disconnect))),
        "{events:?}"
    );
}

#[tokio::test]
async fn mqtt_5_a_batch_stops_at_the_brokers_receive_maximum() {
    let (port, broker) = mute_broker(CONNACK_V5_RECEIVE_MAX_5).await;
    let mut o = r5::MqttOptions::new("batch-test", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_outgoing_inflight_upper_limit(100);
    let (client, mut el) = r5::AsyncClient::new(o, 200);
    loop {
        if let r5::Event::Incoming(r5::Incoming::ConnAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    for _ in 0..10 {
        client
            .try_publish("t", r5::mqttbytes::QoS::AtLeastOnce, false, vec![1])
            .unwrap();
    }
    let mut events = vec![el.poll().await.unwrap()];
    events.extend(el.state.events.drain(..));
    broker.abort();
    let pkids: Vec<u16> = events
        .iter()
        .filter_map(|e| match e {
            r5::Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
            _ => None,
        })
        .collect();
    assert_eq!(pkids, vec![1, 2, 3, 4, 5]);
    assert_eq!(events.len(), 5, "no collision: {events:?}");
}
