//! What a nats-server node's monitoring port says about its JetStream replicas.

use std::io::{Read, Write};
use std::time::Duration;

/// The first asset led by `leader` (per its `/jsz?consumers=true` report) that has no leader,
/// or in which `replica` is not current; `$MQTT_rmsgs_*` consumers aside (see `NatsCluster::wait_ready`).
pub fn lagging_replica(jsz: &serde_json::Value, leader: &str, replica: &str) -> Option<String> {
    let list = |v: &serde_json::Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let mut assets = Vec::new();
    for account in list(jsz, "account_details") {
        for stream in list(&account, "stream_detail") {
            assets.extend(list(&stream, "consumer_detail"));
            assets.push(stream);
        }
    }
    for asset in assets {
        let name = asset["name"].as_str().unwrap_or("?");
        if asset["stream_name"].is_string() && name.starts_with("$MQTT_rmsgs_") {
            continue;
        }
        let cluster = &asset["cluster"];
        match cluster["leader"].as_str() {
            None | Some("") => return Some(format!("{name} has no leader")),
            Some(l) if l != leader || l == replica => continue,
            Some(_) => {}
        }
        let current = list(cluster, "replicas")
            .iter()
            .find(|r| r["name"] == replica)
            .map(|r| r["current"] == true);
        if current == Some(false) {
            return Some(format!("its replica of {name} is behind leader {leader}"));
        }
    }
    None
}

/// The body of a GET from a node's monitoring port (at most 4 MiB), or None.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = Vec::new();
    s.take(4 << 20).read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::lagging_replica;

    /// n1's report, shaped like nats-server 2.9's `/jsz?consumers=true`.
    fn report(consumers: &str) -> serde_json::Value {
        serde_json::from_str(&format!(
            r#"{{"account_details": [{{"name": "$G", "stream_detail": [
                {{"name": "$MQTT_msgs", "cluster": {{"leader": "n1", "replicas": [
                    {{"name": "n0", "current": true}}, {{"name": "n2", "current": true}}]}},
                  "consumer_detail": [{consumers}]}},
                {{"name": "$MQTT_sess", "cluster": {{"leader": "n2", "replicas": [
                    {{"name": "n0", "current": false}}, {{"name": "n1", "current": true}}]}}}}
            ]}}]}}"#
        ))
        .unwrap()
    }

    fn consumer(name: &str, leader: &str, n0_current: bool) -> String {
        format!(
            r#"{{"stream_name": "$MQTT_msgs", "name": "{name}", "cluster": {{"leader": "{leader}",
                "replicas": [{{"name": "n0", "current": {n0_current}}}]}}}}"#
        )
    }

    #[test]
    fn a_replica_behind_its_leader_is_named_and_retained_message_consumers_are_not() {
        // $MQTT_sess is led by n2: n2's report speaks for it, not n1's.
        assert_eq!(lagging_replica(&report(""), "n1", "n0"), None);
        let behind = report(&consumer("sub_x", "n1", false));
        assert_eq!(
            lagging_replica(&behind, "n1", "n0").as_deref(),
            Some("its replica of sub_x is behind leader n1")
        );
        let rmsgs = report(&consumer("$MQTT_rmsgs_6DVFpukC", "n1", false));
        assert_eq!(lagging_replica(&rmsgs, "n1", "n0"), None);
        // The node asked about leads it: nothing to wait for.
        assert_eq!(lagging_replica(&behind, "n1", "n1"), None);
    }

    #[test]
    fn an_asset_without_a_leader_is_not_ready() {
        let leaderless = report(&consumer("sub_y", "", true));
        assert_eq!(
            lagging_replica(&leaderless, "n1", "n0").as_deref(),
            Some("sub_y has no leader")
        );
    }
}
